"""The hyperparameter search of `recsys tune`: an Optuna study over a `space`, each trial the
two-stage model fitted with the trial's values and scored by NDCG@10 on a validation split.

The data a trial sees is carved from the training split only (`tuning_splits`): the evaluation
split, the one `recsys run` reports and the gate compares on, never reaches a trial. The first
trial is the given config itself (the untuned baseline), so the best found is never worse on
validation than what the user started from. TPE samples with a fixed seed, so a rerun on the
same data reproduces the study. A pruner stops a trial whose generators alone already rank the
validation users worse than three quarters of the completed trials' did, before its ranker is
fitted (step 0), and one whose ranker's own validation NDCG (the one that chooses its tree
count) is under the median trial's at the same boosting round (steps 50, 75, ...: every
`RANKER_ROUNDS_EVERY`, after the first).

The trials of one study share a `FitCache`: the prepared training data of the trial split and of
the ranker's folds, and every generator whose own values did not change (popularity and
content always; in a trial, the generators fitted alone are the ones its model serves). A
cached trial computes the value an uncached one does, only sooner.

Every trial is an MLflow child run (its values, the objective, its time) under one parent run,
which holds the best config (`best_config.yaml`) and Optuna's importance of each value.
"""
from __future__ import annotations

import copy
import json
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pandas as pd
import yaml

from components.config import Config, config_from_dict
from components.data.split import split_interactions
from components.errors import ConfigError, RecsysError
from components.evaluation.evaluate import ranking_metrics
from components.evaluation.offline_eval import evaluate_model, recommend_for_users, relevance_matrix
from components.models.two_stage import FitCache, TwoStageRecommender
from components.tuning.space import Param, get_dotted, set_dotted

K = 10
METRIC = f"ndcg@{K}"
MLFLOW_METRIC = f"ndcg_at_{K}"  # MLflow names allow no "@" (as `registry` logs them)
STUDY_NAME = "recsys-tune"
# Trials that always run to the end before the pruner compares (the median needs a few).
PRUNER_STARTUP_TRIALS = 5


@dataclass
class TuneResult:
    best_value: float
    best_number: int
    best_params: dict[str, Any]
    best_config: dict[str, Any]  # the raw YAML mapping: the given config with the best values
    baseline_value: float | None  # trial 0: the given config, untuned
    importances: dict[str, float]
    trials: list[dict[str, Any]] = field(default_factory=list)
    parent_run_id: str | None = None

    def best_config_yaml(self) -> str:
        return dump_config(self.best_config)


def dump_config(raw: dict[str, Any]) -> str:
    return yaml.safe_dump(raw, sort_keys=False)


def tuning_splits(interactions: pd.DataFrame, config: Config, *,
                  training_only: bool = False) -> tuple[pd.DataFrame, pd.DataFrame]:
    """(what a trial trains on, what it is scored on): the config's validation split of the
    training part of its evaluation split. The evaluation split's held-out rows are dropped
    here, before any trial starts. With `training_only` the interactions are a training set
    already (their test set is kept elsewhere, as a benchmark protocol's is): no evaluation
    split is set aside and the validation split is carved from all of them."""
    train = interactions if training_only else split_interactions(interactions, config.split).train
    part = split_interactions(train, config.split, validation=True)
    return part.train, part.test


def ndcg_on(model: TwoStageRecommender, heldout: pd.DataFrame, generator: str | None = None) -> float:
    """NDCG@10 of the model (or one of its generators alone) on held-out interactions."""
    users, relevant = relevance_matrix(model, heldout)
    if len(users) == 0:
        return 0.0
    top = recommend_for_users(model, users, K, generator=generator)
    return float(ranking_metrics(top, relevant, k_values=(K,))[METRIC])


def _suggest(trial, p: Param) -> Any:
    if p.kind == "categorical":
        return trial.suggest_categorical(p.name, list(p.choices))
    if p.kind == "int":
        return trial.suggest_int(p.name, int(p.low), int(p.high), log=p.log)
    return trial.suggest_float(p.name, float(p.low), float(p.high), log=p.log)


