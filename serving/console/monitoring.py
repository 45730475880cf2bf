"""The Monitoring page's data: events and requests over time, cold-start share, latency
percentiles, the last drift decisions and the last pipeline runs.

Sources, each optional (a missing one is a sentence on the page):
- events: the feedback store (`FeedbackStore.read_events` over the window);
- requests and cold starts: the predictor's request log (`<home>/requests`); without one, the
  impressions the predictor stored (requests only, no cold-start flag);
- latency: the predictor's `/metrics` histograms (since it started), per model version when it
  serves an experiment;
- drift: the monitoring pipeline's decisions (`recsys monitor`), where that is installed;
- pipeline runs: MLflow.

Reads are bounded: a time window, and the request log's files are parsed once per file version
(cached by inode, size and modification time), keeping only the columns the page needs.
"""
from __future__ import annotations

import math
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from serving.console.clients import Unavailable
from serving.console.formatting import where

WINDOWS = {"1h": 3_600, "24h": 86_400, "7d": 7 * 86_400, "30d": 30 * 86_400}
DEFAULT_WINDOW = "24h"
BUCKETS = 48
LOG_COLUMNS = ["unix_time", "model_version", "cold_start", "user_id", "request_id"]


def window_seconds(name: str | None) -> tuple[str, int]:
    name = name if name in WINDOWS else DEFAULT_WINDOW
    return name, WINDOWS[name]


def buckets(since: float, until: float, count: int = BUCKETS) -> tuple[np.ndarray, float]:
    """Bucket starts and width covering [since, until), on round boundaries."""
    raw = (until - since) / count
    step = next((s for s in (60, 300, 900, 1800, 3600, 3 * 3600, 6 * 3600, 86_400)
                 if s >= raw), 86_400)
    first = math.floor(since / step) * step
    starts = np.arange(first, until, step, dtype=float)
    return starts, float(step)


def counts_by(times: pd.Series, keys: pd.Series | None, starts: np.ndarray,
              step: float) -> dict[str, np.ndarray]:
    """Counts per bucket, per key (one series "all" without keys)."""
    index = np.floor((times.to_numpy(float) - starts[0]) / step).astype(int)
    inside = (index >= 0) & (index < len(starts))
    out = {}
    if keys is None:
        out["all"] = np.bincount(index[inside], minlength=len(starts)).astype(float)
        return out
    key_values = keys.astype(str).to_numpy()[inside]
    for key in sorted(set(key_values)):
        out[key] = np.bincount(index[inside][key_values == key], minlength=len(starts)).astype(float)
    return out


# ------------------------------------------------------------------ the request log
class RequestLogReader:
    """The request log's records in a window; each file parsed once per version of it."""

    def __init__(self, directory: Path):
        self.directory = directory
        self._cache: dict[tuple[int, int, int], pd.DataFrame] = {}
        self._lock = threading.Lock()

    def read(self, since: float) -> pd.DataFrame:
        if not self.directory.is_dir():
            raise Unavailable(f"no request log at {self.directory}: start the predictor with "
                              f"`recsys serve --request-log {self.directory}`")
        frames, keep = [], set()
        with self._lock:
            for path in sorted(self.directory.glob("requests-*.jsonl*")):
                try:
                    stat = path.stat()
                except FileNotFoundError:  # rotated away while listing
                    continue
                if stat.st_mtime < since or stat.st_size == 0:
                    continue
                key = (stat.st_ino, stat.st_size, stat.st_mtime_ns)
                keep.add(key)
                if key not in self._cache:
                    self._cache[key] = _parse(path)
                frames.append(self._cache[key])
            for stale in set(self._cache) - keep:
                del self._cache[stale]
        if not frames:
            return pd.DataFrame(columns=LOG_COLUMNS)
        frame = pd.concat(frames, ignore_index=True)
        return frame[frame["unix_time"] >= since]


