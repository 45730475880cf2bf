"""Trials in parallel (`components/tuning/parallel.py`): a real Dask LocalCluster of two worker
processes runs the trials of one Optuna study kept in a real PostgreSQL database (the storage
the pipeline's tune step uses on Kubeflow); the driver then logs one MLflow parent run with a
child per trial, from the stored study. On Kubeflow the same code runs against a DaskCluster
of the dask-kubernetes operator; no cluster runs here."""
from __future__ import annotations

import re
from pathlib import Path

import optuna
import pytest
import yaml
from tuning_data import FAST, tiny_dataset

from components.config import config_from_dict
from components.errors import ConfigError
from components.models.distributed import dask_client
from components.tuning.parallel import finished_trials, shares, study_name_for, tune_on_dask
from components.tuning.space import parse_space

SPACE = parse_space(yaml.safe_dump({
    "model.ease.l2": {"type": "float", "low": 50.0, "high": 2000.0, "log": True},
    "model.ranker.n_estimators": {"type": "int", "low": 20, "high": 60},
}))


@pytest.fixture(scope="module")
def tiny():
    return tiny_dataset()


def test_two_workers_share_one_study_in_postgresql(tiny, postgres_url, tmp_path):
    from mlflow import MlflowClient

    tracking = f"sqlite:///{tmp_path / 'mlflow.db'}"
    name = study_name_for("fingerprint", "space", "config")
    lines: list[str] = []
    with dask_client(2) as client:
        result = tune_on_dask(client, tiny.interactions, tiny.items, FAST, SPACE, trials=4,
                              storage=postgres_url, study_name=name, seed=1,
                              tracking_uri=tracking, progress=lines.append)
    # Both worker processes ran trials, two each.
    (finished,) = [line for line in lines if line.startswith("workers finished")]
    assert len(set(re.findall(r"tcp://[\d.:]+", finished))) == 2, finished
    # The study is in the database: four finished trials, trial 0 the given config.
    stored = optuna.load_study(study_name=name, storage=postgres_url)
    assert finished_trials(postgres_url, name) == 4 == len(result.trials)
    assert stored.trials[0].params["model.ranker.n_estimators"] == 60  # the default 300, clipped
    complete = [t.value for t in stored.trials if t.value is not None]
    assert result.best_value == max(complete)
    assert result.best_config["model"]["ranker"]["folds"] == 2  # outside the space: kept
    config_from_dict(result.best_config)  # a config `recsys fit --config` takes
    assert sum(line.startswith("trial ") for line in lines) == 4
    # One MLflow parent with a child per trial, written by the driver from the stored study.
    client = MlflowClient(tracking_uri=tracking)
    runs = client.search_runs([client.get_experiment_by_name("recsys-tune").experiment_id])
    children = [r for r in runs if r.data.tags.get("mlflow.parentRunId") == result.parent_run_id]
    assert len(runs) == 5 and len(children) == 4
    best = Path(client.download_artifacts(result.parent_run_id, "best_config.yaml")).read_text()
    assert yaml.safe_load(best) == result.best_config


def test_trials_are_shared_evenly_and_a_study_needs_a_shared_storage(tiny):
    assert shares(5, 2) == [3, 2] and shares(2, 4) == [1, 1]
    with pytest.raises(ConfigError, match="need a shared study"):
        tune_on_dask(None, tiny.interactions, tiny.items, FAST, SPACE, trials=2, storage="",
                     study_name="s")


def test_one_study_per_data_space_and_config():
    names = {study_name_for(*key) for key in (("a", "s", "c"), ("b", "s", "c"), ("a", "t", "c"), ("a", "s", "d"))}
    assert len(names) == 4 and study_name_for("a", "s", "c") == study_name_for("a", "s", "c")


def test_the_tune_step_refuses_parallel_trials_without_a_storage_before_making_a_cluster(tiny, tmp_path):
    """No DaskCluster is created (no cluster runs here: creating one would fail on the missing
    Kubernetes configuration instead of this line) when the study has nowhere to be shared."""
    from components.steps import tune as tune_step

    tiny.interactions.to_parquet(tmp_path / "i.parquet")
    tiny.items.to_parquet(tmp_path / "items.parquet")
    with pytest.raises(ConfigError, match="needs tune_storage"):
        tune_step(str(tmp_path / "i.parquet"), str(tmp_path / "items.parquet"),
                  str(tmp_path / "r.html"), config_yaml=yaml.safe_dump(FAST),
                  space_yaml=yaml.safe_dump({"model.ease.l2": {"type": "float", "low": 50, "high": 99}}),
                  trials=2, data_fingerprint="f", tracking_uri=f"sqlite:///{tmp_path / 'm.db'}",
                  dask_workers=2)
    assert not (tmp_path / "r.html").exists()
