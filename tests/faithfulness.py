"""Removal checks of the "because" attributions, shared by tests/model/test_explain.py and the
explain benchmark: take the top contributor out of a user's history and see whether the
item's generator score drops, against taking out a random other history item."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import scipy.sparse as sp

from components.models.explain import history_contributions


@dataclass
class Removals:
    top_drop: np.ndarray  # [P] score minus the score without the top contributor
    random_drop: np.ndarray  # [P] score minus the score without a random other history item
    top_contribution: np.ndarray  # [P] the top contributor's attribution

    @property
    def top_lowers(self) -> float:
        """Share of (user, item) pairs whose score the top removal lowers."""
        return float((self.top_drop > 0).mean())

    @property
    def random_lowers(self) -> float:
        return float((self.random_drop > 0).mean())

    @property
    def top_beats_random(self) -> float:
        """Share of pairs where the top removal lowers the score more than the random one."""
        return float((self.top_drop > self.random_drop).mean())

    @property
    def exactness_error(self) -> float:
        """Largest |drop - attribution| of the top removal (0 for a model linear in history)."""
        return float(np.abs(self.top_drop - self.top_contribution).max())


def _row(seen: np.ndarray, n_items: int) -> sp.csr_matrix:
    return sp.csr_matrix(
        (np.ones(len(seen), np.float32), seen.astype(np.int32), np.array([0, len(seen)], np.int32)),
        shape=(1, n_items),
    )


def removals(model, generator: str, rows: np.ndarray, k: int = 10, seed: int = 0) -> Removals:
    """Removal effects for each of the training users `rows` (with 2+ items) and each item of
    its top-k answer: the generator scores a history as a new user would (the user step for
    ALS), before and after the removal."""
    rng = np.random.default_rng(seed)
    data, gen = model.data_, model.generators_[generator]
    top_drop, random_drop, top_contribution = [], [], []
    unknown = np.array([-1])
    for row in rows:
        seen = np.sort(data.matrix.indices[data.matrix.indptr[row] : data.matrix.indptr[row + 1]]).astype(np.int64)
        if len(seen) < 2:
            continue
        answer = model.recommend([str(data.user_ids[row])], k).item_ids[0]
        items = np.searchsorted(data.item_ids, answer)
        contributions = history_contributions(model, generator, seen, items)
        base = gen.score(unknown, _row(seen, data.n_items))[0, items].astype(np.float64)
        for column, item in enumerate(items):
            top = int(np.argmax(contributions[:, column]))
            other = int(rng.choice(np.delete(np.arange(len(seen)), top)))
            without_top = gen.score(unknown, _row(np.delete(seen, top), data.n_items))[0, item]
            without_other = gen.score(unknown, _row(np.delete(seen, other), data.n_items))[0, item]
            top_drop.append(base[column] - without_top)
            random_drop.append(base[column] - without_other)
            top_contribution.append(contributions[top, column])
    return Removals(np.asarray(top_drop), np.asarray(random_drop), np.asarray(top_contribution))


def als_step_gap(model, rows: np.ndarray, k: int = 10) -> np.ndarray:
    """[P] |served ALS score - user step's score| / |served score| over each training user's
    top-k: how far a training user's learned factors (from the last sweep) are from the user
    step on the same history, which the ALS attributions sum to."""
    data, als = model.data_, model.generators_["als"]
    gaps = []
    for row in rows:
        seen = np.sort(data.matrix.indices[data.matrix.indptr[row] : data.matrix.indptr[row + 1]]).astype(np.int64)
        items = np.searchsorted(data.item_ids, model.recommend([str(data.user_ids[row])], k).item_ids[0])
        history = _row(seen, data.n_items)
        served = als.score(np.array([row]), history)[0, items].astype(np.float64)
        step = als.score(np.array([-1]), history)[0, items].astype(np.float64)
        gaps.append(np.abs(served - step) / np.maximum(np.abs(served), 1e-12))
    return np.concatenate(gaps) if gaps else np.zeros(0)
