"""`recsys tune`'s budget: 20 trials of the default space on the default data (movielens-dslabs)
in at most 10 minutes on the 2-core machine, through the CLI; prints the per-trial lines, the
best against the untuned validation NDCG@10, and the tuned against the untuned model on the
evaluation split (`--compare`).

Then MovieLens 100K tuned against untuned under the Recommenders protocol (as
bench_training.py measures it). RECSYS_TUNE_TRIALS (default 20), RECSYS_TUNE_SPLITS (split
seeds, default 5) and RECSYS_TUNE_SEEDS (tuning seeds on split seed 42, default 5) make a
shorter run."""
from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import yaml

from components.data.ingest import load_dataset
from components.evaluation.report import metrics_table

pytestmark = pytest.mark.bench
REPO = Path(__file__).resolve().parents[2]
TRIALS = 20
BUDGET_SECONDS = 600
STRATIFIED_CONFIG = "split: {method: stratified}\n"  # bench_training's (the untuned config)


def test_twenty_trials_on_the_default_data_within_ten_minutes(tmp_path):
    started = time.monotonic()
    result = subprocess.run(
        [sys.executable, "-m", "pipelines.cli.main", "tune", "--trials", str(TRIALS), "--home",
         str(tmp_path / "home"), "--output", str(tmp_path / "best.yaml"), "--compare"],
        check=False, capture_output=True, text=True, timeout=3 * BUDGET_SECONDS, cwd=tmp_path,
        env={**os.environ, "PYTHONPATH": str(REPO), "MLFLOW_TRACKING_URI": ""},
    )
    assert result.returncode == 0, result.stderr[-3000:]
    print(result.stdout)
    trial_lines = [line for line in result.stdout.splitlines() if line.startswith("trial ")]
    assert len(trial_lines) == TRIALS
    summary = result.stdout.split(" trials in ")[1]
    tuning = float(summary.split("s;")[0])
    cpu = float(summary.split("CPU ")[1].split("s")[0])
    print(f"{TRIALS} trials in {tuning:.0f}s, CPU {cpu:.0f}s (with the comparison: "
          f"{time.monotonic() - started:.0f}s); load average after: {Path('/proc/loadavg').read_text().strip()}")
    assert tuning <= BUDGET_SECONDS
    assert yaml.safe_load((tmp_path / "best.yaml").read_text())["model"]


# ------------------------------------------------------------- MovieLens 100K, tuned vs untuned
# How much of it runs: trials per study, split seeds (of bench_training.SEEDS), tuning seeds.
ML_TRIALS = int(os.environ.get("RECSYS_TUNE_TRIALS", "20"))
ML_SPLITS = int(os.environ.get("RECSYS_TUNE_SPLITS", "5"))
ML_TUNING_SEEDS = int(os.environ.get("RECSYS_TUNE_SEEDS", "5"))


def _tune_on(train: pd.DataFrame, items: pd.DataFrame, work: Path, seed: int) -> tuple[str, str]:
    """`recsys tune --training-only` on the package split's training part alone (the trials'
    validation slice is carved from all of it, no further evaluation split); returns the best config's YAML and the study's summary line."""
    work.mkdir(parents=True, exist_ok=True)
    train.to_csv(work / "tune-train.csv", index=False)
    items.to_csv(work / "items.csv", index=False)
    (work / "untuned.yaml").write_text(STRATIFIED_CONFIG)
    result = subprocess.run(
        [sys.executable, "-m", "pipelines.cli.main", "tune", "--data", str(work / "tune-train.csv"),
         "--items", str(work / "items.csv"), "--config", str(work / "untuned.yaml"),
         "--trials", str(ML_TRIALS), "--seed", str(seed), "--training-only", "--home", str(work / "home"),
         "--output", str(work / "best.yaml")],
        check=False, capture_output=True, text=True, timeout=6 * 3600, cwd=work,
        env={**os.environ, "PYTHONPATH": str(REPO), "MLFLOW_TRACKING_URI": ""},
    )
    assert result.returncode == 0, result.stderr[-3000:]
    (work / "tune.out").write_text(result.stdout)
    summary = next(line for line in result.stdout.splitlines() if " trials in " in line)
    return (work / "best.yaml").read_text(), summary


