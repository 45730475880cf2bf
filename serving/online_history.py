"""Real-time user history: what a user did since training, in the next answer.

The events service records feedback; the predictor must see a user's newest consumed, clicked,
liked and rated items on the next request, add them to the history that scores the user and
never recommend them again. Two online stores hold that history:

- Locally, the feedback store itself (the run home's SQLite file, or any store URL).
- On a cluster, Redis: the events service keeps a capped list per user,
  `<prefix>history:<user_id>` (newest first, each item once, with a TTL), and appends the user
  id to a capped stream, `<prefix>history-changes`, with what changed (the pushed items,
  the list's length before and after, a counter kept in `<prefix>history-seq`), so readers
  learn who changed and, mostly, need not read the list again (`RedisHistoryWriter`). The lists follow the feedback store, the source of truth, from a
  cursor kept beside them (`<prefix>history-cursor`; `HistoryPusher`): what was committed while
  Redis was down reaches them once it is back.

The predictor never waits on either: a `FreshHistory` keeps every user's fresh items in memory
and a background thread keeps it current (the SQL store is tailed by commit order every
`poll_seconds`; Redis readers block on the change stream and re-read the changed users'
lists), so the request path is one dict lookup per user. Items the model already has in the
user's training history, or does not know, are dropped when they arrive, so a user whose
feedback adds nothing new keeps the precomputed answer. If the store cannot be reached the
answers go on with the history last read: failures are counted, the time since the last good
read is exported, and a warning is logged at most once a minute; the thread retries.

Memory: one tuple of at most `max_items` ids per user with fresh feedback (the SQL tail starts
at the model's training end; Redis lists expire after their TTL); a Redis reader also keeps a
copy of the lists of the `max_copies` users changed last (`RedisHistorySource`; about 3 KB
each at 50 items: 30 MB at the default 10,000), and reads the list of any other user again at
its next change.
"""
from __future__ import annotations

import json
import logging
import threading
import time
from collections import OrderedDict
from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import Any, NamedTuple

from prometheus_client import Counter, Gauge

from components.feedback.feedback_events import POSITIVE_TYPES

# Under "kserve" so the model server's log configuration shows it; elsewhere it reaches the root.
log = logging.getLogger("kserve.recsys.online_history")

DEFAULT_PREFIX = "recsys:"
DEFAULT_MAX_ITEMS = 50  # per user, read side
DEFAULT_LIST_LENGTH = 100  # per user, kept in Redis
DEFAULT_TTL_SECONDS = 30 * 86_400
DEFAULT_CHANGES_LENGTH = 100_000
DEFAULT_MAX_COPIES = 10_000  # lists a Redis reader keeps a copy of (the users changed last)
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
# One script, so that a batch's lists, its change-stream entries and the cursor move together
# (Redis runs a script atomically, and persists its effects together). With `check` set it is
# a compare-and-set on the cursor: a batch whose answer was lost (a timeout after Redis ran
# it) and is sent again finds the cursor already past it and changes nothing. An item is kept
# once per list (LREM before LPUSH), so even a batch applied twice adds nothing twice.
#
# Each change entry also says what changed, so that a reader can apply it to the list it holds
# instead of reading the list again (`RedisHistorySource`): `seq`, one more than the entry
# before it (a counter kept beside the stream: a reader that sees a gap knows entries were
# trimmed away); `before` and `after`, the list's length before and after the push (a
# `before` the reader does not expect means the list changed another way: it expired, say);
# and, for a push of at most ITEMS_IN_CHANGE items, `items`, the pushed items oldest first (a
# JSON array). Entries stay small: a longer push (a rebuild) names only the user.
_PUSH_SCRIPT = """
if ARGV[1] == '1' and (redis.call('GET', KEYS[1]) or '') ~= ARGV[2] then return 0 end
local a = 8
for k = 4, #KEYS do
  local user, n = ARGV[a], tonumber(ARGV[a + 1])
  local before = redis.call('LLEN', KEYS[k])
  for j = a + 2, a + 1 + n do
    redis.call('LREM', KEYS[k], 0, ARGV[j])
    redis.call('LPUSH', KEYS[k], ARGV[j])
  end
  redis.call('LTRIM', KEYS[k], 0, tonumber(ARGV[4]) - 1)
  redis.call('EXPIRE', KEYS[k], tonumber(ARGV[5]))
  local entry = {'user_id', user, 'seq', redis.call('INCR', KEYS[3]), 'before', before,
                 'after', redis.call('LLEN', KEYS[k])}
  if n <= tonumber(ARGV[7]) then
    entry[9], entry[10] = 'items', cjson.encode({unpack(ARGV, a + 2, a + 1 + n)})
  end
  redis.call('XADD', KEYS[2], 'MAXLEN', '~', ARGV[6], '*', unpack(entry))
  a = a + 2 + n
end
if ARGV[1] == '1' then redis.call('SET', KEYS[1], ARGV[3]) end
return 1
"""
ITEMS_IN_CHANGE = 20  # at most this many pushed items ride in a change entry


