"""The processes behind the console, each a real command on free loopback ports: the predictor
(`recsys serve` on a run home's deployment record), the events service (`recsys events serve`)
and the console (`recsys console`). Shared by the console's tests, benchmark and screenshots."""
from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import httpx
from ports import free_port  # re-exported: tests import it from here

REPO = Path(__file__).resolve().parents[1]



@dataclass
class Service:
    name: str
    process: subprocess.Popen
    url: str
    log: Path

    def output(self) -> str:
        return self.log.read_text(errors="replace") if self.log.exists() else ""

    def stop(self, timeout: float = 20) -> int:
        """SIGTERM (what Kubernetes sends), then what is left of the process group."""
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(timeout)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(5)
        try:
            os.killpg(self.process.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        return self.process.returncode


def start(name: str, args: list[str], log: Path, health: str, *, url: str, home: Path,
          timeout: float = 120) -> Service:
    """`recsys <args>` in its own session; returns once `url + health` answers 200."""
    env = {**os.environ, "RECSYS_HOME": str(home), "PYTHONUNBUFFERED": "1"}
    env.pop("MLFLOW_TRACKING_URI", None)
    env.pop("RECSYS_FEEDBACK_STORE", None)
    with log.open("wb") as out:  # a file, not a pipe: a full pipe would block the service
        process = subprocess.Popen([sys.executable, "-m", "pipelines.cli.main", *args], cwd=REPO,
                                   env=env, stdout=out, stderr=subprocess.STDOUT,
                                   start_new_session=True)
    service = Service(name, process, url, log)
    deadline = time.monotonic() + timeout
    while True:
        if process.poll() is not None:
            raise RuntimeError(f"{name} exited with {process.returncode}:\n{service.output()[-3000:]}")
        try:
            if httpx.get(url + health, timeout=2).status_code == 200:
                return service
        except httpx.HTTPError:
            pass
        if time.monotonic() > deadline:
            service.stop()
            raise RuntimeError(f"{name} not healthy after {timeout}s:\n{service.output()[-3000:]}")
        time.sleep(0.2)


def start_predictor(home: Path, work: Path) -> Service:
    port = free_port()
    return start("predictor", ["serve", "--http-port", str(port), "--grpc-port", str(free_port()),
                               "--request-log", str(home / "requests")],
                 work / "predictor.log", "/v2/models/recsys/ready",
                 url=f"http://127.0.0.1:{port}", home=home)


def start_events(home: Path, work: Path) -> Service:
    port = free_port()
    return start("events service", ["events", "serve", "--home", str(home), "--host",
                                    "127.0.0.1", "--port", str(port)],
                 work / "events.log", "/healthz", url=f"http://127.0.0.1:{port}", home=home)


def start_console(home: Path, work: Path, *, predictor: str, events: str,
                  extra: tuple[str, ...] = ()) -> Service:
    port = free_port()
    return start("console", ["console", "--home", str(home), "--port", str(port),
                             "--predictor-url", predictor, "--events-url", events, *extra],
                 work / "console.log", "/healthz", url=f"http://127.0.0.1:{port}", home=home)


def events_command_exists() -> bool:
    """Whether this build has `recsys events serve` (the events service)."""
    import contextlib
    import io

    from pipelines.cli.main import build_parser

    with contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(io.StringIO()):
        try:
            build_parser().parse_args(["events", "serve", "--help"])
        except SystemExit as exc:
            return exc.code == 0
    return True
