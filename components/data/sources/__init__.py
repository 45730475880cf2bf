"""Remote data sources: where teams keep interactions and items, named by one URL.

- `s3://bucket/key` or `s3://bucket/prefix/` (AWS S3 or any S3 API such as MinIO; the endpoint
  from `AWS_ENDPOINT_URL`, credentials from boto3's usual chain), `?versionId=` pins a version;
- a SQLAlchemy URL with `?table=NAME` or `?query=SELECT ...` (PostgreSQL through psycopg,
  SQLite, ...);
- `dvc://REPO//PATH@REV`: a file or directory tracked by DVC in a git repository, read through
  DVC's Python API at a git revision.

Each source answers two questions: `fingerprint()`, from what the store says about the bytes
(ETags and sizes, DVC's content hash, a row count and the newest timestamp), so the pipeline can
tell whether data changed without downloading it; and `read()`, the table itself. Every failure
is one `DataSourceError` line that says what is wrong and never carries a secret.
"""
from __future__ import annotations

import io
import re
from typing import Protocol

import pandas as pd

from components.errors import DataSourceError

TABLE_SUFFIXES = (".parquet", ".pq", ".csv", ".csv.gz", ".tsv")
_SCHEMES = "s3://, dvc://, or a SQLAlchemy URL such as postgresql+psycopg://... or sqlite:///..."
_URL = re.compile(r"^[A-Za-z][A-Za-z0-9+.-]*://")


class Source(Protocol):
    """A remote table: where it is (for people and lineage) and how to know and read it."""

    @property
    def url(self) -> str:
        """The source as users wrote it, with any password masked."""

    @property
    def name(self) -> str:
        """A short dataset name (file stem, table name)."""

    def fingerprint(self) -> str:
        """What the store says about the bytes, as text; changes when the data does."""

    def read(self) -> pd.DataFrame:
        """The table, columns as the source has them (validation comes later)."""


def is_remote(text: str | None) -> bool:
    """True for anything written as a URL (`scheme://...`): a remote source or a bad scheme."""
    return bool(text) and bool(_URL.match(text))


def open_source(text: str, *, data_version: str = "") -> Source:
    """The source behind a URL; an unknown scheme is one clear line."""
    scheme = text.split("://", 1)[0].lower()
    if scheme == "s3":
        from components.data.sources.object_store import S3Source

        return S3Source.from_url(text)
    if scheme == "dvc":
        from components.data.sources.dvc import DvcSource

        return DvcSource.from_url(text)
    from components.data.sources.sql import SqlSource, is_sql_scheme

    if is_sql_scheme(scheme):
        return SqlSource.from_url(text, data_version=data_version)
    raise DataSourceError(f"{redact(text)}: unknown scheme {scheme}://; expected {_SCHEMES}")


def redact(url: str) -> str:
    """The URL with the password of its user part (`user:password@`) masked."""
    return re.sub(r"(://[^/@:]*:)[^/@]*@", r"\1***@", url)


def stem(path: str) -> str:
    """`ratings` for `.../ratings.parquet`, `.../ratings.csv.gz` or `.../ratings/`."""
    base = path.rstrip("/").rsplit("/", 1)[-1]
    for suffix in sorted(TABLE_SUFFIXES, key=len, reverse=True):
        if base.lower().endswith(suffix):
            return base[: -len(suffix)]
    return base or "data"


def is_table_file(path: str) -> bool:
    """A part to read: a Parquet or CSV file that is not a marker (`_SUCCESS`) or hidden."""
    base = path.rsplit("/", 1)[-1]
    return not base.startswith(("_", ".")) and base.lower().endswith(TABLE_SUFFIXES)


def read_table_bytes(data: bytes, path: str, label: str | None = None) -> pd.DataFrame:
    """One Parquet or CSV object's bytes as a frame (the format from `path`'s suffix); a
    failure names the object (`label`, else `path`)."""
    lower = path.lower()
    try:
        if lower.endswith((".parquet", ".pq")):
            return pd.read_parquet(io.BytesIO(data))
        sep = "\t" if lower.endswith(".tsv") else ","
        compression = "gzip" if lower.endswith(".gz") else None
        return pd.read_csv(
            io.BytesIO(data), sep=sep, compression=compression,
            dtype={"user_id": str, "item_id": str},
        )
    except (ValueError, OSError, pd.errors.ParserError) as exc:
        first = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        raise DataSourceError(f"{label or path}: cannot be read as a table: {first}") from None


def concat_parts(frames: list[pd.DataFrame], where: str) -> pd.DataFrame:
    """Parts of one table (a prefix or DVC directory) as one frame; their columns must agree."""
    columns = {tuple(f.columns) for f in frames}
    if len(columns) > 1:
        shown = "; ".join(", ".join(c) for c in sorted(columns))
        raise DataSourceError(f"{where}: parts have different columns ({shown})")
    return frames[0] if len(frames) == 1 else pd.concat(frames, ignore_index=True)
