"""The console's parts that need no running service: what changed between two answers, input
checks, the SVG charts, the monitoring aggregates (on real SQLite and PostgreSQL stores), and the
app itself in-process (FastAPI's TestClient) on a run home where nothing runs yet: every page
must say in words what is missing."""
from __future__ import annotations

import contextlib
import itertools
import json
import time
import xml.etree.ElementTree as ET

import numpy as np
import pytest

from serving.console import charts, monitoring, tryit
from serving.console.clients import Answer, Refused


class _Catalogue(tryit.Catalogue):
    """The real catalogue class on an items table given in memory."""

    def __init__(self, titles: dict[str, str]):
        super().__init__(home=None)
        import pandas as pd

        frame = pd.DataFrame({"item_id": list(titles), "title": list(titles.values()),
                              "genres": ["Drama|Comedy"] * len(titles), "year": [1999] * len(titles)})
        self._tables["v1"] = frame.set_index("item_id")

    def _served_dirs(self):
        return {}


def _answer(ids: list[str]) -> Answer:
    return Answer("u1", ids, [1.0 - i / 10 for i in range(len(ids))], "v1", "req", 1.0, False)


def test_compare_marks_new_moved_and_dropped_items():
    catalogue = _Catalogue({i: f"Title {i}" for i in "abcdef"})
    shown = tryit.compare(_answer(["b", "e", "c", "a"]), catalogue, before=["a", "b", "c", "d"])
    changes = {s.item.item_id: (s.change, s.moved) for s in shown.items}
    assert changes == {"b": ("up", 1), "e": ("new", 0), "c": ("same", 0), "a": ("down", -3)}
    assert [i.item_id for i in shown.dropped] == ["d"]
    assert shown.items[0].item.title == "Title b" and shown.items[0].item.genres == ["Drama", "Comedy"]
    assert shown.summary() == "1 new, 2 moved, 1 left the list"
    first = tryit.compare(_answer(["a"]), catalogue, before=None)
    assert not first.compared and first.items[0].change == "same"


def test_unknown_items_keep_their_ids():
    shown = tryit.compare(_answer(["zz"]), _Catalogue({"a": "A"}), before=None)
    assert shown.items[0].item.title == "item zz"


def test_ask_until_changed_waits_for_the_event_to_show():
    answers = iter([["a", "b", "c"], ["a", "b", "c"], ["b", "c", "d"]])
    slept = []
    answer, changed = tryit.ask_until_changed(lambda: _answer(next(answers)), ["a", "b", "c"], "a",
                                              "like", within=5, sleep=slept.append)
    assert changed and answer.item_ids == ["b", "c", "d"] and len(slept) == 2
    # A dislike does not remove the item: any change ends the wait; none is reported as none.
    same = tryit.ask_until_changed(lambda: _answer(["a", "b"]), ["a", "b"], "a", "dislike",
                                   within=0.0, sleep=lambda _: None)
    assert same[1] is False


@pytest.mark.parametrize("text, message", [
    ("", "user id: type one"), ("  ", "user id: type one"),
    ("x" * 257, "257 characters, the limit is 256"), ("a\x00b", "control characters"),
])
def test_check_user_id_refuses_with_a_reason(text, message):
    with pytest.raises(Refused, match=message):
        tryit.check_user_id(text)
    assert tryit.check_user_id("  42 ") == "42"


def test_check_k_and_feedback_events():
    assert tryit.check_k(None) == 10 and tryit.check_k("5") == 5
    for bad in ("0", "51", "ten"):
        with pytest.raises(Refused, match="k: "):
            tryit.check_k(bad)
    event = tryit.feedback_event("rate", user_id="u", item_id="i", value="4", request_id="r",
                                 model_version="v", position="2")
    assert event == {"type": "rating", "user_id": "u", "item_id": "i", "value": 4.0,
                     "request_id": "r", "model_version": "v", "position": 2}
    assert tryit.feedback_event("view", user_id="u", item_id="i", value="5", request_id=None,
                                model_version=None, position=None) == {
        "type": "click", "user_id": "u", "item_id": "i"}
    for action, value, message in (("rate", "9", "outside"), ("rate", "", "choose a value"),
                                   ("shout", None, "is not one of")):
        with pytest.raises(Refused, match=message):
            tryit.feedback_event(action, user_id="u", item_id="i", value=value, request_id=None,
                                 model_version=None, position=None)


