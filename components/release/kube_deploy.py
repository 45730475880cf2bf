"""Deploy (cluster target): create or canary-patch the KServe InferenceService that serves a model.

The predictor is the project's own image as a custom container (`spec.predictor.containers[0]`,
named `kserve-container`) with the model location in its `STORAGE_URI` environment variable.
KServe reads that variable for custom predictors (`CustomPredictor.GetStorageUri`) and its
storage initializer downloads the artifact to `/mnt/models` before the container starts, exactly
as it does for `spec.predictor.model.storageUri`. We use this form rather than
`spec.predictor.model` because the latter needs a ServingRuntime/ClusterServingRuntime object
(with a made-up model format) kept in step with the image, while here the image, its arguments
and the model location live in one object. The price: `containers` is a list, and a JSON merge
patch (RFC 7386) replaces lists whole, so a canary patch resends the current container with only
`STORAGE_URI` changed (guarded by `resourceVersion`, so a concurrent edit is a 409, not a loss).

Canary semantics are KServe's (serverless mode only): setting `canaryTrafficPercent` together
with a new storage URI makes Knative create a new revision, and KServe splits traffic between
it and the last revision that had 100% (`latestRolledoutRevision`), which stays untouched.

KServe copies the InferenceService's metadata annotations into the Knative revision template, so
changing an annotation creates a revision. Our bookkeeping annotations are therefore written
only together with a storage URI change (which creates a revision anyway), never by promote or
rollback (see `serving.rollout`).
"""
from __future__ import annotations

import json
import logging
import os
import time
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any
from urllib.parse import urlparse

from components.errors import ClusterError, ConfigError

log = logging.getLogger(__name__)

GROUP, VERSION, PLURAL = "serving.kserve.io", "v1beta1", "inferenceservices"
CONTAINER_NAME = "kserve-container"  # the only container name KServe reads STORAGE_URI from
STORAGE_URI_ENV = "STORAGE_URI"
MODEL_MOUNT = "/mnt/models"  # where the storage initializer puts the artifact
MODEL_VERSION_ANNOTATION = "recsys.mlops/model-version"
PREVIOUS_VERSION_ANNOTATION = "recsys.mlops/previous-model-version"
CANARY_STARTED_ANNOTATION = "recsys.mlops/canary-started-at"

# URI schemes KServe's default storage initializer (and PVC mounts / modelcars) can fetch. An
# MLflow `file:` URI cannot be read from inside the cluster; `mlflow-artifacts:` is mapped first.
SUPPORTED_URI_PREFIXES = (
    "s3://", "gs://", "pvc://", "hdfs://", "webhdfs://", "https://", "http://", "hf://", "oci://",
)

DEFAULT_RESOURCES: dict[str, dict[str, str]] = {
    "requests": {"cpu": "500m", "memory": "1Gi"},
    "limits": {"cpu": "2", "memory": "2Gi"},
}


@dataclass(frozen=True)
class DeployResult:
    action: str  # "created" | "canary" | "unchanged"
    name: str
    namespace: str
    model_version: str
    storage_uri: str
    canary_traffic_percent: int | None
    previous_model_version: str | None
    # The Knative revision serving `model_version` (None: KServe had not reported it in time).
    revision: str | None = None


# --- talking to the API server -------------------------------------------------------------


def kube_api(api: Any = None) -> Any:
    """`api` itself, or a CustomObjectsApi configured in-cluster, else from the kubeconfig."""
    if api is not None:
        return api
    from kubernetes import client, config

    try:
        config.load_incluster_config()
    except config.ConfigException:
        try:
            # Read $KUBECONFIG now: the client only reads it once, when it is first imported.
            config.load_kube_config(config_file=os.environ.get("KUBECONFIG") or None)
        except (config.ConfigException, OSError) as exc:
            raise ClusterError(
                f"no Kubernetes configuration: not running in a cluster and no usable kubeconfig ({exc})"
            ) from None
    return client.CustomObjectsApi()


