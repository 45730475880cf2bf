"""What serving observed, read back: request-log files, feedback-event files and the feedback store.

- The request log (`serving.request_log` writes it; the format is described there): one JSON
  line per answered row. `read_request_log` reads every file of a directory; a line that is not
  a record is an error naming the file and the line. `read_request_log_window` reads only the
  newest rows a check needs, from the end of the newest files, in memory bounded by the window;
  a bad line there is skipped and counted in `BadRows` with its file and line.
- Feedback events: from the feedback store (`components.feedback.feedback_store`, a SQLAlchemy URL) or
  from a JSON-lines/CSV file of events. `validate_events` puts every one through the events
  contract (`components.feedback.feedback_events`, the check the events service applies) and names the
  file (or store), the row and the event of the first bad one; `events_to_interactions` turns
  the positive ones into interactions for training.
- Impressions (the store's record of every item shown) become served rows when there is no
  request log: the same users, k and items, without scores.
"""

from __future__ import annotations

import heapq
import json
import logging
import math
import os
import time
from collections import deque
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from components.errors import DataValidationError
from components.feedback.feedback_events import (
    EVENT_FIELDS,
    POSITIVE_TYPES,
    InvalidEvent,
    normalize_event,
)

log = logging.getLogger(__name__)

REQUEST_LOG_PATTERN = "requests-*.jsonl*"
REQUEST_LOG_COLUMNS = [
    "timestamp",
    "unix_time",
    "model_name",
    "model_version",
    "request_id",
    "row",
    "user_id",
    "item_id",
    "resolved_item_id",
    "cold_start",
    "k",
    "item_ids",
    "scores",
]
POSITIVE_EVENT_TYPES = POSITIVE_TYPES


# ---------------------------------------------------------------- rows skipped
@dataclass
class BadRows:
    """Rows a check skipped as unreadable: how many per source (a file, a store) and the first
    few, each as "<source>: line <n>: <problem>". A source read twice (the window, then the
    new-data count) is counted once: `merge` keeps the larger count of each source."""

    limit: int = 20
    counts: dict[str, int] = field(default_factory=dict)
    examples: list[str] = field(default_factory=list)

    @property
    def count(self) -> int:
        return sum(self.counts.values())

    def add(self, source: str, where: str, problem: str) -> None:
        self.counts[source] = self.counts.get(source, 0) + 1
        self._example(f"{source}: {where}: {problem}")

    def _example(self, text: str) -> None:
        if len(self.examples) < self.limit and text not in self.examples:
            self.examples.append(text)

    def merge(self, other: BadRows) -> None:
        for source, count in other.counts.items():
            self.counts[source] = max(self.counts.get(source, 0), count)
        for text in other.examples:
            self._example(text)


# ---------------------------------------------------------------- request log
def read_request_log(directory: str | Path) -> pd.DataFrame:
    """Every record under `directory` (all processes, rotated files included), sorted by time,
    with the columns of the record format. A line that is not a record names its file and line.

    The one exception is the fragment of a record that a write stopped part-way leaves (a full
    disk, a crash): a line that starts like a record but does not parse is skipped, and counted
    in one warning, so that the records around it stay readable."""
    frames, torn = [], 0
    for path in sorted(Path(directory).glob(REQUEST_LOG_PATTERN)):
        if path.stat().st_size == 0:
            continue
        records = []
        with path.open(encoding="utf-8", errors="replace") as handle:
            for number, line in enumerate(handle, start=1):
                if not line.strip():
                    continue
                try:
                    record = json.loads(line)
                except json.JSONDecodeError as exc:
                    if line.lstrip().startswith("{"):
                        torn += 1
                        continue
                    raise DataValidationError(
                        f"{path}: line {number} is not JSON ({exc.msg}); not a request log"
                    ) from None
                if not isinstance(record, dict) or "unix_time" not in record:
                    raise DataValidationError(
                        f"{path}: line {number} is not a request-log record (no unix_time)"
                    )
                records.append(record)
        if records:
            frames.append(pd.DataFrame.from_records(records))
    if torn:
        log.warning("request log %s: skipped %d torn line(s) (a write stopped part-way)",
                    directory, torn)
    if not frames:
        return pd.DataFrame(columns=REQUEST_LOG_COLUMNS)
    frame = pd.concat(frames, ignore_index=True).reindex(columns=REQUEST_LOG_COLUMNS)
    frame["timestamp"] = pd.to_datetime(frame["timestamp"], utc=True, format="ISO8601")
    return frame.sort_values(["unix_time", "request_id", "row"], kind="stable").reset_index(
        drop=True
    )


