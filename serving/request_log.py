"""The request log: what the server recommended, one JSON line per answered row.

It feeds later checks (drift of the users and items asked for, of the scores, of the share of
cold starts) without a log pipeline. Answered requests are handed to a bounded queue on the
request path and written by one writer thread, so predict never waits on disk. Every row
answered is either written or counted as dropped, with the reason
(`recsys_request_log_dropped_total{reason}`): `queue_full` (the writer fell behind),
`encode` (a value JSON cannot carry), `write` (the disk is full, the file cannot be opened or
written). A write error is one warning line, not a dead writer and not a dead server; the
writer opens the file again for the next request, so logging resumes once the disk has room.

The file itself is `serving.jsonl_file.RotatingJsonLines` (why not the standard library's
rotating handler: see there): it knows to the line what reached the disk.
`read_request_log` skips a line that is not JSON (a fragment torn by a crash or a full disk).

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
replicas can share a directory), rotated when the next line would take them past `max_bytes`
into `.jsonl.1`, `.jsonl.2`, ...
"""
from __future__ import annotations

import logging
import os
import queue
import socket
import threading
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np

# The reader and the record's columns live in components (training and monitoring read the
# log; they may not import serving); they are re-exported here beside the writer.
from components.feedback.observations import REQUEST_LOG_COLUMNS as COLUMNS
from components.feedback.observations import REQUEST_LOG_PATTERN as FILE_PATTERN
from components.feedback.observations import read_request_log
from serving.jsonl_file import RotatingJsonLines

__all__ = ["COLUMNS", "FILE_PATTERN", "LogEntry", "RequestLog", "check_writable",
           "read_request_log", "records_from_cloudevents"]

try:  # orjson ships with kserve; the reader side works without it
    import orjson

    def _dumps(obj: Any) -> str:
        return orjson.dumps(obj).decode()

    def _line(obj: Any) -> bytes:
        return orjson.dumps(obj, option=orjson.OPT_APPEND_NEWLINE)

    _loads = orjson.loads

except ImportError:  # pragma: no cover
    import json

    def _dumps(obj: Any) -> str:
        return json.dumps(obj, separators=(",", ":"))

    def _line(obj: Any) -> bytes:
        return (_dumps(obj) + "\n").encode("utf-8")

    _loads = json.loads


log = logging.getLogger("recsys.request_log")

