"""The Kubernetes manifests (`manifests/`), checked offline with the real tools.

There is no Kubernetes cluster here, so nothing is applied. Instead:

- every kustomization (base, dev, prod, and the prod-canary example) is rendered with the real
  `kubectl kustomize`;
- the core objects of each rendering are validated against the Kubernetes 1.32 OpenAPI schemas
  shipped by `kubernetes-validate` (strict: unknown fields fail). CRDs (InferenceService,
  PodMonitor, PrometheusRule) have no schema there;
- the InferenceService is checked field by field against KServe's own Python models (the
  `kserve` SDK's V1beta1* classes and the Kubernetes client's V1* classes they embed): unknown
  fields and wrong types fail, and the objects are built so the models' required-field checks run;
- the documented rollback and promotion commands are run with `kubectl patch --local` on the
  rendered InferenceService, exactly as an operator would type them (minus the cluster);
- security properties, RBAC scope, Secret handling, alert expressions (parsed with a PromQL
  parser) and the Grafana dashboard JSON are asserted on the rendered objects.

The checkov scan of the rendered manifests lives in test_terraform.py, beside the Terraform scan.
"""
from __future__ import annotations

import base64
import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from tooling import require_tool

REPO = Path(__file__).resolve().parents[2]
MANIFESTS = REPO / "manifests"
KUSTOMIZATIONS = {
    "base": MANIFESTS / "base",
    "dev": MANIFESTS / "overlays" / "dev",
    "prod": MANIFESTS / "overlays" / "prod",
    "prod-canary": MANIFESTS / "overlays" / "prod-canary",
}
NAMESPACE = "recsys"
# Kubernetes version whose schemas validate the core objects (kubernetes-validate ships it).
K8S_VERSION = "1.32.0"
CRD_KINDS = {"InferenceService", "PodMonitor", "PrometheusRule", "AuthorizationPolicy"}
# The Secrets the base references and never defines (created by the dev overlay or externally).
SECRETS = {
    "recsys-postgres": {"POSTGRES_USER", "POSTGRES_PASSWORD", "POSTGRES_DB"},
    "recsys-minio": {"MINIO_ROOT_USER", "MINIO_ROOT_PASSWORD"},
    "recsys-s3": {"AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY"},
    "recsys-feedback-db": {"FEEDBACK_DB_USER", "FEEDBACK_DB_PASSWORD", "FEEDBACK_DB_NAME"},
    "recsys-redis": {"REDIS_PASSWORD"},
    "recsys-tune-db": {"TUNE_DB_USER", "TUNE_DB_PASSWORD", "TUNE_DB_NAME"},
}
# The operator commands documented in manifests/README.md (the tests check they are there).
ROLLBACK_PATCH = '{"spec":{"predictor":{"canaryTrafficPercent":0}}}'
PROMOTE_PATCH = '{"spec":{"predictor":{"canaryTrafficPercent":null}}}'
ROLLBACK_CMD = f"kubectl patch isvc recsys -n recsys --type merge -p '{ROLLBACK_PATCH}'"
PROMOTE_CMD = f"kubectl patch isvc recsys -n recsys --type merge -p '{PROMOTE_PATCH}'"
IMAGE = "ghcr.io/recsys-mlops/recsys"


@pytest.fixture(scope="session")
def kubectl() -> str:
    return require_tool("kubectl", "needed for `kubectl kustomize` and `kubectl patch --local`")


def _kustomize(kubectl: str, path: Path) -> str:
    proc = subprocess.run(
        [kubectl, "kustomize", str(path)], check=False, capture_output=True, text=True, timeout=60
    )
    assert proc.returncode == 0, f"kubectl kustomize {path} failed:\n{proc.stderr}"
    return proc.stdout


@pytest.fixture(scope="session")
def rendered_dir(kubectl, tmp_path_factory) -> Path:
    """Each kustomization rendered once into <name>.yaml (what checkov and kubectl read)."""
    out = tmp_path_factory.mktemp("rendered")
    for name, path in KUSTOMIZATIONS.items():
        (out / f"{name}.yaml").write_text(_kustomize(kubectl, path))
    return out


@pytest.fixture(scope="session")
def rendered(rendered_dir) -> dict[str, list[dict]]:
    return {
        name: [doc for doc in yaml.safe_load_all((rendered_dir / f"{name}.yaml").read_text()) if doc]
        for name in KUSTOMIZATIONS
    }


def _one(docs: list[dict], kind: str, name: str) -> dict:
    found = [d for d in docs if d["kind"] == kind and d["metadata"]["name"] == name]
    assert len(found) == 1, f"expected one {kind}/{name}, found {len(found)}"
    return found[0]


def _isvc(docs: list[dict]) -> dict:
    return _one(docs, "InferenceService", "recsys")


def _pod_specs(docs: list[dict]):
    """(object label, pod spec) for every object that runs pods, the InferenceService included."""
    for doc in docs:
        kind, name = doc["kind"], doc["metadata"]["name"]
        if kind in {"Deployment", "StatefulSet", "Job"}:
            yield f"{kind}/{name}", doc["spec"]["template"]["spec"]
        elif kind == "CronJob":
            yield f"{kind}/{name}", doc["spec"]["jobTemplate"]["spec"]["template"]["spec"]
        elif kind == "InferenceService":
            yield f"{kind}/{name}", doc["spec"]["predictor"]


# --- rendering and schemas -------------------------------------------------------------------


@pytest.mark.parametrize("name", list(KUSTOMIZATIONS))
def test_kustomization_renders_into_the_namespace(rendered, name):
    docs = rendered[name]
    kinds = {d["kind"] for d in docs}
    assert {"InferenceService", "Deployment", "StatefulSet", "Service", "Role", "RoleBinding",
            "ServiceAccount", "NetworkPolicy", "PrometheusRule", "ConfigMap"} <= kinds
    for doc in docs:
        if doc["kind"] == "Namespace":
            assert doc["metadata"]["name"] == NAMESPACE
        else:
            assert doc["metadata"].get("namespace") == NAMESPACE, (
                f"{doc['kind']}/{doc['metadata']['name']} is not in namespace {NAMESPACE}"
            )


@pytest.mark.parametrize("name", list(KUSTOMIZATIONS))
def test_core_objects_match_the_kubernetes_schemas(rendered, name):
    import kubernetes_validate

    schemaless = set()
    for doc in rendered[name]:
        try:
            kubernetes_validate.validate(doc, K8S_VERSION, strict=True)
        except kubernetes_validate.SchemaNotFoundError:
            schemaless.add(doc["kind"])
        except kubernetes_validate.ValidationError as exc:
            pytest.fail(f"{doc['kind']}/{doc['metadata']['name']} ({name}): {exc}")
    # Only the CRDs may go unchecked here (the InferenceService is checked by KServe's models).
    assert schemaless <= CRD_KINDS, schemaless - CRD_KINDS


