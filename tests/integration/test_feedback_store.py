"""The feedback store on real back ends: a SQLite file and a fresh PostgreSQL database each.

Every test runs on both (the `store_url` fixture); PostgreSQL tests skip where no server runs,
and fail under CI=1, which must run them.
"""
from __future__ import annotations

import math
import time
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pandas as pd
import pytest

from components.data.validate import validate_interactions
from components.errors import ConfigError
from components.feedback.feedback_events import EVENT_COLUMNS, InvalidEvent, normalize_batch
from components.feedback.feedback_store import (
    IMPRESSION_COLUMNS,
    INTERACTION_COLUMNS,
    FeedbackStore,
    default_store_url,
    events_table,
)

T0 = 1_700_000_000.0


def event(event_id: str, kind: str = "click", user: str = "u1", item: str = "i1",
          t: float = T0, **extra) -> dict:
    return {"event_id": event_id, "type": kind, "user_id": user, "item_id": item,
            "timestamp": t, **extra}


@pytest.fixture()
def store(store_url):
    with FeedbackStore(store_url) as opened:
        yield opened


def test_events_round_trip_with_their_contract_columns(store):
    accepted, duplicates = store.add_events([
        event("e1", "click", request_id="r1", model_version="v1", position=2),
        event("e2", "rating", item="i2", t=T0 + 1, value=4.5),
        event("e3", "impression", item="i3", t="2023-11-14T22:13:22Z"),
    ])
    assert (accepted, duplicates) == (3, [])
    frame = store.read_events()
    assert list(frame.columns) == list(EVENT_COLUMNS)
    assert frame.event_id.tolist() == ["e1", "e2", "e3"]  # oldest first
    first = frame.iloc[0]
    assert (first.request_id, first.model_version, first.position) == ("r1", "v1", 2)
    assert math.isnan(first.value) and frame.iloc[1].value == 4.5
    assert frame.iloc[2].timestamp == T0 + 2  # ISO 8601, UTC
    assert pd.isna(frame.iloc[1].position) and frame.position.dtype == "Int64"
    assert frame.received_at.gt(T0).all()


def test_a_retried_event_is_stored_once_and_reported_as_a_duplicate(store):
    assert store.add_events([event("a"), event("b")]) == (2, [])
    # Retried with different content: the first one stored wins, the key decides.
    assert store.add_events([event("b", "like"), event("c"), event("a")]) == (1, ["b", "a"])
    assert store.add_events([event("d"), event("d"), event("e")]) == (2, ["d"])
    frame = store.read_events()
    assert sorted(frame.event_id) == ["a", "b", "c", "d", "e"]
    assert frame.set_index("event_id").loc["b", "type"] == "click"


@pytest.mark.parametrize("bad, message", [
    ({"type": "rating", "value": None}, "[1].value: required for a rating"),
    ({"type": "purchase"}, "[1].type: 'purchase' is not one of"),
    ({"user_id": ""}, "[1].user_id: must not be empty"),
    ({"item_id": None}, "[1].item_id: required"),
    ({"position": -1}, "[1].position: must be between 0"),
    ({"timestamp": 1.7e12}, "[1].timestamp: not a time between 1970 and now"),
    ({"value": float("nan")}, "[1].value: must be a finite number"),
    ({"colour": "red"}, "[1].colour: unknown field"),
])
def test_a_bad_event_rejects_the_whole_batch(store, bad, message):
    with pytest.raises(InvalidEvent) as caught:
        store.add_events([event("ok-1"), {**event("bad"), **bad}, event("ok-2")])
    assert str(caught.value).startswith(message)
    assert store.read_events().empty


def test_writers_racing_on_the_same_ids_store_each_once(store):
    ids = [f"e{i}" for i in range(300)]

    def writer(seed: int) -> int:
        order = np.random.default_rng(seed).permutation(ids)
        accepted = 0
        for start in range(0, len(order), 25):
            batch = [event(str(e), user=f"u{seed}") for e in order[start:start + 25]]
            accepted += store.add_events(batch)[0]
        return accepted

    with ThreadPoolExecutor(4) as pool:  # result() re-raises a writer's error
        assert sum(pool.map(writer, range(4))) == len(ids)
    frame = store.read_events()
    assert len(frame) == len(ids) and frame.event_id.is_unique


