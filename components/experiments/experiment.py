"""Online champion-challenger experiments: metrics per model version, an always-valid sequential
test, guardrails and the decision (`promote`, `rollback` or `continue`, with the reasons).

Pure functions over DataFrames with the feedback store's columns (impressions: what each answer
showed, by which version; events: clicks, likes, ratings tied to an answer by `request_id`); no
I/O. `recsys rollout analyze` reads the store and the serving metrics and calls `analyze`.

The test is the mixture sequential probability ratio test of Johari, Pekelis and Walsh ("Always
Valid Inference", 2017) for a difference of two rates, with a normal mixture N(0, tau^2) over the
effect: with d = rate_B - rate_A and V its variance,

    Lambda = sqrt(V / (V + tau^2)) * exp(tau^2 d^2 / (2 V (V + tau^2)))

is a test martingale under "no difference", so by Ville's inequality P(Lambda ever >= 1/alpha) <=
alpha: the analysis may be rerun after every batch of events, as often as one likes, and the
p-value min(1/Lambda) over all looks stays valid. This module does not keep state between runs:
it replays the trajectory of Lambda over the impressions in time order, evaluating it after every
impression, so the running minimum is the same whether the analysis ran once or every minute.
The always-valid confidence interval is the running intersection of {theta: Lambda(d - theta) <
1/alpha}.

Rates are ratios of sums over users (clicks / impressions), and a user's impressions are not
independent, so V is the cluster-robust (delta-method) variance with users as clusters, never
below the binomial one; their ratio, the design effect, inflates the minimum sample size of the
power analysis. No decision is taken before each arm holds that many impressions (the normal
approximation behind the mixture needs them, and so does an honest power).

Why code of our own: the mixture SPRT is a closed form of a few lines, and no well-kept Python
library provides it (statsmodels has no always-valid tests and is not a dependency; the
confidence-sequence packages on PyPI are research code, unmaintained for years). scipy gives the
normal quantiles.

KServe's `canaryTrafficPercent` splits requests, not users: one user may see both versions.
`mixed_users="keep"` (the default) analyses every impression by the version that answered it:
that is a request-level randomised experiment, and the user-clustered variance of each arm,
which ignores the (positive) covariance between a user's two arms, is conservative.
`mixed_users="drop"` keeps only users who saw one version; it removes carry-over between the
arms but is biased when the split is uneven (at 10%, a heavy user almost surely sees both and is
dropped, so the challenger's arm keeps mostly light users), so use it only with 50/50 splits.
Locally, `recsys serve` assigns users, not requests (a hash of the user id), so no user is mixed.
"""
from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import asdict, dataclass, field
from typing import Any, Literal

import numpy as np
import pandas as pd
from scipy.stats import norm

from components.config import ExperimentConfig, OnlineGuardrailConfig
from components.experiments.interleaving import (
    min_decided_requests,
    request_credit,
    win_rate_test,
)

IMPRESSION_COLUMNS = ("request_id", "user_id", "item_id", "position", "model_version",
                      "source_version", "variant", "timestamp")
EVENT_COLUMNS = ("event_id", "type", "user_id", "item_id", "timestamp", "value", "request_id",
                 "model_version", "position", "received_at")
INTERLEAVED = "interleaved"
# Fewer impressions per arm than this and the trajectory is not evaluated at all (the normal
# approximation is poor); decisions wait for the minimum sample size anyway.
BURN_IN = 100

Action = Literal["promote", "rollback", "continue"]


# ------------------------------------------------------------------ joining and metrics
def label_impressions(impressions: pd.DataFrame, events: pd.DataFrame) -> pd.DataFrame:
    """Impressions with what the user did with each: `clicked`, `liked`, `disliked` (0/1) and
    `rating` (the last rating value, NaN if none). An event joins the impression of its answer
    (`request_id`), user and item; events with no `request_id`, or for an item the answer did
    not show, join nothing."""
    shown = impressions.loc[:, list(IMPRESSION_COLUMNS)].copy()
    for col in ("request_id", "user_id", "item_id"):
        shown[col] = shown[col].astype(str)
    tied = events[events["request_id"].notna()]
    key = ["request_id", "user_id", "item_id"]
    if len(tied):
        tied = tied.assign(**{c: tied[c].astype(str) for c in key})
    for kind, column in (("click", "clicked"), ("like", "liked"), ("dislike", "disliked")):
        hits = tied.loc[tied["type"] == kind, key].drop_duplicates()
        shown = shown.merge(hits.assign(**{column: 1}), on=key, how="left")
        shown[column] = shown[column].fillna(0).astype(np.int8)
    ratings = tied[tied["type"] == "rating"].sort_values("timestamp")
    ratings = ratings.groupby(key, as_index=False)["value"].last().rename(columns={"value": "rating"})
    shown = shown.merge(ratings, on=key, how="left")
    shown["rating"] = shown["rating"].astype(float)
    return shown