def test_schema_validation_catches_a_misspelt_field():
    import kubernetes_validate

    bad = {
        "apiVersion": "v1", "kind": "Pod", "metadata": {"name": "p"},
        "spec": {"containers": [{"name": "c", "image": "i", "resource": {}}]},
    }
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(bad, K8S_VERSION, strict=True)


# --- the InferenceService against KServe's models --------------------------------------------


def _model_class(name: str):
    import kserve.models
    import kubernetes.client.models

    for module in (kserve.models, kubernetes.client.models):
        if hasattr(module, name):
            return getattr(module, name)
    raise AssertionError(f"no model class {name}")


def _build(data, type_name: str, path: str, errors: list[str]):
    """Build the SDK object for `data` as `type_name`, recording every unknown field or wrong type.

    The generated SDK deserialisers silently drop unknown fields and coerce types (int("10")),
    so this walks the models' own `openapi_types`/`attribute_map` and is strict; building the
    objects then runs the models' client-side checks (required fields).
    """
    if data is None:
        return None
    if type_name.startswith("list["):
        if not isinstance(data, list):
            errors.append(f"{path}: expected a list, got {type(data).__name__}")
            return None
        return [_build(v, type_name[5:-1], f"{path}[{i}]", errors) for i, v in enumerate(data)]
    if type_name.startswith("dict("):
        if not isinstance(data, dict):
            errors.append(f"{path}: expected a map, got {type(data).__name__}")
            return None
        value_type = re.match(r"dict\(([^,]*), (.*)\)", type_name).group(2)
        # Quantities (resources) are strings in the SDK but the API also takes plain numbers.
        if path.endswith((".limits", ".requests")) and value_type == "str":
            value_type = "quantity"
        return {k: _build(v, value_type, f"{path}.{k}", errors) for k, v in data.items()}
    primitive = {
        "str": (str,), "int": (int,), "float": (int, float), "bool": (bool,),
        "quantity": (str, int, float), "datetime": (str,), "date": (str,),
    }
    if type_name in primitive:
        if not isinstance(data, primitive[type_name]) or (
            type_name in {"int", "float"} and isinstance(data, bool)
        ):
            errors.append(f"{path}: expected {type_name}, got {type(data).__name__} {data!r}")
        return data
    if type_name == "object":  # IntOrString and free-form fields
        return data
    klass = _model_class(type_name)
    if not isinstance(data, dict):
        errors.append(f"{path}: expected a {type_name} object, got {type(data).__name__}")
        return None
    by_json_name = {json_name: attr for attr, json_name in klass.attribute_map.items()}
    kwargs = {}
    for key, value in data.items():
        if key not in by_json_name:
            errors.append(f"{path}.{key}: unknown field of {type_name}")
            continue
        attr = by_json_name[key]
        kwargs[attr] = _build(value, klass.openapi_types[attr], f"{path}.{key}", errors)
    try:
        return klass(**kwargs)
    except ValueError as exc:  # the models' required-field / allowed-value checks
        errors.append(f"{path}: {exc}")
        return None


def kserve_errors(isvc: dict) -> list[str]:
    errors: list[str] = []
    obj = _build(isvc, "V1beta1InferenceService", "InferenceService", errors)
    if obj is not None and not errors:
        predictor = obj.spec.predictor
        # Rules KServe's admission webhook enforces that the generated models do not encode.
        if predictor.logger is not None and predictor.logger.mode not in {"all", "request", "response"}:
            errors.append(f"logger.mode {predictor.logger.mode!r} is not all/request/response")
        if predictor.scale_metric not in {None, "cpu", "memory", "concurrency", "rps"}:
            errors.append(f"scaleMetric {predictor.scale_metric!r} is not cpu/memory/concurrency/rps")
        if predictor.canary_traffic_percent is not None and not 0 <= predictor.canary_traffic_percent <= 100:
            errors.append("canaryTrafficPercent must be within 0..100")
        if (predictor.min_replicas or 0) > (predictor.max_replicas or 1 << 30):
            errors.append("minReplicas exceeds maxReplicas")
        for env in predictor.containers[0].env or []:
            if env.name == "PROTOCOL" and env.value not in {"v1", "v2"}:
                errors.append(f"PROTOCOL env {env.value!r} is not v1/v2")
    return errors


@pytest.mark.parametrize("name", list(KUSTOMIZATIONS))
def test_inferenceservice_matches_kserve_models(rendered, name):
    isvc = _isvc(rendered[name])
    assert isvc["apiVersion"] == "serving.kserve.io/v1beta1"
    assert kserve_errors(isvc) == []


@pytest.mark.parametrize(
    "mutate, expected",
    [
        (lambda p: p.__setitem__("minReplica", 1), "minReplica: unknown field"),
        (lambda p: p.__setitem__("minReplicas", "two"), "expected int"),
        (lambda p: p.__setitem__("canaryTrafficPercent", True), "expected int"),
        (lambda p: p["containers"][0].__setitem__("imagee", "x"), "imagee: unknown field"),
        (lambda p: p["containers"][0].pop("name"), "must not be `None`"),
        (lambda p: p["logger"].__setitem__("mode", "sometimes"), "logger.mode"),
        (lambda p: p.__setitem__("scaleMetric", "qps"), "scaleMetric"),
        (lambda p: p["containers"][0]["env"][1].__setitem__("value", "v3"), "PROTOCOL"),
    ],
    ids=["unknown-field", "wrong-type", "bool-for-int", "container-typo", "missing-name",
         "logger-mode", "scale-metric", "protocol"],
)
def test_kserve_validation_rejects_broken_inferenceservices(rendered, mutate, expected):
    isvc = json.loads(json.dumps(_isvc(rendered["base"])))
    mutate(isvc["spec"]["predictor"])
    errors = kserve_errors(isvc)
    assert any(expected in e for e in errors), errors


def _env(container: dict) -> dict[str, str]:
    return {e["name"]: e.get("value") for e in container.get("env", [])}


def test_inferenceservice_runs_the_project_predictor(rendered):
    isvc = _isvc(rendered["base"])
    assert isvc["metadata"]["annotations"]["serving.kserve.io/deploymentMode"] == "Serverless"
    predictor = isvc["spec"]["predictor"]
    assert predictor["serviceAccountName"] == "recsys-predictor"
    assert "canaryTrafficPercent" not in predictor
    (container,) = predictor["containers"]
    assert container["name"] == "kserve-container"
    assert container["image"] == f"{IMAGE}:0.1.0"
    assert container["command"] + container["args"] == [
        "python", "-m", "serving", "--model-dir", "/mnt/models", "--model-name", "recsys",
        "--http-port", "8080",
    ]
    env = _env(container)
    assert env["PROTOCOL"] == "v2"
    assert env["STORAGE_URI"].startswith("s3://")
    assert container["readinessProbe"]["httpGet"] == {"path": "/v2/health/ready", "port": 8080}
    assert container["livenessProbe"]["httpGet"] == {"path": "/v2/health/live", "port": 8080}
    assert predictor["logger"] == {"mode": "all", "url": "http://recsys-events.recsys.svc.cluster.local"}
    assert predictor["annotations"] == {
        "prometheus.io/scrape": "true", "prometheus.io/port": "8080", "prometheus.io/path": "/metrics",
    }
    assert {"minReplicas", "maxReplicas"} <= predictor.keys()
    mounts = {m["mountPath"]: m["name"] for m in container["volumeMounts"]}
    volumes = {v["name"]: v for v in predictor["volumes"]}
    assert "emptyDir" in volumes[mounts["/tmp"]]


