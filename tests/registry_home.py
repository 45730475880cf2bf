"""A run home whose MLflow store (SQLite) holds two registered versions of one model, 1 the
champion and 2 the challenger, each with a minimal artifact: what the rollout tests start from."""
from __future__ import annotations

import json
from pathlib import Path


def two_version_home(tmp_path: Path, model: str, versions: dict[str, str]):
    """`versions`: MLflow version -> the artifact's own `model_version`, registered in order.
    Returns (home, tracking URI, MlflowClient)."""
    from mlflow import MlflowClient

    home = tmp_path / "home"
    home.mkdir()
    uri = f"sqlite:///{home / 'mlflow.db'}"
    client = MlflowClient(tracking_uri=uri)
    experiment = client.create_experiment("recsys", artifact_location=(home / "mlartifacts").as_uri())
    client.create_registered_model(model)
    for version, model_version in versions.items():
        model_dir = tmp_path / f"model-{version}"
        model_dir.mkdir()
        (model_dir / "manifest.json").write_text(json.dumps({"model_version": model_version}))
        run = client.create_run(experiment)
        client.log_artifacts(run.info.run_id, str(model_dir), artifact_path="model")
        client.set_terminated(run.info.run_id)
        client.create_model_version(model, f"{run.info.artifact_uri}/model", run_id=run.info.run_id)
    client.set_registered_model_alias(model, "champion", "1")
    client.set_registered_model_alias(model, "challenger", "2")
    return home, uri, client
