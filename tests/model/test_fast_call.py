"""The fast single-user model call answers what the straightforward computation answers.

The reference below is the scoring path as first written: the ALS user step by a general
solve on factors converted to float64 on the spot, every generator scoring the whole
catalogue, the vectorised features and LightGBM on its default threads. The served path must
return the same items and, to float tolerance, the same scores, for many users whose history
just changed (training history plus a few new items) and for users unseen in training.
"""

from __future__ import annotations

import numpy as np
import pytest
import scipy.sparse as sp
from histories import grown_histories

from components.models.artifact import load_model
from components.models.base import USER_TIMES, history_matrix, one_row_history
from components.models.features import build_candidates, top_n
from components.models.two_stage import _ONE_BY_ONE_USERS

FALLBACK_OFFSET = -1e4


def reference_user_factors(als, users: np.ndarray, history: sp.csr_matrix) -> np.ndarray:
    out = np.empty((history.shape[0], als.item_factors_.shape[1]), dtype=np.float32)
    y = als.item_factors_.astype(np.float64)
    gram = y.T @ y + als.regularization * np.eye(y.shape[1])
    for row in range(history.shape[0]):
        if users[row] >= 0:
            out[row] = als.user_factors_[users[row]]
            continue
        picked = y[history.indices[history.indptr[row] : history.indptr[row + 1]]]
        a = gram + (als.alpha - 1.0) * picked.T @ picked
        out[row] = np.linalg.solve(a, als.alpha * picked.sum(axis=0))
    return out


def reference_recommend(model, users: np.ndarray, history: sp.csr_matrix, k: int):
    scores = {}
    for name, gen in model.generators_.items():
        if name == "als":
            scores[name] = reference_user_factors(gen, users, history) @ gen.item_factors_.T
        else:
            scores[name] = gen.score(users, history)
    user_time = np.repeat(model.stats_.history_time(history)[:, None], len(USER_TIMES), axis=1)
    known = users >= 0
    user_time[known] = model.user_time_[users[known]]
    cand = build_candidates(
        scores, history, model.stats_, model.config.ranker.candidates_per_generator, user_time
    )
    popularity = model.stats_.log_popularity
    final = np.broadcast_to(
        FALLBACK_OFFSET + popularity / (popularity.max() + 1), history.shape
    ).copy()
    final[cand.rows, cand.items] = model.ranker_.predict(cand.features)
    cold = np.diff(history.indptr) == 0
    final[cold] = model.cold_start_scores(popularity)
    final = np.where(history.toarray() > 0, -np.inf, final).astype(np.float32)
    top = top_n(final, k)
    return model.data_.item_ids[top], np.take_along_axis(final, top, axis=1)


@pytest.fixture(scope="module")
def model(small_model_dir):
    loaded = load_model(small_model_dir)
    assert loaded.ranker_ is not None and "als" in loaded.generators_  # the full path is tested
    return loaded


def test_als_user_step_matches_the_general_solve(model):
    als = model.generators_["als"]
    rows = np.arange(model.data_.n_users)
    history = history_matrix(
        model.data_.item_ids, grown_histories(model, rows, 3, seed=1), model.data_.n_items
    )
    users = np.full(len(rows), -1)
    np.testing.assert_allclose(
        als.user_factors(users, history),
        reference_user_factors(als, users, history),
        rtol=1e-6,
        atol=1e-7,
    )


@pytest.mark.parametrize("fresh", [1, 3])
def test_single_user_calls_with_a_changed_history_answer_as_the_reference(model, fresh):
    rows = np.arange(model.data_.n_users)
    histories = grown_histories(model, rows, fresh, seed=fresh)
    for row, history in zip(rows, histories):
        user = str(model.data_.user_ids[row])
        got = model.recommend([user], 10, history_item_ids=[history])
        matrix = history_matrix(model.data_.item_ids, [history], model.data_.n_items)
        items, scores = reference_recommend(model, np.array([-1]), matrix, 10)
        np.testing.assert_array_equal(got.item_ids, items, err_msg=f"user {user}")
        np.testing.assert_allclose(got.scores, scores, rtol=1e-6, atol=1e-9, err_msg=f"user {user}")


def test_unseen_users_with_a_history_answer_as_the_reference(model):
    rng = np.random.default_rng(5)
    ids = model.data_.item_ids
    for n in range(60):
        history = rng.choice(ids, 1 + n % 12, replace=False).tolist()
        got = model.recommend([f"new-{n}"], 10, history_item_ids=[history])
        matrix = history_matrix(ids, [history], model.data_.n_items)
        items, scores = reference_recommend(model, np.array([-1]), matrix, 10)
        np.testing.assert_array_equal(got.item_ids, items)
        np.testing.assert_allclose(got.scores, scores, rtol=1e-6, atol=1e-9)


