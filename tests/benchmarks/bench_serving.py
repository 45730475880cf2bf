"""Serving benchmarks (`make bench`): our predictor against a no-op KServe model, same server.

Both servers run as subprocesses with one worker on loopback and take the same load: fixed
concurrency, v2 REST requests of 1, 10 and 100 users (and v1 single users for ours), driven by
`wrk` with a Lua script when it is installed (`apt-get install wrk`), else by a bounded
asyncio + httpx client. Reported: requests/s, p50/p95/p99 latency, and ours/no-op ratios
(target: throughput >= 0.8x, p99 <= 1.3x); the resident memory of the loaded server on
MovieLens 100K and on the default dataset; and the model's own per-call cost in-process, with a
profile of where it goes. They report; they do not gate.
"""
from __future__ import annotations

import asyncio
import cProfile
import io
import json
import os
import pstats
import random
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import httpx
import numpy as np
import pytest

from components.data.ingest import load_dataset
from components.models.artifact import load_model, save_model
from components.models.two_stage import TwoStageRecommender

pytestmark = pytest.mark.bench

REPO = Path(__file__).resolve().parents[2]
CONNECTIONS = 16
SECONDS = 8
WARMUP_SECONDS = 2
BATCHES = (1, 10, 100)


# ------------------------------------------------------------------------------ helpers
def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return float("nan")


class Proc:
    def __init__(self, cmd: list[str], log: Path, ready_path: str):
        self.http_port, self.grpc_port = _free_port(), _free_port()
        cmd = cmd + ["--http-port", str(self.http_port), "--grpc-port", str(self.grpc_port)]
        self.log = log
        with log.open("wb") as out:
            self.process = subprocess.Popen(cmd, cwd=REPO, stdout=out, stderr=subprocess.STDOUT)
        self.url = f"http://127.0.0.1:{self.http_port}"
        self.grpc_url = f"127.0.0.1:{self.grpc_port}"
        deadline = time.monotonic() + 180
        while True:
            if self.process.poll() is not None:
                raise RuntimeError(f"{cmd} exited:\n{log.read_text()[-2000:]}")
            try:
                if httpx.get(self.url + ready_path, timeout=1).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            if time.monotonic() > deadline:
                raise RuntimeError(f"{cmd} not ready:\n{log.read_text()[-2000:]}")
            time.sleep(0.2)

    def pause(self) -> None:
        """SIGSTOP: an idle server that follows the history (every like reaches it) takes no
        CPU from the one measured, as on a cluster, where it would not share its cores."""
        self.process.send_signal(signal.SIGSTOP)

    def resume(self) -> None:
        self.process.send_signal(signal.SIGCONT)

    def stop(self) -> None:
        self.resume()  # a stopped process acts on SIGTERM only once continued
        self.process.terminate()
        try:
            self.process.wait(20)
        except subprocess.TimeoutExpired:
            self.process.kill()


def _train(ds, directory: Path) -> Path:
    model = TwoStageRecommender().fit(ds.interactions, ds.items, progress=lambda _: None)
    return save_model(model, directory, data_fingerprint=ds.fingerprint)


def v2_bodies(user_ids: list[str], batch: int, n: int = 200, seed: int = 0) -> list[str]:
    rng = random.Random(seed)
    bodies = []
    for _ in range(n):
        users = [rng.choice(user_ids) for _ in range(batch)]
        bodies.append(json.dumps({"inputs": [
            {"name": "user_id", "datatype": "BYTES", "shape": [batch], "data": users},
            {"name": "k", "datatype": "INT32", "shape": [1], "data": [10]},
        ]}))
    return bodies


def v1_bodies(user_ids: list[str], n: int = 200, seed: int = 0) -> list[str]:
    rng = random.Random(seed)
    return [json.dumps({"instances": [{"user_id": rng.choice(user_ids), "k": 10}]}) for _ in range(n)]


_LUA = """
local bodies = {%s}
local path = "%s"
local headers = {["Content-Type"] = "application/json"}
local i = 0
request = function()
  i = i %% #bodies + 1
  return wrk.format("POST", path, headers, bodies[i])
end
done = function(summary, latency, requests)
  local e = summary.errors
  io.write(string.format(
    'WRKJSON {"requests": %%d, "duration_us": %%d, "p50": %%d, "p95": %%d, "p99": %%d, "non2xx": %%d, "socket_errors": %%d}\\n',
    summary.requests, summary.duration, latency:percentile(50), latency:percentile(95),
    latency:percentile(99), e.status, e.connect + e.read + e.write + e.timeout))
end
"""


