"""Error answers of the model server's REST app: every error body is `{"error": "..."}`, a body
FastAPI cannot parse is a 400 (never FastAPI's 422), and `/openapi.json` documents them.

A module of its own so that the predictor (whose spawned REST workers install the handlers
again) and the server start-up (serving/server.py) both use it without importing each other.
Importing it is cheap: FastAPI and KServe are imported when the handlers are installed.
"""
from __future__ import annotations


def install_request_error_handler() -> None:
    """Answer a body FastAPI cannot parse (not JSON, or not a v2 request's shape) with 400 and
    {"error": ...}, like every other malformed request, instead of FastAPI's 422; answer
    FastAPI's own errors (a body that is not UTF-8 or nests too deep, an unknown path) with
    {"error": ...} too, not {"detail": ...}; document the error answers in /openapi.json.
    KServe builds its REST app at import time (`kserve.model_server.app`), so the handlers go
    there; REST workers (--workers > 1) are spawned and import it afresh, so RecommenderModel,
    which each worker unpickles, installs them there too (a test checks every worker)."""
    from fastapi.exceptions import RequestValidationError
    from kserve.model_server import app
    from starlette.exceptions import HTTPException

    from serving.model_server import (
        RecsysMiddleware,
        RepositoryDisabled,
        repository_disabled_handler,
    )

    app.add_exception_handler(RequestValidationError, _unparsable_request)
    app.add_exception_handler(HTTPException, _http_error)
    app.add_exception_handler(RepositoryDisabled, repository_disabled_handler)
    if not any(m.cls is RecsysMiddleware for m in app.user_middleware):
        app.add_middleware(RecsysMiddleware)
    if not getattr(app.openapi, "documents_errors", False):
        app.openapi = _openapi_with_errors(app, app.openapi)


async def _http_error(request, exc):
    from fastapi.responses import JSONResponse

    return JSONResponse(status_code=exc.status_code, content={"error": str(exc.detail)},
                        headers=getattr(exc, "headers", None))


_ERROR_SCHEMA = {"type": "object", "properties": {"error": {"type": "string"}}, "required": ["error"]}


def _openapi_with_errors(app, generate):
    """KServe's schema lists 200 and FastAPI's 422 for every path; ours answers 400 (never 422),
    404 for an unknown model, 503 while not ready, 403 for what is disabled."""

    def openapi() -> dict:
        if app.openapi_schema:
            return app.openapi_schema
        schema = generate()
        for path, operations in schema.get("paths", {}).items():
            for operation in operations.values():
                responses = operation.setdefault("responses", {})
                responses.pop("422", None)
                errors = {"400": "malformed request"}
                if "{model_name}" in path:
                    errors["404"] = "no model of that name"
                if path.endswith(("/infer", ":predict", "/ready", ":explain")) or "health" in path:
                    errors["503"] = "the model or the server is not ready"
                if "/repository/" in path:
                    errors["403"] = "the model-repository extension is disabled"
                for code, text in errors.items():
                    responses[code] = {"description": text, "content": {
                        "application/json": {"schema": _ERROR_SCHEMA}}}
        app.openapi_schema = schema
        return schema

    openapi.documents_errors = True
    return openapi


async def _unparsable_request(request, exc):
    from fastapi.responses import JSONResponse

    from serving.metrics import ERRORS

    errors = exc.errors() if hasattr(exc, "errors") else []
    first = errors[0] if errors else {}
    if first.get("type") == "json_invalid":
        where, what = "", "the body is not valid JSON"
    else:
        where = ".".join(str(p) for p in first.get("loc", ()) if p != "body")
        what = first.get("msg", "the request body is not a valid inference request")
    model = request.path_params.get("model_name")
    if model:
        ERRORS.labels(model, "invalid_input").inc()
    return JSONResponse(status_code=400, content={"error": f"{where}: {what}" if where else what})
