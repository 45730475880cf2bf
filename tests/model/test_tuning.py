"""`recsys tune` (components/tuning/): the study on tiny synthetic data, 2-3 trials each.

What a trial sees is carved from the training split only; a rerun with the same seed
reproduces the study; every trial is an MLflow child run under one parent that holds the best
config and the importances; the best config is a YAML `recsys fit --config` takes unchanged.
"""
from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest
import yaml
from tuning_data import FAST, tiny_dataset

from components.config import Config, config_from_dict
from components.data.split import split_interactions
from components.errors import ConfigError
from components.evaluation.offline_eval import evaluate_model
from components.models.two_stage import RANKER_ROUNDS_EVERY, FitCache, TwoStageRecommender
from components.tuning.space import DEFAULT_SPACE, load_space
from components.tuning.tune import compare, ndcg_on, step_pruner, tune, tuning_splits

REPO = Path(__file__).resolve().parents[2]
# A small space: three values, so two or three trials already differ.
SMALL_SPACE = {
    "model.ease.l2": {"type": "float", "low": 50.0, "high": 2000.0, "log": True},
    "model.als.factors": {"type": "int", "low": 4, "high": 32},
    "model.ranker.n_estimators": {"type": "int", "low": 20, "high": 80},
}


@pytest.fixture(scope="module")
def tiny():
    return tiny_dataset()


@pytest.fixture
def space_file(tmp_path) -> Path:
    path = tmp_path / "space.yaml"
    path.write_text(yaml.safe_dump(SMALL_SPACE))
    return path


def test_the_evaluation_split_never_reaches_a_trial(tiny, space_file):
    """Items that occur only in the evaluation split's held-out rows are in no trial's catalogue
    and in none of the rows it is scored on; a trial trains and is scored on the training split
    alone, row for row."""
    config = config_from_dict(FAST)
    interactions = tiny.interactions.copy()
    rows = split_interactions(interactions.assign(row=range(len(interactions))), config.split).test["row"]
    assert len(rows) > 0
    # Re-label every held-out row with an item of its own: the temporal split depends on the
    # users and times only, so the same rows are held out, and their items exist nowhere else.
    held = interactions.index[rows.to_numpy()]
    interactions.loc[held, "item_id"] = [f"only-in-evaluation-{i}" for i in range(len(held))]
    only_eval = set(interactions.loc[held, "item_id"])
    again = split_interactions(interactions, config.split)
    assert set(again.test["item_id"]) == only_eval

    seen: list[tuple[set, pd.DataFrame]] = []
    result = tune(interactions, tiny.items, FAST, load_space(space_file), trials=2, seed=1,
                  progress=lambda _: None,
                  on_trial=lambda n, model, rows: seen.append((set(model.data_.item_ids), rows)))
    assert len(seen) == 2 and len(result.trials) == 2
    for catalogue, rows in seen:
        assert not catalogue & only_eval
        assert not set(rows["item_id"]) & only_eval
    train, validation = tuning_splits(interactions, config)
    assert len(train) + len(validation) == len(again.train)
    key = ["user_id", "item_id", "timestamp"]
    assert len(validation.merge(again.train[key], on=key)) == len(validation)


def test_training_only_carves_the_validation_slice_from_all_the_data(tiny, space_file):
    """With --training-only (the data is a training set, its test set kept elsewhere) no
    evaluation split is set aside: a trial trains on all the data minus the validation slice,
    the same slice the config's validation split carves from that data."""
    config = config_from_dict(FAST)
    train, validation = tuning_splits(tiny.interactions, config, training_only=True)
    assert len(train) + len(validation) == len(tiny.interactions)
    expected = split_interactions(tiny.interactions, config.split, validation=True)
    assert len(validation) == len(expected.test) > 0
    default_train, _ = tuning_splits(tiny.interactions, config)
    assert len(default_train) < len(train)
    sizes: list[int] = []
    tune(tiny.interactions, tiny.items, FAST, load_space(space_file), trials=1, seed=1,
         training_only=True, progress=lambda _: None,
         on_trial=lambda n, model, rows: sizes.append(len(rows)))
    assert sizes == [len(validation)]


