"""ALS fits on every core; its factors must not depend on how many there are."""
from __future__ import annotations

import numpy as np
import pandas as pd

from components.models.als import AlsModel
from components.models.base import build_training_data


def _data(n_users: int = 400, n_items: int = 300, n: int = 12_000):
    rng = np.random.default_rng(3)
    # Popular items and active users, as real data: uneven rows keep the threads' shares unequal.
    items = rng.zipf(1.6, n) % n_items
    users = rng.zipf(1.4, n) % n_users
    frame = pd.DataFrame({"user_id": users.astype(str), "item_id": items.astype(str)})
    return build_training_data(frame.drop_duplicates())


def test_factors_are_the_same_on_one_thread_and_on_two():
    data = _data()
    one = AlsModel(factors=8, iterations=5, threads=1).fit(data)
    two = AlsModel(factors=8, iterations=5, threads=2).fit(data)
    np.testing.assert_array_equal(one.item_factors_, two.item_factors_)
    np.testing.assert_array_equal(one.user_factors_, two.user_factors_)
    # and a second fit on two threads repeats itself
    again = AlsModel(factors=8, iterations=5, threads=2).fit(data)
    np.testing.assert_array_equal(two.item_factors_, again.item_factors_)


def test_a_different_seed_gives_different_factors():
    """The comparison above can fail: the factors do depend on what the fit is given."""
    data = _data()
    a = AlsModel(factors=8, iterations=5, seed=1).fit(data)
    b = AlsModel(factors=8, iterations=5, seed=2).fit(data)
    assert not np.array_equal(a.item_factors_, b.item_factors_)
