"""The DaskCluster resource the train step creates for a distributed fit, checked offline: it
is what dask-kubernetes writes, with the project image, single-threaded workers, an idle
timeout that cleans up after a killed step, and the scheduler address the step connects to.
Creating and deleting it needs a cluster with the operator, which these machines do not have."""
from __future__ import annotations

from components.release.dask_cluster import IDLE_TIMEOUT_S, cluster_spec, scheduler_address


def test_cluster_spec_is_a_daskcluster_of_the_project_image():
    spec = cluster_spec("recsys-fit-1", "registry/recsys:1", 3, "2", "6Gi")
    assert spec["apiVersion"] == "kubernetes.dask.org/v1" and spec["kind"] == "DaskCluster"
    assert spec["metadata"]["name"] == "recsys-fit-1"
    assert spec["spec"]["idleTimeout"] == IDLE_TIMEOUT_S > 0
    worker = spec["spec"]["worker"]
    assert worker["replicas"] == 3
    container = worker["spec"]["containers"][0]
    assert container["image"] == "registry/recsys:1"
    assert container["args"][-2:] == ["--nthreads", "1"]
    assert container["resources"]["limits"] == {"cpu": "2", "memory": "6Gi"}
    ports = {p["port"] for p in spec["spec"]["scheduler"]["service"]["ports"]}
    assert 8786 in ports


def test_scheduler_address_is_the_operators_service():
    assert scheduler_address("recsys-fit-1", "recsys") == "tcp://recsys-fit-1-scheduler.recsys.svc.cluster.local:8786"


def test_a_tuning_cluster_gives_its_workers_the_study_databases_password():
    """Tuning trials open the study's PostgreSQL from the workers: PGPASSWORD from the Secret,
    optional; a fit's cluster (no Secret named) gets no such variable."""
    worker = cluster_spec("recsys-tune-1", "registry/recsys:1", 2, "1", "4Gi",
                          password_secret="recsys-tune-db")["spec"]["worker"]["spec"]["containers"][0]
    (password,) = [e for e in worker["env"] if e["name"] == "PGPASSWORD"]
    assert password["valueFrom"] == {"secretKeyRef": {"name": "recsys-tune-db", "key": "TUNE_DB_PASSWORD",
                                                      "optional": True}}
    plain = cluster_spec("recsys-fit-1", "registry/recsys:1", 2, "1", "4Gi")["spec"]["worker"]["spec"]["containers"][0]
    assert "PGPASSWORD" not in {e["name"] for e in plain.get("env") or []}
