"""The predictor behind a real KServe model server, called by independent clients.

Each server runs as `python -m serving` (the container's entry point) in a subprocess on
loopback ports: one on a freshly trained small model, one on a copy of it with a corrupted
file. The clients are tritonclient (HTTP and gRPC, the reference v2 clients) and plain httpx
for v1 and hand-made bodies. The gRPC client runs in a helper process of its own: its generated
protobuf module clashes with kserve's ("duplicate symbol 'inference.ServerLiveRequest'") when
both are imported in one process, and other test modules of the suite import kserve.
"""
from __future__ import annotations

import json
import random
import re
import shutil
import subprocess
import sys
import time
from pathlib import Path

import httpx
import numpy as np
import pytest
import tritonclient.http as httpclient

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from serving_process import (
    MAX_BATCH,
    MODEL,
    REPO,
    GrpcClient,
    GrpcError,
    Server,
    post_v2,
    start_server,
    stop,
    v2_body,
    wait_live,
    wait_ready,
)

from serving.request_log import read_request_log

INPUT_NAMES = {"user_id", "item_id", "k", "exclude_item_ids", "history_item_ids", "explain"}
OUTPUT_NAMES = {"item_ids", "scores", "cold_start", "resolved_item_ids", "resolved_titles",
                "explanations"}


@pytest.fixture(scope="module")
def servers(small_model_dir, tmp_path_factory):
    """The good server and the corrupt-artifact server, started together (start-up is slow)."""
    corrupt_dir = tmp_path_factory.mktemp("corrupt") / "artifact"
    shutil.copytree(small_model_dir, corrupt_dir)
    victim = next(p for p in sorted(corrupt_dir.rglob("*.np[yz]")))
    victim.write_bytes(victim.read_bytes()[:-8] + b"corrupt!")
    good = start_server(small_model_dir, tmp_path_factory.mktemp("good"))
    bad = start_server(corrupt_dir, tmp_path_factory.mktemp("bad"))
    try:
        wait_live(good)
        wait_live(bad)
        wait_ready(good)
        yield good, bad
    finally:
        stop(good)
        stop(bad)


@pytest.fixture(scope="module")
def server(servers) -> Server:
    return servers[0]


@pytest.fixture(scope="module")
def http_client(server):
    client = httpclient.InferenceServerClient(server.http)
    yield client
    client.close()


@pytest.fixture(scope="module")
def grpc_client(server):
    client = GrpcClient(server.grpc)
    yield client
    client.close()


@pytest.fixture(scope="module")
def catalogue(small_dataset):
    inter = small_dataset.interactions
    items = set(inter["item_id"].astype(str)) | set(small_dataset.items["item_id"].astype(str))
    seen = inter.assign(user_id=inter["user_id"].astype(str), item_id=inter["item_id"].astype(str))
    return items, seen.groupby("user_id")["item_id"].agg(set).to_dict()


def _bytes_input(module, name: str, values, binary: bool = True):
    array = np.asarray(values, dtype=object)
    inp = module.InferInput(name, list(array.shape), "BYTES")
    inp.set_data_from_numpy(array, binary_data=binary)
    return inp


def _int_input(module, name: str, values, datatype: str = "INT32"):
    array = np.asarray(values, dtype=np.int32 if datatype == "INT32" else np.int64)
    inp = module.InferInput(name, list(array.shape), datatype)
    inp.set_data_from_numpy(array)
    return inp


def _ids(result, name: str = "item_ids") -> np.ndarray:
    out = result.as_numpy(name)
    return np.vectorize(lambda v: v.decode() if isinstance(v, bytes) else str(v), otypes=[object])(out)


# ---------------------------------------------------------------------------- health & metadata
def test_health_and_metadata_over_http_and_grpc(server, http_client, grpc_client):
    assert http_client.is_server_live() and http_client.is_server_ready()
    assert http_client.is_model_ready(MODEL)
    assert grpc_client.is_server_ready() and grpc_client.is_model_ready(MODEL)
    meta = http_client.get_model_metadata(MODEL)
    assert {i["name"] for i in meta["inputs"]} == INPUT_NAMES
    assert {o["name"] for o in meta["outputs"]} == OUTPUT_NAMES
    types = {t["name"]: (t["datatype"], t["shape"]) for t in meta["inputs"] + meta["outputs"]}
    assert types["user_id"] == ("BYTES", [-1]) and types["k"] == ("INT32", [-1])
    assert types["item_ids"] == ("BYTES", [-1, -1]) and types["scores"] == ("FP32", [-1, -1])
    gmeta = grpc_client.get_model_metadata(MODEL)
    assert {i["name"] for i in gmeta["inputs"]} == INPUT_NAMES
    assert {o["name"] for o in gmeta["outputs"]} == OUTPUT_NAMES


