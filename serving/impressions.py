"""What was shown: recommendation answers as rows of the feedback store's `impressions` table.

Two writers feed it. Locally the predictor hands every answered request to an
`ImpressionProcessWriter` (an append to a buffer on the request path, nothing more; a child
process builds and stores the rows, see the class); on a cluster the events
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
import pickle
import queue
import struct
import subprocess
import sys
import threading
import time
from collections import deque
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
    return _answer_rows(entry.request_id, entry.model_version, entry.unix_time,
                        entry.queries.tolist(), entry.k.tolist(), entry.item_ids.tolist())


def _answer_rows(request_id: str, version: str, when: float, users: list, ks: list,
                 items: list[list]) -> list[tuple]:
    """The store's rows of one answer from plain lists: each user's first k items shown, in
    their positions (padding left out)."""
    rows = []
    for user, k, shown in zip(users, ks, items, strict=True):
        user = str(user)
        for position, item in enumerate(shown[:int(k)]):
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


# ------------------------------------------------------------------ the writer in its own process
_FRAME = struct.Struct("<I")  # length of one hand-off (a pickled list of compact answers)


def _compact(answer: LogEntry | list[tuple]) -> tuple | None:
    """What the child needs of one answer, as plain lists (pickled in one call per hand-off)."""
    if not isinstance(answer, LogEntry):
        return ("rows", answer)
    if answer.cold_start is None:
        return None  # item-to-item: nothing shown to a user
    return ("entry", answer.request_id, answer.model_version, answer.unix_time,
            answer.queries.tolist(), answer.k.tolist(), answer.item_ids.tolist())


def _expand(compact: tuple) -> list[tuple]:
    """The store's rows of one compact answer."""
    if compact[0] == "rows":
        return compact[1]
    return _answer_rows(*compact[1:])


class _Child:
    """One writer process and the answers handed to it that it has not yet reported stored."""

    def __init__(self, process: subprocess.Popen):
        self.process = process
        self.in_flight: deque[int] = deque()  # answers per hand-off, oldest first
        self.dead = False
        self.reader: threading.Thread | None = None


