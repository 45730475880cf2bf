"""What explanations cost, and that the predict path does not pay for them (`make bench`).

On the MovieLens 100K model:

- in process: the predictor's whole `explain()` of one user at k = 10 (parse, cached answer,
  the explanation in the model's worker thread, the response), p50 / p99 over 300 calls, beside
  `predict()` of the same requests and `explain_recommendations` alone. Target: p50 <= 10 ms.
- over HTTP, one worker, by `wrk`: plain v2 single-user predict requests (no `explain`) against
  the no-op KServe model in the same run, in alternating rounds (the ratio bench_serving
  reports); with `RECSYS_BENCH_BASELINE=DIR` (a checkout of the code before explanations, e.g.
  `git archive 38cc8cd | tar -x -C DIR`, the commit before them) that code's predictor takes the same rounds, so the
  predict path's throughput is compared with what it was, on the same machine at the same time.
  Then `:explain` and the v2 `explain` input at k = 10: latency with one connection, req/s with
  the benchmark's connections.

It reports; it does not gate.
"""
from __future__ import annotations

import asyncio
import json
import os
import random
import shutil
import statistics
import sys
import time
from pathlib import Path

import numpy as np
import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent))

import bench_serving
from bench_serving import REPO, Proc, load, v1_bodies, v2_bodies

pytestmark = pytest.mark.bench
ROUNDS = int(os.environ.get("RECSYS_BENCH_ROUNDS", "3"))  # alternating rounds of plain predict
SECONDS = 5
K = 10


@pytest.fixture(scope="module")
def ml100k(ml100k_fitted):
    return ml100k_fitted


def _percentiles(seconds: list[float]) -> tuple[float, float]:
    ms = np.asarray(seconds) * 1000
    return float(np.percentile(ms, 50)), float(np.percentile(ms, 99))


def test_explain_in_process(ml100k):
    from kserve.protocol.infer_type import InferInput, InferRequest

    from components.models.explain import explain_recommendations
    from serving.predictor import RecommenderModel

    ds, model_dir = ml100k
    users = ds.interactions["user_id"].astype(str).unique().tolist()
    rng = random.Random(3)
    chosen = [rng.choice(users) for _ in range(300)]
    predictor = RecommenderModel("recsys", model_dir)
    assert predictor.load()

    def request(user: str) -> InferRequest:
        return InferRequest(model_name="recsys", request_id=None, infer_inputs=[
            InferInput("user_id", [1], "BYTES", [user]), InferInput("k", [1], "INT32", [K])])

    async def timed(call) -> list[float]:
        times = []
        for user in chosen:
            started = time.perf_counter()
            await call(request(user))
            times.append(time.perf_counter() - started)
        return times

    try:
        asyncio.run(timed(predictor.explain))  # warm: first calls build LightGBM's buffers
        explain = asyncio.run(timed(predictor.explain))
        predict = asyncio.run(timed(predictor.predict))
        model = predictor._model
        answers = model.recommend(chosen, K).item_ids.tolist()
        alone = []
        for user, items in zip(chosen, answers):
            started = time.perf_counter()
            explain_recommendations(model, user, items)
            alone.append(time.perf_counter() - started)
    finally:
        predictor.stop()
    print()
    print(f"in process, ML-100K, 1 user, k={K}, {len(chosen)} calls   p50 ms   p99 ms")
    for label, times in (("predictor.predict (v2)", predict), ("predictor.explain (v2)", explain),
                         ("explain_recommendations alone", alone)):
        p50, p99 = _percentiles(times)
        print(f"{label:44} {p50:8.2f} {p99:8.2f}")
    print("target: predictor.explain p50 <= 10 ms")


def _baseline_command(directory: str) -> list[str]:
    """The serving module of another checkout, with this environment's packages."""
    code = (f"import runpy, sys; sys.path.insert(0, {directory!r}); "
            "runpy.run_module('serving', run_name='__main__', alter_sys=True)")
    return [sys.executable, "-c", code]


