"""Report: the evaluation as a console table and as a self-contained HTML page (the KFP `HTML`
artifact the Kubeflow UI shows): context, metrics table, metric-by-k and model-vs-champion
plots as inline PNGs (no external script, style or network).
"""
from __future__ import annotations

import base64
import html
import io
from collections.abc import Mapping, Sequence

from components.evaluate import metrics_by_k

DEFAULT_COLUMNS = (
    "ndcg@10", "precision@10", "recall@10", "map@10", "mrr", "hit_rate@10",
    "coverage@10", "novelty@10", "diversity@10",
)


def _columns(results: Mapping[str, Mapping[str, float]], metrics: Sequence[str]) -> list[str]:
    return [m for m in metrics if any(m in values for values in results.values())]


def metrics_table(
    results: Mapping[str, Mapping[str, float]], metrics: Sequence[str] = DEFAULT_COLUMNS
) -> str:
    """Fixed-width text: one row per model, one column per metric; "-" where absent."""
    columns = _columns(results, metrics)
    name_width = max([len("model"), *(len(n) for n in results)])
    widths = [max(len(c), 7) for c in columns]
    lines = ["  ".join(["model".ljust(name_width), *(c.rjust(w) for c, w in zip(columns, widths))])]
    lines.append("  ".join(["-" * name_width, *("-" * w for w in widths)]))
    for name, values in results.items():
        cells = [f"{values[c]:.4f}" if c in values else "-" for c in columns]
        lines.append("  ".join([name.ljust(name_width), *(v.rjust(w) for v, w in zip(cells, widths))]))
    return "\n".join(lines)


def _png(figure) -> str:
    buffer = io.BytesIO()
    figure.savefig(buffer, format="png", dpi=90, bbox_inches="tight")
    return base64.b64encode(buffer.getvalue()).decode("ascii")


def _metric_by_k_figure(results: Mapping[str, Mapping[str, float]]) -> str | None:
    from matplotlib.figure import Figure  # the OO API needs no display backend

    bases = ("ndcg", "precision", "recall", "map", "hit_rate")
    per_model = {name: metrics_by_k(values) for name, values in results.items()}
    shown = [b for b in bases if any(len(m.get(b, {})) > 0 for m in per_model.values())]
    if not shown:
        return None
    figure = Figure(figsize=(3.2 * len(shown), 3.0))
    for i, base in enumerate(shown):
        axis = figure.add_subplot(1, len(shown), i + 1)
        for name, by_k in per_model.items():
            if base in by_k:
                ks = list(by_k[base])
                axis.plot(ks, [by_k[base][k] for k in ks], marker="o", label=name)
        axis.set_title(f"{base}@k")
        axis.set_xlabel("k")
        axis.grid(alpha=0.3)
    figure.axes[0].legend(fontsize=7)
    return _png(figure)


def _primary_figure(
    results: Mapping[str, Mapping[str, float]], primary: str, champion: Mapping[str, float] | None
) -> str | None:
    from matplotlib.figure import Figure

    names = [n for n, v in results.items() if primary in v]
    if not names:
        return None
    figure = Figure(figsize=(1.2 * len(names) + 2, 3.0))
    axis = figure.add_subplot(1, 1, 1)
    axis.bar(names, [results[n][primary] for n in names], color="#4c72b0")
    if champion and primary in champion:
        axis.axhline(champion[primary], color="#c44e52", linestyle="--", label="champion")
        axis.legend(fontsize=7)
    axis.set_ylabel(primary)
    axis.tick_params(axis="x", labelrotation=30)
    return _png(figure)


def render_html_report(
    results: Mapping[str, Mapping[str, float]],
    *,
    title: str,
    primary_metric: str = "ndcg@10",
    champion: Mapping[str, float] | None = None,
    decision_text: str | None = None,
    context: Mapping[str, str] | None = None,
) -> str:
    esc = html.escape
    columns = _columns(results, DEFAULT_COLUMNS)
    best = {c: max(v[c] for v in results.values() if c in v) for c in columns}
    header = "".join(f"<th>{esc(c)}</th>" for c in columns)
    rows = []
    for name, values in results.items():
        cells = []
        for c in columns:
            if c not in values:
                cells.append("<td>-</td>")
            elif values[c] == best[c]:
                cells.append(f"<td><b>{values[c]:.4f}</b></td>")
            else:
                cells.append(f"<td>{values[c]:.4f}</td>")
        rows.append(f"<tr><th>{esc(name)}</th>{''.join(cells)}</tr>")
    context_rows = "".join(
        f"<tr><th>{esc(str(k))}</th><td>{esc(str(v))}</td></tr>" for k, v in (context or {}).items()
    )
    images = [
        img for img in (_metric_by_k_figure(results), _primary_figure(results, primary_metric, champion)) if img
    ]
    figures = "".join(f'<p><img alt="plot" src="data:image/png;base64,{img}"/></p>' for img in images)
    decision = f"<h2>Gate decision</h2><p>{esc(decision_text)}</p>" if decision_text else ""
    return f"""<!DOCTYPE html>
<html><head><meta charset="utf-8"><title>{esc(title)}</title>
<style>body{{font-family:sans-serif;margin:1.5em}}table{{border-collapse:collapse}}
td,th{{border:1px solid #ccc;padding:3px 8px;text-align:right}}th{{background:#f4f4f4}}</style>
</head><body>
<h1>{esc(title)}</h1>
<table>{context_rows}</table>
<h2>Metrics (primary: {esc(primary_metric)})</h2>
<table><tr><th>model</th>{header}</tr>{''.join(rows)}</table>
{figures}
{decision}
</body></html>
"""
