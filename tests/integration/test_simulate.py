"""`recsys simulate` end to end: real services (the events service, the model server following
the deployment record), real models trained on the default data, the analysis with --auto.

A better challenger (EASE against popularity, 50/50) must be promoted, and the answers after
the decision must come from it. Sized to decide within a couple of minutes; the worse and A/A
scenarios run in `tests/benchmarks/bench_experiments.py`.
"""
from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]


def test_simulate_promotes_a_better_challenger(tmp_path):
    from mlflow import MlflowClient

    from components.feedback.feedback_store import FeedbackStore

    result = subprocess.run(
        [str(Path(sys.executable).parent / "recsys"), "simulate", "--home", str(tmp_path),
         "--scenario", "better", "--users", "2000", "--sessions", "30000",
         "--analyze-every", "1000", "--min-detectable-effect", "0.3"],
        check=False, cwd=REPO, capture_output=True, text=True, timeout=900)
    assert result.returncode == 0, result.stderr[-3000:]
    out = result.stdout
    final = json.loads(out.strip().splitlines()[-1])
    assert (final["decision"], final["basis"]) == ("promote", "effect"), out[-3000:]
    assert final["challenger_ctr"] > final["champion_ctr"] and final["p_value"] <= 0.05
    assert "continue (waiting)" in out  # the trail: it waited before deciding
    # Quiet by default: the table, not one log line per HTTP request nor download progress bars.
    assert "HTTP Request:" not in out + result.stderr
    assert "Downloading artifacts" not in out + result.stderr
    assert "done: serving: version 2 now answers everyone" in out
    assert "since the decision, answers come from: version" in out and "(the challenger model)" in out
    home = tmp_path / "simulation"
    record = json.loads((home / "deployment.json").read_text())
    assert record["version"] == "2" and "challenger" not in record
    client = MlflowClient(tracking_uri=f"sqlite:///{home / 'mlflow.db'}")
    assert {k: str(v) for k, v in client.get_registered_model("recsys").aliases.items()} == {"champion": "2"}
    [run] = client.search_runs([client.get_experiment_by_name("recsys-online").experiment_id])
    assert run.data.tags["decision"] == "promote"
    with FeedbackStore(f"sqlite:///{home / 'feedback.db'}") as store:
        shown, events = store.read_impressions(), store.read_events()
    assert set(shown["variant"]) == {"champion", "challenger"}
    assert {"click", "rating", "like"} <= set(events["type"])
    joined = events[events["type"] == "click"].merge(shown, on=["request_id", "user_id", "item_id"])
    assert len(joined) == (events["type"] == "click").sum()  # every click joins its impression