# ---------------------------------------------------------------------------- charts
def _svg(markup) -> ET.Element:
    root = ET.fromstring(str(markup))
    assert root.tag.endswith("svg") and root.get("role") == "img"
    return root


def test_stacked_bars_are_well_formed_and_proportional():
    starts = [0.0, 60.0, 120.0]
    svg = _svg(charts.stacked_bars("Events <by type>", starts, 60.0, [
        charts.Series("click", [1, 0, 4]), charts.Series("like", [1, 2, 0])], unit="events"))
    title = svg.find("{*}title")
    assert title.text == "Events <by type>"  # escaped in the markup, intact once parsed
    assert "8 events in 3 intervals" in svg.find("{*}desc").text
    rects = svg.findall("{*}rect")
    assert len(rects) == 4  # zero-height parts are not drawn
    heights = {r.find("{*}title").text: float(r.get("height")) for r in rects}
    assert heights["click: 4"] == pytest.approx(4 * heights["click: 1"], rel=0.01)


def test_lines_with_band_threshold_and_log_scale():
    svg = _svg(charts.lines("p", [0, 1, 2], [charts.Series("p", [1.0, 0.1, 0.001])],
                            threshold=0.05, log_scale=True, summary="now 0.001"))
    assert svg.find("{*}polyline") is not None and svg.find("{*}desc").text == "now 0.001"
    labels = [t.text for t in svg.findall("{*}text")]
    assert "0.001" in labels and "1" in labels
    band = _svg(charts.lines("e", [0, 1], [charts.Series("e", [0.1, 0.2])],
                             band=([0.0, 0.1], [0.2, 0.3]), zero=True))
    assert band.find("{*}polygon") is not None
    assert "no data" in str(charts.lines("empty", [], []))
    legend = ET.fromstring(str(charts.legend([charts.Series("a", []), charts.Series("b", [])])))
    assert ["".join(li.itertext()).strip() for li in legend] == ["a", "b"]


# ---------------------------------------------------------------------------- monitoring
def test_buckets_and_counts():
    starts, step = monitoring.buckets(1_000_000.0, 1_000_000.0 + 86_400)
    assert step == 1800 and starts[0] <= 1_000_000 and starts[-1] < 1_000_000 + 86_400
    import pandas as pd

    times = pd.Series([starts[0] + 1, starts[0] + 2, starts[3] + 5, starts[0] - 10])
    kinds = pd.Series(["click", "like", "click", "click"])
    counted = monitoring.counts_by(times, kinds, starts, step)
    assert counted["click"][0] == 1 and counted["click"][3] == 1 and counted["like"][0] == 1
    assert sum(v.sum() for v in counted.values()) == 3  # the one before the window is out


def test_latency_percentiles_from_prometheus_text():
    from prometheus_client import CollectorRegistry, Histogram, generate_latest

    registry = CollectorRegistry()
    model = Histogram("recsys_experiment_model_seconds", "", ["model_name", "model_version"],
                      registry=registry, buckets=(0.001, 0.002, 0.005, 0.01))
    kserve = Histogram("request_predict_seconds", "", ["model_name"], registry=registry)
    for value in np.linspace(0.0001, 0.0099, 1000):
        model.labels("recsys", "v7").observe(value)
        kserve.labels("recsys").observe(value)
    found = monitoring.latency_from_metrics(generate_latest(registry).decode(), "recsys")
    by_source = {f.source: f for f in found}
    call = by_source["model call"]
    assert call.version == "v7" and call.count == 1000
    assert call.p50 == pytest.approx(0.005, rel=0.05) and 0.009 <= call.p99 <= 0.01
    assert by_source["predict (KServe)"].count == 1000
    assert monitoring.latency_from_metrics(generate_latest(registry).decode(), "other") == []


def test_pipeline_runs_from_the_local_pipeline_root(tmp_path):
    run = tmp_path / "recsys-training-2026-01-01-00-00-00-000001"
    for step in ("fingerprint-op", "ingest-op", "register-op"):
        (run / step).mkdir(parents=True)
        body = {"parameterValues": {"Output": json.dumps(
            {"version": "3", "alias": None, "reason": "no gain"})}} if step == "register-op" else {}
        (run / step / "executor_output.json").write_text(json.dumps(body))
        time.sleep(0.01)
    (run / "split-op").mkdir()  # started, never finished
    found = monitoring.pipeline_runs(tmp_path)
    assert len(found) == 1
    assert found[0]["registration"] == {"version": "3", "alias": None, "reason": "no gain"}
    assert found[0]["last_step"] == "register" and len(found[0]["steps"]) == 3
    assert monitoring.pipeline_runs(tmp_path / "absent") == []


