"""What serving observed, read back: request-log files, feedback-event files and the feedback store.

- The request log (`serving.request_log` writes it; the format is described there): one JSON
  line per answered row. `read_request_log` reads every file of a directory; a line that is not
  a record is an error naming the file and the line.
- Feedback events (the events contract in the design guide): from the feedback store
  (`components.feedback_store`, a SQLAlchemy URL) or from a JSON-lines/CSV file of events.
  `validate_events` checks them and names the file (or store) and the row of the first bad
  ones; `events_to_interactions` turns the positive ones into interactions for training.
- Impressions (the store's record of every item shown) become served rows when there is no
  request log: the same users, k and items, without scores.
"""
from __future__ import annotations

import json
import time
from pathlib import Path

import numpy as np
import pandas as pd

from components.errors import DataValidationError

REQUEST_LOG_PATTERN = "requests-*.jsonl*"
REQUEST_LOG_COLUMNS = [
    "timestamp", "unix_time", "model_name", "model_version", "request_id", "row", "user_id",
    "item_id", "resolved_item_id", "cold_start", "k", "item_ids", "scores",
]
EVENT_TYPES = ("impression", "click", "like", "dislike", "rating", "consume")
POSITIVE_EVENT_TYPES = ("consume", "click", "like", "rating")
EVENT_COLUMNS = ["event_id", "type", "user_id", "item_id", "timestamp", "value", "request_id",
                 "model_version", "position"]
_SHOWN = 5
_FUTURE_SLACK_SECONDS = 86_400


# ---------------------------------------------------------------- request log
def read_request_log(directory: str | Path) -> pd.DataFrame:
    """Every record under `directory` (all processes, rotated files included), sorted by time,
    with the columns of the record format. A line that is not a record names its file and line."""
    frames = []
    for path in sorted(Path(directory).glob(REQUEST_LOG_PATTERN)):
        if path.stat().st_size == 0:
            continue
        records = []
        with path.open(encoding="utf-8") as handle:
            for number, line in enumerate(handle, start=1):
                if not line.strip():
                    continue
                try:
                    record = json.loads(line)
                except json.JSONDecodeError as exc:
                    raise DataValidationError(
                        f"{path}: line {number} is not JSON ({exc.msg}); not a request log") from None
                if not isinstance(record, dict) or "unix_time" not in record:
                    raise DataValidationError(
                        f"{path}: line {number} is not a request-log record (no unix_time)")
                records.append(record)
        if records:
            frames.append(pd.DataFrame.from_records(records))
    if not frames:
        return pd.DataFrame(columns=REQUEST_LOG_COLUMNS)
    frame = pd.concat(frames, ignore_index=True).reindex(columns=REQUEST_LOG_COLUMNS)
    frame["timestamp"] = pd.to_datetime(frame["timestamp"], utc=True, format="ISO8601")
    return frame.sort_values(["unix_time", "request_id", "row"], kind="stable").reset_index(drop=True)


def served_from_request_log(log: pd.DataFrame) -> pd.DataFrame:
    """Recommendation rows (not similar-item ones) as served rows: user_id, k, item_ids,
    scores, unix_time, model_version."""
    rows = log[log["user_id"].notna()] if len(log) else log
    return pd.DataFrame({
        "user_id": rows["user_id"].astype(str).to_numpy(),
        "k": pd.to_numeric(rows["k"], errors="coerce").fillna(0).astype(int).to_numpy(),
        "item_ids": [list(v) if isinstance(v, list) else [] for v in rows["item_ids"]],
        "scores": [list(v) if isinstance(v, list) else None for v in rows["scores"]],
        "unix_time": rows["unix_time"].astype(float).to_numpy(),
        "model_version": rows["model_version"].astype(str).to_numpy(),
    })