def version_metrics(labelled: pd.DataFrame, k: int, by: str = "model_version") -> pd.DataFrame:
    """Per version (`by`: the answer's `model_version`, or `source_version`, the model that
    placed each item): requests, users, impressions at positions < k, clicks, CTR@k, likes,
    like rate, ratings and their mean."""
    top = labelled[labelled["position"] < k]
    if top.empty:
        return pd.DataFrame(columns=["requests", "users", "impressions", "clicks", "ctr", "likes",
                                     "like_rate", "dislikes", "ratings", "mean_rating"])
    grouped = top.groupby(by, observed=True)
    out = pd.DataFrame({
        "requests": grouped["request_id"].nunique(),
        "users": grouped["user_id"].nunique(),
        "impressions": grouped.size(),
        "clicks": grouped["clicked"].sum(),
        "likes": grouped["liked"].sum(),
        "dislikes": grouped["disliked"].sum(),
        "ratings": grouped["rating"].count(),
        "mean_rating": grouped["rating"].mean(),
    })
    out["ctr"] = out["clicks"] / out["impressions"]
    out["like_rate"] = out["likes"] / out["impressions"]
    out.index.name = by
    return out[["requests", "users", "impressions", "clicks", "ctr", "likes", "like_rate",
                "dislikes", "ratings", "mean_rating"]]


# ------------------------------------------------------------------ the sequential test
def log_mixture_likelihood_ratio(d: np.ndarray, v: np.ndarray, tau: float) -> np.ndarray:
    """log Lambda of the normal-mixture SPRT for an observed difference `d` with variance `v`."""
    t2 = tau * tau
    return 0.5 * np.log(v / (v + t2)) + t2 * d * d / (2.0 * v * (v + t2))


def confidence_half_width(v: np.ndarray, tau: float, alpha: float) -> np.ndarray:
    """Half-width of {theta: Lambda(d - theta) < 1/alpha}, the always-valid interval at one look."""
    t2 = tau * tau
    return np.sqrt(v * (v + t2) / t2 * (np.log((v + t2) / v) + 2.0 * math.log(1.0 / alpha)))


def min_sample_size(rate: float, relative_effect: float, alpha: float, power: float,
                    design_effect: float = 1.0) -> int:
    """Impressions per arm for a two-sided two-proportion z-test at `alpha` to detect `rate` ->
    `rate * (1 + relative_effect)` with `power` (pooled variance under the null), times the
    design effect of clustered impressions."""
    rate_b = min(rate * (1.0 + relative_effect), 1.0 - 1e-9)
    delta = rate_b - rate
    if rate <= 0.0 or delta <= 0.0:
        return 0
    pooled = (rate + rate_b) / 2.0
    z_alpha, z_power = norm.ppf(1.0 - alpha / 2.0), norm.ppf(power)
    n = (z_alpha * math.sqrt(2.0 * pooled * (1.0 - pooled))
         + z_power * math.sqrt(rate * (1.0 - rate) + rate_b * (1.0 - rate_b))) ** 2 / delta**2
    return math.ceil(n * max(design_effect, 1.0))


@dataclass(frozen=True)
class SequentialResult:
    """The mixture SPRT of rate_b - rate_a after the last impression."""

    n_a: int
    n_b: int
    rate_a: float
    rate_b: float
    effect: float  # rate_b - rate_a
    relative_effect: float | None  # effect / rate_a
    ci_low: float  # always-valid interval of the effect
    ci_high: float
    p_value: float  # always-valid
    mixture_sd: float
    design_effect: float  # cluster-robust variance / binomial variance, now
    looks: int  # trajectory points evaluated (one per impression past the burn-in)


