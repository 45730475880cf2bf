"""The console metrics table and the self-contained HTML report."""
from __future__ import annotations

import base64
from html.parser import HTMLParser

import pytest

from components.evaluation.report import metrics_table, render_html_report

EVIL = "<script>alert(1)</script>"
RESULTS = {
    "two_stage": {
        "ndcg@5": 0.3, "ndcg@10": 0.4, "precision@10": 0.35, "mrr": 0.5, "novelty@10": 7.25
    },
    "popularity": {"ndcg@5": 0.1, "ndcg@10": 0.15, "mrr": 0.2},
    "champion": {"ndcg@5": 0.28, "ndcg@10": 0.38, "precision@10": 0.31, "mrr": 0.45},
    EVIL: {"ndcg@10": 0.01},
}
PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


class Page(HTMLParser):
    """Collects what a browser would see: tags, image sources, table cells, visible text."""

    def __init__(self, text: str):
        super().__init__(convert_charrefs=True)
        self.tags: list[str] = []
        self.images: list[str] = []
        self.links: list[str] = []
        self.bold: list[str] = []
        self.text: list[str] = []
        self._in_bold = False
        self.feed(text)
        self.close()

    def handle_starttag(self, tag, attrs):
        self.tags.append(tag)
        attrs = dict(attrs)
        if tag == "img":
            self.images.append(attrs.get("src", ""))
        self.links += [v for k, v in attrs.items() if k in ("href", "src") and v]
        self._in_bold = self._in_bold or tag == "b"

    def handle_endtag(self, tag):
        if tag == "b":
            self._in_bold = False

    def handle_data(self, data):
        self.text.append(data)
        if self._in_bold:
            self.bold.append(data)


def row(table: str, model: str) -> list[str]:
    return next(line.split() for line in table.splitlines() if line.startswith(model + " "))


def test_table_has_every_model_and_metric_with_dashes_for_missing():
    table = metrics_table(RESULTS)
    header = table.splitlines()[0].split()
    # only the metrics some model has
    assert header == ["model", "ndcg@10", "precision@10", "mrr", "novelty@10"]
    assert row(table, "two_stage") == ["two_stage", "0.4000", "0.3500", "0.5000", "7.2500"]
    assert row(table, "popularity") == ["popularity", "0.1500", "-", "0.2000", "-"]
    assert row(table, "champion")[1:] == ["0.3800", "0.3100", "0.4500", "-"]
    assert len(table.splitlines()) == 2 + len(RESULTS)  # header, rule, one row per model


def test_table_columns_line_up():
    lines = metrics_table(RESULTS).splitlines()
    assert len({len(line) for line in lines}) == 1  # right-aligned cells, "-" included


def test_table_respects_the_requested_metrics():
    table = metrics_table(RESULTS, metrics=("mrr", "ndcg@5", "diversity@10"))
    assert table.splitlines()[0].split() == ["model", "mrr", "ndcg@5"]
    assert row(table, EVIL)[1:] == ["-", "-"]


def test_html_parses_and_contains_models_context_and_decision():
    page_text = render_html_report(
        RESULTS,
        title="Eval <v3>",
        champion=RESULTS["champion"],
        decision_text="Refused: ndcg@10 & co",
        context={"dataset": "MovieLens 100K", "data fingerprint": "sha256:ab", "split": "temporal"},
    )
    page = Page(page_text)
    text = " ".join(page.text)
    models = ("two_stage", "popularity", "champion", EVIL)
    for name in (*models, "MovieLens 100K", "sha256:ab", "temporal"):
        assert name in text
    assert "Eval <v3>" in text and "Refused: ndcg@10 & co" in text
    assert page.tags[:3] == ["html", "head", "meta"]


def test_html_plots_are_inline_pngs():
    page = Page(render_html_report(RESULTS, title="Eval", champion=RESULTS["champion"]))
    assert len(page.images) == 2  # metric by k, primary metric by model
    for src in page.images:
        prefix = "data:image/png;base64,"
        assert src.startswith(prefix)
        assert base64.b64decode(src[len(prefix):], validate=True)[:8] == PNG_MAGIC


def test_html_is_self_contained():
    page = Page(render_html_report(RESULTS, title="Eval", champion=RESULTS["champion"]))
    assert all(link.startswith("data:") for link in page.links)
    assert "script" not in page.tags and "link" not in page.tags


def test_html_escapes_a_malicious_model_name():
    page_text = render_html_report(RESULTS, title=EVIL, context={EVIL: EVIL}, decision_text=EVIL)
    assert "<script" not in page_text
    assert "&lt;script&gt;" in page_text
    assert "script" not in Page(page_text).tags


def test_html_bolds_the_best_value_of_each_column():
    bold = Page(render_html_report(RESULTS, title="Eval")).bold
    # best ndcg@10 0.4, precision@10 0.35, mrr 0.5, novelty@10 7.25 (all two_stage)
    assert sorted(bold) == sorted(["0.4000", "0.3500", "0.5000", "7.2500"])


def test_html_table_leads_with_a_primary_metric_outside_the_defaults():
    page_text = render_html_report(RESULTS, title="Eval", primary_metric="ndcg@5")
    assert "<tr><th>model</th><th>ndcg@5</th><th>ndcg@10</th>" in page_text
    assert len(Page(page_text).images) == 2


@pytest.mark.parametrize("results", [{}, {"only_mrr": {"mrr": 0.5}}])
def test_html_without_metric_by_k_still_renders(results):
    page = Page(render_html_report(results, title="Eval", primary_metric="mrr"))
    assert len(page.images) == (1 if results else 0)  # just the bar chart, or nothing to plot


def test_html_shows_the_ranker_importance_largest_first_with_shares():
    importance = {"popularity": 10.0, "generator scores": 30.0, EVIL: 0.0, "recency": 10.0}
    page = Page(render_html_report(RESULTS, title="t", feature_importance=importance))
    text = [t.strip() for t in page.text if t.strip()]
    assert "Ranker feature importance (gain)" in text
    start = text.index("Ranker feature importance (gain)")
    names = [t for t in text[start:] if t in importance]
    assert names == ["generator scores", "popularity", "recency", EVIL]  # ties by name
    assert "60.0%" in text and text.count("20.0%") == 2 and "0.0%" in text
    assert "script" not in page.tags  # the escaped name is text, not a tag


def test_html_without_a_ranker_has_no_importance_section():
    page = Page(render_html_report(RESULTS, title="t", feature_importance=None))
    assert not any("importance" in t for t in page.text)
