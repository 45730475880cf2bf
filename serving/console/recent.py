"""Reusing a slow read for a few seconds.

Several pages read stores that are slow to ask (MLflow on SQLite answers a model version's run,
artifacts and aliases in tens of milliseconds each; the experiment analysis replays every
impression). A console is looked at, not polled by machines, so each such read is kept for a few
seconds: concurrent and repeated page loads share one read, and what a page shows is at most that
old. Failures are not kept (the next load tries again), and an action that changes what is shown
(promote, rollback) clears them. Written here because it is a dozen lines: `functools.lru_cache`
has no expiry, and cachetools is not a dependency.
"""
from __future__ import annotations

import threading
import time
from collections.abc import Callable, Hashable
from typing import Any


class Recent:
    def __init__(self, seconds: float, clock: Callable[[], float] = time.monotonic):
        self.seconds = seconds
        self.clock = clock
        self._values: dict[Hashable, tuple[float, Any]] = {}
        self._locks: dict[Hashable, threading.Lock] = {}
        self._guard = threading.Lock()

    def get(self, key: Hashable, compute: Callable[[], Any]) -> Any:
        """The value kept for `key` if younger than `seconds`, else `compute()` (one caller
        computes; the others wait for it and share the result)."""
        with self._guard:
            lock = self._locks.setdefault(key, threading.Lock())
        with lock:
            kept = self._values.get(key)
            if kept is not None and self.clock() - kept[0] < self.seconds:
                return kept[1]
            value = compute()
            self._values[key] = (self.clock(), value)
            return value

    def clear(self) -> None:
        with self._guard:
            self._values.clear()
