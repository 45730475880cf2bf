"""Report: the evaluation as a console table and as a self-contained HTML page.

The HTML page is the KFP `HTML` artifact the Kubeflow UI shows, and is also kept beside each
registered model, so it must open anywhere: no external script, style sheet, font or image.
Plots are drawn with matplotlib's object API (`matplotlib.figure.Figure`), which needs no
display backend and leaves the process-wide pyplot state alone, and are inlined as base64 PNGs.
Every piece of text that comes from data (model names, context values, the gate decision) is
HTML-escaped.
"""
from __future__ import annotations

import base64
import html
import io
import math
from collections.abc import Mapping, Sequence

from components.evaluation.evaluate import metrics_by_k

Results = Mapping[str, Mapping[str, float]]

DEFAULT_COLUMNS = (
    "ndcg@10", "precision@10", "recall@10", "map@10", "mrr", "hit_rate@10",
    "coverage@10", "novelty@10", "diversity@10",
)
_BY_K_METRICS = ("ndcg", "precision", "recall", "map", "hit_rate")
_MISSING = "-"


def _columns(results: Results, metrics: Sequence[str]) -> list[str]:
    """The requested metrics that at least one model has, in the requested order."""
    return [m for m in dict.fromkeys(metrics) if any(m in values for values in results.values())]


def _cell(values: Mapping[str, float], metric: str) -> str:
    return f"{float(values[metric]):.4f}" if metric in values else _MISSING


def metrics_table(results: Results, metrics: Sequence[str] = DEFAULT_COLUMNS) -> str:
    """Fixed-width text: a row per model, a column per metric any model has; "-" if absent."""
    columns = _columns(results, metrics)
    names = [str(name) for name in results]
    name_width = max([len("model"), *(len(n) for n in names)])
    widths = [max(len(c), len("0.0000")) for c in columns]

    def line(first: str, cells: Sequence[str]) -> str:
        padded = [first.ljust(name_width), *(c.rjust(w) for c, w in zip(cells, widths))]
        return "  ".join(padded).rstrip()

    lines = [line("model", columns), line("-" * name_width, ["-" * w for w in widths])]
    for name, values in zip(names, results.values()):
        lines.append(line(name, [_cell(values, c) for c in columns]))
    return "\n".join(lines)


def _best(results: Results, columns: Sequence[str]) -> dict[str, float]:
    """Best (highest: every metric here is higher-is-better) finite value of each column."""
    best = {}
    for column in columns:
        present = [float(v[column]) for v in results.values() if column in v]
        finite = [value for value in present if math.isfinite(value)]
        if finite:
            best[column] = max(finite)
    return best


def _png_base64(figure) -> str:
    buffer = io.BytesIO()
    figure.savefig(buffer, format="png", dpi=90, bbox_inches="tight")
    return base64.b64encode(buffer.getvalue()).decode("ascii")


def _metric_by_k_figure(results: Results) -> str | None:
    """One panel per metric (ndcg, precision, ...), x = k, one line per model."""
    from matplotlib.figure import Figure

    per_model = {str(name): metrics_by_k(values) for name, values in results.items()}
    shown = [m for m in _BY_K_METRICS if any(by_k.get(m) for by_k in per_model.values())]
    if not shown:
        return None
    figure = Figure(figsize=(3.2 * len(shown), 3.2))
    for i, metric in enumerate(shown):
        axis = figure.add_subplot(1, len(shown), i + 1)
        all_ks: set[int] = set()
        for name, by_k in per_model.items():
            if by_k.get(metric):
                ks = list(by_k[metric])
                all_ks.update(ks)
                axis.plot(ks, [by_k[metric][k] for k in ks], marker="o", label=name)
        axis.set_xticks(sorted(all_ks))  # the evaluated k values, not matplotlib's round numbers
        axis.set_title(f"{metric}@k")
        axis.set_xlabel("k")
        axis.grid(alpha=0.3)
    figure.axes[0].legend(fontsize=7)
    return _png_base64(figure)


def _primary_figure(
    results: Results, primary: str, champion: Mapping[str, float] | None
) -> str | None:
    """The primary metric per model as bars, the champion's value as a dashed line."""
    from matplotlib.figure import Figure

    names = [str(n) for n, v in results.items() if primary in v]
    if not names:
        return None
    figure = Figure(figsize=(1.1 * len(names) + 2.5, 3.2))
    axis = figure.add_subplot(1, 1, 1)
    axis.bar(names, [float(v[primary]) for v in results.values() if primary in v], color="#4c72b0")
    if champion is not None and primary in champion:
        axis.axhline(float(champion[primary]), color="#c44e52", linestyle="--", label="champion")
        axis.legend(fontsize=7)
    axis.set_ylabel(primary)
    axis.set_title(f"{primary} by model")
    axis.tick_params(axis="x", labelrotation=30)
    return _png_base64(figure)


