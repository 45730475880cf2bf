"""The champion and a challenger behind one model name: a sticky split of users by a hash of the
user id, and team-draft interleaving for another share of users (`recsys serve` locally).

Each user's variant comes from `components.experiments.assignment` (a hash of the user id salted with the
challenger's version): the same user sees the same model in every request, which is what makes
the A/B analysis a user-level experiment. Every answer row carries the version that made it (the
`model_versions` output, [B] BYTES; in v1 each prediction's `model_version`) while a challenger
serves; the response's own `model_version` is that version when the batch has one, else the
versions joined by ",". With the champion alone, answers are exactly the predictor's. An
interleaved answer's version is "<champion>+<challenger>", and the impression of each of its
positions records the version that placed the item (`source_version`).

On a cluster this router is not used: KServe's `canaryTrafficPercent` splits requests between
two revisions, each serving one model, so one user may see both. What that means for the
statistics, and how the analysis handles it, is in `components/experiments/experiment.py`.

The router reuses the predictor's parsing, model call and response shaping (its `_parse_*`,
`_recommend`, `_v*_response` methods) so the serving contract stays in one place, and follows
the local deployment record (`deployment.json`) when started from it: after `recsys rollout
analyze --auto` promotes or rolls back, the next requests go where the record says, without a
restart (the record is polled every `poll_seconds`).
"""
from __future__ import annotations

import asyncio
import logging
import threading
import time
from collections.abc import Callable, Mapping
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from kserve import Model
from kserve.errors import InvalidInput
from kserve.protocol.infer_type import InferOutput, InferRequest, InferResponse
from prometheus_client import Counter, Histogram

from components.experiments.assignment import (
    CHALLENGER,
    CHAMPION,
    INTERLEAVED,
    assign_variant,
    interleaved_version,
    request_seed,
    user_bucket,
)
from components.experiments.interleaving import team_draft
from serving.heap import freeze_loaded
from serving.predictor import Answer, Query, RecommenderModel
from serving.request_log import LogEntry, RequestLog

log = logging.getLogger("recsys.router")

EXPERIMENT_REQUESTS = Counter(
    "recsys_experiment_requests", "Answers (rows) made by each model version, by variant",
    ["model_name", "model_version", "variant"])
EXPERIMENT_ERRORS = Counter(
    "recsys_experiment_errors", "Model calls that failed, by model version",
    ["model_name", "model_version"])
MODEL_SECONDS = Histogram(
    "recsys_experiment_model_seconds", "Time of each model call, by model version",
    ["model_name", "model_version"],
    buckets=(0.0005, 0.001, 0.002, 0.005, 0.01, 0.02, 0.05, 0.1, 0.2, 0.5, 1.0, 2.0, 5.0))
VERSIONS_OUTPUT = {"name": "model_versions", "datatype": "BYTES", "shape": [-1]}


@dataclass(frozen=True)
class Arms:
    """Who serves, swapped as a whole so a request never sees half a change."""

    champion: RecommenderModel
    challenger: RecommenderModel | None = None
    challenger_percent: float = 0.0
    interleave_percent: float = 0.0

    @property
    def salt(self) -> str:
        return self.challenger.model_version if self.challenger is not None else ""

    def variant(self, user_id: str) -> str:
        if self.challenger is None:
            return CHAMPION
        return assign_variant(user_bucket(user_id, self.salt), self.challenger_percent,
                              self.interleave_percent)


