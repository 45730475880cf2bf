"""Run the KFP pipeline on this machine: `kfp.local.SubprocessRunner` runs every component in
a subprocess of the current environment, MLflow is a SQLite store in the run home, and the
deploy step records the champion for `recsys serve`. No cluster, no Docker.
"""
from __future__ import annotations

import contextlib
import io
import json
import logging
import os
import re
import sys
import time
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import Any

from components.errors import RecsysError
from components.release.registry import default_tracking_uri

_ANSI = re.compile(r"\x1b\[[0-9;]*m")


class StepLog(io.TextIOBase):
    """Everything the local runner prints goes here: all of it to the run's log file (and to
    the terminal with --verbose), one line per step to `progress` (name, seconds, status), and
    the cause of a failure kept for the last line of `recsys run`.

    The runner prints each step's output, then its own status lines, and raises a generic
    RuntimeError ("Task 'ingest-op' finished with status FAILURE"); the step's own error (its
    traceback's last line, one line for our RecsysErrors) is what the user needs to read."""

    _started = re.compile(r"Executing task '([\w-]+)'")
    _finished = re.compile(r"Task '([\w-]+)' finished with status (\w+)")
    _cached = re.compile(r"Task '?([\w-]+)'? cache hit")
    _retry = re.compile(r"Task '?([\w-]+)'? failed \(attempt (\d+)/(\d+)\)\. Retrying in ([\d.]+)s")
    _exception = re.compile(r"^\s*((?:[A-Za-z_][\w]*\.)*([A-Za-z_]\w*(?:Error|Exception|Exit)\w*)): (.+)$")

    def __init__(self, log_file: io.TextIOBase, progress: Callable[[str], None],
                 echo: io.TextIOBase | None = None, names: dict[str, str] | None = None):
        self.log_file = log_file
        self.names = names or {}  # task name in the runner's lines -> the step's display name
        self.progress = progress
        self.echo = echo
        self.failed_step: str | None = None
        self.cause: str | None = None
        self._step: str | None = None
        self._step_started = 0.0
        self._step_error: str | None = None
        self._pending = ""

    def step_name(self, task: str) -> str:
        return self.names.get(task) or task.removesuffix("-op")

    def write(self, text: str) -> int:
        self.log_file.write(_ANSI.sub("", text))  # colours are for terminals
        if self.echo is not None:
            self.echo.write(text)
        self._pending += text
        *lines, self._pending = self._pending.split("\n")
        for line in lines:
            self._line(_ANSI.sub("", line))
        return len(text)

    def _line(self, line: str) -> None:
        if match := self._started.search(line):
            self._step, self._step_started, self._step_error = match.group(1), time.monotonic(), None
        elif match := self._finished.search(line):
            name, status = self.step_name(match.group(1)), match.group(2)
            seconds = time.monotonic() - self._step_started
            self.progress(f"  {name:<12} {seconds:6.1f}s  {'done' if status == 'SUCCESS' else 'FAILED'}")
            if status != "SUCCESS":
                self.failed_step, self.cause = name, self._step_error
        elif match := self._cached.search(line):
            self.progress(f"  {self.step_name(match.group(1)):<12} {'':>6}   cached")
        elif match := self._retry.search(line):
            self.progress(f"  {self.step_name(match.group(1)):<12} failed (attempt {match.group(2)} "
                          f"of {match.group(3)}), retrying in {float(match.group(4)):.0f}s")
        elif self._step is not None and (match := self._exception.match(line)):
            qualified, message = match.group(1), match.group(3).strip()
            # Ours are written for the user: the message alone. Anything else: its type too.
            self._step_error = message if qualified.startswith("components.errors.") else (
                f"{match.group(2)}: {message}")

    def flush(self) -> None:
        self.log_file.flush()
        if self.echo is not None:
            self.echo.flush()


