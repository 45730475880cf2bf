"""Remote data sources against real servers: moto's standalone S3 server on a loopback port,
the machine's PostgreSQL (a database of its own per test), and a local git + DVC repository
with a local DVC remote. Each source reads like the local file it stands for, its fingerprint
changes when and only when the data does, and each bad source fails in the fingerprint step
with one line that never carries a secret. Two local pipeline runs (`recsys run` through the
KFP local runner) train on S3 interactions with DVC items and on a SQL events table."""
from __future__ import annotations

import io
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pandas as pd
import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from source_servers import (
    S3_ENV,
    DvcRepo,
    free_port,
    moto_server,
    postgres_database,
    postgres_role,
    psycopg_dsn,
    set_moto_auth,
)

from components.data.ingest import read_raw, source_fingerprint, synthetic_dataset, validate_raw
from components.errors import DataSourceError
from components.steps import fingerprint_source

SECRET = S3_ENV["AWS_SECRET_ACCESS_KEY"]


def _frames():
    inter, items = synthetic_dataset(200, 120, 5000, seed=3)
    return inter, items


def _parquet(frame: pd.DataFrame) -> bytes:
    buffer = io.BytesIO()
    frame.to_parquet(buffer, index=False)
    return buffer.getvalue()


def _one_line_error(call) -> str:
    with pytest.raises(DataSourceError) as caught:
        call()
    message = str(caught.value)
    assert "\n" not in message and SECRET not in message and "hunter2" not in message
    return message


# ---------------------------------------------------------------------------------------- S3


@pytest.fixture(scope="module")
def s3_endpoint():
    with moto_server() as endpoint:
        yield endpoint


@pytest.fixture()
def s3(s3_endpoint, monkeypatch):
    """A boto3 client on the moto server, the environment set as a user would set it."""
    import boto3

    for key, value in {**S3_ENV, "AWS_ENDPOINT_URL": s3_endpoint}.items():
        monkeypatch.setenv(key, value)
    client = boto3.client("s3")
    bucket = f"recsys-{time.monotonic_ns()}"
    client.create_bucket(Bucket=bucket)
    client.bucket = bucket
    return client


def test_s3_object_and_prefix_of_parts_read_as_the_table(s3):
    inter, items = _frames()
    half = len(inter) // 2
    s3.put_object(Bucket=s3.bucket, Key="one/ratings.parquet", Body=_parquet(inter))
    s3.put_object(Bucket=s3.bucket, Key="parts/part-0.parquet", Body=_parquet(inter.iloc[:half]))
    s3.put_object(Bucket=s3.bucket, Key="parts/part-1.csv", Body=inter.iloc[half:].to_csv(index=False))
    s3.put_object(Bucket=s3.bucket, Key="parts/_SUCCESS", Body=b"")  # a Spark marker: skipped
    s3.put_object(Bucket=s3.bucket, Key="items.csv", Body=items.to_csv(index=False))

    single = read_raw(f"s3://{s3.bucket}/one/ratings.parquet", f"s3://{s3.bucket}/items.csv")
    assert single.name == "ratings" and single.origin == f"s3://{s3.bucket}/one/ratings.parquet"
    pd.testing.assert_frame_equal(single.interactions, inter)
    assert len(single.items) == len(items)

    for url in (f"s3://{s3.bucket}/parts/", f"s3://{s3.bucket}/parts"):
        parts = validate_raw(read_raw(url, f"s3://{s3.bucket}/items.csv"))
        local = validate_raw(read_raw("synthetic", synthetic_users=200, synthetic_items=120,
                                      synthetic_interactions=5000, seed=3))
        assert parts.fingerprint == local.fingerprint  # the same data, whatever its container


