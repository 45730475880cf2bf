"""A local stand-in for the Kubernetes API server, for KServe InferenceServices only.

There is no Kubernetes cluster on the machines these tests run on, so the code that talks to one
is exercised through the real `kubernetes` client against this double: a threaded HTTP server on
127.0.0.1 (ephemeral port) that serves `serving.kserve.io/v1beta1` `inferenceservices` with
GET, POST and PATCH (`application/merge-patch+json`, RFC 7386 semantics, `resourceVersion` as a
precondition), answers errors with Kubernetes `Status` bodies (404 NotFound, 409 AlreadyExists /
Conflict, 415), records every call, can be told to fail the Nth call, and can play KServe's
controller: after each write it fills `status` the way KServe does in serverless mode (a new
Knative revision when the revision template changes, traffic split by `canaryTrafficPercent`,
`latestRolledoutRevision`/`previousRolledoutRevision` tracking as in KServe's PropagateStatus).
"""
from __future__ import annotations

import copy
import json
import re
import threading
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any, Self

PREFIX = "/apis/serving.kserve.io/v1beta1/namespaces/"
_PATH = re.compile(r"^/apis/serving\.kserve\.io/v1beta1/namespaces/([^/]+)/inferenceservices(?:/([^/?]+))?$")
# KServe does not copy these InferenceService annotations into the revision template.
_NOT_PROPAGATED = {"kubectl.kubernetes.io/last-applied-configuration"}


@dataclass
class Call:
    method: str
    path: str
    body: Any
    content_type: str | None


@dataclass
class _Failure:
    status: int
    reason: str
    message: str


def merge_patch(target: Any, patch: Any) -> Any:
    """RFC 7386 JSON merge patch: objects merge recursively, null deletes, all else replaces."""
    if not isinstance(patch, dict):
        return copy.deepcopy(patch)
    result = copy.deepcopy(target) if isinstance(target, dict) else {}
    for key, value in patch.items():
        if value is None:
            result.pop(key, None)
        else:
            result[key] = merge_patch(result.get(key), value)
    return result


def status_body(code: int, reason: str, message: str) -> dict[str, Any]:
    return {"kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Failure",
            "message": message, "reason": reason, "code": code}


