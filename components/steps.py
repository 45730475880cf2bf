"""The pipeline's steps as plain functions over files: what each KFP component calls.

Each step reads its inputs from paths, writes its outputs to paths and returns small values
(strings, dicts). The KFP wrappers in `kfp_components` are a few lines around these, so the
logic is tested without KFP, and `recsys fit` reuses the same functions.
"""
from __future__ import annotations

import json
import logging
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

import pandas as pd
import yaml

from components.config import Config, config_from_dict, config_to_dict

T = TypeVar("T")

log = logging.getLogger("recsys")
if not log.handlers and not logging.getLogger().handlers:
    # KFP runs each step in a fresh interpreter: without a handler its progress would be lost.
    _handler = logging.StreamHandler()
    _handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(message)s", "%H:%M:%S"))
    log.addHandler(_handler)
    log.setLevel(logging.INFO)


def parse_config(config_yaml: str) -> Config:
    """Configs travel between steps as YAML text (a pipeline parameter); empty means defaults."""
    return config_from_dict(yaml.safe_load(config_yaml or "") or {}, source="config")


def _write_frame(frame: pd.DataFrame | None, path: str | Path) -> None:
    frame = frame if frame is not None else pd.DataFrame({"item_id": pd.Series([], dtype=str)})
    # Raw columns can mix types; strings keep every value as the file had it, and a missing value
    # stays missing (not the text "nan", which validation would take for an id or a title).
    frame = frame.apply(lambda c: c.where(c.isna(), c.astype(str)) if c.dtype == object else c)
    frame.to_parquet(path, index=False)


def _read_items(path: str | Path) -> pd.DataFrame | None:
    frame = pd.read_parquet(path)
    return None if frame.empty else frame


def retry_transient(call: Callable[[], T], *, attempts: int = 3, first_delay: float = 5.0,
                    sleep: Callable[[float], None] = time.sleep) -> T:
    """`call()`, tried again (after 5 s, then 10 s) when it fails with an error nobody wrote for
    the user (a connection dropped mid-read, an OSError from a store), and not on a RecsysError:
    those say what is wrong with the data, the config or the source (no such bucket, not UTF-8,
    a bad column), which is the same on every try and should be read at once. The clients
    underneath (boto3, psycopg, DVC) retry their own transient errors first. Kubeflow's retry
    policy cannot tell the two kinds apart, so the steps that read a source retry here."""
    from components.errors import RecsysError

    for attempt in range(1, attempts + 1):
        try:
            return call()
        except Exception as exc:
            if isinstance(exc, RecsysError) or attempt == attempts:
                raise
            delay = first_delay * 2 ** (attempt - 1)
            log.warning("attempt %d of %d failed (%s: %s); trying again in %.0fs",
                        attempt, attempts, type(exc).__name__, exc, delay)
            sleep(delay)
    raise AssertionError("unreachable")


def fingerprint_source(
    source: str,
    items: str,
    *,
    synthetic_users: int = 1_000,
    synthetic_items: int = 500,
    synthetic_interactions: int = 50_000,
    seed: int = 42,
    data_version: str = "",
    feedback: str = "",
    columns: str = "",
) -> str:
    """The source's content hash (see `data.source_fingerprint`), and the feedback's when
    training adds it; a missing, unreachable or forbidden source fails here, in one line.
    A column mapping (`data.parse_columns`) is part of the hash: it changes what is read."""
    from components.data.ingest import parse_columns, source_fingerprint
    from components.data.sources import is_remote, open_source

    digest = retry_transient(lambda: source_fingerprint(
        source, items or None, synthetic_users=synthetic_users, synthetic_items=synthetic_items,
        synthetic_interactions=synthetic_interactions, seed=seed, data_version=data_version,
    ))
    if parse_columns(columns):  # checked here, the pipeline's first step
        import hashlib

        digest = hashlib.sha256(f"{digest}:columns={columns}".encode()).hexdigest()[:16]
    if feedback:
        digest = _with_feedback_fingerprint(digest, feedback)
    shown = open_source(source).url if is_remote(source) else source
    log.info("source %s fingerprint %s", shown, digest)
    return digest


