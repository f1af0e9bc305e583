"""One-off containers (`paas run`) and the release phase. Their state lives in Redis, no model.

A one-off runs the image of a release once, with the release's config plus `PORT` and `DYNO`:
never restarted, never checked for readiness, never routed. It goes to a host chosen by the
same placement as app containers, as `agent.oneoff_run` on the host's queue; the agent streams
its output and exit status to `paas:run:<id>` (see `runtime.agent.oneoff`) and removes the
container after the exit. Its id is `<app>.<type>.<number>.<6 hex>`, its name `<type>.<number>`
(`run.3`; the release phase's is `release.1`).

Redis keys besides the agent's stream:

    paas:oneoff:<id>                   JSON of `OneOff`, expiring an hour after its time limit
    paas:oneoffs:<app>                 sorted set: the app's one-offs by the time after which
                                       they are no longer expected to run (a heartbeat listing
                                       one of them does not make ingestion stop it as unknown)
    paas:scheduler:oneoffs             sorted set: every app's one-offs, scored the same way;
                                       placement counts their memory and CPU (from
                                       `paas:oneoff:<id>`) on their hosts until their exit
                                       entry is written
    paas:oneoff:counter:<app>          the last `run.N` number
    paas:release-phase:<app>:<release row id>   hash: state (running, succeeded, failed),
                                       id, reason, log; kept a week

The release phase: before a release whose build has a `release` process type is rolled out,
`release_phase` starts that command once as `release.1` and the reconciler keeps the previous
release serving until its exit: 0 lets the roll-out proceed, anything else (or no exit within
`PAAS_RELEASE_TIMEOUT_S`) fails the release with the reason and the last output lines. The
phase's state is written before the one-off is sent, so a worker that dies mid-phase never
starts it twice; a release that has been rolled out never runs it again.
"""

from __future__ import annotations

import json
import logging
import re
import secrets
import time
from collections.abc import Iterator, Mapping
from dataclasses import asdict, dataclass, replace
from typing import Any

import redis

from controlplane.env import env_int
from core.errors import Conflict, Invalid, NotFound
from core.models import App, Build, BuildStatus, Formation, Host, Release, ReleaseStatus
from runtime.agent.oneoff import RUN_TTL_S, STOP_GRACE_S, TIMEOUT_LABEL, run_stream
from runtime.spec import ContainerSpec, SpecError
from scheduler import applog, dispatch
from scheduler.conf import SchedulerSettings
from scheduler.placement import Request, Reservation, place
from scheduler.planner import Plan

log = logging.getLogger(__name__)

RUN = "run"
RELEASE = "release"
ONEOFF_TYPES = frozenset({RUN, RELEASE})
META_KEY = "paas:oneoff:{id}"
ACTIVE_KEY = "paas:oneoffs:{app}"
PLACED_KEY = "paas:scheduler:oneoffs"
COUNTER_KEY = "paas:oneoff:counter:{app}"
PHASE_KEY = "paas:release-phase:{app}:{release_id}"
PHASE_TTL_S = 7 * 24 * 3600
LOST_AFTER_S = 60  # past its time limit and the stop grace, a one-off with no exit is lost
ID_RE = re.compile(r"^(?P<app>[a-z][a-z0-9-]*)\.(?P<type>run|release)\.(?P<number>\d+)\.[0-9a-f]{6}$")
MAX_ARGS = 256
MAX_COMMAND_BYTES = 64 * 1024
REASON_LINES = 10
PHASE_POLL_S = 2.0
KEEPALIVE_S = 15.0  # a quiet one-off's output endpoint writes an empty line this often  # while a release phase runs, its app is reconciled again this often


def run_timeout_s() -> int:
    """How long a `paas run` may last before it is stopped."""
    return max(1, env_int("PAAS_RUN_TIMEOUT_S", 3600))


def release_timeout_s() -> int:
    """How long a release phase may last before it is stopped and the release fails."""
    return max(1, env_int("PAAS_RELEASE_TIMEOUT_S", 1800))


def _redis() -> redis.Redis[bytes]:
    from scheduler.reconcile import redis_client

    return redis_client()


