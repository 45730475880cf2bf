"""Stages, waiting and the failure report of the end-to-end test.

Each stage prints one line, `[stage] ok 12.3s` or `[stage] FAILED 4.5s: reason`. A failure
raises StageFailed after the report (the stage, the last cluster events, the logs of the pods
that are not running or not ready) has been printed; the driver exits non-zero.
"""

from __future__ import annotations

import json
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any, TextIO, TypeVar

T = TypeVar("T")


class E2EError(Exception):
    """A check or a command of the end-to-end test failed; the message says what."""


class Fatal(E2EError):
    """A failure no amount of waiting mends (a pipeline run that ended FAILED): ends a wait."""


# What a probe may raise while the thing it waits for is not there yet: a kubectl error (the
# object does not exist yet), a refused connection, an answer that does not parse.
TRANSIENT = (E2EError, OSError, ValueError, LookupError)
# What the failure report survives (no cluster, API gone, output that does not parse).
REPORT_ERRORS = (E2EError, OSError, ValueError)


class StageFailed(Exception):
    """A stage failed (its line and the report are printed already)."""

    def __init__(self, stage: str, reason: str) -> None:
        super().__init__(f"stage {stage!r} failed: {reason}")
        self.stage = stage
        self.reason = reason


def run(
    argv: list[str] | tuple[str, ...],
    *,
    timeout: float = 900.0,
    input: str | None = None,
    check: bool = True,
) -> subprocess.CompletedProcess[str]:
    """Run one command; a non-zero exit (with check) or a timeout is one E2EError line."""
    try:
        proc = subprocess.run(
            list(argv), capture_output=True, text=True, timeout=timeout, input=input, check=False
        )
    except subprocess.TimeoutExpired:
        raise E2EError(f"`{' '.join(argv)}` did not finish in {timeout:.0f}s") from None
    except FileNotFoundError:
        raise E2EError(f"`{argv[0]}` not found on PATH") from None
    if check and proc.returncode != 0:
        tail = (proc.stderr or proc.stdout).strip().splitlines()[-5:]
        raise E2EError(f"`{' '.join(argv)}` exited {proc.returncode}: " + " | ".join(tail))
    return proc


def wait_until(
    what: str,
    probe: Callable[[], T | None],
    *,
    timeout: float,
    interval: float = 5.0,
    clock: Callable[[], float] = time.monotonic,
    sleep: Callable[[float], None] = time.sleep,
) -> T:
    """Call `probe` until it returns something other than None (returned) or `timeout` seconds
    pass (E2EError naming `what` and the last error the probe raised, if any). TRANSIENT errors
    from the probe count as "not yet"; Fatal (and anything else) stops the wait at once."""
    deadline = clock() + timeout
    last_error = ""
    while True:
        try:
            value = probe()
        except Fatal:
            raise
        except TRANSIENT as exc:
            value, last_error = None, f"{type(exc).__name__}: {exc}"
        if value is not None:
            return value
        if clock() >= deadline:
            raise E2EError(
                f"timed out after {timeout:.0f}s waiting for {what}"
                + (f" (last error: {last_error[:200]})" if last_error else "")
            )
        sleep(min(interval, max(0.0, deadline - clock())))


def failing_pods(pods: dict[str, Any]) -> list[tuple[str, str, list[str]]]:
    """(namespace, name, containers) of the pods in `kubectl get pods -A -o json` that are
    neither Succeeded nor Running with every container ready."""
    found = []
    for pod in pods.get("items", []):
        meta, status = pod.get("metadata", {}), pod.get("status", {})
        phase = status.get("phase")
        statuses = status.get("containerStatuses") or []
        ready = phase == "Running" and statuses and all(s.get("ready") for s in statuses)
        if phase == "Succeeded" or ready:
            continue
        containers = [c["name"] for c in pod.get("spec", {}).get("initContainers", [])]
        containers += [c["name"] for c in pod.get("spec", {}).get("containers", [])]
        found.append((meta.get("namespace", ""), meta.get("name", ""), containers))
    return found


def failure_report(
    stage: str,
    reason: str,
    kubectl: Callable[[list[str]], str],
    events: int = 30,
    log_lines: int = 50,
) -> str:
    """The stage, the reason, the last `events` cluster events and the last `log_lines` of each
    container of each failing pod. `kubectl(args)` returns a command's output (or raises)."""
    lines = [f"=== end-to-end test failed in stage {stage!r}: {reason}"]
    try:
        text = kubectl(["get", "events", "-A", "--sort-by=.lastTimestamp"])
        lines += ["=== last events", *text.strip().splitlines()[-events:]]
    except REPORT_ERRORS as exc:  # no cluster yet, or the API is gone: say so, keep reporting
        lines.append(f"=== no events ({exc})")
    try:
        pods = failing_pods(json.loads(kubectl(["get", "pods", "-A", "-o", "json"])))
    except REPORT_ERRORS as exc:
        lines.append(f"=== no pods ({exc})")
        pods = []
    for namespace, name, containers in pods:
        for container in containers:
            lines.append(f"=== logs {namespace}/{name} [{container}]")
            try:
                text = kubectl(
                    ["logs", "-n", namespace, name, "-c", container, f"--tail={log_lines}"]
                )
                lines += text.rstrip().splitlines() or ["(empty)"]
            except REPORT_ERRORS as exc:
                lines.append(f"(no logs: {exc})")
    return "\n".join(lines)


@dataclass
class Stages:
    """Runs the stages in order, one line each with its time; the first failure reports and
    raises StageFailed. `report(stage, reason)` builds the report (None: no report)."""

    out: TextIO = sys.stdout
    report: Callable[[str, str], str] | None = None
    clock: Callable[[], float] = time.monotonic
    done: list[tuple[str, float]] = field(default_factory=list)

    @contextmanager
    def stage(self, name: str) -> Iterator[None]:
        started = self.clock()
        try:
            yield
        except Exception as exc:
            elapsed = self.clock() - started
            reason = str(exc) if isinstance(exc, E2EError) else f"{type(exc).__name__}: {exc}"
            print(f"[{name}] FAILED {elapsed:.1f}s: {reason}", file=self.out, flush=True)
            if self.report is not None:
                print(self.report(name, reason), file=self.out, flush=True)
            raise StageFailed(name, reason) from exc
        elapsed = self.clock() - started
        self.done.append((name, elapsed))
        print(f"[{name}] ok {elapsed:.1f}s", file=self.out, flush=True)
