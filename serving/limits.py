"""How much one request may ask of the predictor: the defaults of the server options and the
fixed bounds (a light module: the `recsys` CLI reads the defaults without importing KServe).

Every bound is there so that one request's work, and its answer's size, has a ceiling: the
cost of a request is at most a few hundred milliseconds of one worker thread, and an answer a
few megabytes (see serving/predictor.py for where each is checked).
"""
DEFAULT_MAX_BATCH_SIZE = 1000
# B x k entries one answer may hold: 100,000 is about 2.5 MB of v2 JSON (a batch of 1,000 at
# k = 100). Beyond it, encoding the answer alone would hold the event loop for seconds.
DEFAULT_MAX_ANSWER_ITEMS = 100_000
# Title queries (item_id values that are not an exact item id) one request may ask: each is
# scored against every title (about 10-40 ms on a 9,000-title catalogue).
DEFAULT_MAX_TITLE_QUERIES = 16
MAX_QUERY_LENGTH = 200  # characters of an item_id/title query (the longest MovieLens title: 151)
MAX_LIST_IDS = 100_000  # ids in exclude_item_ids + history_item_ids, over the whole request
MAX_LIST_LENGTH = 10_000  # per-row width of exclude_item_ids / history_item_ids