@dataclass(frozen=True)
class OneOff:
    id: str
    app: str
    type: str
    number: int
    host: str
    release: int
    command: list[str]
    created_at: float
    deadline: float  # its time limit: the agent stops it then
    memory_mb: int = 512  # what it holds on its host (a run recorded without a size: basic)
    cpu: float = 1.0
    host_registered: str = ""  # when its host was registered (ISO): the registration it is on

    @property
    def name(self) -> str:
        return f"{self.type}.{self.number}"

    def to_dict(self) -> dict[str, Any]:
        d = {**asdict(self), "name": self.name}
        del d["host_registered"]  # placement's bookkeeping, not part of the API
        return d

    @classmethod
    def from_json(cls, raw: bytes | str) -> OneOff:
        d = json.loads(raw)
        return cls(id=d["id"], app=d["app"], type=d["type"], number=int(d["number"]),
                   host=d["host"], release=int(d["release"]), command=list(d["command"]),
                   created_at=float(d["created_at"]), deadline=float(d["deadline"]),
                   memory_mb=int(d.get("memory_mb", 512)), cpu=float(d.get("cpu", 1.0)),
                   host_registered=str(d.get("host_registered", "")))


def command_argv(command: object) -> list[str]:
    """A command as given to the API: a list of arguments, or one string for `/bin/sh -c`."""
    if isinstance(command, str):
        if not command.strip():
            raise Invalid("command: give the command to run.", fields={"command": ["Empty."]})
        argv = ["/bin/sh", "-c", command]
    elif isinstance(command, list) and command and all(isinstance(a, str) for a in command):
        argv = list(command)
        if not argv[0]:
            raise Invalid("command: the program name is empty.", fields={"command": ["Empty."]})
    else:
        raise Invalid("command: give a list of arguments like [\"python\", \"manage.py\", "
                      "\"migrate\"] or one string for /bin/sh -c.",
                      fields={"command": ["A list of strings or a string."]})
    if len(argv) > MAX_ARGS or sum(len(a.encode()) for a in argv) > MAX_COMMAND_BYTES:
        raise Invalid(f"command: at most {MAX_ARGS} arguments and {MAX_COMMAND_BYTES // 1024} KB.",
                      fields={"command": ["Too long."]})
    if any("\0" in a for a in argv):
        raise Invalid("command: arguments cannot contain NUL characters.",
                      fields={"command": ["NUL character."]})
    return argv


def _runnable(app: App, release: Release | None) -> tuple[Release, Build]:
    if release is None or release.build is None:
        raise Conflict(f"'{app.name}' has no release to run yet: deploy it first "
                       "(git push paas main).")
    build = release.build
    if build.status != BuildStatus.SUCCEEDED or not build.image_digest:
        raise Conflict(f"Release {release.name} of '{app.name}' has no image to run.")
    return release, build


def start(app: App, command: object, *, release: Release | None = None, kind: str = RUN,
          memory_mb: int = 512, cpu: float = 1.0, timeout_s: int | None = None,
          number: int | None = None) -> OneOff:
    """Place and send a one-off of `release` (default: the app's current one); return it.

    Raises `Conflict` (nothing to run, no host fits) or `Invalid` (a bad command).
    """
    from scheduler.reconcile import _host_capacities

    argv = command_argv(command)
    release, build = _runnable(app, release if release is not None else app.current_release())
    conf = SchedulerSettings.from_env()
    (where,) = place([Request(app.name, kind, memory_mb, cpu)], _host_capacities(conf.cpu_overcommit))
    if where.host is None:
        raise Conflict(f"The one-off cannot start: {where.reason}.")
    r = _redis()
    if number is None:
        number = int(r.incr(COUNTER_KEY.format(app=app.name)))
    cid = f"{app.name}.{kind}.{number}.{secrets.token_hex(3)}"
    limit = timeout_s or run_timeout_s()
    env = dict(release.config)
    env["PORT"] = str(conf.web_port)
    env["DYNO"] = f"{kind}.{number}"
    try:
        spec = ContainerSpec.from_dict({
            "id": cid, "app": app.name, "release": release.version, "process_type": kind,
            "image": build.image_digest, "command": argv, "env": env, "memory_mb": memory_mb,
            "cpu_shares": max(2, round(1024 * cpu)),
            "labels": {"paas.app": app.name, "paas.release": release.name,
                       "paas.process": f"{kind}.{number}", TIMEOUT_LABEL: str(limit)},
        }).to_dict()
    except SpecError as e:
        raise Invalid(f"The one-off cannot be run: {e}.") from None
    now = time.time()
    registered = Host.objects.filter(name=where.host).values_list("created_at", flat=True).first()
    run = OneOff(id=cid, app=app.name, type=kind, number=number, host=where.host,
                 release=release.version, command=argv, created_at=now, deadline=now + limit,
                 memory_mb=memory_mb, cpu=cpu,
                 host_registered=registered.isoformat() if registered is not None else "")
    pipe = r.pipeline()
    pipe.set(META_KEY.format(id=cid), json.dumps(asdict(run)), ex=int(limit + STOP_GRACE_S) + RUN_TTL_S)
    expected_until = run.deadline + STOP_GRACE_S + LOST_AFTER_S
    pipe.zadd(ACTIVE_KEY.format(app=app.name), {cid: expected_until})
    pipe.zadd(PLACED_KEY, {cid: expected_until})
    pipe.execute()
    dispatch.current.oneoff(where.host, spec, float(limit))
    shown = " ".join(argv[2:3] if argv[:2] == ["/bin/sh", "-c"] else argv)
    applog.write(app.name, f"Starting process with command `{shown[:200]}` ({release.name}) on "
                 f"{where.host}", run.name)
    log.info("one-off %s of %s (%s) sent to %s", run.name, app.name, release.name, where.host)
    return run