def cluster_error(exc: Exception, doing: str) -> ClusterError:
    """One line from an API server error: what we did, the status code, reason and message."""
    status = getattr(exc, "status", None)
    if status is None:  # connection refused, DNS, TLS: urllib3 gives a long chain; keep its tail
        return ClusterError(f"Kubernetes API unreachable while trying to {doing}: {str(exc).splitlines()[-1]}")
    message = ""
    body = getattr(exc, "body", None)
    if body:
        try:
            message = json.loads(body).get("message", "")
        except (ValueError, AttributeError):
            message = str(body)[:200]
    text = f"Kubernetes API refused to {doing}: {status} {getattr(exc, 'reason', '') or ''}".rstrip()
    return ClusterError(f"{text}: {message}" if message else text)


def _api_errors() -> tuple[type[BaseException], ...]:
    from kubernetes.client.exceptions import ApiException
    from urllib3.exceptions import HTTPError

    return (ApiException, HTTPError, OSError)


def get_inference_service(api: Any, name: str, namespace: str) -> dict[str, Any] | None:
    """The InferenceService object, or None when there is none."""
    try:
        return api.get_namespaced_custom_object(GROUP, VERSION, namespace, PLURAL, name)
    except _api_errors() as exc:
        if getattr(exc, "status", None) == 404:
            return None
        raise cluster_error(exc, f"read InferenceService {namespace}/{name}") from None


def patch_inference_service(
    api: Any, name: str, namespace: str, patch: dict[str, Any], doing: str
) -> dict[str, Any]:
    """Apply a JSON merge patch (the client sends a dict body as application/merge-patch+json)."""
    try:
        return api.patch_namespaced_custom_object(GROUP, VERSION, namespace, PLURAL, name, patch)
    except _api_errors() as exc:
        raise cluster_error(exc, doing) from None


def set_canary_percent(
    api: Any, name: str, namespace: str, isvc: dict[str, Any], percent: int | None, doing: str
) -> dict[str, Any]:
    """Patch only `canaryTrafficPercent` (None removes it: the latest revision takes all),
    conditional on the object as read (`resourceVersion`: a concurrent edit is a 409). Neither
    the container nor the annotations change, so KServe creates no new revision."""
    meta = isvc.get("metadata") or {}
    patch: dict[str, Any] = {"spec": {"predictor": {"canaryTrafficPercent": percent}}}
    if meta.get("resourceVersion"):
        patch["metadata"] = {"resourceVersion": meta["resourceVersion"]}
    return patch_inference_service(api, name, namespace, patch, doing)


# --- reading an InferenceService -----------------------------------------------------------


def annotations(isvc: dict[str, Any]) -> dict[str, str]:
    return dict((isvc.get("metadata") or {}).get("annotations") or {})


def predictor(isvc: dict[str, Any]) -> dict[str, Any]:
    return (isvc.get("spec") or {}).get("predictor") or {}


def predictor_container(isvc: dict[str, Any]) -> dict[str, Any]:
    for container in predictor(isvc).get("containers") or []:
        if container.get("name") == CONTAINER_NAME:
            return container
    meta = isvc.get("metadata") or {}
    raise ClusterError(
        f"InferenceService {meta.get('namespace')}/{meta.get('name')} has no custom container "
        f"named {CONTAINER_NAME!r}; this deploy step manages only that form (see build_inference_service)"
    )


def current_storage_uri(isvc: dict[str, Any]) -> str | None:
    for env in predictor_container(isvc).get("env") or []:
        if env.get("name") == STORAGE_URI_ENV:
            return env.get("value")
    return None


def spec_canary_percent(isvc: dict[str, Any]) -> int | None:
    value = predictor(isvc).get("canaryTrafficPercent")
    return None if value is None else int(value)


def rollout_phase(isvc: dict[str, Any]) -> str:
    """What the spec asks of KServe: "stable" (the latest revision takes 100%), "canary" (split
    between the champion's revision and the latest) or "rolled-back" (latest pinned to 0%)."""
    percent = spec_canary_percent(isvc)
    if percent is None or percent >= 100:
        return "stable"
    return "rolled-back" if percent <= 0 else "canary"


def served_versions(isvc: dict[str, Any]) -> tuple[str | None, str | None]:
    """(champion's model version, canary's model version or None) as our annotations record them."""
    notes = annotations(isvc)
    latest = notes.get(MODEL_VERSION_ANNOTATION)
    if rollout_phase(isvc) == "stable":
        return latest, None
    return notes.get(PREVIOUS_VERSION_ANNOTATION), latest


def latest_created_revision(isvc: dict[str, Any] | None) -> str | None:
    component = (((isvc or {}).get("status") or {}).get("components") or {}).get("predictor") or {}
    return component.get("latestCreatedRevision")


