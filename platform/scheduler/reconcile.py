"""Apply the reconcile plan for one app: load rows, plan, record containers, send to agents.

One app at a time under a Redis lock (`paas:scheduler:lock:app:<id>`), so two workers never
place the same app twice. Everything is decided inside one database transaction; the effects
that leave the database (route table, agent tasks) run only once it has committed, in this
order: the route table without the containers being stopped, then the new containers' specs,
then the stops. A run that changes nothing sends nothing, so a repeated or redelivered task is
harmless, and a worker that dies mid-way leaves rows that the next run plans from.
"""

from __future__ import annotations

import json
import logging
import secrets
import time
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime
from functools import cache
from typing import Any

import redis
from django.conf import settings
from django.db import transaction
from django.utils import timezone

from core.models import (
    App,
    Build,
    BuildStatus,
    Container,
    Domain,
    Formation,
    Host,
    Release,
    ReleaseStatus,
)
from router.table import (
    APPS_KEY,
    DOMAINS_KEY,
    check_app_name,
    route_app_delete,
    route_app_set,
    route_domain_delete,
    route_domain_set,
)
from runtime.spec import ContainerSpec, SpecError
from scheduler import applog, dispatch, oneoff
from scheduler.conf import SchedulerSettings
from scheduler.placement import HostCapacity, with_reservations
from scheduler.planner import (
    CRASHING_RESTARTS,
    GONE,
    LIVE,
    Desired,
    Observed,
    Plan,
    ProcessType,
    backoff_s,
    plan,
)

log = logging.getLogger(__name__)

LOCK_KEY = "paas:scheduler:lock:app:{app_id}"
LOCK_TIMEOUT_S = 120
# Where older versions kept each container's readiness check (a hash per app, container id ->
# JSON); now on the Container row. No longer written; an app's leftover goes with its data.
READINESS_KEY = "paas:scheduler:readiness:{app}"
# Past its boot timeout, the agent's own verdict (with its message) gets this long to arrive
# before the control plane decides without it.
READINESS_GRACE_S = 10.0
NO_READINESS_RESULT = "not ready within its boot timeout (no readiness result from its agent)"


@cache
def redis_client(url: str | None = None) -> redis.Redis[bytes]:
    return redis.Redis.from_url(url or settings.REDIS_URL)


@dataclass
class Outcome:
    """What one reconcile did (for the task's log and for tests)."""

    status: str  # "done", "locked" (another run holds the app), "gone" (no such app)
    plan: Plan = field(default_factory=Plan)
    started: list[str] = field(default_factory=list)
    stopped: list[str] = field(default_factory=list)
    release: int | None = None


def reconcile_app(app_id: int, *, now: float | None = None, wait_s: float = 10.0) -> Outcome:
    """Converge one app one step towards its release x formation (see the module docstring).

    Waits up to `wait_s` for the app's lock; "locked" when another run still holds it.
    """
    lock = redis_client().lock(LOCK_KEY.format(app_id=app_id), timeout=LOCK_TIMEOUT_S,
                               blocking_timeout=wait_s)
    if not lock.acquire():
        return Outcome("locked")
    try:
        return _reconcile_locked(app_id, time.time() if now is None else now)
    finally:
        try:
            lock.release()
        except redis.exceptions.LockError:
            log.warning("the reconcile lock of app id %s expired before the run ended", app_id)


