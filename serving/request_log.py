"""The request log: what the server recommended, one JSON line per answered row.

It feeds later checks (drift of the users and items asked for, of the scores, of the share of
cold starts) without a log pipeline. Records are handed to a queue on the request path and
written by the standard library's `QueueListener` thread into a `RotatingFileHandler`, so
predict never waits on disk; when the writer falls behind, records are dropped and counted
(`recsys_request_log_dropped_total`) rather than slowing answers. The listener is stopped, and
the queue drained, when the model is unloaded at shutdown.

Record (the same one `records_from_cloudevents` rebuilds from KServe's payload logger)::

    {"timestamp": "2025-01-31T12:00:00.123456Z", "unix_time": 1738324800.123456,
     "model_name": "recsys", "model_version": "20250131-115900-ab12cd",
     "request_id": "4f0c...", "row": 0,
     "user_id": "42", "item_id": null, "resolved_item_id": null,
     "cold_start": false, "k": 10,
     "item_ids": ["50", "181", ...], "scores": [3.1, 2.9, ...]}

`user_id` is set for recommendations, `item_id` (the query as sent) and `resolved_item_id` for
similar-item rows (`cold_start` is then null). `item_ids`/`scores` hold the row's answer without
padding (at most `k` entries). Files are `requests-<host>-<pid>.jsonl` (several processes or
replicas can share a directory), rotated at `max_bytes` into `.jsonl.1`, `.jsonl.2`, ...
"""
from __future__ import annotations

import logging
import logging.handlers
import os
import queue
import socket
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import numpy as np

# The reader and the record's columns live in components (training and monitoring read the
# log; they may not import serving); they are re-exported here beside the writer.
from components.observations import REQUEST_LOG_COLUMNS as COLUMNS
from components.observations import REQUEST_LOG_PATTERN as FILE_PATTERN
from components.observations import read_request_log

__all__ = ["COLUMNS", "FILE_PATTERN", "LogEntry", "RequestLog", "read_request_log",
           "records_from_cloudevents"]

try:  # orjson ships with kserve; the reader side works without it
    import orjson

    def _dumps(obj: Any) -> str:
        return orjson.dumps(obj).decode()

except ImportError:  # pragma: no cover
    import json

    def _dumps(obj: Any) -> str:
        return json.dumps(obj, separators=(",", ":"))


DEFAULT_K = 10  # the serving contract's default number of recommendations
DEFAULT_MAX_BYTES = 10 * 1024 * 1024
DEFAULT_BACKUP_COUNT = 10


@dataclass
class LogEntry:
    """One answered request, as the predictor has it (arrays, not yet records)."""

    unix_time: float
    request_id: str
    model_version: str
    queries: np.ndarray  # [B] str: user ids, or item ids/titles as sent
    k: np.ndarray  # [B] int
    item_ids: np.ndarray  # [B, K] str, "" = padding
    scores: np.ndarray  # [B, K] float
    cold_start: np.ndarray | None = None  # [B] bool (user rows)
    resolved: np.ndarray | None = None  # [B] str (item rows; "" = no match)


def iso_time(unix_time: float) -> str:
    return datetime.fromtimestamp(unix_time, tz=timezone.utc).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def entry_records(entry: LogEntry, model_name: str) -> list[dict[str, Any]]:
    """The records of one answered request (a loop over rows: runs in the writer thread)."""
    stamp = iso_time(entry.unix_time)
    by_item = entry.resolved is not None
    out = []
    for row, query in enumerate(entry.queries.tolist()):
        k = int(entry.k[row])
        ids = entry.item_ids[row, :k]
        keep = ids != ""
        resolved = str(entry.resolved[row]) if by_item else None
        out.append(
            {
                "timestamp": stamp,
                "unix_time": entry.unix_time,
                "model_name": model_name,
                "model_version": entry.model_version,
                "request_id": entry.request_id,
                "row": row,
                "user_id": None if by_item else str(query),
                "item_id": str(query) if by_item else None,
                "resolved_item_id": (resolved or None) if by_item else None,
                "cold_start": None if by_item else bool(entry.cold_start[row]),
                "k": k,
                "item_ids": ids[keep].tolist(),
                "scores": [float(s) for s in entry.scores[row, :k][keep].tolist()],
            }
        )
    return out


class _JsonLinesFormatter(logging.Formatter):
    def __init__(self, model_name: str):
        super().__init__()
        self.model_name = model_name

    def format(self, record: logging.LogRecord) -> str:
        # RotatingFileHandler formats twice (to size the rollover, then to write): cache it.
        cached = getattr(record, "_jsonl", None)
        if cached is None:
            records = record.msg if isinstance(record.msg, list) else entry_records(record.msg, self.model_name)
            cached = "\n".join(_dumps(r) for r in records)
            record._jsonl = cached
        return cached