# ---------------------------------------------------------------------------- recommendations
@pytest.mark.parametrize("binary", [True, False], ids=["binary", "json"])
def test_http_recommendations_exclude_training_items(http_client, catalogue, binary):
    items, seen = catalogue
    users = sorted(seen)[:5]
    outputs = [
        httpclient.InferRequestedOutput(n, binary_data=binary) for n in ("item_ids", "scores", "cold_start")
    ]
    result = http_client.infer(
        MODEL, [_bytes_input(httpclient, "user_id", users, binary), _int_input(httpclient, "k", [5])],
        outputs=outputs,
    )
    ids, scores = _ids(result), result.as_numpy("scores")
    assert ids.shape == (5, 5) and scores.shape == (5, 5) and scores.dtype == np.float32
    assert not result.as_numpy("cold_start").any()
    for user, row, row_scores in zip(users, ids, scores):
        assert set(row) <= items and not set(row) & seen[user]
        assert len(set(row)) == 5 and (np.diff(row_scores) <= 1e-6).all()
    assert result.get_response()["id"]  # KServe needs one; tritonclient sends none


def test_grpc_recommendations_and_request_id(grpc_client, catalogue):
    items, seen = catalogue
    users = sorted(seen)[5:8]
    result = grpc_client.infer(
        MODEL, [("user_id", "BYTES", users), ("k", "INT64", [4])], request_id="grpc-req-1"
    )
    ids = result["outputs"]["item_ids"]
    assert ids.shape == (3, 4)
    assert result["id"] == "grpc-req-1"
    for user, row in zip(users, ids):
        assert set(row) <= items and not set(row) & seen[user]


def test_mixed_batch_cold_start_and_int64_ids(grpc_client, http_client, catalogue):
    _, seen = catalogue
    known = min(seen)
    result = http_client.infer(MODEL, [_bytes_input(httpclient, "user_id", [known, "nobody", "nobody-2"])])
    ids, cold = _ids(result), result.as_numpy("cold_start")
    assert ids.shape == (3, 10)  # default k
    assert cold.tolist() == [False, True, True]
    assert ids[1].tolist() == ids[2].tolist()  # strangers get the same (popularity) answer
    assert ids[0].tolist() != ids[1].tolist()
    result = grpc_client.infer(MODEL, [("user_id", "INT64", [123456789])])
    assert result["outputs"]["cold_start"].tolist() == [True]


def test_answers_equal_the_model_called_in_process(http_client, small_model_dir, catalogue):
    """The server answers plain requests from a table precomputed at load: same as the model.
    (Items with exactly equal scores may come in either order: the model's tie order is
    arbitrary, and differs with k.)"""
    from components.models.artifact import load_model

    model = load_model(small_model_dir)
    users = sorted(catalogue[1])[:20] + ["nobody"]
    for k in (1, 10, 60):
        result = http_client.infer(
            MODEL, [_bytes_input(httpclient, "user_id", users), _int_input(httpclient, "k", [k])]
        )
        rec = model.recommend(users, k)
        got, scores = _ids(result), result.as_numpy("scores")
        finite = np.isfinite(rec.scores)
        assert np.array_equal(np.isfinite(scores), finite)
        assert np.allclose(scores[finite], rec.scores[finite])
        for row in range(len(users)):
            s = rec.scores[row][finite[row]]
            values, counts = np.unique(s, return_counts=True)
            # compare above the last returned score (equal scores may straddle the cut)
            untied = (counts[np.searchsorted(values, s)] == 1) & (s > s[-1])
            assert (got[row][: len(s)][untied] == rec.item_ids[row][: len(s)][untied]).all(), (k, row)
            above = s > s[-1]
            assert set(got[row][: len(s)][above]) == set(rec.item_ids[row][: len(s)][above]), (k, row)
        assert (result.as_numpy("cold_start") == rec.cold_start).all()


def test_per_row_k_pads_with_empty_ids_and_nan(http_client, catalogue):
    _, seen = catalogue
    users = sorted(seen)[:2]
    result = http_client.infer(
        MODEL, [_bytes_input(httpclient, "user_id", users), _int_input(httpclient, "k", [2, 4])]
    )
    ids, scores = _ids(result), result.as_numpy("scores")
    assert ids.shape == (2, 4)
    assert ids[0, 2:].tolist() == ["", ""] and np.isnan(scores[0, 2:]).all()
    assert all(ids[0, :2]) and all(ids[1]) and np.isfinite(scores[1]).all()