def _running_cluster_sums(user_key: np.ndarray, y: np.ndarray) -> tuple[np.ndarray, ...]:
    """Running sums over rows of n_g^2, c_g^2 and c_g n_g, where n_g and c_g are the impressions
    and successes of each row's cluster so far (updated incrementally, vectorised)."""
    codes = pd.factorize(user_key)[0]
    order = np.argsort(codes, kind="stable")  # rows of each cluster together, in time order
    sorted_codes, sorted_y = codes[order], y[order]
    starts = np.r_[True, sorted_codes[1:] != sorted_codes[:-1]]
    group_start = np.maximum.accumulate(np.where(starts, np.arange(len(order)), 0))
    c_cum = np.cumsum(sorted_y)
    c_before_group = np.where(group_start > 0, c_cum[group_start - 1], 0.0)
    n_after, c_after = np.empty(len(order)), np.empty(len(order))
    n_after[order] = np.arange(len(order)) - group_start + 1.0
    c_after[order] = c_cum - c_before_group
    n_before, c_before = n_after - 1.0, c_after - y
    s_nn = np.cumsum(n_after**2 - n_before**2)
    s_cc = np.cumsum(c_after**2 - c_before**2)
    s_cn = np.cumsum(c_after * n_after - c_before * n_before)
    return s_nn, s_cc, s_cn


def _arm_trajectory(arm: np.ndarray, user: np.ndarray, y: np.ndarray, which: int):
    """Running n, rate and variance of one arm, evaluated at every row of the whole sequence."""
    mine = arm == which
    n = np.cumsum(mine).astype(float)
    c = np.cumsum(np.where(mine, y, 0)).astype(float)
    s_nn = np.zeros(len(arm))
    s_cc = np.zeros(len(arm))
    s_cn = np.zeros(len(arm))
    idx = np.flatnonzero(mine)
    if len(idx):
        parts = _running_cluster_sums(user[idx], y[idx].astype(float))
        for total, part in zip((s_nn, s_cc, s_cn), parts):
            total[idx] = part
            total[:] = np.maximum.accumulate(total)  # carry the last value forward (sums grow)
    with np.errstate(divide="ignore", invalid="ignore"):
        rate = np.where(n > 0, c / n, 0.0)
        clustered = (s_cc - 2.0 * rate * s_cn + rate**2 * s_nn) / n**2
        binomial = rate * (1.0 - rate) / n
    return n, rate, clustered, binomial


def mixture_sprt(arm: np.ndarray, user: np.ndarray, y: np.ndarray, *, alpha: float,
                 mixture_sd: float, burn_in: int = BURN_IN) -> SequentialResult | None:
    """The always-valid test of rate(arm 1) - rate(arm 0) over rows in time order.

    `arm` is 0 (champion) or 1 (challenger), `user` the cluster key, `y` the 0/1 outcome.
    Returns None until both arms have `burn_in` rows."""
    arm = np.asarray(arm, dtype=np.int8)
    y = np.asarray(y, dtype=float)
    user = np.asarray(user)
    n_a, r_a, vc_a, vb_a = _arm_trajectory(arm, user, y, 0)
    n_b, r_b, vc_b, vb_b = _arm_trajectory(arm, user, y, 1)
    ready = (n_a >= burn_in) & (n_b >= burn_in)
    if not ready.any():
        return None
    d = (r_b - r_a)[ready]
    v_binomial = (vb_a + vb_b)[ready]
    v = np.maximum((vc_a + vc_b)[ready], v_binomial)
    # Both rates 0 (or 1) so far: no variance, and no evidence either way.
    v = np.where(v > 0, v, np.inf)
    log_lr = np.where(np.isfinite(v), log_mixture_likelihood_ratio(d, v, mixture_sd), 0.0)
    half = np.where(np.isfinite(v), confidence_half_width(v, mixture_sd, alpha), np.inf)
    low, high = np.max(d - half), np.min(d + half)
    if low > high:  # the running intersection can come out empty; the current interval cannot
        low, high = d[-1] - half[-1], d[-1] + half[-1]
    p_value = float(min(1.0, np.exp(-np.max(log_lr))))
    last_v, last_vb = v[-1], v_binomial[-1]
    return SequentialResult(
        n_a=int(n_a[-1]), n_b=int(n_b[-1]), rate_a=float(r_a[-1]), rate_b=float(r_b[-1]),
        effect=float(d[-1]), relative_effect=float(d[-1] / r_a[-1]) if r_a[-1] > 0 else None,
        ci_low=float(low), ci_high=float(high), p_value=p_value, mixture_sd=float(mixture_sd),
        design_effect=float(last_v / last_vb) if np.isfinite(last_v) and last_vb > 0 else 1.0,
        looks=int(ready.sum()),
    )