class RequestLog:
    """Append-only, size-rotated JSON-lines log written off the request path."""

    def __init__(
        self,
        directory: str | Path,
        model_name: str,
        *,
        max_bytes: int = DEFAULT_MAX_BYTES,
        backup_count: int = DEFAULT_BACKUP_COUNT,
        queue_size: int = 10_000,
        on_drop: Callable[[], None] | None = None,
    ):
        self.directory = Path(directory)
        self.model_name = model_name
        self.max_bytes = max_bytes
        self.backup_count = backup_count
        self.queue_size = queue_size
        self.on_drop = on_drop
        self._queue: queue.Queue | None = None
        self._listener: logging.handlers.QueueListener | None = None
        self._handler: logging.Handler | None = None

    @property
    def path(self) -> Path:
        return self.directory / f"requests-{socket.gethostname()}-{os.getpid()}.jsonl"

    def start(self) -> "RequestLog":
        if self._listener is not None:
            return self
        self.directory.mkdir(parents=True, exist_ok=True)
        handler = logging.handlers.RotatingFileHandler(
            self.path, maxBytes=self.max_bytes, backupCount=self.backup_count, encoding="utf-8"
        )
        handler.setFormatter(_JsonLinesFormatter(self.model_name))
        self._queue = queue.Queue(self.queue_size)
        self._handler = handler
        self._listener = logging.handlers.QueueListener(self._queue, handler)
        self._listener.start()
        return self

    def log(self, entry: LogEntry | list[dict[str, Any]]) -> bool:
        """Hand one answered request (or its ready-made records) to the writer; False (and
        counted) when the queue is full."""
        if self._queue is None:
            return False
        record = logging.LogRecord("recsys.requests", logging.INFO, "", 0, entry, None, None)
        try:
            self._queue.put_nowait(record)
        except queue.Full:
            if self.on_drop is not None:
                self.on_drop()
            return False
        return True

    def close(self) -> None:
        """Write what is queued, then close the file (idempotent)."""
        listener, self._listener = self._listener, None
        if listener is not None:
            listener.stop()  # enqueues a sentinel and joins: everything queued is written
        if self._handler is not None:
            self._handler.close()
            self._handler = None
        self._queue = None

    # A RequestLog travels to worker processes (KServe spawns REST workers) unstarted.
    def __getstate__(self) -> dict[str, Any]:
        state = self.__dict__.copy()
        state.update(_queue=None, _listener=None, _handler=None)
        return state


# ---------------------------------------------------------------- KServe payload logger
def _v2_tensors(body: Mapping[str, Any], key: str) -> dict[str, np.ndarray]:
    tensors = {}
    for tensor in body.get(key) or []:
        shape = [int(d) for d in tensor.get("shape", [])]
        dtype = object if tensor.get("datatype") == "BYTES" else None
        tensors[tensor["name"]] = np.asarray(tensor.get("data", []), dtype=dtype).reshape(shape)
    return tensors


def _padded(rows: list[list[Any]], fill: Any) -> np.ndarray:
    width = max((len(r) for r in rows), default=0)
    out = np.full((len(rows), width), fill, dtype=object)
    for i, r in enumerate(rows):
        out[i, : len(r)] = r
    return out


def records_from_cloudevents(
    request_body: Mapping[str, Any],
    response_body: Mapping[str, Any],
    headers: Mapping[str, str],
) -> list[dict[str, Any]]:
    """Rebuild request-log records from one KServe payload-logger event pair.

    KServe's logger (`logger: {mode: all}` on the InferenceService) posts two binary-mode
    CloudEvents per call, `org.kubeflow.serving.inference.request` then `...response`, sharing
    `ce-id` (the request id); their bodies are the JSON request and response as sent. Pass both
    bodies (parsed) and either event's headers. v2 and v1 bodies are understood; v2 bodies
    with binary tensor data (tritonclient's default over HTTP) are not, as they are not JSON.
    """
    h = {k.lower(): v for k, v in headers.items()}
    when = h.get("ce-time")
    unix_time = (
        datetime.fromisoformat(when.replace("Z", "+00:00")).timestamp() if when else time.time()
    )
    request_id = h.get("ce-id") or str(response_body.get("id") or "")
    model_name = response_body.get("model_name") or h.get("ce-inferenceservicename") or ""
    model_version = str(response_body.get("model_version") or "")
    if "instances" in request_body:  # v1
        preds = response_body.get("predictions") or []
        instances = request_body["instances"]
        by_item = bool(instances) and "item_id" in instances[0]
        queries = [str(i.get("item_id" if by_item else "user_id")) for i in instances]
        k = [int(i.get("k", DEFAULT_K)) for i in instances]
        entry = LogEntry(
            unix_time, request_id, model_version, np.asarray(queries, dtype=object), np.asarray(k),
            _padded([p.get("item_ids", []) for p in preds], ""),
            _padded([p.get("scores", []) for p in preds], np.nan).astype(float),
            cold_start=None if by_item else np.asarray([bool(p.get("cold_start")) for p in preds]),
            resolved=np.asarray([p.get("resolved_item_id") or "" for p in preds], dtype=object)
            if by_item else None,
        )
    else:  # v2
        inputs, outputs = _v2_tensors(request_body, "inputs"), _v2_tensors(response_body, "outputs")
        by_item = "item_id" in inputs
        queries = inputs["item_id" if by_item else "user_id"].reshape(-1).astype(str).astype(object)
        item_ids = outputs["item_ids"].astype(object)
        item_ids[item_ids == None] = ""  # noqa: E711 (elementwise)
        scores = np.asarray(outputs["scores"], dtype=float)
        k_in = inputs.get("k")
        k = np.full(len(queries), item_ids.shape[1]) if k_in is None else np.broadcast_to(
            k_in.reshape(-1).astype(int), (len(queries),)
        )
        cold = outputs.get("cold_start")
        resolved = outputs.get("resolved_item_ids")
        entry = LogEntry(
            unix_time, request_id, model_version, queries, np.asarray(k), item_ids, scores,
            cold_start=None if by_item else (
                cold.reshape(-1).astype(bool) if cold is not None else np.zeros(len(queries), bool)
            ),
            resolved=resolved.reshape(-1).astype(str).astype(object) if by_item else None,
        )
    return entry_records(entry, model_name)