def test_payload_logger_reaches_the_events_sink(rendered):
    docs = rendered["base"]
    url = _isvc(docs)["spec"]["predictor"]["logger"]["url"]
    host = url.removeprefix("http://").split("/")[0]
    service_name, namespace = host.split(".")[:2]
    assert namespace == NAMESPACE
    service = _one(docs, "Service", service_name)
    assert [p["port"] for p in service["spec"]["ports"]] == [80]
    deployment = _one(docs, "Deployment", service_name)
    assert deployment["spec"]["template"]["metadata"]["labels"].items() >= service["spec"]["selector"].items()
    (container,) = deployment["spec"]["template"]["spec"]["containers"]
    assert container["command"] == ["python", "-m", "serving.events"]


def test_overlays_size_the_predictor(rendered):
    dev = _isvc(rendered["dev"])["spec"]["predictor"]
    prod = _isvc(rendered["prod"])["spec"]["predictor"]
    assert dev["minReplicas"] == dev["maxReplicas"] == 1
    assert "canaryTrafficPercent" not in dev and "canaryTrafficPercent" not in prod
    assert prod["minReplicas"] >= 2 and prod["maxReplicas"] > prod["minReplicas"]
    assert prod["scaleMetric"] == "rps" and prod["scaleTarget"] > 0
    # The JSON patches changed resources without dropping the rest of the container.
    for predictor in (dev, prod):
        (container,) = predictor["containers"]
        assert container["image"].startswith(IMAGE) and container["readinessProbe"]
    canary = _isvc(rendered["prod-canary"])["spec"]["predictor"]
    assert canary["canaryTrafficPercent"] == 10
    assert _env(canary["containers"][0])["STORAGE_URI"] != _env(prod["containers"][0])["STORAGE_URI"]


def test_image_is_overridable_with_kustomize_images(kubectl, tmp_path):
    overlay = tmp_path / "release"
    overlay.mkdir()
    (overlay / "kustomization.yaml").write_text(yaml.safe_dump({
        "resources": [os.path.relpath(KUSTOMIZATIONS["prod"], overlay)],
        "images": [{"name": IMAGE, "newTag": "9.9.9"}],
    }))
    docs = [d for d in yaml.safe_load_all(_kustomize(kubectl, overlay)) if d]
    assert _isvc(docs)["spec"]["predictor"]["containers"][0]["image"] == f"{IMAGE}:9.9.9"
    events = _one(docs, "Deployment", "recsys-events")
    assert events["spec"]["template"]["spec"]["containers"][0]["image"] == f"{IMAGE}:9.9.9"


# --- the feedback loop: events on PostgreSQL, users' history in Redis ------------------------


def _container_env(container: dict) -> dict[str, dict]:
    return {e["name"]: e for e in container.get("env", [])}


def _expand(value: str, env: dict[str, dict], fake: dict[str, str]) -> str:
    """The kubelet's $(VAR) expansion, with each secret-backed variable replaced by `fake`."""
    def one(match: re.Match) -> str:
        ref = env[match.group(1)]["valueFrom"]["secretKeyRef"]
        return fake[f"{ref['name']}/{ref['key']}"]

    return re.sub(r"\$\(([A-Z_]+)\)", one, value)


FAKE = {"recsys-feedback-db/FEEDBACK_DB_USER": "u", "recsys-feedback-db/FEEDBACK_DB_PASSWORD": "p",
        "recsys-feedback-db/FEEDBACK_DB_NAME": "d", "recsys-redis/REDIS_PASSWORD": "r"}


@pytest.mark.parametrize("name", list(KUSTOMIZATIONS))
def test_events_store_in_postgresql_and_push_history_to_redis(rendered, name):
    from sqlalchemy.engine import make_url

    docs = rendered[name]
    deployment = _one(docs, "Deployment", "recsys-events")
    spec = deployment["spec"]["template"]["spec"]
    (container,) = spec["containers"]
    env = _container_env(container)
    store = make_url(_expand(env["RECSYS_FEEDBACK_STORE"]["value"], env, FAKE))
    assert (store.drivername, store.username, store.password, store.database) == (
        "postgresql+psycopg", "u", "p", "d")
    postgres = _one(docs, "Service", store.host)  # the manifests' own PostgreSQL
    assert store.port in [p["port"] for p in postgres["spec"]["ports"]]
    online = make_url(_expand(env["RECSYS_ONLINE_STORE"]["value"], env, FAKE))
    assert (online.drivername, online.password) == ("redis", "r")
    _one(docs, "Service", online.host)
    # No emptyDir holds events any more: only /tmp is writable.
    assert [m["mountPath"] for m in container["volumeMounts"]] == ["/tmp"]
    assert container["readinessProbe"]["httpGet"]["path"] == "/healthz"
    assert "--output-dir" not in container["args"]


def test_the_predictor_reads_the_history_lists_the_events_service_writes(rendered):
    from sqlalchemy.engine import make_url

    docs = rendered["base"]
    (predictor,) = _isvc(docs)["spec"]["predictor"]["containers"]
    env = _container_env(predictor)
    online = make_url(_expand(env["RECSYS_ONLINE_STORE"]["value"], env, FAKE))
    service_name, namespace = online.host.split(".")[:2]
    assert (online.drivername, online.password, namespace) == ("redis", "r", NAMESPACE)
    service = _one(docs, "Service", service_name)
    assert online.port == service["spec"]["ports"][0]["port"] == 6379
    redis = _one(docs, "Deployment", service_name)
    labels = redis["spec"]["template"]["metadata"]["labels"]
    assert labels.items() >= service["spec"]["selector"].items()
    (server,) = redis["spec"]["template"]["spec"]["containers"]
    args = server["args"]
    assert args[args.index("--requirepass") + 1] == "$(REDIS_PASSWORD)"
    assert _container_env(server)["REDIS_PASSWORD"]["valueFrom"]["secretKeyRef"] == {
        "name": "recsys-redis", "key": "REDIS_PASSWORD"}
    assert args[args.index("--save") + 1] == "" and args[args.index("--appendonly") + 1] == "no"
    # Only the events service and the predictor reach Redis.
    policy = _one(docs, "NetworkPolicy", "recsys-redis")
    assert policy["spec"]["podSelector"]["matchLabels"] == service["spec"]["selector"]
    sources = [f["podSelector"]["matchLabels"] for rule in policy["spec"]["ingress"]
               for f in rule["from"]]
    assert sources == [{"app.kubernetes.io/name": "recsys-events"},
                       {"serving.kserve.io/inferenceservice": "recsys"}]
    assert [p["port"] for rule in policy["spec"]["ingress"] for p in rule["ports"]] == [6379]
    postgres = _one(docs, "NetworkPolicy", "recsys-postgres")
    allowed = [f["podSelector"]["matchLabels"].get("app.kubernetes.io/name")
               for rule in postgres["spec"]["ingress"] for f in rule["from"] if "podSelector" in f]
    assert {"recsys-events", "recsys-feedback-db"} <= set(allowed)


