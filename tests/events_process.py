"""The events service as a child process on a free loopback port, for tests and benchmarks."""
from __future__ import annotations

import signal
import subprocess
import sys
import time
from pathlib import Path

import httpx
from ports import free_port  # re-exported: tests import it from here

REPO = Path(__file__).resolve().parents[1]



def launch_service(store_url: str, log: Path, *extra: str) -> tuple[subprocess.Popen, str]:
    """`python -m serving.events` on `store_url`, started; returns the process and base URL."""
    port = free_port()
    with log.open("ab") as out:
        proc = subprocess.Popen(
            [sys.executable, "-m", "serving.events", "--store", store_url, "--host", "127.0.0.1",
             "--port", str(port), *extra], cwd=REPO, stdout=out, stderr=subprocess.STDOUT)
    return proc, f"http://127.0.0.1:{port}"


def wait_ready(proc: subprocess.Popen, url: str, log: Path, path: str = "/healthz",
               timeout: float = 120) -> None:
    """Until `url + path` answers 200; the log's tail if the process dies or takes too long."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            if httpx.get(url + path, timeout=1).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        if proc.poll() is not None or time.monotonic() > deadline:
            proc.kill()
            raise RuntimeError(f"{proc.args[:3]} did not start:\n{log.read_text()[-3000:]}")
        time.sleep(0.1)


def start_service(store_url: str, log: Path, *extra: str) -> tuple[subprocess.Popen, str]:
    """`launch_service`, then wait until /healthz answers 200."""
    proc, url = launch_service(store_url, log, *extra)
    wait_ready(proc, url, log)
    return proc, url


def stop_service(proc: subprocess.Popen) -> int:
    """SIGTERM, as Kubernetes stops a pod; the exit code (-9 if it had to be killed)."""
    proc.send_signal(signal.SIGTERM)
    try:
        return proc.wait(60)
    except subprocess.TimeoutExpired:
        proc.kill()
        return -9