def _baseline_params(config: Config, space: list[Param]) -> dict[str, Any]:
    """The given config's own values, clipped into the space (trial 0)."""
    dumped = config.model_dump(mode="json")
    out = {}
    for p in space:
        value = get_dotted(dumped, p.name)
        if p.kind == "categorical":
            if value in p.choices:
                out[p.name] = value
            continue
        if value is None:
            continue
        value = min(max(value, p.low), p.high)
        out[p.name] = round(value) if p.kind == "int" else float(value)
    return out


# Step 0 prunes a trial whose generators alone are in the bottom quarter: their NDCG predicts
# the ranked model's loosely (under the median pruned 11 of 20 default trials there). The
# ranker's rounds prune under the median, from its second report on: at the first, a low
# learning rate has not caught up yet.
GENERATORS_PERCENTILE = 25.0
RANKER_PERCENTILE = 50.0
RANKER_WARMUP_STEPS = 25


def step_pruner(startup_trials: int = PRUNER_STARTUP_TRIALS):
    """Prune a trial whose value at its latest step is under a percentile of the completed
    trials' values at that step (once `startup_trials` have completed): the bottom quarter
    at step 0 (the generators alone), the median at the ranker's rounds after its first
    report. Optuna's MedianPruner compares a trial's best value over all its steps, which
    mixes the generators' NDCG on the validation slice (step 0) with the ranker's on its own
    validation users (later steps); this compares like with like."""
    import optuna

    class StepPruner(optuna.pruners.BasePruner):
        def prune(self, study, trial) -> bool:
            step = trial.last_step
            if step is None or 0 < step <= RANKER_WARMUP_STEPS:
                return False
            complete = study.get_trials(deepcopy=False, states=(optuna.trial.TrialState.COMPLETE,))
            if len(complete) < startup_trials:
                return False
            others = [t.intermediate_values[step] for t in complete if step in t.intermediate_values]
            if not others:
                return False
            percentile = GENERATORS_PERCENTILE if step == 0 else RANKER_PERCENTILE
            return trial.intermediate_values[step] < float(np.percentile(others, percentile))

    return StepPruner()


def _without_ranker(config: Config) -> Config:
    raw = config.model_dump(mode="json")
    raw["model"]["ranker"]["enabled"] = False
    return config_from_dict(raw)


