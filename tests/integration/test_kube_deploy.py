"""The cluster deploy step (create, idempotent re-run, canary patch, errors).

There is no Kubernetes cluster or KServe here: the real `kubernetes` client talks over HTTP to
`tests/k8s_double.py`, a local double of the API server for InferenceServices that records every
call and plays KServe's controller (revisions, traffic split) after each write.
"""
from __future__ import annotations

import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from k8s_double import KubeApiDouble

from components.errors import ClusterError, ConfigError
from components.release.kube_deploy import (
    CANARY_STARTED_ANNOTATION,
    MODEL_VERSION_ANNOTATION,
    PREVIOUS_VERSION_ANNOTATION,
    build_inference_service,
    deploy_inference_service,
)

IMAGE = "ghcr.io/recsys-mlops/recsys:0.1.0"
PATH = "/apis/serving.kserve.io/v1beta1/namespaces/recsys/inferenceservices"


@pytest.fixture()
def k8s():
    with KubeApiDouble() as double:
        yield double


def _deploy(k8s, version: str, uri: str, **kw):
    return deploy_inference_service(name="recsys", namespace="recsys", image=IMAGE, storage_uri=uri,
                                    model_version=version, api=k8s.api(), **kw)


def test_first_deploy_creates_the_service_with_all_traffic(k8s):
    result = _deploy(k8s, "1", "s3://mlflow/1/abc/artifacts/model")

    assert result.action == "created" and result.canary_traffic_percent is None
    assert result.previous_model_version is None
    assert result.revision == "recsys-predictor-00001"  # read back from KServe's status
    [post] = k8s.writes()
    assert post.method == "POST" and post.path == PATH
    expected = build_inference_service(name="recsys", namespace="recsys", image=IMAGE,
                                       storage_uri="s3://mlflow/1/abc/artifacts/model", model_version="1")
    assert post.body == expected
    predictor = post.body["spec"]["predictor"]
    assert "canaryTrafficPercent" not in predictor
    [container] = predictor["containers"]
    assert container["name"] == "kserve-container" and container["image"] == IMAGE
    assert container["command"] + container["args"] == [
        "python", "-m", "serving", "--model-dir", "/mnt/models", "--model-name", "recsys", "--http-port", "8080"]
    assert {"name": "STORAGE_URI", "value": "s3://mlflow/1/abc/artifacts/model"} in container["env"]
    assert predictor["serviceAccountName"] == "recsys-predictor"
    assert post.body["metadata"]["annotations"][MODEL_VERSION_ANNOTATION] == "1"
    # The controller double rolled it out: one revision with 100%.
    traffic = k8s.get("recsys", "recsys")["status"]["components"]["predictor"]["traffic"]
    assert [(t["revisionName"], t["percent"]) for t in traffic] == [("recsys-predictor-00001", 100)]


def test_redeploying_the_same_version_writes_nothing(k8s):
    _deploy(k8s, "1", "s3://mlflow/1/model")
    writes_before = len(k8s.writes())

    again = _deploy(k8s, "1", "s3://mlflow/1/model")

    assert again.action == "unchanged" and again.model_version == "1"
    assert len(k8s.writes()) == writes_before
    assert k8s.calls[-1].method == "GET"


def test_new_version_is_one_canary_patch_leaving_the_champion_alone(k8s):
    _deploy(k8s, "1", "s3://mlflow/1/model")
    before = k8s.get("recsys", "recsys")
    writes_before = len(k8s.writes())

    result = _deploy(k8s, "2", "s3://mlflow/2/model", canary_traffic_percent=20)

    assert (result.action, result.canary_traffic_percent, result.previous_model_version) == ("canary", 20, "1")
    assert result.revision == "recsys-predictor-00002"
    [patch] = k8s.writes()[writes_before:]
    assert patch.method == "PATCH" and patch.path == f"{PATH}/recsys"
    assert patch.content_type == "application/merge-patch+json"
    assert set(patch.body) == {"metadata", "spec"}
    assert set(patch.body["spec"]["predictor"]) == {"canaryTrafficPercent", "containers"}
    assert patch.body["spec"]["predictor"]["canaryTrafficPercent"] == 20
    assert patch.body["metadata"]["resourceVersion"] == before["metadata"]["resourceVersion"]
    notes = patch.body["metadata"]["annotations"]
    assert notes[MODEL_VERSION_ANNOTATION] == "2" and notes[PREVIOUS_VERSION_ANNOTATION] == "1"
    assert notes[CANARY_STARTED_ANNOTATION].endswith("Z")

    after = k8s.get("recsys", "recsys")
    old_container = before["spec"]["predictor"]["containers"][0]
    new_container = after["spec"]["predictor"]["containers"][0]
    # Only the storage URI differs in the container; the rest of the predictor is as it was.
    assert {**new_container, "env": None} == {**old_container, "env": None}
    assert new_container["env"] == [{"name": "STORAGE_URI", "value": "s3://mlflow/2/model"},
                                    *old_container["env"][1:]]
    assert old_container["env"][0] == {"name": "STORAGE_URI", "value": "s3://mlflow/1/model"}
    untouched = {k: v for k, v in before["spec"]["predictor"].items() if k != "containers"}
    assert {k: after["spec"]["predictor"][k] for k in untouched} == untouched
    # KServe keeps the champion's revision and splits the traffic.
    component = after["status"]["components"]["predictor"]
    assert component["latestRolledoutRevision"] == "recsys-predictor-00001"
    assert {t["revisionName"]: t["percent"] for t in component["traffic"]} == {
        "recsys-predictor-00002": 20, "recsys-predictor-00001": 80}

    # Re-running the pipeline for version 2 (or for the champion) changes nothing.
    count = len(k8s.writes())
    assert _deploy(k8s, "2", "s3://mlflow/2/model").action == "unchanged"
    assert _deploy(k8s, "1", "s3://mlflow/1/model").action == "unchanged"
    assert len(k8s.writes()) == count


