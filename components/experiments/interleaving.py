"""Team-draft interleaving: merge the champion's and the challenger's rankings into one answer,
remember which model placed each item, and credit clicks to the models.

Team-draft (Radlinski, Kurup and Joachims, "How does clickthrough data reflect retrieval
quality?", CIKM 2008): in each round the team with fewer picks so far (a coin decides a tie)
adds its highest-ranked item not yet in the answer. A request where the user clicked more of the
challenger's items than of the champion's is a win for the challenger, fewer a loss, as many
(or none) a tie. Under "no preference" a decided request is a win with probability 1/2.

The test is sequential, because the analysis reruns every few minutes: a Beta(a, a) mixture over
the win probability p gives the likelihood ratio against p = 1/2

    Lambda_n = B(a + wins, a + losses) / B(a, a) * 2^n,      n = wins + losses,

an exact test martingale (no normal approximation), so min(1/Lambda) over all requests is an
always-valid p-value. The fixed-sample sign test (scipy's binomtest) is reported beside it: it
is valid at one planned look only, never for deciding after every batch.

Why code of our own: team-draft is twenty lines, and the libraries that have it (e.g. Lerot,
PyTerrier plugins) are unmaintained research code or bring a search stack.
"""
from __future__ import annotations

import math
from typing import Any

import numpy as np
import pandas as pd
from scipy.special import betaln
from scipy.stats import binomtest, norm

CHAMPION_TEAM, CHALLENGER_TEAM = 0, 1


def team_draft(ranking_a: list[str], ranking_b: list[str], k: int, seed: int
               ) -> tuple[list[str], list[int]]:
    """Merge two rankings into at most `k` distinct items; returns the items and, per position,
    the team that placed it (0: `ranking_a`, 1: `ranking_b`). Bit i of `seed` (mod 64) breaks
    the i-th tie between the teams, so an answer is reproducible from its request."""
    merged: list[str] = []
    teams: list[int] = []
    chosen: set[str] = set()
    rankings = (ranking_a, ranking_b)
    cursor = [0, 0]
    picks = [0, 0]
    ties = 0
    while len(merged) < k:
        if picks[0] != picks[1]:
            team = 0 if picks[0] < picks[1] else 1
        else:
            team = (seed >> (ties % 64)) & 1
            ties += 1
        for attempt in (team, 1 - team):  # the other team picks when one has nothing left
            ranking = rankings[attempt]
            while cursor[attempt] < len(ranking) and ranking[cursor[attempt]] in chosen:
                cursor[attempt] += 1
            if cursor[attempt] < len(ranking):
                item = ranking[cursor[attempt]]
                merged.append(item)
                teams.append(attempt)
                chosen.add(item)
                picks[attempt] += 1
                break
        else:
            break  # both rankings exhausted
    return merged, teams


def request_credit(interleaved: pd.DataFrame, champion: str, challenger: str) -> pd.DataFrame:
    """Per interleaved request (labelled impressions with `clicked`): the clicks on each model's
    items and the outcome (+1 challenger wins, -1 champion wins, 0 tie), in time order."""
    if interleaved.empty:
        return pd.DataFrame(columns=["request_id", "user_id", "timestamp", "champion_clicks",
                                     "challenger_clicks", "impressions", "outcome"])
    rows = interleaved.assign(
        champion_clicks=np.where(interleaved["source_version"] == champion, interleaved["clicked"], 0),
        challenger_clicks=np.where(interleaved["source_version"] == challenger,
                                   interleaved["clicked"], 0),
    )
    per_request = rows.groupby(["request_id", "user_id"], as_index=False).agg(
        timestamp=("timestamp", "min"), champion_clicks=("champion_clicks", "sum"),
        challenger_clicks=("challenger_clicks", "sum"), impressions=("item_id", "size"))
    per_request["outcome"] = np.sign(per_request["challenger_clicks"] - per_request["champion_clicks"])
    return per_request.sort_values(["timestamp", "request_id"], kind="stable").reset_index(drop=True)


def beta_parameter(mixture_sd: float) -> float:
    """a of the Beta(a, a) mixture whose standard deviation around 1/2 is `mixture_sd`."""
    return max((1.0 / (4.0 * mixture_sd**2) - 1.0) / 2.0, 1e-3)


def win_rate_test(outcomes: np.ndarray, *, alpha: float, mixture_sd: float) -> dict[str, Any]:
    """Always-valid test of P(challenger wins a decided request) = 1/2 over outcomes in time order
    (+1, -1, 0), with the fixed-sample sign test beside it."""
    outcomes = np.asarray(outcomes)
    decided = outcomes[outcomes != 0]
    wins_path = np.cumsum(decided > 0)
    losses_path = np.cumsum(decided < 0)
    a = beta_parameter(mixture_sd)
    n_path = wins_path + losses_path
    log_lr = betaln(a + wins_path, a + losses_path) - betaln(a, a) + n_path * math.log(2.0)
    wins, losses = int(wins_path[-1]) if len(decided) else 0, int(losses_path[-1]) if len(decided) else 0
    n = wins + losses
    p_value = float(min(1.0, np.exp(-log_lr.max()))) if len(decided) else 1.0
    grid = np.linspace(1e-4, 1 - 1e-4, 2001)
    inside = (betaln(a + wins, a + losses) - betaln(a, a) - wins * np.log(grid)
              - losses * np.log1p(-grid)) < math.log(1.0 / alpha)
    low, high = (float(grid[inside].min()), float(grid[inside].max())) if inside.any() else (0.0, 1.0)
    return {
        "wins": wins, "losses": losses, "ties": int((outcomes == 0).sum()),
        "win_rate": wins / n if n else None,
        "p_value": p_value,
        "ci_low": low, "ci_high": high,
        "sign_test_p_value": float(binomtest(wins, n, 0.5).pvalue) if n else 1.0,
        "mixture_sd": mixture_sd,
    }


def min_decided_requests(win_rate: float, alpha: float, power: float) -> int:
    """Decided (non-tied) requests for a two-sided sign test at `alpha` to detect `win_rate`."""
    z_alpha, z_power = norm.ppf(1.0 - alpha / 2.0), norm.ppf(power)
    n = ((z_alpha * 0.5 + z_power * math.sqrt(win_rate * (1.0 - win_rate)))
         / (win_rate - 0.5)) ** 2
    return math.ceil(n)
