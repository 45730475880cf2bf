"""Prometheus metrics of the recommender, on the default registry that KServe's `/metrics` serves.

Beside KServe's own latency histograms (`request_predict_seconds`, ...), the predictor counts
what a recommender operator watches: answered rows, cold starts, errors by kind, and which
model version serves (`recsys_model_info`, value 1, so dashboards can join on the version).

With `--workers N > 1` each REST worker process keeps its own counters (no multiprocess
registry is set up): a scrape sees one worker. Run one worker per pod and scale pods instead.
"""
from __future__ import annotations

from prometheus_client import Counter, Gauge

from serving.request_log import DROP_REASONS

RECOMMENDATIONS = Counter(
    "recsys_recommendations",
    "Recommendation rows answered (one per user or item in a request)",
    ["model_name", "mode"],
)
COLD_START = Counter(
    "recsys_cold_start",
    "Rows answered for users unseen in training (popularity or history-based answer)",
    ["model_name"],
)
UNRESOLVED_ITEMS = Counter(
    "recsys_unresolved_items",
    "Similar-item queries whose item id or title matched no item",
    ["model_name"],
)
ERRORS = Counter(
    "recsys_errors",
    "Requests that failed, by kind (invalid_input: the client's fault; internal: a bug)",
    ["model_name", "kind"],
)
REQUEST_LOG_DROPPED = Counter(
    "recsys_request_log_dropped",
    "Answered rows not written to the request log, by reason (queue_full: the writer fell "
    "behind; encode: a value JSON cannot carry; write: disk full or file unwritable; closed)",
    ["model_name", "reason"],
)
MODEL_INFO = Gauge(
    "recsys_model_info",
    "The model being served (value 1); labels carry its version and training data fingerprint",
    ["model_name", "model_version", "data_fingerprint"],
)
ANSWER_CACHE = Counter(
    "recsys_answer_cache",
    "User rows the answer cache could hold, by result: hit (the precomputed table, or the kept "
    "answer of a user whose fresh history has not changed since), miss (a model call)",
    ["model_name", "result"],
)
ANSWER_CACHE_EVICTIONS = Counter(
    "recsys_answer_cache_evictions",
    "Kept answers dropped to stay within --answer-cache-size (least recently used first)",
    ["model_name"],
)
ANSWER_CACHE_ENTRIES = Gauge(
    "recsys_answer_cache_entries",
    "Answers kept beside the precomputed table (users with fresh history, rows not filled yet)",
    ["model_name"],
)
EXPLAINED_ROWS = Counter(
    "recsys_explained_rows",
    "Rows each model explained (the explain input or :explain); plain requests never add",
    ["model_name"],
)
RANKER_COMPILED = Gauge(
    "recsys_ranker_compiled",
    "1 when the ranker's trees are compiled (the same scores as LightGBM's, at a fraction of the "
    "cost), 0 when LightGBM scores (turned off, or a fallback)",
    ["model_name"],
)
RANKER_COMPILE_FALLBACKS = Counter(
    "recsys_ranker_compile_fallbacks",
    "Model loads where compiling the ranker was refused or failed, so LightGBM scores (the "
    "reason is logged)",
    ["model_name"],
)
MODEL_READY = Gauge("recsys_model_ready", "1 when the model loaded and passed its warm-up", ["model_name"])


class ModelMetrics:
    """Label-bound children, resolved once at load time so the request path only increments."""

    def __init__(self, model_name: str):
        self.model_name = model_name
        self.user_rows = RECOMMENDATIONS.labels(model_name, "user")
        self.item_rows = RECOMMENDATIONS.labels(model_name, "item")
        self.cold_start = COLD_START.labels(model_name)
        self.unresolved = UNRESOLVED_ITEMS.labels(model_name)
        self.invalid_input = ERRORS.labels(model_name, "invalid_input")
        self.internal = ERRORS.labels(model_name, "internal")
        self.not_ready = ERRORS.labels(model_name, "not_ready")
        self._log_dropped = {
            reason: REQUEST_LOG_DROPPED.labels(model_name, reason) for reason in DROP_REASONS
        }
        self.explained_rows = EXPLAINED_ROWS.labels(model_name)
        self.cache_hits = ANSWER_CACHE.labels(model_name, "hit")
        self.cache_misses = ANSWER_CACHE.labels(model_name, "miss")
        self.cache_evictions = ANSWER_CACHE_EVICTIONS.labels(model_name)
        self.cache_entries = ANSWER_CACHE_ENTRIES.labels(model_name)
        self.ranker_compiled = RANKER_COMPILED.labels(model_name)
        self.ranker_compile_fallbacks = RANKER_COMPILE_FALLBACKS.labels(model_name)
        self.ready = MODEL_READY.labels(model_name)
        self.ready.set(0)

    def log_dropped(self, rows: int, reason: str) -> None:
        self._log_dropped[reason].inc(rows)

    def set_model(self, model_version: str, data_fingerprint: str) -> None:
        MODEL_INFO.labels(self.model_name, model_version, data_fingerprint).set(1)
        self.ready.set(1)
