"""The console table and the self-contained HTML report."""
from __future__ import annotations

import base64
import re
from html.parser import HTMLParser

from components.report import metrics_table, render_html_report

RESULTS = {
    "two_stage": {"ndcg@5": 0.3, "ndcg@10": 0.4, "precision@10": 0.35},
    "popularity": {"ndcg@5": 0.1, "ndcg@10": 0.15},
    "<script>alert(1)</script>": {"ndcg@10": 0.01},
}


def test_table_has_every_model_and_marks_missing_values():
    table = metrics_table(RESULTS)
    assert "two_stage" in table and "popularity" in table
    assert "0.4000" in table and "precision@10" in table
    popularity_row = next(line for line in table.splitlines() if line.startswith("popularity"))
    assert popularity_row.split()[-1] == "-"


def test_html_is_self_contained_escaped_and_has_plots():
    page = render_html_report(
        RESULTS, title="Eval", champion={"ndcg@10": 0.38}, decision_text="accepted", context={"data": "x"}
    )
    HTMLParser().feed(page)  # parses
    assert "<script>" not in page and "&lt;script&gt;" in page
    assert "http://" not in page and "https://" not in page
    images = re.findall(r'src="data:image/png;base64,([^"]+)"', page)
    assert len(images) == 2
    assert all(base64.b64decode(img)[:8] == b"\x89PNG\r\n\x1a\n" for img in images)
    assert "<b>0.4000</b>" in page  # best value per column in bold
