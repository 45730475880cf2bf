"""`recsys simulate`: the closed loop on this machine, with simulated users and real services.

1. Trains two models on the past of the default data's temporal split (cached under the
   simulation's home): popularity alone and EASE, better offline. `--scenario better` makes
   EASE the challenger of popularity, `worse` the reverse, `same` an A/A test.
2. Registers both in a fresh MLflow store under `<home>/simulation` (the run home's own
   registry and store are not touched), with the `champion` and `challenger` aliases, and
   deploys them locally: the deployment record splits users by a hash of their id.
3. Starts the events service (`recsys events serve`) and the model server (`recsys serve`,
   which follows the record and writes each answer's impressions to the store).
4. Replays simulated users: each replays a real user (drawn with replacement) with that user's
   past as `history_item_ids`, and clicks what the real user went on to rate (the held-out
   future) through a position-bias click model (`components.experiments.simulation.ClickModel`); clicks,
   likes (ratings of 4 and more) and ratings go through `POST /v1/events`, items clicked are
   excluded from the user's later answers.
5. Every `--analyze-every` sessions runs `recsys rollout analyze --auto` (in process) and prints
   a line of the decision trail; after a decision it keeps serving a few rounds to show where
   the traffic went, then stops the services.
"""
from __future__ import annotations

import argparse
import json
import logging
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np

from components.errors import RecsysError
from serving.events import DEFAULT_PORT as EVENTS_PORT

log = logging.getLogger("recsys.simulate")

SCENARIOS = {"better": ("popularity", "ease"), "worse": ("ease", "popularity"),
             "same": ("ease", "ease")}
MODEL_CONFIGS = {
    "popularity": {"ease": {"enabled": False}, "seq_ease": {"enabled": False},
                   "als": {"enabled": False}, "content": {"enabled": False},
                   "ranker": {"enabled": False}},
    "ease": {"seq_ease": {"enabled": False}, "als": {"enabled": False},
             "content": {"enabled": False}, "ranker": {"enabled": False}},
}
BATCH = 20  # sessions per request to the model server
SESSIONS, TRAFFIC_SESSIONS = 60_000, 2_000


