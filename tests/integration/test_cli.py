"""The `recsys` batch CLI from the outside: fit, recommend, and one-line errors."""
from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

REPO = Path(__file__).resolve().parents[2]


def _recsys(*args, cwd=None, env=None):
    return subprocess.run(
        [sys.executable, "-m", "pipelines.cli.main", *map(str, args)],
        check=False, capture_output=True, text=True, cwd=cwd, timeout=300,
        env={**os.environ, "PYTHONPATH": str(REPO), **(env or {})},
    )


@pytest.fixture(scope="module")
def files(tmp_path_factory, small_dataset):
    root = tmp_path_factory.mktemp("cli")
    inter, items = root / "interactions.csv", root / "items.csv"
    small_dataset.interactions.to_csv(inter, index=False)
    small_dataset.items.to_csv(items, index=False)
    return root, inter, items


@pytest.fixture(scope="module")
def fitted(files):
    root, inter, items = files
    result = _recsys("fit", "--interactions", inter, "--items", items, "--output", root / "model")
    assert result.returncode == 0, result.stderr[-2000:]
    return root / "model"


def test_fit_writes_an_artifact(fitted):
    assert (fitted / "manifest.json").exists() and (fitted / "ranker.txt").exists()


def test_recommend_writes_ranked_rows_without_training_items(files, fitted, small_dataset):
    root = files[0]
    users = root / "users.csv"
    pd.DataFrame({"user_id": ["u1", "u2", "somebody-new"]}).to_csv(users, index=False)
    result = _recsys("recommend", "--model", fitted, "--users", users, "--k", 5, "--output", root / "recs.csv")
    assert result.returncode == 0, result.stderr[-2000:]
    recs = pd.read_csv(root / "recs.csv", dtype={"user_id": str, "item_id": str})
    assert list(recs.columns) == ["user_id", "item_id", "rank", "score", "cold_start"]
    assert recs.groupby("user_id")["cold_start"].first().to_dict() == {
        "u1": False, "u2": False, "somebody-new": True}
    assert "1 of them unseen in training" in result.stdout
    assert len(recs) == 15 and recs.groupby("user_id")["rank"].apply(list).map(lambda r: r == [1, 2, 3, 4, 5]).all()
    seen = small_dataset.interactions.groupby("user_id").item_id.agg(set)
    for user in ("u1", "u2"):
        assert not set(recs[recs.user_id == user].item_id) & seen[user]
    assert set(recs[recs.user_id == "somebody-new"].item_id) == set(
        small_dataset.interactions.item_id.value_counts().index[:5]
    )


@pytest.mark.parametrize(
    "args, fragment",
    [
        (["fit", "--interactions", "missing.csv", "--output", "out"], "missing.csv"),
        (["recommend", "--model", "nowhere", "--users", "u.csv", "--k", "3", "--output", "o.csv"], "no such directory"),
    ],
)
def test_failures_are_one_clear_line(tmp_path, args, fragment):
    result = _recsys(*args, cwd=tmp_path)
    assert result.returncode == 1
    assert "Traceback" not in result.stderr
    last = result.stderr.strip().splitlines()[-1]
    assert last.startswith("recsys ") and fragment in last


def _main(capfd, *args) -> tuple[int, str, str]:
    """The CLI in this process (its imports are paid once): exit code, stdout, stderr, with
    what native code writes to the file descriptors (a LAPACK message) included."""
    from pipelines.cli.main import main

    code = main([str(a) for a in args])
    out, err = capfd.readouterr()
    return code, out, err


@pytest.mark.parametrize(
    "args, fragment",
    [
        (["recommend", "--model", ".", "--users", "u.csv", "--k", "3", "--output", "o.csv"], "not a model artifact"),
        (["fit", "--interactions", "movielens", "--output", "out"], "cannot be read as a MovieLens 100K"),
        (["compile", "--output", "/proc/no/such/dir/p.yaml"], "cannot write"),
    ],
)
def test_more_failures_are_one_clear_line(tmp_path, monkeypatch, capfd, args, fragment):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "movielens").mkdir()  # a MovieLens 100K layout holding bytes that are not UTF-8
    (tmp_path / "movielens" / "u.data").write_bytes(bytes(range(128, 256)) * 100)
    code, _, err = _main(capfd, *args)
    assert code == 1 and "Traceback" not in err
    last = err.strip().splitlines()[-1]
    assert last.startswith("recsys ") and fragment in last


