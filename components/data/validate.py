"""Validate: the data contract, checked before anything is trained or written.

Every failure is a `DataValidationError` whose message names the file, the column and the
first offending rows (1-based data rows, header excluded), so a user can open the file and fix
it. Valid data comes back typed and normalised: ids as str, rating float (an empty rating is an
implicit interaction, such as a click: positive and unrated), timestamp int64, and
one row per (user, item) pair (the most recent one), so no pair can sit on both sides of a split.
"""
from __future__ import annotations

import re
import time
from pathlib import Path

import numpy as np
import pandas as pd

from components.errors import DataValidationError

REQUIRED_INTERACTION_COLUMNS = ("user_id", "item_id")
OPTIONAL_INTERACTION_COLUMNS = ("rating", "timestamp")
ITEM_COLUMNS = ("item_id", "title", "genres", "year", "description")
_SHOWN_ROWS = 5
# Timestamps later than this far past "now" are clock or unit errors (e.g. milliseconds).
_FUTURE_SLACK_SECONDS = 86_400


# Column names that mean a contract column, compared lower-case without separators (userId,
# user_id, UserID and USER-ID are all "userid").
_LOOKS_LIKE = {
    "user_id": ("userid", "user", "uid", "users", "customerid", "customer", "visitorid", "accountid"),
    "item_id": ("itemid", "item", "iid", "items", "movieid", "movie", "productid", "product",
                "artistid", "artist", "trackid", "track", "songid", "bookid", "isbn", "contentid"),
    "rating": ("rating", "ratings", "score", "stars", "userrating"),
    "timestamp": ("timestamp", "ts", "time", "datetime", "date", "unixtime", "epoch", "eventtime"),
}
_COLUMN_KEYS = {"user_id": "user", "item_id": "item", "rating": "rating", "timestamp": "timestamp"}


def missing_columns_hint(columns: list[str], source: str) -> str:
    """What to do about missing required columns, when the columns say: a MovieLens 100K
    `u.data` (tab-separated, no header) given as a file, or columns that look renamed (userId,
    movieId, ...), for which it gives the `--columns` mapping."""
    names = [str(c) for c in columns]
    if len(names) == 1 and re.fullmatch(r"\d+(\t\d+){2,3}", names[0].strip()):
        folder = Path(source).parent if Path(source).name else Path(source)
        return (
            "; this looks like MovieLens 100K's u.data (tab-separated, no header row): pass the "
            f"directory that holds it ({folder}) instead, which reads u.data and u.item"
        )
    mapping = {}
    for target, aliases in _LOOKS_LIKE.items():
        if target in names:
            continue
        for name in names:
            if re.sub(r"[^a-z0-9]", "", name.lower()) in aliases and name not in mapping.values():
                mapping[target] = name
                break
    if not any(t in mapping for t in ("user_id", "item_id")):
        return ""
    pairs = ", ".join(f"'{name}' looks like {target}" for target, name in mapping.items())
    flag = ",".join(f"{_COLUMN_KEYS[target]}={name}" for target, name in mapping.items())
    return f"; {pairs}: rename the columns, or pass --columns {flag}"


def _fail(source: str, column: str, problem: str, rows: np.ndarray, values: pd.Series) -> None:
    shown = ", ".join(f"{int(r) + 1} ({values.iloc[i]!r})" for i, r in enumerate(rows[:_SHOWN_ROWS]))
    more = f" and {len(rows) - _SHOWN_ROWS} more" if len(rows) > _SHOWN_ROWS else ""
    raise DataValidationError(f"{source}: column '{column}': {problem}; rows {shown}{more}")


def _check_ids(df: pd.DataFrame, column: str, source: str) -> pd.Series:
    raw = df[column]
    ids = raw.astype("string").str.strip()
    bad = ids.isna() | (ids == "")
    if bad.any():
        rows = np.flatnonzero(bad.to_numpy())
        _fail(source, column, "empty id", rows, raw.iloc[rows])
    # Integer ids read as floats (1.0) would not match "1" elsewhere.
    if pd.api.types.is_float_dtype(raw):
        frac = raw.to_numpy() % 1 != 0
        if frac.any():
            rows = np.flatnonzero(frac)
            _fail(source, column, "id is a non-integer number", rows, raw.iloc[rows])
        ids = raw.astype("int64").astype("string")
    return ids.astype(str)


