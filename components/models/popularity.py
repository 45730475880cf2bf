"""Popularity: the baseline every model must beat, and the cold-start answer."""
from __future__ import annotations

import numpy as np
import scipy.sparse as sp

from components.models.base import TrainingData


class PopularityModel:
    name = "popularity"

    def fit(self, data: TrainingData) -> "PopularityModel":
        counts = np.asarray(data.matrix.sum(axis=0)).ravel()
        self.counts_ = counts.astype(np.float32)
        # log1p keeps the feature's scale sane for the ranker on long-tailed catalogues.
        self.scores_ = np.log1p(self.counts_)
        return self

    def score(self, users: np.ndarray, history: sp.csr_matrix) -> np.ndarray:
        return np.broadcast_to(self.scores_, (history.shape[0], self.scores_.shape[0])).copy()

    def get_state(self) -> dict[str, np.ndarray]:
        return {"counts": self.counts_}

    @classmethod
    def from_state(cls, state: dict[str, np.ndarray]) -> "PopularityModel":
        model = cls()
        model.counts_ = state["counts"].astype(np.float32)
        model.scores_ = np.log1p(model.counts_)
        return model