# How far (seconds) a record may be out of time order within one file: rows are written in
# the order they were handed to the writer, a request's time is taken when it was answered.
# A file is left after this many rows in a row older than that (one row from a clock that
# jumped does not end the read), and so is the next file if its newest row is old too.
ORDER_SLACK_SECONDS = 60.0
OLD_ROWS_TO_STOP = 100
_BLOCK = 1 << 16


def _lines_from_end(path: Path) -> Iterator[tuple[int, bytes]]:
    """(byte offset, line) of every non-empty line of a file, the last first, reading blocks
    backwards: memory is one block and one line, whatever the size of the file."""
    with path.open("rb") as handle:
        position = handle.seek(0, os.SEEK_END)
        rest = b""
        while position > 0:
            size = min(_BLOCK, position)
            position -= size
            handle.seek(position)
            lines = (handle.read(size) + rest).split(b"\n")
            rest = lines[0]
            start = position + len(rest) + 1
            offsets = []
            for line in lines[1:]:
                offsets.append(start)
                start += len(line) + 1
            for offset, line in zip(reversed(offsets), reversed(lines[1:])):
                if line.strip():
                    yield offset, line
        if rest.strip():
            yield 0, rest


def _line_numbers(path: Path, offsets: list[int]) -> dict[int, int]:
    """The 1-based line number of each byte offset (one forward pass, block by block)."""
    numbers, wanted = {}, sorted(set(offsets))
    if not wanted:
        return numbers
    newlines, read, index = 0, 0, 0
    with path.open("rb") as handle:
        while index < len(wanted):
            block = handle.read(_BLOCK)
            while index < len(wanted) and wanted[index] <= read + len(block):
                numbers[wanted[index]] = newlines + block.count(b"\n", 0, wanted[index] - read) + 1
                index += 1
            if not block:
                break
            newlines, read = newlines + block.count(b"\n"), read + len(block)
    return numbers


def _record_problem(line: bytes) -> tuple[dict[str, Any] | None, str]:
    """The record of one line, or None and what is wrong with it."""
    try:
        record = json.loads(line.decode("utf-8", errors="replace"))
    except json.JSONDecodeError as exc:
        torn = " (a write stopped part-way)" if line.lstrip().startswith(b"{") else ""
        return None, f"not JSON ({exc.msg}){torn}"
    if not isinstance(record, dict):
        return None, f"not a request-log record (a JSON {type(record).__name__})"
    when = record.get("unix_time")
    if isinstance(when, bool) or not isinstance(when, (int, float)) or not math.isfinite(when):
        return None, "not a request-log record (no unix_time)"
    return record, ""


def read_request_log_window(
    directory: str | Path,
    *,
    since: float,
    until: float,
    limit: int,
    bad: BadRows | None = None,
) -> pd.DataFrame:
    """The newest `limit` recommendation rows (`user_id` set) with since <= unix_time < until,
    as `read_request_log` gives them (sorted by time, the record's columns).

    Files are read newest first and each from its end, and a file is left once its rows are
    older (by more than ORDER_SLACK_SECONDS, OLD_ROWS_TO_STOP rows in a row) than `since` or
    than the oldest row kept of a full window: time and memory follow the window, not the log. A line that is not a record
    is skipped and, given `bad`, counted there with its file and line."""
    files = [p for p in Path(directory).glob(REQUEST_LOG_PATTERN) if p.is_file()]
    files.sort(key=lambda p: p.stat().st_mtime, reverse=True)
    kept: list[tuple[float, int, dict[str, Any]]] = []  # a min-heap on time
    sequence = 0
    examples = bad.limit if bad is not None else 0
    # Old rows met in a row; carried from file to file, so that a file whose newest row is old
    # after a run of them (an older rotated file) is left at its first row.
    older = 0
    for path in files:
        # The earliest bad lines read (the last ones met, reading backwards), and how many.
        problems: deque[tuple[int, str]] = deque(maxlen=examples)
        skipped = 0
        for offset, line in _lines_from_end(path):
            record, problem = _record_problem(line)
            if record is None:
                skipped += 1
                problems.append((offset, problem))
                continue
            when = float(record["unix_time"])
            floor = max(since, kept[0][0]) if len(kept) >= limit else since
            if when < floor - ORDER_SLACK_SECONDS:
                older += 1
                if older >= OLD_ROWS_TO_STOP:
                    break
                continue
            older = 0
            if when >= until or when < since or record.get("user_id") is None:
                continue
            sequence -= 1  # of two rows at one time, the later in the file is the newer
            item = (when, sequence, record)
            if len(kept) < limit:
                heapq.heappush(kept, item)
            elif item > kept[0]:
                heapq.heapreplace(kept, item)
        if skipped and bad is not None:
            numbers = _line_numbers(path, [offset for offset, _ in problems])
            for offset, problem in reversed(problems):
                bad.add(str(path), f"line {numbers[offset]}", problem)
            bad.counts[str(path)] = bad.counts.get(str(path), 0) + skipped - len(problems)
    if not kept:
        return pd.DataFrame(columns=REQUEST_LOG_COLUMNS)
    frame = pd.DataFrame.from_records([r for _, _, r in kept]).reindex(columns=REQUEST_LOG_COLUMNS)
    frame["timestamp"] = pd.to_datetime(frame["timestamp"], utc=True, format="ISO8601")
    return frame.sort_values(["unix_time", "request_id", "row"], kind="stable").reset_index(
        drop=True
    )


