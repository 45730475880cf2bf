"""Fuzz and load runs against a real predictor (`make fuzz`; not part of `make test`).

The server is the container's entry point (`python -m serving`) on loopback ports, serving the
model `make run` deployed when there is one (or `$FUZZ_MODEL_DIR`), else a small synthetic one.

- schemathesis on `/openapi.json`, the model name fixed, every operation, the
  `not_a_server_error` check: no answer may be a 5xx;
- structure-aware fuzzers (hypothesis) of v2 and v1 bodies: the contract's input names and
  datatypes mixed with wrong ones, shapes that match their data and shapes that lie, ids of
  the catalogue, titles, long strings, lone surrogates, huge integers, nesting, and byte-level
  mutations of valid bodies. No 5xx, and every row answered 200 is in the request log or
  counted as dropped;
- a load run (32 connections of valid requests) ended by SIGTERM: no error, exit 0, every
  answered row logged.

After each: the server is live and ready, answers a valid request, and its log holds no
traceback. Counts are printed (`FUZZ ...` lines) for the README. Sizes: `FUZZ_EXAMPLES`
(schemathesis examples per operation, default 100), `FUZZ_CASES` (structure-aware bodies per
protocol, default 2000), `LOAD_SECONDS` (default 10).
"""
from __future__ import annotations

import asyncio
import json
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from serving_process import (
    MODEL,
    REPO,
    metric,
    post_v2,
    start_server,
    stop,
    v2_body,
    wait_live,
    wait_ready,
)

from serving.request_log import DROP_REASONS, read_request_log

pytestmark = pytest.mark.fuzz

EXAMPLES = int(os.environ.get("FUZZ_EXAMPLES", "100"))
CASES = int(os.environ.get("FUZZ_CASES", "2000"))
LOAD_SECONDS = float(os.environ.get("LOAD_SECONDS", "10"))


@pytest.fixture(scope="module")
def model_dir(request) -> Path:
    if os.environ.get("FUZZ_MODEL_DIR"):
        return Path(os.environ["FUZZ_MODEL_DIR"])
    from components.release.registry import default_home

    record = default_home() / "deployment.json"
    if record.exists():
        path = Path(json.loads(record.read_text())["model_dir"])
        if path.exists():
            return path
    return request.getfixturevalue("small_model_dir")


@pytest.fixture(scope="module")
def catalogue(model_dir) -> dict:
    from components.models.artifact import load_model

    model = load_model(model_dir)
    titles = model.data_.items.get("title")
    return {
        "users": model.data_.user_ids[:200].astype(str).tolist(),
        "items": model.data_.item_ids[:200].astype(str).tolist(),
        "titles": [] if titles is None else titles.dropna().astype(str).head(200).tolist(),
        "version": model.model_version,
    }


@pytest.fixture(scope="module")
def server(model_dir, tmp_path_factory):
    srv = start_server(model_dir, tmp_path_factory.mktemp("fuzz"))
    try:
        wait_live(srv)
        wait_ready(srv)
        yield srv
    finally:
        stop(srv)


def assert_healthy(server) -> None:
    assert httpx.get(f"{server.url}/v2/health/live", timeout=10).status_code == 200
    assert httpx.get(f"{server.url}/v2/health/ready", timeout=10).status_code == 200
    assert post_v2(server, v2_body(("user_id", "BYTES", [1], ["anyone"]))).status_code == 200
    output = server.output()
    assert "Traceback" not in output, output[output.index("Traceback") - 500:][:3000]


def dropped_rows(server) -> float:
    text = httpx.get(f"{server.url}/metrics", timeout=10).text
    return sum(metric(text, "recsys_request_log_dropped_total", reason=r) for r in DROP_REASONS)


# ------------------------------------------------------------------------------ schemathesis
def test_schemathesis_finds_no_server_error(server, tmp_path):
    config = tmp_path / "schemathesis.toml"
    config.write_text('[parameters]\n"path.model_name" = "recsys"\n"path.model_version" = "1"\n')
    started = time.monotonic()
    run = subprocess.run(
        [str(Path(sys.executable).with_name("schemathesis")), "--config-file", str(config), "run",
         f"{server.url}/openapi.json", "--checks", "not_a_server_error",
         "--max-examples", str(EXAMPLES), "--seed", "20261201", "--request-timeout", "30"],
        capture_output=True, text=True, timeout=3600, cwd=REPO, check=False,
    )
    summary = re.search(r"(\d+) generated(.*)", run.stdout)
    print(f"\nFUZZ schemathesis: {summary.group(0) if summary else '?'} "
          f"in {time.monotonic() - started:.0f}s (exit {run.returncode})")
    assert run.returncode == 0, run.stdout[-5000:]
    assert_healthy(server)


# ------------------------------------------------------------------------------ structure-aware
NAMES = ["user_id", "item_id", "k", "exclude_item_ids", "history_item_ids", "explain", "", "colour"]
DATATYPES = ["BYTES", "INT32", "INT64", "FP32", "BOOL", "UINT8", "FP16", "STRING", ""]
ANY_TEXT = st.text(st.characters(codec=None), max_size=40)  # surrogates and all
HUGE = st.sampled_from([2**31, 2**63, 2**64, -(2**63) - 1, 10**30])


