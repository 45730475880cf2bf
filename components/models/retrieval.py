"""Candidate retrieval for large catalogues: each generator's top-N unseen items for a batch of
users without a [users x items] score matrix, and what the ranker's features need besides.

Below `model.scale.large_catalogue_items` every generator scores the whole catalogue and the
features are computed on those dense rows (exact, and cheap at MovieLens sizes). Above it, each
generator answers `retrieve(users, history, n)` with a `Retrieved`: its top-n unseen items and
their scores, a scorer for any (user, item) pair (a candidate proposed by another generator
still gets this generator's score), and the mean and standard deviation of the user's scores
over all unseen items. Those moments are closed forms for the linear models here (a factor
model: u·Σv and uᵀ(VᵀV)u; a sparse item-item model: its row sums), less the seen items'
share, so the features are the dense path's features, not estimates of them.

Factor models search with FAISS (`IndexFlatIP`: exact maximum inner product search, BLAS plus
a fused top-k, so the [batch x items] scores are never kept); sparse item-item models multiply
the history by their pruned weights and sort the few nonzero scores.
"""
from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import scipy.sparse as sp


@dataclass
class Retrieved:
    items: np.ndarray  # [B, n] int64 item indices, best first; -1 where fewer than n
    scores: np.ndarray  # [B, n] float32; -inf where items is -1
    mean: np.ndarray  # [B] mean score over the user's unseen items
    std: np.ndarray  # [B] standard deviation over the same items
    pair: Callable[[np.ndarray, np.ndarray], np.ndarray]  # (batch rows, items) -> [P] float32


class SparseLookup:
    """Values of a CSR matrix at arbitrary (row, column) pairs, 0 where nothing is stored:
    a binary search over its entries' flat keys (CSR keeps them sorted)."""

    def __init__(self, matrix: sp.csr_matrix):
        matrix = sp.csr_matrix(matrix)
        matrix.sum_duplicates()  # canonical: sorted indices, no repeats
        self.n_cols = matrix.shape[1]
        rows = np.repeat(np.arange(matrix.shape[0], dtype=np.int64), np.diff(matrix.indptr))
        self.keys = rows * self.n_cols + matrix.indices
        self.values = matrix.data

    def get(self, rows: np.ndarray, cols: np.ndarray) -> np.ndarray:
        keys = np.asarray(rows, np.int64) * self.n_cols + cols
        at = np.minimum(np.searchsorted(self.keys, keys), max(len(self.keys) - 1, 0))
        if not len(self.keys):
            return np.zeros(len(keys), dtype=np.float32)
        return np.where(self.keys[at] == keys, self.values[at], 0).astype(np.float32)

    def contains(self, rows: np.ndarray, cols: np.ndarray) -> np.ndarray:
        keys = np.asarray(rows, np.int64) * self.n_cols + cols
        at = np.minimum(np.searchsorted(self.keys, keys), max(len(self.keys) - 1, 0))
        return (self.keys[at] == keys) if len(self.keys) else np.zeros(len(keys), dtype=bool)


def top_unseen(
    items: np.ndarray, scores: np.ndarray, history: sp.csr_matrix, n: int
) -> tuple[np.ndarray, np.ndarray]:
    """Each row's n best candidates that are not in its history ([B, M] in, [B, n] out)."""
    rows = np.repeat(np.arange(items.shape[0]), items.shape[1])
    flat = items.reshape(-1)
    bad = (flat < 0) | SparseLookup(history).contains(rows, np.maximum(flat, 0))
    scores = np.where(bad.reshape(items.shape), -np.inf, scores).astype(np.float32)
    n = min(n, items.shape[1])
    order = np.argsort(-scores, axis=1, kind="stable")[:, :n]
    top_scores = np.take_along_axis(scores, order, axis=1)
    top_items = np.where(np.isfinite(top_scores), np.take_along_axis(items, order, axis=1), -1)
    return top_items.astype(np.int64), top_scores


def unseen_moments(
    total: np.ndarray,
    total_sq: np.ndarray,
    history: sp.csr_matrix,
    pair: Callable[[np.ndarray, np.ndarray], np.ndarray],
) -> tuple[np.ndarray, np.ndarray]:
    """Mean and standard deviation over unseen items from the sums over all items, less the
    seen items' share (their scores come from `pair`)."""
    batch, n_items = history.shape
    rows, cols = history.nonzero()
    seen = pair(rows, cols).astype(np.float64)
    seen_sum = np.bincount(rows, weights=seen, minlength=batch)
    seen_sq = np.bincount(rows, weights=seen**2, minlength=batch)
    n_unseen = np.maximum(n_items - np.diff(history.indptr), 1)
    mean = (total - seen_sum) / n_unseen
    var = (total_sq - seen_sq) / n_unseen - mean**2
    return mean, np.sqrt(np.maximum(var, 0.0))


