"""Champion/challenger rollout on KServe: status, promote, rollback.

The cluster and the MLflow registry each hold half of the truth: the InferenceService says which
revision gets which share of traffic (and, in our annotations, which model version each runs);
the registry's `champion`/`challenger` aliases say which version the organisation trusts. Every
operation changes the cluster first and the registry second, so the registry never names a
champion that does not serve; and each re-reads both before acting, so a run that stopped half
way (cluster patched, alias move failed) is finished by running it again, without a second patch.

KServe semantics (serverless mode), as its canary rollout docs give them:
- promote: remove `canaryTrafficPercent`; the latest revision takes 100% and becomes
  `latestRolledoutRevision`.
- rollback: set `canaryTrafficPercent: 0`; 100% goes back to the last rolled-out revision and
  the canary's revision stays, idle.
Neither touches the annotations: KServe copies them into the revision template, so changing one
would start yet another revision.
"""
from __future__ import annotations

from dataclasses import dataclass, field, replace
from datetime import UTC, datetime
from typing import Any

from components.errors import RecsysError
from components.release.kube_deploy import (
    CANARY_STARTED_ANNOTATION,
    MODEL_VERSION_ANNOTATION,
    annotations,
    get_inference_service,
    rollout_phase,
    served_versions,
    set_canary_percent,
    spec_canary_percent,
)

CHAMPION, CHALLENGER = "champion", "challenger"


class NoCanaryError(RecsysError):
    """Promote or rollback was asked for, but no canary is in progress."""


@dataclass(frozen=True)
class TrafficTarget:
    revision: str | None
    percent: int
    tag: str | None
    latest: bool


@dataclass(frozen=True)
class RolloutStatus:
    name: str
    namespace: str
    model_name: str
    phase: str  # "stable" | "canary" | "rolled-back"
    ready: bool
    ready_message: str | None
    url: str | None
    canary_traffic_percent: int | None  # as the spec asks
    champion_revision: str | None
    champion_version: str | None
    champion_percent: int
    canary_revision: str | None
    canary_version: str | None
    canary_percent: int
    canary_ready: bool
    latest_created_revision: str | None
    latest_ready_revision: str | None
    latest_rolledout_revision: str | None
    previous_rolledout_revision: str | None
    traffic: tuple[TrafficTarget, ...]
    registry_champion: str | None
    registry_challenger: str | None
    canary_started_at: str | None
    canary_age_seconds: float | None
    notes: tuple[str, ...] = ()
    actions: tuple[str, ...] = field(default=())  # what the operation that returned this did


# --- reading -------------------------------------------------------------------------------


def _aliases(mlflow_client: Any, model_name: str) -> dict[str, str]:
    from mlflow.exceptions import MlflowException

    try:
        return {k: str(v) for k, v in (mlflow_client.get_registered_model(model_name).aliases or {}).items()}
    except MlflowException as exc:
        if getattr(exc, "error_code", "") == "RESOURCE_DOES_NOT_EXIST":
            return {}
        raise RecsysError(f"MLflow registry: cannot read model '{model_name}': {exc.message}") from None


def _read(api: Any, name: str, namespace: str) -> dict[str, Any]:
    isvc = get_inference_service(api, name, namespace)
    if isvc is None:
        raise RecsysError(f"no InferenceService {namespace}/{name}: deploy a model first")
    return isvc


def _age_seconds(started_at: str | None) -> float | None:
    if not started_at:
        return None
    try:
        started = datetime.strptime(started_at, "%Y-%m-%dT%H:%M:%SZ").replace(tzinfo=UTC)
    except ValueError:
        return None
    return max(0.0, (datetime.now(UTC) - started).total_seconds())


