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


def tune(
    interactions_in: str, items_in: str, report_out: str, *, config_yaml: str = "",
    space_yaml: str = "", trials: int = 0, data_fingerprint: str = "", tracking_uri: str = "",
    storage: str = "", seed: int = 42, dask_workers: int = 0, dask_image: str = "",
    dask_namespace: str = "", dask_worker_memory: str = "8Gi", password_secret: str = "",
) -> str:
    """The config train fits: `config_yaml` itself with `trials` 0, else the best of a study of
    `trials` trials (`components.tuning`) over `space_yaml` (the space's YAML text; empty: the
    default space) on the validated interactions, the evaluation split's rows left out as in
    `recsys tune`. With `dask_workers` > 0 the trials run in parallel on a Dask cluster
    created for this step, the study in `storage` (an Optuna RDB URL the workers reach; their
    database password from the Secret `password_secret`). One study per data fingerprint,
    space and config (`tuning.parallel.study_name_for`): when `storage` already holds that
    study's `trials` trials, its best is returned and no trial runs. Writes the study's HTML
    report (also logged to its MLflow parent run, experiment recsys-tune)."""
    from components.tuning.space import DEFAULT_SPACE, parse_space
    from components.tuning.tune_report import log_tune_report, render_tune_report

    if trials < 0:
        from components.errors import ConfigError

        raise ConfigError(f"tune_trials must be 0 (no tuning) or more, not {trials}")
    if trials == 0:
        Path(report_out).write_text(
            "<!DOCTYPE html>\n<html lang=\"en\"><head><meta charset=\"utf-8\"><title>Not tuned"
            "</title></head><body><p>tune_trials is 0: train fits the given config.</p></body></html>\n")
        log.info("tune_trials 0: training with the given config")
        return config_yaml
    parse_config(config_yaml)  # a bad config fails here, before any trial
    space_text = space_yaml or DEFAULT_SPACE.read_text()
    space = parse_space(space_text, "tune_space" if space_yaml else str(DEFAULT_SPACE.name))
    base = yaml.safe_load(config_yaml or "") or {}
    interactions, items = pd.read_parquet(interactions_in), _read_items(items_in)
    from components.release.registry import default_tracking_uri
    from components.tuning.parallel import (
        finished_trials,
        record_parent_run,
        stored_parent_run,
        study_name_for,
        study_result,
    )

    tracking_uri = tracking_uri or default_tracking_uri()
    study_name = study_name_for(data_fingerprint, space_text, config_yaml)
    # The study of this data, space and config may be stored already (a rerun): only the
    # trials it lacks run, none when it has them all.
    remaining = trials - (finished_trials(storage, study_name) if storage else 0)
    if remaining <= 0:
        log.info("study %s already has %d trials in the tune storage: reusing its best, no new "
                 "trial", study_name, trials)
        result = study_result(study_name, storage, base, space, tracking_uri=None,
                              experiment="recsys-tune", params={}, progress=log.info)
        result.parent_run_id = stored_parent_run(storage, study_name)
    elif dask_workers > 0:
        result = _tune_on_dask(interactions, items, base, space, remaining, storage, study_name,
                               seed, tracking_uri, dask_workers, dask_image, dask_namespace,
                               dask_worker_memory, password_secret)
    else:
        from components.tuning.tune import tune as run_study

        result = run_study(interactions, items, base, space, trials=remaining,
                           storage=storage or None, seed=seed, tracking_uri=tracking_uri,
                           study_name=study_name, progress=log.info)
    if storage and remaining > 0:
        record_parent_run(storage, study_name, result.parent_run_id)
    page = render_tune_report(result, context={
        "data fingerprint": data_fingerprint, "study": study_name, "trials": str(trials),
        "space": ", ".join(p.name for p in space), "MLflow parent run": result.parent_run_id or "-",
    })
    Path(report_out).write_text(page)
    if result.parent_run_id:
        log_tune_report(tracking_uri, result.parent_run_id, page)
    untuned = "-" if result.baseline_value is None else f"{result.baseline_value:.4f}"
    log.info("tuned: validation ndcg@10 %.4f (trial %d), untuned %s; train fits the best config",
             result.best_value, result.best_number, untuned)
    return result.best_config_yaml()


