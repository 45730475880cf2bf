"""Submit the compiled pipeline to a Kubeflow Pipelines host: one run, or a recurring (cron) run.

Thin over `kfp.Client` (KFP 2.x REST API, /apis/v2beta1): `create_run_from_pipeline_package`
for a run, `create_experiment` + `create_recurring_run(pipeline_package_path=...,
cron_expression=...)` for a schedule. `--param k=v` strings become typed values; when the
package declares a parameter's type (root inputDefinitions), that type decides, so `--param
seed=7` is an int and `--param items=42` stays a string. Unknown parameters are refused before
anything is sent, and server errors come back as one line (ClusterError).
"""
from __future__ import annotations

import json
import logging
import warnings
from pathlib import Path
from typing import Any

from components.errors import ClusterError, ConfigError

log = logging.getLogger(__name__)

_TRUE, _FALSE = {"true", "yes", "on"}, {"false", "no", "off"}


def _guess(text: str) -> Any:
    """A literal's natural type: bool, int, float, else the string itself."""
    if text.lower() in _TRUE:
        return True
    if text.lower() in _FALSE:
        return False
    for kind in (int, float):
        try:
            return kind(text)
        except ValueError:
            pass
    return text


def _as_declared(key: str, text: str, kind: str) -> Any:
    """Convert to the KFP parameter type the pipeline declares, or say why it cannot be."""
    try:
        if kind == "STRING":
            return text
        if kind == "NUMBER_INTEGER":
            return int(text)
        if kind == "NUMBER_DOUBLE":
            return float(text)
        if kind == "BOOLEAN":
            if text.lower() in _TRUE | _FALSE:
                return text.lower() in _TRUE
            raise ValueError(text)
        if kind in {"LIST", "STRUCT"}:
            value = json.loads(text)
            if isinstance(value, list if kind == "LIST" else dict):
                return value
            raise ValueError(text)
    except ValueError:
        raise ConfigError(f"--param {key}={text}: the pipeline declares {key} as {kind}") from None
    return _guess(text)


def pipeline_parameters(package_path: str | Path) -> dict[str, str]:
    """{parameter name: KFP parameter type} of the pipeline package's root inputs."""
    import yaml

    path = Path(package_path)
    if not path.is_file():
        raise ConfigError(f"pipeline package {path} not found (compile it with `recsys compile`)")
    try:
        spec = next(iter(yaml.safe_load_all(path.read_text())))
        params = spec["root"]["inputDefinitions"]["parameters"]
    except (yaml.YAMLError, KeyError, TypeError, StopIteration):
        return {}  # not an IR YAML we can read: let the server judge the parameters
    return {name: str(p.get("parameterType", "")) for name, p in params.items()}


def parse_params(pairs: list[str] | None, declared: dict[str, str] | None = None) -> dict[str, Any]:
    """`["seed=7", "source=ml-100k"]` → `{"seed": 7, "source": "ml-100k"}`.

    With `declared` (from `pipeline_parameters`), names must be known and values fit the type."""
    params: dict[str, Any] = {}
    for pair in pairs or []:
        key, sep, text = pair.partition("=")
        key = key.strip()
        if not sep or not key:
            raise ConfigError(f"--param {pair!r} is not of the form name=value")
        if declared:
            if key not in declared:
                raise ConfigError(f"--param {key}: the pipeline has no such parameter "
                                  f"(it has: {', '.join(sorted(declared))})")
            params[key] = _as_declared(key, text, declared[key])
        else:
            params[key] = _guess(text)
    return params


def _client(host: str, namespace: str | None, client: Any = None) -> Any:
    if client is not None:
        return client
    if not host:
        raise ConfigError("no Kubeflow Pipelines host: pass --host URL or set KFP_HOST")
    import kfp

    kwargs = {"namespace": namespace} if namespace else {}
    # The client warns that it needs KFP >= 2.0.0-beta.2 on every use, and urllib3 logs each
    # retry of an unreachable host: the one-line error below says what matters.
    retry_log = logging.getLogger("urllib3.connectionpool")
    level = retry_log.level
    retry_log.setLevel(logging.ERROR)
    try:
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", category=FutureWarning, module="kfp")
            return kfp.Client(host=host, **kwargs)
    except Exception as exc:  # noqa: BLE001 - the client probes the host (healthz) while it is built
        raise _kfp_error(exc, f"connect to {host}") from None
    finally:
        retry_log.setLevel(level)


def _kfp_error(exc: Exception, doing: str) -> ClusterError:
    status = getattr(exc, "status", None)
    if status is not None:
        body = getattr(exc, "body", None) or ""
        try:
            body = json.loads(body).get("message", body)
        except (ValueError, AttributeError):
            pass
        reason = getattr(exc, "reason", "") or ""
        return ClusterError(f"Kubeflow Pipelines refused to {doing}: {status} {reason}: {body}".rstrip(": "))
    last_line = str(exc).splitlines()[-1] if str(exc) else type(exc).__name__
    return ClusterError(f"Kubeflow Pipelines: could not {doing}: {last_line}")


def _api_errors() -> tuple[type[BaseException], ...]:
    from kfp_server_api.exceptions import ApiException
    from urllib3.exceptions import HTTPError

    return (ApiException, HTTPError, OSError, TimeoutError)


def submit_run(host: str, package_path: str | Path, *, experiment: str, params: dict[str, Any],
               run_name: str | None = None, namespace: str | None = None,
               service_account: str | None = None, client: Any = None) -> str:
    """Start one run of the pipeline package in `experiment`; returns the run id."""
    kfp_client = _client(host, namespace, client)
    try:
        result = kfp_client.create_run_from_pipeline_package(
            str(package_path), arguments=params, run_name=run_name,
            experiment_name=experiment, namespace=namespace, service_account=service_account,
        )
    except _api_errors() as exc:
        raise _kfp_error(exc, f"start a run of {Path(package_path).name}") from None
    log.info("submitted run %s to %s (experiment %s)", result.run_id, host, experiment)
    return result.run_id


def schedule_run(host: str, package_path: str | Path, *, experiment: str, cron: str,
                 params: dict[str, Any], name: str, namespace: str | None = None,
                 service_account: str | None = None, client: Any = None) -> str:
    """Create a recurring run on a cron schedule; returns the recurring run id.

    KFP's cron has six fields, seconds first; a classic five-field expression ("0 3 * * *")
    gets "0 " in front so it means what it says in crontab."""
    fields = cron.split()
    if len(fields) == 5:
        cron = "0 " + " ".join(fields)
    elif len(fields) != 6:
        raise ConfigError(f"--cron {cron!r} must have 5 fields (crontab) or 6 (seconds first)")
    kfp_client = _client(host, namespace, client)
    try:
        found = kfp_client.create_experiment(name=experiment, namespace=namespace)
        recurring = kfp_client.create_recurring_run(
            experiment_id=found.experiment_id, job_name=name, cron_expression=cron,
            pipeline_package_path=str(package_path), params=params, max_concurrency=1,
            no_catchup=True,  # a cluster that was down should not replay every missed night
            service_account=service_account,
        )
    except _api_errors() as exc:
        raise _kfp_error(exc, f"schedule {name!r}") from None
    log.info("scheduled %s (%s) on %s", name, cron, host)
    return recurring.recurring_run_id
