"""The Models page: registered versions from the MLflow registry, with what stands behind each.

For every version: its aliases, when it was registered, the gate's verdict and reason, the
artifact's own `model_version` (what answers carry), the training data fingerprint, the run that
made it, its offline metrics (side by side with the other versions of the same data set, the best
of each column marked), the online decision if `recsys rollout analyze --auto` took one, and its
HTML report.

Offline metrics of models trained on different data sets (another source, another catalogue:
`components.data.data_identity`, recorded as tags on each version) say nothing about each other, so
the versions are grouped by data set and compared within a group only. Versions registered
before the identity was recorded go with the oldest version that records one: the first the
gate compared with them, as it compares with a version that records none.
"""
from __future__ import annotations

import json
import tempfile
import threading
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from components.data.data_identity import DataIdentity
from components.evaluation.report import DEFAULT_COLUMNS
from components.release.registry import mlflow_metric_name
from serving.console.clients import Unavailable
from serving.console.recent import Recent

# The offline metrics shown side by side (the report's own columns), as MLflow names them.
METRICS = tuple((name, mlflow_metric_name(name)) for name in DEFAULT_COLUMNS)
MAX_VERSIONS = 50  # the newest; older ones stay in MLflow
RECENT_SECONDS = 5.0  # how long a read of the registry is reused (see serving.console.recent)


@dataclass
class VersionRow:
    version: str
    aliases: list[str]
    created: float  # Unix seconds
    run_id: str
    source: str
    gate: str | None
    gate_reason: str | None
    data_fingerprint: str | None
    model_version: str | None  # the artifact's
    metrics: dict[str, float]
    baselines: dict[str, dict[str, float]]  # e.g. {"popularity": {"ndcg@10": ...}}
    online_decision: str | None
    run_name: str | None
    report: str | None  # artifact path of the HTML report in the run
    best: set[str] = field(default_factory=set)  # metrics where this version is the best
    data_identity: DataIdentity | None = None  # the data set it was trained on, if recorded


@dataclass
class DataSetGroup:
    """The versions trained on one data set, newest first; their metrics are compared."""

    identity: DataIdentity | None
    rows: list[VersionRow] = field(default_factory=list)

    @property
    def label(self) -> str:
        if self.identity is None:
            return "data set not recorded (versions registered before data identities were)"
        return self.identity.describe()


def sqlite_path(uri: str) -> Path | None:
    return Path(uri.removeprefix("sqlite:///")) if uri.startswith("sqlite:///") else None


