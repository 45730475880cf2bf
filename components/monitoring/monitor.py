"""The retraining decision: read a window of what serving observed, test it against the
champion's references, and say `retrain` (with every reason that holds) or `ok`.

Reasons, each with its threshold in the `monitoring` section of the config:
- drift: a detector flags its view (`components.monitoring.drift`; features in `ignore_features` are
  reported, not counted);
- staleness: the champion is older than `max_model_age_days`;
- online metric degradation: the champion's click-through rate in the window fell by more than
  `max_ctr_drop` against the window before, and a one-sided two-proportion z-test at `p_value`
  says the fall is not noise (feedback store only; both windows need `min_impressions`);
- new data volume: feedback interactions newer than the champion's training data reach
  `new_data_fraction` of its training interactions.
A view with fewer than `min_window` rows is not tested, and the decision says so.

The outcome is `retrain`, `ok`, or `alert`: a reason holds but retraining could not change the
model, as no feedback interaction is newer than the champion's training data (the training
pipeline would read the same data again); the decision says so in `no_retrain_reason`, and no
retraining is launched.
"""

from __future__ import annotations

import calendar
import json
import math
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import pandas as pd
from scipy.stats import norm

from components.config import MonitoringConfig
from components.errors import DataValidationError, RecsysError
from components.feedback.observations import (
    POSITIVE_EVENT_TYPES,
    BadRows,
    is_store_url,
    read_feedback_events,
    read_impressions,
    read_request_log_window,
    redact,
    served_from_impressions,
    served_from_request_log,
)
from components.monitoring.drift import ViewResult, run_detectors
from components.monitoring.drift_features import (
    FeatureTable,
    ModelFacts,
    event_table,
    rating_table,
    score_table,
    served_table,
)
from components.monitoring.drift_reference import References

RETRAIN, OK, ALERT = "retrain", "ok", "alert"
NO_NEW_DATA = (
    "no new data to retrain on: no feedback interaction is newer than the champion's training "
    "data, so retraining would read the same data again; not retrained"
)
CLICK_TYPES = ("click", "like", "consume")


@dataclass
class Window:
    """The served rows and positive feedback events of one check."""

    served: pd.DataFrame  # user_id, k, item_ids, scores (None without), unix_time, model_version
    events: pd.DataFrame  # validated events (type, user_id, item_id, timestamp, value, ...)
    since: float
    until: float
    sources: list[str] = field(default_factory=list)
    bad: BadRows = field(default_factory=BadRows)  # rows skipped as unreadable


@dataclass
class OnlineMetric:
    clicks: int
    impressions: int
    previous_clicks: int
    previous_impressions: int

    @property
    def ctr(self) -> float:
        return self.clicks / self.impressions if self.impressions else math.nan

    @property
    def previous_ctr(self) -> float:
        return (
            self.previous_clicks / self.previous_impressions
            if self.previous_impressions
            else math.nan
        )


@dataclass
class Decision:
    decision: str
    reasons: list[str]
    drift: dict[str, dict[str, Any]]
    notes: list[str]
    model_version: str
    checked_at: float
    window: dict[str, Any]
    online: dict[str, Any] | None = None
    # Why a decision with reasons is `alert` and not `retrain` (None otherwise).
    no_retrain_reason: str | None = None

    def to_json(self) -> str:
        """Strict JSON: a value that is not a finite number (a CTR with no impressions) is null."""
        return json.dumps(
            finite(asdict(self)), indent=2, sort_keys=True, allow_nan=False, default=str
        )