def test_exclude_and_history(http_client, small_dataset):
    base = _ids(http_client.infer(MODEL, [_bytes_input(httpclient, "user_id", ["stranger"])]))[0]
    exclude = [[base[0], base[1], ""]]  # [B, M], "" pads short rows
    result = http_client.infer(
        MODEL,
        [_bytes_input(httpclient, "user_id", ["stranger"]),
         _bytes_input(httpclient, "exclude_item_ids", exclude)],
    )
    row = _ids(result)[0]
    assert base[0] not in row and base[1] not in row and row[0] == base[2]
    history = [str(i) for i in small_dataset.interactions["item_id"].astype(str).unique()[:5]]
    result = http_client.infer(
        MODEL,
        [_bytes_input(httpclient, "user_id", ["stranger"]),
         _bytes_input(httpclient, "history_item_ids", [history])],
    )
    row = _ids(result)[0]
    assert not set(row) & set(history)  # what the caller says the user has seen is not re-sent
    assert row.tolist() != base.tolist()  # and the history personalises the answer
    assert result.as_numpy("cold_start").tolist() == [True]


def test_similar_items_by_fuzzy_title(http_client, grpc_client):
    result = http_client.infer(
        MODEL,
        [_bytes_input(httpclient, "item_id", ["itme 12", "i7", "zzzz qqqq xxxx"]),
         _int_input(httpclient, "k", [3])],
    )
    resolved, titles, ids = _ids(result, "resolved_item_ids"), _ids(result, "resolved_titles"), _ids(result)
    assert resolved.tolist()[:2] == ["i12", "i7"] and titles[0] == "Item 12"
    assert resolved[2] == "" and ids[2].tolist() == ["", "", ""]  # no match: an empty row, not an error
    assert "i12" not in ids[0] and all(ids[0]) and "i7" not in ids[1]
    result = grpc_client.infer(MODEL, [("item_id", "BYTES", ["Item 12"])])
    assert result["outputs"]["resolved_item_ids"].tolist() == ["i12"]


def test_v1_protocol(server, catalogue):
    _, seen = catalogue
    known = min(seen)
    body = {"instances": [{"user_id": known, "k": 3}, {"user_id": 42, "exclude_item_ids": ["i1"]}]}
    response = httpx.post(f"{server.url}/v1/models/{MODEL}:predict", json=body, timeout=10)
    assert response.status_code == 200, response.text
    preds = response.json()["predictions"]
    assert [p["user_id"] for p in preds] == [known, "42"]
    assert [p["cold_start"] for p in preds] == [False, True]
    assert len(preds[0]["item_ids"]) == 3 and len(preds[1]["item_ids"]) == 10
    assert not set(preds[0]["item_ids"]) & seen[known] and "i1" not in preds[1]["item_ids"]
    assert len(preds[0]["scores"]) == 3
    response = httpx.post(
        f"{server.url}/v1/models/{MODEL}:predict", json={"instances": [{"item_id": "Item 12", "k": 2}]}
    )
    pred = response.json()["predictions"][0]
    assert pred["resolved_item_id"] == "i12" and pred["resolved_title"] == "Item 12"
    assert len(pred["item_ids"]) == 2


# ---------------------------------------------------------------------------- explanations
def _check_ranker_sums(explanation: dict) -> None:
    for item in explanation["items"]:
        ranker = item["ranker"]
        if ranker is not None:  # bias + the groups is the ranker's raw score
            assert ranker["bias"] + sum(ranker["groups"].values()) == pytest.approx(
                ranker["raw_score"], abs=1e-4)


def test_v1_explain_verb_answers_predictions_and_their_explanations(server, catalogue):
    _, seen = catalogue
    known = min(seen)
    body = {"instances": [{"user_id": known, "k": 5}, {"user_id": "nobody-at-all", "k": 3}]}
    predicted = httpx.post(f"{server.url}/v1/models/{MODEL}:predict", json=body, timeout=10)
    response = httpx.post(f"{server.url}/v1/models/{MODEL}:explain", json=body, timeout=10,
                          headers={"x-caller-secret": "s3cret"})
    assert response.status_code == 200, response.text
    assert "x-caller-secret" not in response.headers  # KServe would echo the request's headers
    answer = response.json()
    assert answer["predictions"] == predicted.json()["predictions"]
    personal, cold = answer["explanations"]
    assert personal["kind"] == "personal" and personal["user_id"] == known
    assert [i["item_id"] for i in personal["items"]] == answer["predictions"][0]["item_ids"]
    assert all(i["because"] and {b["item_id"] for b in i["because"]} <= seen[known]
               for i in personal["items"])
    assert personal["items"][-1]["versus_next"] is None
    assert personal["items"][0]["versus_next"]["item_id"] == personal["items"][1]["item_id"]
    _check_ranker_sums(personal)
    assert cold["kind"] == "cold_start" and cold["reason"] == "most popular"
    assert [i["item_id"] for i in cold["items"]] == answer["predictions"][1]["item_ids"]
    again = httpx.post(f"{server.url}/v1/models/{MODEL}:explain", json=body, timeout=10)
    assert again.json()["explanations"] == answer["explanations"]  # deterministic