class Registry:
    """Read-only access to the registry, with one MLflow client for the console's life."""

    def __init__(self, tracking_uri: str, model_name: str):
        self.tracking_uri = tracking_uri
        self.model_name = model_name
        self._client = None
        self._lock = threading.Lock()
        self._manifests: dict[str, dict[str, Any]] = {}  # MLflow version -> artifact manifest
        self.recent = Recent(RECENT_SECONDS)

    def client(self):
        path = sqlite_path(self.tracking_uri)
        if path is not None and not path.exists():
            # MlflowClient would create an empty store there; the console only reads.
            raise Unavailable(f"no MLflow store at {path}: run `recsys run` first (or give the "
                              "console --home or --tracking-uri)")
        with self._lock:
            if self._client is None:
                from mlflow import MlflowClient

                self._client = MlflowClient(tracking_uri=self.tracking_uri)
        return self._client

    def _call(self, what: str, fn, *args, **kwargs):
        from mlflow.exceptions import MlflowException

        try:
            return fn(*args, **kwargs)
        except MlflowException as exc:
            if getattr(exc, "error_code", "") == "RESOURCE_DOES_NOT_EXIST":
                return None
            raise Unavailable(f"MLflow at {self.tracking_uri}: cannot {what}: "
                              f"{str(exc.message).splitlines()[0]}") from None
        except Exception as exc:  # noqa: BLE001 (a server that is down, a broken database file)
            first = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
            raise Unavailable(f"MLflow at {self.tracking_uri}: cannot {what} ({first})") from None

    def aliases(self) -> dict[str, str]:
        """alias -> MLflow version."""
        return self.recent.get("aliases", self._aliases)

    def _aliases(self) -> dict[str, str]:
        client = self.client()
        model = self._call("read the registered model", client.get_registered_model, self.model_name)
        return {k: str(v) for k, v in ((model.aliases if model else None) or {}).items()}

    def manifest(self, version: str, source: str) -> dict[str, Any] | None:
        """The artifact manifest of a registered version (small; fetched once per version)."""
        if version in self._manifests:
            return self._manifests[version]
        import mlflow

        try:
            with tempfile.TemporaryDirectory() as tmp:
                path = mlflow.artifacts.download_artifacts(
                    artifact_uri=f"{source}/manifest.json", dst_path=tmp,
                    tracking_uri=self.tracking_uri)
                manifest = json.loads(Path(path).read_text())
        except Exception:  # noqa: BLE001 (an artifact store out of reach: the page shows "-")
            return None
        self._manifests[version] = manifest
        return manifest

    def versions(self) -> list[VersionRow]:
        return self.recent.get("versions", self._versions)

    def _versions(self) -> list[VersionRow]:
        client = self.client()
        found = self._call("list model versions", client.search_model_versions,
                           f"name = '{self.model_name}'", max_results=MAX_VERSIONS,
                           order_by=["version_number DESC"]) or []
        by_version: dict[str, list[str]] = {}
        for alias, version in self.aliases().items():
            by_version.setdefault(version, []).append(alias)
        rows = []
        for mv in found:
            run = self._call("read a run", client.get_run, mv.run_id) if mv.run_id else None
            metrics = dict(run.data.metrics) if run else {}
            tags = dict(mv.tags or {})
            manifest = self.manifest(str(mv.version), mv.source)
            rows.append(VersionRow(
                version=str(mv.version),
                aliases=sorted(by_version.get(str(mv.version), [])),
                created=(mv.creation_timestamp or 0) / 1e3,
                run_id=mv.run_id or "",
                source=mv.source or "",
                gate=tags.get("gate"),
                gate_reason=tags.get("gate_reason"),
                data_fingerprint=tags.get("data_fingerprint")
                or (manifest or {}).get("data_fingerprint"),
                model_version=tags.get("model_version") or (manifest or {}).get("model_version"),
                metrics={name: metrics[key] for name, key in METRICS if key in metrics},
                baselines=_baselines(metrics),
                online_decision=tags.get("online_decision"),
                run_name=run.info.run_name if run else None,
                report=self._report_path(run.info.run_id) if run else None,
                data_identity=DataIdentity.from_tags(tags),
            ))
        for group in group_by_data_set(rows):
            _mark_best(group.rows)
        return rows

    def _report_path(self, run_id: str) -> str | None:
        client = self.client()
        listed = self._call("list a run's artifacts", client.list_artifacts, run_id, "report") or []
        files = [a.path for a in listed if not a.is_dir]
        # Versions registered before the report was named report.html logged the pipeline's
        # HTML artifact as it was called: `report/report`, no suffix.
        html = [p for p in files if p.endswith(".html")] or files
        return html[0] if html else None

    def run_artifact(self, run_id: str, path: str) -> bytes:
        """One file logged with a run (a drift report, say)."""
        import mlflow

        self.client()
        try:
            with tempfile.TemporaryDirectory() as tmp:
                local = mlflow.artifacts.download_artifacts(
                    run_id=run_id, artifact_path=path, dst_path=tmp,
                    tracking_uri=self.tracking_uri)
                return Path(local).read_bytes()
        except Exception as exc:  # noqa: BLE001 (no such run or file, a store out of reach)
            first = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
            raise Unavailable(f"run {run_id} has no {path} ({first[:200]})") from None

    def report_html(self, version: str) -> bytes:
        """The HTML report logged with a version's run."""
        client = self.client()
        mv = self._call("read the model version", client.get_model_version, self.model_name,
                        version)
        if mv is None:
            raise Unavailable(f"model '{self.model_name}' has no version {version}")
        path = self._report_path(mv.run_id) if mv.run_id else None
        if path is None:
            raise Unavailable(f"version {version} was registered without a report")
        import mlflow

        with tempfile.TemporaryDirectory() as tmp:
            local = mlflow.artifacts.download_artifacts(
                run_id=mv.run_id, artifact_path=path, dst_path=tmp,
                tracking_uri=self.tracking_uri)
            return Path(local).read_bytes()

    def runs(self, experiment_names: list[str], limit: int = 10) -> list[dict[str, Any]]:
        """The newest runs of the named experiments (pipeline runs, online decisions)."""
        return self.recent.get(("runs", tuple(experiment_names), limit),
                               lambda: self._runs(experiment_names, limit))

    def _runs(self, experiment_names: list[str], limit: int) -> list[dict[str, Any]]:
        client = self.client()
        ids = []
        for name in experiment_names:
            found = self._call("read an experiment", client.get_experiment_by_name, name)
            if found is not None:
                ids.append(found.experiment_id)
        if not ids:
            return []
        runs = self._call("search runs", client.search_runs, ids, max_results=limit,
                          order_by=["attributes.start_time DESC"]) or []
        out = []
        for run in runs:
            info, data = run.info, run.data
            out.append({
                "run_id": info.run_id, "name": info.run_name, "status": info.status,
                "start": (info.start_time or 0) / 1e3,
                "seconds": ((info.end_time - info.start_time) / 1e3
                            if info.end_time and info.start_time else None),
                "experiment": next((n for n, i in zip(experiment_names, ids)
                                    if i == info.experiment_id), info.experiment_id),
                "tags": {k: v for k, v in data.tags.items() if not k.startswith("mlflow.")},
                "ndcg": data.metrics.get(mlflow_metric_name("ndcg@10")),
                "metrics": dict(data.metrics),
            })
        return out


