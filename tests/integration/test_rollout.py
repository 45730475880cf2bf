"""Champion/challenger rollout: status, promote, rollback, and finishing a half-done run.

There is no Kubernetes cluster or KServe here: the real `kubernetes` client talks to
`tests/k8s_double.py`, a local API server double that records every call and fills `status` the
way KServe's controller does. The registry is real: MLflow on SQLite with two registered model
versions whose `champion`/`challenger` aliases the operations move.
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from k8s_double import KubeApiDouble

from components.errors import ClusterError, RecsysError
from components.release.kube_deploy import deploy_inference_service
from serving.rollout import NoCanaryError, format_status, promote, rollback, rollout_status

MODEL = "recsys-rollout-test"
WHERE = {"name": "recsys", "namespace": "recsys", "model_name": MODEL}


@pytest.fixture(scope="module")
def tracking_uri(tmp_path_factory):
    """A real MLflow store with two versions of the model, each with a tiny artifact."""
    from mlflow import MlflowClient

    root = tmp_path_factory.mktemp("mlflow")
    uri = f"sqlite:///{root / 'mlflow.db'}"
    client = MlflowClient(tracking_uri=uri)  # not mlflow.set_tracking_uri: it leaks into os.environ
    experiment = client.create_experiment("rollout", artifact_location=(root / "artifacts").as_uri())
    client.create_registered_model(MODEL)
    for version in ("1", "2"):
        model_dir = root / f"model-{version}"
        model_dir.mkdir()
        (model_dir / "manifest.json").write_text(f'{{"model_version": "{version}"}}')
        run = client.create_run(experiment)
        client.log_artifacts(run.info.run_id, str(model_dir), artifact_path="model")
        client.set_terminated(run.info.run_id)
        created = client.create_model_version(MODEL, f"{run.info.artifact_uri}/model", run_id=run.info.run_id)
        assert created.version == int(version)
    return uri


@pytest.fixture()
def registry(tracking_uri):
    """The registry as the pipeline leaves it after a successful challenger: 1 champion, 2 challenger."""
    from mlflow import MlflowClient

    client = MlflowClient(tracking_uri=tracking_uri)
    for alias in list(client.get_registered_model(MODEL).aliases):
        client.delete_registered_model_alias(MODEL, alias)
    client.set_registered_model_alias(MODEL, "champion", "1")
    client.set_registered_model_alias(MODEL, "challenger", "2")
    return client


def _aliases(client) -> dict[str, str]:
    return {k: str(v) for k, v in client.get_registered_model(MODEL).aliases.items()}


def _deploy(k8s, version: str, **kw) -> None:
    deploy_inference_service(name="recsys", namespace="recsys", image="img:1",
                             storage_uri=f"s3://mlflow/{version}/model", model_version=version,
                             api=k8s.api(), **kw)


@pytest.fixture()
def canary():
    """Version 1 rolled out, version 2 as a 10% canary."""
    with KubeApiDouble() as k8s:
        _deploy(k8s, "1")
        _deploy(k8s, "2")
        k8s.calls.clear()
        yield k8s


class FlakyRegistry:
    """An MlflowClient whose method `fail` raises once, as a registry outage would."""

    def __init__(self, client, fail: str) -> None:
        self._client, self._fail = client, fail

    def __getattr__(self, name):
        if name == self._fail:
            from mlflow.exceptions import MlflowException

            def outage(*args, **kwargs):
                self._fail = None
                raise MlflowException("API request to endpoint failed with error code 503")
            return outage
        return getattr(self._client, name)


def _patches(k8s) -> list:
    return [c for c in k8s.calls if c.method == "PATCH"]


def test_status_of_a_recorded_canary_is_a_readable_table(registry):
    recorded = {  # shaped as `kubectl get isvc -o json` during a canary (KServe serverless)
        "apiVersion": "serving.kserve.io/v1beta1", "kind": "InferenceService",
        "metadata": {"name": "recsys", "namespace": "recsys", "annotations": {
            "recsys.mlops/model-version": "2", "recsys.mlops/previous-model-version": "1",
            "recsys.mlops/canary-started-at": "2024-05-01T08:00:00Z"}},
        "spec": {"predictor": {"canaryTrafficPercent": 10, "containers": [
            {"name": "kserve-container", "image": "img:1",
             "env": [{"name": "STORAGE_URI", "value": "s3://mlflow/2/model"}]}]}},
        "status": {
            "url": "http://recsys.recsys.example.com",
            "conditions": [{"type": "PredictorReady", "status": "True"}, {"type": "Ready", "status": "True"}],
            "components": {"predictor": {
                "latestCreatedRevision": "recsys-predictor-00002",
                "latestReadyRevision": "recsys-predictor-00002",
                "latestRolledoutRevision": "recsys-predictor-00001",
                "previousRolledoutRevision": "recsys-predictor-00001",
                "traffic": [
                    {"latestRevision": True, "percent": 10, "revisionName": "recsys-predictor-00002", "tag": "latest"},
                    {"latestRevision": False, "percent": 90, "revisionName": "recsys-predictor-00001", "tag": "prev"},
                ]}}},
    }
    with KubeApiDouble(simulate_controller=False) as k8s:
        k8s.put(recorded)
        status = rollout_status(k8s.api(), registry, **WHERE)

    assert (status.phase, status.ready, status.canary_traffic_percent) == ("canary", True, 10)
    assert (status.champion_revision, status.champion_version, status.champion_percent) == (
        "recsys-predictor-00001", "1", 90)
    assert (status.canary_revision, status.canary_version, status.canary_percent, status.canary_ready) == (
        "recsys-predictor-00002", "2", 10, True)
    assert (status.registry_champion, status.registry_challenger) == ("1", "2")
    assert status.canary_age_seconds > 0 and status.notes == ()
    lines = format_status(status).splitlines()
    assert lines[0] == "InferenceService recsys/recsys   ready: yes   url: http://recsys.recsys.example.com"
    assert lines[1].startswith("phase: canary   canaryTrafficPercent: 10   canary age: ")
    assert lines[3:6] == [
        "ROLE      REVISION                MODEL VERSION  TRAFFIC  READY",
        "champion  recsys-predictor-00001  1              90%      yes",
        "canary    recsys-predictor-00002  2              10%      yes",
    ]
    assert lines[-1] == f"MLflow '{MODEL}': champion -> 1, challenger -> 2"


def test_promote_sends_all_traffic_to_the_canary_then_moves_the_aliases(canary, registry):
    rv = canary.get("recsys", "recsys")["metadata"]["resourceVersion"]

    status = promote(canary.api(), registry, **WHERE)

    assert [(c.method, c.body) for c in canary.calls if c.method != "GET"] == [
        ("PATCH", {"spec": {"predictor": {"canaryTrafficPercent": None}}, "metadata": {"resourceVersion": rv}}),
    ]
    assert "canaryTrafficPercent" not in canary.get("recsys", "recsys")["spec"]["predictor"]
    assert _aliases(registry) == {"champion": "2"}
    assert (status.phase, status.champion_version, status.champion_revision, status.champion_percent) == (
        "stable", "2", "recsys-predictor-00002", 100)
    assert status.previous_rolledout_revision == "recsys-predictor-00001"
    assert any("champion -> version 2" in a for a in status.actions)

    with pytest.raises(NoCanaryError, match="no canary in progress on recsys/recsys: version 2 serves 100%"):
        promote(canary.api(), registry, **WHERE)
    assert len(_patches(canary)) == 1


def test_rollback_pins_the_champion_and_drops_the_challenger(canary, registry):
    status = rollback(canary.api(), registry, **WHERE)

    [patch] = _patches(canary)
    assert patch.body["spec"] == {"predictor": {"canaryTrafficPercent": 0}}
    assert _aliases(registry) == {"champion": "1"}
    assert (status.phase, status.champion_version, status.champion_percent) == ("rolled-back", "1", 100)
    assert (status.canary_version, status.canary_percent) == ("2", 0)

    with pytest.raises(NoCanaryError, match="already rolled back"):
        rollback(canary.api(), registry, **WHERE)
    with pytest.raises(NoCanaryError, match="version 2 was rolled back.*deploying version 2 again"):
        promote(canary.api(), registry, **WHERE)
    assert len(_patches(canary)) == 1


def test_deploying_a_rolled_back_version_again_resumes_its_canary(canary, registry):
    rollback(canary.api(), registry, **WHERE)
    revisions = canary.get("recsys", "recsys")["status"]["components"]["predictor"]
    _deploy(canary, "2", canary_traffic_percent=25)
    resume = _patches(canary)[-1]
    assert resume.body["spec"] == {"predictor": {"canaryTrafficPercent": 25}}  # no new revision
    status = rollout_status(canary.api(), registry, **WHERE)
    assert (status.phase, status.canary_version, status.canary_percent) == ("canary", "2", 25)
    assert status.canary_revision == revisions["latestCreatedRevision"]
    promote(canary.api(), registry, **WHERE)
    assert _aliases(registry) == {"champion": "2"}


@pytest.mark.parametrize("operation, failing, final", [
    (promote, "set_registered_model_alias", {"champion": "2"}),
    (promote, "delete_registered_model_alias", {"champion": "2"}),
    (rollback, "delete_registered_model_alias", {"champion": "1"}),
])
def test_a_registry_failure_half_way_is_finished_by_a_rerun(canary, registry, operation, failing, final):
    with pytest.raises(RecsysError, match="run the same command again"):
        operation(canary.api(), FlakyRegistry(registry, failing), **WHERE)
    assert len(_patches(canary)) == 1  # the cluster part was done
    assert _aliases(registry) != final
    assert rollout_status(canary.api(), registry, **WHERE).notes  # status says what is left

    status = operation(canary.api(), registry, **WHERE)

    assert len(_patches(canary)) == 1  # no second patch
    assert _aliases(registry) == final
    assert status.notes == ()


def test_a_cluster_failure_leaves_the_registry_alone_and_a_rerun_completes(canary, registry):
    canary.fail_call(len(canary.calls) + 2, status=500, reason="InternalError",
                     message="etcdserver: leader changed")
    with pytest.raises(ClusterError, match="500 Internal Server Error: etcdserver: leader changed"):
        promote(canary.api(), registry, **WHERE)
    assert _aliases(registry) == {"champion": "1", "challenger": "2"}

    promote(canary.api(), registry, **WHERE)

    assert len(_patches(canary)) == 2 and _aliases(registry) == {"champion": "2"}
    assert canary.get("recsys", "recsys")["status"]["components"]["predictor"]["traffic"][0]["percent"] == 100


def test_a_canary_that_is_not_ready_is_not_promoted(registry):
    with KubeApiDouble(new_revisions_ready=False) as k8s:
        _deploy(k8s, "1")
        _deploy(k8s, "2")
        with pytest.raises(RecsysError, match="recsys-predictor-00002 of recsys/recsys is not ready"):
            promote(k8s.api(), registry, **WHERE)
        assert _aliases(registry) == {"champion": "1", "challenger": "2"}
        assert "not ready" in format_status(rollout_status(k8s.api(), registry, **WHERE))


def test_nothing_to_promote_fails_clearly_through_the_cli(tmp_path, monkeypatch, tracking_uri, registry):
    from pipelines.cli.cluster import register

    with KubeApiDouble() as k8s:
        _deploy(k8s, "1")
        kubeconfig = tmp_path / "kubeconfig"
        kubeconfig.write_text(
            "apiVersion: v1\nkind: Config\ncurrent-context: double\n"
            f"clusters: [{{name: double, cluster: {{server: '{k8s.host}'}}}}]\n"
            "users: [{name: me, user: {token: not-a-secret}}]\n"
            "contexts: [{name: double, context: {cluster: double, user: me}}]\n"
        )
        monkeypatch.setenv("KUBECONFIG", str(kubeconfig))
        monkeypatch.delenv("KUBERNETES_SERVICE_HOST", raising=False)
        parser = argparse.ArgumentParser(prog="recsys")
        register(parser.add_subparsers(dest="command", required=True))
        common = ["--model-name", MODEL, "--tracking-uri", tracking_uri]

        status_args = parser.parse_args(["rollout", "status", *common])
        assert status_args.func(status_args) == 0
        for action in ("promote", "rollback"):
            args = parser.parse_args(["rollout", action, *common])
            with pytest.raises(NoCanaryError,
                               match="no canary in progress on recsys/recsys: version 1 serves 100%"):
                args.func(args)  # the main CLI prints this line and exits 1
        assert [c.method for c in k8s.calls if c.method != "GET"] == ["POST"]