def test_the_feedback_database_job_works_on_a_real_postgresql(rendered, postgres_url):
    """The Job's script, run by the real `psql` against the machine's PostgreSQL (as an admin,
    like the Job on the cluster): it creates the user and the database, a second run changes
    nothing but the password, and the events' store then works as that user."""
    import uuid

    from sqlalchemy.engine import make_url

    from components.feedback.feedback_store import FeedbackStore

    psql = require_tool("psql", "runs the feedback database Job's script")
    job = _one(rendered["base"], "Job", "recsys-feedback-db")
    (container,) = job["spec"]["template"]["spec"]["containers"]
    assert container["command"] == ["/bin/sh", "-c"]
    (script,) = container["args"]
    admin = make_url(postgres_url)
    name = f"feedback_{uuid.uuid4().hex[:10]}"
    env = {**os.environ, "PGHOST": admin.host, "PGPORT": str(admin.port or 5432),
           "PGUSER": admin.username, "PGDATABASE": admin.database, "FEEDBACK_DB_USER": name,
           "FEEDBACK_DB_NAME": name, "PATH": f"{Path(psql).parent}:{os.environ['PATH']}"}
    try:
        for password in ("first-password", "second-password"):  # applied twice: idempotent
            run = subprocess.run(["/bin/sh", "-c", script], capture_output=True, text=True,
                                 env=env | {"FEEDBACK_DB_PASSWORD": password}, timeout=60,
                                 check=False)
            assert run.returncode == 0, run.stderr
        owner_url = admin.set(username=name, password="second-password", database=name)
        with FeedbackStore(owner_url.render_as_string(hide_password=False)) as store:
            store.add_events([{"event_id": "e", "type": "like", "user_id": "u", "item_id": "i"}])
            assert store.read_events().event_id.tolist() == ["e"]
    finally:
        _drop_database_and_role(postgres_url, name)