class ExperimentRouter(Model):
    """A kserve.Model that answers with the champion, the challenger or both interleaved."""

    def __init__(self, name: str, champion: RecommenderModel,
                 challenger: RecommenderModel | None = None, *, challenger_percent: float = 0.0,
                 interleave_percent: float = 0.0,
                 request_log_dir: str | Path | None = None,
                 record: Path | None = None,
                 loader: Callable[[str], RecommenderModel] | None = None,
                 poll_seconds: float = 2.0,
                 split_override: tuple[float | None, float | None] = (None, None),
                 without_challenger: bool = False):
        super().__init__(name)
        self._arms = Arms(champion, challenger, challenger_percent, interleave_percent)
        self.request_log_dir = request_log_dir
        self._request_log: RequestLog | None = None
        self.record = record
        self._loader = loader
        self.poll_seconds = poll_seconds
        # What the command line fixed, kept when the record changes: the challenger's and the
        # interleaved shares (None: the record's), or no challenger at all.
        self.split_override = split_override
        self.without_challenger = without_challenger
        self._record_mtime: float | None = None
        self._retired: list[RecommenderModel] = []  # no longer served; stopped at the end
        self._watcher: threading.Thread | None = None
        self._stopping = threading.Event()

    # ------------------------------------------------------------------ lifecycle
    @property
    def arms(self) -> Arms:
        return self._arms

    def load(self) -> bool:
        arms = self._arms
        arms.champion.load()
        if arms.challenger is not None and not arms.challenger.load():
            log.error("challenger %s is not ready (%s): the champion answers everyone",
                      arms.challenger.model_dir, arms.challenger.load_error)
            self._arms = Arms(arms.champion)
        self.ready = arms.champion.ready
        if self.ready:
            self._start_writers()
            if self.record is not None:
                self._record_mtime = _mtime(self.record)
        return self.ready

    def _start_writers(self) -> None:
        if self.request_log_dir is not None and self._request_log is None:
            lead = self._arms.champion
            self._request_log = RequestLog(self.request_log_dir, self.name,
                                           on_drop=lead._metrics.log_dropped).start()

    def start(self) -> None:
        self._start_writers()
        self._start_watcher()

    def stop(self) -> None:
        self._stopping.set()
        if getattr(self, "_executor", None) is not None:
            self._executor.shutdown(wait=True)  # answers in the worker finish, and get logged
            self._executor = None
        if self._request_log is not None:
            self._request_log.close()
        self._request_log = None
        for model in {id(m): m for m in self._loaded()}.values():
            model.stop()  # their online history and impression writers
        self.ready = False

    def __getstate__(self) -> dict[str, Any]:
        state = self.__dict__.copy()  # REST workers get a pickled copy; threads start there
        state.update(_request_log=None, _watcher=None, _stopping=None, _executor=None)
        return state

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__dict__.update(state)
        self._stopping = threading.Event()
        if self.ready:
            self._start_writers()

    def _loaded(self) -> list[RecommenderModel]:
        arms = self._arms
        return [m for m in (arms.champion, arms.challenger, *self._retired) if m is not None]

    def get_input_types(self) -> list[dict]:
        return self._arms.champion.get_input_types()

    def get_output_types(self) -> list[dict]:
        extra = [dict(VERSIONS_OUTPUT)] if self._arms.challenger is not None else []
        return [*self._arms.champion.get_output_types(), *extra]

    # ------------------------------------------------------------------ following the record
    def _start_watcher(self) -> None:
        if self.record is None or self._loader is None or self._watcher is not None:
            return
        self._watcher = threading.Thread(target=self._watch, name="deployment-record", daemon=True)
        self._watcher.start()

    def _watch(self) -> None:
        while not self._stopping.wait(self.poll_seconds):
            mtime = _mtime(self.record)
            if mtime is None or mtime == self._record_mtime:
                continue
            self._record_mtime = mtime
            try:
                self.follow_record()
            except Exception:  # keep serving what loaded; the next change is tried again
                log.exception("could not follow %s", self.record)

    def follow_record(self) -> None:
        """Serve what the local deployment record names now, loading any model not loaded yet."""
        from components.release.deploy import read_record

        record = read_record(self.record)
        arms = self._arms
        loaded = {str(m.model_dir): m for m in (arms.champion, arms.challenger) if m is not None}

        def model(directory: str) -> RecommenderModel:
            found = loaded.get(directory)
            if found is None:
                found = self._loader(directory)
                if not found.ready:
                    raise RuntimeError(f"{directory}: {found.load_error}")
            return found

        champion = model(record["model_dir"])
        entry = None if self.without_challenger else record.get("challenger")
        challenger = model(entry["model_dir"]) if entry else None
        percent, interleave = split_of(entry, self.split_override)
        new = Arms(champion, challenger, percent, interleave)
        if new != arms:
            self._retired += [m for m in (arms.champion, arms.challenger)
                              if m is not None and m not in (champion, challenger)]
            self._arms = new
            if any(m is not None and str(m.model_dir) not in loaded
                   for m in (champion, challenger)):
                freeze_loaded()  # the new model, out of the collector's scans like the first
            log.info("now serving champion %s%s", champion.model_version,
                     f", challenger {challenger.model_version} to {new.challenger_percent:g}% of "
                     f"users, interleaved for {new.interleave_percent:g}%" if challenger else "")

    # ------------------------------------------------------------------ inference
    async def _in_worker(self, call: Callable[..., Any], *args: Any) -> Any:
        """Model calls run in the router's own worker threads (the champion's --model-threads),
        off the event loop, so that health probes and other requests are answered while a heavy
        one is scored (as in the predictor; the router does not batch across requests)."""
        if getattr(self, "_executor", None) is None:
            threads = getattr(self._arms.champion, "model_threads", 1)
            self._executor = ThreadPoolExecutor(threads, thread_name_prefix=f"{self.name}-router")
        return await asyncio.get_running_loop().run_in_executor(self._executor, call, *args)

    async def explain(self, payload: InferRequest | dict,
                      headers: Mapping[str, str] | None = None) -> InferResponse | dict:
        """KServe's explain verb: the answer, each row explained by the model that made it."""
        return await self.predict(payload, headers, explain=True)

    async def predict(self, payload: InferRequest | dict, headers: Mapping[str, str] | None = None,
                      response_headers: dict[str, str] | None = None, *,
                      explain: bool = False) -> InferResponse | dict:
        arms = self._arms
        lead = arms.champion
        if not lead.ready:
            raise lead.not_ready_error()
        if self._watcher is None and self.record is not None:
            self._start_watcher()  # a REST worker process starts its own
        is_v2 = isinstance(payload, InferRequest)
        query = _parse(lead, payload, is_v2, explain)
        request_id = lead._request_id(payload if is_v2 else None, headers)
        if query.by_item:
            answer = await self._in_worker(_timed, self.name, lead, lead._similar, query)
            lead._count_and_log(query, answer, request_id)
            if query.explain:
                explanations = await self._in_worker(lead._explanations, query, answer)
                return lead._explained_response(payload, query, answer, request_id, explanations)
            return (lead._v2_response(payload, answer, request_id) if is_v2
                    else lead._v1_response(query, answer, request_id))
        variants = [arms.variant(u) for u in query.ids.tolist()]
        seen: dict | None = {} if query.explain else None
        answer, versions, sources = await self._in_worker(
            self._answer, arms, query, variants, request_id, seen)
        self._count_and_log(lead, query, answer, request_id, versions, sources, variants)
        response_version = ",".join(dict.fromkeys(versions))
        if query.explain:
            explanations = await self._in_worker(
                self._explanations, arms, query, variants, answer, sources, seen)
            response = lead._explained_response(payload, query, answer, request_id, explanations)
            if arms.challenger is not None:
                _versioned(response, payload, response_version, versions)
            return response
        if arms.challenger is None:  # one model serves: the predictor's own answer, unchanged
            return (lead._v2_response(payload, answer, request_id) if is_v2
                    else lead._v1_response(query, answer, request_id))
        if is_v2:
            response = lead._v2_response(payload, answer, request_id)
            response.model_version = response_version
            out = InferOutput("model_versions", [len(versions)], "BYTES",
                              np.asarray(versions, dtype=object))
            if payload.from_grpc:
                data, out.data = out.data, None
                out.set_data_from_numpy(data, binary_data=True)
            response.outputs.append(out)
            return response
        response = lead._v1_response(query, answer, request_id)
        response["model_version"] = response_version
        for prediction, version in zip(response["predictions"], versions):
            prediction["model_version"] = version
        return response

    def _answer(self, arms: Arms, query: Query, variants: list[str], request_id: str,
                seen: dict | None = None):
        """The combined answer, each row's version, and (when a row interleaves) the version of
        each position. `seen`, when given, keeps the fresh history each model scored each row
        with (for the explanations of the same answer)."""
        batch, width = len(query.ids), int(query.k.max())
        item_ids = np.full((batch, width), "", dtype=object)
        scores = np.full((batch, width), np.nan, dtype=np.float32)
        cold = np.zeros(batch, dtype=bool)
        versions = [""] * batch
        sources: np.ndarray | None = None
        rows = {v: [i for i, x in enumerate(variants) if x == v] for v in set(variants)}
        for variant, model in ((CHAMPION, arms.champion), (CHALLENGER, arms.challenger)):
            if rows.get(variant):
                idx = rows[variant]
                part = _timed(self.name, model, model._recommend,
                              _fresh(model, _rows(query, idx), seen, idx))
                _place(item_ids, scores, cold, idx, part)
                for i in idx:
                    versions[i] = model.model_version
                EXPERIMENT_REQUESTS.labels(self.name, model.model_version, variant).inc(len(idx))
        if rows.get(INTERLEAVED):
            idx = rows[INTERLEAVED]
            sub = _rows(query, idx)
            first = _timed(self.name, arms.champion, arms.champion._recommend,
                           _fresh(arms.champion, sub, seen, idx))
            second = _timed(self.name, arms.challenger, arms.challenger._recommend,
                            _fresh(arms.challenger, _rows(query, idx), seen, idx))
            both = interleaved_version(arms.champion.model_version, arms.challenger.model_version)
            sources = np.full((batch, width), "", dtype=object)
            for j, i in enumerate(idx):
                merged, teams = team_draft(_listed(first.item_ids[j]), _listed(second.item_ids[j]),
                                           int(query.k[i]), request_seed(f"{request_id}:{i}"))
                team_scores = (dict(zip(first.item_ids[j], first.scores[j])),
                               dict(zip(second.item_ids[j], second.scores[j])))
                item_ids[i, : len(merged)] = merged
                scores[i, : len(merged)] = [team_scores[t][item] for item, t in zip(merged, teams)]
                sources[i, : len(merged)] = [(arms.champion, arms.challenger)[t].model_version
                                             for t in teams]
                cold[i] = bool(first.cold_start[j])
                versions[i] = both
            EXPERIMENT_REQUESTS.labels(self.name, both, INTERLEAVED).inc(len(idx))
        return Answer(item_ids, scores, cold_start=cold), versions, sources

    @staticmethod
    def _explanations(arms: Arms, query: Query, variants: list[str], answer: Answer,
                      sources: np.ndarray | None, seen: dict) -> list[dict]:
        """Each row explained by the model that answered it; an interleaved row item by item by
        the model that placed the item (each model explains its own items, in their order, so
        `versus_next` compares an item with the next one of the same model), marked
        `"interleaved": true` with each item's `model_version`."""
        rows = []
        for i, variant in enumerate(variants):
            sub = _rows(query, [i])
            if variant != INTERLEAVED:
                model = arms.challenger if variant == CHALLENGER else arms.champion
                rows += model._explanations(_scored_with(model, sub, seen, i), _row_answer(answer, i))
                continue
            placed = [(item, str(source)) for item, source in
                      zip(answer.item_ids[i].tolist(), sources[i].tolist()) if item]
            explained: dict[str, dict] = {}
            merged: dict | None = None
            for model in (arms.champion, arms.challenger):
                mine = [item for item, source in placed if source == model.model_version]
                own = Answer(np.asarray([mine], dtype=object).reshape(1, -1),
                             np.zeros((1, len(mine)), dtype=np.float32), cold_start=answer.cold_start[[i]])
                explanation = model._explanations(
                    _scored_with(model, _rows(query, [i]), seen, i), own)[0]
                merged = merged or explanation
                for entry in explanation.get("items", []):
                    explained[entry["item_id"]] = {**entry, "model_version": model.model_version}
            items = [{**explained[item], "rank": n + 1} for n, (item, _) in enumerate(placed)
                     if item in explained]
            rows.append({**merged, "interleaved": True, "items": items})
        return rows

    def _count_and_log(self, lead: RecommenderModel, query: Query, answer: Answer,
                       request_id: str, versions: list[str], sources: np.ndarray | None,
                       variants: list[str]) -> None:
        lead._metrics.user_rows.inc(len(query.ids))
        cold = int(answer.cold_start.sum())
        if cold:
            lead._metrics.cold_start.inc(cold)
        now = time.time()
        if self._request_log is not None:
            for version in dict.fromkeys(versions):
                idx = [i for i, v in enumerate(versions) if v == version]
                self._request_log.log(LogEntry(
                    now, request_id, version, query.ids[idx], query.k[idx], answer.item_ids[idx],
                    answer.scores[idx], answer.cold_start[idx]))
        writer = lead._feedback.impressions if lead._feedback is not None else None
        if writer is not None:  # the feedback store's writer: a queue hand-off
            writer.put(impression_rows(now, request_id, query.ids, answer.item_ids, versions,
                                       sources, variants))


