"""What was shown: recommendation answers as rows of the feedback store's `impressions` table.

Two writers feed it. Locally the predictor hands every answered request to an
`ImpressionWriter` (a queue put on the request path, nothing more); on a cluster the events
service does the same with the answers KServe's payload logger posts. A background thread
turns them into rows (one per shown item: request_id, user, item, 0-based position, model
version) and stores them in batches, so neither the predictor nor the logger's sink waits on
the database. When the writer falls behind, whole answers are dropped and counted rather than
slowing answers (`on_drop`); a store error drops that batch, is counted (`on_error`) and
logged at most once a minute. `close()` writes what is queued.

Rows go in batches, at most one transaction per `flush_seconds` (1 s): on SQLite a
ten-item answer costs about 60 us of CPU in a batch of hundreds, ten times that alone in a
commit, and the random keys of the answers' ids dirty index pages that each commit writes
again (a second between commits, rather than a quarter, cut the predictor's CPU per answer
by about a tenth at 1,200 answers/s). `request_id` is the answer's `id` (v2 response `id`, v1 response `id`): what a client
sends back with a click, so clicks join impressions on it.
"""
from __future__ import annotations

import logging
import queue
import threading
import time
from collections.abc import Callable, Iterable, Mapping
from typing import Any

from serving.request_log import LogEntry

# Under "kserve" so the model server's log configuration shows it; elsewhere it reaches the root.
log = logging.getLogger("kserve.recsys.impressions")

_STOP = object()


def impressions_from_entry(entry: LogEntry) -> list[tuple]:
    """Rows (tuples in the store's IMPRESSION_COLUMNS order) of one answered request;
    item-to-item answers (no user) show nothing to a user."""
    if entry.cold_start is None:
        return []
    rows = []
    request_id, version, when = entry.request_id, entry.model_version, entry.unix_time
    for row, user in enumerate(entry.queries.tolist()):
        user = str(user)
        for position, item in enumerate(entry.item_ids[row, : int(entry.k[row])].tolist()):
            if item != "":
                rows.append((request_id, user, str(item), position, version, version, None, when))
    return rows


def impressions_from_records(records: Iterable[Mapping[str, Any]],
                             request_id: str | None = None) -> list[tuple]:
    """Rows from request-log records (`records_from_cloudevents`); `request_id` overrides the
    records' (the payload logger's ce-id) with the response's own id when it has one."""
    rows = []
    for record in records:
        if record.get("user_id") is None:
            continue
        version = record["model_version"]
        for position, item in enumerate(record["item_ids"]):
            rows.append((request_id or record["request_id"], record["user_id"], str(item),
                         position, version, version, None, float(record["unix_time"])))
    return rows


class ImpressionWriter:
    """A bounded queue of answers and a thread that stores their impressions in batches."""

    def __init__(self, store: Any, *, queue_size: int = 10_000, batch_rows: int = 20_000,
                 flush_seconds: float = 1.0, on_drop: Callable[[], None] | None = None,
                 on_error: Callable[[], None] | None = None,
                 on_written: Callable[[int], None] | None = None):
        self.store = store
        self.batch_rows, self.flush_seconds = batch_rows, flush_seconds
        self._closing = threading.Event()
        self.on_drop, self.on_error, self.on_written = on_drop, on_error, on_written
        self._queue: queue.Queue = queue.Queue(queue_size)
        self._thread: threading.Thread | None = None
        self._last_warning = 0.0

    def start(self) -> ImpressionWriter:
        if self._thread is None:
            self._thread = threading.Thread(target=self._run, name="impressions", daemon=True)
            self._thread.start()
        return self

    def put(self, answer: LogEntry | list[tuple]) -> bool:
        """Queue one answered request (or its ready rows); False (and counted) when full."""
        try:
            self._queue.put_nowait(answer)
        except queue.Full:
            if self.on_drop is not None:
                self.on_drop()
            return False
        return True

    def close(self, timeout: float = 30.0) -> None:
        """Store what is queued, then stop the thread (idempotent)."""
        thread, self._thread = self._thread, None
        if thread is not None:
            self._closing.set()  # no more pauses: write what is queued now
            self._queue.put(_STOP)
            thread.join(timeout)

    def _run(self) -> None:
        stopping = False
        while not stopping:
            rows: list[tuple] = []
            taken = 0
            item = self._queue.get()
            while True:
                if item is _STOP:
                    stopping = True
                    break
                rows.extend(impressions_from_entry(item) if isinstance(item, LogEntry) else item)
                if len(rows) >= self.batch_rows:
                    break
                taken += 1
                if taken % 32 == 0:
                    # Let the event loop have the GIL: else it waits for the interpreter's
                    # switch interval (5 ms) while this thread builds a quarter second's rows.
                    time.sleep(0)
                try:
                    item = self._queue.get_nowait()
                except queue.Empty:
                    break
            if rows:
                self._write(rows)
                # A pause, so that one transaction takes what a second brings: the
                # cost of a stored row falls with the rows per commit (one disk flush each).
                self._closing.wait(self.flush_seconds)

    def _write(self, rows: list[tuple]) -> None:
        try:
            written = self.store.add_impression_tuples(rows)
        except Exception as exc:  # noqa: BLE001
            # the database's many errors: the answers went out anyway
            if self.on_error is not None:
                self.on_error()
            now = time.monotonic()
            if now - self._last_warning >= 60:
                self._last_warning = now
                log.warning("cannot store %d impressions (%s: %s); dropping them (logged at "
                            "most once a minute)", len(rows), type(exc).__name__,
                            str(exc).splitlines()[0][:200] if str(exc) else "")
            return
        if self.on_written is not None:
            self.on_written(written)