def get(app: App, run_id: str) -> OneOff:
    """The app's one-off `run_id` (NotFound when unknown or expired)."""
    raw = _redis().get(META_KEY.format(id=run_id)) if ID_RE.match(run_id) else None
    run = OneOff.from_json(raw) if raw is not None else None
    if run is None or run.app != app.name:
        raise NotFound(f"No one-off '{run_id}' of '{app.name}' (finished ones are kept an hour).")
    return run


def stop(run: OneOff) -> None:
    """Ask the run's agent to stop and remove it (its stream then ends with an exit entry)."""
    dispatch.current.stop(run.host, run.id, SchedulerSettings.from_env().stop_timeout_s)


def exit_of(run_id: str, r: redis.Redis[bytes] | None = None) -> dict[str, Any] | None:
    """The one-off's exit entry ({"exit": int | None, "message"}), or None while it runs."""
    r = r or _redis()
    last = r.xrevrange(run_stream(run_id), count=1)
    if not last:
        return None
    entry = _decode(last[0][1])
    return entry if "exit" in entry else None


def is_expected(r: redis.Redis[bytes], container_id: str) -> bool:
    """Whether a container a host lists is a one-off still expected to run (not stale)."""
    m = ID_RE.match(container_id)
    if m is None:
        return False
    score = r.zscore(ACTIVE_KEY.format(app=m["app"]), container_id)
    return score is not None and score > time.time()


def app_of(container_id: str) -> str | None:
    """The app name in a one-off's container id, None for other ids."""
    m = ID_RE.match(container_id)
    return m["app"] if m else None


def running(app: App) -> list[OneOff]:
    """The app's one-offs that have not ended (for `paas ps`); forgets the ended ones."""
    r = _redis()
    key = ACTIVE_KEY.format(app=app.name)
    r.zremrangebyscore(key, "-inf", time.time())
    out: list[OneOff] = []
    for raw_id in r.zrange(key, 0, -1):
        cid = raw_id.decode()
        raw = r.get(META_KEY.format(id=cid))
        if raw is None or exit_of(cid, r) is not None:
            r.zrem(key, cid)
            continue
        out.append(OneOff.from_json(raw))
    return sorted(out, key=lambda o: (o.type, o.number))


def reservations(registered: Mapping[str, str], r: redis.Redis[bytes] | None = None,
                 now: float | None = None) -> list[Reservation]:
    """What every app's running one-offs hold on their hosts, for placement.

    `registered` maps each host's name to when it was registered (`Host.created_at`, ISO): a
    one-off counts only on the registration it was placed on, never on a host registered again
    under the same name (or in a new database) while Redis kept the old entries. It counts from
    its start until its exit entry, or until it is no longer expected (its time limit, the stop
    grace and `LOST_AFTER_S` past); the ended ones are forgotten here.
    """
    r = r or _redis()
    now = time.time() if now is None else now
    r.zremrangebyscore(PLACED_KEY, "-inf", now)
    ids = [raw.decode() for raw in r.zrange(PLACED_KEY, 0, -1)]
    if not ids:
        return []
    pipe = r.pipeline(transaction=False)
    for cid in ids:
        pipe.get(META_KEY.format(id=cid))
        pipe.xrevrange(run_stream(cid), count=1)
    answers = pipe.execute()
    out: list[Reservation] = []
    ended: list[str] = []
    for i, cid in enumerate(ids):
        raw, last = answers[2 * i], answers[2 * i + 1]
        if raw is None or (last and b"exit" in last[0][1]):
            ended.append(cid)
            continue
        run = OneOff.from_json(raw)
        if run.host_registered and registered.get(run.host) == run.host_registered:
            out.append(Reservation(run.host, run.memory_mb, run.cpu))
    if ended:
        r.zrem(PLACED_KEY, *ended)
    return out


