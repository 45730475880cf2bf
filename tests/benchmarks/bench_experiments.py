"""Online experiment benchmarks (`make bench`): how often the champion-challenger decision is
wrong, how often a better challenger wins, and how many impressions A/B testing and team-draft
interleaving need to decide.

Simulated users replay real users of the default data (the temporal split's held-out future is
what they click, through a position-bias click model: `components.experiments.simulation`), served by two
real models trained on the split's past: popularity alone (the champion) and EASE (the
challenger, better offline); and a close pair, EASE against the two-stage model. Each experiment reruns the real analysis
(`components.experiments.experiment.analyze_labelled`) after every round of sessions, as the CronJob would,
until it decides. Runs are independent draws (seeded): who arrives, their sticky buckets, clicks.

Reported, not gated by time; the targets of the issue are asserted: A/A experiments decide
wrongly in at most 5% of 200 runs; a better challenger is promoted in at least 90% of 200 runs at
the configured sample size.
"""
from __future__ import annotations

import os
import time
from concurrent.futures import ProcessPoolExecutor

import numpy as np
import pytest

from components.config import ExperimentConfig, SplitConfig, config_from_dict
from components.experiments.simulation import ClickModel, UserFutures, rankings_of, run_experiment

pytestmark = pytest.mark.bench

RUNS = int(os.environ.get("RECSYS_BENCH_RUNS", "200"))  # fewer while developing
POPULATION = 5_000  # simulated users, each replaying one of the 671 real users
DEPTH = 60
# The configured experiment: a 50/50 split, CTR@10, powered for a 20% lift.
CONFIG = ExperimentConfig(challenger_percent=50.0, min_detectable_effect=0.2)
INTERLEAVING = CONFIG.model_copy(update={"method": "interleaving", "challenger_percent": 0.0,
                                         "interleave_percent": 100.0})
WORKERS = max(1, min(2, os.cpu_count() or 1))

_SHARED: dict = {}


def _init(rankings, futures) -> None:
    _SHARED.update(rankings=rankings, futures=futures)


def _one(job: tuple[str, int]) -> dict:
    scenario, seed = job
    ranks = _SHARED["rankings"]
    same = scenario.startswith("aa")
    if scenario.startswith("close"):  # EASE against the two-stage model: a small difference
        pair = {"A": ranks["ease"], "B": ranks["two_stage"]}
    else:
        pair = {"A": ranks["ease"] if same else ranks["popularity"], "B": ranks["ease"]}
    config = INTERLEAVING if scenario.endswith("interleaving") else CONFIG
    # Looks: after every 100 sessions at first, then as the data grows by a fifth (the time
    # to a decision is known to within that; the p-value is evaluated at every impression).
    # A/A runs go to the maximum sample; whether they ever decide wrongly does not depend on
    # when they look, so they look less often (as the data grows by half).
    run = run_experiment(pair, _SHARED["futures"], champion="A", challenger="B", config=config,
                         click_model=ClickModel(), seed=seed, population=POPULATION,
                         sessions_per_round=100, max_rounds=1_000,
                         look_growth=1.5 if same else 1.2)
    return {"scenario": scenario, "seed": seed, "decision": run.decision, "basis": run.basis,
            "impressions": run.impressions, "sessions": run.sessions,
            "first_significant": run.first_significant}


@pytest.fixture(scope="module")
def simulation():
    """The two models, their rankings for every real user, and the users' futures."""
    from components.data.ingest import load_dataset
    from components.data.split import split_interactions
    from components.evaluation.offline_eval import evaluate_model
    from components.models.two_stage import TwoStageRecommender

    data = load_dataset("movielens-dslabs")
    split = split_interactions(data.interactions, SplitConfig())
    futures = UserFutures.from_interactions(split.test, data.items["item_id"].astype(str).to_numpy())
    off = {"enabled": False}
    configs = {
        "popularity": {"ease": off, "seq_ease": off, "als": off, "content": off, "ranker": off},
        "ease": {"seq_ease": off, "als": off, "content": off, "ranker": off},
        "two_stage": {},
    }
    rankings, offline = {}, {}
    for name, model_config in configs.items():
        model = TwoStageRecommender(config_from_dict({"model": model_config}).model).fit(
            split.train, data.items, progress=lambda _: None)
        rankings[name] = rankings_of(lambda users, k, m=model: m.recommend(users, k).item_ids,
                                     futures, DEPTH)
        offline[name] = evaluate_model(model, split.test, k_values=(10,))["two_stage"]["ndcg@10"]
    return rankings, futures, offline