def test_explain_over_http_and_predict_unchanged(ml100k, tmp_path):
    ds, model_dir = ml100k
    users = ds.interactions["user_id"].astype(str).unique().tolist()
    plain = v2_bodies(users, 1)
    explained = [json.dumps({**json.loads(b), "inputs": [*json.loads(b)["inputs"], {
        "name": "explain", "datatype": "BOOL", "shape": [1], "data": [True]}]}) for b in plain]
    serve = ["--model-dir", str(model_dir)]
    servers = {
        "ours": Proc([sys.executable, "-m", "serving", *serve], tmp_path / "ours.log",
                     "/v2/models/recsys/ready"),
        "no-op": Proc([sys.executable, str(REPO / "tests" / "benchmarks" / "noop_server.py")],
                      tmp_path / "noop.log", "/v2/models/noop/ready"),
    }
    baseline = os.environ.get("RECSYS_BENCH_BASELINE")
    if baseline:
        servers["before"] = Proc([*_baseline_command(baseline), *serve], tmp_path / "before.log",
                                 "/v2/models/recsys/ready")
    path = {"no-op": "/v2/models/noop/infer"}
    rounds: dict[str, list[dict]] = {name: [] for name in servers}
    try:
        for _ in range(ROUNDS):
            for name, proc in servers.items():
                rounds[name].append(load(proc.url, path.get(name, "/v2/models/recsys/infer"),
                                         plain, SECONDS))
        url = servers["ours"].url
        scenarios = {}
        for connections in (1, bench_serving.CONNECTIONS):
            bench_serving.CONNECTIONS, kept = connections, bench_serving.CONNECTIONS
            try:
                scenarios[f"v2 predict, c={connections}"] = load(url, "/v2/models/recsys/infer", plain, SECONDS)
                scenarios[f"v2 explain, c={connections}"] = load(url, "/v2/models/recsys/infer", explained, SECONDS)
                scenarios[f"v1 :explain, c={connections}"] = load(
                    url, "/v1/models/recsys:explain", v1_bodies(users), SECONDS)
            finally:
                bench_serving.CONNECTIONS = kept
    finally:
        for proc in servers.values():
            proc.stop()
    tool = "wrk -t1" if shutil.which("wrk") else "asyncio+httpx"
    print()
    print(f"plain v2 predict, 1 user, k={K}, {bench_serving.CONNECTIONS} connections, {ROUNDS} "
          f"alternating rounds of {SECONDS}s, load by {tool}; load average {os.getloadavg()[0]:.2f}")
    print(f"{'server':8} {'req/s (median)':>15} {'rounds':>24} {'p99 ms':>8} {'vs no-op':>9}")
    base = statistics.median(r["rps"] for r in rounds["no-op"])
    for name, results in rounds.items():
        rps = statistics.median(r["rps"] for r in results)
        each = " ".join(f"{r['rps']:.0f}" for r in results)
        p99 = statistics.median(r["p99"] for r in results)
        print(f"{name:8} {rps:15.0f} {each:>24} {p99:8.2f} {rps / base:8.2f}x")
    if "before" in rounds:
        ratio = (statistics.median(r["rps"] for r in rounds["ours"])
                 / statistics.median(r["rps"] for r in rounds["before"]))
        print(f"ours / before: {ratio:.2f}x req/s (the predict path with and without explanations)")
    print()
    print(f"{'scenario (ours, k=10)':26} {'req/s':>8} {'p50 ms':>8} {'p95 ms':>8} {'p99 ms':>8} {'errors':>7}")
    for label, r in scenarios.items():
        print(f"{label:26} {r['rps']:8.0f} {r['p50']:8.2f} {r['p95']:8.2f} {r['p99']:8.2f} {r['errors']:7d}")
    assert all(r["errors"] == 0 for r in scenarios.values())
