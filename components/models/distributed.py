"""The fit's heavy steps on Dask: the ranker's candidates and features by user partition, and
LightGBM's own distributed ranker (`lightgbm.dask.DaskLGBMRanker`) on the partitions.

Why Dask: LightGBM's distributed interface is `lightgbm.dask`, and a ranker's query groups (one
per user) must not straddle machines, which partitions of whole users give by construction.
The generators are fitted once on the driver (their fits are a few matrix factorisations and
solves) and broadcast; each worker builds the examples of its users where they will be trained
on, so the examples never travel. On a cluster the Dask cluster comes from the dask-kubernetes
operator (`components.release.dask_cluster`); locally `recsys fit --workers N` starts an embedded
`LocalCluster`. Without either, the fit is the single-process one.

The ranker is chosen as in the single-process fit: trained on four fifths of the users with
the rest as validation, the tree count that scored best on them kept, and (with
`ranker.refit_on_all_users`) that many trees trained again on every user. LightGBM's Dask
estimators do not take early-stopping callbacks, so the validation curve is read after the
full run instead.
"""
from __future__ import annotations

import contextlib
import logging
import operator
from collections.abc import Callable, Iterator

import lightgbm as lgb
import numpy as np
import pandas as pd

from components.models.features import feature_names
from components.models.ranker_rounds import chosen_trees, truncated, validation_ndcg

log = logging.getLogger(__name__)

# Partitions per worker: enough to balance uneven users, few enough to keep tasks large.
_PARTITIONS_PER_WORKER = 2


@contextlib.contextmanager
def dask_client(workers: int = 0, address: str = "") -> Iterator[object | None]:
    """A Dask client: the scheduler at `address` (a cluster's), else an embedded LocalCluster
    of `workers` single-threaded processes when workers > 1, else None (single-process fit)."""
    if not address and workers <= 1:
        yield None
        return
    from distributed import Client, LocalCluster

    if address:
        with Client(address) as client:
            yield client
        return
    with LocalCluster(n_workers=workers, threads_per_worker=1, processes=True,
                      dashboard_address=None) as cluster, Client(cluster) as client:
        yield client


def _partition_examples(model, labels, users: np.ndarray, seed: int) -> dict:
    """A worker's share: the examples of its users (whole users, so whole query groups)."""
    x, y, groups, who = model.examples_for_users(users, labels, np.random.default_rng(seed))
    return {"x": x, "y": y, "group": groups, "users": who}


def _take(part: dict, valid_users: np.ndarray, valid: bool) -> dict:
    """The rows of a partition's training (or validation) users."""
    in_valid = np.isin(part["users"], valid_users)
    chosen = in_valid if valid else ~in_valid
    rows = np.repeat(chosen, part["group"])
    return {"x": part["x"][rows], "y": part["y"][rows], "group": part["group"][chosen]}


