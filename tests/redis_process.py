"""A Redis server of the test's own on a free loopback port, to kill, freeze and restart (the
machine's shared Redis must never be): `redis-server --save "" --appendonly no`, so a restart
starts empty, as a Redis without persistence does."""
from __future__ import annotations

import os
import shutil
import signal
import subprocess
import time
from pathlib import Path

import pytest
import redis
from events_process import free_port


class RedisServer:
    def __init__(self, workdir: Path):
        self.workdir, self.port = workdir, free_port()
        self.url = f"redis://127.0.0.1:{self.port}/0"
        self.proc: subprocess.Popen | None = None

    def start(self) -> RedisServer:
        """Start (again, on the same port) and wait until it answers."""
        log = (self.workdir / "redis.log").open("ab")
        self.proc = subprocess.Popen(
            ["redis-server", "--port", str(self.port), "--bind", "127.0.0.1", "--save", "",
             "--appendonly", "no", "--dir", str(self.workdir)],
            stdout=log, stderr=subprocess.STDOUT)
        log.close()
        client = redis.Redis.from_url(self.url, socket_timeout=1)
        deadline = time.monotonic() + 20
        while True:
            try:
                client.ping()
                break
            except redis.RedisError:
                if self.proc.poll() is not None or time.monotonic() > deadline:
                    raise RuntimeError("redis-server did not start: "
                                       + (self.workdir / "redis.log").read_text()[-2000:])
                time.sleep(0.05)
        client.close()
        return self

    def kill(self) -> None:
        """SIGKILL: gone with everything it held."""
        assert self.proc is not None
        self.proc.send_signal(signal.SIGCONT)  # in case it was frozen
        self.proc.kill()
        self.proc.wait(10)

    def freeze(self) -> None:
        """SIGSTOP: connections are accepted by the kernel, nothing is answered."""
        assert self.proc is not None
        self.proc.send_signal(signal.SIGSTOP)

    def thaw(self) -> None:
        assert self.proc is not None
        self.proc.send_signal(signal.SIGCONT)

    def client(self) -> redis.Redis:
        return redis.Redis.from_url(self.url, socket_timeout=5, decode_responses=True)

    def close(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.kill()


def private_redis_server(workdir: Path) -> RedisServer:
    """A started `RedisServer`; the test skips when redis-server is not installed (fails under
    CI=1, which must have it)."""
    if shutil.which("redis-server") is None:
        message = "redis-server not installed (the test kills and freezes a Redis of its own)"
        if os.environ.get("CI"):
            pytest.fail(message + "; CI must have it")
        pytest.skip(message)
    return RedisServer(workdir).start()