def _reconcile_locked(app_id: int, now: float) -> Outcome:
    conf = SchedulerSettings.from_env()
    with transaction.atomic():
        app = App.objects.filter(pk=app_id).first()
        if app is None:
            return Outcome("gone")
        release = _target_release(app)
        if release is not None:
            _supersede_older(app, release)
        # A release phase to run first keeps the release that served before it serving.
        release, phase_running = oneoff.plan_release(app, release, now)
        rows = list(Container.objects.filter(app=app).select_related("host", "release"))
        # The `release` process type is the release phase's command, never a running process.
        formation = {f.type: f for f in Formation.objects.filter(app=app).exclude(type=oneoff.RELEASE)}
        checks = Checks()
        if release is not None:
            checks = _check_readiness(app.name, release, rows, formation, conf, now)
        if (release is not None and release.status == ReleaseStatus.PENDING
                and _fail_if_crashed(app, release, rows)):
            release, phase_running = oneoff.plan_release(app, _target_release(app), now)
        build = release.build if release is not None else None
        image = build.image_digest if build and build.status == BuildStatus.SUCCEEDED and build.image_digest else None
        desired = Desired(
            app=app.name,
            release=release.version if release is not None else 0,
            image=image,
            processes=tuple(
                ProcessType(f.type, f.quantity, f.memory_mb, f.cpu, _labels(f.constraints))
                for f in formation.values()
            ),
        )
        observed = [
            Observed(
                id=c.id, type=c.type, number=c.number, release=c.release.version,
                host=c.host.name if c.host else None, state=c.state, restarts=c.restarts,
                finished_at=c.finished_at.timestamp() if c.finished_at else None,
                created_at=c.created_at.timestamp(),
                ready_at=c.ready_at.timestamp() if c.ready_at else None, exit_code=c.exit_code,
            )
            for c in rows
        ]
        # A spec that reached its agent is `running` within seconds (the image is local, or
        # pulled within the boot timeout); `starting` for longer means it never got there.
        boot_timeout_s = max([conf.boot_timeout_s, *(f.boot_timeout_s or 0 for f in formation.values())])
        p = plan(desired, observed, _host_capacities(conf.cpu_overcommit), now,
                 start_timeout_s=boot_timeout_s + 60, max_surge=conf.max_surge,
                 max_unavailable=conf.max_unavailable, stable_s=conf.crash_reset_after_s)
        if phase_running:
            p = oneoff.poll_soon(p, now)
        if checks.wake_at is not None and (p.retry_at is None or checks.wake_at < p.retry_at):
            p = replace(p, retry_at=checks.wake_at)
        out = Outcome("done", p, release=desired.release if release is not None else None)

        by_id = {c.id: c for c in rows}
        stops = [(st, by_id[st.container_id]) for st in p.stops]
        Container.objects.filter(id__in=[st.container_id for st, _ in stops]).delete()
        out.stopped = [st.container_id for st, _ in stops]

        hosts = {h.name: h for h in Host.objects.filter(name__in={s.host for s in p.starts})}
        specs: list[tuple[str, dict[str, Any]]] = []
        for s in p.starts:
            assert release is not None and build is not None
            cid = f"{app.name}.{s.type[:16]}.{s.number}.{secrets.token_hex(3)}"
            check = readiness_check(conf, formation[s.type])
            row = Container.objects.create(
                id=cid, app=app, release=release, type=s.type, number=s.number,
                host=hosts[s.host], restarts=s.restarts, last_exit_state=s.last_exit_state,
                last_exit_code=s.last_exit_code,
                readiness_type=check["type"] if check else None,
                readiness_path=check.get("path", "/") if check else None,
                readiness_timeout_s=check["timeout_s"] if check else None,
            )
            try:
                spec = _spec(conf, app, release, build, formation[s.type], row, check)
            except SpecError as e:
                log.error("container %s of %s cannot be run: %s", cid, app.name, e)
                Container.objects.filter(id=cid).update(
                    state="failed", finished_at=timezone.now(), message=f"invalid container spec: {e}"[:500])
                continue
            specs.append((s.host, spec))
            out.started.append(cid)

        if release is not None:
            was = release.status
            _announce(app.name, release, p, rows, formation)
            _update_release_status(release, p, rows)
            if release.status != was and release.status == ReleaseStatus.DEPLOYED:
                applog.write(app.name, f"Release {release.name} is deployed")
        for reason in p.unplaced:
            log.warning("app %s: %s", app.name, reason)

        # Gone containers too: the agent removes them; a down host does it when it is back.
        to_stop = [(row.host.name, row.id) for _, row in stops if row.host is not None]
        app_name = app.name
        transaction.on_commit(
            lambda: _effects(app_name, app_id, specs, to_stop, conf.stop_timeout_s, checks))
    return out


