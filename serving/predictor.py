"""The KServe predictor: a `kserve.Model` that answers the serving contract (see README.md).

`load()` does the heavy work once (load and verify the artifact, warm every code path up,
precompute id and title arrays); `predict()` validates the request, makes one batched model
call and shapes the answer, with no I/O (the request log is a queue hand-off) and no Python
loop over catalogue items. Requests are validated here because KServe checks neither names
nor shapes against data: whatever a client sends is either answered or refused with
`InvalidInput` (HTTP 400, gRPC INVALID_ARGUMENT) naming the field at fault.

Work per request is bounded (rows, `B x k` answer entries, ids in exclude/history lists, title
queries and their length). Rows the answer cache lacks (users with new feedback) are gathered
across concurrent requests by a micro-batcher and scored as one call; a batch of up to
`--loop-batch-rows` rows is scored on the event loop's own thread (a worker thread would fight
the loop for the GIL), a larger one in a worker thread. Every other model call (fuzzy title
matching, a request with exclusions or a history, k past the answer cache, a request past the
batch maximum) runs in the model's own worker threads (serving/model_calls.py), so REST, gRPC
and the health probes keep answering while it works, and heavy requests queue there instead
of taking every core.

Explanations (KServe's explain verb, `:explain`, and the v2 `explain` input) are asked for,
never implied: a request without them takes exactly the path above. When asked, the
explanations of the answer (`components/models/explain.py`) are computed in the same worker
thread after it, within their own bound (`--max-explain-items`, B x k).

The module is longer than most here because the contract lives in one place: both protocols'
parsing, the model call (with the answer cache) and both protocols' responses.
"""
from __future__ import annotations

import math
import os
import struct
import threading
import time
from collections import OrderedDict
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import orjson
from kserve import Model
from kserve.errors import InvalidInput, ModelNotReady
from kserve.logging import logger as kserve_logger
from kserve.protocol.infer_type import InferInput, InferOutput, InferRequest, InferResponse

from components.errors import ArtifactError
from components.models.artifact import MANIFEST, load_model
from components.models.explain import explain_recommendations, explain_similar
from serving.limits import (
    DEFAULT_ANSWER_CACHE_SIZE,
    DEFAULT_MAX_ANSWER_ITEMS,
    DEFAULT_MAX_BATCH_SIZE,
    DEFAULT_MAX_EXPLAIN_ITEMS,
    DEFAULT_MAX_TITLE_QUERIES,
    MAX_LIST_IDS,
    MAX_LIST_LENGTH,
    MAX_QUERY_LENGTH,
)
from serving.metrics import ModelMetrics
from serving.model_calls import (
    DEFAULT_BATCH_MAX_SIZE,
    DEFAULT_BATCH_MAX_WAIT_MS,
    DEFAULT_LOOP_BATCH_ROWS,
    DEFAULT_MODEL_THREADS,
    ModelCalls,
)
from serving.request_log import DEFAULT_K, LogEntry, RequestLog

log = kserve_logger.getChild("recsys")

# Known users' answers (and the cold-start one) are precomputed at load up to this k...
CACHE_K = 100
# ...when the table stays small (users x k entries; 8 bytes each).
CACHE_MAX_ENTRIES = 25_000_000
# Up to this many users the table is filled before the model is ready; above it, a background
# thread fills it after load (in user order, the cold-start row first) so that loading stays
# within seconds, and until a user's row is in, that user's answer is computed per request.
CACHE_SYNC_MAX_USERS = 10_000
_CACHE_CHUNK = 256


def default_compiled_ranker_cache() -> str:
    """Where the compiled ranker's object code is kept between restarts:
    $RECSYS_COMPILED_RANKER_CACHE, else the user's cache directory."""
    explicit = os.environ.get("RECSYS_COMPILED_RANKER_CACHE")
    if explicit:
        return explicit
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return str(Path(base) / "recsys" / "compiled-ranker")


# v1 instance fields; v2 inputs add `explain` (v1 asks for explanations with the :explain verb)
USER_FIELDS = ("user_id", "k", "exclude_item_ids", "history_item_ids")
ITEM_FIELDS = ("item_id", "k")
USER_INPUTS = (*USER_FIELDS, "explain")
ITEM_INPUTS = (*ITEM_FIELDS, "explain")
_ID_TYPES = ("BYTES", "INT64", "INT32")
_K_TYPES = ("INT32", "INT64")

INPUT_TYPES = [
    {"name": "user_id", "datatype": "BYTES", "shape": [-1]},
    {"name": "item_id", "datatype": "BYTES", "shape": [-1]},
    {"name": "k", "datatype": "INT32", "shape": [-1]},
    {"name": "exclude_item_ids", "datatype": "BYTES", "shape": [-1, -1]},
    {"name": "history_item_ids", "datatype": "BYTES", "shape": [-1, -1]},
    {"name": "explain", "datatype": "BOOL", "shape": [1]},  # optional: adds `explanations`
]
OUTPUT_TYPES = [
    {"name": "item_ids", "datatype": "BYTES", "shape": [-1, -1]},
    {"name": "scores", "datatype": "FP32", "shape": [-1, -1]},
    {"name": "cold_start", "datatype": "BOOL", "shape": [-1]},
    {"name": "resolved_item_ids", "datatype": "BYTES", "shape": [-1]},
    {"name": "resolved_titles", "datatype": "BYTES", "shape": [-1]},
    {"name": "explanations", "datatype": "BYTES", "shape": [-1]},  # when `explain` is true
]


@dataclass
class Query:
    """A validated request, protocol-independent."""

    by_item: bool
    ids: np.ndarray  # [B] object (str): user ids, or item ids / titles
    k: np.ndarray  # [B] int64
    exclude: list[list[str]] | None = None
    history: list[list[str]] | None = None  # what the client sent
    # What each user did since training (the online history), or None when no user has any.
    # Kept apart from `history` until the model call: it is also the version of the user's
    # cached answer.
    fresh: list[tuple[str, ...]] | None = None
    explain: bool = False  # the `explain` input, or the v1 `:explain` verb

    def model_history(self) -> list[list[str]] | None:
        """The history rows the model scores with: the client's, then the fresh items."""
        if self.fresh is None:
            return self.history
        if self.history is None:
            return [list(row) for row in self.fresh]
        return [[*sent, *extra] for sent, extra in zip(self.history, self.fresh)]