def served_from_impressions(impressions: pd.DataFrame) -> pd.DataFrame:
    """One served row per (request, user) of the store's impressions, items in position order;
    k is the number of positions shown; there are no scores."""
    if impressions.empty:
        return pd.DataFrame({c: pd.Series(dtype=object) for c in
                             ("user_id", "k", "item_ids", "scores", "unix_time", "model_version")})
    ordered = impressions.sort_values(["request_id", "user_id", "position"], kind="stable")
    grouped = ordered.groupby(["request_id", "user_id"], sort=False)
    frame = grouped.agg(item_ids=("item_id", list), unix_time=("timestamp", "min"),
                        model_version=("model_version", "first")).reset_index()
    frame["k"] = frame["item_ids"].map(len)
    frame["scores"] = None
    frame["user_id"] = frame["user_id"].astype(str)
    return frame[["user_id", "k", "item_ids", "scores", "unix_time", "model_version"]].sort_values(
        "unix_time", kind="stable").reset_index(drop=True)


# ---------------------------------------------------------------- feedback events
def read_events_file(path: str | Path) -> pd.DataFrame:
    """Events from a JSON-lines (.jsonl/.json) or CSV file, as they are (see validate_events)."""
    path = Path(path)
    if not path.is_file():
        raise DataValidationError(f"{path}: no such events file")
    if path.suffix.lower() in {".jsonl", ".json", ".ndjson"}:
        records = []
        with path.open(encoding="utf-8") as handle:
            for number, line in enumerate(handle, start=1):
                if not line.strip():
                    continue
                try:
                    record = json.loads(line)
                except json.JSONDecodeError as exc:
                    raise DataValidationError(f"{path}: row {number}: not JSON ({exc.msg})") from None
                if not isinstance(record, dict):
                    raise DataValidationError(f"{path}: row {number}: an event must be a JSON object")
                records.append(record)
        frame = pd.DataFrame.from_records(records)
    else:
        try:
            frame = pd.read_csv(path, dtype={"event_id": str, "user_id": str, "item_id": str})
        except (ValueError, OSError, pd.errors.ParserError) as exc:
            raise DataValidationError(f"{path}: cannot be read as a CSV of events: {exc}") from None
    return frame.reindex(columns=list(dict.fromkeys([*EVENT_COLUMNS, *frame.columns])))


def _unix_seconds(values: pd.Series) -> pd.Series:
    """Unix seconds from numbers or ISO 8601 text; NaN where neither."""
    numeric = pd.to_numeric(values, errors="coerce")
    text = values.where(numeric.isna() & values.notna())
    if text.notna().any():
        parsed = pd.to_datetime(text.astype(str), utc=True, errors="coerce", format="ISO8601")
        iso = (parsed - pd.Timestamp(0, tz="UTC")).dt.total_seconds()
        numeric = numeric.fillna(iso)
    return numeric.astype(float)


def validate_events(events: pd.DataFrame, *, source: str, now: float | None = None) -> pd.DataFrame:
    """The events contract, checked row by row: a known type, user and item ids, a time
    (Unix seconds or ISO 8601, not in the future), a finite value on ratings. The first bad
    rows are named (1-based, with their event ids); valid events come back with Unix times."""
    for column in ("type", "user_id", "item_id"):
        if column not in events.columns:
            raise DataValidationError(f"{source}: events need a '{column}' column")
    frame = events.reset_index(drop=True).copy()
    limit = (now if now is not None else time.time()) + _FUTURE_SLACK_SECONDS
    seconds = _unix_seconds(frame["timestamp"]) if "timestamp" in frame else pd.Series(
        np.nan, index=frame.index)
    value = pd.to_numeric(frame.get("value"), errors="coerce") if "value" in frame else pd.Series(
        np.nan, index=frame.index)
    kind = frame["type"].astype("string").str.strip().str.lower()
    checks = [
        ("type", ~kind.isin(EVENT_TYPES).fillna(False), f"not one of {', '.join(EVENT_TYPES)}"),
        ("user_id", _empty(frame["user_id"]), "empty id"),
        ("item_id", _empty(frame["item_id"]), "empty id"),
        ("timestamp", seconds.isna() | (seconds < 0) | (seconds > limit),
         "not a Unix time in seconds or an ISO 8601 time up to now"),
        ("value", (kind == "rating").fillna(False) & ~np.isfinite(value.to_numpy(float, na_value=np.nan)),
         "a rating event needs a finite value"),
    ]
    for column, bad, problem in checks:
        bad = np.asarray(bad, dtype=bool)
        if bad.any():
            rows = np.flatnonzero(bad)
            shown = ", ".join(_describe_row(frame, column, r) for r in rows[:_SHOWN])
            more = f" and {len(rows) - _SHOWN} more" if len(rows) > _SHOWN else ""
            raise DataValidationError(f"{source}: column '{column}': {problem}; rows {shown}{more}")
    frame["type"] = kind.astype(str)
    frame["user_id"] = frame["user_id"].astype(str).str.strip()
    frame["item_id"] = frame["item_id"].astype(str).str.strip()
    frame["timestamp"] = seconds
    frame["value"] = value
    return frame


