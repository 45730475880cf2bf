"""The online experiment's statistics: joins, metrics, the mixture SPRT's error rates (checked by
simulation with fixed seeds and bounded sizes), the power analysis and the decision rules."""
from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
from scipy.stats import norm

from components.config import ExperimentConfig, OnlineGuardrailConfig
from components.experiments.experiment import (
    Decision,
    GuardrailCheck,
    VersionHealth,
    analyze,
    decide,
    label_impressions,
    min_sample_size,
    mixture_sprt,
    serving_guardrails,
    version_metrics,
)

RUNS = 200


def _impressions(rows) -> pd.DataFrame:
    return pd.DataFrame(rows, columns=["request_id", "user_id", "item_id", "position",
                                       "model_version", "source_version", "variant", "timestamp"])


def _events(rows) -> pd.DataFrame:
    frame = pd.DataFrame(rows, columns=["type", "user_id", "item_id", "request_id", "value", "timestamp"])
    frame["event_id"] = [f"e{i}" for i in range(len(frame))]
    for col in ("model_version", "position", "received_at"):
        frame[col] = None
    return frame


def test_events_join_their_impression_by_request_user_and_item():
    shown = _impressions([
        ("r1", "u1", "a", 0, "v1", "v1", "champion", 1.0),
        ("r1", "u1", "b", 1, "v1", "v1", "champion", 1.0),
        ("r2", "u2", "a", 0, "v2", "v2", "challenger", 2.0),
    ])
    events = _events([
        ("click", "u1", "b", "r1", None, 3.0),
        ("click", "u1", "b", "r1", None, 4.0),  # a second click on the same impression
        ("like", "u1", "b", "r1", None, 4.0),
        ("rating", "u1", "b", "r1", 3.0, 5.0),
        ("rating", "u1", "b", "r1", 4.5, 6.0),  # the last rating counts
        ("click", "u2", "a", None, None, 5.0),  # no request_id: joins nothing
        ("click", "u2", "a", "r1", None, 5.0),  # another user's answer: joins nothing
        ("click", "u2", "zzz", "r2", None, 5.0),  # an item the answer did not show
    ])
    labelled = label_impressions(shown, events).set_index(["request_id", "item_id"])
    assert labelled.loc[("r1", "b"), ["clicked", "liked", "disliked"]].tolist() == [1, 1, 0]
    assert labelled.loc[("r1", "b"), "rating"] == 4.5
    assert labelled.loc[("r1", "a"), "clicked"] == 0 and np.isnan(labelled.loc[("r1", "a"), "rating"])
    assert labelled.loc[("r2", "a"), "clicked"] == 0
    assert len(labelled) == 3


def test_version_metrics_count_impressions_below_k_only():
    shown = _impressions([(f"r{u}", f"u{u}", f"i{p}", p, "v1" if u < 2 else "v2", "", None, 0.0)
                          for u in range(4) for p in range(3)])
    events = _events([("click", "u0", "i0", "r0", None, 1.0), ("click", "u0", "i2", "r0", None, 1.0),
                      ("like", "u3", "i1", "r3", None, 1.0), ("rating", "u3", "i1", "r3", 2.0, 1.0)])
    metrics = version_metrics(label_impressions(shown, events), k=2)
    assert metrics.loc["v1", ["requests", "users", "impressions", "clicks"]].tolist() == [2, 2, 4, 1]
    assert metrics.loc["v1", "ctr"] == 0.25  # the click at position 2 is outside CTR@2
    assert metrics.loc["v2", ["likes", "like_rate", "ratings", "mean_rating"]].tolist() == [1, 0.25, 1, 2.0]


def test_min_sample_size_is_the_two_proportion_power_analysis():
    # The figures of a standard calculator (alpha 0.05 two-sided, power 0.8, pooled variance).
    assert min_sample_size(0.05, 0.10, 0.05, 0.8) == 31_234
    assert min_sample_size(0.05, 0.20, 0.05, 0.8) == 8_158
    assert min_sample_size(0.05, 0.20, 0.05, 0.8, design_effect=2.0) == 16_316
    # ...and it does deliver the power: a fixed-sample z-test at that size detects the effect.
    rng = np.random.default_rng(3)
    n = min_sample_size(0.05, 0.20, 0.05, 0.8)
    a, b = rng.binomial(n, 0.05, 2000) / n, rng.binomial(n, 0.06, 2000) / n
    pooled = (a + b) / 2
    z = (b - a) / np.sqrt(2 * pooled * (1 - pooled) / n)
    assert 0.77 <= np.mean(np.abs(z) > norm.ppf(0.975)) <= 0.83


def _aa_runs(rng, *, users: int, rows: int, heterogeneous: bool):
    for _ in range(RUNS):
        rate = rng.beta(0.5, 9.5, users) if heterogeneous else np.full(users, 0.05)
        user = rng.integers(0, users, rows)
        arm = (user % 2).astype(np.int8)  # sticky: a user stays in one arm
        yield arm, user, (rng.random(rows) < rate[user]).astype(np.int8)


