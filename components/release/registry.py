"""Register: log a trained model to MLflow and decide, by the champion-challenger gate, which
alias it earns.

Default store: SQLite plus a local artifact directory under the run home (`runs/`), so a laptop
needs no server; `MLFLOW_TRACKING_URI` points it anywhere else. Aliases, not the deprecated
stages: the first model becomes `champion`; a later one becomes `challenger` only if it beats
the champion by the configured margin on the primary metric without regressing any guardrail
beyond its tolerance; otherwise it is registered with no alias and the refusal is tagged.

The gate compares only models of one data set: each version records its data identity
(`components.data.data_identity`: the source and a sketch of the catalogue, as model version tags),
and a model trained on another source or catalogue than the champion's is registered with no
alias, the reason saying so, without a comparison.
"""
from __future__ import annotations

import json
import logging
import os
import re
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from components.config import GateConfig, RegistryConfig
from components.data.data_identity import DataIdentity, other_data_set

log = logging.getLogger(__name__)

CHAMPION = "champion"
CHALLENGER = "challenger"


def default_home() -> Path:
    """Where local runs keep their MLflow store, pipeline root and reports."""
    return Path(os.environ.get("RECSYS_HOME", "runs")).resolve()


def default_tracking_uri(home: Path | None = None) -> str:
    if os.environ.get("MLFLOW_TRACKING_URI"):
        return os.environ["MLFLOW_TRACKING_URI"]
    home = home or default_home()
    home.mkdir(parents=True, exist_ok=True)
    return f"sqlite:///{home / 'mlflow.db'}"


def mlflow_metric_name(name: str) -> str:
    """MLflow names allow [A-Za-z0-9_./ -]: `ndcg@10` is logged as `ndcg_at_10`."""
    return re.sub(r"[^A-Za-z0-9_./ -]", "_", name.replace("@", "_at_"))


@dataclass(frozen=True)
class GateOutcome:
    accepted: bool
    alias: str | None  # the alias the new version received
    reason: str
    champion_version: str | None
    champion_metrics: dict[str, float] | None


@dataclass(frozen=True)
class Registration:
    model_name: str
    version: str
    run_id: str
    alias: str | None
    reason: str
    tracking_uri: str

    def to_json(self) -> str:
        return json.dumps(asdict(self))


def gate(
    challenger: dict[str, float],
    champion: dict[str, float] | None,
    config: GateConfig,
    champion_version: str | None,
) -> tuple[bool, str]:
    """(accepted, reason) for a challenger against the champion's metrics on the same split.
    A champion with no metrics (e.g. one this code cannot load) cannot be compared: refused."""
    if champion_version is None:
        return True, "no champion yet: the first registered model becomes champion"
    if champion is None:
        return False, (
            f"the champion (version {champion_version}) was not evaluated on this split (see the "
            "evaluate step), so the gate cannot compare: this version is registered without an "
            "alias; set one by hand once checked"
        )
    from components.evaluation.evaluate import compare_to_champion

    decision = compare_to_champion(
        challenger,
        champion,
        primary=config.primary_metric,
        margin=config.min_relative_gain,
        guardrails=config.guardrails,
    )
    return decision.accepted, decision.reason


def _client(tracking_uri: str):
    """A client bound to `tracking_uri`. Not `mlflow.set_tracking_uri`: it writes
    MLFLOW_TRACKING_URI into the process environment, and every later `default_tracking_uri`
    in the process would then follow the last store used instead of its own home."""
    from mlflow import MlflowClient

    return MlflowClient(tracking_uri=tracking_uri)


def _experiment_id(client, name: str, tracking_uri: str) -> str:
    found = client.get_experiment_by_name(name)
    if found is not None:
        return found.experiment_id
    location = None
    if tracking_uri.startswith("sqlite:///"):
        # Keep artifacts beside the database, not in ./mlruns of whatever directory we run in.
        location = (Path(tracking_uri.removeprefix("sqlite:///")).parent / "mlartifacts").as_uri()
    return client.create_experiment(name, artifact_location=location)


def current_champion(
    tracking_uri: str, model_name: str
) -> tuple[str, str] | None:
    """(version, artifact uri of the model directory) of the `champion` alias, if any."""
    from mlflow.exceptions import MlflowException

    client = _client(tracking_uri)
    try:
        mv = client.get_model_version_by_alias(model_name, CHAMPION)
    except MlflowException:
        return None
    return str(mv.version), mv.source


def champion_identity(tracking_uri: str, model_name: str) -> DataIdentity | None:
    """The data identity recorded on the champion (None: no champion, or one registered before
    identities were recorded)."""
    from mlflow.exceptions import MlflowException

    try:
        mv = _client(tracking_uri).get_model_version_by_alias(model_name, CHAMPION)
    except MlflowException:
        return None
    return DataIdentity.from_tags(mv.tags)


def download_model(tracking_uri: str, source: str, destination: Path) -> Path:
    import mlflow

    destination.mkdir(parents=True, exist_ok=True)
    return Path(
        mlflow.artifacts.download_artifacts(artifact_uri=source, dst_path=str(destination), tracking_uri=tracking_uri)
    )


