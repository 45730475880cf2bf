"""Team-draft interleaving: properties of the merge (hypothesis) and the credit test's errors."""
from __future__ import annotations

import numpy as np
import pandas as pd
from hypothesis import given, settings
from hypothesis import strategies as st
from scipy.stats import binomtest

from components.experiments.interleaving import (
    min_decided_requests,
    request_credit,
    team_draft,
    win_rate_test,
)

rankings = st.lists(st.integers(0, 30).map(str), max_size=15, unique=True)


@settings(max_examples=300, deadline=None)
@given(a=rankings, b=rankings, k=st.integers(1, 20), seed=st.integers(0, 2**64 - 1))
def test_team_draft_properties(a, b, k, seed):
    merged, teams = team_draft(a, b, k, seed)
    assert len(merged) == len(teams) == min(k, len(set(a) | set(b)))
    assert len(set(merged)) == len(merged)  # no item twice
    for item, team in zip(merged, teams):  # each item was placed by a model that ranked it
        assert item in (a, b)[team]
    for team, ranking in enumerate((a, b)):
        picked = [i for i, t in zip(merged, teams) if t == team]
        # a team's picks keep its own order, and each is its best item not yet shown
        assert picked == sorted(picked, key=ranking.index)
        for position, (item, t) in enumerate(zip(merged, teams)):
            if t == team:
                shown_before = set(merged[:position])
                assert item == next(i for i in ranking if i not in shown_before)
    # The team with fewer picks picks next, unless it has nothing left to show.
    picks = [0, 0]
    for position, team in enumerate(teams):
        shown = set(merged[:position])
        behind = 0 if picks[0] < picks[1] else 1 if picks[1] < picks[0] else None
        if behind is not None and any(i not in shown for i in (a, b)[behind]):
            assert team == behind
        picks[team] += 1


@given(a=rankings, k=st.integers(1, 20), seed=st.integers(0, 2**64 - 1))
def test_identical_rankings_interleave_to_the_same_ranking(a, k, seed):
    merged, teams = team_draft(a, list(a), k, seed)
    assert merged == a[:k]
    assert abs(teams.count(0) - teams.count(1)) <= 1


def test_the_seed_decides_ties_reproducibly_and_both_ways():
    a, b = [str(i) for i in range(10)], [str(i) for i in range(10, 20)]
    firsts = {team_draft(a, b, 10, seed)[1][0] for seed in range(8)}
    assert firsts == {0, 1}
    assert team_draft(a, b, 10, 12345) == team_draft(a, b, 10, 12345)


def test_credit_goes_to_the_team_of_the_clicked_items():
    labelled = pd.DataFrame({
        "request_id": ["r1"] * 4 + ["r2"] * 2 + ["r3"] * 2,
        "user_id": ["u"] * 8,
        "item_id": list("abcdabab"),
        "source_version": ["A", "B", "A", "B", "A", "B", "A", "B"],
        "clicked": [0, 1, 0, 1, 1, 0, 1, 1],
        "timestamp": [1, 1, 1, 1, 2, 2, 3, 3],
    })
    credit = request_credit(labelled, "A", "B").set_index("request_id")
    assert credit["outcome"].to_dict() == {"r1": 1, "r2": -1, "r3": 0}
    assert credit.loc["r1", ["champion_clicks", "challenger_clicks", "impressions"]].tolist() == [0, 2, 4]


def test_win_rate_test_keeps_false_decisions_under_alpha_when_rerun_after_every_request():
    rng = np.random.default_rng(3)
    false = 0
    for _ in range(200):
        outcomes = rng.choice([-1, 0, 1], size=3_000, p=[0.3, 0.4, 0.3])
        false += win_rate_test(outcomes, alpha=0.05, mixture_sd=0.05)["p_value"] <= 0.05
    assert false / 200 <= 0.05


def test_win_rate_test_finds_a_preference_and_reports_the_sign_test():
    rng = np.random.default_rng(4)
    outcomes = rng.choice([-1, 0, 1], size=3_000, p=[0.25, 0.4, 0.35])
    result = win_rate_test(outcomes, alpha=0.05, mixture_sd=0.05)
    wins, losses = int((outcomes > 0).sum()), int((outcomes < 0).sum())
    assert (result["wins"], result["losses"], result["ties"]) == (wins, losses, 3_000 - wins - losses)
    assert result["p_value"] <= 0.05 and result["ci_low"] > 0.5
    assert result["ci_low"] <= 0.35 / 0.6 <= result["ci_high"]
    assert result["sign_test_p_value"] == binomtest(wins, wins + losses, 0.5).pvalue
    assert result["p_value"] >= result["sign_test_p_value"]  # the price of looking at any time


def test_min_decided_requests_matches_the_normal_approximation_of_the_sign_test():
    n = min_decided_requests(0.55, 0.05, 0.8)
    assert 770 <= n <= 790
    rng = np.random.default_rng(8)
    wins = rng.binomial(n, 0.55, 4000)
    z = (wins - n / 2) / np.sqrt(n / 4)
    assert 0.77 <= np.mean(np.abs(z) > 1.96) <= 0.83
