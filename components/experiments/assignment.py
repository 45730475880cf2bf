"""Who sees which model: sticky assignment of users to the champion, the challenger or
interleaved answers, by a hash of the user id (the same user gets the same variant in every
request, process and replica, and on any machine).

The salt names the experiment (the challenger's version): a new challenger reshuffles the users,
so the same users are not always the ones exposed first.
"""
from __future__ import annotations

import hashlib

CHAMPION, CHALLENGER, INTERLEAVED = "champion", "challenger", "interleaved"
VARIANTS = (CHAMPION, CHALLENGER, INTERLEAVED)


def user_bucket(user_id: str, salt: str = "") -> float:
    """A user's place in [0, 100), in steps of 0.01."""
    digest = hashlib.blake2b(f"{salt}\x00{user_id}".encode(), digest_size=8).digest()
    return int.from_bytes(digest, "big") % 10_000 / 100.0


def assign_variant(bucket: float, challenger_percent: float, interleave_percent: float) -> str:
    """The variant of a user's bucket: the first `interleave_percent` of the range interleave,
    the next `challenger_percent` see the challenger, the rest the champion."""
    if bucket < interleave_percent:
        return INTERLEAVED
    if bucket < interleave_percent + challenger_percent:
        return CHALLENGER
    return CHAMPION


def request_seed(request_id: str) -> int:
    """64 bits from a request id: the coin flips of its team-draft interleaving."""
    return int.from_bytes(hashlib.blake2b(request_id.encode(), digest_size=8).digest(), "big")


def interleaved_version(champion: str, challenger: str) -> str:
    """The `model_version` of an answer both models made (each position keeps its own
    `source_version`)."""
    return f"{champion}+{challenger}"
