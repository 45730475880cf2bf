"""The feedback event contract: what normalize_event accepts, what it refuses and how it says so."""
from __future__ import annotations

import math

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from components.feedback.feedback_events import (
    EVENT_COLUMNS,
    EVENT_FIELDS,
    EVENT_TYPES,
    InvalidEvent,
    normalize_batch,
    normalize_event,
)

NOW = 1_700_000_000.0


def test_a_full_event_comes_back_in_stored_form():
    event = normalize_event({"event_id": "e1", "type": "rating", "user_id": 42, "item_id": " 7 ",
                             "timestamp": "2023-11-14T22:13:20+01:00", "value": 4,
                             "request_id": "r", "model_version": "v1", "position": 0}, NOW)
    assert event == {"event_id": "e1", "type": "rating", "user_id": "42", "item_id": "7",
                     "timestamp": NOW - 3600, "value": 4.0, "request_id": "r",
                     "model_version": "v1", "position": 0, "received_at": NOW}
    assert tuple(event) == EVENT_COLUMNS


def test_optional_fields_default_and_a_naive_time_is_utc():
    event = normalize_event({"event_id": "e", "type": "click", "user_id": "u", "item_id": "i"}, NOW)
    assert event["timestamp"] == NOW and event["value"] is None and event["position"] is None
    naive = normalize_event({"event_id": "e", "type": "click", "user_id": "u", "item_id": "i",
                             "timestamp": "2023-11-14T22:13:20"}, NOW)
    assert naive["timestamp"] == NOW


@pytest.mark.parametrize("field, value, problem", [
    ("timestamp", NOW * 1000, "not a time between 1970 and now"),
    ("timestamp", -1, "not a time between 1970 and now"),
    ("timestamp", True, "must be a number, not bool"),
    ("value", "5", "must be a number, not str"),
    ("value", math.inf, "must be a finite number"),
    ("value", 10**400, "must be a finite number"),
    ("event_id", 1.5, "must be a string or an integer, not float"),
    ("event_id", "   ", "must not be empty"),
    ("request_id", ["r"], "must be a string or an integer, not list"),
    ("position", True, "must be an integer, not bool"),
    ("position", 10**9, "must be between 0 and"),
])
def test_each_bad_field_is_named(field, value, problem):
    raw = {"event_id": "e", "type": "click", "user_id": "u", "item_id": "i", field: value}
    with pytest.raises(InvalidEvent) as caught:
        normalize_event(raw, NOW)
    assert caught.value.field == field and caught.value.problem.startswith(problem)
    assert str(caught.value).startswith(f"{field}: {problem}")


@pytest.mark.parametrize("key, label", [("", "''"), ("a: b", "'a: b'"), ("x" * 50, repr("x" * 40))])
def test_an_unknown_field_is_named_readably(key, label):
    raw = {"event_id": "e", "type": "click", "user_id": "u", "item_id": "i", key: 1}
    with pytest.raises(InvalidEvent, match="unknown field") as caught:
        normalize_event(raw, NOW)
    assert caught.value.field == label


def test_a_batch_names_the_index_of_its_first_bad_event():
    good = {"event_id": "e", "type": "like", "user_id": "u", "item_id": "i"}
    assert len(normalize_batch([good, good], NOW)) == 2
    with pytest.raises(InvalidEvent, match=r"^\[2\]\.type: required"):
        normalize_batch([good, good, {**good, "type": None}, {}], NOW)


json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=20),
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=8), inner,
                                                               max_size=3),
    max_leaves=8)
maybe_events = st.dictionaries(
    st.sampled_from(EVENT_FIELDS) | st.text(max_size=8),
    st.sampled_from(EVENT_TYPES) | json_values, max_size=10)


@settings(max_examples=300, deadline=None)
@given(st.one_of(maybe_events, json_values, st.lists(maybe_events, max_size=4)))
def test_anything_is_either_an_event_or_an_invalid_event(raw):
    try:
        events = normalize_batch(raw, NOW)
    except InvalidEvent as exc:
        assert ": " in str(exc)
        return
    for event in events:
        assert event["type"] in EVENT_TYPES and math.isfinite(event["timestamp"])
        assert all(isinstance(event[k], str) and event[k] for k in ("event_id", "user_id",
                                                                    "item_id"))
