"""What `recsys run` prints for the next steps works when copied into the shell that ran it,
whether or not the virtualenv's bin directory is on the PATH."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

SMALL = [
    "--data",
    "synthetic",
    "--synthetic-users",
    "200",
    "--synthetic-items",
    "120",
    "--synthetic-interactions",
    "5000",
]
BIN = Path(sys.executable).parent


def test_the_commands_run_prints_work_when_the_venv_is_not_on_the_path(tmp_path):
    home = tmp_path / "runs"
    path = os.pathsep.join(
        p
        for p in os.environ.get("PATH", "").split(os.pathsep)
        if p and Path(p).resolve() != BIN.resolve()
    )
    env = {
        **{k: v for k, v in os.environ.items() if k != "MLFLOW_TRACKING_URI"},
        "PATH": path,
        "RECSYS_HOME": str(home),
    }
    run = subprocess.run(
        [str(BIN / "recsys"), "run", *SMALL],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
        check=False,
    )
    assert run.returncode == 0, run.stderr[-3000:]
    lines = {
        line.split(":", 1)[0]: line.split(":", 1)[1].strip()
        for line in run.stdout.splitlines()
        if line.startswith(("MLflow UI:", "Console:"))
    }
    console = lines["Console"].split("   (")[0]
    mlflow_ui = lines["MLflow UI"].split("   (")[0]
    assert console.split()[0] != "recsys" and console.endswith(f"console --home {home.resolve()}")
    # Copied as printed, into a shell with the same PATH and working directory: each is found.
    for printed in (console, mlflow_ui):
        shell = subprocess.run(
            ["bash", "-c", f"{printed} --help"],
            cwd=tmp_path,
            env=env,
            capture_output=True,
            text=True,
            timeout=120,
            check=False,
        )
        assert shell.returncode == 0, (printed, shell.stderr[-500:])
        assert "command not found" not in shell.stderr
    bare = subprocess.run(
        ["bash", "-c", "recsys --help"],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert bare.returncode == 127  # the bare name, as printed before, would not have worked