def impression_rows(timestamp: float, request_id: str, user_ids: np.ndarray,
                    item_ids: np.ndarray, versions: list[str], sources: np.ndarray | None,
                    variants: list[str]) -> list[tuple]:
    """The feedback store's impression rows of one answer, one per shown item, as tuples in
    `IMPRESSION_COLUMNS` order (what its writer takes): the answer's version, the version that
    placed the item and the user's variant."""
    rows = []
    for row, user in enumerate(user_ids.tolist()):
        for position, item in enumerate(item_ids[row].tolist()):
            if not item:
                break  # padding is always at a row's end
            # Only interleaved rows have sources of their own; the others placed every item.
            source = (str(sources[row, position]) if sources is not None else "") or versions[row]
            rows.append((request_id, str(user), item, position, versions[row], source,
                         variants[row], timestamp))
    return rows


def split_of(entry: Mapping[str, Any] | None,
             override: tuple[float | None, float | None] = (None, None)) -> tuple[float, float]:
    """(challenger %, interleaved %) of a record's challenger entry, command-line values first."""
    if not entry:
        return 0.0, 0.0
    percent = override[0] if override[0] is not None else float(entry.get("percent", 0.0))
    interleave = override[1] if override[1] is not None else float(entry.get("interleave_percent", 0.0))
    return percent, interleave


