"""Deploy (local target): record which registered model `recsys serve` should serve.

Locally there is no canary: the `champion` alias serves. The step downloads the champion's
artifact once and writes `deployment.json` in the run home; `recsys serve` without a model
directory reads it. The cluster target lives in `kube_deploy` (an InferenceService patch).
"""
from __future__ import annotations

import json
import os
import time
from pathlib import Path

from components.errors import RecsysError
from components.registry import current_champion, default_home, default_tracking_uri, download_model

RECORD = "deployment.json"


def deploy_local(
    *, tracking_uri: str, model_name: str, home: Path | None = None
) -> dict[str, str]:
    """Make the champion servable locally; returns the deployment record."""
    home = home or default_home()
    champion = current_champion(tracking_uri, model_name)
    if champion is None:
        raise RecsysError(f"model '{model_name}' has no champion in {tracking_uri}: nothing to deploy")
    version, source = champion
    local_dir = home / "served" / model_name / version
    if not (local_dir / "model" / "manifest.json").exists():
        download_model(tracking_uri, source, local_dir)
    record = {
        "model_name": model_name,
        "version": version,
        "alias": "champion",
        "model_dir": str(local_dir / "model"),
        "tracking_uri": tracking_uri,
        "deployed_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
    }
    home.mkdir(parents=True, exist_ok=True)
    (home / RECORD).write_text(json.dumps(record, indent=2))
    return record


def resolve_served_model(home: Path | None = None) -> Path:
    """The model directory the last local deploy recorded, or the registry's champion."""
    home = home or default_home()
    record = home / RECORD
    if record.exists():
        path = Path(json.loads(record.read_text())["model_dir"])
        if path.exists():
            return path
    missing = RecsysError(
        f"no deployed model under {home}: run `recsys run` first, or pass --model-dir DIR"
    )
    if not os.environ.get("MLFLOW_TRACKING_URI") and not (home / "mlflow.db").exists():
        raise missing  # no store to ask: creating an empty one would only leave a file behind
    tracking_uri = default_tracking_uri(home)
    from components.config import RegistryConfig

    name = RegistryConfig().model_name
    if current_champion(tracking_uri, name) is not None:
        return Path(deploy_local(tracking_uri=tracking_uri, model_name=name, home=home)["model_dir"])
    raise missing
