"""Simulated users for online experiments: whose clicks come from their real future.

A user of the simulation is a real user of the data, split in time: the models learn from the
past, and the user's held-out future interactions (the temporal split's test part) are what
the user would click if shown. A click model with position bias (Craswell et al., "An
experimental comparison of click position-bias models", WSDM 2008) turns an answer into clicks:
position i (0-based) is looked at with probability 1 / (i + 1) ** position_decay, and a looked-at
item is clicked with probability `relevant_click` if it is in the user's future, else
`background_click`. A clicked item the user rated at least `like_threshold` is also liked, and
its real rating is sent. A clicked item is consumed: the user's real-time history excludes it
from later answers, as the predictor does with the online store.

`run_experiment` is the fast in-process loop for the benchmarks (hundreds of experiments): it
serves precomputed rankings with the same exclusion and interleaving rules as the predictor,
and reruns the real analysis (`components.experiments.experiment.analyze_labelled`) after every round of
sessions. `recsys simulate` drives the same users and click model through the real services.
"""
from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pandas as pd
import scipy.sparse as sp

from components.config import ExperimentConfig
from components.experiments.assignment import (
    VARIANTS,
    assign_variant,
    interleaved_version,
    request_seed,
    user_bucket,
)
from components.experiments.interleaving import team_draft


@dataclass(frozen=True)
class ClickModel:
    position_decay: float = 1.0
    relevant_click: float = 0.6
    background_click: float = 0.02
    like_threshold: float = 4.0

    def examination(self, k: int) -> np.ndarray:
        return 1.0 / (np.arange(k) + 1.0) ** self.position_decay

    def click_probability(self, ratings: np.ndarray) -> np.ndarray:
        """[S, k] probabilities for answers whose items have these future ratings (0: none)."""
        attraction = np.where(ratings > 0, self.relevant_click, self.background_click)
        return self.examination(ratings.shape[1])[None, :] * attraction


@dataclass
class UserFutures:
    """The simulated users and their held-out future: ratings [U, I] over a shared item index."""

    user_ids: np.ndarray  # [U] str
    item_ids: np.ndarray  # [I] str, sorted
    ratings: sp.csr_matrix  # [U, I] rating (> 0) of each future interaction

    @classmethod
    def from_interactions(cls, future: pd.DataFrame, item_ids: np.ndarray) -> UserFutures:
        """`future`: user_id, item_id[, rating] (a rating of 1 where there is none)."""
        items = np.unique(np.concatenate([np.asarray(item_ids, dtype=str),
                                          future["item_id"].astype(str).to_numpy()]))
        users, rows = np.unique(future["user_id"].astype(str).to_numpy(), return_inverse=True)
        cols = np.searchsorted(items, future["item_id"].astype(str).to_numpy())
        values = (future["rating"].to_numpy(float) if "rating" in future
                  else np.ones(len(future)))
        matrix = sp.csr_matrix((np.maximum(values, 1e-3), (rows, cols)),
                               shape=(len(users), len(items)))
        matrix.sum_duplicates()
        return cls(users, items, matrix)

    def item_index(self, ids: np.ndarray) -> np.ndarray:
        """Index of each id in `item_ids`, -1 for "" or unknown ids."""
        ids = np.asarray(ids, dtype=str)
        idx = np.clip(np.searchsorted(self.item_ids, ids), 0, len(self.item_ids) - 1)
        return np.where(self.item_ids[idx] == ids, idx, -1)


def rankings_of(recommend: Callable[[list[str], int], np.ndarray], futures: UserFutures,
                depth: int, chunk: int = 256) -> np.ndarray:
    """[U, depth] item indices (into `futures.item_ids`; -1 = none) that `recommend(user_ids,
    k) -> [B, k] item ids` answers for every simulated user."""
    out = np.full((len(futures.user_ids), depth), -1, dtype=np.int64)
    for start in range(0, len(futures.user_ids), chunk):
        ids = recommend(futures.user_ids[start : start + chunk].tolist(), depth)
        out[start : start + len(ids), : ids.shape[1]] = futures.item_index(ids)
    return out


