"""Batch recommendations for a file of users (`recsys recommend`)."""
from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from components.errors import DataValidationError, RecsysError
from components.models.two_stage import TwoStageRecommender

_CHUNK = 1000


@dataclass(frozen=True)
class Written:
    rows: int
    users: int
    cold_start: int  # users unseen in training, answered with the cold-start list


def read_users(path: Path) -> list[str]:
    if not path.exists():
        raise DataValidationError(f"{path}: no such file")
    try:
        frame = pd.read_csv(path, dtype=str)
    except pd.errors.EmptyDataError:
        raise DataValidationError(f"{path}: empty file (expected a CSV with a user_id column)") from None
    except (ValueError, OSError, pd.errors.ParserError) as exc:
        raise DataValidationError(f"{path}: cannot be read as CSV: {exc}") from None
    if "user_id" not in frame.columns:
        raise DataValidationError(
            f"{path}: missing column user_id (found: {', '.join(frame.columns) or 'none'})"
        )
    users = frame["user_id"].str.strip()
    empty = users.isna() | (users == "")
    if empty.any():
        rows = np.flatnonzero(empty.to_numpy())[:5] + 1
        raise DataValidationError(f"{path}: column 'user_id': empty id; rows {', '.join(map(str, rows))}")
    return users.tolist()


def recommend_file(
    model: TwoStageRecommender,
    users_path: Path,
    k: int,
    output: Path,
    *,
    progress: Callable[[str], None] = lambda _: None,
) -> Written:
    """Write user_id,item_id,rank,score,cold_start for every user (fewer than k rows for a user
    who has seen all but a few items)."""
    if k < 1 or k > model.data_.n_items:
        raise RecsysError(f"--k must be between 1 and the catalogue size {model.data_.n_items}, not {k}")
    users = read_users(users_path)
    try:
        output.parent.mkdir(parents=True, exist_ok=True)
        rows = cold = 0
        with output.open("w") as handle:
            handle.write("user_id,item_id,rank,score,cold_start\n")
            for start in range(0, len(users), _CHUNK):
                batch = users[start : start + _CHUNK]
                recs = model.recommend(batch, k)
                frame = pd.DataFrame(
                    {
                        "user_id": np.repeat(batch, recs.item_ids.shape[1]),
                        "item_id": recs.item_ids.ravel(),
                        "rank": np.tile(np.arange(1, recs.item_ids.shape[1] + 1), len(batch)),
                        "score": recs.scores.ravel(),
                        "cold_start": np.repeat(np.asarray(recs.cold_start, dtype=bool), recs.item_ids.shape[1]),
                    }
                )
                cold += int(np.sum(recs.cold_start))
                frame = frame[np.isfinite(frame["score"])]  # nothing left to recommend (tiny catalogue)
                frame.to_csv(handle, header=False, index=False, float_format="%.6f")
                rows += len(frame)
                progress(f"recommended for {min(start + _CHUNK, len(users)):,}/{len(users):,} users")
    except OSError as exc:
        raise RecsysError(f"{output}: cannot write: {exc.strerror or exc}") from None
    return Written(rows, len(users), cold)
