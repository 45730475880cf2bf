"""Deploy (local target): record which registered models `recsys serve` should serve.

Locally the record (`deployment.json` in the run home) plays the InferenceService's part: it
names the champion (the MLflow `champion` alias) and, while a challenger is being tried, the
challenger (the `challenger` alias) with the share of users it gets, the way a KServe canary has
`canaryTrafficPercent`. The deploy step downloads each artifact once and writes the record;
`recsys serve` without a model directory reads it, and follows it while it runs. Promotion and
rollback (`promote_local`, `rollback_local`, used by `recsys rollout analyze --auto`) change the
record first and the registry second, like their cluster counterparts in `serving.rollout`, and
finish a half-done run when run again. The cluster target lives in `kube_deploy`.
"""
from __future__ import annotations

import json
import os
import time
from pathlib import Path
from typing import Any

from components.errors import RecsysError
from components.release.registry import (
    CHALLENGER,
    CHAMPION,
    _client,
    current_champion,
    default_home,
    default_tracking_uri,
    download_model,
)

RECORD = "deployment.json"


class NoChallengerError(RecsysError):
    """Promote or rollback was asked for, but no challenger is being tried locally."""


def read_record(path: Path) -> dict[str, Any]:
    return json.loads(Path(path).read_text())


def write_record(home: Path, record: dict[str, Any]) -> None:
    """Atomically: a running server polls the file and must never read half of it."""
    home.mkdir(parents=True, exist_ok=True)
    temporary = home / f".{RECORD}.{os.getpid()}"
    temporary.write_text(json.dumps(record, indent=2))
    os.replace(temporary, home / RECORD)


def _now() -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())


def _fetch(tracking_uri: str, model_name: str, version: str, source: str, home: Path) -> dict[str, str]:
    """Download a registered version once; its MLflow version, directory and artifact version."""
    local_dir = home / "served" / model_name / version
    if not (local_dir / "model" / "manifest.json").exists():
        download_model(tracking_uri, source, local_dir)
    manifest = json.loads((local_dir / "model" / "manifest.json").read_text())
    return {"version": version, "model_dir": str(local_dir / "model"),
            "model_version": str(manifest.get("model_version", ""))}


def _aliased(tracking_uri: str, model_name: str, alias: str) -> tuple[str, str] | None:
    from mlflow.exceptions import MlflowException

    try:
        mv = _client(tracking_uri).get_model_version_by_alias(model_name, alias)
    except MlflowException:
        return None
    return str(mv.version), mv.source


def deploy_local(
    *, tracking_uri: str, model_name: str, home: Path | None = None,
    challenger_percent: float | None = None, interleave_percent: float = 0.0,
) -> dict[str, Any]:
    """Make the champion (and the challenger, if the registry names one) servable locally;
    returns the deployment record. The challenger gets `challenger_percent` of the users (by
    default the experiment config's) and `interleave_percent` interleaved answers."""
    from components.config import ExperimentConfig

    home = home or default_home()
    champion = current_champion(tracking_uri, model_name)
    if champion is None:
        raise RecsysError(f"model '{model_name}' has no champion in {tracking_uri}: nothing to deploy")
    record: dict[str, Any] = {
        "model_name": model_name,
        **_fetch(tracking_uri, model_name, *champion, home),
        "alias": CHAMPION,
        "tracking_uri": tracking_uri,
        "deployed_at": _now(),
    }
    previous = home / RECORD
    if previous.is_file():  # where `recsys serve` answers (it wrote it), kept across deploys
        try:
            predictor = read_record(previous).get("predictor")
        except (OSError, ValueError):
            predictor = None
        if predictor:
            record["predictor"] = predictor
    challenger = _aliased(tracking_uri, model_name, CHALLENGER)
    if challenger is not None and challenger[0] != champion[0]:
        percent = ExperimentConfig().challenger_percent if challenger_percent is None else challenger_percent
        record["challenger"] = {
            **_fetch(tracking_uri, model_name, *challenger, home),
            "percent": float(percent), "interleave_percent": float(interleave_percent),
            "started_at": _now(),
        }
    write_record(home, record)
    return record


