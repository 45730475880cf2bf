"""A Dask cluster for one pipeline run, through the dask-kubernetes operator.

The operator (installed by terraform/, `dask-kubernetes-operator` chart) turns a `DaskCluster`
resource (`kubernetes.dask.org/v1`) into a scheduler Deployment and Service and a group of
worker pods. The pipeline creates one before its distributed train step, hands the train step
the scheduler's address, and deletes it when the run ends, whatever the outcome (a KFP exit
handler). The resource's spec is the one `dask_kubernetes.operator.make_cluster_spec` writes;
here it is only created and deleted with the Kubernetes client, so the step needs no more
rights than the `recsys-dask` Role gives (manifests/base/rbac.yaml).
"""
from __future__ import annotations

import logging
from typing import Any

log = logging.getLogger(__name__)

GROUP, VERSION, PLURAL = "kubernetes.dask.org", "v1", "daskclusters"
SCHEDULER_PORT = 8786
IDLE_TIMEOUT_S = 900
# The key of the tuning database's Secret (manifests/base/tune-db.yaml) that becomes the
# workers' PGPASSWORD, which libpq (psycopg) reads when the study's URL carries no password.
PASSWORD_KEY = "TUNE_DB_PASSWORD"


def cluster_spec(name: str, image: str, workers: int, cpu: str, memory: str,
                 password_secret: str = "") -> dict[str, Any]:
    """The DaskCluster resource: `workers` workers of `cpu` / `memory` running `image` (the
    project's image, so workers can unpickle the model), one thread each, as LightGBM wants.
    With `password_secret`, the workers' PGPASSWORD comes from that Secret (optional, so a
    cluster whose study needs no password starts without it): tuning trials open the study's
    PostgreSQL from the workers."""
    from dask_kubernetes.operator import make_cluster_spec

    resources = {"requests": {"cpu": cpu, "memory": memory}, "limits": {"cpu": cpu, "memory": memory}}
    # idle_timeout: should the step die before it deletes the cluster (an OOM kill skips every
    # finally), the operator removes a cluster whose scheduler has been idle this many seconds.
    spec = make_cluster_spec(name=name, image=image, n_workers=workers, resources=resources,
                             idle_timeout=IDLE_TIMEOUT_S)
    worker = spec["spec"]["worker"]["spec"]["containers"][0]
    worker["args"] = [*worker.get("args", []), "--nthreads", "1"]
    if password_secret:
        worker["env"] = [*(worker.get("env") or []), {"name": "PGPASSWORD", "valueFrom": {
            "secretKeyRef": {"name": password_secret, "key": PASSWORD_KEY, "optional": True}}}]
    return spec


def scheduler_address(name: str, namespace: str) -> str:
    """The in-cluster address of the scheduler Service the operator creates for `name`."""
    return f"tcp://{name}-scheduler.{namespace}.svc.cluster.local:{SCHEDULER_PORT}"


def create_cluster(
    name: str, namespace: str, image: str, workers: int, cpu: str = "1", memory: str = "8Gi",
    api=None, password_secret: str = "",
) -> str:
    """Create the DaskCluster (an existing one of that name is reused); returns the scheduler
    address. The train step's client waits for the scheduler and workers to come up."""
    from kubernetes.client.exceptions import ApiException

    from components.release.kube_deploy import kube_api

    api = kube_api(api)
    try:
        api.create_namespaced_custom_object(GROUP, VERSION, namespace, PLURAL,
                                            cluster_spec(name, image, workers, cpu, memory,
                                                         password_secret))
        log.info("created DaskCluster %s/%s with %d workers", namespace, name, workers)
    except ApiException as exc:
        if exc.status != 409:
            raise
        log.info("DaskCluster %s/%s exists; reusing it", namespace, name)
    return scheduler_address(name, namespace)


def delete_cluster(name: str, namespace: str, api=None) -> bool:
    """Delete the DaskCluster (the operator removes its pods); False if it was already gone."""
    from kubernetes.client.exceptions import ApiException

    from components.release.kube_deploy import kube_api

    try:
        kube_api(api).delete_namespaced_custom_object(GROUP, VERSION, namespace, PLURAL, name)
    except ApiException as exc:
        if exc.status == 404:
            return False
        raise
    log.info("deleted DaskCluster %s/%s", namespace, name)
    return True
