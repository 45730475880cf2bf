"""One measurement of bench_scale.py, in a fresh process so its peak memory is its own.

    python scale_child.py fit N ARTIFACT_DIR [LARGE_CATALOGUE_ITEMS]
                                               # generate, fit, save, score against the truth
    python scale_child.py serve ARTIFACT_DIR   # load as the KServe predictor does

Each prints one JSON line. Peak memory is the process's own high-water mark (VmHWM), not
ru_maxrss, which Linux carries over from the parent through fork and exec.
"""
from __future__ import annotations

import json
import sys
import time
from pathlib import Path

import numpy as np
import scipy.sparse as sp

EVAL_USERS = 2_000


def _status(field: str) -> float:
    with open("/proc/self/status") as status:
        for line in status:
            if line.startswith(field + ":"):
                return int(line.split()[1]) / 1024
    return float("nan")


def fit(n: int, out: Path, large_catalogue_items: int | None = None) -> dict:
    """`large_catalogue_items` overrides the default config's threshold (to measure both paths
    on one data set)."""
    from components.config import config_from_dict
    from components.data.synthetic import movielens_like, truth_quality
    from components.data.validate import validate_interactions
    from components.models.artifact import save_model
    from components.models.two_stage import TwoStageRecommender

    started = time.perf_counter()
    inter, items, truth = movielens_like(n, seed=1)
    inter = validate_interactions(inter, source="synthetic")
    generated = time.perf_counter() - started
    steps = []

    def progress(message: str) -> None:
        steps.append(f"{time.perf_counter() - started:7.0f}s wall {time.process_time():7.0f}s cpu {message}")
        print(steps[-1], file=sys.stderr, flush=True)

    fit_start, fit_cpu = time.perf_counter(), time.process_time()
    scale = {} if large_catalogue_items is None else {"large_catalogue_items": large_catalogue_items}
    model = TwoStageRecommender(config_from_dict({"model": {"scale": scale}}).model).fit(
        inter, items, progress=progress)
    fit_seconds, fit_cpu = time.perf_counter() - fit_start, time.process_time() - fit_cpu
    fit_peak = _status("VmHWM")
    save_model(model, out, data_fingerprint=f"movielens-like-{n}")
    size = sum(p.stat().st_size for p in out.rglob("*") if p.is_file())
    # Quality against the truth for a sample of users, as served (all their data in training).
    data = model.data_
    rng = np.random.default_rng(0)
    rows = np.sort(rng.choice(data.n_users, min(EVAL_USERS, data.n_users), replace=False))
    truth_users = np.array([int(u[1:]) for u in data.user_ids[rows]])
    item_rows = np.array([int(i[1:]) for i in data.item_ids])
    history = data.matrix[rows]
    seen = sp.csr_matrix((history.data, item_rows[history.indices], history.indptr),
                         shape=(len(rows), truth.item_topics.shape[0]))
    quality = {}
    for name in [None, *model.generators_]:
        top, _ = model.recommend_indices(rows, history, 10, generator=name)
        top = np.where(top >= 0, item_rows[np.maximum(top, 0)], -1)
        quality[name or "two_stage"] = truth_quality(top, truth_users, seen, truth)["truth_ndcg@10"]
    return {"interactions": len(inter), "users": int(data.n_users), "items": int(data.n_items),
            "large": bool(model.large_), "generate_s": generated, "fit_s": fit_seconds, "fit_cpu_s": fit_cpu,
            "fit_peak_mb": fit_peak, "artifact_mb": size / 2**20, "truth_ndcg@10": quality,
            "steps": steps}


def serve(directory: Path) -> dict:
    from serving.predictor import RecommenderModel

    started, cpu = time.perf_counter(), time.process_time()
    model = RecommenderModel("recsys", directory)
    assert model.load(), model.load_error
    load_seconds, load_cpu = time.perf_counter() - started, time.process_time() - cpu
    rss_ready = _status("VmRSS")
    thread = getattr(model, "_cache_thread", None)
    if thread is not None:
        thread.join()
    return {"load_s": load_seconds, "load_cpu_s": load_cpu, "rss_ready_mb": rss_ready,
            "cache_s": time.perf_counter() - started, "cache_cpu_s": time.process_time() - cpu,
            "rss_cached_mb": _status("VmRSS"),
            "peak_mb": _status("VmHWM")}


if __name__ == "__main__":
    command = sys.argv[1]
    if command == "fit":
        threshold = int(sys.argv[4]) if len(sys.argv) > 4 else None
        result = fit(int(sys.argv[2]), Path(sys.argv[3]), threshold)
    else:
        result = serve(Path(sys.argv[2]))
    print(json.dumps(result))