def test_v1_explain_of_similar_items_names_shared_genres(server):
    body = {"instances": [{"item_id": "Item 12", "k": 3}]}
    response = httpx.post(f"{server.url}/v1/models/{MODEL}:explain", json=body, timeout=10)
    assert response.status_code == 200, response.text
    prediction, explanation = response.json()["predictions"][0], response.json()["explanations"][0]
    assert explanation["kind"] == "similar" and explanation["reason"] == "similar to Item 12"
    assert [i["item_id"] for i in explanation["items"]] == prediction["item_ids"]
    for item, score in zip(explanation["items"], prediction["scores"]):
        assert isinstance(item["shared_genres"], list)
        assert item["similarity"] == pytest.approx(score, abs=1e-5)


def test_v2_explain_input_over_http_and_grpc(server, http_client, grpc_client, catalogue):
    _, seen = catalogue
    users = [min(seen), "nobody-at-all"]
    flag = httpclient.InferInput("explain", [1], "BOOL")
    flag.set_data_from_numpy(np.asarray([True]))
    result = http_client.infer(MODEL, [_bytes_input(httpclient, "user_id", users),
                                       _int_input(httpclient, "k", [4]), flag])
    rows = [json.loads(v) for v in _ids(result, "explanations")]
    ids = _ids(result)
    assert [r["kind"] for r in rows] == ["personal", "cold_start"]
    for row, answered in zip(rows, ids):
        assert [i["item_id"] for i in row["items"]] == [i for i in answered if i]
        _check_ranker_sums(row)
    explained = _metric(httpx.get(f"{server.url}/metrics").text, "recsys_explained_rows_total",
                        model_name=MODEL)
    assert explained >= 2  # this request's two rows, at least
    plain = http_client.infer(MODEL, [_bytes_input(httpclient, "user_id", users),
                                      _int_input(httpclient, "k", [4])])
    assert plain.as_numpy("explanations") is None  # not asked: no explanation work, no output
    assert (_ids(plain) == ids).all()
    assert _metric(httpx.get(f"{server.url}/metrics").text, "recsys_explained_rows_total",
                   model_name=MODEL) == explained  # the plain request explained nothing
    reply = grpc_client.infer(MODEL, [("user_id", "BYTES", users), ("k", "INT32", [4]),
                                      ("explain", "BOOL", [True])])
    assert [json.loads(v) for v in reply["outputs"]["explanations"].tolist()] == rows
    reply = grpc_client.infer(MODEL, [("item_id", "BYTES", ["i12"]), ("explain", "BOOL", [True])])
    similar = json.loads(reply["outputs"]["explanations"].tolist()[0])
    assert similar["kind"] == "similar"
    assert [i["item_id"] for i in similar["items"]] == [
        i for i in reply["outputs"]["item_ids"].tolist()[0] if i]
    reply = grpc_client.infer(MODEL, [("user_id", "BYTES", users), ("explain", "BOOL", [False])])
    assert "explanations" not in reply["outputs"]


def test_explain_uses_the_history_the_client_sends(server, small_dataset):
    items = small_dataset.items["item_id"].astype(str).tolist()
    sent = items[:3]
    body = v2_body(("user_id", "BYTES", [1], ["nobody-at-all"]), ("k", "INT32", [1], [3]),
                   ("history_item_ids", "BYTES", [1, 3], sent), ("explain", "BOOL", [1], [True]))
    response = post_v2(server, body)
    assert response.status_code == 200, response.text
    outputs = {o["name"]: o["data"] for o in response.json()["outputs"]}
    explanation = json.loads(outputs["explanations"][0])
    assert explanation["kind"] == "personal"
    because = [b for i in explanation["items"] for b in i["because"]]
    assert because and {b["item_id"] for b in because} <= set(sent)
    assert not any(b["fresh"] for b in because)  # the client's history is not the online one


