"""The training pipeline: fingerprint → ingest → validate → split → tune → train → evaluate →
register → deploy.

One `@dsl.pipeline`, built for a given image. Resources, retries and caching are set here, where
the operator looks for them. Kubeflow keys its cache on parameter values and on the identity of
input artifacts, never on file content, and a step downstream of an uncached one can never hit
the cache. So a small uncached first step hashes the source (file bytes, dataset version), and
ingest, validate, split and train are cached on that hash: unchanged data and config re-use
them, a file changed under the same path runs them again. Evaluate reads the registry's
champion, register and deploy change the world: none of those is cached.

Tune (`tune_trials` > 0) searches the config's hyperparameters on the validated data and hands
train, evaluate and register the best config; with `tune_trials` 0 it hands them the given
config unchanged. It is cached on the data fingerprint, the search space's text, the config
and the number of trials, so a rerun on the same data and space reuses its result. With
`dask_workers` > 0 its trials run in parallel on a Dask cluster of the run, the study in
`tune_storage` (the manifests' PostgreSQL), its password from the Secret `tune_secret`.

Kubeflow retries a failed step whatever failed, so only the steps that call a service are
retried by it (evaluate: MLflow; deploy: the Kubernetes API). Bad data, a bad config or a file
that is not there fail the same way every time: a retry with back-off would only delay the one
line that says what is wrong. Fingerprint and ingest, which may read a remote source, retry
inside the step what can pass on a second try (`steps.retry_transient`: a connection dropped
mid-read) and fail at once on our one-line errors (bad data, no such bucket or table). Register
is not retried: it could register twice.

Remote sources (`s3://`, SQL URLs, `dvc://`) need credentials in the two steps that touch them:
fingerprint and ingest get the keys of the Secret named by `data_secret` (in the run's
namespace) as environment variables, through kfp-kubernetes. The Secret is optional: a run on a
built-in dataset or a public source starts without it.
"""

from pathlib import Path

from kfp import compiler, dsl, kubernetes

from components.kfp_components import DEFAULT_IMAGE, SERVING_IMAGE, make_components

PIPELINE_NAME = "recsys-training"
COMPILED_PATH = Path(__file__).parent / "compiled" / "recsys_pipeline.yaml"

# (cpu request, cpu limit, memory request, memory limit) per step.
_RESOURCES = {
    "fingerprint": ("100m", "500m", "256Mi", "512Mi"),
    "ingest": ("500m", "1", "1Gi", "2Gi"),
    "validate": ("500m", "1", "1Gi", "2Gi"),
    "split": ("500m", "1", "1Gi", "2Gi"),
    "tune": ("2", "4", "4Gi", "8Gi"),
    "train": ("2", "4", "4Gi", "8Gi"),
    "evaluate": ("1", "2", "2Gi", "4Gi"),
    "register": ("250m", "1", "512Mi", "1Gi"),
    "deploy": ("100m", "500m", "256Mi", "512Mi"),
    "drift-check": ("500m", "1", "1Gi", "2Gi"),
    "summary": ("100m", "250m", "128Mi", "256Mi"),
}


# Keys of the data-source Secret, each set as the environment variable of the same name:
# boto3 (S3, MinIO, DVC remotes on S3) and libpq (PostgreSQL) read them from there.
DATA_SECRET_KEYS = (
    "AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_SESSION_TOKEN", "AWS_ENDPOINT_URL",
    "AWS_DEFAULT_REGION", "PGPASSWORD",
)


def _with_data_credentials(task: dsl.PipelineTask, secret_name) -> dsl.PipelineTask:
    return kubernetes.use_secret_as_env(
        task, secret_name=secret_name, secret_key_to_env={k: k for k in DATA_SECRET_KEYS},
        optional=True,
    )


def _with_tune_password(task: dsl.PipelineTask, secret_name) -> dsl.PipelineTask:
    """The tuning database's password as PGPASSWORD (libpq reads it), from an optional Secret."""
    return kubernetes.use_secret_as_env(
        task, secret_name=secret_name, secret_key_to_env={"TUNE_DB_PASSWORD": "PGPASSWORD"},
        optional=True,
    )


def _configure(task: dsl.PipelineTask, step: str, *, retries: int, cache: bool) -> dsl.PipelineTask:
    cpu_req, cpu_lim, mem_req, mem_lim = _RESOURCES[step]
    task.set_display_name(step)
    task.set_cpu_request(cpu_req).set_cpu_limit(cpu_lim)
    task.set_memory_request(mem_req).set_memory_limit(mem_lim)
    if retries:
        task.set_retry(num_retries=retries, backoff_duration="30s", backoff_factor=2.0)
    task.set_caching_options(enable_caching=cache)
    return task