def _check_numeric(df: pd.DataFrame, column: str, source: str, *, allow_missing: bool = False) -> pd.Series:
    raw = df[column]
    values = pd.to_numeric(raw, errors="coerce")
    bad = values.isna() | ~np.isfinite(values.to_numpy(dtype=float, na_value=np.nan))
    if allow_missing:  # an empty cell passes; text that is not a number still fails
        bad &= raw.notna().to_numpy() & ~raw.astype("string").str.strip().eq("").fillna(False).to_numpy()
    if bad.any():
        rows = np.flatnonzero(bad.to_numpy())
        _fail(source, column, "not a finite number", rows, raw.iloc[rows])
    return values


def validate_interactions(
    df: pd.DataFrame,
    *,
    source: str,
    rating_range: tuple[float, float] | None = None,
    now: float | None = None,
) -> pd.DataFrame:
    """Check the interactions contract and return the normalised frame."""
    missing = [c for c in REQUIRED_INTERACTION_COLUMNS if c not in df.columns]
    if missing:
        raise DataValidationError(
            f"{source}: missing required column(s) {', '.join(missing)} "
            f"(found: {', '.join(map(str, df.columns)) or 'none'})"
            f"{missing_columns_hint(list(df.columns), source)}"
        )
    if df.empty:
        raise DataValidationError(f"{source}: no interactions (the file has a header and no rows)")
    out = pd.DataFrame(
        {"user_id": _check_ids(df, "user_id", source), "item_id": _check_ids(df, "item_id", source)}
    )
    if "rating" in df.columns:
        # An empty rating is an implicit interaction (a click, a play): positive, unrated.
        rating = _check_numeric(df, "rating", source, allow_missing=True).astype(float)
        if rating_range is not None:
            lo, hi = rating_range
            bad = ((rating < lo) | (rating > hi)).fillna(False).to_numpy()
            if bad.any():
                rows = np.flatnonzero(bad)
                _fail(source, "rating", f"outside [{lo}, {hi}]", rows, df["rating"].iloc[rows])
        out["rating"] = rating.to_numpy()
    if "timestamp" in df.columns:
        ts = _check_numeric(df, "timestamp", source)
        limit = (now if now is not None else time.time()) + _FUTURE_SLACK_SECONDS
        bad = ((ts < 0) | (ts > limit) | (ts % 1 != 0)).to_numpy()
        if bad.any():
            rows = np.flatnonzero(bad)
            _fail(
                source,
                "timestamp",
                "not a whole Unix time in seconds between 1970 and now",
                rows,
                df["timestamp"].iloc[rows],
            )
        out["timestamp"] = ts.astype("int64").to_numpy()
    dup = out.duplicated(keep="first").to_numpy()
    if dup.any():
        rows = np.flatnonzero(dup)
        _fail(source, "user_id,item_id", "duplicate row", rows, out["user_id"].iloc[rows] + "/" + out["item_id"].iloc[rows])
    return _one_row_per_pair(out)


def _one_row_per_pair(df: pd.DataFrame) -> pd.DataFrame:
    """Repeated (user, item) pairs (re-watches, re-rates) keep their latest row. Rows stay in
    input order: the stratified split draws one random number per row in that order, as the
    benchmark it reproduces does."""
    df = df.reset_index(drop=True)
    if "timestamp" in df.columns:
        df = df.sort_values("timestamp", kind="stable")
    df = df.drop_duplicates(["user_id", "item_id"], keep="last").sort_index()
    return df.reset_index(drop=True)


def validate_items(items: pd.DataFrame, interactions: pd.DataFrame, *, source: str) -> pd.DataFrame:
    """Check the items contract; every interacted item must be described."""
    if "item_id" not in items.columns:
        raise DataValidationError(
            f"{source}: missing required column item_id (found: {', '.join(map(str, items.columns))})"
        )
    out = pd.DataFrame({"item_id": _check_ids(items, "item_id", source)})
    dup = out["item_id"].duplicated().to_numpy()
    if dup.any():
        rows = np.flatnonzero(dup)
        _fail(source, "item_id", "duplicate item", rows, out["item_id"].iloc[rows])
    for column in ("title", "genres", "description"):
        if column in items.columns:
            out[column] = items[column].fillna("").astype(str).to_numpy()
    if "year" in items.columns:
        out["year"] = pd.to_numeric(items["year"], errors="coerce").to_numpy()
    unknown = ~interactions["item_id"].isin(out["item_id"])
    if unknown.any():
        rows = np.flatnonzero(unknown.to_numpy())
        _fail(
            source,
            "item_id",
            f"{int(unknown.sum())} interaction(s) name items missing from the items file",
            rows,
            interactions["item_id"].iloc[rows],
        )
    return out
