"""The activity page: messages per minute over the last hour by status, as a stacked bar
chart drawn on the server in SVG (no script), reloaded every 10 s."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from starlette.requests import Request
from starlette.responses import Response

from mailrouter.console.web import ask, get, render, when

WIDTH, HEIGHT = 960, 280  # the plot area, in SVG units
LEFT, BOTTOM, TOP = 48, 28, 12  # margins for the axes' labels
COLORS = {  # one per message status, in stacking order
    "delivered": "#2e7d32",
    "queued": "#f9a825",
    "partial": "#ef6c00",
    "refused": "#c62828",
    "deferred": "#6a1b9a",
    "pending": "#1565c0",
    "received": "#607d8b",
}


@dataclass(frozen=True)
class Bar:
    """One status's share of one minute: a rectangle, and its tooltip."""

    x: float
    y: float
    width: float
    height: float
    color: str
    title: str


def chart(activity: dict[str, Any]) -> dict[str, Any]:
    """The chart's geometry: stacked bars, the y axis ticks, the x axis labels, the legend."""
    minutes: list[float] = activity["minutes"]
    counts: dict[str, list[int]] = activity["counts"]
    totals = [sum(counts[s][i] for s in COLORS) for i in range(len(minutes))]
    peak = max(max(totals, default=0), 1)
    step = WIDTH / max(len(minutes), 1)
    scale = (HEIGHT - TOP - BOTTOM) / peak
    base = HEIGHT - BOTTOM
    bars = []
    for i, minute in enumerate(minutes):
        y = float(base)
        for status, color in COLORS.items():
            count = counts[status][i]
            if count:
                height = count * scale
                y -= height
                title = f"{when(minute)[11:16]} UTC: {count} {status}"
                bars.append(Bar(LEFT + i * step + 1, y, max(step - 2, 1), height, color, title))
    ticks = [(round(base - value * scale, 1), value) for value in sorted({0, peak // 2, peak})]
    labels = [
        (LEFT + i * step, when(minute)[11:16]) for i, minute in enumerate(minutes) if i % 10 == 0
    ]
    used = [status for status in COLORS if any(counts[status])]
    return {
        "bars": bars,
        "ticks": ticks,
        "labels": labels,
        "legend": [(status, COLORS[status], sum(counts[status])) for status in used],
        "width": LEFT + WIDTH,
        "height": HEIGHT,
        "left": LEFT,
        "base": base,
        "total": activity["total"],
    }


async def activity(request: Request) -> Response:
    """The page, with the chart in it."""
    return await render(request, "activity.html", chart=chart(await ask(request, "activity")))


async def figure(request: Request) -> Response:
    """The chart alone, for the reload."""
    return await render(
        request, "_activity_chart.html", chart=chart(await ask(request, "activity"))
    )


ROUTES = [get("/activity", activity), get("/activity/chart", figure)]
