"""serving/heap.py: what is alive after a load leaves the garbage collector's scans."""
from __future__ import annotations

import gc

from serving.heap import freeze_loaded


class _Node:
    def __init__(self):
        self.itself = self  # a reference cycle: only the cyclic collector could free it


def test_what_is_alive_at_the_freeze_is_no_longer_scanned_and_what_comes_after_is():
    loaded = _Node()
    try:
        frozen = freeze_loaded()
        assert frozen == gc.get_freeze_count() > 0
        assert not any(o is loaded for o in gc.get_objects())  # out of every generation
        later = _Node()
        assert any(o is later for o in gc.get_objects())
    finally:
        gc.unfreeze()
    assert any(o is loaded for o in gc.get_objects())  # back in view once unfrozen
