"""SVG charts drawn on the server: no script, no third-party library.

Each chart is an ``<svg>`` with a viewBox, so it scales to the width of a
phone or a desktop column; colours and fonts come from classes styled by
``/static/analytics.css`` (the pages' CSP allows no inline styles).  Every
chart carries a ``<title>`` and a ``<desc>`` summary for screen readers.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from html import escape
from typing import Callable, Sequence

# A narrow viewBox keeps the 13-unit labels legible when a phone scales the chart down.
WIDTH, HEIGHT = 480, 220
LEFT, RIGHT, TOP, BOTTOM = 48, 12, 12, 28
Y_TICKS = 4


def clock(seconds: float) -> str:
    """0:00, 12:30, 1:02:03."""
    s = int(round(seconds))
    h, m, r = s // 3600, (s % 3600) // 60, s % 60
    return f"{h}:{m:02d}:{r:02d}" if h else f"{m}:{r:02d}"


def axis_max(value: float, *, integer: bool = False) -> float:
    """An axis maximum of ``Y_TICKS`` round steps (1, 2, 2.5 or 5 x 10^n) at or above ``value``;
    whole-number steps for counts, so no axis says "1.5 viewers"."""
    wanted = max(value, 0) / Y_TICKS
    if wanted <= 0:
        return float(Y_TICKS) if integer else 1.0
    exp = 10 ** math.floor(math.log10(wanted))
    step = next(s * exp for s in (1, 2, 2.5, 5, 10) if wanted <= s * exp)
    if integer:
        step = max(1, math.ceil(step))
    return float(step * Y_TICKS)


def _number(v: float) -> str:
    return f"{v:g}" if v < 1000 else f"{v / 1000:g}k"


@dataclass(frozen=True)
class Series:
    name: str
    points: Sequence[tuple[float, float]]   # (x, y)
    css: str                                # class: colour of the line / bars


class Frame:
    """Maps data to the plot area and draws the axes."""

    def __init__(self, x_max: float, y_max: float, *, integer: bool = True) -> None:
        self.x_max = x_max if x_max > 0 else 1.0
        self.y_max = axis_max(y_max, integer=integer)
        self.w = WIDTH - LEFT - RIGHT
        self.h = HEIGHT - TOP - BOTTOM

    def x(self, value: float) -> float:
        return round(LEFT + self.w * value / self.x_max, 1)

    def y(self, value: float) -> float:
        return round(TOP + self.h * (1 - value / self.y_max), 1)

    def axes(self, x_label: Callable[[float], str], y_suffix: str = "") -> list[str]:
        parts = []
        for i in range(Y_TICKS + 1):
            v = self.y_max * i / Y_TICKS
            y = self.y(v)
            parts.append(f'<line class="grid" x1="{LEFT}" y1="{y}" x2="{WIDTH - RIGHT}" y2="{y}"/>')
            parts.append(f'<text class="tick" x="{LEFT - 6}" y="{y + 4}" text-anchor="end">'
                         f'{_number(v)}{y_suffix}</text>')
        for i in range(5):
            v = self.x_max * i / 4
            anchor = "start" if i == 0 else "end" if i == 4 else "middle"
            parts.append(f'<text class="tick" x="{self.x(v)}" y="{HEIGHT - 10}" text-anchor="{anchor}">'
                         f'{escape(x_label(v))}</text>')
        parts.append(f'<line class="axis" x1="{LEFT}" y1="{self.y(0)}" x2="{WIDTH - RIGHT}" y2="{self.y(0)}"/>')
        return parts


def _svg(chart_id: str, title: str, desc: str, parts: list[str], legend: Sequence[Series] = ()) -> str:
    keys = "".join(f'<li><span class="swatch {s.css}"></span>{escape(s.name)}</li>' for s in legend)
    return (f'<figure class="chart" id="{chart_id}">'
            f'<svg viewBox="0 0 {WIDTH} {HEIGHT}" role="img" aria-labelledby="{chart_id}-t {chart_id}-d" '
            f'xmlns="http://www.w3.org/2000/svg">'
            f'<title id="{chart_id}-t">{escape(title)}</title><desc id="{chart_id}-d">{escape(desc)}</desc>'
            + "".join(parts) + "</svg>"
            + (f'<ul class="legend">{keys}</ul>' if keys else "")
            + f"<figcaption>{escape(title)}</figcaption></figure>")


def line_chart(chart_id: str, title: str, series: Sequence[Series], *, x_max: float,
               x_label: Callable[[float], str] = clock, y_max: float | None = None, y_suffix: str = "",
               area: bool = True, integer: bool = True) -> str:
    """Lines over time (x in seconds from the start)."""
    top = y_max if y_max is not None else max((y for s in series for _, y in s.points), default=0)
    frame = Frame(x_max, top, integer=integer)
    parts = frame.axes(x_label, y_suffix)
    for s in series:
        if not s.points:
            continue
        coords = " ".join(f"{frame.x(x)},{frame.y(y)}" for x, y in s.points)
        if area:
            first, last = s.points[0][0], s.points[-1][0]
            parts.append(f'<polygon class="area {s.css}" points="{frame.x(first)},{frame.y(0)} {coords} '
                         f'{frame.x(last)},{frame.y(0)}"/>')
        parts.append(f'<polyline class="line {s.css}" points="{coords}"/>')
    peak = max((y for s in series for _, y in s.points), default=0)
    desc = f"{len(series[0].points) if series else 0} points over {x_label(x_max)}; highest {peak:g}{y_suffix}."
    return _svg(chart_id, title, desc, parts, series if len(series) > 1 else ())


def bar_chart(chart_id: str, title: str, series: Sequence[Series], *, x_max: float, step: float,
              x_label: Callable[[float], str] = clock, integer: bool = True) -> str:
    """Stacked bars, one per ``step`` of x (per minute, say)."""
    totals: dict[float, float] = {}
    for s in series:
        for x, y in s.points:
            totals[x] = totals.get(x, 0) + y
    frame = Frame(max(x_max, step), max(totals.values(), default=0), integer=integer)
    parts = frame.axes(x_label)
    width = max(1.0, frame.w * step / frame.x_max - 1)
    stacked: dict[float, float] = {}
    for s in series:
        for x, y in s.points:
            if y <= 0:
                continue
            base = stacked.get(x, 0)
            stacked[x] = base + y
            top, bottom = frame.y(base + y), frame.y(base)
            parts.append(f'<rect class="bar {s.css}" x="{frame.x(x)}" y="{top}" width="{width:.1f}" '
                         f'height="{round(bottom - top, 1)}"><title>{escape(x_label(x))}: {y:g} '
                         f'{escape(s.name)}</title></rect>')
    desc = f"{sum(totals.values()):g} in all; at most {max(totals.values(), default=0):g} in one bar."
    return _svg(chart_id, title, desc, parts, series)