def _status_of(isvc: dict[str, Any], aliases: dict[str, str], model_name: str,
               actions: tuple[str, ...] = ()) -> RolloutStatus:
    meta = isvc.get("metadata") or {}
    status = isvc.get("status") or {}
    component = (status.get("components") or {}).get("predictor") or {}
    traffic = tuple(
        TrafficTarget(t.get("revisionName"), int(t.get("percent") or 0), t.get("tag"),
                      bool(t.get("latestRevision")))
        for t in component.get("traffic") or []
    )
    share: dict[str, int] = {}
    for target in traffic:
        if target.revision:
            share[target.revision] = share.get(target.revision, 0) + target.percent
    created = component.get("latestCreatedRevision") or None
    ready_rev = component.get("latestReadyRevision") or None
    rolled_out = component.get("latestRolledoutRevision") or None
    phase = rollout_phase(isvc)
    champion_version, canary_version = served_versions(isvc)
    if phase == "stable":
        champion_rev, canary_rev = rolled_out or ready_rev, None
    else:
        champion_rev = rolled_out
        canary_rev = created if created != rolled_out else None
    ready_condition = next((c for c in status.get("conditions") or [] if c.get("type") == "Ready"), {})
    notes = annotations(isvc)
    started = notes.get(CANARY_STARTED_ANNOTATION) if phase != "stable" else None
    result = RolloutStatus(
        name=meta.get("name", ""), namespace=meta.get("namespace", ""), model_name=model_name,
        phase=phase, ready=ready_condition.get("status") == "True",
        ready_message=ready_condition.get("message") or ready_condition.get("reason"),
        url=status.get("url"), canary_traffic_percent=spec_canary_percent(isvc),
        champion_revision=champion_rev, champion_version=champion_version,
        champion_percent=share.get(champion_rev or "", 0),
        canary_revision=canary_rev, canary_version=canary_version,
        canary_percent=share.get(canary_rev or "", 0) if canary_rev else 0,
        canary_ready=bool(canary_rev) and canary_rev == ready_rev,
        latest_created_revision=created, latest_ready_revision=ready_rev,
        latest_rolledout_revision=rolled_out,
        previous_rolledout_revision=component.get("previousRolledoutRevision") or None,
        traffic=traffic, registry_champion=aliases.get(CHAMPION),
        registry_challenger=aliases.get(CHALLENGER), canary_started_at=started,
        canary_age_seconds=_age_seconds(started), actions=actions,
    )
    return _with_notes(result)


def _with_notes(s: RolloutStatus) -> RolloutStatus:
    """Say where the cluster and the registry disagree, and what finishes the job."""
    notes = []
    if s.champion_version and s.registry_champion and s.registry_champion != s.champion_version:
        verb = "promote" if s.phase == "stable" else "rollback"
        notes.append(f"registry champion is version {s.registry_champion} but version "
                     f"{s.champion_version} serves as champion: re-run `recsys rollout {verb}` to finish")
    if s.phase == "stable" and s.champion_version and s.registry_challenger == s.champion_version:
        notes.append(f"version {s.champion_version} serves 100% but is still the registry's "
                     "challenger: re-run `recsys rollout promote` to finish")
    if s.phase == "rolled-back" and s.canary_version and s.registry_challenger == s.canary_version:
        notes.append(f"version {s.canary_version} was rolled back but is still the registry's "
                     "challenger: re-run `recsys rollout rollback` to finish")
    if s.phase == "canary" and s.canary_revision and not s.canary_ready:
        notes.append(f"canary revision {s.canary_revision} is not ready: KServe sends it no traffic yet")
    return replace(s, notes=tuple(notes))


def rollout_status(api: Any, mlflow_client: Any, *, name: str, namespace: str,
                   model_name: str = "recsys") -> RolloutStatus:
    """Revisions, traffic split, readiness and model versions of the champion and the canary."""
    return _status_of(_read(api, name, namespace), _aliases(mlflow_client, model_name), model_name)


# --- changing ------------------------------------------------------------------------------


