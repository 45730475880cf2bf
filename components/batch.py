"""Batch recommendations for a file of users (`recsys recommend`)."""
from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import numpy as np
import pandas as pd

from components.errors import DataValidationError, RecsysError
from components.models.two_stage import TwoStageRecommender

_CHUNK = 1000


def read_users(path: Path) -> list[str]:
    if not path.exists():
        raise DataValidationError(f"{path}: no such file")
    frame = pd.read_csv(path, dtype=str)
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
) -> int:
    """Write user_id,item_id,rank,score for every user; returns the number of rows."""
    if k < 1 or k > model.data_.n_items:
        raise RecsysError(f"--k must be between 1 and the catalogue size {model.data_.n_items}, not {k}")
    users = read_users(users_path)
    output.parent.mkdir(parents=True, exist_ok=True)
    rows = 0
    with output.open("w") as handle:
        handle.write("user_id,item_id,rank,score\n")
        for start in range(0, len(users), _CHUNK):
            batch = users[start : start + _CHUNK]
            recs = model.recommend(batch, k)
            frame = pd.DataFrame(
                {
                    "user_id": np.repeat(batch, recs.item_ids.shape[1]),
                    "item_id": recs.item_ids.ravel(),
                    "rank": np.tile(np.arange(1, recs.item_ids.shape[1] + 1), len(batch)),
                    "score": recs.scores.ravel(),
                }
            )
            frame.to_csv(handle, header=False, index=False, float_format="%.6f")
            rows += len(frame)
            progress(f"recommended for {min(start + _CHUNK, len(users)):,}/{len(users):,} users")
    return rows