def seq_key(prefix: str = DEFAULT_PREFIX) -> str:
    return f"{prefix}history-seq"


def cursor_key(prefix: str = DEFAULT_PREFIX) -> str:
    return f"{prefix}history-cursor"


class RedisHistoryWriter:
    """Adds positive events to the users' lists (newest first, each item once, capped, with a
    TTL) and names the changed users on the change stream."""

    def __init__(self, url: str, *, prefix: str = DEFAULT_PREFIX,
                 list_length: int = DEFAULT_LIST_LENGTH, ttl_seconds: int = DEFAULT_TTL_SECONDS,
                 changes_length: int = DEFAULT_CHANGES_LENGTH, timeout: float = 2.0):
        self.client = _redis_client(url, timeout)
        self.prefix, self.list_length, self.ttl = prefix, list_length, ttl_seconds
        self.changes_length = changes_length
        self._script = self.client.register_script(_PUSH_SCRIPT)

    def push(self, events: Iterable[Mapping[str, Any]]) -> int:
        """Add the positive events (stored form) to their users' lists in one round trip;
        returns the number of users touched. Raises redis errors."""
        positive = [e for e in events if e["type"] in POSITIVE_TYPES]
        return self._apply(positive, None, "")[1]

    def push_after(self, events: Iterable[Mapping[str, Any]], expected: str,
                   cursor: str) -> bool:
        """Add the events (`user_id`, `item_id`, `timestamp`) and move the stored cursor from
        `expected` ("" for none) to `cursor`, all or nothing; False, changing nothing, when
        the stored cursor is not `expected`. Raises redis errors."""
        return self._apply(list(events), expected, cursor)[0]

    def read_cursor(self) -> str:
        """The cursor stored beside the lists ("" when there is none)."""
        return self.client.get(cursor_key(self.prefix)) or ""

    def _apply(self, events: list[Mapping[str, Any]], expected: str | None,
               cursor: str) -> tuple[bool, int]:
        by_user: dict[str, list[str]] = {}
        for event in sorted(events, key=lambda e: e["timestamp"]):
            by_user.setdefault(str(event["user_id"]), []).append(str(event["item_id"]))
        if not by_user and expected is None:
            return True, 0
        keys = [cursor_key(self.prefix), changes_key(self.prefix), seq_key(self.prefix)]
        args: list[Any] = ["0" if expected is None else "1", expected or "", cursor,
                           self.list_length, self.ttl, self.changes_length, ITEMS_IN_CHANGE]
        for user, items in by_user.items():
            keys.append(history_key(user, self.prefix))
            args.extend([user, len(items), *items])  # oldest first: the newest ends up first
        return bool(self._script(keys=keys, args=args)), len(by_user)

    def ping(self) -> bool:
        return bool(self.client.ping())

    def close(self) -> None:
        self.client.close()