def _move_aliases(mlflow_client: Any, model_name: str, *, champion: str | None,
                  retired_challenger: str | None, aliases: dict[str, str], why: str) -> list[str]:
    """Point `champion` at `champion` and drop `challenger` if it names `retired_challenger`.
    Only what differs is written, so a re-run writes nothing twice."""
    done = []
    try:
        if champion and aliases.get(CHAMPION) != champion:
            mlflow_client.set_registered_model_alias(model_name, CHAMPION, champion)
            done.append(f"MLflow: {CHAMPION} -> version {champion} (was {aliases.get(CHAMPION) or 'unset'})")
        if retired_challenger and aliases.get(CHALLENGER) == retired_challenger:
            mlflow_client.delete_registered_model_alias(model_name, CHALLENGER)
            done.append(f"MLflow: {CHALLENGER} (version {retired_challenger}) removed")
    except Exception as exc:  # any failure here leaves the registry behind the cluster
        raise RecsysError(
            f"{why}, but updating the MLflow aliases of '{model_name}' failed "
            f"({type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}); "
            "the cluster is right: run the same command again to finish"
        ) from exc
    return done


def _registry_behind(phase: str, champion: str | None, canary: str | None, aliases: dict[str, str]) -> bool:
    """True when the cluster finished an operation that the registry does not reflect yet."""
    if phase == "stable":  # a promote whose alias move did not happen
        return bool(champion) and (
            aliases.get(CHALLENGER) == champion or aliases.get(CHAMPION) not in (None, champion)
        )
    if phase == "rolled-back":  # a rollback whose alias clean-up did not happen
        return (bool(canary) and aliases.get(CHALLENGER) == canary) or (
            bool(champion) and aliases.get(CHAMPION) not in (None, champion)
        )
    return False


def promote(api: Any, mlflow_client: Any, *, name: str, namespace: str,
            model_name: str = "recsys") -> RolloutStatus:
    """Send 100% to the canary, then make its model version the registry's champion."""
    where = f"{namespace}/{name}"
    isvc = _read(api, name, namespace)
    aliases = _aliases(mlflow_client, model_name)
    phase = rollout_phase(isvc)
    champion, canary = served_versions(isvc)
    actions: list[str] = []
    if phase == "canary":
        current = _status_of(isvc, aliases, model_name)
        if not current.canary_ready:
            raise RecsysError(
                f"canary revision {current.canary_revision or '?'} of {where} is not ready "
                f"({current.ready_message or 'no status yet'}); promoting now would leave version "
                f"{champion} serving while the registry names {canary}"
            )
        set_canary_percent(api, name, namespace, isvc, None,
                           f"promote the canary of InferenceService {where}")
        actions.append(f"cluster: canary revision {current.canary_revision} (version {canary}) now takes 100%")
        promoted = canary
    elif phase == "stable" and _registry_behind(phase, champion, canary, aliases):
        promoted = champion  # the cluster was promoted by an earlier run; finish the registry
    elif phase == "rolled-back":
        raise NoCanaryError(
            f"no canary to promote on {where}: version {canary} was rolled back and version "
            f"{champion} serves 100%; deploying version {canary} again resumes its canary"
        )
    else:
        raise NoCanaryError(f"no canary in progress on {where}: version {champion} serves 100%")
    if promoted is None:
        raise RecsysError(f"InferenceService {where} does not record its model version "
                          f"({MODEL_VERSION_ANNOTATION}): the registry was left unchanged")
    actions += _move_aliases(mlflow_client, model_name, champion=promoted, retired_challenger=promoted,
                             aliases=aliases, why=f"version {promoted} serves 100% on {where}")
    return _status_of(_read(api, name, namespace), _aliases(mlflow_client, model_name), model_name,
                      tuple(actions))


def rollback(api: Any, mlflow_client: Any, *, name: str, namespace: str,
             model_name: str = "recsys") -> RolloutStatus:
    """Pin 100% to the champion's revision, then drop the canary's version from the registry's
    `challenger` (and put `champion` back on the champion if it had moved)."""
    where = f"{namespace}/{name}"
    isvc = _read(api, name, namespace)
    aliases = _aliases(mlflow_client, model_name)
    phase = rollout_phase(isvc)
    champion, canary = served_versions(isvc)
    actions: list[str] = []
    if phase == "canary":
        set_canary_percent(api, name, namespace, isvc, 0,
                           f"roll back the canary of InferenceService {where}")
        actions.append(f"cluster: canary (version {canary}) pinned to 0%, version {champion} takes 100%")
    elif not (phase == "rolled-back" and _registry_behind(phase, champion, canary, aliases)):
        if phase == "rolled-back":
            raise NoCanaryError(f"no canary in progress on {where}: version {canary} was already "
                                f"rolled back and version {champion} serves 100%")
        raise NoCanaryError(f"no canary in progress on {where}: version {champion} serves 100%")
    actions += _move_aliases(mlflow_client, model_name, champion=champion, retired_challenger=canary,
                             aliases=aliases, why=f"version {champion} serves 100% on {where} again")
    return _status_of(_read(api, name, namespace), _aliases(mlflow_client, model_name), model_name,
                      tuple(actions))