def tune(
    interactions: pd.DataFrame,
    items: pd.DataFrame | None,
    base: dict[str, Any],
    space: list[Param],
    *,
    trials: int,
    timeout: float | None = None,
    storage: str | None = None,
    seed: int = 42,
    tracking_uri: str | None = None,
    experiment: str = "recsys-tune",
    study_name: str = STUDY_NAME,
    training_only: bool = False,
    prune: bool = True,
    progress: Callable[[str], None] = print,
    on_trial: Callable[[int, TwoStageRecommender, pd.DataFrame], None] | None = None,
) -> TuneResult:
    """Run the study; `base` is the raw config mapping (the YAML of --config). `on_trial` is
    called with each trial's number, its fitted model and the rows it was scored on. In a
    `storage` shared by several studies (the pipeline's), `study_name` tells them apart.
    `training_only`: the interactions hold no evaluation split to set aside (`tuning_splits`).
    `prune=False` runs every trial to the end (Optuna's NopPruner)."""
    import optuna

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    base_config = config_from_dict(base, source="--config")
    train, validation = tuning_splits(interactions, base_config, training_only=training_only)
    unused = len(interactions) - len(train) - len(validation)
    progress(f"tuning on {len(train):,} training interactions, scored on {len(validation):,} "
             f"validation interactions " + (
                 "(carved from all the data given: --training-only)" if training_only else
                 f"(carved from the training split; the evaluation split's {unused:,} are not used)"))
    client, parent = _start_parent(tracking_uri, experiment, {
        "trials": trials, "timeout": timeout or "", "seed": seed, "space": ", ".join(p.name for p in space),
        "train_interactions": len(train), "validation_interactions": len(validation),
        "training_only": training_only,
    })
    from sqlalchemy.exc import SQLAlchemyError

    try:
        study = optuna.create_study(
            study_name=study_name, storage=storage, load_if_exists=True, direction="maximize",
            sampler=optuna.samplers.TPESampler(seed=seed),
            pruner=step_pruner() if prune else optuna.pruners.NopPruner(),
        )
    except (SQLAlchemyError, ValueError, ImportError) as exc:  # a bad URL, a database down: one line
        _end_parent(client, parent, "FAILED")
        raise ConfigError(f"--storage {storage}: cannot open the study: {str(exc).splitlines()[0]}") from None
    if not study.trials:
        study.enqueue_trial(_baseline_params(base_config, space))
    records: list[dict[str, Any]] = []
    cache = FitCache()

    def objective(trial) -> float:
        started, cpu = time.monotonic(), time.process_time()
        raw = copy.deepcopy(base)
        params = {p.name: _suggest(trial, p) for p in space}
        for name, value in params.items():
            set_dotted(raw, name, value)
        config = config_from_dict(raw, source=f"trial {trial.number}")
        record: dict[str, Any] = {"number": trial.number, "params": params}
        try:
            # Step 0: the generators alone; a trial whose generators already lose stops here.
            alone = TwoStageRecommender(_without_ranker(config).model, config.split).fit(
                train, items, progress=lambda _: None, cache=cache)
            generators = max(ndcg_on(alone, validation, g) for g in alone.generators_)
            record["generators"] = generators
            trial.report(generators, 0)
            if trial.should_prune():
                record["pruned_at"] = 0
                raise optuna.TrialPruned()

            def ranker_round(done: int, ndcg: float) -> None:
                # Step `done`: the ranker's validation NDCG after that many boosting rounds.
                trial.report(ndcg, done)
                if trial.should_prune():
                    record.update(pruned_at=done, ranker_ndcg=ndcg)
                    raise optuna.TrialPruned()

            model = TwoStageRecommender(config.model, config.split).fit(
                train, items, progress=lambda _: None, cache=cache, ranker_rounds=ranker_round)
            value = ndcg_on(model, validation)
            if on_trial is not None:
                on_trial(trial.number, model, validation)
            record.update(value=value, state="complete")
            return value
        except optuna.TrialPruned:
            record.update(value=None, state="pruned")
            raise
        finally:
            record["seconds"] = time.monotonic() - started
            record["cpu_seconds"] = time.process_time() - cpu
            records.append(record)
            _log_trial(client, parent, record)

    def report(study_, trial) -> None:
        record = records[-1] if records and records[-1]["number"] == trial.number else None
        seconds = record["seconds"] if record else 0.0
        try:
            best = f"best {study_.best_value:.4f} (trial {study_.best_trial.number})"
        except ValueError:
            best = "best none yet"
        if trial.state == optuna.trial.TrialState.COMPLETE:
            what = f"{METRIC} {trial.value:.4f}"
        elif trial.state == optuna.trial.TrialState.PRUNED:
            what = _pruned(record)
        else:
            what = f"failed ({trial.state.name.lower()})"
        progress(f"trial {trial.number:>3}: {what}; {best}; {seconds:.1f}s")

    try:
        study.optimize(objective, n_trials=trials, timeout=timeout, callbacks=[report])
    except BaseException:
        _end_parent(client, parent, "FAILED")
        raise
    complete = [t for t in study.trials if t.state == optuna.trial.TrialState.COMPLETE]
    if not complete:
        _end_parent(client, parent, "FAILED")
        raise RecsysError("no trial completed: give more --trials or a longer --timeout")
    best = study.best_trial
    best_raw = copy.deepcopy(base)
    for name, value in best.params.items():
        set_dotted(best_raw, name, value)
    config_from_dict(best_raw, source="the best trial")
    importances = _importances(study)
    baseline = study.trials[0].value if study.trials[0].state == optuna.trial.TrialState.COMPLETE else None
    result = TuneResult(
        best_value=float(best.value), best_number=best.number, best_params=dict(best.params),
        best_config=best_raw, baseline_value=baseline, importances=importances, trials=records,
        parent_run_id=parent,
    )
    _finish_parent(client, parent, result)
    return result


