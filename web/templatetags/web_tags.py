"""Small template helpers: charts, badges, sizes and durations."""

from __future__ import annotations

from datetime import datetime
from typing import Any

from django import template
from django.utils import timezone

from web import charts
from web.live import Chart

register = template.Library()

_STATE_CSS = {
    "ready": "ok", "running": "ok", "deployed": "ok", "succeeded": "ok",
    "starting": "warn", "pending": "info", "draining": "warn",
    "exited": "bad", "failed": "bad", "oom": "bad", "down": "bad",
    "up": "ok", "crashing": "bad", "releasing": "info", "superseded": "idle",
    # A badge style given directly.
    "ok": "ok", "warn": "warn", "bad": "bad", "info": "info", "idle": "idle",
}


@register.filter
def container_status(c: Any) -> str:
    """What `paas ps` calls a container: up, starting, crashing, or how it ended."""
    from scheduler.conf import SchedulerSettings
    from scheduler.planner import status

    ready_at = c.ready_at.timestamp() if c.ready_at else None
    return status(c.state, c.restarts, ready_at, timezone.now().timestamp(),
                  float(SchedulerSettings.from_env().crash_reset_after_s))


@register.filter
def last_exit(c: Any) -> str:
    """How the container a crash replaced ended: `code 1`, `oom`, or empty."""
    if not c.last_exit_state:
        return ""
    if c.last_exit_state == "exited":
        return "exited" if c.last_exit_code is None else f"code {c.last_exit_code}"
    return str(c.last_exit_state)


@register.inclusion_tag("web/partials/chart.html")
def chart(value: Chart, chart_id: object) -> dict[str, Any]:
    return {"c": charts.draw(value), "chart_id": chart_id,
            "width": charts.WIDTH, "height": charts.HEIGHT}


@register.inclusion_tag("web/partials/badge.html")
def state_badge(state: str, label: str = "") -> dict[str, str]:
    return {"css": _STATE_CSS.get(str(state), "idle"), "label": label or str(state)}


@register.filter
def number(value: float | None) -> str:
    return charts.format_number(value)


@register.filter
def megabytes(value: float | None) -> str:
    if value is None:
        return "\N{EN DASH}"
    if value >= 1024:
        return f"{value / 1024:.1f} GB"
    return f"{value:.0f} MB"


@register.filter
def bytes_size(value: int | None) -> str:
    if value is None:
        return "\N{EN DASH}"
    size = float(value)
    for unit in ("B", "KB", "MB", "GB"):
        if size < 1024 or unit == "GB":
            return f"{size:.0f} {unit}" if unit == "B" else f"{size:.1f} {unit}"
        size /= 1024
    return f"{size:.1f} GB"  # pragma: no cover


@register.filter
def uptime(started: datetime | None) -> str:
    """How long ago `started` was, in the largest two units (e.g. 3h 12m)."""
    if started is None:
        return "\N{EN DASH}"
    seconds = max(0, int((timezone.now() - started).total_seconds()))
    days, rest = divmod(seconds, 86400)
    hours, rest = divmod(rest, 3600)
    minutes, seconds = divmod(rest, 60)
    if days:
        return f"{days}d {hours}h"
    if hours:
        return f"{hours}h {minutes}m"
    if minutes:
        return f"{minutes}m {seconds}s"
    return f"{seconds}s"


@register.filter
def usage_class(percent: int) -> str:
    return "full" if percent >= 90 else "high" if percent >= 70 else ""


@register.filter
def short_commit(commit: str) -> str:
    return commit[:7]


@register.filter
def took(build: Any) -> str:
    """How long a finished build ran, e.g. 42s or 3m 5s; a dash while it runs."""
    if build.started_at is None or build.finished_at is None:
        return "\N{EN DASH}"
    seconds = max(0, round((build.finished_at - build.started_at).total_seconds()))
    minutes, seconds = divmod(seconds, 60)
    return f"{minutes}m {seconds}s" if minutes else f"{seconds}s"


@register.filter
def build_badge(status: str) -> str:
    """The badge style of a build status: a build in progress is news, not yet good or bad."""
    return "info" if status in ("pending", "running") else _STATE_CSS.get(status, "idle")
