"""`recsys simulate --traffic`: simulated users into the run home's own serving stack, so that
`recsys monitor` has a window to test afterwards. Real parts throughout: `recsys run` on
synthetic data, the model server and the events service it starts on loopback ports, the
home's request log and feedback store, the monitoring pipeline."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from serving_process import free_port

REPO = Path(__file__).resolve().parents[2]
SMALL = ["--data", "synthetic", "--synthetic-users", "200", "--synthetic-items", "120",
         "--synthetic-interactions", "5000"]


def _recsys(*args: str, home: Path, timeout: float = 900) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items()
           if k not in ("MLFLOW_TRACKING_URI", "RECSYS_FEEDBACK_STORE", "RECSYS_ONLINE_STORE")}
    env["RECSYS_HOME"] = str(home)
    return subprocess.run([str(Path(sys.executable).parent / "recsys"), *args], cwd=REPO, env=env,
                          capture_output=True, text=True, timeout=timeout, check=False)


def test_traffic_gives_the_monitor_a_window_on_the_home(tmp_path):
    home = tmp_path / "runs"
    run = _recsys("run", *SMALL, home=home)
    assert run.returncode == 0, run.stderr[-3000:]

    traffic = _recsys("simulate", "--traffic", "--home", str(home), "--users", "150",
                      "--sessions", "1000", "--http-port", str(free_port()),
                      "--events-url", f"http://127.0.0.1:{free_port()}", home=home)
    assert traffic.returncode == 0, traffic.stderr[-3000:]
    out = traffic.stdout
    assert "started the model server at http://127.0.0.1:" in out
    assert "started the events service at http://127.0.0.1:" in out
    assert "sent 1,000 sessions in 50 requests" in out
    assert "HTTP Request:" not in out + traffic.stderr
    assert not (home / "simulation").exists()  # the home itself, not a simulation of its own
    served = [json.loads(line) for f in sorted((home / "requests").glob("*.jsonl*"))
              for line in f.read_text().splitlines() if line.strip()]
    assert len(served) >= 1000
    # The model knows these users: most answers are personalised, not the cold-start list.
    assert sum(not row.get("cold_start") for row in served) > len(served) / 2

    monitor = _recsys("monitor", "--home", str(home), "--check-only", "--json", home=home)
    assert monitor.returncode == 0, monitor.stderr[-3000:]
    check = json.loads(monitor.stdout)
    assert len(check["drift"]) > 0, check["notes"]  # features tested: the window is big enough
    assert any(key.startswith("requests.") for key in check["drift"]), check["drift"]