def test_impressions_are_stored_once_and_join_clicks_by_request_id(store):
    shown = [{"request_id": "r1", "user_id": "u1", "item_id": item, "position": pos,
              "model_version": "v2", "timestamp": T0} for pos, item in enumerate("abc")]
    assert store.add_impressions(shown) == 3
    assert store.add_impressions(shown[1:]) == 0  # a re-delivered answer
    assert store.add_impressions([{**shown[0], "request_id": "r2", "source_version": "v1",
                                   "variant": "interleaved"}]) == 1
    store.add_events([event("c1", "click", item="b", request_id="r1", t=T0 + 5)])
    impressions = store.read_impressions()
    assert list(impressions.columns) == list(IMPRESSION_COLUMNS)
    assert impressions.source_version.tolist() == ["v2", "v2", "v2", "v1"]
    joined = store.read_events(types=["click"]).merge(
        impressions, on=["request_id", "user_id", "item_id"], suffixes=("", "_shown"))
    assert joined[["item_id", "position_shown", "model_version_shown"]].values.tolist() == [
        ["b", 1, "v2"]]


def test_windows_and_types_select_events(store):
    store.add_events([event(f"e{i}", kind, t=T0 + i)
                      for i, kind in enumerate(["click", "like", "impression", "rating"])
                      if kind != "rating"] + [event("e3", "rating", t=T0 + 3, value=3.0)])
    assert store.read_events(since=T0 + 1, until=T0 + 3).event_id.tolist() == ["e1", "e2"]
    assert store.read_events(types=["impression", "rating"]).event_id.tolist() == ["e2", "e3"]
    empty = store.read_events(since=T0 + 100)
    assert empty.empty and list(empty.columns) == list(EVENT_COLUMNS)
    assert list(store.read_impressions().columns) == list(IMPRESSION_COLUMNS)


def test_recent_items_are_the_users_positive_feedback_newest_first(store):
    store.add_events([
        event("1", "click", item="a", t=T0), event("2", "like", item="b", t=T0 + 1),
        event("3", "impression", item="c", t=T0 + 2), event("4", "dislike", item="d", t=T0 + 3),
        event("5", "rating", item="e", t=T0 + 4, value=2.0), event("6", "consume", item="a",
                                                                    t=T0 + 5),
        event("7", "like", user="someone-else", item="z", t=T0 + 6),
    ])
    assert store.recent_items("u1", 10) == ["a", "e", "b"]
    assert store.recent_items("u1", 2) == ["a", "e"]
    assert store.recent_items("u1", 10, since=T0 + 4) == ["a", "e"]
    assert store.recent_items("nobody", 10) == []


def test_the_positive_tail_resumes_at_its_cursor(store):
    store.add_events([event("1", "click", item="a"), event("2", "impression", item="b"),
                      event("3", "like", user="u2", item="c", t=T0 + 9)])
    first, cursor = store.positive_rows_since(None)
    assert first == [("u1", "a", T0), ("u2", "c", T0 + 9)]
    store.add_events([event("4", "consume", item="d"), event("5", "dislike", item="e")])
    later, cursor = store.positive_rows_since(cursor)
    assert [(user, item) for user, item, _ in later] == [("u1", "d")]  # after the cursor, once
    assert store.positive_rows_since(cursor) == ([], cursor)
    assert [r[1] for r in store.positive_rows_since(None, since_timestamp=T0 + 5)[0]] == ["c"]


def test_the_positive_rows_follow_cursor_limit_and_filters_in_every_combination(store):
    """The tuple form the history threads read after every commit: its statements are built
    once per shape and reused, so each shape is read twice, with other values the second
    time."""
    store.add_events([event(str(n), "like", user=f"u{n % 3}", item=f"i{n}", t=T0 + n)
                      for n in range(8)] + [event("x", "impression", item="shown")])
    rows, cursor = store.positive_rows_since(None, limit=3)
    assert rows == [("u0", "i0", T0), ("u1", "i1", T0 + 1), ("u2", "i2", T0 + 2)]
    rest, end = store.positive_rows_since(cursor, limit=100)
    assert [item for _, item, _ in rest] == [f"i{n}" for n in range(3, 8)]
    assert store.positive_rows_since(end) == ([], end)
    assert [r[1] for r in store.positive_rows_since(cursor, limit=2)[0]] == ["i3", "i4"]
    for since in (T0 + 5, T0 + 1):
        rows, _ = store.positive_rows_since(None, since_timestamp=since)
        assert [r[2] for r in rows] == [float(T0 + n) for n in range(8) if T0 + n >= since]
        after, _ = store.positive_rows_since(cursor, since_timestamp=since, received_since=0.0)
        assert [r[1] for r in after] == [f"i{n}" for n in range(3, 8) if T0 + n >= since]
    assert store.positive_rows_since(None, received_since=time.time() + 3600) == ([], None)
    assert store.positive_rows_since(cursor, since_timestamp=T0 + 4)[1] == end


