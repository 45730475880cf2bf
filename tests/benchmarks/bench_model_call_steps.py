"""What each change of issue #24 bought, in process (`make bench`): the same workload on the
code of each commit, in turn.

Every commit's tree (`git archive`) is unpacked into a temporary directory and imported by its
own child process (`model_call_child.py`, PYTHONPATH to that tree, this virtualenv), which
loads the same artifact, fitted once on all of MovieLens 100K. The children take turns: in each
of ROUNDS rounds every commit runs one pass of the workload (the order rotated from round to
round), so that the machine's load falls on all of them alike. Reported per commit: the medians
over rounds of each pass's p50, p99 and CPU time per call (the child's, all its threads), and
the medians of the per-round ratios to the step before and to the state before the changes;
plus a cProfile top-5 (own time) of the before and after states.

- The model call for a changed history (item 2): 200 single-user `recommend(...,
  history_item_ids=...)` calls, each a training user's history plus 3 items it has not seen
  (the workload of bench_model_call.py), on the commits of STEPS.
- The answer cache over fresh histories (item 1): single-user v2 `predict()` of 100 users
  whose 3 fresh likes are in the predictor's online history (SQLite), each user's first
  answer with them already made, so every timed request is a repeat with nothing new since:
  a model call before, a lookup after.

RECSYS_BENCH_ROUNDS sets the rounds (default 5); RECSYS_BENCH_BUSY=N keeps N more processes
spinning on the CPU while it measures (default 0): the same comparison on a loaded machine.
They report; they do not gate. The answers are compared with the before state's.
"""
from __future__ import annotations

import json
import os
import random
import subprocess
import sys
import tarfile
from pathlib import Path

import numpy as np
import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent))

from bench_model_call import CALLS, changed_histories

from components.models.artifact import load_model

pytestmark = pytest.mark.bench
REPO = Path(__file__).resolve().parents[2]
CHILD = Path(__file__).with_name("model_call_child.py")
ROUNDS = int(os.environ.get("RECSYS_BENCH_ROUNDS", "5"))
# Processes that keep a core busy during the measurement (the predictor shares its cores with
# the events service, Redis and other work): 0 measures a quiet machine, 2 a loaded 2-core one.
BUSY = int(os.environ.get("RECSYS_BENCH_BUSY", "0"))
FRESH_USERS = 100
PREDICT_PASSES = 2  # each timed pass asks for every fresh user this many times

BEFORE = "9a47023"  # the parent of both fa445f5 (the first item-2 change) and e7fd350 (item 1)
STEPS = [  # item 2, oldest first, then the code the benchmark runs from
    (BEFORE, "before"),
    ("fa445f5", "ALS user step: float64 factors kept from load, one Cholesky solve"),
    ("ec6fced", "ranker on one LightGBM thread for small candidate sets"),
    ("3985183", "one-user recommend on [n_items] rows"),
    ("72f22fd", "ALS scores a few users without BLAS"),
    ("5569a8c", "one-user features from the history's item indices"),
    ("9281571", "refactor (no change in behaviour)"),
    ("c24d169", "EASE scores one user by summing weight rows"),
    ("162e14a", "top-N of a 1-D row without take_along_axis"),
    ("4bc240d", "the ranker's trees compiled (lleaves), as the predictor loads them"),
    ("bc359ad", "one-user features on the generators' rows stacked"),
    ("a40c0ed", "generators score one user from its item indices"),
    ("HEAD", "HEAD (the code this benchmark runs from)"),
]
CACHE_STEPS = [
    (BEFORE, "before: a repeat of a fresh user is a model call"),
    ("e7fd350", "answer cache over fresh histories: a lookup"),
    ("HEAD", "HEAD (the code this benchmark runs from)"),
]


# ------------------------------------------------------------------------------ harness
def _resolve(commit: str) -> str:
    try:
        return subprocess.run(["git", "rev-parse", "--verify", "--quiet", commit + "^{commit}"],
                              cwd=REPO, capture_output=True, text=True, check=True).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        pytest.skip(f"commit {commit} is not in this repository's history (a shallow clone, or "
                    "not a git checkout)")


