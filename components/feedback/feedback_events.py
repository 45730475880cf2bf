"""Feedback events: the contract of one event, checked once for every way in.

The events service (`POST /v1/events`), the feedback store (`FeedbackStore.add_events`) and any
client that writes the store directly go through `normalize_event`, so a stored event always
has the same shape whatever wrote it. A failure is an `InvalidEvent` naming the field and what
is wrong with it; the service answers it as HTTP 400 `{"error": "<field>: <what>"}`.

Stored form (one dict, the columns of the store's `events` table): `event_id`, `type`,
`user_id`, `item_id` (str), `timestamp` (float Unix seconds; the time received when absent),
`value` (float or None; required for a rating), `request_id`, `model_version` (str or None),
`position` (int >= 0 or None), `received_at` (float Unix seconds).
"""
from __future__ import annotations

import math
import re
import time
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from components.errors import DataValidationError

EVENT_TYPES = ("impression", "click", "like", "dislike", "rating", "consume")
# What counts as positive feedback: these items join the user's history and are not recommended
# again (an impression or a dislike does neither).
POSITIVE_TYPES = ("consume", "click", "like", "rating")
EVENT_FIELDS = (
    "event_id", "type", "user_id", "item_id", "timestamp", "value", "request_id",
    "model_version", "position",
)
EVENT_COLUMNS = (*EVENT_FIELDS, "received_at")
MAX_ID_CHARS = 256
MAX_POSITION = 100_000
# Later than this past the time received is a clock or unit error (milliseconds, say).
FUTURE_SLACK_SECONDS = 86_400
# Control characters (C0, DEL, C1) and the Unicode line and paragraph separators: an id holding
# one would split a log line or a CSV row, or show as something else than it is.
_CONTROL = re.compile("[\x00-\x1f\x7f-\x9f\u2028\u2029]")


@dataclass(frozen=True)
class TimeBounds:
    """The timestamps an event may carry: from `earliest` (Unix seconds) to `future_slack`
    seconds past the time it was received. The contract's own bounds are 1970 and a day; the
    events service is stricter (serving/events.py: `--earliest-timestamp`)."""

    earliest: float = 0.0
    future_slack: float = FUTURE_SLACK_SECONDS


UNIX_EPOCH = TimeBounds()


class InvalidEvent(DataValidationError):
    """An event that breaks the contract; `field` names the offending field."""

    def __init__(self, field: str, problem: str):
        super().__init__(f"{field}: {problem}")
        self.field = field
        self.problem = problem

    def at(self, index: int) -> InvalidEvent:
        """The same error, placed in a batch (`[3].value: ...`)."""
        return InvalidEvent(f"[{index}].{self.field}", self.problem)


def _identifier(raw: Mapping[str, Any], field: str, *, required: bool) -> str | None:
    value = raw.get(field)
    if value is None:
        if required:
            raise InvalidEvent(field, "required")
        return None
    # bool is an int to Python, never an id to a client.
    if isinstance(value, bool) or not isinstance(value, (str, int)):
        raise InvalidEvent(field, f"must be a string or an integer, not {type(value).__name__}")
    text = str(value)
    if len(text) > MAX_ID_CHARS:
        raise InvalidEvent(field, f"longer than {MAX_ID_CHARS} characters")
    control = _CONTROL.search(text)
    if control:  # a NUL, besides, PostgreSQL text cannot hold
        name = {"\x00": "a NUL character", "\u2028": "a line separator",
                "\u2029": "a paragraph separator"}.get(control.group(), "a control character")
        raise InvalidEvent(field, f"must not contain {name} (U+{ord(control.group()):04X} at "
                           f"index {control.start()})")
    text = text.strip()
    if not text:
        raise InvalidEvent(field, "must not be empty")
    if len(text) > MAX_ID_CHARS:
        raise InvalidEvent(field, f"longer than {MAX_ID_CHARS} characters")
    return text