def test_ml100k_tuned_against_untuned(ml100k_dir, tmp_path):
    """MovieLens 100K under the Recommenders protocol (bench_training's split, fit, recommend
    and the package's metrics). For each split seed: `recsys tune` on that seed's training part
    only, then `recsys fit` of the untuned (stratified) and the tuned config on the training
    part, both scored on the test part no trial saw. Then the tuned figure's spread over tuning
    seeds on split seed 42."""
    from bench_training import METRICS, SEEDS, _fit_and_score, _package_split

    ds = load_dataset(str(ml100k_dir))
    started = time.perf_counter()
    rows: dict[str, dict[str, float]] = {}
    per_seed: dict[int, dict[str, dict[str, float]]] = {}
    for split_seed in SEEDS[:ML_SPLITS]:
        work = tmp_path / f"split{split_seed}"
        train, _ = _package_split(ds.interactions, split_seed)
        best, summary = _tune_on(train, ds.items, work, 42)
        print(f"split seed {split_seed}, tuning seed 42: {summary}", flush=True)
        print(f"  best: {_tuned_values(best)}", flush=True)
        untuned = _fit_and_score(ds, work / "untuned", split_seed, baselines=False)["two_stage"]
        tuned = _fit_and_score(ds, work / "tuned", split_seed, config=best, baselines=False)["two_stage"]
        per_seed[split_seed] = {"untuned": untuned, "tuned": tuned}
        print(f"  test: untuned {untuned['ndcg@10']:.4f}/{untuned['precision@10']:.4f}, "
              f"tuned {tuned['ndcg@10']:.4f}/{tuned['precision@10']:.4f} (ndcg@10/precision@10)", flush=True)
    first = per_seed[SEEDS[0]]
    rows["untuned, split seed 42"] = first["untuned"]
    rows["tuned, split seed 42"] = first["tuned"]
    for label in ("untuned", "tuned"):
        rows[f"{label}, mean of {len(per_seed)} split seeds"] = {
            m: float(np.mean([r[label][m] for r in per_seed.values()])) for m in METRICS}

    spread = [first["tuned"]]
    for tuning_seed in SEEDS[1:ML_TUNING_SEEDS]:
        work = tmp_path / f"split42-tuning{tuning_seed}"
        train, _ = _package_split(ds.interactions, SEEDS[0])
        best, summary = _tune_on(train, ds.items, work, tuning_seed)
        print(f"split seed 42, tuning seed {tuning_seed}: {summary}", flush=True)
        print(f"  best: {_tuned_values(best)}", flush=True)
        tuned = _fit_and_score(ds, work / "tuned", SEEDS[0], config=best, baselines=False)["two_stage"]
        print(f"  test: tuned {tuned['ndcg@10']:.4f}/{tuned['precision@10']:.4f}", flush=True)
        spread.append(tuned)
    if len(spread) > 1:
        for stat, fn in (("mean", np.mean), ("min", np.min), ("max", np.max), ("std", np.std)):
            rows[f"tuned, split seed 42, {stat} of {len(spread)} tuning seeds"] = {
                m: float(fn([r[m] for r in spread])) for m in METRICS}
    print()
    print(f"MovieLens 100K, Recommenders split, {ML_TRIALS} trials per study "
          f"(load average now {Path('/proc/loadavg').read_text().strip()}):")
    print(metrics_table(rows, METRICS))
    print(f"in {time.perf_counter() - started:.0f}s")
    assert rows["tuned, split seed 42"]["ndcg@10"] > 0


def _tuned_values(best_yaml: str) -> str:
    """The best config's values of the default space, one line."""
    from components.tuning.space import get_dotted, load_space

    raw = yaml.safe_load(best_yaml)
    out = []
    for p in load_space():
        try:
            value = get_dotted(raw, p.name)
        except KeyError:
            continue
        out.append(f"{p.name.removeprefix('model.')}={value:.4g}" if isinstance(value, float)
                   else f"{p.name.removeprefix('model.')}={value}")
    return ", ".join(out)