def test_s3_fingerprint_changes_when_and_only_when_the_bytes_do(s3):
    inter, _ = _frames()
    url = f"s3://{s3.bucket}/data/"
    put = lambda key, frame: s3.put_object(Bucket=s3.bucket, Key=f"data/{key}", Body=_parquet(frame))
    put("a.parquet", inter.iloc[:100])
    put("b.parquet", inter.iloc[100:200])
    first = fingerprint_source(url, "")
    put("a.parquet", inter.iloc[:100])  # the same bytes again: a new upload, the same data
    assert fingerprint_source(url, "") == first
    put("b.parquet", inter.iloc[100:201])
    changed = fingerprint_source(url, "")
    assert changed != first
    put("c.parquet", inter.iloc[300:310])
    assert fingerprint_source(url, "") not in {first, changed}
    s3.delete_object(Bucket=s3.bucket, Key="data/c.parquet")
    put("b.parquet", inter.iloc[100:200])
    assert fingerprint_source(url, "") == first  # back to the first data, back to its print


def test_s3_version_id_pins_an_object_version(s3):
    inter, _ = _frames()
    s3.put_bucket_versioning(Bucket=s3.bucket, VersioningConfiguration={"Status": "Enabled"})
    old = s3.put_object(Bucket=s3.bucket, Key="r.parquet", Body=_parquet(inter.iloc[:50]))
    s3.put_object(Bucket=s3.bucket, Key="r.parquet", Body=_parquet(inter.iloc[:60]))
    pinned = f"s3://{s3.bucket}/r.parquet?versionId={old['VersionId']}"
    assert len(read_raw(pinned).interactions) == 50
    assert len(read_raw(f"s3://{s3.bucket}/r.parquet").interactions) == 60
    assert source_fingerprint(pinned) != source_fingerprint(f"s3://{s3.bucket}/r.parquet")


def test_s3_bad_sources_fail_in_the_fingerprint_step_in_one_line(s3, s3_endpoint, monkeypatch):
    s3.put_object(Bucket=s3.bucket, Key="notes/readme.txt", Body=b"not a table")
    s3.put_object(Bucket=s3.bucket, Key="r.csv", Body=b"user_id,item_id\n1,2\n")
    bucket = s3.bucket
    assert _one_line_error(lambda: fingerprint_source("s3://no-such-bucket-here/r.csv", "")) == (
        "s3://no-such-bucket-here: no such bucket")
    assert _one_line_error(lambda: fingerprint_source(f"s3://{bucket}/missing.csv", "")) == (
        f"s3://{bucket}/missing.csv: no such key")
    assert _one_line_error(lambda: fingerprint_source(f"s3://{bucket}/empty/", "")) == (
        f"s3://{bucket}/empty/: empty prefix: no objects under it")
    assert "no Parquet or CSV objects" in _one_line_error(
        lambda: fingerprint_source(f"s3://{bucket}/notes/", ""))
    assert "unknown scheme ftp://" in _one_line_error(lambda: fingerprint_source("ftp://host/r.csv", ""))
    assert "no such key" in _one_line_error(
        lambda: fingerprint_source(f"s3://{bucket}/r.csv", f"s3://{bucket}/items.csv"))

    # Access denied, with moto checking signatures and IAM policies: an unknown key, a wrong
    # secret, and a known user with no policy. Each names the credential source, not the secret.
    import boto3

    key = boto3.client("iam").create_access_key(UserName=_iam_user())["AccessKey"]
    set_moto_auth(s3_endpoint, True)
    try:
        for key_id, secret, expected in (
            ("AKIAUNKNOWNKEY000000", SECRET, "the access key from the environment"),
            (key["AccessKeyId"], SECRET, "the secret key from the environment"),
            (key["AccessKeyId"], key["SecretAccessKey"],
             "access denied (AccessDenied) for the credentials from the environment"),
        ):
            monkeypatch.setenv("AWS_ACCESS_KEY_ID", key_id)
            monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", secret)
            message = _one_line_error(lambda: fingerprint_source(f"s3://{bucket}/r.csv", ""))
            assert expected in message and key["SecretAccessKey"] not in message, message
    finally:
        set_moto_auth(s3_endpoint, False)

    monkeypatch.setenv("AWS_ENDPOINT_URL", f"http://127.0.0.1:{free_port()}")
    message = _one_line_error(lambda: fingerprint_source(f"s3://{bucket}/r.csv", ""))
    assert "cannot reach the S3 endpoint http://127.0.0.1:" in message and "AWS_ENDPOINT_URL" in message


