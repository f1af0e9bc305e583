"""Read the agents' reports (Redis streams) into Host and Container rows.

The streams `paas:agent:events` and `paas:agent:heartbeats` are read with the consumer group
`paas-scheduler`: each entry goes to one reader, and is acknowledged only after the rows it
changed are committed. A reader that dies leaves its entries pending; the next reader with the
same name takes them first, and any reader claims entries idle for longer than `CLAIM_IDLE_MS`.
So nothing is lost, and a redelivered entry changes nothing: a container's state only moves
forward (starting < running < ready < exited/failed/oom), never back.

Heartbeats update the host (capacity, reservations, load, last heartbeat; a `down` host that
beats again is `ready`) and the memory and CPU figures of the host's containers. Hosts silent for longer than `PAAS_HOST_DOWN_AFTER_S` become `down`.
Containers a host runs that the control plane no longer knows (it was down while they were
stopped) are stopped. The result names the apps whose containers changed: the caller writes
their routes and reconciles them.
"""

from __future__ import annotations

import json
import logging
import math
import re
from collections.abc import Iterable
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

import redis
from django.db import transaction
from django.utils import timezone

from core.models import Container, Host, HostState
from runtime.agent.reports import EVENTS_STREAM, HEARTBEATS_STREAM
from scheduler import applog, dispatch, oneoff
from scheduler.conf import SchedulerSettings

log = logging.getLogger(__name__)

GROUP = "paas-scheduler"
STREAMS = (EVENTS_STREAM, HEARTBEATS_STREAM)
CLAIM_IDLE_MS = 60_000
RANK = {"starting": 0, "running": 1, "ready": 2, "exited": 3, "failed": 3, "oom": 3}
# The ids the reconciler gives containers: `<app>.<type>.<number>.<6 hex digits>`.
OUR_ID = re.compile(r"^[a-z][a-z0-9-]*\.[a-z][a-z0-9_-]*\.\d+\.[0-9a-f]{6}$")

Entry = tuple[bytes, dict[bytes, bytes]]


@dataclass
class IngestResult:
    events: int = 0
    heartbeats: int = 0
    apps: set[int] = field(default_factory=set)
    hosts_down: list[str] = field(default_factory=list)
    stale_stopped: list[str] = field(default_factory=list)


def ensure_groups(r: redis.Redis[bytes]) -> None:
    for stream in STREAMS:
        try:
            r.xgroup_create(stream, GROUP, id="0", mkstream=True)
        except redis.exceptions.ResponseError as e:
            if "BUSYGROUP" not in str(e):
                raise


def _read(r: redis.Redis[bytes], stream: str, consumer: str, count: int) -> list[Entry]:
    """This consumer's unacknowledged entries, then abandoned ones, then new ones."""
    pending, fresh = _read_all(r, consumer, count, 0)
    return [*pending[stream], *fresh[stream]]


def _read_all(r: redis.Redis[bytes], consumer: str, count: int, block_ms: int
              ) -> tuple[dict[str, list[Entry]], dict[str, list[Entry]]]:
    """(pending and abandoned, new) entries of both streams; waits up to `block_ms` for new ones
    when nothing is pending (0: no wait)."""
    pending: dict[str, list[Entry]] = {}
    for stream in STREAMS:
        resp = r.xreadgroup(GROUP, consumer, {stream: "0"}, count=count)
        entries = [(i, f) for _name, items in resp or [] for i, f in items if f]
        claimed = r.xautoclaim(stream, GROUP, consumer, min_idle_time=CLAIM_IDLE_MS,
                               start_id="0-0", count=count)
        entries += [(i, f) for i, f in claimed[1] if f]
        unique: dict[bytes, Entry] = {}
        for e in entries:
            unique.setdefault(e[0], e)
        pending[stream] = list(unique.values())
    wait = block_ms if block_ms > 0 and not any(pending.values()) else None
    resp = r.xreadgroup(GROUP, consumer, dict.fromkeys(STREAMS, ">"), count=count, block=wait)
    fresh: dict[str, list[Entry]] = {s: [] for s in STREAMS}
    for name, items in resp or []:
        fresh[name.decode() if isinstance(name, bytes) else name] += [(i, f) for i, f in items if f]
    return pending, fresh


