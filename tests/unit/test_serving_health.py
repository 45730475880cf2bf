"""Guardrail inputs: Prometheus' histogram_quantile rule and the router's /metrics text."""
from __future__ import annotations

import math

import pytest
from prometheus_client import CollectorRegistry, Counter, Histogram, generate_latest

from components.experiments.serving_health import histogram_quantile, parse_router_metrics


def test_histogram_quantile_interpolates_as_prometheus_does():
    buckets = [(0.1, 50.0), (0.2, 90.0), (math.inf, 100.0)]
    assert histogram_quantile(0.5, buckets) == pytest.approx(0.1)
    assert histogram_quantile(0.7, buckets) == pytest.approx(0.15)
    assert histogram_quantile(0.99, buckets) == pytest.approx(0.2)  # in +Inf: the last bound
    assert histogram_quantile(0.99, [(0.1, 0.0), (math.inf, 0.0)]) is None


def test_router_metrics_become_health_per_version():
    registry = CollectorRegistry()
    seconds = Histogram("recsys_experiment_model_seconds", "", ["model_name", "model_version"],
                        buckets=(0.001, 0.01, 0.1), registry=registry)
    errors = Counter("recsys_experiment_errors", "", ["model_name", "model_version"],
                     registry=registry)
    for _ in range(98):
        seconds.labels("recsys", "a").observe(0.0005)
    seconds.labels("recsys", "a").observe(0.05)
    seconds.labels("recsys", "a").observe(0.05)
    for _ in range(10):
        seconds.labels("recsys", "b").observe(0.005)
        seconds.labels("other", "b").observe(5.0)  # another model name is not ours
    errors.labels("recsys", "b").inc(2)
    health = parse_router_metrics(generate_latest(registry).decode(), "recsys")
    assert set(health) == {"a", "b"}
    assert (health["a"].requests, health["a"].errors) == (100, 0)
    assert 0.01 < health["a"].p99_seconds <= 0.1
    assert (health["b"].requests, health["b"].errors, health["b"].error_rate) == (10, 2, 0.2)
    assert 0.001 < health["b"].p99_seconds <= 0.01