@dataclass(frozen=True)
class _Cached:
    """One user's answer at the cache's width, valid while that user's fresh history is
    `version` (the tuple of fresh items itself, so a version is exact and costs nothing)."""

    version: tuple[str, ...]
    top: np.ndarray  # [width] int32 item indices
    scores: np.ndarray  # [width] float32
    cold: bool


class AnswerLRU:
    """The answers the precomputed table cannot give, one entry per user, least recently used
    evicted first. A user's entry holds the answer for one version of the user's fresh history:
    new feedback makes it miss (and its answer replaces it), other users' entries stay.
    Thread-safe: the event loop reads while the model's worker thread writes."""

    def __init__(self, size: int, on_evict=None):
        self.size = max(0, int(size))
        self._entries: OrderedDict[str, _Cached] = OrderedDict()
        self._lock = threading.Lock()
        self._on_evict = on_evict

    def __len__(self) -> int:
        return len(self._entries)

    def get(self, user: str, version: tuple[str, ...]) -> _Cached | None:
        with self._lock:
            entry = self._entries.get(user)
            if entry is None or entry.version != version:
                return None
            self._entries.move_to_end(user)
            return entry

    def put(self, user: str, entry: _Cached) -> None:
        if self.size == 0:
            return
        evicted = 0
        with self._lock:
            self._entries[user] = entry
            self._entries.move_to_end(user)
            while len(self._entries) > self.size:
                self._entries.popitem(last=False)
                evicted += 1
        if evicted and self._on_evict is not None:
            self._on_evict(evicted)


@dataclass
class _Parts:
    """A cacheable query's rows as found in the cache; `missing` rows need the model."""

    top: np.ndarray  # [B, W] int32
    scores: np.ndarray  # [B, W] float32
    cold: np.ndarray  # [B] bool
    missing: list[int]


@dataclass
class Answer:
    item_ids: np.ndarray  # [B, K] object (str), "" where a row has fewer than K answers
    scores: np.ndarray  # [B, K] float32, NaN where item_ids is ""
    cold_start: np.ndarray | None = None  # [B] bool (user rows)
    resolved_ids: np.ndarray | None = None  # [B] object (str), "" = no match (item rows)
    resolved_titles: np.ndarray | None = None


def find_artifact(model_dir: str | Path) -> Path:
    """The artifact directory: `model_dir` itself, or its only child holding a manifest (a
    storage initializer or registry download may add one level, e.g. `/mnt/models/model`)."""
    root = Path(model_dir)
    if (root / MANIFEST).is_file() or not root.is_dir():
        return root
    found = [p for p in sorted(root.iterdir()) if (p / MANIFEST).is_file()]
    return found[0] if len(found) == 1 else root


# ------------------------------------------------------------------ request parsing
def _declared_shape(name: str, shape: Any, ndim: int) -> tuple[int, ...]:
    if not isinstance(shape, (list, tuple)) or not all(
        type(d) is int or isinstance(d, np.integer) for d in shape
    ):
        raise InvalidInput(f"{name}: shape must be a list of integers, got {shape!r}")
    if len(shape) != ndim:
        raise InvalidInput(f"{name}: shape must have {ndim} dimension(s), got {list(shape)}")
    if min(shape, default=0) < 0:
        raise InvalidInput(f"{name}: shape must not be negative, got {list(shape)}")
    return tuple(int(d) for d in shape)


def _tensor(inp: InferInput, allowed: tuple[str, ...], ndim: int) -> np.ndarray:
    """An input as a numpy array of its declared shape; strings for BYTES, int64 otherwise."""
    name = inp.name
    if inp.datatype not in allowed:
        raise InvalidInput(f"{name}: datatype must be {' or '.join(allowed)}, got {inp.datatype}")
    shape = _declared_shape(name, inp.shape, ndim)
    size = math.prod(shape)
    try:
        if inp._raw_data is not None:  # gRPC raw_input_contents
            array = inp.as_numpy()
        elif inp.datatype == "BYTES":
            array = np.asarray(inp.data if inp.data is not None else [], dtype=object)
        else:
            array = np.asarray(inp.data if inp.data is not None else [])
            if array.size and array.dtype.kind not in "iu":
                raise InvalidInput(f"{name}: data must be integers for datatype {inp.datatype}")
            array = array.astype(np.int64)
    except InvalidInput:
        raise
    except Exception as exc:  # noqa: BLE001 - numpy's conversion errors are the client's data
        raise InvalidInput(f"{name}: data does not match datatype {inp.datatype}: {exc}") from None
    if array.size != size:
        raise InvalidInput(f"{name}: shape {list(shape)} needs {size} values, data has {array.size}")
    array = array.reshape(shape)
    if inp.datatype == "BYTES":
        flat = array.reshape(-1).tolist()
        try:
            strings = [v.decode("utf-8") if isinstance(v, bytes) else v for v in flat]
        except UnicodeDecodeError:
            raise InvalidInput(f"{name}: BYTES data must be UTF-8 text") from None
        if not all(isinstance(v, str) for v in strings):
            raise InvalidInput(f"{name}: BYTES data must be strings")
        _check_text(name, strings)
        array = np.asarray(strings, dtype=object).reshape(shape)
    return array


def _check_text(name: str, strings: list[str]) -> None:
    """JSON may carry a lone surrogate (`"\\ud800"`); UTF-8 cannot, so neither can an id, the
    answer's encoder or the request log. One encode of the whole list finds it."""
    try:
        "".join(strings).encode("utf-8")
    except UnicodeEncodeError:
        row = next(i for i, v in enumerate(strings) if not _is_utf8(v))
        raise InvalidInput(
            f"{name}: value {row} is not valid Unicode text (a lone surrogate)"
        ) from None


def _is_utf8(text: str) -> bool:
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


def _ids(inp: InferInput, max_batch: int) -> np.ndarray:
    array = _tensor(inp, _ID_TYPES, 1)
    if len(array) == 0:
        raise InvalidInput(f"{inp.name}: the batch is empty")
    if len(array) > max_batch:
        raise InvalidInput(f"{inp.name}: batch of {len(array)} exceeds the limit of {max_batch}")
    if array.dtype != object:
        array = array.astype(str).astype(object)
    return array