def wait_for_new_revision(
    api: Any, name: str, namespace: str, before: str | None, timeout: float, interval: float = 2.0
) -> str | None:
    """The revision KServe creates for a write, once its status names one other than `before`.
    None after `timeout` seconds: the write stands, only the record of its revision is missing."""
    deadline = time.monotonic() + timeout
    while True:
        revision = latest_created_revision(get_inference_service(api, name, namespace))
        if revision and revision != before:
            return revision
        if time.monotonic() >= deadline:
            log.warning("InferenceService %s/%s: no new revision reported within %.0fs "
                        "(check `kubectl get isvc %s -n %s`)", namespace, name, timeout, name, namespace)
            return None
        time.sleep(interval)


# --- writing -------------------------------------------------------------------------------


def _never_served(isvc: dict[str, Any]) -> bool:
    """No model version on record and no revision ever rolled out: a placeholder."""
    component = ((isvc.get("status") or {}).get("components") or {}).get("predictor") or {}
    return MODEL_VERSION_ANNOTATION not in annotations(isvc) and not component.get("latestRolledoutRevision")


def object_store_uri(uri: str, artifacts_destination: str) -> str:
    """The object-store URI behind an MLflow-proxied artifact URI, else `uri` as it is.

    An MLflow server run with `--serve-artifacts --artifacts-destination D` (as in
    manifests/base/mlflow.yaml) hands out `mlflow-artifacts:/P` (or `mlflow-artifacts://host/P`)
    and stores the files at `D/P`; the storage initializer can read only the latter."""
    if not uri.startswith("mlflow-artifacts:"):
        return uri
    if not artifacts_destination:
        raise ConfigError(
            f"{uri} is served through the MLflow server; pass its --artifacts-destination "
            "(pipeline parameter mlflow_artifacts_destination) so KServe can read the files"
        )
    path = urlparse(uri).path.lstrip("/")
    return f"{artifacts_destination.rstrip('/')}/{path}"


def check_storage_uri(storage_uri: str) -> None:
    """Refuse a model location the cluster's storage initializer cannot download."""
    if not storage_uri.startswith(SUPPORTED_URI_PREFIXES):
        raise ConfigError(
            f"storage URI {storage_uri!r} cannot be fetched by KServe's storage initializer "
            f"(supported: {', '.join(SUPPORTED_URI_PREFIXES)}); an mlflow-artifacts: URI must first "
            "be mapped to the MLflow server's artifacts destination (object_store_uri)"
        )


