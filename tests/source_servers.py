"""Real servers and repositories behind the remote data sources, for tests and benchmarks.

- S3: moto's standalone server (`python -m moto.server`), a real HTTP S3 endpoint on a loopback
  port (MinIO's server binary is not on the package registries these machines reach);
- SQL: the machine's PostgreSQL, one freshly created database per use, dropped afterwards;
- DVC: a local git repository with DVC and a local DVC remote, driven by the `dvc` CLI.
"""
from __future__ import annotations

import contextlib
import os
import shutil
import socket
import subprocess
import sys
import time
import urllib.request
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
from ports import free_port  # re-exported: tests import it from here

S3_ENV = {
    "AWS_ACCESS_KEY_ID": "recsys-test-key",
    "AWS_SECRET_ACCESS_KEY": "recsys-test-secret-do-not-print",
    "AWS_DEFAULT_REGION": "us-east-1",
}
PG_HOST, PG_PORT, PG_USER = "127.0.0.1", 5432, "postgres"



@contextlib.contextmanager
def moto_server() -> Iterator[str]:
    """A moto S3 server on a free loopback port; yields its endpoint URL."""
    port = free_port()
    process = subprocess.Popen(
        [sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(port)],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )
    endpoint = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 60
        while True:
            try:
                urllib.request.urlopen(f"{endpoint}/moto-api/", timeout=2)
                break
            except OSError:
                if process.poll() is not None or time.monotonic() > deadline:
                    raise RuntimeError("moto server did not start") from None
                time.sleep(0.2)
        yield endpoint
    finally:
        process.terminate()
        process.wait(timeout=30)


def set_moto_auth(endpoint: str, enabled: bool) -> None:
    """moto checks credentials and IAM policies only when told to (its reset-auth endpoint)."""
    body = b"0" if enabled else b"inf"
    request = urllib.request.Request(f"{endpoint}/moto-api/reset-auth", data=body,
                                     headers={"Content-Type": "text/plain"})  # not a form
    urllib.request.urlopen(request)


def postgres_available() -> bool:
    try:
        with socket.create_connection((PG_HOST, PG_PORT), timeout=2):
            return True
    except OSError:
        return False


def require_postgres() -> None:
    """Skip without PostgreSQL, except under CI, where its absence is a failure."""
    if postgres_available():
        return
    message = f"PostgreSQL not reachable at {PG_HOST}:{PG_PORT}"
    if os.environ.get("CI"):
        pytest.fail(message + " (CI=1: the service must be running)")
    pytest.skip(message)


def _admin(sql: str) -> None:
    import psycopg

    with psycopg.connect(host=PG_HOST, port=PG_PORT, user=PG_USER, dbname="postgres",
                         autocommit=True) as conn:
        conn.execute(sql)


@contextlib.contextmanager
def postgres_database() -> Iterator[str]:
    """A new, uniquely named database; yields its SQLAlchemy URL (no password: trust auth)."""
    require_postgres()
    name = f"recsys_sources_{uuid.uuid4().hex[:10]}"
    _admin(f"CREATE DATABASE {name}")
    try:
        yield f"postgresql+psycopg://{PG_USER}@{PG_HOST}:{PG_PORT}/{name}"
    finally:
        _admin(f"DROP DATABASE IF EXISTS {name} WITH (FORCE)")


@contextlib.contextmanager
def postgres_role() -> Iterator[str]:
    """A login role with no privileges on anything; yields its name."""
    require_postgres()
    name = f"recsys_reader_{uuid.uuid4().hex[:10]}"
    _admin(f"CREATE ROLE {name} LOGIN")
    try:
        yield name
    finally:
        _admin(f"DROP ROLE IF EXISTS {name}")


def psycopg_dsn(sqlalchemy_url: str) -> str:
    return sqlalchemy_url.replace("postgresql+psycopg://", "postgresql://")


class DvcRepo:
    """A git repository with DVC, its remote a local directory; each `commit` also pushes."""

    def __init__(self, root: Path):
        self.path = root / "repo"
        self.remote = root / "remote"
        self.path.mkdir(parents=True)
        self.remote.mkdir()
        self.git("init", "-q", "-b", "main")
        self.git("config", "user.email", "data@example.com")
        self.git("config", "user.name", "data")
        self.dvc("init", "-q")
        self.dvc("config", "core.autostage", "true")
        self.dvc("remote", "add", "-d", "storage", str(self.remote))
        self.git("commit", "-qm", "dvc init")

    def git(self, *args: str) -> str:
        return subprocess.run(["git", *args], cwd=self.path, check=True, capture_output=True,
                              text=True).stdout

    def dvc(self, *args: str) -> str:
        result = subprocess.run([sys.executable, "-m", "dvc", *args], cwd=self.path,
                                check=False, capture_output=True, text=True)
        if result.returncode != 0:
            raise RuntimeError(f"dvc {' '.join(args)}: {result.stderr[-2000:]}")
        return result.stdout

    def commit(self, message: str, *tracked: str, tag: str | None = None) -> str:
        """`dvc add` the paths, commit (and tag), push the data; returns the commit id."""
        if tracked:
            self.dvc("add", "-q", *tracked)
        self.git("add", "-A")
        self.git("commit", "-qm", message)
        if tag:
            self.git("tag", tag)
        self.dvc("push", "-q")
        return self.git("rev-parse", "HEAD").strip()

    def drop_cache(self) -> None:
        """Forget the local cache, so reads must come from the remote."""
        shutil.rmtree(self.path / ".dvc" / "cache", ignore_errors=True)