def test_api_server_errors_are_one_clear_line(k8s):
    k8s.fail_next(status=403, reason="Forbidden",
                  message='inferenceservices.serving.kserve.io "recsys" is forbidden: User '
                          '"system:serviceaccount:kubeflow:pipeline-runner" cannot get resource')
    with pytest.raises(ClusterError) as err:
        _deploy(k8s, "1", "s3://mlflow/1/model")
    text = str(err.value)
    assert "403 Forbidden" in text and "cannot get resource" in text and "\n" not in text

    _deploy(k8s, "1", "s3://mlflow/1/model")
    k8s.fail_call(len(k8s.calls) + 2, status=409, reason="Conflict", message="the object has been modified")
    with pytest.raises(ClusterError, match="409 Conflict: the object has been modified"):
        _deploy(k8s, "2", "s3://mlflow/2/model")


def test_unreachable_api_server_and_bad_inputs_are_clear(k8s):
    from kubernetes import client

    configuration = client.Configuration(host="http://127.0.0.1:9")  # nothing listens on port 9
    configuration.retries = 0
    dead = client.CustomObjectsApi(client.ApiClient(configuration))
    with pytest.raises(ClusterError, match="unreachable"):
        deploy_inference_service(name="recsys", namespace="recsys", image=IMAGE,
                                 storage_uri="s3://m/1", model_version="1", api=dead)
    with pytest.raises(ConfigError, match="storage initializer"):
        _deploy(k8s, "1", "mlflow-artifacts:/1/abc/artifacts/model")
    with pytest.raises(ConfigError, match="between 1 and 99"):
        _deploy(k8s, "1", "s3://m/1", canary_traffic_percent=100)
    assert k8s.calls == []


def test_the_manifests_placeholder_service_is_taken_over_whole():
    """The InferenceService as `kubectl apply -k manifests/...` leaves it (placeholder model, never
    ready): the first real model replaces the placeholder without a canary, and the rest of the
    manifest's predictor (command, other variables, probes, security) is kept as it was."""
    import yaml

    manifest = yaml.safe_load((Path(__file__).resolve().parents[2] / "manifests" / "base" /
                               "inferenceservice.yaml").read_text())
    manifest["metadata"]["namespace"] = "recsys"
    with KubeApiDouble(simulate_controller=False) as k8s:
        k8s.put(manifest)  # applied, but its placeholder model never became ready
        k8s.simulate_controller = True
        result = _deploy(k8s, "1", "s3://mlflow/1/model")

        assert (result.action, result.canary_traffic_percent) == ("created", None)
        [patch] = k8s.writes()
        assert patch.body["spec"]["predictor"]["canaryTrafficPercent"] is None
        after = k8s.get("recsys", "recsys")
        old, new = manifest["spec"]["predictor"], after["spec"]["predictor"]
        assert {**new, "containers": None} == {**old, "containers": None}
        old_env = old["containers"][0]["env"]
        assert [e["name"] for e in new["containers"][0]["env"]] == [e["name"] for e in old_env]
        assert {e["name"]: e.get("value") for e in new["containers"][0]["env"]} == {
            **{e["name"]: e.get("value") for e in old_env}, "STORAGE_URI": "s3://mlflow/1/model"}
        assert new["containers"][0]["env"] == [
            {**e, "value": "s3://mlflow/1/model"} if e["name"] == "STORAGE_URI" else e for e in old_env]
        assert after["metadata"]["annotations"][MODEL_VERSION_ANNOTATION] == "1"
        assert CANARY_STARTED_ANNOTATION not in after["metadata"]["annotations"]

        # From there on, a new version is a canary beside it.
        assert _deploy(k8s, "2", "s3://mlflow/2/model").action == "canary"