def _number(raw: Mapping[str, Any], field: str) -> float | None:
    value = raw.get(field)
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise InvalidEvent(field, f"must be a number, not {type(value).__name__}")
    try:
        number = float(value)
    except OverflowError:  # an integer beyond any float
        number = math.inf
    if not math.isfinite(number):
        raise InvalidEvent(field, "must be a finite number")
    return number


def parse_timestamp(value: Any, received_at: float, bounds: TimeBounds = UNIX_EPOCH) -> float:
    """Unix seconds (a number) or ISO 8601 (a string; UTC when it names no zone), within
    `bounds`."""
    if isinstance(value, str):
        try:
            moment = datetime.fromisoformat(value.strip())
        except ValueError:
            raise InvalidEvent("timestamp", "not ISO 8601 or Unix seconds") from None
        if moment.tzinfo is None:
            moment = moment.replace(tzinfo=UTC)
        seconds = moment.timestamp()
    else:
        seconds = _number({"timestamp": value}, "timestamp")
    if seconds < bounds.earliest or seconds > received_at + bounds.future_slack:
        if bounds == UNIX_EPOCH:
            raise InvalidEvent("timestamp",
                               "not a time between 1970 and now (Unix seconds, not ms)")
        earliest = datetime.fromtimestamp(bounds.earliest, UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
        raise InvalidEvent("timestamp", f"{seconds:.0f} is not a time between {earliest} and "
                           f"{bounds.future_slack:g} s after now (Unix seconds, not ms)")
    return seconds


def normalize_event(raw: Any, received_at: float | None = None,
                    bounds: TimeBounds = UNIX_EPOCH) -> dict[str, Any]:
    """Check one event and return its stored form; raises `InvalidEvent`."""
    if not isinstance(raw, Mapping):
        raise InvalidEvent("event", f"must be a JSON object, not {type(raw).__name__}")
    unknown = sorted(str(k) for k in raw if k not in EVENT_FIELDS)
    if unknown:
        name = unknown[0]  # shown as sent, unless that would not read as a field name
        label = name if name.strip() and len(name) <= 40 and ":" not in name else repr(name[:40])
        raise InvalidEvent(label, f"unknown field (known: {', '.join(EVENT_FIELDS)})")
    received_at = time.time() if received_at is None else received_at
    kind = raw.get("type")
    if kind is None:
        raise InvalidEvent("type", "required")
    if kind not in EVENT_TYPES:
        raise InvalidEvent("type", f"{str(kind)[:40]!r} is not one of {', '.join(EVENT_TYPES)}")
    value = _number(raw, "value")
    if kind == "rating" and value is None:
        raise InvalidEvent("value", "required for a rating")
    position = raw.get("position")
    if position is not None:
        if isinstance(position, bool) or not isinstance(position, int):
            raise InvalidEvent("position", f"must be an integer, not {type(position).__name__}")
        if not 0 <= position <= MAX_POSITION:
            raise InvalidEvent("position", f"must be between 0 and {MAX_POSITION} (0 = first)")
    timestamp = raw.get("timestamp")
    return {
        "event_id": _identifier(raw, "event_id", required=True),
        "type": kind,
        "user_id": _identifier(raw, "user_id", required=True),
        "item_id": _identifier(raw, "item_id", required=True),
        "timestamp": (received_at if timestamp is None
                      else parse_timestamp(timestamp, received_at, bounds)),
        "value": value,
        "request_id": _identifier(raw, "request_id", required=False),
        "model_version": _identifier(raw, "model_version", required=False),
        "position": position,
        "received_at": received_at,
    }


def normalize_batch(raws: Any, received_at: float | None = None,
                    bounds: TimeBounds = UNIX_EPOCH) -> list[dict[str, Any]]:
    """One event or a list of them; the first bad one raises, placed by its index."""
    if not isinstance(raws, list):
        return [normalize_event(raws, received_at, bounds)]
    received_at = time.time() if received_at is None else received_at
    events = []
    for index, raw in enumerate(raws):
        try:
            events.append(normalize_event(raw, received_at, bounds))
        except InvalidEvent as exc:
            raise exc.at(index) from None
    return events