def served_from_request_log(log: pd.DataFrame) -> pd.DataFrame:
    """Recommendation rows (not similar-item ones) as served rows: user_id, k, item_ids,
    scores, unix_time, model_version."""
    rows = log[log["user_id"].notna()] if len(log) else log
    return pd.DataFrame(
        {
            "user_id": rows["user_id"].astype(str).to_numpy(),
            "k": pd.to_numeric(rows["k"], errors="coerce").fillna(0).astype(int).to_numpy(),
            "item_ids": [list(v) if isinstance(v, list) else [] for v in rows["item_ids"]],
            "scores": [list(v) if isinstance(v, list) else None for v in rows["scores"]],
            "unix_time": rows["unix_time"].astype(float).to_numpy(),
            "model_version": rows["model_version"].astype(str).to_numpy(),
        }
    )


def served_from_impressions(impressions: pd.DataFrame) -> pd.DataFrame:
    """One served row per (request, user) of the store's impressions, items in position order;
    k is the number of positions shown; there are no scores."""
    if impressions.empty:
        return pd.DataFrame(
            {
                c: pd.Series(dtype=object)
                for c in ("user_id", "k", "item_ids", "scores", "unix_time", "model_version")
            }
        )
    ordered = impressions.sort_values(["request_id", "user_id", "position"], kind="stable")
    grouped = ordered.groupby(["request_id", "user_id"], sort=False)
    frame = grouped.agg(
        item_ids=("item_id", list),
        unix_time=("timestamp", "min"),
        model_version=("model_version", "first"),
    ).reset_index()
    frame["k"] = frame["item_ids"].map(len)
    frame["scores"] = None
    frame["user_id"] = frame["user_id"].astype(str)
    return (
        frame[["user_id", "k", "item_ids", "scores", "unix_time", "model_version"]]
        .sort_values("unix_time", kind="stable")
        .reset_index(drop=True)
    )


# ---------------------------------------------------------------- feedback events
def read_events_file(path: str | Path, bad: BadRows | None = None) -> list[dict[str, Any]]:
    """Events from a JSON-lines (.jsonl/.json/.ndjson) or CSV file, as they are written (see
    validate_events); a line that is not a JSON object names its row, or, given `bad`, is
    skipped and counted there."""
    return _read_events_file(path, bad)[0]


def _read_events_file(
    path: str | Path, bad: BadRows | None = None
) -> tuple[list[dict[str, Any]], list[str]]:
    """The events of a file, and where each one is ("line 7", "row 3")."""
    path = Path(path)
    if not path.is_file():
        raise DataValidationError(f"{path}: no such events file")
    if path.suffix.lower() not in {".jsonl", ".json", ".ndjson"}:
        try:
            frame = pd.read_csv(
                path,
                dtype={
                    c: str
                    for c in ("event_id", "user_id", "item_id", "request_id", "model_version")
                },
            )
        except (ValueError, OSError, pd.errors.ParserError) as exc:
            raise DataValidationError(f"{path}: cannot be read as a CSV of events: {exc}") from None
        return frame.to_dict("records"), [f"row {n}" for n in range(1, len(frame) + 1)]
    records, places = [], []
    with path.open(encoding="utf-8", errors="replace" if bad is not None else "strict") as handle:
        for number, line in enumerate(handle, start=1):
            if not line.strip():
                continue
            try:
                record = json.loads(line)
            except json.JSONDecodeError as exc:
                problem = f"not JSON ({exc.msg})"
            else:
                if isinstance(record, dict):
                    records.append(record)
                    places.append(f"line {number}")
                    continue
                problem = "an event must be a JSON object"
            if bad is None:
                raise DataValidationError(f"{path}: row {number}: {problem}")
            bad.add(str(path), f"line {number}", problem)
    return records, places


def _as_sent(record: dict[str, Any]) -> dict[str, Any]:
    """A row read back from a table (NaN for absent values, float positions) as a client
    would send it, for `normalize_event`."""
    event = {}
    for key, value in record.items():
        if value is None or (isinstance(value, float) and math.isnan(value)):
            continue
        if key == "position" and isinstance(value, float) and value.is_integer():
            value = int(value)
        if isinstance(value, np.generic):
            value = value.item()
        event[key] = value
    return event