def _parse(path: Path) -> pd.DataFrame:
    try:
        frame = pd.read_json(path, lines=True, dtype=False, convert_dates=False)
    except ValueError:  # a line cut by a writer mid-flush: read the whole lines only
        import json

        rows = []
        for line in path.read_text(errors="replace").splitlines():
            try:
                rows.append(json.loads(line))
            except ValueError:
                continue
        frame = pd.DataFrame(rows)
    for column in LOG_COLUMNS:
        if column not in frame:
            frame[column] = None
    return frame[LOG_COLUMNS]


# ------------------------------------------------------------------ latency from /metrics
@dataclass
class Latency:
    source: str  # what the histogram measures
    version: str
    count: float
    p50: float | None
    p90: float | None
    p99: float | None


def latency_from_metrics(text: str, model_name: str) -> list[Latency]:
    """Percentiles of the predictor's histograms: the model call per version when an experiment
    router serves, else KServe's predict time."""
    from prometheus_client.parser import text_string_to_metric_families

    from components.experiments.serving_health import histogram_quantile

    per_version: dict[str, list[tuple[float, float]]] = {}
    kserve: list[tuple[float, float]] = []
    counts: dict[str, float] = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            labels = sample.labels
            if labels.get("model_name") != model_name:
                continue
            if sample.name == "recsys_experiment_model_seconds_bucket":
                per_version.setdefault(labels.get("model_version", "?"), []).append(
                    (float(labels["le"]), sample.value))
            elif sample.name == "request_predict_seconds_bucket":
                kserve.append((float(labels["le"]), sample.value))
            elif sample.name == "request_predict_seconds_count":
                counts["predict"] = sample.value
    out = []
    for version, points in sorted(per_version.items()):
        total = max((c for _, c in points), default=0.0)
        out.append(Latency("model call", version, total,
                           *(histogram_quantile(q, points) for q in (0.5, 0.9, 0.99))))
    if kserve:
        out.append(Latency("predict (KServe)", "all", counts.get("predict", 0.0),
                           *(histogram_quantile(q, kserve) for q in (0.5, 0.9, 0.99))))
    return out


# ------------------------------------------------------------------ the page
@dataclass
class Monitoring:
    window: str
    since: float
    until: float
    starts: list[float] = field(default_factory=list)
    step: float = 0.0
    events_by_type: dict[str, list[float]] = field(default_factory=dict)
    events_total: int = 0
    events_problem: str | None = None
    requests_by_version: dict[str, list[float]] = field(default_factory=dict)
    requests_total: int = 0
    requests_source: str = ""
    cold_share: float | None = None
    cold_by_bucket: list[float | None] = field(default_factory=list)
    requests_problem: str | None = None
    latency: list[Latency] = field(default_factory=list)
    latency_problem: str | None = None
    drift: list[dict[str, Any]] = field(default_factory=list)
    drift_problem: str | None = None
    runs: list[dict[str, Any]] = field(default_factory=list)  # local pipeline runs
    registrations: list[dict[str, Any]] = field(default_factory=list)  # MLflow training runs
    runs_problem: str | None = None


def store_exists(url: str) -> str | None:
    """Why the feedback store cannot be read, without creating it (None: it exists)."""
    if url.startswith("sqlite:///"):
        path = Path(url.removeprefix("sqlite:///"))
        if not path.exists():
            return (f"no feedback store at {path}: start `recsys events serve` (it creates it), "
                    "or give the console --store")
    return None


def _bucket(engine, column, first: float, step: float):
    """The bucket index of each row, in SQL (floor; the window keeps it non-negative)."""
    import sqlalchemy as sa

    offset = (column - first) / step
    if engine.dialect.name == "sqlite":  # no floor() in every SQLite; CAST truncates
        return sa.cast(offset, sa.Integer)
    return sa.cast(sa.func.floor(offset), sa.Integer)