# ------------------------------------------------------------------ guardrails
@dataclass(frozen=True)
class VersionHealth:
    """What the serving side measured for one model version over the window."""

    requests: float
    errors: float
    p99_seconds: float | None = None

    @property
    def error_rate(self) -> float | None:
        return self.errors / self.requests if self.requests > 0 else None


@dataclass(frozen=True)
class GuardrailCheck:
    name: str
    status: Literal["ok", "breached", "waiting", "not measured"]
    champion: float | None
    challenger: float | None
    detail: str


def serving_guardrails(champion: VersionHealth | None, challenger: VersionHealth | None,
                       config: OnlineGuardrailConfig) -> list[GuardrailCheck]:
    """Error rate and p99 latency of the challenger against the champion."""
    if champion is None or challenger is None:
        missing = "champion" if champion is None else "challenger"
        detail = f"no serving metrics for the {missing}"
        return [GuardrailCheck("error_rate", "not measured", None, None, detail),
                GuardrailCheck("p99_latency", "not measured", None, None, detail)]
    fewest = min(champion.requests, challenger.requests)
    if fewest < config.min_requests:
        detail = f"{fewest:.0f} of {config.min_requests} requests per version so far"
        return [GuardrailCheck("error_rate", "waiting", champion.error_rate, challenger.error_rate, detail),
                GuardrailCheck("p99_latency", "waiting", champion.p99_seconds,
                               challenger.p99_seconds, detail)]
    checks = []
    limit = champion.error_rate + config.max_error_rate_increase
    breached = challenger.error_rate > limit
    checks.append(GuardrailCheck(
        "error_rate", "breached" if breached else "ok", champion.error_rate, challenger.error_rate,
        f"challenger {challenger.error_rate:.2%} {'>' if breached else '<='} limit {limit:.2%} "
        f"(champion {champion.error_rate:.2%} + {config.max_error_rate_increase:.2%})"))
    if champion.p99_seconds is None or challenger.p99_seconds is None:
        checks.append(GuardrailCheck("p99_latency", "not measured", champion.p99_seconds,
                                     challenger.p99_seconds, "no latency histogram"))
    else:
        relative = champion.p99_seconds * config.max_p99_latency_ratio + config.latency_slack_ms / 1e3
        limit_s = min(relative, config.max_p99_latency_ms / 1e3)
        breached = challenger.p99_seconds > limit_s
        checks.append(GuardrailCheck(
            "p99_latency", "breached" if breached else "ok", champion.p99_seconds,
            challenger.p99_seconds,
            f"challenger {challenger.p99_seconds * 1e3:.1f} ms {'>' if breached else '<='} limit "
            f"{limit_s * 1e3:.1f} ms (the lower of {config.max_p99_latency_ratio:g} x champion "
            f"{champion.p99_seconds * 1e3:.1f} ms + {config.latency_slack_ms:g} ms, and "
            f"{config.max_p99_latency_ms:g} ms)"))
    return checks


def like_rate_guardrail(test: SequentialResult | None, minimum: int,
                        config: OnlineGuardrailConfig) -> GuardrailCheck:
    """Breached when the always-valid interval of the like-rate difference lies wholly below
    the tolerated drop."""
    if test is None or min(test.n_a, test.n_b) < minimum:
        have = 0 if test is None else min(test.n_a, test.n_b)
        return GuardrailCheck("like_rate", "waiting", test and test.rate_a, test and test.rate_b,
                              f"{have} of {minimum} impressions per arm so far")
    floor = -config.max_like_rate_drop * test.rate_a
    breached = test.ci_high < floor
    return GuardrailCheck(
        "like_rate", "breached" if breached else "ok", test.rate_a, test.rate_b,
        f"difference {test.effect:+.4f}, always-valid interval [{test.ci_low:+.4f}, "
        f"{test.ci_high:+.4f}] {'wholly below' if breached else 'not wholly below'} "
        f"{floor:+.4f} (a {config.max_like_rate_drop:.0%} drop)")