# --- presenting ----------------------------------------------------------------------------


def _age(seconds: float | None) -> str:
    if seconds is None:
        return "-"
    minutes, _ = divmod(int(seconds), 60)
    hours, minutes = divmod(minutes, 60)
    days, hours = divmod(hours, 24)
    return f"{days}d {hours}h" if days else f"{hours}h {minutes}m" if hours else f"{minutes}m"


def format_status(status: RolloutStatus) -> str:
    """A human table of who serves what, and where cluster and registry stand."""
    s = status
    ready = "yes" if s.ready else f"no ({s.ready_message or 'no status yet'})"
    lines = [
        f"InferenceService {s.namespace}/{s.name}   ready: {ready}   url: {s.url or '-'}",
        f"phase: {s.phase}"
        + ("" if s.canary_traffic_percent is None
           else f"   canaryTrafficPercent: {s.canary_traffic_percent}")
        + (f"   canary age: {_age(s.canary_age_seconds)}" if s.phase != "stable" else ""),
        "",
    ]
    rows = [("ROLE", "REVISION", "MODEL VERSION", "TRAFFIC", "READY")]
    rows.append(("champion", s.champion_revision or "-", s.champion_version or "?",
                 # A rolled-out revision was ready when it took 100%; when stable, the service says.
                 f"{s.champion_percent}%", "-" if not s.champion_revision
                 else "yes" if s.ready or s.phase != "stable" else "no"))
    if s.phase != "stable" and (s.canary_revision or s.canary_version):
        rows.append(("canary", s.canary_revision or "-", s.canary_version or "?",
                     f"{s.canary_percent}%", "yes" if s.canary_ready else "no"))
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    lines += ["  ".join(cell.ljust(w) for cell, w in zip(row, widths)).rstrip() for row in rows]
    lines += ["", (f"MLflow '{s.model_name}': {CHAMPION} -> {s.registry_champion or '-'}, "
                  f"{CHALLENGER} -> {s.registry_challenger or '-'}")]
    lines += [f"done: {a}" for a in s.actions]
    lines += [f"note: {n}" for n in s.notes]
    return "\n".join(lines)


# --- locally: the run home's deployment record ---------------------------------------------


@dataclass(frozen=True)
class LocalStatus:
    """What the run home's deployment record says `recsys serve` serves, and the registry."""

    home: str
    model_name: str
    tracking_uri: str
    champion_version: str
    champion_model_version: str
    champion_dir: str
    deployed_at: str | None
    challenger_version: str | None
    challenger_model_version: str | None
    challenger_percent: float
    interleave_percent: float
    challenger_started_at: str | None
    rolled_back: str | None
    predictor_url: str | None
    predictor_answers: bool | None  # None: no predictor recorded
    registry_champion: str | None
    registry_challenger: str | None
    notes: tuple[str, ...] = ()


def _answers(url: str) -> bool:
    import httpx

    try:
        return httpx.get(f"{url}/v2/health/live", timeout=2).status_code == 200
    except httpx.HTTPError:
        return False


