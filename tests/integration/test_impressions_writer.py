"""The predictor's impressions writer process (`serving.impressions.ImpressionProcessWriter`)
over a real SQLite feedback store: what was handed to it is stored, on a clean shutdown too; a
dead writer process is reported, its unstored answers counted, and another one takes over; a
model server on loopback stores every answer it acknowledged before its SIGTERM.
"""
from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import time
import uuid
from pathlib import Path

import httpx
import numpy as np
import pytest

from components.feedback.feedback_store import FeedbackStore
from serving.impressions import ImpressionProcessWriter
from serving.request_log import LogEntry

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from events_process import free_port

REPO = Path(__file__).resolve().parents[2]


def entry(request_id: str, user: str = "u1", k: int = 3) -> LogEntry:
    items = np.asarray([[f"i{j}" for j in range(k)] + [""]], dtype=object)
    return LogEntry(time.time(), request_id, "v1", np.asarray([user], dtype=object),
                    np.asarray([k + 1]), items, np.zeros((1, k + 1), np.float32),
                    np.zeros(1, dtype=bool))


class Counts:
    def __init__(self):
        self.lock = threading.Lock()
        self.dropped = self.lost = self.exits = self.written = 0

    def drop(self) -> None:
        with self.lock:
            self.dropped += 1

    def error(self) -> None:
        with self.lock:
            self.lost += 1

    def exit(self) -> None:
        with self.lock:
            self.exits += 1

    def wrote(self, rows: int) -> None:
        with self.lock:
            self.written += rows


def writer(url: str, counts: Counts, **kwargs) -> ImpressionProcessWriter:
    return ImpressionProcessWriter(url, on_drop=counts.drop, on_error=counts.error,
                                   on_written=counts.wrote, on_exit=counts.exit, **kwargs)


def wait_for(condition, timeout: float = 20.0):
    deadline = time.monotonic() + timeout
    while not (value := condition()):
        assert time.monotonic() < deadline, "condition not met in time"
        time.sleep(0.05)
    return value


@pytest.fixture
def store_url(tmp_path) -> str:
    url = f"sqlite:///{tmp_path / 'feedback.db'}"
    FeedbackStore(url).close()  # tables created, as the predictor's history does
    return url


def test_everything_handed_over_before_a_clean_close_is_stored(store_url):
    counts = Counts()
    # A long flush interval: the rows are still in the child's memory when close() comes.
    w = writer(store_url, counts, flush_seconds=60).start()
    ids = [f"r{n}" for n in range(500)]
    for request_id in ids:
        assert w.put(entry(request_id))
    ready = [("rows-1", "u2", "i9", 0, "v2", "v1", "B", time.time())]
    assert w.put(ready)  # ready rows (the router's) go the same way
    w.put(LogEntry(time.time(), "by-item", "v1", np.asarray(["i1"], dtype=object),
                   np.asarray([2]), np.asarray([["i2", "i3"]], dtype=object),
                   np.zeros((1, 2), np.float32), None, np.asarray(["i1"], dtype=object)))
    wait_for(lambda: w.pid is not None)  # started at the first hand-off
    child = w.pid
    w.close()
    assert w.pid is None
    with pytest.raises(ProcessLookupError):
        os.kill(child, 0)  # the child exited
    with FeedbackStore(store_url) as store:
        shown = store.read_impressions()
    assert len(shown) == 3 * len(ids) + 1  # the padding and the item-to-item answer: nothing
    assert set(shown.request_id) == {*ids, "rows-1"}
    first = shown[shown.request_id == "r0"].sort_values("position")
    assert first.item_id.tolist() == ["i0", "i1", "i2"] and set(first.user_id) == {"u1"}
    assert shown[shown.request_id == "rows-1"].variant.tolist() == ["B"]
    assert (counts.written, counts.dropped, counts.lost, counts.exits) == (len(shown), 0, 0, 0)
    assert not w.put(entry("after-close")) and counts.dropped == 1


