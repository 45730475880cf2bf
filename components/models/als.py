"""Implicit-feedback matrix factorisation (Hu, Koren & Volinsky 2008) trained by `implicit`.

Users seen in training are scored with their learned factors. Any other row (a user unseen in
training who brings a history, or a known user whose caller sent more history) gets its factor
from the history by the exact ALS user step: one small f x f solve per such user.
"""
from __future__ import annotations

import numpy as np
import scipy.sparse as sp
from scipy.linalg.lapack import dposv

from components.models.base import TrainingData
from components.models.retrieval import FactorIndex, Retrieved

# Batches up to this many users are scored without BLAS (`AlsModel.score`).
_FEW_USERS = 4


class AlsModel:
    name = "als"

    def __init__(
        self,
        factors: int = 64,
        regularization: float = 0.05,
        iterations: int = 20,
        alpha: float = 2.0,
        seed: int = 42,
        threads: int = 0,
    ):
        self.factors = factors
        self.regularization = regularization
        self.iterations = iterations
        self.alpha = alpha
        self.seed = seed
        self.threads = threads  # 0: every core

    def fit(self, data: TrainingData) -> AlsModel:
        from implicit.cpu.als import AlternatingLeastSquares  # heavy import, fit-time only
        from threadpoolctl import threadpool_limits

        # implicit's own solver is the parallel part; a threaded BLAS underneath only contends.
        with threadpool_limits(1, "blas"):
            model = AlternatingLeastSquares(
                factors=self.factors,
                regularization=self.regularization,
                iterations=self.iterations,
                alpha=self.alpha,
                random_state=self.seed,
                # Each user's (and item's) solve is independent of the others, so the factors
                # do not depend on the thread count (tests/unit/test_als.py); at 25M
                # interactions a second core halves ALS's 7 minutes.
                num_threads=self.threads,
            )
            model.fit(data.matrix, show_progress=False)
        self.item_factors_ = np.ascontiguousarray(model.item_factors, dtype=np.float32)
        self.user_factors_ = np.ascontiguousarray(model.user_factors, dtype=np.float32)
        self._prepare()
        return self

    def _prepare(self) -> None:
        # Kept for every user step: the float64 factors and YᵀY + λI, computed once.
        self.item_factors64_ = self.item_factors_.astype(np.float64)
        y = self.item_factors64_
        self.gram_ = y.T @ y + self.regularization * np.eye(y.shape[1])

    def user_factors(self, users: np.ndarray, history: sp.csr_matrix) -> np.ndarray:
        out = np.empty((history.shape[0], self.item_factors_.shape[1]), dtype=np.float32)
        known = users >= 0
        out[known] = self.user_factors_[users[known]]
        y = self.item_factors64_
        for row in np.flatnonzero(~known):  # only rows without learned factors
            out[row] = self._solve(y[history.indices[history.indptr[row] : history.indptr[row + 1]]])
        return out

    def _solve(self, picked: np.ndarray) -> np.ndarray:
        """The user step of a history whose item factors (float64) are `picked`."""
        # `implicit` gives a positive the confidence c = α: x_u = (YᵀY + λI +
        # (c-1)·Y_uᵀY_u)⁻¹ c·Y_uᵀ1 is its user step. The matrix is symmetric positive
        # definite: one Cholesky solve (LAPACK dposv), without the general solver's
        # LU and its BLAS thread start-up, which cost more than the solve at these sizes.
        a = self.gram_ + (self.alpha - 1.0) * (picked.T @ picked)
        _, x, info = dposv(a, self.alpha * picked.sum(axis=0))
        return x if info == 0 else np.linalg.solve(a, self.alpha * picked.sum(axis=0))

    def score_one(self, user: int, seen: np.ndarray) -> np.ndarray:
        if user >= 0:
            factors = self.user_factors_[user : user + 1]
        else:
            factors = self._solve(self.item_factors64_[seen]).astype(np.float32)[None, :]
        return np.einsum("bd,id->bi", factors, self.item_factors_)[0]  # as `score` for few users

    def score(self, users: np.ndarray, history: sp.csr_matrix) -> np.ndarray:
        factors = self.user_factors(users, history)
        if len(factors) <= _FEW_USERS:
            # numpy sends a one-row product to BLAS gemv, which OpenBLAS splits over its
            # threads at this size: waking them costs far more than the product on a busy
            # machine. einsum's own loop stays on the calling thread.
            return np.einsum("bd,id->bi", factors, self.item_factors_)
        return factors @ self.item_factors_.T

    def retrieve(self, users: np.ndarray, history: sp.csr_matrix, n: int) -> Retrieved:
        """Top-n unseen items by exact inner-product search (large catalogues)."""
        index = getattr(self, "_index", None)
        if index is None:
            index = self._index = FactorIndex(self.item_factors_)
        return index.retrieve(self.user_factors(users, history), history, n)

    def get_state(self) -> dict[str, np.ndarray]:
        return {
            "item_factors": self.item_factors_,
            "user_factors": self.user_factors_,
            "regularization": np.array(self.regularization),
            "alpha": np.array(self.alpha),
        }

    @classmethod
    def from_state(cls, state: dict[str, np.ndarray]) -> AlsModel:
        model = cls(regularization=float(state["regularization"]), alpha=float(state["alpha"]))
        model.item_factors_ = state["item_factors"]
        model.user_factors_ = state["user_factors"]
        model.factors = model.item_factors_.shape[1]
        model._prepare()
        return model
