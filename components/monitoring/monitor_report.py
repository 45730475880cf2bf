"""The drift report: the decision and its reasons, then per view and feature the test, its
statistic, p-value and threshold, and a plot of the reference against the window.

Self-contained HTML like the evaluation report (`components.evaluation.report`: inline PNGs drawn with
matplotlib's object API, every data-derived text escaped); it is the monitoring pipeline's KFP
`HTML` artifact and is logged to MLflow with the check.
"""

from __future__ import annotations

import html
import time
from collections.abc import Sequence
from itertools import pairwise

import numpy as np

from components.evaluation.report import _STYLE, _context_html, _png_base64
from components.monitoring.drift import ViewResult
from components.monitoring.drift_features import DriftProfile, FeatureTable
from components.monitoring.monitor import Decision


def _ranges(edges: Sequence[float], low: str = "") -> list[str]:
    """Labels of the buckets `drift_features.bucket` makes from `edges`."""
    edges = [float(e) for e in edges]
    if not edges:
        return [low or "all"]
    fmt = "{:g}".format
    labels = [f"≤{fmt(edges[0])}"]
    labels += [f"({fmt(a)}, {fmt(b)}]" for a, b in pairwise(edges)]
    labels.append(f">{fmt(edges[-1])}")
    if low:
        labels[0] = f"{low} or {labels[0]}"
    return labels


def category_labels(profile: DriftProfile, feature: str) -> list[str]:
    if feature == "user_activity":
        return _ranges(profile.activity_edges, "new")
    if feature == "item_popularity":
        return ["new item", *_ranges(profile.popularity_edges)]
    if feature == "k":
        return _ranges(profile.k_edges)
    if feature == "items_genre":
        leading = profile.genres if profile.leading_genres is None else profile.leading_genres
        return [*leading, "other"]
    if feature == "rating":
        return _ranges(profile.rating_edges)
    return []


def _feature_figure(
    view: str, reference: FeatureTable, current: FeatureTable, profile: DriftProfile
) -> str:
    from matplotlib.figure import Figure

    n = len(reference.names)
    figure = Figure(figsize=(3.6 * n, 3.0))
    for i, (name, is_cat) in enumerate(zip(reference.names, reference.categorical)):
        axis = figure.add_subplot(1, n, i + 1)
        ref, cur = reference.values[:, i], current.values[:, i]
        if is_cat:
            labels = category_labels(profile, name)
            codes = np.union1d(np.unique(ref), np.unique(cur)).astype(int)
            ref_share = [(ref == c).mean() for c in codes]
            cur_share = [(cur == c).mean() if len(cur) else 0 for c in codes]
            x = np.arange(len(codes))
            axis.bar(x - 0.2, ref_share, 0.4, label="reference", color="#8da0cb")
            axis.bar(x + 0.2, cur_share, 0.4, label="window", color="#fc8d62")
            axis.set_xticks(x)
            axis.set_xticklabels(
                [labels[c] if 0 <= c < len(labels) else str(c) for c in codes],
                rotation=45,
                ha="right",
                fontsize=7,
            )
            axis.set_ylabel("share")
        else:
            bins = np.histogram_bin_edges(np.concatenate([ref, cur]), bins=30)
            axis.hist(ref, bins=bins, density=True, alpha=0.6, label="reference", color="#8da0cb")
            axis.hist(cur, bins=bins, density=True, alpha=0.6, label="window", color="#fc8d62")
            axis.set_ylabel("density")
        axis.set_title(f"{view}.{name}", fontsize=9)
    figure.axes[0].legend(fontsize=7)
    return _png_base64(figure)


def render_drift_report(
    decision: Decision,
    results: list[ViewResult],
    reference: dict[str, FeatureTable],
    current: dict[str, FeatureTable],
    profile: DriftProfile,
) -> str:
    esc = html.escape
    verdict = decision.decision.upper()
    reasons = "".join(f"<li>{esc(r)}</li>" for r in decision.reasons) or "<li>none</li>"
    notes = "".join(f"<li>{esc(n)}</li>" for n in decision.notes)
    context = {
        "model version": decision.model_version,
        "checked at": time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime(decision.checked_at)),
        "window": f"{time.strftime('%Y-%m-%d %H:%M', time.gmtime(decision.window['since']))} to "
        f"{time.strftime('%Y-%m-%d %H:%M', time.gmtime(decision.window['until']))} UTC",
        "sources": "; ".join(decision.window.get("sources", [])) or "none",
        "rows": ", ".join(f"{k} {v}" for k, v in decision.window.get("rows", {}).items()),
    }
    sections = []
    for view in results:
        rows = "".join(
            f"<tr><th>{esc(f.feature)}</th><td>{esc(f.test)}</td><td>{f.statistic:.4g}</td>"
            f"<td>{f.p_value:.3g}</td><td>{f.threshold:.3g}</td>"
            f"<td>{'<b>drift</b>' if f.drift else 'no'}</td></tr>"
            for f in view.features
        )
        image = ""
        if view.view in reference and view.view in current:
            png = _feature_figure(view.view, reference[view.view], current[view.view], profile)
            image = (
                f'<p><img alt="{esc(view.view)}: reference against window" '
                f'src="data:image/png;base64,{png}"></p>'
            )
        sections.append(
            f"<h2>{esc(view.view)}: {'drift' if view.drift else 'no drift'} "
            f"({view.rows:,} rows, reference {view.reference_rows:,})</h2>"
            "<table><tr><th>feature</th><th>test</th><th>statistic</th><th>p-value</th>"
            f"<th>threshold</th><th>drift</th></tr>{rows}</table>{image}"
        )
    return (
        "<!DOCTYPE html>\n"
        '<html lang="en"><head><meta charset="utf-8"><title>Drift check</title>'
        f"<style>{_STYLE}</style></head><body>\n"
        f"<h1>Drift check: {esc(verdict)}</h1>\n"
        f"<h2>Reasons</h2><ul>{reasons}</ul>\n"
        + (
            f"<p><b>Not retrained:</b> {esc(decision.no_retrain_reason)}</p>\n"
            if decision.no_retrain_reason
            else ""
        )
        + (f"<h2>Notes</h2><ul>{notes}</ul>\n" if notes else "")
        + f"{_context_html(context)}\n"
        + "\n".join(sections)
        + "\n</body></html>\n"
    )