def scalars(catalogue):
    ids = st.sampled_from(catalogue["users"] + catalogue["items"] + (catalogue["titles"] or ["x"]))
    return st.one_of(ids, ANY_TEXT, st.integers(-5, 300), HUGE, st.floats(allow_nan=True),
                     st.booleans(), st.none(), st.text(min_size=150, max_size=400))


def tensors(catalogue):
    leaf = scalars(catalogue)
    data = st.one_of(st.lists(leaf, max_size=12),
                     st.lists(st.lists(leaf, max_size=4), max_size=4),
                     leaf, st.dictionaries(st.text(max_size=5), leaf, max_size=2))

    @st.composite
    def tensor(draw):
        values = draw(data)
        if draw(st.booleans()) and isinstance(values, list):  # a shape that tells the truth
            shape = [len(values)] if not values or not isinstance(values[0], list) else [
                len(values), len(values[0])]
            if isinstance(values[0] if values else None, list):
                values = [v for row in values for v in row]
        else:
            shape = draw(st.one_of(st.lists(st.integers(-3, 12), max_size=3),
                                   st.lists(HUGE, max_size=2), leaf))
        t = {"name": draw(st.sampled_from(NAMES)), "datatype": draw(st.sampled_from(DATATYPES)),
             "shape": shape, "data": values}
        for key in draw(st.lists(st.sampled_from(["name", "datatype", "shape", "data"]), max_size=1)):
            del t[key]
        if draw(st.integers(0, 9)) == 0:
            t["parameters"] = draw(st.dictionaries(st.text(max_size=8), leaf, max_size=2))
        return t

    return tensor()


def v2_bodies(catalogue):
    good_users = st.lists(st.sampled_from(catalogue["users"] + ["stranger"]), min_size=1, max_size=20)
    k = st.integers(-2, 120)

    @st.composite
    def body(draw):
        kind = draw(st.integers(0, 9))
        if kind <= 2:  # well-formed user requests, with a k that may be out of range
            users = draw(good_users)
            return {"inputs": [{"name": "user_id", "datatype": "BYTES", "shape": [len(users)], "data": users},
                               {"name": "k", "datatype": "INT32", "shape": [1], "data": [draw(k)]}]}
        if kind == 3:  # similar items by id or title, some long, some unmatched
            queries = draw(st.lists(st.one_of(st.sampled_from(catalogue["items"] + (catalogue["titles"] or ["x"])),
                                              ANY_TEXT), min_size=1, max_size=20))
            return {"inputs": [{"name": "item_id", "datatype": "BYTES", "shape": [len(queries)], "data": queries}]}
        if kind == 4:  # explained user requests: k and the batch may pass the explain bound
            users = draw(good_users)
            return {"inputs": [{"name": "user_id", "datatype": "BYTES", "shape": [len(users)], "data": users},
                               {"name": "k", "datatype": "INT32", "shape": [1], "data": [draw(k)]},
                               {"name": "explain", "datatype": "BOOL", "shape": [1],
                                "data": [draw(st.one_of(st.booleans(), scalars(catalogue)))]}]}
        out = {"inputs": draw(st.lists(tensors(catalogue), max_size=4))}
        if draw(st.booleans()):
            out["id"] = draw(st.one_of(ANY_TEXT, st.integers(), st.none()))
        if draw(st.integers(0, 4)) == 0:
            out["outputs"] = [{"name": draw(st.sampled_from(["item_ids", "scores", "explanations", "nope"]))}]
        return out

    return body()


def v1_bodies(catalogue):
    leaf = scalars(catalogue)
    instance = st.dictionaries(
        st.sampled_from(["user_id", "item_id", "k", "exclude_item_ids", "history_item_ids", "x"]),
        st.one_of(leaf, st.lists(leaf, max_size=5)), max_size=4)
    good = st.builds(lambda u, k: {"user_id": u, "k": k}, st.sampled_from(catalogue["users"]),
                     st.integers(1, 50))
    return st.one_of(st.fixed_dictionaries({"instances": st.lists(good, min_size=1, max_size=8)}),
                     st.fixed_dictionaries({"instances": st.lists(st.one_of(good, instance), max_size=8)}),
                     st.dictionaries(st.text(max_size=10), leaf, max_size=3), leaf)


def _encode(body, mutate: int) -> bytes:
    raw = json.dumps(body).encode()  # lone surrogates go out as \\udXXX escapes, valid JSON
    if mutate and raw:
        pos = mutate % len(raw)
        raw = raw[:pos] + bytes([mutate % 256]) + raw[pos + 1:]
    return raw


def _rows_answered(response, protocol: str) -> int:
    payload = response.json()
    if protocol.startswith("v1"):
        return len(payload["predictions"])
    return next(o["shape"][0] for o in payload["outputs"] if o["name"] == "item_ids")


