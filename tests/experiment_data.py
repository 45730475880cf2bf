"""Feedback of a simulated experiment, as the feedback store holds it (shared by the tests of
`recsys rollout analyze` and of the router): users split 50/50 by a hash, each session an
answer of `k` items, clicks drawn at each version's rate, likes on half of the clicks."""
from __future__ import annotations

import time

import numpy as np

from components.experiments.assignment import assign_variant, user_bucket


def experiment_feedback(champion: str, challenger: str, *, rate_a: float, rate_b: float,
                        users: int = 3_000, sessions: int = 6_000, k: int = 5, seed: int = 0,
                        start: float | None = None) -> tuple[list[dict], list[dict]]:
    """(impression rows, events) of `sessions` answers over the hour before `start` (now)."""
    rng = np.random.default_rng(seed)
    start = time.time() - 3_600 if start is None else start
    impressions, events = [], []
    for s in range(sessions):
        user = f"user-{int(rng.integers(users))}"
        arm = assign_variant(user_bucket(user, challenger), 50.0, 0.0)
        version = challenger if arm == "challenger" else champion
        rate = rate_b if arm == "challenger" else rate_a
        when = start + s * 3_000 / sessions
        request = f"req-{seed}-{s}"
        for position in range(k):
            item = f"item-{int(rng.integers(500))}"
            impressions.append({"request_id": request, "user_id": user, "item_id": item,
                                "position": position, "model_version": version,
                                "source_version": version, "variant": arm, "timestamp": when})
            if rng.random() < rate:
                base = {"user_id": user, "item_id": item, "request_id": request,
                        "model_version": version, "position": position}
                events.append({**base, "event_id": f"{request}-{position}-c", "type": "click",
                               "timestamp": when + 5})
                if rng.random() < 0.5:
                    events.append({**base, "event_id": f"{request}-{position}-l", "type": "like",
                                   "timestamp": when + 6})
    return impressions, events
