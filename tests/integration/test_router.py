"""Champion and challenger behind one model server (`serving.router`), over real HTTP.

A real KServe model server (`python -m serving`, and `recsys serve` from a local deployment
record) on loopback ports, two real models (the small two-stage model, and a popularity-only
one trained on the same data), called with httpx (v1, v2 REST). The expected answers come
from the models themselves, loaded in the test process.
"""
from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from serving_process import REPO, Server, free_port, start_server, stop, wait_live

from components.experiments.assignment import (
    assign_variant,
    interleaved_version,
    request_seed,
    user_bucket,
)
from components.experiments.interleaving import team_draft
from components.experiments.serving_health import parse_router_metrics
from components.models.artifact import load_model
from serving.request_log import read_request_log

CHALLENGER_PERCENT, INTERLEAVE_PERCENT = 40.0, 30.0


@pytest.fixture(scope="module")
def challenger_dir(tmp_path_factory, small_dataset) -> Path:
    from components.config import config_from_dict
    from components.models.artifact import save_model
    from components.models.two_stage import TwoStageRecommender

    off = {"enabled": False}
    config = config_from_dict({"model": {"ease": off, "seq_ease": off, "als": off, "content": off,
                                         "ranker": off}})
    model = TwoStageRecommender(config.model).fit(small_dataset.interactions, small_dataset.items,
                                                  progress=lambda _: None)
    return save_model(model, tmp_path_factory.mktemp("challenger") / "artifact",
                      data_fingerprint=small_dataset.fingerprint)


@pytest.fixture(scope="module")
def models(small_model_dir, challenger_dir):
    return load_model(small_model_dir), load_model(challenger_dir)


@pytest.fixture(scope="module")
def feedback_url(tmp_path_factory) -> str:
    return f"sqlite:///{tmp_path_factory.mktemp('feedback') / 'feedback.db'}"


@pytest.fixture(scope="module")
def routed(small_model_dir, challenger_dir, tmp_path_factory, feedback_url):
    server = start_server(small_model_dir, tmp_path_factory.mktemp("routed"),
                          "--challenger-dir", str(challenger_dir),
                          "--challenger-percent", str(CHALLENGER_PERCENT),
                          "--interleave-percent", str(INTERLEAVE_PERCENT),
                          "--online-store", feedback_url)
    try:
        wait_live(server)
        _wait_ready(server)
        yield server
    finally:
        stop(server)


