"""Charts as inline SVG, drawn on the server: nothing to download, nothing to run in the browser.

Two shapes cover the console: stacked bars over time (events by type, requests) and lines over
time with an optional band (the always-valid interval around the effect) and threshold (alpha
under the p-value). Each chart is an `<svg role="img">` with a title and a one-line summary for
screen readers; the pages also give the numbers in a table. Written here rather than taken from
a plotting library: matplotlib would send pixels (no text to read or zoom), and the JavaScript
libraries would have to be vendored and run in the browser, for two simple shapes.
"""
from __future__ import annotations

import itertools
import math
import time
from collections.abc import Sequence
from dataclasses import dataclass
from html import escape

from markupsafe import Markup

WIDTH, HEIGHT = 640, 220
_ids = itertools.count(1)  # unique element ids for each chart's title and description
LEFT, RIGHT, TOP, BOTTOM = 52, 12, 12, 28
# Readable on light and dark backgrounds, and apart for the common colour blindnesses.
PALETTE = ("#4477aa", "#ee6677", "#228833", "#ccbb44", "#66ccee", "#aa3377", "#999999")


@dataclass(frozen=True)
class Series:
    name: str
    values: Sequence[float | None]
    color: str | None = None


def _ticks(low: float, high: float, count: int = 4) -> list[float]:
    if high <= low:
        return [low]
    raw = (high - low) / count
    magnitude = 10 ** math.floor(math.log10(raw))
    step = next(m * magnitude for m in (1, 2, 2.5, 5, 10) if m * magnitude >= raw)
    first = math.ceil(low / step) * step
    return [first + i * step for i in range(int((high - first) / step + 1e-9) + 1)]


def _label(value: float) -> str:
    if value == 0:
        return "0"
    if abs(value) >= 1000:
        return f"{value:,.0f}"
    if abs(value) >= 1:
        return f"{value:g}"
    return f"{value:.3g}"


def _time_label(unix: float, span: float) -> str:
    pattern = "%H:%M:%S" if span < 600 else "%H:%M" if span <= 2 * 86_400 else "%m-%d"
    return time.strftime(pattern, time.gmtime(unix))


def _frame(title: str, summary: str, body: list[str], y_ticks: list[tuple[float, str]],
           x_ticks: list[tuple[float, str]]) -> Markup:
    ident = f"chart-{next(_ids)}"
    parts = [
        (f'<svg class="chart" viewBox="0 0 {WIDTH} {HEIGHT}" role="img" '
         f'aria-labelledby="{ident}-t {ident}-d" preserveAspectRatio="xMidYMid meet">'),
        f'<title id="{ident}-t">{escape(title)}</title>',
        f'<desc id="{ident}-d">{escape(summary)}</desc>',
    ]
    for y, text in y_ticks:
        parts.append(f'<line class="axis" x1="{LEFT}" x2="{WIDTH - RIGHT}" y1="{y:.1f}" '
                     f'y2="{y:.1f}"/>')
        parts.append(f'<text x="{LEFT - 6}" y="{y + 4:.1f}" text-anchor="end">{escape(text)}</text>')
    for x, text in x_ticks:
        # Labels at the edges lean inwards, so none is cut off.
        anchor = ("start" if x < LEFT + 30 else "end" if x > WIDTH - RIGHT - 30 else "middle")
        parts.append(f'<text x="{x:.1f}" y="{HEIGHT - 8}" text-anchor="{anchor}">'
                     f'{escape(text)}</text>')
    parts += body
    parts.append("</svg>")
    return Markup("".join(parts))