class HistoryPusher:
    """The events service's side: the feedback store is the source of truth, and this thread
    brings the Redis lists up to date with it. It follows the store's positive events in commit
    order (`FeedbackStore.positive_rows_since`) from a cursor kept in Redis beside the lists
    (`<prefix>history-cursor`, moved in the same script as the batch it covers), so:

    - nothing waits on Redis: a commit only wakes the thread (`notify`); a Redis that is down
      or frozen delays the history, never the events' answers;
    - whatever was committed while Redis was unreachable, or while no events service ran,
      reaches the lists once both are back, from where the cursor stopped;
    - a batch sent twice is applied once (the cursor is compared and set), and an item is in
      a list once whatever happens;
    - a Redis that lost its data (no cursor) is rebuilt from the store's events received
      within the lists' TTL; so is one whose cursor belongs to another store.

    The lag (positive events committed and not yet pushed, and the age of the oldest) goes to
    `on_lag` about once a second; failures to `on_error`, retried every `retry_seconds`."""

    def __init__(self, store: Any, writer: RedisHistoryWriter, *, batch: int = 1_000,
                 poll_seconds: float = 0.2, retry_seconds: float = 1.0,
                 lag_seconds: float = 1.0,
                 on_error: Callable[[BaseException], None] | None = None,
                 on_lag: Callable[[int, float], None] | None = None,
                 on_pushed: Callable[[int], None] | None = None):
        self.store, self.writer, self.batch = store, writer, batch
        self.poll_seconds, self.retry_seconds = poll_seconds, retry_seconds
        self.lag_seconds = lag_seconds
        self.on_error, self.on_lag, self.on_pushed = on_error, on_lag, on_pushed
        # Events received earlier than this are past the lists' TTL: a rebuild starts here.
        self.received_since = time.time() - writer.ttl
        self._known = False  # whether _cursor/_stored are what Redis holds
        self._read_once = False
        self._cursor: Any = None
        self._stored = ""
        self._last_lag = 0.0
        self._wake = threading.Event()
        self._closing = threading.Event()
        self._thread: threading.Thread | None = None
        self._warn = _OncePerMinute(log)

    def start(self) -> HistoryPusher:
        if self._thread is None:
            self._thread = threading.Thread(target=self._run, name="history-pusher",
                                            daemon=True)
            self._thread.start()
        return self

    def notify(self, *_rows: Any) -> None:
        """Something was committed: look now rather than at the next poll."""
        self._wake.set()

    def close(self, timeout: float = 10.0) -> None:
        """Push what is committed (while Redis answers, for up to `timeout`), then stop."""
        thread, self._thread = self._thread, None
        if thread is not None:
            self._closing.set()
            self._wake.set()
            thread.join(timeout)

    def step(self) -> int:
        """Push the next batch after the cursor; the number of events pushed (0: up to date).
        Raises the store's and Redis's errors."""
        if not self._known:
            self._load_cursor()
        rows, cursor = self.store.positive_rows_since(
            self._cursor, received_since=self.received_since, limit=self.batch)
        if not rows:
            return 0
        text = self.store.dump_cursor(cursor)
        events = [{"user_id": user, "item_id": item, "timestamp": at} for user, item, at in rows]
        if not self.writer.push_after(events, self._stored, text):
            self._known = False  # another writer moved it (or our own earlier try did)
            return 0
        self._cursor, self._stored = cursor, text
        if self.on_pushed is not None:
            self.on_pushed(len(rows))
        return len(rows)

    def _load_cursor(self) -> None:
        stored = self.writer.read_cursor()
        cursor = self.store.load_cursor(stored)
        if stored and cursor is None:
            log.warning("online store: the history cursor %r is not one of this store; "
                        "rebuilding the lists from the store", stored[:100])
        elif cursor is not None and self.store.cursor_is_ahead(cursor):
            log.warning("online store: the history cursor %s lies past this store's events "
                        "(another database?); rebuilding the lists from the store", stored)
            cursor = None
        elif not stored:
            log.info("online store: no history cursor; adding the store's positive events "
                     "since %s", time.strftime("%Y-%m-%d %H:%M:%S", time.gmtime(
                         self.received_since)))
        self._cursor, self._stored, self._known = cursor, stored, True
        self._read_once = True

    def _run(self) -> None:
        deadline = None
        while True:
            self._wake.clear()
            failed, pushed = False, 0
            try:
                pushed = self.step()
            except Exception as exc:  # noqa: BLE001 (redis, SQLAlchemy and driver errors)
                failed, self._known = True, False
                if self.on_error is not None:
                    self.on_error(exc)
                self._warn("online store: cannot bring the users' history up to date, "
                           "retrying: %s: %s", type(exc).__name__,
                           str(exc).splitlines()[0][:200] if str(exc) else "")
            self._report_lag()
            if self._closing.is_set():
                deadline = deadline or time.monotonic() + 5.0
                if failed or pushed == 0 or time.monotonic() > deadline:
                    return
            elif failed:
                self._closing.wait(self.retry_seconds)
            elif pushed == 0:
                self._wake.wait(self.poll_seconds)

    def _report_lag(self) -> None:
        """The backlog behind the last cursor read or written (none before the first)."""
        now = time.monotonic()
        if self.on_lag is None or not self._read_once or now - self._last_lag < self.lag_seconds:
            return
        self._last_lag = now
        try:
            count, oldest = self.store.positive_backlog(self._cursor,
                                                        received_since=self.received_since)
        except Exception:  # noqa: BLE001 (the store's error: the next step reports it)
            return
        self.on_lag(count, max(0.0, time.time() - oldest) if oldest is not None else 0.0)