def validate_events(
    records: list[dict[str, Any]],
    *,
    source: str,
    now: float | None = None,
    bad: BadRows | None = None,
    places: list[str] | None = None,
) -> pd.DataFrame:
    """Every event through the events contract (`feedback_events.normalize_event`, the check
    the events service applies); the first bad one is named by its row (1-based) and event id,
    or, given `bad`, every bad one is skipped and counted there (`places`: where each record
    is, "line 7"; default its row). Returns the stored form, one row per event."""
    now = time.time() if now is None else now
    rows = []
    for number, record in enumerate(records, start=1):
        event = _as_sent(record)
        received = event.pop("received_at", None)
        try:
            rows.append(normalize_event(event, float(received) if received else now))
        except InvalidEvent as exc:
            who = f" (event {event['event_id']!r})" if "event_id" in event else ""
            if bad is None:
                raise DataValidationError(f"{source}: row {number}{who}: {exc}") from None
            where = places[number - 1] if places else f"row {number}"
            bad.add(source, f"{where}{who}", str(exc))
    columns = [*EVENT_FIELDS, "received_at"]
    return pd.DataFrame.from_records(rows, columns=columns)


def events_to_interactions(events: pd.DataFrame) -> pd.DataFrame:
    """Positive events (consume, click, like, rating) as interactions, one row per (user,
    item): its latest event time (whole seconds) and its latest rating (empty when the pair
    was only clicked, liked or consumed: an implicit interaction). The same rule as the
    store's `interactions()`, applied to events that were validated row by row first."""
    positive = events[events["type"].isin(POSITIVE_EVENT_TYPES)]
    columns = ["user_id", "item_id", "rating", "timestamp"]
    if positive.empty:
        return pd.DataFrame({c: pd.Series(dtype=float if c == "rating" else str) for c in columns})
    pairs = positive.groupby(["user_id", "item_id"], sort=False)["timestamp"].max().reset_index()
    rated = positive[positive["type"] == "rating"].sort_values("timestamp", kind="stable")
    latest = rated.groupby(["user_id", "item_id"])["value"].last().rename("rating").reset_index()
    out = pairs.merge(latest, on=["user_id", "item_id"], how="left")
    out["rating"] = out["rating"].astype(float)
    out["timestamp"] = np.floor(out["timestamp"].astype(float)).astype("int64")
    return out.sort_values(["timestamp", "user_id", "item_id"], kind="stable")[columns].reset_index(
        drop=True
    )


# ---------------------------------------------------------------- the feedback store
def is_store_url(location: str) -> bool:
    return "://" in location and not location.startswith("file://")


def redact(location: str) -> str:
    """A store URL without its password (files as they are), for messages."""
    if not is_store_url(location):
        return location
    from components.feedback.feedback_store import display_url

    return display_url(location)


def read_feedback_events(
    location: str,
    *,
    since: float | None = None,
    until: float | None = None,
    types: tuple[str, ...] | None = None,
    bad: BadRows | None = None,
) -> pd.DataFrame:
    """Validated events (stored form) of a store URL or an events file, with since <=
    timestamp < until and of the given types (each optional). A bad event stops the read
    naming it, or, given `bad`, is skipped and counted there."""
    if is_store_url(location):
        from components.feedback.feedback_store import FeedbackStore

        with FeedbackStore(location) as store:
            raw = store.read_events(since=since, until=until, types=list(types) if types else None)
        events = validate_events(
            raw.to_dict("records"),
            source=f"feedback store {redact(location)} (table events)",
            bad=bad,
        )
    else:
        records, places = _read_events_file(location, bad)
        events = validate_events(records, source=str(location), bad=bad, places=places)
    keep = np.ones(len(events), dtype=bool)
    if since is not None:
        keep &= (events["timestamp"] >= since).to_numpy()
    if until is not None:
        keep &= (events["timestamp"] < until).to_numpy()
    if types:
        keep &= events["type"].isin(types).to_numpy()
    return events[keep].reset_index(drop=True)


def read_impressions(
    location: str, *, since: float | None = None, until: float | None = None
) -> pd.DataFrame:
    """The store's impressions with since <= timestamp < until (an events file has none)."""
    if not is_store_url(location):
        return pd.DataFrame(
            columns=[
                "request_id",
                "user_id",
                "item_id",
                "position",
                "model_version",
                "source_version",
                "variant",
                "timestamp",
            ]
        )
    from components.feedback.feedback_store import FeedbackStore

    with FeedbackStore(location) as store:
        return store.read_impressions(since=since, until=until)
