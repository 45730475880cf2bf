"""The answer cache covers users with fresh feedback: a repeat request with nothing new since
the last answer is a lookup, new feedback invalidates only that user, answers do not change.

In process: two predictors on the same real model and the same Redis lists (under the test's
own key prefix), one with the cache and one without (`answer_cache_size=0`). End to end: the
events service and `python -m serving` as processes on loopback ports, with Redis between them,
and the cache's counters read from `/metrics`.
"""
from __future__ import annotations

import asyncio
import inspect
import random
import sys
import time
import uuid
from pathlib import Path

import httpx
import numpy as np
from kserve.protocol.infer_type import InferInput, InferRequest
from prometheus_client import REGISTRY

from components.models.artifact import load_model
from serving.online_history import RedisHistoryWriter
from serving.predictor import AnswerLRU, RecommenderModel, _Cached

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from events_process import free_port, launch_service, stop_service, wait_ready

REPO = Path(__file__).resolve().parents[2]


def wait_for(condition, timeout: float = 15.0):
    deadline = time.monotonic() + timeout
    while not (value := condition()):
        assert time.monotonic() < deadline, "condition not met in time"
        time.sleep(0.02)
    return value


def predict(model: RecommenderModel, users: list[str], k: int = 10):
    request = InferRequest(model.name, [InferInput("user_id", [len(users)], "BYTES", users),
                                        InferInput("k", [1], "INT32", [k])])
    answer = model.predict(request)
    if inspect.isawaitable(answer):
        answer = asyncio.run(answer)
    outputs = {o.name: o.data for o in answer.outputs}
    return np.asarray(outputs["item_ids"]), np.asarray(outputs["scores"])


def cache_count(name: str, result: str) -> float:
    return REGISTRY.get_sample_value("recsys_answer_cache_total",
                                     {"model_name": name, "result": result}) or 0.0


def fresh_likes(data, users: list[str], rng: random.Random, n: int = 3) -> list[dict]:
    """`n` likes per user of items outside the user's training history (so they count)."""
    events, rows = [], {u: i for i, u in enumerate(data.user_ids.tolist())}
    all_items = data.item_ids.tolist()
    for user in users:
        row = rows.get(user)
        seen = set() if row is None else set(data.item_ids[data.matrix[row].indices].tolist())
        for item in rng.sample([i for i in all_items if i not in seen], n):
            events.append({"type": "like", "user_id": user, "item_id": item,
                           "timestamp": time.time()})
    return events