# ------------------------------------------------------------------------------- reading
_UNREAD = object()


class SqlHistorySource:
    """The feedback store, tailed in commit order (`FeedbackStore.positive_rows_since`)."""

    replaces = False  # yields events to merge, not whole lists
    resync_after_failure = False  # the cursor survives an outage

    def __init__(self, url: str, *, since_timestamp: float | None = None,
                 poll_seconds: float = 0.2):
        from components.feedback.feedback_store import FeedbackStore

        # No connection yet (a URL that cannot work fails here, at startup); the thread
        # connects, so a database that is down delays fresh history, not the predictor.
        self.store = FeedbackStore(url, create=False, pool_size=1)
        self.since_timestamp = since_timestamp
        self.poll_seconds = poll_seconds
        self.cursor: Any = None
        self._last_rowid: Any = _UNREAD  # SQLite: the events' max rowid at the last read

    def snapshot(self) -> dict[str, list[str]]:
        self.store.create_tables()  # a fresh run home has no events yet
        self.cursor, self._last_rowid = None, _UNREAD
        return self.changes(wait=False)

    def changes(self, wait: bool = True) -> dict[str, list[str]]:
        """Users' new items, oldest first, since the last call."""
        if self._unchanged():
            if wait:
                time.sleep(self.poll_seconds)
            return {}
        rows, self.cursor = self.store.positive_rows_since(
            self.cursor, since_timestamp=self.since_timestamp, limit=50_000)
        if not rows and wait:
            time.sleep(self.poll_seconds)
        # Commit order, and event time within what one poll brought (a batch's rows are
        # committed in key order, not time order; sorted() is stable).
        out: dict[str, list[str]] = {}
        for user, item, _at in sorted(rows, key=lambda row: row[2]):
            out.setdefault(user, []).append(item)
        return out

    def _unchanged(self) -> bool:
        """On SQLite, whether no event was committed since the last read: one indexed
        `max(rowid)` (rowids grow in commit order there), about 30 times cheaper than the
        read itself. Always False elsewhere."""
        if self.store.engine.dialect.name != "sqlite":
            return False
        with self.store.engine.connect() as conn:
            last = conn.exec_driver_sql("SELECT max(rowid) FROM events").scalar()
        unchanged = last == self._last_rowid
        self._last_rowid = last
        return unchanged

    def close(self) -> None:
        self.store.close()


class _Known(NamedTuple):
    """What a reader holds of one user's list: its first items (newest first), its length,
    and the change counter (`seq`) it reflects."""

    items: tuple[str, ...]
    length: int
    seq: int