def _grouped(url: str, build) -> list[tuple]:
    """Run a grouped query against the feedback store; `Unavailable` in words if it cannot."""
    from components.errors import RecsysError
    from components.feedback.feedback_store import FeedbackStore

    missing = store_exists(url)
    if missing:
        raise Unavailable(missing)
    try:
        with FeedbackStore(url, create=False, pool_size=1) as store, store.engine.connect() as conn:
            return list(conn.execute(build(store.engine)).all())
    except RecsysError as exc:
        raise Unavailable(str(exc)) from None
    except Exception as exc:  # noqa: BLE001 (a store without tables, a server gone away)
        first = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
        raise Unavailable(f"the feedback store at {url} cannot be read ({first[:200]})") from None


def event_counts(url: str, starts: np.ndarray, step: float,
                 until: float) -> dict[str, np.ndarray]:
    """Events per bucket and type, counted by the database (bounded whatever the volume)."""
    import sqlalchemy as sa

    from components.feedback.feedback_store import events_table as t

    def build(engine):
        bucket = _bucket(engine, t.c.timestamp, float(starts[0]), step).label("bucket")
        return (sa.select(bucket, t.c.type, sa.func.count()).where(t.c.timestamp >= starts[0])
                .where(t.c.timestamp < until).group_by(bucket, t.c.type))

    return _spread(_grouped(url, build), len(starts))


def request_counts(url: str, starts: np.ndarray, step: float,
                   until: float) -> dict[str, np.ndarray]:
    """Answers per bucket and model version, from the impressions the predictor stored."""
    import sqlalchemy as sa

    from components.feedback.feedback_store import impressions_table as t

    def build(engine):
        bucket = _bucket(engine, t.c.timestamp, float(starts[0]), step).label("bucket")
        return (sa.select(bucket, t.c.model_version, sa.func.count(sa.distinct(t.c.request_id)))
                .where(t.c.timestamp >= starts[0]).where(t.c.timestamp < until)
                .group_by(bucket, t.c.model_version))

    return _spread(_grouped(url, build), len(starts))


def _spread(rows: list[tuple], size: int) -> dict[str, np.ndarray]:
    out: dict[str, np.ndarray] = {}
    for bucket, key, count in rows:
        if bucket is not None and 0 <= int(bucket) < size:
            out.setdefault(str(key), np.zeros(size))[int(bucket)] += count
    return dict(sorted(out.items()))


def gather(console, window_name: str | None, now: float | None = None) -> Monitoring:
    window, seconds = window_seconds(window_name)
    until = now or time.time()
    since = until - seconds
    starts, step = buckets(since, until)
    page = Monitoring(window, since, until, starts.tolist(), step)
    config = console.config

    try:
        counted = event_counts(config.store_url, starts, step, until)
        page.events_total = int(sum(v.sum() for v in counted.values()))
        page.events_by_type = {k: v.tolist() for k, v in counted.items()}
    except Unavailable as exc:
        page.events_problem = console.unavailable("feedback_store", exc)

    try:
        log = console.request_log.read(since)
        page.requests_source = f"request log {where(config.request_log)}"
        _requests_from_log(page, log, starts, step)
    except Unavailable as exc:
        try:  # the impressions table knows requests and versions, not cold starts
            counted = request_counts(config.store_url, starts, step, until)
            page.requests_source = "impressions in the feedback store (no cold-start flag)"
            page.requests_total = int(sum(v.sum() for v in counted.values()))
            page.requests_by_version = {k: v.tolist() for k, v in counted.items()}
            page.requests_problem = str(exc)
        except Unavailable:
            page.requests_problem = console.unavailable("request_log", exc)

    try:
        page.latency = latency_from_metrics(console.predictor.metrics_text(),
                                            config.model_name)
    except Unavailable as exc:
        page.latency_problem = console.unavailable("predictor", exc)

    page.drift, page.drift_problem = console.drift_decisions()

    page.runs = pipeline_runs(config.home / "pipeline_root")
    if not page.runs:  # a cluster: Kubeflow has the runs, MLflow what they registered
        try:
            from components.config import RegistryConfig

            page.registrations = console.registry.runs([RegistryConfig().experiment], limit=10)
        except Unavailable as exc:
            page.runs_problem = console.unavailable("mlflow", exc)
    return page


