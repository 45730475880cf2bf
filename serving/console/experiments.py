"""The Experiments page: champion against challenger as `recsys rollout analyze` sees them.

The analysis is `components.experiments.experiment.analyze` on the feedback store's impressions and events,
with the serving guardrails measured where `recsys rollout analyze` measures them. The chart
replays the same analysis on growing prefixes of the data (the analysis keeps no state, so the
value at time t is what an analysis run at t said): the always-valid interval of the effect and
the always-valid p-value over time.

Which versions are compared, how serving health is read and how a decision is carried out
belong to `recsys rollout` (in `pipelines`, above this layer): the command line hands them to
the console as an `ExperimentBackend`, so promote and rollback here run the very code of
`recsys rollout analyze --auto` and `recsys rollout promote|rollback`.

Concluded experiments stay on the page: every decision `recsys rollout analyze --auto` carried
out is an MLflow run (experiment `<registry experiment>-online`) with the versions, the
decision, its reasons and the test's figures; the page lists them, newest first, with a link to
the full analysis the run holds (`analysis.json`), whether or not a challenger is being tried.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any, Protocol

import numpy as np

from serving.console.clients import Unavailable

CHART_POINTS = 24


class ExperimentBackend(Protocol):
    def target(self) -> Any:
        """What is compared: `.kind`, `.champion`, `.challenger` (artifact versions),
        `.registry_champion`, `.registry_challenger`, `.started_at`. Raises RecsysError when no
        experiment is running."""

    def health(self, target: Any) -> tuple[dict, list[str]]:
        """VersionHealth per version, and notes on what could not be measured."""

    def apply(self, action: str, target: Any) -> list[str]:
        """Promote or roll back; returns what was done."""


@dataclass
class Trajectory:
    times: list[float] = field(default_factory=list)
    effect: list[float | None] = field(default_factory=list)
    ci_low: list[float | None] = field(default_factory=list)
    ci_high: list[float | None] = field(default_factory=list)
    p_value: list[float | None] = field(default_factory=list)


@dataclass
class Concluded:
    """One decision recorded in MLflow by `recsys rollout analyze --auto`."""

    run_id: str
    decided: float  # Unix seconds
    decision: str
    basis: str
    method: str
    champion: str  # MLflow versions
    challenger: str
    champion_model: str  # artifact versions
    challenger_model: str
    reasons: list[str]
    actions: list[str]
    figures: dict[str, float]  # the test's and each arm's, as the run logged them


@dataclass
class ExperimentView:
    target: Any = None
    analysis: Any = None
    trajectory: Trajectory | None = None
    notes: list[str] = field(default_factory=list)
    problem: str | None = None
    method: str = "ab"
    history: list[Concluded] = field(default_factory=list)
    history_problem: str | None = None


def read_feedback(store_url: str, since: float | None):
    from components.errors import RecsysError
    from components.feedback.feedback_store import FeedbackStore
    from serving.console.monitoring import store_exists

    missing = store_exists(store_url)
    if missing:
        raise Unavailable(missing)
    try:
        with FeedbackStore(store_url, create=False, pool_size=1) as store:
            return store.read_impressions(since=since), store.read_events(since=since)
    except RecsysError as exc:
        raise Unavailable(str(exc)) from None
    except Exception as exc:  # noqa: BLE001 (a store without tables, a server gone away)
        first = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
        raise Unavailable(f"the feedback store at {store_url} cannot be read ({first[:200]})") \
            from None


def trajectory(labelled, *, champion: str, challenger: str, config,
               points: int = CHART_POINTS) -> Trajectory:
    """The A/B test at `points` moments from the challenger's first answer to the last
    impression: what the analysis would have said then (p-value, effect and always-valid
    interval). The rows are selected once (`experiment_rows`, as `analyze` selects them) and
    the test is rerun on growing prefixes of them, with `analyze`'s own test function."""
    from components.experiments.experiment import ab_test, experiment_rows, experiment_start

    out = Trajectory()
    start = experiment_start(labelled, challenger)
    if start is None or labelled.empty:
        return out
    labelled = labelled[labelled["timestamp"] >= start]
    rows = experiment_rows(labelled, champion, challenger, config.k, config.mixed_users)
    if rows.empty:
        return out
    outcome = "clicked" if config.primary_metric == "ctr" else "liked"  # as `analyze` picks it
    stamps = rows["timestamp"].to_numpy()
    end = float(stamps[-1])
    moments = np.linspace(start, end, points + 1)[1:] if end > start else np.asarray([end])
    for moment in moments:
        test = ab_test(rows.iloc[: int(np.searchsorted(stamps, moment, side="right"))],
                        outcome, config)[0]
        out.times.append(float(moment))
        out.p_value.append(finite(test.p_value) if test else None)
        out.effect.append(finite(test.effect) if test else None)
        out.ci_low.append(finite(test.ci_low) if test else None)
        out.ci_high.append(finite(test.ci_high) if test else None)
    return out


HISTORY = 20  # decisions listed; older ones stay in MLflow


