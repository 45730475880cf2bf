"""Checks of the end-to-end test on what it renders and what the cluster answers.

All of them are pure: they take objects, texts and lists of answers, and raise E2EError with
one line that says what is wrong.
"""

from __future__ import annotations

import copy
import math
import re
from collections import Counter
from collections.abc import Iterable
from typing import Any

from e2e.runner import E2EError, Fatal

# The images the manifests name; the test replaces them with the ones it built and loaded.
MANIFEST_IMAGES = ("ghcr.io/recsys-mlops/recsys", "ghcr.io/recsys-mlops/recsys-pipeline")
NAMESPACE = "recsys"
SERVICE = "recsys"


def _containers(obj: dict[str, Any]) -> Iterable[dict[str, Any]]:
    """Every container of an object, wherever its kind keeps them."""
    spec = obj.get("spec") or {}
    pod_specs = []
    if obj.get("kind") == "InferenceService":
        pod_specs.append(spec.get("predictor") or {})
    elif obj.get("kind") == "CronJob":
        pod_specs.append(
            ((spec.get("jobTemplate") or {}).get("spec") or {}).get("template", {}).get("spec")
            or {}
        )
    elif obj.get("kind") in {"Deployment", "StatefulSet", "Job", "DaemonSet"}:
        pod_specs.append((spec.get("template") or {}).get("spec") or {})
    for pod in pod_specs:
        yield from pod.get("initContainers") or []
        yield from pod.get("containers") or []


def image_name(image: str) -> str:
    """`registry/name:tag` or `name@sha256:...` without the tag or digest."""
    base = image.split("@", 1)[0]
    head, _, tail = base.rpartition(":")
    return head if head and "/" not in tail else base


def set_images(objects: list[dict[str, Any]], images: dict[str, str]) -> list[dict[str, Any]]:
    """Copies of `objects` with each container image whose name (tag dropped) is a key of
    `images` replaced by its value, as `kustomize edit set image` would."""
    result = copy.deepcopy(objects)
    for obj in result:
        for container in _containers(obj):
            new = images.get(image_name(str(container.get("image", ""))))
            if new is not None:
                container["image"] = new
    return result


def check_rendered(objects: list[dict[str, Any]], serving_image: str) -> dict[str, Any]:
    """The dev overlay as the test applies it: the InferenceService `recsys` in `recsys` runs
    `serving_image` in Serverless mode, every namespaced object is in `recsys`, the five Secrets
    are there and no container still names an image of the manifests. Returns the service."""
    kinds = Counter(o.get("kind") for o in objects)
    if not objects:
        raise E2EError("the rendered overlay is empty")
    isvcs = [o for o in objects if o.get("kind") == "InferenceService"]
    if len(isvcs) != 1 or isvcs[0]["metadata"].get("name") != SERVICE:
        raise E2EError(
            f"expected one InferenceService {SERVICE!r}, found "
            f"{[o['metadata'].get('name') for o in isvcs]}"
        )
    isvc = isvcs[0]
    mode = (isvc["metadata"].get("annotations") or {}).get("serving.kserve.io/deploymentMode")
    if mode != "Serverless":
        raise E2EError(
            f"InferenceService {SERVICE}: deploymentMode {mode!r}, the canary needs Serverless"
        )
    images = [c.get("image") for c in _containers(isvc)]
    if serving_image not in images:
        raise E2EError(f"InferenceService {SERVICE} runs {images}, not {serving_image}")
    cluster_scoped = {"Namespace", "ClusterRole", "ClusterRoleBinding", "CustomResourceDefinition"}
    elsewhere = sorted(
        f"{o['kind']}/{o['metadata'].get('name')}"
        for o in objects
        if o.get("kind") not in cluster_scoped and o["metadata"].get("namespace") != NAMESPACE
    )
    if elsewhere:
        raise E2EError(f"objects outside namespace {NAMESPACE}: {', '.join(elsewhere[:5])}")
    if kinds["Secret"] < 5:
        raise E2EError(f"the dev overlay should generate 5 Secrets, it has {kinds['Secret']}")
    stale = sorted(
        {
            c.get("image")
            for o in objects
            for c in _containers(o)
            if image_name(str(c.get("image", ""))) in MANIFEST_IMAGES
        }
    )
    if stale:
        raise E2EError(f"containers still run the manifests' images: {', '.join(stale)}")
    return isvc