def test_event_and_request_counts_are_grouped_by_the_database(store_url):
    from components.feedback.feedback_store import FeedbackStore

    now = time.time()
    starts, step = monitoring.buckets(now - 3_600, now)
    with FeedbackStore(store_url) as store:
        store.add_events([
            {"event_id": f"e{i}", "type": kind, "user_id": "u", "item_id": "i",
             "timestamp": starts[0] + offset}
            for i, (kind, offset) in enumerate([("click", 1), ("click", 2), ("like", 3),
                                                ("click", step + 1), ("like", -5)])])
        store.add_impressions([
            {"request_id": f"r{n}", "user_id": "u", "item_id": str(p), "position": p,
             "model_version": "v1" if n < 2 else "v2", "timestamp": starts[1] + n}
            for n in range(3) for p in range(2)])
    events = monitoring.event_counts(store_url, starts, step, now)
    assert events["click"][0] == 2 and events["click"][1] == 1 and events["like"][0] == 1
    assert sum(v.sum() for v in events.values()) == 4
    requests = monitoring.request_counts(store_url, starts, step, now)
    assert requests["v1"][1] == 2 and requests["v2"][1] == 1


# ---------------------------------------------------------------------------- the app, nothing running
def form_token(page) -> str:
    """The session's form token a console page carries (its cookie is in the client)."""
    import re

    return re.search(r'<meta name="console-token" content="([0-9a-f]+)">', page.text).group(1)


@pytest.fixture()
def client(tmp_path):
    from fastapi.testclient import TestClient

    from pipelines.cli.console import RolloutBackend
    from serving.console.app import create_app
    from serving.console.config import console_config
    from serving.console.state import build_console

    closed = "http://127.0.0.1:9"  # the discard port: nothing answers there
    config = console_config(tmp_path / "home", tracking_uri=None, predictor_url=closed,
                            events_url=closed, timeout=1.0)
    backend = RolloutBackend(config.home, kind="local", tracking_uri=config.tracking_uri,
                             name="recsys", namespace="recsys", model_name="recsys",
                             metrics_url=f"{closed}/metrics", prometheus=closed)
    with TestClient(create_app(build_console(config, experiments=backend))) as test_client:
        yield test_client, config


def test_every_page_says_what_is_missing(client):
    test_client, config = client
    expected = {
        "/try?user=1": "no predictor answering at http://127.0.0.1:9",
        "/try?like=star": "no predictor answering at",
        "/experiments": f"no local deployment under {config.home}",
        "/monitoring": f"no feedback store at {config.home / 'feedback.db'}",
        "/models": f"no MLflow store at {config.home / 'mlflow.db'}",
    }
    for path, sentence in expected.items():
        response = test_client.get(path)
        assert response.status_code == 200, path
        assert sentence in response.text, (path, response.text[-2000:])
        assert "Traceback" not in response.text
    assert "no request log at" in test_client.get("/monitoring").text
    assert not (config.home / "mlflow.db").exists()  # reading never creates a store
    assert test_client.get("/", follow_redirects=False).headers["location"] == "/try"


def test_health_metrics_errors_and_security_headers(client):
    test_client, _ = client
    assert test_client.get("/healthz").json() == {"status": "ok"}
    missing = test_client.get("/nowhere")
    assert missing.status_code == 404 and "There is no page at /nowhere" in missing.text
    page = test_client.get("/try")
    assert "default-src 'self'" in page.headers["content-security-policy"]
    token = form_token(page)
    refused = test_client.post("/try/feedback", data={"user": "u", "item": "i", "action": "like",
                                                      "token": token},
                               headers={"origin": "https://evil.example"})
    assert refused.status_code == 403
    down = test_client.post("/try/feedback", data={"user": "u", "item": "i", "action": "like",
                                                   "token": token})
    assert down.status_code == 200 and "no events service answering at" in down.text
    bad = test_client.post("/try/feedback", data={"user": "", "item": "i", "action": "like",
                                                  "token": token})
    assert bad.status_code == 400 and "user id: type one" in bad.text
    metrics = test_client.get("/metrics").text
    assert 'recsys_console_requests_total{route="cross-site",status="403"} 1.0' in metrics
    assert 'recsys_console_unavailable_total{dependency="events"}' in metrics
    assert test_client.post("/experiments/explode").status_code == 404


