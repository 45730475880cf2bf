"""Feedback events as a training source: an events file or the real feedback store (SQLite),
validated like any other source, malformed events named by their file (or store) and row."""

from __future__ import annotations

import json
import time

import pandas as pd
import pytest
import sqlalchemy as sa

from components.data.ingest import RawDataset, validate_raw, with_feedback
from components.data.validate import validate_interactions
from components.errors import DataValidationError
from components.feedback.feedback_store import FeedbackStore, events_table

NOW = time.time()


def _raw() -> RawDataset:
    interactions = pd.DataFrame(
        {
            "user_id": ["u1", "u1", "u2"],
            "item_id": ["a", "b", "a"],
            "rating": [4.0, 3.0, 5.0],
            "timestamp": [100, 200, 300],
        }
    )
    items = pd.DataFrame({"item_id": ["a", "b", "c"], "title": ["A", "B", "C"]})
    return RawDataset(interactions, items, "tiny", "tiny.csv", "items.csv")


def _write(path, events) -> str:
    path.write_text("".join(json.dumps(e) + "\n" for e in events))
    return str(path)


EVENTS = [
    {"event_id": "1", "type": "click", "user_id": "u1", "item_id": "c", "timestamp": NOW - 30},
    {
        "event_id": "2",
        "type": "rating",
        "user_id": "u2",
        "item_id": "b",
        "value": 2,
        "timestamp": NOW - 20,
    },
    {"event_id": "3", "type": "impression", "user_id": "u2", "item_id": "c", "timestamp": NOW - 20},
    {
        "event_id": "4",
        "type": "like",
        "user_id": "u3",
        "item_id": "new-item",
        "timestamp": NOW - 10,
    },
    {"event_id": "5", "type": "dislike", "user_id": "u3", "item_id": "a", "timestamp": NOW - 10},
    # The same interaction as the source's first row, replayed: not a duplicate-row error.
    {
        "event_id": "6",
        "type": "rating",
        "user_id": "u1",
        "item_id": "a",
        "value": 4,
        "timestamp": 100,
    },
    {"event_id": "7", "type": "consume", "user_id": "u2", "item_id": "b", "timestamp": NOW - 5},
]


def test_an_events_file_adds_its_positive_events_as_interactions(tmp_path):
    raw = with_feedback(_raw(), _write(tmp_path / "events.jsonl", EVENTS))
    dataset = validate_raw(raw)
    rows = dataset.interactions.set_index(["user_id", "item_id"])
    assert len(rows) == 6  # 3 from the source, 3 new pairs; impression, dislike, replay left out
    assert pd.isna(rows.loc[("u1", "c"), "rating"])  # a click is an implicit interaction
    # A pair rated then consumed: its latest time, its latest rating.
    assert rows.loc[("u2", "b"), "rating"] == 2.0 and rows.loc[("u2", "b"), "timestamp"] == int(
        NOW - 5
    )
    assert "new-item" in set(dataset.items["item_id"])  # new items can be learnt
    assert "events.jsonl" in raw.origin


@pytest.mark.parametrize(
    "bad, fragment",
    [
        (
            {"event_id": "9", "type": "clik", "user_id": "u", "item_id": "i"},
            "type: 'clik' is not one of",
        ),
        (
            {"event_id": "9", "type": "rating", "user_id": "u", "item_id": "i"},
            "value: required for a rating",
        ),
        (
            {"event_id": "9", "type": "click", "user_id": "", "item_id": "i"},
            "user_id: must not be empty",
        ),
        (
            {"event_id": "9", "type": "click", "user_id": "u", "item_id": "i", "timestamp": 1e13},
            "timestamp: not a time between 1970 and now",
        ),
        (
            {"event_id": "9", "type": "click", "user_id": "u", "item_id": "i", "colour": "red"},
            "colour: unknown field",
        ),
    ],
)
def test_a_malformed_event_is_named_by_file_and_row(tmp_path, bad, fragment):
    path = _write(tmp_path / "events.jsonl", [*EVENTS[:2], bad])
    with pytest.raises(DataValidationError) as info:
        with_feedback(_raw(), path)
    message = str(info.value)
    assert message.startswith(f"{path}: row 3 (event '9'): ") and fragment in message


def test_a_line_that_is_not_an_event_is_named(tmp_path):
    path = tmp_path / "events.jsonl"
    path.write_text(json.dumps(EVENTS[0]) + "\n[1, 2]\n")
    with pytest.raises(
        DataValidationError, match=r"events.jsonl: row 2: an event must be a JSON object"
    ):
        with_feedback(_raw(), str(path))
    with pytest.raises(DataValidationError, match="no such events file"):
        with_feedback(_raw(), str(tmp_path / "absent.jsonl"))


def test_a_csv_of_events_works_too(tmp_path):
    path = tmp_path / "events.csv"
    pd.DataFrame(EVENTS).to_csv(path, index=False)
    raw = with_feedback(_raw(), str(path))
    assert len(validate_raw(raw).interactions) == 6


def test_the_feedback_store_is_a_source_and_its_bad_rows_are_named(tmp_path):
    url = f"sqlite:///{tmp_path / 'feedback.db'}"
    with FeedbackStore(url) as store:
        accepted, _ = store.add_events(EVENTS)
        assert accepted == len(EVENTS)
    dataset = validate_raw(with_feedback(_raw(), url))
    assert len(dataset.interactions) == 6
    # A row written around the service (by hand, by another tool) is checked all the same.
    with FeedbackStore(url) as store, store.engine.begin() as conn:
        conn.execute(
            sa.insert(events_table).values(
                event_id="by-hand",
                type="rating",
                user_id="u1",
                item_id="b",
                timestamp=NOW,
                value=None,
                received_at=NOW,
            )
        )
    with pytest.raises(DataValidationError) as info:
        with_feedback(_raw(), url)
    message = str(info.value)
    assert message.startswith(f"feedback store {url} (table events): row ")
    assert "(event 'by-hand'): value: required for a rating" in message


def test_empty_ratings_are_implicit_but_text_is_not_a_rating():
    frame = pd.DataFrame({"user_id": ["1", "2"], "item_id": ["a", "b"], "rating": [4.0, None]})
    out = validate_interactions(frame, source="f.csv")
    assert out["rating"].isna().tolist() == [False, True]
    with pytest.raises(
        DataValidationError, match="'rating': not a finite number; rows 2 \\('x'\\)"
    ):
        validate_interactions(frame.assign(rating=["4", "x"]), source="f.csv")


def test_the_fingerprint_follows_new_events(tmp_path):
    from components.steps import fingerprint_source

    items = tmp_path / "items.csv"
    data = tmp_path / "interactions.csv"
    _raw().interactions.to_csv(data, index=False)
    _raw().items.to_csv(items, index=False)
    path = tmp_path / "events.jsonl"
    _write(path, EVENTS[:3])
    first = fingerprint_source(str(data), str(items), feedback=str(path))
    assert first == fingerprint_source(str(data), str(items), feedback=str(path))
    _write(path, EVENTS)
    assert fingerprint_source(str(data), str(items), feedback=str(path)) != first
    assert fingerprint_source(str(data), str(items)) != first
