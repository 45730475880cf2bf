"""The ranker's trees compiled to machine code (lleaves: LLVM through llvmlite), scoring exactly
what LightGBM's `predict` scores, at about a fifth of its cost for a serving call's rows.

Bit-identical raw scores (float64) need three things, all kept here:
- the trees summed in LightGBM's order, one after the other from 0.0: lleaves' cache blocking
  (`fblocksize`, trees summed in blocks, then the blocks) adds in another order, so the whole
  forest is one block;
- LightGBM's reading of its input: a value within its zero threshold (|x| <= 1e-35f, a float
  literal: 1.0000000180025095e-35) is 0.0 to it (its dense row reader drops such values), so a
  row's tiny values are zeroed before the compiled call (a split's threshold can be that very
  value: LightGBM puts the split between zero and the nearest non-zero values there);
- the same thresholds and leaf values, as doubles: lleaves reads them from the model's text.

`CompiledRanker.build` checks this on probe rows made from the model's own thresholds (each
split's threshold, the float32 values next to it, NaN, zero and the zero threshold, on every
feature at once and one feature at a time) against LightGBM, and refuses a model that does not
score them identically, as it refuses models whose splits it was not checked on (categorical
splits, linear trees): the caller keeps LightGBM. The compiled object code is kept in a cache
directory keyed by the model text's hash, lleaves', llvmlite's and this module's format and the
CPU it was compiled for, so a restart loads it instead of compiling again (a few seconds for a
few hundred trees).
"""
from __future__ import annotations

import ctypes
import hashlib
import logging
import os
import tempfile
import time
from importlib import metadata
from pathlib import Path

import numpy as np

log = logging.getLogger(__name__)

# LightGBM's kZeroThreshold (`const double kZeroThreshold = 1e-35f`): a float literal.
ZERO_THRESHOLD = float(np.float32(1e-35))
# Raised on a change of what is compiled or how, so caches of earlier code are not loaded.
_CACHE_FORMAT = 1
_PROBE_ROWS = 4096
# Compiled models kept in a cache directory (the most recently written; a few hundred KB each).
CACHE_KEEP = 16


class CompileRefused(Exception):
    """The model is not compiled (the reason is the message); LightGBM scores it."""


def _cpu() -> str:
    import llvmlite.binding as llvm

    llvm.initialize()
    llvm.initialize_native_target()
    try:
        features = llvm.get_host_cpu_features().flatten()
    except RuntimeError:
        features = ""
    return f"{llvm.get_process_triple()} {llvm.get_host_cpu_name()} {features}"


def cache_key(model_text: str) -> str:
    """What a compiled object depends on: the model, the compiler's versions, the host CPU."""
    versions = " ".join(f"{name}={metadata.version(name)}" for name in ("lleaves", "llvmlite"))
    parts = [model_text, versions, _cpu(), f"format={_CACHE_FORMAT}"]
    return hashlib.sha256("\n".join(parts).encode()).hexdigest()


def _splits(model_text: str) -> tuple[np.ndarray, np.ndarray]:
    """(feature, threshold) of every numerical split in a LightGBM model's text; refuses what
    the probes below do not cover."""
    features, thresholds = [], []
    for line in model_text.splitlines():
        key, _, value = line.partition("=")
        if key == "num_cat" and int(value) > 0:
            raise CompileRefused("the ranker has categorical splits")
        if key == "is_linear" and int(value) != 0:
            raise CompileRefused("the ranker has linear trees")
        if key == "split_feature":
            features.append(np.array(value.split(), dtype=np.int64))
        elif key == "threshold":
            thresholds.append(np.array(value.split(), dtype=np.float64))
    if not features:
        return np.zeros(0, np.int64), np.zeros(0)
    return np.concatenate(features), np.concatenate(thresholds)


def probe_rows(model_text: str, n_features: int, seed: int = 0) -> np.ndarray:
    """[rows, n_features] float32 rows on which a compiled model must score as LightGBM does:
    every split's threshold and the float32 values on either side of it, one feature at a time
    (on a row of zeros and a row of NaN), and random rows of such values (NaN, 0, -0 and the
    zero threshold among them) on every feature at once."""
    features, thresholds = _splits(model_text)
    t = thresholds.astype(np.float32)
    values = np.concatenate([t, np.nextafter(t, np.float32(np.inf)), np.nextafter(t, np.float32(-np.inf))])
    at = np.tile(features, 3)
    special = np.array([np.nan, 0.0, -0.0, ZERO_THRESHOLD, -ZERO_THRESHOLD, np.inf, -np.inf], np.float32)
    rows = []
    for base in (0.0, np.nan):
        one = np.full((len(values), n_features), base, dtype=np.float32)
        one[np.arange(len(values)), at] = values
        rows.append(one)
    rng = np.random.default_rng(seed)
    pool = [np.concatenate([values[at == f], special]) for f in range(n_features)]
    random = np.column_stack([rng.choice(p, _PROBE_ROWS) for p in pool])
    rows += [random, np.tile(special[:, None], (1, n_features))]
    return np.vstack(rows)


