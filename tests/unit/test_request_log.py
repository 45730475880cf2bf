"""The request log: record format, rotation, shutdown flush, reading back, and the conversion
of KServe payload-logger events into the same records."""
from __future__ import annotations

import json
import os
import pickle
import queue
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd

from serving.request_log import (
    COLUMNS,
    LogEntry,
    RequestLog,
    entry_records,
    read_request_log,
    records_from_cloudevents,
)


def user_entry(request_id: str = "r1", t: float = 1_700_000_000.25) -> LogEntry:
    return LogEntry(
        unix_time=t,
        request_id=request_id,
        model_version="v7",
        queries=np.asarray(["u1", "stranger"], dtype=object),
        k=np.asarray([2, 3]),
        item_ids=np.asarray([["a", "b", ""], ["c", "d", "e"]], dtype=object),
        scores=np.asarray([[0.9, 0.5, np.nan], [3.0, 2.0, 1.0]], dtype=np.float32),
        cold_start=np.asarray([False, True]),
    )


def item_entry() -> LogEntry:
    return LogEntry(
        unix_time=1_700_000_001.0,
        request_id="r2",
        model_version="v7",
        queries=np.asarray(["itme 12", "nothing"], dtype=object),
        k=np.asarray([2, 2]),
        item_ids=np.asarray([["i3", "i4"], ["", ""]], dtype=object),
        scores=np.asarray([[0.4, 0.3], [np.nan, np.nan]], dtype=np.float32),
        resolved=np.asarray(["i12", ""], dtype=object),
    )


def test_records_drop_padding_and_carry_every_field():
    users = entry_records(user_entry(), "recsys")
    assert [set(r) for r in users] == [set(COLUMNS)] * 2
    assert users[0]["timestamp"] == "2023-11-14T22:13:20.250000Z"
    assert users[0]["item_ids"] == ["a", "b"] and users[0]["scores"] == [np.float32(0.9), 0.5]
    assert (users[1]["user_id"], users[1]["cold_start"], users[1]["k"]) == ("stranger", True, 3)
    assert users[0]["item_id"] is None and users[0]["resolved_item_id"] is None
    items = entry_records(item_entry(), "recsys")
    assert (items[0]["item_id"], items[0]["resolved_item_id"], items[0]["cold_start"]) == ("itme 12", "i12", None)
    assert items[1]["resolved_item_id"] is None and items[1]["item_ids"] == [] and items[1]["scores"] == []


def test_log_writes_json_lines_and_reads_back(tmp_path):
    log = RequestLog(tmp_path, "recsys").start()
    assert log.log(user_entry("r1", 1_700_000_002.0))
    assert log.log(item_entry())
    log.close()
    log.close()  # idempotent
    lines = log.path.read_text().splitlines()
    assert len(lines) == 4 and all(json.loads(line)["model_name"] == "recsys" for line in lines)
    frame = read_request_log(tmp_path)
    assert list(frame["request_id"]) == ["r2", "r2", "r1", "r1"]  # sorted by time
    assert set(COLUMNS) <= set(frame.columns)
    assert isinstance(frame["timestamp"].dtype, pd.DatetimeTZDtype)
    assert frame.loc[frame["user_id"] == "stranger", "cold_start"].item() is True
    assert not log.log(user_entry())  # closed: refuses instead of raising
    assert log.dropped["closed"] == 2  # and counts the rows it refused


def test_rotation_keeps_backup_count_files_of_whole_lines(tmp_path):
    log = RequestLog(tmp_path, "recsys", max_bytes=2_000, backup_count=3).start()
    for i in range(100):
        log.log(user_entry(f"r{i}", 1_700_000_000.0 + i))
    log.close()
    files = sorted(tmp_path.glob("requests-*.jsonl*"))
    assert len(files) == 4  # the live file and three backups
    for path in files:
        assert path.stat().st_size <= 2_000  # the limit holds line by line, not request by request
        for line in path.read_text().splitlines():
            json.loads(line)
    frame = read_request_log(tmp_path)
    assert frame["request_id"].iloc[-1] == "r99" and frame["unix_time"].is_monotonic_increasing


