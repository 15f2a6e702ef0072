"""Server-side SVG for the marketers' view: the H3 map, a cell's time series, the ledger.

No map tiles (none are reachable here, and a tile server would learn what is looked at):
cells are drawn from their H3 boundaries, projected to a local equirectangular plane and
scaled to pixels rounded to 0.1, so no latitude or longitude ever reaches the page.
Each cell carries its value and 95 % interval in a ``<title>`` (hover; a tap follows the
cell's link to its time series); a cell whose interval spans zero is hatched.
"""
from __future__ import annotations

import math
from html import escape
from typing import Sequence

import h3

WIDTH = 760
# A sequential scale (light to dark), readable by the colour-blind and in greyscale.
RAMP = ("#f7fbff", "#deebf7", "#c6dbef", "#9ecae1", "#6baed6", "#4292c6", "#2171b5", "#08519c", "#08306b")


def spans_zero(value: float, ci: float) -> bool:
    return value - ci <= 0.0 <= value + ci


def colour(value: float, top: float) -> str:
    if top <= 0 or value <= 0:
        return RAMP[0]
    return RAMP[min(len(RAMP) - 1, int(value / top * (len(RAMP) - 1) + 0.5))]


def _fmt(x: float) -> str:
    return f"{x:.1f}"


def cell_map(rows: Sequence[tuple[str, float, float]], link, label) -> str:
    """``rows``: (h3_cell, value, ci95_halfwidth). ``link(cell)`` -> href, ``label(cell, v, ci)`` -> title."""
    if not rows:
        return ""
    rings = {cell: h3.cell_to_boundary(cell) for cell, _, _ in rows}
    lats = [lat for ring in rings.values() for lat, _ in ring]
    lngs = [lng for ring in rings.values() for _, lng in ring]
    west, east, south, north = min(lngs), max(lngs), min(lats), max(lats)
    shrink = math.cos(math.radians((south + north) / 2))
    span_x = max((east - west) * shrink, 1e-9)
    span_y = max(north - south, 1e-9)
    scale = WIDTH / span_x
    height = span_y * scale
    top = max((v for _, v, _ in rows), default=0.0)
    parts = [f'<svg xmlns="http://www.w3.org/2000/svg" viewBox="0 0 {WIDTH} {_fmt(height)}" class="map" role="img">',
             '<defs><pattern id="z" width="6" height="6" patternUnits="userSpaceOnUse" patternTransform="rotate(45)">'
             '<rect width="6" height="6" fill="#eee"/><line x1="0" y1="0" x2="0" y2="6" stroke="#999" stroke-width="2"/>'
             '</pattern></defs>']
    for cell, value, ci in rows:
        points = " ".join(f"{_fmt((lng - west) * shrink * scale)},{_fmt((north - lat) * scale)}"
                          for lat, lng in rings[cell])
        zero = spans_zero(value, ci)
        fill = "url(#z)" if zero else colour(value, top)
        parts.append(f'<a href="{escape(link(cell))}"><polygon points="{points}" fill="{fill}" '
                     f'class="{"zero" if zero else "sig"}" data-cell="{cell}"><title>{escape(label(cell, value, ci))}'
                     f'</title></polygon></a>')
    parts.append("</svg>")
    return "".join(parts)


def _plot_frame(xs: Sequence[float], lows: Sequence[float], highs: Sequence[float], w=WIDTH, h=260, pad=40):
    x0, x1 = min(xs), max(xs)
    y0, y1 = min(0.0, min(lows)), max(0.0, max(highs))
    if x1 == x0:
        x1 = x0 + 1
    if y1 == y0:
        y1 = y0 + 1

    def px(x):
        return pad + (x - x0) / (x1 - x0) * (w - 2 * pad)

    def py(y):
        return h - pad - (y - y0) / (y1 - y0) * (h - 2 * pad)
    return px, py, y0, y1


def time_series(points: Sequence[tuple[float, float, float]], x_label, w=WIDTH, h=260) -> str:
    """``points``: (x, value, ci95_halfwidth), x increasing: the line, its interval band, the zero line."""
    if not points:
        return ""
    xs = [p[0] for p in points]
    px, py, y0, y1 = _plot_frame(xs, [v - c for _, v, c in points], [v + c for _, v, c in points], w, h)
    upper = " ".join(f"{_fmt(px(x))},{_fmt(py(v + c))}" for x, v, c in points)
    lower = " ".join(f"{_fmt(px(x))},{_fmt(py(v - c))}" for x, v, c in reversed(points))
    line = " ".join(f"{_fmt(px(x))},{_fmt(py(v))}" for x, v, _ in points)
    marks = "".join(f'<circle cx="{_fmt(px(x))}" cy="{_fmt(py(v))}" r="3"><title>{escape(x_label(x))}: '
                    f'{v:.1f} ± {c:.1f}</title></circle>' for x, v, c in points)
    ticks = "".join(f'<text x="{_fmt(px(x))}" y="{h - 20}" font-size="10" text-anchor="middle">'
                    f'{escape(x_label(x))}</text>' for x in xs[:: max(1, len(xs) // 8)])
    return (f'<svg xmlns="http://www.w3.org/2000/svg" viewBox="0 0 {w} {h}" class="chart" role="img">'
            f'<polygon points="{upper} {lower}" fill="#c6dbef" class="band"/>'
            f'<line x1="40" x2="{w - 40}" y1="{_fmt(py(0))}" y2="{_fmt(py(0))}" stroke="#999" stroke-dasharray="4"/>'
            f'<polyline points="{line}" fill="none" stroke="#08519c" stroke-width="2"/>{marks}{ticks}'
            f'<text x="4" y="{_fmt(py(y1)) }" font-size="10">{y1:.0f}</text>'
            f'<text x="4" y="{_fmt(py(y0))}" font-size="10">{y0:.0f}</text></svg>')


def ledger_bars(days: Sequence[tuple[str, float]], budget: float | None, w=WIDTH, h=220) -> str:
    """ε spent per day as bars, the per-user-day budget as a red line."""
    if not days:
        return ""
    top = max([e for _, e in days] + [budget or 0.0]) * 1.1 or 1.0
    pad, slot = 40, (w - 80) / len(days)
    parts = [f'<svg xmlns="http://www.w3.org/2000/svg" viewBox="0 0 {w} {h}" class="chart" role="img">']
    for i, (day, eps) in enumerate(days):
        bar_h = eps / top * (h - 2 * pad)
        x = pad + i * slot + slot * 0.15
        parts.append(f'<rect x="{_fmt(x)}" y="{_fmt(h - pad - bar_h)}" width="{_fmt(slot * 0.7)}" '
                     f'height="{_fmt(bar_h)}" fill="#4292c6" class="spent"><title>{escape(day)}: ε {eps:.4g}</title></rect>'
                     f'<text x="{_fmt(x + slot * 0.35)}" y="{h - pad + 14}" font-size="10" text-anchor="middle">'
                     f'{escape(day)}</text>')
    if budget:
        y = h - pad - budget / top * (h - 2 * pad)
        parts.append(f'<line x1="{pad}" x2="{w - pad}" y1="{_fmt(y)}" y2="{_fmt(y)}" stroke="#c00" '
                     f'stroke-width="2" class="budget"/><text x="{w - pad}" y="{_fmt(y - 4)}" font-size="10" '
                     f'text-anchor="end" fill="#c00">ε {budget:g}</text>')
    parts.append("</svg>")
    return "".join(parts)
