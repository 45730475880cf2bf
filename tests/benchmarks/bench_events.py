"""Events service benchmark (`make bench`): acknowledged means stored, under concurrent load.

4 client processes post to one `python -m serving.events` for 20 s each run, with keep-alive
connections: batches of 100 events, then single events, into a SQLite store and into a fresh
PostgreSQL database. Each client retries a request that failed or timed out with the same
events (event_id is the idempotency key), and records every event_id a 200 acknowledged. At
the end the store must hold exactly the acknowledged events: none lost, none doubled. Reported:
events/s acknowledged, request latency p50/p99, and what the service's /metrics say of its
group commits. They report figures; the counts are asserted.
"""
from __future__ import annotations

import json
import multiprocessing as mp
import os
import sys
import time
from pathlib import Path

import httpx
import numpy as np
import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from events_process import start_service, stop_service

pytestmark = pytest.mark.bench
CLIENTS = 4
SECONDS = float(os.environ.get("RECSYS_BENCH_EVENTS_SECONDS", "20"))
TYPES = ("click", "like", "consume", "impression", "dislike")


def _client(url: str, client_id: int, batch: int, seconds: float, out_path: str,
            start: mp.Barrier) -> None:
    """One load process: post until the time is up; write acked ids and latencies."""
    rng = np.random.default_rng(client_id)
    acked, latencies, retries, seq = [], [], 0, 0
    with httpx.Client(base_url=url, timeout=30) as http:
        http.get("/healthz")  # connected before the clock starts
        start.wait()  # every client imported and connected: the clock starts for all
        deadline = time.monotonic() + seconds
        while time.monotonic() < deadline:
            events = []
            for _ in range(batch):
                events.append({"event_id": f"c{client_id}-{seq}", "type": TYPES[seq % 5],
                               "user_id": str(int(rng.integers(0, 5_000))),
                               "item_id": str(int(rng.integers(0, 10_000))),
                               "position": seq % 10})
                seq += 1
            body = json.dumps(events if batch > 1 else events[0])
            for _attempt in range(20):
                started = time.perf_counter()
                try:
                    response = http.post("/v1/events", content=body,
                                         headers={"content-type": "application/json"})
                except httpx.HTTPError:
                    retries += 1
                    continue
                if response.status_code == 200:
                    latencies.append(time.perf_counter() - started)
                    acked.extend(e["event_id"] for e in events)
                    break
                retries += 1
                time.sleep(0.05)
    Path(out_path).write_text(json.dumps({"acked": acked, "latencies": latencies,
                                          "retries": retries}))


def run_load(url: str, batch: int, tmp: Path, seconds: float = SECONDS,
             clients: int = CLIENTS) -> dict:
    ctx = mp.get_context("spawn")
    outs = [tmp / f"client-{batch}-{i}.json" for i in range(clients)]
    start = ctx.Barrier(clients + 1)
    procs = [ctx.Process(target=_client, args=(url, i, batch, seconds, str(out), start))
             for i, out in enumerate(outs)]
    for p in procs:
        p.start()
    start.wait(timeout=120)
    started = time.perf_counter()
    for p in procs:
        p.join()
    elapsed = time.perf_counter() - started  # to the last answer (a request in flight at the
    # deadline finishes), so events/s is not flattered
    results = [json.loads(out.read_text()) for out in outs]
    acked = [i for r in results for i in r["acked"]]
    latencies = np.asarray([x for r in results for x in r["latencies"]]) * 1000
    return {"acked": acked, "seconds": elapsed, "events_per_s": len(acked) / elapsed,
            "requests": len(latencies), "retries": sum(r["retries"] for r in results),
            "p50_ms": float(np.percentile(latencies, 50)),
            "p99_ms": float(np.percentile(latencies, 99))}


def _metric(text: str, name: str) -> float:
    return sum(float(line.rsplit(" ", 1)[1]) for line in text.splitlines()
               if line.startswith((name + " ", name + "{")))


