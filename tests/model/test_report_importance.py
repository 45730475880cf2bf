"""The training report's ranker importance: LightGBM's gain, grouped as the explanations are."""
from __future__ import annotations

import math

import pytest

from components.evaluation.report import render_html_report
from components.models.artifact import load_model
from components.models.explain import FEATURE_GROUPS, feature_group
from components.steps import ranker_importance


def test_importance_groups_the_rankers_gain_and_shows_in_the_report(small_model_dir):
    model = load_model(small_model_dir)
    booster = model.ranker_
    assert booster is not None, "the small model is expected to keep its ranker"
    importance = ranker_importance(model)
    gains = dict(zip(booster.feature_name(), booster.feature_importance(importance_type="gain")))
    assert set(importance) == {feature_group(n) for n in gains} and set(importance) <= set(FEATURE_GROUPS)
    assert math.isclose(sum(importance.values()), sum(gains.values()), rel_tol=1e-9)
    scores = sum(g for n, g in gains.items() if n.endswith(("_z", "_relative")))
    assert importance["generator scores"] == pytest.approx(scores)
    page = render_html_report({"two_stage": {"ndcg@10": 0.3}}, title="t",
                              feature_importance=importance)
    section = page[page.index("Ranker feature importance (gain)"):]
    top = max(importance, key=importance.get)
    assert section.index(f"<th>{top}</th>") < min(
        section.index(f"<th>{g}</th>") for g in importance if g != top)


def test_no_ranker_no_importance(small_model_dir):
    model = load_model(small_model_dir)
    model.ranker_ = None
    assert ranker_importance(model) is None