def _describe_row(frame: pd.DataFrame, column: str, row: int) -> str:
    value = frame[column].iloc[row] if column in frame else None
    event = frame["event_id"].iloc[row] if "event_id" in frame else None
    who = f"event {event!r}: " if event is not None and pd.notna(event) else ""
    return f"{row + 1} ({who}{value!r})"


def _empty(ids: pd.Series) -> np.ndarray:
    text = ids.astype("string").str.strip()
    return (text.isna() | (text == "")).to_numpy(dtype=bool)


def events_to_interactions(events: pd.DataFrame) -> pd.DataFrame:
    """Positive events (consume, click, like, rating) as interactions: user_id, item_id,
    rating (the value of rating events; missing for implicit ones), timestamp (whole seconds)."""
    positive = events[events["type"].isin(POSITIVE_EVENT_TYPES)]
    rating = positive["value"].where(positive["type"] == "rating")
    return pd.DataFrame({
        "user_id": positive["user_id"].astype(str).to_numpy(),
        "item_id": positive["item_id"].astype(str).to_numpy(),
        "rating": rating.astype(float).to_numpy(),
        "timestamp": np.floor(positive["timestamp"].astype(float).to_numpy()).astype("int64"),
    })


# ---------------------------------------------------------------- the feedback store
def is_store_url(location: str) -> bool:
    return "://" in location and not location.startswith("file://")


def redact(url: str) -> str:
    """A store URL without its password, for messages."""
    head, sep, tail = url.partition("://")
    if "@" in tail and ":" in tail.split("@", 1)[0]:
        user = tail.split("@", 1)[0].split(":", 1)[0]
        return f"{head}{sep}{user}:***@{tail.split('@', 1)[1]}"
    return url


def open_store(url: str):
    """The feedback store at `url` (a SQLAlchemy URL)."""
    try:
        from components.feedback_store import FeedbackStore
    except ImportError:
        raise DataValidationError(
            f"{redact(url)}: this version has no feedback store module; pass an events file") from None
    try:
        return FeedbackStore(url)
    except Exception as exc:  # noqa: BLE001 (driver and connection errors differ by database)
        message = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise DataValidationError(f"{redact(url)}: cannot open the feedback store: {message}") from None


def read_feedback_events(location: str, *, since: float | None = None, until: float | None = None,
                         types: tuple[str, ...] | None = None) -> pd.DataFrame:
    """Validated events from a store URL or an events file, optionally a time slice and types."""
    if is_store_url(location):
        store = open_store(location)
        try:
            raw = store.read_events(since=since, until=until, types=list(types) if types else None)
        finally:
            store.close()
        events = validate_events(raw, source=f"feedback store {redact(location)} (table events)")
    else:
        events = validate_events(read_events_file(location), source=str(location))
    if since is not None:
        events = events[events["timestamp"] >= since]
    if until is not None:
        events = events[events["timestamp"] < until]
    if types:
        events = events[events["type"].isin(types)]
    return events.reset_index(drop=True)


def read_impressions(location: str, *, since: float | None = None,
                     until: float | None = None) -> pd.DataFrame:
    """The store's impressions in a time slice (an events file has none: an empty frame)."""
    if not is_store_url(location):
        return pd.DataFrame(columns=["request_id", "user_id", "item_id", "position",
                                     "model_version", "source_version", "variant", "timestamp"])
    store = open_store(location)
    try:
        return store.read_impressions(since=since, until=until)
    finally:
        store.close()
