"""Training benchmarks (`make bench`): quality on MovieLens 100K with the Microsoft
Recommenders protocol, and the time and peak memory of `recsys fit` as data grows.

They report; they do not gate (these machines are shared and noisy). Figures are printed as a
table; ratios are against a baseline measured in the same run.
"""
from __future__ import annotations

import subprocess
import sys
import time

import numpy as np
import pytest

from components.config import ModelConfig, SplitConfig
from components.data import load_dataset
from components.models.two_stage import TwoStageRecommender
from components.offline_eval import evaluate_model
from components.report import metrics_table
from components.split import stratified_split

pytestmark = pytest.mark.bench

OTHER_SEEDS = (1, 2, 3, 4)
PUBLISHED = {"BiVAE": (0.475, 0.412), "BPR": (0.442, None), "LightGCN": (0.420, None), "SAR": (0.382, None)}


def _fit_and_score(ds, seed: int) -> tuple[dict[str, dict[str, float]], int, float]:
    """Metrics of every stage on split `seed`, the training size and the fit's seconds."""
    parts = stratified_split(ds.interactions, 0.25, seed=seed)
    started = time.perf_counter()
    model = TwoStageRecommender(ModelConfig(), SplitConfig(method="stratified", seed=seed)).fit(
        parts.train, ds.items, progress=lambda _: None
    )
    fit_seconds = time.perf_counter() - started
    return evaluate_model(model, parts.test, k_values=(10,)), len(parts.train), fit_seconds


def test_quality_on_ml100k_recommenders_protocol(ml100k_dir):
    """Per-user stratified random 75/25 split (seed 42), top-10, training items excluded,
    binary relevance: every stage alone, then the ranker on top."""
    ds = load_dataset(str(ml100k_dir))
    results, n_train, fit_seconds = _fit_and_score(ds, 42)
    print()
    print(metrics_table(results, ("ndcg@10", "precision@10", "recall@10", "map@10", "coverage@10")))
    print("published (same protocol): " + ", ".join(f"{k} NDCG@10 {v[0]}" for k, v in PUBLISHED.items()))
    print(f"two-stage fit on {n_train:,} interactions: {fit_seconds:.1f}s")
    assert results["two_stage"]["ndcg@10"] > results["popularity"]["ndcg@10"]
    # One draw of the split moves NDCG@10 by about 0.005: the same protocol over more seeds.
    runs = [results] + [_fit_and_score(ds, seed)[0] for seed in OTHER_SEEDS]
    mean = {name: {m: float(np.mean([r[name][m] for r in runs])) for m in runs[0][name]} for name in results}
    print(f"mean over split seeds 42, {', '.join(map(str, OTHER_SEEDS))}:")
    print(metrics_table(mean, ("ndcg@10", "precision@10", "recall@10", "map@10")))


# Peak resident memory of the child itself. Not ru_maxrss: Linux carries it over from the parent
# through fork and exec, so a child of a large pytest process would report the parent's peak.
_PEAK_MB = """
def peak_mb():
    for line in open("/proc/self/status"):
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
"""

_FIT_SNIPPET = _PEAK_MB + """
import sys, time
from components.data import synthetic_dataset
from components.validate import validate_interactions
from components.models.two_stage import TwoStageRecommender
n = int(sys.argv[1])
inter, items = synthetic_dataset(max(n // 100, 100), max(int(n ** 0.5) * 4, 200), n, seed=1)
inter = validate_interactions(inter, source="synthetic")
t = time.perf_counter()
TwoStageRecommender().fit(inter, items, progress=lambda _: None)
print(len(inter), inter.user_id.nunique(), inter.item_id.nunique(), time.perf_counter() - t, peak_mb())
"""


@pytest.mark.parametrize("sizes", [(100_000, 1_000_000, 5_000_000)])
def test_fit_scaling_on_synthetic_data(sizes):
    """Time and peak memory of a full two-stage fit, each size in a fresh process."""
    rows = []
    for n in sizes:
        out = subprocess.run(
            [sys.executable, "-c", _FIT_SNIPPET, str(n)], capture_output=True, text=True, timeout=3000
        )
        assert out.returncode == 0, out.stderr[-2000:]
        interactions, users, items, seconds, peak_mb = out.stdout.split()
        rows.append((n, int(interactions), int(users), int(items), float(seconds), float(peak_mb)))
    base = rows[0]
    print()
    print(f"{'requested':>10} {'interactions':>12} {'users':>7} {'items':>6} {'fit s':>7} {'peak MB':>8} {'time/base':>9} {'rows/base':>9}")
    for n, inter, users, items, seconds, peak in rows:
        print(f"{n:>10,} {inter:>12,} {users:>7,} {items:>6,} {seconds:>7.1f} {peak:>8.0f} "
              f"{seconds / base[4]:>9.1f} {inter / base[1]:>9.1f}")
    assert all(r[4] > 0 for r in rows)


_CLI_FIT = _PEAK_MB + """
import runpy, sys, time
sys.argv = ["recsys", "-q", "fit", "--interactions", sys.argv[1], "--output", sys.argv[2]]
t = time.perf_counter()
try:
    runpy.run_module("pipelines.cli", run_name="__main__")
except SystemExit as exit:
    assert not exit.code, exit.code
print(time.perf_counter() - t, peak_mb())
"""


def test_cli_fit_on_ml100k(ml100k_dir, tmp_path):
    """`recsys fit` on MovieLens 100K: time inside the process (imports excluded) and peak RSS."""
    out = subprocess.run(
        [sys.executable, "-c", _CLI_FIT, str(ml100k_dir), str(tmp_path / "m")],
        capture_output=True, text=True, timeout=600,
    )
    assert out.returncode == 0, out.stderr[-2000:]
    seconds, peak = map(float, out.stdout.split()[-2:])
    print(f"\nrecsys fit on ML-100K: {seconds:.1f}s, peak RSS {peak:.0f} MB")
