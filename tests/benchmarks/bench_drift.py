"""Drift detection on the default data (`make bench`): false alarms on stationary windows,
detection of planted shifts, the smallest window each shift is caught at, and the cost.

The model is trained on the temporal split's training part, as the pipeline does. The held-out
interactions are cut at random in two halves: one is the reference (what `fit_references`
fits, as the train step does on all of the held-out part), the other is where the windows are
drawn from, so that a stationary window is new data from the same period and never the
reference itself. A window of n is n held-out interactions drawn at random: n requests (each by
the interaction's user, answered as the model answers) and n rating events. Shifts are planted
on windows (tests/drift_shifts.py). The check is the product's: the same tables, detectors,
correction and thresholds (`monitoring` defaults).
"""

from __future__ import annotations

import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from scipy.stats import chi2_contingency, ks_2samp

from components.config import Config
from components.data.ingest import load_dataset
from components.data.split import split_interactions
from components.models.two_stage import TwoStageRecommender
from components.monitoring.drift import fit_detectors, run_detectors
from components.monitoring.drift_features import (
    ModelFacts,
    event_table,
    rating_table,
    reference_tables,
    score_table,
    served_table,
)

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import drift_shifts  # tests/ is not a package: its directory is on the path above

pytestmark = pytest.mark.bench

WINDOWS = (50, 100, 200, 500, 1000, 2000)
STATIONARY_WINDOWS = 200
SHIFTED_WINDOWS = 100
SHIFTS = {
    "segment (Comedy quarter)": lambda pool, w, n, ctx, rng: drift_shifts.segment(
        pool, n, ctx, rng
    ),
    "new items (25%)": lambda pool, w, n, ctx, rng: drift_shifts.new_items(w, ctx, rng, 0.25),
    "new items (10%)": lambda pool, w, n, ctx, rng: drift_shifts.new_items(w, ctx, rng, 0.10),
    "popularity inverted": lambda pool, w, n, ctx, rng: drift_shifts.popularity_inverted(
        w, ctx, rng
    ),
    "ratings -1 star": lambda pool, w, n, ctx, rng: drift_shifts.ratings_shifted(w, ctx, rng, 1.0),
    "ratings -0.5 star": lambda pool, w, n, ctx, rng: drift_shifts.ratings_shifted(
        w, ctx, rng, 0.5
    ),
}


class Checker:
    """The monitoring check on a window of held-out interactions."""

    def __init__(self, model, reference: pd.DataFrame, config: Config):
        self.config = config.monitoring
        self.profile, tables = reference_tables(
            model, reference, buckets=self.config.buckets, max_rows=self.config.reference_size
        )
        self.detectors = fit_detectors(
            tables, p_value=self.config.p_value, correction=self.config.correction
        )
        self.facts = ModelFacts.from_model(model)
        users = self.facts.user_ids
        answers = model.recommend(users.tolist(), 10)
        self.answers = dict(zip(users, zip(answers.item_ids.tolist(), answers.scores.tolist())))

    def served(self, window: pd.DataFrame) -> pd.DataFrame:
        answered = [self.answers[u] for u in window["user_id"].astype(str)]
        return pd.DataFrame(
            {
                "user_id": window["user_id"].astype(str).to_numpy(),
                "k": 10,
                "item_ids": [a[0] for a in answered],
                "scores": [a[1] for a in answered],
            }
        )

    def tables(self, window: pd.DataFrame) -> dict:
        served = self.served(window)
        return {
            "requests": served_table(served, self.facts, self.profile),
            "scores": score_table(served),
            "events": event_table(window, self.facts, self.profile),
            "ratings": rating_table(window["rating"].to_numpy(float), self.profile),
        }

    def detect(self, tables: dict) -> tuple[bool, set[str]]:
        results = run_detectors(self.detectors, tables)
        return any(r.drift for r in results), {r.view for r in results if r.drift}

    def __call__(self, window: pd.DataFrame) -> tuple[bool, set[str]]:
        return self.detect(self.tables(window))

    def scipy_directly(self, tables: dict) -> None:
        """The baseline: the same tests, called on the same tables with scipy itself."""
        for name, table in tables.items():
            reference = self.detectors[name].x_ref
            for i, categorical in enumerate(table.categorical):
                ref, cur = reference[:, i], table.values[:, i]
                if categorical:
                    codes = np.union1d(ref, cur)
                    counts = np.vstack(
                        [(ref[:, None] == codes).sum(0), (cur[:, None] == codes).sum(0)]
                    )
                    chi2_contingency(counts)
                else:
                    ks_2samp(ref, cur, mode="asymp")


def _as_table(name: str, values: np.ndarray):
    from components.monitoring.drift_features import VIEWS, FeatureTable

    names, categorical = zip(*VIEWS[name])
    return FeatureTable(name, names, categorical, values)


