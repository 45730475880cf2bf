"""The model artifact: one self-describing directory, written by training, read by everything.

Layout (no pickles: every file is a plain numpy, scipy, Parquet, JSON or LightGBM text file,
so an artifact can be inspected, and loading it never runs code from it):

    manifest.json           format version, model version, data fingerprint, config, metrics,
                            generators, file checksums
    items.parquet           item ids (index order) and metadata (title, genres, year, ...)
    users.parquet           user ids (index order) and per-user facts the ranker uses
    interactions.npz        the training user-item matrix (training items are never re-recommended)
    generators/<name>/*.npy|npz   each candidate generator's state
    item_stats/*.npy|npz    per-item ranker features
    ranker.txt              the LightGBM booster (absent when the ranker is disabled)
    drift/                  drift references, when training fitted them (`drift_reference`)

`load_model` checks the manifest, the format version and every file's checksum, and fails with
one `ArtifactError` line naming what is wrong.
"""
from __future__ import annotations

import hashlib
import json
import shutil
import time
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

import lightgbm as lgb
import numpy as np
import pandas as pd
import scipy.sparse as sp

from components.config import ModelConfig, SplitConfig
from components.errors import ArtifactError
from components.models.als import AlsModel
from components.models.base import USER_TIMES, TrainingData
from components.models.content import ContentModel
from components.models.ease import EaseModel, SequenceEaseModel
from components.models.features import ItemStats, feature_names
from components.models.popularity import PopularityModel
from components.models.two_stage import TwoStageRecommender

FORMAT_VERSION = 1
MANIFEST = "manifest.json"
_GENERATOR_TYPES = {
    "popularity": PopularityModel,
    "ease": EaseModel,
    "seq_ease": SequenceEaseModel,
    "als": AlsModel,
    "content": ContentModel,
}


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def _write_state(directory: Path, state: dict[str, Any]) -> None:
    directory.mkdir(parents=True, exist_ok=True)
    for key, value in state.items():
        if sp.issparse(value):
            sp.save_npz(directory / f"{key}.npz", sp.csr_matrix(value))
        else:
            np.save(directory / f"{key}.npy", np.asarray(value), allow_pickle=False)


def _read_state(directory: Path) -> dict[str, Any]:
    state: dict[str, Any] = {}
    for path in sorted(directory.iterdir()):
        if path.suffix == ".npz":
            state[path.stem] = sp.load_npz(path).tocsr()
        elif path.suffix == ".npy":
            state[path.stem] = np.load(path, allow_pickle=False)
    return state


def check_output_dir(directory: str | Path, *, keep: tuple[str | Path, ...] = ()) -> Path:
    """Where an artifact may be written: a new path, an empty directory, or an artifact this
    code wrote before (every file in it listed in its manifest), which is then replaced. Never
    a file, the current directory or one above it, a directory holding anything else, or one
    holding a path of `keep` (the training input): writing an artifact never deletes what the
    project did not create. One ArtifactError line otherwise, before any work is done."""
    target = Path(directory)
    resolved = target.resolve()
    if target.exists() and not target.is_dir():
        raise ArtifactError(f"{target}: is a file, not a directory; give a new directory")
    if resolved == Path.cwd().resolve() or resolved in Path.cwd().resolve().parents:
        raise ArtifactError(f"{target}: is the current directory or contains it; give a new directory")
    for path in keep:
        if path and Path(path).exists() and resolved in Path(path).resolve().parents:
            raise ArtifactError(f"{target}: holds the input {path}; give another directory")
    if target.is_dir() and any(target.iterdir()):
        manifest = target / MANIFEST
        try:
            listed = set(json.loads(manifest.read_text()).get("files", {})) | {MANIFEST}
        except (OSError, ValueError, AttributeError):
            raise ArtifactError(
                f"{target}: is a directory that is not a model artifact and is not empty; "
                "give a new or empty directory"
            ) from None
        foreign = sorted(str(p.relative_to(target)) for p in target.rglob("*")
                         if p.is_file() and str(p.relative_to(target)) not in listed)
        if foreign:
            raise ArtifactError(
                f"{target}: holds files that are not part of the model artifact ({', '.join(foreign[:3])}"
                f"{', ...' if len(foreign) > 3 else ''}); give a new or empty directory"
            )
    return target