class ImpressionProcessWriter:
    """`ImpressionWriter`'s API (`start`, `put`, `close`), with the rows built and stored by a
    child process (`python -m serving.impressions URL`) that owns the store's connection.

    `put` appends the answer to a bounded buffer (no lock, no wake-up); every
    `hand_off_seconds` a thread pickles what the buffer holds into one blob and writes it to
    the child's stdin. The child turns answers into rows and stores them in one transaction
    every `flush_seconds`, then reports each transaction on its stdout, so `on_written` and
    `on_error` are counted here. Neither the row building nor SQLite's work (the INSERTs, the
    commit's disk writes) then takes the serving process's GIL or its CPU time.

    A full buffer drops the answer (`on_drop`). A child that dies is reported (logged,
    `on_exit`), the answers it held but had not reported stored counted as lost (`on_error`,
    one call per answer), and a new child is started at the next hand-off (at most one per
    `restart_seconds`; meanwhile answers wait in the buffer). When no child can be started at
    all, the thread stores the rows itself, as `ImpressionWriter` does. `close()` hands off
    what is buffered, closes the child's stdin and waits for it: the child stores everything
    it received before it exits, so an answer acknowledged before a clean shutdown (stop,
    SIGTERM) is stored. The child runs in its own session and ignores SIGINT: a Ctrl-C of the
    terminal stops the server, whose shutdown then closes the child, instead of killing the
    child first.
    """

    def __init__(self, store_url: str, *, max_answers: int = 10_000,
                 hand_off_seconds: float = 0.05, flush_seconds: float = 1.0,
                 restart_seconds: float = 1.0,
                 on_drop: Callable[[], None] | None = None,
                 on_error: Callable[[], None] | None = None,
                 on_written: Callable[[int], None] | None = None,
                 on_exit: Callable[[], None] | None = None):
        self.store_url, self.max_answers = store_url, max_answers
        self.hand_off_seconds, self.flush_seconds = hand_off_seconds, flush_seconds
        self.restart_seconds = restart_seconds
        self.on_drop, self.on_error, self.on_written = on_drop, on_error, on_written
        self.on_exit = on_exit
        self._pending: deque = deque()  # append/popleft are atomic: put() takes no lock
        self._lock = threading.Lock()
        self._closing = threading.Event()
        self._closed = False
        self._thread: threading.Thread | None = None
        self._child: _Child | None = None
        self._last_start = float("-inf")
        self._fallback: Any = None  # a FeedbackStore, when no child could be started
        self._last_warning = 0.0
        self.exits = 0  # children that died (for tests and logs)

    # -------------------------------------------------------------- public API
    def start(self) -> ImpressionProcessWriter:
        """Start the hand-off thread; the child starts at the first hand-off of an answer, so
        a model that never answers (a challenger behind the router, whose impressions its
        champion writes) costs no process."""
        if self._thread is None and not self._closed:
            self._thread = threading.Thread(target=self._run, name="impressions-handoff",
                                            daemon=True)
            self._thread.start()
        return self

    def put(self, answer: LogEntry | list[tuple]) -> bool:
        """Buffer one answered request (or its ready rows); False (and counted) when full."""
        if self._closed or len(self._pending) >= self.max_answers:
            if self.on_drop is not None:
                self.on_drop()
            return False
        self._pending.append(answer)
        return True

    def close(self, timeout: float = 30.0) -> None:
        """Hand off what is buffered, let the child store it and exit (idempotent)."""
        self._closed = True
        thread, self._thread = self._thread, None
        if thread is not None:
            self._closing.set()
            thread.join(timeout)
        child, self._child = self._child, None
        if child is not None:
            self._finish(child, timeout)
        if self._fallback is not None:
            self._fallback.close()
            self._fallback = None

    @property
    def pid(self) -> int | None:
        """The current child's process id (None between a death and the restart)."""
        child = self._child
        return child.process.pid if child is not None else None

    # -------------------------------------------------------------- the hand-off thread
    def _run(self) -> None:
        while True:
            closing = self._closing.wait(self.hand_off_seconds)
            try:
                self._hand_off(final=closing)
            except Exception:  # the thread must go on
                log.exception("impressions hand-off failed")
            if closing:
                return

    def _hand_off(self, final: bool = False) -> None:
        n = len(self._pending)
        if n == 0:
            return
        child = self._child
        if child is None or child.dead:
            child = self._restart(final)
            if child is None and self._fallback is None:
                return  # the answers wait in the buffer for the next child
        answers = [self._pending.popleft() for _ in range(n)]
        compact = [c for c in map(_compact, answers) if c is not None]
        if not compact:
            return
        if child is None:  # no child can be started: store them here
            self._write_here([row for c in compact for row in _expand(c)], len(compact))
            return
        blob = pickle.dumps(compact, protocol=pickle.HIGHEST_PROTOCOL)
        with self._lock:
            if child.dead:  # died since: these answers are lost with it
                lost = len(compact)
            else:
                child.in_flight.append(len(compact))
                lost = 0
        if lost:
            self._count_lost(lost)
            return
        try:
            child.process.stdin.write(_FRAME.pack(len(blob)))
            child.process.stdin.write(blob)
            child.process.stdin.flush()
        except (OSError, ValueError):  # a broken pipe: the child is gone
            self._died(child)

    def _restart(self, final: bool) -> _Child | None:
        if self._fallback is not None:
            return None
        if not final and time.monotonic() - self._last_start < self.restart_seconds:
            return None
        return self._spawn()

    def _spawn(self) -> _Child | None:
        self._last_start = time.monotonic()
        command = [sys.executable, "-m", "serving.impressions", self.store_url,
                   "--flush-seconds", str(self.flush_seconds)]
        try:
            process = subprocess.Popen(command, stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                       start_new_session=True)
        except OSError as exc:
            from components.feedback.feedback_store import FeedbackStore

            log.error("cannot start the impressions writer process (%s); storing impressions "
                      "in the serving process instead", exc)
            self._fallback = FeedbackStore(self.store_url)
            self._child = None
            return None
        child = _Child(process)
        child.reader = threading.Thread(target=self._read, args=(child,),
                                        name="impressions-acks", daemon=True)
        child.reader.start()
        self._child = child
        return child

    def _write_here(self, rows: list[tuple], answers: int) -> None:
        try:
            written = self._fallback.add_impression_tuples(rows)
        except Exception as exc:  # noqa: BLE001 - the database's many errors
            self._count_lost(answers)
            self._warn(f"cannot store {len(rows)} impressions ({type(exc).__name__}: "
                       f"{_first_line(exc)}); dropping them")
            return
        if self.on_written is not None:
            self.on_written(written)

    # -------------------------------------------------------------- the child's reports
    def _read(self, child: _Child) -> None:
        """The child's stdout: `ok ROWS HANDOFFS` or `error HANDOFFS MESSAGE` per transaction."""
        for line in child.process.stdout:
            kind, _, rest = line.decode("utf-8", "replace").rstrip("\n").partition(" ")
            if kind == "ok":
                rows, handoffs = (int(x) for x in rest.split()[:2])
                self._settle(child, handoffs)
                if self.on_written is not None:
                    self.on_written(rows)
            elif kind == "error":
                count, _, message = rest.partition(" ")
                answers = self._settle(child, int(count))
                self._count_lost(answers)
                self._warn(f"cannot store the impressions of {answers} answers ({message}); "
                           "dropping them")
        code = child.process.wait()
        if not (self._closed and code == 0):
            self._died(child, code)

    def _settle(self, child: _Child, handoffs: int) -> int:
        with self._lock:
            return sum(child.in_flight.popleft() for _ in range(min(handoffs,
                                                                    len(child.in_flight))))

    def _died(self, child: _Child, code: int | None = None) -> None:
        """Report a dead child once; what it held unstored is counted lost."""
        with self._lock:
            if child.dead:
                return
            child.dead = True
            lost = sum(child.in_flight)
            child.in_flight.clear()
        if code is None:
            code = child.process.poll()
        self.exits += 1
        log.error("the impressions writer process (pid %d) exited (code %s); %d answers' "
                  "impressions lost; %s", child.process.pid, code, lost,
                  "stopping" if self._closed else "starting another")
        if self.on_exit is not None:
            self.on_exit()
        self._count_lost(lost)

    def _finish(self, child: _Child, timeout: float) -> None:
        try:
            child.process.stdin.close()  # end of input: the child stores the rest and exits
        except OSError:
            pass
        try:
            child.process.wait(timeout)
        except subprocess.TimeoutExpired:
            log.error("the impressions writer process did not finish within %.0fs; killing it",
                      timeout)
            child.process.kill()
            child.process.wait()
        if child.reader is not None:
            child.reader.join(timeout)
        child.process.stdout.close()

    def _count_lost(self, answers: int) -> None:
        if self.on_error is not None:
            for _ in range(answers):
                self.on_error()

    def _warn(self, message: str) -> None:
        now = time.monotonic()
        if now - self._last_warning >= 60:
            self._last_warning = now
            log.warning("%s (logged at most once a minute)", message)