def test_looking_after_every_impression_keeps_false_decisions_under_alpha():
    """A/A: the always-valid p-value, evaluated after each of 10,000 impressions, falls below
    0.05 in at most 5% of 200 runs; a z-test at 100 of those looks does far worse."""
    rng = np.random.default_rng(11)
    false_sprt = false_peeking = 0
    for arm, user, y in _aa_runs(rng, users=5_000, rows=10_000, heterogeneous=False):
        result = mixture_sprt(arm, user, y, alpha=0.05, mixture_sd=0.01)
        false_sprt += result.p_value <= 0.05
        looks = np.linspace(500, len(y), 100).astype(int)
        n_a, n_b = np.cumsum(arm == 0)[looks - 1], np.cumsum(arm == 1)[looks - 1]
        c_a, c_b = np.cumsum(y * (arm == 0))[looks - 1], np.cumsum(y * (arm == 1))[looks - 1]
        pooled = (c_a + c_b) / (n_a + n_b)
        z = (c_b / n_b - c_a / n_a) / np.sqrt(pooled * (1 - pooled) * (1 / n_a + 1 / n_b))
        false_peeking += bool((np.abs(z) > norm.ppf(0.975)).any())
    assert false_sprt / RUNS <= 0.05
    assert false_peeking / RUNS >= 0.15  # why the sequential test is needed


def test_clustered_users_need_the_cluster_robust_variance():
    """Users differ (CTRs drawn from Beta(0.5, 9.5), mean 5%) and each sees ~100 items: treating
    impressions as independent trials decides wrongly in a large share of A/A runs; clustering
    by user keeps it under alpha."""
    rng = np.random.default_rng(5)
    false_clustered = false_naive = 0
    for arm, user, y in _aa_runs(rng, users=200, rows=12_000, heterogeneous=True):
        false_clustered += mixture_sprt(arm, user, y, alpha=0.05, mixture_sd=0.005).p_value <= 0.05
        naive = mixture_sprt(arm, np.arange(len(y)), y, alpha=0.05, mixture_sd=0.005)
        false_naive += naive.p_value <= 0.05
    assert false_clustered / RUNS <= 0.05
    assert false_naive / RUNS >= 0.15


def test_a_real_effect_is_found_and_the_interval_covers_it():
    rng = np.random.default_rng(7)
    found = covered = 0
    runs = 100
    for _ in range(runs):
        arm = rng.integers(0, 2, 40_000).astype(np.int8)
        y = (rng.random(len(arm)) < np.where(arm == 1, 0.06, 0.05)).astype(np.int8)
        result = mixture_sprt(arm, np.arange(len(arm)), y, alpha=0.05, mixture_sd=0.005)
        found += result.p_value <= 0.05 and result.effect > 0
        covered += result.ci_low <= 0.01 <= result.ci_high
    assert found / runs >= 0.9
    assert covered / runs >= 0.95


def _check(status: str, name: str = "error_rate") -> GuardrailCheck:
    return GuardrailCheck(name, status, 0.0, 0.0, "detail")


def _result(p_value: float, effect: float, n: int):
    from components.experiments.experiment import SequentialResult

    return SequentialResult(n, n, 0.05, 0.05 + effect, effect, effect / 0.05, effect - 0.01,
                            effect + 0.01, p_value, 0.005, 1.0, n)


@pytest.mark.parametrize("p_value, effect, n, checks, expected", [
    (0.001, 0.01, 5_000, [_check("ok")], ("promote", "effect")),
    (0.001, -0.01, 5_000, [_check("ok")], ("rollback", "effect")),
    (0.001, 0.01, 500, [_check("ok")], ("continue", "waiting")),  # below the minimum
    (0.3, 0.001, 5_000, [_check("ok")], ("continue", "waiting")),
    (0.3, 0.001, 20_000, [_check("ok")], ("rollback", "futility")),
    (0.001, 0.01, 5_000, [_check("breached", "p99_latency")], ("rollback", "guardrail")),
    (0.3, 0.0, 50, [_check("breached")], ("rollback", "guardrail")),  # guardrails do not wait
    (0.001, 0.01, 5_000, [_check("not measured")], ("promote", "effect")),
])
def test_decision_rules(p_value, effect, n, checks, expected):
    decision = decide(_result(p_value, effect, n), 1_000, 10_000, checks, alpha=0.05, metric="ctr@10")
    assert isinstance(decision, Decision) and (decision.action, decision.basis) == expected
    assert decision.reasons and all(isinstance(r, str) and r for r in decision.reasons)


