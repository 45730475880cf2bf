"""The feedback store: what users did with the recommendations, and what they were shown.

One module for both back ends, through SQLAlchemy Core: SQLite (`sqlite:///<home>/feedback.db`,
the default under the run home, in WAL mode so readers never wait for the writer) and
PostgreSQL (`postgresql+psycopg://...`, on a cluster). It lives in `components` because training
reads it back as a data source (`interactions`) and components may not import serving.

Tables (created when absent):

- `events`: one row per accepted feedback event (`components.feedback.feedback_events` has the
  contract). `event_id` is the primary key and the client's idempotency key: a retried event
  is stored once and reported as a duplicate. On PostgreSQL each row also records the id of
  the transaction that wrote it (`commit_xid`, filled by the database), which gives readers a
  commit order (`positive_rows_since`).
- `impressions`: one row per item shown in a recommendation answer (from the predictor
  locally, from KServe's payload logger on a cluster); primary key
  (request_id, user_id, position), so a re-delivered answer is stored once.

Every write is one transaction: `add_events` stores all of a batch or none of it, and once it
returns the rows are committed (on SQLite with `synchronous=FULL`: a crash of the process, or
of the machine, right after loses nothing). Duplicates are found by the database itself
(`INSERT ... ON CONFLICT DO NOTHING RETURNING event_id`), so two writers racing on one event_id
store it once.
"""
from __future__ import annotations

import json
import logging
import time
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any, Self

import numpy as np
import pandas as pd
import sqlalchemy as sa
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.engine import Engine, make_url
from sqlalchemy.exc import ArgumentError, DBAPIError, NoSuchModuleError

from components.errors import ConfigError
from components.feedback.feedback_events import (
    EVENT_COLUMNS,
    POSITIVE_TYPES,
    InvalidEvent,
    normalize_event,
)

log = logging.getLogger(__name__)

IMPRESSION_COLUMNS = (
    "request_id", "user_id", "item_id", "position", "model_version", "source_version", "variant",
    "timestamp",
)
INTERACTION_COLUMNS = ("user_id", "item_id", "rating", "timestamp")
STORE_FILE = "feedback.db"
_SQLITE_BUSY_SECONDS = 30
# PostgreSQL: the transaction that wrote each event row (see `positive_rows_since`), and the
# oldest transaction still running, below which every transaction has finished.
_COMMIT_XID = sa.literal_column("events.commit_xid", sa.BigInteger)
_PG_HORIZON = "SELECT pg_snapshot_xmin(pg_current_snapshot())::text::bigint"
_PG_COMMIT_XID_DDL = (
    ("ALTER TABLE events ADD COLUMN IF NOT EXISTS commit_xid bigint NOT NULL "
     "DEFAULT (pg_current_xact_id()::text::bigint)"),
    "CREATE INDEX IF NOT EXISTS ix_events_commit ON events (commit_xid, event_id)",
)
# A position in commit order: the rowid on SQLite, (commit_xid, event_id) on PostgreSQL.
Cursor = int | tuple[int, str]

metadata = sa.MetaData()
events_table = sa.Table(
    "events", metadata,
    sa.Column("event_id", sa.String(256), primary_key=True),
    sa.Column("type", sa.String(16), nullable=False),
    sa.Column("user_id", sa.String(256), nullable=False),
    sa.Column("item_id", sa.String(256), nullable=False),
    sa.Column("timestamp", sa.Float, nullable=False),
    sa.Column("value", sa.Float),
    sa.Column("request_id", sa.String(256)),
    sa.Column("model_version", sa.String(256)),
    sa.Column("position", sa.Integer),
    sa.Column("received_at", sa.Float, nullable=False),
    # The online history reads one user's newest events; analysis reads windows of time.
    sa.Index("ix_events_user_time", "user_id", "timestamp"),
    sa.Index("ix_events_time", "timestamp"),
    sa.Index("ix_events_request", "request_id"),
)
# Rows per multi-row INSERT of impressions on SQLite (8 columns: 800 variables, under the
# 999 of SQLite builds before 3.32).
_SQLITE_ROWS = 100

