"""Content model: TF-IDF over item text (title words, genres, year, description).

It answers "items similar to X", scores users by the similarity of items to their history
profile, and so serves users with no interactions in training but a few known items.

Large catalogues (`dimensions` set, see `ScaleConfig`): the TF-IDF vectors are reduced by LSA
(truncated SVD, scikit-learn) to `dimensions` and normalised, so a user's scores are one exact
FAISS inner-product search instead of a [users x items] sparse product; the cosine is then
taken in that space.
"""
from __future__ import annotations

import numpy as np
import pandas as pd
import scipy.sparse as sp
from sklearn.feature_extraction.text import TfidfVectorizer
from sklearn.preprocessing import normalize

from components.models.base import TrainingData, item_metadata, one_row_history
from components.models.retrieval import FactorIndex, Retrieved


def item_text(items: pd.DataFrame, title_weight: float = 1.0) -> list[str]:
    """One document per item: genre and decade tokens stay whole, titles are split in words."""
    genres = items["genres"].fillna("").str.replace(r"[^\w|]+", "", regex=True)
    genre_tokens = genres.str.split("|").apply(lambda gs: " ".join(f"genre_{g}" for g in gs if g))
    year = pd.to_numeric(items["year"], errors="coerce")
    decade = np.where(year.notna(), "decade_" + (year // 10 * 10).fillna(0).astype(int).astype(str), "")
    titles = items["title"].fillna("").str.replace(r"\(\d{4}\)\s*$", "", regex=True)
    repeat = max(round(title_weight), 0)
    parts = [genre_tokens, pd.Series(decade, index=items.index), items["description"].fillna("")]
    docs = (titles + " ") * repeat
    for part in parts:
        docs = docs + " " + part
    return docs.str.lower().tolist()


class ContentModel:
    name = "content"

    def __init__(self, max_features: int = 20_000, title_weight: float = 1.0, dimensions: int | None = None):
        self.max_features = max_features
        self.title_weight = title_weight
        self.dimensions = dimensions

    @staticmethod
    def nothing_to_learn(interactions: pd.DataFrame, items: pd.DataFrame | None) -> str | None:
        """Why the data gives this model nothing to learn from, or None: no item has a word of
        text (no items file, or one without titles, genres, years or descriptions)."""
        if items is None:
            return "no item has a title, genres, year or description (no items file)"
        if pd.Series(item_text(item_metadata(items)), dtype=object).str.contains(r"\w\w").any():
            return None
        return "no item has a title, genres, year or description (the items file has no text)"

    def fit(self, data: TrainingData) -> ContentModel:
        docs = item_text(data.items, self.title_weight)
        vectorizer = TfidfVectorizer(
            max_features=self.max_features, token_pattern=r"(?u)\b\w\w+\b", sublinear_tf=True
        )
        try:
            vectors = vectorizer.fit_transform(docs)
        except ValueError:  # no text at all (e.g. interactions without an items file)
            vectors = sp.csr_matrix((data.n_items, 1), dtype=np.float32)
        self.item_vectors_ = normalize(vectors.astype(np.float32).tocsr())
        self.item_embeddings_ = None
        if self.dimensions is not None and min(self.item_vectors_.shape) > self.dimensions:
            from sklearn.decomposition import TruncatedSVD

            svd = TruncatedSVD(self.dimensions, random_state=0)
            self.item_embeddings_ = normalize(svd.fit_transform(self.item_vectors_)).astype(np.float32)
        elif self.dimensions is not None:  # a vocabulary no larger than the LSA space: used as is
            self.item_embeddings_ = self.item_vectors_.toarray()
        self._prepare()
        return self

    def _prepare(self) -> None:
        # The transpose is materialised once so scoring is one sparse product per request.
        self.item_vectors_t_ = self.item_vectors_.T.tocsr()
        self._index = None

    def _profiles(self, history: sp.csr_matrix) -> np.ndarray:
        """[B, d] unit-length sums of the history's item embeddings (LSA mode)."""
        profile = np.asarray(history @ self.item_embeddings_, dtype=np.float32)
        return profile / np.maximum(np.linalg.norm(profile, axis=1, keepdims=True), 1e-12)

    def retrieve(self, users: np.ndarray, history: sp.csr_matrix, n: int) -> Retrieved:
        """Top-n unseen items by cosine in LSA space (large catalogues)."""
        if self._index is None:
            self._index = FactorIndex(self.item_embeddings_)
        return self._index.retrieve(self._profiles(history), history, n)

    def score(self, users: np.ndarray, history: sp.csr_matrix) -> np.ndarray:
        """Cosine between each item and the user's profile (the sum of their items' vectors)."""
        if self.item_embeddings_ is not None:
            return self._profiles(history) @ self.item_embeddings_.T
        # A dense profile makes the product sparse-matrix x dense, far cheaper than sparse x sparse.
        profile = (history @ self.item_vectors_).toarray()
        norms = np.linalg.norm(profile, axis=1, keepdims=True)
        scores = np.asarray((self.item_vectors_ @ profile.T).T, dtype=np.float32)
        return scores / np.maximum(norms, 1e-12).astype(np.float32)

    def score_one(self, user: int, seen: np.ndarray) -> np.ndarray:
        if self.item_embeddings_ is not None:
            return self.score(np.array([user]), one_row_history(seen, self.item_vectors_.shape[0]))[0]
        # The profile as the sparse product sums it: each term of the history's item vectors,
        # in history order, added in float32 (unbuffered, so repeats add in sequence).
        vectors = self.item_vectors_
        starts, ends = vectors.indptr[seen], vectors.indptr[seen + 1]
        at = np.repeat(starts - np.cumsum(np.r_[0, (ends - starts)[:-1]]), ends - starts)
        at += np.arange(len(at))
        profile = np.zeros((1, vectors.shape[1]), dtype=np.float32)
        np.add.at(profile[0], vectors.indices[at], vectors.data[at])
        norms = np.linalg.norm(profile, axis=1, keepdims=True)
        scores = np.asarray((vectors @ profile.T).T, dtype=np.float32)
        return (scores / np.maximum(norms, 1e-12).astype(np.float32))[0]

    def similar(self, items: np.ndarray) -> np.ndarray:
        """[len(items), n_items] cosine similarity of the given item indices to every item."""
        return (self.item_vectors_[items] @ self.item_vectors_t_).toarray().astype(np.float32)

    def get_state(self) -> dict[str, sp.csr_matrix | np.ndarray]:
        state = {"item_vectors": self.item_vectors_}
        if self.item_embeddings_ is not None:
            state["item_embeddings"] = self.item_embeddings_
        return state

    @classmethod
    def from_state(cls, state: dict[str, sp.csr_matrix]) -> ContentModel:
        model = cls()
        model.item_vectors_ = state["item_vectors"].tocsr()
        model.item_embeddings_ = state.get("item_embeddings")
        model._prepare()
        return model
