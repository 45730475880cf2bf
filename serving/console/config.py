"""Where the console finds each store and service, from the run home unless told otherwise."""
from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

DEFAULT_PORT = 8088
DEFAULT_PREDICTOR_URL = "http://127.0.0.1:8080"
DEFAULT_EVENTS_URL = "http://127.0.0.1:8090"
REQUEST_LOG_DIR = "requests"  # under the run home, as `recsys monitor` reads it


@dataclass(frozen=True)
class ConsoleConfig:
    home: Path
    tracking_uri: str
    store_url: str
    request_log: Path
    predictor_url: str = DEFAULT_PREDICTOR_URL
    events_url: str = DEFAULT_EVENTS_URL
    model_name: str = "recsys"
    # On a cluster the console's RBAC is read-only: promote and rollback are left to
    # `recsys rollout` (or its CronJob) and the buttons say so.
    read_only: bool = False
    # Seconds to wait for the predictor or the events service: a page never hangs on them.
    timeout: float = 3.0
    # Where `recsys rollout` acts: "local" (the deployment record) or "cluster".
    target: str = "local"
    namespace: str = "recsys"
    inference_service: str = "recsys"

    @property
    def predictor(self) -> str:
        return self.predictor_url.rstrip("/")

    @property
    def events(self) -> str:
        return self.events_url.rstrip("/")


def console_config(
    home: Path | None = None,
    *,
    tracking_uri: str | None = None,
    store_url: str | None = None,
    request_log: Path | None = None,
    **options,
) -> ConsoleConfig:
    """The configuration for a run home: MLflow at `$MLFLOW_TRACKING_URI` or the home's SQLite
    store, the feedback store at `$RECSYS_FEEDBACK_STORE` or the home's `feedback.db`, the
    request log in `<home>/requests`."""
    from components.feedback.feedback_store import default_store_url
    from components.release.registry import default_home

    home = Path(home or default_home()).resolve()
    if tracking_uri is None:
        # Not `default_tracking_uri`: it creates the home, and the console only reads.
        tracking_uri = os.environ.get("MLFLOW_TRACKING_URI") or f"sqlite:///{home / 'mlflow.db'}"
    if store_url is None:
        store_url = os.environ.get("RECSYS_FEEDBACK_STORE") or default_store_url(home)
    return ConsoleConfig(
        home=home,
        tracking_uri=tracking_uri,
        store_url=store_url,
        request_log=Path(request_log) if request_log else home / REQUEST_LOG_DIR,
        **options,
    )