class CompiledRanker:
    """A LightGBM booster's trees as one compiled function (`predict`: LightGBM's raw scores,
    identical). Build it with `build`; it pickles as its model text and cache directory and
    loads again from the cache in the process it is unpickled in."""

    def __init__(self, model_text: str, n_features: int, cache_dir: str | Path | None):
        self.model_text, self.n_features = model_text, n_features
        self.cache_dir = None if cache_dir is None else Path(cache_dir)
        self.cached = False  # whether the object code came from the cache
        self.compile_seconds = 0.0
        self._load()

    @classmethod
    def build(cls, booster, cache_dir: str | Path | None = None) -> CompiledRanker:
        """The compiled booster, checked against LightGBM on `probe_rows`; CompileRefused (with
        the reason) if it cannot be compiled or does not score identically."""
        text = booster.model_to_string()
        try:
            compiled = cls(text, booster.num_feature(), cache_dir)
        except CompileRefused:
            raise
        except Exception as exc:  # lleaves/llvmlite missing or failing: LightGBM serves
            raise CompileRefused(f"compilation failed: {type(exc).__name__}: {exc}") from exc
        rows = probe_rows(text, booster.num_feature())
        expected = booster.predict(rows, num_threads=1)
        got = compiled.predict(rows)
        if not np.array_equal(got, expected):
            if compiled.cached:  # a stale or damaged cache file: compile once more, afresh
                compiled._path().unlink(missing_ok=True)
                return cls.build(booster, cache_dir)
            if compiled.cache_dir is not None:
                compiled._path().unlink(missing_ok=True)  # never loaded by a later build
            worst = float(np.nanmax(np.abs(got - expected)))
            raise CompileRefused(f"compiled scores differ from LightGBM's on {int((got != expected).sum())} "
                                 f"of {len(rows)} probe rows (max abs difference {worst:.3g})")
        return compiled

    def _path(self) -> Path:
        assert self.cache_dir is not None
        return self.cache_dir / f"ranker-{cache_key(self.model_text)[:40]}.o"

    def _load(self) -> None:
        import lleaves

        started = time.perf_counter()
        cache = None
        if self.cache_dir is not None:
            try:
                self.cache_dir.mkdir(parents=True, exist_ok=True)
                cache = self._path()
            except OSError as exc:
                log.warning("compiled ranker: cache %s not usable (%s); compiling without it",
                            self.cache_dir, exc)
        self.cached = cache is not None and cache.exists()
        with tempfile.TemporaryDirectory(prefix="recsys-ranker-") as tmp:
            model_file = Path(tmp) / "ranker.txt"
            model_file.write_text(self.model_text)
            model = lleaves.Model(model_file=str(model_file))
            # Written under another name and renamed: a reader never loads half a file.
            target = cache if self.cached or cache is None else Path(tmp) / "ranker.o"
            model.compile(cache=None if target is None else str(target),
                          fblocksize=max(model.num_trees(), 1))
            if cache is not None and not self.cached:
                try:
                    os.replace(_copy_beside(target, cache), cache)
                    _prune(self.cache_dir)
                except OSError as exc:
                    log.warning("compiled ranker: not cached in %s (%s)", self.cache_dir, exc)
        if model.num_feature() != self.n_features or model.num_model_per_iteration() != 1:
            raise CompileRefused("the compiled model's shape is not the booster's")
        self._model, self._entry = model, model._c_entry_func
        self.compile_seconds = time.perf_counter() - started

    def predict(self, features: np.ndarray) -> np.ndarray:
        """[rows] float64 raw scores of [rows, n_features] rows, on the calling thread (the
        compiled function releases the GIL)."""
        rows = np.array(features, dtype=np.float64, order="C", copy=True)
        if rows.ndim != 2 or rows.shape[1] != self.n_features:
            raise ValueError(f"expected [rows, {self.n_features}] features, got {rows.shape}")
        rows[np.abs(rows) <= ZERO_THRESHOLD] = 0.0  # as LightGBM reads them
        out = np.zeros(len(rows), dtype=np.float64)
        if len(rows):
            double = ctypes.POINTER(ctypes.c_double)
            self._entry(rows.ctypes.data_as(double), out.ctypes.data_as(double), 0, len(rows))
        return out

    def __getstate__(self) -> dict:
        return {"model_text": self.model_text, "n_features": self.n_features, "cache_dir": self.cache_dir}

    def __setstate__(self, state: dict) -> None:
        """Loaded again (from the cache, else compiled); if that fails, `ready` is False and
        the owner scores with LightGBM (the reason is logged)."""
        self._entry = None
        try:
            self.__init__(state["model_text"], state["n_features"], state["cache_dir"])
        except Exception:
            log.exception("compiled ranker: not loaded in this process; LightGBM scores")
            self.__dict__.update(state)

    @property
    def ready(self) -> bool:
        return getattr(self, "_entry", None) is not None


def _prune(directory: Path, keep: int = CACHE_KEEP) -> None:
    """Remove all but the `keep` most recently written compiled models of a cache directory."""
    kept = sorted(directory.glob("ranker-*.o"), key=lambda p: p.stat().st_mtime, reverse=True)
    for path in kept[keep:]:
        path.unlink(missing_ok=True)


def _copy_beside(source: Path, target: Path) -> Path:
    """A copy of `source` in `target`'s directory, under a name of its own (to rename over
    `target` in one step)."""
    fd, name = tempfile.mkstemp(prefix=target.name + ".", dir=target.parent)
    with os.fdopen(fd, "wb") as out:
        out.write(source.read_bytes())
    return Path(name)
