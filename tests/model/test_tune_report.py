"""The study's HTML report (components/tuning/tune_report.py), from a real study of three
trials on tiny synthetic data: self-contained (inlined PNGs, nothing fetched), with the
history and the importance plots, the best config and every trial; and `recsys tune` puts it
on the MLflow parent run and under the home's reports/."""
from __future__ import annotations

import base64
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from components.data.ingest import load_dataset
from components.tuning.space import parse_space
from components.tuning.tune import tune
from components.tuning.tune_report import history_figure, importance_figure, render_tune_report

SPACE = {
    "model.ease.l2": {"type": "float", "low": 50.0, "high": 2000.0, "log": True},
    "model.ranker.n_estimators": {"type": "int", "low": 20, "high": 60},
}
FAST = {"model": {"ranker": {"folds": 2}, "content": {"enabled": False}}}
PNG = b"\x89PNG\r\n\x1a\n"


@pytest.fixture(scope="module")
def tiny():
    return load_dataset("synthetic", synthetic_users=150, synthetic_items=80,
                        synthetic_interactions=4_000, seed=3)


@pytest.fixture(scope="module")
def study(tiny):
    return tune(tiny.interactions, tiny.items, FAST, parse_space(yaml.safe_dump(SPACE)), trials=3,
                seed=2, progress=lambda _: None)


def _images(page: str) -> list[bytes]:
    return [base64.b64decode(m) for m in re.findall(r'src="data:image/png;base64,([^"]+)"', page)]


def test_the_report_plots_the_history_and_the_importances(study):
    page = render_tune_report(study, context={"data": "synthetic"})
    images = _images(page)
    assert len(images) == (2 if study.importances else 1)
    assert all(image.startswith(PNG) for image in images)
    assert "http" not in page and "<script" not in page  # static: nothing to fetch or run
    assert f"{study.best_value:.4f} (trial {study.best_number})" in page
    for trial in study.trials:  # one row per trial, its values shown
        assert f"<td>{trial['number']}</td><td>{trial['state']}</td>" in page
    assert yaml.safe_load(re.search(r"<pre>(.*?)</pre>", page, re.DOTALL).group(1)) == study.best_config


def test_no_plot_without_what_it_shows():
    assert history_figure([{"number": 0, "value": None, "state": "pruned"}]) is None
    assert importance_figure({}) is None


def test_recsys_tune_puts_the_report_on_the_parent_run(tmp_path, tiny):
    from mlflow import MlflowClient

    inter, space = tmp_path / "inter.csv", tmp_path / "space.yaml"
    tiny.interactions.to_csv(inter, index=False)
    space.write_text(yaml.safe_dump(SPACE))
    (tmp_path / "fast.yaml").write_text(yaml.safe_dump(FAST))
    env = {**os.environ, "RECSYS_HOME": str(tmp_path / "home")}
    env.pop("MLFLOW_TRACKING_URI", None)
    result = subprocess.run(
        [sys.executable, "-m", "pipelines.cli.main", "tune", "--data", str(inter), "--config",
         str(tmp_path / "fast.yaml"), "--space", str(space), "--trials", "2", "--home",
         str(tmp_path / "home"), "--output", str(tmp_path / "best.yaml")],
        capture_output=True, text=True, env=env, timeout=300, check=False, cwd=tmp_path)
    assert result.returncode == 0, result.stderr[-2000:]
    report = Path(result.stdout.split("HTML report: ")[1].split()[0])
    assert report.parent == tmp_path / "home" / "reports" and _images(report.read_text())
    run_id = re.search(r"MLflow parent run (\w+)", result.stdout).group(1)
    client = MlflowClient(tracking_uri=f"sqlite:///{tmp_path / 'home' / 'mlflow.db'}")
    logged = Path(client.download_artifacts(run_id, "tune_report.html")).read_text()
    assert logged == report.read_text()