@pytest.mark.parametrize("headers", [
    {"origin": "null"},  # a sandboxed frame or a data: URL, without Sec-Fetch-Site
    {"referer": "https://evil.example/page"},  # a foreign Referer alone
    {"origin": "http://testserver", "sec-fetch-site": "cross-site"},
])
def test_cross_site_signs_are_refused_even_with_the_token(client, headers):
    test_client, _ = client
    token = form_token(test_client.get("/try"))
    refused = test_client.post("/try/feedback", headers=headers, data={
        "user": "u", "item": "i", "action": "like", "token": token})
    assert refused.status_code == 403 and "posted from another site" in refused.text


def test_state_changing_forms_need_the_sessions_token(client):
    """Without the token, with a wrong one, or with another session's: refused (403), whatever
    the headers say; the page's own token is accepted."""
    from fastapi.testclient import TestClient

    test_client, _ = client
    data = {"user": "u", "item": "i", "action": "like"}
    first = test_client.get("/try")
    assert first.cookies.get("recsys_console_session")
    assert "httponly" in first.headers["set-cookie"].lower()
    assert "samesite=strict" in first.headers["set-cookie"].lower()
    token = form_token(first)
    assert form_token(test_client.get("/models")) == token  # one token per session
    for bad in ({}, {"token": ""}, {"token": "0" * 64}):
        refused = test_client.post("/try/feedback", data={**data, **bad})
        assert refused.status_code == 403 and "reload the page" in refused.text
    for action in ("promote", "rollback"):
        assert test_client.post(f"/experiments/{action}", data={"confirmed": "yes"}
                                ).status_code == 403
    other = TestClient(test_client.app)  # another browser: its own session (no second lifespan)
    other_token = form_token(other.get("/try"))
    assert other_token != token
    assert other.post("/try/feedback", data={**data, "token": token}).status_code == 403
    assert test_client.post("/try/feedback", data={**data, "token": token}).status_code == 200
    assert test_client.post("/experiments/promote", data={"token": token}).status_code == 200


def test_only_the_hosts_it_serves_are_answered(tmp_path):
    """A DNS name rebound to 127.0.0.1 makes a page elsewhere same-origin with the console; its
    requests still name that host, and are refused, GET or POST, Origin matching or not."""
    from fastapi.testclient import TestClient

    from serving.console.app import create_app
    from serving.console.config import console_config
    from serving.console.state import build_console

    closed = "http://127.0.0.1:9"
    config = console_config(tmp_path / "home", tracking_uri=None, predictor_url=closed,
                            events_url=closed, timeout=1.0)
    app = create_app(build_console(config), allowed_hosts=["console.example", "proxy.example:443"])
    with TestClient(app, base_url="http://127.0.0.1:8088") as http:
        token = form_token(http.get("/try"))
        for host in ("rebound.example:8088", "console.example.evil.net", "proxy.example:8443",
                     "", "[not-an-ip]"):
            answer = http.get("/try", headers={"host": host})
            assert answer.status_code == 400, host
            assert "does not serve the host" in answer.json()["error"]
        rebound = http.post("/try/feedback", headers={
            "host": "rebound.example:8088", "origin": "http://rebound.example:8088"},
            data={"user": "u", "item": "i", "action": "like", "token": token})
        assert rebound.status_code == 400
        for host in ("127.0.0.1:8088", "localhost:9999", "[::1]:8088", "10.1.2.3",
                     "console.example", "CONSOLE.example:8088", "proxy.example:443"):
            assert http.get("/try", headers={"host": host}).status_code == 200, host
        for path in ("/healthz", "/metrics"):  # probes and Prometheus name the pod's IP or any
            assert http.get(path, headers={"host": "anything.example"}).status_code == 200
        metrics = http.get("/metrics").text
        assert 'recsys_console_requests_total{route="bad-host",status="400"} 6.0' in metrics