def test_a_postgresql_store_from_before_the_commit_order_column_gets_it(postgres_url):
    """A store created before events carried their transaction id: opening it adds the column
    (its rows share the id of the transaction that added it) and the tail reads old and new."""
    with FeedbackStore(postgres_url) as store, store.engine.begin() as conn:
        conn.exec_driver_sql("ALTER TABLE events DROP COLUMN commit_xid")  # the index goes too
        conn.execute(events_table.insert(), [normalize_batch([event("old", item="a")])[0]])
    with FeedbackStore(postgres_url) as store:
        store.add_events([event("new", item="b")])
        rows, cursor = store.positive_rows_since(None)
        assert [item for _, item, _ in rows] == ["a", "b"]
        assert store.positive_backlog(cursor) == (0, None)
        assert store.load_cursor(store.dump_cursor(cursor)) == cursor


def test_interactions_are_a_valid_training_source(store):
    store.add_events([
        event("1", "rating", item="a", t=T0 + 0.7, value=4.0),
        event("2", "rating", item="a", t=T0 + 9, value=5.0),  # re-rated: the latest counts
        event("3", "click", item="b", t=T0 + 2), event("4", "like", item="b", t=T0 + 3),
        event("5", "impression", item="c", t=T0 + 4), event("6", "dislike", item="d", t=T0 + 5),
    ])
    frame = store.interactions(implicit_rating=5.0)
    assert list(frame.columns) == list(INTERACTION_COLUMNS)
    assert frame.values.tolist() == [["u1", "b", 5.0, T0 + 3], ["u1", "a", 5.0, T0 + 9]]
    valid = validate_interactions(frame, source="feedback store")
    assert len(valid) == 2 and valid.timestamp.dtype == "int64"
    assert frame.equals(store.interactions(implicit_rating=5.0))
    implicit = store.interactions().set_index("item_id").rating
    assert implicit["a"] == 5.0 and math.isnan(implicit["b"])
    assert store.interactions(since=T0 + 5).item_id.tolist() == ["a"]
    assert list(store.interactions(since=T0 + 99).columns) == list(INTERACTION_COLUMNS)


def test_a_second_process_sees_what_add_events_returned(store_url):
    """Committed means visible to any other connection the moment add_events returns."""
    with FeedbackStore(store_url) as writer, FeedbackStore(store_url) as reader:
        for i in range(20):
            writer.add_events([event(f"e{i}")])
            assert f"e{i}" in set(reader.read_events().event_id)


def test_the_default_store_lives_under_the_run_home(tmp_path):
    url = default_store_url(tmp_path / "home")
    assert url == f"sqlite:///{tmp_path / 'home' / 'feedback.db'}"
    with FeedbackStore(url) as store:
        store.add_events([event("x")])
    assert (tmp_path / "home" / "feedback.db").exists()


@pytest.mark.parametrize("url, message", [
    ("not a url", "is not a database URL"),
    ("mysql://u@h/db", "only sqlite and postgresql"),
    ("sqlite://", "in-memory SQLite"),
    ("postgresql+psycopg://nobody:secret@127.0.0.1:1/none", "cannot open"),
])
def test_a_store_that_cannot_be_opened_is_one_clear_error(url, message):
    with pytest.raises(ConfigError, match=message) as caught:
        FeedbackStore(url)
    assert "secret" not in str(caught.value)


def test_a_group_commit_answers_each_batch_as_if_alone(store):
    store.add_events([event("old")])
    batches = [normalize_batch([event("a"), event("old"), event("b")]),
               normalize_batch([event("b"), event("c"), event("c")]), []]
    assert store.add_normalized_batches(batches) == [(2, ["old"]), (1, ["b", "c"]), (0, [])]
    assert sorted(store.read_events().event_id) == ["a", "b", "c", "old"]
