"""The `recsys` batch CLI from the outside: fit, recommend, and one-line errors."""
from __future__ import annotations

import subprocess
import sys

import pandas as pd
import pytest


def _recsys(*args, cwd=None):
    return subprocess.run(
        [sys.executable, "-m", "pipelines.cli", *map(str, args)],
        check=False, capture_output=True, text=True, cwd=cwd, timeout=300,
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
    assert list(recs.columns) == ["user_id", "item_id", "rank", "score"]
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
        (["recommend", "--model", "nowhere", "--users", "u.csv", "--k", "3", "--output", "o.csv"], "not a model artifact"),
    ],
)
def test_failures_are_one_clear_line(tmp_path, args, fragment):
    result = _recsys(*args, cwd=tmp_path)
    assert result.returncode == 1
    assert "Traceback" not in result.stderr
    last = result.stderr.strip().splitlines()[-1]
    assert last.startswith("recsys ") and fragment in last


def test_bad_k_and_bad_users_file(files, fitted, tmp_path):
    users = tmp_path / "users.csv"
    users.write_text("id\nu1\n")
    result = _recsys("recommend", "--model", fitted, "--users", users, "--k", 3, "--output", tmp_path / "o.csv")
    assert result.returncode == 1 and "missing column user_id" in result.stderr
    users.write_text("user_id\nu1\n")
    result = _recsys("recommend", "--model", fitted, "--users", users, "--k", 0, "--output", tmp_path / "o.csv")
    assert result.returncode == 1 and "--k must be between 1" in result.stderr


COMMANDS = ("run", "compile", "fit", "recommend", "serve", "submit", "schedule", "rollout", "events",
            "monitor", "simulate", "console")


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
    from pipelines.cli import build_parser

    paths = list(_every_help_path(build_parser()))
    assert {p[0] for p in paths} == set(COMMANDS)
    assert ("rollout", "rollback") in paths and ("rollout", "analyze") in paths
    for path in paths:
        with pytest.raises(SystemExit) as exit_info:
            build_parser().parse_args([*path, "--help"])
        assert exit_info.value.code == 0, path
        assert "usage: recsys " + " ".join(path) in capsys.readouterr().out
