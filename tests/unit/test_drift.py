"""Drift references, detectors and the retraining decision on a small real model.

The model is trained on the temporal split of the synthetic dataset (as the pipeline trains);
its references are fitted on one half of the held-out interactions and windows are drawn from
the other half, so a stationary window is new data from the same period (fixed seeds).
"""

from __future__ import annotations

import json
import os
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from components.config import Config, MonitoringConfig
from components.data.split import split_interactions
from components.errors import ArtifactError, DataValidationError, RecsysError
from components.models.artifact import read_manifest, save_model, verify_files
from components.models.two_stage import TwoStageRecommender
from components.monitoring.drift import _feature_thresholds, run_detectors
from components.monitoring.drift_features import ModelFacts, balanced_edges, bucket, quantile_edges
from components.monitoring.drift_reference import (
    fit_references,
    has_references,
    load_references,
    reference_rows,
    save_references,
)
from components.monitoring.monitor import (
    OK,
    RETRAIN,
    OnlineMetric,
    Window,
    ctr_drop_p_value,
    decide,
    read_window,
    window_tables,
)
from serving.request_log import LogEntry, RequestLog, read_request_log

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import drift_shifts  # tests/ is not a package: its directory is on the path above

CONFIG = Config()


@pytest.fixture(scope="module")
def trained(small_dataset):
    parts = split_interactions(small_dataset.interactions, CONFIG.split)
    model = TwoStageRecommender(CONFIG.model, CONFIG.split).fit(
        parts.train, small_dataset.items, progress=lambda _: None
    )
    heldout = parts.test.reset_index(drop=True)
    half = np.random.default_rng(0).random(len(heldout)) < 0.5
    return (
        model,
        parts.train,
        heldout[half].reset_index(drop=True),
        heldout[~half].reset_index(drop=True),
    )


@pytest.fixture(scope="module")
def artifact(trained, tmp_path_factory):
    model, _, reference, _ = trained
    references = fit_references(model, reference, CONFIG.monitoring)
    directory = save_model(
        model,
        tmp_path_factory.mktemp("drift") / "model",
        data_fingerprint="f",
        write_extra=lambda d: save_references(references, d),
    )
    return directory, references


def _window(model, events: pd.DataFrame, *, now: float = 1e9) -> Window:
    """Served rows (each event's user asking for 10, answered by the model) and rating events."""
    users = events["user_id"].astype(str).tolist()
    answers = model.recommend(users, 10)
    served = pd.DataFrame(
        {
            "user_id": users,
            "k": 10,
            "item_ids": [list(r) for r in answers.item_ids],
            "scores": [list(map(float, r)) for r in answers.scores],
            "unix_time": now - 1,
            "model_version": "v",
        }
    )
    feedback = events.assign(
        type="rating", value=events["rating"].astype(float), timestamp=now - 1.0
    )
    return Window(served, feedback.reset_index(drop=True), now - 3600, now)


def _decide(
    artifact_dir: Path,
    references,
    window: Window,
    config: MonitoringConfig = CONFIG.monitoring,
    **kw,
):
    manifest = read_manifest(artifact_dir)
    return decide(
        references=references,
        facts=ModelFacts.from_artifact(artifact_dir),
        manifest=manifest,
        window=window,
        config=config,
        now=kw.pop("now", time.time()),
        **kw,
    )


def test_references_live_in_the_artifact_and_give_identical_p_values(artifact, trained):
    directory, fitted = artifact
    model, _, _, pool = trained
    manifest = read_manifest(directory)
    verify_files(directory, manifest)
    drift_files = {f for f in manifest["files"] if f.startswith("drift/")}
    assert {
        "drift/profile.json",
        "drift/events/x_ref.npy",
        "drift/events/config.toml",
    } <= drift_files
    assert has_references(directory)
    loaded = load_references(directory)
    assert loaded.profile == fitted.profile and set(loaded.detectors) == set(fitted.detectors)
    window = _window(model, pool.sample(300, random_state=1))
    facts = ModelFacts.from_artifact(directory)
    tables = window_tables(window, facts, loaded)
    before = run_detectors(fitted.detectors, tables)
    after = run_detectors(loaded.detectors, tables)
    pairs = [(a, b) for v, w in zip(before, after) for a, b in zip(v.features, w.features)]
    assert len(pairs) == 8
    assert all(a.p_value == b.p_value and a.statistic == b.statistic for a, b in pairs)