# ---------------------------------------------------------------------------- malformed requests
U2 = ("user_id", "BYTES", [2], ["u1", "u2"])
MALFORMED_V2 = {
    "user_id FP32": (v2_body(("user_id", "FP32", [1], [1.0])), "user_id"),
    "shape/data mismatch": (v2_body(("user_id", "BYTES", [3], ["u1", "u2"])), "user_id"),
    "negative shape": (v2_body(("user_id", "BYTES", [-1], ["u1"])), "user_id"),
    "rank 2 user_id": (v2_body(("user_id", "BYTES", [1, 1], ["u1"])), "user_id"),
    "empty batch": (v2_body(("user_id", "BYTES", [0], [])), "empty"),
    "batch too large": (v2_body(("user_id", "BYTES", [MAX_BATCH + 1], ["u"] * (MAX_BATCH + 1))), "limit"),
    "k zero": (v2_body(U2, ("k", "INT32", [1], [0])), "k"),
    "k above catalogue": (v2_body(U2, ("k", "INT32", [1], [10**6])), "k"),
    "k not integer": (v2_body(U2, ("k", "INT32", [1], [2.5])), "k"),
    "k FP32": (v2_body(U2, ("k", "FP32", [1], [2.0])), "k"),
    "k wrong length": (v2_body(U2, ("k", "INT32", [3], [1, 2, 3])), "k"),
    "k huge int": (v2_body(U2, ("k", "INT64", [1], [2**70])), "k"),
    "missing user_id": (v2_body(("k", "INT32", [1], [5])), "user_id"),
    "user_id and item_id": (v2_body(U2, ("item_id", "BYTES", [2], ["i1", "i2"])), "item_id"),
    "unknown input": (v2_body(U2, ("colour", "BYTES", [1], ["red"])), "colour"),
    "duplicate input": (v2_body(U2, U2), "user_id"),
    "exclude not 2-d": (v2_body(U2, ("exclude_item_ids", "BYTES", [2], ["i1", "i2"])), "exclude_item_ids"),
    "exclude wrong rows": (v2_body(U2, ("exclude_item_ids", "BYTES", [1, 1], ["i1"])), "exclude_item_ids"),
    "history with item_id": (
        v2_body(("item_id", "BYTES", [1], ["i1"]), ("history_item_ids", "BYTES", [1, 1], ["i2"])),
        "history_item_ids",
    ),
    "non-string BYTES": (v2_body(("user_id", "BYTES", [1], [{"a": 1}])), "user_id"),
    "nested ragged data": (v2_body(("user_id", "BYTES", [2], [["u1"], "u2"])), "user_id"),
    "similar k above catalogue": (v2_body(("item_id", "BYTES", [1], ["i1"]), ("k", "INT32", [1], [200])), "k"),
    "explain INT32": (v2_body(U2, ("explain", "INT32", [1], [1])), "explain"),
    "explain BYTES": (v2_body(U2, ("explain", "BYTES", [1], ["true"])), "explain"),
    "explain per row": (v2_body(U2, ("explain", "BOOL", [2], [True, True])), "explain"),
    "explain not a bool": (v2_body(U2, ("explain", "BOOL", [1], ["yes"])), "explain"),
    "explain no data": (v2_body(U2, ("explain", "BOOL", [1], [])), "explain"),
    "explain too many items": (
        v2_body(("user_id", "BYTES", [MAX_BATCH], ["u"] * MAX_BATCH), ("k", "INT32", [1], [40]),
                ("explain", "BOOL", [1], [True])), "explain"),
}


@pytest.mark.parametrize("case", list(MALFORMED_V2), ids=list(MALFORMED_V2))
def test_malformed_v2_is_400_naming_the_field(server, case):
    body, field = MALFORMED_V2[case]
    response = post_v2(server, body)
    assert response.status_code == 400, (case, response.status_code, response.text)
    assert field in response.json()["error"], response.text


MALFORMED_V1 = {
    "not an object": ([1, 2], "instances"),
    "no instances": ({"inputs": [1]}, "inputs"),
    "empty instances": ({"instances": []}, "empty"),
    "instance not object": ({"instances": ["u1"]}, "instances"),
    "missing user_id": ({"instances": [{"k": 3}]}, "user_id"),
    "mixed modes": ({"instances": [{"user_id": "u1"}, {"item_id": "i1"}]}, "item_id"),
    "k string": ({"instances": [{"user_id": "u1", "k": "5"}]}, "k"),
    "k zero": ({"instances": [{"user_id": "u1", "k": 0}]}, "k"),
    "unknown field": ({"instances": [{"user_id": "u1", "colour": "red"}]}, "colour"),
    "user_id list": ({"instances": [{"user_id": ["u1"]}]}, "user_id"),
    "exclude not list": ({"instances": [{"user_id": "u1", "exclude_item_ids": "i1"}]}, "exclude_item_ids"),
    "batch too large": ({"instances": [{"user_id": "u"}] * (MAX_BATCH + 1)}, "limit"),
    "explain as a field": ({"instances": [{"user_id": "u1", "explain": True}]}, "explain"),
}


@pytest.mark.parametrize("case", list(MALFORMED_V1), ids=list(MALFORMED_V1))
def test_malformed_v1_is_400_naming_the_field(server, case):
    body, field = MALFORMED_V1[case]
    response = httpx.post(f"{server.url}/v1/models/{MODEL}:predict", json=body, timeout=10)
    assert response.status_code == 400, (case, response.status_code, response.text)
    assert field in response.json()["error"], response.text


def test_unparsable_bodies_are_client_errors(server):
    for content in (b"{not json", b"", b"\xff\xfe", b'{"inputs": "x"}', b"[]", b"null", b"42"):
        response = post_v2(server, content)
        assert response.status_code == 400, (content, response.status_code, response.text)
        assert response.json()["error"], content
    response = httpx.post(
        f"{server.url}/v2/models/{MODEL}/infer", content=b'{"id": 1}garbage',
        headers={"content-type": "application/json", "inference-header-content-length": "9"},
    )
    assert 400 <= response.status_code < 500, response.text
    response = httpx.post(
        f"{server.url}/v1/models/{MODEL}:predict", content=b"{oops", headers={"content-type": "text/plain"}
    )
    assert response.status_code == 400, response.text


