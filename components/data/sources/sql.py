"""SQL sources through SQLAlchemy: `DIALECT[+DRIVER]://[user@]host/db?table=NAME` or
`...?query=SELECT ...` (PostgreSQL via psycopg, SQLite, anything SQLAlchemy has a driver for).

`query=` must be the last parameter and runs up to the end of the URL exactly as written, so
SQL needs no URL-encoding (`&`, `=`, `%` and `+` are SQL's own). Other parameters stay on the
URL for the driver (`sslmode=require`).

A database says nothing cheap about its bytes, so the fingerprint is the relation's row count
and newest `timestamp`, which follow appends and deletions (the feedback store's events table
only grows). A table whose rows are updated in place, or one without a `timestamp` column,
needs `--data-version` (e.g. the time of the last load): the fingerprint is then that string.

Passwords: put them in `PGPASSWORD` (or ~/.pgpass), not in the URL, which pipeline runs show
as a parameter. Any password in a URL is masked in every message and in MLflow.
"""
from __future__ import annotations

import hashlib
import io
import os
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import parse_qsl, urlencode

import pandas as pd

from components.errors import DataSourceError

TIMESTAMP_COLUMN = "timestamp"
_UNREACHABLE = (
    "connection refused", "could not translate host", "timeout expired", "no route to host",
    "name or service not known", "network is unreachable", "could not connect",
)
_ACCESS = ("password authentication failed", "no pg_hba.conf entry", "authentication failed")


def is_sql_scheme(scheme: str) -> bool:
    """Whether SQLAlchemy has a dialect by this name (`postgresql+psycopg`, `sqlite`, ...)."""
    from sqlalchemy.engine import make_url
    from sqlalchemy.exc import ArgumentError, NoSuchModuleError

    try:
        make_url(f"{scheme}://").get_dialect()
    except (NoSuchModuleError, ArgumentError, ImportError):
        return False
    return True


@dataclass(frozen=True)
class SqlSource:
    engine_url: str  # the URL without our parameters, as SQLAlchemy takes it
    table: str | None
    query: str | None
    data_version: str = ""

    @classmethod
    def from_url(cls, text: str, *, data_version: str = "") -> SqlSource:
        base, _, params = text.partition("?")
        query = None
        at = params.find("query=")
        if at == 0 or (at > 0 and params[at - 1] == "&"):
            params, query = params[:at].rstrip("&"), params[at + len("query="):].strip().rstrip(";")
        pairs = parse_qsl(params, keep_blank_values=True)
        table = next((v for k, v in pairs if k == "table"), None)
        rest = [(k, v) for k, v in pairs if k != "table"]
        engine_url = base + ("?" + urlencode(rest) if rest else "")
        if bool(table) == bool(query):
            raise DataSourceError(
                f"{_masked(engine_url)}: name what to read with ?table=NAME or ?query=SELECT ... "
                "(one of the two)"
            )
        return cls(engine_url, table, query, data_version)

    @property
    def url(self) -> str:
        what = f"table={self.table}" if self.table else f"query={self.query}"
        joiner = "&" if "?" in self.engine_url else "?"
        return f"{_masked(self.engine_url)}{joiner}{what}"

    @property
    def name(self) -> str:
        return (self.table or "query").rsplit(".", 1)[-1]

    def fingerprint(self) -> str:
        engine = self._engine()
        with self._errors(), engine.connect() as conn:
            relation = self._relation(engine)
            columns = list(conn.exec_driver_sql(f"SELECT * FROM {relation} t LIMIT 0").keys())
            what = hashlib.sha256((self.table or self.query or "").encode()).hexdigest()[:16]
            if self.data_version:
                return f"sql:{what}:version={self.data_version}"
            if TIMESTAMP_COLUMN not in columns:
                raise DataSourceError(
                    f"{self.url}: no '{TIMESTAMP_COLUMN}' column to tell new data from old; "
                    "pass --data-version (e.g. the time of the last load)"
                )
            column = engine.dialect.identifier_preparer.quote(TIMESTAMP_COLUMN)
            count, newest = conn.exec_driver_sql(
                f"SELECT count(*), max(t.{column}) FROM {relation} t"
            ).one()
        return f"sql:{what}:rows={count}:newest={newest}"

    def read(self) -> pd.DataFrame:
        engine = self._engine()
        select = f"SELECT * FROM {self._relation(engine)} t"
        with self._errors(), engine.connect() as conn:
            if engine.dialect.name == "postgresql" and engine.dialect.driver == "psycopg":
                frame = _copy_out(conn, select)
            else:
                frame = pd.read_sql_query(select, conn)
        for column in ("user_id", "item_id"):
            if column in frame:  # ids are strings inside, whatever the column type
                frame[column] = frame[column].astype("string").astype(object)
        return frame

    def _relation(self, engine) -> str:
        if self.query:
            return f"({self.query})"
        from sqlalchemy import table

        schema, _, name = (self.table or "").rpartition(".")
        return engine.dialect.identifier_preparer.format_table(table(name, schema=schema or None))

    def _engine(self):
        from sqlalchemy import create_engine
        from sqlalchemy.engine import make_url
        from sqlalchemy.exc import ArgumentError
        from sqlalchemy.pool import NullPool

        try:
            url = make_url(self.engine_url)
        except ArgumentError:
            raise DataSourceError(f"{self.url}: not a database URL") from None
        connect_args = {}
        if url.get_backend_name() == "postgresql":
            connect_args["connect_timeout"] = 10
        on_disk = url.get_backend_name() == "sqlite" and url.database not in (None, "", ":memory:")
        if on_disk and not Path(url.database).is_file():  # SQLite would create an empty one
            raise DataSourceError(f"{self.url}: no such database file {url.database}")
        try:
            return create_engine(url, poolclass=NullPool, connect_args=connect_args)
        except ImportError as exc:
            raise DataSourceError(f"{self.url}: the database driver is not installed ({exc})") from None

    def _errors(self) -> _SqlErrors:
        return _SqlErrors(self)


