"""The monitoring pipeline: drift check → (on `retrain`) the training pipeline on the source plus
the feedback → one summary.

The check reads a window of served records and feedback events, tests it against the
champion's drift references and decides (`components.monitoring.monitor`). When it says `retrain` (and
`allow_retrain` is true), the training pipeline runs as a sub-DAG of the same run under
`dsl.If`, on the original source plus the feedback interactions; its evaluate, register (the
champion-challenger gate) and deploy (the canary on KServe) steps decide what happens to the
new model, exactly as in a scheduled training run. Neither the check nor the summary is cached:
each run looks at a new window.
"""

from pathlib import Path

from kfp import compiler, dsl

from components.kfp_components import DEFAULT_IMAGE, SERVING_IMAGE, make_components
from pipelines.pipeline import _configure, build_pipeline

PIPELINE_NAME = "recsys-monitoring"
COMPILED_PATH = Path(__file__).parent / "compiled" / "recsys_monitoring.yaml"


def build_monitoring_pipeline(image: str = DEFAULT_IMAGE, serving_image: str = SERVING_IMAGE):
    ops = make_components(image)
    training = build_pipeline(image, serving_image)

    @dsl.pipeline(
        name=PIPELINE_NAME,
        description="Check served records and feedback events for drift against the champion's "
        "references; on retrain (drift, staleness, online metric drop, new data), run the "
        "training pipeline on the source plus the feedback.",
    )
    def recsys_monitoring(
        # Where the feedback events (and, from a store, the impressions) are: a feedback store
        # URL (postgresql+psycopg://..., sqlite:///...) or an events file.
        feedback: str = "",
        # A request-log directory the step can read (a mounted volume); else served records
        # come from the store's impressions.
        request_log: str = "",
        config_yaml: str = "",
        mlflow_tracking_uri: str = "",
        # End of the checked window, Unix seconds (0: now).
        as_of: float = 0.0,
        # host:port of a Prometheus Pushgateway for the decision and per-feature drift.
        pushgateway: str = "",
        # False: check and report only.
        allow_retrain: bool = True,
        source: str = "movielens-dslabs",
        items: str = "",
        mlflow_artifacts_destination: str = "s3://mlflow/artifacts",
        deploy_target: str = "kserve",
        namespace: str = "recsys",
        service_name: str = "recsys",
        canary_traffic_percent: int = 10,
        synthetic_users: int = 1000,
        synthetic_items: int = 500,
        synthetic_interactions: int = 50000,
        seed: int = 42,
        data_version: str = "",
        data_secret: str = "recsys-data-source",
        columns: str = "",
    ) -> str:
        check = _configure(
            ops["drift_check_op"](
                config_yaml=config_yaml,
                mlflow_tracking_uri=mlflow_tracking_uri,
                request_log=request_log,
                feedback=feedback,
                as_of=as_of,
                pushgateway=pushgateway,
                allow_retrain=allow_retrain,
            ),
            "drift-check",
            # Not Kubeflow's retries, which would repeat a data error too: the step retries
            # its transient errors itself (`steps.retry_transient`).
            retries=0,
            cache=False,
        )
        with dsl.If(check.outputs["action"] == "retrain", name="retrain"):
            retrained = training(
                source=source,
                items=items,
                config_yaml=config_yaml,
                mlflow_tracking_uri=mlflow_tracking_uri,
                mlflow_artifacts_destination=mlflow_artifacts_destination,
                deploy_target=deploy_target,
                namespace=namespace,
                service_name=service_name,
                canary_traffic_percent=canary_traffic_percent,
                synthetic_users=synthetic_users,
                synthetic_items=synthetic_items,
                synthetic_interactions=synthetic_interactions,
                seed=seed,
                data_version=data_version,
                data_secret=data_secret,
                feedback=feedback,
                columns=columns,
            ).set_display_name("training")
            after_training = _configure(
                ops["monitoring_summary_op"](
                    check=check.outputs["summary"], training=retrained.output
                ),
                "summary",
                retries=0,
                cache=False,
            )
        with dsl.Else(name="keep"):
            kept = _configure(
                ops["monitoring_summary_op"](check=check.outputs["summary"], training=""),
                "summary",
                retries=0,
                cache=False,
            )
        return dsl.OneOf(after_training.output, kept.output)

    return recsys_monitoring


def compile_monitoring_pipeline(
    path: Path = COMPILED_PATH, image: str = DEFAULT_IMAGE, serving_image: str = SERVING_IMAGE
) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    compiler.Compiler().compile(
        build_monitoring_pipeline(image, serving_image), package_path=str(path)
    )
    return path