@pytest.fixture(scope="module")
def setup():
    config = Config()
    data = load_dataset()
    parts = split_interactions(data.interactions, config.split)
    started = time.perf_counter()
    model = TwoStageRecommender(config.model, config.split).fit(
        parts.train, data.items, progress=lambda _: None
    )
    print(
        f"\nmodel fitted in {time.perf_counter() - started:.0f}s on {len(parts.train):,} "
        f"interactions; {len(parts.test):,} held out"
    )
    heldout = parts.test.reset_index(drop=True)
    half = np.random.default_rng(0).random(len(heldout)) < 0.5
    reference, pool = heldout[half].reset_index(drop=True), heldout[~half].reset_index(drop=True)
    started = time.perf_counter()
    checker = Checker(model, reference, config)
    fit_seconds = time.perf_counter() - started
    ctx = drift_shifts.ShiftContext.build(parts.train, data.items)
    return model, checker, pool, ctx, fit_seconds


@pytest.mark.timeout(5400)
def test_false_alarms_and_detection_on_planted_shifts(setup):
    _, checker, pool, ctx, fit_seconds = setup
    default = checker.config.window_size
    rng = np.random.default_rng(42)
    rows, alarms_by_view, cost = [], {}, {}
    for n in WINDOWS:
        alarms, spent = 0, np.zeros(3)
        views: dict[str, int] = {}
        for _ in range(STATIONARY_WINDOWS):
            window = pool.iloc[rng.choice(len(pool), n, replace=False)]
            t0 = time.perf_counter()
            tables = checker.tables(window)
            t1 = time.perf_counter()
            drift, flagged = checker.detect(tables)
            t2 = time.perf_counter()
            checker.scipy_directly(tables)  # the baseline, same run, same tables
            spent += (t1 - t0, t2 - t1, time.perf_counter() - t2)
            alarms += drift
            for v in flagged:
                views[v] = views.get(v, 0) + 1
        cost[n] = spent / STATIONARY_WINDOWS
        alarms_by_view[n] = views
        detected = {}
        for name, shift in SHIFTS.items():
            hits = 0
            for _ in range(SHIFTED_WINDOWS):
                window = pool.iloc[rng.choice(len(pool), n, replace=False)]
                hits += checker(shift(pool, window, n, ctx, rng))[0]
            detected[name] = hits / SHIFTED_WINDOWS
        rows.append((n, alarms / STATIONARY_WINDOWS, detected))

    print(
        f"\nreference: {checker.detectors['events'].x_ref.shape[0]:,} rows per view; detectors "
        f"fitted in {fit_seconds:.1f}s; p_value {checker.config.p_value} over 4 views "
        f"({checker.config.correction} within each)"
    )
    names = list(SHIFTS)
    print(
        f"window | false alarms (of {STATIONARY_WINDOWS}) | "
        + " | ".join(f"{s} (of {SHIFTED_WINDOWS})" for s in names)
    )
    for n, false_alarms, detected in rows:
        print(f"{n:>6} | {false_alarms:.1%} | " + " | ".join(f"{detected[s]:.0%}" for s in names))
    for s in names:
        smallest = next((n for n, _, d in rows if d[s] >= 0.95), None)
        print(f"smallest window detecting '{s}' in >= 95% of windows: {smallest}")
    print("false alarms by view: " + "; ".join(f"{n}: {alarms_by_view[n]}" for n in WINDOWS))
    print(
        "window | feature tables | alibi-detect tests | the same tests with scipy directly | ratio"
    )
    for n in WINDOWS:
        tables_s, alibi_s, scipy_s = cost[n]
        print(
            f"{n:>6} | {tables_s * 1000:.1f} ms | {alibi_s * 1000:.1f} ms "
            f"| {scipy_s * 1000:.1f} ms | {alibi_s / scipy_s:.2f}x"
        )

    # The same kind of stationary windows at the common 0.05, for comparison with the default.
    loose = fit_detectors(
        {name: _as_table(name, d.x_ref) for name, d in checker.detectors.items()},
        p_value=0.05,
        correction=checker.config.correction,
    )
    for n in (200, default):
        alarms = 0
        for _ in range(STATIONARY_WINDOWS):
            tables = checker.tables(pool.iloc[rng.choice(len(pool), n, replace=False)])
            alarms += any(r.drift for r in run_detectors(loose, tables))
        print(
            f"at p_value 0.05: {alarms / STATIONARY_WINDOWS:.1%} false alarms over "
            f"{STATIONARY_WINDOWS} stationary {n}-row windows"
        )

    at_default = next(r for r in rows if r[0] == default)
    assert at_default[1] <= 0.05, f"false alarm rate {at_default[1]:.1%} at the default window"
    for s in (
        "segment (Comedy quarter)",
        "new items (25%)",
        "popularity inverted",
        "ratings -1 star",
    ):
        assert at_default[2][s] >= 0.95, f"{s}: {at_default[2][s]:.0%} at the default window"