def _parse(model: RecommenderModel, payload: Any, is_v2: bool, explain: bool = False) -> Query:
    """The predictor's own validation and bounds, counted the same way."""
    try:
        query = model._parse_v2(payload) if is_v2 else model._parse_v1(payload)
        query.explain = query.explain or explain
        model._check_bounds(query)
        if query.explain:
            model._check_explain_bounds(query)
        return query
    except InvalidInput:
        model._metrics.invalid_input.inc()
        raise
    except Exception as exc:  # whatever a client sends is a 400, but say where it broke
        model._metrics.invalid_input.inc()
        log.warning("unexpected error parsing a request (%s: %s)", type(exc).__name__, exc,
                    exc_info=True)
        raise InvalidInput(f"malformed request: {type(exc).__name__}: {exc}") from None


def _timed(name: str, model: RecommenderModel, call: Callable[[Query], Answer], query: Query) -> Answer:
    started = time.perf_counter()
    try:
        return call(query)
    except Exception:
        EXPERIMENT_ERRORS.labels(name, model.model_version).inc()
        model._metrics.internal.inc()
        raise
    finally:
        MODEL_SECONDS.labels(name, model.model_version).observe(time.perf_counter() - started)


def _fresh(model: RecommenderModel, query: Query, seen: dict | None = None,
           idx: list[int] | None = None) -> Query:
    """The query with what its users did since `model` was trained (the online history); kept
    in `seen` by (model, row of the whole request) when given."""
    if model._feedback is not None:  # kept apart: the model's answer cache keys on it
        query.fresh = model._feedback.fresh_rows(query.ids.tolist())
        if seen is not None:
            for j, i in enumerate(idx):
                seen[(id(model), i)] = query.fresh[j] if query.fresh is not None else ()
    return query


