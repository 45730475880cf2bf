"""The KFP v2 components: thin wrappers, each importing one step from `components.steps`.

The bodies are lightweight Python components run in the project's own image (which installs
this package), with `install_kfp_package=False`; locally `kfp.local.SubprocessRunner` runs the
same functions in the current environment. The image is chosen when the pipeline is built
(`make_components(image)`), so `recsys compile --image` needs no edit of the code.
"""


from typing import NamedTuple

from kfp import dsl
from kfp.dsl import HTML, Dataset, Input, Metrics, Model, Output

# The steps run in the pipeline image (the Dockerfile's `pipeline` target: alibi-detect for the
# drift references and checks, the data-source extras); the InferenceService the deploy step
# creates runs the serving image (the default target), about 1 GB smaller.
DEFAULT_IMAGE = "ghcr.io/recsys-mlops/recsys-pipeline:0.1.0"
SERVING_IMAGE = "ghcr.io/recsys-mlops/recsys:0.1.0"


def fingerprint_op(
    source: str,
    items: str,
    synthetic_users: int,
    synthetic_items: int,
    synthetic_interactions: int,
    seed: int,
    feedback: str,
    data_version: str,
    columns: str,
) -> str:
    from components.steps import fingerprint_source

    return fingerprint_source(
        source, items, synthetic_users=synthetic_users, synthetic_items=synthetic_items,
        synthetic_interactions=synthetic_interactions, seed=seed, data_version=data_version,
        feedback=feedback, columns=columns,
    )


def ingest_op(
    source: str,
    items: str,
    synthetic_users: int,
    synthetic_items: int,
    synthetic_interactions: int,
    seed: int,
    feedback: str,
    columns: str,
    source_fingerprint: str,
    interactions: Output[Dataset],
    item_table: Output[Dataset],
) -> NamedTuple("IngestOutputs", [("name", str), ("origin", str), ("items_origin", str)]):
    from collections import namedtuple

    from components.steps import ingest

    # source_fingerprint is an input only so that a cached ingest follows the data's content.
    info = ingest(
        source, items, interactions.path, item_table.path,
        synthetic_users=synthetic_users, synthetic_items=synthetic_items,
        synthetic_interactions=synthetic_interactions, seed=seed, feedback=feedback,
        columns=columns,
    )
    return namedtuple("IngestOutputs", ["name", "origin", "items_origin"])(**info)


def validate_op(
    raw_interactions: Input[Dataset],
    raw_items: Input[Dataset],
    name: str,
    origin: str,
    items_origin: str,
    interactions: Output[Dataset],
    item_table: Output[Dataset],
) -> str:
    from components.steps import validate

    return validate(
        raw_interactions.path, raw_items.path, interactions.path, item_table.path,
        name=name, origin=origin, items_origin=items_origin,
    )


def split_op(
    interactions: Input[Dataset], config_yaml: str, data_fingerprint: str,
    train: Output[Dataset], test: Output[Dataset],
):
    from components.steps import split

    # data_fingerprint is an input only so that cached results follow the data's content.
    split(interactions.path, train.path, test.path, config_yaml=config_yaml)


def tune_op(
    interactions: Input[Dataset], item_table: Input[Dataset], config_yaml: str, space_yaml: str,
    trials: int, data_fingerprint: str, tracking_uri: str, storage: str, seed: int,
    dask_workers: int, dask_image: str, dask_namespace: str, dask_worker_memory: str,
    password_secret: str, report: Output[HTML],
) -> str:
    from components.steps import tune

    # Returns the config train fits: config_yaml itself with trials 0, else the study's best.
    # data_fingerprint and space_yaml are in the cache key: same data and space, same result.
    return tune(
        interactions.path, item_table.path, report.path, config_yaml=config_yaml,
        space_yaml=space_yaml, trials=trials, data_fingerprint=data_fingerprint,
        tracking_uri=tracking_uri, storage=storage, seed=seed, dask_workers=dask_workers,
        dask_image=dask_image, dask_namespace=dask_namespace,
        dask_worker_memory=dask_worker_memory, password_secret=password_secret,
    )


