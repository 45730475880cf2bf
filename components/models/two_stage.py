"""The two-stage recommender: candidate generators, then a LightGBM learning-to-rank ranker.

Training (`fit`) carves a validation slice out of the training interactions, fits the
generators on the rest, builds candidates and features for the slice's users and trains the
ranker to put their held-out items first: its validation NDCG on a share of those users chooses
the number of trees (`chosen_trees`), and that many are then trained on all of them. If one generator alone orders
those validation users' candidates better than the ranker (NDCG@k), the ranker is dropped and
that generator serves alone. The generators are then refitted on all training interactions,
which is what serves.

Scoring (`recommend_indices`) is vectorised over the batch: every generator scores the whole
catalogue for the batch, the ranker scores the union of their top-N, and items outside the
candidates follow in popularity order, so any k up to the catalogue size can be answered.
"""
from __future__ import annotations

import json
import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import lightgbm as lgb
import numpy as np
import pandas as pd
import scipy.sparse as sp

from components.config import ModelConfig, SplitConfig
from components.data.split import kfold_splits, split_interactions
from components.models.als import AlsModel
from components.models.base import (
    USER_TIMES,
    TrainingData,
    build_training_data,
    history_matrix,
    one_row_history,
)
from components.models.content import ContentModel
from components.models.ease import EaseModel, SequenceEaseModel
from components.models.features import (
    Candidates,
    ItemStats,
    build_candidates,
    build_candidates_from_retrieval,
    build_candidates_one,
    feature_names,
    mean_of_known,
    top_n,
)
from components.models.popularity import PopularityModel
from components.models.ranker_rounds import chosen_trees, truncated, validation_ndcg
from components.models.retrieval import SparseLookup, top_unseen

log = logging.getLogger(__name__)

Generator = PopularityModel | EaseModel | SequenceEaseModel | AlsModel | ContentModel
# Non-candidates rank below every candidate, in popularity order.
_FALLBACK_OFFSET = -1e4
_CHUNK = 1024
# Candidate rows up to which the ranker predicts on one thread (`TwoStageRecommender._rank`).
_ONE_THREAD_ROWS = 4096
# Batches up to this many users are answered one user at a time (`_recommend_one`): the batch
# path's sparse matrices cost more than they save below it (bench_model_call.py).
_ONE_BY_ONE_USERS = 3
# How often `fit(ranker_rounds=...)` hears the ranker's validation NDCG, in boosting rounds.
RANKER_ROUNDS_EVERY = 25


def _every_rounds(report: Callable[[int, float], None], metric: str):
    """A LightGBM callback calling `report(round, validation metric)` every
    `RANKER_ROUNDS_EVERY` rounds (rounds counted from 1)."""
    def callback(env) -> None:
        done = env.iteration + 1
        if done % RANKER_ROUNDS_EVERY == 0:
            value = next(v for _, name, v, _ in env.evaluation_result_list if name == metric)
            report(done, float(value))
    callback.order = 40  # after record_evaluation (20) and early stopping (30)
    return callback


@dataclass
class Recommendations:
    item_ids: np.ndarray  # [B, k] str
    scores: np.ndarray  # [B, k] float32
    cold_start: np.ndarray  # [B] bool: the user was not seen in training


def is_large(config: ModelConfig, n_items: int) -> bool:
    """Whether a catalogue takes the retrieval path (see `ScaleConfig`)."""
    return n_items > config.scale.large_catalogue_items


def make_generators(config: ModelConfig, large: bool = False) -> dict[str, Generator]:
    scale = config.scale
    head = {"head_items": scale.item_item_items, "neighbours": scale.neighbours} if large else {}
    gens: dict[str, Generator] = {"popularity": PopularityModel()}
    if config.ease.enabled:
        e = config.ease
        gens["ease"] = EaseModel(e.l2, e.max_items, e.min_item_support, e.dropout, **head)
    if config.seq_ease.enabled:
        q = config.seq_ease
        gens["seq_ease"] = SequenceEaseModel(
            q.l2, q.length_scale, q.window, q.max_items, q.min_item_support, **head
        )
    if config.als.enabled:
        a = config.als
        gens["als"] = AlsModel(a.factors, a.regularization, a.iterations, a.alpha, config.seed)
    if config.content.enabled:
        c = config.content
        gens["content"] = ContentModel(
            c.max_features, c.title_weight, scale.content_dimensions if large else None
        )
    return gens


def left_out_generators(
    config: ModelConfig, interactions: pd.DataFrame, items: pd.DataFrame | None
) -> dict[str, str]:
    """The enabled generators that have nothing to learn from this data, each with the reason
    (content without item text: a generator says so by `nothing_to_learn(interactions,
    items)`). They are left out of the fit, and the ranker's features with them; the others
    train as usual."""
    reasons = {}
    for name, gen in make_generators(config).items():
        missing = getattr(gen, "nothing_to_learn", None)
        reason = missing(interactions, items) if missing is not None else None
        if reason:
            reasons[name] = reason
    return reasons