def _effects(app_name: str, app_id: int, specs: list[tuple[str, dict[str, Any]]],
             stops: list[tuple[str, str]], stop_timeout_s: float, checks: Checks) -> None:
    """After commit: routes first (stopping containers leave them), then the starts, the
    readiness checks sent again, and the stops."""
    try:
        routes_sync(app_name, app_id)
    except redis.exceptions.RedisError as e:
        log.warning("could not write the routes of %s (the next run retries): %s", app_name, e)
    for host, spec in specs:
        dispatch.current.run(host, spec)
    for host, cid, address, readiness, deadline in checks.asks:
        log.info("no readiness result for %s yet: asking the agent on %s again", cid, host)
        dispatch.current.ready(host, cid, address, readiness, deadline)
    for host, cid in stops:
        dispatch.current.stop(host, cid, stop_timeout_s)


@dataclass
class Checks:
    """What the readiness bookkeeping of one run decided (see `_check_readiness`)."""

    asks: list[tuple[str, str, str, dict[str, Any], float]] = field(default_factory=list)
    wake_at: float | None = None  # when a check is due to be sent again, or to time out


def readiness_of(c: Container, f: Formation | None, default_boot_timeout_s: int) -> dict[str, Any]:
    """The readiness check `c` was started with (`type`, `path`, `timeout_s`), as its row
    recorded it when its spec was sent; for a row without it (from before these were recorded),
    what its formation asks now."""
    if c.readiness_type is not None and c.readiness_timeout_s is not None:
        return {"type": c.readiness_type, "path": c.readiness_path or "/",
                "timeout_s": float(c.readiness_timeout_s)}
    path = f.readiness_path if f is not None else ""
    timeout = (f.boot_timeout_s if f is not None else None) or default_boot_timeout_s
    return {"type": "http" if path else "tcp", "path": path or "/", "timeout_s": float(timeout)}


def _check_readiness(app_name: str, release: Release, rows: list[Container],
                     formation: dict[str, Formation], conf: SchedulerSettings, now: float) -> Checks:
    """Web containers of `release` that run but are not ready: past half their boot timeout
    without an answer the agent is asked again (it may have lost its check, say restarted in
    the middle of it); past the whole timeout (and a grace for the agent's own verdict) the
    container failed its readiness, with or without the agent. Rows are updated in place."""
    checks = Checks()

    def wake(at: float) -> None:
        checks.wake_at = at if checks.wake_at is None else min(checks.wake_at, at)

    for c in rows:
        if c.release_id != release.pk or c.state != "running":
            continue
        if c.readiness_type is None and c.type != "web":
            continue  # no port and no check: the agent reports it ready once it runs
        r = readiness_of(c, formation.get(c.type), conf.boot_timeout_s)
        timeout = float(r["timeout_s"])
        since = (c.started_at or c.created_at).timestamp()
        give_up = since + timeout + READINESS_GRACE_S
        if now >= give_up:
            c.state = "failed"
            c.finished_at = datetime.fromtimestamp(now, tz=UTC)
            c.message = NO_READINESS_RESULT
            c.save(update_fields=["state", "finished_at", "message", "updated_at"])
            log.warning("container %s of %s: %s", c.id, app_name, NO_READINESS_RESULT)
            applog.write(app_name, applog.container_ended(c), c.name)
            continue
        wake(give_up)
        ask_at = since + timeout / 2
        if c.readiness_asked_at is not None or c.host is None or not c.address:
            continue
        if now < ask_at:
            wake(ask_at)
            continue
        checks.asks.append((c.host.name, c.id, c.address, r, since + timeout))
        c.readiness_asked_at = datetime.fromtimestamp(now, tz=UTC)
        Container.objects.filter(pk=c.pk).update(readiness_asked_at=c.readiness_asked_at)
    return checks