def train_op(
    train: Input[Dataset], heldout: Input[Dataset], item_table: Input[Dataset], config_yaml: str,
    data_fingerprint: str, dask_workers: int, dask_image: str, dask_namespace: str,
    dask_worker_memory: str, model: Output[Model],
) -> str:
    from components.steps import train as train_step

    # The held-out split is what the drift references are fitted on (serving's "future");
    # dask_workers > 0: the step creates a DaskCluster for its ranker and deletes it at the end.
    version = train_step(
        train.path, item_table.path, model.path, config_yaml=config_yaml,
        data_fingerprint=data_fingerprint, heldout_in=heldout.path,
        dask_workers=dask_workers, dask_image=dask_image, dask_namespace=dask_namespace,
        dask_worker_memory=dask_worker_memory,
    )
    model.metadata["model_version"] = version
    return version


def evaluate_op(
    model: Input[Model], test: Input[Dataset], config_yaml: str, tracking_uri: str,
    data_fingerprint: str, source: str, metrics: Output[Metrics], results: Output[Dataset],
    report: Output[HTML],
):
    from components.steps import evaluate

    scores = evaluate(
        model.path, test.path, results.path, report.path,
        config_yaml=config_yaml, tracking_uri=tracking_uri, data_fingerprint=data_fingerprint,
        source=source,
    )
    for name, value in scores["two_stage"].items():
        metrics.log_metric(name, value)
    for name, value in scores.get("champion", {}).items():
        metrics.log_metric(f"champion_{name}", value)


def register_op(
    model: Input[Model], results: Input[Dataset], report: Input[HTML], config_yaml: str,
    tracking_uri: str, data_fingerprint: str, source: str, items: str, source_fingerprint: str,
) -> str:
    import json

    from components.steps import register

    return json.dumps(register(
        model.path, results.path, config_yaml=config_yaml, tracking_uri=tracking_uri,
        data_fingerprint=data_fingerprint, report_in=report.path, source=source, items=items,
        source_fingerprint=source_fingerprint,
    ))


def deploy_op(
    registration: str, results: Input[Dataset], report: Input[HTML], target: str, image: str,
    namespace: str, service_name: str, canary_traffic_percent: int, mlflow_artifacts_destination: str,
) -> str:
    import json

    from components.steps import deploy

    outcome = deploy(
        json.loads(registration), target=target, image=image, namespace=namespace,
        service_name=service_name, canary_traffic_percent=canary_traffic_percent,
        artifacts_destination=mlflow_artifacts_destination,
    )
    # The run's summary: what was registered and deployed, and where metrics and report are.
    return json.dumps({
        "registration": json.loads(registration), "deployment": outcome,
        "results_path": results.path, "report_path": report.path,
    })


def drift_check_op(
    config_yaml: str, mlflow_tracking_uri: str, request_log: str, feedback: str, as_of: float,
    pushgateway: str, allow_retrain: bool, report: Output[HTML], metrics: Output[Metrics],
) -> NamedTuple("CheckOutputs", [("decision", str), ("action", str), ("summary", str)]):
    import json
    from collections import namedtuple

    from components.monitor_step import drift_check

    decision = drift_check(
        report_out=report.path, decision_out=report.path + ".json", config_yaml=config_yaml,
        tracking_uri=mlflow_tracking_uri, request_log=request_log, feedback=feedback,
        as_of=as_of, pushgateway=pushgateway,
    )
    metrics.log_metric("retrain", float(decision.decision == "retrain"))
    for key, result in decision.drift.items():
        metrics.log_metric(f"p_value.{key}", result["p_value"])
    for view, rows in decision.window["rows"].items():
        metrics.log_metric(f"rows.{view}", float(rows))
    # `action` is what the pipeline branches on: a check-only run reports retrain, runs nothing.
    action = "retrain" if decision.decision == "retrain" and allow_retrain else "none"
    summary = json.loads(decision.to_json())
    summary["report_path"] = report.path
    outputs = namedtuple("CheckOutputs", ["decision", "action", "summary"])
    return outputs(decision.decision, action, json.dumps(summary))


def monitoring_summary_op(check: str, training: str) -> str:
    import json

    # One result for both branches: the check, and the training run's summary when it retrained.
    return json.dumps({"check": json.loads(check),
                       "retraining": json.loads(training) if training else None})


_STEPS = (fingerprint_op, ingest_op, validate_op, split_op, tune_op, train_op, evaluate_op, register_op,
          deploy_op, drift_check_op, monitoring_summary_op)


def make_components(image: str = DEFAULT_IMAGE) -> dict:
    """The steps as KFP components running in `image`."""
    return {
        fn.__name__: dsl.component(base_image=image, install_kfp_package=False)(fn) for fn in _STEPS
    }