def _scored_with(model: RecommenderModel, query: Query, seen: dict, row: int) -> Query:
    """A one-row query with the fresh history `model` scored that row with (`_answer`)."""
    if (id(model), row) in seen:
        query.fresh = [seen[(id(model), row)]]
    return query


def _rows(query: Query, idx: list[int]) -> Query:
    return Query(
        False, query.ids[idx], query.k[idx],
        exclude=None if query.exclude is None else [query.exclude[i] for i in idx],
        history=None if query.history is None else [query.history[i] for i in idx],
    )


def _row_answer(answer: Answer, i: int) -> Answer:
    return Answer(answer.item_ids[[i]], answer.scores[[i]], cold_start=answer.cold_start[[i]])


def _versioned(response: InferResponse | dict, payload: Any, version: str,
               versions: list[str]) -> None:
    """A challenger serves: the response's version, and each row's (as predict answers)."""
    if isinstance(response, dict):
        response["model_version"] = version
        for prediction, row_version in zip(response["predictions"], versions):
            prediction["model_version"] = row_version
        return
    response.model_version = version
    out = InferOutput("model_versions", [len(versions)], "BYTES", np.asarray(versions, dtype=object))
    if payload.from_grpc:
        data, out.data = out.data, None
        out.set_data_from_numpy(data, binary_data=True)
    response.outputs.append(out)


def _place(item_ids: np.ndarray, scores: np.ndarray, cold: np.ndarray, idx: list[int],
           part: Answer) -> None:
    width = min(part.item_ids.shape[1], item_ids.shape[1])  # a smaller catalogue answers fewer
    item_ids[idx, :width] = part.item_ids[:, :width]
    scores[idx, :width] = part.scores[:, :width]
    cold[idx] = part.cold_start


def _listed(row: np.ndarray) -> list[str]:
    return [item for item in row.tolist() if item]


def _mtime(path: Path | None) -> float | None:
    try:
        return path.stat().st_mtime if path is not None else None
    except OSError:
        return None
