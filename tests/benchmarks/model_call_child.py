"""One commit's side of bench_model_call_steps.py: a process that imports the project from
the checkout of one commit (PYTHONPATH) and times what the parent asks, so that every commit
runs the same workload in the same environment.

    python model_call_child.py model ARTIFACT_DIR WORKLOAD_JSON
        one-user `recommend(..., history_item_ids=...)` calls on the loaded artifact (its
        ranker compiled where the commit can, as the predictor serves it)
    python model_call_child.py predictor ARTIFACT_DIR WORKLOAD_JSON STORE_URL
        single-user v2 `predict()` of users with fresh likes (stored first, in this commit's
        feedback store at STORE_URL), as the predictor serves them

It answers commands read from stdin, one a line: `time` (one timed pass over the workload),
`profile` (the same pass under cProfile, its top functions by own time) and `quit`. Each
answer is one JSON line on stdout prefixed with `@@ ` (libraries may print other lines).
"""
from __future__ import annotations

import asyncio
import cProfile
import json
import os
import pstats
import sys
import sysconfig
import time
from pathlib import Path

PREFIX = "@@ "
PROFILE_TOP = 5


def _answer(obj: dict) -> None:
    sys.stdout.write(PREFIX + json.dumps(obj) + "\n")
    sys.stdout.flush()


def _checkout() -> Path:
    """The checkout this process imports from: PYTHONPATH's first entry, checked against
    where `components` really came from (not the installed project)."""
    import components

    root = Path(os.environ["PYTHONPATH"].split(os.pathsep)[0]).resolve()
    source = Path(components.__file__).resolve()
    if root not in source.parents:
        raise SystemExit(f"components imported from {source}, not from the checkout {root}")
    return root


def _top(profile: cProfile.Profile, calls: int, root: Path) -> list[dict]:
    """The PROFILE_TOP functions by own time, per workload call, with paths made relative
    to the checkout or to site-packages."""
    stats = (profile if isinstance(profile, pstats.Stats) else pstats.Stats(profile)).stats
    rows = sorted(stats.items(), key=lambda kv: kv[1][2], reverse=True)[:PROFILE_TOP]
    out = []
    stdlib = sysconfig.get_paths()["stdlib"]
    for (file, line, func), (_cc, ncalls, own, cumulative, _callers) in rows:
        where = file
        if "site-packages/" in file:
            where = file.split("site-packages/", 1)[1]
        else:
            for prefix in (str(root), stdlib):
                if file.startswith(prefix + os.sep):
                    where = file[len(prefix) + 1:]
        name = f"{where}:{line}({func})" if line else func
        out.append({"function": name, "calls": ncalls / calls,
                    "own_ms": own / calls * 1e3, "cumulative_ms": cumulative / calls * 1e3})
    return out


def _serve(run_pass, root: Path, calls: int, worker=None) -> None:
    """Answer the parent's commands; `run_pass()` returns (wall seconds per call, answers).
    `worker`, a one-thread executor the pass also runs work on (the predictor's model thread),
    is profiled too: cProfile sees only the threads it is enabled in."""
    for line in sys.stdin:
        command = line.strip()
        if command == "time":
            cpu = time.process_time()
            seconds, answers = run_pass()
            cpu = time.process_time() - cpu
            _answer({"ms": [s * 1e3 for s in seconds], "cpu_ms": cpu / calls * 1e3,
                     "answers": answers})
        elif command == "profile":
            profile, thread = cProfile.Profile(), cProfile.Profile()
            if worker is not None:
                worker.submit(thread.enable).result()
            profile.enable()
            run_pass()
            profile.disable()
            if worker is not None:
                worker.submit(thread.disable).result()
                profile.create_stats()
                thread.create_stats()
                merged = pstats.Stats(profile)
                merged.add(thread)
                profile = merged
            _answer({"top": _top(profile, calls, root)})
        elif command == "quit":
            return
        else:
            _answer({"error": f"unknown command {command!r}"})


def model(artifact: str, workload: dict) -> None:
    from components.models.artifact import load_model

    root = _checkout()
    recommender = load_model(artifact)
    compile_ranker = getattr(recommender, "compile_ranker", None)
    if compile_ranker is not None:  # as the predictor's load() does, from this commit on
        reason = compile_ranker(os.environ.get("RECSYS_COMPILED_RANKER_CACHE"))
        if reason is not None:
            raise SystemExit(f"the ranker did not compile: {reason}")
    users, histories = workload["users"], workload["histories"]
    for user, history in zip(users[:10], histories[:10]):  # warm-up: lazy lookups, caches
        recommender.recommend([user], 10, history_item_ids=[history])

    def run_pass():
        seconds, answers = [], []
        for user, history in zip(users, histories):
            started = time.perf_counter()
            answer = recommender.recommend([user], 10, history_item_ids=[history])
            seconds.append(time.perf_counter() - started)
            answers.append([str(i) for i in answer.item_ids[0]])
        return seconds, answers

    _answer({"ready": True})
    _serve(run_pass, root, len(users))


def predictor(artifact: str, workload: dict, store_url: str) -> None:
    from kserve.protocol.infer_type import InferInput, InferRequest

    from components.feedback.feedback_store import FeedbackStore
    from serving.predictor import RecommenderModel

    root = _checkout()
    with FeedbackStore(store_url) as store:
        store.add_events(workload["events"])
    liked: dict[str, set[str]] = {}
    for event in workload["events"]:
        liked.setdefault(event["user_id"], set()).add(event["item_id"])
    served = RecommenderModel("recsys", artifact, online_store=store_url)
    if not served.load():
        raise SystemExit(f"the predictor did not load: {served.load_error}")
    loop = asyncio.new_event_loop()

    def request(user: str) -> InferRequest:
        return InferRequest(model_name="recsys", request_id=None, infer_inputs=[
            InferInput("user_id", [1], "BYTES", [user]), InferInput("k", [1], "INT32", [10])])

    def items(response) -> list[str]:
        output = next(o for o in response.outputs if o.name == "item_ids")
        return [i.decode() if isinstance(i, bytes) else str(i) for i in output.data]

    # Every user's likes must be in its answer's history before timing starts: the liked items
    # (its top 3 without them) are no longer recommended. This also makes each user's first
    # answer with them, so that the timed requests are repeats.
    deadline = time.monotonic() + 60
    waiting = set(liked)
    while waiting:
        for user in sorted(waiting):
            if not liked[user] & set(items(loop.run_until_complete(served.predict(request(user))))):
                waiting.discard(user)
        if waiting and time.monotonic() > deadline:
            raise SystemExit(f"{len(waiting)} users' likes never reached their answers")
        time.sleep(0.05 if waiting else 0)
    order = workload["order"]

    def run_pass():
        requests = [request(user) for user in order]

        async def go():
            seconds, answers = [], []
            for r in requests:
                started = time.perf_counter()
                response = await served.predict(r)
                seconds.append(time.perf_counter() - started)
                answers.append(items(response))
            return seconds, answers

        return loop.run_until_complete(go())

    _answer({"ready": True})
    try:
        # The model thread of the code before the model-call module (None: not profiled).
        _serve(run_pass, root, len(order), getattr(served, "_executor", None))
    finally:
        served.stop()


if __name__ == "__main__":
    mode, artifact, workload_path = sys.argv[1:4]
    work = json.loads(Path(workload_path).read_text())
    if mode == "model":
        model(artifact, work)
    elif mode == "predictor":
        predictor(artifact, work, sys.argv[4])
    else:
        raise SystemExit(f"unknown mode {mode!r}")