def _decode(fields: dict[bytes, bytes]) -> dict[str, Any]:
    entry: dict[str, Any] = {k.decode(): v.decode(errors="replace") for k, v in fields.items()}
    if "exit" in entry:
        entry["exit"] = int(entry["exit"]) if entry["exit"].lstrip("-").isdigit() else None
    return entry


def follow(run: OneOff, *, start_timeout_s: float | None = None, block_ms: int = 1000,
           after: str = "0", keepalive_s: float = KEEPALIVE_S) -> Iterator[dict[str, Any]]:
    """Yield the run's stream entries from the start until its exit entry (the last one yielded).

    When nothing arrives within `start_timeout_s` (the agent never got the run), or the run
    outlives its time limit without an exit, a made-up exit entry with `exit: None` says so.
    After `keepalive_s` without an entry an empty dict comes (so a web server writing it notices
    a client that has gone away).
    """
    r = _redis()
    key = run_stream(run.id)
    if start_timeout_s is None:
        start_timeout_s = SchedulerSettings.from_env().boot_timeout_s
    started = quiet_since = time.monotonic()
    seen_any = after != "0"
    while True:
        resp = r.xread({key: after}, count=500, block=block_ms)
        for _name, items in resp or []:
            for entry_id, fields in items:
                after = entry_id.decode()
                seen_any = True
                entry = _decode(fields)
                yield entry
                quiet_since = time.monotonic()
                if "exit" in entry:
                    return
        if time.monotonic() - quiet_since >= keepalive_s:
            yield {}
            quiet_since = time.monotonic()
        if not seen_any and time.monotonic() - started > start_timeout_s:
            yield {"exit": None, "message": f"it did not start within {start_timeout_s:g} s: "
                   f"is the agent of host {run.host} running?"}
            return
        if time.time() > run.deadline + STOP_GRACE_S + LOST_AFTER_S:
            yield {"exit": None, "message": "its host never reported its end"}
            return


def last_lines(run_id: str, n: int = REASON_LINES) -> list[str]:
    """The last `n` output lines of a one-off."""
    lines: list[str] = []
    for _id, fields in _redis().xrevrange(run_stream(run_id), count=n + 3):
        entry = _decode(fields)
        if "line" in entry:
            lines.append(str(entry["line"]))
    return list(reversed(lines[:n]))


# --- the release phase -----------------------------------------------------------------------


@dataclass(frozen=True)
class Phase:
    state: str  # "none" (nothing to run), "running", "succeeded", "failed"
    run_id: str = ""
    reason: str = ""  # why it failed, one line
    log: str = ""  # the last output lines of a failed one


def release_command(build: Build | None) -> str | None:
    types = build.process_types if build is not None else None
    command = types.get(RELEASE) if isinstance(types, dict) else None
    return command if isinstance(command, str) and command.strip() else None


def phase_of(app: App, release: Release) -> Phase:
    """The release phase's recorded state (no side effects)."""
    if release_command(release.build) is None:
        return Phase("none")
    raw = _redis().hgetall(PHASE_KEY.format(app=app.name, release_id=release.pk))
    if not raw:
        return Phase("none")
    d = {k.decode(): v.decode(errors="replace") for k, v in raw.items()}
    return Phase(d.get("state", ""), d.get("id", ""), d.get("reason", ""), d.get("log", ""))


