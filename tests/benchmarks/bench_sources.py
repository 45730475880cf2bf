"""What each data source costs (`make bench`): the time to fingerprint it (what the pipeline's
uncached first step does on every run) and to read 1M interactions (the ingest step), against
a local Parquet file measured in the same run.

Servers as in tests/integration/test_sources.py: moto's S3 server on a loopback port (an
in-memory S3 in Python, slower than MinIO or S3 per byte, so its read figures are an upper
bound), the machine's PostgreSQL, a local git + DVC repository with a local DVC remote.
"""
from __future__ import annotations

import io
import os
import statistics
import sys
import time
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from source_servers import (
    S3_ENV,
    DvcRepo,
    moto_server,
    postgres_available,
    postgres_database,
    psycopg_dsn,
)

from components.data.ingest import read_raw, source_fingerprint, synthetic_dataset

pytestmark = pytest.mark.bench

ROWS = 1_000_000
PARTS = 8


def _timed(call, repeat: int) -> float:
    """The median of `repeat` timed calls, in seconds (after one untimed warm-up call)."""
    call()
    times = []
    for _ in range(repeat):
        started = time.perf_counter()
        call()
        times.append(time.perf_counter() - started)
    return statistics.median(times)


def _measure(url: str) -> tuple[float, float]:
    fingerprint = _timed(lambda: source_fingerprint(url), repeat=5)
    read = _timed(lambda: read_raw(url), repeat=2)
    rows = len(read_raw(url).interactions)
    assert rows == ROWS, (url, rows)
    return fingerprint, read


def _parquet(frame) -> bytes:
    buffer = io.BytesIO()
    frame.to_parquet(buffer, index=False)
    return buffer.getvalue()


def test_cost_of_each_source_on_1m_interactions(tmp_path, monkeypatch):
    inter, _ = synthetic_dataset(10_000, 4_000, ROWS, seed=1)
    local = tmp_path / "ratings.parquet"
    inter.to_parquet(local, index=False)
    results: dict[str, tuple[float, float]] = {"local Parquet file": _measure(str(local))}

    with moto_server() as endpoint:
        import boto3

        for key, value in {**S3_ENV, "AWS_ENDPOINT_URL": endpoint}.items():
            monkeypatch.setenv(key, value)
        s3 = boto3.client("s3")
        s3.create_bucket(Bucket="bench")
        s3.put_object(Bucket="bench", Key="one/ratings.parquet", Body=local.read_bytes())
        step = ROWS // PARTS
        for i in range(PARTS):
            s3.put_object(Bucket="bench", Key=f"parts/part-{i}.parquet",
                          Body=_parquet(inter.iloc[i * step:(i + 1) * step]))
        results["S3 (moto), one object"] = _measure("s3://bench/one/ratings.parquet")
        results[f"S3 (moto), prefix of {PARTS} parts"] = _measure("s3://bench/parts/")

    if postgres_available():
        with postgres_database() as url:
            import psycopg

            with psycopg.connect(psycopg_dsn(url), autocommit=True) as conn:
                conn.execute('CREATE TABLE interactions (user_id text, item_id text, rating float, '
                             '"timestamp" bigint)')
                with conn.cursor().copy("COPY interactions FROM STDIN (FORMAT CSV)") as copy:
                    copy.write(inter.to_csv(index=False, header=False))
            results["PostgreSQL table"] = _measure(f"{url}?table=interactions")
    elif os.environ.get("CI"):
        pytest.fail("PostgreSQL not reachable (CI=1: the service must be running)")

    repo = DvcRepo(tmp_path / "dvc")
    (repo.path / "data").mkdir()
    inter.to_parquet(repo.path / "data" / "ratings.parquet", index=False)
    repo.commit("data", "data/ratings.parquet", tag="v1")
    repo.drop_cache()  # every read below comes from the DVC remote
    results["DVC file (local remote)"] = _measure(f"dvc://{repo.path}//data/ratings.parquet@v1")

    base_fp, base_read = results["local Parquet file"]
    print()
    print(f"{ROWS:,} interactions ({local.stat().st_size / 1e6:.1f} MB as Parquet); median seconds")
    print(f"{'source':34} {'fingerprint':>11} {'ratio':>7} {'read':>7} {'ratio':>7}")
    for name, (fp, read) in results.items():
        print(f"{name:34} {fp:11.3f} {fp / base_fp:6.1f}x {read:7.2f} {read / base_read:6.1f}x")