def build_pipeline(image: str = DEFAULT_IMAGE, serving_image: str = SERVING_IMAGE):
    """The pipeline function, its components running in `image`; the deploy step serves the
    model with `serving_image`."""
    ops = make_components(image)

    @dsl.pipeline(
        name=PIPELINE_NAME,
        description="Train, evaluate, register (MLflow, champion-challenger gate) and deploy "
        "(KServe canary or local) a two-stage recommender.",
    )
    def recsys_pipeline(
        source: str = "movielens-dslabs",
        items: str = "",
        config_yaml: str = "",
        mlflow_tracking_uri: str = "",
        # The MLflow server's --artifacts-destination (manifests/base/mlflow.yaml): where its
        # proxied mlflow-artifacts: URIs live for KServe's storage initializer.
        mlflow_artifacts_destination: str = "s3://mlflow/artifacts",
        deploy_target: str = "kserve",
        namespace: str = "recsys",
        service_name: str = "recsys",
        canary_traffic_percent: int = 10,
        synthetic_users: int = 1000,
        synthetic_items: int = 500,
        synthetic_interactions: int = 50000,
        seed: int = 42,
        # For a SQL source without a `timestamp` column, or one updated in place: the version
        # of the data (e.g. the time of the last load); it becomes the source's fingerprint.
        data_version: str = "",
        # The Secret (in the run's namespace) with the data source's credentials.
        data_secret: str = "recsys-data-source",
        # Feedback events to train on beside the source: a feedback store URL
        # (postgresql+psycopg://..., sqlite:///...) or an events file; empty: the source alone.
        feedback: str = "",
        # The interactions' columns when named otherwise: user=userId,item=movieId,... (`--columns`).
        columns: str = "",
        # > 0: the train step runs its ranker on a Dask cluster of this many workers, created
        # (dask-kubernetes operator) in `namespace` for the step and deleted after it.
        dask_workers: int = 0,
        dask_worker_memory: str = "8Gi",
        # > 0: a tune step searches the hyperparameters with this many Optuna trials before
        # train, which fits the best config; 0: no tuning, train fits config_yaml.
        tune_trials: int = 0,
        # The search space's YAML (as `recsys tune --space`); empty: the image's default space.
        tune_space: str = "",
        # The study's Optuna storage (postgresql+psycopg://...); empty: in the step's memory.
        # Needed when dask_workers > 0: the workers share the study through it.
        tune_storage: str = "",
        # The Secret (in the run's namespace and in `namespace`, for the Dask workers) whose
        # TUNE_DB_PASSWORD is the study database's password (manifests/base/tune-db.yaml).
        tune_secret: str = "recsys-tune-db",
    ) -> str:
        source_args = {
            "source": source, "items": items, "synthetic_users": synthetic_users,
            "synthetic_items": synthetic_items, "synthetic_interactions": synthetic_interactions, "seed": seed,
            "feedback": feedback, "columns": columns,
        }
        # Never cached: it is what tells whether the content behind a path changed.
        source_check = _configure(
            ops["fingerprint_op"](**source_args, data_version=data_version), "fingerprint",
            retries=0, cache=False,
        )
        ingest = _configure(
            ops["ingest_op"](**source_args, source_fingerprint=source_check.output),
            "ingest", retries=0, cache=True,
        )
        _with_data_credentials(source_check, data_secret)
        _with_data_credentials(ingest, data_secret)
        validate = _configure(
            ops["validate_op"](
                raw_interactions=ingest.outputs["interactions"], raw_items=ingest.outputs["item_table"],
                name=ingest.outputs["name"], origin=ingest.outputs["origin"],
                items_origin=ingest.outputs["items_origin"],
            ),
            "validate", retries=0, cache=True,
        )
        fingerprint = validate.outputs["Output"]
        split = _configure(
            ops["split_op"](
                interactions=validate.outputs["interactions"], config_yaml=config_yaml,
                data_fingerprint=fingerprint,
            ),
            "split", retries=0, cache=True,
        )
        tune = _configure(
            ops["tune_op"](
                interactions=validate.outputs["interactions"],
                item_table=validate.outputs["item_table"], config_yaml=config_yaml,
                space_yaml=tune_space, trials=tune_trials, data_fingerprint=fingerprint,
                tracking_uri=mlflow_tracking_uri, storage=tune_storage, seed=seed,
                dask_workers=dask_workers, dask_image=image, dask_namespace=namespace,
                dask_worker_memory=dask_worker_memory, password_secret=tune_secret,
            ),
            "tune", retries=0, cache=True,
        ).after(split)  # it needs only validate's data; after split, the steps keep one order
        _with_tune_password(tune, tune_secret)
        tuned_config = tune.outputs["Output"]  # config_yaml itself when tune_trials is 0
        train = _configure(
            ops["train_op"](
                train=split.outputs["train"], heldout=split.outputs["test"],
                item_table=validate.outputs["item_table"],
                config_yaml=tuned_config, data_fingerprint=fingerprint, dask_workers=dask_workers,
                dask_image=image, dask_namespace=namespace, dask_worker_memory=dask_worker_memory,
            ),
            "train", retries=0, cache=True,
        )
        evaluate = _configure(
            ops["evaluate_op"](
                model=train.outputs["model"], test=split.outputs["test"], config_yaml=tuned_config,
                tracking_uri=mlflow_tracking_uri, data_fingerprint=fingerprint, source=source,
            ),
            "evaluate", retries=1, cache=False,  # the champion it compares with may change
        )
        register = _configure(
            ops["register_op"](
                model=train.outputs["model"], results=evaluate.outputs["results"],
                report=evaluate.outputs["report"], config_yaml=tuned_config,
                tracking_uri=mlflow_tracking_uri, data_fingerprint=fingerprint, source=source,
                items=items, source_fingerprint=source_check.output,
            ),
            "register", retries=0, cache=False,
        )
        deploy = _configure(
            ops["deploy_op"](
                registration=register.outputs["Output"], results=evaluate.outputs["results"],
                report=evaluate.outputs["report"], target=deploy_target, image=serving_image,
                namespace=namespace, service_name=service_name,
                canary_traffic_percent=canary_traffic_percent,
                mlflow_artifacts_destination=mlflow_artifacts_destination,
            ),
            "deploy", retries=1, cache=False,  # deploying is idempotent, never cached
        )
        return deploy.outputs["Output"]

    return recsys_pipeline


def compile_pipeline(path: Path = COMPILED_PATH, image: str = DEFAULT_IMAGE,
                     serving_image: str = SERVING_IMAGE) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    compiler.Compiler().compile(build_pipeline(image, serving_image), package_path=str(path))
    return path