def test_trajectory_ends_where_the_analysis_stands(tmp_path):
    """The chart's last point is the analysis itself; earlier points are wider intervals."""
    import sys
    from pathlib import Path

    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
    from experiment_data import experiment_feedback

    from components.config import ExperimentConfig
    from components.experiments.experiment import analyze_labelled, label_impressions
    from components.feedback.feedback_store import FeedbackStore
    from serving.console.experiments import trajectory

    impressions, events = experiment_feedback("a", "b", rate_a=0.04, rate_b=0.08, users=1_000,
                                              sessions=3_000, start=time.time() - 7_200)
    with FeedbackStore(f"sqlite:///{tmp_path / 'feedback.db'}") as store:
        store.add_impressions(impressions)
        store.add_events(events)
        labelled = label_impressions(store.read_impressions(), store.read_events())
    config = ExperimentConfig(min_detectable_effect=0.3)
    analysis = analyze_labelled(labelled, champion="a", challenger="b", config=config)
    path = trajectory(labelled, champion="a", challenger="b", config=config, points=8)
    assert len(path.times) == 8 and path.times == sorted(path.times)
    assert path.p_value[-1] == pytest.approx(analysis.test.p_value)
    assert (path.ci_low[-1], path.ci_high[-1]) == pytest.approx(
        (analysis.test.ci_low, analysis.test.ci_high))
    widths = [h - lo for lo, h in zip(path.ci_low, path.ci_high) if lo is not None]
    assert widths[0] > widths[-1]
    # The always-valid p-value never rises (a running minimum).
    values = [p for p in path.p_value if p is not None]
    assert all(b <= a + 1e-12 for a, b in itertools.pairwise(values))


def test_paths_are_shown_relative_to_where_the_console_runs(tmp_path, monkeypatch):
    from serving.console.formatting import where

    monkeypatch.chdir(tmp_path)
    assert where(tmp_path / "runs" / "mlflow.db") == "runs/mlflow.db"
    assert where(f"sqlite:///{tmp_path}/runs/feedback.db") == "sqlite:///runs/feedback.db"
    assert where("/elsewhere/x") == "/elsewhere/x"
    assert where("postgresql+psycopg://u@h/db") == "postgresql+psycopg://u@h/db"


def test_recent_reuses_a_read_for_its_seconds_and_never_keeps_failures():
    from serving.console.recent import Recent

    now = [0.0]
    recent = Recent(5.0, clock=lambda: now[0])
    calls = []

    def read():
        calls.append(now[0])
        return len(calls)

    assert recent.get("k", read) == 1 and recent.get("k", read) == 1
    now[0] = 5.1
    assert recent.get("k", read) == 2 and recent.get("other", read) == 3

    def fail():
        raise RuntimeError("store gone")

    with pytest.raises(RuntimeError):
        recent.get("f", fail)
    assert recent.get("f", read) == 4  # the failure was not kept
    recent.clear()
    assert recent.get("k", read) == 5


@contextlib.contextmanager
def _drift_section(tmp_path, decision, report_html: str):
    """The decision recorded by the monitoring step's own MLflow writer, with its report; yields
    a client of a console on that store and the Monitoring page's drift section."""
    from fastapi.testclient import TestClient

    from components.monitor_step import _log_to_mlflow
    from serving.console.app import create_app
    from serving.console.config import console_config
    from serving.console.state import build_console

    home = tmp_path / "home"
    home.mkdir()
    uri = f"sqlite:///{home / 'mlflow.db'}"
    report = tmp_path / "report"
    report.write_text(report_html)
    decision_file = tmp_path / "decision"
    decision_file.write_text(decision.to_json())
    _log_to_mlflow(uri, "recsys-monitoring", decision, report, decision_file)

    closed = "http://127.0.0.1:9"
    config = console_config(home, tracking_uri=uri, predictor_url=closed, events_url=closed,
                            timeout=1.0)
    with TestClient(create_app(build_console(config))) as client:
        page = client.get("/monitoring").text
        yield client, page[page.index('id="drift-title"'):page.index('id="runs-title"')]


def test_monitoring_marks_an_alert_apart_from_a_retraining_and_says_why(tmp_path):
    """A check whose reasons hold but that had no new data to retrain on is an `alert`: the
    page shows it in the warning colour (not as a healthy decision) with the reason it gave."""
    from components.monitoring.monitor import Decision

    decision = Decision(
        "alert", ["drift: requests.user_activity moved (p = 0.0001)"],
        {"requests.user_activity": {"p_value": 1e-4, "statistic": 0.31}},
        [], "v3", time.time(), {"rows": {"requests": 1000}},
        no_retrain_reason="no new data to retrain on")
    with _drift_section(tmp_path, decision, "<html><body>check</body></html>") as (_, section):
        assert '<span class="badge decision-continue">alert</span>' in section
        assert "Not retrained: no new data to retrain on" in section


