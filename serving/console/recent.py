"""Reusing a slow read for a few seconds.

Several pages read stores that are slow to ask (MLflow on SQLite answers a model version's run,
artifacts and aliases in tens of milliseconds each; the experiment analysis replays every
impression). A console is looked at, not polled by machines, so each such read is kept for a few
seconds: concurrent and repeated page loads share one read, and what a page shows is at most that
old. Failures are not kept (the next load tries again), and an action that changes what is shown
(promote, rollback) clears them. The cache is bounded (`max_entries`, least recently used out
first), so a caller that makes up keys cannot make it grow. Written here because it is a few
lines: `functools.lru_cache` has no expiry, and cachetools is not a dependency.
"""
from __future__ import annotations

import threading
import time
from collections import OrderedDict
from collections.abc import Callable, Hashable
from typing import Any

MAX_ENTRIES = 16


class Recent:
    def __init__(self, seconds: float, clock: Callable[[], float] = time.monotonic,
                 max_entries: int = MAX_ENTRIES):
        self.seconds = seconds
        self.clock = clock
        self.max_entries = max_entries
        self._values: OrderedDict[Hashable, tuple[float, Any]] = OrderedDict()
        self._locks: dict[Hashable, threading.Lock] = {}
        self._guard = threading.Lock()

    def __len__(self) -> int:
        return len(self._values)

    def get(self, key: Hashable, compute: Callable[[], Any]) -> Any:
        """The value kept for `key` if younger than `seconds`, else `compute()` (one caller
        computes; the others wait for it and share the result)."""
        with self._guard:
            lock = self._locks.setdefault(key, threading.Lock())
        with lock:
            with self._guard:
                kept = self._values.get(key)
                if kept is not None and self.clock() - kept[0] < self.seconds:
                    self._values.move_to_end(key)
                    return kept[1]
            try:
                value = compute()
            except BaseException:
                with self._guard:
                    if key not in self._values:
                        self._locks.pop(key, None)
                raise
            with self._guard:
                self._values[key] = (self.clock(), value)
                self._values.move_to_end(key)
                while len(self._values) > self.max_entries:
                    oldest, _ = self._values.popitem(last=False)
                    self._locks.pop(oldest, None)
            return value

    def clear(self) -> None:
        with self._guard:
            self._values.clear()
            self._locks.clear()