def _wrk(url: str, path: str, bodies: list[str], seconds: int) -> dict:
    script = _LUA % (",".join(f"[==[{b}]==]" for b in bodies), path)
    with tempfile.NamedTemporaryFile("w", suffix=".lua", delete=False) as handle:
        handle.write(script)
    try:
        out = subprocess.run(
            ["wrk", "-t1", f"-c{CONNECTIONS}", f"-d{seconds}s", "--timeout", "10s", "-s", handle.name, url],
            capture_output=True, text=True, timeout=seconds + 60, check=True,
        ).stdout
    finally:
        os.unlink(handle.name)
    raw = json.loads(next(line for line in out.splitlines() if line.startswith("WRKJSON "))[8:])
    return {
        "rps": raw["requests"] / (raw["duration_us"] / 1e6),
        "p50": raw["p50"] / 1000, "p95": raw["p95"] / 1000, "p99": raw["p99"] / 1000,
        "errors": raw["non2xx"] + raw["socket_errors"], "requests": raw["requests"],
    }


def _httpx_load(url: str, path: str, bodies: list[str], seconds: int, max_requests: int = 50_000) -> dict:
    async def run() -> dict:
        latencies, errors = [], 0
        deadline = time.perf_counter() + seconds
        limits = httpx.Limits(max_connections=CONNECTIONS)
        async with httpx.AsyncClient(base_url=url, limits=limits, timeout=10) as client:
            async def worker(offset: int) -> None:
                nonlocal errors
                i = offset
                while time.perf_counter() < deadline and len(latencies) < max_requests:
                    started = time.perf_counter()
                    response = await client.post(path, content=bodies[i % len(bodies)],
                                                 headers={"content-type": "application/json"})
                    latencies.append(time.perf_counter() - started)
                    errors += response.status_code != 200
                    i += CONNECTIONS
            started = time.perf_counter()
            await asyncio.gather(*(worker(c) for c in range(CONNECTIONS)))
            elapsed = time.perf_counter() - started
        ms = np.asarray(latencies) * 1000
        return {"rps": len(ms) / elapsed, "p50": np.percentile(ms, 50), "p95": np.percentile(ms, 95),
                "p99": np.percentile(ms, 99), "errors": errors, "requests": len(ms)}

    return asyncio.run(run())


def load(url: str, path: str, bodies: list[str], seconds: int = SECONDS) -> dict:
    if shutil.which("wrk"):
        _wrk(url, path, bodies, WARMUP_SECONDS)
        return _wrk(url, path, bodies, seconds)
    _httpx_load(url, path, bodies, WARMUP_SECONDS)
    return _httpx_load(url, path, bodies, seconds)


# ------------------------------------------------------------------------------ fixtures
@pytest.fixture(scope="module")
def ml100k(ml100k_fitted):
    return ml100k_fitted


# ------------------------------------------------------------------------------ benchmarks
def test_model_cost_in_process(ml100k):
    """The model's own cost per call (no server), and where it goes."""
    ds, model_dir = ml100k
    model = load_model(model_dir)
    users = ds.interactions["user_id"].astype(str).unique().tolist()
    rng = random.Random(1)
    model.recommend([users[0]], 10)
    rows = []
    for label, batch, n in (("1 user", 1, 300), ("10 users", 10, 60), ("100 users", 100, 15)):
        times = []
        for _ in range(n):
            ids = [rng.choice(users) for _ in range(batch)]
            started = time.perf_counter()
            model.recommend(ids, 10)
            times.append(time.perf_counter() - started)
        ms = np.asarray(times) * 1000
        rows.append((f"recommend, {label}", np.mean(ms), np.percentile(ms, 50), np.percentile(ms, 99)))
    started = time.perf_counter()
    for _ in range(50):
        model.recommend(["no-such-user"], 10)
    rows.append(("recommend, 1 cold user", (time.perf_counter() - started) * 20, float("nan"), float("nan")))
    titles = ds.items["title"].astype(str).tolist()
    model.resolve_items([titles[0]])
    started = time.perf_counter()
    for title in titles[:50]:
        model.resolve_items([title.lower()[:-3]])  # a partial, lower-cased title: fuzzy path
    rows.append(("resolve_items, 1 fuzzy title", (time.perf_counter() - started) * 20, float("nan"), float("nan")))
    # The predictor's whole predict() for a plain single-user v2 request (parse, cached answer,
    # metrics, response object), as the server calls it, minus HTTP.
    from kserve.protocol.infer_type import InferInput, InferRequest

    from serving.predictor import RecommenderModel

    predictor = RecommenderModel("recsys", model_dir)
    predictor.load()
    requests = [InferRequest(model_name="recsys", request_id=None, infer_inputs=[
        InferInput("user_id", [1], "BYTES", [rng.choice(users)])]) for _ in range(5000)]
    async def predict_all() -> float:  # predict() is a coroutine: the server awaits it on its loop
        started = time.perf_counter()
        for request in requests:
            await predictor.predict(request)
        return time.perf_counter() - started

    rows.append(("predictor.predict, 1 user (v2)", asyncio.run(predict_all()) / 5, float("nan"), float("nan")))
    print()
    print(f"{'in-process call (ML-100K)':34} {'mean ms':>9} {'p50 ms':>9} {'p99 ms':>9}")
    for label, mean, p50, p99 in rows:
        print(f"{label:34} {mean:9.2f} {p50:9.2f} {p99:9.2f}")

    profiler = cProfile.Profile()
    profiler.enable()
    for _ in range(200):
        model.recommend([rng.choice(users)], 10)
    profiler.disable()
    text = io.StringIO()
    pstats.Stats(profiler, stream=text).sort_stats("tottime").print_stats(14)
    print("\nprofile of 200 single-user recommend() calls, by own time:")
    print("\n".join(line for line in text.getvalue().splitlines() if line.strip())[:4000])