def _with_feedback_fingerprint(digest: str, feedback: str) -> str:
    """Kubeflow caches on parameters: the feedback's events (every accepted one) join the hash,
    so new events re-run ingest and what follows it."""
    import hashlib

    from components.feedback.observations import read_feedback_events

    events = read_feedback_events(feedback, types=("consume", "click", "like", "rating"))
    hashed = pd.util.hash_pandas_object(
        events[["type", "user_id", "item_id", "timestamp", "value"]], index=False).to_numpy()
    combined = hashlib.sha256(digest.encode() + hashed.tobytes()).hexdigest()[:16]
    log.info("feedback %s: %s positive events", feedback.split("@")[-1], f"{len(events):,}")
    return combined


def ingest(
    source: str,
    items: str,
    interactions_out: str,
    items_out: str,
    *,
    synthetic_users: int = 1_000,
    synthetic_items: int = 500,
    synthetic_interactions: int = 50_000,
    seed: int = 42,
    feedback: str = "",
    columns: str = "",
) -> dict[str, str]:
    """Read the source as it is (plus the feedback interactions, when given: a store URL or
    an events file), its columns renamed by `columns` (`data.parse_columns`); returns where it
    came from (for validation messages)."""
    from components.data.ingest import parse_columns, read_raw, with_feedback

    raw = retry_transient(lambda: read_raw(
        source,
        items or None,
        synthetic_users=synthetic_users,
        synthetic_items=synthetic_items,
        synthetic_interactions=synthetic_interactions,
        seed=seed,
        columns=parse_columns(columns),
    ))
    if feedback:
        raw = with_feedback(raw, feedback)
    _write_frame(raw.interactions, interactions_out)
    _write_frame(raw.items, items_out)
    log.info("ingested %s: %s rows from %s", raw.name, f"{len(raw.interactions):,}", raw.origin)
    return {"name": raw.name, "origin": raw.origin, "items_origin": raw.items_origin or ""}


def validate(
    interactions_in: str, items_in: str, interactions_out: str, items_out: str, *, name: str, origin: str, items_origin: str = ""
) -> str:
    """Apply the data contract; returns the data fingerprint. Bad data raises, writing nothing."""
    from components.data.ingest import RawDataset, validate_raw

    raw = RawDataset(
        pd.read_parquet(interactions_in), _read_items(items_in), name, origin, items_origin or None
    )
    dataset = validate_raw(raw)
    _write_frame(dataset.interactions, interactions_out)
    _write_frame(dataset.items, items_out)
    log.info("validated %s (fingerprint %s)", dataset.describe(), dataset.fingerprint)
    return dataset.fingerprint


def split(interactions_in: str, train_out: str, test_out: str, *, config_yaml: str = "") -> dict[str, int]:
    from components.data.split import split_interactions

    config = parse_config(config_yaml)
    parts = split_interactions(pd.read_parquet(interactions_in), config.split)
    parts.train.to_parquet(train_out, index=False)
    parts.test.to_parquet(test_out, index=False)
    summary = {
        "train": len(parts.train),
        "test": len(parts.test),
        "test_users": int(parts.test["user_id"].nunique()),
    }
    log.info("%s split: %s", config.split.method, summary)
    return summary