def test_full_queue_drops_and_counts_rows_instead_of_blocking(tmp_path):
    drops = []
    log = RequestLog(tmp_path, "recsys", on_drop=lambda rows, reason: drops.append((rows, reason)))
    log._queue = queue.Queue(maxsize=1)
    log._queue.put_nowait(None)
    assert not log.log(user_entry())
    assert drops == [(2, "queue_full")]  # rows, not requests


def test_one_large_answer_does_not_overshoot_the_size_limit(tmp_path):
    """Rotation is checked before every line: a request of many rows spreads over files."""
    rows = 400
    entry = LogEntry(1.0, "big", "v", np.asarray([f"u{i}" for i in range(rows)], dtype=object),
                     np.full(rows, 3), np.full((rows, 3), "item", dtype=object),
                     np.ones((rows, 3), dtype=np.float32), cold_start=np.zeros(rows, bool))
    log = RequestLog(tmp_path, "recsys", max_bytes=10_000, backup_count=100).start()
    log.log(entry)
    log.close()
    sizes = [p.stat().st_size for p in tmp_path.glob("requests-*.jsonl*")]
    assert len(sizes) > 1 and max(sizes) <= 10_000
    assert len(read_request_log(tmp_path)) == rows


def test_a_value_json_cannot_carry_is_counted_and_the_other_rows_written(tmp_path):
    """A lone surrogate cannot be written as UTF-8: that row is counted (reason `encode`), the
    request's other rows and later requests are written, and the writer lives on."""
    drops = []
    log = RequestLog(tmp_path, "recsys", on_drop=lambda rows, reason: drops.append((rows, reason)))
    log.start()
    bad = user_entry("bad")
    bad.queries = np.asarray(["u1", "\ud800"], dtype=object)
    log.log(bad)
    log.log(user_entry("after"))
    log.close()
    assert drops == [(1, "encode")]
    frame = read_request_log(tmp_path)
    assert sorted(frame["request_id"]) == ["after", "after", "bad"]


def test_a_full_disk_counts_every_lost_row_and_recovers(tmp_path):
    """/dev/full answers every write with ENOSPC, as a full disk does: each row is counted as
    dropped (reason `write`), close() does not raise, and once the file can be written again
    the log resumes."""
    drops = []
    log = RequestLog(tmp_path, "recsys", on_drop=lambda rows, reason: drops.append((rows, reason)))
    os.symlink("/dev/full", log.path)
    log.start()
    for i in range(30):
        assert log.log(user_entry(f"r{i}"))
    log.close()  # must not raise
    assert sum(rows for rows, _ in drops) == 60 and {reason for _, reason in drops} == {"write"}
    log.path.unlink()
    log = RequestLog(tmp_path, "recsys").start()
    log.log(user_entry("later"))
    log.close()
    assert read_request_log(tmp_path)["request_id"].tolist() == ["later", "later"]


def test_an_unwritable_log_file_counts_its_rows(tmp_path):
    """The log file's path taken by a directory (root may write anywhere, so permissions would
    prove nothing here): every row is counted, nothing raises."""
    log = RequestLog(tmp_path, "recsys")
    log.path.mkdir()
    log.start()
    for i in range(10):
        log.log(user_entry(f"r{i}"))
    log.close()
    assert log.dropped["write"] == 20


_LIMITED_WRITER = """
import json, resource, signal, sys
import numpy as np
from serving.request_log import LogEntry, RequestLog
signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # a write past the limit fails with EFBIG instead
resource.setrlimit(resource.RLIMIT_FSIZE, (5000, resource.RLIM_INFINITY))
log = RequestLog(sys.argv[1], "recsys", max_bytes=10**6)
log.start()
for i in range(50):
    log.log(LogEntry(1.0 + i, f"r{i}", "v7", np.asarray(["u1", "u2"], dtype=object), np.asarray([2, 2]),
                     np.asarray([["a", "b"], ["c", "d"]], dtype=object), np.ones((2, 2)),
                     cold_start=np.asarray([False, True])))
log.close()
print(json.dumps(log.dropped))
"""


