"""`recsys tune`'s budget: 20 trials of the default space on the default data (movielens-dslabs)
in at most 10 minutes on the 2-core machine, through the CLI; prints the per-trial lines, the
best against the untuned validation NDCG@10, and the tuned against the untuned model on the
evaluation split (`--compare`)."""
from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

pytestmark = pytest.mark.bench
REPO = Path(__file__).resolve().parents[2]
TRIALS = 20
BUDGET_SECONDS = 600


def test_twenty_trials_on_the_default_data_within_ten_minutes(tmp_path):
    started = time.monotonic()
    result = subprocess.run(
        [sys.executable, "-m", "pipelines.cli.main", "tune", "--trials", str(TRIALS), "--home",
         str(tmp_path / "home"), "--output", str(tmp_path / "best.yaml"), "--compare"],
        check=False, capture_output=True, text=True, timeout=3 * BUDGET_SECONDS, cwd=tmp_path,
        env={**os.environ, "PYTHONPATH": str(REPO), "MLFLOW_TRACKING_URI": ""},
    )
    assert result.returncode == 0, result.stderr[-3000:]
    print(result.stdout)
    trial_lines = [line for line in result.stdout.splitlines() if line.startswith("trial ")]
    assert len(trial_lines) == TRIALS
    tuning = float(result.stdout.split(" trials in ")[1].split("s;")[0])
    print(f"{TRIALS} trials in {tuning:.0f}s (with the comparison: {time.monotonic() - started:.0f}s)")
    assert tuning <= BUDGET_SECONDS
    assert yaml.safe_load((tmp_path / "best.yaml").read_text())["model"]
