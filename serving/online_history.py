"""Real-time user history: what a user did since training, in the next answer.

The events service records feedback; the predictor must see a user's newest consumed, clicked,
liked and rated items on the next request, add them to the history that scores the user and
never recommend them again. Two online stores hold that history:

- Locally, the feedback store itself (the run home's SQLite file, or any store URL).
- On a cluster, Redis: the events service keeps a capped list per user,
  `<prefix>history:<user_id>` (LPUSH + LTRIM, newest first, with a TTL), and appends the user id
  to a capped stream, `<prefix>history-changes`, so readers learn who changed
  (`RedisHistoryWriter`).

The predictor never waits on either: a `FreshHistory` keeps every user's fresh items in memory
and a background thread keeps it current (the SQL store is tailed by commit order every
`poll_seconds`; Redis readers block on the change stream and re-read the changed users'
lists), so the request path is one dict lookup per user. Items the model already has in the
user's training history, or does not know, are dropped when they arrive, so a user whose
feedback adds nothing new keeps the precomputed answer. If the store cannot be reached the
answers go on with the history last read: failures are counted, the time since the last good
read is exported, and a warning is logged at most once a minute; the thread retries.

Memory: one tuple of at most `max_items` ids per user with fresh feedback (the SQL tail starts
at the model's training end; Redis lists expire after their TTL).
"""
from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import Any

from prometheus_client import Counter, Gauge

from components.feedback_events import POSITIVE_TYPES

# Under "kserve" so the model server's log configuration shows it; elsewhere it reaches the root.
log = logging.getLogger("kserve.recsys.online_history")

DEFAULT_PREFIX = "recsys:"
DEFAULT_MAX_ITEMS = 50  # per user, read side
DEFAULT_LIST_LENGTH = 100  # per user, kept in Redis
DEFAULT_TTL_SECONDS = 30 * 86_400
DEFAULT_CHANGES_LENGTH = 100_000
_REDIS_SCAN_CHUNK = 500

ROWS_WITH_FRESH = Counter(
    "recsys_online_history_rows", "Answered rows whose user had fresh feedback", ["model_name"])
READ_ERRORS = Counter(
    "recsys_online_history_errors", "Failed reads of the online store (retried)", ["model_name"])
ANSWERED_STALE = Counter(
    "recsys_online_history_stale_rows",
    "Rows answered while the online store was unreachable (with the history last read)",
    ["model_name"])
USERS = Gauge("recsys_online_history_users", "Users with fresh feedback in memory",
              ["model_name"])
AGE = Gauge("recsys_online_history_age_seconds",
            "Seconds since the online store was last read successfully", ["model_name"])


def history_key(user_id: str, prefix: str = DEFAULT_PREFIX) -> str:
    return f"{prefix}history:{user_id}"


def changes_key(prefix: str = DEFAULT_PREFIX) -> str:
    return f"{prefix}history-changes"


def is_redis_url(url: str) -> bool:
    return url.startswith(("redis://", "rediss://", "unix://"))


def _redis_client(url: str, timeout: float):
    import redis

    return redis.Redis.from_url(url, socket_timeout=timeout, socket_connect_timeout=timeout,
                                decode_responses=True)


class _OncePerMinute:
    """A warning that repeats at most once a minute (a store down for an hour is one line a
    minute, not one per request or poll)."""

    def __init__(self, logger: logging.Logger):
        self.logger, self.last = logger, 0.0

    def __call__(self, message: str, *args: Any) -> None:
        now = time.monotonic()
        if now - self.last >= 60:
            self.last = now
            self.logger.warning(message + " (logged at most once a minute)", *args)


