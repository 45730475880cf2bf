"""Drift references: fitted at training time, saved inside the model artifact, loaded to check.

The reference of each view is what serving would have observed over the held-out period (see
`drift_features.reference_tables`). It lives in the artifact's `drift/` directory:

    drift/profile.json        cut points (activity, popularity, rating bins, genres, k)
    drift/reference.json      what the reference was fitted on, and the test settings
    drift/<view>/             the view's detector in alibi-detect's own format

`save_model(..., write_extra=...)` writes it before the artifact's checksums are taken, so a
changed reference fails `verify_files` like any other file of the model.
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pandas as pd

from components.config import MonitoringConfig
from components.errors import ArtifactError, RecsysError
from components.monitoring.drift_features import VIEWS, DriftProfile, FeatureTable, reference_tables

log = logging.getLogger(__name__)

REFERENCE_DIR = "drift"
PROFILE = "profile.json"
SUMMARY = "reference.json"


@dataclass
class References:
    profile: DriftProfile
    detectors: dict[str, Any]
    summary: dict[str, Any]


def fit_references(
    model, heldout: pd.DataFrame, config: MonitoringConfig, *, source: str = "held-out interactions"
) -> References | None:
    """Reference tables from the model's answers and the held-out interactions, and a
    detector fitted on each. None, with a warning, where alibi-detect is not installed: the
    model still trains and serves, and a drift check on it says it has no references."""
    from components.monitoring.drift import available, fit_detectors

    if not available():
        log.warning(
            "no drift references: alibi-detect is not installed (pip install "
            "'recsys-mlops[monitoring]'; the pipeline image has it)"
        )
        return None

    profile, tables = reference_tables(
        model, heldout, buckets=config.buckets, max_rows=config.reference_size
    )
    detectors = fit_detectors(tables, p_value=config.p_value, correction=config.correction)
    summary = {
        "source": source,
        "heldout_interactions": len(heldout),
        "rows": {name: len(table) for name, table in tables.items()},
        "p_value": config.p_value,
        "correction": config.correction,
        "train_interactions": int(model.data_.matrix.nnz),
    }
    return References(profile, detectors, summary)


def save_references(references: References, artifact_dir: Path) -> None:
    from components.monitoring.drift import save_detectors

    directory = artifact_dir / REFERENCE_DIR
    directory.mkdir(parents=True, exist_ok=True)
    references.profile.save(directory / PROFILE)
    (directory / SUMMARY).write_text(json.dumps(references.summary, indent=2, sort_keys=True))
    save_detectors(references.detectors, directory)


def has_references(artifact_dir: Path) -> bool:
    return (Path(artifact_dir) / REFERENCE_DIR / PROFILE).is_file()


def load_references(artifact_dir: Path) -> References:
    """The references of a (checksum-verified) artifact; one ArtifactError line if absent."""
    from components.monitoring.drift import load_detectors

    directory = Path(artifact_dir) / REFERENCE_DIR
    if not (directory / PROFILE).is_file():
        raise ArtifactError(
            f"{artifact_dir}: the model has no drift references (trained before they existed, "
            "or by `recsys fit` without held-out data): retrain it with `recsys run`"
        )
    try:
        profile = DriftProfile.load(directory / PROFILE)
        summary = json.loads((directory / SUMMARY).read_text())
        detectors = load_detectors(directory, list(VIEWS))
    except RecsysError:  # alibi-detect is not installed: say that, not "bad artifact"
        raise
    # A bad reference inside a checksummed artifact is a bad artifact.
    except Exception as exc:  # noqa: BLE001
        raise ArtifactError(
            f"{directory}: cannot load drift references: {type(exc).__name__}: {exc}"
        ) from None
    return References(profile, detectors, summary)


def reference_rows(references: References) -> dict[str, FeatureTable]:
    """The reference tables back from the detectors (for plots of reference vs current)."""
    out = {}
    for name, detector in references.detectors.items():
        names, categorical = zip(*VIEWS[name])
        out[name] = FeatureTable(name, tuple(names), tuple(categorical), detector.x_ref)
    return out
