"""EASE (Steck, 2019): a closed-form item-item model, strong on MovieLens-sized catalogues.

B = I - P·diagMat(1/diag(P)) with P = (XᵀX + λI)⁻¹. The Gram matrix is dense, so memory is
8·n² bytes and time O(n³) in the number of items: items with too little support are left out
(their EASE score is 0; other generators still propose them) and a catalogue larger than
`max_items` after that is refused with a clear message instead of exhausting memory. No
maintained library offers EASE on scipy sparse input, and the model is ten lines of numpy.
"""
from __future__ import annotations

import logging

import numpy as np
import scipy.sparse as sp
from scipy.linalg import lapack

from components.errors import ConfigError
from components.models.base import TrainingData

log = logging.getLogger(__name__)


def _spd_inverse(matrix: np.ndarray) -> np.ndarray:
    """Inverse of a symmetric positive-definite matrix by Cholesky (about 3x cheaper than LU)."""
    factor, info = lapack.dpotrf(matrix, lower=False, overwrite_a=True)
    if info != 0:
        raise np.linalg.LinAlgError(f"Cholesky failed (info={info})")
    inverse, info = lapack.dpotri(factor, lower=False, overwrite_c=True)
    if info != 0:
        raise np.linalg.LinAlgError(f"inverse failed (info={info})")
    upper = np.triu(inverse)
    return upper + np.triu(upper, 1).T


class EaseModel:
    name = "ease"

    def __init__(
        self,
        l2: float = 400.0,
        max_items: int = 25_000,
        min_item_support: int = 1,
        dropout: float = 0.0,
    ):
        self.l2 = l2
        self.max_items = max_items
        self.min_item_support = min_item_support
        self.dropout = dropout

    def fit(self, data: TrainingData) -> "EaseModel":
        support = np.asarray(data.matrix.sum(axis=0)).ravel()
        self.items_ = np.flatnonzero(support >= self.min_item_support).astype(np.int64)
        n = len(self.items_)
        if n > self.max_items:
            raise ConfigError(
                f"EASE: {n:,} items exceed model.ease.max_items={self.max_items:,} "
                f"(a dense {n:,}x{n:,} matrix needs {8 * n * n / 2**30:.1f} GiB); "
                "raise the limit on a bigger machine or set model.ease.enabled: false"
            )
        x = data.matrix[:, self.items_]
        gram = (x.T @ x).toarray().astype(np.float64)
        # Dropout-style emphasis (Steck, "Autoencoders that don't overfit towards the identity",
        # 2020): popular items get a penalty in proportion to their own count.
        gram[np.diag_indices(n)] += self.l2 + self.dropout / (1.0 - self.dropout) * np.diag(gram)
        p = _spd_inverse(gram)
        b = p / (-np.diag(p))
        b[np.diag_indices(n)] = 0.0
        self.weights_ = b.astype(np.float32)
        self.n_items_ = data.n_items
        return self

    def score(self, users: np.ndarray, history: sp.csr_matrix) -> np.ndarray:
        if len(self.items_) == self.n_items_:  # every item has support: no column selection
            return np.asarray(history @ self.weights_, dtype=np.float32)
        out = np.zeros((history.shape[0], self.n_items_), dtype=np.float32)
        out[:, self.items_] = np.asarray(history[:, self.items_] @ self.weights_)
        return out

    def get_state(self) -> dict[str, np.ndarray]:
        return {"items": self.items_, "weights": self.weights_, "n_items": np.array(self.n_items_)}

    @classmethod
    def from_state(cls, state: dict[str, np.ndarray]) -> "EaseModel":
        model = cls()
        model.items_ = state["items"]
        model.weights_ = state["weights"]
        model.n_items_ = int(state["n_items"])
        return model