def finite(value: Any) -> Any:
    """`value` with every NaN or infinity (at any depth) replaced by None."""
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, dict):
        return {k: finite(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [finite(v) for v in value]
    return value


# ---------------------------------------------------------------- the window
def read_window(
    *, request_log: str | Path | None, feedback: str | None, as_of: float, config: MonitoringConfig
) -> Window:
    """The most recent `window_size` served rows and positive events of the `window_hours`
    before `as_of`. Served rows come from the request log when there is one (only the window
    is read, from the end of the newest files), else from the feedback store's impressions;
    events from the store or an events file. A row that cannot be read (not JSON, not a
    record, an event breaking the contract) is skipped and counted in `Window.bad` with its
    file and line; only a window with bad rows and nothing valid is an error."""
    until, since = as_of, as_of - config.window_hours * 3600.0
    log_dir = Path(request_log) if request_log else None
    has_log = log_dir is not None and log_dir.is_dir()
    if not has_log and not feedback:
        where = f"no request log at {log_dir}" if log_dir else "no request log"
        raise RecsysError(
            f"nothing to check: {where} and no feedback events; serve the model with "
            "`recsys serve` (it logs its answers), post events with `recsys events serve`, or "
            "pass --request-log DIR"
        )
    sources, bad = [], BadRows()
    if has_log:
        logged = read_request_log_window(
            log_dir, since=since, until=until, limit=config.window_size, bad=bad
        )
        served = served_from_request_log(logged)
        sources.append(f"request log {log_dir}")
    elif feedback and is_store_url(feedback):
        served = served_from_impressions(read_impressions(feedback, since=since, until=until))
        sources.append(f"impressions in {redact(feedback)}")
    else:
        served = served_from_impressions(pd.DataFrame())
    served = served[(served["unix_time"] >= since) & (served["unix_time"] < until)]
    served = served.tail(config.window_size).reset_index(drop=True)
    if feedback:
        events = read_feedback_events(
            feedback, since=since, until=until, types=POSITIVE_EVENT_TYPES, bad=bad
        )
        events = events.sort_values("timestamp", kind="stable").tail(config.window_size)
        sources.append(f"events in {redact(feedback)}")
    else:
        events = pd.DataFrame(columns=["type", "user_id", "item_id", "timestamp", "value"])
    if bad.count and served.empty and events.empty:
        raise DataValidationError(
            f"nothing valid to check in the window: {bad.count:,} unreadable row(s) skipped, "
            f"the first {bad.examples[0]}"
        )
    return Window(served, events.reset_index(drop=True), since, until, sources, bad)


def window_tables(
    window: Window, facts: ModelFacts, references: References
) -> dict[str, FeatureTable]:
    profile = references.profile
    ratings = window.events.loc[window.events["type"] == "rating", "value"]
    return {
        "requests": served_table(window.served, facts, profile),
        "scores": score_table(window.served),
        "events": event_table(window.events, facts, profile),
        "ratings": rating_table(ratings.to_numpy(dtype=float), profile),
    }


# ---------------------------------------------------------------- online metrics
def online_metric(
    feedback: str, model_version: str, window: Window, bad: BadRows | None = None
) -> OnlineMetric | None:
    """Clicks (click, like, consume events naming a shown item's request) over impressions of
    `model_version`, in the window and in the window of equal length before it (bad events
    skipped into `bad`)."""
    if not is_store_url(feedback):
        return None
    length = window.until - window.since
    impressions = read_impressions(feedback, since=window.since - length, until=window.until)
    if impressions.empty:
        return None
    impressions = impressions[impressions["model_version"].astype(str) == model_version]
    events = read_feedback_events(
        feedback, since=window.since - length, until=window.until, types=CLICK_TYPES, bad=bad
    )
    clicked = set(zip(events["request_id"].astype(str), events["item_id"].astype(str)))
    hit = [
        (r, i) in clicked
        for r, i in zip(impressions["request_id"].astype(str), impressions["item_id"].astype(str))
    ]
    current = (impressions["timestamp"] >= window.since).to_numpy()
    hits = pd.Series(hit, dtype=bool).to_numpy()
    return OnlineMetric(
        int(hits[current].sum()),
        int(current.sum()),
        int(hits[~current].sum()),
        int((~current).sum()),
    )


def ctr_drop_p_value(metric: OnlineMetric) -> float:
    """One-sided two-proportion z-test (pooled) that the current CTR is below the previous."""
    n1, n2 = metric.previous_impressions, metric.impressions
    pooled = (metric.previous_clicks + metric.clicks) / (n1 + n2)
    se = math.sqrt(pooled * (1 - pooled) * (1 / n1 + 1 / n2)) if 0 < pooled < 1 else 0.0
    if se == 0.0:
        return 1.0
    return float(norm.sf((metric.previous_ctr - metric.ctr) / se))


# ---------------------------------------------------------------- the decision
def model_age_days(manifest: dict[str, Any], now: float) -> float:
    created = manifest.get("created_at")
    if not created:
        return math.nan
    stamp = calendar.timegm(time.strptime(created, "%Y-%m-%dT%H:%M:%SZ"))
    return (now - stamp) / 86_400.0


def decide(
    *,
    references: References,
    facts: ModelFacts,
    manifest: dict[str, Any],
    window: Window,
    config: MonitoringConfig,
    new_interactions: int | None = None,
    online: OnlineMetric | None = None,
    now: float | None = None,
) -> tuple[Decision, list[ViewResult]]:
    """Run the detectors on the window and weigh every reason; returns the decision and the
    view results (for the report). `new_interactions` is the count of feedback interactions
    newer than the champion's training data (None: not known); with reasons and 0 of them the
    decision is `alert`, not `retrain`."""
    now = time.time() if now is None else now
    tables = window_tables(window, facts, references)
    notes: list[str] = []
    tested = {}
    for name, table in tables.items():
        if name not in references.detectors:
            notes.append(f"{name}: no reference for this view in the model")
        elif len(table) < config.min_window:
            notes.append(
                f"{name}: {len(table)} rows in the window, fewer than "
                f"monitoring.min_window ({config.min_window}): not tested"
            )
        else:
            tested[name] = table
    if window.bad.count:
        notes.insert(
            0,
            f"skipped {window.bad.count:,} unreadable row(s), decided on the rest; the first: "
            + "; ".join(window.bad.examples[:3]),
        )
    results = run_detectors(references.detectors, tested)
    drift, drifted = {}, []
    ignored = set(config.ignore_features)
    for view in results:
        for f in view.features:
            key = f"{f.view}.{f.feature}"
            counted = f.drift and key not in ignored
            drift[key] = {
                "p_value": f.p_value,
                "drift": f.drift,
                "statistic": f.statistic,
                "threshold": f.threshold,
                "test": f.test,
                "counted": counted,
            }
            if counted:
                drifted.append(f"{key} ({f.test} p={f.p_value:.2g} < {f.threshold:.2g})")
    reasons = []
    if drifted:
        reasons.append("drift: " + ", ".join(drifted))
    age = model_age_days(manifest, now)
    if age > config.max_model_age_days:
        reasons.append(
            f"staleness: the champion is {age:.1f} days old, more than "
            f"monitoring.max_model_age_days ({config.max_model_age_days:g})"
        )
    train_size = int(references.summary.get("train_interactions") or facts.n_train_interactions)
    share = (new_interactions or 0) / train_size if train_size else 0.0
    if new_interactions and share >= config.new_data_fraction:
        reasons.append(
            f"new data: {new_interactions:,} feedback interactions newer than the "
            f"champion's training data, {share:.1%} of its {train_size:,} training interactions "
            f"(monitoring.new_data_fraction {config.new_data_fraction:.0%})"
        )
    online_summary = None
    if online is not None:
        online_summary = {**asdict(online), "ctr": online.ctr, "previous_ctr": online.previous_ctr}
        enough = min(online.impressions, online.previous_impressions) >= config.min_impressions
        if not enough:
            notes.append(
                f"online: {online.impressions} and {online.previous_impressions} "
                f"impressions in this and the previous window, fewer than "
                f"monitoring.min_impressions ({config.min_impressions}): not compared"
            )
        elif online.previous_ctr > 0:
            drop = 1 - online.ctr / online.previous_ctr
            p = ctr_drop_p_value(online)
            online_summary.update(relative_drop=drop, p_value=p)
            if drop > config.max_ctr_drop and p < config.p_value:
                reasons.append(
                    f"online metric: click-through rate fell from {online.previous_ctr:.2%} "
                    f"to {online.ctr:.2%} ({drop:.0%} down, p={p:.2g}; "
                    f"monitoring.max_ctr_drop {config.max_ctr_drop:.0%})"
                )
    outcome, blocked = (RETRAIN if reasons else OK), None
    if reasons and new_interactions == 0:
        outcome, blocked = ALERT, NO_NEW_DATA
    decision = Decision(
        decision=outcome,
        reasons=reasons,
        drift=drift,
        notes=notes,
        model_version=str(manifest.get("model_version", "")),
        checked_at=now,
        window={
            "since": window.since,
            "until": window.until,
            "sources": window.sources,
            "rows": {name: len(t) for name, t in tables.items()},
            "model_age_days": age,
            "new_interactions": new_interactions,
            "skipped_rows": window.bad.count,
            "skipped": list(window.bad.examples),
        },
        online=online_summary,
        no_retrain_reason=blocked,
    )
    return decision, results


def count_new_interactions(
    feedback: str | None, manifest: dict[str, Any], bad: BadRows | None = None
) -> int:
    """Positive feedback events later than the champion's training data (what retraining would
    add); without timestamps in that data, events since the champion was created (bad events
    skipped into `bad`)."""
    if not feedback:
        return 0
    since = float(manifest.get("train_end") or 0.0)
    if since <= 0 and manifest.get("created_at"):
        since = calendar.timegm(time.strptime(manifest["created_at"], "%Y-%m-%dT%H:%M:%SZ"))
    return len(
        read_feedback_events(feedback, since=since or None, types=POSITIVE_EVENT_TYPES, bad=bad)
    )