@pytest.mark.parametrize("backend", ["sqlite", "postgresql"])
def test_acknowledged_events_are_stored_once_under_load(backend, tmp_path, request):
    from components.feedback.feedback_store import FeedbackStore

    url = (f"sqlite:///{tmp_path / 'feedback.db'}" if backend == "sqlite"
           else request.getfixturevalue("postgres_url"))
    rows = []
    for batch in (100, 1):
        FeedbackStore(url).close()  # the tables exist before the clients start
        proc, service = start_service(url, tmp_path / "service.log")
        try:
            load = run_load(service, batch, tmp_path)
            metrics = httpx.get(service + "/metrics", timeout=10).text
        finally:
            assert stop_service(proc) == 0, (tmp_path / "service.log").read_text()[-3000:]
        with FeedbackStore(url) as store:
            stored = store.read_events()
            with store.engine.begin() as conn:  # the next run starts empty
                conn.exec_driver_sql("DELETE FROM events")
        acked = set(load["acked"])
        lost = len(acked - set(stored.event_id))
        doubled = len(stored) - stored.event_id.nunique()
        commits = _metric(metrics, "recsys_events_commit_events_count")
        print(f"\nevents {backend} batch={batch} clients={CLIENTS}: "
              f"{load['events_per_s']:,.0f} events/s acknowledged "
              f"({load['requests']:,} requests, p50 {load['p50_ms']:.1f} ms, p99 "
              f"{load['p99_ms']:.1f} ms, {load['retries']} retries); stored {len(stored):,} == "
              f"acknowledged {len(acked):,}; lost {lost}, doubled {doubled}; "
              f"{len(stored) / max(commits, 1):.0f} events per commit")
        rows.append((batch, load, len(stored), lost, doubled))
        assert len(acked) == len(load["acked"])  # each id acknowledged once per client
        assert lost == 0 and doubled == 0
        assert len(stored) == len(acked)


def test_history_push_and_read_cpu(tmp_path, request):
    """What the Redis history costs per step, in process (CPU of the calling thread): the
    events service's push of a commit's positive events (`HistoryPusher.step`: the store's
    tail read, the Redis script), three events a step on SQLite; and the predictor's read of
    the changed users' lists (one pipelined LRANGE of 4 lists of 50 items) with redis-py's
    Python reply parser against hiredis', in alternating rounds."""
    import uuid

    import redis
    from redis._parsers import _HiredisParser, _RESP3Parser

    from components.feedback.feedback_store import FeedbackStore
    from serving.online_history import HistoryPusher, RedisHistoryWriter, history_key

    redis_url, prefix = request.getfixturevalue("redis_prefix")
    store = FeedbackStore(f"sqlite:///{tmp_path / 'feedback.db'}")
    writer = RedisHistoryWriter(redis_url, prefix=prefix)
    pusher = HistoryPusher(store, writer)

    def add(n: int) -> None:
        store.add_events([{"event_id": uuid.uuid4().hex, "type": "like", "user_id": str(i % 50),
                           "item_id": str(i), "timestamp": time.time()} for i in range(n)])

    add(3)
    pusher.step()
    steps = []
    for _ in range(300):
        add(3)
        began = time.thread_time()
        assert pusher.step() == 3
        steps.append(time.thread_time() - began)
    users = [f"bench-{n}" for n in range(4)]
    writer.push([{"type": "like", "user_id": u, "item_id": str(i), "timestamp": float(i)}
                 for u in users for i in range(50)])
    reads: dict[str, list[float]] = {}
    for _ in range(5):
        for label, parser in (("python parser", _RESP3Parser), ("hiredis", _HiredisParser)):
            client = redis.Redis.from_url(redis_url, decode_responses=True, protocol=3,
                                          parser_class=parser)
            began = time.thread_time()
            for _ in range(500):
                pipe = client.pipeline(transaction=False)
                for user in users:
                    pipe.lrange(history_key(user, prefix), 0, 49)
                assert all(len(r) == 50 for r in pipe.execute())
            reads.setdefault(label, []).append((time.thread_time() - began) / 500)
            client.close()
    print(f"\nhistory push step (3 events, SQLite, Redis): CPU median "
          f"{np.median(steps) * 1e6:.0f} us, p99 {np.percentile(steps, 99) * 1e6:.0f} us")
    for label, times in reads.items():
        print(f"pipelined read of 4 lists of 50 items, {label}: CPU {np.median(times) * 1e6:.0f} us")
    print(f"load average: {Path('/proc/loadavg').read_text().split()[:3]}")
    writer.close()
    store.close()
