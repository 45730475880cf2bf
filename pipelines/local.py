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
) -> dict[str, Any]:
    """Run the whole pipeline; returns the deploy step's summary (registration, metrics, ...)."""
    from kfp import local

    from pipelines.pipeline import build_pipeline

    home = home.resolve()
    home.mkdir(parents=True, exist_ok=True)
    os.environ["RECSYS_HOME"] = str(home)  # the deploy step writes its record here
    tracking_uri = default_tracking_uri(home)
    local.init(
        runner=local.SubprocessRunner(use_venv=False),
        pipeline_root=str(home / "pipeline_root"),
        raise_on_error=True,
    )
    # Locally, resources, retries and the custom image are no-ops by design; the runner's
    # warnings about them would only bury the progress.
    warnings.filterwarnings("ignore", category=RuntimeWarning, module=r"kfp\.local")
    warnings.filterwarnings("ignore", category=UserWarning, module=r"kfp\.local")
    watcher = _ErrorWatcher(sys.stdout)
    try:
        with contextlib.redirect_stdout(watcher):
            task = build_pipeline()(
                source=_absolute_if_path(source),
                items=_absolute_if_path(items),
                config_yaml=config_yaml,
                mlflow_tracking_uri=tracking_uri,
                deploy_target="local",
                synthetic_users=synthetic_users,
                synthetic_items=synthetic_items,
                synthetic_interactions=synthetic_interactions,
                seed=seed,
                data_version=data_version,
            )
    except RuntimeError as exc:
        raise RecsysError(watcher.last_error or _ANSI.sub("", str(exc))) from None
    summary = json.loads(task.output)
    summary["tracking_uri"] = tracking_uri
    return summary