def test_recommend_errors_on_users_and_output_files_are_one_line(fitted, tmp_path, capfd):
    empty = tmp_path / "empty.csv"
    empty.write_text("")
    users = tmp_path / "users.csv"
    users.write_text("user_id\nu1\n")
    for args, fragment in [
        (["--users", empty, "--output", tmp_path / "o.csv"], "empty file"),
        (["--users", users, "--output", "/proc/no/such/dir/o.csv"], "cannot write"),
    ]:
        code, _, err = _main(capfd, "recommend", "--model", fitted, "--k", 3, *args)
        assert code == 1 and "Traceback" not in err, err
        assert fragment in err.strip().splitlines()[-1]


@pytest.mark.parametrize("rows", [1, 5])
def test_fit_on_a_tiny_file_trains_quietly(tmp_path, capfd, rows):
    """One or five rows used to end in LinAlgError and a LAPACK line on stdout."""
    data = tmp_path / "tiny.csv"
    data.write_text("user_id,item_id,rating,timestamp\n" + "".join(
        f"u{i % 2},i{i},5,{100 + i}\n" for i in range(rows)))
    code, out, err = _main(capfd, "-q", "fit", "--interactions", data, "--output", tmp_path / "model")
    assert code == 0, err[-2000:]
    assert "DPOTRF" not in out + err and "Traceback" not in err
    users = tmp_path / "users.csv"
    users.write_text("user_id\nu0\nnew\n")
    code, _, err = _main(capfd, "recommend", "--model", tmp_path / "model", "--users", users,
                         "--k", 1, "--output", tmp_path / "recs.csv")
    assert code == 0, err[-2000:]
    recs = pd.read_csv(tmp_path / "recs.csv")
    assert recs["score"].map(np.isfinite).all()  # nothing left to recommend: no -inf row


# ------------------------------------------------------------------ fit --output never destroys
def _fit_to(capfd, files, output):
    _, inter, items = files
    code, _, err = _main(capfd, "fit", "--interactions", inter, "--items", items, "--output", output)
    return code, err


def test_fit_refuses_an_output_that_holds_something_else_before_training(
    files, tmp_path, monkeypatch, capfd
):
    root, inter, _ = files
    mine = tmp_path / "mine"
    mine.mkdir()
    (mine / "notes.txt").write_text("keep me")
    a_file = tmp_path / "a-file"
    a_file.write_text("keep me too")
    cases = {
        mine: "not a model artifact",
        a_file: "is a file",
        root: "holds the input",  # the directory the interactions file lives in
        Path("."): "current directory",
    }
    monkeypatch.chdir(tmp_path)
    for output, fragment in cases.items():
        code, err = _fit_to(capfd, files, output)
        assert code == 1, (output, err[-1000:])
        last = err.strip().splitlines()[-1]
        assert fragment in last, (output, last)
        assert "loaded" not in err  # refused before the data was even read
    assert (mine / "notes.txt").read_text() == "keep me" and a_file.read_text() == "keep me too"
    assert inter.exists() and (tmp_path / "mine").is_dir()


def test_fit_replaces_an_earlier_artifact_but_not_one_with_foreign_files(files, fitted, tmp_path, capfd):
    import json
    import shutil

    target = tmp_path / "model"
    shutil.copytree(fitted, target)
    before = json.loads((target / "manifest.json").read_text())["model_version"]
    code, err = _fit_to(capfd, files, target)
    assert code == 0, err[-2000:]
    assert json.loads((target / "manifest.json").read_text())["model_version"] != before
    assert not list(tmp_path.glob(".model.*"))  # no staging or previous copy left behind
    (target / "README.txt").write_text("my notes")
    code, err = _fit_to(capfd, files, target)
    assert code == 1 and "README.txt" in err
    assert (target / "README.txt").read_text() == "my notes"


# ------------------------------------------------------------------ serve: errors before loading
def test_serve_with_nothing_deployed_is_one_line_and_creates_nothing(tmp_path):
    home = tmp_path / "home"
    home.mkdir()
    env = {"RECSYS_HOME": str(home)}
    env_clean = {k: v for k, v in os.environ.items() if k != "MLFLOW_TRACKING_URI"}
    result = subprocess.run([sys.executable, "-m", "pipelines.cli.main", "serve"], capture_output=True,
                            text=True, timeout=120, env={**env_clean, **env, "PYTHONPATH": str(REPO)}, check=False)
    assert result.returncode == 1
    assert result.stderr.strip().splitlines() == [
        f"recsys serve: error: no deployed model under {home}: run `recsys run` first, or pass --model-dir DIR"
    ]
    assert list(home.iterdir()) == []  # no empty MLflow store left behind