def release_phase(app: App, release: Release, formation: Formation | None, now: float) -> Phase:
    """Move the release's phase one step: start it, or look whether it ended. Returns its state.

    "none": the build has no `release` command. A phase that ended is recorded once (so a later
    reconcile never runs it again).
    """
    command = release_command(release.build)
    if command is None:
        return Phase("none")
    r = _redis()
    key = PHASE_KEY.format(app=app.name, release_id=release.pk)
    # Claim the phase before sending anything: a second worker, or this one restarted, finds it.
    if r.hsetnx(key, "state", "starting"):
        r.expire(key, PHASE_TTL_S)
        try:
            memory_mb = formation.memory_mb if formation is not None else 512
            cpu = formation.cpu if formation is not None else 1.0
            run = start(app, command, release=release, kind=RELEASE, memory_mb=memory_mb,
                        cpu=cpu, timeout_s=release_timeout_s(), number=1)
        except (Conflict, Invalid) as e:
            return _phase_end(r, key, "failed", "", f"its release phase could not start: {e.message}")
        r.hset(key, mapping={"state": "running", "id": run.id, "started_at": str(now)})
        return Phase("running", run.id)
    phase = phase_of(app, release)
    if phase.state == "starting":
        # Claimed, but the worker that claimed it died before sending it: it never ran.
        return _phase_end(r, key, "failed", "", "its release phase was interrupted before it started")
    if phase.state != "running":
        return phase
    ended = exit_of(phase.run_id, r)
    if ended is None:
        meta = r.get(META_KEY.format(id=phase.run_id))
        deadline = OneOff.from_json(meta).deadline if meta is not None else 0.0
        if now > deadline + STOP_GRACE_S + LOST_AFTER_S:
            return _phase_end(r, key, "failed", phase.run_id,
                              "its release phase never reported its end")
        return phase
    if ended.get("exit") == 0:
        return _phase_end(r, key, "succeeded", phase.run_id, "")
    code = ended.get("exit")
    why = f"its release command exited with status {code}" if code is not None else \
        "its release command did not finish"
    if ended.get("message"):
        why += f" ({ended['message']})"
    return _phase_end(r, key, "failed", phase.run_id, why, "\n".join(last_lines(phase.run_id)))


def _phase_end(r: redis.Redis[bytes], key: str, state: str, run_id: str, reason: str,
               output: str = "") -> Phase:
    r.hset(key, mapping={"state": state, "id": run_id, "reason": reason, "log": output})
    r.expire(key, PHASE_TTL_S)
    return Phase(state, run_id, reason, output)


def plan_release(app: App, target: Release | None, now: float) -> tuple[Release | None, bool]:
    """For the reconciler: the release to plan, and whether a release phase is still running.

    While the target's release phase runs, the target is `releasing` and the release that
    served before it goes on serving (None: nothing ran before). A failed phase fails the target
    with the reason and the last output lines; the release before it is planned instead.
    """
    from scheduler.reconcile import _target_release

    if target is None or target.status not in (ReleaseStatus.PENDING, ReleaseStatus.RELEASING):
        return target, False
    formation = Formation.objects.filter(app=app, type=RELEASE).first()
    phase = release_phase(app, target, formation, now)
    if phase.state in ("none", "succeeded"):
        if target.status == ReleaseStatus.RELEASING:
            applog.write(app.name, f"Release phase of {target.name} succeeded")
            target.status, target.status_reason = ReleaseStatus.PENDING, ""
            target.save(update_fields=["status", "status_reason"])
        return target, False
    if phase.state == "failed":
        applog.write(app.name, f"Release {target.name} failed: {phase.reason}")
        target.status = ReleaseStatus.FAILED
        target.status_reason = phase.reason
        target.status_log = phase.log
        target.save(update_fields=["status", "status_reason", "status_log"])
        log.warning("release %s of %s failed: %s", target.name, app.name, phase.reason)
        return plan_release(app, _target_release(app), now)
    if target.status != ReleaseStatus.RELEASING:
        target.status = ReleaseStatus.RELEASING
        target.status_reason = f"its release phase runs ({RELEASE}.1, {phase.run_id})"
        target.save(update_fields=["status", "status_reason"])
    return _served_before(app, target), True


def _served_before(app: App, target: Release) -> Release | None:
    """The newest release below `target` that may serve: not failed, superseded or releasing,
    and past its own release phase."""
    older = (Release.objects.filter(app=app, version__lt=target.version)
             .exclude(status__in=[ReleaseStatus.FAILED, ReleaseStatus.SUPERSEDED,
                                  ReleaseStatus.RELEASING])
             .select_related("build").order_by("-version"))
    for release in older[:20]:
        if (release.status == ReleaseStatus.DEPLOYED or release_command(release.build) is None
                or phase_of(app, release).state == "succeeded"):
            return release
    return None


def poll_soon(p: Plan, now: float) -> Plan:
    """The plan, with a reconcile asked for within `PHASE_POLL_S` (a release phase runs)."""
    soon = now + PHASE_POLL_S
    return replace(p, retry_at=soon if p.retry_at is None else min(p.retry_at, soon))
