"""How much the events service takes at once: the defaults of `--max-batch`,
`--max-body-bytes` and `--max-queued-events` (a module of its own, like serving/limits.py for the
predictor, so that the service and its group committer read them without importing the entry
point, serving/events.py, which starts them).
"""
DEFAULT_MAX_BATCH = 1_000
DEFAULT_MAX_BODY_BYTES = 4 * 1024 * 1024
DEFAULT_MAX_QUEUED_EVENTS = 50_000