def _tune_on_dask(interactions: pd.DataFrame, items: pd.DataFrame | None, base: dict[str, Any],
                  space: list, trials: int, storage: str, study_name: str, seed: int,
                  tracking_uri: str, workers: int, image: str, namespace: str, memory: str,
                  password_secret: str):
    import uuid

    from components.errors import ConfigError
    from components.models.distributed import dask_client
    from components.release.dask_cluster import create_cluster, delete_cluster
    from components.tuning.parallel import tune_on_dask

    if not storage:  # before a cluster is created for nothing
        raise ConfigError("tune_trials with dask_workers > 0 needs tune_storage: the study's "
                          "database the workers share (postgresql+psycopg://...)")
    name = f"recsys-tune-{uuid.uuid4().hex[:8]}"
    address = create_cluster(name, namespace, image, workers, memory=memory,
                             password_secret=password_secret)
    try:
        with dask_client(address=address) as client:
            client.wait_for_workers(workers, timeout=900)
            log.info("Dask cluster %s: %d workers at %s", name, workers, address)
            return tune_on_dask(client, interactions, items, base, space, trials=trials,
                                storage=storage, study_name=study_name, seed=seed,
                                tracking_uri=tracking_uri, progress=log.info)
    finally:
        delete_cluster(name, namespace)


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
    source: str = "",
) -> dict[str, dict[str, float]]:
    """Metrics of the model, each generator, popularity and the champion; the HTML report.
    With `source` (what the model was trained on), a champion of another data set is not
    evaluated: the register step's gate will not compare with it either."""
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
    champion_label = f"version {champion_info[0]}" if champion_info else "none yet"
    if champion_info is not None and source:
        other = _champion_of_another_data_set(tracking_uri, config.registry.model_name, source, model_dir)
        if other:
            log.info("the champion (version %s) was trained on %s: not evaluated", champion_info[0], other)
            champion_label = f"version {champion_info[0]}, trained on {other}: not compared"
            champion_info = None
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
        "champion": champion_label,
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


def _champion_of_another_data_set(tracking_uri: str, model_name: str, source: str,
                                   model_dir: str) -> str:
    """What the champion was trained on ("another source", "another catalogue (N% of the items
    in common)") when it is not this model's data set; "" when it is, or when the champion
    records no identity (registered before identities were: compared as before)."""
    from components.data.data_identity import difference, model_identity
    from components.release.registry import champion_identity

    theirs = champion_identity(tracking_uri, model_name)
    mine = model_identity(source, model_dir)
    return "" if theirs is None or mine.same_data_set(theirs) else difference(mine, theirs)


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
    # The config as given to train (the tune step's best, when it tuned): what a retraining
    # fits again (`recsys monitor` reads it back, `trained_config_yaml`).
    from mlflow import MlflowClient

    MlflowClient(tracking_uri=registration.tracking_uri).log_text(
        registration.run_id, config_yaml, TRAINED_CONFIG_ARTIFACT)
    log.info(
        "registered %s version %s, alias %s: %s",
        registration.model_name,
        registration.version,
        registration.alias or "none",
        registration.reason,
    )
    return json.loads(registration.to_json())


TRAINED_CONFIG_ARTIFACT = "config.yaml"


def trained_config_yaml(registration: dict[str, Any]) -> str:
    """The config YAML a registered version's run was trained with (`register` logs it)."""
    import tempfile

    from mlflow import MlflowClient

    client = MlflowClient(tracking_uri=registration["tracking_uri"])
    with tempfile.TemporaryDirectory() as tmp:
        path = client.download_artifacts(registration["run_id"], TRAINED_CONFIG_ARTIFACT, tmp)
        return Path(path).read_text()


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
