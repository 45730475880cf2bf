"""A thin fast path for the hot REST route, `POST /v2/models/<name>/infer` with a JSON body.

KServe's route spends most of a request's event-loop time in FastAPI (routing, dependency
solving, parsing the body into pydantic models and dumping the answer back through them)
rather than in the model. This path, called by `RecsysMiddleware` in front of KServe's app,
parses the body with orjson, builds the same `InferRequest` KServe's decoding builds, calls the
same data plane (`DataPlane.infer`: the model's `__call__`, its latency histograms, the
predictor) and encodes the answer as KServe's route does, byte for byte (status, headers and
body; a test compares the two routes).

It takes only what it can answer exactly like KServe: a ready, registered model, no query
string or root path, `content-type: application/json`, no CloudEvent or binary-tensor headers,
and a body of the plain v2 shape (strict types, no request `parameters` or `outputs`). Anything
else, including a body orjson cannot parse, goes to KServe's route unchanged, with the body as
read. Errors the predictor raises are answered by the app's own exception handlers, as KServe's
route would answer them. Only a single-process REST server sets `data_plane`: spawned REST
workers (`--workers > 1`) keep KServe's route.
"""
from __future__ import annotations

from typing import Any

import orjson

PREFIX = "/v2/models/"
SUFFIX = "/infer"
_ORJSON_OPTIONS = orjson.OPT_NON_STR_KEYS | orjson.OPT_SERIALIZE_NUMPY
_REQUEST_KEYS = frozenset({"id", "inputs", "parameters", "outputs"})
_INPUT_KEYS = frozenset({"name", "shape", "datatype", "data", "parameters"})
_INPUT_REQUIRED = frozenset({"name", "shape", "datatype", "data"})
_RESPONSE_KEYS = frozenset({"id", "model_name", "model_version", "outputs"})
_OUTPUT_KEYS = frozenset({"name", "shape", "datatype", "data"})
_SCALARS = (str, int, float, bool, type(None))


class FastInfer:
    """The fast path's state: the data plane it calls (None: off)."""

    data_plane = None  # set by RecsysModelServer for a single-process REST server

    @classmethod
    def model_name(cls, scope) -> str | None:
        """The model a request is for, when the fast path may take it; else None."""
        if cls.data_plane is None or scope.get("method") != "POST":
            return None
        path = scope.get("path", "")
        if (not path.startswith(PREFIX) or not path.endswith(SUFFIX) or scope.get("query_string")
                or scope.get("root_path")):
            return None
        name = path[len(PREFIX):-len(SUFFIX)]
        if not name or "/" in name:
            return None
        model = cls.data_plane.model_registry.get_model(name)
        if model is None or not getattr(model, "ready", False):
            return None  # KServe's route gives the 404 / 503 and counts it
        json_body = False
        for key, value in scope.get("headers", ()):
            if key == b"content-type":
                json_body = value.split(b";", 1)[0].strip().lower() == b"application/json"
                if not json_body:
                    return None
            elif key.startswith(b"ce-") or key == b"inference-header-content-length":
                return None
        return name if json_body else None


def parse(body: bytes, model_name: str):
    """The `InferRequest` KServe's route would decode from `body`, or None when the body is not
    of the plain shape this path takes (KServe's route answers it then)."""
    from kserve.protocol.infer_type import InferInput, InferRequest

    try:
        request = orjson.loads(body)
    except orjson.JSONDecodeError:
        return None
    if type(request) is not dict or not request.keys() <= _REQUEST_KEYS:
        return None
    if request.get("parameters") is not None or request.get("outputs") is not None:
        return None
    request_id, inputs = request.get("id"), request.get("inputs")
    if (request_id is not None and type(request_id) is not str) or type(inputs) is not list:
        return None
    infer_inputs = []
    for inp in inputs:
        if (type(inp) is not dict or not _INPUT_REQUIRED <= inp.keys() <= _INPUT_KEYS
                or inp.get("parameters") is not None):
            return None
        name, shape, datatype, data = inp["name"], inp["shape"], inp["datatype"], inp["data"]
        if (type(name) is not str or type(datatype) is not str or type(shape) is not list
                or type(data) is not list or datatype == "FP16"
                or not all(type(d) is int for d in shape)):
            return None
        infer_inputs.append(InferInput(name=name, shape=shape, datatype=datatype, data=data,
                                       parameters={}))
    return InferRequest(request_id=request_id, model_name=model_name, infer_inputs=infer_inputs,
                        parameters=None, request_outputs=None)