def _drop_database_and_role(postgres_url: str, name: str) -> None:
    """What a database Job's script created under `name`, gone again."""
    import sqlalchemy as sa

    engine = sa.create_engine(postgres_url, isolation_level="AUTOCOMMIT")
    with engine.connect() as conn:
        conn.exec_driver_sql(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        conn.exec_driver_sql(f'DROP ROLE IF EXISTS "{name}"')
    engine.dispose()

def test_the_tune_steps_study_database_is_reachable_with_one_password(kubectl, rendered):
    """Parallel tuning (tune_trials and dask_workers > 0): the step (in kubeflow) and its Dask
    workers (in the product's namespace) open the Optuna study in the manifests' PostgreSQL
    with the tuning database's password: the Secret the pipeline names by default exists in
    both namespaces with the same dev password, and PostgreSQL admits the workers."""
    import inspect

    from components.release.dask_cluster import PASSWORD_KEY, cluster_spec
    from pipelines.pipeline import build_pipeline

    default = inspect.signature(build_pipeline().pipeline_func).parameters["tune_secret"].default
    (in_kubeflow,) = [d for d in yaml.safe_load_all(_kustomize(kubectl, MANIFESTS / "kubeflow"))
                      if d and d["metadata"]["name"] == default]
    assert in_kubeflow["metadata"]["namespace"] == "kubeflow"
    dev = _one(rendered["dev"], "Secret", default)["data"]
    assert in_kubeflow["data"][PASSWORD_KEY] == dev[PASSWORD_KEY]
    job = _one(rendered["base"], "Job", "recsys-tune-db")
    (container,) = job["spec"]["template"]["spec"]["containers"]
    refs = {e["name"]: e["valueFrom"]["secretKeyRef"] for e in container["env"] if "valueFrom" in e}
    assert refs["TUNE_DB_PASSWORD"] == {"name": default, "key": PASSWORD_KEY}
    policy = _one(rendered["base"], "NetworkPolicy", "recsys-postgres")
    sources = [f["podSelector"]["matchLabels"] for rule in policy["spec"]["ingress"]
               for f in rule["from"] if "podSelector" in f]
    worker = cluster_spec("t", "image", 2, "1", "1Gi")["spec"]["worker"]["spec"]
    labels = {"dask.org/component": "worker"}  # what dask-kubernetes puts on worker pods
    assert labels in sources and {"app.kubernetes.io/name": "recsys-tune-db"} in sources
    assert worker["containers"][0]["name"] == "worker"


def test_the_tune_database_job_makes_a_database_optuna_can_keep_a_study_in(rendered, postgres_url):
    """The Job's script, run by the real `psql` as an admin against the machine's PostgreSQL:
    it creates the tuning user and database, and an Optuna study then lives there as that user."""
    import uuid

    import optuna
    from sqlalchemy.engine import make_url

    psql = require_tool("psql", "runs the tuning database Job's script")
    (container,) = _one(rendered["base"], "Job", "recsys-tune-db")["spec"]["template"]["spec"]["containers"]
    (script,) = container["args"]
    admin = make_url(postgres_url)
    name = f"optuna_{uuid.uuid4().hex[:10]}"
    env = {**os.environ, "PGHOST": admin.host, "PGPORT": str(admin.port or 5432),
           "PGUSER": admin.username, "PGDATABASE": admin.database, "TUNE_DB_USER": name,
           "TUNE_DB_NAME": name, "TUNE_DB_PASSWORD": "tune-password",
           "PATH": f"{Path(psql).parent}:{os.environ['PATH']}"}
    try:
        run = subprocess.run(["/bin/sh", "-c", script], capture_output=True, text=True, env=env,
                             timeout=60, check=False)
        assert run.returncode == 0, run.stderr
        url = admin.set(username=name, password="tune-password", database=name)
        storage = url.render_as_string(hide_password=False)
        study = optuna.create_study(study_name="s", storage=storage)
        study.optimize(lambda t: t.suggest_float("x", 0, 1), n_trials=2)
        assert len(optuna.load_study(study_name="s", storage=storage).trials) == 2
    finally:
        _drop_database_and_role(postgres_url, name)


# --- rollout commands --------------------------------------------------------------------------


def _patch_local(kubectl: str, path: Path, patch: str) -> dict:
    proc = subprocess.run(
        [kubectl, "patch", "--local", "-f", str(path), "--type", "merge", "-p", patch, "-o", "yaml"],
        check=False, capture_output=True, text=True, timeout=60,
    )
    assert proc.returncode == 0, proc.stderr
    return yaml.safe_load(proc.stdout)


@pytest.fixture
def canary_isvc_file(rendered, tmp_path) -> Path:
    path = tmp_path / "isvc.yaml"
    path.write_text(yaml.safe_dump(_isvc(rendered["prod-canary"])))
    return path


def test_readme_documents_the_exact_rollout_commands():
    readme = (MANIFESTS / "README.md").read_text()
    assert ROLLBACK_CMD in readme
    assert PROMOTE_CMD in readme
    for column in ("URL", "READY", "PREV", "LATEST", "PREVROLLEDOUTREVISION", "LATESTREADYREVISION"):
        assert column in readme


def test_rollback_patch_pins_all_traffic_to_the_champion(kubectl, canary_isvc_file):
    patched = _patch_local(kubectl, canary_isvc_file, ROLLBACK_PATCH)
    predictor = patched["spec"]["predictor"]
    assert predictor["canaryTrafficPercent"] == 0
    # Nothing else changes: the canary revision stays deployed (for inspection) with no traffic.
    original = yaml.safe_load(canary_isvc_file.read_text())["spec"]["predictor"]
    assert {k: v for k, v in predictor.items() if k != "canaryTrafficPercent"} == {
        k: v for k, v in original.items() if k != "canaryTrafficPercent"
    }
    assert kserve_errors(patched) == []


def test_promotion_patch_removes_the_canary_split(kubectl, canary_isvc_file):
    patched = _patch_local(kubectl, canary_isvc_file, PROMOTE_PATCH)
    predictor = patched["spec"]["predictor"]
    # A merge patch with null deletes the field: KServe then routes 100% to the latest revision.
    assert "canaryTrafficPercent" not in predictor
    assert _env(predictor["containers"][0])["STORAGE_URI"].endswith("/candidate")
    assert kserve_errors(patched) == []


# --- security ----------------------------------------------------------------------------------


@pytest.mark.parametrize("name", list(KUSTOMIZATIONS))
def test_every_container_is_locked_down_and_bounded(rendered, name):
    checked = 0
    for label, spec in _pod_specs(rendered[name]):
        pod_sc = spec.get("securityContext", {})
        assert pod_sc.get("runAsNonRoot") is True, f"{label}: pod runAsNonRoot"
        assert pod_sc.get("seccompProfile", {}).get("type") == "RuntimeDefault", label
        for container in spec.get("initContainers", []) + spec["containers"]:
            where = f"{label}/{container['name']}"
            resources = container.get("resources", {})
            assert {"cpu", "memory"} <= resources.get("limits", {}).keys(), f"{where}: limits"
            assert {"cpu", "memory"} <= resources.get("requests", {}).keys(), f"{where}: requests"
            sc = container.get("securityContext", {})
            assert sc.get("runAsNonRoot", pod_sc.get("runAsNonRoot")) is True, where
            assert (sc.get("runAsUser", pod_sc.get("runAsUser")) or 0) > 0, f"{where}: runs as root"
            assert sc.get("allowPrivilegeEscalation") is False, where
            assert sc.get("readOnlyRootFilesystem") is True, where
            assert sc.get("capabilities", {}).get("drop") == ["ALL"], where
            assert not sc.get("privileged", False), where
            checked += 1
    assert checked >= 6


def test_predictor_security_context_is_as_specified(rendered):
    (container,) = _isvc(rendered["base"])["spec"]["predictor"]["containers"]
    assert container["securityContext"] == {
        "runAsNonRoot": True, "runAsUser": 1000, "readOnlyRootFilesystem": True,
        "allowPrivilegeEscalation": False, "capabilities": {"drop": ["ALL"]},
        "seccompProfile": {"type": "RuntimeDefault"},
    }


def test_deployer_role_grants_only_inferenceservice_verbs(rendered):
    docs = rendered["base"]
    assert not [d for d in docs if d["kind"] in {"ClusterRole", "ClusterRoleBinding"}]
    roles = {d["metadata"]["name"]: d for d in docs if d["kind"] == "Role"}
    assert sorted(roles) == ["recsys-console", "recsys-dask", "recsys-deployer"]
    assert roles["recsys-deployer"]["rules"] == [{
        "apiGroups": ["serving.kserve.io"],
        "resources": ["inferenceservices"],
        "verbs": ["get", "list", "watch", "create", "patch", "update"],
    }]
    binding = _one(docs, "RoleBinding", "recsys-deployer")
    assert binding["roleRef"] == {"apiGroup": "rbac.authorization.k8s.io", "kind": "Role", "name": "recsys-deployer"}
    assert binding["subjects"] == [
        {"kind": "ServiceAccount", "name": "recsys-deployer", "namespace": NAMESPACE},
        # The deploy step runs in KFP's pods, as KFP's default runner account.
        {"kind": "ServiceAccount", "name": "pipeline-runner", "namespace": "kubeflow"},
    ]
    _one(docs, "ServiceAccount", "recsys-deployer")


def test_console_reads_the_inferenceservice_and_changes_nothing(rendered):
    docs = rendered["base"]
    assert _one(docs, "Role", "recsys-console")["rules"] == [{
        "apiGroups": ["serving.kserve.io"], "resources": ["inferenceservices"],
        "verbs": ["get", "list", "watch"]}]
    binding = _one(docs, "RoleBinding", "recsys-console")
    assert binding["subjects"] == [
        {"kind": "ServiceAccount", "name": "recsys-console", "namespace": NAMESPACE}]
    deployment = _one(docs, "Deployment", "recsys-console")
    spec = deployment["spec"]["template"]["spec"]
    assert spec["serviceAccountName"] == "recsys-console"
    (container,) = spec["containers"]
    assert container["command"] == ["recsys", "console"]
    assert {"--read-only", "--target=cluster", "--host=0.0.0.0", "--port=8088"} <= set(container["args"])
    for probe in ("readinessProbe", "livenessProbe"):
        assert container[probe]["httpGet"] == {"path": "/healthz", "port": "http"}
    service = _one(docs, "Service", "recsys-console")
    assert service["spec"]["ports"][0]["targetPort"] == "http"
    # The console answers only Host names it is told of: the Service's own DNS names must be
    # among them, or a pod reaching it by name gets a 400.
    from serving.console.app import HostCheck

    allowed = HostCheck([a.split("=", 1)[1] for a in container["args"]
                         if a.startswith("--allowed-host=")])
    name = service["metadata"]["name"]
    for host in (name, f"{name}.{NAMESPACE}", f"{name}.{NAMESPACE}.svc.cluster.local:8088"):
        assert allowed(host), host
    assert not allowed("rebound.example.com")
    # The paths it needs are open: to the events service and to PostgreSQL (feedback store).
    for name, target in (("recsys-events-from-console", "recsys-events"),
                         ("recsys-postgres-from-console", "recsys-postgres")):
        policy = _one(docs, "NetworkPolicy", name)["spec"]
        assert policy["podSelector"]["matchLabels"] == {"app.kubernetes.io/name": target}
        assert policy["ingress"][0]["from"] == [
            {"podSelector": {"matchLabels": {"app.kubernetes.io/name": "recsys-console"}}}]
def test_dask_role_lets_the_train_step_create_and_delete_only_daskclusters(rendered):
    """A distributed fit's train step (KFP's pipeline-runner) creates one DaskCluster for its
    ranker and deletes it afterwards; the operator makes the pods, so nothing else is granted."""
    docs = rendered["base"]
    assert _one(docs, "Role", "recsys-dask")["rules"] == [{
        "apiGroups": ["kubernetes.dask.org"],
        "resources": ["daskclusters"],
        "verbs": ["get", "list", "watch", "create", "delete"],
    }]
    binding = _one(docs, "RoleBinding", "recsys-dask")
    assert binding["roleRef"]["name"] == "recsys-dask"
    assert binding["subjects"] == [{"kind": "ServiceAccount", "name": "pipeline-runner", "namespace": "kubeflow"}]


def _selects(selector: dict, labels: dict) -> bool:
    """A Kubernetes label selector (matchLabels, matchExpressions with In / NotIn / Exists /
    DoesNotExist) against a set of labels; {} selects everything."""
    if not labels.items() >= selector.get("matchLabels", {}).items():
        return False
    for expr in selector.get("matchExpressions", []):
        key, op, values = expr["key"], expr["operator"], expr.get("values", [])
        present = key in labels
        holds = {"In": present and labels[key] in values,
                 "NotIn": not present or labels[key] not in values,
                 "Exists": present, "DoesNotExist": not present}[op]
        if not holds:
            return False
    return True


def _admitted(policies: list[dict], pod: dict, source: dict, port: int) -> bool:
    """Whether the NetworkPolicies of the product's namespace let `source` (labels, namespace)
    open a TCP connection to `pod` (labels) on `port`, as Kubernetes reads them: the union of
    the ingress rules of every policy that selects the pod (none selecting it: open)."""
    selecting = [p["spec"] for p in policies if _selects(p["spec"]["podSelector"], pod["labels"])]
    if not selecting:
        return True
    namespace_labels = {"kubernetes.io/metadata.name": source["namespace"]}
    for spec in selecting:
        for rule in spec.get("ingress", []):
            ports = rule.get("ports")
            if ports and not any(p.get("port") in (None, port) for p in ports):
                continue
            for peer in rule.get("from", []):
                if "namespaceSelector" in peer:
                    in_namespace = _selects(peer["namespaceSelector"], namespace_labels)
                else:  # a podSelector alone: this namespace's pods (an ipBlock: none here)
                    in_namespace = "podSelector" in peer and source["namespace"] == NAMESPACE
                if in_namespace and _selects(peer.get("podSelector", {}), source["labels"]):
                    return True
    return False


def test_a_pipelines_dask_cluster_can_start_and_be_driven_under_the_network_policies(rendered):
    """A distributed train or tune step creates a DaskCluster in the product's namespace, where
    ingress is denied by default. The scheduler and worker pods, labelled by the operator's own
    code from the spec the step sends (no cluster here: the operator's pod builders and the
    policies are read as data), must reach each other (workers on ports of their choosing),
    and the step must reach them from KFP's namespace; other pods must not."""
    import json

    from dask_kubernetes.operator.controller.controller import (
        build_scheduler_deployment_spec,
        build_worker_deployment_spec,
    )

    from components.release.dask_cluster import SCHEDULER_PORT, cluster_spec

    # The API server drops null fields before the operator reads the resource.
    spec = json.loads(json.dumps(cluster_spec("run-1", "image", 2, "1", "1Gi")["spec"]),
                      object_hook=lambda d: {k: v for k, v in d.items() if v is not None})
    scheduler = build_scheduler_deployment_spec("run-1", spec["scheduler"]["spec"], {}, {})
    worker = build_worker_deployment_spec("default", NAMESPACE, "run-1", "a1b2",
                                          spec["worker"]["spec"], {}, {})
    pods = {name: {"labels": d["spec"]["template"]["metadata"]["labels"], "namespace": NAMESPACE}
            for name, d in (("scheduler", scheduler), ("worker", worker))}
    step = {"labels": {"pipelines.kubeflow.org/v2_component": "true"}, "namespace": "kubeflow"}
    outsider = {"labels": {"app": "other"}, "namespace": "default"}
    console = {"labels": {"app.kubernetes.io/name": "recsys-console"}, "namespace": NAMESPACE}
    policies = [d for d in rendered["base"] if d["kind"] == "NetworkPolicy"]
    some_port = 40_123  # a worker's listening port (dask-worker picks one)
    assert _admitted(policies, pods["scheduler"], pods["worker"], SCHEDULER_PORT)
    assert _admitted(policies, pods["scheduler"], step, SCHEDULER_PORT)
    assert _admitted(policies, pods["worker"], pods["scheduler"], some_port)
    assert _admitted(policies, pods["worker"], pods["worker"], some_port)
    assert _admitted(policies, pods["worker"], step, some_port)
    for pod in pods.values():
        assert not _admitted(policies, pod, outsider, SCHEDULER_PORT)
        assert not _admitted(policies, pod, console, some_port)
    # The default policy still applies to the namespace's other pods.
    assert not _admitted(policies, console, outsider, 8088)


def _secret_references(docs: list[dict]) -> dict[str, set[str]]:
    """Secret name -> keys referenced (empty set for whole-Secret references)."""
    refs: dict[str, set[str]] = {}
    for _, spec in _pod_specs(docs):
        for container in spec.get("initContainers", []) + spec["containers"]:
            for source in container.get("envFrom", []):
                if "secretRef" in source:
                    refs.setdefault(source["secretRef"]["name"], set())
            for env in container.get("env", []):
                ref = env.get("valueFrom", {}).get("secretKeyRef")
                if ref:
                    refs.setdefault(ref["name"], set()).add(ref["key"])
        for volume in spec.get("volumes", []):
            if "secret" in volume:
                keys = {item["key"] for item in volume["secret"].get("items", [])}
                refs.setdefault(volume["secret"]["secretName"], set()).update(keys)
    for doc in docs:
        if doc["kind"] == "ServiceAccount":
            for secret in doc.get("secrets", []):
                refs.setdefault(secret["name"], set())
    return refs


@pytest.mark.parametrize("name", ["base", "prod"])
def test_base_and_prod_define_no_secret_values(rendered, name):
    docs = rendered[name]
    for doc in docs:
        if doc["kind"] == "Secret":
            assert not doc.get("data") and not doc.get("stringData"), doc["metadata"]["name"]
    refs = _secret_references(docs)
    assert refs.keys() == SECRETS.keys()
    for secret, keys in refs.items():
        assert keys <= SECRETS[secret], (secret, keys - SECRETS[secret])


def test_dev_generates_every_referenced_secret_with_fake_values(rendered):
    docs = rendered["dev"]
    secrets = {d["metadata"]["name"]: d for d in docs if d["kind"] == "Secret"}
    assert secrets.keys() == SECRETS.keys()
    for name, keys in SECRETS.items():
        data = {k: base64.b64decode(v).decode() for k, v in secrets[name]["data"].items()}
        assert data.keys() == keys
    passwords = [
        base64.b64decode(v).decode()
        for s in secrets.values() for k, v in s["data"].items() if "PASSWORD" in k or "SECRET" in k
    ]
    assert passwords and all("dev-only" in p for p in passwords)
    s3 = secrets["recsys-s3"]["metadata"]["annotations"]
    assert s3["serving.kserve.io/s3-endpoint"].startswith("recsys-minio.recsys.svc")


def test_pipeline_runs_get_the_data_source_secret_for_the_manifests_minio(kubectl, rendered):
    """manifests/kubeflow: the Secret the pipeline's fingerprint and ingest steps mount (by the
    name the pipeline defaults to), in the namespace Kubeflow runs steps in, pointing at the
    base's MinIO with the dev key; MinIO admits that namespace and has the data bucket."""
    import inspect

    from pipelines.pipeline import DATA_SECRET_KEYS, build_pipeline

    default_name = inspect.signature(build_pipeline().pipeline_func).parameters["data_secret"].default
    (secret,) = [d for d in yaml.safe_load_all(_kustomize(kubectl, MANIFESTS / "kubeflow"))
                 if d and d["metadata"]["name"] == default_name]
    assert secret["kind"] == "Secret" and secret["metadata"]["name"] == default_name
    assert secret["metadata"]["namespace"] == "kubeflow"
    data = {k: base64.b64decode(v).decode() for k, v in secret["data"].items()}
    assert data.keys() <= set(DATA_SECRET_KEYS)
    dev_s3 = _one(rendered["dev"], "Secret", "recsys-s3")["data"]
    assert data["AWS_ACCESS_KEY_ID"] == base64.b64decode(dev_s3["AWS_ACCESS_KEY_ID"]).decode()
    assert "dev-only" in data["AWS_SECRET_ACCESS_KEY"]
    service = _one(rendered["base"], "Service", "recsys-minio")
    port = service["spec"]["ports"][0]["port"]
    assert data["AWS_ENDPOINT_URL"] == f"http://recsys-minio.{NAMESPACE}.svc.cluster.local:{port}"
    policy = _one(rendered["base"], "NetworkPolicy", "recsys-minio")
    sources = policy["spec"]["ingress"][0]["from"]
    assert {"namespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name": "kubeflow"}}} in sources
    job = _one(rendered["base"], "Job", "recsys-minio-bucket")
    assert "mb --ignore-existing store/recsys-data" in " ".join(job["spec"]["template"]["spec"]["containers"][0]["args"])