def _check_k(k: np.ndarray, batch: int, limit: int, what: str) -> np.ndarray:
    if k.shape not in ((1,), (batch,)):
        raise InvalidInput(f"k: shape must be [1] or [{batch}] (one per row), got {list(k.shape)}")
    values = k.tolist()  # a request's few k values: Python's min/max beat numpy's here
    if values and min(values) <= 0:
        raise InvalidInput(f"k: must be at least 1, got {int(min(values))}")
    if values and max(values) > limit:
        raise InvalidInput(f"k: {int(max(values))} exceeds {what} ({limit})")
    if len(values) == 1:
        return np.full(batch, values[0], dtype=np.int64)
    return k.astype(np.int64)


def _id_lists(inp: InferInput, batch: int) -> list[list[str]]:
    shape = _declared_shape(inp.name, inp.shape, 2)
    if shape[0] != batch:
        raise InvalidInput(
            f"{inp.name}: shape must be [{batch}, M] (one padded row per user), got {list(shape)}"
        )
    if shape[1] > MAX_LIST_LENGTH:
        raise InvalidInput(f"{inp.name}: {shape[1]} ids per row exceeds {MAX_LIST_LENGTH}")
    if math.prod(shape) > MAX_LIST_IDS:
        raise InvalidInput(f"{inp.name}: {math.prod(shape)} ids exceeds {MAX_LIST_IDS} per request")
    return _tensor(inp, ("BYTES",), 2).tolist()  # "" padding matches no item: ignored


def _explain_flag(inp: InferInput) -> bool:
    """The optional `explain` input: BOOL [1], one flag for the whole request."""
    if inp.datatype != "BOOL":
        raise InvalidInput(f"explain: datatype must be BOOL, got {inp.datatype}")
    shape = _declared_shape("explain", inp.shape, 1)
    if shape != (1,):
        raise InvalidInput(f"explain: shape must be [1] (one flag per request), got {list(shape)}")
    try:
        if inp._raw_data is not None:  # gRPC raw_input_contents, binary REST
            flat = inp.as_numpy().reshape(-1).tolist()
        else:
            flat = list(inp.data) if isinstance(inp.data, (list, tuple)) else [inp.data]
    except Exception as exc:  # noqa: BLE001 - the client's data
        raise InvalidInput(f"explain: data does not match datatype BOOL: {exc}") from None
    if len(flat) != 1:
        raise InvalidInput(f"explain: shape [1] needs 1 value, data has {len(flat)}")
    if not isinstance(flat[0], (bool, np.bool_)):
        raise InvalidInput(f"explain: data must be true or false, got {flat[0]!r}")
    return bool(flat[0])


_LENGTH = struct.Struct("<I")  # a BYTES element's length prefix in the v2 binary encoding


def _set_binary(out: InferOutput) -> None:
    """What KServe's `out.set_data_from_numpy(out.data, binary_data=True)` sets (the raw bytes
    and their `binary_data_size`), for the arrays this predictor answers with (str/bytes
    objects for BYTES, else plain numbers in the declared dtype): one list comprehension
    instead of KServe's per-element `np.nditer` for BYTES, and no dtype checks."""
    array = out.data
    if out.datatype == "BYTES":
        encoded = [v.encode("utf-8") if isinstance(v, str) else bytes(v)
                   for v in array.reshape(-1).tolist()]
        raw = b"".join([part for v in encoded for part in (_LENGTH.pack(len(v)), v)])
    else:
        raw = array.tobytes()  # C order, whatever the array's own layout
    out.data = None
    out._raw_data = raw  # the attribute set_data_from_numpy sets
    if out.parameters is None:
        out.parameters = {}
    out.parameters["binary_data_size"] = len(raw)


def _pad(item_ids: np.ndarray, scores: np.ndarray, k: np.ndarray) -> None:
    """Blank, in place, what lies past each row's own k and what has no finite score (nothing
    left but excluded items, or no match): "" ids and NaN scores, always at a row's end."""
    pad = (np.arange(item_ids.shape[1])[None, :] >= k[:, None]) | ~np.isfinite(scores)
    item_ids[pad] = ""
    scores[pad] = np.nan


