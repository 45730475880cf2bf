"""What the tuning tests share: a small synthetic data set and a config whose trials take a
second or two (two ranker folds, no content generator)."""
from __future__ import annotations

from components.data.ingest import load_dataset

FAST = {"model": {"ranker": {"folds": 2}, "content": {"enabled": False}}}


def tiny_dataset():
    return load_dataset("synthetic", synthetic_users=150, synthetic_items=80,
                        synthetic_interactions=4_000, seed=3)
