"""The drift check on a large request log (`make bench`): peak memory and time of
`recsys monitor --check-only --json` on a 1M-row log in the real format.

A small champion is trained and registered by the pipeline's own steps (as in
tests/integration/test_monitoring.py); the server's request-log writer (`RequestLog`, default
10 MB files, rotated) then writes RECSYS_BENCH_LOG_ROWS answered user rows (default 1,000,000),
spread evenly over the last 24 hours, each naming one of the model's users and its top 10
items with scores. The check runs as the user runs it, under a parent process that reports the
largest resident set of its descendants (`getrusage(RUSAGE_CHILDREN)`, which covers the drift
check step's own process); the step's own time is the local runner's line for it. The window
is the default (1,000 rows). The same check on a log of one window gives the cost of the check
itself, and the window is also read in this process alone. Targets: under 500 MB and 10 s.
They report; they do not gate.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "integration"))
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from test_monitoring import _champion  # the champion of the monitoring tests

from components.config import MonitoringConfig
from components.monitoring.monitor import read_window
from serving.request_log import LogEntry, RequestLog

pytestmark = pytest.mark.bench

REPO = Path(__file__).resolve().parents[2]
ROWS = int(os.environ.get("RECSYS_BENCH_LOG_ROWS", "1000000"))
ROWS_PER_ENTRY = 10  # answered requests of 10 users each: the same records, fewer queue items
MEASURE = """\
import resource, subprocess, sys, time
started = time.monotonic()
run = subprocess.run(sys.argv[1:], capture_output=True, text=True)
seconds = time.monotonic() - started
peak_kib = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss
sys.stderr.write(run.stderr)
sys.stdout.write(run.stdout)
sys.stdout.write(f"\\nMEASURED {peak_kib} {seconds:.2f} {run.returncode}\\n")
"""


def _write_log(directory: Path, rows: int, users: list[str], items: list[str]) -> int:
    rng = np.random.default_rng(5)
    now = time.time()
    times = np.linspace(now - 86_400, now - 1, rows // ROWS_PER_ENTRY)
    log = RequestLog(directory, "recsys", backup_count=10_000, queue_size=1_000_000).start()
    for i, when in enumerate(times):
        chosen = rng.choice(len(users), ROWS_PER_ENTRY)
        log.log(
            LogEntry(
                float(when),
                f"bench-{i}",
                "1",
                np.asarray([users[j] for j in chosen], dtype=object),
                np.full(ROWS_PER_ENTRY, 10),
                np.asarray(
                    [[items[j] for j in rng.choice(len(items), 10)] for _ in chosen], dtype=object
                ),
                np.sort(rng.random((ROWS_PER_ENTRY, 10)))[:, ::-1],
                cold_start=np.zeros(ROWS_PER_ENTRY, dtype=bool),
            )
        )
    log.close(timeout=600)
    assert not any(log.dropped.values()), log.dropped
    return sum(p.stat().st_size for p in directory.glob("requests-*.jsonl*"))


@pytest.mark.timeout(3600)
def test_check_memory_and_time_on_a_large_request_log(tmp_path, monkeypatch):
    home = tmp_path / "home"
    train, _, items = _champion(home, monkeypatch)
    users = sorted(train["user_id"].astype(str).unique())
    started = time.monotonic()
    size = _write_log(home / "requests", ROWS, users, sorted(items["item_id"].astype(str)))
    written = time.monotonic() - started
    out, peak_mb, step, seconds = _check(home)
    # The window alone, in this process: what the log's size costs the check.
    config = MonitoringConfig()
    started = time.monotonic()
    window = read_window(
        request_log=home / "requests", feedback=None, as_of=time.time(), config=config
    )
    read_seconds = time.monotonic() - started
    # The same check on a log of one window (1,000 rows): the cost of the check itself
    # (imports, the champion's download, the detectors, MLflow), whatever the log.
    (home / "requests").rename(home / "requests-large")
    _write_log(home / "requests", config.window_size, users, sorted(items["item_id"].astype(str)))
    _, small_peak_mb, small_step, small_seconds = _check(home)
    print(
        f"\nrequest log: {ROWS:,} rows in {len(list((home / 'requests-large').iterdir()))} "
        f"files, {size / 1e6:.0f} MB (written in {written:.0f}s)\n"
        f"recsys monitor --check-only --json: decision {out['decision']}, "
        f"window rows {out['window']['rows']}\n"
        f"  peak RSS (largest process) {peak_mb:,.0f} MB (target < 500 MB); "
        f"on a 1,000-row log {small_peak_mb:,.0f} MB\n"
        f"  drift-check step {step} s (target < 10 s), whole command {seconds:.1f} s; "
        f"on a 1,000-row log {small_step} s and {small_seconds:.1f} s\n"
        f"  reading the window ({len(window.served):,} rows) of the {ROWS:,}-row log: "
        f"{read_seconds:.2f} s"
    )
    assert out["window"]["rows"]["requests"] == 1000 and len(window.served) == 1000


def _check(home: Path) -> tuple[dict, float, str, float]:
    """`recsys monitor --check-only --json` in the run home: its output, the peak RSS (MB) of
    its largest process, the drift-check step's seconds and the command's."""
    env = {**os.environ, "RECSYS_HOME": str(home)}
    env.pop("MLFLOW_TRACKING_URI", None)
    command = [sys.executable, "-m", "pipelines.cli.main", "monitor", "--check-only", "--json"]
    run = subprocess.run(
        [sys.executable, "-c", MEASURE, *command],
        capture_output=True,
        text=True,
        env=env,
        cwd=REPO,
        timeout=3000,
        check=False,
    )
    peak_kib, seconds, code = run.stdout.strip().splitlines()[-1].split()[1:]
    assert code == "0", run.stderr[-4000:]
    out = json.loads(run.stdout[: run.stdout.rindex("\nMEASURED")])
    step = re.search(r"drift-check\s+([\d.]+)s\s+done", run.stderr)
    return out, int(peak_kib) / 1024, step.group(1) if step else "?", float(seconds)