def test_a_batch_of_changed_histories_answers_as_single_calls(model):
    rows = np.arange(0, model.data_.n_users, 3)
    histories = grown_histories(model, rows, 3, seed=9)
    users = [str(u) for u in model.data_.user_ids[rows]]
    batch = model.recommend(users, 10, history_item_ids=histories)
    for i, (user, history) in enumerate(zip(users, histories)):
        one = model.recommend([user], 10, history_item_ids=[history])
        np.testing.assert_array_equal(one.item_ids[0], batch.item_ids[i])
        np.testing.assert_allclose(one.scores[0], batch.scores[i], rtol=1e-6, atol=1e-9)


def test_single_calls_answer_as_the_batch_path_in_every_case(model):
    """Known users as trained, with exclusions, with a history that adds nothing or names
    unknown items, unseen users without a history, and k beyond the catalogue: a call for one
    user answers what the same user gets within a batch (the vectorised path)."""
    rng = np.random.default_rng(11)
    data = model.data_
    ids = data.item_ids
    cases = []
    for row in range(0, data.n_users, 4):
        user = str(data.user_ids[row])
        trained = ids[data.matrix.indices[data.matrix.indptr[row] : data.matrix.indptr[row + 1]]]
        cases += [
            (user, 10, None, None),
            (user, 10, [rng.choice(ids, 5).tolist()], None),
            (user, 10, None, [trained[:3].tolist() + ["no-such-item"]]),
            (user, 7, [rng.choice(ids, 2).tolist()], [rng.choice(ids, 4).tolist()]),
        ]
    cases += [("nobody", 10, None, None), ("nobody", 10, None, [["no-such-item"]])]
    cases += [(str(data.user_ids[0]), data.n_items + 5, None, None)]
    others = [f"someone-else-{n}" for n in range(_ONE_BY_ONE_USERS)]  # past the one-by-one batches
    for user, k, exclude, history in cases:
        one = model.recommend([user], k, exclude_item_ids=exclude, history_item_ids=history)
        both = model.recommend(
            [user, *others],
            k,
            exclude_item_ids=None if exclude is None else exclude + [[]] * len(others),
            history_item_ids=None if history is None else history + [[ids[0]]] * len(others),
        )
        np.testing.assert_array_equal(one.item_ids[0], both.item_ids[0], err_msg=user)
        np.testing.assert_allclose(one.scores[0], both.scores[0], rtol=1e-6, atol=1e-9)
        assert one.cold_start[0] == both.cold_start[0]


@pytest.mark.parametrize("name", ["ease", "seq_ease"])
def test_one_user_ease_scores_are_the_sparse_products(model, name):
    gen = model.generators_[name]
    rows = np.arange(model.data_.n_users)
    for history in grown_histories(model, rows, 3, seed=4) + [[], ["no-such-item"]]:
        matrix = history_matrix(model.data_.item_ids, [history], model.data_.n_items)
        expected = np.zeros((1, gen.n_items_), dtype=np.float32)
        expected[:, gen.items_] = np.asarray(matrix[:, gen.items_] @ gen.weights_)
        np.testing.assert_array_equal(gen.score(np.array([-1]), matrix), expected)


def test_small_batches_answered_one_by_one_answer_as_the_batch_path(model):
    """Batches of up to `_ONE_BY_ONE_USERS` users are answered user by user; the same users
    within a larger batch (the vectorised path) get the same answers, a user with no history
    (who sends the small batch to the batch path) included."""
    rows = np.arange(0, model.data_.n_users, 5)
    histories = grown_histories(model, rows, 2, seed=13)
    users = [str(u) for u in model.data_.user_ids[rows]]
    for size in range(2, _ONE_BY_ONE_USERS + 1):
        for start in range(0, len(users) - size, size):
            picked = users[start : start + size]
            extra = histories[start : start + size]
            if start % 3 == 0:
                picked, extra = [*picked[:-1], "nobody"], [*extra[:-1], []]
            small = model.recommend(picked, 10, history_item_ids=extra)
            large = model.recommend(picked + users[:_ONE_BY_ONE_USERS], 10,
                                    history_item_ids=extra + histories[:_ONE_BY_ONE_USERS])
            np.testing.assert_array_equal(small.item_ids, large.item_ids[:size])
            np.testing.assert_allclose(small.scores, large.scores[:size], rtol=1e-6, atol=1e-9)
            np.testing.assert_array_equal(small.cold_start, large.cold_start[:size])


def test_every_generator_scores_one_user_as_its_batch_score(model):
    """`score_one` (a user's sorted item indices, no sparse matrix) gives the bits `score`
    gives on the same one-row history: trained users, grown histories, an empty one."""
    data = model.data_
    rows = np.arange(0, data.n_users, 2)
    cases = [model.one_user_history(str(data.user_ids[r]), None) for r in rows[::2]]
    cases += [model.one_user_history(str(data.user_ids[r]), h)
              for r, h in zip(rows, grown_histories(model, rows, 3, seed=21))]
    cases += [(-1, np.zeros(0, dtype=np.int64))]
    for name, gen in model.generators_.items():
        for user, seen in cases:
            want = gen.score(np.array([user]), one_row_history(seen, data.n_items))[0]
            got = gen.score_one(user, seen)
            assert got.dtype == want.dtype, name
            np.testing.assert_array_equal(got.view(np.uint8), want.view(np.uint8), err_msg=name)