def _copy_out(conn, select: str) -> pd.DataFrame:
    """PostgreSQL's COPY ... TO STDOUT as CSV, parsed by pandas: 1M rows in 4.1 s where
    fetching them as Python rows took 9.8 s (tests/benchmarks/bench_sources.py, two runs)."""
    buffer = io.BytesIO()
    command = f"COPY ({select}) TO STDOUT (FORMAT CSV, HEADER)"
    with conn.connection.driver_connection.cursor() as cursor, cursor.copy(command) as copy:
        for block in copy:
            buffer.write(block)
    buffer.seek(0)
    return pd.read_csv(buffer, dtype={"user_id": str, "item_id": str})


class _SqlErrors:
    """Database errors as one line: unreachable server, access denied (naming where the
    password came from, never the password), no such database, table or column."""

    def __init__(self, source: SqlSource):
        self.source = source

    def __enter__(self) -> None:
        return None

    def __exit__(self, kind, exc, tb) -> bool:
        from sqlalchemy.exc import DBAPIError

        if exc is None or isinstance(exc, DataSourceError):
            return False
        orig = exc.orig if isinstance(exc, DBAPIError) else exc
        if not (isinstance(exc, DBAPIError) or _is_driver_error(exc)):
            return False
        where = self.source.url
        text = str(orig).strip()
        lower = text.lower()
        state = getattr(orig, "sqlstate", None)
        reason = _reason(text)
        if state == "3D000" or "database" in lower and "does not exist" in lower:
            raise DataSourceError(f"{where}: no such database ({reason})") from None
        if state == "42P01" or "no such table" in lower:
            raise DataSourceError(f"{where}: no such table ({reason})") from None
        denied = state == "42501" or "permission denied" in lower or any(m in lower for m in _ACCESS)
        if denied or ('role "' in lower and "does not exist" in lower):
            raise DataSourceError(
                f"{where}: access denied ({reason}); user {_user(self.source)}, password "
                f"{_password_source(self.source)}"
            ) from None
        if any(marker in lower for marker in _UNREACHABLE):
            raise DataSourceError(
                f"{where}: cannot reach the database server {_server(self.source)} ({reason})"
            ) from None
        raise DataSourceError(f"{where}: {reason}") from None


def _is_driver_error(exc: BaseException) -> bool:
    """An error from psycopg itself (COPY runs on the driver's connection, below SQLAlchemy)."""
    try:
        import psycopg
    except ImportError:
        return False
    return isinstance(exc, psycopg.Error)


def _reason(text: str) -> str:
    """The driver's own words, without libpq's `connection to server at ... failed: FATAL:`."""
    line = next((line.strip() for line in text.splitlines() if line.strip()), "database error")
    return line.rsplit("failed: ", 1)[-1].removeprefix("FATAL:").strip()


def _server(source: SqlSource) -> str:
    from sqlalchemy.engine import make_url

    url = make_url(source.engine_url)
    return f"{url.host or 'localhost'}:{url.port or 'default port'}"


def _masked(url: str) -> str:
    from sqlalchemy.engine import make_url
    from sqlalchemy.exc import ArgumentError

    try:
        return make_url(url).render_as_string(hide_password=True)
    except ArgumentError:
        from components.data.sources import redact

        return redact(url)


def _user(source: SqlSource) -> str:
    from sqlalchemy.engine import make_url

    return make_url(source.engine_url).username or os.environ.get("PGUSER") or "the OS user"


def _password_source(source: SqlSource) -> str:
    from sqlalchemy.engine import make_url

    if make_url(source.engine_url).password:
        return "from the URL"
    if os.environ.get("PGPASSWORD"):
        return "from PGPASSWORD"
    passfile = Path(os.environ.get("PGPASSFILE", Path.home() / ".pgpass"))
    if passfile.is_file():
        return f"from the password file {passfile}"
    return "none given (URL, PGPASSWORD, ~/.pgpass)"
