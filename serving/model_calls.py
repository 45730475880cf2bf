"""Where the predictor's model calls run, and a micro-batcher that scores concurrent single-row
calls as one batch.

Calls that can share the work (rows that need the model, each scored as it would be alone) are
gathered on the event loop for up to `max_wait` seconds or until `max_batch` rows are waiting,
then scored as one call, the way KServe's batcher and Triton's dynamic batching work. While
every worker is busy with a batch, rows go on gathering and leave as one batch (up to
`max_batch` rows) the moment a worker is free: under load the batches grow instead of queueing
in `max_wait` slices behind each other. `max_batch` 1 turns the batcher off (every call runs on
its own).

A batch of at most `loop_rows` rows is scored on the event loop's own thread. A worker thread
and the event loop contend for the GIL: numpy hands it over at nearly every call, and under
load each handover waits for the other thread, so a one-user call that costs about 1 ms alone
cost several in a worker thread beside a busy loop (the README, #24, has the figures). Such a
batch holds the loop for at most `loop_rows` rows' worth of scoring (tens of ms). Everything
else runs in one of `threads` worker threads of the model's own: a batch past `loop_rows`, a
request alone past `max_batch`, and every unbatched call (`run`: similar items, explanations,
requests without the answer cache). So REST, gRPC and the health probes keep answering while a
heavy request is scored, and heavy requests queue there instead of taking every core.
`loop_rows` 0 sends every call to a worker thread. `/metrics` has the rows per batched call
(`recsys_model_batch_rows`) and how long each row waited for its call to start
(`recsys_model_queue_seconds`).
"""
from __future__ import annotations

import asyncio
import time
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import Any

from prometheus_client import Histogram

DEFAULT_MODEL_THREADS = 1
DEFAULT_BATCH_MAX_SIZE = 32
DEFAULT_BATCH_MAX_WAIT_MS = 2.0
DEFAULT_LOOP_BATCH_ROWS = 32

BATCH_ROWS = Histogram(
    "recsys_model_batch_rows", "Rows scored by each batched model call (the micro-batcher)",
    ["model_name"], buckets=(1, 2, 4, 8, 16, 32, 64, 128))
QUEUE_SECONDS = Histogram(
    "recsys_model_queue_seconds",
    "Seconds from a request needing the model to its model call starting (batching wait and "
    "waiting for a worker thread)", ["model_name"],
    buckets=(0.0001, 0.0005, 0.001, 0.002, 0.005, 0.01, 0.02, 0.05, 0.1, 0.5, 1.0))