def resolve_served_model(home: Path | None = None) -> Path:
    """The model directory the last local deploy recorded, or the registry's champion."""
    return Path(resolve_deployment(home)["model_dir"])


def resolve_deployment(home: Path | None = None) -> dict[str, Any]:
    """The local deployment record (written from the registry's champion if there is none)."""
    home = home or default_home()
    record = home / RECORD
    if record.exists():
        found = read_record(record)
        if Path(found["model_dir"]).exists():
            return found
    missing = RecsysError(
        f"no deployed model under {home}: run `recsys run` first, or pass --model-dir DIR"
    )
    if not os.environ.get("MLFLOW_TRACKING_URI") and not (home / "mlflow.db").exists():
        raise missing  # no store to ask: creating an empty one would only leave a file behind
    tracking_uri = default_tracking_uri(home)
    from components.config import RegistryConfig

    name = RegistryConfig().model_name
    if current_champion(tracking_uri, name) is not None:
        return deploy_local(tracking_uri=tracking_uri, model_name=name, home=home)
    raise missing


def _registry_aliases(tracking_uri: str, model_name: str) -> dict[str, str]:
    from mlflow.exceptions import MlflowException

    try:
        return {k: str(v) for k, v in (_client(tracking_uri).get_registered_model(model_name).aliases or {}).items()}
    except MlflowException:
        return {}


def _move_aliases(tracking_uri: str, model_name: str, champion: str, retired: str | None) -> list[str]:
    client = _client(tracking_uri)
    aliases = _registry_aliases(tracking_uri, model_name)
    done = []
    try:
        if aliases.get(CHAMPION) != champion:
            client.set_registered_model_alias(model_name, CHAMPION, champion)
            done.append(f"MLflow: {CHAMPION} -> version {champion} (was {aliases.get(CHAMPION) or 'unset'})")
        if retired and aliases.get(CHALLENGER) == retired:
            client.delete_registered_model_alias(model_name, CHALLENGER)
            done.append(f"MLflow: {CHALLENGER} (version {retired}) removed")
    except Exception as exc:  # the record is right; the registry is behind until a re-run
        raise RecsysError(
            f"the local deployment record was updated, but moving the MLflow aliases of "
            f"'{model_name}' failed ({type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}); "
            "run the same command again to finish"
        ) from exc
    return done


def promote_local(home: Path | None = None) -> list[str]:
    """The challenger becomes the champion: the record first, then the registry's aliases."""
    home = home or default_home()
    record = read_record(home / RECORD)
    tracking_uri, model_name = record["tracking_uri"], record["model_name"]
    challenger = record.get("challenger")
    actions = []
    if challenger:
        promoted = {k: challenger[k] for k in ("version", "model_dir", "model_version")}
        write_record(home, {**{k: v for k, v in record.items() if k != "challenger"},
                             **promoted, "deployed_at": _now()})
        actions.append(f"serving: version {challenger['version']} now answers everyone "
                       f"(was {record['version']})")
    elif _registry_aliases(tracking_uri, model_name).get(CHALLENGER) != record["version"]:
        raise NoChallengerError(f"no challenger is being tried under {home}: version "
                                f"{record['version']} serves everyone")
    version = challenger["version"] if challenger else record["version"]
    return actions + _move_aliases(tracking_uri, model_name, version, version)


def rollback_local(home: Path | None = None) -> list[str]:
    """The champion answers everyone again: the record first, then the `challenger` alias."""
    home = home or default_home()
    record = read_record(home / RECORD)
    tracking_uri, model_name = record["tracking_uri"], record["model_name"]
    challenger = record.get("challenger")
    actions = []
    if challenger:
        write_record(home, {**{k: v for k, v in record.items() if k != "challenger"},
                             "rolled_back": challenger["version"]})
        actions.append(f"serving: version {record['version']} answers everyone again "
                       f"(version {challenger['version']} withdrawn)")
        retired = challenger["version"]
    else:
        retired = record.get("rolled_back")
        if not retired or _registry_aliases(tracking_uri, model_name).get(CHALLENGER) != retired:
            raise NoChallengerError(f"no challenger is being tried under {home}: version "
                                    f"{record['version']} serves everyone")
    return actions + _move_aliases(tracking_uri, model_name, record["version"], retired)