def _iam_user() -> str:
    import boto3

    name = f"reader-{time.monotonic_ns()}"
    boto3.client("iam").create_user(UserName=name)
    return name


# --------------------------------------------------------------------------------------- SQL


@pytest.fixture()
def pg_url():
    with postgres_database() as url:
        yield url


def _execute(url: str, *statements: str, params=None) -> None:
    import psycopg

    with psycopg.connect(psycopg_dsn(url), autocommit=True) as conn:
        for statement in statements:
            conn.execute(statement, params)


def _load_interactions(url: str, frame: pd.DataFrame, table: str = "interactions") -> None:
    from sqlalchemy import create_engine

    engine = create_engine(url)
    frame.to_sql(table, engine, index=False, if_exists="append")
    engine.dispose()


def test_sql_table_and_query_read_as_the_table(pg_url):
    inter, _ = _frames()
    numeric = inter.assign(user_id=inter["user_id"].str[1:].astype(int))  # integer ids in the db
    _load_interactions(pg_url, numeric)
    raw = read_raw(f"{pg_url}?table=interactions")
    assert raw.name == "interactions" and len(raw.interactions) == len(inter)
    assert raw.interactions["user_id"].map(type).eq(str).all()
    query = "SELECT user_id, item_id, rating, timestamp FROM interactions WHERE rating >= 4"
    high = read_raw(f"{pg_url}?query={query}").interactions
    assert len(high) == int((inter["rating"] >= 4).sum()) and high["rating"].min() >= 4


def test_sql_fingerprint_follows_appends_and_an_explicit_data_version(pg_url):
    inter, _ = _frames()
    _load_interactions(pg_url, inter.iloc[:1000])
    url = f"{pg_url}?table=interactions"
    first = fingerprint_source(url, "")
    assert fingerprint_source(url, "") == first
    _load_interactions(pg_url, inter.iloc[1000:1001])
    assert fingerprint_source(url, "") != first

    _execute(pg_url, "CREATE TABLE snapshot (user_id text, item_id text)")
    no_time = f"{pg_url}?table=snapshot"
    assert "pass --data-version" in _one_line_error(lambda: fingerprint_source(no_time, ""))
    v1 = fingerprint_source(no_time, "", data_version="2026-11-01")
    assert fingerprint_source(no_time, "", data_version="2026-11-01") == v1
    assert fingerprint_source(no_time, "", data_version="2026-11-02") != v1


def test_sql_reads_the_feedback_events_table(pg_url):
    """The feedback store's `events` table (its contract's columns) read back as interactions:
    rated, consumed, clicked and liked items; `value` carries the rating."""
    _execute(pg_url, """CREATE TABLE events (
        event_id text PRIMARY KEY, type text, user_id text, item_id text, "timestamp" float,
        value float, request_id text, model_version text, position int, received_at float)""")
    rows = [("e1", "rating", "u1", "i1", 1.7e9 + 0.25, 4.0), ("e2", "click", "u1", "i2", 1.7e9 + 1.5, None),
            ("e3", "impression", "u2", "i1", 1.7e9 + 2, None), ("e4", "like", "u2", "i3", 1.7e9 + 3.75, None)]
    for row in rows:
        _execute(pg_url, "INSERT INTO events (event_id, type, user_id, item_id, \"timestamp\", value) "
                 "VALUES (%s, %s, %s, %s, %s, %s)", params=row)
    # The store keeps float seconds; the data contract wants whole ones. Clicks and likes have
    # no value: implicit feedback, so no rating column.
    query = ("SELECT user_id, item_id, CAST(timestamp AS BIGINT) AS timestamp FROM events "
             "WHERE type IN ('rating', 'consume', 'click', 'like')")
    raw = read_raw(f"{pg_url}?query={query}")
    assert sorted(raw.interactions["item_id"]) == ["i1", "i2", "i3"]
    assert len(validate_raw(raw).interactions) == 3
    before = fingerprint_source(f"{pg_url}?query={query}", "")
    _execute(pg_url, "INSERT INTO events (event_id, type, user_id, item_id, \"timestamp\") "
             "VALUES ('e5', 'impression', 'u3', 'i9', 1.8e9)")
    assert fingerprint_source(f"{pg_url}?query={query}", "") == before  # not training data
    _execute(pg_url, "INSERT INTO events (event_id, type, user_id, item_id, \"timestamp\") "
             "VALUES ('e6', 'consume', 'u3', 'i9', 1.8e9)")
    assert fingerprint_source(f"{pg_url}?query={query}", "") != before