def test_network_policies_deny_by_default_and_cover_every_workload(rendered):
    docs = rendered["base"]
    policies = [d for d in docs if d["kind"] == "NetworkPolicy"]
    default = _one(docs, "NetworkPolicy", "default-deny-ingress")
    assert default["spec"] == {"podSelector": {}, "policyTypes": ["Ingress"]}
    selectors = [p["spec"]["podSelector"] for p in policies if p is not default]
    assert {} not in selectors  # only the default policy selects every pod
    for doc in docs:
        if doc["kind"] in {"Deployment", "StatefulSet"}:
            labels = doc["spec"]["template"]["metadata"]["labels"]
            assert any(_selects(sel, labels) for sel in selectors), doc["metadata"]["name"]
    assert {"matchLabels": {"serving.kserve.io/inferenceservice": "recsys"}} in selectors


def test_authorization_policies_guard_the_services_without_authentication(rendered):
    """The predictor and the events sink have no authentication of their own: the mesh's
    policies name who may call what. (No cluster here: the policies are checked as data.)"""
    for name in KUSTOMIZATIONS:
        docs = rendered[name]
        allow = _one(docs, "AuthorizationPolicy", "recsys-predictor")
        assert allow["apiVersion"] == "security.istio.io/v1" and allow["spec"]["action"] == "ALLOW"
        assert allow["spec"]["selector"]["matchLabels"] == {"serving.kserve.io/inferenceservice": "recsys"}
        for rule in allow["spec"]["rules"]:
            assert rule["from"] and all(s["source"] for s in rule["from"])  # never "anyone"
            paths = [p for op in rule["to"] for p in op["operation"]["paths"]]
            assert paths and not any(p.startswith("/v2/repository") or p == "*" for p in paths)
        deny = _one(docs, "AuthorizationPolicy", "recsys-predictor-deny-admin")
        assert deny["spec"]["action"] == "DENY"
        denied = deny["spec"]["rules"][0]["to"][0]["operation"]["paths"]
        assert "/v2/repository/*" in denied and any("RepositoryModel" in p for p in denied)
        events = _one(docs, "AuthorizationPolicy", "recsys-events")
        principals = [s["source"].get("principals") for r in events["spec"]["rules"] for s in r["from"]]
        assert ["cluster.local/ns/recsys/sa/recsys-predictor"] in principals
        predictor_sa = _isvc(docs)["spec"]["predictor"]["serviceAccountName"]
        assert principals[0] == [f"cluster.local/ns/{NAMESPACE}/sa/{predictor_sa}"]
        # The payload logger's path is the predictor's alone; feedback comes from the namespace.
        logger_rule, feedback_rule = events["spec"]["rules"][:2]
        assert logger_rule["to"][0]["operation"]["paths"] == ["/"]
        assert feedback_rule["to"][0]["operation"]["paths"] == ["/v1/events"]
        assert NAMESPACE in feedback_rule["from"][0]["source"]["namespaces"]
        console = _one(docs, "AuthorizationPolicy", "recsys-console")["spec"]
        assert console["selector"]["matchLabels"] == {"app.kubernetes.io/name": "recsys-console"}
        assert all(s["source"] for r in console["rules"] for s in r["from"])  # never "anyone"