def _log_run(client, run_id: str, params: dict[str, Any], metrics: dict[str, float]) -> None:
    """Params and metrics in batches within MLflow's per-request limits (100 params, 1000
    metrics)."""
    from mlflow.entities import Metric, Param

    now = int(time.time() * 1000)
    param_list = [Param(mlflow_metric_name(k), str(v)[:500]) for k, v in params.items()]
    metric_list = [Metric(k, v, now, 0) for k, v in metrics.items()]
    for start in range(0, len(param_list), 100):
        client.log_batch(run_id, params=param_list[start : start + 100])
    for start in range(0, len(metric_list), 1000):
        client.log_batch(run_id, metrics=metric_list[start : start + 1000])


def logged_metrics(results: dict[str, dict[str, float]]) -> dict[str, float]:
    """Offline results as a run logs them: the new model's (`two_stage`) under the metric's
    name, every other model's (baselines, the champion) prefixed by its name."""
    logged = {mlflow_metric_name(k): float(v) for k, v in results["two_stage"].items()}
    for name, values in results.items():
        if name != "two_stage":
            logged.update({f"{name}.{mlflow_metric_name(k)}": float(v) for k, v in values.items()})
    return logged


def _log_report(client, run_id: str, report_path: Path) -> None:
    """The HTML report as `report/report.html`, whatever the file is called: the pipeline's
    HTML artifact is a file named `report`, without the suffix that tells browsers (and the
    console) what it is."""
    import shutil
    import tempfile

    with tempfile.TemporaryDirectory() as tmp:
        named = Path(tmp) / "report.html"
        shutil.copyfile(report_path, named)
        client.log_artifact(run_id, str(named), artifact_path="report")


def register_model(
    model_dir: Path,
    *,
    results: dict[str, dict[str, float]],
    params: dict[str, Any],
    data_fingerprint: str,
    gate_config: GateConfig,
    registry: RegistryConfig,
    tracking_uri: str,
    report_path: Path | None = None,
    datasets: Sequence[Any] = (),
    data_identity: DataIdentity | None = None,
) -> Registration:
    """Log the run, create a model version, and apply the gate's alias.

    `datasets` are `mlflow.entities.DatasetInput`s (the training source, see
    `components.data.sources.lineage`), logged as the run's inputs.

    `results` maps "two_stage" (the new model), each baseline and "champion" (when there is
    one, evaluated on the same split) to their metrics; all are logged, prefixed by name.

    `data_identity` (what the model was trained on) is tagged on the version; when it and the
    champion's differ, the gate refuses without comparing. Without one on either side (a
    version registered before identities were recorded) the gate compares as it always did."""
    from mlflow.exceptions import MlflowException

    metrics = results["two_stage"]
    champion_metrics = results.get("champion")
    client = _client(tracking_uri)
    experiment_id = _experiment_id(client, registry.experiment, tracking_uri)
    champion = current_champion(tracking_uri, registry.model_name)
    champion_data = champion_identity(tracking_uri, registry.model_name) if champion else None
    if champion and data_identity and champion_data and not data_identity.same_data_set(champion_data):
        accepted, reason = False, other_data_set(data_identity, champion_data, champion[0])
    else:
        accepted, reason = gate(metrics, champion_metrics, gate_config,
                                champion[0] if champion else None)
        if champion and data_identity and champion_data is None:
            reason += (f" (the champion, version {champion[0]}, records no data identity: "
                       "registered before it was recorded, so it is compared as before)")
    logged = logged_metrics(results)
    run = client.create_run(
        experiment_id,
        tags={"data_fingerprint": data_fingerprint, "gate.accepted": str(accepted), "gate.reason": reason},
    )
    try:
        _log_run(client, run.info.run_id, params, logged)
        if datasets:
            client.log_inputs(run.info.run_id, datasets=list(datasets))
        client.log_artifacts(run.info.run_id, str(model_dir), artifact_path="model")
        if report_path is not None and report_path.exists():
            _log_report(client, run.info.run_id, report_path)
    except BaseException:
        client.set_terminated(run.info.run_id, status="FAILED")
        raise
    client.set_terminated(run.info.run_id)
    source = f"{run.info.artifact_uri}/model"
    try:
        client.create_registered_model(registry.model_name)
    except MlflowException:  # already exists (the subclass differs between stores)
        pass
    version_tags = {"data_fingerprint": data_fingerprint,
                    **(data_identity.tags() if data_identity else {})}
    version = client.create_model_version(
        registry.model_name, source, run_id=run.info.run_id, tags=version_tags
    ).version
    alias = None
    if accepted:
        alias = CHAMPION if champion is None else CHALLENGER
        client.set_registered_model_alias(registry.model_name, alias, version)
    client.set_model_version_tag(registry.model_name, version, "gate", "accepted" if accepted else "refused")
    client.set_model_version_tag(registry.model_name, version, "gate_reason", reason)
    return Registration(registry.model_name, str(version), run.info.run_id, alias, reason, tracking_uri)
