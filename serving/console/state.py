"""What the console's handlers share: its configuration, one client per dependency, its
Prometheus metrics, and the reads it reuses for a few seconds."""
from __future__ import annotations

import logging
from dataclasses import dataclass, field
from typing import Any

from prometheus_client import CollectorRegistry, Counter, Histogram

from serving.console import monitoring, tryit
from serving.console.clients import EventsClient, PredictorClient, Unavailable
from serving.console.config import ConsoleConfig
from serving.console.recent import Recent
from serving.console.registry_view import Registry

log = logging.getLogger("recsys.console")


class ConsoleMetrics:
    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        self.requests = Counter("recsys_console_requests", "Requests answered, by route and status",
                                ["route", "status"], registry=self.registry)
        self.seconds = Histogram("recsys_console_request_seconds", "Time to answer, by route",
                                 ["route"], registry=self.registry,
                                 buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10))
        self.unavailable = Counter("recsys_console_unavailable",
                                   "Pages or sections shown without a dependency, by dependency",
                                   ["dependency"], registry=self.registry)
        self.feedback = Counter("recsys_console_feedback_events",
                                "Feedback events sent through the events API, by type and outcome",
                                ["type", "outcome"], registry=self.registry)


@dataclass
class Console:
    """What the handlers share: the configuration and one client per dependency."""

    config: ConsoleConfig
    registry: Registry
    predictor: PredictorClient
    events: EventsClient
    catalogue: tryit.Catalogue
    metrics: ConsoleMetrics
    request_log: monitoring.RequestLogReader
    experiment_config: Any  # components.config.ExperimentConfig
    # How `recsys rollout` finds, measures and acts on the experiment (an ExperimentBackend,
    # handed over by the command line; None: the Experiments page says it is not wired in).
    experiments: Any = None
    # The slow pages' data, reused for a few seconds (see serving.console.recent).
    recent: Recent = field(default_factory=lambda: Recent(5.0))

    def warm(self) -> None:
        """Import MLflow and open its store once, off the request path (the first import
        costs seconds)."""
        try:
            import components.experiments.experiment  # noqa: F401 (scipy and pandas: seconds, once)

            self.registry.aliases()
        except Unavailable:
            pass

    def answered_by(self, model_version: str) -> str:
        """"MLflow version 3, champion" for an artifact version, as far as it can be told."""
        parts = []
        for version in model_version.split("+"):
            mlflow_version = self.catalogue.registered_version(version)
            if mlflow_version is None:
                continue
            try:
                aliases = [a for a, v in self.registry.aliases().items() if v == mlflow_version]
            except Unavailable:
                aliases = []
            parts.append(f"MLflow version {mlflow_version}"
                         + (f", {' and '.join(sorted(aliases))}" if aliases else ""))
        return "; ".join(parts)

    def drift_decisions(self) -> tuple[list[dict], str | None]:
        from components.config import RegistryConfig

        found, problem = monitoring.drift_decisions(self.registry, RegistryConfig().experiment)
        if problem and not found:
            self.metrics.unavailable.labels("drift").inc()
        return found, problem

    def close(self) -> None:
        self.predictor.close()
        self.events.close()

    def unavailable(self, dependency: str, exc: Exception) -> str:
        self.metrics.unavailable.labels(dependency).inc()
        return str(exc)


def build_console(config: ConsoleConfig, *, experiment_config: Any = None,
                  experiments: Any = None) -> Console:
    from components.config import ExperimentConfig

    registry = Registry(config.tracking_uri, config.model_name)
    return Console(
        config=config,
        registry=registry,
        predictor=PredictorClient(config.predictor, config.model_name, config.timeout),
        events=EventsClient(config.events, config.timeout),
        catalogue=tryit.Catalogue(config.home, tryit.registry_items_lookup(registry)),
        metrics=ConsoleMetrics(),
        request_log=monitoring.RequestLogReader(config.request_log),
        experiment_config=experiment_config or ExperimentConfig(),
        experiments=experiments,
    )