def _pruned(record: dict[str, Any] | None) -> str:
    if record is None:
        return "pruned"
    if record.get("pruned_at"):
        return (f"pruned at ranker round {record['pruned_at']} (its validation ndcg "
                f"{record['ranker_ndcg']:.4f}, under the median)")
    return f"pruned (generators alone {record['generators']:.4f}, in the bottom quarter)"


def _importances(study) -> dict[str, float]:
    """Optuna's (fANOVA) importance of each value; empty while too few trials differ."""
    import optuna

    try:
        return {k: float(v) for k, v in optuna.importance.get_param_importances(study).items()}
    except (RuntimeError, ValueError, ZeroDivisionError):
        return {}


# ------------------------------------------------------------------------------------ MLflow
def _start_parent(tracking_uri: str | None, experiment: str, params: dict[str, Any]):
    if tracking_uri is None:
        return None, None
    from components.release.registry import _client, _experiment_id

    client = _client(tracking_uri)
    run = client.create_run(_experiment_id(client, experiment, tracking_uri),
                            run_name="tune", tags={"recsys.kind": "tune"})
    for key, value in params.items():
        client.log_param(run.info.run_id, key, value)
    return client, run.info.run_id


def _log_trial(client, parent: str | None, record: dict[str, Any]) -> None:
    if client is None:
        return
    experiment_id = client.get_run(parent).info.experiment_id
    run = client.create_run(experiment_id, run_name=f"trial-{record['number']}", tags={
        "mlflow.parentRunId": parent, "recsys.kind": "tune-trial", "state": record.get("state", "failed"),
    })
    run_id = run.info.run_id
    for name, value in record["params"].items():
        client.log_param(run_id, name, value)
    if record.get("value") is not None:
        client.log_metric(run_id, f"validation_{MLFLOW_METRIC}", record["value"])
    if record.get("generators") is not None:
        client.log_metric(run_id, f"validation_{MLFLOW_METRIC}_generators_alone", record["generators"])
    client.log_metric(run_id, "seconds", record["seconds"])
    if record.get("cpu_seconds") is not None:
        client.log_metric(run_id, "cpu_seconds", record["cpu_seconds"])
    client.set_terminated(run_id, "FINISHED" if record.get("state") else "FAILED")


def _finish_parent(client, parent: str | None, result: TuneResult) -> None:
    if client is None:
        return
    client.log_metric(parent, f"best_validation_{MLFLOW_METRIC}", result.best_value)
    if result.baseline_value is not None:
        client.log_metric(parent, f"untuned_validation_{MLFLOW_METRIC}", result.baseline_value)
    client.set_tag(parent, "best_trial", str(result.best_number))
    for name, value in result.importances.items():
        client.log_metric(parent, f"importance.{name}", value)
    client.log_text(parent, result.best_config_yaml(), "best_config.yaml")
    client.log_text(parent, json.dumps(result.importances, indent=2), "importances.json")
    client.log_text(parent, json.dumps(result.trials, indent=2, default=str), "trials.json")
    client.set_terminated(parent, "FINISHED")


def _end_parent(client, parent: str | None, status: str) -> None:
    if client is not None:
        client.set_terminated(parent, status)


# -------------------------------------------------------------------------------- comparison
def compare(
    interactions: pd.DataFrame, items: pd.DataFrame | None, untuned: dict[str, Any],
    tuned: dict[str, Any], *, progress: Callable[[str], None] = lambda _: None,
) -> dict[str, dict[str, float]]:
    """Each generator alone and the two-stage model, untuned and tuned, fitted on the
    evaluation split's training part and scored on its held-out part (the same users for
    all: the split depends on the split config only, which the space does not vary)."""
    results: dict[str, dict[str, float]] = {}
    for label, raw in (("untuned", untuned), ("tuned", tuned)):
        config = config_from_dict(raw, source=f"the {label} config")
        split = split_interactions(interactions, config.split)
        progress(f"comparison: fitting the {label} model on {len(split.train):,} interactions")
        model = TwoStageRecommender(config.model, config.split).fit(split.train, items, progress=lambda _: None)
        for name, metrics in evaluate_model(model, split.test, k_values=config.evaluation.k_values).items():
            results[f"{name} ({label})"] = metrics
    return results

