"""Shared fixtures: real data and real, freshly trained (small) models."""
from __future__ import annotations

import os
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]


def ml100k_path() -> Path:
    """MovieLens 100K lives beside the repository (`../shared/data/ml-100k`) or at $RECSYS_ML100K."""
    return Path(os.environ.get("RECSYS_ML100K", REPO.parent / "shared" / "data" / "ml-100k"))


@pytest.fixture(scope="session", autouse=True)
def compiled_ranker_cache(tmp_path_factory) -> Path:
    """The compiled rankers of the models tests train go to a directory of the test session
    (servers started by tests inherit it), not to the user's cache."""
    path = tmp_path_factory.mktemp("compiled-ranker")
    os.environ.setdefault("RECSYS_COMPILED_RANKER_CACHE", str(path))
    return Path(os.environ["RECSYS_COMPILED_RANKER_CACHE"])


@pytest.fixture(scope="session")
def ml100k_dir() -> Path:
    path = ml100k_path()
    if not (path / "u.data").exists():
        # The data is not in the repository (its licence forbids redistribution) and cannot be
        # downloaded at test time; the same behaviour is checked on the built-in default data.
        pytest.skip(f"MovieLens 100K not found at {path} (set RECSYS_ML100K)")
    return path


@pytest.fixture(scope="session")
def ml100k_fitted(ml100k_dir, tmp_path_factory):
    """MovieLens 100K and the two-stage model fitted on all of `u.data` (as `recsys fit` does),
    saved as an artifact directory: (dataset, artifact directory). Fitted once per session for
    every benchmark that needs it; each loads the artifact itself (`load_model`), so no two
    modules share a model object."""
    from components.data.ingest import load_dataset
    from components.models.artifact import save_model
    from components.models.two_stage import TwoStageRecommender

    ds = load_dataset(str(ml100k_dir))
    model = TwoStageRecommender().fit(ds.interactions, ds.items, progress=lambda _: None)
    directory = tmp_path_factory.mktemp("ml100k-model") / "artifact"
    return ds, save_model(model, directory, data_fingerprint=ds.fingerprint)


@pytest.fixture(scope="session")
def small_dataset():
    """A synthetic dataset with titles and genres: seconds to train on, real structure."""
    from components.data.ingest import load_dataset

    return load_dataset(
        "synthetic", synthetic_users=300, synthetic_items=200, synthetic_interactions=8_000, seed=7
    )


@pytest.fixture(scope="session")
def small_model_dir(tmp_path_factory, small_dataset) -> Path:
    """A two-stage model trained on `small_dataset` and saved as an artifact directory."""
    from components.models.artifact import save_model
    from components.models.two_stage import TwoStageRecommender

    model = TwoStageRecommender().fit(
        small_dataset.interactions, small_dataset.items, progress=lambda _: None
    )
    return save_model(
        model, tmp_path_factory.mktemp("model") / "artifact", data_fingerprint=small_dataset.fingerprint
    )


@pytest.fixture()
def older_model_dir(tmp_path, small_model_dir) -> Path:
    """`small_model_dir` as a version whose ranker learned on a feature this code no longer
    computes (`item_log_popularity`): consistent checksums, only older."""
    import json
    import shutil

    from components.models.artifact import _sha256

    older = tmp_path / "older-model"
    shutil.copytree(small_model_dir, older)
    ranker = older / "ranker.txt"
    ranker.write_text(ranker.read_text().replace("item_log_share", "item_log_popularity"))
    manifest = json.loads((older / "manifest.json").read_text())
    manifest["files"]["ranker.txt"] = _sha256(ranker)
    (older / "manifest.json").write_text(json.dumps(manifest))
    return older


# -- the machine's PostgreSQL and Redis (shared with others: every test gets its own database or
# key prefix, and drops it) -------------------------------------------------------------------

POSTGRES_ADMIN_URL = os.environ.get(
    "RECSYS_TEST_POSTGRES", "postgresql+psycopg://postgres@127.0.0.1:5432/postgres"
)
REDIS_URL = os.environ.get("RECSYS_TEST_REDIS", "redis://127.0.0.1:6379/0")


def _service_missing(what: str, exc: BaseException) -> None:
    """Skip where the service does not run; under CI (CI=1) it must, so fail instead."""
    message = f"{what} unreachable ({type(exc).__name__}: {str(exc).splitlines()[0][:120]})"
    if os.environ.get("CI"):
        pytest.fail(message + "; CI must run it")
    pytest.skip(message)


@pytest.fixture()
def postgres_url():
    """A fresh PostgreSQL database (dropped afterwards); its SQLAlchemy URL."""
    import uuid

    import sqlalchemy as sa

    admin = sa.create_engine(POSTGRES_ADMIN_URL, isolation_level="AUTOCOMMIT")
    name = f"recsys_test_{uuid.uuid4().hex[:12]}"
    try:
        with admin.connect() as conn:
            conn.exec_driver_sql(f'CREATE DATABASE "{name}"')
    except sa.exc.OperationalError as exc:
        admin.dispose()
        _service_missing(f"PostgreSQL at {POSTGRES_ADMIN_URL}", exc)
    url = sa.engine.make_url(POSTGRES_ADMIN_URL).set(database=name)
    try:
        yield url.render_as_string(hide_password=False)
    finally:
        with admin.connect() as conn:
            conn.exec_driver_sql(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        admin.dispose()


@pytest.fixture(params=["sqlite", "postgresql"])
def store_url(request, tmp_path):
    """The feedback store URL of each back end: a SQLite file, a fresh PostgreSQL database."""
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path / 'feedback.db'}"
    return request.getfixturevalue("postgres_url")


@pytest.fixture()
def redis_prefix():
    """A key prefix no one else uses on the machine's Redis (its keys deleted afterwards);
    yields (redis URL, prefix)."""
    import uuid

    import redis

    client = redis.Redis.from_url(REDIS_URL, socket_timeout=2)
    try:
        client.ping()
    except redis.RedisError as exc:
        _service_missing(f"Redis at {REDIS_URL}", exc)
    prefix = f"recsys-test-{uuid.uuid4().hex[:12]}:"
    try:
        yield REDIS_URL, prefix
    finally:
        keys = list(client.scan_iter(match=prefix + "*", count=1000))
        if keys:
            client.delete(*keys)
        client.close()
