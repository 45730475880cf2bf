"""Free loopback ports for the servers the tests start.

A port the kernel hands out for `bind(0)` comes from the ephemeral range, the same range every
outgoing connection (a test's client, a load generator, a database driver) takes its source
port from: between the test closing its probe socket and the server binding the port, a
client connection can take it, and the server fails to start. Ports here come from below the
ephemeral range instead, chosen at random, checked free, and never handed out twice by one
process.
"""
from __future__ import annotations

import random
import socket
from pathlib import Path

_FALLBACK_RANGE = (32768, 60999)
_handed_out: set[int] = set()
_random = random.Random()


def _ephemeral_range() -> tuple[int, int]:
    try:
        low, high = Path("/proc/sys/net/ipv4/ip_local_port_range").read_text().split()
        return int(low), int(high)
    except (OSError, ValueError):
        return _FALLBACK_RANGE


def _bindable(port: int) -> bool:
    with socket.socket() as sock:
        try:
            sock.bind(("127.0.0.1", port))
        except OSError:
            return False
    return True


def free_port() -> int:
    """A loopback TCP port nothing listens on, outside the ephemeral range when the range
    leaves room below it (the kernel's choice otherwise)."""
    low, _ = _ephemeral_range()
    if low > 12_000:
        for _ in range(200):
            port = _random.randrange(10_000, low)
            if port not in _handed_out and _bindable(port):
                _handed_out.add(port)
                return port
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]