def test_monitoring_shows_the_drift_decisions_recorded_in_mlflow(tmp_path):
    """A drift check recorded by the monitoring step's own MLflow writer, read back by the
    Monitoring page: the decision, its reasons, each feature's statistic and p-value, the
    report."""
    import re

    from components.monitoring.monitor import Decision

    decision = Decision(
        "retrain", ["drift: requests.user_activity moved (p = 0.0001)"],
        {"requests.user_activity": {"p_value": 1e-4, "statistic": 0.31},
         "scores.score": {"p_value": 0.4, "statistic": 0.02}},
        [], "v7", time.time(), {"rows": {"requests": 1000}})
    report = "<html><body><h1>Drift check</h1></body></html>"
    with _drift_section(tmp_path, decision, report) as (client, section):
        assert "retrain" in section and "champion <code>v7</code>" in section
        assert "drift: requests.user_activity moved (p = 0.0001)" in section
        assert re.search(r"requests\.user_activity</th><td class=\"num\">0\.3100</td>"
                         r"<td class=\"num\">0\.0001</td>", section)
        link = re.search(r'href="(/monitoring/drift/[0-9a-f]+/report)"', section).group(1)
        assert "<h1>Drift check</h1>" in client.get(link).text


def _console_client(home, uri):
    from fastapi.testclient import TestClient

    from serving.console.app import create_app
    from serving.console.config import console_config
    from serving.console.state import build_console

    closed = "http://127.0.0.1:9"
    config = console_config(home, tracking_uri=uri, predictor_url=closed, events_url=closed,
                            timeout=1.0)
    return TestClient(create_app(build_console(config)))


def test_models_page_compares_only_versions_of_one_data_set(tmp_path, small_model_dir):
    """Two versions on one source, then one on another with a far higher NDCG: two tables, each
    marking its own best, so the other data set's figure is not "best" over the first's. A
    version registered before identities were recorded sits with the oldest that records one."""
    import re

    from components.config import GateConfig, RegistryConfig
    from components.data.data_identity import identity_of
    from components.release.registry import register_model

    home = tmp_path / "home"
    home.mkdir()
    uri = f"sqlite:///{home / 'mlflow.db'}"

    def register(ndcg, identity, champion=None):
        results = {"two_stage": {"ndcg@10": ndcg, "recall@10": 0.2}}
        if champion:
            results["champion"] = {"ndcg@10": champion, "recall@10": 0.2}
        return register_model(small_model_dir, results=results, params={},
                              data_fingerprint="fp", gate_config=GateConfig(guardrails={}),
                              registry=RegistryConfig(), tracking_uri=uri,
                              data_identity=identity)

    register(0.05, None)  # v1: before identities
    movielens = identity_of("movielens-dslabs", range(300))
    register(0.10, movielens, champion=0.05)  # v2
    register(0.12, identity_of("movielens-dslabs", range(320)), champion=0.10)  # v3
    from mlflow import MlflowClient

    MlflowClient(tracking_uri=uri).set_registered_model_alias("recsys", "champion", "3")  # promoted
    assert register(0.60, identity_of("/data/ml100k.csv", range(100)), champion=0.01).alias is None
    with _console_client(home, uri) as client:
        page = client.get("/models").text
    tables = re.findall(r"<h3 id=\"dataset-\d\">Trained on (.*?)</h3>.*?<tbody>(.*?)</tbody>",
                        page, re.DOTALL)
    assert [label for label, _ in tables] == ["/data/ml100k.csv, 100 items",
                                              "movielens-dslabs, 320 items"]
    versions = [re.findall(r'href="#v(\d+)"', body) for _, body in tables]
    assert versions == [["4"], ["3", "2", "1"]]
    best = [re.findall(r'<td class="num best">([0-9.]+)', body) for _, body in tables]
    assert best[1][0] == "0.1200" and "0.6000" not in best[1]
    assert "Only versions trained on the same data set are compared" in page