def save_model(
    model: TwoStageRecommender,
    directory: str | Path,
    *,
    data_fingerprint: str,
    metrics: dict[str, float] | None = None,
    model_version: str | None = None,
    extra: dict[str, Any] | None = None,
    write_extra: Callable[[Path], None] | None = None,
) -> Path:
    """Write the artifact atomically: a partial directory never looks like a model. It is
    written beside the target and renamed into place; what the target held is only removed
    when it is an earlier artifact (see `check_output_dir`).

    `write_extra(directory)` may add files (e.g. drift references) before the checksums are
    taken, so they are verified like the rest."""
    target = check_output_dir(directory)
    staging = target.resolve().with_name(f".{target.resolve().name}.partial-{uuid.uuid4().hex[:8]}")
    staging.mkdir(parents=True)
    try:
        data = model.data_
        items = data.items.copy()
        items.to_parquet(staging / "items.parquet", index=False)
        times = dict(zip(USER_TIMES, model.user_time_.T))
        pd.DataFrame({"user_id": data.user_ids, **times}).to_parquet(
            staging / "users.parquet", index=False
        )
        sp.save_npz(staging / "interactions.npz", data.matrix)
        np.save(staging / "item_last_seen.npy", data.item_last_seen, allow_pickle=False)
        for name, gen in model.generators_.items():
            _write_state(staging / "generators" / name, gen.get_state())
        _write_state(staging / "item_stats", model.stats_.get_state())
        if model.ranker_ is not None:
            model.ranker_.save_model(str(staging / "ranker.txt"))
        if write_extra is not None:
            write_extra(staging)
        files = {
            str(p.relative_to(staging)): _sha256(p) for p in sorted(staging.rglob("*")) if p.is_file()
        }
        manifest = {
            "format_version": FORMAT_VERSION,
            "model_version": model_version or time.strftime("%Y%m%d-%H%M%S") + "-" + uuid.uuid4().hex[:6],
            "created_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
            "data_fingerprint": data_fingerprint,
            "config": {"model": model.config.model_dump(mode="json"), "split": model.split.model_dump(mode="json")},
            "metrics": metrics or {},
            "generators": list(model.generators_),
            # Enabled in the config but with nothing to learn from in this data, and why.
            "generators_left_out": dict(getattr(model, "left_out_", {})),
            # How cold-start scores are put on the personalised scale (TwoStageRecommender.cold_start_scores).
            "cold_start_scale": getattr(model, "cold_start_scale_", None),
            "ranked_by": model.ranked_by,
            "n_users": int(data.n_users),
            "n_items": int(data.n_items),
            "train_end": data.train_end,
            "files": files,
            **(extra or {}),
        }
        (staging / MANIFEST).write_text(json.dumps(manifest, indent=2, sort_keys=True))
        previous = staging.with_name(staging.name.replace(".partial-", ".previous-"))
        if target.exists():
            target.rename(previous)  # checked above: an earlier artifact, or empty
        staging.rename(target)
        shutil.rmtree(previous, ignore_errors=True)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    return target


def read_manifest(directory: str | Path) -> dict[str, Any]:
    path = Path(directory) / MANIFEST
    if not Path(directory).exists():
        raise ArtifactError(f"{directory}: no such directory")
    if not path.is_file():
        raise ArtifactError(f"{directory}: not a model artifact (no {MANIFEST})")
    try:
        manifest = json.loads(path.read_text())
    except (OSError, json.JSONDecodeError) as exc:
        raise ArtifactError(f"{path}: unreadable manifest: {exc}") from None
    version = manifest.get("format_version")
    if version != FORMAT_VERSION:
        raise ArtifactError(
            f"{path}: artifact format {version!r} is not supported (this code reads {FORMAT_VERSION})"
        )
    return manifest


def verify_files(directory: Path, manifest: dict[str, Any]) -> None:
    for name, expected in manifest.get("files", {}).items():
        path = directory / name
        if not path.is_file():
            raise ArtifactError(f"{directory}: missing file {name}")
        if _sha256(path) != expected:
            raise ArtifactError(f"{directory}: {name} is corrupt (checksum mismatch)")


def load_model(directory: str | Path) -> TwoStageRecommender:
    """Load and validate an artifact; anything wrong is one ArtifactError line."""
    directory = Path(directory)
    manifest = read_manifest(directory)
    verify_files(directory, manifest)
    try:
        config = manifest["config"]
        model = TwoStageRecommender(
            ModelConfig.model_validate(config["model"]), SplitConfig.model_validate(config["split"])
        )
        items = pd.read_parquet(directory / "items.parquet")
        user_frame = pd.read_parquet(directory / "users.parquet")
        users = user_frame["user_id"].to_numpy(dtype=str)
        matrix = sp.load_npz(directory / "interactions.npz").tocsr()
        model.data_ = TrainingData(
            user_ids=users,
            item_ids=items["item_id"].to_numpy(dtype=str),
            matrix=matrix,
            items=items,
            item_last_seen=np.load(directory / "item_last_seen.npy"),
            train_end=float(manifest["train_end"]),
        )
        model.stats_ = ItemStats.from_state(_read_state(directory / "item_stats"))
        model.user_time_ = np.column_stack([  # artifacts before first/last time hold the mean only
            user_frame.get(column, user_frame["mean_time"]).to_numpy(dtype=np.float64)
            for column in USER_TIMES
        ])
        model.generators_ = {
            name: _GENERATOR_TYPES[name].from_state(_read_state(directory / "generators" / name))
            for name in manifest["generators"]
        }
        model.left_out_ = dict(manifest.get("generators_left_out", {}))
        scale = manifest.get("cold_start_scale")
        model.cold_start_scale_ = tuple(float(v) for v in scale) if scale else None
        ranker = directory / "ranker.txt"
        model.ranker_ = None
        if ranker.exists():
            model.ranker_ = lgb.Booster(model_file=str(ranker))
        # Without a ranker, the generator the fit chose to serve alone (older artifacts: EASE).
        model.fallback_ = manifest.get("ranked_by")
    except ArtifactError:
        raise
    except Exception as exc:  # noqa: BLE001 - any inconsistency inside a checksummed artifact is a bad artifact
        raise ArtifactError(f"{directory}: cannot load model: {type(exc).__name__}: {exc}") from None
    if matrix.shape != (len(users), len(model.data_.item_ids)):
        raise ArtifactError(f"{directory}: interaction matrix does not match the id maps")
    if model.ranker_ is not None:
        # A ranker fed other features than it learned on answers, wrongly, without an error.
        expected = feature_names(list(model.generators_))
        trained = model.ranker_.feature_name()
        if trained != expected:
            changed = sorted(set(trained) ^ set(expected)) or ["their order"]
            raise ArtifactError(
                f"{directory}: the ranker was trained on features this code does not compute "
                f"(differing: {', '.join(changed)}); retrain the model with this version"
            )
    model.manifest_ = manifest
    return model