DEFAULT_K = 10  # the serving contract's default number of recommendations
DEFAULT_MAX_BYTES = 10 * 1024 * 1024
DEFAULT_BACKUP_COUNT = 10
# Why rows were not written (the `reason` label of the dropped-rows counter).
DROP_REASONS = ("queue_full", "encode", "write", "closed")
WARN_INTERVAL = 60.0  # seconds between two warnings about drops of one reason
_STOP = object()


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
    return datetime.fromtimestamp(unix_time, tz=UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


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


def _row_count(entry: LogEntry | list[dict[str, Any]]) -> int:
    return len(entry) if isinstance(entry, list) else len(entry.queries)


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
        on_drop: Callable[[int, str], None] | None = None,
    ):
        self.directory = Path(directory)
        self.model_name = model_name
        self.max_bytes = max_bytes
        self.backup_count = backup_count
        self.queue_size = queue_size
        self.on_drop = on_drop  # (rows, reason): counts what was answered but not logged
        self.dropped = dict.fromkeys(DROP_REASONS, 0)
        self._queue: queue.Queue | None = None
        self._thread: threading.Thread | None = None
        self._file: RotatingJsonLines | None = None
        self._lock = threading.Lock()
        self._warned: dict[str, float] = {}
        self._unreported = dict.fromkeys(DROP_REASONS, 0)

    @property
    def path(self) -> Path:
        return self.directory / f"requests-{socket.gethostname()}-{os.getpid()}.jsonl"

    def start(self) -> RequestLog:
        if self._thread is not None:
            return self
        self.directory.mkdir(parents=True, exist_ok=True)
        self._file = RotatingJsonLines(self.path, self.max_bytes, self.backup_count)
        self._queue = queue.Queue(self.queue_size)
        self._thread = threading.Thread(
            target=self._run, args=(self._queue, self._file), name="recsys-request-log", daemon=True
        )
        self._thread.start()
        return self

    def log(self, entry: LogEntry | list[dict[str, Any]]) -> bool:
        """Hand one answered request (or its ready-made records) to the writer; False (and
        its rows counted as dropped) when the queue is full or the log is closed."""
        q = self._queue
        if q is None:
            self._drop(_row_count(entry), "closed", "the request log is closed")
            return False
        try:
            q.put_nowait(entry)
        except queue.Full:
            self._drop(_row_count(entry), "queue_full", f"{self.queue_size} requests waiting")
            return False
        return True

    def _run(self, entries: queue.Queue, file: RotatingJsonLines) -> None:
        while True:
            entry = entries.get()
            if entry is _STOP:
                break
            try:
                self._write(entry, file)
            except Exception as exc:  # noqa: BLE001 - the writer must outlive whatever one entry does
                self._drop(_row_count(entry), "encode", f"{type(exc).__name__}: {exc}")
        file.close()

    def _write(self, entry: LogEntry | list[dict[str, Any]], file: RotatingJsonLines) -> None:
        records = entry if isinstance(entry, list) else entry_records(entry, self.model_name)
        lines, bad, why = [], 0, ""
        for record in records:
            try:
                lines.append(_line(record))
            except Exception as exc:  # noqa: BLE001 - e.g. a lone surrogate, which UTF-8 cannot carry
                bad, why = bad + 1, f"{type(exc).__name__}: {exc}"
        if bad:
            self._drop(bad, "encode", why)
        written, error = file.write(lines)
        if error is not None:
            self._drop(len(lines) - written, "write", f"{file.path}: {error}")

    def _drop(self, rows: int, reason: str, detail: str) -> None:
        if rows <= 0:
            return
        with self._lock:
            self.dropped[reason] += rows
            self._unreported[reason] += rows
            now = time.monotonic()
            due = now - self._warned.get(reason, -WARN_INTERVAL) >= WARN_INTERVAL
            if due:
                count, self._unreported[reason] = self._unreported[reason], 0
                self._warned[reason] = now
        if self.on_drop is not None:
            self.on_drop(rows, reason)
        if due:  # one line a minute at most per reason, however fast rows are lost
            log.warning("request log: %d row(s) not logged (%s): %s", count, reason, detail)

    def close(self, timeout: float = 30.0) -> None:
        """Write what is queued, then close the file (idempotent, never raises)."""
        thread, q = self._thread, self._queue
        self._thread = self._queue = None
        if thread is None:
            return
        try:
            q.put(_STOP, timeout=timeout)
            thread.join(timeout)
        except queue.Full:
            log.warning("request log: the writer did not drain its queue in %.0fs", timeout)
        if thread.is_alive():
            log.warning("request log: the writer did not finish in %.0fs", timeout)
        elif q.qsize():
            self._drop(q.qsize(), "closed", "left in the queue at shutdown")

    # A RequestLog travels to worker processes (KServe spawns REST workers) unstarted.
    def __getstate__(self) -> dict[str, Any]:
        state = self.__dict__.copy()
        state.update(_queue=None, _thread=None, _file=None, _lock=None)
        return state

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__dict__.update(state)
        self._lock = threading.Lock()


def check_writable(directory: str | Path) -> None:
    """Raise OSError with a clear message unless `directory` is (or can be made) a directory
    this process can create files in: what `--request-log` checks before the model loads."""
    path = Path(directory)
    if path.exists() and not path.is_dir():
        raise NotADirectoryError(f"{path}: exists and is not a directory")
    path.mkdir(parents=True, exist_ok=True)
    probe = path / f".write-test-{os.getpid()}"
    probe.touch()
    probe.unlink()


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
        datetime.fromisoformat(when).timestamp() if when else time.time()
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
        item_ids[item_ids == None] = ""
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