def test_a_changed_reference_is_a_corrupt_artifact(artifact, tmp_path):
    import shutil

    directory = tmp_path / "copy"
    shutil.copytree(artifact[0], directory)
    x_ref = directory / "drift" / "ratings" / "x_ref.npy"
    values = np.load(x_ref)
    np.save(x_ref, values[::-1] + 1)
    with pytest.raises(ArtifactError, match="drift/ratings/x_ref.npy is corrupt"):
        verify_files(directory, read_manifest(directory))


def test_a_model_without_references_is_one_clear_error(small_model_dir):
    with pytest.raises(ArtifactError, match="no drift references"):
        load_references(small_model_dir)


def test_a_stationary_window_is_ok_and_planted_shifts_are_detected(
    artifact, trained, small_dataset
):
    directory, references = artifact
    model, train, _, pool = trained
    ctx = drift_shifts.ShiftContext.build(train, small_dataset.items, genre="Genre3")
    rng = np.random.default_rng(7)
    stationary = pool.iloc[rng.choice(len(pool), 400, replace=False)]
    decision, _ = _decide(directory, references, _window(model, stationary))
    assert decision.decision == OK, decision.reasons
    assert decision.notes == [] and len(decision.drift) == 8
    shifted = {
        "new items": (drift_shifts.new_items(stationary, ctx, rng, 0.3), "events.item_popularity"),
        "popularity inverted": (
            drift_shifts.popularity_inverted(stationary, ctx, rng),
            "events.item_popularity",
        ),
        "ratings": (drift_shifts.ratings_shifted(stationary, ctx, rng, 1.0), "ratings.rating"),
        "segment": (drift_shifts.segment(pool, 400, ctx, rng), "requests.items_genre"),
    }
    for name, (window, feature) in shifted.items():
        decision, _ = _decide(directory, references, _window(model, window))
        assert decision.decision == RETRAIN, name
        assert decision.drift[feature]["drift"], (name, decision.drift[feature])
        assert feature in decision.reasons[0]


def test_ignored_features_are_reported_but_not_counted(artifact, trained, small_dataset):
    directory, references = artifact
    model, train, _, pool = trained
    ctx = drift_shifts.ShiftContext.build(train, small_dataset.items)
    window = drift_shifts.ratings_shifted(pool.sample(400, random_state=3), ctx, None, 1.0)
    config = MonitoringConfig(ignore_features=("ratings.rating",))
    decision, _ = _decide(directory, references, _window(model, window), config)
    assert (
        decision.drift["ratings.rating"]["drift"]
        and not decision.drift["ratings.rating"]["counted"]
    )
    assert decision.decision == OK


def test_empty_and_small_windows_are_reported_not_tested(artifact):
    directory, references = artifact
    empty = Window(
        pd.DataFrame(
            {
                "user_id": [],
                "k": [],
                "item_ids": [],
                "scores": [],
                "unix_time": [],
                "model_version": [],
            }
        ),
        pd.DataFrame(columns=["type", "user_id", "item_id", "timestamp", "value"]),
        0,
        1,
    )
    decision, results = _decide(directory, references, empty)
    assert decision.decision == OK and results == [] and decision.drift == {}
    assert len(decision.notes) == 4
    assert all("fewer than monitoring.min_window (200): not tested" in n for n in decision.notes)


