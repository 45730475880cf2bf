"""The events service as a child process on a free loopback port, for tests and benchmarks."""
from __future__ import annotations

import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import httpx

REPO = Path(__file__).resolve().parents[1]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start_service(store_url: str, log: Path, *extra: str) -> tuple[subprocess.Popen, str]:
    """`python -m serving.events` on `store_url`; returns the process and its base URL once
    /healthz answers 200."""
    port = free_port()
    with log.open("ab") as out:
        proc = subprocess.Popen(
            [sys.executable, "-m", "serving.events", "--store", store_url, "--host", "127.0.0.1",
             "--port", str(port), *extra], cwd=REPO, stdout=out, stderr=subprocess.STDOUT)
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 60
    while True:
        try:
            if httpx.get(url + "/healthz", timeout=1).status_code == 200:
                return proc, url
        except httpx.HTTPError:
            pass
        if proc.poll() is not None or time.monotonic() > deadline:
            proc.kill()
            raise RuntimeError(f"events service did not start:\n{log.read_text()[-3000:]}")
        time.sleep(0.1)


def stop_service(proc: subprocess.Popen) -> int:
    """SIGTERM, as Kubernetes stops a pod; the exit code (-9 if it had to be killed)."""
    proc.send_signal(signal.SIGTERM)
    try:
        return proc.wait(60)
    except subprocess.TimeoutExpired:
        proc.kill()
        return -9
