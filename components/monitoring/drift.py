"""Drift detectors: the one module that imports alibi-detect.

alibi-detect 0.12 and later is under the Business Source License 1.1 (free for non-production
use; production use needs a licence from Seldon; each release becomes Apache-2.0 four years
after it). Every call into it is in this file, behind four functions (`fit_detectors`,
`save_detectors`, `load_detectors`, `run_detectors`) over plain numpy tables, so replacing it
means rewriting this file only. It is imported lazily (a cold import takes seconds and it is
not installed in the serving image: the `monitoring` extra and the pipeline image carry it).

One `TabularDrift` per view (chi-squared for categorical columns given in
`categories_per_feature`, two-sample Kolmogorov-Smirnov for numeric ones): numpy and scipy only,
no TensorFlow or PyTorch. The false alarm rate of a whole check is held at `p_value`: it is
split evenly over the views, and within a view over its features by Bonferroni (or controlled
as a false discovery rate with `correction="fdr"`).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from components.monitoring.drift_features import FeatureTable

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class FeatureResult:
    view: str
    feature: str
    test: str  # "chi2" or "ks"
    statistic: float
    p_value: float
    threshold: float
    drift: bool


@dataclass(frozen=True)
class ViewResult:
    view: str
    rows: int
    reference_rows: int
    drift: bool
    features: tuple[FeatureResult, ...]


def available() -> bool:
    """Whether alibi-detect is installed (the `monitoring` extra; the pipeline image has it)."""
    import importlib.util

    return importlib.util.find_spec("alibi_detect") is not None


def _alibi():
    """alibi-detect, imported on first use (it prints a line about missing deep-learning
    backends on import, which says nothing about the numpy/scipy detectors used here)."""
    import contextlib
    import io

    if not available():
        from components.errors import RecsysError

        raise RecsysError(
            "drift detection needs alibi-detect: pip install 'recsys-mlops[monitoring]' "
            "(the pipeline image has it)"
        )

    logging.getLogger("alibi_detect").setLevel(logging.ERROR)
    with contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(io.StringIO()):
        from alibi_detect.cd import TabularDrift
        from alibi_detect.saving import load_detector, save_detector
    return TabularDrift, save_detector, load_detector


def fit_detectors(
    tables: dict[str, FeatureTable], *, p_value: float = 0.05, correction: str = "bonferroni"
) -> dict[str, Any]:
    """A detector per view, its reference the view's rows (views without rows are left out)."""
    tabular_drift, _, _ = _alibi()
    fitted = {name: t for name, t in tables.items() if len(t)}
    per_view = p_value / max(len(fitted), 1)
    detectors = {}
    for name, table in fitted.items():
        categories = {i: None for i, is_cat in enumerate(table.categorical) if is_cat}
        detectors[name] = tabular_drift(
            table.values, p_val=per_view, categories_per_feature=categories, correction=correction
        )
    return detectors


def save_detectors(detectors: dict[str, Any], directory: Path) -> None:
    """alibi-detect's own format (config.toml and x_ref.npy), one directory per view."""
    _, save_detector, _ = _alibi()
    for name, detector in detectors.items():
        save_detector(detector, directory / name)


def load_detectors(directory: Path, views: list[str]) -> dict[str, Any]:
    _, _, load_detector = _alibi()
    return {name: load_detector(directory / name) for name in views if (directory / name).is_dir()}


def run_detectors(detectors: dict[str, Any], tables: dict[str, FeatureTable]) -> list[ViewResult]:
    """Test each view that has both a detector and rows; feature-level results included."""
    results = []
    for name, table in tables.items():
        detector = detectors.get(name)
        if detector is None or not len(table):
            continue
        # Feature names and kinds come from the table; the detector was fitted on the same ones.
        out = detector.predict(
            table.values, drift_type="batch", return_p_val=True, return_distance=True
        )["data"]
        p_values = np.atleast_1d(np.asarray(out["p_val"], dtype=float))
        distances = np.atleast_1d(np.asarray(out["distance"], dtype=float))
        thresholds = _feature_thresholds(p_values, out["threshold"], detector.correction)
        features = tuple(
            FeatureResult(
                view=name,
                feature=feature,
                test="chi2" if is_cat else "ks",
                statistic=float(distances[i]),
                p_value=float(p_values[i]),
                threshold=float(thresholds[i]),
                drift=bool(p_values[i] < thresholds[i]),
            )
            for i, (feature, is_cat) in enumerate(zip(table.names, table.categorical))
        )
        results.append(
            ViewResult(
                name, len(table), int(detector.x_ref.shape[0]), bool(out["is_drift"]), features
            )
        )
    return results


def _feature_thresholds(p_values: np.ndarray, threshold: Any, correction: str) -> np.ndarray:
    """The threshold each feature's p-value was held to. Bonferroni: one for all. FDR
    (Benjamini-Hochberg): the largest passing step when some pass, else each feature's own step
    q * rank / n (alibi returns the whole ladder then)."""
    threshold = np.asarray(threshold, dtype=float)
    if threshold.ndim == 0 or correction != "fdr":
        return np.full(len(p_values), float(np.max(threshold)))
    ranks = np.empty(len(p_values), dtype=np.int64)
    ranks[np.argsort(p_values, kind="stable")] = np.arange(len(p_values))
    return threshold[ranks]