impressions_table = sa.Table(
    "impressions", metadata,
    sa.Column("request_id", sa.String(256), primary_key=True),
    sa.Column("user_id", sa.String(256), primary_key=True),
    sa.Column("position", sa.Integer, primary_key=True),
    sa.Column("item_id", sa.String(256), nullable=False),
    sa.Column("model_version", sa.String(256), nullable=False),
    sa.Column("source_version", sa.String(256), nullable=False),
    sa.Column("variant", sa.String(64)),
    sa.Column("timestamp", sa.Float, nullable=False),
    sa.Index("ix_impressions_time", "timestamp"),
)


def default_store_url(home: Path) -> str:
    """The run home's store: the one `recsys events serve` and `recsys serve` share locally."""
    return f"sqlite:///{Path(home).resolve() / STORE_FILE}"


def display_url(url: str) -> str:
    """The URL with its password masked, for messages and logs."""
    try:
        return make_url(url).render_as_string(hide_password=True)
    except ArgumentError:
        return "<unparsable store URL>"


def _sqlite_pragmas(dbapi_connection: Any, _record: Any) -> None:
    cursor = dbapi_connection.cursor()
    # WAL: readers (the predictor, the analysis) never block the writer. FULL: a commit is on
    # disk before the service answers 2xx, even if the machine loses power.
    cursor.execute("PRAGMA journal_mode=WAL")
    cursor.execute("PRAGMA synchronous=FULL")
    cursor.execute(f"PRAGMA busy_timeout={_SQLITE_BUSY_SECONDS * 1000}")
    cursor.close()


def create_store_engine(url: str, *, pool_size: int = 8) -> Engine:
    """An engine for a store URL; `ConfigError` for a URL no back end here can open."""
    try:
        parsed = make_url(url)
    except ArgumentError:
        raise ConfigError(f"feedback store URL {url!r} is not a database URL "
                          "(sqlite:///FILE or postgresql+psycopg://USER@HOST/DB)") from None
    backend = parsed.get_backend_name()
    if backend not in ("sqlite", "postgresql"):
        raise ConfigError(f"feedback store {display_url(url)}: only sqlite and postgresql are "
                          "supported")
    try:
        if backend == "sqlite":
            if parsed.database in (None, "", ":memory:"):
                raise ConfigError("feedback store: an in-memory SQLite database would be lost "
                                  "on exit and invisible to other processes; give a file")
            Path(parsed.database).parent.mkdir(parents=True, exist_ok=True)
            engine = sa.create_engine(parsed, connect_args={"timeout": _SQLITE_BUSY_SECONDS},
                                      pool_size=pool_size, max_overflow=2 * pool_size)
            sa.event.listen(engine, "connect", _sqlite_pragmas)
        else:
            engine = sa.create_engine(parsed, pool_size=pool_size, max_overflow=2 * pool_size,
                                      pool_pre_ping=True)
    except (NoSuchModuleError, ImportError) as exc:
        raise ConfigError(f"feedback store {display_url(url)}: no driver ({exc})") from None
    return engine