def _baselines(metrics: dict[str, float]) -> dict[str, dict[str, float]]:
    out: dict[str, dict[str, float]] = {}
    for name, key in METRICS:
        for logged, value in metrics.items():
            prefix, _, rest = logged.partition(".")
            if rest == key:
                out.setdefault(prefix, {})[name] = value
    return out


def group_by_data_set(rows: list[VersionRow]) -> list[DataSetGroup]:
    """The versions (newest first) in groups of one data set each, the newest group first. A
    version joins the first group whose newest version is of the same data set; versions that
    record no identity join the group of the oldest version that records one (or form one group
    when none does)."""
    groups: list[DataSetGroup] = []
    untagged = []
    for row in rows:
        if row.data_identity is None:
            untagged.append(row)
            continue
        group = next((g for g in groups if g.identity.same_data_set(row.data_identity)), None)
        if group is None:
            group = DataSetGroup(row.data_identity)
            groups.append(group)
        group.rows.append(row)
    if untagged:
        tagged = [r for r in rows if r.data_identity is not None]
        if tagged:
            oldest = min(tagged, key=lambda r: int(r.version) if r.version.isdigit() else 0)
            home = next(g for g in groups if oldest in g.rows)
        else:
            home = DataSetGroup(None)
            groups.append(home)
        home.rows.extend(untagged)
        home.rows.sort(key=lambda r: int(r.version) if r.version.isdigit() else 0, reverse=True)
    return groups


def _mark_best(rows: list[VersionRow]) -> None:
    for name, _ in METRICS:
        values = [r.metrics[name] for r in rows if name in r.metrics]
        if len(values) < 2:
            continue
        top = max(values)
        for row in rows:
            if row.metrics.get(name) == top:
                row.best.add(name)
