"""The search space: a YAML mapping of dotted config keys (`model.ease.l2`) to ranges.

Each entry is `{type: float|int, low, high[, log: true]}` or `{type: categorical, choices:
[...]}`. Every key must name a value of the config (checked against `components.config`, so a
typo is an error before any trial runs) and every range must hold values the config accepts.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from components.config import config_from_dict
from components.errors import ConfigError

DEFAULT_SPACE = Path(__file__).with_name("default_space.yaml")


@dataclass(frozen=True)
class Param:
    name: str  # the dotted config key
    kind: str  # float, int or categorical
    low: float | None = None
    high: float | None = None
    log: bool = False
    choices: tuple[Any, ...] = ()


def set_dotted(raw: dict[str, Any], key: str, value: Any) -> dict[str, Any]:
    """`raw` with `key` (a.b.c) set to `value`, creating the mappings on the way."""
    node = raw
    *parents, last = key.split(".")
    for part in parents:
        child = node.get(part)
        if not isinstance(child, dict):
            child = node[part] = {}
        node = child
    node[last] = value
    return raw


def get_dotted(tree: dict[str, Any], key: str) -> Any:
    node: Any = tree
    for part in key.split("."):
        node = node[part]
    return node


def _param(name: str, spec: Any, source: str) -> Param:
    where = f"{source}: {name}"
    if not isinstance(spec, dict) or "type" not in spec:
        raise ConfigError(f"{where}: give a mapping with a type (float, int or categorical)")
    kind = spec["type"]
    unknown = set(spec) - {"type", "low", "high", "log", "choices"}
    if unknown:
        raise ConfigError(f"{where}: unknown keys {sorted(unknown)}")
    if kind == "categorical":
        choices = spec.get("choices")
        if not isinstance(choices, list) or not choices:
            raise ConfigError(f"{where}: a categorical needs a non-empty list of choices")
        return Param(name, kind, choices=tuple(choices))
    if kind not in ("float", "int"):
        raise ConfigError(f"{where}: type must be float, int or categorical, not {kind!r}")
    low, high = spec.get("low"), spec.get("high")
    if not all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in (low, high)):
        raise ConfigError(f"{where}: low and high must be numbers")
    if kind == "int" and not all(float(v).is_integer() for v in (low, high)):
        raise ConfigError(f"{where}: an int range needs whole low and high")
    if low >= high:
        raise ConfigError(f"{where}: low ({low}) must be below high ({high})")
    log = bool(spec.get("log", False))
    if log and low <= 0:
        raise ConfigError(f"{where}: a log range needs low > 0")
    cast = int if kind == "int" else float
    return Param(name, kind, cast(low), cast(high), log)


def load_space(path: str | Path | None = None) -> list[Param]:
    """The space in `path` (None: the default space), each key and bound checked against the
    config model. Any problem is one ConfigError line."""
    path = Path(path) if path is not None else DEFAULT_SPACE
    try:
        text = path.read_text()
    except OSError as exc:
        raise ConfigError(f"{path}: cannot read search space: {exc.strerror}") from None
    return parse_space(text, str(path))


def parse_space(text: str, source: str = "search space") -> list[Param]:
    """The space written in `text` (YAML, as in a space file), checked as `load_space` checks a
    file; the pipeline passes its space as text, so a cached tune step follows its content."""
    try:
        raw = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        raise ConfigError(f"{source}: not valid YAML: {exc}") from None
    if not isinstance(raw, dict) or not raw:
        raise ConfigError(f"{source}: the search space must be a non-empty mapping of config keys")
    params = [_param(str(name), spec, source) for name, spec in raw.items()]
    for p in params:  # each bound (or choice) must be a value the config accepts
        for value in (p.choices or (p.low, p.high)):
            config_from_dict(set_dotted({}, p.name, value), source=f"{source}: {p.name}={value!r}")
    return params
