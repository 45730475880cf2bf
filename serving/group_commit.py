"""Group commit: concurrent requests' events stored by one writer thread, many per transaction.

A commit costs a disk flush whatever its size (about 5 ms for SQLite with synchronous=FULL
here), so storing every request waiting in one transaction is what lets single-event clients
reach batch throughput; PostgreSQL gains fewer round trips. Each request still gets its own
answer (the store attributes duplicates per batch), and a transaction that fails is retried
request by request, so one request that the database refuses cannot fail the others. The
queue is bounded: `submit` raises `Overloaded` beyond `max_queued_events`.
"""
from __future__ import annotations

import concurrent.futures
import queue
import threading
import time
from collections import Counter as Tally
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from serving.events_limits import DEFAULT_MAX_QUEUED_EVENTS

MAX_GROUP_EVENTS = 5_000
_STOP = object()


class Overloaded(Exception):
    """More events are queued than the writer may hold."""


@dataclass
class _Job:
    rows: list[dict[str, Any]]
    future: concurrent.futures.Future


class GroupCommitter:
    """One writer thread; each transaction stores every request waiting (see module doc)."""

    def __init__(self, store: Any, metrics: Any, *,
                 on_commit: Callable[[list[dict[str, Any]]], None] | None = None,
                 max_queued_events: int = DEFAULT_MAX_QUEUED_EVENTS,
                 max_group_events: int = MAX_GROUP_EVENTS):
        self.store, self.metrics, self.on_commit = store, metrics, on_commit
        self.max_queued_events, self.max_group_events = max_queued_events, max_group_events
        self._queue: queue.Queue = queue.Queue()
        self._queued = 0
        self._lock = threading.Lock()
        self._thread: threading.Thread | None = None

    def start(self) -> GroupCommitter:
        if self._thread is None:
            self._thread = threading.Thread(target=self._run, name="group-commit", daemon=True)
            self._thread.start()
        return self

    def submit(self, rows: list[dict[str, Any]]) -> concurrent.futures.Future:
        """Queue one request's events; the future gives (accepted, duplicate_ids) once they are
        committed, or the store's error."""
        with self._lock:
            if self._thread is None:
                raise Overloaded("the writer is stopped")
            if self._queued + len(rows) > self.max_queued_events:
                raise Overloaded(f"{self._queued} events already wait for the store")
            self._queued += len(rows)
            self.metrics.queued.set(self._queued)
        job = _Job(rows, concurrent.futures.Future())
        self._queue.put(job)
        return job.future

    def close(self, timeout: float = 60.0) -> None:
        """Commit what is queued, then stop (idempotent)."""
        with self._lock:
            thread, self._thread = self._thread, None
        if thread is not None:
            self._queue.put(_STOP)
            thread.join(timeout)

    def _run(self) -> None:
        stopping = False
        while not stopping:
            first = self._queue.get()
            if first is _STOP:
                break
            group, size = [first], len(first.rows)
            while size < self.max_group_events:
                try:
                    job = self._queue.get_nowait()
                except queue.Empty:
                    break
                if job is _STOP:
                    stopping = True
                    break
                group.append(job)
                size += len(job.rows)
            try:
                self._commit(group)
            finally:
                with self._lock:
                    self._queued -= size
                    self.metrics.queued.set(self._queued)

    def _commit(self, group: list[_Job]) -> None:
        started = time.perf_counter()
        try:
            answers = self.store.add_normalized_batches([job.rows for job in group])
        except Exception as exc:  # noqa: BLE001 (the database's many errors)
            if len(group) > 1:  # one request's rows may be the cause: the others go alone
                for job in group:
                    self._commit([job])
            else:
                group[0].future.set_exception(exc)  # its request answers 503
            return
        size = sum(len(job.rows) for job in group)
        self.metrics.store_seconds.observe(time.perf_counter() - started)
        self.metrics.commit_events.observe(size)
        stored = [row for job, (_, dups) in zip(group, answers)
                  for row in accepted_rows(job.rows, dups)]
        if self.on_commit is not None and stored:
            self.on_commit(stored)  # must not block: it runs before the answers go out
        for job, answer in zip(group, answers):
            job.future.set_result(answer)


def accepted_rows(rows: list[dict[str, Any]], duplicates: list[str]) -> list[dict[str, Any]]:
    """The rows a batch newly stored (the first copy of each id not answered a duplicate)."""
    if not duplicates:
        return rows
    copies, repeated = Tally(r["event_id"] for r in rows), Tally(duplicates)
    out, seen = [], set()
    for row in rows:
        key = row["event_id"]
        if copies[key] > repeated[key] and key not in seen:
            out.append(row)
        seen.add(key)
    return out