def build_inference_service(
    *,
    name: str,
    namespace: str,
    image: str,
    storage_uri: str,
    model_version: str,
    service_account: str = "recsys-predictor",
    resources: dict | None = None,
    min_replicas: int = 1,
    max_replicas: int = 3,
) -> dict[str, Any]:
    """The complete InferenceService for a first deploy: one revision, 100% of traffic, with
    the hardening and wiring of manifests/base/inferenceservice.yaml (non-root, read-only root
    filesystem, probes, payload logger, Prometheus annotations); a test keeps the two alike."""
    return {
        "apiVersion": f"{GROUP}/{VERSION}",
        "kind": "InferenceService",
        "metadata": {
            "name": name,
            "namespace": namespace,
            "labels": {"app.kubernetes.io/name": name, "app.kubernetes.io/part-of": "recsys-mlops"},
            "annotations": {
                # Canary rollout exists only in serverless mode; say so rather than inherit it.
                "serving.kserve.io/deploymentMode": "Serverless",
                # Gives the champion and the canary their own `prev-`/`latest-` URLs for checks.
                "serving.kserve.io/enable-tag-routing": "true",
                MODEL_VERSION_ANNOTATION: model_version,
            },
        },
        "spec": {
            "predictor": {
                "serviceAccountName": service_account,
                "minReplicas": min_replicas,
                "maxReplicas": max_replicas,
                "annotations": {"prometheus.io/scrape": "true", "prometheus.io/port": "8080",
                                "prometheus.io/path": "/metrics"},
                # Every request and response, as CloudEvents, to the sink (serving.events).
                "logger": {"mode": "all", "url": f"http://recsys-events.{namespace}.svc.cluster.local"},
                "securityContext": {"runAsNonRoot": True, "runAsUser": 1000, "runAsGroup": 1000,
                                    "fsGroup": 1000, "seccompProfile": {"type": "RuntimeDefault"}},
                "volumes": [{"name": "tmp", "emptyDir": {"sizeLimit": "256Mi"}}],
                "containers": [
                    {
                        "name": CONTAINER_NAME,
                        "image": image,
                        # command, not args: the image's ENTRYPOINT is already `python -m
                        # serving`, and args alone would be appended to it.
                        "command": ["python", "-m", "serving"],
                        "args": ["--model-dir", MODEL_MOUNT, "--model-name", name, "--http-port", "8080"],
                        "env": [
                            {"name": STORAGE_URI_ENV, "value": storage_uri},
                            # Custom containers have no protocolVersion field: this tells KServe.
                            {"name": "PROTOCOL", "value": "v2"},
                            {"name": "PYTHONDONTWRITEBYTECODE", "value": "1"},
                            {"name": "HOME", "value": "/tmp"},
                            # Users' feedback since training, for the next answer: the events
                            # service's per-user lists in Redis (as the manifests' service).
                            {"name": "REDIS_PASSWORD", "valueFrom": {"secretKeyRef": {
                                "name": "recsys-redis", "key": "REDIS_PASSWORD"}}},
                            {"name": "RECSYS_ONLINE_STORE", "value": "redis://:$(REDIS_PASSWORD)@"
                             f"recsys-redis.{namespace}.svc.cluster.local:6379/0"},
                        ],
                        "ports": [{"name": "http1", "containerPort": 8080, "protocol": "TCP"}],
                        "readinessProbe": {"httpGet": {"path": "/v2/health/ready", "port": 8080},
                                           "initialDelaySeconds": 5, "periodSeconds": 10},
                        "livenessProbe": {"httpGet": {"path": "/v2/health/live", "port": 8080},
                                          "initialDelaySeconds": 15, "periodSeconds": 20},
                        "resources": resources or DEFAULT_RESOURCES,
                        "securityContext": {
                            "runAsNonRoot": True, "runAsUser": 1000, "readOnlyRootFilesystem": True,
                            "allowPrivilegeEscalation": False, "capabilities": {"drop": ["ALL"]},
                            "seccompProfile": {"type": "RuntimeDefault"},
                        },
                        "volumeMounts": [{"name": "tmp", "mountPath": "/tmp"}],
                    }
                ],
            }
        },
    }


def canary_patch(
    isvc: dict[str, Any],
    *,
    storage_uri: str,
    model_version: str,
    previous_version: str | None,
    percent: int | None,
    started_at: datetime,
) -> dict[str, Any]:
    """The merge patch that starts a canary: a new storage URI, the bookkeeping annotations and
    `canaryTrafficPercent` (None: no split, the new revision takes everything). Everything else
    in the container is resent as it is (a merge patch replaces lists whole), and
    `resourceVersion` makes the write conditional."""
    containers = []
    for container in predictor(isvc).get("containers") or []:
        container = json.loads(json.dumps(container))  # a deep copy, never the caller's object
        if container.get("name") == CONTAINER_NAME:
            env = container.setdefault("env", [])
            found = [e for e in env if e.get("name") == STORAGE_URI_ENV]
            if found:  # in place, so the variables keep their order
                found[0].pop("valueFrom", None)
                found[0]["value"] = storage_uri
            else:
                env.append({"name": STORAGE_URI_ENV, "value": storage_uri})
        containers.append(container)
    meta = isvc.get("metadata") or {}
    notes: dict[str, str | None] = {
        MODEL_VERSION_ANNOTATION: model_version,
        # null removes the key: an unknown champion must not keep a stale version on record.
        PREVIOUS_VERSION_ANNOTATION: previous_version,
        CANARY_STARTED_ANNOTATION: started_at.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%SZ"),
    }
    patch_meta: dict[str, Any] = {"annotations": notes}
    if meta.get("resourceVersion"):
        patch_meta["resourceVersion"] = meta["resourceVersion"]
    return {
        "metadata": patch_meta,
        "spec": {"predictor": {"canaryTrafficPercent": percent, "containers": containers}},
    }


