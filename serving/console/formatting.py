"""Jinja filters: times, numbers and shares written the same way on every page."""
from __future__ import annotations

import math
import time
from typing import Any


def when(unix: float | None) -> str:
    if not unix:
        return "-"
    return time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime(unix))


def ago(unix: float | None, now: float | None = None) -> str:
    if not unix:
        return "-"
    seconds = max(0.0, (now or time.time()) - unix)
    for size, unit in ((86_400, "d"), (3_600, "h"), (60, "min")):
        if seconds >= size:
            return f"{seconds / size:.0f} {unit} ago"
    return f"{seconds:.0f} s ago"


def number(value: Any, digits: int = 0) -> str:
    if value is None or (isinstance(value, float) and not math.isfinite(value)):
        return "-"
    return f"{value:,.{digits}f}"


def metric(value: Any, digits: int = 4) -> str:
    if value is None or (isinstance(value, float) and not math.isfinite(value)):
        return "-"
    return f"{value:.{digits}f}"


def share(value: Any, digits: int = 1) -> str:
    if value is None or (isinstance(value, float) and not math.isfinite(value)):
        return "-"
    return f"{100 * value:.{digits}f}%"


def signed(value: Any, digits: int = 4) -> str:
    if value is None or (isinstance(value, float) and not math.isfinite(value)):
        return "-"
    return f"{value:+.{digits}f}"


def seconds(value: Any) -> str:
    if value is None or (isinstance(value, float) and not math.isfinite(value)):
        return "-"
    if value < 1:
        return f"{value * 1e3:.1f} ms"
    if value < 120:
        return f"{value:.1f} s"
    return f"{value / 60:.0f} min"


def where(value: Any) -> str:
    """A path, or a sqlite:/// URI, relative to the working directory when it lies under it
    (`runs/mlflow.db`, as a user typed it), else as it is."""
    import os

    text = str(value)
    prefix = "sqlite:///" if text.startswith("sqlite:///") else ""
    path = text.removeprefix(prefix)
    if not os.path.isabs(path):
        return text
    try:
        relative = os.path.relpath(path)
    except ValueError:  # another drive
        return text
    return text if relative.startswith("..") else prefix + relative


def short(value: Any, size: int = 12) -> str:
    text = "" if value is None else str(value)
    return text if len(text) <= size else text[:size] + "…"


def install(env) -> None:
    env.filters.update(when=when, ago=ago, number=number, metric=metric, share=share,
                       signed=signed, seconds=seconds, short=short, where=where)
