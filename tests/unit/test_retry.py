"""Which failures of a step that reads a source are tried again: `steps.retry_transient`."""
from __future__ import annotations

import pytest

from components.errors import DataSourceError, DataValidationError
from components.steps import retry_transient


def _failing(errors: list[Exception]):
    calls = []

    def call():
        calls.append(1)
        if errors:
            raise errors.pop(0)
        return "read"

    return call, calls


def test_bad_data_fails_at_once():
    call, calls = _failing([DataValidationError("u.data: not UTF-8")])
    waits = []
    with pytest.raises(DataValidationError):
        retry_transient(call, sleep=waits.append)
    assert len(calls) == 1 and waits == []


def test_a_source_error_written_for_the_user_fails_at_once():
    call, calls = _failing([DataSourceError("s3://b/nothing/: empty prefix")])
    with pytest.raises(DataSourceError):
        retry_transient(call, sleep=lambda _: None)
    assert len(calls) == 1


def test_a_dropped_connection_is_tried_again_with_back_off():
    call, calls = _failing([OSError("connection reset"), ConnectionError("reset")])
    waits = []
    assert retry_transient(call, sleep=waits.append) == "read"
    assert len(calls) == 3 and waits == [5.0, 10.0]


def test_the_last_attempt_raises_what_it_got():
    call, calls = _failing([OSError("1"), OSError("2"), OSError("3")])
    with pytest.raises(OSError, match="3"):
        retry_transient(call, sleep=lambda _: None)
    assert len(calls) == 3
