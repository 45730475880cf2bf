"""The pipeline's tune step (`tune_trials` > 0, `recsys run --tune-trials N`): in the compiled
IR, train, evaluate and register take the config the tune step hands on; run locally (kfp.local,
MLflow on SQLite) on small synthetic data with a two-value space, train fits the best trial's
values, the study's parent run holds its HTML report, and a second run on the same data and
space reuses the stored study instead of running trials again."""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from pipelines.pipeline import compile_pipeline

SMALL = ["--data", "synthetic", "--synthetic-users", "200", "--synthetic-items", "120",
         "--synthetic-interactions", "5000"]
SPACE = {
    "model.ease.l2": {"type": "float", "low": 50.0, "high": 2000.0, "log": True},
    "model.ranker.n_estimators": {"type": "int", "low": 20, "high": 80},
}
FAST = {"model": {"ranker": {"folds": 2}, "content": {"enabled": False}}}


def test_train_evaluate_and_register_take_the_tune_steps_config(tmp_path):
    spec, _ = yaml.safe_load_all(compile_pipeline(tmp_path / "p.yaml").read_text())
    tasks = spec["root"]["dag"]["tasks"]
    for step in ("train-op", "evaluate-op", "register-op"):
        config = tasks[step]["inputs"]["parameters"]["config_yaml"]
        assert config["taskOutputParameter"] == {"producerTask": "tune-op", "outputParameterKey": "Output"}, step
    tune = tasks["tune-op"]["inputs"]
    # Its cache key holds the data fingerprint and the space's text (pipeline parameters).
    assert tune["parameters"]["data_fingerprint"]["taskOutputParameter"]["producerTask"] == "validate-op"
    assert tune["parameters"]["space_yaml"] == {"componentInputParameter": "tune_space"}
    assert tune["parameters"]["trials"] == {"componentInputParameter": "tune_trials"}
    assert tasks["tune-op"]["dependentTasks"] == ["split-op", "validate-op"]
    assert spec["root"]["inputDefinitions"]["parameters"]["tune_trials"]["defaultValue"] == 0


def _recsys(*args: str, home: Path) -> subprocess.CompletedProcess:
    env = {**os.environ, "RECSYS_HOME": str(home)}
    env.pop("MLFLOW_TRACKING_URI", None)
    return subprocess.run([sys.executable, "-m", "pipelines.cli.main", *map(str, args)],
                          capture_output=True, text=True, env=env, timeout=600, check=False)


@pytest.fixture(scope="module")
def tuned_runs(tmp_path_factory):
    """Two `recsys run --tune-trials 2` on the same data, config and space, in one home."""
    home = tmp_path_factory.mktemp("tuned-home")
    space, config = home / "space.yaml", home / "fast.yaml"
    space.write_text(yaml.safe_dump(SPACE))
    config.write_text(yaml.safe_dump(FAST))
    runs = []
    for _ in range(2):
        result = _recsys("run", *SMALL, "--config", config, "--tune-trials", 2, "--tune-space",
                         space, "--home", home, home=home)
        assert result.returncode == 0, result.stderr[-3000:]
        runs.append(result)
    return home, runs


def _logs(home: Path) -> list[str]:
    return [p.read_text() for p in sorted((home / "logs").glob("run-*.log"))]


def _tune_runs(home: Path):
    from mlflow import MlflowClient

    client = MlflowClient(tracking_uri=f"sqlite:///{home / 'mlflow.db'}")
    experiment = client.get_experiment_by_name("recsys-tune")
    runs = client.search_runs([experiment.experiment_id])
    parents = [r for r in runs if r.data.tags.get("recsys.kind") == "tune"]
    children = [r for r in runs if r.data.tags.get("recsys.kind") == "tune-trial"]
    return client, parents, children


def test_a_tuned_run_trains_and_registers_the_best_config(tuned_runs):
    home, (first, _) = tuned_runs
    steps = [line.split()[0] for line in first.stderr.splitlines() if line.endswith("  done")]
    assert steps == ["fingerprint", "ingest", "validate", "split", "tune", "train", "evaluate",
                     "register", "deploy"], first.stderr
    log = _logs(home)[0]
    assert "trial   0:" in log and "trial   1:" in log and "trial   2:" not in log
    client, (parent,), children = _tune_runs(home)
    assert len(children) == 2
    best = yaml.safe_load(Path(client.download_artifacts(parent.info.run_id, "best_config.yaml")).read_text())
    assert best["model"]["ranker"]["folds"] == 2  # the given config's values outside the space
    # The deployed model was fitted with the best trial's values...
    record = json.loads((home / "deployment.json").read_text())
    manifest = json.loads(Path(record["model_dir"], "manifest.json").read_text())
    fitted = manifest["full_config"]["model"]
    assert fitted["ease"]["l2"] == pytest.approx(best["model"]["ease"]["l2"])
    assert fitted["ranker"]["n_estimators"] == best["model"]["ranker"]["n_estimators"]
    # ... and registered with them as its parameters.
    (version,) = [v for v in client.search_model_versions("name='recsys'") if str(v.version) == "1"]
    params = client.get_run(version.run_id).data.params
    assert float(params["model.ease.l2"]) == pytest.approx(best["model"]["ease"]["l2"])
    # `recsys monitor` retrains with the tuned config, not the one given to `recsys run`.
    source = json.loads((home / "training_source.json").read_text())
    assert yaml.safe_load(source["config_yaml"]) == best
    # The parent run holds the study's report: its history and importance plots.
    report = Path(client.download_artifacts(parent.info.run_id, "tune_report.html")).read_text()
    assert report.count('src="data:image/png;base64,') >= 1
    assert "model.ease.l2" in report and f"(trial {parent.data.tags['best_trial']})" in report


def test_a_second_run_on_the_same_data_and_space_reuses_the_study(tuned_runs):
    home, (_, second) = tuned_runs
    assert any(line.split()[0] == "tune" and line.endswith("done") for line in second.stderr.splitlines())
    again = _logs(home)[1]
    assert "already has 2 trials in the tune storage: reusing its best, no new trial" in again
    client, parents, children = _tune_runs(home)
    assert len(parents) == 1 and len(children) == 2  # no new trial ran, nothing was logged twice
    # Both registered versions were fitted with the same (the study's best) values.
    params = [client.get_run(v.run_id).data.params for v in client.search_model_versions("name='recsys'")]
    assert len(params) == 2
    assert params[0]["model.ease.l2"] == params[1]["model.ease.l2"]
    assert params[0]["model.ranker.n_estimators"] == params[1]["model.ranker.n_estimators"]


@pytest.mark.parametrize("args, message", [
    (["--tune-trials", "-1"], "--tune-trials must be 0 (no tuning) or more, not -1"),
    (["--tune-space", "space.yaml"], "--tune-space and --tune-storage need --tune-trials N"),
    (["--tune-trials", "2", "--tune-space", "missing.yaml"], "missing.yaml: cannot read search space"),
])
def test_bad_tune_flags_fail_in_one_line_before_any_step(tmp_path, args, message):
    result = _recsys("run", *SMALL, *args, "--home", tmp_path, home=tmp_path)
    assert result.returncode != 0
    assert result.stderr.strip().splitlines()[-1].startswith("recsys run: error: ")
    assert message in result.stderr and "full log" not in result.stderr, result.stderr
