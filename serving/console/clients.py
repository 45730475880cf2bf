"""The two services the console calls over HTTP: the predictor (KServe v2) and the events API.

Every call has a timeout, and every way it can fail (nothing listening, a timeout, an error
status, an answer that is not what the contract says) becomes `Unavailable` or `Refused` with one
sentence a person can act on; the pages show that sentence instead of a stack trace.
"""
from __future__ import annotations

import json
import time
import uuid
from dataclasses import dataclass
from typing import Any

import httpx


class Unavailable(Exception):
    """A store or service the page needs is not there (not running, unreachable, broken)."""


class Refused(Exception):
    """The service answered, and said no (HTTP 4xx): the message is its own."""


def _short(exc: Exception) -> str:
    text = str(exc).strip().splitlines()
    return text[0] if text else type(exc).__name__


def _error_of(response: httpx.Response) -> str:
    try:
        body = response.json()
    except ValueError:
        return response.text[:200] or f"HTTP {response.status_code}"
    if isinstance(body, dict) and body.get("error"):
        return str(body["error"])
    if isinstance(body, dict) and body.get("detail"):
        return str(body["detail"])
    return f"HTTP {response.status_code}"


@dataclass(frozen=True)
class Answer:
    """One recommendation answer, as the predictor gave it."""

    query: str  # the user id, or the item id / title asked about
    item_ids: list[str]
    scores: list[float]
    model_version: str  # the version that answered this row
    request_id: str
    latency_ms: float
    cold_start: bool | None = None  # user answers
    resolved_item_id: str | None = None  # similar-item answers: the item the query matched
    resolved_title: str | None = None
    explanation: dict | None = None  # when asked with explain: why each item (the contract's dict)