def _unpack(commit: str, into: Path) -> Path:
    """The commit's tree, from `git archive` (no worktree registered, nothing to remove)."""
    into.mkdir(parents=True)
    archive = subprocess.Popen(["git", "archive", "--format=tar", commit], cwd=REPO,
                               stdout=subprocess.PIPE)
    with tarfile.open(fileobj=archive.stdout, mode="r|") as tar:
        tar.extractall(into, filter="data")
    assert archive.wait() == 0, f"git archive {commit} failed"
    return into


class Child:
    """One commit's child process, started and left waiting for commands."""

    def __init__(self, tree: Path, args: list[str], log: Path):
        env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
        env["PYTHONPATH"] = str(tree)
        self.log = log
        with log.open("wb") as err:
            self.process = subprocess.Popen([sys.executable, str(CHILD), *args], cwd=tree,
                                            env=env, stdin=subprocess.PIPE,
                                            stdout=subprocess.PIPE, stderr=err, text=True)

    def read(self) -> dict:
        for line in self.process.stdout:
            if line.startswith("@@ "):
                answer = json.loads(line[3:])
                assert "error" not in answer, answer["error"]
                return answer
        raise RuntimeError(f"child exited ({self.process.wait()}):\n{self.log.read_text()[-3000:]}")

    def ask(self, command: str) -> dict:
        self.process.stdin.write(command + "\n")
        self.process.stdin.flush()
        return self.read()

    def stop(self) -> None:
        if self.process.poll() is None:
            try:
                self.process.stdin.write("quit\n")
                self.process.stdin.close()
                self.process.wait(30)
            except (OSError, subprocess.TimeoutExpired):
                self.process.kill()
                self.process.wait()


def _loadavg() -> float:
    return float(Path("/proc/loadavg").read_text().split()[0])


def _run_steps(steps, tmp_path: Path, args_of) -> tuple[list[dict], dict, list[float]]:
    """Start one child per commit, interleave ROUNDS timed passes, profile the first and the
    last non-HEAD commits; per commit: rounds of (p50, p99, CPU ms per call), first answers."""
    commits = [(_resolve(c), c, label) for c, label in steps]
    children, busy = [], []
    try:
        for i, (sha, name, _) in enumerate(commits):
            tree = _unpack(sha, tmp_path / f"tree-{i}-{name}")
            children.append(Child(tree, args_of(i, tree), tmp_path / f"child-{i}.log"))
        for child in children:
            assert child.read()["ready"]
        busy = [subprocess.Popen([sys.executable, "-c", "while True: pass"]) for _ in range(BUSY)]
        rounds = [[] for _ in commits]
        answers = [None] * len(commits)
        loads = [_loadavg()]
        for r in range(ROUNDS):
            shift = r % len(commits)
            for i in list(range(shift, len(commits))) + list(range(shift)):
                result = children[i].ask("time")
                ms = np.asarray(result["ms"])
                rounds[i].append((np.percentile(ms, 50), np.percentile(ms, 99), result["cpu_ms"]))
                if answers[i] is None:
                    answers[i] = result["answers"]
            loads.append(_loadavg())
        profiles = {j: children[j].ask("profile")["top"] for j in (0, len(commits) - 2)}
    finally:
        for process in busy:
            process.kill()
            process.wait()
        for child in children:
            child.stop()
    results = [{"commit": name, "label": label, "rounds": np.asarray(rounds[i]),
                "answers": answers[i]} for i, (_, name, label) in enumerate(commits)]
    return results, profiles, loads


def _table(results: list[dict], what: str) -> None:
    """Medians over rounds, and the medians of the per-round ratios (a ratio of two passes of
    the same round, run next to each other)."""
    before = results[0]["rounds"]
    print(f"\n{what}: medians of {ROUNDS} rounds; (x previous step, x before), ratios per round")
    print("| commit | change | p50 ms | p99 ms | CPU ms per call |")
    print("| --- | --- | --- | --- | --- |")
    for i, row in enumerate(results):
        now = row["rounds"]
        previous = results[i - 1]["rounds"] if i else now
        cells = []
        for col in range(3):
            value = np.median(now[:, col])
            if i == 0:
                cells.append(f"{value:.2f}")
                continue
            to_previous = np.median(now[:, col] / previous[:, col])
            to_before = np.median(now[:, col] / before[:, col])
            cells.append(f"{value:.2f} ({to_previous:.2f}x, {to_before:.2f}x)")
        print(f"| {row['commit']} | {row['label']} | " + " | ".join(cells) + " |")


