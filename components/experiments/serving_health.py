"""Latency and errors per model version, for the experiment's guardrails.

Locally the predictor's own `/metrics` (the router's `recsys_experiment_*` series, labelled by
model version; counts since the server started). On a cluster Prometheus, over the experiment's
window: KServe's `request_predict_seconds` histogram and the predictor's `recsys_errors_total`,
per Knative revision (the PodMonitor copies the revision label onto every series), mapped to
model versions through the InferenceService's status.
"""
from __future__ import annotations

import math
from collections.abc import Iterable, Mapping

import httpx
from prometheus_client.parser import text_string_to_metric_families

from components.errors import RecsysError
from components.experiments.experiment import VersionHealth

REVISION_LABEL = "serving_knative_dev_revision"


def histogram_quantile(q: float, buckets: Iterable[tuple[float, float]]) -> float | None:
    """Prometheus' `histogram_quantile` over (upper bound, cumulative count) pairs: linear
    interpolation within the bucket that holds the quantile; the highest finite bound if it
    falls in the +Inf bucket."""
    ordered = sorted(buckets)
    if not ordered or ordered[-1][1] <= 0:
        return None
    rank = q * ordered[-1][1]
    lower_bound, lower_count = 0.0, 0.0
    for bound, count in ordered:
        if count >= rank:
            if math.isinf(bound):
                return lower_bound
            if count == lower_count:
                return bound
            return lower_bound + (bound - lower_bound) * (rank - lower_count) / (count - lower_count)
        lower_bound, lower_count = bound, count
    return lower_bound


def parse_router_metrics(text: str, model_name: str) -> dict[str, VersionHealth]:
    """VersionHealth per model version from the predictor's /metrics text: model calls (the
    latency histogram's count), failed calls and the p99 of the call time."""
    buckets: dict[str, list[tuple[float, float]]] = {}
    calls: dict[str, float] = {}
    errors: dict[str, float] = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            labels = sample.labels
            if labels.get("model_name") != model_name or "model_version" not in labels:
                continue
            version = labels["model_version"]
            if sample.name == "recsys_experiment_model_seconds_bucket":
                buckets.setdefault(version, []).append((float(labels["le"]), sample.value))
            elif sample.name == "recsys_experiment_model_seconds_count":
                calls[version] = sample.value
            elif sample.name == "recsys_experiment_errors_total":
                errors[version] = sample.value
    return {v: VersionHealth(calls[v], errors.get(v, 0.0), histogram_quantile(0.99, buckets.get(v, [])))
            for v in calls}


def scrape_local(url: str, model_name: str, timeout: float = 5.0) -> dict[str, VersionHealth]:
    """The guardrail inputs from a running predictor's /metrics."""
    try:
        response = httpx.get(url, timeout=timeout)
        response.raise_for_status()
    except httpx.HTTPError as exc:
        raise RecsysError(f"cannot read the predictor's metrics at {url}: {exc}") from None
    return parse_router_metrics(response.text, model_name)


def prometheus_query(url: str, promql: str, timeout: float = 10.0) -> list[tuple[dict[str, str], float]]:
    """An instant query against Prometheus' HTTP API: (labels, value) per series."""
    try:
        response = httpx.get(f"{url.rstrip('/')}/api/v1/query", params={"query": promql}, timeout=timeout)
        body = response.json()
    except (httpx.HTTPError, ValueError) as exc:
        raise RecsysError(f"cannot query Prometheus at {url}: {exc}") from None
    if body.get("status") != "success":
        raise RecsysError(f"Prometheus at {url} refused the query ({body.get('error', response.status_code)}): {promql}")
    return [(series["metric"], float(series["value"][1])) for series in body["data"]["result"]]


def cluster_queries(namespace: str, window_seconds: int) -> dict[str, str]:
    window = f"{max(int(window_seconds), 60)}s"
    where = f'namespace="{namespace}"'
    return {
        "requests": f"sum by ({REVISION_LABEL}) (increase(request_predict_seconds_count{{{where}}}[{window}]))",
        "errors": f"sum by ({REVISION_LABEL}) (increase(recsys_errors_total{{{where}, kind!=\"invalid_input\"}}[{window}]))",
        "p99": f"histogram_quantile(0.99, sum by ({REVISION_LABEL}, le) "
               f"(rate(request_predict_seconds_bucket{{{where}}}[{window}])))",
    }


def cluster_health(url: str, namespace: str, revisions: Mapping[str, str],
                   window_seconds: int) -> dict[str, VersionHealth]:
    """VersionHealth per model version over the last `window_seconds`; `revisions` maps each
    Knative revision to the model version it serves."""
    values: dict[str, dict[str, float]] = {}
    for name, promql in cluster_queries(namespace, window_seconds).items():
        for labels, value in prometheus_query(url, promql):
            revision = labels.get(REVISION_LABEL)
            if revision in revisions and not math.isnan(value):
                values.setdefault(revisions[revision], {})[name] = value
    return {version: VersionHealth(v.get("requests", 0.0) + v.get("errors", 0.0),
                                   v.get("errors", 0.0), v.get("p99"))
            for version, v in values.items()}
