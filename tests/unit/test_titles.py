"""Resolving what people type to an item, on the real titles of the built-in default data."""
from __future__ import annotations

import numpy as np
import pytest

from components.models.titles import TitleIndex, normalise


@pytest.fixture(scope="module")
def movies():
    from components.data.ingest import load_dataset

    ds = load_dataset("movielens-dslabs")
    items = ds.items.sort_values("item_id").reset_index(drop=True)
    counts = ds.interactions["item_id"].value_counts()
    popularity = items["item_id"].map(counts).fillna(0).to_numpy(float)
    return items, TitleIndex(items["item_id"].to_numpy(str), items["title"].tolist(), popularity)


@pytest.mark.parametrize(
    "query, title",
    [
        ("toy stroy", "Toy Story"),  # misspelt: WRatio picked "Troy"
        ("godfather", "Godfather, The"),  # missing article: WRatio picked "Her"
        ("the matrix", "Matrix, The"),  # article moved
        ("matrix", "Matrix, The"),
        ("terminator 2", "Terminator 2: Judgment Day"),  # part of a longer title
        ("star wars", "Star Wars: Episode IV - A New Hope"),  # many partial matches: the popular one
        ("jurassic prk", "Jurassic Park"),
        ("SHAWSHANK", "Shawshank Redemption, The"),
    ],
)
def test_typed_titles_find_the_intended_movie(movies, query, title):
    items, index = movies
    (found,) = index.resolve([query])
    assert found >= 0 and items["title"].iloc[found] == title


def test_ids_win_over_titles_and_nonsense_finds_nothing(movies):
    items, index = movies
    some_id = items["item_id"].iloc[100]
    assert index.resolve([some_id, "zzzz qqqq xxxx", ""]).tolist() == [100, -1, -1]


def test_normalise_drops_case_punctuation_and_articles():
    assert normalise("Godfather, The") == normalise("the godfather") == "godfather"
    assert normalise("A Beautiful Mind") == "beautiful mind"
    assert normalise("  Star  Wars: Episode IV ") == "star wars episode iv"


def test_items_without_titles_never_match():
    index = TitleIndex(np.array(["a", "b"]), ["", "Alien"], np.array([100.0, 1.0]))
    assert index.resolve(["alien", "aliens", "x"]).tolist() == [1, 1, -1]