def _announce(app_name: str, release: Release, p: Plan, rows: list[Container],
              formation: dict[str, Formation]) -> None:
    """Say in the app's log what this run does: a roll-out begins, a type is scaled, each
    container started or stopped."""
    mine = [c for c in rows if c.release_id == release.pk]
    starts = [s for s in p.starts if s.release == release.version]
    if starts and not mine and release.status == ReleaseStatus.PENDING:
        applog.write(app_name, f"Deploying {release.name}")
    if release.status == ReleaseStatus.DEPLOYED:
        stopped = {applog.container_name(st.container_id).split(".")[0] for st in p.stops}
        for ptype in sorted({s.type for s in starts} | stopped):
            f = formation.get(ptype)
            if f is not None and sum(c.type == ptype for c in mine) != f.quantity:
                applog.write(app_name, f"Scaling {ptype} to {f.quantity}")
    for s in p.starts:
        applog.write(app_name, f"Starting (v{s.release}) on {s.host}", f"{s.type}.{s.number}")
    for st in p.stops:
        applog.write(app_name, "Stopping", applog.container_name(st.container_id))


def _target_release(app: App) -> Release | None:
    """The newest release that has neither failed nor been superseded: a failed roll-out leaves
    the last good one serving."""
    return (
        Release.objects.filter(app=app)
        .exclude(status__in=[ReleaseStatus.FAILED, ReleaseStatus.SUPERSEDED])
        .select_related("build").order_by("-version").first()
    )


def _supersede_older(app: App, release: Release) -> None:
    """Older releases still waiting for (or running the release phase before) their roll-out
    never get one now."""
    Release.objects.filter(
        app=app, version__lt=release.version,
        status__in=[ReleaseStatus.PENDING, ReleaseStatus.RELEASING],
    ).update(status=ReleaseStatus.SUPERSEDED,
             status_reason=f"{release.name} replaced it before its roll-out converged")


def _fail_if_crashed(app: App, release: Release, rows: list[Container]) -> bool:
    """A container of a release being rolled out never got ready (its check timed out, or it
    could not be started), or crashed `CRASHING_RESTARTS` times in a row: the release fails with
    the reason and that container's last output, and the last good release goes on serving.
    True if it failed."""
    ended = sorted((c for c in rows if c.release_id == release.pk and c.state in GONE
                    and (c.state == "failed" or c.restarts + 1 >= CRASHING_RESTARTS)),
                   key=lambda c: (c.finished_at or c.updated_at, c.type, c.number))
    if not ended:
        return False
    c = ended[0]
    formation = Formation.objects.filter(app=app, type=c.type).first()
    release.status = ReleaseStatus.FAILED
    readiness = readiness_of(c, formation, SchedulerSettings.from_env().boot_timeout_s)
    release.status_reason = failure_reason(c, formation, readiness)
    release.status_log = "\n".join(last_log_lines(app.name, c))
    release.save(update_fields=["status", "status_reason", "status_log"])
    log.warning("release %s of %s failed: %s", release.name, app.name, release.status_reason)
    applog.write(app.name, f"Release {release.name} failed: {release.status_reason}")
    return True


def failure_reason(c: Container, f: Formation | None, readiness: dict[str, Any]) -> str:
    """One line on how a container ended, for its release's `status_reason`; a readiness
    failure quotes the check the container was started with (`readiness_of`)."""
    times = f" ({c.restarts + 1} times in a row)" if c.restarts else ""
    if c.state == "oom":
        limit = f" ({f.memory_mb} MB)" if f is not None else ""
        return f"{c.name} ran out of memory{limit}: oom{times}"
    if c.state == "exited":
        code = "an unknown code" if c.exit_code is None else f"code {c.exit_code}"
        return f"{c.name} exited with {code}{times}"
    if c.message.startswith("not ready"):
        timeout = f"{float(readiness['timeout_s']):g}"
        if readiness.get("type") == "http":
            path = readiness.get("path") or "/"
            return f"{c.name} did not answer GET {path} with 2xx or 3xx within {timeout} s"
        return f"{c.name} did not accept connections on $PORT within {timeout} s"
    return f"{c.name} failed: {c.message or 'it could not be started'}"