def train(
    train_in: str, items_in: str, model_out: str, *, config_yaml: str = "",
    data_fingerprint: str = "", heldout_in: str = "", dask_workers: int = 0,
    dask_image: str = "", dask_namespace: str = "", dask_worker_memory: str = "8Gi",
) -> str:
    """Fit the two-stage model, and its drift references on the held-out interactions (what
    serving will see next); returns its model version. With `dask_workers` > 0 the ranker's
    heavy steps run on a Dask cluster created for this step in `dask_namespace` (the
    dask-kubernetes operator's DaskCluster, from `dask_image`) and deleted when it ends."""
    from components.models.artifact import read_manifest, save_model
    from components.models.two_stage import TwoStageRecommender
    from components.monitoring.drift_reference import fit_references, save_references

    config = parse_config(config_yaml)
    interactions, items = pd.read_parquet(train_in), _read_items(items_in)
    if dask_workers > 0:
        model = _train_on_dask(config, interactions, items, dask_workers, dask_image,
                               dask_namespace, dask_worker_memory)
    else:
        model = TwoStageRecommender(config.model, config.split).fit(
            interactions, items, progress=log.info
        )
    references = None
    if heldout_in:
        references = fit_references(model, pd.read_parquet(heldout_in), config.monitoring)
        if references is not None:
            log.info("drift references: %s rows per view", references.summary["rows"])
    save_model(
        model, model_out, data_fingerprint=data_fingerprint,
        extra={"full_config": config_to_dict(config)},
        write_extra=(lambda d: save_references(references, d)) if references else None,
    )
    return read_manifest(model_out)["model_version"]


def _train_on_dask(config: Config, interactions: pd.DataFrame, items: pd.DataFrame | None,
                   workers: int, image: str, namespace: str, memory: str):
    import uuid

    from components.models.distributed import dask_client
    from components.models.two_stage import TwoStageRecommender
    from components.release.dask_cluster import create_cluster, delete_cluster

    name = f"recsys-fit-{uuid.uuid4().hex[:8]}"
    address = create_cluster(name, namespace, image, workers, memory=memory)
    try:
        with dask_client(address=address) as client:
            client.wait_for_workers(workers, timeout=900)
            log.info("Dask cluster %s: %d workers at %s", name, workers, address)
            return TwoStageRecommender(config.model, config.split).fit(
                interactions, items, progress=log.info, client=client)
    finally:
        delete_cluster(name, namespace)


def evaluate(
    model_dir: str,
    test_in: str,
    results_out: str,
    report_out: str,
    *,
    config_yaml: str = "",
    tracking_uri: str = "",
    data_fingerprint: str = "",
) -> dict[str, dict[str, float]]:
    """Metrics of the model, each generator, popularity and the champion; the HTML report."""
    import tempfile

    from components.errors import ArtifactError
    from components.evaluation.offline_eval import evaluate_model
    from components.evaluation.report import render_html_report
    from components.models.artifact import load_model
    from components.release.registry import current_champion, default_tracking_uri, download_model

    config = parse_config(config_yaml)
    model = load_model(model_dir)
    tracking_uri = tracking_uri or default_tracking_uri()
    champion_info = current_champion(tracking_uri, config.registry.model_name)
    champion = None
    if champion_info is not None:
        with tempfile.TemporaryDirectory() as tmp:
            try:
                champion = load_model(download_model(tracking_uri, champion_info[1], Path(tmp)))
            except ArtifactError as exc:  # e.g. made by a version that computed other features
                log.warning(
                    "the champion (version %s) cannot be evaluated by this code, so the gate will "
                    "give the new model no alias: %s", champion_info[0], exc
                )
    results = evaluate_model(
        model,
        pd.read_parquet(test_in),
        k_values=config.evaluation.k_values,
        champion=champion,
        progress=log.info,
    )
    Path(results_out).write_text(json.dumps(results, indent=2))
    context = {
        "model version": model.model_version,
        "data fingerprint": data_fingerprint,
        "split": config.split.method,
        "champion": f"version {champion_info[0]}" if champion_info else "none yet",
    }
    html = render_html_report(
        results,
        title="Recommender evaluation",
        primary_metric=config.gate.primary_metric,
        champion=results.get("champion"),
        context=context,
        feature_importance=ranker_importance(model),
    )
    Path(report_out).write_text(html)
    return results


def ranker_importance(model) -> dict[str, float] | None:
    """The ranker's global feature importance: LightGBM's total gain of the splits on each
    feature, summed by the feature groups the explanations use (None without a ranker)."""
    from components.models.explain import feature_group

    booster = getattr(model, "ranker_", None)
    if booster is None:
        return None
    grouped: dict[str, float] = {}
    for name, gain in zip(booster.feature_name(), booster.feature_importance(importance_type="gain")):
        group = feature_group(name)
        grouped[group] = grouped.get(group, 0.0) + float(gain)
    return grouped