# ------------------------------------------------------------------------------- writing
class RedisHistoryWriter:
    """The events service's side: push accepted positive events to the users' lists."""

    def __init__(self, url: str, *, prefix: str = DEFAULT_PREFIX,
                 list_length: int = DEFAULT_LIST_LENGTH, ttl_seconds: int = DEFAULT_TTL_SECONDS,
                 changes_length: int = DEFAULT_CHANGES_LENGTH, timeout: float = 2.0):
        self.client = _redis_client(url, timeout)
        self.prefix, self.list_length, self.ttl = prefix, list_length, ttl_seconds
        self.changes_length = changes_length

    def push(self, events: Iterable[Mapping[str, Any]]) -> int:
        """Add the positive events (stored form) to their users' lists in one round trip;
        returns the number of users touched. Raises redis errors."""
        by_user: dict[str, list[str]] = {}
        for event in sorted(events, key=lambda e: e["timestamp"]):
            if event["type"] in POSITIVE_TYPES:
                by_user.setdefault(event["user_id"], []).append(event["item_id"])
        if not by_user:
            return 0
        pipe = self.client.pipeline(transaction=True)
        for user, items in by_user.items():
            key = history_key(user, self.prefix)
            pipe.lpush(key, *items)  # the newest ends up first
            pipe.ltrim(key, 0, self.list_length - 1)
            pipe.expire(key, self.ttl)
            pipe.xadd(changes_key(self.prefix), {"user_id": user}, maxlen=self.changes_length,
                      approximate=True)
        pipe.execute()
        return len(by_user)

    def ping(self) -> bool:
        return bool(self.client.ping())

    def close(self) -> None:
        self.client.close()


# ------------------------------------------------------------------------------- reading
class SqlHistorySource:
    """The feedback store, tailed in commit order (`FeedbackStore.positive_events_since`)."""

    replaces = False  # yields events to merge, not whole lists
    resync_after_failure = False  # the cursor survives an outage

    def __init__(self, url: str, *, since_timestamp: float | None = None,
                 poll_seconds: float = 0.2):
        from components.feedback_store import FeedbackStore

        # No connection yet (a URL that cannot work fails here, at startup); the thread
        # connects, so a database that is down delays fresh history, not the predictor.
        self.store = FeedbackStore(url, create=False, pool_size=1)
        self.since_timestamp = since_timestamp
        self.poll_seconds = poll_seconds
        self.cursor: Any = None

    def snapshot(self) -> dict[str, list[str]]:
        self.store.create_tables()  # a fresh run home has no events yet
        self.cursor = None
        return self.changes(wait=False)

    def changes(self, wait: bool = True) -> dict[str, list[str]]:
        """Users' new items, oldest first, since the last call."""
        frame, self.cursor = self.store.positive_events_since(
            self.cursor, since_timestamp=self.since_timestamp, limit=50_000)
        if frame.empty and wait:
            time.sleep(self.poll_seconds)
        # Commit order, and event time within what one poll brought (a batch's rows are
        # committed in key order, not time order).
        frame = frame.sort_values("timestamp", kind="stable")
        out: dict[str, list[str]] = {}
        for user, item in zip(frame.user_id.tolist(), frame.item_id.tolist()):
            out.setdefault(user, []).append(item)
        return out

    def close(self) -> None:
        self.store.close()


class RedisHistorySource:
    """Redis lists written by `RedisHistoryWriter`, followed through the change stream."""

    replaces = True  # yields each changed user's whole list, newest first
    resync_after_failure = True  # changes may have been trimmed from the stream meanwhile

    def __init__(self, url: str, *, prefix: str = DEFAULT_PREFIX, max_items: int = 50,
                 poll_seconds: float = 0.2, timeout: float = 2.0):
        self.client = _redis_client(url, max(timeout, poll_seconds + 1.0))
        self.prefix, self.max_items = prefix, max_items
        self.block_ms = max(1, int(poll_seconds * 1000))
        self.cursor = "0-0"

    def _lists(self, users: Sequence[str]) -> dict[str, list[str]]:
        out = {}
        for start in range(0, len(users), _REDIS_SCAN_CHUNK):
            chunk = users[start:start + _REDIS_SCAN_CHUNK]
            pipe = self.client.pipeline(transaction=False)
            for user in chunk:
                pipe.lrange(history_key(user, self.prefix), 0, self.max_items - 1)
            out.update(zip(chunk, pipe.execute()))
        return out

    def snapshot(self) -> dict[str, list[str]]:
        # The stream's position first: changes during the scan are read again after it.
        last = self.client.xrevrange(changes_key(self.prefix), count=1)
        self.cursor = last[0][0] if last else "0-0"
        head = history_key("", self.prefix)
        users = [key[len(head):] for key in
                 self.client.scan_iter(match=head.replace("*", r"\*") + "*", count=1000)]
        return self._lists(users)

    def changes(self, wait: bool = True) -> dict[str, list[str]]:
        reply = self.client.xread({changes_key(self.prefix): self.cursor}, count=10_000,
                                  block=self.block_ms if wait else None)
        users: set[str] = set()
        for _stream, entries in reply or []:
            for entry_id, fields in entries:
                self.cursor = entry_id
                users.add(fields.get("user_id", ""))
        return self._lists(sorted(users)) if users else {}

    def close(self) -> None:
        self.client.close()