# ------------------------------------------------------------------ the decision
@dataclass(frozen=True)
class Decision:
    action: Action
    # effect: the primary metric differs; guardrail: one was breached; futility: no difference
    # at the maximum sample size; waiting: not enough data to decide.
    basis: Literal["effect", "guardrail", "futility", "waiting"]
    reasons: tuple[str, ...]


@dataclass
class Analysis:
    champion_version: str
    challenger_version: str
    method: str
    primary_metric: str
    alpha: float
    since: float | None
    until: float | None
    metrics: dict[str, dict[str, Any]]  # version -> version_metrics row
    test: SequentialResult | dict[str, Any] | None  # A/B: SequentialResult; interleaving: dict
    min_sample_size: int | None  # per arm (A/B: impressions; interleaving: decided requests)
    max_sample_size: int | None
    guardrails: list[GuardrailCheck]
    decision: Decision
    notes: list[str] = field(default_factory=list)
    impressions: int = 0  # impressions the decision rests on (both arms, or interleaved answers)

    def to_dict(self) -> dict[str, Any]:
        out = asdict(self)
        out["test"] = asdict(self.test) if isinstance(self.test, SequentialResult) else self.test
        return _finite(out)


def _finite(value: Any) -> Any:
    """JSON-safe: NaN and infinities become None."""
    if isinstance(value, dict):
        return {k: _finite(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_finite(v) for v in value]
    if isinstance(value, (float, np.floating)):
        return float(value) if math.isfinite(value) else None
    if isinstance(value, np.integer):
        return int(value)
    return value


def decide(test: SequentialResult | None, minimum: int | None, maximum: int | None,
           guardrails: list[GuardrailCheck], *, alpha: float, metric: str,
           n_now: int | None = None) -> Decision:
    """promote / rollback / continue from the primary test and the guardrails.

    A breached guardrail rolls back at once. Otherwise nothing is decided before the minimum
    sample size; then a significant effect promotes (better) or rolls back (worse), and no
    difference at the maximum sample size rolls back (the champion stays)."""
    breached = [g for g in guardrails if g.status == "breached"]
    if breached:
        return Decision("rollback", "guardrail",
                        tuple(f"guardrail {g.name} breached: {g.detail}" for g in breached))
    open_ = [f"guardrail {g.name} {g.status}: {g.detail}" for g in guardrails if g.status != "ok"]
    if test is None or minimum is None:
        return Decision("continue", "waiting", ((f"not enough impressions per arm to test {metric} "
                                                f"yet (at least {BURN_IN} each)"), *open_))
    n = min(test.n_a, test.n_b) if n_now is None else n_now
    summary = (f"{metric} {test.rate_a:.4f} -> {test.rate_b:.4f} ({_relative(test)}), "
               f"always-valid p = {test.p_value:.4g}, interval [{test.ci_low:+.4f}, {test.ci_high:+.4f}]")
    if n < minimum:
        return Decision("continue", "waiting",
                        (f"{n:,} of the {minimum:,} per arm the power analysis asks for; {summary}",
                         *open_))
    if test.p_value <= alpha:
        if test.effect > 0:
            return Decision("promote", "effect", (f"challenger better: {summary}", *open_))
        return Decision("rollback", "effect", (f"challenger worse: {summary}",))
    if maximum is not None and n >= maximum:
        return Decision("rollback", "futility",
                        ((f"no significant difference after {n:,} per arm (maximum {maximum:,}): "
                         f"the champion stays; {summary}"),))
    return Decision("continue", "waiting", (f"no significant difference yet: {summary}", *open_))


def _relative(test: SequentialResult) -> str:
    return f"{test.relative_effect:+.1%}" if test.relative_effect is not None else "n/a"


# ------------------------------------------------------------------ the whole analysis
def experiment_rows(labelled: pd.DataFrame, champion: str, challenger: str, k: int,
                    mixed_users: str = "keep") -> pd.DataFrame:
    """A/B impressions at positions < k answered by either version (interleaved answers
    excluded), in time order, with `arm` 0 (champion) or 1 (challenger)."""
    rows = labelled[(labelled["position"] < k)
                    & ~labelled["variant"].eq(INTERLEAVED)
                    & labelled["model_version"].isin([champion, challenger])]
    if mixed_users == "drop" and len(rows):
        versions = rows.groupby("user_id")["model_version"].nunique()
        rows = rows[rows["user_id"].isin(versions.index[versions == 1])]
    rows = rows.assign(arm=(rows["model_version"] == challenger).astype(np.int8))
    if rows["timestamp"].is_monotonic_increasing:  # the store reads them in this order already
        return rows
    return rows.sort_values(["timestamp", "request_id", "position"], kind="stable")


def experiment_start(labelled: pd.DataFrame, challenger: str) -> float | None:
    """When the challenger first served (the experiment's start), if it did."""
    served = labelled.loc[(labelled["model_version"] == challenger)
                          | (labelled["source_version"] == challenger), "timestamp"]
    return float(served.min()) if len(served) else None


def analyze(impressions: pd.DataFrame, events: pd.DataFrame, *, champion: str, challenger: str,
            config: ExperimentConfig | None = None,
            health: Mapping[str, VersionHealth] | None = None) -> Analysis:
    """The whole analysis of one champion-challenger pair, from the challenger's first answer on.

    `health` maps model versions to what serving measured (requests, errors, p99 latency);
    without it the serving guardrails are "not measured" and do not block a decision."""
    return analyze_labelled(label_impressions(impressions, events), champion=champion,
                            challenger=challenger, config=config, health=health)


def analyze_labelled(labelled: pd.DataFrame, *, champion: str, challenger: str,
                     config: ExperimentConfig | None = None,
                     health: Mapping[str, VersionHealth] | None = None) -> Analysis:
    """`analyze` on impressions already labelled with what users did (`label_impressions`)."""
    config = config or ExperimentConfig()
    start = experiment_start(labelled, challenger)
    notes: list[str] = []
    if start is not None:
        labelled = labelled[labelled["timestamp"] >= start]
    else:
        notes.append(f"the challenger (version {challenger}) has no impressions yet")
    until = float(labelled["timestamp"].max()) if len(labelled) else None
    is_interleaved = labelled["variant"].eq(INTERLEAVED).to_numpy()
    ab = labelled[~is_interleaved]
    metrics = {str(v): _record(row) for v, row in version_metrics(ab, config.k).iterrows()}
    interleaved = labelled[is_interleaved]
    if len(interleaved):
        by_source = version_metrics(interleaved, config.k, by="source_version")
        for version, row in by_source.iterrows():
            metrics[f"{version} (interleaved)"] = _record(row)
    health = health or {}
    serving = serving_guardrails(health.get(champion), health.get(challenger), config.guardrails)
    if config.method == "interleaving":
        return interleaving_analysis(interleaved, champion=champion, challenger=challenger,
                                     config=config, since=start, until=until, metrics=metrics,
                                     serving=serving, notes=notes)
    rows = experiment_rows(labelled, champion, challenger, config.k, config.mixed_users)
    if config.mixed_users == "drop":
        notes.append("users who saw both versions are left out (mixed_users: drop)")
    outcome = "clicked" if config.primary_metric == "ctr" else "liked"
    test, minimum, maximum = ab_test(rows, outcome, config)
    like_test = test
    if outcome != "liked" and test is not None and min(test.n_a, test.n_b) >= minimum:
        like_test = ab_test(rows, "liked", config)[0]  # judged from the minimum sample on
    guardrails = [*serving, like_rate_guardrail(like_test, minimum or BURN_IN, config.guardrails)]
    decision = decide(test, minimum, maximum, guardrails, alpha=config.alpha,
                      metric=f"{config.primary_metric}@{config.k}")
    return Analysis(champion, challenger, "ab", config.primary_metric, config.alpha, start, until,
                    metrics, test, minimum, maximum, guardrails, decision, notes, impressions=len(rows))


def ab_test(rows: pd.DataFrame, outcome: str, config: ExperimentConfig
            ) -> tuple[SequentialResult | None, int | None, int | None]:
    """The always-valid test of `outcome` (a 0/1 column) between the arms of `rows` (0: the
    champion, 1: the challenger; as `experiment_rows` selects them), with the minimum sample
    its power analysis asks for and the maximum after which "no difference" is decided.
    (None, None, None) until both arms have their burn-in rows. `analyze` decides from it; the
    console replays it on growing prefixes of the same rows."""
    champion_rows = rows[rows["arm"] == 0]
    rate_a = float(champion_rows[outcome].mean()) if len(champion_rows) else 0.0
    tau = config.mixture_sd or max(config.min_detectable_effect * rate_a, 1e-6)
    test = mixture_sprt(rows["arm"].to_numpy(), rows["user_id"].to_numpy(),
                        rows[outcome].to_numpy(), alpha=config.alpha, mixture_sd=tau)
    if test is None:
        return None, None, None
    minimum = max(min_sample_size(test.rate_a, config.min_detectable_effect, config.alpha,
                                  config.power, test.design_effect), BURN_IN)
    return test, minimum, math.ceil(minimum * config.max_sample_factor)


def _record(row: pd.Series) -> dict[str, Any]:
    return {k: (int(v) if k in {"requests", "users", "impressions", "clicks", "likes", "dislikes",
                                "ratings"} else float(v)) for k, v in row.items()}


def interleaving_analysis(interleaved: pd.DataFrame, *, champion: str, challenger: str,
                          config: ExperimentConfig, since: float | None, until: float | None,
                          metrics: dict[str, dict[str, Any]], serving: list, notes: list[str]):
    """`analyze` for `method: interleaving`: the team-draft win rate (`interleaving`) with the
    serving and like-rate guardrails."""
    top = interleaved[interleaved["position"] < config.k]
    credit = request_credit(top, champion, challenger)
    minimum = min_decided_requests(config.interleaving_min_win_rate, config.alpha, config.power)
    maximum = math.ceil(minimum * config.max_sample_factor)
    guardrails = list(serving)
    # Like rate within the interleaved answers: the items each model placed, side by side.
    by_source = top.assign(model_version=top["source_version"], variant="")
    like_rows = experiment_rows(by_source, champion, challenger, config.k)
    like_rate = top["liked"].mean() if len(top) else 0.0
    like_test = mixture_sprt(like_rows["arm"].to_numpy(), like_rows["user_id"].to_numpy(),
                             like_rows["liked"].to_numpy(), alpha=config.alpha,
                             mixture_sd=max(config.min_detectable_effect * like_rate, 1e-6))
    guardrails.append(like_rate_guardrail(like_test, 1, config.guardrails))
    if credit.empty:
        decision = Decision("continue", "waiting", ("no interleaved answers yet",))
        return Analysis(champion, challenger, "interleaving", "ctr", config.alpha, since, until,
                        metrics, None, minimum, maximum, guardrails, decision, notes)
    test = win_rate_test(credit["outcome"].to_numpy(), alpha=config.alpha,
                         mixture_sd=config.interleaving_mixture_sd)
    test["requests"] = len(credit)
    n = test["wins"] + test["losses"]
    breached = [g for g in guardrails if isinstance(g, GuardrailCheck) and g.status == "breached"]
    summary = (f"challenger won {test['wins']:,} and lost {test['losses']:,} of "
               f"{len(credit):,} interleaved answers ({test['ties']:,} ties), always-valid "
               f"p = {test['p_value']:.4g} (sign test {test['sign_test_p_value']:.4g})")
    if breached:
        decision = Decision("rollback", "guardrail",
                            tuple(f"guardrail {g.name} breached: {g.detail}" for g in breached))
    elif n < minimum:
        decision = Decision("continue", "waiting",
                            ((f"{n:,} of the {minimum:,} decided answers the power analysis asks "
                             f"for; {summary}"),))
    elif test["p_value"] <= config.alpha:
        better = test["wins"] > test["losses"]
        decision = Decision("promote" if better else "rollback", "effect",
                            (f"challenger {'better' if better else 'worse'}: {summary}",))
    elif n >= maximum:
        decision = Decision("rollback", "futility",
                            ((f"no significant preference after {n:,} decided answers (maximum "
                             f"{maximum:,}): the champion stays; {summary}"),))
    else:
        decision = Decision("continue", "waiting", (f"no significant preference yet: {summary}",))
    return Analysis(champion, challenger, "interleaving", "ctr", config.alpha, since, until,
                    metrics, test, minimum, maximum, guardrails, decision, notes,
                    impressions=int(credit["impressions"].sum()))