def generators_line(generators: Sequence[str], left_out: dict[str, str], data: TrainingData) -> str:
    """One line naming the generators a fit used, and those it left out."""
    used = [f"{name} (no timestamps: plain co-occurrence)" if name == "seq_ease" and data.positions is None
            else name for name in generators]
    line = f"generators: {', '.join(used)}"
    return line + (f"; left out: {', '.join(left_out)}" if left_out else "")


def generator_key(config: ModelConfig, name: str) -> str:
    """What a generator's fit depends on besides its data: its own config section, the scale
    values and the seed (`make_generators`). Two configs with the same key fit the same model."""
    section = getattr(config, name).model_dump(mode="json") if name != "popularity" else {}
    return json.dumps([name, section, config.scale.model_dump(mode="json"), config.seed], sort_keys=True)


class FitCache:
    """What fits of one data set with different configs share, as the trials of a tuning study
    do: the indexed training data of the training interactions and of each ranker fold, the
    folds themselves, and each generator fitted on them, kept while its own config values
    (`generator_key`) stay the same. Only the latest fit of each generator on each data is kept
    (a trial that changes EASE's λ refits EASE, not ALS; memory does not grow with the trials).

    A fit with a cache computes what it computes without one: the generators are deterministic
    given their data and values, and nothing is shared that a fit changes. A cache belongs to one
    set of training interactions and items (the first fit it serves); a fit on others refuses it.
    """

    def __init__(self) -> None:
        self._frames: tuple[pd.DataFrame, pd.DataFrame | None] | None = None
        self._data: dict[tuple, TrainingData] = {}
        self._folds: dict[tuple, list] = {}
        self._generators: dict[tuple, tuple[str, Generator]] = {}
        self.hits = self.misses = 0

    def bind(self, interactions: pd.DataFrame, items: pd.DataFrame | None) -> None:
        if self._frames is None:
            self._frames = (interactions, items)
        elif self._frames[0] is not interactions or self._frames[1] is not items:
            raise ValueError("a FitCache serves fits on one set of training interactions and items")

    def data(self, key: tuple, build: Callable[[], TrainingData]) -> TrainingData:
        if key not in self._data:
            self._data[key] = build()
        return self._data[key]

    def folds(self, key: tuple, build: Callable[[], list]) -> list:
        if key not in self._folds:
            self._folds[key] = build()
        return self._folds[key]

    def generator(self, slot: tuple, key: str, build: Callable[[], Generator]) -> Generator:
        kept = self._generators.get(slot)
        if kept is not None and kept[0] == key:
            self.hits += 1
            return kept[1]
        self.misses += 1
        gen = build()
        self._generators[slot] = (key, gen)
        return gen


def fit_generators(
    data: TrainingData, config: ModelConfig, progress: Callable[[str], None], left_out: Sequence[str] = (),
    cache: FitCache | None = None, data_key: tuple = (),
) -> dict[str, Generator]:
    """The enabled generators fitted on `data`; with a `cache`, those fitted on the same data
    (`data_key`) with the same values before are reused."""
    large = is_large(config, data.n_items)
    if large:
        progress(f"  {data.n_items:,} items: candidate retrieval (model.scale.large_catalogue_items)")
    gens = {name: gen for name, gen in make_generators(config, large).items() if name not in left_out}
    for name, gen in gens.items():
        progress(f"  fitting {name} on {data.matrix.nnz:,} interactions")
        if cache is None:
            gen.fit(data)
        else:
            gens[name] = cache.generator((data_key, name), generator_key(config, name),
                                         lambda gen=gen: gen.fit(data))
    return gens