def test_sql_bad_sources_fail_in_one_line(pg_url, tmp_path):
    _execute(pg_url, 'CREATE TABLE interactions (user_id text, item_id text, "timestamp" bigint)')
    port = free_port()
    unreachable = f"postgresql+psycopg://postgres:hunter2@127.0.0.1:{port}/db?table=t"
    message = _one_line_error(lambda: fingerprint_source(unreachable, ""))
    assert message.startswith("postgresql+psycopg://postgres:***@127.0.0.1:")
    assert f"cannot reach the database server 127.0.0.1:{port}" in message
    no_db = pg_url.rsplit("/", 1)[0] + "/recsys_no_such_db?table=t"
    assert "no such database" in _one_line_error(lambda: fingerprint_source(no_db, ""))
    assert "no such table" in _one_line_error(lambda: fingerprint_source(f"{pg_url}?table=nope", ""))
    assert "?table=NAME or ?query=" in _one_line_error(lambda: fingerprint_source(pg_url, ""))
    with postgres_role() as role:
        as_role = pg_url.replace("postgres@", f"{role}@") + "?table=interactions"
        message = _one_line_error(lambda: fingerprint_source(as_role, ""))
        assert "access denied (permission denied for table interactions)" in message
        assert f"user {role}, password none given" in message
    missing = f"sqlite:///{tmp_path / 'feedback.db'}?table=events"
    assert "no such database file" in _one_line_error(lambda: fingerprint_source(missing, ""))


# --------------------------------------------------------------------------------------- DVC


@pytest.fixture()
def dvc_repo(tmp_path):
    inter, items = _frames()
    repo = DvcRepo(tmp_path)
    (repo.path / "data" / "parts").mkdir(parents=True)
    inter.iloc[:3000].to_parquet(repo.path / "data" / "parts" / "a.parquet", index=False)
    inter.iloc[3000:].to_parquet(repo.path / "data" / "parts" / "b.parquet", index=False)
    items.to_csv(repo.path / "data" / "items.csv", index=False)
    repo.commit("data v1", "data/parts", "data/items.csv", tag="v1")
    repo.drop_cache()
    return repo


def test_dvc_reads_a_revision_from_the_remote_and_prints_its_content_hash(dvc_repo):
    inter, items = _frames()
    url = f"dvc://{dvc_repo.path}//data/parts@v1"
    raw = read_raw(url, f"dvc://{dvc_repo.path}//data/items.csv@v1")
    assert raw.name == "parts" and len(raw.interactions) == len(inter) and len(raw.items) == len(items)
    v1 = fingerprint_source(url, "")

    inter.iloc[:2000].to_parquet(dvc_repo.path / "data" / "parts" / "a.parquet", index=False)
    dvc_repo.commit("data v2", "data/parts", tag="v2")
    (dvc_repo.path / "NOTES.md").write_text("a change that is not data\n")
    dvc_repo.commit("notes", tag="v3")
    dvc_repo.drop_cache()

    assert fingerprint_source(url, "") == v1  # a tag pins the data
    v2 = fingerprint_source(url.replace("@v1", "@v2"), "")
    assert v2 != v1
    assert fingerprint_source(url.replace("@v1", "@v3"), "") == v2  # same data, other commit
    assert len(read_raw(url.replace("@v1", "@v2")).interactions) == len(inter) - 1000
    # Without `//`: the repository is the nearest directory above the path with a .git.
    assert fingerprint_source(f"dvc://{dvc_repo.path}/data/parts@v1", "") == v1