class PredictorClient:
    """`POST /v2/models/{name}/infer` of a running `recsys serve` (or the InferenceService)."""

    def __init__(self, url: str, model_name: str, timeout: float):
        self.url = url.rstrip("/")
        self.model_name = model_name
        self.client = httpx.Client(timeout=timeout)

    def close(self) -> None:
        self.client.close()

    def _down(self, exc: Exception) -> Unavailable:
        return Unavailable(f"no predictor answering at {self.url} ({_short(exc)}): start one with "
                           "`recsys serve`, or give the console --predictor-url")

    def ready(self) -> str | None:
        """None when the model is ready, else why not."""
        try:
            response = self.client.get(f"{self.url}/v2/models/{self.model_name}/ready")
        except httpx.HTTPError as exc:
            return str(self._down(exc))
        if response.status_code == 200:
            return None
        if response.status_code == 404:
            return f"the predictor at {self.url} serves no model named '{self.model_name}'"
        return f"the predictor at {self.url} is up but its model is not ready (see its log)"

    def _infer(self, inputs: list[dict[str, Any]]) -> tuple[dict[str, Any], dict, float]:
        request_id = uuid.uuid4().hex
        started = time.perf_counter()
        try:
            response = self.client.post(
                f"{self.url}/v2/models/{self.model_name}/infer",
                json={"id": request_id, "inputs": inputs},
            )
        except httpx.HTTPError as exc:
            raise self._down(exc) from None
        latency_ms = (time.perf_counter() - started) * 1e3
        if response.status_code == 400:
            raise Refused(_error_of(response))
        if response.status_code != 200:
            raise Unavailable(f"the predictor at {self.url} answered HTTP {response.status_code}: "
                              f"{_error_of(response)}")
        try:
            body = response.json()
            outputs = {o["name"]: o["data"] for o in body["outputs"]}
        except (ValueError, KeyError, TypeError):
            raise Unavailable(f"the predictor at {self.url} answered something that is not a v2 "
                              "inference response") from None
        return body, outputs, latency_ms

    @staticmethod
    def _row(outputs: dict[str, list], k: int) -> tuple[list[str], list[float]]:
        ids = [str(i) for i in outputs.get("item_ids", [])[:k]]
        scores = [float("nan") if s is None else float(s) for s in outputs.get("scores", [])[:k]]
        keep = [n for n, item in enumerate(ids) if item != ""]  # "" pads a short row
        return [ids[n] for n in keep], [scores[n] for n in keep]

    @staticmethod
    def _version(body: dict[str, Any], outputs: dict[str, list]) -> str:
        per_row = outputs.get("model_versions")  # an experiment router names each row's version
        if per_row:
            return str(per_row[0])
        return str(body.get("model_version") or "")

    def recommend(self, user_id: str, k: int, *, explain: bool = False) -> Answer:
        """One user's answer; with `explain`, also why each item (the `explain` input). A
        predictor too old to explain refuses the input: then the answer comes without."""
        inputs = [
            {"name": "user_id", "datatype": "BYTES", "shape": [1], "data": [user_id]},
            {"name": "k", "datatype": "INT32", "shape": [1], "data": [k]},
        ]
        try:
            body, outputs, latency_ms = self._infer(
                [*inputs, {"name": "explain", "datatype": "BOOL", "shape": [1], "data": [True]}]
                if explain else inputs)
        except Refused as exc:
            if not explain or "explain" not in str(exc):
                raise
            body, outputs, latency_ms = self._infer(inputs)
        ids, scores = self._row(outputs, k)
        cold = outputs.get("cold_start")
        return Answer(user_id, ids, scores, self._version(body, outputs), str(body.get("id", "")),
                      latency_ms, cold_start=bool(cold[0]) if cold else None,
                      explanation=self._explanation(outputs))

    @staticmethod
    def _explanation(outputs: dict[str, list]) -> dict | None:
        texts = outputs.get("explanations") or []
        try:
            explanation = json.loads(texts[0]) if texts else None
        except (TypeError, ValueError):
            return None
        return explanation if isinstance(explanation, dict) else None

    def similar(self, query: str, k: int) -> Answer:
        body, outputs, latency_ms = self._infer([
            {"name": "item_id", "datatype": "BYTES", "shape": [1], "data": [query]},
            {"name": "k", "datatype": "INT32", "shape": [1], "data": [k]},
        ])
        ids, scores = self._row(outputs, k)
        resolved = (outputs.get("resolved_item_ids") or [""])[0] or None
        title = (outputs.get("resolved_titles") or [""])[0] or None
        return Answer(query, ids, scores, self._version(body, outputs), str(body.get("id", "")),
                      latency_ms, resolved_item_id=resolved, resolved_title=title)

    def metrics_text(self) -> str:
        try:
            response = self.client.get(f"{self.url}/metrics")
            response.raise_for_status()
        except httpx.HTTPError as exc:
            raise self._down(exc) from None
        return response.text


class EventsClient:
    """`POST /v1/events` of `recsys events serve`."""

    def __init__(self, url: str, timeout: float):
        self.url = url.rstrip("/")
        self.client = httpx.Client(timeout=timeout)

    def close(self) -> None:
        self.client.close()

    def _down(self, exc: Exception) -> Unavailable:
        return Unavailable(f"no events service answering at {self.url} ({_short(exc)}): start "
                           "one with `recsys events serve`, or give the console --events-url")

    def ready(self) -> str | None:
        try:
            response = self.client.get(f"{self.url}/healthz")
        except httpx.HTTPError as exc:
            return str(self._down(exc))
        if response.status_code != 200:
            return f"the events service at {self.url} is not healthy (HTTP {response.status_code})"
        return None

    def send(self, event: dict[str, Any]) -> str:
        """Post one event (an `event_id` is added); returns its id once the service stored it."""
        event = {"event_id": uuid.uuid4().hex, **event}
        try:
            response = self.client.post(f"{self.url}/v1/events", json=event)
        except httpx.HTTPError as exc:
            raise self._down(exc) from None
        if 400 <= response.status_code < 500:
            raise Refused(_error_of(response))
        if response.status_code >= 300:
            raise Unavailable(f"the events service at {self.url} answered HTTP "
                              f"{response.status_code}: {_error_of(response)}")
        return event["event_id"]