def test_proxied_mlflow_uris_map_to_the_object_store():
    from components.release.kube_deploy import object_store_uri

    dest = "s3://mlflow/artifacts"
    assert object_store_uri("mlflow-artifacts:/1/abc/artifacts/model", dest) == "s3://mlflow/artifacts/1/abc/artifacts/model"
    assert object_store_uri("mlflow-artifacts://mlflow:5000/1/abc/artifacts/model", dest + "/") == (
        "s3://mlflow/artifacts/1/abc/artifacts/model")
    assert object_store_uri("s3://other/x", dest) == "s3://other/x"
    with pytest.raises(ConfigError, match="mlflow_artifacts_destination"):
        object_store_uri("mlflow-artifacts:/1/abc", "")


def test_pipeline_deploy_step_reads_the_registry_and_patches_the_cluster(k8s, tmp_path, monkeypatch):
    """The KFP deploy step's function (`steps.deploy`, cluster target) end to end: the registered
    version's location comes from a real MLflow store as the proxying server hands it out
    (mlflow-artifacts:), and the step reaches the API double through a kubeconfig, as a pod
    outside the cluster would."""
    import yaml
    from mlflow import MlflowClient

    from components.steps import deploy

    store = f"sqlite:///{tmp_path / 'mlflow.db'}"
    client = MlflowClient(tracking_uri=store)
    client.create_registered_model("recsys")
    for run in ("aaa", "bbb"):
        client.create_model_version("recsys", f"mlflow-artifacts:/1/{run}/artifacts/model")
    kubeconfig = tmp_path / "kubeconfig"
    kubeconfig.write_text(yaml.safe_dump({
        "apiVersion": "v1", "kind": "Config", "current-context": "double",
        "clusters": [{"name": "double", "cluster": {"server": k8s.host}}],
        "users": [{"name": "u", "user": {"token": "t"}}],
        "contexts": [{"name": "double", "context": {"cluster": "double", "user": "u"}}],
    }))
    monkeypatch.setenv("KUBECONFIG", str(kubeconfig))
    monkeypatch.setattr("kubernetes.config.load_incluster_config", _not_in_cluster)

    def registration(version: str, alias: str | None) -> dict:
        return {"model_name": "recsys", "version": version, "alias": alias, "tracking_uri": store}

    first = deploy(registration("1", "champion"), target="kserve", image=IMAGE,
                   artifacts_destination="s3://mlflow/artifacts")
    assert first["action"] == "created"
    assert first["storage_uri"] == "s3://mlflow/artifacts/1/aaa/artifacts/model"
    refused = deploy(registration("2", None), target="kserve", image=IMAGE,
                     artifacts_destination="s3://mlflow/artifacts")
    assert refused["action"] == "none" and len(k8s.writes()) == 1
    second = deploy(registration("2", "challenger"), target="kserve", image=IMAGE,
                    canary_traffic_percent=20, artifacts_destination="s3://mlflow/artifacts")
    assert second["action"] == "canary" and second["revision"] == "recsys-predictor-00002"
    isvc = k8s.get("recsys", "recsys")
    assert isvc["spec"]["predictor"]["canaryTrafficPercent"] == 20
    env = isvc["spec"]["predictor"]["containers"][0]["env"]
    assert {"name": "STORAGE_URI", "value": "s3://mlflow/artifacts/1/bbb/artifacts/model"} in env


def _not_in_cluster():
    from kubernetes.config import ConfigException

    raise ConfigException("not in a cluster")


def test_a_created_service_is_as_hardened_and_wired_as_the_manifests_one():
    """When the deploy step creates the InferenceService itself (no `kubectl apply -k` before),
    it must not be a weaker object than manifests/base/inferenceservice.yaml."""
    import yaml

    manifest = yaml.safe_load((Path(__file__).resolve().parents[2] / "manifests" / "base" /
                               "inferenceservice.yaml").read_text())["spec"]["predictor"]
    built = build_inference_service(name="recsys", namespace="recsys", image=IMAGE,
                                    storage_uri="s3://m/1", model_version="1")["spec"]["predictor"]
    for key in ("securityContext", "logger", "annotations", "volumes", "serviceAccountName"):
        assert built[key] == manifest[key], key
    mine, theirs = built["containers"][0], manifest["containers"][0]
    assert mine["securityContext"] == theirs["securityContext"]
    assert mine["volumeMounts"] == theirs["volumeMounts"]
    assert mine["command"] == theirs["command"] and mine["args"] == theirs["args"]
    for probe in ("readinessProbe", "livenessProbe"):
        assert mine[probe]["httpGet"] == theirs[probe]["httpGet"], probe
    assert {e["name"] for e in mine["env"]} == {e["name"] for e in theirs["env"]}
    secret_refs = lambda env: {e["name"]: e.get("valueFrom") for e in env if "valueFrom" in e}
    assert secret_refs(mine["env"]) == secret_refs(theirs["env"])
    assert set(mine["resources"]) == {"requests", "limits"}


def test_a_revision_kserve_never_reports_is_recorded_as_unknown(k8s, monkeypatch):
    monkeypatch.setattr(k8s, "_reconcile", lambda *args: None)  # a controller that is down
    result = _deploy(k8s, "1", "s3://mlflow/1/model", revision_timeout=0)
    assert result.action == "created" and result.revision is None
    assert len(k8s.writes()) == 1  # the write stands