def fit_ranker_on_dask(model, client, folds: list, items: pd.DataFrame | None,
                       progress: Callable[[str], None]) -> lgb.Booster | None:
    """The ranker of `TwoStageRecommender.fit`, with examples and training on `client`."""
    cfg = model.config
    rng = np.random.default_rng(cfg.seed)
    workers = max(len(client.scheduler_info()["workers"]), 1)
    parts, part_users = [], []
    for i, part in enumerate(folds):
        labels, users = model._fold_labels(part.train, part.test, items, rng, progress, f"{i + 1}/{len(folds)}")
        shared_model, shared_labels = client.scatter([model, labels], broadcast=True)
        for j, chunk in enumerate(np.array_split(users, workers * _PARTITIONS_PER_WORKER)):
            if len(chunk):
                parts.append(client.submit(_partition_examples, shared_model, shared_labels, chunk,
                                           cfg.seed * 1_000 + i * 100 + j, pure=False))
        progress(f"  examples of {len(users):,} users in {len(parts):,} partitions on {workers} Dask workers")
    part_users = client.gather([client.submit(operator.itemgetter("users"), p) for p in parts])
    all_users = np.unique(np.concatenate(part_users)) if part_users else np.zeros(0, str)
    if len(all_users) < 2:
        progress("ranker: too few users with held-out candidates; ranking by EASE alone")
        return None
    valid_users = rng.choice(all_users, max(1, len(all_users) // 5), replace=False)
    names = feature_names(list(model.generators_))
    r = cfg.ranker
    train = [client.submit(_take, p, valid_users, False) for p in parts]
    valid = [client.submit(_take, p, valid_users, True) for p in parts]
    booster, curve = _train(client, train, valid, model.lightgbm_params(), r.n_estimators, names, r.eval_at)
    trees = chosen_trees(curve, r.early_stopping_rounds) if len(curve) else r.n_estimators
    progress(f"ranker (Dask): {trees} trees")  # its validation NDCG: keep_ranker's line
    if not model.keep_ranker(_validation_ndcg(client, valid, booster, trees, names, model), progress):
        return None
    if not r.refit_on_all_users:
        return truncated(booster, trees)
    progress(f"ranker (Dask): {trees} trees again on all {len(all_users):,} users")
    booster, _ = _train(client, parts, [], model.lightgbm_params(), trees, names, r.eval_at)
    return booster


def _part_ndcg(part: dict, booster: lgb.Booster, trees: int, names: list[str],
               generators: list[str], k: int) -> dict[str, tuple[float, int]]:
    """`validation_ndcg` of one validation partition (empty for a partition without users)."""
    if not len(part["group"]):
        return {}
    predicted = booster.predict(part["x"], num_iteration=trees)
    return validation_ndcg(predicted, part["x"], part["y"], part["group"], names, generators, k)


def _validation_ndcg(client, valid: list, booster: lgb.Booster, trees: int, names: list[str],
                     model) -> dict[str, float]:
    """`validation_ndcg` over the validation users of every partition, on the workers: each
    partition's mean weighted by the groups it averages."""
    k, generators = model.config.ranker.eval_at, list(model.generators_)
    shared = client.scatter(booster, broadcast=True)
    parts = [p for p in client.gather([client.submit(_part_ndcg, p, shared, trees, names, generators, k)
                                       for p in valid]) if p]
    return {name: sum(p[name][0] * p[name][1] for p in parts) / max(sum(p[name][1] for p in parts), 1)
            for name in (parts[0] if parts else {})}


def _dask_arrays(client, parts: list) -> tuple:
    """X, y and group as Dask arrays whose partitions are the given (whole-user) parts."""
    import dask
    import dask.array as da

    sizes = client.gather([client.submit(lambda p: (len(p["y"]), len(p["group"])), p) for p in parts])
    kept = [(p, n, g) for p, (n, g) in zip(parts, sizes) if g > 0]
    n_features = client.submit(lambda p: p["x"].shape[1], parts[0]).result()

    def column(key, shape, dtype):
        return [da.from_delayed(dask.delayed(operator.itemgetter(key))(p), shape(n, g), dtype)
                for p, n, g in kept]

    x = da.concatenate(column("x", lambda n, g: (n, n_features), np.float32))
    y = da.concatenate(column("y", lambda n, g: (n,), np.float64))
    group = da.concatenate(column("group", lambda n, g: (g,), np.int64))
    return x, y, group


def _train(client, train: list, valid: list, params: dict, trees: int, names: list[str], eval_at: int):
    """DaskLGBMRanker on the parts; returns the booster and the validation NDCG curve."""
    from lightgbm.dask import DaskLGBMRanker

    params = {k: v for k, v in params.items() if k not in ("num_threads", "verbose", "eval_at")}
    x, y, group = _dask_arrays(client, train)
    fit_args = {"group": group, "feature_name": names}
    if valid:
        vx, vy, vgroup = _dask_arrays(client, valid)
        fit_args.update(eval_set=[(vx, vy)], eval_group=[vgroup], eval_at=[eval_at])
    ranker = DaskLGBMRanker(client=client, n_estimators=trees, num_threads=1, verbose=-1,
                            tree_learner="data", **params)
    ranker.fit(x, y, **fit_args)
    curve = []
    if valid:
        results = ranker.evals_result_
        curve = next(iter(next(iter(results.values())).values()), []) if results else []
    return ranker.booster_, np.asarray(curve, dtype=np.float64)
