"""The reconcile plan: from desired state and observed containers to steps. Pure: no Django, no I/O.

Desired state is one release of an app (its image) times the formation (quantity and size per
process type). Observed state is the app's containers as the control plane last recorded them.
`plan` returns what to start (process type, number, release, host) and what to stop, such that
running it and observing the result, again and again, converges:

- Containers that are gone (`exited`, `failed`, `oom`) or on a host that is `down` (or
  unknown) are stopped; a current-release one is replaced. A crash is replaced after a back-off
  (1, 2, 4, ... seconds, at most `BACKOFF_MAX_S`) that grows with its restarts in a row; until
  then its row stays and the plan says when to look again (`retry_at`). A container that was
  ready for `stable_s` before it ended starts a new streak (its replacement's back-off is 1 s).
  The replacement carries the streak's count and how its predecessor ended (`Start.last_exit_*`);
  `status` turns that into what `paas ps` shows (`crashing` after `CRASHING_RESTARTS`).
- New containers start first: by default the current release gets its full quantity at once
  (surge = quantity; `max_surge` limits it). Containers of older releases, and those on a
  `draining` host, are stopped only as current-release ones become `ready`: at every moment,
  ready new + old kept >= quantity - `max_unavailable` (default 0).
- Surplus current-release containers (scaled down) stop at once, the not-ready ones first.
- A container on a host without the labels its process type's constraints now name is
  replaced like an old release's: a new one starts on a matching host first.
- Process types no longer in the formation (or scaled to 0) stop entirely.
- A container still `starting` after `start_timeout_s` (its spec never reached the agent: a
  worker died between commit and send, or the message was lost) is stopped and replaced.
- A release without an image (the app was never built, or every built release failed) runs
  nothing: whatever runs is stopped.

Hosts for new containers come from `placement.place`, with the app's surviving containers
counted for the spread.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

from scheduler.placement import HostCapacity, Request, place

LIVE = frozenset({"starting", "running", "ready"})
GONE = frozenset({"exited", "failed", "oom"})
BACKOFF_MAX_S = 300.0
CRASHING_RESTARTS = 3  # restarts in a row after which a container shows as `crashing`
STABLE_S = 60.0  # ready this long: a crash-restart streak is over


@dataclass(frozen=True, slots=True)
class ProcessType:
    """One line of the formation: how many, how big, and which host labels they need."""

    type: str
    quantity: int
    memory_mb: int
    cpu: float
    constraints: Mapping[str, str] = field(default_factory=dict)


@dataclass(frozen=True, slots=True)
class Desired:
    app: str
    release: int
    image: str | None
    processes: tuple[ProcessType, ...]


@dataclass(frozen=True, slots=True)
class Observed:
    """A container as recorded: `finished_at` (epoch seconds) is set once it has stopped."""

    id: str
    type: str
    number: int
    release: int
    host: str | None
    state: str
    restarts: int = 0
    finished_at: float | None = None
    created_at: float | None = None
    ready_at: float | None = None
    exit_code: int | None = None


@dataclass(frozen=True, slots=True)
class Start:
    type: str
    number: int
    release: int
    host: str
    memory_mb: int
    cpu: float
    restarts: int = 0
    last_exit_state: str = ""
    last_exit_code: int | None = None


@dataclass(frozen=True, slots=True)
class Stop:
    container_id: str
    host: str | None
    reason: str


@dataclass(frozen=True, slots=True)
class Plan:
    starts: tuple[Start, ...] = ()
    stops: tuple[Stop, ...] = ()
    unplaced: tuple[str, ...] = ()  # why some containers fit on no host
    retry_at: float | None = None  # when a back-off ends and the plan will differ
    converged: bool = False  # every wanted container of the release is ready, nothing else runs

    @property
    def empty(self) -> bool:
        return not self.starts and not self.stops


def backoff_s(restarts: int) -> float:
    """Seconds to wait before replacing a container that crashed `restarts` times before."""
    return float(min(BACKOFF_MAX_S, 2 ** min(restarts, 16)))


def streak(c: Observed, stable_s: float = STABLE_S) -> int:
    """Restarts in a row before `c` ended: 0 when it had been ready for `stable_s` first."""
    if c.ready_at is not None and c.finished_at is not None and c.finished_at - c.ready_at >= stable_s:
        return 0
    return c.restarts


def status(state: str, restarts: int, ready_at: float | None, now: float,
           stable_s: float = STABLE_S) -> str:
    """What a user sees of a container: `up`, `starting`, `crashing`, or how it ended.

    `crashing`: restarted `CRASHING_RESTARTS` times or more in a row and not yet ready for
    `stable_s` since (whether it is starting again, or waiting out its back-off).
    """
    stable = state == "ready" and ready_at is not None and now - ready_at >= stable_s
    if restarts >= CRASHING_RESTARTS and not stable:
        return "crashing"
    if state == "ready":
        return "up"
    if state in ("starting", "running"):
        return "starting"
    return state


def plan(
    desired: Desired,
    observed: Sequence[Observed],
    hosts: Sequence[HostCapacity],
    now: float,
    start_timeout_s: float = 120.0,
    max_surge: int | None = None,
    max_unavailable: int = 0,
    stable_s: float = STABLE_S,
) -> Plan:
    """Compute the steps that move `observed` towards `desired` (see the module docstring).

    `max_surge`: how many containers of a type beyond its quantity may run during a roll-out
    (None: the whole quantity). `max_unavailable`: how far below the quantity the ready ones may
    drop. With both 0 nothing could move, so the surge is then at least 1.
    """
    if max_surge is not None and max_surge <= 0 and max_unavailable <= 0:
        max_surge = 1
    host_state = {h.name: h.state for h in hosts}
    host_labels = {h.name: h.labels for h in hosts}
    wanted = {p.type: p for p in desired.processes if p.quantity > 0 and desired.image is not None}
    by_type: dict[str, list[Observed]] = {}
    for c in observed:
        by_type.setdefault(c.type, []).append(c)

    stops: list[Stop] = []
    # request, type, number, restarts, how the predecessor ended (state, exit code)
    requests: list[tuple[Request, ProcessType, int, int, tuple[str, int | None]]] = []
    retry_at: float | None = None
    converged = True
    surviving: dict[str, int] = {}

    for ptype in sorted(set(by_type) | set(wanted)):
        containers = sorted(by_type.get(ptype, []), key=lambda c: (c.number, c.id))
        want = wanted.get(ptype)
        quantity = want.quantity if want else 0
        current: list[Observed] = []
        old: list[Observed] = []
        crashed: list[Observed] = []  # current release, gone, waiting out the back-off
        restarts_of: dict[int, tuple[int, tuple[str, int | None]]] = {}
        for c in containers:
            state_of_host = host_state.get(c.host or "", "down")
            if state_of_host == "down":
                stops.append(Stop(c.id, c.host, "its host is down"))
                continue
            lost = c.state == "starting" and c.created_at is not None and now - c.created_at > start_timeout_s
            if lost:
                stops.append(Stop(c.id, c.host, f"it did not start within {start_timeout_s:g} s"))
                continue
            if c.state in GONE:
                if c.release == desired.release and want is not None:
                    in_a_row = streak(c, stable_s)
                    end = (c.finished_at or now) + backoff_s(in_a_row)
                    if now < end:
                        crashed.append(c)
                        retry_at = end if retry_at is None else min(retry_at, end)
                        continue
                    if in_a_row + 1 > restarts_of.get(c.number, (-1, ("", None)))[0]:
                        restarts_of[c.number] = (in_a_row + 1, (c.state, c.exit_code))
                stops.append(Stop(c.id, c.host, f"it is {c.state}"))
                continue
            fits = want is None or all(
                host_labels.get(c.host or "", {}).get(k) == v for k, v in want.constraints.items())
            if c.release == desired.release and state_of_host == "ready" and fits:
                current.append(c)
            else:
                old.append(c)

        # Keep the ready ones, then the lowest numbers; stop the surplus.
        slots = max(0, quantity - len(crashed))
        current.sort(key=lambda c: (c.state != "ready", c.number, c.id))
        for c in current[slots:]:
            stops.append(Stop(c.id, c.host, "the formation asks for fewer"))
        kept = current[:slots]
        ready_new = sum(1 for c in kept if c.state == "ready")

        # Old containers go as new ones are ready (less `max_unavailable`); the ready old ones
        # are kept longest.
        keep_old = max(0, quantity - ready_new - max_unavailable)
        old.sort(key=lambda c: (c.state != "ready", c.number, c.id))
        for c in old[keep_old:]:
            stops.append(Stop(c.id, c.host, "replaced by a ready container of the current release"))

        # New ones start up to the surge: at most quantity + surge containers of the type live.
        surge = quantity if max_surge is None else max_surge
        room = quantity + surge - (len(kept) + len(crashed) + min(keep_old, len(old)))
        used = {c.number for c in kept} | {c.number for c in crashed}
        number = 0
        for _ in range(max(0, min(slots - len(kept), room))):
            number += 1
            while number in used:
                number += 1
            used.add(number)
            assert want is not None
            req = Request(desired.app, ptype, want.memory_mb, want.cpu, want.constraints)
            restarts, last_exit = restarts_of.get(number, (0, ("", None)))
            requests.append((req, want, number, restarts, last_exit))
        if len(kept) < slots:
            converged = False

        for c in [*kept, *old[:keep_old]]:
            if c.host:
                surviving[c.host] = surviving.get(c.host, 0) + 1
        if ready_new < quantity or old or crashed:
            converged = False

    assignments = place([r for r, *_ in requests], hosts, {desired.app: surviving})
    starts: list[Start] = []
    unplaced: list[str] = []
    for (_, want, number, restarts, last_exit), a in zip(requests, assignments, strict=True):
        if a.host is None:
            unplaced.append(a.reason)
            continue
        starts.append(Start(want.type, number, desired.release, a.host, want.memory_mb, want.cpu,
                            restarts, *last_exit))
    if starts or stops or unplaced:
        converged = False
    return Plan(tuple(starts), tuple(stops), tuple(dict.fromkeys(unplaced)), retry_at, converged)
