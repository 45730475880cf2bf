"""A study's trials in parallel on a Dask cluster, the study kept in a database (Optuna's RDB
storage: PostgreSQL on Kubeflow) that every worker reads and writes.

Each worker runs `tune.tune` itself on its share of the trials against the one shared study:
the same objective, sampler, pruner and validation split as `recsys tune`, so a trial on a
worker is what it would be on this machine. Each worker's TPE sampler gets its own seed (the
given seed plus the worker's index): with one seed they would all propose the same values at
once. The study's history, not the order the workers finished in, is what this returns, and
the one MLflow parent run (with a child per trial) is written here, after the workers are done,
from the trials stored in the database: the workers need the database only, not MLflow.

Parallel trials see fewer finished trials when they sample, so a parallel study is not
reproducible trial by trial as a sequential one is; its best is still the best of its trials.
"""
from __future__ import annotations

import hashlib
from collections.abc import Callable
from typing import Any

import pandas as pd

from components.errors import ConfigError, RecsysError
from components.tuning.space import Param, set_dotted
from components.tuning.tune import (
    STUDY_NAME,
    TuneResult,
    _baseline_params,
    _finish_parent,
    _importances,
    _log_trial,
    _start_parent,
    step_pruner,
    tune,
)


def study_name_for(data_fingerprint: str, space_yaml: str, config_yaml: str) -> str:
    """One study per data, space and starting config: a shared storage keeps the studies of
    every run, and a run must not continue another data set's study."""
    digest = hashlib.sha256(f"{data_fingerprint}\n{space_yaml}\n{config_yaml}".encode()).hexdigest()
    return f"{STUDY_NAME}-{digest[:12]}"