@dataclass
class KubeApiDouble:
    """Start with `with KubeApiDouble() as k8s:`; `k8s.api()` is a real CustomObjectsApi on it."""

    simulate_controller: bool = True
    new_revisions_ready: bool = True
    objects: dict[tuple[str, str], dict[str, Any]] = field(default_factory=dict)
    calls: list[Call] = field(default_factory=list)
    _failures: dict[int, _Failure] = field(default_factory=dict)
    _lock: threading.Lock = field(default_factory=threading.Lock)
    _version: int = 100
    _revisions: dict[tuple[str, str], list[tuple[str, str]]] = field(default_factory=dict)

    # --- lifecycle ---
    def __enter__(self) -> Self:
        double = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self):
                double._serve(self, "GET")

            def do_POST(self):
                double._serve(self, "POST")

            def do_PATCH(self):
                double._serve(self, "PATCH")

            def log_message(self, *args):  # keep test output clean
                pass

        self._server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self._thread = threading.Thread(target=self._server.serve_forever,
                                        kwargs={"poll_interval": 0.05}, daemon=True)
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._server.shutdown()
        self._server.server_close()

    @property
    def host(self) -> str:
        return f"http://127.0.0.1:{self._server.server_address[1]}"

    def api(self):
        from kubernetes import client

        configuration = client.Configuration(host=self.host)
        configuration.retries = 0  # a refused call fails at once instead of being retried
        return client.CustomObjectsApi(client.ApiClient(configuration))

    # --- test controls ---
    def fail_call(self, n: int, status: int = 500, reason: str = "InternalError",
                  message: str = "etcdserver: request timed out") -> None:
        """Make the Nth call from the start (1-based, counting every call) fail."""
        self._failures[n] = _Failure(status, reason, message)

    def fail_next(self, status: int = 500, reason: str = "InternalError",
                  message: str = "etcdserver: request timed out") -> None:
        self.fail_call(len(self.calls) + 1, status, reason, message)

    def writes(self) -> list[Call]:
        return [c for c in self.calls if c.method != "GET"]

    def get(self, namespace: str, name: str) -> dict[str, Any]:
        return copy.deepcopy(self.objects[(namespace, name)])

    def put(self, obj: dict[str, Any]) -> None:
        """Seed an object as if it had been created (and reconciled) before the test."""
        meta = obj["metadata"]
        with self._lock:
            self._store(meta["namespace"], meta["name"], copy.deepcopy(obj), new=True)

    # --- the server ---
    def _serve(self, handler: BaseHTTPRequestHandler, method: str) -> None:
        length = int(handler.headers.get("Content-Length") or 0)
        raw = handler.rfile.read(length) if length else b""
        body = json.loads(raw) if raw else None
        content_type = handler.headers.get("Content-Type")
        path = handler.path.split("?", 1)[0]
        with self._lock:
            self.calls.append(Call(method, path, copy.deepcopy(body), content_type))
            failure = self._failures.pop(len(self.calls), None)
            if failure:
                code, answer = failure.status, status_body(failure.status, failure.reason, failure.message)
            else:
                code, answer = self._handle(method, path, body, content_type)
        data = json.dumps(answer).encode()
        handler.send_response(code)
        handler.send_header("Content-Type", "application/json")
        handler.send_header("Content-Length", str(len(data)))
        handler.end_headers()
        handler.wfile.write(data)

    def _handle(self, method: str, path: str, body: Any, content_type: str | None) -> tuple[int, Any]:
        match = _PATH.match(path)
        if not match:
            return 404, status_body(404, "NotFound",
                                    f"the server could not find the requested resource ({path})")
        namespace, name = match.groups()
        key = (namespace, name or (body or {}).get("metadata", {}).get("name", ""))
        what = f'inferenceservices.serving.kserve.io "{key[1]}"'
        if method == "POST" and name is None:
            if key in self.objects:
                return 409, status_body(409, "AlreadyExists", f"{what} already exists")
            return 201, self._store(namespace, key[1], body, new=True)
        if name is None:
            return 405, status_body(405, "MethodNotAllowed", "list is not served by this double")
        if key not in self.objects:
            return 404, status_body(404, "NotFound", f"{what} not found")
        if method == "GET":
            return 200, copy.deepcopy(self.objects[key])
        if method == "PATCH":
            if content_type != "application/merge-patch+json":
                return 415, status_body(415, "UnsupportedMediaType",
                                        f"the body of the request was in an unknown format ({content_type})")
            current = self.objects[key]
            wanted = (body or {}).get("metadata", {}).get("resourceVersion")
            if wanted and wanted != current["metadata"]["resourceVersion"]:
                return 409, status_body(409, "Conflict", (
                    f"Operation cannot be fulfilled on {what}: the object has been modified; "
                    "please apply your changes to the latest version and try again"))
            patched = merge_patch(current, {k: v for k, v in body.items() if k != "status"})
            patched["status"] = current.get("status")  # status is a subresource
            return 200, self._store(namespace, key[1], patched, new=False)
        return 405, status_body(405, "MethodNotAllowed", f"{method} is not served by this double")

    def _store(self, namespace: str, name: str, obj: dict[str, Any], *, new: bool) -> dict[str, Any]:
        self._version += 1
        meta = obj.setdefault("metadata", {})
        meta.update(namespace=namespace, name=name, resourceVersion=str(self._version))
        if new:
            meta.setdefault("uid", f"uid-{self._version}")
            meta.setdefault("creationTimestamp", "2024-01-01T00:00:00Z")
            meta["generation"] = 1
        else:
            before = self.objects[(namespace, name)]
            if before.get("spec") != obj.get("spec"):
                meta["generation"] = before["metadata"].get("generation", 1) + 1
        if self.simulate_controller:
            self._reconcile(namespace, name, obj)
        self.objects[(namespace, name)] = obj
        return copy.deepcopy(obj)

    # --- KServe's controller, serverless mode, predictor only ---
    def _reconcile(self, namespace: str, name: str, obj: dict[str, Any]) -> None:
        predictor = copy.deepcopy(obj.get("spec", {}).get("predictor", {}))
        percent = predictor.pop("canaryTrafficPercent", None)
        meta = obj["metadata"]
        template = json.dumps({
            "predictor": predictor,
            "annotations": {k: v for k, v in (meta.get("annotations") or {}).items()
                            if k not in _NOT_PROPAGATED},
            "labels": meta.get("labels") or {},
        }, sort_keys=True)
        revisions = self._revisions.setdefault((namespace, name), [])
        component = dict((obj.get("status") or {}).get("components", {}).get("predictor", {}))
        if not revisions or revisions[-1][1] != template:  # Knative: a new template, a new revision
            revisions.append((f"{name}-predictor-{len(revisions) + 1:05d}", template))
        created = revisions[-1][0]
        ready = component.get("latestReadyRevision")
        if self.new_revisions_ready or ready is None:
            ready = created
        rolled_out = component.get("latestRolledoutRevision", "")
        # KServe's ksvc reconciler: split only when canaryTrafficPercent is set and a revision
        # was rolled out before; otherwise the latest ready revision gets everything.
        if percent is not None and rolled_out:
            traffic = [{"latestRevision": True, "percent": int(percent), "revisionName": ready,
                        "tag": "latest"}]
            if percent < 100:
                traffic.append({"latestRevision": False, "percent": 100 - int(percent),
                                "revisionName": rolled_out, "tag": "prev"})
        else:
            traffic = [{"latestRevision": True, "percent": 100, "revisionName": ready, "tag": "latest"}]
        # KServe's PropagateStatus: a latest revision at 100% becomes the rolled-out one.
        for target in traffic:
            if target["latestRevision"] and target["revisionName"] == ready and rolled_out != ready \
                    and target["percent"] == 100:
                component["previousRolledoutRevision"] = rolled_out
                rolled_out = ready
        for target in traffic:
            target["url"] = f"http://{target['tag']}-{name}-predictor.{namespace}.example.com"
        component.update(latestCreatedRevision=created, latestReadyRevision=ready,
                         latestRolledoutRevision=rolled_out, traffic=traffic,
                         url=f"http://{name}-predictor.{namespace}.example.com")
        all_ready = ready == created
        condition = "True" if all_ready else "False"
        obj["status"] = {
            "observedGeneration": meta.get("generation", 1),
            "url": f"http://{name}.{namespace}.example.com",
            "components": {"predictor": component},
            "conditions": [
                {"type": "IngressReady", "status": "True"},
                {"type": "PredictorReady", "status": condition,
                 **({} if all_ready else {"reason": "RevisionMissing",
                                          "message": f"Revision {created} is not ready"})},
                {"type": "Ready", "status": condition,
                 **({} if all_ready else {"reason": "RevisionMissing",
                                          "message": f"Revision {created} is not ready"})},
            ],
        }