class ModelCalls:
    """The model's worker threads and micro-batcher. Use from one event loop."""

    def __init__(self, name: str, *, threads: int = DEFAULT_MODEL_THREADS,
                 max_batch: int = DEFAULT_BATCH_MAX_SIZE,
                 max_wait_ms: float = DEFAULT_BATCH_MAX_WAIT_MS,
                 loop_rows: int = DEFAULT_LOOP_BATCH_ROWS):
        self.name, self.threads = name, max(1, int(threads))
        self.max_batch, self.max_wait = max(1, int(max_batch)), max(0.0, max_wait_ms) / 1000
        self.loop_rows = max(0, int(loop_rows))  # batches up to this many rows: on the loop
        self._executor: ThreadPoolExecutor | None = None
        self._pending: list[tuple[Any, int, float, asyncio.Future]] = []
        self._pending_rows = 0
        self._timer: asyncio.Handle | None = None
        self._batch_fn: Callable[[list[Any]], list[Any]] | None = None
        self._in_flight = 0  # batches in the worker threads (the event loop's thread only)
        self._rows = BATCH_ROWS.labels(name)
        self._queued = QUEUE_SECONDS.labels(name)

    def _pool(self) -> ThreadPoolExecutor:
        if self._executor is None:
            self._executor = ThreadPoolExecutor(self.threads, thread_name_prefix=f"{self.name}-model")
        return self._executor

    async def run(self, fn: Callable[..., Any], *args: Any) -> Any:
        """`fn(*args)` in a worker thread."""
        arrived = time.perf_counter()

        def timed() -> Any:
            self._queued.observe(time.perf_counter() - arrived)
            return fn(*args)

        return await asyncio.get_running_loop().run_in_executor(self._pool(), timed)

    async def batched(self, batch_fn: Callable[[list[Any]], list[Any]], item: Any,
                      rows: int) -> Any:
        """`item`'s share of `batch_fn(items)`, called in a worker thread on every item that
        arrived within the wait (up to `max_batch` rows in all; an item larger than that is a
        batch alone). `batch_fn` returns one result per item, in order; it is the same
        function for every call of one ModelCalls."""
        if self.max_batch <= 1:
            return (await self.run(batch_fn, [item]))[0]
        loop = asyncio.get_running_loop()
        self._batch_fn = batch_fn
        if self._pending and self._pending_rows + rows > self.max_batch:
            self._flush()
        future = loop.create_future()
        self._pending.append((item, rows, time.perf_counter(), future))
        self._pending_rows += rows
        if self._pending_rows >= self.max_batch:
            self._flush()
        elif self._timer is None:
            self._timer = loop.call_later(self.max_wait, self._flush)
        return await future

    def _flush(self) -> None:
        """Score what is pending: on the loop's thread when the batch is small enough, else in
        a free worker; with none free, it waits for the next one."""
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        if not self._pending:
            return
        taken, rows = 1, self._pending[0][1]  # up to max_batch rows; a larger item alone
        while taken < len(self._pending) and rows + self._pending[taken][1] <= self.max_batch:
            rows += self._pending[taken][1]
            taken += 1
        on_loop = rows <= min(self.loop_rows, self.max_batch)
        if not on_loop and self._in_flight >= self.threads:
            return  # `_finished` sends it
        pending, self._pending = self._pending[:taken], self._pending[taken:]
        self._pending_rows -= rows
        batch_fn = self._batch_fn
        self._rows.observe(rows)

        def call() -> list[Any]:
            now = time.perf_counter()
            for _, _, arrived, _ in pending:
                self._queued.observe(now - arrived)
            return batch_fn([item for item, _, _, _ in pending])

        futures = [f for *_, f in pending]
        if on_loop:
            _settle(_called(call), futures)
            if self._pending and self._timer is None:  # more than one batch was waiting
                self._timer = asyncio.get_running_loop().call_soon(self._flush)
            return
        self._in_flight += 1
        done = asyncio.get_running_loop().run_in_executor(self._pool(), call)
        done.add_done_callback(lambda d: self._finished(d, futures))

    def _finished(self, done: asyncio.Future, futures: Sequence[asyncio.Future]) -> None:
        self._in_flight -= 1
        _settle(done, futures)
        if self._pending and (self._timer is None or self._pending_rows >= self.max_batch
                              or time.perf_counter() - self._pending[0][2] >= self.max_wait):
            self._flush()  # they waited for this worker: no more waiting for others

    def close(self) -> None:
        """Finish the calls in the worker threads (answers in flight get answered and logged)."""
        if self._executor is not None:
            self._executor.shutdown(wait=True)
            self._executor = None


def _called(call: Callable[[], list[Any]]) -> asyncio.Future:
    """`call()` on this thread, its result or exception in a done future."""
    done = asyncio.get_running_loop().create_future()
    try:
        done.set_result(call())
    except Exception as exc:  # noqa: BLE001 - every caller of the batch gets it, as in a worker
        done.set_exception(exc)
    return done


def _settle(done: asyncio.Future, futures: Sequence[asyncio.Future]) -> None:
    error = done.exception() if not done.cancelled() else asyncio.CancelledError()
    results = None if error is not None else done.result()
    for n, future in enumerate(futures):
        if future.done():
            continue
        if error is not None:
            future.set_exception(error)
        else:
            future.set_result(results[n])