@pytest.mark.parametrize("kind", ["file", "unwritable"])
def test_serve_refuses_a_request_log_it_cannot_write_before_loading(fitted, tmp_path, kind):
    target = tmp_path / "log"
    if kind == "file":
        target.write_text("not a directory")
    else:  # a directory under /proc cannot be created, even by root
        target = Path("/proc/no-such-dir/requests")
    result = subprocess.run(
        [sys.executable, "-m", "serving", "--model-dir", str(fitted), "--request-log", str(target),
         "--http-port", "1", "--grpc-port", "2"],
        capture_output=True, text=True, timeout=120, cwd=REPO, check=False)
    assert result.returncode == 1
    assert result.stderr.strip().splitlines()[-1].startswith(f"serving: error: --request-log {target}")
    assert "Traceback" not in result.stderr and "ready" not in result.stderr


def test_bad_k_and_bad_users_file(files, fitted, tmp_path):
    users = tmp_path / "users.csv"
    users.write_text("id\nu1\n")
    result = _recsys("recommend", "--model", fitted, "--users", users, "--k", 3, "--output", tmp_path / "o.csv")
    assert result.returncode == 1 and "missing column user_id" in result.stderr
    users.write_text("user_id\nu1\n")
    result = _recsys("recommend", "--model", fitted, "--users", users, "--k", 0, "--output", tmp_path / "o.csv")
    assert result.returncode == 1 and "--k must be between 1" in result.stderr


COMMANDS = ("run", "compile", "fit", "recommend", "serve", "submit", "schedule", "rollout", "events",
            "monitor", "simulate", "console", "tune")


def test_help_lists_every_command():
    result = _recsys("--help")
    assert result.returncode == 0
    for command in COMMANDS:
        assert command in result.stdout


def _every_help_path(parser, prefix=()):
    """Every (sub)command path of the parser tree, e.g. ("rollout", "promote")."""
    import argparse

    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for name, child in action.choices.items():
                yield (*prefix, name)
                yield from _every_help_path(child, (*prefix, name))


def test_every_subcommand_help_renders(capsys):
    """argparse renders help lazily: a stray '%' in a help string only fails when asked."""
    from pipelines.cli.main import build_parser

    paths = list(_every_help_path(build_parser()))
    assert {p[0] for p in paths} == set(COMMANDS)
    assert ("rollout", "rollback") in paths and ("rollout", "analyze") in paths
    for path in paths:
        with pytest.raises(SystemExit) as exit_info:
            build_parser().parse_args([*path, "--help"])
        assert exit_info.value.code == 0, path
        assert "usage: recsys " + " ".join(path) in capsys.readouterr().out


def test_fit_with_a_column_mapping(files, tmp_path, small_dataset):
    """Columns named otherwise: the error names the mapping to pass, and with it the fit runs."""
    renamed = tmp_path / "ratings.csv"
    small_dataset.interactions.rename(columns={"user_id": "userId", "item_id": "movieId"}).to_csv(
        renamed, index=False)
    refused = _recsys("fit", "--interactions", renamed, "--output", tmp_path / "m")
    assert refused.returncode == 1 and "Traceback" not in refused.stderr
    assert refused.stderr.strip().splitlines()[-1].endswith("pass --columns user=userId,item=movieId")
    quick = tmp_path / "quick.yaml"  # the mapping is the point, not the ranker
    quick.write_text("model: {ranker: {folds: 2, n_estimators: 10}}\n")
    result = _recsys("fit", "--interactions", renamed, "--items", files[2], "--config", quick,
                     "--columns", "user=userId,item=movieId", "--output", tmp_path / "m")
    assert result.returncode == 0, result.stderr[-2000:]
    assert "wrote" in result.stdout and (tmp_path / "m" / "ranker.txt").exists()


def test_fit_on_u_data_as_a_file_suggests_its_directory(tmp_path, capfd):
    (tmp_path / "ml-100k").mkdir()
    (tmp_path / "ml-100k" / "u.data").write_text("196\t242\t3\t881250949\n186\t302\t3\t891717742\n")
    code, _, err = _main(capfd, "fit", "--interactions", tmp_path / "ml-100k" / "u.data",
                         "--output", tmp_path / "m")
    assert code == 1 and "Traceback" not in err
    last = err.strip().splitlines()[-1]
    assert "found: 196\t242\t3\t881250949" in last
    assert f"pass the directory that holds it ({tmp_path / 'ml-100k'})" in last


