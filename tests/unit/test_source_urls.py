"""How source URLs are understood, without any server: which source a URL names, its parts,
and that a password never shows. (The sources against real servers: tests/integration.)"""
from __future__ import annotations

import sqlite3

import pytest

from components.data.sources import is_remote, open_source, redact, stem
from components.data.sources.dvc import DvcSource
from components.data.sources.object_store import S3Source
from components.data.sources.sql import SqlSource
from components.errors import DataSourceError


def test_only_urls_are_remote():
    assert is_remote("s3://b/k") and is_remote("postgresql+psycopg://h/db?table=t")
    assert not is_remote("data/ratings.csv") and not is_remote("movielens-dslabs")
    assert not is_remote("") and not is_remote(None)


def test_s3_urls():
    source = open_source("s3://bucket/ratings/2026/part.parquet?versionId=abc")
    assert isinstance(source, S3Source)
    assert (source.bucket, source.key, source.version_id) == ("bucket", "ratings/2026/part.parquet", "abc")
    assert source.name == "part" and source.url.endswith("?versionId=abc")
    assert open_source("s3://bucket/ratings/").name == "ratings"


def test_sql_query_runs_verbatim_to_the_end_of_the_url():
    query = "SELECT user_id, item_id FROM events WHERE type = 'a&b' AND title LIKE '%+x%'"
    source = open_source(f"postgresql+psycopg://app:s3cret@db:5432/shop?sslmode=require&query={query};")
    assert isinstance(source, SqlSource)
    assert source.query == query and source.table is None
    assert source.engine_url == "postgresql+psycopg://app:s3cret@db:5432/shop?sslmode=require"
    assert "s3cret" not in source.url and "app:***@db" in source.url
    table = open_source("postgresql+psycopg://db/shop?table=analytics.events")
    assert table.table == "analytics.events" and table.name == "events"


def test_sql_needs_exactly_one_of_table_and_query():
    for url in ("postgresql+psycopg://db/shop", "sqlite:///x.db?table=a&query=SELECT 1"):
        with pytest.raises(DataSourceError, match=r"\?table=NAME or \?query="):
            open_source(url)


def test_unknown_schemes_and_missing_drivers_are_one_line():
    with pytest.raises(DataSourceError, match=r"unknown scheme gs://; expected s3://, dvc://"):
        open_source("gs://bucket/ratings.parquet")
    with pytest.raises(DataSourceError, match="unknown scheme nosuchdb://"):
        open_source("nosuchdb://user:pw@host/db?table=t")


def test_dvc_urls():
    remote = DvcSource.from_url("dvc://https://git.example.com/team/data//ratings/r.parquet@v3")
    assert (remote.repo, remote.path, remote.rev) == (
        "https://git.example.com/team/data", "ratings/r.parquet", "v3")
    dotgit = DvcSource.from_url("dvc://git@git.example.com:team/data.git/r.csv@feature/new")
    assert (dotgit.repo, dotgit.path, dotgit.rev) == ("git@git.example.com:team/data.git", "r.csv", "feature/new")
    head = DvcSource.from_url("dvc:///srv/data//r.csv")
    assert (head.repo, head.path, head.rev) == ("/srv/data", "r.csv", None)
    secret = DvcSource.from_url("dvc://https://bot:ghp_token@git.example.com/d.git/r.csv@v1")
    assert "ghp_token" not in secret.url
    with pytest.raises(DataSourceError, match="cannot tell the repository"):
        DvcSource.from_url("dvc:///no/such/dir/r.csv@v1")


def test_local_dvc_repository_is_found_above_the_path(tmp_path):
    (tmp_path / "repo" / ".git").mkdir(parents=True)
    source = DvcSource.from_url(f"dvc://{tmp_path}/repo/data/r.csv@v2")
    assert (source.repo, source.path, source.rev) == (str(tmp_path / "repo"), "data/r.csv", "v2")


def test_redact_and_stem():
    assert redact("https://user:tok@host/x") == "https://user:***@host/x"
    assert redact("s3://bucket/key") == "s3://bucket/key"
    assert stem("s3://b/ratings.csv.gz") == "ratings" and stem("s3://b/parts/") == "parts"


def test_sqlite_source_reads_a_table_and_prints_its_appends(tmp_path):
    """SQLite, the feedback store's local database, through the same code as PostgreSQL."""
    path = tmp_path / "feedback.db"
    with sqlite3.connect(path) as conn:
        conn.execute('CREATE TABLE interactions (user_id INTEGER, item_id TEXT, "timestamp" REAL)')
        conn.executemany("INSERT INTO interactions VALUES (?, ?, ?)", [(1, "a", 1.0), (2, "b", 2.0)])
    source = open_source(f"sqlite:///{path}?table=interactions")
    frame = source.read()
    assert list(frame["user_id"]) == ["1", "2"] and len(frame) == 2
    first = source.fingerprint()
    assert source.fingerprint() == first
    with sqlite3.connect(path) as conn:
        conn.execute("INSERT INTO interactions VALUES (3, 'c', 3.0)")
    assert source.fingerprint() != first