def test_every_rest_worker_answers_and_refuses_alike(small_model_dir, tmp_path):
    """With --workers 2, KServe spawns REST worker processes: each must serve the model and
    answer an unparsable body 400, not FastAPI's 422."""
    server = start_server(small_model_dir, tmp_path, "--workers", "2")
    try:
        wait_live(server)
        deadline = time.monotonic() + 60
        while httpx.get(f"{server.url}/v2/models/{MODEL}/ready").status_code != 200:
            assert time.monotonic() < deadline, server.output()[-3000:]
            time.sleep(0.2)
        from concurrent.futures import ThreadPoolExecutor

        good = v2_body(("user_id", "BYTES", [1], ["u1"]))

        def both(_):  # a new connection each: the workers share the listening socket
            return post_v2(server, good), post_v2(server, b"{not json")

        pids: set[str] = set()
        deadline = time.monotonic() + 90  # the second worker starts seconds after the first
        with ThreadPoolExecutor(8) as pool:  # concurrent, so that both workers accept some
            while len(pids) < 2 and time.monotonic() < deadline:
                for ok, bad in pool.map(both, range(40)):
                    assert ok.status_code == 200, ok.text
                    assert bad.status_code == 400, bad.text
                    assert bad.json() == {"error": "the body is not valid JSON"}
                # Which processes answered, from the access log ("127.0.0.1:PORT PID - ..."):
                pids = set(re.findall(r"uvicorn\.access INFO:\s+\S+ (\d+) - \"POST", server.output()))
        assert len(pids) == 2, f"one worker answered everything: {pids}"
    finally:
        stop(server)


def test_grpc_malformed_is_invalid_argument(grpc_client):
    cases = {
        "k": [("user_id", "BYTES", ["u1"]), ("k", "INT32", [0])],
        "user_id": [("k", "INT32", [3])],
        "colour": [("user_id", "BYTES", ["u1"]), ("colour", "BYTES", ["x"])],
        "shape": [("user_id", "BYTES", ["u1", "u2"], [5])],  # raw contents of 2, a shape of 5
        "datatype": [("user_id", "FP32", [1.5])],
        "empty": [("user_id", "BYTES", [], [0])],
        "limit": [("user_id", "BYTES", ["u"] * (MAX_BATCH + 1))],
        "explain": [("user_id", "BYTES", ["u1"]), ("explain", "INT32", [1])],
    }
    for field, inputs in cases.items():
        with pytest.raises(GrpcError) as err:
            grpc_client.infer(MODEL, inputs)
        assert err.value.status == "StatusCode.INVALID_ARGUMENT", (field, err.value)
        assert field in err.value.message or field == "shape", (field, err.value.message)
    assert grpc_client.is_server_live() and grpc_client.is_model_ready(MODEL)


def test_fuzzed_bodies_never_get_a_5xx(server):
    """~200 random mutations of valid v2 bodies, plus junk: every answer is 2xx or 4xx."""
    rng = random.Random(20240531)
    junk_values = [None, True, -1, 0, 2**64, 1.5, "", "x" * 300, [], {}, [[1]], [None], ["u1"], {"a": []}]
    names = ["user_id", "item_id", "k", "exclude_item_ids", "history_item_ids", "explain", "", "zzz"]
    dtypes = ["BYTES", "INT32", "INT64", "FP32", "BOOL", "FP16", "UINT8", "nope", ""]

    def tensor() -> dict:
        t = {"name": rng.choice(names), "datatype": rng.choice(dtypes),
             "shape": rng.choice([[1], [2], [0], [-1], [1, 1], [2, 0], [2, 1], [], [10**9]]),
             "data": rng.choice([["u1"], ["u1", "u2"], [1], [1, 2], [], [[1, 2]], [0.5], [True], ["i1", 3]])}
        for _ in range(rng.choice([0, 0, 0, 0, 1, 2])):
            t[rng.choice(["name", "datatype", "shape", "data", "parameters", "extra"])] = rng.choice(junk_values)
        if rng.random() < 0.05:
            del t[rng.choice(list(t))]
        return t

    statuses = []
    with httpx.Client(timeout=10) as client:
        for i in range(200):
            roll = rng.random()
            if roll < 0.8:
                body = json.dumps({"id": rng.choice(["r", None]), "inputs": [tensor() for _ in range(rng.randint(0, 3))]})
            elif roll < 0.85:
                body = json.dumps(rng.choice(junk_values))
            else:
                good = json.dumps(v2_body(U2))
                cut = rng.randrange(len(good))
                body = good[:cut] + rng.choice(["", "}", "\x00", "é", "]]"]) + good[cut + rng.randint(0, 3):]
            response = client.post(
                f"{server.url}/v2/models/{MODEL}/infer", content=body, headers={"content-type": "application/json"}
            )
            statuses.append(response.status_code)
            assert response.status_code < 500, (i, body, response.status_code, response.text)
    assert 200 in statuses or 400 in statuses
    assert httpx.get(f"{server.url}/v2/health/ready").status_code == 200