class FreshHistory:
    """Every user's fresh items in memory, kept current by a background thread."""

    def __init__(self, source: Any, *, model_name: str = "recsys",
                 keep: Callable[[str, list[str]], list[str]] | None = None,
                 max_items: int = DEFAULT_MAX_ITEMS, retry_seconds: float = 1.0):
        self.source = source
        self.keep = keep
        self.max_items = max_items
        self.retry_seconds = retry_seconds
        self._fresh: dict[str, tuple[str, ...]] = {}
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._last_ok = 0.0
        self.available = False
        self.first_read = threading.Event()
        self._warn = _OncePerMinute(log)
        self._rows = ROWS_WITH_FRESH.labels(model_name)
        self._errors = READ_ERRORS.labels(model_name)
        self._stale = ANSWERED_STALE.labels(model_name)
        self._users = USERS.labels(model_name)
        AGE.labels(model_name).set_function(
            lambda: time.time() - self._last_ok if self._last_ok else float("nan"))

    # -- the request path -------------------------------------------------------------------
    def lookup(self, user_ids: Sequence[str]) -> list[tuple[str, ...]] | None:
        """Each user's fresh items (newest first), or None when no user here has any."""
        if not self.available:
            self._stale.inc(len(user_ids))
        fresh = self._fresh
        rows = [fresh.get(user, ()) for user in user_ids]
        with_fresh = sum(1 for row in rows if row)
        if not with_fresh:
            return None
        self._rows.inc(with_fresh)
        return rows

    # -- the background thread --------------------------------------------------------------
    def start(self) -> FreshHistory:
        if self._thread is None:
            self._stop.clear()
            self._thread = threading.Thread(target=self._run, name="online-history",
                                            daemon=True)
            self._thread.start()
        return self

    def stop(self, timeout: float = 5.0) -> None:
        thread, self._thread = self._thread, None
        if thread is not None:
            self._stop.set()
            thread.join(timeout)
        self.source.close()

    def _run(self) -> None:
        synced = False
        while not self._stop.is_set():
            try:
                if not synced:
                    self._replace_all(self.source.snapshot())
                    synced = True
                else:
                    self._apply(self.source.changes(wait=True))
                self._last_ok = time.time()
                self.available = True
                self.first_read.set()
            except Exception as exc:  # noqa: BLE001
                # redis, SQLAlchemy and driver errors alike: retry
                self._errors.inc()
                self.available = False
                self.first_read.set()
                self._warn("online store unreachable, answering with the history last read: "
                           "%s: %s", type(exc).__name__, str(exc).splitlines()[0][:200]
                           if str(exc) else "")
                if self.source.resync_after_failure:
                    synced = False
                self._stop.wait(self.retry_seconds)

    def _filtered(self, user: str, items: Iterable[str]) -> tuple[str, ...]:
        unique = list(dict.fromkeys(items))
        if self.keep is not None:
            unique = self.keep(user, unique)
        return tuple(unique[: self.max_items])

    def _replace_all(self, lists: Mapping[str, list[str]]) -> None:
        if self.source.replaces:
            fresh = {user: self._filtered(user, items) for user, items in lists.items()}
        else:  # oldest first: the newest goes first
            fresh = {user: self._filtered(user, reversed(items)) for user, items in lists.items()}
        self._fresh = {user: items for user, items in fresh.items() if items}
        self._users.set(len(self._fresh))

    def _apply(self, changes: Mapping[str, list[str]]) -> None:
        fresh = self._fresh  # one writer (this thread); readers see whole tuples swapped in
        for user, items in changes.items():
            if self.source.replaces:
                merged = self._filtered(user, items)
            else:
                merged = self._filtered(user, [*reversed(items), *fresh.get(user, ())])
            if merged:
                fresh[user] = merged
            else:
                fresh.pop(user, None)
        self._users.set(len(fresh))