def test_concluded_experiments_stay_on_the_experiments_page(tmp_path):
    """A promotion recorded by `recsys rollout analyze --auto`'s own MLflow writer, after which
    no challenger is tried: the page still says no challenger is being tried, and lists the
    concluded experiment with its decision, versions, figures, reasons and its analysis."""
    import html
    import sys
    from pathlib import Path

    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
    from experiment_data import experiment_feedback
    from fastapi.testclient import TestClient

    from components.config import ExperimentConfig
    from components.experiments.experiment import analyze_labelled, label_impressions
    from components.feedback.feedback_store import FeedbackStore
    from pipelines.cli.console import RolloutBackend
    from pipelines.cli.rollout_analyze import Target, record_decision
    from serving.console.app import create_app
    from serving.console.config import console_config
    from serving.console.state import build_console

    home = tmp_path / "home"
    home.mkdir()
    uri = f"sqlite:///{home / 'mlflow.db'}"
    impressions, events = experiment_feedback("a", "b", rate_a=0.04, rate_b=0.08, users=1_000,
                                              sessions=3_000, start=time.time() - 7_200)
    with FeedbackStore(f"sqlite:///{home / 'feedback.db'}") as store:
        store.add_impressions(impressions)
        store.add_events(events)
        labelled = label_impressions(store.read_impressions(), store.read_events())
    analysis = analyze_labelled(labelled, champion="a", challenger="b",
                                config=ExperimentConfig(min_detectable_effect=0.3))
    assert analysis.decision.action == "promote"
    run_id = record_decision(uri, "recsys-online", analysis,
                             Target("local", "a", "b", registry_champion="1",
                                    registry_challenger="2", tracking_uri=uri),
                             ["serving: version 2 now answers everyone (was 1)"])
    closed = "http://127.0.0.1:9"
    config = console_config(home, tracking_uri=uri, predictor_url=closed, events_url=closed,
                            timeout=1.0)
    backend = RolloutBackend(config.home, kind="local", tracking_uri=uri, name="recsys",
                             namespace="recsys", model_name="recsys",
                             metrics_url=f"{closed}/metrics", prometheus=closed)
    with TestClient(create_app(build_console(config, experiments=backend))) as client:
        page = client.get("/experiments").text
        evidence = client.get(f"/experiments/decisions/{run_id}/analysis.json")
        missing = client.get("/experiments/decisions/0123abcd/analysis.json")
    assert "no local deployment under" in page  # nothing is being tried now
    section = page[page.index('id="history-title"'):]
    assert "decision-promote" in section and "MLflow 2 <code>b</code>" in section
    assert f"{analysis.test.p_value:.4g}" in section
    assert f"{analysis.metrics['b']['ctr']:.4f}" in section
    assert analysis.decision.reasons[0] in html.unescape(section)
    assert "done: serving: version 2 now answers everyone" in section
    assert evidence.status_code == 200
    assert evidence.json()["decision"]["action"] == "promote"
    assert missing.status_code == 404


def test_the_simulation_registers_its_models_with_their_offline_metrics(tmp_path, small_dataset,
                                                                        small_model_dir):
    """`recsys simulate`'s registry: both versions carry the offline metrics of the evaluate
    step, so the Models page's table is not empty."""
    import re

    from components.config import SplitConfig
    from components.data.split import split_interactions
    from components.evaluation.offline_eval import evaluate_model
    from components.models.artifact import load_model
    from pipelines.cli.simulate import _register

    home = tmp_path / "home"
    home.mkdir()
    test = split_interactions(small_dataset.interactions, SplitConfig()).test
    results = evaluate_model(load_model(small_model_dir), test)
    uri = _register(home, small_model_dir, small_model_dir, (results, results))
    with _console_client(home, uri) as client:
        page = client.get("/models").text
    table = page[page.index('id="metrics-title"'):page.index('id="versions-title"')]
    assert re.findall(r'href="#v(\d+)"', table) == ["2", "1"]
    assert f"{results['two_stage']['ndcg@10']:.4f}" in table