def test_serving_guardrails_compare_the_challenger_with_the_champion():
    config = OnlineGuardrailConfig()
    ok = serving_guardrails(VersionHealth(1000, 2, 0.010), VersionHealth(1000, 5, 0.012), config)
    assert [(g.name, g.status) for g in ok] == [("error_rate", "ok"), ("p99_latency", "ok")]
    bad = serving_guardrails(VersionHealth(1000, 2, 0.010), VersionHealth(1000, 40, 0.070), config)
    assert [g.status for g in bad] == ["breached", "breached"]
    assert "4.00% > limit 1.20%" in bad[0].detail and "70.0 ms > limit 65.0 ms" in bad[1].detail
    # However slow the champion, the challenger's p99 stays under the serving alerts' threshold.
    slow = serving_guardrails(VersionHealth(1000, 0, 0.200), VersionHealth(1000, 0, 0.260), config)
    assert slow[1].status == "breached" and "260.0 ms > limit 250.0 ms" in slow[1].detail
    early = serving_guardrails(VersionHealth(1000, 0, 0.01), VersionHealth(50, 50, 1.0), config)
    assert {g.status for g in early} == {"waiting"}
    assert {g.status for g in serving_guardrails(None, VersionHealth(1, 0), config)} == {"not measured"}


def _experiment(rng, *, users: int, sessions: int, rate_a: float, rate_b: float, k: int = 5,
                like_share: float = 0.5, interleave: bool = False):
    """Impressions and clicks of a sticky 50/50 experiment (or interleaved answers)."""
    shown, events = [], []
    for s in range(sessions):
        user = int(rng.integers(users))
        request = f"r{s}"
        version = "B" if user % 2 else "A"
        for position in range(k):
            source = ("B" if (position + s) % 2 else "A") if interleave else version
            item = f"i{int(rng.integers(1000))}"
            variant = "interleaved" if interleave else ("challenger" if version == "B" else "champion")
            shown.append((request, f"u{user}", item, position, "B" if interleave else version,
                          source, variant, float(s)))
            if rng.random() < (rate_b if source == "B" else rate_a):
                events.append(("click", f"u{user}", item, request, None, s + 0.5))
                if rng.random() < like_share:
                    events.append(("like", f"u{user}", item, request, None, s + 0.6))
    return _impressions(shown), _events(events)


def test_analyze_promotes_a_better_challenger_and_reports_why():
    rng = np.random.default_rng(1)
    shown, events = _experiment(rng, users=4_000, sessions=8_000, rate_a=0.05, rate_b=0.08)
    config = ExperimentConfig(min_detectable_effect=0.3)
    result = analyze(shown, events, champion="A", challenger="B", config=config,
                     health={"A": VersionHealth(4000, 0, 0.01), "B": VersionHealth(4000, 0, 0.011)})
    assert result.decision.action == "promote", result.decision
    assert result.test.p_value <= 0.05 and result.test.ci_low > 0
    assert set(result.metrics) == {"A", "B"} and result.metrics["B"]["ctr"] > result.metrics["A"]["ctr"]
    assert result.min_sample_size <= result.test.n_a
    as_json = result.to_dict()
    assert as_json["decision"]["action"] == "promote" and as_json["test"]["p_value"] == result.test.p_value


def test_analyze_waits_on_an_aa_and_rolls_back_on_a_latency_breach():
    rng = np.random.default_rng(2)
    shown, events = _experiment(rng, users=2_000, sessions=2_000, rate_a=0.05, rate_b=0.05)
    healthy = {"A": VersionHealth(4000, 0, 0.01), "B": VersionHealth(4000, 0, 0.011)}
    result = analyze(shown, events, champion="A", challenger="B", health=healthy)
    assert result.decision.action == "continue"
    slow = {**healthy, "B": VersionHealth(4000, 0, 0.2)}
    result = analyze(shown, events, champion="A", challenger="B", health=slow)
    assert (result.decision.action, result.decision.basis) == ("rollback", "guardrail")
    assert "p99_latency" in result.decision.reasons[0]


def test_analyze_counts_only_what_followed_the_challengers_first_answer():
    rng = np.random.default_rng(4)
    shown, events = _experiment(rng, users=500, sessions=1_000, rate_a=0.05, rate_b=0.05)
    early = shown[shown["model_version"] == "A"].assign(timestamp=-100.0,
                                                        request_id=lambda f: "old" + f["request_id"])
    result = analyze(pd.concat([early, shown]), events, champion="A", challenger="B")
    assert result.since == float(shown.loc[shown["model_version"] == "B", "timestamp"].min())
    assert result.metrics["A"]["impressions"] == int((shown["model_version"] == "A").sum())


def test_analyze_by_interleaving_credits_clicks_to_the_model_that_placed_the_item():
    rng = np.random.default_rng(9)
    shown, events = _experiment(rng, users=3_000, sessions=4_000, rate_a=0.03, rate_b=0.08,
                                interleave=True)
    result = analyze(shown, events, champion="A", challenger="B",
                     config=ExperimentConfig(method="interleaving"))
    assert result.method == "interleaving" and result.decision.action == "promote", result.decision
    assert result.test["wins"] > result.test["losses"] and result.test["p_value"] <= 0.05
    assert {"A (interleaved)", "B (interleaved)"} <= set(result.metrics)
