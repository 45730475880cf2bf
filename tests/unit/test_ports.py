"""The test suite's free ports: bindable, distinct, and outside the range outgoing
connections take their source ports from (which is what made servers fail to start)."""
from __future__ import annotations

import socket

from ports import _ephemeral_range, free_port


def test_ports_are_free_distinct_and_below_the_ephemeral_range():
    low, _ = _ephemeral_range()
    ports = [free_port() for _ in range(50)]
    assert len(set(ports)) == len(ports)
    for port in ports:
        if low > 12_000:
            assert port < low
        with socket.socket() as sock:
            sock.bind(("127.0.0.1", port))  # nothing holds it


def test_a_port_in_use_is_skipped(monkeypatch):
    import ports

    low, _ = _ephemeral_range()
    with socket.socket() as held:
        held.bind(("127.0.0.1", 0))
        taken = held.getsockname()[1]
        other = free_port()
        picks = iter([taken, other])
        monkeypatch.setattr(ports._random, "randrange", lambda *_: next(picks))
        monkeypatch.setattr(ports, "_handed_out", set())
        monkeypatch.setattr(ports, "_ephemeral_range", lambda: (max(low, 12_001), 65_535))
        assert free_port() == other  # the held port was tried first and refused
