"""A gRPC load generator for the benchmarks: tritonclient.grpc in several client processes.

No gRPC load tool (such as `ghz`) is a dependency, so `grpc_load` runs PROCESSES processes of
CONNECTIONS / PROCESSES threads, each thread with its own `tritonclient.grpc` client (its own
channel), asking for single-user v2 recommendations back to back for `seconds`. With
`events_url`, each thread is a click-then-refresh session instead: after every answer it likes
the answer's top item through the events service (not timed) and asks again, and the delay
from each like's 2xx to the first answer of that user without the item is kept.
"""
from __future__ import annotations

import threading
import time
import uuid
from concurrent.futures import ProcessPoolExecutor

import numpy as np

PROCESSES = 2


def grpc_load(url: str, model: str, users: list[str], seconds: float, *, connections: int = 16,
              events_url: str | None = None, warmup: float = 2.0) -> dict:
    """req/s, p50 and p99 (ms) of `connections` concurrent single-user gRPC calls."""
    shares = [users[c::connections] for c in range(connections)]
    per_process = [shares[p::PROCESSES] for p in range(PROCESSES)]
    with ProcessPoolExecutor(PROCESSES) as pool:
        if warmup:
            list(pool.map(_process, [url] * PROCESSES, [model] * PROCESSES, per_process,
                          [warmup] * PROCESSES, [None] * PROCESSES))
        parts = list(pool.map(_process, [url] * PROCESSES, [model] * PROCESSES, per_process,
                              [seconds] * PROCESSES, [events_url] * PROCESSES))
    return load_summary(parts)


def load_summary(parts: list[dict]) -> dict:
    """One figure of the client processes' parts (latencies and like-to-answer delays in
    seconds, errors, elapsed): req/s, p50/p99 ms, and the delays' p99 and max in ms."""
    ms = np.concatenate([p["latencies"] for p in parts]) * 1000
    delays = np.concatenate([p["delays"] for p in parts]) * 1000
    elapsed = max(p["elapsed"] for p in parts)
    return {"rps": len(ms) / elapsed, "p50": float(np.percentile(ms, 50)),
            "p99": float(np.percentile(ms, 99)), "errors": sum(p["errors"] for p in parts),
            "requests": len(ms),
            "visible_p99": float(np.percentile(delays, 99)) if len(delays) else float("nan"),
            "visible_max": float(delays.max()) if len(delays) else float("nan")}


def _process(url: str, model: str, sessions: list[list[str]], seconds: float,
             events_url: str | None) -> dict:
    import httpx
    import tritonclient.grpc as g

    latencies: list[float] = []
    delays: list[float] = []
    errors = [0]
    lock = threading.Lock()
    deadline = time.perf_counter() + seconds

    def session(own: list[str]) -> None:
        client = g.InferenceServerClient(url)
        events = httpx.Client(base_url=events_url, timeout=10) if events_url else None
        pending: dict[str, tuple[str, float]] = {}
        mine, late, bad, i = [], [], 0, 0
        k = g.InferInput("k", [1], "INT32")
        k.set_data_from_numpy(np.array([10], dtype=np.int32))
        while time.perf_counter() < deadline:
            user = own[i % len(own)]
            i += 1
            inp = g.InferInput("user_id", [1], "BYTES")
            inp.set_data_from_numpy(np.array([user], dtype=object))
            started = time.perf_counter()
            try:
                result = client.infer(model, [inp, k])
            except Exception:  # noqa: BLE001 (counted: any failed call is an error)
                bad += 1
                continue
            answered = time.perf_counter()
            mine.append(answered - started)
            if events is None:
                continue
            items = [b.decode() for b in result.as_numpy("item_ids")[0]]
            if user in pending and pending[user][0] not in items:
                late.append(answered - pending.pop(user)[1])
            liked = events.post("/v1/events", json={"event_id": uuid.uuid4().hex, "type": "like",
                                                    "user_id": user, "item_id": items[0]})
            bad += liked.status_code != 200
            if user not in pending:
                pending[user] = (items[0], time.perf_counter())
        client.close()
        if events is not None:
            events.close()
        with lock:
            latencies.extend(mine)
            delays.extend(late)
            errors[0] += bad

    started = time.perf_counter()
    threads = [threading.Thread(target=session, args=(own,)) for own in sessions]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return {"latencies": np.asarray(latencies), "delays": np.asarray(delays),
            "errors": errors[0], "elapsed": time.perf_counter() - started}