def _run_all(simulation, jobs: list[tuple[str, int]]) -> list[dict]:
    rankings, futures, _ = simulation
    with ProcessPoolExecutor(WORKERS, initializer=_init, initargs=(rankings, futures)) as pool:
        return list(pool.map(_one, jobs, chunksize=4))


def _share(results: list[dict], **match) -> float:
    return sum(all(r[k] in v for k, v in match.items()) for r in results) / len(results)


def test_ab_and_interleaving_decisions(simulation):
    _, futures, offline = simulation
    started = time.monotonic()
    # Interleaving's own runs are half as many, the close pair's a quarter: the targets
    # are the A/B ones.
    results = _run_all(simulation, [(s, seed) for s in ("aa", "ab") for seed in range(RUNS)]
                       + [(s, seed) for s in ("aa-interleaving", "interleaving")
                          for seed in range(max(RUNS // 2, 1))]
                       + [(s, seed) for s in ("close", "close-interleaving")
                          for seed in range(max(RUNS // 4, 1))])
    by = {s: [r for r in results if r["scenario"] == s]
          for s in ("aa", "ab", "aa-interleaving", "interleaving", "close", "close-interleaving")}
    wrong_aa = _share(by["aa"], basis={"effect", "guardrail"})
    wrong_aa_il = _share(by["aa-interleaving"], basis={"effect", "guardrail"})
    promoted = _share(by["ab"], decision={"promote"})
    promoted_il = _share(by["interleaving"], decision={"promote"})
    ab_n = np.array([r["impressions"] for r in by["ab"] if r["decision"] == "promote"])
    il_n = np.array([r["impressions"] for r in by["interleaving"] if r["decision"] == "promote"])
    ratio = np.median(ab_n) / np.median(il_n)
    # The evidence alone: impressions when the always-valid p-value first fell below alpha,
    # before the minimum sample size of either method's power analysis lets it decide.
    ab_e = np.array([r["first_significant"] for r in by["ab"] if r["first_significant"]])
    il_e = np.array([r["first_significant"] for r in by["interleaving"] if r["first_significant"]])
    print(f"\nOnline experiments, {RUNS} runs each, {POPULATION:,} simulated users replaying the "
          f"{len(futures.user_ids)} real users of the default data ({time.monotonic() - started:.0f} s)")
    print(f"offline NDCG@10: popularity {offline['popularity']:.3f}, EASE {offline['ease']:.3f}, "
          f"two-stage {offline['two_stage']:.3f}; ab: popularity (champion) vs EASE; close: EASE "
          "(champion) vs two-stage; aa: EASE vs itself")
    print("| experiment | promote | rollback (effect) | rollback (guardrail) | rollback (no difference) "
          "| undecided | impressions to decision (median, 10%-90%) |")
    print("| --- | --- | --- | --- | --- | --- | --- |")
    for name, rows in by.items():
        n = np.array([r["impressions"] for r in rows if r["decision"] != "continue"])
        spread = (f"{np.median(n):,.0f} ({np.percentile(n, 10):,.0f}-{np.percentile(n, 90):,.0f})"
                  if len(n) else "-")
        print(f"| {name} | {_share(rows, decision={'promote'}):.1%} "
              f"| {_share(rows, decision={'rollback'}, basis={'effect'}):.1%} "
              f"| {_share(rows, basis={'guardrail'}):.1%} | {_share(rows, basis={'futility'}):.1%} "
              f"| {_share(rows, decision={'continue'}):.1%} | {spread} |")
    print(f"A/A wrong decisions: A/B {wrong_aa:.1%}, interleaving {wrong_aa_il:.1%}; better "
          f"challenger promoted: A/B {promoted:.1%}, interleaving {promoted_il:.1%}; impressions "
          f"to promote, median: A/B {np.median(ab_n):,.0f}, interleaving {np.median(il_n):,.0f} "
          f"({ratio:.1f}x fewer); to significance (p <= alpha, before the minimum sample): "
          f"A/B {np.median(ab_e):,.0f}, interleaving {np.median(il_e):,.0f} "
          f"({np.median(ab_e) / np.median(il_e):.1f}x fewer)")
    close = {m: [r["first_significant"] for r in by[m] if r["first_significant"]]
             for m in ("close", "close-interleaving")}
    print("close pair, significant (p <= alpha) before the maximum sample: "
          + ", ".join(f"{m} {len(v) / len(by[m]):.0%} (median {np.median(v) if v else 0:,.0f} "
                      "impressions)" for m, v in close.items()))
    assert offline["ease"] > offline["popularity"]
    assert wrong_aa <= 0.05 and wrong_aa_il <= 0.05
    assert promoted >= 0.90