def history(console, limit: int = HISTORY) -> tuple[list[Concluded], str | None]:
    """The decisions recorded in MLflow, newest first; (decisions, why there are none)."""
    from components.config import RegistryConfig

    try:
        runs = console.registry.runs([f"{RegistryConfig().experiment}-online"], limit=limit)
    except Unavailable as exc:
        return [], console.unavailable("mlflow", exc)
    out = []
    for run in runs:
        tags = run["tags"]
        if "decision" not in tags:
            continue
        out.append(Concluded(
            run_id=run["run_id"], decided=run["start"], decision=tags["decision"],
            basis=tags.get("basis", ""), method=tags.get("method", ""),
            champion=tags.get("champion_version", ""), challenger=tags.get("challenger_version", ""),
            champion_model=tags.get("champion_model_version", ""),
            challenger_model=tags.get("challenger_model_version", ""),
            reasons=[r for r in tags.get("reason", "").split(" | ") if r],
            actions=[a for a in tags.get("actions", "").split(" | ") if a],
            figures={k: v for k, v in run.get("metrics", {}).items() if finite(v) is not None}))
    if not out:
        return [], ("no experiment has concluded yet: `recsys rollout analyze --auto` records "
                    "each promote or rollback it carries out")
    return out, None


def gather(console) -> ExperimentView:
    view = _current(console)
    view.history, view.history_problem = history(console)
    return view


def _current(console) -> ExperimentView:
    from components.errors import RecsysError
    from components.experiments.experiment import analyze_labelled, label_impressions

    view = ExperimentView()
    backend: ExperimentBackend | None = console.experiments
    config = console.experiment_config
    view.method = config.method
    if backend is None:
        view.problem = ("the experiment analysis is not wired into this console (start it with "
                        "`recsys console`)")
        return view
    try:
        view.target = backend.target()
    except RecsysError as exc:
        view.problem = str(exc)
        return view
    except Unavailable as exc:
        view.problem = console.unavailable("experiment", exc)
        return view
    target = view.target
    try:
        impressions, events = read_feedback(console.config.store_url, target.started_at)
    except Unavailable as exc:
        view.problem = console.unavailable("feedback_store", exc)
        return view
    health, view.notes = backend.health(target)
    labelled = label_impressions(impressions, events)
    view.analysis = analyze_labelled(labelled, champion=target.champion,
                                     challenger=target.challenger, config=config, health=health)
    if config.method == "ab":
        view.trajectory = trajectory(labelled, champion=target.champion,
                                     challenger=target.challenger, config=config)
    return view


def finite(value: Any) -> float | None:
    return float(value) if isinstance(value, (int, float)) and math.isfinite(value) else None


def charts(view: ExperimentView) -> dict[str, Any]:
    """The two charts of the page (empty when there is nothing to draw)."""
    from serving.console.charts import Series, lines

    t = view.trajectory
    if t is None or not t.times or all(p is None for p in t.p_value):
        return {}
    alpha = view.analysis.alpha
    metric = view.analysis.primary_metric
    last = next((i for i in range(len(t.times) - 1, -1, -1) if t.effect[i] is not None), None)
    effect_summary = (f"{metric} difference (challenger minus champion) over time; now "
                      f"{t.effect[last]:+.4f}, always-valid interval [{t.ci_low[last]:+.4f}, "
                      f"{t.ci_high[last]:+.4f}]" if last is not None else "no data")
    return {
        "effect": lines(f"Effect on {metric} with its always-valid interval", t.times,
                        [Series("effect", t.effect, "#4477aa")],
                        band=(t.ci_low, t.ci_high), zero=True, summary=effect_summary),
        "p_value": lines("Always-valid p-value", t.times,
                         [Series("p-value", t.p_value, "#ee6677")], threshold=alpha,
                         log_scale=True, y_range=(min([p for p in t.p_value if p] + [alpha]),
                                                  1.0),
                         summary=(f"always-valid p-value over time, now "
                                  f"{t.p_value[last]:.4g}; the dashed line is alpha = {alpha:g}"
                                  if last is not None else "no data")),
    }


def confirm_text(action: str, target: Any) -> str:
    if action == "promote":
        return (f"Promote the challenger (model version {target.challenger}, MLflow "
                f"{target.registry_challenger or '-'}): it answers everyone and becomes the "
                "registry's champion.")
    return (f"Roll back: the champion (model version {target.champion}, MLflow "
            f"{target.registry_champion or '-'}) answers everyone again and the challenger "
            f"(model version {target.challenger}) loses its alias.")


def act(console, action: str, confirmed_challenger: str) -> tuple[list[str], str | None]:
    """Carry out a promote or rollback the person confirmed; (actions, problem)."""
    from components.errors import RecsysError

    backend: ExperimentBackend | None = console.experiments
    if console.config.read_only:
        return [], (f"this console is read-only: run `recsys rollout {action}` (or let the "
                    "analysis CronJob decide)")
    if backend is None:
        return [], "the experiment analysis is not wired into this console"
    if action not in ("promote", "rollback"):
        return [], f"{action!r} is neither promote nor rollback"
    try:
        target = backend.target()
    except RecsysError as exc:
        return [], str(exc)
    if target.challenger != confirmed_challenger:
        return [], (f"the experiment changed while you were deciding (the challenger is now "
                    f"{target.challenger}, you confirmed {confirmed_challenger}): look again")
    try:
        return backend.apply(action, target), None
    except RecsysError as exc:
        return [], str(exc)