# ---------------------------------------------------------------------------- a bad artifact
def test_corrupt_artifact_is_live_but_not_ready(servers):
    _, bad = servers
    assert httpx.get(f"http://{bad.http}/v2/health/live").status_code == 200
    assert httpx.get(f"http://{bad.http}/v2/health/ready").status_code == 503
    assert httpx.get(f"http://{bad.http}/v2/models/{MODEL}/ready").status_code == 503
    response = post_v2(bad, v2_body(("user_id", "BYTES", [1], ["u1"])))
    assert response.status_code == 503, response.text
    explained = httpx.post(f"{bad.url}/v1/models/{MODEL}:explain",
                           json={"instances": [{"user_id": "u1"}]}, timeout=10)
    assert explained.status_code == 503 and "checksum mismatch" in explained.json()["error"]
    client = GrpcClient(bad.grpc)
    try:
        assert client.is_server_live()
        assert not client.is_server_ready() and not client.is_model_ready(MODEL)
        with pytest.raises(GrpcError) as err:
            client.infer(MODEL, [("user_id", "BYTES", ["u1"])])
        assert err.value.status == "StatusCode.UNAVAILABLE"
    finally:
        client.close()
    assert "checksum mismatch" in bad.output() and "NOT ready" in bad.output()


# ---------------------------------------------------------------------------- metrics and log
def _metric(text: str, name: str, **labels: str) -> float:
    for line in text.splitlines():
        if line.startswith(name + "{") and all(f'{k}="{v}"' in line for k, v in labels.items()):
            return float(line.rsplit(" ", 1)[1])
    raise AssertionError(f"{name} {labels} not in /metrics")


def test_metrics_count_what_was_served(server, http_client):
    before = httpx.get(f"{server.url}/metrics").text
    http_client.infer(MODEL, [_bytes_input(httpclient, "user_id", ["metrics-a", "metrics-b"])])
    post_v2(server, v2_body(("user_id", "FP32", [1], [1.0])))
    after = httpx.get(f"{server.url}/metrics").text
    rows = "recsys_recommendations_total"
    assert _metric(after, rows, mode="user") - _metric(before, rows, mode="user") == 2
    assert _metric(after, "recsys_cold_start_total") - _metric(before, "recsys_cold_start_total") == 2
    errors = "recsys_errors_total"
    assert _metric(after, errors, kind="invalid_input") - _metric(before, errors, kind="invalid_input") == 1
    assert _metric(after, "recsys_model_info", model_name=MODEL) == 1
    assert _metric(after, "recsys_model_ready", model_name=MODEL) == 1
    assert "request_predict_seconds" in after  # KServe's own histograms, same registry


def test_request_log_is_written_and_readable(server, http_client):
    http_client.infer(
        MODEL, [_bytes_input(httpclient, "user_id", ["log-a", "log-b"]), _int_input(httpclient, "k", [3, 1])],
        request_id="log-request-1",
    )
    deadline = time.monotonic() + 10
    while True:
        frame = read_request_log(server.request_log)
        rows = frame[frame["request_id"] == "log-request-1"]
        if len(rows) == 2 or time.monotonic() > deadline:
            break
        time.sleep(0.1)
    assert rows["user_id"].tolist() == ["log-a", "log-b"]
    assert rows["k"].tolist() == [3, 1] and rows["cold_start"].tolist() == [True, True]
    assert [len(ids) for ids in rows["item_ids"]] == [3, 1]
    assert rows["model_name"].eq(MODEL).all() and rows["model_version"].str.len().gt(0).all()
    assert str(rows["timestamp"].dtype).startswith("datetime64")
    similar = frame[frame["item_id"].notna()]
    assert {"i12"} <= set(similar["resolved_item_id"].dropna())  # from the similar-items test