def test_cached_and_uncached_answers_are_the_same_for_users_with_fresh_history(
        small_model_dir, redis_prefix):
    """Over many users, most with fresh likes in Redis (and some unknown to the model): the
    cached predictor's first answer (a miss), its repeat (a hit) and a batch of them all equal
    the uncached predictor's answer, items and scores; repeats are counted as hits."""
    url, prefix = redis_prefix
    data = load_model(small_model_dir).data_
    rng = random.Random(5)
    known = data.user_ids.tolist()
    users = rng.sample(known, min(60, len(known))) + ["new-user-a", "new-user-b"]
    with_fresh = users[: len(users) * 2 // 3] + ["new-user-a"]
    writer = RedisHistoryWriter(url, prefix=prefix)
    writer.push(fresh_likes(data, with_fresh, rng))
    writer.close()
    cached = RecommenderModel("cached", small_model_dir, online_store=url,
                              online_store_prefix=prefix)
    plain = RecommenderModel("uncached", small_model_dir, online_store=url,
                             online_store_prefix=prefix, answer_cache_size=0)
    try:
        for model in (cached, plain):
            assert model.load()
            history = model._feedback.history
            wait_for(lambda h=history: len(h._fresh) == len(with_fresh))
        hits, misses = cache_count("cached", "hit"), cache_count("cached", "miss")
        for k in (10, 3):
            for user in users:
                expected = predict(plain, [user], k)
                first, again = predict(cached, [user], k), predict(cached, [user], k)
                for got in (first, again):
                    np.testing.assert_array_equal(got[0], expected[0])
                    np.testing.assert_array_equal(got[1], expected[1])  # NaN == NaN here
        batch = predict(cached, users, 10)
        for row, user in enumerate(users):
            np.testing.assert_array_equal(batch[0][row], predict(plain, [user], 10)[0][0])
            np.testing.assert_array_equal(batch[1][row], predict(plain, [user], 10)[1][0])
        # Each fresh user misses once (the first k=10 call); everything after is a lookup.
        assert cache_count("cached", "miss") - misses == len(with_fresh)
        assert cache_count("cached", "hit") - hits == 4 * len(users) - len(with_fresh) + len(users)
        assert len(cached._answers) == len(with_fresh)
        # Without the LRU, its table still answers the users without fresh feedback (4 calls
        # each); every other call is a plain model call, neither hit nor miss.
        assert cache_count("uncached", "hit") == 4 * (len(users) - len(with_fresh))
        assert cache_count("uncached", "miss") == 0
    finally:
        cached.stop()
        plain.stop()


def batch_rows(name: str) -> tuple[float, float]:
    """How many batched model calls the predictor made, and how many rows they scored."""
    labels = {"model_name": name}
    return (REGISTRY.get_sample_value("recsys_model_batch_rows_count", labels) or 0.0,
            REGISTRY.get_sample_value("recsys_model_batch_rows_sum", labels) or 0.0)


def test_batched_single_and_cached_calls_answer_the_same(small_model_dir, redis_prefix):
    """Over many users with fresh likes (some unknown to the model): concurrent single-user
    requests to a predictor whose batcher waits long enough to gather them (they are scored in
    a few batched calls), their repeats (cached) and a predictor that scores every request on
    its own, without a cache or batcher, return the same items and, to float tolerance, the
    same scores; so do four worker threads without the batcher."""
    url, prefix = redis_prefix
    data = load_model(small_model_dir).data_
    rng = random.Random(8)
    users = rng.sample(data.user_ids.tolist(), min(80, data.n_users)) + ["new-1", "new-2"]
    writer = RedisHistoryWriter(url, prefix=prefix)
    writer.push(fresh_likes(data, users, rng))
    writer.close()
    common = {"online_store": url, "online_store_prefix": prefix}
    models = {
        "single": RecommenderModel("single", small_model_dir, answer_cache_size=0,
                                   batch_max_size=1, **common),
        "batched": RecommenderModel("batched", small_model_dir, batch_max_size=32,
                                    batch_max_wait_ms=200, **common),
        # the same batches scored in the worker thread, not on the event loop's thread
        "batched, worker": RecommenderModel("batched-worker", small_model_dir, batch_max_size=32,
                                            batch_max_wait_ms=200, loop_batch_rows=0, **common),
        "threads": RecommenderModel("threads", small_model_dir, model_threads=4,
                                    batch_max_size=1, **common),
    }

    async def concurrently(model: RecommenderModel) -> list:
        async def one(user: str):
            request = InferRequest(model.name, [InferInput("user_id", [1], "BYTES", [user]),
                                                InferInput("k", [1], "INT32", [10])])
            outputs = {o.name: o.data for o in (await model.predict(request)).outputs}
            return np.asarray(outputs["item_ids"]), np.asarray(outputs["scores"])

        return await asyncio.gather(*(one(user) for user in users))

    try:
        for model in models.values():
            assert model.load()
            history = model._feedback.history
            wait_for(lambda h=history: len(h._fresh) == len(users))
        expected = [predict(models["single"], [user]) for user in users]
        calls, rows = batch_rows("batched")
        answers = {"batched": asyncio.run(concurrently(models["batched"])),
                   "batched, worker": asyncio.run(concurrently(models["batched, worker"])),
                   "threads": asyncio.run(concurrently(models["threads"]))}
        new_calls, new_rows = batch_rows("batched")
        assert new_rows - rows == len(users)  # every user's first answer took the batcher
        assert new_calls - calls <= len(users) / 8  # in batches, not one by one
        answers["cached"] = [predict(models["batched"], [user]) for user in users]
        assert batch_rows("batched") == (new_calls, new_rows)  # repeats: lookups
        for label, got in answers.items():
            for user, (items, scores), (want_items, want_scores) in zip(users, got, expected):
                np.testing.assert_array_equal(items.reshape(-1), want_items.reshape(-1),
                                              err_msg=f"{label}: user {user}")
                np.testing.assert_allclose(scores.reshape(-1), want_scores.reshape(-1),
                                           rtol=1e-6, atol=1e-9, err_msg=f"{label}: user {user}")
    finally:
        for model in models.values():
            model.stop()


def test_the_lru_keeps_its_size_and_counts_evictions():
    evicted = []
    lru = AnswerLRU(2, on_evict=evicted.append)
    entry = _Cached(("a",), np.zeros(3, np.int32), np.zeros(3, np.float32), False)
    lru.put("u1", entry)
    lru.put("u2", entry)
    assert lru.get("u1", ("a",)) is entry  # u1 is now the most recently used
    assert lru.get("u1", ("b",)) is None  # another version of u1's history: a miss
    lru.put("u3", entry)
    assert len(lru) == 2 and evicted == [1]
    assert lru.get("u2", ("a",)) is None and lru.get("u3", ("a",)) is entry


# ------------------------------------------------------------------------------ end to end
def recommend(url: str, user: str, k: int = 10) -> list[str]:
    body = {"inputs": [{"name": "user_id", "datatype": "BYTES", "shape": [1], "data": [user]},
                       {"name": "k", "datatype": "INT32", "shape": [1], "data": [k]}]}
    response = httpx.post(url + "/v2/models/recsys/infer", json=body, timeout=30)
    assert response.status_code == 200, response.text
    items = next(o for o in response.json()["outputs"] if o["name"] == "item_ids")["data"]
    return [i for i in items if i]


def counters(url: str) -> dict[str, float]:
    text = httpx.get(url + "/metrics", timeout=10).text
    out = {}
    for line in text.splitlines():
        for name in ("hit", "miss"):
            if line.startswith("recsys_answer_cache_total{") and f'result="{name}"' in line:
                out[name] = float(line.rsplit(" ", 1)[1])
        if line.startswith("recsys_answer_cache_evictions_total{"):
            out["evictions"] = float(line.rsplit(" ", 1)[1])
    return out


def test_a_like_invalidates_exactly_that_users_cached_answer(small_model_dir, tmp_path,
                                                              redis_prefix):
    """Three users with fresh likes are answered once (misses) and again (hits: no model
    call). One of them likes the top item of its answer through the events service: that
    user's next answer is scored again (one miss) and lacks the item; the other two stay
    cached (hits, no miss). Nothing is evicted while the LRU has room."""
    redis_url, prefix = redis_prefix
    data = load_model(small_model_dir).data_
    users = [str(u) for u in data.user_ids[:3].tolist()]
    writer = RedisHistoryWriter(redis_url, prefix=prefix)
    writer.push(fresh_likes(data, users, random.Random(2)))
    writer.close()
    online = ("--online-store", redis_url, "--online-store-prefix", prefix)
    store_url = f"sqlite:///{tmp_path / 'feedback.db'}"
    logs = tmp_path / "events.log", tmp_path / "predictor.log"
    events, events_url = launch_service(store_url, logs[0], *online)
    port = free_port()
    with logs[1].open("wb") as out:
        import subprocess

        predictor = subprocess.Popen(
            [sys.executable, "-m", "serving", "--model-dir", str(small_model_dir),
             "--http-port", str(port), "--grpc-port", str(free_port()),
             "--answer-cache-size", "3", *online],
            cwd=REPO, stdout=out, stderr=subprocess.STDOUT)
    url = f"http://127.0.0.1:{port}"
    try:
        wait_ready(events, events_url, logs[0])
        wait_ready(predictor, url, logs[1], "/v2/models/recsys/ready")
        wait_for(lambda: 'recsys_online_history_users{model_name="recsys"} 3.0'
                 in httpx.get(url + "/metrics", timeout=10).text)
        start = counters(url)
        first = {user: recommend(url, user) for user in users}
        assert counters(url)["miss"] - start.get("miss", 0) == 3
        again = {user: recommend(url, user) for user in users}
        assert again == first
        before = counters(url)
        assert before["hit"] - start.get("hit", 0) == 3 and before["miss"] - start["miss"] == 3

        liker, others = users[0], users[1:]
        liked = first[liker][0]
        response = httpx.post(events_url + "/v1/events", timeout=10, json={
            "event_id": uuid.uuid4().hex, "type": "like", "user_id": liker, "item_id": liked})
        assert response.status_code == 200
        after = wait_for(lambda: (a := recommend(url, liker)) and liked not in a and a)
        assert liked not in after and after != first[liker]
        now = counters(url)
        assert now["miss"] - before["miss"] == 1  # the liker alone was scored again
        assert {user: recommend(url, user) for user in others} == {u: first[u] for u in others}
        final = counters(url)
        assert final["miss"] == now["miss"] and final["hit"] - now["hit"] == len(others)
        assert recommend(url, liker) == after and counters(url)["miss"] == final["miss"]
        assert final.get("evictions", 0) == 0

        newcomer = str(data.user_ids[5])  # no fresh feedback: the precomputed table, no entry
        recommend(url, newcomer)
        assert counters(url).get("evictions", 0) == 0
    finally:
        predictor.terminate()
        predictor.wait(30)
        assert stop_service(events) == 0


def test_a_negative_answer_cache_size_is_a_one_line_error(tmp_path):
    import subprocess

    for command in (["-m", "serving", "--model-dir", str(tmp_path)],
                    ["-m", "pipelines.cli.main", "serve", "--model-dir", str(tmp_path)]):
        done = subprocess.run([sys.executable, *command, "--answer-cache-size", "-1"],
                              check=False, cwd=REPO, capture_output=True, text=True, timeout=120)
        assert done.returncode != 0, done.stderr[-1000:]
        assert "--answer-cache-size must not be negative, got -1" in done.stderr, done.stderr
        assert "Traceback" not in done.stderr


def test_bad_model_call_options_are_one_line_errors(tmp_path):
    import subprocess

    for option, value, message in (
            ("--model-threads", "0", "--model-threads must be at least 1, got 0"),
            ("--batch-max-size", "0", "--batch-max-size must be at least 1, got 0"),
            ("--batch-max-wait-ms", "-1", "--batch-max-wait-ms must be between 0 and 1000, got -1"),
            ("--loop-batch-rows", "-1", "--loop-batch-rows must not be negative, got -1")):
        done = subprocess.run([sys.executable, "-m", "serving", "--model-dir", str(tmp_path),
                               option, value], check=False, cwd=REPO, capture_output=True,
                              text=True, timeout=120)
        assert done.returncode != 0 and message in done.stderr, done.stderr[-1000:]
        assert "Traceback" not in done.stderr