_RUN_ID = re.compile(r"^submitted run (\S+) ", re.MULTILINE)


def submitted_run_id(stdout: str) -> str:
    """The run id `recsys submit` printed (`submitted run ID (experiment E) to HOST`)."""
    match = _RUN_ID.search(stdout)
    if match is None:
        raise E2EError(f"`recsys submit` printed no run id: {stdout.strip()[:200]!r}")
    return match.group(1)


def check_run_state(state: str | None, run_id: str) -> bool:
    """True when the KFP run succeeded, False while it goes on; E2EError when it ended otherwise."""
    state = (state or "").upper()
    if state == "SUCCEEDED":
        return True
    if state in {"FAILED", "CANCELED", "CANCELING", "SKIPPED"}:
        raise Fatal(f"pipeline run {run_id} ended {state}")
    return False


def check_v2_answer(answer: dict[str, Any], users: int, k: int, model: str = SERVICE) -> str:
    """A v2 infer answer (JSON) for `users` users and top-`k`: named after the model, item_ids
    and scores of shape [users, k]; returns its model_version (which model served it)."""
    if answer.get("model_name") != model:
        raise E2EError(f"v2 answer from model {answer.get('model_name')!r}, not {model!r}")
    version = str(answer.get("model_version") or "")
    if not version:
        raise E2EError("v2 answer carries no model_version")
    outputs = {o.get("name"): o for o in answer.get("outputs") or []}
    for name in ("item_ids", "scores"):
        if name not in outputs:
            raise E2EError(f"v2 answer has no output {name!r} (outputs: {sorted(outputs)})")
        shape = list(outputs[name].get("shape") or [])
        if shape != [users, k]:
            raise E2EError(f"v2 output {name} has shape {shape}, expected {[users, k]}")
        if len(outputs[name].get("data") or []) != users * k:
            raise E2EError(
                f"v2 output {name} has {len(outputs[name].get('data') or [])} values, "
                f"expected {users * k}"
            )
    return version


def split_tolerance(percent: float, n: int, sigmas: float = 4.0) -> float:
    """Half-width of the accepted canary share for `n` requests at `percent`: `sigmas` binomial
    standard deviations plus one request (Knative routes each request at random)."""
    p = percent / 100.0
    return sigmas * math.sqrt(p * (1 - p) / n) + 1.0 / n


def check_split(versions: list[str], champion: str, percent: float) -> tuple[str, float]:
    """Answers' model versions under a canary: the champion and exactly one other version (the
    canary), the canary's share within split_tolerance of `percent`. (canary, its share)."""
    if not versions:
        raise E2EError("no answers to check the split on")
    counts = Counter(versions)
    others = sorted(v for v in counts if v != champion)
    if champion not in counts:
        raise E2EError(
            f"the champion ({champion}) answered none of {len(versions)} requests: {dict(counts)}"
        )
    if len(others) != 1:
        raise E2EError(f"expected one canary version beside the champion, saw {others or 'none'}")
    canary = others[0]
    share = counts[canary] / len(versions)
    tolerance = split_tolerance(percent, len(versions))
    if abs(share - percent / 100.0) > tolerance:
        raise E2EError(
            f"the canary answered {share:.1%} of {len(versions)} requests, expected "
            f"{percent:g}% ± {tolerance:.1%}"
        )
    return canary, share


def check_all_from(versions: list[str], champion: str) -> None:
    """After the rollback: every answer from the champion."""
    if not versions:
        raise E2EError("no answers to check the rollback on")
    others = Counter(v for v in versions if v != champion)
    if others:
        raise E2EError(
            f"after the rollback {sum(others.values())} of {len(versions)} answers came "
            f"from {sorted(others)}, not the champion {champion}"
        )


def check_rolled_back(isvc: dict[str, Any]) -> bool:
    """True once KServe reports the champion revision at 100%: the entries not marked
    latestRevision sum to 100 and the latest (the canary's), listed or not, has 0."""
    status = isvc.get("status") or {}
    traffic = status.get("components", {}).get("predictor", {}).get("traffic") or []
    latest = [t for t in traffic if t.get("latestRevision")]
    previous = [t for t in traffic if not t.get("latestRevision")]
    return (
        all((t.get("percent") or 0) == 0 for t in latest)
        and sum(t.get("percent") or 0 for t in previous) == 100
    )