# ------------------------------------------------------------------ serve: ports and model dir
@pytest.mark.parametrize("busy", ["--http-port", "--grpc-port"])
def test_serve_on_a_port_in_use_is_one_line_before_loading(fitted, tmp_path, busy):
    import socket

    from serving_process import free_port

    with socket.socket() as occupier:  # a real listener holds the port
        occupier.bind(("127.0.0.1", 0))
        occupier.listen(1)
        taken = occupier.getsockname()[1]
        ports = {"--http-port": free_port(), "--grpc-port": free_port(), busy: taken}
        result = _recsys("serve", "--model-dir", fitted, "--no-online-store",
                         *(str(x) for kv in ports.items() for x in kv), cwd=tmp_path)
    assert result.returncode == 1, result.stderr[-2000:]
    assert result.stderr.strip().splitlines() == [
        f"recsys serve: error: {busy} {taken}: cannot listen on 127.0.0.1:{taken}: Address already in use"
    ]
    assert result.stdout == ""


def test_serve_with_a_missing_model_dir_says_so_and_creates_nothing(tmp_path):
    env = {k: v for k, v in os.environ.items() if k not in ("RECSYS_HOME", "RECSYS_ONLINE_STORE")}
    result = subprocess.run(
        [sys.executable, "-m", "pipelines.cli.main", "serve", "--model-dir", str(tmp_path / "nonexistent")],
        check=False, capture_output=True, text=True, cwd=tmp_path, timeout=120,
        env={**env, "PYTHONPATH": str(REPO)})
    assert result.returncode == 1
    assert result.stderr.strip().splitlines() == [
        f"recsys serve: error: --model-dir {tmp_path / 'nonexistent'}: no such directory"]
    assert list(tmp_path.iterdir()) == []  # no ./runs, no feedback store


def test_serve_prints_no_library_deprecation_warning_on_requests(fitted, tmp_path):
    import httpx
    from serving_process import free_port

    http_port = free_port()
    process = subprocess.Popen(
        [sys.executable, "-m", "pipelines.cli.main", "serve", "--model-dir", str(fitted),
         "--no-online-store", "--http-port", str(http_port), "--grpc-port", str(free_port())],
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, cwd=tmp_path,
        env={**os.environ, "PYTHONPATH": str(REPO)})
    try:
        url = f"http://127.0.0.1:{http_port}"
        for _ in range(600):
            try:
                if httpx.get(f"{url}/v2/models/recsys/ready", timeout=2).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            assert process.poll() is None, process.stdout.read()[-2000:]
            time.sleep(0.2)
        answer = httpx.post(f"{url}/v1/models/recsys:predict",
                            json={"instances": [{"user_id": "1", "k": 3}]}, timeout=30)
        assert answer.status_code == 200
    finally:
        process.terminate()
        output = process.communicate(timeout=60)[0]
    assert "POST /v1/models/recsys%3Apredict" in output  # the access log is still there
    assert "Warning" not in output and "deprecated" not in output, output[-3000:]


# ------------------------------------------------------------------ compile: what it writes
def test_compile_never_puts_other_images_into_the_committed_yaml(tmp_path):
    from pipelines.monitoring import COMPILED_PATH as MONITORING_PATH
    from pipelines.pipeline import COMPILED_PATH

    committed = {p: p.read_bytes() for p in (COMPILED_PATH, MONITORING_PATH)}
    refused = _recsys("compile", "--image", "registry.example/recsys-pipeline:9", cwd=tmp_path)
    assert refused.returncode == 1
    assert refused.stderr.strip().splitlines() == [
        ("recsys compile: error: other images would change the committed "
         "pipelines/compiled/*.yaml: pass --output FILE (and --pipeline training or monitoring)")]
    target = tmp_path / "mine.yaml"
    written = _recsys("compile", "--pipeline", "monitoring", "--image", "registry.example/p:9",
                      "--serving-image", "registry.example/s:9", "--output", target, cwd=tmp_path)
    assert written.returncode == 0, written.stderr[-2000:]
    assert written.stdout.strip() == (f"wrote the monitoring pipeline to {target} (images "
                                      "registry.example/p:9 and registry.example/s:9)")
    assert "registry.example/p:9" in target.read_text()
    assert {p: p.read_bytes() for p in committed} == committed  # left as committed