def test_a_bad_monitoring_window_is_a_400_and_the_cache_stays_bounded(client):
    """`window` is checked before anything is computed or kept: an unknown value is a 400
    naming the allowed ones, made-up values never reach the cache, and the cache holds at most
    its size whatever the keys."""
    from serving.console.recent import Recent

    test_client, _ = client
    console = test_client.app.state.console
    bad = test_client.get("/monitoring", params={"window": "13d"})
    assert bad.status_code == 400
    assert "window must be one of 1h, 24h, 7d, 30d, not &#39;13d&#39;" in bad.text
    for n in range(40):
        assert test_client.get("/monitoring", params={"window": f"{n}x"}).status_code == 400
    assert len(console.recent) == 0
    for window in ("1h", "24h", "7d", "30d", ""):
        assert test_client.get("/monitoring", params={"window": window}).status_code == 200
    assert len(console.recent) == 4  # "" is the default window, 24h

    recent = Recent(60.0, max_entries=3)
    calls = []
    for key in ["a", "b", "c", "a", "d", "e"]:
        recent.get(key, lambda key=key: calls.append(key) or key)
    assert len(recent) == 3 and len(recent._locks) == 3
    assert calls == ["a", "b", "c", "d", "e"]  # "a" was reused while it was kept
    recent.get("a", lambda: calls.append("a again"))  # kept: used after "b" and "c" were
    recent.get("b", lambda: calls.append("b again"))  # the least recently used: dropped
    assert calls[-2:] == ["e", "b again"]


def test_a_read_only_console_stores_no_events(tmp_path):
    """With a real events service behind it, a read-only console refuses Try it's feedback
    (403, in words) and nothing reaches the store; the same post to a console that is not
    read-only is stored, so the refusal is the console's and not the service's."""
    import sys
    from pathlib import Path

    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
    from events_process import start_service, stop_service
    from fastapi.testclient import TestClient

    from components.feedback.feedback_store import FeedbackStore
    from serving.console.app import create_app
    from serving.console.config import console_config
    from serving.console.state import build_console

    store = f"sqlite:///{tmp_path / 'feedback.db'}"
    process, events_url = start_service(store, tmp_path / "events.log")
    form = {"user": "u1", "item": "i1", "action": "like", "request_id": "r1",
            "model_version": "v1", "position": "0"}
    try:
        for read_only in (True, False):
            config = console_config(tmp_path / "home", tracking_uri=None, store_url=store,
                                    predictor_url="http://127.0.0.1:9", events_url=events_url,
                                    read_only=read_only, timeout=2.0)
            with TestClient(create_app(build_console(config))) as client:
                token = form_token(client.get("/try"))
                answer = client.post("/try/feedback", data={**form, "token": token})
            with FeedbackStore(store, create=False) as feedback:
                stored = len(feedback.read_events())
            if read_only:
                assert answer.status_code == 403
                assert "This console is read-only: it stores no feedback events" in answer.text
                assert stored == 0
            else:
                assert answer.status_code == 200 and stored == 1, answer.text[-1000:]
    finally:
        stop_service(process)


def test_compare_shows_why_each_item_from_a_real_explanation(small_model_dir):
    from components.models.artifact import load_model
    from components.models.explain import explain_recommendations

    model = load_model(small_model_dir)
    items = model.data_.items
    catalogue = _Catalogue(dict(zip(items["item_id"].astype(str), items["title"].astype(str))))
    user = str(model.data_.user_ids[0])
    ids = model.recommend([user], 4).item_ids[0].tolist()
    explanation = explain_recommendations(model, user, ids)
    answer = Answer(user, ids, [0.0] * 4, "v1", "req", 1.0, False, explanation=explanation)
    shown = tryit.compare(answer, catalogue, before=None)
    for entry, explained in zip(shown.items, explanation["items"]):
        why, titles = entry.why, [b["title"] for b in explained["because"]]
        assert why.because == titles and why.because_text() == (
            "Because you liked " + ", ".join(titles[:tryit.BECAUSE_SHOWN]))
        assert why.bias + sum(v for _, v in why.groups) == pytest.approx(why.score, abs=1e-6)
        magnitudes = [abs(v) for _, v in why.groups]
        assert magnitudes == sorted(magnitudes, reverse=True)
    assert shown.items[0].why.next_title == explanation["items"][1]["title"]
    assert shown.items[0].why.versus("popularity") == pytest.approx(
        explanation["items"][0]["versus_next"]["groups"]["popularity"])
    assert shown.items[-1].why.next_title is None
    cold = explain_recommendations(model, "nobody-at-all", ids)
    shown = tryit.compare(Answer("x", ids, [0.0] * 4, "v1", "r", 1.0, True, explanation=cold),
                          catalogue, before=None)
    assert {e.why.because_text() for e in shown.items} == {"Most popular"}
    plain = tryit.compare(_answer(["a"]), _Catalogue({"a": "A"}), before=None)
    assert plain.items[0].why is None  # an answer without an explanation shows none
