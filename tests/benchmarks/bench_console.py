"""The console's cost: page load time and bytes downloaded per page, in a real browser, and a
load run on its two busiest routes.

Same stack as the browser tests (the small synthetic models, the real predictor, events service
and console). Figures are ratios against baselines measured in the same run:
- a page's load time against the console's smallest answer (`/healthz`, through the same
  browser): what rendering the page costs over a round trip; "first byte" within the seconds the
  console reuses a read, "full read" after them (MLflow, the store and the analysis read anew);
- Try it against a direct v2 call to the predictor for the same user (what the console adds to
  the answer it shows);
- requests/s of Try it and Models under 8 concurrent clients against `/healthz` under the same
  load.
"""
from __future__ import annotations

import statistics
import sys
import threading
import time
from pathlib import Path

import httpx
import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from browser import launch, measure
from console_home import build_home
from console_stack import start_console, start_events, start_predictor

from serving.console.registry_view import RECENT_SECONDS

pytestmark = pytest.mark.bench
PAGES = {"try": "/try?user={user}", "experiments": "/experiments", "monitoring": "/monitoring",
         "models": "/models"}
LOAD_SECONDS = 15
CLIENTS = 8


@pytest.fixture(scope="module")
def stack(tmp_path_factory, small_dataset):
    from components.config import SplitConfig
    from components.data.split import split_interactions
    from components.models.two_stage import TwoStageRecommender

    work = tmp_path_factory.mktemp("console-bench")
    split = split_interactions(small_dataset.interactions, SplitConfig())
    model = TwoStageRecommender().fit(split.train, small_dataset.items, progress=lambda _: None)
    built = build_home(work / "home", small_dataset, split.test, model, model)
    services = []
    try:
        predictor = start_predictor(built.home, work)
        services.append(predictor)
        events = start_events(built.home, work)
        services.append(events)
        console = start_console(built.home, work, predictor=predictor.url, events=events.url)
        services.append(console)
        yield built, predictor, console
    finally:
        for service in reversed(services):
            service.stop()


def _median(samples: list[dict], key: str) -> float:
    return statistics.median(s[key] for s in samples)


def test_page_load_and_download_size(stack):
    from playwright.sync_api import sync_playwright

    built, predictor, console = stack
    user = built.users[3]
    rounds = 3
    urls = {name: console.url + path.format(user=user) for name, path in PAGES.items()}
    with sync_playwright() as playwright:
        browser = launch(playwright)
        for url in [console.url + "/healthz", *urls.values()]:  # imports, first connections
            measure(browser, url)
        baseline = [measure(browser, console.url + "/healthz") for _ in range(rounds)]
        results, fresh = {}, {}
        for name, url in urls.items():
            fresh[name], results[name] = [], []
            for _ in range(rounds):
                time.sleep(RECENT_SECONDS + 0.2)  # past what the console reuses: a full read
                fresh[name].append(measure(browser, url))
                results[name].append(measure(browser, url))  # within it: the reused read
        results["try (phone)"] = [measure(browser, urls["try"],
                                          viewport={"width": 390, "height": 844})
                                  for _ in range(rounds)]
        browser.close()
    direct = []
    with httpx.Client() as client:
        for _ in range(20):
            started = time.perf_counter()
            client.post(f"{predictor.url}/v2/models/recsys/infer", json={"inputs": [
                {"name": "user_id", "datatype": "BYTES", "shape": [1], "data": [user]}]})
            direct.append((time.perf_counter() - started) * 1e3)
    base_ms = _median(baseline, "load_ms")
    print(f"\nbaseline /healthz in the browser: {base_ms:.1f} ms; direct v2 call "
          f"{statistics.median(direct):.1f} ms (median of {rounds} cold loads each)")
    print(f"{'page':<13} {'loaded':>8} {'x healthz':>10} {'first byte':>11} {'full read':>10} "
          f"{'requests':>9} {'downloaded':>11} {'unpacked':>9}")
    for name, samples in results.items():
        assert all(s["status"] == 200 and not s["errors"] for s in samples), samples
        load = _median(samples, "load_ms")
        full = (f"{_median(fresh[name], 'first_byte_ms'):>7.0f} ms" if name in fresh
                else f"{'-':>10}")
        print(f"{name:<13} {load:>5.0f} ms {load / base_ms:>9.1f}x "
              f"{_median(samples, 'first_byte_ms'):>8.0f} ms {full} {samples[0]['requests']:>9} "
              f"{_median(samples, 'transferred_bytes') / 1024:>8.1f} kB "
              f"{_median(samples, 'body_bytes') / 1024:>6.1f} kB")
    try_first_byte = _median(results["try"], "first_byte_ms")
    print(f"Try it's first byte / a direct predictor call: "
          f"{try_first_byte / statistics.median(direct):.1f}x")
    # What no page may exceed, whatever the machine: everything ships with the page.
    assert all(s["requests"] <= 4 for samples in results.values() for s in samples)


def _hammer(url: str, seconds: float) -> tuple[int, list[float], int]:
    latencies: list[float] = []
    failures = 0
    lock = threading.Lock()
    deadline = time.monotonic() + seconds

    def worker():
        nonlocal failures
        with httpx.Client(timeout=30) as client:
            while time.monotonic() < deadline:
                started = time.perf_counter()
                status = client.get(url).status_code
                elapsed = time.perf_counter() - started
                with lock:
                    latencies.append(elapsed)
                    failures += status >= 500

    threads = [threading.Thread(target=worker) for _ in range(CLIENTS)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    return len(latencies), latencies, failures


def test_load_on_try_it_and_models(stack):
    built, _, console = stack
    user = built.users[3]
    print(f"\n{CLIENTS} clients, {LOAD_SECONDS} s each")
    base_n, base_lat, _ = _hammer(console.url + "/healthz", LOAD_SECONDS)
    base_rate = base_n / LOAD_SECONDS
    print(f"/healthz: {base_rate:.0f} req/s, p99 {sorted(base_lat)[int(0.99 * base_n)] * 1e3:.0f} ms")
    for path in (f"/try?user={user}", "/models"):
        n, latencies, failures = _hammer(console.url + path, LOAD_SECONDS)
        p99 = sorted(latencies)[int(0.99 * n)] * 1e3
        print(f"{path.split('?')[0]}: {n / LOAD_SECONDS:.0f} req/s "
              f"({n / LOAD_SECONDS / base_rate:.2f}x /healthz), p99 {p99:.0f} ms, "
              f"{failures} failures")
        assert failures == 0