def local_status(home: Any, *, tracking_uri: str | None = None,
                 model_name: str | None = None) -> LocalStatus:
    """Read `<home>/deployment.json`, the aliases of its registry, and whether the predictor it
    names answers."""
    from pathlib import Path

    from mlflow import MlflowClient

    from components.release.deploy import RECORD, read_record

    record = read_record(Path(home) / RECORD)
    model_name = model_name or record["model_name"]
    tracking_uri = tracking_uri or record["tracking_uri"]
    aliases = _aliases(MlflowClient(tracking_uri=tracking_uri), model_name)
    challenger = record.get("challenger") or {}
    url = (record.get("predictor") or {}).get("url")
    notes = []
    champion, registry_champion = str(record["version"]), aliases.get(CHAMPION)
    registry_challenger = aliases.get(CHALLENGER)
    if registry_champion and registry_champion != champion:
        notes.append(f"registry champion is version {registry_champion} but the record serves "
                     f"version {champion} as champion")
    if not challenger and registry_challenger == champion:
        notes.append(f"version {champion} serves everyone but is still the registry's "
                     "challenger: re-run `recsys rollout promote` to finish")
    rolled_back = record.get("rolled_back")
    if not challenger and rolled_back and registry_challenger == str(rolled_back):
        notes.append(f"version {rolled_back} was rolled back but is still the registry's "
                     "challenger: re-run `recsys rollout rollback` to finish")
    if challenger and registry_challenger != str(challenger["version"]):
        notes.append(f"the record tries version {challenger['version']} as challenger but the "
                     f"registry's challenger is {registry_challenger or 'unset'}")
    answers = _answers(url) if url else None
    if url and not answers:
        notes.append(f"no predictor answers at {url} (the last `recsys serve` of this home): "
                     "start `recsys serve`")
    elif not url:
        notes.append("no predictor recorded: `recsys serve` writes its address here when it starts")
    return LocalStatus(
        home=str(home), model_name=model_name, tracking_uri=tracking_uri,
        champion_version=champion, champion_model_version=str(record.get("model_version", "")),
        champion_dir=str(record.get("model_dir", "")), deployed_at=record.get("deployed_at"),
        challenger_version=str(challenger["version"]) if challenger else None,
        challenger_model_version=challenger.get("model_version"),
        challenger_percent=float(challenger.get("percent", 0.0)),
        interleave_percent=float(challenger.get("interleave_percent", 0.0)),
        challenger_started_at=challenger.get("started_at"),
        rolled_back=str(rolled_back) if rolled_back else None, predictor_url=url,
        predictor_answers=answers, registry_champion=registry_champion,
        registry_challenger=registry_challenger, notes=tuple(notes))


def format_local_status(s: LocalStatus, actions: list[str] | tuple[str, ...] = ()) -> str:
    """The local counterpart of `format_status`: who serves what, and the registry."""
    serving = ("-" if s.predictor_url is None else
               f"{s.predictor_url} ({'answering' if s.predictor_answers else 'not answering'})")
    lines = [f"local deployment {s.home}/deployment.json   predictor: {serving}",
             f"phase: {'challenger' if s.challenger_version else 'rolled-back' if s.rolled_back else 'stable'}"
             + (f"   deployed at {s.deployed_at}" if s.deployed_at else ""), ""]
    rows = [("ROLE", "MLFLOW VERSION", "MODEL VERSION", "USERS", "SINCE")]
    if s.challenger_version:
        rest = 100.0 - s.challenger_percent - s.interleave_percent
        rows.append(("champion", s.champion_version, s.champion_model_version, f"{rest:g}%",
                     s.deployed_at or "-"))
        rows.append(("challenger", s.challenger_version, s.challenger_model_version or "?",
                     f"{s.challenger_percent:g}%", s.challenger_started_at or "-"))
        if s.interleave_percent:
            rows.append(("interleaved", "both", "-", f"{s.interleave_percent:g}%", "-"))
    else:
        rows.append(("champion", s.champion_version, s.champion_model_version, "100%",
                     s.deployed_at or "-"))
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    lines += ["  ".join(cell.ljust(w) for cell, w in zip(row, widths)).rstrip() for row in rows]
    lines += ["", (f"MLflow '{s.model_name}' ({s.tracking_uri}): {CHAMPION} -> "
                   f"{s.registry_champion or '-'}, {CHALLENGER} -> {s.registry_challenger or '-'}")]
    lines += [f"done: {a}" for a in actions]
    lines += [f"note: {n}" for n in s.notes]
    return "\n".join(lines)