def register(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser(
        "simulate", help="the closed loop locally: simulated users, real services, decisions",
        description=__doc__.split("\n\n")[0] + " Serves a champion and a challenger, replays "
        "simulated users whose clicks come from their real future on the default data, posts "
        "every event through the events API, runs the analysis periodically and prints the "
        "decision trail. With --traffic, only the traffic, into the run home's own model "
        "server and events service (see --traffic).")
    p.add_argument("--scenario", choices=sorted(SCENARIOS), default="better",
                   help="better: a challenger better offline; worse: a worse one; same: A/A "
                   "(default: %(default)s)")
    p.add_argument("--home", type=Path, default=None,
                   help="run home; the simulation works in HOME/simulation, --traffic in HOME "
                   "itself (default: $RECSYS_HOME or ./runs)")
    p.add_argument("--users", type=int, default=4_000,
                   help="simulated users, each replaying one real user (default: %(default)s)")
    p.add_argument("--sessions", type=int, default=None,
                   help=f"at most this many sessions (default: {SESSIONS:,}; with --traffic "
                   f"{TRAFFIC_SESSIONS:,})")
    p.add_argument("--analyze-every", type=int, default=2_000, metavar="N",
                   help="run the analysis every N sessions (default: %(default)s)")
    p.add_argument("--challenger-percent", type=float, default=50.0,
                   help="share of users on the challenger (default: %(default)s)")
    p.add_argument("--interleave-percent", type=float, default=0.0,
                   help="share of users with interleaved answers (default: %(default)s)")
    p.add_argument("--method", choices=("ab", "interleaving"), default=None,
                   help="decide by A/B or by interleaving (default: interleaving when "
                   "--interleave-percent is 100, else A/B)")
    p.add_argument("--min-detectable-effect", type=float, default=0.2,
                   help="relative CTR lift the power analysis is sized for (default: %(default)s)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--traffic", action="store_true",
                   help="traffic only, into the run home itself (not HOME/simulation): the "
                   "simulated users are the real users of the data the home's model trained on "
                   "(its training_source.json), asking the predictor the home's deployment "
                   "record names and posting their clicks, likes and ratings to an events "
                   "service on the home's feedback store; either is started (and stopped at the "
                   "end) when none answers. No second model, no analysis, no decision: "
                   "afterwards `recsys monitor` has a window to test and the console has "
                   "requests, impressions and events to show")
    p.add_argument("--events-url", default=f"http://127.0.0.1:{EVENTS_PORT}",
                   help="--traffic: the events service to use if one answers there (it must "
                   "write to the home's feedback store, as `recsys events serve` run for this "
                   "home does); else one is started on its port when free (else any free port) "
                   "(default: %(default)s)")
    p.add_argument("--http-port", type=int, default=8080,
                   help="--traffic: the port of the model server it starts, when free (else "
                   "any free port) (default: %(default)s)")
    p.add_argument("-v", "--verbose", action="store_true",
                   help="also print the libraries' logs (one line per HTTP request, MLflow's "
                   "download progress bars); the services' logs are always in HOME/simulation/logs")
    p.set_defaults(func=cmd_simulate)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _recsys() -> str:
    return str(Path(sys.executable).parent / "recsys")


def _start(command: list[str], log_path: Path, env: dict[str, str], ready_url: str,
           what: str, timeout: float = 180.0) -> subprocess.Popen:
    import httpx

    with log_path.open("ab") as out:
        process = subprocess.Popen(command, stdout=out, stderr=subprocess.STDOUT, env=env,
                                   start_new_session=True)
    deadline = time.monotonic() + timeout
    while True:
        try:
            if httpx.get(ready_url, timeout=2).status_code == 200:
                return process
        except httpx.HTTPError:
            pass
        if process.poll() is not None or time.monotonic() > deadline:
            _stop(process)
            tail = log_path.read_text(errors="replace")[-2000:]
            raise RecsysError(f"the {what} did not start (log {log_path}):\n{tail}")
        time.sleep(0.3)


def _stop(process: subprocess.Popen) -> None:
    if process.poll() is None:
        process.send_signal(signal.SIGTERM)
        try:
            process.wait(30)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(10)


def _models(cache: Path, data: Any, split: Any) -> dict[str, Path]:
    """Both models trained on the split's past, cached by the data's fingerprint."""
    from components.config import config_from_dict
    from components.models.artifact import save_model
    from components.models.two_stage import TwoStageRecommender

    paths = {}
    for name, model_config in MODEL_CONFIGS.items():
        path = cache / f"{name}-{data.fingerprint[:12]}"
        if not (path / "manifest.json").exists():
            print(f"training {name} on {len(split.train):,} past interactions...", flush=True)
            model = TwoStageRecommender(config_from_dict({"model": model_config}).model).fit(
                split.train, data.items, progress=lambda _: None)
            if path.exists():
                shutil.rmtree(path)
            save_model(model, path, data_fingerprint=data.fingerprint)
        paths[name] = path
    return paths


def _offline_results(cache: Path, models: dict[str, Path], split: Any) -> dict[str, dict]:
    """Each model's offline metrics on the split's held-out future (`evaluate_model`, as the
    pipeline's evaluate step computes them), cached beside the models."""
    from components.evaluation.offline_eval import evaluate_model
    from components.models.artifact import load_model

    out = {}
    for name, directory in models.items():
        path = cache / f"{directory.name}-offline.json"
        if not path.exists():
            print(f"evaluating {name} on {split.test['user_id'].nunique():,} held-out users...",
                  flush=True)
            path.write_text(json.dumps(evaluate_model(load_model(directory), split.test)))
        out[name] = json.loads(path.read_text())
    return out


def _register(home: Path, champion: Path, challenger: Path,
              results: tuple[dict, dict] | None = None, source: str = "movielens-dslabs") -> str:
    """A fresh registry with version 1 (champion) and 2 (challenger), each with its offline
    metrics (for the console's Models page) and data identity; its tracking URI."""
    from mlflow import MlflowClient
    from mlflow.entities import Metric

    from components.data.data_identity import model_identity
    from components.release.registry import logged_metrics

    uri = f"sqlite:///{home / 'mlflow.db'}"
    client = MlflowClient(tracking_uri=uri)
    experiment = client.create_experiment("recsys", artifact_location=(home / "mlartifacts").as_uri())
    client.create_registered_model("recsys")
    for directory, offline in zip((champion, challenger), results or (None, None)):
        run = client.create_run(experiment, run_name=f"simulation-{directory.name}")
        if offline:
            now = int(time.time() * 1000)
            client.log_batch(run.info.run_id, metrics=[
                Metric(k, v, now, 0) for k, v in logged_metrics(offline).items()])
        client.log_artifacts(run.info.run_id, str(directory), artifact_path="model")
        client.set_terminated(run.info.run_id)
        client.create_model_version("recsys", f"{run.info.artifact_uri}/model", run_id=run.info.run_id,
                                    tags=model_identity(source, directory).tags())
    client.set_registered_model_alias("recsys", "champion", "1")
    client.set_registered_model_alias("recsys", "challenger", "2")
    return uri


class SimulatedUsers:
    """Who visits, what they were shown before, what they clicked; their real past and future."""

    def __init__(self, train: Any, future: Any, items: np.ndarray, population: int, seed: int):
        from components.experiments.simulation import UserFutures

        self.futures = UserFutures.from_interactions(future, items)
        self.rng = np.random.default_rng(seed)
        self.real = self.rng.integers(0, len(self.futures.user_ids), population)
        past = train.assign(user_id=train["user_id"].astype(str), item_id=train["item_id"].astype(str))
        by_user = past.groupby("user_id")["item_id"].agg(list)
        self.history = [by_user.get(u, []) for u in self.futures.user_ids]
        self.ratings = self.futures.ratings.tocsr()
        self.clicked: list[list[str]] = [[] for _ in range(population)]

    def user_id(self, index: int) -> str:
        return f"sim-{index}"

    def rating(self, index: int, item: str) -> float:
        column = self.futures.item_index(np.asarray([item]))[0]
        return float(self.ratings[self.real[index], column]) if column >= 0 else 0.0


def _session_events(users: SimulatedUsers, indices: list[int], answer: dict, click_model: Any,
                    rng: np.random.Generator, serial: int) -> list[dict]:
    """The clicks, likes and ratings of one answered request, as events for the events API."""
    events = []
    request_id = answer["id"]
    for row, (index, prediction) in enumerate(zip(indices, answer["predictions"])):
        items = prediction["item_ids"]
        ratings = np.asarray([users.rating(index, item) for item in items])
        clicks = rng.random(len(items)) < click_model.click_probability(ratings[None, :])[0]
        for position in np.flatnonzero(clicks):
            item = items[position]
            base = {"user_id": users.user_id(index), "item_id": item, "request_id": request_id,
                    # per row while a challenger serves; the answer's own once one model does
                    "model_version": prediction.get("model_version", answer["model_version"]),
                    "position": int(position)}
            stem = f"{serial}-{row}-{position}"
            events.append({**base, "event_id": f"{stem}-click", "type": "click"})
            users.clicked[index].append(item)
            if ratings[position] > 0:
                events.append({**base, "event_id": f"{stem}-rating", "type": "rating",
                               "value": float(ratings[position])})
                if ratings[position] >= click_model.like_threshold:
                    events.append({**base, "event_id": f"{stem}-like", "type": "like"})
    return events


def cmd_simulate(args: argparse.Namespace) -> int:
    import os

    from components.config import SplitConfig
    from components.data.ingest import load_dataset
    from components.data.split import split_interactions
    from components.experiments.simulation import ClickModel
    from components.feedback.feedback_store import default_store_url
    from components.release.deploy import deploy_local
    from components.release.registry import default_home
    from pipelines.cli.rollout_analyze import run_analysis

    if args.traffic:
        return cmd_traffic(args)
    if args.sessions is None:
        args.sessions = SESSIONS
    if not 0 <= args.challenger_percent + args.interleave_percent <= 100:
        raise RecsysError("--challenger-percent and --interleave-percent must add up to 100 at most")
    if args.users < 10 or args.sessions < args.analyze_every or args.analyze_every < BATCH:
        raise RecsysError(f"need --users >= 10 and --sessions >= --analyze-every >= {BATCH}")
    root = (args.home or default_home()).resolve()
    home = root / "simulation"
    for stale in ("mlflow.db", "mlartifacts", "feedback.db", "feedback.db-wal", "feedback.db-shm",
                  "deployment.json", "served", "logs"):
        target = home / stale
        if target.is_dir():
            shutil.rmtree(target)
        elif target.exists():
            target.unlink()
    (home / "logs").mkdir(parents=True)
    data = load_dataset("movielens-dslabs")
    split = split_interactions(data.interactions, SplitConfig())
    models = _models(root / "simulation-models", data, split)
    champion_name, challenger_name = SCENARIOS[args.scenario]
    print(f"scenario {args.scenario}: champion {champion_name} vs challenger {challenger_name}, "
          f"{args.challenger_percent:g}% of users on the challenger, {args.interleave_percent:g}% "
          f"interleaved; the simulation's home is {home}", flush=True)
    offline = _offline_results(root / "simulation-models", models, split)
    uri = _register(home, models[champion_name], models[challenger_name],
                    (offline[champion_name], offline[challenger_name]))
    record = deploy_local(tracking_uri=uri, model_name="recsys", home=home,
                          challenger_percent=args.challenger_percent,
                          interleave_percent=args.interleave_percent)
    method = args.method or ("interleaving" if args.interleave_percent >= 100 else "ab")
    config_path = home / "experiment.yaml"
    config_path.write_text(f"experiment:\n  method: {method}\n  min_detectable_effect: "
                           f"{args.min_detectable_effect}\n")
    env = {**os.environ, "RECSYS_HOME": str(home)}
    env.pop("MLFLOW_TRACKING_URI", None)
    env.pop("RECSYS_FEEDBACK_STORE", None)
    store = default_store_url(home)
    events_port, http_port = _free_port(), _free_port()
    events_url, model_url = f"http://127.0.0.1:{events_port}", f"http://127.0.0.1:{http_port}"
    processes = []
    try:
        processes.append(_start(
            [_recsys(), "events", "serve", "--store", store, "--port", str(events_port)],
            home / "logs" / "events.log", env, f"{events_url}/healthz", "events service"))
        processes.append(_start(
            [_recsys(), "serve", "--http-port", str(http_port), "--grpc-port", str(_free_port())],
            home / "logs" / "serve.log", env, f"{model_url}/v2/models/recsys/ready", "model server"))
        print(f"events service {events_url}, model server {model_url} (logs in {home / 'logs'})",
              flush=True)
        users = SimulatedUsers(split.train, split.test, data.items["item_id"].astype(str).to_numpy(),
                               args.users, args.seed)
        trail = _replay(args, users, ClickModel(), home, config_path, model_url, events_url,
                        record, run_analysis)
    finally:
        for process in reversed(processes):
            _stop(process)
    print()
    print(json.dumps(trail[-1], indent=None) if trail else "no analysis ran")
    return 0


def _replay(args, users, click_model, home, config_path, model_url, events_url, record,
            run_analysis) -> list[dict]:
    import httpx

    rng = np.random.default_rng(args.seed + 1)
    analyze_args = argparse.Namespace(
        config=config_path, method=None, home=home, target="local", champion_version=None,
        challenger_version=None, auto=True, tracking_uri="", store=None, since=None,
        metrics_url=f"{model_url}/metrics", model_name="recsys", name="recsys",
        namespace="recsys", prometheus="", json=False)
    versions = {record["model_version"]: "champion", record["challenger"]["model_version"]: "challenger"}
    trail: list[dict] = []
    decided_at = None
    started = time.monotonic()
    print(f"{'sessions':>8}  {'impressions':>11}  {'champion CTR':>12}  {'challenger CTR':>14}  "
          f"{'p-value':>8}  decision", flush=True)
    with httpx.Client(timeout=60) as client:
        for serial, start in enumerate(range(0, args.sessions, BATCH)):
            indices = rng.integers(0, len(users.real), BATCH).tolist()
            instances = [{"user_id": users.user_id(i), "k": 10,
                          "history_item_ids": users.history[users.real[i]],
                          "exclude_item_ids": users.clicked[i]} for i in indices]
            response = client.post(f"{model_url}/v1/models/recsys:predict",
                                   json={"instances": instances},
                                   headers={"x-request-id": f"sim-{args.seed}-{serial}"})
            if response.status_code != 200:
                raise RecsysError(f"the model server answered {response.status_code}: {response.text[:300]}")
            answer = {**response.json(), "id": f"sim-{args.seed}-{serial}"}
            events = _session_events(users, indices, answer, click_model, rng, serial)
            if events:
                posted = client.post(f"{events_url}/v1/events", json=events)
                if posted.status_code != 200:
                    raise RecsysError(f"the events service answered {posted.status_code}: "
                                      f"{posted.text[:300]}")
            sessions = start + BATCH
            if sessions % args.analyze_every:
                continue
            if decided_at is not None:
                if sessions >= decided_at + 2 * args.analyze_every:
                    served = {p.get("model_version", answer["model_version"])
                              for p in answer["predictions"]}
                    print(f"{sessions:>8,}  since the decision, answers come from: "
                          + ", ".join(f"version {v} (the {versions.get(v, 'new')} model)"
                                      for v in sorted(served)), flush=True)
                    break
                continue
            outcome = run_analysis(analyze_args)
            trail.append(_trail_line(sessions, outcome, versions, time.monotonic() - started))
            if outcome.analysis.decision.action != "continue":
                decided_at = sessions
                for action in outcome.actions:
                    print(f"{'':>8}  done: {action}", flush=True)
    return trail


def _trail_line(sessions: int, outcome: Any, versions: dict[str, str], seconds: float) -> dict:
    analysis = outcome.analysis
    ctr = {role: analysis.metrics.get(version, {}).get("ctr") for version, role in versions.items()}
    test = analysis.test
    p_value = test["p_value"] if isinstance(test, dict) else getattr(test, "p_value", None)
    line = {"sessions": sessions, "impressions": analysis.impressions,
            "champion_ctr": ctr.get("champion"), "challenger_ctr": ctr.get("challenger"),
            "p_value": p_value, "decision": analysis.decision.action,
            "basis": analysis.decision.basis, "reason": analysis.decision.reasons[0],
            "seconds": round(seconds, 1)}

    def number(value: float | None, digits: int) -> str:
        return "-" if value is None else f"{value:.{digits}f}"

    print(f"{sessions:>8,}  {analysis.impressions:>11,}  {number(line['champion_ctr'], 4):>12}  "
          f"{number(line['challenger_ctr'], 4):>14}  {number(p_value, 4):>8}  "
          f"{analysis.decision.action} ({analysis.decision.basis})", flush=True)
    if analysis.decision.action != "continue":
        print(f"{'':>8}  why: {analysis.decision.reasons[0]}", flush=True)
    return line


# ------------------------------------------------------------------ --traffic: the home itself
def _answers(url: str) -> dict | None:
    """The JSON body of a 200 answer at `url`, else None."""
    import httpx

    try:
        response = httpx.get(url, timeout=2)
    except httpx.HTTPError:
        return None
    if response.status_code != 200:
        return None
    try:
        return response.json()
    except ValueError:
        return {}


def _port(preferred: int) -> int:
    """`preferred` when it is free, else any free port."""
    with socket.socket() as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            s.bind(("127.0.0.1", preferred))
            return preferred
        except OSError:
            return _free_port()


def _traffic_data(home: Path) -> tuple[Any, Any]:
    """The data the home's model trained on (as `recsys run` recorded it) and its split."""
    import yaml

    from components.config import config_from_dict
    from components.data.ingest import load_dataset
    from components.data.split import split_interactions
    from pipelines.cli.monitor import SOURCE_RECORD

    record = home / SOURCE_RECORD
    source = json.loads(record.read_text()) if record.is_file() else {}
    name = source.get("data") or "movielens-dslabs"
    sizes = {k: source[k] for k in ("synthetic_users", "synthetic_items",
                                    "synthetic_interactions", "seed") if k in source}
    data = load_dataset(name, source.get("items") or None, **sizes)
    config = config_from_dict(yaml.safe_load(source.get("config_yaml") or "") or {})
    return data, split_interactions(data.interactions, config.split)


class RealUsers(SimulatedUsers):
    """Simulated users who are the data's own users: the model knows them by their ids. They
    visit in proportion to their held-out interactions, as the drift references assume (each
    held-out interaction stands for a request by its user)."""

    def __init__(self, train: Any, future: Any, items: np.ndarray, population: int, seed: int):
        super().__init__(train, future, items, population, seed)
        activity = np.diff(self.futures.ratings.tocsr().indptr).astype(float)
        self.real = self.rng.choice(len(activity), population, p=activity / activity.sum())

    def user_id(self, index: int) -> str:
        return str(self.futures.user_ids[self.real[index]])


def cmd_traffic(args: argparse.Namespace) -> int:
    """Requests and feedback into the run home's own serving stack (see --traffic)."""
    import os

    import httpx

    from components.experiments.simulation import ClickModel
    from components.feedback.feedback_store import default_store_url, display_url
    from components.release.deploy import resolve_deployment
    from components.release.registry import default_home

    sessions = TRAFFIC_SESSIONS if args.sessions is None else args.sessions
    if args.users < 10 or sessions < BATCH:
        raise RecsysError(f"need --users >= 10 and --sessions >= {BATCH}")
    home = (args.home or default_home()).resolve()
    record = resolve_deployment(home)  # one line when nothing was deployed
    data, split = _traffic_data(home)
    model_name = record["model_name"]
    env = {**os.environ, "RECSYS_HOME": str(home)}
    env.pop("MLFLOW_TRACKING_URI", None)
    (home / "logs").mkdir(parents=True, exist_ok=True)
    processes = []
    try:
        model_url = (record.get("predictor") or {}).get("url")
        if not model_url or _answers(f"{model_url}/v2/models/{model_name}/ready") is None:
            http_port = _port(args.http_port)
            model_url = f"http://127.0.0.1:{http_port}"
            processes.append(_start(
                [_recsys(), "serve", "--home", str(home), "--http-port", str(http_port),
                 "--grpc-port", str(_port(args.http_port + 1))],
                home / "logs" / "traffic-serve.log", env,
                f"{model_url}/v2/models/{model_name}/ready", "model server"))
            print(f"started the model server at {model_url} (log {home / 'logs' / 'traffic-serve.log'})",
                  flush=True)
        else:
            print(f"model server: the running one at {model_url}", flush=True)
        store = default_store_url(home)
        events_url = args.events_url.rstrip("/")
        if _answers(f"{events_url}/healthz") is None:
            from urllib.parse import urlparse

            port = _port(urlparse(events_url).port or EVENTS_PORT)
            events_url = f"http://127.0.0.1:{port}"
            processes.append(_start(
                [_recsys(), "events", "serve", "--store", store, "--port", str(port)],
                home / "logs" / "traffic-events.log", env, f"{events_url}/healthz",
                "events service"))
            print(f"started the events service at {events_url} on {display_url(store)}", flush=True)
        else:
            print(f"events service: the running one at {events_url}", flush=True)
        users = RealUsers(split.train, split.test, data.items["item_id"].astype(str).to_numpy(),
                          args.users, args.seed)
        click_model, rng = ClickModel(), np.random.default_rng(args.seed + 1)
        counts: dict[str, int] = {}
        started, wall = time.monotonic(), time.time()
        with httpx.Client(timeout=60) as client:
            for serial in range(-(-sessions // BATCH)):
                indices = rng.integers(0, len(users.real), BATCH).tolist()
                request_id = f"traffic-{args.seed}-{int(started)}-{serial}"
                instances = [{"user_id": users.user_id(i), "k": 10,
                              "exclude_item_ids": users.clicked[i]} for i in indices]
                response = client.post(f"{model_url}/v1/models/{model_name}:predict",
                                       json={"instances": instances},
                                       headers={"x-request-id": request_id})
                if response.status_code != 200:
                    raise RecsysError(f"the model server answered {response.status_code}: "
                                      f"{response.text[:300]}")
                answer = {**response.json(), "id": request_id}
                events = _session_events(users, indices, answer, click_model, rng,
                                         f"{int(started)}-{serial}")
                if events:
                    posted = client.post(f"{events_url}/v1/events", json=events)
                    if posted.status_code != 200:
                        raise RecsysError(f"the events service answered {posted.status_code}: "
                                          f"{posted.text[:300]}")
                for event in events:
                    counts[event["type"]] = counts.get(event["type"], 0) + 1
    finally:
        for process in reversed(processes):
            _stop(process)
    requests = -(-sessions // BATCH)
    from components.feedback.feedback_store import FeedbackStore

    with FeedbackStore(store, create=False) as written:
        landed = len(written.read_events(since=wall - 1))
    if counts and not landed:
        raise RecsysError(f"the events service at {events_url} answered, but none of the events "
                          f"reached this home's store ({display_url(store)}): it writes to "
                          "another store; stop it or pass --events-url")
    print(f"sent {requests * BATCH:,} sessions in {requests:,} requests ({time.monotonic() - started:.0f}s) "
          f"to {model_url}, and {sum(counts.values()):,} events ("
          + ", ".join(f"{n:,} {kind}s" for kind, n in sorted(counts.items())) + f") to {events_url}")
    print(f"the served answers are in {home / 'requests'} (unless that predictor logs elsewhere), "
          f"the feedback in {display_url(store)}: `recsys monitor --home {home}` tests them", flush=True)
    return 0
