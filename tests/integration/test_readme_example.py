"""`make readme-example` (`python -m serving.example --write FILE`) on a real model: the serving
example and the real-time history example come from the same model, so user 1's first answer
is the same in both, and the like changes the next answer."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

from serving.example import END, HISTORY_END, HISTORY_START, START

REPO = Path(__file__).resolve().parents[2]


def _answer(block: str, marker: str) -> list[str]:
    """The item_ids of the first commented answer after the line that starts with `marker`."""
    lines = block.splitlines()
    start = next(i for i, line in enumerate(lines) if line.startswith(marker))
    comment = next(line for line in lines[start:] if line.startswith("# ["))
    return json.loads(comment.split('"item_ids": ')[1].split("]")[0] + "]")


def test_both_examples_show_the_same_first_answer(small_model_dir, tmp_path):
    readme = tmp_path / "README.md"
    readme.write_text(f"intro\n{START}\nold\n{END}\nmiddle\n{HISTORY_START}\nold\n{HISTORY_END}\nend\n")
    result = subprocess.run(
        [sys.executable, "-m", "serving.example", "--model-dir", str(small_model_dir),
         "--write", str(readme)], cwd=REPO, capture_output=True, text=True, timeout=600, check=False)
    assert result.returncode == 0, result.stderr[-3000:]
    text = readme.read_text()
    assert text.startswith("intro\n") and "\nmiddle\n" in text and text.endswith("\nend\n")
    serving = text[text.index(START):text.index(END)]
    history = text[text.index(HISTORY_START):text.index(HISTORY_END)]
    first = _answer(serving, "curl -s localhost:8080/v1/models/recsys:predict")
    assert _answer(history, "curl -s localhost:8080/v1/models/recsys:predict") == first
    after = _answer(history, "sleep 1;")
    assert first[0] not in after  # the liked item is never recommended again
    assert f'"item_id": "{first[0]}"' in history  # the like is of the first answer's top item
    # the explain call of the same model explains the same answer (its first two items)
    assert "curl -s localhost:8080/v1/models/recsys:explain" in serving
    explained = json.loads(serving.split('{"predictions": ')[1].split("\n")[0].rstrip(","))
    assert explained[0]["item_ids"] == first[:2]
    cold = explained[0]["cold_start"]  # user 1 is new to the small model, known to make run's
    assert ("User 1 is new to the model: the answer is the most popular items" if cold
            else "is first because user 1 liked") in serving