def stacked_bars(title: str, starts: Sequence[float], step: float, series: Sequence[Series],
                 unit: str = "") -> Markup:
    """Bars per time bucket (`starts`, each `step` seconds long), stacked by series."""
    n = len(starts)
    totals = [sum((s.values[i] or 0) for s in series) for i in range(n)]
    top = max(totals, default=0) or 1
    ticks = _ticks(0, top)
    top = max(top, ticks[-1])
    plot_w, plot_h = WIDTH - LEFT - RIGHT, HEIGHT - TOP - BOTTOM
    bar_w = plot_w / max(n, 1)

    def y_of(v: float) -> float:
        return TOP + plot_h * (1 - v / top)

    body = []
    for i in range(n):
        base = 0.0
        for k, s in enumerate(series):
            value = s.values[i] or 0
            if value <= 0:
                continue
            color = s.color or PALETTE[k % len(PALETTE)]
            y0, y1 = y_of(base), y_of(base + value)
            body.append(f'<rect x="{LEFT + i * bar_w + 0.5:.1f}" y="{y1:.1f}" '
                        f'width="{max(bar_w - 1, 1):.1f}" height="{max(y0 - y1, 0.5):.1f}" '
                        f'fill="{color}"><title>{escape(s.name)}: {value:,.0f}</title></rect>')
            base += value
    span = (starts[-1] - starts[0] + step) if n else 0
    x_ticks = [(LEFT + (i + 0.5) * bar_w, _time_label(starts[i], span))
               for i in range(0, n, max(1, n // 6))]
    total = sum(totals)
    summary = (f"{total:,.0f} {unit} in {n} intervals; busiest interval {max(totals, default=0):,.0f}"
               if n else "no data")
    return _frame(title, summary, body, [(y_of(t), _label(t)) for t in ticks], x_ticks)


def lines(title: str, x: Sequence[float], series: Sequence[Series], *,
          band: tuple[Sequence[float], Sequence[float]] | None = None,
          threshold: float | None = None, zero: bool = False, log_scale: bool = False,
          y_range: tuple[float, float] | None = None, summary: str = "") -> Markup:
    """Lines over time; optionally a shaded band, a dashed threshold and a zero line.
    `log_scale` draws the y axis in powers of ten (for p-values)."""
    values = [v for s in series for v in s.values if v is not None and math.isfinite(v)]
    if band is not None:
        values += [v for v in (*band[0], *band[1]) if v is not None and math.isfinite(v)]
    if threshold is not None:
        values.append(threshold)
    if zero:
        values.append(0.0)
    if not x or not values:
        return _frame(title, "no data", [], [], [])

    def tr(v: float) -> float:
        return math.log10(max(v, 1e-12)) if log_scale else v

    if y_range is not None:
        low, high = tr(y_range[0]), tr(y_range[1])
    else:
        low, high = tr(min(values)), tr(max(values))
    if high - low < 1e-12:
        low, high = low - 1, high + 1
    pad = (high - low) * 0.05
    low, high = low - pad, high + pad
    x0, x1 = min(x), max(x)
    x_span = (x1 - x0) or 1.0
    plot_w, plot_h = WIDTH - LEFT - RIGHT, HEIGHT - TOP - BOTTOM

    def px(t: float) -> float:
        return LEFT + plot_w * (t - x0) / x_span

    def py(v: float) -> float:
        return TOP + plot_h * (1 - (tr(v) - low) / (high - low))

    body = []
    if band is not None:
        lower, upper = band
        points = [(px(t), py(v)) for t, v in zip(x, upper) if v is not None and math.isfinite(v)]
        points += [(px(t), py(v)) for t, v in reversed(list(zip(x, lower)))
                   if v is not None and math.isfinite(v)]
        if points:
            body.append('<polygon class="band" points="'
                        + " ".join(f"{a:.1f},{b:.1f}" for a, b in points) + '"/>')
    if zero and low < 0 < high:
        body.append(f'<line class="zero" x1="{LEFT}" x2="{WIDTH - RIGHT}" y1="{py(0):.1f}" '
                    f'y2="{py(0):.1f}"/>')
    if threshold is not None:
        body.append(f'<line class="threshold" x1="{LEFT}" x2="{WIDTH - RIGHT}" '
                    f'y1="{py(threshold):.1f}" y2="{py(threshold):.1f}"/>')
    for k, s in enumerate(series):
        color = s.color or PALETTE[k % len(PALETTE)]
        points = [f"{px(t):.1f},{py(v):.1f}" for t, v in zip(x, s.values)
                  if v is not None and math.isfinite(v)]
        if len(points) > 1:
            body.append(f'<polyline fill="none" stroke="{color}" stroke-width="2" '
                        f'points="{" ".join(points)}"><title>{escape(s.name)}</title></polyline>')
        if len(points) <= 12:  # sparse: a dot per value, so a single one shows too
            for point in points:
                cx, cy = point.split(",")
                body.append(f'<circle class="dot" cx="{cx}" cy="{cy}" r="3" fill="{color}">'
                            f'<title>{escape(s.name)}</title></circle>')
    if log_scale:
        ticks = [10.0 ** e for e in range(math.floor(low), math.ceil(high) + 1)
                 if low <= e <= high]
    else:
        ticks = _ticks(low, high)
    span = x1 - x0
    x_ticks = [(px(x0 + span * f), _time_label(x0 + span * f, span)) for f in (0, 0.5, 1)]
    return _frame(title, summary or title, body, [(py(t), _label(t)) for t in ticks], x_ticks)


def legend(series: Sequence[Series]) -> Markup:
    """The key of a chart: a swatch (SVG: no inline style under the page's CSP) and a name."""
    items = []
    for k, s in enumerate(series):
        color = s.color or PALETTE[k % len(PALETTE)]
        items.append(f'<li><svg width="12" height="12" aria-hidden="true"><rect width="12" '
                     f'height="12" rx="2" fill="{color}"/></svg> {escape(s.name)}</li>')
    return Markup('<ul class="legend">' + "".join(items) + "</ul>")