def test_server_against_noop(ml100k, tmp_path):
    ds, model_dir = ml100k
    users = ds.interactions["user_id"].astype(str).unique().tolist()
    ours = Proc([sys.executable, "-m", "serving", "--model-dir", str(model_dir)], tmp_path / "ours.log",
                "/v2/models/recsys/ready")
    noop = Proc([sys.executable, str(REPO / "tests" / "benchmarks" / "noop_server.py")], tmp_path / "noop.log",
                "/v2/models/noop/ready")
    try:
        rss_loaded = _rss_mb(ours.process.pid)
        scenarios = [(f"v2 batch {b}", b, v2_bodies(users, b)) for b in BATCHES]
        results = []
        for label, batch, bodies in scenarios:
            mine = load(ours.url, "/v2/models/recsys/infer", bodies)
            base = load(noop.url, "/v2/models/noop/infer", bodies)
            results.append((label, mine, base))
        v1 = load(ours.url, "/v1/models/recsys:predict", v1_bodies(users))
        rss_after = _rss_mb(ours.process.pid)
    finally:
        ours.stop()
        noop.stop()
    tool = "wrk -t1" if shutil.which("wrk") else "asyncio+httpx"
    print()
    print(f"v2 REST, {CONNECTIONS} connections, {SECONDS}s each, one worker, load by {tool} (ML-100K model)")
    print(f"{'scenario':14} {'server':6} {'req/s':>8} {'p50 ms':>8} {'p95 ms':>8} {'p99 ms':>8} {'errors':>7}")
    for label, mine, base in results:
        for name, r in (("ours", mine), ("no-op", base)):
            print(f"{label:14} {name:6} {r['rps']:8.0f} {r['p50']:8.2f} {r['p95']:8.2f} {r['p99']:8.2f} {r['errors']:7d}")
        print(f"{'':14} {'ratio':6} {mine['rps'] / base['rps']:7.2f}x {'':8} {'':8} "
              f"{mine['p99'] / base['p99']:7.2f}x   (targets: >= 0.80x req/s, <= 1.30x p99)")
    print(f"{'v1 1 user':14} {'ours':6} {v1['rps']:8.0f} {v1['p50']:8.2f} {v1['p95']:8.2f} {v1['p99']:8.2f} {v1['errors']:7d}")
    print(f"server RSS on ML-100K: {rss_loaded:.0f} MB loaded, {rss_after:.0f} MB after the load test")
    assert all(r["errors"] == 0 for _, mine, _ in results for r in (mine,))


def test_memory_on_default_dataset(tmp_path):
    ds = load_dataset("movielens-dslabs")
    model_dir = _train(ds, tmp_path / "model")
    server = Proc([sys.executable, "-m", "serving", "--model-dir", str(model_dir)], tmp_path / "server.log",
                  "/v2/models/recsys/ready")
    try:
        rss_loaded = _rss_mb(server.process.pid)
        users = ds.interactions["user_id"].astype(str).unique().tolist()
        r = load(server.url, "/v2/models/recsys/infer", v2_bodies(users, 10, n=50), seconds=3)
        rss_after = _rss_mb(server.process.pid)
    finally:
        server.stop()
    size = sum(p.stat().st_size for p in model_dir.rglob("*") if p.is_file()) / 2**20
    print()
    print(f"default dataset ({ds.interactions['user_id'].nunique()} users, "
          f"{ds.interactions['item_id'].nunique()} items): artifact {size:.0f} MB, server RSS "
          f"{rss_loaded:.0f} MB loaded, {rss_after:.0f} MB after {r['requests']} batch-10 requests "
          f"({r['rps']:.0f} req/s, p99 {r['p99']:.1f} ms, {'wrk' if shutil.which('wrk') else 'asyncio+httpx'})")
