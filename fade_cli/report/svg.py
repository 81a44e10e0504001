"""Line charts as inline SVG text (ROC and PRO curves), so reports need no plotting library."""

from __future__ import annotations

from dataclasses import dataclass
from html import escape

# Okabe-Ito colours (distinct for colour-blind readers), then a few more for many classes.
PALETTE = ("#0072B2", "#D55E00", "#009E73", "#CC79A7", "#E69F00", "#56B4E9", "#000000", "#F0E442",
           "#8c564b", "#7f7f7f", "#bcbd22", "#17becf", "#9467bd", "#e377c2", "#393b79", "#637939")


@dataclass
class Series:
    """One curve: points (x[i], y[i]) and its legend text."""

    name: str
    x: list[float]
    y: list[float]


def line_chart(series: list[Series], *, title: str, x_label: str, y_label: str, x_max: float = 1.0,
               y_max: float = 1.0, diagonal: bool = False, width: int = 420, height: int = 340) -> str:
    """An SVG chart of `series` on [0, x_max] x [0, y_max], with axes, ticks and a legend."""
    left, right, top, bottom = 48, 12, 26, 40
    legend_rows = len(series)
    height_total = height + 16 * legend_rows
    pw, ph = width - left - right, height - top - bottom

    def px(x: float) -> float:
        return left + pw * min(max(x / x_max, 0.0), 1.0)

    def py(y: float) -> float:
        return top + ph * (1.0 - min(max(y / y_max, 0.0), 1.0))

    parts = [f'<svg xmlns="http://www.w3.org/2000/svg" class="chart" role="img" viewBox="0 0 {width} {height_total}" '
             f'width="{width}" height="{height_total}" aria-label="{escape(title)}">',
             f'<text x="{left}" y="16" class="chart-title">{escape(title)}</text>',
             f'<rect x="{left}" y="{top}" width="{pw}" height="{ph}" class="frame"/>']
    for i in range(6):
        fx, fy = x_max * i / 5, y_max * i / 5
        parts.append(f'<line x1="{px(fx):.1f}" y1="{top}" x2="{px(fx):.1f}" y2="{top + ph}" class="grid"/>')
        parts.append(f'<line x1="{left}" y1="{py(fy):.1f}" x2="{left + pw}" y2="{py(fy):.1f}" class="grid"/>')
        parts.append(f'<text x="{px(fx):.1f}" y="{top + ph + 14}" class="tick" text-anchor="middle">{fx:g}</text>')
        parts.append(f'<text x="{left - 5}" y="{py(fy) + 4:.1f}" class="tick" text-anchor="end">{fy:g}</text>')
    parts.append(f'<text x="{left + pw / 2:.1f}" y="{top + ph + 32}" class="axis" text-anchor="middle">{escape(x_label)}</text>')
    parts.append(f'<text transform="translate(12 {top + ph / 2:.1f}) rotate(-90)" class="axis" text-anchor="middle">{escape(y_label)}</text>')
    if diagonal:
        parts.append(f'<line x1="{px(0)}" y1="{py(0)}" x2="{px(x_max)}" y2="{py(min(x_max, y_max))}" class="chance"/>')
    for i, s in enumerate(series):
        colour = PALETTE[i % len(PALETTE)]
        points = " ".join(f"{px(x):.1f},{py(y):.1f}" for x, y in zip(s.x, s.y))
        parts.append(f'<polyline points="{points}" fill="none" stroke="{colour}" stroke-width="1.8"><title>{escape(s.name)}</title></polyline>')
        ly = height + 16 * i
        parts.append(f'<line x1="{left}" y1="{ly - 4}" x2="{left + 18}" y2="{ly - 4}" stroke="{colour}" stroke-width="3"/>')
        parts.append(f'<text x="{left + 24}" y="{ly}" class="legend">{escape(s.name)}</text>')
    parts.append("</svg>")
    return "".join(parts)
