"""Popularity: the baseline every model must beat, and the cold-start answer."""
from __future__ import annotations

import numpy as np
import scipy.sparse as sp

from components.models.base import TrainingData
from components.models.retrieval import Retrieved, top_unseen, unseen_moments


class PopularityModel:
    name = "popularity"

    def fit(self, data: TrainingData) -> PopularityModel:
        counts = np.asarray(data.matrix.sum(axis=0)).ravel()
        self.counts_ = counts.astype(np.float32)
        # log1p keeps the feature's scale sane for the ranker on long-tailed catalogues.
        self.scores_ = np.log1p(self.counts_)
        return self

    def score(self, users: np.ndarray, history: sp.csr_matrix) -> np.ndarray:
        return np.broadcast_to(self.scores_, (history.shape[0], self.scores_.shape[0])).copy()

    def score_one(self, user: int, seen: np.ndarray) -> np.ndarray:
        return self.scores_.copy()

    def retrieve(self, users: np.ndarray, history: sp.csr_matrix, n: int) -> Retrieved:
        """The most popular unseen items: the global order's first n + (history length)."""
        order = getattr(self, "_order", None)
        if order is None:
            order = self._order = np.argsort(-self.scores_, kind="stable")
        width = min(n + int(np.diff(history.indptr).max(initial=0)), len(order))
        candidates = np.broadcast_to(order[:width], (history.shape[0], width))
        items, scores = top_unseen(candidates, self.scores_[candidates], history, n)

        def pair(rows: np.ndarray, cols: np.ndarray) -> np.ndarray:
            return self.scores_[cols]

        batch = np.ones(history.shape[0])
        scores64 = self.scores_.astype(np.float64)
        mean, std = unseen_moments(batch * scores64.sum(), batch * (scores64**2).sum(), history, pair)
        return Retrieved(items, scores, mean, std, pair)

    def get_state(self) -> dict[str, np.ndarray]:
        return {"counts": self.counts_}

    @classmethod
    def from_state(cls, state: dict[str, np.ndarray]) -> PopularityModel:
        model = cls()
        model.counts_ = state["counts"].astype(np.float32)
        model.scores_ = np.log1p(model.counts_)
        return model