def _first_line(exc: BaseException) -> str:
    return str(exc).splitlines()[0][:200] if str(exc) else ""


def _child_main(argv: list[str] | None = None) -> int:
    """The writer process: hand-offs from stdin, one transaction per `--flush-seconds`, one
    report line per transaction on stdout; at end of input, store the rest and exit 0."""
    import argparse
    import os
    import select
    import signal

    from components.feedback.feedback_store import FeedbackStore

    parser = argparse.ArgumentParser(prog="python -m serving.impressions")
    parser.add_argument("store_url")
    parser.add_argument("--flush-seconds", type=float, default=1.0)
    parser.add_argument("--batch-rows", type=int, default=50_000)
    args = parser.parse_args(argv)
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # the server's shutdown ends this process
    logging.basicConfig(level=logging.INFO, stream=sys.stderr,
                        format="%(asctime)s %(levelname)s impressions writer: %(message)s")
    reports = os.fdopen(os.dup(1), "w", buffering=1)
    os.dup2(2, 1)  # stray prints must not reach the reports
    store = FeedbackStore(args.store_url)
    rows: list[tuple] = []
    handoffs = 0
    buffer = bytearray()
    last_commit = time.monotonic()
    end = False
    while not (end and not handoffs):
        if not end:
            wait = None if not handoffs else max(0.0, last_commit + args.flush_seconds
                                                  - time.monotonic())
            ready, _, _ = select.select([0], [], [], wait)
            if ready:
                data = os.read(0, 1 << 20)
                if data:
                    buffer += data
                else:
                    end = True
            while len(buffer) >= _FRAME.size:
                (size,) = _FRAME.unpack_from(buffer)
                if len(buffer) < _FRAME.size + size:
                    break
                compact = pickle.loads(bytes(buffer[_FRAME.size:_FRAME.size + size]))
                del buffer[:_FRAME.size + size]
                rows.extend(row for c in compact for row in _expand(c))
                handoffs += 1
        if handoffs and (end or len(rows) >= args.batch_rows
                         or time.monotonic() - last_commit >= args.flush_seconds):
            try:
                written = store.add_impression_tuples(rows)
            except Exception as exc:  # noqa: BLE001 - reported to the server, which counts it
                reports.write(f"error {handoffs} {type(exc).__name__}: {_first_line(exc)}\n")
            else:
                reports.write(f"ok {written} {handoffs}\n")
            rows, handoffs = [], 0
            last_commit = time.monotonic()
    store.close()
    reports.close()
    return 0


if __name__ == "__main__":
    sys.exit(_child_main())