def ingest(r: redis.Redis[bytes], consumer: str, *, count: int = 1000, block_ms: int = 0,
           now: datetime | None = None) -> IngestResult:
    """Read one batch of reports into the database, acknowledge it, and mark silent hosts down.

    With `block_ms`, wait that long for new reports when none are waiting (the follower).
    """
    ensure_groups(r)
    conf = SchedulerSettings.from_env()
    try:
        pending, fresh = _read_all(r, consumer, count, block_ms)
    except redis.exceptions.ResponseError as e:
        if "NOGROUP" not in str(e):
            raise
        # Redis restarted empty between creating the group and reading: create it again.
        ensure_groups(r)
        pending, fresh = _read_all(r, consumer, count, block_ms)
    now = now or timezone.now()
    events = [*pending[EVENTS_STREAM], *fresh[EVENTS_STREAM]]
    beats = [*pending[HEARTBEATS_STREAM], *fresh[HEARTBEATS_STREAM]]
    result = IngestResult(events=len(events), heartbeats=len(beats))
    stale: list[tuple[str, str]] = []
    with transaction.atomic():
        for _id, f in events:
            _apply_event(_decode(f), result)
        stale = _apply_heartbeats([_decode(f) for _id, f in beats])
        result.hosts_down = _mark_silent_hosts_down(now - timedelta(seconds=conf.down_after_s), result)
    for stream, entries in ((EVENTS_STREAM, events), (HEARTBEATS_STREAM, beats)):
        if entries:
            r.xack(stream, GROUP, *[i for i, _ in entries])  # type: ignore[no-untyped-call]
    for host, cid in stale:
        if oneoff.is_expected(r, cid):
            continue  # a one-off (`paas run`, a release phase): in Redis, not in the database
        dispatch.current.stop(host, cid, conf.stop_timeout_s)
        result.stale_stopped.append(cid)
    return result


def _decode(f: dict[bytes, bytes]) -> dict[str, str]:
    return {k.decode(): v.decode(errors="replace") for k, v in f.items()}


def _apply_event(ev: dict[str, str], result: IngestResult) -> None:
    state = ev.get("state", "")
    row = Container.objects.select_for_update().filter(id=ev.get("id", "")).first()
    one_off_app = oneoff.app_of(ev.get("id", "")) if row is None and RANK.get(state) == 3 else None
    if one_off_app is not None:
        # A one-off ended (a release phase, say): reconciling its app looks at how.
        from core.models import App

        result.apps.update(App.objects.filter(name=one_off_app).values_list("pk", flat=True))
        return
    if row is None or state not in RANK:
        return  # a container the scheduler already removed, or a garbled entry
    if row.host is not None and row.host.name != ev.get("host"):
        log.warning("event for container %s from host %s, recorded on %s: ignored",
                    row.id, ev.get("host"), row.host.name)
        return
    if RANK[state] < RANK.get(row.state, 0) or (RANK[state] == RANK[row.state] and state == row.state):
        return  # older than what is recorded (a redelivery, or out of order)
    when = _time(ev.get("time"))
    row.state = state
    fields = ["state", "updated_at"]
    if ev.get("address"):
        row.address = ev["address"]
        fields.append("address")
    if state in ("running", "ready") and row.started_at is None:
        row.started_at = when
        fields.append("started_at")
    if state == "ready" and row.ready_at is None:
        row.ready_at = when
        fields.append("ready_at")
    if RANK[state] == 3:
        row.finished_at = when
        row.exit_code = int(ev["exit_code"]) if ev.get("exit_code", "").lstrip("-").isdigit() else None
        fields += ["finished_at", "exit_code"]
        if ev.get("message"):
            row.message = ev["message"][:500]
            fields.append("message")
    row.save(update_fields=fields)
    if RANK[state] == 3:  # the scheduler deletes the rows of containers it stops: this one ended
        applog.write(row.app.name, applog.container_ended(row), row.name)
    result.apps.add(row.app_id)


