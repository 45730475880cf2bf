"""The micro-batcher and worker threads of serving/model_calls.py, on plain functions."""
from __future__ import annotations

import asyncio
import threading
import time

import pytest

from serving.model_calls import ModelCalls


@pytest.mark.parametrize("loop_rows", [0, 4])
def test_concurrent_calls_are_scored_in_batches_of_at_most_the_maximum(loop_rows):
    calls = ModelCalls("unit-batches", max_batch=4, max_wait_ms=50, loop_rows=loop_rows)
    seen: list[list[int]] = []

    def double(items: list[int]) -> list[int]:
        seen.append(list(items))
        return [2 * i for i in items]

    async def run() -> list[int]:
        return await asyncio.gather(*(calls.batched(double, i, 1) for i in range(10)))

    try:
        assert asyncio.run(run()) == [2 * i for i in range(10)]
    finally:
        calls.close()
    assert seen == [[0, 1, 2, 3], [4, 5, 6, 7], [8, 9]]


@pytest.mark.parametrize("loop_rows", [0, 8])
def test_a_lone_call_waits_at_most_the_wait_and_a_failed_batch_fails_each_caller(loop_rows):
    calls = ModelCalls("unit-errors", max_batch=8, max_wait_ms=1, loop_rows=loop_rows)

    def broken(items: list[int]) -> list[int]:
        raise ValueError(f"{len(items)} items")

    async def run():
        return await asyncio.gather(*(calls.batched(broken, i, 1) for i in range(3)),
                                    return_exceptions=True)

    try:
        assert asyncio.run(asyncio.wait_for(
            calls.batched(lambda items: [i + 1 for i in items], 1, 1), timeout=30)) == 2
        errors = asyncio.run(run())
    finally:
        calls.close()
    assert [str(e) for e in errors] == ["3 items"] * 3


def test_closing_finishes_the_batch_in_flight_and_its_callers_get_their_answers():
    calls = ModelCalls("unit-close", max_batch=4, max_wait_ms=0, loop_rows=0)
    finished = threading.Event()

    def slow(items: list[int]) -> list[int]:
        time.sleep(0.3)
        finished.set()
        return items

    async def run():
        tasks = [asyncio.ensure_future(calls.batched(slow, i, 1)) for i in range(4)]
        await asyncio.sleep(0.05)  # the batch is in its worker thread
        assert not finished.is_set()
        await asyncio.get_running_loop().run_in_executor(None, calls.close)
        assert finished.is_set()  # close() returned after the batch, not before
        return await asyncio.gather(*tasks)

    assert asyncio.run(run()) == [0, 1, 2, 3]


@pytest.mark.parametrize("threads", [1, 3])
def test_plain_calls_run_in_the_worker_threads(threads):
    calls = ModelCalls("unit-threads", threads=threads, max_batch=1)

    async def run():
        return await asyncio.gather(*(calls.run(lambda: threading.current_thread().name)
                                      for _ in range(6)))

    try:
        names = asyncio.run(run())
    finally:
        calls.close()
    assert all(n.startswith("unit-threads-model") for n in names)
    assert len(set(names)) <= threads


def _batches_behind_a_long_one(max_batch: int, later: int, gap: float) -> list[list[int]]:
    """The batches one worker with a 1 ms wait is given when item 0 takes 0.2 s alone and
    items 1..`later` arrive `gap` seconds apart meanwhile (every caller gets its own item)."""
    calls = ModelCalls(f"unit-busy-{max_batch}", max_batch=max_batch, max_wait_ms=1, loop_rows=0)
    seen: list[list[int]] = []

    def slow(items: list[int]) -> list[int]:
        seen.append(list(items))
        time.sleep(0.2 if items == [0] else 0.0)
        return items

    async def run():
        first = asyncio.ensure_future(calls.batched(slow, 0, 1))
        await asyncio.sleep(0.02)  # the first batch is in its worker thread
        arrived = []
        for i in range(1, later + 1):
            arrived.append(asyncio.ensure_future(calls.batched(slow, i, 1)))
            await asyncio.sleep(gap)
        return await asyncio.gather(first, *arrived)

    try:
        assert asyncio.run(run()) == list(range(later + 1))
    finally:
        calls.close()
    return seen


def test_rows_arriving_while_the_worker_is_busy_leave_as_one_batch_when_it_is_free():
    """The rows that arrive one by one during a long batch are not sent in 1 ms slices to
    queue behind it, but together the moment the worker is free."""
    assert _batches_behind_a_long_one(32, 5, 0.01) == [[0], [1, 2, 3, 4, 5]]


def test_a_full_batch_waiting_for_the_worker_leaves_in_batches_of_the_maximum():
    assert _batches_behind_a_long_one(3, 7, 0.0) == [[0], [1, 2, 3], [4, 5, 6], [7]]


def _threads_of_batches(calls: ModelCalls, rows: list[int]) -> list[tuple[list[int], str]]:
    """Each batch `calls` scores for items 0..n-1 of `rows[i]` rows each, sent at once, and the
    thread it ran in ("loop" for the event loop's own)."""
    seen: list[tuple[list[int], str]] = []

    def record(items: list[int]) -> list[int]:
        thread = threading.current_thread()
        seen.append((list(items), "loop" if thread is loop_thread else thread.name))
        return items

    async def run():
        return await asyncio.gather(*(calls.batched(record, i, n) for i, n in enumerate(rows)))

    loop_thread = threading.current_thread()  # asyncio.run's loop runs on this thread
    try:
        assert asyncio.run(run()) == list(range(len(rows)))
    finally:
        calls.close()
    return seen


def test_small_batches_are_scored_on_the_loop_and_larger_ones_in_a_worker_thread():
    calls = ModelCalls("unit-where", max_batch=4, max_wait_ms=1, loop_rows=2)
    seen = _threads_of_batches(calls, [1, 1, 1, 1, 1, 1, 3])
    assert [items for items, _ in seen] == [[0, 1, 2, 3], [4, 5], [6]]
    assert seen[0][1].startswith("unit-where-model")  # 4 rows: past loop_rows
    assert seen[1][1] == "loop"  # 2 rows
    assert seen[2][1].startswith("unit-where-model")  # 3 rows


def test_a_request_past_the_batch_maximum_runs_alone_in_a_worker_thread():
    """Its rows could fit under loop_rows, but a request larger than a batch is a heavy one."""
    calls = ModelCalls("unit-heavy", max_batch=4, max_wait_ms=1, loop_rows=32)
    seen = _threads_of_batches(calls, [1, 10, 1])
    assert [items for items, _ in seen] == [[0], [1], [2]]
    assert [thread.startswith("unit-heavy-model") for _, thread in seen] == [False, True, False]


def test_loop_rows_zero_sends_every_batch_to_the_worker_threads():
    seen = _threads_of_batches(ModelCalls("unit-off", max_batch=4, max_wait_ms=1, loop_rows=0),
                               [1, 1, 1, 1, 1])
    assert [items for items, _ in seen] == [[0, 1, 2, 3], [4]]
    assert all(thread.startswith("unit-off-model") for _, thread in seen)