def test_staleness_and_new_data_volume_are_reasons(artifact, trained):
    directory, references = artifact
    model, _, _, pool = trained
    window = _window(model, pool.sample(300, random_state=2))
    decision, _ = _decide(directory, references, window, now=time.time() + 31 * 86_400)
    assert decision.decision == RETRAIN and decision.reasons[0].startswith(
        "staleness: the champion is 31"
    )
    train_size = references.summary["train_interactions"]
    decision, _ = _decide(directory, references, window, new_interactions=train_size // 5)
    assert decision.reasons == [next(r for r in decision.reasons if r.startswith("new data:"))]
    assert "20.0% of its" in decision.reasons[0]
    decision, _ = _decide(directory, references, window, new_interactions=train_size // 20)
    assert decision.decision == OK


def test_a_reason_with_no_new_data_is_an_alert_not_a_retraining(artifact, trained):
    directory, references = artifact
    model, _, _, pool = trained
    window = _window(model, pool.sample(300, random_state=2))
    stale = time.time() + 31 * 86_400
    decision, _ = _decide(directory, references, window, now=stale, new_interactions=0)
    assert decision.decision == "alert"
    assert decision.reasons[0].startswith("staleness: the champion is 31")
    assert decision.no_retrain_reason.startswith("no new data to retrain on")
    assert json.loads(decision.to_json())["no_retrain_reason"] == decision.no_retrain_reason
    decision, _ = _decide(directory, references, window, now=stale, new_interactions=1)
    assert decision.decision == RETRAIN and decision.no_retrain_reason is None
    # No reason at all stays ok, with or without new data.
    decision, _ = _decide(directory, references, window, new_interactions=0)
    assert decision.decision == OK and decision.no_retrain_reason is None


def test_a_significant_click_through_drop_is_a_reason(artifact, trained):
    directory, references = artifact
    model, _, _, pool = trained
    window = _window(model, pool.sample(300, random_state=2))
    fell = OnlineMetric(
        clicks=300, impressions=10_000, previous_clicks=500, previous_impressions=10_000
    )
    decision, _ = _decide(directory, references, window, online=fell)
    assert (
        decision.decision == RETRAIN
        and "click-through rate fell from 5.00% to 3.00%" in decision.reasons[0]
    )
    noise = OnlineMetric(
        clicks=48, impressions=1_200, previous_clicks=62, previous_impressions=1_200
    )
    assert ctr_drop_p_value(noise) > 0.05
    decision, _ = _decide(directory, references, window, online=noise)
    assert decision.decision == OK and decision.online["relative_drop"] > 0.2
    few = OnlineMetric(clicks=1, impressions=50, previous_clicks=10, previous_impressions=50)
    decision, _ = _decide(directory, references, window, online=few)
    assert decision.decision == OK and any("min_impressions" in n for n in decision.notes)
    # No impressions before: no CTR to compare, and the JSON stays strict (null, not NaN).
    first = OnlineMetric(clicks=0, impressions=3000, previous_clicks=0, previous_impressions=0)
    decision, _ = _decide(directory, references, window, online=first)
    assert (
        json.loads(decision.to_json(), parse_constant=pytest.fail)["online"]["previous_ctr"] is None
    )


def test_decision_json_has_the_documented_shape(artifact, trained):
    directory, references = artifact
    model, _, _, pool = trained
    decision, _ = _decide(directory, references, _window(model, pool.sample(300, random_state=4)))
    out = json.loads(decision.to_json())
    assert {"decision", "reasons", "drift", "notes", "model_version", "window"} <= set(out)
    feature = out["drift"]["events.item_popularity"]
    assert {"p_value", "drift", "statistic", "threshold", "test"} <= set(feature)
    assert feature["test"] == "chi2" and out["drift"]["scores.top_score"]["test"] == "ks"


def test_bonferroni_and_fdr_thresholds_per_feature():
    p = np.array([0.001, 0.04, 0.2, 0.01])
    assert list(_feature_thresholds(p, 0.0125, "bonferroni")) == [0.0125] * 4
    # No feature passes Benjamini-Hochberg: alibi returns the ladder q*i/n; each feature gets its
    # rank's step.
    ladder = 0.0001 * np.arange(1, 5) / 4
    assert list(_feature_thresholds(p, ladder, "fdr")) == [
        ladder[0],
        ladder[2],
        ladder[3],
        ladder[1],
    ]


def test_cut_points():
    assert quantile_edges(np.arange(100), 4) == [24.0, 49.0, 74.0]
    ratings = np.repeat([0.5, 1, 2, 3, 4, 5], [1, 2, 30, 30, 30, 7])
    edges = balanced_edges(ratings)
    # The rare 0.5 and 1 merge into the 2s' bin; 5 keeps a bin of its own (7% >= 5%).
    assert edges == [2.5, 3.5, 4.5]
    assert list(bucket([0.5, 2, 2.5, 3, 5], edges)) == [0, 0, 0, 1, 3]


def test_reference_rows_are_the_detectors_own(artifact):
    _, references = artifact
    rows = reference_rows(references)
    assert set(rows) == {"requests", "scores", "events", "ratings"}
    assert rows["requests"].names == ("user_activity", "k", "items_popularity", "items_genre")
    assert len(rows["events"]) == references.summary["rows"]["events"]


def test_read_window_from_a_request_log_and_an_events_file(tmp_path):
    from serving.request_log import LogEntry, RequestLog

    log = RequestLog(tmp_path / "requests", "recsys").start()
    now = time.time()
    for i in range(3):
        log.log(
            LogEntry(
                now - 10 + i,
                f"r{i}",
                "v1",
                np.array(["u1", "u2"], dtype=object),
                np.array([2, 2]),
                np.array([["a", "b"], ["c", ""]], dtype=object),
                np.array([[2.0, 1.0], [3.0, 0.0]]),
                cold_start=np.array([False, True]),
            )
        )
    log.log(
        LogEntry(
            now - 1e6,
            "old",
            "v1",
            np.array(["u9"], dtype=object),
            np.array([1]),
            np.array([["z"]], dtype=object),
            np.array([[1.0]]),
            cold_start=np.array([False]),
        )
    )
    log.close()
    events = tmp_path / "events.jsonl"
    events.write_text(
        "\n".join(
            json.dumps(e)
            for e in [
                {
                    "event_id": "e1",
                    "type": "click",
                    "user_id": "u1",
                    "item_id": "a",
                    "timestamp": now - 5,
                },
                {
                    "event_id": "e2",
                    "type": "rating",
                    "user_id": "u1",
                    "item_id": "b",
                    "value": 4,
                    "timestamp": now - 4,
                },
                {
                    "event_id": "e3",
                    "type": "impression",
                    "user_id": "u1",
                    "item_id": "c",
                    "timestamp": now - 4,
                },
            ]
        )
        + "\n"
    )
    window = read_window(
        request_log=tmp_path / "requests",
        feedback=str(events),
        as_of=now,
        config=MonitoringConfig(),
    )
    assert len(window.served) == 6 and set(window.served["user_id"]) == {"u1", "u2"}
    assert window.served.iloc[1]["item_ids"] == ["c"]  # the padding is not an item
    assert list(window.events["event_id"]) == ["e1", "e2"]  # impressions are not consumption


def test_bad_sources_are_one_clear_line(tmp_path):
    config = MonitoringConfig()
    with pytest.raises(RecsysError, match="nothing to check: no request log at"):
        read_window(
            request_log=tmp_path / "absent", feedback=None, as_of=time.time(), config=config
        )
    logs = tmp_path / "requests"
    logs.mkdir()
    (logs / "requests-h-1.jsonl").write_text('{"unix_time": 1, "user_id": "u"}\nnot json\n')
    # A bad line is skipped; with nothing valid in the window, that is the error.
    with pytest.raises(
        DataValidationError,
        match=r"nothing valid to check in the window: 1 unreadable row\(s\) skipped, the first "
        r".*requests-h-1.jsonl: line 2: not JSON",
    ):
        read_window(request_log=logs, feedback=None, as_of=time.time(), config=config)
    events = tmp_path / "events.jsonl"
    events.write_text(
        '{"event_id": "a", "type": "click", "user_id": "u", "item_id": "i"}\n'
        '{"event_id": "b", "type": "clik", "user_id": "u", "item_id": "i"}\n'
    )
    with pytest.raises(
        DataValidationError, match=r"events.jsonl: line 2 \(event 'b'\): type: 'clik' is not"
    ):
        read_window(request_log=None, feedback=str(events), as_of=time.time(), config=config)


def _logged(directory: Path, now: float, rows: int, prefix: str = "r") -> RequestLog:
    """`rows` answered requests (one user row each, a second apart, ending at `now`) written by
    the server's own request log."""
    log = RequestLog(directory, "recsys").start()
    for i in range(rows):
        log.log(
            LogEntry(
                now - rows + i,
                f"{prefix}{i}",
                "v1",
                np.array([f"u{i % 7}"], dtype=object),
                np.array([2]),
                np.array([["a", "b"]], dtype=object),
                np.array([[2.0, 1.0]]),
                cold_start=np.array([False]),
            )
        )
    log.close()
    return log


def test_bad_rows_are_skipped_with_their_file_and_line_and_the_rest_decides(
    tmp_path, artifact, trained
):
    directory, references = artifact
    now = time.time()
    logs = tmp_path / "requests"
    path = _logged(logs, now, 300).path
    lines = path.read_text().splitlines(keepends=True)
    lines.insert(100, "not json at all\n")  # line 101
    no_time = json.loads(lines[200])
    del no_time["unix_time"]
    lines[200] = json.dumps(no_time) + "\n"  # line 201
    path.write_text("".join(lines))
    events = tmp_path / "events.jsonl"
    good = [
        {
            "event_id": f"e{i}",
            "type": "click",
            "user_id": "u1",
            "item_id": "a",
            "timestamp": now - 50 + i,
        }
        for i in range(5)
    ]
    events.write_text(
        "\n".join([json.dumps(good[0]), "[1, 2]", *map(json.dumps, good[1:]), '"a string"']) + "\n"
    )
    config = MonitoringConfig()
    window = read_window(request_log=logs, feedback=str(events), as_of=now + 1, config=config)
    assert len(window.served) == 299 and len(window.events) == 5
    assert window.bad.count == 4
    assert window.bad.examples == [
        f"{path}: line 101: not JSON (Expecting value)",
        f"{path}: line 201: not a request-log record (no unix_time)",
        f"{events}: line 2: an event must be a JSON object",
        f"{events}: line 7: an event must be a JSON object",
    ]
    decision, _ = _decide(directory, references, window, new_interactions=5)
    out = json.loads(decision.to_json())
    assert out["window"]["skipped_rows"] == 4 and out["window"]["skipped"] == window.bad.examples
    assert out["notes"][0].startswith("skipped 4 unreadable row(s), decided on the rest")
    assert out["window"]["rows"]["requests"] == 299


def test_the_window_is_read_from_the_end_of_the_newest_files(tmp_path):
    """A window of 100 from two processes' logs (one rotated into several files): the same rows
    as reading every file and keeping the newest 100, and the reader never reaches the bad
    lines at the start of the oldest file (it stopped once the window was full)."""
    from components.feedback.observations import BadRows, read_request_log_window

    now = time.time()
    logs = tmp_path / "requests"
    for name, offset in (("requests-h-1", 0.0), ("requests-h-2", 0.5)):
        log = RequestLog(logs, "recsys", max_bytes=20_000, backup_count=20).start()
        for i in range(400):
            log.log(
                LogEntry(
                    now - 400 + i + offset,
                    f"{name}-{i}",
                    "v1",
                    np.array(["u1", "u2"], dtype=object),
                    np.array([1, 1]),
                    np.array([["a"], ["b"]], dtype=object),
                    np.array([[1.0], [0.5]]),
                    cold_start=np.array([False, False]),
                )
            )
        log.close()
        for path in logs.glob(f"{log.path.name}*"):  # as if another process had written it
            path.rename(logs / path.name.replace(log.path.stem, name))
    assert len(list(logs.glob("requests-h-1.jsonl.*"))) > 2
    everything = read_request_log(logs)
    oldest = max(logs.glob("requests-h-1.jsonl.*"), key=lambda p: int(p.suffix[1:]))
    stat = oldest.stat()
    oldest.write_text("garbage before the window\n" + oldest.read_text())
    os.utime(oldest, ns=(stat.st_atime_ns, stat.st_mtime_ns))
    assert len(list(logs.glob("requests-h-1.jsonl.*"))) > 2
    bad = BadRows()
    window = read_request_log_window(logs, since=now - 3600, until=now + 1, limit=100, bad=bad)
    assert bad.count == 0  # the garbage line was never read
    expected = everything.tail(100).reset_index(drop=True)
    assert window["request_id"].tolist() == expected["request_id"].tolist()
    assert window["row"].tolist() == expected["row"].tolist()
    assert len(read_request_log_window(logs, since=now - 10, until=now + 1, limit=1000)) == 40
    past = read_request_log_window(logs, since=now - 3600, until=now - 300, limit=10)
    assert past["unix_time"].max() < now - 300 and len(past) == 10


def test_the_decision_is_pushed_to_a_pushgateway(artifact, trained):
    """A loopback HTTP server stands in for the Pushgateway (its API is one PUT of the text
    exposition format to /metrics/job/<job>); the body is parsed back with prometheus_client."""
    import http.server
    import threading

    from prometheus_client.parser import text_string_to_metric_families

    from components.monitoring.monitor_metrics import JOB, push_decision

    received = []

    class Gateway(http.server.BaseHTTPRequestHandler):
        def do_PUT(self):
            body = self.rfile.read(int(self.headers["Content-Length"]))
            received.append((self.command, self.path, body.decode()))
            self.send_response(202)
            self.end_headers()

        def log_message(self, *args):
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Gateway)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    directory, references = artifact
    model, _, _, pool = trained
    decision, _ = _decide(directory, references, _window(model, pool.sample(300, random_state=5)))
    try:
        push_decision(f"127.0.0.1:{server.server_port}", decision, "recsys")
    finally:
        server.shutdown()
    ((method, path, body),) = received
    assert (method, path) == ("PUT", f"/metrics/job/{JOB}")
    samples = {
        (s.name, s.labels.get("view"), s.labels.get("feature")): s.value
        for family in text_string_to_metric_families(body)
        for s in family.samples
    }
    assert samples[("recsys_monitoring_retrain", None, None)] == float(decision.decision == RETRAIN)
    assert samples[("recsys_drift_p_value", "events", "item_popularity")] == pytest.approx(
        decision.drift["events.item_popularity"]["p_value"]
    )
    assert samples[("recsys_monitoring_window_rows", "requests", None)] == 300
    with pytest.raises(
        RecsysError, match="cannot push the drift check to the Pushgateway at 127.0.0.1:9"
    ):
        push_decision("127.0.0.1:9", decision, "recsys", timeout=2)


def test_the_feedback_store_gives_served_rows_events_and_the_click_through_rate(tmp_path):
    """The real store (SQLite): impressions become served rows (no scores), click events join
    their impression by request id, the window before gives the CTR to compare with."""
    from components.feedback.feedback_store import FeedbackStore
    from components.monitoring.monitor import online_metric

    url = f"sqlite:///{tmp_path / 'feedback.db'}"
    now = time.time()
    hour = 3600.0
    impressions, events = [], []
    for n, (start, clicked) in enumerate([(now - 30 * hour, 4), (now - 2 * hour, 1)]):
        for r in range(10):
            request = f"req-{n}-{r}"
            for position in range(3):
                impressions.append(
                    {
                        "request_id": request,
                        "user_id": f"u{r}",
                        "item_id": f"i{position}",
                        "position": position,
                        "model_version": "v1",
                        "timestamp": start + r,
                    }
                )
            if r < clicked:
                events.append(
                    {
                        "event_id": f"c-{n}-{r}",
                        "type": "click",
                        "user_id": f"u{r}",
                        "item_id": "i1",
                        "request_id": request,
                        "timestamp": start + r + 1,
                    }
                )
    with FeedbackStore(url) as store:
        store.add_impressions(impressions)
        store.add_events(events)
    window = read_window(request_log=None, feedback=url, as_of=now, config=MonitoringConfig())
    assert len(window.served) == 10 and set(window.served["k"]) == {3}
    assert (
        window.served.iloc[0]["item_ids"] == ["i0", "i1", "i2"]
        and window.served["scores"].isna().all()
    )
    assert len(window.events) == 1 and window.sources[0].startswith("impressions in sqlite:///")
    metric = online_metric(url, "v1", window)
    assert (
        metric.clicks,
        metric.impressions,
        metric.previous_clicks,
        metric.previous_impressions,
    ) == (1, 30, 4, 30)
    assert online_metric(url, "another-version", window).impressions == 0


def test_serving_and_the_cli_never_import_alibi_detect():
    """alibi-detect is not in the serving image: nothing on the serving path may import it, and
    `components.monitoring.drift` imports it only when a detector is fitted or loaded."""
    import subprocess

    code = (
        "import sys, serving.predictor, serving.events, pipelines.cli.main, components.monitoring.drift, "
        "components.monitoring.monitor, components.monitoring.monitor_metrics; "
        "pipelines.cli.main.build_parser(); print('alibi_detect' in sys.modules)"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"


def test_without_alibi_detect_training_goes_on_and_checking_says_why(
    trained, artifact, monkeypatch, caplog
):
    import components.monitoring.drift

    model, _, reference, _ = trained
    monkeypatch.setattr(components.monitoring.drift, "available", lambda: False)
    assert fit_references(model, reference, CONFIG.monitoring) is None
    assert "alibi-detect is not installed" in caplog.text
    with pytest.raises(
        RecsysError, match=r"needs alibi-detect: pip install 'recsys-mlops\[monitoring\]'"
    ):
        load_references(artifact[0])
