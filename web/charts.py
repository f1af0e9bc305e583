"""Turn a chart's per-minute series into SVG geometry (pure; the template draws it).

Charts are drawn on the server as inline SVG: no chart library, no JavaScript, readable by screen
readers through the figure's caption and a summary sentence.
"""

from __future__ import annotations

from dataclasses import dataclass

from web.live import Chart

WIDTH = 600
HEIGHT = 100
PAD_TOP = 6  # leave room so a peak's stroke is not cut off


@dataclass(frozen=True, slots=True)
class DrawnSeries:
    name: str
    css: str
    line: str  # SVG path data, one sub-path per run of minutes that have samples
    area: str
    latest: float | None


@dataclass(frozen=True, slots=True)
class DrawnChart:
    title: str
    unit: str
    has_data: bool
    peak: float
    series: list[DrawnSeries]
    summary: str


# Status classes keep their conventional colours whatever their order.
SERIES_CSS = {"2xx": "s1", "3xx": "s0", "4xx": "s2", "5xx": "s3", "mean": "s0", "p95": "s2"}


def _fmt(value: float) -> str:
    if value == int(value) and abs(value) < 1e15:
        return f"{int(value):,}"
    if value >= 100:
        return f"{value:,.0f}"
    if value >= 10:
        return f"{value:.1f}"
    return f"{value:.2f}".rstrip("0").rstrip(".") or "0"


def nice_ceiling(value: float) -> float:
    """The smallest of 1, 2, 2.5 or 5 times a power of ten that is at least `value`."""
    if value <= 0:
        return 1.0
    magnitude = 1.0
    while magnitude * 10 < value:
        magnitude *= 10
    while magnitude > value:
        magnitude /= 10
    for step in (1, 2, 2.5, 5, 10):
        if step * magnitude >= value:
            return step * magnitude
    return 10 * magnitude  # pragma: no cover - the loop always returns


def draw(chart: Chart) -> DrawnChart:
    samples = [v for s in chart.series for v in s.values if v is not None]
    peak = nice_ceiling(max(samples)) if samples else 1.0
    drawn: list[DrawnSeries] = []
    for index, series in enumerate(chart.series):
        count = len(series.values)
        step = WIDTH / max(count - 1, 1)
        runs: list[list[tuple[float, float]]] = [[]]
        for i, value in enumerate(series.values):
            if value is None:
                if runs[-1]:
                    runs.append([])
                continue
            y = HEIGHT - (value / peak) * (HEIGHT - PAD_TOP)
            runs[-1].append((round(i * step, 1), round(y, 1)))
        line_parts, area_parts = [], []
        for run in runs:
            if not run:
                continue
            if len(run) == 1:  # a lone sample still shows as a short tick
                x, y = run[0]
                run = [(max(x - 2, 0), y), (min(x + 2, WIDTH), y)]
            points = " L".join(f"{x},{y}" for x, y in run)
            line_parts.append(f"M{points}")
            area_parts.append(f"M{run[0][0]},{HEIGHT} L{points} L{run[-1][0]},{HEIGHT} Z")
        latest_values = [v for v in series.values if v is not None]
        drawn.append(DrawnSeries(series.name, SERIES_CSS.get(series.name, f"s{index % 4}"),
                                 " ".join(line_parts),
                                 " ".join(area_parts), latest_values[-1] if latest_values else None))
    if samples:
        latest = "; ".join(f"{d.name} {_fmt(d.latest)} {chart.unit}" for d in drawn
                           if d.latest is not None)
        summary = f"{chart.title} over the last hour, peak {_fmt(max(samples))} {chart.unit}. Latest: {latest}."
    else:
        summary = f"{chart.title}: no data yet."
    return DrawnChart(chart.title, chart.unit, bool(samples), peak, drawn, summary)


def format_number(value: float | None) -> str:
    return "\N{EN DASH}" if value is None else _fmt(value)