class FactorIndex:
    """Exact maximum inner product search over item vectors (FAISS `IndexFlatIP`)."""

    def __init__(self, item_vectors: np.ndarray):
        self.item_vectors = np.ascontiguousarray(item_vectors, dtype=np.float32)
        self._build()

    def _build(self) -> None:
        import faiss  # imported here: only large catalogues need it

        self.index = faiss.IndexFlatIP(self.item_vectors.shape[1])
        self.index.add(self.item_vectors)
        vectors = self.item_vectors.astype(np.float64)
        self.column_sum = vectors.sum(axis=0)
        self.gram = vectors.T @ vectors

    def __getstate__(self) -> dict:
        return {"item_vectors": self.item_vectors}  # a FAISS index does not pickle: rebuilt

    def __setstate__(self, state: dict) -> None:
        self.item_vectors = state["item_vectors"]
        self._build()

    def retrieve(self, user_vectors: np.ndarray, history: sp.csr_matrix, n: int) -> Retrieved:
        users = np.ascontiguousarray(user_vectors, dtype=np.float32)
        n_items = self.item_vectors.shape[0]
        # Enough to keep n after the seen items are dropped, whatever they are.
        k = min(n + int(np.diff(history.indptr).max(initial=0)), n_items)
        scores, items = self.index.search(users, k)
        top_items, top_scores = top_unseen(items.astype(np.int64), scores, history, n)

        def pair(rows: np.ndarray, cols: np.ndarray) -> np.ndarray:
            return np.einsum("pd,pd->p", users[rows], self.item_vectors[cols]).astype(np.float32)

        u64 = users.astype(np.float64)
        total = u64 @ self.column_sum
        total_sq = np.einsum("bd,bd->b", u64 @ self.gram, u64)
        mean, std = unseen_moments(total, total_sq, history, pair)
        return Retrieved(top_items, top_scores, mean, std, pair)


def retrieve_sparse(scores: sp.csr_matrix, history: sp.csr_matrix, n: int) -> Retrieved:
    """Top-n unseen of sparse score rows (items without a stored score score 0)."""
    scores = sp.csr_matrix(scores, dtype=np.float32)
    scores.sum_duplicates()
    lookup = SparseLookup(scores)
    batch = scores.shape[0]
    rows = np.repeat(np.arange(batch), np.diff(scores.indptr))
    cols, values = scores.indices.astype(np.int64), scores.data
    keep = ~SparseLookup(history).contains(rows, cols)
    rows, cols, values = rows[keep], cols[keep], values[keep]
    order = np.lexsort((-values, rows))
    rows, cols, values = rows[order], cols[order], values[order]
    starts = np.searchsorted(rows, np.arange(batch))
    rank = np.arange(len(rows)) - starts[rows]
    picked = rank < n
    items = np.full((batch, n), -1, dtype=np.int64)
    top = np.full((batch, n), -np.inf, dtype=np.float32)
    items[rows[picked], rank[picked]] = cols[picked]
    top[rows[picked], rank[picked]] = values[picked]
    total = np.asarray(scores.sum(axis=1), dtype=np.float64).ravel()
    total_sq = np.asarray(scores.multiply(scores).sum(axis=1), dtype=np.float64).ravel()
    mean, std = unseen_moments(total, total_sq, history, lookup.get)
    return Retrieved(items, top, mean, std, lookup.get)


def prune_rows(weights: np.ndarray, keep: int, index: np.ndarray, n_items: int) -> sp.csr_matrix:
    """[n_items, n_items] CSR with the `keep` largest-magnitude weights of each row of the dense
    [h, h] `weights`, whose rows and columns are the catalogue items `index`."""
    h = weights.shape[0]
    keep = min(keep, h)
    rows, cols, vals = [], [], []
    for start in range(0, h, 2048):  # row blocks bound the argpartition's temporaries
        block = weights[start : start + 2048]
        top = np.argpartition(-np.abs(block), keep - 1, axis=1)[:, :keep]
        rows.append(np.repeat(index[start : start + len(block)], keep))
        cols.append(index[top].ravel())
        vals.append(np.take_along_axis(block, top, axis=1).ravel())
    pruned = sp.csr_matrix(
        (np.concatenate(vals).astype(np.float32), (np.concatenate(rows), np.concatenate(cols))),
        shape=(n_items, n_items),
    )
    pruned.eliminate_zeros()
    return pruned