def display_names(pipeline) -> dict[str, str]:
    """Each task's display name (`set_display_name`) by the name the local runner logs it
    under: the compiler's task key, which for a component used twice reads
    `monitoring-summary-op-2`. Display names are a no-op for the runner itself."""
    spec = pipeline.pipeline_spec
    names: dict[str, str] = {}
    for dag in [spec.root.dag, *(c.dag for c in spec.components.values())]:
        for key, task in dag.tasks.items():
            names.setdefault(key, task.task_info.name or key)
    return names


def _absolute_if_path(value: str) -> str:
    """Components run in subprocesses: a relative data path must not depend on their cwd."""
    return str(Path(value).resolve()) if value and Path(value).exists() else value


def _run(pipeline, home: Path, arguments: dict[str, Any], *, name: str, verbose: bool = False,
         quiet_stdout: bool = False,
         progress: Callable[[str], None] = lambda line: print(line, file=sys.stderr, flush=True),
         ) -> tuple[str, Path]:
    """Run a pipeline function with the local runner in `home`; returns its output and the
    path of its full log. The steps' output (hundreds of lines) goes to
    `logs/<name>-<time>.log` under the run home; the terminal gets one line per step, or
    everything with `verbose` (on stderr with `quiet_stdout`, for a caller printing JSON). A
    failed step's own cause becomes the RecsysError, the last line the user reads."""
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
    log_path = home / "logs" / f"{name}-{time.strftime('%Y%m%d-%H%M%S')}.log"
    log_path.parent.mkdir(parents=True, exist_ok=True)
    progress(f"full log: {log_path}")
    root = logging.getLogger()
    saved_handlers, saved_level = root.handlers[:], root.level
    echo = (sys.stderr if quiet_stdout else sys.stdout) if verbose else None
    with log_path.open("w") as log_file:
        sink = StepLog(log_file, progress, echo=echo, names=display_names(pipeline))
        # The runner also logs outside its steps (start, retries, end) through the root logger.
        root.handlers = [logging.StreamHandler(sink)]
        root.setLevel(logging.INFO)
        try:
            with contextlib.redirect_stdout(sink):
                task = pipeline(**arguments)
        except RuntimeError as exc:
            sink.flush()
            # The step's line above already says which step failed: the last line is its cause.
            raise RecsysError(sink.cause or _ANSI.sub("", str(exc))) from None
        finally:
            root.handlers, root.level = saved_handlers, saved_level
    return task.output, log_path


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
    verbose: bool = False,
    columns: str = "",
    tune_trials: int = 0,
    tune_space: str = "",
    tune_storage: str = "",
) -> dict[str, Any]:
    """Run the whole pipeline; returns the deploy step's summary (registration, metrics, ...).
    `tune_trials` > 0 tunes the config first over `tune_space` (the space's YAML text)."""
    from pipelines.pipeline import build_pipeline

    home = home.resolve()
    home.mkdir(parents=True, exist_ok=True)
    tracking_uri = default_tracking_uri(home)
    output, log_path = _run(build_pipeline(), home, {
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
        "columns": columns,
        "tune_trials": tune_trials,
        "tune_space": tune_space,
        # Locally the studies stay in the run home: a rerun on the same data, space and config
        # reuses its study's result instead of tuning again (kfp.local's own cache is off).
        "tune_storage": tune_storage or (f"sqlite:///{home / 'tune.db'}" if tune_trials else ""),
    }, name="run", verbose=verbose)
    summary = json.loads(output)
    summary["tracking_uri"] = tracking_uri
    summary["log_path"] = str(log_path)
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
    columns: str = "",
    verbose: bool = False,
) -> dict[str, Any]:
    """Run the monitoring pipeline once (check, and on retrain the training pipeline on the
    source plus the feedback, deploying locally); returns {"check": ..., "retraining": ...}."""
    from pipelines.monitoring import build_monitoring_pipeline

    home = home.resolve()
    home.mkdir(parents=True, exist_ok=True)
    tracking_uri = default_tracking_uri(home)
    output, log_path = _run(build_monitoring_pipeline(), home, {
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
        "columns": columns,
    }, name="monitor", quiet_stdout=quiet_stdout, verbose=verbose)
    summary = json.loads(output)
    summary["tracking_uri"] = tracking_uri
    summary["log_path"] = str(log_path)
    return summary