def test_without_pruning_every_trial_runs_to_the_end(tiny, space_file):
    """--no-pruning: past the pruner's startup trials, none is pruned (with the pruner, a
    study this long prunes some: the same seed, the same trial values)."""
    space = load_space(space_file)
    unpruned = tune(tiny.interactions, tiny.items, FAST, space, trials=8, seed=2, prune=False,
                    progress=lambda _: None)
    assert [t["state"] for t in unpruned.trials] == ["complete"] * 8
    pruned = tune(tiny.interactions, tiny.items, FAST, space, trials=8, seed=2, progress=lambda _: None)
    assert "pruned" in [t["state"] for t in pruned.trials]


def test_recsys_tune_refuses_training_only_with_compare(tmp_path):
    result = _recsys("tune", "--data", "synthetic", "--training-only", "--compare", "--trials", 1,
                     "--home", tmp_path / "home", cwd=tmp_path)
    assert result.returncode == 1
    assert "--training-only" in result.stderr and "Traceback" not in result.stderr


def test_a_rerun_with_the_same_seed_reproduces_the_study(tiny, space_file):
    space = load_space(space_file)
    runs = [tune(tiny.interactions, tiny.items, FAST, space, trials=3, seed=5, progress=lambda _: None)
            for _ in range(2)]
    first, second = ([(t["params"], t["value"]) for t in r.trials] for r in runs)
    assert first == second
    # Trial 0 is the given config itself: the untuned baseline, clipped into the space.
    assert first[0][0] == {"model.ease.l2": 400.0, "model.als.factors": 20, "model.ranker.n_estimators": 80}
    assert runs[0].baseline_value == first[0][1]
    assert runs[0].best_value == max(v for _, v in first)


def _trial_raw(params: dict) -> dict:
    raw = yaml.safe_load(yaml.safe_dump(FAST))
    for name, value in params.items():
        node = raw
        *parents, last = name.split(".")
        for part in parents:
            node = node.setdefault(part, {})
        node[last] = value
    return raw


def test_a_cached_trial_scores_what_an_uncached_fit_scores(tiny, space_file):
    """The study's trials share a FitCache; each trial's value is the NDCG@10 that a fit of
    its config without any cache gets on the same validation rows."""
    result = tune(tiny.interactions, tiny.items, FAST, load_space(space_file), trials=3, seed=2,
                  progress=lambda _: None)
    train, validation = tuning_splits(tiny.interactions, config_from_dict(FAST))
    assert [t["state"] for t in result.trials] == ["complete"] * 3
    for trial in result.trials:
        config = config_from_dict(_trial_raw(trial["params"]))
        model = TwoStageRecommender(config.model, config.split).fit(train, tiny.items, progress=lambda _: None)
        assert ndcg_on(model, validation) == trial["value"]
        assert trial["cpu_seconds"] > 0


def test_the_fit_cache_reuses_only_generators_whose_values_did_not_change(tiny):
    cache = FitCache()
    first = config_from_dict(FAST)
    one = TwoStageRecommender(first.model, first.split).fit(
        tiny.interactions, tiny.items, progress=lambda _: None, cache=cache)
    # The ranker's values and EASE's λ change: EASE is refitted, every other generator and the
    # prepared data are the first fit's, and the answers are an uncached fit's.
    raw = _trial_raw({"model.ranker.n_estimators": 30, "model.ease.l2": 90.0})
    second = config_from_dict(raw)
    two = TwoStageRecommender(second.model, second.split).fit(
        tiny.interactions, tiny.items, progress=lambda _: None, cache=cache)
    assert two.data_ is one.data_
    assert {n for n in two.generators_ if two.generators_[n] is one.generators_[n]} == {
        "popularity", "seq_ease", "als"}
    fresh = TwoStageRecommender(second.model, second.split).fit(
        tiny.interactions, tiny.items, progress=lambda _: None)
    users = list(tiny.interactions["user_id"].unique()[:40])
    assert (two.recommend(users, 10).item_ids == fresh.recommend(users, 10).item_ids).all()
    assert two._cache is None  # nothing of the cache stays on a fitted model
    with pytest.raises(ValueError, match="one set of training interactions"):
        TwoStageRecommender(second.model, second.split).fit(
            tiny.interactions.copy(), tiny.items, progress=lambda _: None, cache=cache)