def _requests_from_log(page: Monitoring, log: pd.DataFrame, starts: np.ndarray,
                       step: float) -> None:
    users = log[log["user_id"].notna()]
    page.requests_total = int(log["request_id"].nunique()) if len(log) else 0
    first = log.drop_duplicates("request_id")
    page.requests_by_version = {k: v.tolist() for k, v in counts_by(
        first["unix_time"], first["model_version"], starts, step).items()}
    if len(users):
        cold = users["cold_start"].fillna(False).astype(bool)
        page.cold_share = float(cold.mean())
        rows = counts_by(users["unix_time"], None, starts, step)["all"]
        colds = counts_by(users.loc[cold, "unix_time"], None, starts, step)["all"]
        page.cold_by_bucket = [float(c / r) if r else None for c, r in zip(colds, rows)]


# ------------------------------------------------------------------ pipeline runs
def pipeline_runs(root: Path, limit: int = 10) -> list[dict[str, Any]]:
    """The newest local pipeline runs (`<home>/pipeline_root/<pipeline>-<time>/`, one directory
    per step that ran): when, how long, how far each got and what it registered."""
    import json

    if not root.is_dir():
        return []
    runs = sorted((d for d in root.iterdir() if d.is_dir()), key=lambda d: d.stat().st_mtime,
                  reverse=True)[:limit]
    out = []
    for run in runs:
        outputs = sorted(run.glob("*/executor_output.json"), key=lambda p: p.stat().st_mtime)
        steps = [p.parent.name.removesuffix("-op") for p in outputs]
        started = min((p.stat().st_mtime for p in run.iterdir()), default=run.stat().st_mtime)
        finished = outputs[-1].stat().st_mtime if outputs else None
        registration = None
        register = run / "register-op" / "executor_output.json"
        if register.exists():
            try:
                values = json.loads(register.read_text())["parameterValues"]
                registration = json.loads(next(iter(values.values())))
            except (ValueError, KeyError, StopIteration, TypeError):
                registration = None
        out.append({
            "name": run.name, "started": started,
            "seconds": finished - started if finished else None,
            "steps": steps, "last_step": steps[-1] if steps else None,
            "registration": registration,
        })
    return out


# ------------------------------------------------------------------ drift decisions
def drift_decisions(registry, experiment: str, limit: int = 5) -> tuple[list[dict], str | None]:
    """The last checks `recsys monitor` recorded in MLflow (experiment `<name>-monitoring`):
    the decision, its reasons and the statistic and p-value of each feature tested."""
    try:
        runs = registry.runs([f"{experiment}-monitoring"], limit=limit)
    except Unavailable as exc:
        return [], str(exc)
    if not runs:
        return [], ("no drift check recorded yet: `recsys monitor` tests the served requests and "
                    "the feedback against the champion's references and records its decision")
    out = []
    for run in runs:
        metrics = run.get("metrics", {})
        features = []
        for name, p_value in sorted(metrics.items()):
            if not name.startswith("p_value."):
                continue
            key = name.removeprefix("p_value.")
            features.append({"feature": key, "p_value": p_value,
                             "statistic": metrics.get(f"statistic.{key}")})
        reasons = run["tags"].get("reasons", "")
        out.append({
            "run_id": run["run_id"], "checked": run["start"],
            "decision": run["tags"].get("decision", "?"),
            "model_version": run["tags"].get("model_version"),
            "reasons": [] if reasons in ("", "none") else reasons.split("; "),
            "no_retrain_reason": run["tags"].get("no_retrain_reason") or None,
            "features": features,
            "rows": {k.removeprefix("rows."): v for k, v in metrics.items() if k.startswith("rows.")},
        })
    return out, None