def render(response: Any) -> bytes:
    """The body KServe's route sends for `response` (what `DataPlane.encode` returned):
    FastAPI's `jsonable_encoder(InferenceResponse.model_validate(response))` through
    ORJSONResponse, written out for the plain answer, with that same chain for anything else."""
    if _plain(response):
        return orjson.dumps({
            "model_name": response["model_name"], "model_version": response["model_version"],
            "id": response["id"], "parameters": None,
            "outputs": [{"name": o["name"], "shape": o["shape"], "datatype": o["datatype"],
                         "parameters": None, "data": o["data"]} for o in response["outputs"]],
        }, option=_ORJSON_OPTIONS)
    from fastapi.encoders import jsonable_encoder
    from kserve.protocol.rest.v2_datamodels import InferenceResponse

    return orjson.dumps(jsonable_encoder(InferenceResponse.model_validate(response)),
                        option=_ORJSON_OPTIONS)


def _plain(response: Any) -> bool:
    if type(response) is not dict or response.keys() != _RESPONSE_KEYS:
        return False
    if (type(response["id"]) is not str or type(response["model_name"]) is not str
            or type(response["model_version"]) not in (str, type(None))
            or type(response["outputs"]) is not list):
        return False
    for out in response["outputs"]:
        if (type(out) is not dict or out.keys() != _OUTPUT_KEYS or type(out["name"]) is not str
                or type(out["datatype"]) is not str or type(out["shape"]) is not list
                or not all(type(d) is int for d in out["shape"]) or type(out["data"]) is not list
                or not all(type(v) in _SCALARS for v in out["data"])):
            return False
    return True


async def read_body(receive) -> tuple[bytes, bool]:
    """The whole request body, and whether the client is still there."""
    chunks = []
    while True:
        message = await receive()
        if message["type"] != "http.request":
            return b"".join(chunks), False
        chunks.append(message.get("body", b""))
        if not message.get("more_body", False):
            return b"".join(chunks), True


def replay(body: bytes, receive):
    """A `receive` that gives `body` once, then the original's messages (a disconnect)."""
    sent = False

    async def again():
        nonlocal sent
        if not sent:
            sent = True
            return {"type": "http.request", "body": body, "more_body": False}
        return await receive()

    return again


async def answer(scope, receive, send, app, name: str) -> None:
    """Serve `scope` on the fast path, or hand it to `app` (KServe's) with the body as read."""
    body, connected = await read_body(receive)
    if not connected:
        return
    request = parse(body, name)
    if request is None:
        return await app(scope, replay(body, receive), send)
    data_plane = FastInfer.data_plane
    headers: dict[str, str] = {}
    for key, value in reversed(scope.get("headers", ())):  # the first of a repeated header
        headers[key.decode("latin-1")] = value.decode("latin-1")
    try:
        response, response_headers = await data_plane.infer(
            model_name=name, request=request, headers=headers)
        response, encoded_headers = data_plane.encode(
            model_name=name, response=response, headers=headers, req_attributes={})
    except Exception as exc:  # noqa: BLE001 - answered by the app's handlers, as KServe's would
        return await _error(scope, receive, send, exc)
    response_headers = {**response_headers, **encoded_headers}
    response_headers.pop("content-length", None)
    response_headers.pop("content-type", None)
    if isinstance(response, bytes):  # binary outputs: not asked for on this path, but exact
        content, media = response, []
    else:
        content, media = render(response), [(b"content-type", b"application/json")]
    raw = [(b"content-length", str(len(content)).encode("latin-1")), *media]
    from starlette.datastructures import MutableHeaders

    extra = MutableHeaders()
    extra.update(response_headers)  # lower-cased and de-duplicated as KServe's route does
    await send({"type": "http.response.start", "status": 200, "headers": [*raw, *extra.raw]})
    await send({"type": "http.response.body", "body": content})


async def _error(scope, receive, send, exc: Exception) -> None:
    """The answer Starlette's exception middleware gives `exc` on KServe's app: the handler of
    its nearest class; an exception without one goes up to the server-error middleware."""
    from kserve.model_server import app
    from starlette.requests import Request

    handlers = {k: v for k, v in app.exception_handlers.items()
                if k not in (500, Exception) and isinstance(k, type)}
    handler = next((handlers[c] for c in type(exc).__mro__ if c in handlers), None)
    if handler is None:
        raise exc
    response = handler(Request(scope, receive), exc)
    if hasattr(response, "__await__"):
        response = await response
    await response(scope, receive, send)