def test_the_ranker_reports_its_rounds_and_a_pruner_stops_it(tiny):
    raw = _trial_raw({"model.ranker.n_estimators": 2 * RANKER_ROUNDS_EVERY + 5})
    config = config_from_dict(raw)
    heard: list[tuple[int, float]] = []
    TwoStageRecommender(config.model, config.split).fit(
        tiny.interactions, tiny.items, progress=lambda _: None,
        ranker_rounds=lambda done, ndcg: heard.append((done, ndcg)))
    assert [done for done, _ in heard] == [RANKER_ROUNDS_EVERY, 2 * RANKER_ROUNDS_EVERY]
    assert all(0.0 < ndcg <= 1.0 for _, ndcg in heard)

    class Stop(Exception):
        pass

    def stop(done, ndcg):
        raise Stop(done)

    with pytest.raises(Stop):
        TwoStageRecommender(config.model, config.split).fit(
            tiny.interactions, tiny.items, progress=lambda _: None, ranker_rounds=stop)


def test_the_pruner_compares_a_step_with_the_same_step_of_completed_trials():
    """Step 0 (the generators' NDCG on the validation slice) and the ranker's rounds (its own
    validation NDCG, on another scale) are compared each with its own step only: step 0
    against the bottom quarter, the ranker's rounds against the median after the first."""
    import optuna

    study = optuna.create_study(direction="maximize", pruner=step_pruner(startup_trials=3))
    distributions: dict = {}
    for generators, at_25, at_50 in ((0.10, 0.40, 0.50), (0.12, 0.50, 0.60), (0.14, 0.60, 0.70)):
        study.add_trial(optuna.trial.create_trial(
            value=at_50, params={}, distributions=distributions,
            intermediate_values={0: generators, 25: at_25, 50: at_50}))
    trial = study.ask()
    trial.report(0.105, 0)
    assert trial.should_prune()  # under the bottom quarter of the generators (0.11)
    trial = study.ask()
    trial.report(0.111, 0)
    assert not trial.should_prune()  # under their median (0.12), above their bottom quarter
    trial.report(0.30, 25)
    assert not trial.should_prune()  # the ranker's first report: warm-up
    trial.report(0.55, 50)
    assert trial.should_prune()  # its best step (0.55) is not what counts: 0.55 < 0.60


def test_the_comparison_scores_every_model_on_the_same_evaluation_users(tiny):
    tuned = {"model": {**FAST["model"], "ease": {"l2": 60.0}, "als": {"factors": 6}}}
    results = compare(tiny.interactions, tiny.items, FAST, tuned)
    names = {"two_stage", "popularity", "ease", "seq_ease", "als"}
    assert set(results) == {f"{n} ({label})" for n in names for label in ("untuned", "tuned")}
    # Popularity has nothing to tune: the same figures for both, so the same users and items.
    assert results["popularity (untuned)"] == results["popularity (tuned)"]
    assert results["ease (untuned)"]["ndcg@10"] != results["ease (tuned)"]["ndcg@10"]
    untuned = config_from_dict(FAST)
    split = split_interactions(tiny.interactions, untuned.split)
    model = TwoStageRecommender(untuned.model, untuned.split).fit(split.train, tiny.items,
                                                                 progress=lambda _: None)
    assert results["two_stage (untuned)"] == evaluate_model(model, split.test)["two_stage"]


def test_the_default_space_names_values_of_the_config():
    names = [p.name for p in load_space(DEFAULT_SPACE)]
    assert "model.ease.l2" in names and "model.ranker.learning_rate" in names
    dumped = Config().model_dump(mode="json")
    for name in names:
        node = dumped
        for part in name.split("."):
            node = node[part]


@pytest.mark.parametrize("spec, message", [
    ({"model.ease.l3": {"type": "float", "low": 1.0, "high": 2.0}}, "l3"),
    ({"model.ease.l2": {"type": "float", "low": 5.0, "high": 1.0}}, "must be below"),
    ({"model.ease.l2": {"type": "float", "low": -1.0, "high": 1.0}}, "model.ease.l2"),
    ({"model.als.factors": {"type": "int", "low": 0.5, "high": 8}}, "whole"),
    ({"model.ease.l2": {"type": "normal", "low": 1.0, "high": 2.0}}, "type must be"),
    ({}, "non-empty"),
])
def test_a_bad_space_is_one_config_error(tmp_path, spec, message):
    path = tmp_path / "space.yaml"
    path.write_text(yaml.safe_dump(spec))
    with pytest.raises(ConfigError, match=message):
        load_space(path)


def _recsys(*args, cwd):
    return subprocess.run(
        [sys.executable, "-m", "pipelines.cli.main", *map(str, args)], check=False,
        capture_output=True, text=True, cwd=cwd, timeout=600,
        env={**os.environ, "PYTHONPATH": str(REPO), "MLFLOW_TRACKING_URI": ""},
    )


