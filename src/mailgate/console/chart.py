"""The dashboard's chart: events per minute over the last hour, as inline SVG made here.

No script and no library: the server draws one polyline per event type on
a fixed grid, with a title per minute for hovering and a table beside it
for screen readers.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from datetime import datetime, timedelta

from markupsafe import Markup, escape

WIDTH, HEIGHT, PAD = 600, 160, 24
COLOURS = {"sent": "#2f7d32", "failed": "#c62828", "bounced": "#ef6c00"}


def per_minute(
    start: datetime, series: Mapping[str, Sequence[int]], kinds: Sequence[str]
) -> Markup:
    top = max([1, *(n for kind in kinds for n in series.get(kind, ()))])
    step = (WIDTH - 2 * PAD) / 59

    def x(i: int) -> float:
        return PAD + i * step

    def y(n: int) -> float:
        return HEIGHT - PAD - (HEIGHT - 2 * PAD) * n / top

    parts = [
        f'<svg class="chart" viewBox="0 0 {WIDTH} {HEIGHT}" role="img" '
        f'aria-labelledby="chart-title"><title id="chart-title">Messages per minute, '
        f"last hour (peak {top})</title>",
        f'<line x1="{PAD}" y1="{HEIGHT - PAD}" x2="{WIDTH - PAD}" y2="{HEIGHT - PAD}" '
        'class="axis"/>',
        f'<text x="{PAD}" y="{PAD - 8}" class="label">{top}/min</text>',
        f'<text x="{PAD}" y="{HEIGHT - 6}" class="label">{start:%H:%M}</text>',
        f'<text x="{WIDTH - PAD}" y="{HEIGHT - 6}" class="label" text-anchor="end">'
        f"{start + timedelta(minutes=59):%H:%M} UTC</text>",
    ]
    for kind in kinds:
        counts = list(series.get(kind, [0] * 60))
        points = " ".join(f"{x(i):.1f},{y(n):.1f}" for i, n in enumerate(counts))
        colour = COLOURS.get(kind, "#555")
        parts.append(
            f'<polyline data-kind="{escape(kind)}" points="{points}" fill="none" '
            f'stroke="{colour}" stroke-width="2"/>'
        )
        for i, n in enumerate(counts):
            if n:
                minute = start + timedelta(minutes=i)
                parts.append(
                    f'<circle cx="{x(i):.1f}" cy="{y(n):.1f}" r="2.5" fill="{colour}">'
                    f"<title>{minute:%H:%M} {escape(kind)}: {n}</title></circle>"
                )
    parts.append("</svg>")
    return Markup("".join(parts))