def deploy_inference_service(
    *,
    name: str,
    namespace: str,
    image: str,
    storage_uri: str,
    model_version: str,
    canary_traffic_percent: int = 10,
    api: Any = None,
    revision_timeout: float = 120.0,
) -> DeployResult:
    """Create the InferenceService, or start a canary of `model_version` beside the champion.

    Idempotent: a re-run for the version already in the spec (or already the champion) writes
    nothing and answers "unchanged", except for a version that was rolled back, whose canary
    resumes at `canary_traffic_percent`."""
    if not 0 < canary_traffic_percent < 100:
        raise ConfigError(f"canary traffic percent must be between 1 and 99, not {canary_traffic_percent}")
    check_storage_uri(storage_uri)
    model_version = str(model_version)
    api = kube_api(api)
    where = f"{namespace}/{name}"
    existing = get_inference_service(api, name, namespace)
    if existing is not None and _never_served(existing):
        # Applied from the manifests with a placeholder model: nothing serves, so there is no
        # champion to protect; the first real model takes all traffic, as on a first deploy.
        patch = canary_patch(existing, storage_uri=storage_uri, model_version=model_version,
                             previous_version=None, percent=None,
                             started_at=datetime.now(UTC))
        patch["metadata"]["annotations"][CANARY_STARTED_ANNOTATION] = None
        patch_inference_service(api, name, namespace, patch, f"set the first model of InferenceService {where}")
        revision = wait_for_new_revision(api, name, namespace, latest_created_revision(existing), revision_timeout)
        log.info("InferenceService %s (from the manifests) now serves model version %s (revision %s)",
                 where, model_version, revision)
        return DeployResult("created", name, namespace, model_version, storage_uri, None, None, revision)

    if existing is None:
        if not image:
            raise ConfigError(f"an image is needed to create InferenceService {where}")
        body = build_inference_service(
            name=name, namespace=namespace, image=image, storage_uri=storage_uri, model_version=model_version
        )
        try:
            api.create_namespaced_custom_object(GROUP, VERSION, namespace, PLURAL, body)
        except _api_errors() as exc:
            raise cluster_error(exc, f"create InferenceService {where}") from None
        revision = wait_for_new_revision(api, name, namespace, None, revision_timeout)
        log.info("created InferenceService %s serving model version %s (revision %s)",
                 where, model_version, revision)
        return DeployResult("created", name, namespace, model_version, storage_uri, None, None, revision)

    champion, canary = served_versions(existing)
    in_spec = annotations(existing).get(MODEL_VERSION_ANNOTATION)
    if model_version == in_spec and rollout_phase(existing) == "rolled-back":
        # Its revision still exists at 0%: giving it traffic again resumes the canary without a
        # new revision (the spec's container and annotations stay as they are).
        set_canary_percent(api, name, namespace, existing, canary_traffic_percent,
                           f"resume the canary on InferenceService {where}")
        log.info("canary of rolled-back model version %s on %s resumed at %d%%",
                 model_version, where, canary_traffic_percent)
        return DeployResult("canary", name, namespace, model_version,
                            current_storage_uri(existing) or storage_uri, canary_traffic_percent, champion,
                            latest_created_revision(existing))
    if model_version in {in_spec, champion}:
        log.info("InferenceService %s already has model version %s: nothing to do", where, model_version)
        return DeployResult(
            "unchanged", name, namespace, model_version, current_storage_uri(existing) or storage_uri,
            spec_canary_percent(existing), champion if canary else None,
            latest_created_revision(existing),
        )

    current_image = predictor_container(existing).get("image")
    if image and image != current_image:
        # Only the model changes in a canary; a new predictor image is a manifest change.
        log.warning("InferenceService %s runs image %s, not %s: keeping it", where, current_image, image)
    if canary is not None:
        log.warning("a canary of version %s is in progress on %s: version %s replaces it",
                    canary, where, model_version)
    patch = canary_patch(
        existing, storage_uri=storage_uri, model_version=model_version, previous_version=champion,
        percent=canary_traffic_percent, started_at=datetime.now(UTC),
    )
    patch_inference_service(api, name, namespace, patch, f"start a canary on InferenceService {where}")
    revision = wait_for_new_revision(api, name, namespace, latest_created_revision(existing), revision_timeout)
    log.info("canary of model version %s on %s at %d%% in revision %s (champion: version %s)",
             model_version, where, canary_traffic_percent, revision, champion)
    return DeployResult("canary", name, namespace, model_version, storage_uri, canary_traffic_percent,
                        champion, revision)