class TwoStageRecommender:
    def __init__(self, config: ModelConfig | None = None, split: SplitConfig | None = None):
        self.config = config or ModelConfig()
        self.split = split or SplitConfig()
        # Without a ranker, the generator the fit found best alone (None: EASE, else popularity).
        self.fallback_: str | None = None
        # Enabled generators the fit left out, with the reason (`left_out_generators`).
        self.left_out_: dict[str, str] = {}
        # Where the cold-start answer's scores are put (`cold_start_scores`); None: as they are.
        self.cold_start_scale_: tuple[float, float, float, float] | None = None
        # The ranker's trees compiled (`compile_ranker`); None: LightGBM scores.
        self.compiled_ranker_ = None

    # ----------------------------------------------------------------- training
    def fit(
        self,
        interactions: pd.DataFrame,
        items: pd.DataFrame | None = None,
        *,
        progress: Callable[[str], None] = log.info,
        client=None,
        cache: FitCache | None = None,
        ranker_rounds: Callable[[int, float], None] | None = None,
    ) -> TwoStageRecommender:
        """Fit; with a Dask `client` the ranker's examples are built by user partition on its
        workers and LightGBM trains there (`components.models.distributed`). A `cache`
        (`FitCache`, single-process fits) reuses the prepared data and the generators of
        earlier fits on the same interactions. `ranker_rounds(round, ndcg)` is called every
        `RANKER_ROUNDS_EVERY` boosting rounds with the ranker's validation NDCG (what chooses its
        tree count); an exception it raises stops the fit (a tuning pruner's)."""
        cfg = self.config
        self.ranker_ = self.fallback_ = self.compiled_ranker_ = None
        self._cache = cache if client is None else None  # the Dask fit's folds build on workers
        if self._cache is not None:
            self._cache.bind(interactions, items)
        # Decided once on all the data, so every fold's generators (and the ranker's features)
        # are the ones that serve.
        self.left_out_ = left_out_generators(cfg, interactions, items)
        for name, reason in self.left_out_.items():
            log.warning("%s generator left out: %s", name, reason)
        if cfg.ranker.enabled and client is not None:
            from components.models.distributed import fit_ranker_on_dask

            progress(self.ranker_label_source())
            self.ranker_ = fit_ranker_on_dask(self, client, self._ranker_folds(interactions), items, progress)
        elif cfg.ranker.enabled:
            progress(self.ranker_label_source())
            folds = self._cached_folds(interactions)
            rng = np.random.default_rng(cfg.seed)
            examples = [
                self._ranker_examples(part.train, part.test, items, rng, progress, f"{i + 1}/{len(folds)}")
                for i, part in enumerate(folds)
            ]
            x = np.vstack([e[0] for e in examples])
            y = np.concatenate([e[1] for e in examples])
            groups = np.concatenate([e[2] for e in examples])
            group_users = np.concatenate([e[3] for e in examples])
            if len(np.unique(group_users)) >= 2:
                self.ranker_ = self._train_lightgbm(x, y, groups, group_users, progress, ranker_rounds)
            else:
                progress("ranker: too few users with held-out candidates; ranking by EASE alone")
        progress(f"refitting generators on all {len(interactions):,} training interactions")
        key = ("all", cfg.positive_rating_threshold)
        self._set_state(self._training_data(key, interactions, items))
        self.generators_ = fit_generators(self.data_, cfg, progress, self.left_out_, self._cache, key)
        progress(generators_line(list(self.generators_), self.left_out_, self.data_))
        self.cold_start_scale_ = self._cold_start_scale()
        self._cache = None
        return self

    def _training_data(self, key: tuple, interactions: pd.DataFrame, items: pd.DataFrame | None) -> TrainingData:
        def build() -> TrainingData:
            return build_training_data(interactions, items,
                                       positive_rating_threshold=self.config.positive_rating_threshold)
        cache = getattr(self, "_cache", None)
        return build() if cache is None else cache.data(key, build)

    def _folds_key(self) -> tuple:
        return ("folds", self.split.model_dump_json(), self.config.ranker.folds)

    def _cached_folds(self, interactions: pd.DataFrame) -> list:
        cache = getattr(self, "_cache", None)
        if cache is None:
            return self._ranker_folds(interactions)
        return cache.folds(self._folds_key(), lambda: self._ranker_folds(interactions))

    def _cold_start_scale(self, k: int = 10, sample: int = 500) -> tuple[float, float, float, float] | None:
        """(log popularity of the k-th and the most popular item, median k-th and top score of
        personalised answers) on a seeded sample of training users: `cold_start_scores` maps the
        popularity answer onto the served scores with it. None where there is nothing to map."""
        self.cold_start_scale_ = None  # the answers below are the unmapped ones
        users = np.flatnonzero(np.diff(self.data_.matrix.indptr) > 0)
        k = min(k, self.data_.n_items)
        if len(users) == 0 or k < 2:
            return None
        rng = np.random.default_rng(self.config.seed)
        users = np.sort(rng.choice(users, min(sample, len(users)), replace=False))
        _, scores = self.recommend_indices(users, self.data_.matrix[users], k)
        top, kth = scores[:, 0], scores[:, k - 1]
        kept = np.isfinite(top) & np.isfinite(kth) & (kth > _FALLBACK_OFFSET / 2)  # answers, not fill
        popular = np.sort(self.stats_.log_popularity)[::-1]
        if not kept.any() or popular[0] - popular[k - 1] <= 1e-9:
            return None
        high, low = float(np.median(top[kept])), float(np.median(kth[kept]))
        if not high > low:
            return None
        return float(popular[k - 1]), float(popular[0]), low, high

    def cold_start_scores(self, log_popularity: np.ndarray) -> np.ndarray:
        """The popularity answer's scores on the personalised answers' scale: linear in log
        popularity, the most popular item at the median top score of a personalised answer and
        the k-th most popular at the median k-th score (`_cold_start_scale`), so that scores in
        one answer are comparable across users. The order is popularity's. Artifacts written
        before the scale existed keep the log popularity itself."""
        scale = getattr(self, "cold_start_scale_", None)
        if scale is None:
            return log_popularity
        pop_low, pop_high, low, high = scale
        return (low + (high - low) * (log_popularity - pop_low) / (pop_high - pop_low)).astype(np.float32)

    @property
    def ranked_by(self) -> str:
        """What orders the answers: "ranker", or the generator that serves alone (the one the
        fit found better than the ranker on its validation users, else EASE, else popularity)."""
        if self.ranker_ is not None:
            return "ranker"
        if self.fallback_ in self.generators_:
            return self.fallback_
        return "ease" if "ease" in self.generators_ else "popularity"

    def _set_state(self, data: TrainingData) -> None:
        self.data_ = data
        self.stats_ = ItemStats.from_training(data)
        self.user_time_ = data.user_times()  # [n_users, 3], NaN if unknown
        self._user_rows = self._item_rows = self._title_index = None  # lookups of the previous data

    @property
    def large_(self) -> bool:
        return is_large(self.config, self.data_.n_items)

    def ranker_label_source(self) -> str:
        """Which split the ranker learns from, in words: it decides which evaluation the model
        fits (a ranker taught to predict users' latest interactions loses on a random split,
        and one taught on random folds loses on a chronological one)."""
        if self.split.method == "temporal" or self.config.ranker.folds == 1:
            return (
                f"ranker learns from a {self.split.method} slice of each user's interactions "
                f"({100 * self.split.validation_fraction:.0f}%, "
                f"{'the most recent' if self.split.method == 'temporal' else 'at random'}; "
                f"split.method: {self.split.method}): it fits a "
                f"{'chronological' if self.split.method == 'temporal' else 'random-split'} evaluation"
            )
        return (
            f"ranker learns from {self.config.ranker.folds} folds of each user's interactions in "
            "random order (split.method: stratified): it fits a random-split evaluation"
        )

    def _ranker_folds(self, interactions: pd.DataFrame) -> list:
        """Where the ranker's labels come from. Cross-fitting (K folds of the training data)
        keeps the generators that make its features close to the ones that serve (fitted on
        (K-1)/K of the data rather than on a small remainder) and gives it K times the labels.
        A temporal split keeps one slice of each user's most recent interactions: the ranker
        must learn to predict the future, as it will serve."""
        folds = self.config.ranker.folds
        if self.split.method == "temporal" or folds == 1:
            return [split_interactions(interactions, self.split, validation=True)]
        return kfold_splits(
            interactions, folds, self.split.min_user_interactions, seed=self.split.seed + 1
        )

    def _ranker_examples(
        self,
        fit_part: pd.DataFrame,
        held_out: pd.DataFrame,
        items: pd.DataFrame | None,
        rng: np.random.Generator,
        progress: Callable[[str], None],
        fold: str,
    ) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
        """Candidates of the held-out users, labelled by their held-out items: features, labels,
        group sizes (one group per user) and each group's user id."""
        labels, target_users = self._fold_labels(fit_part, held_out, items, rng, progress, fold)
        x, y, g, who = self.examples_for_users(target_users, labels, rng)
        recall = y.sum() / max(labels[target_users].nnz, 1)
        progress(f"  {len(g):,} users, {len(y):,} candidate pairs, candidate recall {recall:.3f}")
        return x, y, g, who

    def _fold_labels(
        self,
        fit_part: pd.DataFrame,
        held_out: pd.DataFrame,
        items: pd.DataFrame | None,
        rng: np.random.Generator,
        progress: Callable[[str], None],
        fold: str,
    ) -> tuple[sp.csr_matrix, np.ndarray]:
        """Fit the fold's generators (the model's state becomes the fold's); returns the
        held-out items as a [users, items] label matrix and the users the ranker learns from."""
        cfg = self.config
        progress(
            f"ranker fold {fold}: generators on {len(fit_part):,} interactions, "
            f"labels from {len(held_out):,}"
        )
        key = (*self._folds_key(), fold, cfg.positive_rating_threshold)
        data = self._training_data(key, fit_part, items)
        self._set_state(data)
        self.generators_ = fit_generators(data, cfg, lambda _: None, getattr(self, "left_out_", {}),
                                          getattr(self, "_cache", None), key)
        users = np.searchsorted(data.user_ids, held_out["user_id"].to_numpy(str))
        users = np.clip(users, 0, data.n_users - 1)
        known = data.user_ids[users] == held_out["user_id"].to_numpy(str)
        item_idx = np.searchsorted(data.item_ids, held_out["item_id"].to_numpy(str))
        item_idx = np.clip(item_idx, 0, data.n_items - 1)
        known &= data.item_ids[item_idx] == held_out["item_id"].to_numpy(str)
        labels = sp.csr_matrix(
            (np.ones(int(known.sum()), dtype=np.float32), (users[known], item_idx[known])),
            shape=(data.n_users, data.n_items),
        )
        target_users = np.unique(users[known])
        cap = cfg.scale.ranker_max_users
        if len(target_users) > cap:  # the ranker's cost stops growing with the data
            progress(f"  ranker learns from {cap:,} of {len(target_users):,} users (model.scale.ranker_max_users)")
            target_users = np.sort(rng.choice(target_users, cap, replace=False))
        return labels, target_users

    def examples_for_users(
        self, target_users: np.ndarray, labels: sp.csr_matrix, rng: np.random.Generator
    ) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
        """The ranker's examples for these users, built in chunks: features, labels, group
        sizes and each group's user id (a Dask worker runs this on its partition of users)."""
        data = self.data_
        feats, label, groups, group_users = [], [], [], []
        for start in range(0, len(target_users), _CHUNK):
            batch = target_users[start : start + _CHUNK]
            cand = self._candidates(batch, data.matrix[batch])
            y = np.asarray(labels[batch[cand.rows], cand.items]).ravel()
            counts = np.bincount(cand.rows, minlength=len(batch))
            positive = np.bincount(cand.rows, weights=y, minlength=len(batch)) > 0
            # Users with no held-out item among their candidates teach nothing. The rest are
            # shuffled within each user: candidates come in item order, and LightGBM's NDCG keeps
            # input order among equal scores, so a model of a few trees (few distinct scores)
            # would be judged partly on item order and early stopping could keep one tree.
            keep = np.flatnonzero(positive[cand.rows])
            keep = keep[np.lexsort((rng.random(len(keep)), cand.rows[keep]))]
            feats.append(cand.features[keep])
            label.append(y[keep])
            groups.append(counts[positive])
            group_users.append(data.user_ids[batch[positive]])
        n_features = len(feature_names(list(self.generators_)))
        x = np.vstack(feats) if feats else np.zeros((0, n_features), np.float32)
        y = np.concatenate(label) if label else np.zeros(0)
        g = np.concatenate(groups) if groups else np.zeros(0, np.int64)
        who = np.concatenate(group_users) if group_users else np.zeros(0, dtype=str)
        return x, y, g, who

    def lightgbm_params(self) -> dict:
        r = self.config.ranker
        return {
            "objective": r.objective,
            "metric": "ndcg",
            "eval_at": [r.eval_at],
            "learning_rate": r.learning_rate,
            "num_leaves": r.num_leaves,
            "min_child_samples": r.min_child_samples,
            "lambdarank_truncation_level": max(r.eval_at * 2, 20),
            "feature_fraction": 0.9,
            "seed": self.config.seed,
            "deterministic": True,
            "force_col_wise": True,
            "num_threads": 2,
            "verbose": -1,
        }

    def _train_lightgbm(
        self,
        x: np.ndarray,
        y: np.ndarray,
        groups: np.ndarray,
        group_users: np.ndarray,
        progress: Callable[[str], None],
        ranker_rounds: Callable[[int, float], None] | None = None,
    ) -> lgb.Booster | None:
        """The ranker, or None where one generator alone ranks the validation users better
        (`fallback_` names it: the model then serves that generator's order)."""
        r = self.config.ranker
        rng = np.random.default_rng(self.config.seed)
        # The tree count is chosen on users the ranker never trains on: every user has a group
        # in every fold, so a split by group would validate on near-copies of training groups.
        users = np.unique(group_users)
        valid_users = rng.choice(users, max(1, len(users) // 5), replace=False)
        valid_groups = np.isin(group_users, valid_users)
        row_group = np.repeat(np.arange(len(groups)), groups)
        in_valid = valid_groups[row_group]
        params = self.lightgbm_params()
        names = feature_names(list(self.generators_))
        train = lgb.Dataset(x[~in_valid], y[~in_valid], group=groups[~valid_groups], feature_name=names)
        x_valid = x[in_valid]
        valid = lgb.Dataset(x_valid, y[in_valid], group=groups[valid_groups], reference=train)
        evaluated: dict = {}
        callbacks = [lgb.record_evaluation(evaluated)]
        if r.early_stopping_rounds is not None:
            callbacks.append(lgb.early_stopping(r.early_stopping_rounds, verbose=False))
        if ranker_rounds is not None:
            callbacks.append(_every_rounds(ranker_rounds, f"ndcg@{r.eval_at}"))
        booster = lgb.train(params, train, num_boost_round=r.n_estimators, valid_sets=[valid], callbacks=callbacks)
        curve = evaluated["valid_0"][f"ndcg@{r.eval_at}"]
        trees = chosen_trees(curve, r.early_stopping_rounds)
        progress(f"ranker: {trees} trees")  # its validation NDCG: keep_ranker's line
        alone = validation_ndcg(booster.predict(x_valid, num_iteration=trees), x_valid, y[in_valid],
                                groups[valid_groups], names, list(self.generators_), r.eval_at)
        if not self.keep_ranker({name: ndcg for name, (ndcg, _) in alone.items()}, progress):
            return None
        if not r.refit_on_all_users:  # the chosen trees alone, not every round trained
            return truncated(booster, trees)
        progress(f"ranker: {trees} trees again on all {len(groups):,} groups, validation users included")
        full = lgb.Dataset(x, y, group=groups, feature_name=names)
        return lgb.train({**params, "metric": "none"}, full, num_boost_round=trees)

    def keep_ranker(self, alone: dict[str, float], progress: Callable[[str], None]) -> bool:
        """Whether the ranker orders the validation users better than every generator alone
        (`validation_ndcg`); if not, the best of them is set to serve alone (`fallback_`)."""
        scored = ", ".join(f"{name} {value:.4f}" for name, value in alone.items())
        progress(f"validation ndcg@{self.config.ranker.eval_at}: {scored}")
        rivals = [name for name in alone if name != "ranker"]
        rival = max(rivals, key=alone.get) if rivals else None
        if rival is None or alone[rival] <= alone["ranker"]:
            return True
        progress(f"ranker: {rival} alone ranks the validation users better; serving {rival} alone")
        self.fallback_ = rival
        return False

    # ------------------------------------------------------------------ scoring
    def _rank(self, features: np.ndarray) -> np.ndarray:
        """The ranker's scores of candidate rows. A serving call has a few hundred rows, for
        which starting OpenMP threads costs more than the trees: up to `_ONE_THREAD_ROWS` rows
        are scored on one thread (each row's score does not depend on the thread count), by the
        compiled trees when `compile_ranker` made them (the same scores, bit for bit)."""
        if len(features) <= _ONE_THREAD_ROWS:
            compiled = getattr(self, "compiled_ranker_", None)
            if compiled is not None and compiled.ready:
                return compiled.predict(features)
            return self.ranker_.predict(features, num_threads=1)
        return self.ranker_.predict(features)

    def compile_ranker(self, cache_dir: str | Path | None = None) -> str | None:
        """Score serving calls with the ranker's trees compiled to machine code
        (`components.models.compiled_ranker`), checked to score as LightGBM does; the object
        code is kept in `cache_dir` (None: compiled in every process). Returns None when the
        compiled trees serve, else why LightGBM still does (no ranker, or compilation refused
        or failed); the model answers the same either way."""
        self.compiled_ranker_ = None
        if self.ranker_ is None:
            return "the model has no ranker"
        from components.models.compiled_ranker import CompiledRanker, CompileRefused

        try:
            self.compiled_ranker_ = CompiledRanker.build(self.ranker_, cache_dir)
        except CompileRefused as exc:
            return str(exc)
        return None

    def _generator_scores(self, users: np.ndarray, history: sp.csr_matrix) -> dict[str, np.ndarray]:
        return {name: gen.score(users, history) for name, gen in self.generators_.items()}

    def _candidates(self, users: np.ndarray, history: sp.csr_matrix):
        # A user known only by a history: its items' mean time stands for all three.
        user_time = np.repeat(self.stats_.history_time(history)[:, None], len(USER_TIMES), axis=1)
        known = users >= 0
        user_time[known] = self.user_time_[users[known]]
        if self.large_:
            n = self.config.ranker.candidates_per_generator
            found = {name: gen.retrieve(users, history, n) for name, gen in self.generators_.items()}
            return build_candidates_from_retrieval(found, history, self.stats_, user_time)
        scores = self._generator_scores(users, history)
        return build_candidates(
            scores, history, self.stats_, self.config.ranker.candidates_per_generator, user_time
        )

    def recommend_indices(
        self,
        users: np.ndarray,
        history: sp.csr_matrix,
        k: int,
        exclude: sp.csr_matrix | None = None,
        generator: str | None = None,
    ) -> tuple[np.ndarray, np.ndarray]:
        """Top-k item indices and scores for index-space users (-1: unknown) with their history.

        Items in `history` and `exclude` are never returned. `generator` ranks by one first-stage
        model alone (for evaluation); by default the ranker decides.
        """
        banned = history if exclude is None else (history + exclude)
        popularity = self.stats_.log_popularity
        if self.large_:
            return self._recommend_retrieved(users, history, k, banned.tocsr(), generator)
        if generator is not None:
            final = self.generators_[generator].score(users, history)
        elif self.ranker_ is None:
            final = self.generators_[self.ranked_by].score(users, history)
        else:
            cand = self._candidates(users, history)
            final = np.broadcast_to(_FALLBACK_OFFSET + popularity / (popularity.max() + 1), history.shape).copy()
            final[cand.rows, cand.items] = self._rank(cand.features)
        cold = np.diff(history.indptr) == 0
        if cold.any():  # nothing to personalise on: the popularity answer
            final[cold] = self.cold_start_scores(popularity)
        final = np.where(banned.toarray() > 0, -np.inf, final).astype(np.float32)
        k = min(k, final.shape[1])
        top = top_n(final, k)
        return top, np.take_along_axis(final, top, axis=1)

    def _recommend_retrieved(
        self, users: np.ndarray, history: sp.csr_matrix, k: int, banned: sp.csr_matrix, generator: str | None
    ) -> tuple[np.ndarray, np.ndarray]:
        """`recommend_indices` for large catalogues: the ranker orders the retrieved candidates
        (or one generator its own top-k), and popularity fills what they leave, as in the dense
        path, without a [batch x items] array."""
        k = min(k, self.data_.n_items)
        banned.data[:] = 1.0
        cold = np.diff(history.indptr) == 0
        if generator is not None or self.ranker_ is None:
            name = generator or self.ranked_by
            # Scored on the history alone; exclusions are dropped afterwards, so ask for more.
            extra = int(np.diff(banned.indptr).max(initial=0) - np.diff(history.indptr).min(initial=0))
            found = self.generators_[name].retrieve(users, history, k + max(extra, 0))
            items, scores = top_unseen(found.items, found.scores, banned, k)
            if items.shape[1] < k:  # a generator that proposed fewer: popularity fills below
                short = k - items.shape[1]
                items = np.hstack([items, np.full((len(items), short), -1, np.int64)])
                scores = np.hstack([scores, np.full((len(items), short), -np.inf, np.float32)])
        else:
            cand = self._candidates(users, history)
            keep = ~SparseLookup(banned).contains(cand.rows, cand.items)
            rows, cand_items = cand.rows[keep], cand.items[keep]
            score = self._rank(cand.features[keep]).astype(np.float32)
            order = np.lexsort((-score, rows))
            rows, cand_items, score = rows[order], cand_items[order], score[order]
            rank = np.arange(len(rows)) - np.searchsorted(rows, rows)
            picked = rank < k
            items = np.full((len(users), k), -1, dtype=np.int64)
            scores = np.full((len(users), k), -np.inf, dtype=np.float32)
            items[rows[picked], rank[picked]] = cand_items[picked]
            scores[rows[picked], rank[picked]] = score[picked]
        popular = self.generators_["popularity"]
        # Cold rows get the popularity answer; short rows are filled in popularity order.
        items[cold], scores[cold] = -1, -np.inf
        short = np.flatnonzero((items < 0).any(axis=1))
        if len(short):
            taken = sp.csr_matrix(
                (np.ones(int((items[short] >= 0).sum()), np.float32),
                 (np.nonzero(items[short] >= 0)[0], items[short][items[short] >= 0])),
                shape=(len(short), self.data_.n_items),
            )
            fill = popular.retrieve(users[short], (banned[short] + taken).tocsr(), k)
            fill_scores = np.where(cold[short, None], self.cold_start_scores(fill.scores),
                                   _FALLBACK_OFFSET + fill.scores / (popular.scores_.max() + 1))
            for row, at in enumerate(short):
                free = items[at] < 0
                items[at, free] = fill.items[row, : int(free.sum())]
                scores[at, free] = fill_scores[row, : int(free.sum())]
        return items, scores

    # --------------------------------------------------------------- id facing
    def user_index(self, user_ids: Sequence[str]) -> np.ndarray:
        """Row of each user id in the training data, -1 for users it does not know. A dict: a
        serving request asks for one or a few ids, where numpy's per-call overhead dominates."""
        rows = getattr(self, "_user_rows", None)
        if rows is None:
            rows = self._user_rows = {uid: row for row, uid in enumerate(self.data_.user_ids.tolist())}
        return np.fromiter((rows.get(str(u), -1) for u in user_ids), np.int64, len(user_ids))

    def recommend(
        self,
        user_ids: Sequence[str],
        k: int = 10,
        *,
        exclude_item_ids: Sequence[Sequence[str]] | None = None,
        history_item_ids: Sequence[Sequence[str]] | None = None,
    ) -> Recommendations:
        """Top-k for users by id. Unknown users get the cold-start answer (popularity, or
        content and collaborative scores from `history_item_ids` when given)."""
        if len(user_ids) <= _ONE_BY_ONE_USERS and self.ranker_ is not None and not self.large_:
            ones = []
            for i, user in enumerate(user_ids):
                one = self._recommend_one(
                    str(user), k,
                    None if exclude_item_ids is None else exclude_item_ids[i],
                    None if history_item_ids is None else history_item_ids[i],
                )
                if one is None:  # no history: the batch path's cold-start answer, for all
                    break
                ones.append(one)
            else:
                if len(ones) == 1:
                    return ones[0]
                if ones:
                    return Recommendations(
                        np.concatenate([one.item_ids for one in ones]),
                        np.concatenate([one.scores for one in ones]),
                        np.concatenate([one.cold_start for one in ones]),
                    )
        users = self.user_index(user_ids)
        cold = users < 0
        n_items = self.data_.n_items
        # Known users bring their training history; unknown users start empty.
        history = self.data_.matrix[np.maximum(users, 0)]
        if cold.any():
            history = sp.csr_matrix(history.multiply((~cold)[:, None].astype(np.float32)))
            history.eliminate_zeros()
        if history_item_ids is not None:
            extra = history_matrix(self.data_.item_ids, [list(h) for h in history_item_ids], n_items)
            grew = np.asarray((extra - extra.multiply(history)).sum(axis=1)).ravel() > 0
            history = (history + extra).tocsr()
            history.data[:] = 1.0
            users = np.where(grew, -1, users)  # a new history means new user factors
        exclude = None
        if exclude_item_ids is not None:
            exclude = history_matrix(self.data_.item_ids, [list(e) for e in exclude_item_ids], n_items)
        top, scores = self.recommend_indices(users, sp.csr_matrix(history), k, exclude)
        return Recommendations(self.data_.item_ids[top], scores, cold)

    def _item_index(self, item_ids: Sequence[str]) -> np.ndarray:
        """Sorted unique catalogue indices of the known ids among `item_ids`."""
        rows = getattr(self, "_item_rows", None)
        if rows is None:
            rows = self._item_rows = {iid: row for row, iid in enumerate(self.data_.item_ids.tolist())}
        found = [rows[i] for i in map(str, item_ids) if i in rows]
        return np.unique(np.asarray(found, dtype=np.int64))

    def one_user_history(self, user_id: str, extra: Sequence[str] | None) -> tuple[int, np.ndarray]:
        """(training row, or -1 for a user unknown or whose history grew; sorted item indices
        of the history) that `recommend` scores one user on: its training history plus the
        known items of `extra`."""
        return self._history_of(int(self.user_index([user_id])[0]), extra)

    def _history_of(self, user: int, extra: Sequence[str] | None) -> tuple[int, np.ndarray]:
        """`one_user_history` of a training row (-1: unknown)."""
        matrix = self.data_.matrix
        seen = matrix.indices[matrix.indptr[user] : matrix.indptr[user + 1]] if user >= 0 else matrix.indices[:0]
        seen = np.sort(seen).astype(np.int64)
        if extra is not None:
            grown = np.union1d(seen, self._item_index(extra))
            if len(grown) > len(seen):
                user = -1  # a new history means new user factors
            seen = grown
        return int(user), seen

    def one_user_candidates(self, user: int, seen: np.ndarray) -> tuple[dict[str, np.ndarray], Candidates]:
        """Every generator's [n_items] scores of one user's history (`one_user_history`) and
        the ranker's candidate rows for it: the features the served answer was ranked on."""
        users = np.array([user], dtype=np.int64)
        if self.large_:  # the retrieval path's candidates, as `recommend_indices` builds them
            history = one_row_history(seen, self.data_.n_items)
            scores = {name: gen.score(users, history)[0] for name, gen in self.generators_.items()}
            return scores, self._candidates(users, history)
        scores = {name: gen.score_one(user, seen) for name, gen in self.generators_.items()}
        if user >= 0:
            user_time = self.user_time_[users]
        else:
            user_time = np.full((1, len(USER_TIMES)), mean_of_known(self.stats_.mean_time[seen]))
        rows = {name: s[None, :] for name, s in scores.items()}
        cand = build_candidates_one(rows, seen, self.stats_, self.config.ranker.candidates_per_generator, user_time)
        return scores, cand

    def fallback_scores(self) -> np.ndarray:
        """[n_items] the score of an item no generator proposed: below every candidate, in
        popularity order."""
        popularity = self.stats_.log_popularity
        return (_FALLBACK_OFFSET + popularity / (popularity.max() + 1)).astype(np.float32)

    def rank_scores(self, features: np.ndarray) -> np.ndarray:
        """The ranker's raw scores of candidate rows, as the served answer orders them."""
        return self._rank(features)

    def _recommend_one(
        self, user_id: str, k: int, exclude: Sequence[str] | None, extra: Sequence[str] | None
    ) -> Recommendations | None:
        """`recommend` for one user of a ranked, dense-path model, on [n_items] rows instead of
        sparse [1, n_items] matrices: the same answer as the batch path (tests/model/
        test_fast_call.py) at a fraction of its fixed cost. None for a user with no history
        (the cold-start answer is the batch path's)."""
        known = int(self.user_index([user_id])[0])
        user, seen = self._history_of(known, extra)
        if not len(seen):
            return None
        _, cand = self.one_user_candidates(user, seen)
        final = self.fallback_scores()
        final[cand.items] = self._rank(cand.features)
        final[seen] = -np.inf
        if exclude is not None:
            final[self._item_index(exclude)] = -np.inf
        top = top_n(final[None, :], min(k, self.data_.n_items))
        return Recommendations(self.data_.item_ids[top], final[top], np.array([known < 0]))

    def similar_items(self, item_index: np.ndarray, k: int = 10) -> tuple[np.ndarray, np.ndarray]:
        """Items most like each given item by content, then co-occurrence when there is no text."""
        sims = self.similarity_rows(item_index)
        sims[np.arange(len(item_index)), item_index] = -np.inf
        top = top_n(sims, min(k, sims.shape[1] - 1))
        return self.data_.item_ids[top], np.take_along_axis(sims, top, axis=1)

    @property
    def similarity_measure(self) -> str:
        """What `similarity_rows` measures: "content" (cosine of item text), else
        "co-occurrence" (EASE's item-item weights), else "popularity"."""
        if "content" in self.generators_:
            return "content"
        return "co-occurrence" if "ease" in self.generators_ else "popularity"

    def similarity_rows(self, item_index: np.ndarray) -> np.ndarray:
        """[len(item_index), n_items] float32 similarity of each given item to every item
        (`similarity_measure`), the item itself included."""
        if "content" in self.generators_:
            sims = self.generators_["content"].similar(item_index)
        else:
            one_hot = sp.csr_matrix(
                (np.ones(len(item_index), np.float32), (np.arange(len(item_index)), item_index)),
                shape=(len(item_index), self.data_.n_items),
            )
            sims = self.generators_.get("ease", self.generators_["popularity"]).score(
                np.full(len(item_index), -1), one_hot
            )
        return sims.astype(np.float32, copy=True)

    # ------------------------------------------------------------ item lookup
    @property
    def model_version(self) -> str:
        return getattr(self, "manifest_", {}).get("model_version", "unsaved")

    def resolve_items(self, queries: Sequence[str], min_score: float = 60.0) -> np.ndarray:
        """Item index for each query: an exact id, else the closest title (see `titles`)."""
        index = getattr(self, "_title_index", None)
        if index is None:
            from components.models.titles import TitleIndex

            titles = self.data_.items["title"].fillna("").astype(str).tolist()
            index = self._title_index = TitleIndex(self.data_.item_ids, titles, self.stats_.log_popularity)
        return index.resolve(queries, min_score)