def open_fresh_history(url: str, *, model_name: str = "recsys",
                       keep: Callable[[str, list[str]], list[str]] | None = None,
                       since_timestamp: float | None = None, max_items: int = DEFAULT_MAX_ITEMS,
                       poll_seconds: float = 0.2, prefix: str = DEFAULT_PREFIX) -> FreshHistory:
    """A started `FreshHistory` on a Redis URL or a feedback store URL."""
    if is_redis_url(url):
        source: Any = RedisHistorySource(url, prefix=prefix, max_items=max_items,
                                         poll_seconds=poll_seconds)
    else:
        source = SqlHistorySource(url, since_timestamp=since_timestamp,
                                  poll_seconds=poll_seconds)
    return FreshHistory(source, model_name=model_name, keep=keep, max_items=max_items).start()


def merge_histories(client: list[list[str]] | None,
                    fresh: Sequence[Sequence[str]]) -> list[list[str]]:
    """The client's history rows (if it sent any) with each user's fresh items added."""
    if client is None:
        return [list(row) for row in fresh]
    return [[*sent, *extra] for sent, extra in zip(client, fresh)]


# ------------------------------------------------------------------------- the predictor
def training_filter(model: Any) -> Callable[[str, list[str]], list[str]]:
    """Keeps the items the model knows and the user's training history lacks: only those
    change an answer (and a user with none keeps the precomputed one)."""
    data = model.data_
    item_ids = data.item_ids
    known = set(item_ids.tolist())
    indptr, indices = data.matrix.indptr, data.matrix.indices

    def keep(user: str, items: list[str]) -> list[str]:
        row = int(model.user_index([user])[0])
        seen = set() if row < 0 else set(item_ids[indices[indptr[row]:indptr[row + 1]]].tolist())
        return [item for item in items if item in known and item not in seen]

    return keep


class PredictorFeedback:
    """What the predictor holds for the loop: the users' fresh history (any online store) and,
    with a SQL feedback store, the writer of what it showed (impressions)."""

    def __init__(self, url: str, model: Any, model_name: str, *, prefix: str = DEFAULT_PREFIX):
        from components.feedback_store import display_url

        train_end = float(getattr(model.data_, "train_end", 0.0) or 0.0)
        self.history = open_fresh_history(url, model_name=model_name,
                                           keep=training_filter(model),
                                           since_timestamp=train_end or None, prefix=prefix)
        self.impressions = None
        if not is_redis_url(url):
            from serving.impressions import ImpressionWriter

            dropped = IMPRESSIONS_DROPPED.labels(model_name)
            self.impressions = ImpressionWriter(
                self.history.source.store, on_drop=dropped.inc, on_error=dropped.inc).start()
        log.info("online history from %s%s", display_url(url) if not is_redis_url(url) else url,
                 "; impressions stored there" if self.impressions else "")

    def add_fresh_history(self, user_ids: Sequence[str],
                          history: list[list[str]] | None) -> list[list[str]] | None:
        """The request's history rows with each user's fresh items added (unchanged when no
        user has any)."""
        fresh = self.history.lookup(user_ids)
        return history if fresh is None else merge_histories(history, fresh)

    def shown(self, entry: Any) -> None:
        """An answered request (a request-log `LogEntry`), queued for the impressions table."""
        if self.impressions is not None:
            self.impressions.put(entry)

    def close(self) -> None:
        if self.impressions is not None:
            self.impressions.close()
        self.history.stop()


IMPRESSIONS_DROPPED = Counter(
    "recsys_impressions_dropped",
    "Answers whose impressions were not stored (writer behind, or a store error)",
    ["model_name"])
