"""The KFP v2 components: thin wrappers, each importing one step from `components.steps`.

The bodies are lightweight Python components run in the project's own image (which installs
this package), with `install_kfp_package=False`; locally `kfp.local.SubprocessRunner` runs the
same functions in the current environment. The image is chosen when the pipeline is built
(`make_components(image)`), so `recsys compile --image` needs no edit of the code.
"""


from typing import NamedTuple

from kfp import dsl
from kfp.dsl import HTML, Dataset, Input, Metrics, Model, Output

DEFAULT_IMAGE = "ghcr.io/recsys-mlops/recsys:0.1.0"


def fingerprint_op(
    source: str,
    items: str,
    synthetic_users: int,
    synthetic_items: int,
    synthetic_interactions: int,
    seed: int,
    data_version: str,
) -> str:
    from components.steps import fingerprint_source

    return fingerprint_source(
        source, items, synthetic_users=synthetic_users, synthetic_items=synthetic_items,
        synthetic_interactions=synthetic_interactions, seed=seed, data_version=data_version,
    )


def ingest_op(
    source: str,
    items: str,
    synthetic_users: int,
    synthetic_items: int,
    synthetic_interactions: int,
    seed: int,
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
        synthetic_interactions=synthetic_interactions, seed=seed,
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


def train_op(
    train: Input[Dataset], item_table: Input[Dataset], config_yaml: str, data_fingerprint: str,
    dask_workers: int, dask_image: str, dask_namespace: str, dask_worker_memory: str,
    model: Output[Model],
) -> str:
    from components.steps import train as train_step

    # dask_workers > 0: the step creates a DaskCluster for its ranker and deletes it at the end.
    version = train_step(
        train.path, item_table.path, model.path, config_yaml=config_yaml, data_fingerprint=data_fingerprint,
        dask_workers=dask_workers, dask_image=dask_image, dask_namespace=dask_namespace,
        dask_worker_memory=dask_worker_memory,
    )
    model.metadata["model_version"] = version
    return version


def evaluate_op(
    model: Input[Model], test: Input[Dataset], config_yaml: str, tracking_uri: str,
    data_fingerprint: str, metrics: Output[Metrics], results: Output[Dataset], report: Output[HTML],
):
    from components.steps import evaluate

    scores = evaluate(
        model.path, test.path, results.path, report.path,
        config_yaml=config_yaml, tracking_uri=tracking_uri, data_fingerprint=data_fingerprint,
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


_STEPS = (fingerprint_op, ingest_op, validate_op, split_op, train_op, evaluate_op, register_op, deploy_op)


def make_components(image: str = DEFAULT_IMAGE) -> dict:
    """The steps as KFP components running in `image`."""
    return {
        fn.__name__: dsl.component(base_image=image, install_kfp_package=False)(fn) for fn in _STEPS
    }