class RecommenderModel(Model):
    """Serves a `TwoStageRecommender` artifact over KServe v1 and v2 (REST and gRPC)."""

    def __init__(
        self,
        name: str,
        model_dir: str | Path,
        *,
        max_batch_size: int = DEFAULT_MAX_BATCH_SIZE,
        max_answer_items: int = DEFAULT_MAX_ANSWER_ITEMS,
        max_title_queries: int = DEFAULT_MAX_TITLE_QUERIES,
        request_log_dir: str | Path | None = None,
        online_store: str | None = None,
        online_store_prefix: str = "recsys:",
        answer_cache_size: int = DEFAULT_ANSWER_CACHE_SIZE,
        max_explain_items: int = DEFAULT_MAX_EXPLAIN_ITEMS,
        model_threads: int = DEFAULT_MODEL_THREADS,
        batch_max_size: int = DEFAULT_BATCH_MAX_SIZE,
        batch_max_wait_ms: float = DEFAULT_BATCH_MAX_WAIT_MS,
        loop_batch_rows: int = DEFAULT_LOOP_BATCH_ROWS,
        compiled_ranker: bool = True,
        compiled_ranker_cache: str | None = None,
    ):
        super().__init__(name)
        # The ranker's trees compiled at load (`TwoStageRecommender.compile_ranker`: the same
        # scores as LightGBM's, checked), the object code cached there; off: LightGBM scores.
        self.compiled_ranker = compiled_ranker
        self.compiled_ranker_cache = compiled_ranker_cache or default_compiled_ranker_cache()
        self.max_explain_items = max_explain_items
        self.answer_cache_size = answer_cache_size
        self.model_threads, self.batch_max_size = model_threads, batch_max_size
        self.batch_max_wait_ms = batch_max_wait_ms
        self.loop_batch_rows = loop_batch_rows
        self.model_dir = Path(model_dir)
        self.max_batch_size = max_batch_size
        self.max_answer_items = max_answer_items
        self.max_title_queries = max_title_queries
        self._calls: ModelCalls | None = None  # the worker threads and batcher, on first use
        self.request_log_dir = request_log_dir
        self.load_error: str | None = None
        self.model_version = ""
        self._model = None
        self._metrics = ModelMetrics(name)
        self._request_log: RequestLog | None = None
        # The feedback loop (serving/online_history.py): users' fresh history, impressions.
        self.online_store, self.online_store_prefix = online_store, online_store_prefix
        self._feedback = None

    # ------------------------------------------------------------------ lifecycle
    def load(self) -> bool:
        """Load, verify and warm up the artifact. A bad artifact leaves the model not ready
        (readiness answers false, the reason is logged) instead of killing the server; it is not
        retried on every request (KServe calls load() again for a model that is not ready)."""
        if self.ready or self.load_error is not None:
            return self.ready
        started = time.perf_counter()
        path = find_artifact(self.model_dir)
        try:
            model = load_model(path)
            self._prepare(model)
        except ArtifactError as exc:
            self.load_error = str(exc)
        except Exception as exc:  # a warm-up failure: same outcome, with the traceback
            log.exception("model %s failed its warm-up", self.name)
            self.load_error = f"{path}: warm-up failed: {type(exc).__name__}: {exc}"
        if self.load_error is not None:
            log.error("model %s is NOT ready: %s", self.name, self.load_error)
            self.ready = False
            return False
        manifest = model.manifest_
        self.model_version = str(manifest.get("model_version", ""))
        self._metrics.set_model(self.model_version, str(manifest.get("data_fingerprint", "")))
        if self.request_log_dir is not None:
            self._start_request_log()
        self._start_feedback()
        self.ready = True
        log.info(
            "model %s version %s ready in %.2fs: %d users, %d items, from %s",
            self.name, self.model_version, time.perf_counter() - started,
            model.data_.n_users, model.data_.n_items, path,
        )
        return True

    def _prepare(self, model) -> None:
        data = model.data_
        self.n_items = int(data.n_items)
        self._item_ids = data.item_ids.astype(object)
        self._item_id_set = frozenset(self._item_ids.tolist())
        titles = data.items["title"] if "title" in data.items else data.items["item_id"]
        self._titles = titles.fillna("").astype(str).to_numpy(dtype=object)
        self._model = model
        self._compile_ranker(model)
        # Warm every path once: first calls build caches (title index, BLAS, LightGBM).
        k = min(DEFAULT_K, self.n_items)
        known = [str(data.user_ids[0])] if data.n_users else []
        users = np.asarray(known + ["\x00cold"], dtype=object)
        self._recommend(Query(False, users, np.full(len(users), k)))
        self._recommend(Query(False, np.asarray(["\x00cold"], dtype=object), np.asarray([k]),
                              exclude=[[str(data.item_ids[0])]], history=[[str(data.item_ids[-1])]]))
        if self.n_items > 1:
            self._similar(Query(True, np.asarray([str(self._titles[0]), "\x00"], dtype=object),
                                np.full(2, min(k, self.n_items - 1))))
        self._build_cache(model)

    def _compile_ranker(self, model) -> None:
        """The compiled ranker, or LightGBM with the reason logged and counted (the answers are
        the same either way: only their cost differs)."""
        if not self.compiled_ranker or model.ranker_ is None:
            self._metrics.ranker_compiled.set(0)
            return
        started = time.perf_counter()
        reason = model.compile_ranker(self.compiled_ranker_cache)
        if reason is None:
            compiled = model.compiled_ranker_
            log.info("model %s: ranker compiled (%s) in %.2fs", self.name,
                     "from the cache" if compiled.cached else f"cached in {self.compiled_ranker_cache}",
                     time.perf_counter() - started)
            self._metrics.ranker_compiled.set(1)
        else:
            log.warning("model %s: ranker not compiled, LightGBM scores: %s", self.name, reason)
            self._metrics.ranker_compiled.set(0)
            self._metrics.ranker_compile_fallbacks.inc()

    def _build_cache(self, model) -> None:
        """Every known user's top-CACHE_K, and the cold-start row, computed once in batches.
        A user's answer depends only on the model and that user's training history (rows of a
        batch are scored independently), so a plain request (no exclude/history, k within the
        cache) is a table lookup instead of a model call of a few milliseconds."""
        self._cache_top = self._cache_scores = None
        self._cache_filled = 0  # rows [0, filled) and the cold-start row are answers
        n_users, width = int(model.data_.n_users), min(CACHE_K, self.n_items)
        self._cache_width = width
        self._answers = self._new_lru()
        if (n_users + 1) * width > CACHE_MAX_ENTRIES:
            log.info("answer cache off: %d users x k=%d is above %d entries",
                     n_users, width, CACHE_MAX_ENTRIES)
            return
        users = np.append(model.data_.user_ids.astype(object), "\x00cold")  # last row: cold start
        top = np.empty((len(users), width), dtype=np.int32)
        scores = np.empty((len(users), width), dtype=np.float32)
        self._fill_cache_rows(model, users, top, scores, len(users) - 1, len(users))
        self._cache_top, self._cache_scores, self._cache_width = top, scores, width
        self._cache_stop = threading.Event()
        if n_users <= CACHE_SYNC_MAX_USERS:
            self._fill_cache(model, users)
        else:
            log.info("answer cache: %d users filled in the background", n_users)
            self._cache_thread = threading.Thread(
                target=self._fill_cache, args=(model, users), name="answer-cache", daemon=True
            )
            self._cache_thread.start()

    def _fill_cache(self, model, users: np.ndarray) -> None:
        started = time.perf_counter()
        for start in range(0, len(users) - 1, _CACHE_CHUNK):
            if self._cache_stop.is_set():
                return
            end = min(start + _CACHE_CHUNK, len(users) - 1)
            self._fill_cache_rows(model, users, self._cache_top, self._cache_scores, start, end)
            self._cache_filled = end  # published after the rows are written
        log.info("answer cache: %d users x k=%d in %.1fs",
                 len(users) - 1, self._cache_width, time.perf_counter() - started)

    def _new_lru(self) -> AnswerLRU:
        metrics = self._metrics
        lru = AnswerLRU(self.answer_cache_size, on_evict=metrics.cache_evictions.inc)
        metrics.cache_entries.set_function(lambda: len(lru))
        return lru

    @staticmethod
    def _fill_cache_rows(model, users, top, scores, start: int, end: int) -> None:
        rec = model.recommend(users[start:end].tolist(), top.shape[1])
        top[start:end] = np.searchsorted(model.data_.item_ids, rec.item_ids)
        scores[start:end] = rec.scores

    def _start_request_log(self) -> None:
        self._request_log = RequestLog(
            self.request_log_dir, self.name, on_drop=self._metrics.log_dropped
        ).start()

    def _start_feedback(self) -> None:
        if self.online_store and self._feedback is None:
            from serving.online_history import PredictorFeedback

            try:
                self._feedback = PredictorFeedback(self.online_store, self._model, self.name,
                                                   prefix=self.online_store_prefix)
            except Exception:  # the loop is an extra: answers go on without it
                log.exception("model %s: no online history (%s)", self.name, self.online_store)

    def start(self) -> None:
        """KServe's default start() marks the model ready; readiness here comes from load()."""
        if self.ready and self.request_log_dir is not None and self._request_log is None:
            self._start_request_log()

    def stop(self) -> None:
        self.ready = False
        self._metrics.ready.set(0)  # the gauge follows readiness, whatever ends it
        if getattr(self, "_cache_stop", None) is not None:
            self._cache_stop.set()
        if self._calls is not None:
            self._calls.close()  # answers in the workers finish, and get logged
            self._calls = None
        if self._request_log is not None:
            self._request_log.close()
        if self._feedback is not None:
            self._feedback.close()
            self._feedback = None

    def __getstate__(self) -> dict[str, Any]:
        # REST workers (--workers > 1) are spawned with a pickled copy; each opens its own log.
        # Metrics hold locks; the worker re-binds its own (in its own registry).
        state = self.__dict__.copy()
        state["_request_log"] = None
        state["_metrics"] = None
        state["_feedback"] = None
        state["_calls"] = None
        state["_answers"] = None  # holds a lock; each worker starts its own, empty
        state.pop("_cache_thread", None)  # a worker gets the rows filled so far
        state.pop("_cache_stop", None)
        return state

    def __setstate__(self, state: dict[str, Any]) -> None:
        from serving.http_errors import install_request_error_handler
        from serving.model_server import quiet_logging

        install_request_error_handler()  # a spawned REST worker imports KServe's app afresh
        quiet_logging(bool(state.get("enable_latency_logging")))
        self.__dict__.update(state)
        self._metrics = ModelMetrics(self.name)
        if "_answers" in state:
            self._answers = self._new_lru()  # each worker keeps its own
        if self.ready:
            manifest = self._model.manifest_
            self._metrics.set_model(self.model_version, str(manifest.get("data_fingerprint", "")))
            if self.request_log_dir is not None:
                self._start_request_log()
            self._start_feedback()

    # ------------------------------------------------------------------ metadata
    def get_input_types(self) -> list[dict]:
        return [dict(t) for t in INPUT_TYPES]

    def get_output_types(self) -> list[dict]:
        return [dict(t) for t in OUTPUT_TYPES]

    # ------------------------------------------------------------------ inference
    def not_ready_error(self) -> ModelNotReady:
        """The refusal of a request while the model is not ready, counted, with the reason."""
        self._metrics.not_ready.inc()
        error = ModelNotReady(self.name, self.load_error or "")
        error.reason = str(error)  # KServe's gRPC interceptor reads .reason (else: UNKNOWN)
        return error

    async def predict(
        self,
        payload: InferRequest | dict,
        headers: Mapping[str, str] | None = None,
        response_headers: dict[str, str] | None = None,
        *,
        explain: bool = False,
    ) -> InferResponse | dict:
        if not self.ready:
            raise self.not_ready_error()
        is_v2 = isinstance(payload, InferRequest)
        try:
            query = self._parse_v2(payload) if is_v2 else self._parse_v1(payload)
            query.explain = query.explain or explain
            self._check_bounds(query)
            if query.explain:
                self._check_explain_bounds(query)
        except InvalidInput:
            self._metrics.invalid_input.inc()
            raise
        except Exception as exc:  # whatever a client sends is a 400, but say where it broke
            self._metrics.invalid_input.inc()
            log.warning("unexpected error parsing a request (%s: %s)", type(exc).__name__, exc, exc_info=True)
            raise InvalidInput(f"malformed request: {type(exc).__name__}: {exc}") from None
        if self._feedback is not None and not query.by_item:  # what users did since training
            query.fresh = self._feedback.fresh_rows(query.ids.tolist())
        try:
            answer = await self._answer(query)
            explanations = await self._explain_answer(query, answer) if query.explain else None
        except Exception:
            self._metrics.internal.inc()
            raise
        request_id = self._request_id(payload if is_v2 else None, headers)
        self._count_and_log(query, answer, request_id)
        if explanations is not None:
            return self._explained_response(payload, query, answer, request_id, explanations)
        return self._v2_response(payload, answer, request_id) if is_v2 else self._v1_response(query, answer, request_id)

    async def explain(self, payload: InferRequest | dict,
                      headers: Mapping[str, str] | None = None) -> InferResponse | dict:
        """KServe's explain verb (`POST /v1/models/{name}:explain`, the body of `:predict`):
        the answer and, row by row, why (`components/models/explain.py`)."""
        return await self.predict(payload, headers, explain=True)

    async def _answer(self, query: Query) -> Answer:
        """A cached answer on the spot; anything that calls the model in a worker thread. Rows
        the answer cache lacks are scored by the batcher, with those of concurrent requests."""
        calls = self.model_calls()
        if not query.by_item:
            parts = self._cache_parts(query)
            if parts is not None and not parts.missing:
                self._metrics.cache_hits.inc(len(query.ids))
                return self._cached_answer(query, parts)
            if parts is not None:
                return await calls.batched(self._fill_batch, (query, parts), len(parts.missing))
        work = self._similar if query.by_item else self._recommend
        return await calls.run(work, query)

    def model_calls(self) -> ModelCalls:
        if self._calls is None:
            self._calls = ModelCalls(self.name, threads=self.model_threads,
                                     max_batch=self.batch_max_size,
                                     max_wait_ms=self.batch_max_wait_ms,
                                     loop_rows=self.loop_batch_rows)
        return self._calls

    # ------------------------------------------------------------------ explanations
    def _check_explain_bounds(self, query: Query) -> None:
        """An explanation costs about a model call per row: fewer answer entries per request."""
        batch, width = len(query.ids), int(query.k.max())
        if batch * width > self.max_explain_items:
            raise InvalidInput(
                f"explain: a batch of {batch} at k={width} asks to explain {batch * width:,} "
                f"items, above the limit of {self.max_explain_items:,} per request (ask for a "
                "smaller k or batch)"
            )

    async def _explain_answer(self, query: Query, answer: Answer) -> list[dict]:
        """The explanations of an answer, computed in a model worker thread like any model
        call (only when asked: the predict path never comes here)."""
        return await self.model_calls().run(self._explanations, query, answer)

    def _explanations(self, query: Query, answer: Answer) -> list[dict]:
        """One explanation per row, of the items the row answered, in their order. A user's
        history is what the model scored with (the client's, then the online history, whose
        items are marked fresh)."""
        model, rows = self._model, []
        answered = answer.item_ids.tolist()
        for row, query_id in enumerate(query.ids.tolist()):
            items = [item for item in answered[row] if item]  # padding is at a row's end
            if query.by_item:
                resolved = str(answer.resolved_ids[row])
                rows.append(explain_similar(model, resolved, items) if resolved else
                            {"user_id": None, "item_id": query_id, "kind": "similar",
                             "reason": "no item matches the query", "items": []})
                continue
            sent = [item for item in query.history[row] if item] if query.history else []
            fresh = list(query.fresh[row]) if query.fresh is not None else []
            rows.append(explain_recommendations(
                model, query_id, items, history_item_ids=[*sent, *fresh] or None,
                fresh_item_ids=fresh))
        self._metrics.explained_rows.inc(len(rows))
        return rows

    def _explained_response(self, payload: InferRequest | dict, query: Query, answer: Answer,
                            request_id: str, explanations: list[dict]) -> InferResponse | dict:
        """The predict answer with the explanations: v2 gains the `explanations` output (one
        JSON text per row), v1 an `explanations` list beside `predictions`."""
        if not isinstance(payload, InferRequest):
            response = self._v1_response(query, answer, request_id)
            response["explanations"] = explanations
            return response
        response = self._v2_response(payload, answer, request_id)
        texts = np.asarray([orjson.dumps(e).decode() for e in explanations], dtype=object)
        out = InferOutput("explanations", [len(texts)], "BYTES", texts)
        if payload.from_grpc:  # encoded now, as _v2_response does for the other outputs
            data, out.data = out.data, None
            out.set_data_from_numpy(data, binary_data=True)
        response.outputs.append(out)
        return response

    def _check_bounds(self, query: Query) -> None:
        batch, width = len(query.ids), int(query.k.max())
        if batch * width > self.max_answer_items:
            raise InvalidInput(
                f"k: a batch of {batch} at k={width} asks for {batch * width:,} items, above the "
                f"limit of {self.max_answer_items:,} per request (ask for a smaller k or batch)"
            )
        if not query.by_item:
            return
        long = [i for i, q in enumerate(query.ids.tolist()) if len(q) > MAX_QUERY_LENGTH]
        if long:
            raise InvalidInput(
                f"item_id: value {long[0]} has {len(query.ids[long[0]]):,} characters, above the "
                f"limit of {MAX_QUERY_LENGTH} for an id or a title"
            )
        titles = sum(1 for q in query.ids.tolist() if q not in self._item_id_set)
        if titles > self.max_title_queries:
            raise InvalidInput(
                f"item_id: {titles} values are titles to match, above the limit of "
                f"{self.max_title_queries} per request (exact item ids are not limited)"
            )

    @staticmethod
    def _request_id(payload: InferRequest | None, headers: Mapping[str, str] | None) -> str:
        # tritonclient sends no id, and KServe refuses a v2 response without one.
        if payload is not None and payload.id:
            return str(payload.id)
        if headers and headers.get("x-request-id"):
            return str(headers["x-request-id"])
        return os.urandom(16).hex()

    def _parse_v2(self, request: InferRequest) -> Query:
        inputs: dict[str, InferInput] = {}
        for inp in request.inputs or []:
            if inp.name in inputs:
                raise InvalidInput(f"{inp.name}: input given twice")
            inputs[inp.name] = inp
        if "user_id" in inputs and "item_id" in inputs:
            raise InvalidInput("give either user_id (recommendations) or item_id (similar items), not both")
        if "user_id" not in inputs and "item_id" not in inputs:
            raise InvalidInput("missing input: user_id (BYTES or INT64 [B]) or item_id (BYTES [B])")
        by_item = "item_id" in inputs
        expected = ITEM_INPUTS if by_item else USER_INPUTS
        unknown = sorted(set(inputs) - set(expected))
        if unknown:
            raise InvalidInput(
                f"unknown input(s) {', '.join(unknown)} for a {'item_id' if by_item else 'user_id'} "
                f"request (accepted: {', '.join(expected)})"
            )
        ids = _ids(inputs[expected[0]], self.max_batch_size)
        batch = len(ids)
        limit, what = (
            (self.n_items - 1, "the number of other items") if by_item
            else (self.n_items, "the catalogue size")
        )
        if "k" in inputs:
            k = _check_k(_tensor(inputs["k"], _K_TYPES, 1), batch, limit, what)
        else:
            k = np.full(batch, min(DEFAULT_K, limit), dtype=np.int64)
        query = Query(by_item, ids, k)
        if "exclude_item_ids" in inputs:
            query.exclude = _id_lists(inputs["exclude_item_ids"], batch)
        if "history_item_ids" in inputs:
            query.history = _id_lists(inputs["history_item_ids"], batch)
        if "explain" in inputs:
            query.explain = _explain_flag(inputs["explain"])
        return query

    def _parse_v1(self, body: Any) -> Query:
        if isinstance(body, (bytes, str)):  # KServe passes the body through for a non-JSON content type
            try:
                body = orjson.loads(body)
            except orjson.JSONDecodeError:
                raise InvalidInput("the body is not JSON") from None
        if not isinstance(body, dict):
            raise InvalidInput('the body must be a JSON object {"instances": [...]}')
        extra = sorted(set(body) - {"instances"})
        if extra:
            raise InvalidInput(f"unknown field(s) {', '.join(map(str, extra))}: expected only \"instances\"")
        instances = body.get("instances")
        if not isinstance(instances, list):
            raise InvalidInput('"instances" must be a list of {"user_id": ..., "k": ...} objects')
        if not instances:
            raise InvalidInput('"instances" is empty')
        if len(instances) > self.max_batch_size:
            raise InvalidInput(
                f'"instances": batch of {len(instances)} exceeds the limit of {self.max_batch_size}'
            )
        if not all(isinstance(i, dict) for i in instances):
            raise InvalidInput('"instances" must hold objects such as {"user_id": "42", "k": 10}')
        by_item = "item_id" in instances[0]
        key, expected = ("item_id", ITEM_FIELDS) if by_item else ("user_id", USER_FIELDS)
        limit = self.n_items - 1 if by_item else self.n_items
        ids, ks, exclude, history, listed = [], [], [], [], 0
        for row, inst in enumerate(instances):
            where = f"instances[{row}]"
            unknown = sorted(set(inst) - set(expected))
            if unknown:
                raise InvalidInput(
                    f"{where}: unknown field(s) {', '.join(unknown)} (accepted: {', '.join(expected)})"
                )
            if key not in inst:
                other = "user_id" if by_item else "item_id"
                raise InvalidInput(
                    f"{where}: missing {key} (every instance of one request asks the same thing)"
                    if other not in inst
                    else f"{where}: mixes {other} and {key} requests; send them separately"
                )
            value = inst[key]
            if isinstance(value, bool) or not isinstance(value, (str, int)):
                raise InvalidInput(f"{where}.{key}: must be a string or an integer")
            _check_text(f"{where}.{key}", [str(value)])
            ids.append(str(value))
            k = inst.get("k", min(DEFAULT_K, limit))
            if isinstance(k, bool) or not isinstance(k, int):
                raise InvalidInput(f"{where}.k: must be an integer, got {k!r}")
            if not 1 <= k <= limit:
                raise InvalidInput(f"{where}.k: must be between 1 and {limit}, got {k}")
            ks.append(k)
            for name, lists in (("exclude_item_ids", exclude), ("history_item_ids", history)):
                value = inst.get(name, [])
                if not isinstance(value, list) or not all(
                    isinstance(v, (str, int)) and not isinstance(v, bool) for v in value
                ):
                    raise InvalidInput(f"{where}.{name}: must be a list of item ids")
                if len(value) > MAX_LIST_LENGTH:
                    raise InvalidInput(f"{where}.{name}: more than {MAX_LIST_LENGTH} ids")
                listed += len(value)
                if listed > MAX_LIST_IDS:
                    raise InvalidInput(f"{name}: more than {MAX_LIST_IDS} ids per request")
                lists.append([str(v) for v in value])
                _check_text(f"{where}.{name}", lists[-1])
        query = Query(by_item, np.asarray(ids, dtype=object), np.asarray(ks, dtype=np.int64))
        if any(exclude):
            query.exclude = exclude
        if any(history):
            query.history = history
        return query

    # ------------------------------------------------------------------ the model call
    def _cache_parts(self, query: Query) -> _Parts | None:
        """This query's rows from the answer cache, or None when the cache cannot answer it
        (the client sent exclusions or a history, or k is past the cache's width). A user
        without fresh feedback is a row of the precomputed table (once filled); a user with
        some, or a row not filled yet, is an LRU entry valid for that user's fresh items as
        they are now. Rows found in neither are `missing`: the model answers them."""
        width = getattr(self, "_cache_width", 0)
        if (
            query.exclude is not None or query.history is not None
            or int(query.k.max()) > width
        ):
            return None
        table, lru = self._cache_top, self._answers
        if lru.size == 0 and (table is None or query.fresh is not None):
            return None  # no LRU: fresh rows (and rows past the table) take a plain model call
        ids = query.ids.tolist()
        users = self._model.user_index(ids)
        cold_row = -1 if table is None else len(table) - 1
        if query.fresh is None and table is not None and self._cache_filled >= cold_row:
            rows = np.where(users < 0, cold_row, users)  # the common case, vectorised
            k = int(query.k.max())
            return _Parts(self._cache_top[rows, :k], self._cache_scores[rows, :k], users < 0, [])
        batch = len(ids)
        top = np.zeros((batch, width), dtype=np.int32)
        scores = np.full((batch, width), np.nan, dtype=np.float32)
        cold = np.zeros(batch, dtype=bool)
        missing = []
        for i, user in enumerate(ids):
            version = query.fresh[i] if query.fresh is not None else ()
            row = int(users[i])
            if not version and table is not None and row < self._cache_filled:
                row = cold_row if row < 0 else row  # unknown users: the cold-start row
                top[i], scores[i], cold[i] = table[row], self._cache_scores[row], row == cold_row
                continue
            entry = lru.get(user, version)
            if entry is None:
                missing.append(i)
            else:
                top[i], scores[i], cold[i] = entry.top, entry.scores, entry.cold
        return _Parts(top, scores, cold, missing)

    def _cached_answer(self, query: Query, parts: _Parts) -> Answer:
        width = int(query.k.max())
        item_ids = self._item_ids[parts.top[:, :width]]
        scores = parts.scores[:, :width].copy()
        _pad(item_ids, scores, query.k)
        return Answer(item_ids, scores, cold_start=parts.cold)

    def _fill_rows(self, items: list[tuple[Query, _Parts]]) -> None:
        """Score the missing rows of every (query, parts) at the cache's width in one model
        call per kind, keep each in the LRU (under the fresh items it was scored with) and put
        it in its `parts`. Rows with fresh items and rows without are scored apart, each as it
        would be alone (a row's answer does not depend on the other rows of a batch)."""
        model = self._model
        rows = [(query, parts, i) for query, parts in items for i in parts.missing]
        fresh = [query.fresh[i] if query.fresh is not None else () for query, _, i in rows]
        width = items[0][1].top.shape[1]
        for with_fresh in (True, False):
            group = [j for j, row_fresh in enumerate(fresh) if bool(row_fresh) == with_fresh]
            if not group:
                continue
            rec = model.recommend(
                [str(rows[j][0].ids[rows[j][2]]) for j in group], width,
                history_item_ids=[list(fresh[j]) for j in group] if with_fresh else None,
            )
            top = np.searchsorted(model.data_.item_ids, rec.item_ids).astype(np.int32)
            scores = rec.scores.astype(np.float32)
            cold = np.asarray(rec.cold_start, dtype=bool)
            for n, j in enumerate(group):
                query, parts, i = rows[j]
                parts.top[i], parts.scores[i], parts.cold[i] = top[n], scores[n], cold[n]
                self._answers.put(str(query.ids[i]), _Cached(  # copies: not views of a batch
                    fresh[j], top[n].copy(), scores[n].copy(), bool(cold[n])))

    def _fill_batch(self, items: list[tuple[Query, _Parts]]) -> list[Answer]:
        """The batcher's call: the missing rows of concurrent requests scored together, then
        each request's answer from its rows."""
        self._fill_rows(items)
        answers = []
        for query, parts in items:
            self._metrics.cache_misses.inc(len(parts.missing))
            hits = len(query.ids) - len(parts.missing)
            if hits:
                self._metrics.cache_hits.inc(hits)
            answers.append(self._cached_answer(query, parts))
        return answers

    def _recommend(self, query: Query) -> Answer:
        parts = self._cache_parts(query)
        if parts is not None:
            if parts.missing:
                self._metrics.cache_misses.inc(len(parts.missing))
                self._fill_rows([(query, parts)])
            hits = len(query.ids) - len(parts.missing)
            if hits:
                self._metrics.cache_hits.inc(hits)
            return self._cached_answer(query, parts)
        width = int(query.k.max())
        rec = self._model.recommend(
            query.ids.tolist(), width, exclude_item_ids=query.exclude,
            history_item_ids=query.model_history(),
        )
        item_ids, scores = rec.item_ids.astype(object), rec.scores.astype(np.float32, copy=True)
        _pad(item_ids, scores, query.k)
        return Answer(item_ids, scores, cold_start=np.asarray(rec.cold_start, dtype=bool))

    def _similar(self, query: Query) -> Answer:
        batch, width = len(query.ids), int(query.k.max())
        index = self._model.resolve_items(query.ids.tolist())
        found = index >= 0
        item_ids = np.full((batch, width), "", dtype=object)
        scores = np.full((batch, width), np.nan, dtype=np.float32)
        if found.any():
            ids, sims = self._model.similar_items(index[found], width)
            item_ids[found, : ids.shape[1]] = ids
            scores[found, : sims.shape[1]] = sims
        _pad(item_ids, scores, query.k)
        safe = np.where(found, index, 0)
        return Answer(
            item_ids,
            scores,
            resolved_ids=np.where(found, self._item_ids[safe], ""),
            resolved_titles=np.where(found, self._titles[safe], ""),
        )

    def _count_and_log(self, query: Query, answer: Answer, request_id: str) -> None:
        m = self._metrics
        if query.by_item:
            m.item_rows.inc(len(query.ids))
            unresolved = int((answer.resolved_ids == "").sum())
            if unresolved:
                m.unresolved.inc(unresolved)
        else:
            m.user_rows.inc(len(query.ids))
            cold = int(answer.cold_start.sum())
            if cold:
                m.cold_start.inc(cold)
        if self._request_log is None and self._feedback is None:
            return
        entry = LogEntry(
            time.time(), request_id, self.model_version, query.ids, query.k,
            answer.item_ids, answer.scores, answer.cold_start, answer.resolved_ids,
        )
        if self._request_log is not None:
            self._request_log.log(entry)
        if self._feedback is not None:
            self._feedback.shown(entry)  # a queue hand-off, like the request log

    # ------------------------------------------------------------------ responses
    def _v2_response(self, request: InferRequest, answer: Answer, request_id: str) -> InferResponse:
        shape = list(answer.item_ids.shape)
        outputs = [
            InferOutput("item_ids", shape, "BYTES", answer.item_ids),
            InferOutput("scores", shape, "FP32", answer.scores),
        ]
        if answer.cold_start is not None:
            outputs.append(InferOutput("cold_start", [shape[0]], "BOOL", answer.cold_start))
        else:
            outputs.append(InferOutput("resolved_item_ids", [shape[0]], "BYTES", answer.resolved_ids))
            outputs.append(InferOutput("resolved_titles", [shape[0]], "BYTES", answer.resolved_titles))
        if request.from_grpc:
            # Encode now: KServe's to_grpc() tests numpy data for truth (ValueError) when the
            # request came as raw contents, which is how tritonclient.grpc sends it.
            for out in outputs:
                _set_binary(out)
        return InferResponse(
            response_id=request_id,
            model_name=self.name,
            model_version=self.model_version,
            infer_outputs=outputs,
            use_binary_outputs=request.use_binary_outputs,
            requested_outputs=request.request_outputs,
        )

    def _v1_response(self, query: Query, answer: Answer, request_id: str) -> dict:
        keep = answer.item_ids != ""
        ids_rows, score_rows = answer.item_ids.tolist(), answer.scores.tolist()
        predictions = []
        for row, query_id in enumerate(query.ids.tolist()):
            n = int(keep[row].sum())  # padding is always at the end of a row
            pred: dict[str, Any] = (
                {"item_id": query_id, "resolved_item_id": answer.resolved_ids[row] or None,
                 "resolved_title": answer.resolved_titles[row] or None}
                if query.by_item else {"user_id": query_id, "cold_start": bool(answer.cold_start[row])}
            )
            pred["item_ids"] = ids_rows[row][:n]
            pred["scores"] = score_rows[row][:n]
            predictions.append(pred)
        # `id`, as v2 answers have: what a client sends back with its feedback (request_id)
        return {"predictions": predictions, "model_name": self.name,
                "model_version": self.model_version, "id": request_id}