LOG_LINES = 20
LOG_SCAN = 5000  # entries read back from the end of the app's log stream at most


def last_log_lines(app_name: str, c: Container, n: int = LOG_LINES) -> list[str]:
    """The last `n` output lines of the container and the ones before it in its crash streak,
    from the app's log stream (tag `app[web.1]` and the container's release), oldest first; none
    when Redis cannot say.

    Its predecessors count because the agent ships a container's last lines a moment after it
    exits, so those of the container that just ended may not be there yet. During a roll-out the
    old release's `web.1` writes under the same tag: the agent's `release` field tells them
    apart (a line without one, from an agent that does not send it, counts by its tag)."""
    tag = f"app[{c.name}]".encode()
    release = str(c.release.version).encode()
    streak_s = sum(backoff_s(k) + 2 for k in range(c.restarts))
    since = c.created_at.timestamp() - 1 - streak_s
    lines: list[str] = []
    try:
        entries = redis_client().xrevrange(f"paas:logs:{app_name}", count=LOG_SCAN)
    except redis.exceptions.RedisError as e:
        log.warning("could not read the log of %s: %s", c.id, e)
        return []
    for _id, fields in entries:
        try:
            t = float(fields.get(b"time", b""))
        except ValueError:
            continue
        if t < since:
            break
        if fields.get(b"tag") == tag and fields.get(b"release", release) == release:
            lines.append(fields.get(b"line", b"").decode(errors="replace").rstrip("\n"))
            if len(lines) >= n:
                break
    return lines[::-1]


def _labels(raw: object) -> dict[str, str]:
    return {str(k): str(v) for k, v in raw.items()} if isinstance(raw, dict) else {}


def _update_release_status(release: Release, p: Plan, rows: list[Container]) -> None:
    if release.status not in (ReleaseStatus.PENDING, ReleaseStatus.DEPLOYED):
        return
    # Containers that fit on no host: say why on the release being rolled out or served.
    reason = p.unplaced[0] if p.unplaced else ""
    fields = []
    if release.status_reason != reason:
        release.status_reason = reason
        fields.append("status_reason")
    if release.status == ReleaseStatus.PENDING and p.converged:
        release.status = ReleaseStatus.DEPLOYED
        fields.append("status")
    if fields:
        release.save(update_fields=fields)


def _host_capacities(cpu_overcommit: int) -> list[HostCapacity]:
    """Every host with what the live containers recorded on it reserve (their formation's size)
    and what the one-offs running on it hold (their own size).

    A formation's `cpu` is a share (a cgroup weight: 1.0 is one core's fair share under
    contention), so a host offers `cpu_overcommit` shares per core; memory is never overcommitted.
    """
    reserved: dict[int, tuple[int, float]] = {}
    live = list(
        Container.objects.filter(state__in=LIVE, host__isnull=False)
        .values("host_id", "app_id", "type")
    )
    formation = Formation.objects.filter(app_id__in={c["app_id"] for c in live})
    sizes = {(f.app_id, f.type): (f.memory_mb, f.cpu) for f in formation}
    for c in live:
        mem, cpu = sizes.get((c["app_id"], c["type"]), (0, 0.0))
        m, u = reserved.get(c["host_id"], (0, 0.0))
        reserved[c["host_id"]] = (m + mem, u + cpu)
    rows = list(Host.objects.all())
    hosts = [
        HostCapacity(
            name=h.name, state=h.state, memory_mb=h.memory_mb, cpus=float(h.cpus * cpu_overcommit),
            memory_reserved_mb=reserved.get(h.pk, (0, 0.0))[0],
            cpu_reserved=reserved.get(h.pk, (0, 0.0))[1], labels=dict(h.labels or {}),
        )
        for h in rows
    ]
    return with_reservations(hosts, oneoff.reservations({h.name: h.created_at.isoformat() for h in rows}))