class RedisHistorySource:
    """Redis lists written by `RedisHistoryWriter`, followed through the change stream.

    A change entry that carries its items is applied to the copy of the user's list held here
    (newest first, each item once, capped), which gives what reading the list again would: no
    round trip, and nothing to parse but the entry. The list is read again (LRANGE, with its
    length and the change counter, in one transaction) whenever that is not certain: a user
    not held yet, an entry without items (a long push, or a writer of an older version), a
    `before` length other than the one held (the list expired, or changed another way; an
    empty list before the push needs no read), or a gap in the entries' counter (entries
    trimmed away while this reader was behind: every copy is dropped and read again at its
    user's next change, as a reader of whole lists would). `items_from_changes=False` reads
    every changed list again (what older versions did). Copies are kept for the `max_copies`
    users changed last (least recently changed dropped first); a user without one is read
    again at its next change, so the cap costs round trips, never exactness."""

    replaces = True  # yields each changed user's whole list, newest first
    resync_after_failure = True  # changes may have been trimmed from the stream meanwhile

    def __init__(self, url: str, *, prefix: str = DEFAULT_PREFIX, max_items: int = 50,
                 poll_seconds: float = 0.2, timeout: float = 2.0,
                 items_from_changes: bool = True, max_copies: int = DEFAULT_MAX_COPIES):
        if max_copies < 1:
            raise ValueError(f"max_copies must be at least 1, not {max_copies}")
        self.client = _redis_client(url, max(timeout, poll_seconds + 1.0))
        self.prefix, self.max_items = prefix, max_items
        self.block_ms = max(1, int(poll_seconds * 1000))
        self.items_from_changes = items_from_changes
        self.max_copies = max_copies
        self.cursor = "0-0"
        self._known: OrderedDict[str, _Known] = OrderedDict()  # least recently changed first
        self._seq: int | None = None  # the counter of the last entry read (None: not known)

    def _lists(self, users: Sequence[str], *, hold: bool) -> dict[str, list[str]]:
        """The users' lists (their first `max_items`). With `hold`, each is read with its
        length and the change counter in one transaction, and a copy is kept: the counter
        says which entries the copy reflects already."""
        out = {}
        for start in range(0, len(users), _REDIS_SCAN_CHUNK):
            chunk = users[start:start + _REDIS_SCAN_CHUNK]
            pipe = self.client.pipeline(transaction=hold)
            for user in chunk:
                key = history_key(user, self.prefix)
                pipe.lrange(key, 0, self.max_items - 1)
                if hold:
                    pipe.llen(key)
            if not hold:
                out.update(zip(chunk, pipe.execute()))
                continue
            pipe.get(seq_key(self.prefix))
            *replies, seq = pipe.execute()
            for n, user in enumerate(chunk):
                items = out[user] = replies[2 * n]
                self._hold(user, _Known(tuple(items), replies[2 * n + 1], int(seq or 0)))
        return out

    def _hold(self, user: str, known: _Known) -> None:
        """Keep `known` as the user's copy, the most recently changed; past `max_copies`, the
        least recently changed copy is dropped."""
        self._known[user] = known
        self._known.move_to_end(user)
        if len(self._known) > self.max_copies:
            self._known.popitem(last=False)

    def snapshot(self) -> dict[str, list[str]]:
        # The stream's position (and its counter) first: changes during the scan are read
        # again after it. No copies are kept: a user's list is read again at its first change
        # (memory for the users who change, not for every list).
        pipe = self.client.pipeline(transaction=True)
        pipe.xrevrange(changes_key(self.prefix), count=1)
        pipe.get(seq_key(self.prefix))
        last, seq = pipe.execute()
        self.cursor = last[0][0] if last else "0-0"
        self._seq = int(seq or 0)
        self._known.clear()
        head = history_key("", self.prefix)
        users = [key[len(head):] for key in
                 self.client.scan_iter(match=head.replace("*", r"\*") + "*", count=1000)]
        return self._lists(users, hold=False)

    def changes(self, wait: bool = True) -> dict[str, list[str]]:
        reply = self.client.xread({changes_key(self.prefix): self.cursor}, count=10_000,
                                  block=self.block_ms if wait else None)
        applied: set[str] = set()  # users whose copy the entries brought up to date
        unread: set[str] = set()  # users whose list must be read again
        for _stream, entries in reply or []:
            for entry_id, fields in entries:
                self.cursor = entry_id
                user = fields.get("user_id", "")
                if self.items_from_changes and self._follow(user, fields):
                    applied.add(user)
                else:
                    unread.add(user)
        # (a copy applied before a gap in the counter was dropped with the others)
        unread |= {user for user in applied if user not in self._known}
        out = {user: list(self._known[user].items) for user in applied - unread}
        if unread:
            out.update(self._lists(sorted(unread), hold=self.items_from_changes))
        return out

    def _follow(self, user: str, fields: Mapping[str, str]) -> bool:
        """Applies one change entry to the user's copy; False when the list must be read."""
        if "seq" not in fields:  # a writer of an older version
            return False
        seq = int(fields["seq"])
        if self._seq is not None and seq != self._seq + 1:
            self._known.clear()  # entries trimmed away: no copy can be trusted
        self._seq = seq
        known = self._known.get(user)
        if known is not None and seq <= known.seq:
            return True  # read after this change: the copy has it already
        before, items = int(fields["before"]), fields.get("items")
        if before == 0:
            known = _Known((), 0, seq - 1)
        if items is None or known is None or known.length != before:
            self._known.pop(user, None)
            return False
        after = int(fields["after"])
        pushed = json.loads(items)
        merged = dict.fromkeys(reversed(pushed))
        merged.update(dict.fromkeys(known.items))
        self._hold(user, _Known(tuple(merged)[:min(self.max_items, after)], after, seq))
        return True

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
TRAINING_SETS_ITEMS = 200_000  # training items held in the filter's per-user sets, at most


