"""The ranker's user-relative features, checked against values worked out by hand."""
from __future__ import annotations

import numpy as np
import pandas as pd

from components.models.base import build_training_data
from components.models.features import ItemStats, build_candidates, feature_names

DAY = 86_400.0


def _data():
    # Items a, b, c, d; user u1 saw a and b on days 10 and 12, u2 saw a, c, d on days 20 to 40.
    interactions = pd.DataFrame({
        "user_id": ["u1", "u1", "u2", "u2", "u2"],
        "item_id": ["a", "b", "a", "c", "d"],
        "timestamp": [10 * DAY, 12 * DAY, 20 * DAY, 30 * DAY, 40 * DAY],
    })
    items = pd.DataFrame({"item_id": ["a", "b", "c", "d"], "title": ["A", "B", "C", "D"],
                          "genres": ["x", "x", "y", "y"], "year": [1990, 2000, np.nan, 1980]})
    return build_training_data(interactions, items)


def _columns(data):
    """u1's candidates c and d (scored by one generator), as {feature: {item: value}}."""
    stats = ItemStats.from_training(data)
    user_time = data.user_times()[[0]]
    scores = {"g": np.array([[4.0, 3.0, 2.0, 1.0]])}
    cand = build_candidates(scores, data.matrix[[0]], stats, 4, user_time)
    names = feature_names(["g"])
    return {name: dict(zip(data.item_ids[cand.items], cand.features[:, i].astype(float)))
            for i, name in enumerate(names)}, stats


def test_user_window_and_times():
    data = _data()
    assert data.user_first_time.tolist() == [10 * DAY, 20 * DAY]
    assert data.user_last_time.tolist() == [12 * DAY, 40 * DAY]
    columns, _ = _columns(data)
    assert set(columns["item_first_seen_after_user_last_days"]) == {"c", "d"}  # a, b are seen
    # c first used on day 30, u1 last active on day 12; d last used on day 40, u1 first on day 10.
    assert columns["item_first_seen_after_user_last_days"]["c"] == 18.0
    assert columns["item_last_seen_before_user_first_days"]["d"] == -30.0
    # Training ends on day 40: c was last used 10 days before, d on the day.
    assert columns["item_days_since_last_seen"] == {"c": 10.0, "d": 0.0}


def test_taste_for_popularity_and_year():
    data = _data()
    columns, stats = _columns(data)
    share = stats.log_share
    item = {i: k for k, i in enumerate(data.item_ids)}
    user_share = (share[item["a"]] + share[item["b"]]) / 2
    assert np.isclose(columns["item_share_over_user_mean"]["c"], share[item["c"]] - user_share, atol=1e-5)
    assert columns["item_year_over_user_mean"]["d"] == 1980 - 1995
    assert np.isnan(columns["item_year_over_user_mean"]["c"])  # c's year is unknown