def test_dvc_bad_sources_fail_in_one_line(dvc_repo, tmp_path):
    base = f"dvc://{dvc_repo.path}//data/parts"
    assert "unknown Git revision 'v9'" in _one_line_error(lambda: fingerprint_source(base + "@v9", ""))
    assert "no such file or directory in the repository at v1" in _one_line_error(
        lambda: fingerprint_source(f"dvc://{dvc_repo.path}//data/nope.csv@v1", ""))
    assert "cannot clone the git repository" in _one_line_error(
        lambda: fingerprint_source(f"dvc://{tmp_path / 'nowhere'}//data.csv@v1", ""))
    # Tracked and committed, but its data never reached the remote.
    for entry in dvc_repo.remote.iterdir():
        import shutil

        shutil.rmtree(entry)
    assert "cannot be fetched from the DVC remote" in _one_line_error(lambda: read_raw(base + "@v1"))


# -------------------------------------------------------------------------- pipeline runs


def _recsys(*args: str, home: Path, env: dict) -> subprocess.CompletedProcess:
    full = {**os.environ, "RECSYS_HOME": str(home), **env}
    full.pop("MLFLOW_TRACKING_URI", None)
    return subprocess.run([sys.executable, "-m", "pipelines.cli.main", "run", *args, "--home", str(home)],
                          check=False, capture_output=True, text=True, env=full, timeout=900)


def _training_input(home: Path):
    from mlflow import MlflowClient

    client = MlflowClient(tracking_uri=f"sqlite:///{home / 'mlflow.db'}")
    experiment = client.get_experiment_by_name("recsys")
    (run,) = client.search_runs([experiment.experiment_id])
    (dataset_input,) = run.inputs.dataset_inputs
    return dataset_input


def test_pipeline_runs_on_s3_interactions_with_dvc_items(s3, s3_endpoint, dvc_repo, tmp_path):
    inter, _ = _frames()
    s3.put_object(Bucket=s3.bucket, Key="ratings/part-0.parquet", Body=_parquet(inter))
    env = {**S3_ENV, "AWS_ENDPOINT_URL": s3_endpoint}
    home = tmp_path / "home"
    data, items = f"s3://{s3.bucket}/ratings/", f"dvc://{dvc_repo.path}//data/items.csv@v1"
    result = _recsys("--data", data, "--items", items, home=home, env=env)
    assert result.returncode == 0, result.stderr[-3000:]
    assert "version 1: alias champion" in result.stdout
    dataset_input = _training_input(home)
    assert json.loads(dataset_input.dataset.source) == {"uri": data}
    assert dataset_input.dataset.source_type == "s3"
    env_for_check = {k: os.environ.get(k) for k in env}
    os.environ.update(env)
    try:
        expected = source_fingerprint(data, items)
    finally:
        for key, value in env_for_check.items():
            os.environ.pop(key) if value is None else os.environ.__setitem__(key, value)
    assert dataset_input.dataset.digest == expected
    assert {t.key: t.value for t in dataset_input.tags}["items"] == items

    # A bad source stops the run at the fingerprint step, with its one line.
    failed = _recsys("--data", f"s3://{s3.bucket}/nothing/", home=home, env=env)
    assert failed.returncode == 1
    assert failed.stderr.strip().splitlines()[-1] == (
        f"recsys run: error: s3://{s3.bucket}/nothing/: empty prefix: no objects under it")


def test_pipeline_runs_on_the_sql_events_table(pg_url, tmp_path):
    inter, _ = _frames()
    events = inter.rename(columns={"rating": "value"}).assign(
        event_id=[f"e{i}" for i in range(len(inter))], type="rating",
        timestamp=inter["timestamp"] + 0.25)  # the feedback store's float seconds
    _load_interactions(pg_url, events, table="events")
    query = ("SELECT user_id, item_id, value AS rating, CAST(timestamp AS BIGINT) AS timestamp "
             "FROM events WHERE type = 'rating'")
    home = tmp_path / "home"
    result = _recsys("--data", f"{pg_url}?query={query}", home=home, env={})
    assert result.returncode == 0, result.stderr[-3000:]
    assert "version 1: alias champion" in result.stdout
    dataset_input = _training_input(home)
    assert dataset_input.dataset.name == "query"
    assert json.loads(dataset_input.dataset.source) == {"url": f"{pg_url}?query={query}"}
