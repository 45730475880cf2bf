"""Run the KFP pipeline on this machine: `kfp.local.SubprocessRunner` runs every component in
a subprocess of the current environment, MLflow is a SQLite store in the run home, and the
deploy step records the champion for `recsys serve`. No cluster, no Docker.
"""
from __future__ import annotations

import contextlib
import io
import json
import os
import re
import sys
import warnings
from pathlib import Path
from typing import Any

from components.errors import RecsysError
from components.registry import default_tracking_uri

_ANSI = re.compile(r"\x1b\[[0-9;]*m")


class _ErrorWatcher(io.TextIOBase):
    """Passes the steps' output through and remembers the last error meant for the user.

    The local runner prints each step's output and then raises a generic RuntimeError; the
    step's own one-line error (bad data, bad config) is what the user needs to read last."""

    _pattern = re.compile(r"components\.errors\.\w+: (.*)")

    def __init__(self, stream: io.TextIOBase):
        self.stream = stream
        self.last_error: str | None = None

    def write(self, text: str) -> int:
        match = self._pattern.search(text)
        if match:
            self.last_error = match.group(1).strip()
        return self.stream.write(text)

    def flush(self) -> None:
        self.stream.flush()


def _absolute_if_path(value: str) -> str:
    """Components run in subprocesses: a relative data path must not depend on their cwd."""
    return str(Path(value).resolve()) if value and Path(value).exists() else value


def _run(pipeline, home: Path, arguments: dict[str, Any], *, quiet_stdout: bool = False) -> str:
    """Run a pipeline function with the local runner in `home`; returns its output. A failed
    step's own one-line error becomes the RecsysError. `quiet_stdout` sends the steps' output
    to stderr (for a caller that prints JSON on stdout)."""
    from kfp import local

    os.environ["RECSYS_HOME"] = str(home)  # the deploy step writes its record here
    local.init(
        runner=local.SubprocessRunner(use_venv=False),
        pipeline_root=str(home / "pipeline_root"),
        raise_on_error=True,
    )
    # Locally, resources, retries and the custom image are no-ops by design; the runner's
    # warnings about them would only bury the progress.
    warnings.filterwarnings("ignore", category=RuntimeWarning, module=r"kfp\.local")
    warnings.filterwarnings("ignore", category=UserWarning, module=r"kfp\.local")
    watcher = _ErrorWatcher(sys.stderr if quiet_stdout else sys.stdout)
    try:
        with contextlib.redirect_stdout(watcher):
            task = pipeline(**arguments)
    except RuntimeError as exc:
        raise RecsysError(watcher.last_error or _ANSI.sub("", str(exc))) from None
    return task.output


def run_local(
    *,
    source: str,
    items: str = "",
    config_yaml: str = "",
    home: Path,
    synthetic_users: int = 1000,
    synthetic_items: int = 500,
    synthetic_interactions: int = 50000,
    seed: int = 42,
    data_version: str = "",
    feedback: str = "",
) -> dict[str, Any]:
    """Run the whole pipeline; returns the deploy step's summary (registration, metrics, ...)."""
    from pipelines.pipeline import build_pipeline

    home = home.resolve()
    home.mkdir(parents=True, exist_ok=True)
    tracking_uri = default_tracking_uri(home)
    output = _run(build_pipeline(), home, {
        "source": _absolute_if_path(source),
        "items": _absolute_if_path(items),
        "config_yaml": config_yaml,
        "mlflow_tracking_uri": tracking_uri,
        "deploy_target": "local",
        "synthetic_users": synthetic_users,
        "synthetic_items": synthetic_items,
        "synthetic_interactions": synthetic_interactions,
        "seed": seed,
        "data_version": data_version,
        "feedback": _absolute_if_path(feedback),
    })
    summary = json.loads(output)
    summary["tracking_uri"] = tracking_uri
    return summary


def run_monitoring_local(
    *,
    home: Path,
    request_log: str = "",
    feedback: str = "",
    config_yaml: str = "",
    as_of: float = 0.0,
    allow_retrain: bool = True,
    quiet_stdout: bool = False,
    pushgateway: str = "",
    source: str = "movielens-dslabs",
    items: str = "",
    synthetic_users: int = 1000,
    synthetic_items: int = 500,
    synthetic_interactions: int = 50000,
    seed: int = 42,
    data_version: str = "",
) -> dict[str, Any]:
    """Run the monitoring pipeline once (check, and on retrain the training pipeline on the
    source plus the feedback, deploying locally); returns {"check": ..., "retraining": ...}."""
    from pipelines.monitoring import build_monitoring_pipeline

    home = home.resolve()
    home.mkdir(parents=True, exist_ok=True)
    tracking_uri = default_tracking_uri(home)
    output = _run(build_monitoring_pipeline(), home, {
        "feedback": _absolute_if_path(feedback),
        "request_log": _absolute_if_path(request_log),
        "config_yaml": config_yaml,
        "mlflow_tracking_uri": tracking_uri,
        "as_of": float(as_of),
        "allow_retrain": allow_retrain,
        "pushgateway": pushgateway,
        "source": _absolute_if_path(source),
        "items": _absolute_if_path(items),
        "deploy_target": "local",
        "synthetic_users": synthetic_users,
        "synthetic_items": synthetic_items,
        "synthetic_interactions": synthetic_interactions,
        "seed": seed,
        "data_version": data_version,
    }, quiet_stdout=quiet_stdout)
    summary = json.loads(output)
    summary["tracking_uri"] = tracking_uri
    return summary