@pytest.mark.parametrize("protocol", ["v2", "v1", "v1-explain"])
def test_structure_aware_fuzz_gets_no_5xx_and_loses_no_row(server, catalogue, protocol):
    path = {"v2": f"/v2/models/{MODEL}/infer", "v1": f"/v1/models/{MODEL}:predict",
            "v1-explain": f"/v1/models/{MODEL}:explain"}[protocol]
    strategy = v2_bodies(catalogue) if protocol == "v2" else v1_bodies(catalogue)  # v1: both verbs
    statuses: dict[int, int] = {}
    answered = 0
    dropped_before = dropped_rows(server)
    logged_before = len(read_request_log(server.request_log))
    client = httpx.Client(base_url=server.url, timeout=60)

    @settings(max_examples=CASES, deadline=None, database=None, derandomize=True,
              suppress_health_check=list(HealthCheck))
    @given(body=strategy, mutate=st.one_of(st.just(0), st.just(0), st.just(0), st.integers(1, 10**6)))
    def one(body, mutate):
        nonlocal answered
        response = client.post(path, content=_encode(body, mutate),
                               headers={"content-type": "application/json"})
        statuses[response.status_code] = statuses.get(response.status_code, 0) + 1
        assert response.status_code < 500, (body, response.status_code, response.text[:500])
        if response.status_code == 200:
            answered += _rows_answered(response, protocol)
        else:
            assert set(response.json()) == {"error"}, response.text[:300]

    started = time.monotonic()
    try:
        one()
    finally:
        client.close()
    cases = sum(statuses.values())
    deadline = time.monotonic() + 30
    while True:
        logged = len(read_request_log(server.request_log)) - logged_before
        dropped = dropped_rows(server) - dropped_before
        if logged + dropped >= answered or time.monotonic() > deadline:
            break
        time.sleep(0.5)
    print(f"\nFUZZ {protocol}: {cases} cases in {time.monotonic() - started:.0f}s, statuses "
          f"{dict(sorted(statuses.items()))}, 5xx {sum(v for k, v in statuses.items() if k >= 500)}, "
          f"rows answered {answered}, logged {logged}, counted as dropped {dropped:.0f}")
    assert logged + dropped == answered
    assert_healthy(server)


# ------------------------------------------------------------------------------ load + SIGTERM
def test_load_then_sigterm_answers_everything_and_logs_every_row(model_dir, catalogue, tmp_path):
    """32 connections of valid requests (single users, batches of 10, similar items by id);
    SIGTERM in the middle of it, with a 2 s drain: clients that see readiness fail stop, as a
    load balancer would. No request may fail; the server exits 0 with every answer logged."""
    srv = start_server(model_dir, tmp_path, "--drain-seconds", "2")
    wait_live(srv)
    wait_ready(srv)
    users, items = catalogue["users"], catalogue["items"]
    bodies = [json.dumps(v2_body(("user_id", "BYTES", [1], [users[i % len(users)]]))) for i in range(50)]
    bodies += [json.dumps(v2_body(("user_id", "BYTES", [10], [users[(i + j) % len(users)] for j in range(10)])))
               for i in range(20)]
    bodies += [json.dumps(v2_body(("item_id", "BYTES", [1], [items[i % len(items)]]))) for i in range(10)]
    latencies: list[float] = []
    errors: list[str] = []
    answered_ids: list[str] = []
    stop_at = {"t": time.monotonic() + LOAD_SECONDS + 60}

    async def worker(n: int) -> None:
        async with httpx.AsyncClient(base_url=srv.url, timeout=30) as client:
            i = n
            while time.monotonic() < stop_at["t"]:
                body = json.loads(bodies[i % len(bodies)])
                body["id"] = f"load-{n}-{i}"
                t = time.monotonic()
                try:
                    response = await client.post(f"/v2/models/{MODEL}/infer", json=body)
                    if response.status_code == 200:
                        latencies.append(time.monotonic() - t)
                        answered_ids.append(body["id"])
                    else:
                        errors.append(f"{response.status_code}")
                except httpx.HTTPError as exc:
                    errors.append(type(exc).__name__)
                i += 32

    async def run() -> None:
        tasks = [asyncio.create_task(worker(n)) for n in range(32)]
        await asyncio.sleep(LOAD_SECONDS)
        srv.process.send_signal(signal.SIGTERM)
        await asyncio.sleep(0.5)  # the probe period of a load balancer, shortened
        stop_at["t"] = time.monotonic()
        await asyncio.gather(*tasks)

    started = time.monotonic()
    asyncio.run(run())
    elapsed = time.monotonic() - started
    code = srv.process.wait(60)
    latencies.sort()
    p99 = latencies[int(0.99 * (len(latencies) - 1))] if latencies else float("nan")
    logged = set(read_request_log(srv.request_log)["request_id"])
    missing = [i for i in answered_ids if i not in logged]
    print(f"\nFUZZ load: {len(answered_ids)} requests answered in {elapsed:.0f}s "
          f"({len(answered_ids) / elapsed:.0f}/s at 32 connections, p99 {p99 * 1000:.0f} ms), "
          f"errors {len(errors)}, exit {code}, answered but not logged {len(missing)}")
    stop(srv)
    assert not errors, errors[:10]
    assert code == 0, srv.output()[-3000:]
    assert not missing
    assert "Traceback" not in srv.output()