# --- monitoring --------------------------------------------------------------------------------


def _metric_names_in(expr: str) -> set[str]:
    return set(re.findall(r"\b(recsys_[a-z_]+|request_predict_seconds_[a-z]+)\b", expr))


def test_alert_rules_parse_and_cover_the_required_alerts(rendered):
    import promql_parser

    rule = _one(rendered["base"], "PrometheusRule", "recsys")
    rules = [r for group in rule["spec"]["groups"] for r in group["rules"]]
    for r in rules:
        promql_parser.parse(r["expr"])  # raises on a syntax error
    alerts = {r["alert"]: r for r in rules if "alert" in r}
    assert {"RecsysPredictorErrorRateHigh", "RecsysPredictorLatencyP99High",
            "RecsysCanaryErrorRateAboveChampion"} <= alerts.keys()
    assert "serving_knative_dev_revision" in alerts["RecsysCanaryErrorRateAboveChampion"]["expr"] or any(
        "serving_knative_dev_revision" in r["expr"] for r in rules if "record" in r
    )
    for alert in alerts.values():
        assert alert["labels"]["severity"] in {"warning", "critical"}
        assert alert["annotations"]["summary"]


def test_alerts_use_metrics_the_predictor_exports(rendered):
    """The recsys_* names in the rules must be counters/gauges that serving.metrics defines, or
    series the drift check pushes to the Pushgateway (components.monitoring.monitor_metrics)."""
    from prometheus_client import Counter, Gauge

    import serving.metrics
    from components.monitoring.monitor import Decision
    from components.monitoring.monitor_metrics import decision_registry

    exported = set()
    for value in vars(serving.metrics).values():
        if isinstance(value, Counter):
            exported.add(f"{value._name}_total")
        elif isinstance(value, Gauge):
            exported.add(value._name)
    decision = Decision("retrain", ["drift"], {"events.item_popularity": {"p_value": 0.001, "drift": True}},
                        [], "v1", 1e9, {"rows": {"events": 1000}, "model_age_days": 3.0})
    exported |= {family.name for family in decision_registry(decision, "recsys").collect()}
    rule = _one(rendered["base"], "PrometheusRule", "recsys")
    used = set()
    for group in rule["spec"]["groups"]:
        for r in group["rules"]:
            used |= {m for m in _metric_names_in(r["expr"]) if m.startswith("recsys_")}
    assert used and used <= exported, used - exported


