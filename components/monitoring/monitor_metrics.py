"""The last drift check as Prometheus series, pushed to a Pushgateway.

A check is a batch job (a pipeline step, minutes apart), not a service to scrape: the
Prometheus way for a batch job's result is a Pushgateway. Each check replaces the whole group
of job `recsys-monitoring` (HTTP PUT), so a feature that is no longer checked does not keep a
stale value. The PrometheusRule in manifests/base/monitoring alerts on these series and the
Grafana dashboard shows them.
"""

from __future__ import annotations

import math

from prometheus_client import CollectorRegistry, Gauge, push_to_gateway

from components.errors import RecsysError
from components.monitoring.monitor import RETRAIN, Decision

JOB = "recsys-monitoring"


def decision_registry(decision: Decision, model_name: str) -> CollectorRegistry:
    """The series of one check, on a registry of their own."""
    registry = CollectorRegistry()
    retrain = Gauge(
        "recsys_monitoring_retrain",
        "1 when the last drift check decided to retrain, else 0",
        ["model_name", "model_version"],
        registry=registry,
    )
    checked = Gauge(
        "recsys_monitoring_last_check_timestamp_seconds",
        "Unix time of the last drift check",
        ["model_name"],
        registry=registry,
    )
    age = Gauge(
        "recsys_monitoring_model_age_days",
        "Age of the champion at the last check",
        ["model_name"],
        registry=registry,
    )
    rows = Gauge(
        "recsys_monitoring_window_rows",
        "Rows of each view in the checked window",
        ["model_name", "view"],
        registry=registry,
    )
    p_value = Gauge(
        "recsys_drift_p_value",
        "p-value of each feature's drift test",
        ["model_name", "view", "feature"],
        registry=registry,
    )
    drifted = Gauge(
        "recsys_drift_detected",
        "1 when the feature's test is below its threshold",
        ["model_name", "view", "feature"],
        registry=registry,
    )
    retrain.labels(model_name, decision.model_version).set(int(decision.decision == RETRAIN))
    checked.labels(model_name).set(decision.checked_at)
    model_age = decision.window.get("model_age_days")
    if model_age is not None and math.isfinite(model_age):
        age.labels(model_name).set(model_age)
    for view, count in decision.window.get("rows", {}).items():
        rows.labels(model_name, view).set(count)
    for key, result in decision.drift.items():
        view, feature = key.split(".", 1)
        p_value.labels(model_name, view, feature).set(result["p_value"])
        drifted.labels(model_name, view, feature).set(int(result["drift"]))
    return registry


def push_decision(
    gateway: str, decision: Decision, model_name: str, *, timeout: float = 10.0
) -> None:
    """Replace the `recsys-monitoring` group on the Pushgateway at `gateway` (host:port or URL)."""
    try:
        push_to_gateway(
            gateway, job=JOB, registry=decision_registry(decision, model_name), timeout=timeout
        )
    except OSError as exc:  # URLError, connection refused, timeouts
        raise RecsysError(
            f"cannot push the drift check to the Pushgateway at {gateway}: {exc}"
        ) from None