def _wait_ready(server: Server, timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while httpx.get(f"{server.url}/v2/models/recsys/ready").status_code != 200:
        assert time.monotonic() < deadline, server.output()[-3000:]
        time.sleep(0.2)


def _v1(server: Server, users: list[str], k: int = 5, request_id: str | None = None) -> dict:
    headers = {"x-request-id": request_id} if request_id else {}
    response = httpx.post(f"{server.url}/v1/models/recsys:predict", headers=headers, timeout=30,
                          json={"instances": [{"user_id": u, "k": k} for u in users]})
    assert response.status_code == 200, response.text
    return response.json()


def test_each_user_sticks_to_the_variant_of_their_hash(routed, models, small_dataset):
    champion, challenger = models
    users = sorted(small_dataset.interactions["user_id"].astype(str).unique())[:200]
    salt = challenger.model_version
    expected = {u: assign_variant(user_bucket(u, salt), CHALLENGER_PERCENT, INTERLEAVE_PERCENT)
                for u in users}
    both = interleaved_version(champion.model_version, challenger.model_version)
    version_of = {"champion": champion.model_version, "challenger": challenger.model_version,
                  "interleaved": both}
    seen: dict[str, set[str]] = {}
    for attempt in range(2):
        for start in range(0, len(users), 50):
            batch = users[start : start + 50]
            request_id = f"sticky-{attempt}-{start}"
            answer = _v1(routed, batch, request_id=request_id)
            for row, (user, prediction) in enumerate(zip(batch, answer["predictions"])):
                seen.setdefault(user, set()).add(prediction["model_version"])
                variant = expected[user]
                assert prediction["model_version"] == version_of[variant]
                if variant == "interleaved":  # reproducible from the request id and the row
                    lists = [_top(m, user) for m in models]
                    merged, _ = team_draft(*lists, 5, request_seed(f"{request_id}:{row}"))
                    assert prediction["item_ids"] == merged
                else:
                    model = challenger if variant == "challenger" else champion
                    assert prediction["item_ids"] == _top(model, user)
    assert all(len(v) == 1 for v in seen.values())
    shares = {v: sum(1 for x in expected.values() if x == v) / len(users) for v in version_of}
    assert abs(shares["challenger"] - 0.4) < 0.12 and abs(shares["interleaved"] - 0.3) < 0.12


def _top(model, user: str, k: int = 5) -> list[str]:
    """The model's own top k, computed as the server's answer cache computes it (top 100)."""
    return model.recommend([user], 100).item_ids[0][:k].tolist()


def test_v2_answers_carry_each_rows_version(routed, small_dataset):
    users = sorted(small_dataset.interactions["user_id"].astype(str).unique())[:30]
    body = {"id": "v2-versions", "inputs": [
        {"name": "user_id", "datatype": "BYTES", "shape": [len(users)], "data": users},
        {"name": "k", "datatype": "INT32", "shape": [1], "data": [3]}]}
    response = httpx.post(f"{routed.url}/v2/models/recsys/infer", json=body, timeout=30)
    assert response.status_code == 200, response.text
    answer = response.json()
    outputs = {o["name"]: o for o in answer["outputs"]}
    versions = outputs["model_versions"]["data"]
    assert outputs["model_versions"]["shape"] == [len(users)] and len(versions) == len(users)
    assert set(answer["model_version"].split(",")) == set(versions)
    assert outputs["item_ids"]["shape"] == [len(users), 3]
    metadata = httpx.get(f"{routed.url}/v2/models/recsys").json()
    assert "model_versions" in {o["name"] for o in metadata["outputs"]}
    bad = httpx.post(f"{routed.url}/v2/models/recsys/infer", json={"inputs": [
        {"name": "user_id", "datatype": "BYTES", "shape": [1], "data": ["1"]},
        {"name": "k", "datatype": "INT32", "shape": [1], "data": [0]}]})
    assert bad.status_code == 400 and "k: must be at least 1" in bad.json()["error"]


def test_explain_verb_explains_each_row_by_the_model_that_answered_it(routed, models, small_dataset):
    champion, challenger = models
    users = sorted(small_dataset.interactions["user_id"].astype(str).unique())[:20]
    salt = challenger.model_version
    response = httpx.post(f"{routed.url}/v1/models/recsys:explain", timeout=30,
                          json={"instances": [{"user_id": u, "k": 5} for u in users]})
    assert response.status_code == 200, response.text
    answer = response.json()
    assert len(answer["explanations"]) == len(users)
    variants = set()
    for user, prediction, explanation in zip(users, answer["predictions"], answer["explanations"]):
        variant = assign_variant(user_bucket(user, salt), CHALLENGER_PERCENT, INTERLEAVE_PERCENT)
        variants.add(variant)
        assert [i["item_id"] for i in explanation["items"]] == prediction["item_ids"]
        assert [i["rank"] for i in explanation["items"]] == list(range(1, 6))
        if variant == "interleaved":
            assert explanation["interleaved"] is True
            placed = {i["model_version"] for i in explanation["items"]}
            assert placed <= {champion.model_version, challenger.model_version}
        else:
            assert "interleaved" not in explanation
            has_ranker = any(i["ranker"] for i in explanation["items"])
            assert has_ranker == (variant == "champion")  # the challenger has no ranker
    assert variants == {"champion", "challenger", "interleaved"}


def test_metrics_and_request_log_are_per_version(routed, models):
    champion, challenger = models
    _v1(routed, [str(u) for u in range(40)], request_id="metrics-check")
    health = parse_router_metrics(httpx.get(f"{routed.url}/metrics").text, "recsys")
    assert {champion.model_version, challenger.model_version} <= set(health)
    for version in (champion.model_version, challenger.model_version):
        assert health[version].requests >= 1 and health[version].errors == 0
        assert 0 < health[version].p99_seconds < 5
    deadline = time.monotonic() + 10
    while True:
        log = read_request_log(routed.request_log)
        if len(log) and "metrics-check" in set(log["request_id"]):
            break
        assert time.monotonic() < deadline, "request log not written"
        time.sleep(0.2)
    rows = log[log["request_id"] == "metrics-check"]
    assert len(rows) == 40 and set(rows["model_version"]) >= {champion.model_version}


def test_impressions_record_each_positions_version_and_the_variant(routed, models, feedback_url):
    from components.feedback.feedback_store import FeedbackStore

    champion, challenger = models
    users = [str(u) for u in range(50)]  # the server's batch limit
    answer = _v1(routed, users, k=4, request_id="impressions-check")
    deadline = time.monotonic() + 15
    while True:
        with FeedbackStore(feedback_url) as store:
            shown = store.read_impressions()
        shown = shown[shown["request_id"] == "impressions-check"]
        if len(shown) == sum(len(p["item_ids"]) for p in answer["predictions"]):
            break
        assert time.monotonic() < deadline, f"{len(shown)} impressions stored"
        time.sleep(0.3)
    both = interleaved_version(champion.model_version, challenger.model_version)
    for user, prediction in zip(users, answer["predictions"]):
        rows = shown[shown["user_id"] == user].sort_values("position")
        assert rows["item_id"].tolist() == prediction["item_ids"]
        assert set(rows["model_version"]) == {prediction["model_version"]}
        variant = assign_variant(user_bucket(user, challenger.model_version), CHALLENGER_PERCENT,
                                 INTERLEAVE_PERCENT)
        assert set(rows["variant"]) == {variant}
        if variant == "interleaved":
            assert prediction["model_version"] == both
            assert set(rows["source_version"]) <= {champion.model_version, challenger.model_version}
        else:
            assert (rows["source_version"] == rows["model_version"]).all()
    interleaved = shown[shown["variant"] == "interleaved"]
    assert interleaved["source_version"].nunique() == 2  # both models placed items


@pytest.fixture()
def registered_home(tmp_path, small_model_dir, challenger_dir):
    """A run home whose registry has the small model as champion and the popularity model as
    challenger, deployed locally with every user on the challenger."""
    from mlflow import MlflowClient

    from components.release.deploy import deploy_local

    home = tmp_path / "home"
    home.mkdir()
    uri = f"sqlite:///{home / 'mlflow.db'}"
    client = MlflowClient(tracking_uri=uri)
    experiment = client.create_experiment("recsys", artifact_location=(home / "mlartifacts").as_uri())
    client.create_registered_model("recsys")
    for directory in (small_model_dir, challenger_dir):
        run = client.create_run(experiment)
        client.log_artifacts(run.info.run_id, str(directory), artifact_path="model")
        client.set_terminated(run.info.run_id)
        client.create_model_version("recsys", f"{run.info.artifact_uri}/model", run_id=run.info.run_id)
    client.set_registered_model_alias("recsys", "champion", "1")
    client.set_registered_model_alias("recsys", "challenger", "2")
    deploy_local(tracking_uri=uri, model_name="recsys", home=home, challenger_percent=100)
    return home


def test_recsys_serve_follows_the_deployment_record(registered_home, models):
    """`recsys serve` with no model directory serves the record's champion and challenger, and
    a local rollback applies to the next requests without a restart."""
    from components.release.deploy import rollback_local

    champion, challenger = models
    http_port = free_port()
    log_path = registered_home / "serve.log"
    env = {**os.environ, "RECSYS_HOME": str(registered_home)}
    env.pop("MLFLOW_TRACKING_URI", None)
    with log_path.open("wb") as out:
        process = subprocess.Popen(
            [str(Path(sys.executable).parent / "recsys"), "serve", "--http-port", str(http_port),
             "--grpc-port", str(free_port())],
            cwd=REPO, env=env, stdout=out, stderr=subprocess.STDOUT, start_new_session=True)
    server = Server(process, f"127.0.0.1:{http_port}", "", log_path, registered_home / "none")
    try:
        wait_live(server)
        _wait_ready(server)
        users = [str(u) for u in range(20)]
        assert {p["model_version"] for p in _v1(server, users)["predictions"]} == {challenger.model_version}

        rollback_local(registered_home)

        deadline = time.monotonic() + 30
        while (answer := _v1(server, users))["model_version"] != champion.model_version:
            assert time.monotonic() < deadline, server.output()[-3000:]
            time.sleep(0.5)
        # The champion alone answers exactly as the predictor does: no per-row versions.
        assert all("model_version" not in p for p in answer["predictions"])
        assert "now serving champion" in server.output()
        record = json.loads((registered_home / "deployment.json").read_text())
        assert "challenger" not in record and record["rolled_back"] == "2"
    finally:
        stop(server)