def test_recsys_tune_logs_every_trial_and_fit_takes_the_best_config(tmp_path, tiny, space_file):
    inter, items = tmp_path / "interactions.csv", tmp_path / "items.csv"
    tiny.interactions.to_csv(inter, index=False)
    tiny.items.to_csv(items, index=False)
    start = tmp_path / "start.yaml"
    start.write_text(yaml.safe_dump({**FAST, "registry": {"model_name": "tuned"}}))
    result = _recsys("tune", "--data", inter, "--items", items, "--config", start, "--space",
                     space_file, "--trials", 2, "--seed", 3, "--home", tmp_path / "home",
                     "--output", tmp_path / "best.yaml", "--compare", cwd=tmp_path)
    assert result.returncode == 0, result.stderr[-3000:]
    # The comparison: the evaluate step's table, a row per model, untuned and tuned.
    table = result.stdout[result.stdout.index("\nmodel "):].strip().splitlines()
    rows = {line.split("  ")[0].strip() for line in table[2:]}
    assert {"two_stage (untuned)", "two_stage (tuned)", "ease (tuned)", "als (untuned)",
            "popularity (tuned)"} <= rows
    lines = [line for line in result.stdout.splitlines() if line.startswith("trial ")]
    assert [line.split(":")[0] for line in lines] == ["trial   0", "trial   1"]
    assert all("ndcg@10 0." in line and "best 0." in line and line.endswith("s") for line in lines)

    best = yaml.safe_load((tmp_path / "best.yaml").read_text())
    assert best["registry"] == {"model_name": "tuned"}  # values outside the space are kept
    assert best["model"]["ranker"]["folds"] == 2
    assert set(best["model"]["als"]) == {"factors"}

    from mlflow import MlflowClient

    client = MlflowClient(tracking_uri=f"sqlite:///{tmp_path / 'home' / 'mlflow.db'}")
    experiment = client.get_experiment_by_name("recsys-tune")
    runs = client.search_runs([experiment.experiment_id])
    parent = [r for r in runs if r.data.tags.get("recsys.kind") == "tune"]
    assert len(parent) == 1
    children = [r for r in runs if r.data.tags.get("mlflow.parentRunId") == parent[0].info.run_id]
    assert len(children) == 2
    for child in children:
        assert set(child.data.params) == set(SMALL_SPACE)
        assert {"validation_ndcg_at_10", "seconds"} <= set(child.data.metrics)
    best_value = parent[0].data.metrics["best_validation_ndcg_at_10"]
    assert best_value == max(c.data.metrics["validation_ndcg_at_10"] for c in children)
    logged = client.download_artifacts(parent[0].info.run_id, "best_config.yaml", str(tmp_path))
    assert yaml.safe_load(Path(logged).read_text()) == best
    assert any(k.startswith("importance.model.") for k in parent[0].data.metrics)

    fit = _recsys("fit", "--interactions", inter, "--items", items, "--config",
                  tmp_path / "best.yaml", "--output", tmp_path / "model", cwd=tmp_path)
    assert fit.returncode == 0, fit.stderr[-3000:]
    assert (tmp_path / "model").is_dir()


def test_recsys_tune_refuses_a_bad_space_in_one_line(tmp_path):
    bad = tmp_path / "space.yaml"
    bad.write_text("model.ease.lambda: {type: float, low: 1, high: 2}\n")
    result = _recsys("tune", "--data", "synthetic", "--space", bad, "--trials", 1, cwd=tmp_path)
    assert result.returncode == 1
    assert result.stderr.startswith("recsys tune: error: ") and "lambda" in result.stderr
    assert "Traceback" not in result.stderr


def test_recsys_tune_refuses_a_bad_storage_in_one_line(tmp_path):
    result = _recsys("tune", "--data", "synthetic", "--synthetic-users", 50, "--synthetic-items", 30,
                     "--synthetic-interactions", 1000, "--storage", "nosuchdb://study", "--trials", 1,
                     "--home", tmp_path / "home", cwd=tmp_path)
    assert result.returncode == 1
    last = result.stderr.strip().splitlines()[-1]
    assert last.startswith("recsys tune: error: --storage nosuchdb://study: cannot open the study")
    assert "Traceback" not in result.stderr
    assert not (tmp_path / "best.yaml").exists()