def first_unconsumed(ranking_rows: np.ndarray, consumed: np.ndarray, k: int) -> np.ndarray:
    """[S, k] the first k items of each ranking row that the row's user has not consumed
    (-1 where fewer are left); `consumed` is [S, depth] bool, aligned with the rows."""
    usable = (ranking_rows >= 0) & ~consumed
    order = np.argsort(~usable, axis=1, kind="stable")[:, :k]
    picked = np.take_along_axis(ranking_rows, order, axis=1)
    return np.where(np.take_along_axis(usable, order, axis=1), picked, -1)


@dataclass
class ExperimentRun:
    """What one simulated experiment did: the decision trail and where it stopped."""

    trail: list[dict[str, Any]] = field(default_factory=list)
    decision: str = "continue"
    basis: str = "waiting"
    impressions: int = 0  # impressions the analysis rested on when it decided
    sessions: int = 0
    # Impressions at the first look where the always-valid p-value was below alpha, before any
    # minimum sample size (the evidence alone; None: never).
    first_significant: int | None = None


def run_experiment(rankings: dict[str, np.ndarray], futures: UserFutures, *, champion: str,
                   challenger: str, config: ExperimentConfig, click_model: ClickModel,
                   seed: int, population: int | None = None, sessions_per_round: int = 500,
                   max_rounds: int = 60, look_growth: float = 1.0) -> ExperimentRun:
    """One experiment: rounds of sessions by random users, the analysis after each round, until
    it decides or `max_rounds` pass. `rankings` maps both versions to [U, depth] indices.
    `challenger` may be a second name for the champion's rankings (an A/A experiment).

    `population` simulated users each replay one real user drawn with replacement (all of them,
    once each, when None): independent draws from the real users, so more users than the data
    has can take part, each with its own consumed items and its own sticky bucket.

    The analysis runs after every round, or, with `look_growth` > 1, once the sessions have
    grown by that factor since the last look (fewer looks on long runs: the always-valid
    p-value is evaluated after every impression either way, so looks only decide when a
    decision is noticed)."""
    from components.experiments.experiment import analyze_labelled

    rng = np.random.default_rng(seed)
    n_real = len(futures.user_ids)
    real = np.arange(n_real) if population is None else rng.integers(0, n_real, population)
    salt = f"run-{seed}"
    variant_codes = np.array([VARIANTS.index(assign_variant(
        user_bucket(str(u), salt), config.challenger_percent, config.interleave_percent))
        for u in range(len(real))], dtype=np.int8)
    consumed = np.zeros((len(real), futures.ratings.shape[1]), dtype=bool)
    dense_future = futures.ratings.astype(np.float32).toarray()
    examination = click_model.examination(config.k)
    # Version codes: 0 champion, 1 challenger, 2 both (an interleaved answer).
    versions = [champion, challenger, interleaved_version(champion, challenger)]
    columns: dict[str, list[np.ndarray]] = {}
    run = ExperimentRun()
    next_look = 0.0
    for round_ in range(max_rounds):
        users = rng.integers(0, len(real), sessions_per_round)
        rows = _serve(users, real, variant_codes, rankings, consumed, champion, challenger,
                      config.k, round_)
        shown, user_of = rows["item"], rows["user"]
        rating = dense_future[real[user_of], shown]
        probability = examination[rows["position"]] * np.where(
            rating > 0, click_model.relevant_click, click_model.background_click)
        clicked = rng.random(len(shown)) < probability
        consumed[user_of[clicked], shown[clicked]] = True
        rows.update(timestamp=round_ + rows["session"] / sessions_per_round,
                    clicked=clicked.astype(np.int8),
                    liked=(clicked & (rating >= click_model.like_threshold)).astype(np.int8),
                    rating=np.where(clicked & (rating > 0), rating, np.nan))
        for name, values in rows.items():
            columns.setdefault(name, []).append(values)
        run.sessions += sessions_per_round
        if run.sessions < next_look and round_ < max_rounds - 1:
            continue
        next_look = max(run.sessions * look_growth, run.sessions + 1)
        analysis = analyze_labelled(_labelled(columns, versions), champion=champion,
                                    challenger=challenger, config=config)
        test = analysis.test
        p_value = test["p_value"] if isinstance(test, dict) else getattr(test, "p_value", None)
        run.trail.append({"round": round_ + 1, "sessions": run.sessions,
                          "impressions": analysis.impressions,
                          "decision": analysis.decision.action, "p_value": p_value})
        if run.first_significant is None and p_value is not None and p_value <= config.alpha:
            run.first_significant = analysis.impressions
        if analysis.decision.action != "continue":
            run.decision, run.basis = analysis.decision.action, analysis.decision.basis
            run.impressions = analysis.impressions
            break
    return run


