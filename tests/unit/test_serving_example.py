"""The README's serving example is rendered from real answers and replaces only its block."""
from __future__ import annotations

import pytest

from serving.example import END, START, render, replace_block

ANSWERS = {
    "v2": {"model_version": "v9", "id": "0123456789abcdef", "outputs": [
        {"name": "item_ids", "datatype": "BYTES", "shape": [2, 3], "data": ["a", "b", "c", "p", "q", "r"]},
        {"name": "scores", "datatype": "FP32", "shape": [2, 3], "data": [0.12345, 0.1, 0.05, 9.0, 8.0, 7.0]},
        {"name": "cold_start", "datatype": "BOOL", "shape": [2], "data": [False, True]}]},
    "v1_user": {"predictions": [{"user_id": "1", "cold_start": False, "item_ids": ["a", "b", "c"],
                                 "scores": [0.12345, 0.1, 0.05]}]},
    "v1_title": {"predictions": [{"item_id": "toy stroy", "resolved_item_id": "t1", "resolved_title": "Toy Story",
                                  "item_ids": ["t2"], "scores": [1.0]}]},
}


def test_render_shows_the_answers_and_their_titles():
    block = render(ANSWERS, {"a": "Alpha", "p": "Popular", "t2": "Toy Story 2"})
    assert block.startswith(START) and block.endswith(END)
    assert '"model_version": "v9"' in block and '"data": [0.123, 0.1, 0.05, 9.0, 8.0, 7.0]' in block
    assert "User `1` gets Alpha; b; c." in block and "(Popular; q; r)" in block
    assert "resolves to Toy Story (item t1); the answer is Toy Story 2." in block


def test_replace_block_keeps_the_rest_of_the_file():
    text = f"before\n{START}\nold\n{END}\nafter\n"
    assert replace_block(text, f"{START}\nnew\n{END}") == f"before\n{START}\nnew\n{END}\nafter\n"
    with pytest.raises(ValueError):
        replace_block("no markers", "x")


def test_render_explain_shows_a_real_explain_answer_and_says_it_in_words(small_model_dir):
    import asyncio
    import json

    from serving.example import render_explain
    from serving.predictor import RecommenderModel

    predictor = RecommenderModel("recsys", small_model_dir)
    assert predictor.load()
    try:
        user = str(predictor._model.data_.user_ids[0])
        answer = asyncio.run(predictor.explain({"instances": [{"user_id": user, "k": 2}]}))
    finally:
        predictor.stop()
    lines = render_explain(json.loads(json.dumps(answer)))
    text = "\n".join(lines)
    assert "curl -s localhost:8080/v1/models/recsys:explain" in text
    first, second = answer["explanations"][0]["items"]
    assert f'"item_id": "{first["item_id"]}"' in text and '"versus_next": null' in text
    assert f"{first['title']} is first because user {user} liked {first['because'][0]['title']}" in text
    assert f"It is above {second['title']} by {first['versus_next']['difference']:+.3f}" in text
    # the JSON block parses back to the answer, rounded (the id shortened)
    block = text[text.index("```json") + 8: text.rindex("```")]
    parsed = json.loads(block.replace(f'"{answer["id"][:8]}..."', f'"{answer["id"]}"'))
    assert parsed["predictions"] == json.loads(json.dumps(
        [{**p, "scores": [round(s, 3) for s in p["scores"]]} for p in answer["predictions"]]))