def _time(raw: str | None) -> datetime:
    try:
        return datetime.fromtimestamp(float(raw or ""), tz=UTC)
    except (ValueError, OverflowError, OSError):
        return timezone.now()


def _apply_heartbeats(beats: Iterable[dict[str, str]]) -> list[tuple[str, str]]:
    """Store each host's latest heartbeat; return (host, container id) of containers to remove."""
    latest: dict[str, tuple[float, dict[str, Any]]] = {}
    for b in beats:
        try:
            t = float(b.get("time", ""))
            data = json.loads(b.get("data", ""))
            datetime.fromtimestamp(t, tz=UTC)
        except (ValueError, OverflowError, OSError):
            continue  # garbled: acknowledged with the batch and dropped, never retried forever
        name = b.get("host", "")
        if isinstance(data, dict) and (name not in latest or t >= latest[name][0]):
            latest[name] = (t, data)
    stale: list[tuple[str, str]] = []
    for name, (t, data) in latest.items():
        host = Host.objects.select_for_update().filter(name=name).first()
        if host is None:
            log.warning("heartbeat from unregistered host %r ignored", name)
            continue
        when = datetime.fromtimestamp(t, tz=UTC)
        if host.last_heartbeat_at is not None and host.last_heartbeat_at > when:
            continue
        try:
            memory_mb = max(1, int(data.get("memory_mb") or host.memory_mb))
            cpus = max(1, int(data.get("cpus") or host.cpus))
            reserved = max(0, int(data.get("memory_reserved_mb") or 0))
            load1 = float(data.get("load1") or 0.0)
        except (TypeError, ValueError):
            log.warning("garbled heartbeat from host %r ignored", name)
            continue
        host.last_heartbeat_at = when
        host.memory_mb, host.cpus, host.memory_mb_used, host.cpus_used = memory_mb, cpus, reserved, load1
        if host.state == HostState.DOWN:
            host.state = HostState.READY
            log.info("host %s is back", name)
        host.save()
        listed = data.get("containers")
        reported = {str(c.get("id", "")) for c in listed if isinstance(c, dict)} if isinstance(listed, list) else set()
        rows = list(Container.objects.filter(id__in=reported, host=host))
        known = {row.id for row in rows}
        stale += [(name, cid) for cid in sorted(reported - known) if OUR_ID.match(cid)]
        _store_usage(rows, listed if isinstance(listed, list) else [])
    return stale


def _store_usage(rows: list[Container], listed: list[Any]) -> None:
    """Put the heartbeat's memory and CPU figures on the host's Container rows (one UPDATE)."""
    usage = {str(c.get("id", "")): c for c in listed if isinstance(c, dict)}
    changed = []
    for row in rows:
        entry = usage.get(row.id, {})
        memory, cpu = _whole(entry.get("memory_bytes")), _share(entry.get("cpu_percent"))
        if (row.memory_bytes, row.cpu_percent) != (memory, cpu):
            row.memory_bytes, row.cpu_percent = memory, cpu
            changed.append(row)
    if changed:
        Container.objects.bulk_update(changed, ["memory_bytes", "cpu_percent"])


def _whole(raw: object) -> int | None:
    ok = isinstance(raw, int) and not isinstance(raw, bool) and 0 <= raw < 2**63
    return raw if ok else None  # type: ignore[return-value]


def _share(raw: object) -> float | None:
    if isinstance(raw, bool) or not isinstance(raw, (int, float)):
        return None
    value = float(raw)
    return value if math.isfinite(value) and value >= 0 else None


def _mark_silent_hosts_down(before: datetime, result: IngestResult) -> list[str]:
    silent = list(
        Host.objects.select_for_update()
        .filter(state__in=[HostState.READY, HostState.DRAINING], last_heartbeat_at__lt=before)
    )
    for host in silent:
        host.state = HostState.DOWN
        host.save(update_fields=["state"])
        log.warning("host %s missed its heartbeats: down", host.name)
        result.apps.update(Container.objects.filter(host=host).values_list("app_id", flat=True))
    return [h.name for h in silent]