def test_no_process_until_there_is_an_answer_to_store(store_url):
    """A writer that is never given an answer (a challenger behind the router) starts no
    child; the first answer starts one."""
    w = writer(store_url, Counts(), flush_seconds=0.2).start()
    try:
        time.sleep(0.3)  # several hand-off intervals
        assert w.pid is None
        w.put(entry("first"))
        wait_for(lambda: w.pid is not None)
    finally:
        w.close()
    with FeedbackStore(store_url) as store:
        assert set(store.read_impressions().request_id) == {"first"}


def test_rows_reach_the_store_within_the_flush_interval(store_url):
    counts = Counts()
    w = writer(store_url, counts, flush_seconds=0.2).start()
    try:
        w.put(entry("soon"))
        with FeedbackStore(store_url) as store:
            wait_for(lambda: "soon" in set(store.read_impressions().request_id), timeout=5)
        wait_for(lambda: counts.written == 3)
    finally:
        w.close()


def test_a_dead_writer_process_is_reported_and_another_takes_over(store_url, caplog):
    counts = Counts()
    w = writer(store_url, counts, flush_seconds=60, restart_seconds=0.1).start()
    try:
        for n in range(20):
            w.put(entry(f"before-{n}"))
        wait_for(lambda: w.pid is not None)
        first = w.pid
        # Handed over, held in the child's memory (a flush a minute away), not yet stored:
        # killing it loses them, and they must be counted as such.
        wait_for(lambda: not w._pending and w._child.in_flight)
        os.kill(first, signal.SIGKILL)
        wait_for(lambda: counts.exits == 1)
        assert counts.lost == 20 and w.exits == 1
        assert "impressions writer process" in caplog.text and "exited" in caplog.text
        w.put(entry("after"))
        wait_for(lambda: w.pid is not None and w.pid != first)
    finally:
        w.close()
    with FeedbackStore(store_url) as store:
        assert set(store.read_impressions().request_id) == {"after"}
    assert counts.exits == 1 and counts.dropped == 0


def test_a_full_buffer_drops_and_counts_answers(store_url):
    counts = Counts()
    # Not started: nothing drains the buffer.
    w = writer(store_url, counts, max_answers=5)
    assert all(w.put(entry(f"r{n}")) for n in range(5))
    assert not w.put(entry("r5")) and counts.dropped == 1
    w.close()


def test_a_server_stores_every_answer_it_acknowledged_before_sigterm(small_model_dir,
                                                                      tmp_path, store_url):
    http_port, grpc_port = free_port(), free_port()
    log = tmp_path / "predictor.log"
    with log.open("wb") as out:
        server = subprocess.Popen(
            [sys.executable, "-m", "serving", "--model-dir", str(small_model_dir),
             "--online-store", store_url, "--http-port", str(http_port),
             "--grpc-port", str(grpc_port)], cwd=REPO, stdout=out, stderr=subprocess.STDOUT)
    url = f"http://127.0.0.1:{http_port}"
    try:
        def ready() -> bool:
            assert server.poll() is None, log.read_text()[-2000:]
            try:
                return httpx.get(url + "/v2/models/recsys/ready", timeout=1).status_code == 200
            except httpx.HTTPError:
                return False

        wait_for(ready, timeout=120)
        ids = []
        with httpx.Client(timeout=10) as client:
            for n in range(200):
                request_id = uuid.uuid4().hex
                body = {"id": request_id, "inputs": [
                    {"name": "user_id", "datatype": "BYTES", "shape": [1],
                     "data": [f"{n % 7}"]},
                    {"name": "k", "datatype": "INT32", "shape": [1], "data": [4]}]}
                response = client.post(url + "/v2/models/recsys/infer", json=body)
                assert response.status_code == 200, response.text
                ids.append(response.json()["id"])
        server.send_signal(signal.SIGTERM)
        assert server.wait(60) == 0, log.read_text()[-2000:]
    finally:
        if server.poll() is None:
            server.kill()
            server.wait()
    with FeedbackStore(store_url) as store:
        shown = store.read_impressions()
    counts = shown.groupby("request_id").size()
    assert set(ids) <= set(counts.index), f"{len(set(ids) - set(counts.index))} answers lost"
    assert (counts[ids] == 4).all()
    assert "impressions writer process" not in log.read_text()  # no child died