def _print_profile(top: list[dict], title: str) -> None:
    print(f"\ncProfile, {title}: top {len(top)} by own time, per call")
    print(f"{'own ms':>7} {'cum ms':>7} {'calls':>6}  function")
    for row in top:
        print(f"{row['own_ms']:7.3f} {row['cumulative_ms']:7.3f} {row['calls']:6.1f}  "
              f"{row['function']}")


def _same_answers(results: list[dict]) -> list[float]:
    """Per commit, the share of calls whose top-10 lists are those of the before state."""
    first = results[0]["answers"]
    return [float(np.mean([a == b for a, b in zip(first, row["answers"])])) for row in results]


def _report(results: list[dict], profiles: dict, title: str) -> None:
    """The table, how many answers equal the before state's, and the profiles of the before
    state and of the last step (the row before HEAD)."""
    _table(results, title)
    same = _same_answers(results)
    print("answers identical to the before state's: "
          + ", ".join(f"{r['commit']} {s:.0%}" for r, s in zip(results, same)))
    _print_profile(profiles[0], f"before ({results[0]['commit']})")
    _print_profile(profiles[len(results) - 2], f"after ({results[-2]['commit']})")


# ------------------------------------------------------------------------------ benchmarks
def test_what_each_model_call_change_bought(ml100k_fitted, tmp_path):
    artifact = ml100k_fitted[1]
    users, histories = changed_histories(load_model(artifact), CALLS)
    workload = tmp_path / "workload.json"
    workload.write_text(json.dumps({"users": users, "histories": histories}))
    results, profiles, loads = _run_steps(
        STEPS, tmp_path, lambda i, tree: ["model", str(artifact), str(workload)])
    print(f"\nsingle-user recommend, changed history (+3 items), {CALLS} calls a pass, "
          f"ML-100K, {BUSY} busy processes; load average {min(loads):.1f}-{max(loads):.1f}")
    _report(results, profiles, "one-user model call")
    for row in results:
        assert row["rounds"].shape == (ROUNDS, 3)
        assert len(row["answers"]) == CALLS and all(len(a) == 10 for a in row["answers"])


def test_what_the_answer_cache_bought(ml100k_fitted, tmp_path):
    artifact = ml100k_fitted[1]
    model = load_model(artifact)
    rng = random.Random(11)
    fresh = rng.sample(sorted(map(str, model.data_.user_ids)), FRESH_USERS)
    top = model.recommend(fresh, 3)
    events = [{"event_id": f"like-{u}-{i}", "type": "like", "user_id": u, "item_id": str(item)}
              for u, row in zip(fresh, top.item_ids) for i, item in enumerate(row)]
    order = [u for _ in range(PREDICT_PASSES) for u in rng.sample(fresh, len(fresh))]
    workload = tmp_path / "workload.json"
    workload.write_text(json.dumps({"events": events, "order": order}))
    results, profiles, loads = _run_steps(
        CACHE_STEPS, tmp_path, lambda i, tree: ["predictor", str(artifact), str(workload),
                                                f"sqlite:///{tmp_path / f'feedback-{i}.db'}"])
    print(f"\npredictor.predict, single-user v2, a repeat request of a user with 3 fresh likes "
          f"(SQLite history, impressions stored), {len(order)} requests a pass over "
          f"{FRESH_USERS} users, ML-100K, {BUSY} busy processes; load average "
          f"{min(loads):.1f}-{max(loads):.1f}")
    _report(results, profiles, "repeat request of a user with fresh feedback")
    for row in results:
        assert len(row["answers"]) == len(order)
        liked = {(e["user_id"], e["item_id"]) for e in events}
        assert not any((u, i) in liked for u, a in zip(order, row["answers"]) for i in a)
