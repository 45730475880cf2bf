"""How much one request may ask of the predictor: the defaults of the server options and the
fixed bounds (a light module: the `recsys` CLI reads the defaults without importing KServe).

Every bound is there so that one request's work, and its answer's size, has a ceiling: the
cost of a request is at most a few hundred milliseconds of one model worker thread, and an answer a
few megabytes (see serving/predictor.py for where each is checked).
"""
from __future__ import annotations

import argparse
from dataclasses import dataclass

DEFAULT_MAX_BATCH_SIZE = 1000
# B x k entries one answer may hold: 100,000 is about 2.5 MB of v2 JSON (a batch of 1,000 at
# k = 100). Beyond it, encoding the answer alone would hold the event loop for seconds.
DEFAULT_MAX_ANSWER_ITEMS = 100_000
# Title queries (item_id values that are not an exact item id) one request may ask: each is
# scored against every title (about 10-40 ms on a 9,000-title catalogue).
DEFAULT_MAX_TITLE_QUERIES = 16
# Answers kept for users with fresh feedback (an LRU beside the precomputed table), about
# 1 KB each at the table's k: `--answer-cache-size`.
DEFAULT_ANSWER_CACHE_SIZE = 10_000
# B x k answer entries one explained request may hold (the `explain` input, the `:explain`
# verb): each row's explanation costs about a model call of its own (the ranker's contributions
# of k items, the generators' attributions over the user's history).
DEFAULT_MAX_EXPLAIN_ITEMS = 1_000
MAX_QUERY_LENGTH = 200  # characters of an item_id/title query (the longest MovieLens title: 151)
MAX_LIST_IDS = 100_000  # ids in exclude_item_ids + history_item_ids, over the whole request
MAX_LIST_LENGTH = 10_000  # per-row width of exclude_item_ids / history_item_ids

# What one connection may take of a server (the predictor, the events service, the console; see
# serving/connection_guard.py): seconds to send the request line and headers, seconds to send
# the body once the headers are in, connections one client address holds at once (a quarter of
# uvicorn's limit_concurrency, below, so that one client cannot fill it), and header bytes.
DEFAULT_HEADER_TIMEOUT = 10.0
DEFAULT_BODY_TIMEOUT = 30.0
DEFAULT_MAX_CONNECTIONS_PER_CLIENT = 256
MAX_HEADER_BYTES = 64 * 1024
# The largest request body the predictor reads (`--max-body-bytes`): the largest request its
# other bounds allow (1,000 users with 100,000 listed ids of up to 200 characters) is far
# below it; a body past it is a 413 before it is read, so that it cannot fill the memory.
DEFAULT_MAX_REQUEST_BYTES = 16 * 1024 * 1024
MAX_CONCURRENCY = 1024  # connections and requests at once per server process; 503 beyond


@dataclass(frozen=True)
class ConnectionLimits:
    header_timeout: float = DEFAULT_HEADER_TIMEOUT
    body_timeout: float = DEFAULT_BODY_TIMEOUT
    max_per_client: int = DEFAULT_MAX_CONNECTIONS_PER_CLIENT  # 0: no cap
    max_header_bytes: int = MAX_HEADER_BYTES
    max_body_bytes: int = 0  # 0: no cap here (the application bounds what it reads)

    def problem(self) -> str | None:
        """What makes these limits unusable, as the option's error message; None if nothing."""
        if not self.header_timeout > 0:
            return f"--header-timeout must be positive, got {self.header_timeout:g}"
        if not self.body_timeout > 0:
            return f"--body-timeout must be positive, got {self.body_timeout:g}"
        if self.max_per_client < 0:
            return f"--max-connections-per-client must not be negative, got {self.max_per_client}"
        if self.max_body_bytes < 0:
            return f"--max-body-bytes must not be negative, got {self.max_body_bytes}"
        return None


def add_connection_arguments(parser: argparse.ArgumentParser) -> None:
    """The per-connection bounds as options (the same for every server)."""
    parser.add_argument("--header-timeout", type=float, default=DEFAULT_HEADER_TIMEOUT,
                        metavar="SECONDS",
                        help="a connection that has not sent a request's headers this long after "
                        "opening (on a kept-alive connection: after the next request's first "
                        "byte) is answered 408 and closed (default: %(default)s)")
    parser.add_argument("--body-timeout", type=float, default=DEFAULT_BODY_TIMEOUT,
                        metavar="SECONDS",
                        help="a request body not received this long after its headers is dropped "
                        "and the connection closed (default: %(default)s)")
    parser.add_argument("--max-connections-per-client", type=int,
                        default=DEFAULT_MAX_CONNECTIONS_PER_CLIENT, metavar="N",
                        help="connections one client address may hold at once; one more is "
                        f"answered 503 and closed; 0: no cap (default: %(default)s, of "
                        f"{MAX_CONCURRENCY} in all). Behind a proxy or sidecar every connection "
                        "comes from its address")


def connection_limits(args: argparse.Namespace) -> ConnectionLimits:
    return ConnectionLimits(header_timeout=args.header_timeout, body_timeout=args.body_timeout,
                            max_per_client=args.max_connections_per_client)