def readiness_check(conf: SchedulerSettings, f: Formation) -> dict[str, Any] | None:
    """The readiness check a new container of `f` is started with: web only (the others have no
    port; the agent reports them ready once they run)."""
    if f.type != "web":
        return None
    timeout = f.boot_timeout_s or conf.boot_timeout_s
    if f.readiness_path:
        return {"type": "http", "path": f.readiness_path, "timeout_s": timeout}
    return {"type": "tcp", "timeout_s": timeout}


def _spec(conf: SchedulerSettings, app: App, release: Release, build: Build, f: Formation,
          c: Container, readiness: dict[str, Any] | None) -> dict[str, Any]:
    """The container spec the agent runs, checked by the runtime's own validator."""
    command = build.process_types.get(f.type) if isinstance(build.process_types, dict) else None
    env = dict(release.config)
    env["DYNO"] = c.name
    raw: dict[str, Any] = {
        "id": c.id,
        "app": app.name,
        "release": release.version,
        "process_type": f.type,
        "image": build.image_digest,
        "command": ["/bin/sh", "-c", command] if command else [],
        "env": env,
        "memory_mb": f.memory_mb,
        "cpu_shares": max(2, round(1024 * f.cpu)),
        "labels": {"paas.app": app.name, "paas.release": release.name, "paas.process": c.name},
    }
    if f.type == "web":
        env["PORT"] = str(conf.web_port)
        raw["port"] = conf.web_port
    if readiness is not None:
        raw["readiness"] = readiness
    return ContainerSpec.from_dict(raw).to_dict()


def ready_endpoints(app_id: int) -> list[str]:
    """The app's ready web containers' `ip:port`, sorted (any release: during a deploy both serve)."""
    return sorted(
        Container.objects.filter(app_id=app_id, type="web", state="ready")
        .exclude(address="").values_list("address", flat=True)
    )


def routes_sync(app_name: str, app_id: int) -> bool:
    """Write the app's ready web endpoints and custom domains to the route table when they
    differ; True if anything was written."""
    check_app_name(app_name)
    r = redis_client()
    domains_changed = _domains_sync(r, app_name, set(
        Domain.objects.filter(app_id=app_id).values_list("hostname", flat=True)))
    return _endpoints_sync(r, app_name, app_id) or domains_changed


def routes_delete(app_name: str) -> None:
    """Take a destroyed app, and every custom domain pointing at it, out of the route table."""
    r = redis_client()
    _domains_sync(r, app_name, set())
    route_app_delete(r, app_name)


def _domains_sync(r: redis.Redis[bytes], app_name: str, wanted: set[str]) -> bool:
    """Make the table's custom domains for the app exactly `wanted`; True if anything changed."""
    current = {
        host.decode() for host, app in r.hgetall(DOMAINS_KEY).items() if app.decode() == app_name
    }
    for host in sorted(wanted - current):
        route_domain_set(r, host, app_name)
    for host in sorted(current - wanted):
        route_domain_delete(r, host)
    return wanted != current


def _endpoints_sync(r: redis.Redis[bytes], app_name: str, app_id: int) -> bool:
    endpoints = ready_endpoints(app_id)
    raw = r.hget(APPS_KEY, app_name)
    if raw is None and not endpoints:
        return False
    if raw is not None:
        try:
            current = json.loads(raw)
        except ValueError:
            current = None
        if isinstance(current, dict) and sorted(current.get("endpoints") or []) == endpoints:
            return False
        maintenance = bool(current.get("maintenance")) if isinstance(current, dict) else False
    else:
        maintenance = False
    route_app_set(r, app_name, endpoints, maintenance=maintenance)
    return True