@pytest.mark.parametrize("mode", ["user", "item"])
def test_payload_logger_events_convert_to_the_same_records(server, mode):
    """What KServe's payload logger would post (the JSON request and response, ce-id = request
    id) converts to the records the server's own request log holds."""
    from serving.request_log import records_from_cloudevents

    rid = f"cloudevent-{mode}"
    request = (
        v2_body(("user_id", "BYTES", [2], ["ce-a", "u3"]), ("k", "INT32", [2], [2, 5]))
        if mode == "user" else v2_body(("item_id", "BYTES", [2], ["itme 12", "zzzz qqqq xxxx"]))
    )
    request["id"] = rid
    response = post_v2(server, request)
    assert response.status_code == 200, response.text
    headers = {"Ce-Id": rid, "Ce-Type": "org.kubeflow.serving.inference.response",
               "Ce-Time": "2025-01-31T12:00:00Z", "Ce-Inferenceservicename": "recsys-isvc"}
    converted = records_from_cloudevents(request, response.json(), headers)
    deadline = time.monotonic() + 10
    while True:
        frame = read_request_log(server.request_log)
        logged = frame[frame["request_id"] == rid]
        if len(logged) == 2 or time.monotonic() > deadline:
            break
        time.sleep(0.1)
    keys = ["model_name", "model_version", "request_id", "row", "user_id", "item_id",
            "resolved_item_id", "cold_start", "k", "item_ids"]
    assert [{k: r[k] for k in keys} for r in converted] == [
        {k: (None if isinstance(v, float) and np.isnan(v) else v) for k, v in r.items()}
        for r in logged[keys].to_dict("records")
    ]
    for mine, theirs in zip(converted, logged["scores"]):
        assert np.allclose(mine["scores"], theirs)
    assert converted[0]["timestamp"] == "2025-01-31T12:00:00.000000Z"


# ---------------------------------------------------------------------------- entry point & image
def test_dockerfile_runs_the_serving_module_as_non_root():
    text = (REPO / "Dockerfile").read_text()
    lines = [line.strip() for line in text.splitlines() if line.strip() and not line.strip().startswith("#")]
    assert lines[0].startswith("FROM python:3.11-slim")
    users = [line.split()[1] for line in lines if line.startswith("USER ")]
    assert users and users[-1] not in ("root", "0") and users[-1].split(":")[0] == "1000"
    entry = [line for line in lines if line.startswith("ENTRYPOINT")]
    assert entry and json.loads(entry[-1][len("ENTRYPOINT"):]) == ["python", "-m", "serving"]
    assert any(line.startswith("EXPOSE") and {"8080", "8081"} <= set(line.split()[1:]) for line in lines)
    assert "pip install -r requirements-runtime.lock" in text and "--no-deps" in text
    # The image's pins are the tested ones, minus the test tools.
    pins = lambda name: dict(re.findall(r"^([A-Za-z0-9_.-]+)==(\S+)", (REPO / name).read_text(), re.MULTILINE))
    runtime, tested = pins("requirements-runtime.lock"), pins("requirements.lock")
    assert runtime and all(tested.get(k) == v for k, v in runtime.items())
    assert "kserve" in runtime and "pytest" not in runtime
    # The serving image leaves out what only the pipeline steps use (alibi-detect: ~650 MB).
    assert "alibi-detect" not in runtime and "dvc" not in runtime and "distributed" not in runtime
    pipeline = pins("requirements-pipeline.lock")
    assert "pip install -r requirements-pipeline.lock" in text
    assert all(tested.get(k) == v for k, v in pipeline.items())
    assert {"alibi-detect", "dvc", "distributed"} <= set(pipeline) and "pytest" not in pipeline
    assert not any(word in text.upper() for word in ("PASSWORD", "SECRET", "TOKEN", "AWS_"))
    assert (REPO / "serving" / "__main__.py").is_file()
    ignored = (REPO / ".dockerignore").read_text().split()
    assert ".venv" in ignored and ".git" in ignored
    help_run = subprocess.run(
        [sys.executable, "-m", "serving", "--help"], cwd=REPO, capture_output=True, text=True, timeout=60,
        check=False,
    )
    assert help_run.returncode == 0 and "--model-dir" in help_run.stdout
    missing = subprocess.run(
        [sys.executable, "-m", "serving", "--model-dir", str(REPO / "no-such-model")],
        cwd=REPO, capture_output=True, text=True, timeout=60,
        check=False,
    )
    assert missing.returncode == 1 and "no such directory" in missing.stderr


def test_recsys_serve_subcommand_options():
    import argparse

    from pipelines.cli.serve import handler, register

    parser = argparse.ArgumentParser()
    register(parser.add_subparsers(dest="command"))
    args = parser.parse_args(["serve", "--http-port", "9000", "--max-batch-size", "10"])
    assert args.func is handler and args.model_dir is None
    assert (args.http_port, args.grpc_port, args.max_batch_size, args.model_name) == (9000, 8081, 10, MODEL)
    args = parser.parse_args(["serve", "--model_dir", "/x", "--grpc_port", "9001"])  # KServe spellings
    assert (args.model_dir, args.grpc_port) == ("/x", 9001)
    assert args.max_explain_items == 1000
    assert parser.parse_args(["serve", "--max-explain-items", "5"]).max_explain_items == 5


def test_shutdown_flushes_the_request_log(servers):
    good, _ = servers
    assert stop(good) == 0, good.output()[-2000:]
    for path in good.request_log.glob("requests-*.jsonl*"):
        text = path.read_text()
        assert text.endswith("\n")
        for line in text.splitlines():
            json.loads(line)