def test_grafana_dashboard_is_valid_json_with_parsable_queries(rendered):
    import promql_parser

    config_map = _one(rendered["base"], "ConfigMap", "recsys-grafana-dashboard")
    assert config_map["metadata"]["labels"]["grafana_dashboard"] == "1"
    (content,) = config_map["data"].values()
    dashboard = json.loads(content)
    assert dashboard["uid"] and dashboard["panels"]
    for panel in dashboard["panels"]:
        for target in panel["targets"]:
            promql_parser.parse(target["expr"].replace("$namespace", NAMESPACE))
    titles = {panel["title"] for panel in dashboard["panels"]}
    assert {"Last drift check", "Drift p-value by feature", "Features drifting"} <= titles


def test_the_drift_check_has_alerts_a_pushgateway_and_a_scrape(rendered):
    docs = rendered["base"]
    rule = _one(docs, "PrometheusRule", "recsys")
    alerts = {r["alert"]: r for g in rule["spec"]["groups"] for r in g["rules"] if "alert" in r}
    assert {"RecsysRetrainingRecommended", "RecsysFeatureDrift", "RecsysDriftCheckStale"} <= alerts.keys()
    assert "recsys_monitoring_retrain" in alerts["RecsysRetrainingRecommended"]["expr"]
    gateway = _one(docs, "Deployment", "recsys-pushgateway")
    port = gateway["spec"]["template"]["spec"]["containers"][0]["ports"][0]
    assert port["containerPort"] == 9091
    service = _one(docs, "Service", "recsys-pushgateway")
    assert service["spec"]["ports"][0]["port"] == 9091
    monitor = _one(docs, "PodMonitor", "recsys-pushgateway")
    assert monitor["spec"]["podMetricsEndpoints"][0]["honorLabels"] is True
    policy = _one(docs, "NetworkPolicy", "recsys-pushgateway")
    sources = [s.get("namespaceSelector", {}).get("matchLabels", {}) for s in policy["spec"]["ingress"][0]["from"]]
    assert {"kubernetes.io/metadata.name": "kubeflow"} in sources


def test_podmonitor_selects_the_predictor_and_keeps_the_revision_label(rendered):
    monitor = _one(rendered["base"], "PodMonitor", "recsys-predictor")
    assert monitor["spec"]["selector"]["matchLabels"] == {"serving.kserve.io/inferenceservice": "recsys"}
    assert "serving.knative.dev/revision" in monitor["spec"]["podTargetLabels"]


def test_the_deploy_steps_own_inferenceservice_matches_kserve_models():
    """The object the pipeline's deploy step creates when none exists passes the same check."""
    from components.release.kube_deploy import build_inference_service

    isvc = build_inference_service(name="recsys", namespace=NAMESPACE, image=IMAGE + ":0.1.0",
                                   storage_uri="s3://mlflow/artifacts/1/abc/artifacts/model",
                                   model_version="1")
    assert kserve_errors(isvc) == []


def test_the_rollout_cronjob_runs_the_analysis_as_the_deployer(rendered, monkeypatch):
    """Every few minutes, `recsys rollout analyze --auto` on the cluster, with the deployer's
    rights (which are what promote and rollback need), reaching what the command reads."""
    from pipelines.cli.main import build_parser

    docs = rendered["base"]
    cron = _one(docs, "CronJob", "recsys-rollout-analyze")
    assert cron["spec"]["concurrencyPolicy"] == "Forbid"
    minutes = cron["spec"]["schedule"].split()[0]
    assert minutes.startswith("*/") and int(minutes[2:]) <= 10
    pod = cron["spec"]["jobTemplate"]["spec"]["template"]["spec"]
    assert pod["serviceAccountName"] == "recsys-deployer"
    binding = _one(docs, "RoleBinding", "recsys-deployer")
    assert {"kind": "ServiceAccount", "name": "recsys-deployer", "namespace": NAMESPACE} in binding["subjects"]
    rule = _one(docs, "Role", "recsys-deployer")["rules"][0]
    assert {"get", "patch"} <= set(rule["verbs"]) and rule["resources"] == ["inferenceservices"]
    (container,) = pod["containers"]
    env = {e["name"]: e.get("value") for e in container["env"]}
    for name in ("RECSYS_FEEDBACK_STORE", "MLFLOW_TRACKING_URI", "PROMETHEUS_URL"):
        monkeypatch.setenv(name, env[name])
    # The command line parses with the real CLI; its defaults come from that environment.
    args = build_parser().parse_args([*container["command"][1:], *container["args"]])
    assert (args.rollout_command, args.auto, args.target) == ("analyze", True, "cluster")
    assert args.tracking_uri == env["MLFLOW_TRACKING_URI"] and args.prometheus == env["PROMETHEUS_URL"]
    assert env["RECSYS_FEEDBACK_STORE"].startswith("postgresql+psycopg://$(DB_USER):$(DB_PASSWORD)@")
    host = env["MLFLOW_TRACKING_URI"].split("//")[1].split(".")[0]
    assert _one(docs, "Service", host)
    # PostgreSQL's ingress admits the job (the default policy denies everything else).
    admitted = [p for p in docs if p["kind"] == "NetworkPolicy"
                and p["spec"]["podSelector"].get("matchLabels", {}).get("app.kubernetes.io/name") == "recsys-postgres"
                and any(f.get("podSelector", {}).get("matchLabels") == {"app.kubernetes.io/name": "recsys-rollout-analyze"}
                        for rule in p["spec"].get("ingress", []) for f in rule.get("from", []))]
    assert admitted