def _labelled(columns: dict[str, list[np.ndarray]], versions: list[str]) -> pd.DataFrame:
    """The impressions so far as `label_impressions` would give them. Categoricals: the
    analysis compares the version columns often, and strings are slow."""
    whole = {name: np.concatenate(parts) for name, parts in columns.items()}
    n = len(whole["item"])
    return pd.DataFrame({
        "request_id": whole["request"], "user_id": whole["user"], "item_id": whole["item"],
        "position": whole["position"],
        "model_version": pd.Categorical.from_codes(whole["version"], categories=versions),
        "source_version": pd.Categorical.from_codes(whole["source"], categories=versions),
        "variant": pd.Categorical.from_codes(whole["variant"], categories=list(VARIANTS)),
        "timestamp": whole["timestamp"], "clicked": whole["clicked"], "liked": whole["liked"],
        "disliked": np.zeros(n, dtype=np.int8), "rating": whole["rating"],
    })


def _serve(users: np.ndarray, real: np.ndarray, variant_codes: np.ndarray,
           rankings: dict[str, np.ndarray], consumed: np.ndarray, champion: str, challenger: str,
           k: int, round_: int) -> dict[str, np.ndarray]:
    """The answers of one round's sessions (simulated `users`, who replay the real users
    `real[users]`), one entry per shown item, as columns: session, user, item, position,
    version and source (codes: 0 champion, 1 challenger, 2 both), variant (code)."""
    parts: list[dict[str, np.ndarray]] = []
    session_ids = np.arange(len(users))
    for code, version in enumerate((champion, challenger)):
        mine = variant_codes[users] == code
        if not mine.any():
            continue
        ranking = rankings[version][real[users[mine]]]
        seen = consumed[users[mine][:, None], np.maximum(ranking, 0)]
        top = first_unconsumed(ranking, seen, k)
        s, p = np.nonzero(top >= 0)
        parts.append({"session": session_ids[mine][s], "user": users[mine][s], "item": top[s, p],
                      "position": p, "version": np.full(len(s), code, np.int8),
                      "source": np.full(len(s), code, np.int8),
                      "variant": np.full(len(s), code, np.int8)})
    for s in np.flatnonzero(variant_codes[users] == VARIANTS.index("interleaved")):
        user = users[s]
        lists = []
        for version in (champion, challenger):
            ranking = rankings[version][real[user]]
            usable = (ranking >= 0) & ~consumed[user, np.maximum(ranking, 0)]
            lists.append(ranking[usable][:k].tolist())
        merged, teams = team_draft(lists[0], lists[1], k, request_seed(f"{round_}-{s}"))
        n = len(merged)
        parts.append({"session": np.full(n, s), "user": np.full(n, user),
                      "item": np.asarray(merged, dtype=np.int64), "position": np.arange(n),
                      "version": np.full(n, 2, np.int8), "source": np.asarray(teams, np.int8),
                      "variant": np.full(n, 2, np.int8)})
    rows = {name: np.concatenate([part[name] for part in parts]) for name in
            ("session", "user", "item", "position", "version", "source", "variant")}
    order = np.lexsort((rows["position"], rows["session"]))
    rows = {name: values[order] for name, values in rows.items()}
    rows["request"] = round_ * 1_000_000 + rows["session"]
    return rows