class FeedbackStore:
    """Feedback events and impressions in one database (see the module docstring)."""

    def __init__(self, url: str, *, create: bool = True, pool_size: int = 8):
        self.url = url
        self.engine = create_store_engine(url, pool_size=pool_size)
        self._insert = (sqlite.insert if self.engine.dialect.name == "sqlite"
                        else postgresql.insert)
        self._tail_statements: dict[tuple[bool, bool, bool], sa.Select] = {}
        if create:
            self.create_tables()

    def __repr__(self) -> str:
        return f"FeedbackStore({display_url(self.url)!r})"

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *_exc: object) -> None:
        self.close()

    def close(self) -> None:
        self.engine.dispose()

    def create_tables(self) -> None:
        """Create the tables and indexes that are missing; `ConfigError` if the database cannot
        be reached."""
        for attempt in range(3):
            try:
                metadata.create_all(self.engine)
                if self.engine.dialect.name == "postgresql":
                    self._add_commit_xid()
                return
            except DBAPIError as exc:
                # Two processes creating the tables at once: the loser's CREATE fails because
                # the winner's now exists; looking again finds them.
                if exc.connection_invalidated or attempt == 2 or not _already_exists(exc):
                    raise ConfigError(f"feedback store {display_url(self.url)}: cannot open "
                                      f"({_first_line(exc)})") from None
                time.sleep(0.05 * (attempt + 1))

    def _add_commit_xid(self) -> None:
        """The column and index that give PostgreSQL rows a commit order (stores created
        before them get them here; the rows already there share the ALTER's transaction id).
        Looked up first: ALTER TABLE takes an exclusive lock even when it has nothing to do."""
        with self.engine.connect() as conn:
            present = conn.exec_driver_sql(
                "SELECT count(*) FROM pg_indexes WHERE schemaname = current_schema() "
                "AND tablename = 'events' AND indexname = 'ix_events_commit'").scalar_one()
        if present:
            return
        with self.engine.begin() as conn:
            for statement in _PG_COMMIT_XID_DDL:
                conn.exec_driver_sql(statement)

    # -- writing ---------------------------------------------------------------------------

    def add_events(self, events: Iterable[Mapping[str, Any]]) -> tuple[int, list[str]]:
        """Store a batch of events in one transaction; returns (number newly stored, the
        event_ids already stored, in batch order). An invalid event raises
        `components.feedback.feedback_events.InvalidEvent` (placed by its batch index) and stores
        nothing."""
        received_at = time.time()
        rows: list[dict[str, Any]] = []
        for index, event in enumerate(events):
            try:
                rows.append(normalize_event(_event_fields(event), received_at))
            except InvalidEvent as exc:
                raise exc.at(index) from None
        return self.add_normalized_batches([rows])[0]

    def add_normalized_batches(
        self, batches: Sequence[Sequence[Mapping[str, Any]]]
    ) -> list[tuple[int, list[str]]]:
        """Store several batches of events that already passed `normalize_event` in ONE
        transaction (a group commit: the events service gathers concurrent requests into one);
        returns `add_events`' answer for each batch. An event_id repeated across batches is
        stored for the first batch that has it and is a duplicate for the later ones."""
        first: dict[str, Mapping[str, Any]] = {}
        for batch in batches:
            for row in batch:
                first.setdefault(row["event_id"], row)
        if not first:
            return [(0, []) for _ in batches]
        # Rows in key order: PostgreSQL writers that insert overlapping batches in different
        # orders would otherwise wait on each other's rows (a deadlock).
        unique = [first[key] for key in sorted(first)]
        statement = (self._insert(events_table).on_conflict_do_nothing(
            index_elements=["event_id"]).returning(events_table.c.event_id))
        with self.engine.begin() as conn:
            inserted = set(conn.execute(statement, unique).scalars())
        answers, claimed = [], set()
        for batch in batches:
            accepted, duplicates = 0, []
            for row in batch:
                event_id = row["event_id"]
                if event_id in inserted and event_id not in claimed:
                    accepted += 1
                    claimed.add(event_id)
                else:
                    duplicates.append(event_id)
            answers.append((accepted, duplicates))
        return answers

    def add_impressions(self, rows: Iterable[Mapping[str, Any]]) -> int:
        """Store shown items (see IMPRESSION_COLUMNS; `source_version` defaults to
        `model_version`, `timestamp` to now); returns how many were new."""
        now = time.time()
        return self.add_impression_tuples([
            (str(row["request_id"]), str(row["user_id"]), str(row["item_id"]),
             int(row["position"]), str(row["model_version"]),
             str(row.get("source_version") or row["model_version"]), row.get("variant"),
             float(row.get("timestamp") or now)) for row in rows])

    def add_impression_tuples(self, rows: Sequence[tuple]) -> int:
        """`add_impressions` for rows already typed, as tuples in IMPRESSION_COLUMNS order: the
        predictor's writer stores ten of them per answer, so this skips SQLAlchemy's per-row
        statement building and hands the driver one executemany (about 10x cheaper)."""
        if not rows:
            return 0
        if self.engine.dialect.name == "sqlite":
            return self._add_impressions_sqlite(rows)
        # Key order, as for events: PostgreSQL writers cannot deadlock on overlapping batches.
        ordered = sorted(rows, key=lambda r: (r[0], r[1], r[3]))
        with self.engine.begin() as conn:
            return max(conn.exec_driver_sql(self._impression_sql, ordered).rowcount, 0)

    def _add_impressions_sqlite(self, rows: Sequence[tuple]) -> int:
        """SQLite: multi-row INSERTs of _SQLITE_ROWS rows each, in one transaction (writers
        are serialised there, so no key order). An executemany releases and retakes the GIL
        around every row; in the predictor's process that is two hand-offs with the event
        loop per shown item, and this is two per statement."""
        width = len(IMPRESSION_COLUMNS)
        head = self._impression_sql.split(" VALUES ")[0]
        one = "(" + ", ".join(["?"] * width) + ")"
        written = 0
        with self.engine.begin() as conn:
            for start in range(0, len(rows), _SQLITE_ROWS):
                part = rows[start:start + _SQLITE_ROWS]
                sql = f"{head} VALUES {', '.join([one] * len(part))} ON CONFLICT DO NOTHING"
                flat = tuple(value for row in part for value in row)
                written += max(conn.exec_driver_sql(sql, flat).rowcount, 0)
        return written

    @property
    def _impression_sql(self) -> str:
        mark = "?" if self.engine.dialect.paramstyle == "qmark" else "%s"
        return (f"INSERT INTO impressions ({', '.join(IMPRESSION_COLUMNS)}) VALUES "
                f"({', '.join([mark] * len(IMPRESSION_COLUMNS))}) ON CONFLICT DO NOTHING")

    # -- reading ---------------------------------------------------------------------------

    def read_events(self, since: float | None = None, until: float | None = None,
                    types: Sequence[str] | None = None) -> pd.DataFrame:
        """Events with since <= timestamp < until (either bound optional), oldest first."""
        table = events_table
        query = sa.select(*table.c).order_by(table.c.timestamp, table.c.event_id)
        query = _window(query, table.c.timestamp, since, until)
        if types is not None:
            query = query.where(table.c.type.in_(list(types)))
        frame = self._frame(query, EVENT_COLUMNS)
        frame["position"] = frame["position"].astype("Int64")
        frame["value"] = frame["value"].astype(float)
        return frame

    def read_impressions(self, since: float | None = None,
                         until: float | None = None) -> pd.DataFrame:
        """Impressions with since <= timestamp < until, by time, request, user, position."""
        table = impressions_table
        query = sa.select(*(table.c[c] for c in IMPRESSION_COLUMNS)).order_by(
            table.c.timestamp, table.c.request_id, table.c.user_id, table.c.position)
        frame = self._frame(_window(query, table.c.timestamp, since, until), IMPRESSION_COLUMNS)
        frame["position"] = frame["position"].astype("int64")
        return frame

    def recent_items(self, user_id: str, limit: int = 50, *,
                     since: float | None = None) -> list[str]:
        """The user's consumed/clicked/liked/rated items, newest first, each once."""
        table = events_table
        newest = sa.func.max(table.c.timestamp)
        query = (sa.select(table.c.item_id).where(table.c.user_id == str(user_id))
                 .where(table.c.type.in_(POSITIVE_TYPES))
                 .group_by(table.c.item_id).order_by(newest.desc(), table.c.item_id)
                 .limit(int(limit)))
        if since is not None:
            query = query.where(table.c.timestamp >= since)
        with self.engine.connect() as conn:
            return list(conn.execute(query).scalars())

    def positive_rows_since(self, cursor: Cursor | None = None, *,
                            since_timestamp: float | None = None,
                            received_since: float | None = None,
                            limit: int = 10_000) -> tuple[list[tuple[str, str, float]],
                                                          Cursor | None]:
        """Positive events committed after `cursor` (None: from the start), in commit order,
        at most `limit`: `(user_id, item_id, timestamp)` tuples and the cursor to pass next
        time (the same one when nothing is new). What a cache of recent history tails and what
        the Redis history follows, after every commit: so plain tuples from a statement built
        once per store (`_tail_statement`), not a frame. `since_timestamp` keeps events at or
        after that event time, `received_since` those received at or after that time.

        Nothing committed later can land behind the cursor, however long its transaction took.
        On SQLite the cursor is the rowid: writers are serialised, so rowids grow in commit
        order. PostgreSQL writers are not, so there each row carries the id of the transaction
        that wrote it (`commit_xid`) and the cursor is (commit_xid, event_id); a read returns
        only rows of transactions older than the oldest one still running (the snapshot's
        xmin), all of which have finished. A transaction left open delays what comes after
        it; it never makes it skipped."""
        sqlite_store = self.engine.dialect.name == "sqlite"
        params: dict[str, Any] = {"limit": int(limit)}
        if since_timestamp is not None:
            params["since"] = float(since_timestamp)
        if received_since is not None:
            params["received"] = float(received_since)
        with self.engine.connect() as conn:
            if sqlite_store:
                if cursor is not None:
                    params["rowid"] = int(cursor)
            else:
                # First the horizon, then the read: every transaction below the horizon had
                # finished before the read's snapshot was taken, so all its rows are visible.
                params["horizon"] = int(conn.exec_driver_sql(_PG_HORIZON).scalar_one())
                if cursor is not None:
                    params["xid"], params["event_id"] = int(cursor[0]), str(cursor[1])
            statement = self._tail_statement(cursor is not None, since_timestamp is not None,
                                             received_since is not None)
            rows = conn.execute(statement, params).all()
        out = [(str(r[0]), str(r[1]), float(r[2])) for r in rows]
        if not rows:
            return out, cursor
        last = rows[-1]
        return out, (int(last[3]) if sqlite_store else (int(last[3]), str(last[4])))

    def _tail_statement(self, after: bool, since: bool, received: bool) -> sa.Select:
        """`positive_rows_since`'s query with bound parameters, built once per shape: building
        a select and its cache key costs more than running it on a small tail."""
        key = (after, since, received)
        if key in self._tail_statements:
            return self._tail_statements[key]
        table = events_table
        if self.engine.dialect.name == "sqlite":
            rowid = sa.literal_column("rowid")
            query = sa.select(table.c.user_id, table.c.item_id, table.c.timestamp,
                              rowid.label("position")).order_by(rowid)
            if after:
                query = query.where(rowid > sa.bindparam("rowid", type_=sa.Integer))
        else:
            query = (sa.select(table.c.user_id, table.c.item_id, table.c.timestamp,
                               _COMMIT_XID.label("position"), table.c.event_id)
                     .where(_COMMIT_XID < sa.bindparam("horizon", type_=sa.BigInteger))
                     .order_by(_COMMIT_XID, table.c.event_id))
            if after:
                query = query.where(
                    sa.tuple_(_COMMIT_XID, table.c.event_id)
                    > sa.tuple_(sa.bindparam("xid", type_=sa.BigInteger),
                                sa.bindparam("event_id", type_=sa.String)))
        query = query.where(table.c.type.in_(POSITIVE_TYPES))
        if since:
            query = query.where(table.c.timestamp >= sa.bindparam("since", type_=sa.Float))
        if received:
            query = query.where(table.c.received_at >= sa.bindparam("received", type_=sa.Float))
        self._tail_statements[key] = query.limit(sa.bindparam("limit", type_=sa.Integer))
        return self._tail_statements[key]

    def positive_backlog(self, cursor: Cursor | None, *,
                         received_since: float | None = None) -> tuple[int, float | None]:
        """How far a reader at `cursor` is behind: the positive events committed after it
        (those `positive_rows_since` has yet to return, including any a running transaction
        still holds back) and the oldest one's `received_at` (None when there are none)."""
        table = events_table
        query = sa.select(sa.func.count(), sa.func.min(table.c.received_at)).where(
            table.c.type.in_(POSITIVE_TYPES))
        if cursor is not None:
            if self.engine.dialect.name == "sqlite":
                query = query.where(sa.literal_column("rowid") > int(cursor))
            else:
                xid, event_id = cursor
                query = query.where(sa.tuple_(_COMMIT_XID, table.c.event_id)
                                    > sa.tuple_(sa.literal(int(xid)), sa.literal(event_id)))
        query = _received(query, None, received_since)
        with self.engine.connect() as conn:
            count, oldest = conn.execute(query).one()
        return int(count), (None if oldest is None else float(oldest))

    def cursor_is_ahead(self, cursor: Cursor) -> bool:
        """Whether `cursor` lies past anything this store has written (it belongs to another
        database: a replaced SQLite file, a restored PostgreSQL)."""
        with self.engine.connect() as conn:
            if self.engine.dialect.name == "sqlite":
                top = conn.exec_driver_sql("SELECT max(rowid) FROM events").scalar_one()
                return int(cursor) > int(top or 0)
            following = conn.exec_driver_sql(
                "SELECT pg_snapshot_xmax(pg_current_snapshot())::text::bigint").scalar_one()
            return int(cursor[0]) >= int(following)

    def dump_cursor(self, cursor: Cursor | None) -> str:
        """A cursor as text, to keep it elsewhere (`load_cursor` reads it back)."""
        if cursor is None:
            return ""
        if self.engine.dialect.name == "sqlite":
            return json.dumps({"sqlite_rowid": int(cursor)})
        return json.dumps({"postgresql_xid": [int(cursor[0]), str(cursor[1])]})

    def load_cursor(self, text: str | None) -> Cursor | None:
        """The cursor `dump_cursor` wrote; None for none, or one of another kind of store."""
        if not text:
            return None
        try:
            data = json.loads(text)
        except ValueError:
            return None
        if not isinstance(data, dict):
            return None
        if self.engine.dialect.name == "sqlite":
            value = data.get("sqlite_rowid")
            return int(value) if isinstance(value, int) else None
        value = data.get("postgresql_xid")
        if (isinstance(value, list) and len(value) == 2 and isinstance(value[0], int)
                and isinstance(value[1], str)):
            return int(value[0]), value[1]
        return None

    def interactions(self, since: float | None = None, *,
                     implicit_rating: float | None = None) -> pd.DataFrame:
        """Positive feedback as training interactions: `user_id, item_id, rating, timestamp`,
        one row per (user, item) with its latest event (whole seconds, as the data contract
        has them). `rating` is the pair's latest rating; a pair with only consume/click/like
        events gets `implicit_rating` (NaN when None: give a value on the source's rating
        scale where every row must be rated)."""
        events = self.read_events(since=since, types=POSITIVE_TYPES)
        if events.empty:
            return pd.DataFrame({"user_id": pd.Series(dtype=str), "item_id": pd.Series(dtype=str),
                                 "rating": pd.Series(dtype=float),
                                 "timestamp": pd.Series(dtype="int64")})
        pairs = events.groupby(["user_id", "item_id"], sort=False)
        out = pairs["timestamp"].max().reset_index()
        ratings = events[events.type == "rating"].groupby(["user_id", "item_id"])["value"].last()
        out = out.merge(ratings.rename("rating").reset_index(), on=["user_id", "item_id"],
                        how="left")
        fill = np.nan if implicit_rating is None else float(implicit_rating)
        out["rating"] = out["rating"].fillna(fill).astype(float)
        out["timestamp"] = np.floor(out["timestamp"]).astype("int64")
        out = out.sort_values(["timestamp", "user_id", "item_id"], kind="stable")
        return out[list(INTERACTION_COLUMNS)].reset_index(drop=True)

    def _frame(self, query: sa.Select, columns: Sequence[str]) -> pd.DataFrame:
        with self.engine.connect() as conn:
            rows = conn.execute(query).all()
        frame = pd.DataFrame.from_records(rows, columns=list(columns))
        for column in columns:
            if column in ("timestamp", "received_at"):
                frame[column] = frame[column].astype(float)
        return frame


def open_store(url: str, **kwargs: Any) -> FeedbackStore:
    return FeedbackStore(url, **kwargs)


def _event_fields(event: Mapping[str, Any]) -> dict[str, Any]:
    """An event as a client would send it: a stored row (with `received_at`, None for absent
    optional fields) is accepted too, so events can be copied from one store to another."""
    return {k: v for k, v in event.items() if k != "received_at"}


def _window(query: sa.Select, column: sa.Column, since: float | None,
            until: float | None) -> sa.Select:
    if since is not None:
        query = query.where(column >= float(since))
    if until is not None:
        query = query.where(column < float(until))
    return query


def _received(query: sa.Select, since_timestamp: float | None,
              received_since: float | None) -> sa.Select:
    if since_timestamp is not None:
        query = query.where(events_table.c.timestamp >= float(since_timestamp))
    if received_since is not None:
        query = query.where(events_table.c.received_at >= float(received_since))
    return query


def _already_exists(exc: DBAPIError) -> bool:
    text = str(exc.orig).lower()
    return "already exists" in text or "duplicate key" in text


def _first_line(exc: BaseException) -> str:
    return (str(getattr(exc, "orig", None) or exc).strip().splitlines() or [""])[0]