def register(
    model_dir: str,
    results_in: str,
    *,
    config_yaml: str = "",
    tracking_uri: str = "",
    data_fingerprint: str = "",
    report_in: str = "",
    source: str = "",
    items: str = "",
    source_fingerprint: str = "",
) -> dict[str, Any]:
    """Log and register in MLflow, applying the champion-challenger gate; the run records the
    training source (URL and fingerprint) as an `mlflow.data` input when `source` is given, and
    the data identity (source and catalogue, see `components.data.data_identity`) on the version."""
    from components.data.data_identity import model_identity
    from components.data.sources.lineage import training_input
    from components.release.registry import default_tracking_uri, register_model

    config = parse_config(config_yaml)
    results = json.loads(Path(results_in).read_text())
    params = _flatten(config_to_dict(config))
    from components.models.artifact import read_manifest

    manifest = read_manifest(model_dir)  # what the fit used, besides what the config enabled
    params["generators"] = ",".join(manifest.get("generators", []))
    params["generators_left_out"] = ",".join(manifest.get("generators_left_out", {})) or "none"
    registration = register_model(
        Path(model_dir),
        results=results,
        params=params,
        data_fingerprint=data_fingerprint,
        gate_config=config.gate,
        registry=config.registry,
        tracking_uri=tracking_uri or default_tracking_uri(),
        report_path=Path(report_in) if report_in else None,
        datasets=[training_input(
            source, items, source_fingerprint=source_fingerprint, data_fingerprint=data_fingerprint,
        )] if source else [],
        data_identity=model_identity(source, model_dir) if source else None,
    )
    log.info(
        "registered %s version %s, alias %s: %s",
        registration.model_name,
        registration.version,
        registration.alias or "none",
        registration.reason,
    )
    return json.loads(registration.to_json())


def _flatten(tree: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    flat: dict[str, Any] = {}
    for key, value in tree.items():
        name = f"{prefix}{key}"
        if isinstance(value, dict) and value:
            flat.update(_flatten(value, f"{name}."))
        else:
            flat[name] = value
    return flat


def deploy(
    registration: dict[str, Any],
    *,
    target: str = "local",
    image: str = "",
    namespace: str = "recsys",
    service_name: str = "recsys",
    canary_traffic_percent: int = 10,
    artifacts_destination: str = "",
) -> dict[str, Any]:
    """Put what the gate accepted where it serves. A refused model changes nothing.

    `artifacts_destination` is the MLflow server's --artifacts-destination, to turn its proxied
    `mlflow-artifacts:` URIs into object-store URIs the cluster can download."""
    if target not in {"local", "kserve"}:
        from components.errors import ConfigError

        raise ConfigError(f"deploy target must be 'local' or 'kserve', not {target!r}")
    if registration.get("alias") is None:
        log.info("gate refused version %s: the serving model is unchanged", registration["version"])
        return {"action": "none", "reason": registration.get("reason", "")}
    if target == "local":
        from components.release.deploy import deploy_local

        record = deploy_local(
            tracking_uri=registration["tracking_uri"], model_name=registration["model_name"]
        )
        return {"action": "local", **record}
    from mlflow import MlflowClient

    from components.release.kube_deploy import deploy_inference_service, object_store_uri

    client = MlflowClient(tracking_uri=registration["tracking_uri"])
    storage_uri = object_store_uri(
        client.get_model_version_download_uri(registration["model_name"], registration["version"]),
        artifacts_destination,
    )
    result = deploy_inference_service(
        name=service_name,
        namespace=namespace,
        image=image,
        storage_uri=storage_uri,
        model_version=registration["version"],
        canary_traffic_percent=canary_traffic_percent,
    )
    return {"action": result.action, "storage_uri": storage_uri, "model_version": registration["version"],
            "revision": result.revision, "canary_traffic_percent": result.canary_traffic_percent}