def test_a_write_stopped_part_way_counts_exactly_and_readers_skip_the_fragment(tmp_path):
    """A file size limit (RLIMIT_FSIZE, in a child process) stops a write part-way through a
    line, as a disk filling up does: the rows that reached the file plus those counted as
    dropped are all the rows, the process exits 0, and the reader skips the torn last line."""
    repo = Path(__file__).resolve().parents[2]
    run = subprocess.run([sys.executable, "-c", _LIMITED_WRITER, str(tmp_path)],
                         capture_output=True, text=True, timeout=120, cwd=repo, check=False)
    assert run.returncode == 0, run.stderr[-2000:]
    dropped = json.loads(run.stdout.strip().splitlines()[-1])
    (path,) = tmp_path.glob("requests-*.jsonl")
    assert not path.read_bytes().endswith(b"\n")  # the write did stop inside a line
    frame = read_request_log(tmp_path)
    assert dropped["write"] > 0 and len(frame) + dropped["write"] == 100


def test_reader_skips_a_torn_last_line(tmp_path):
    log = RequestLog(tmp_path, "recsys").start()
    log.log(user_entry())
    log.close()
    with log.path.open("ab") as handle:
        handle.write(b'{"timestamp": "2023-11-14T22:1')
    assert len(read_request_log(tmp_path)) == 2


def test_travels_to_worker_processes_unstarted(tmp_path):
    log = RequestLog(tmp_path, "recsys").start()
    copy = pickle.loads(pickle.dumps(log))
    log.close()
    assert copy._thread is None and not copy.log(user_entry())
    copy.start().log(user_entry())
    copy.close()
    assert len(read_request_log(tmp_path)) == 2


def test_empty_directory_reads_as_empty_frame(tmp_path):
    frame = read_request_log(tmp_path / "missing")
    assert frame.empty and list(frame.columns) == COLUMNS


HEADERS = {"ce-id": "r1", "ce-time": "2023-11-14T22:13:20.25Z", "ce-inferenceservicename": "recsys"}


def test_v2_payload_logger_pair_gives_the_same_records():
    request = {"inputs": [
        {"name": "user_id", "datatype": "BYTES", "shape": [2], "data": ["u1", "stranger"]},
        {"name": "k", "datatype": "INT32", "shape": [2], "data": [2, 3]},
    ]}
    response = {"id": "r1", "model_name": "recsys", "model_version": "v7", "outputs": [
        {"name": "item_ids", "datatype": "BYTES", "shape": [2, 3], "data": ["a", "b", "", "c", "d", "e"]},
        {"name": "scores", "datatype": "FP32", "shape": [2, 3], "data": [0.9, 0.5, None, 3.0, 2.0, 1.0]},
        {"name": "cold_start", "datatype": "BOOL", "shape": [2], "data": [False, True]},
    ]}
    converted = records_from_cloudevents(request, response, HEADERS)
    expected = entry_records(user_entry(), "recsys")
    for mine, theirs in zip(converted, expected):
        assert np.allclose(mine.pop("scores"), theirs.pop("scores"))
    assert converted == expected


def test_v1_and_similar_item_pairs_convert():
    request = {"instances": [{"item_id": "itme 12", "k": 2}, {"item_id": "nothing", "k": 2}]}
    response = {"model_version": "v7", "predictions": [
        {"item_id": "itme 12", "resolved_item_id": "i12", "item_ids": ["i3", "i4"], "scores": [0.4, 0.3]},
        {"item_id": "nothing", "resolved_item_id": None, "item_ids": [], "scores": []},
    ]}
    converted = records_from_cloudevents(request, response, {**HEADERS, "ce-id": "r2", "ce-time": "2023-11-14T22:13:21Z"})
    expected = entry_records(item_entry(), "recsys")
    for mine, theirs in zip(converted, expected):
        assert np.allclose(mine.pop("scores"), theirs.pop("scores"))
    assert converted == expected