def shares(trials: int, workers: int) -> list[int]:
    """`trials` split as evenly as can be over at most `workers` workers (no empty share)."""
    if trials < 1 or workers < 1:
        raise ConfigError(f"trials and workers must be 1 or more, not {trials} and {workers}")
    return [trials // workers + (i < trials % workers) for i in range(min(trials, workers))]


PARENT_RUN_ATTR = "mlflow_parent_run"


def finished_trials(storage: str, study_name: str) -> int:
    """How many trials of the stored study finished (completed or pruned); 0 if there is none."""
    import optuna
    from sqlalchemy.exc import SQLAlchemyError

    states = (optuna.trial.TrialState.COMPLETE, optuna.trial.TrialState.PRUNED)
    try:
        study = optuna.load_study(study_name=study_name, storage=storage)
    except KeyError:
        return 0
    except (SQLAlchemyError, ValueError, ImportError) as exc:  # a bad URL, a database down: one line, as `tune` says it
        raise ConfigError(f"tune storage: cannot open the study: {str(exc).splitlines()[0]}") from None
    return len(study.get_trials(deepcopy=False, states=states))


def record_parent_run(storage: str, study_name: str, run_id: str | None) -> None:
    """Keep the MLflow parent run on the stored study, for a run that reuses it."""
    import optuna

    if run_id:
        optuna.load_study(study_name=study_name, storage=storage).set_user_attr(PARENT_RUN_ATTR, run_id)


def stored_parent_run(storage: str, study_name: str) -> str | None:
    import optuna

    return optuna.load_study(study_name=study_name, storage=storage).user_attrs.get(PARENT_RUN_ATTR)


def _open_study(storage: str, study_name: str, seed: int):
    import optuna
    from sqlalchemy.exc import SQLAlchemyError

    try:
        return optuna.create_study(
            study_name=study_name, storage=storage, load_if_exists=True, direction="maximize",
            sampler=optuna.samplers.TPESampler(seed=seed),
            pruner=step_pruner(),  # as each worker's tune() prunes
        )
    except (SQLAlchemyError, ValueError, ImportError) as exc:  # a bad URL, a database down
        raise ConfigError(f"tune storage: cannot open the study: {str(exc).splitlines()[0]}") from None


def worker_trials(interactions: pd.DataFrame, items: pd.DataFrame | None, base: dict[str, Any],
                  space: list[Param], trials: int, storage: str, study_name: str,
                  seed: int) -> dict[str, Any]:
    """What one Dask worker runs: `trials` trials of the shared study. A worker whose own
    trials were all pruned is no failure while the study has a completed trial."""
    import optuna
    from distributed import get_worker

    try:
        tune(interactions, items, base, space, trials=trials, storage=storage, seed=seed,
             study_name=study_name, tracking_uri=None, progress=lambda _: None)
    except RecsysError:
        study = optuna.load_study(study_name=study_name, storage=storage)
        if not study.get_trials(deepcopy=False, states=(optuna.trial.TrialState.COMPLETE,)):
            raise
    return {"worker": get_worker().address, "trials": trials}


def _records(study) -> list[dict[str, Any]]:
    """Each trial as `tune` records it (number, params, value, state, generators, seconds)."""
    import optuna

    states = {optuna.trial.TrialState.COMPLETE: "complete", optuna.trial.TrialState.PRUNED: "pruned"}
    records = []
    for t in study.get_trials(deepcopy=False):
        if t.state not in states and t.state != optuna.trial.TrialState.FAIL:
            continue  # still waiting or running: not part of the result
        seconds = (t.datetime_complete - t.datetime_start).total_seconds() if (
            t.datetime_complete and t.datetime_start) else 0.0
        record: dict[str, Any] = {"number": t.number, "params": dict(t.params),
                                  "value": t.value if t.state == optuna.trial.TrialState.COMPLETE else None,
                                  "seconds": seconds}
        if t.state in states:
            record["state"] = states[t.state]
        if 0 in t.intermediate_values:
            record["generators"] = t.intermediate_values[0]
        records.append(record)
    return records


def tune_on_dask(
    client, interactions: pd.DataFrame, items: pd.DataFrame | None, base: dict[str, Any],
    space: list[Param], *, trials: int, storage: str, study_name: str, seed: int = 42,
    tracking_uri: str | None = None, experiment: str = "recsys-tune",
    progress: Callable[[str], None] = print,
) -> TuneResult:
    """Run `trials` more trials of the study `study_name` in `storage`, spread over the
    workers of the Dask `client`; the result and the MLflow runs as `tune.tune` makes them."""
    import optuna

    from components.config import config_from_dict

    if not storage:
        raise ConfigError("trials on a Dask cluster need a shared study: give the tune storage "
                          "(postgresql+psycopg://...)")
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    base_config = config_from_dict(base, source="config")
    study = _open_study(storage, study_name, seed)
    if not study.trials:  # trial 0 is the given config, as in `tune`: enqueued once, here
        study.enqueue_trial(_baseline_params(base_config, space))
    workers = len(client.scheduler_info()["workers"])
    split = shares(trials, workers)
    progress(f"study {study_name}: {trials} trials on {len(split)} Dask workers ({split})")
    data = client.scatter(interactions, broadcast=True)
    items_data = client.scatter(items, broadcast=True) if items is not None else None
    futures = [client.submit(worker_trials, data, items_data, base, space, n, storage, study_name,
                             seed + i, pure=False) for i, n in enumerate(split)]
    done = client.gather(futures)
    progress(f"workers finished: {', '.join(str(d['trials']) + ' on ' + d['worker'] for d in done)}")
    return study_result(study_name, storage, base, space, tracking_uri=tracking_uri,
                        experiment=experiment, progress=progress,
                        params={"trials": trials, "seed": seed, "workers": len(split),
                                "space": ", ".join(p.name for p in space), "study": study_name})


def study_result(study_name: str, storage: str, base: dict[str, Any], space: list[Param], *,
                 tracking_uri: str | None, experiment: str, params: dict[str, Any],
                 progress: Callable[[str], None] = print) -> TuneResult:
    """The stored study as a `TuneResult`, one progress line per trial (number, value, best so
    far, seconds) and, with a `tracking_uri`, the MLflow parent run and a child per trial."""
    import copy

    import optuna

    study = optuna.load_study(study_name=study_name, storage=storage)
    records = _records(study)
    best_so_far = None
    for r in records:
        if r.get("value") is not None:
            best_so_far = r["value"] if best_so_far is None else max(best_so_far, r["value"])
        what = f"ndcg@10 {r['value']:.4f}" if r.get("value") is not None else r.get("state", "failed")
        best = "best none yet" if best_so_far is None else f"best {best_so_far:.4f}"
        progress(f"trial {r['number']:>3}: {what}; {best}; {r['seconds']:.1f}s")
    complete = [t for t in study.trials if t.state == optuna.trial.TrialState.COMPLETE]
    if not complete:
        raise RecsysError("no trial completed: give more trials")
    best = study.best_trial
    best_raw = copy.deepcopy(base)
    for name, value in best.params.items():
        set_dotted(best_raw, name, value)
    first = study.trials[0]
    result = TuneResult(
        best_value=float(best.value), best_number=best.number, best_params=dict(best.params),
        best_config=best_raw,
        baseline_value=first.value if first.state == optuna.trial.TrialState.COMPLETE else None,
        importances=_importances(study), trials=records,
    )
    client, parent = _start_parent(tracking_uri, experiment, params)
    if client is not None:
        for record in records:
            _log_trial(client, parent, record)
        result.parent_run_id = parent
        _finish_parent(client, parent, result)
    return result