def training_filter(model: Any, *, cache_items: int = TRAINING_SETS_ITEMS
                    ) -> Callable[[str, list[str]], list[str]]:
    """Keeps the items the model knows and the user's training history lacks: only those
    change an answer (and a user with none keeps the precomputed one).

    A user who likes one item after another is filtered at every like: the set of the user's
    training items is kept for the users filtered last (least recently used first out, at most
    `cache_items` items in all, a few MB), so a like costs a few set lookups rather than a
    set of the whole training history."""
    data = model.data_
    names = data.item_ids.tolist()
    known = frozenset(names)
    indptr, indices = data.matrix.indptr, data.matrix.indices
    seen_by_row: dict[int, frozenset[str]] = {}  # in the order of use, the latest last
    held = 0

    def training_items(row: int) -> frozenset[str]:
        nonlocal held
        seen = seen_by_row.pop(row, None)
        if seen is None:
            seen = frozenset([names[c] for c in indices[indptr[row]:indptr[row + 1]].tolist()])
            held += len(seen)
            while held > cache_items and seen_by_row:
                held -= len(seen_by_row.pop(next(iter(seen_by_row))))
        seen_by_row[row] = seen  # (again) the latest used
        return seen

    def keep(user: str, items: list[str]) -> list[str]:
        row = int(model.user_index([user])[0])
        if row < 0:
            return [item for item in items if item in known]
        seen = training_items(row)
        return [item for item in items if item in known and item not in seen]

    return keep


class PredictorFeedback:
    """What the predictor holds for the loop: the users' fresh history (any online store) and,
    with a SQL feedback store, the writer of what it showed (impressions)."""

    def __init__(self, url: str, model: Any, model_name: str, *, prefix: str = DEFAULT_PREFIX):
        from components.feedback.feedback_store import display_url

        train_end = float(getattr(model.data_, "train_end", 0.0) or 0.0)
        self.history = open_fresh_history(url, model_name=model_name,
                                           keep=training_filter(model),
                                           since_timestamp=train_end or None, prefix=prefix)
        self.impressions = None
        if not is_redis_url(url):
            from serving.impressions import ImpressionProcessWriter

            dropped = IMPRESSIONS_DROPPED.labels(model_name)
            self.impressions = ImpressionProcessWriter(
                url, on_drop=dropped.inc, on_error=dropped.inc,
                on_exit=IMPRESSIONS_WRITER_EXITS.labels(model_name).inc).start()
        log.info("online history from %s%s", display_url(url) if not is_redis_url(url) else url,
                 "; impressions stored there" if self.impressions else "")

    def add_fresh_history(self, user_ids: Sequence[str],
                          history: list[list[str]] | None) -> list[list[str]] | None:
        """The request's history rows with each user's fresh items added (unchanged when no
        user has any)."""
        fresh = self.history.lookup(user_ids)
        return history if fresh is None else merge_histories(history, fresh)

    def fresh_rows(self, user_ids: Sequence[str]) -> list[tuple[str, ...]] | None:
        """Each user's fresh items (newest first), or None when no user has any. A row is also
        the version of that user's history: the predictor's answer cache keys on it."""
        return self.history.lookup(user_ids)

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
IMPRESSIONS_WRITER_EXITS = Counter(
    "recsys_impressions_writer_exits",
    "Impressions writer processes that died (their unstored answers count as dropped)",
    ["model_name"])