def _metrics_html(results: Results, columns: Sequence[str]) -> str:
    esc = html.escape
    best = _best(results, columns)
    header = "".join(f"<th>{esc(c)}</th>" for c in columns)
    rows = []
    for name, values in results.items():
        cells = []
        for column in columns:
            text = esc(_cell(values, column))
            is_best = column in values and column in best and float(values[column]) == best[column]
            cells.append(f"<td><b>{text}</b></td>" if is_best else f"<td>{text}</td>")
        rows.append(f"<tr><th>{esc(str(name))}</th>{''.join(cells)}</tr>")
    return f"<table><tr><th>model</th>{header}</tr>{''.join(rows)}</table>"


def _importance_html(importance: Mapping[str, float] | None) -> str:
    """The ranker's global feature importance (total gain of the splits on each feature or
    feature group), largest first, with its share of the whole."""
    if not importance:
        return ""
    esc = html.escape
    total = sum(max(float(v), 0.0) for v in importance.values())
    rows = []
    for name, gain in sorted(importance.items(), key=lambda kv: (-float(kv[1]), str(kv[0]))):
        share = float(gain) / total if total > 0 else 0.0
        rows.append(
            f"<tr><th>{esc(str(name))}</th><td>{float(gain):,.1f}</td><td>{share:.1%}</td>"
            f'<td style="text-align:left"><span style="display:inline-block;height:0.8em;'
            f'width:{share * 12:.2f}em;background:#4a7ab5"></span></td></tr>'
        )
    return (
        "<h2>Ranker feature importance (gain)</h2>"
        "<table><tr><th>features</th><th>gain</th><th>share</th><th></th></tr>"
        f"{''.join(rows)}</table>"
    )


def _context_html(context: Mapping[str, str] | None) -> str:
    if not context:
        return ""
    esc = html.escape
    rows = "".join(
        f"<tr><th>{esc(str(k))}</th><td>{esc(str(v))}</td></tr>" for k, v in context.items()
    )
    return f"<h2>Context</h2><table>{rows}</table>"


_STYLE = (
    "body{font-family:sans-serif;margin:1.5em;color:#222}"
    "table{border-collapse:collapse;margin-bottom:1em}"
    "td,th{border:1px solid #ccc;padding:3px 8px;text-align:right}"
    "th{background:#f4f4f4;text-align:left}img{max-width:100%}"
)


def render_html_report(
    results: Results,
    *,
    title: str,
    primary_metric: str = "ndcg@10",
    champion: Mapping[str, float] | None = None,
    decision_text: str | None = None,
    context: Mapping[str, str] | None = None,
    feature_importance: Mapping[str, float] | None = None,
) -> str:
    """A self-contained HTML page: context, metrics table (best per column in bold), the
    ranker's feature importance (gain, when the model has a ranker), a metric-by-k plot, the
    primary metric per model against the champion, the gate decision."""
    esc = html.escape
    # The primary metric leads the table even when it is not one of the default columns.
    columns = _columns(results, (primary_metric, *DEFAULT_COLUMNS))
    plots = (_metric_by_k_figure(results), _primary_figure(results, primary_metric, champion))
    images = [img for img in plots if img]
    figures = "".join(
        f'<p><img alt="evaluation plot {i + 1}" src="data:image/png;base64,{img}"></p>'
        for i, img in enumerate(images)
    )
    decision = f"<h2>Gate decision</h2><p>{esc(decision_text)}</p>" if decision_text else ""
    return (
        "<!DOCTYPE html>\n"
        f'<html lang="en"><head><meta charset="utf-8"><title>{esc(title)}</title>'
        f"<style>{_STYLE}</style></head><body>\n"
        f"<h1>{esc(title)}</h1>\n"
        f"{_context_html(context)}\n"
        f"<h2>Metrics (primary: {esc(primary_metric)})</h2>\n"
        f"{_metrics_html(results, columns)}\n"
        f"{_importance_html(feature_importance)}\n"
        f"{figures}\n"
        f"{decision}\n"
        "</body></html>\n"
    )
