"""The HTML report of a study: its history and each value's importance as plots, the best
config, and every trial. Self-contained (plots inlined as PNGs, no script, nothing fetched),
drawn like the evaluation report (`evaluation.report`: matplotlib's object API, no display).

`recsys tune` and the pipeline's tune step log it to the study's MLflow parent run as
`tune_report.html`; the pipeline's step also hands it to Kubeflow as its HTML output.
"""
from __future__ import annotations

import html
import math
from collections.abc import Mapping, Sequence
from typing import Any

from components.evaluation.report import _STYLE, _context_html, _png_base64
from components.tuning.tune import METRIC, TuneResult

REPORT_NAME = "tune_report.html"


def history_figure(trials: Sequence[Mapping[str, Any]]) -> str | None:
    """Validation NDCG@10 of each completed trial by trial number, the best so far as a step
    line, and each pruned trial at the value of its generators alone (where it was stopped)."""
    from matplotlib.figure import Figure

    ordered = sorted(trials, key=lambda t: t["number"])
    complete = [t for t in ordered if t.get("value") is not None and math.isfinite(t["value"])]
    if not complete:
        return None
    figure = Figure(figsize=(6.0, 3.4))
    axis = figure.add_subplot(1, 1, 1)
    axis.plot([t["number"] for t in complete], [t["value"] for t in complete], "o",
              color="#4c72b0", label="trial")
    best, xs, ys = -math.inf, [], []
    for t in complete:
        best = max(best, t["value"])
        xs.append(t["number"])
        ys.append(best)
    axis.step(xs, ys, where="post", color="#c44e52", label="best so far")
    pruned = [t for t in ordered if t.get("state") == "pruned" and t.get("generators") is not None]
    if pruned:
        axis.plot([t["number"] for t in pruned], [t["generators"] for t in pruned], "x",
                  color="#8c8c8c", label="pruned (generators alone)")
    axis.set_xlabel("trial")
    axis.set_ylabel(f"validation {METRIC}")
    axis.set_title("Study history")
    axis.grid(alpha=0.3)
    axis.legend(fontsize=7)
    return _png_base64(figure)


def importance_figure(importances: Mapping[str, float]) -> str | None:
    """Optuna's importance of each value as horizontal bars, the most important on top."""
    from matplotlib.figure import Figure

    if not importances:
        return None
    names = sorted(importances, key=lambda name: importances[name])
    figure = Figure(figsize=(6.0, 0.4 * len(names) + 1.2))
    axis = figure.add_subplot(1, 1, 1)
    axis.barh(names, [float(importances[name]) for name in names], color="#4c72b0")
    axis.set_xlabel("importance (fANOVA)")
    axis.set_title("Hyperparameter importance")
    return _png_base64(figure)


def _trials_html(trials: Sequence[Mapping[str, Any]], best_number: int) -> str:
    esc = html.escape
    names = sorted({name for t in trials for name in t.get("params", {})})
    header = "".join(f"<th>{esc(n)}</th>" for n in ("trial", "state", METRIC, "seconds", *names))
    rows = []
    for t in sorted(trials, key=lambda t: t["number"]):
        value = "-" if t.get("value") is None else f"{t['value']:.4f}"
        cells = [str(t["number"]), str(t.get("state", "failed")), value, f"{t.get('seconds', 0.0):.1f}"]
        params = t.get("params", {})
        cells += [_short(params[n]) if n in params else "-" for n in names]
        row = "".join(f"<td>{esc(c)}</td>" for c in cells)
        rows.append(f"<tr>{row}</tr>" if t["number"] != best_number else
                    f'<tr class="best">{row}</tr>')
    return f"<table><tr>{header}</tr>{''.join(rows)}</table>"


def _short(value: Any) -> str:
    return f"{value:.4g}" if isinstance(value, float) else str(value)


def render_tune_report(result: TuneResult, *, title: str = "Hyperparameter tuning",
                       context: Mapping[str, str] | None = None) -> str:
    """The study as one HTML page: context, the best against the untuned config, the two
    plots, the best config's YAML and a table of every trial (the best highlighted)."""
    esc = html.escape
    untuned = "-" if result.baseline_value is None else f"{result.baseline_value:.4f}"
    summary = (f"<table><tr><th>best validation {esc(METRIC)}</th><td>{result.best_value:.4f} "
               f"(trial {result.best_number})</td></tr><tr><th>untuned (trial 0)</th>"
               f"<td>{untuned}</td></tr><tr><th>trials</th><td>{len(result.trials)}</td></tr></table>")
    plots = (history_figure(result.trials), importance_figure(result.importances))
    figures = "".join(
        f'<p><img alt="tuning plot {i + 1}" src="data:image/png;base64,{img}"></p>'
        for i, img in enumerate(p for p in plots if p)
    )
    no_importance = "" if result.importances else (
        "<p>No importance: too few completed trials with different values.</p>")
    return (
        "<!DOCTYPE html>\n"
        f'<html lang="en"><head><meta charset="utf-8"><title>{esc(title)}</title>'
        f"<style>{_STYLE}tr.best td{{font-weight:bold}}pre{{background:#f4f4f4;padding:8px}}"
        "</style></head><body>\n"
        f"<h1>{esc(title)}</h1>\n"
        f"{_context_html(context)}\n"
        f"<h2>Result</h2>\n{summary}\n{figures}{no_importance}\n"
        f"<h2>Best config</h2>\n<pre>{esc(result.best_config_yaml())}</pre>\n"
        f"<h2>Trials</h2>\n{_trials_html(result.trials, result.best_number)}\n"
        "</body></html>\n"
    )


def log_tune_report(tracking_uri: str, run_id: str, page: str) -> None:
    """Attach the report to the study's parent run (beside best_config.yaml)."""
    from components.release.registry import _client

    _client(tracking_uri).log_text(run_id, page, REPORT_NAME)
