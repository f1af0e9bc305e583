"""Placement: which host each new container goes to. A pure function: no Django, no I/O.

`place(requests, hosts, existing)` first filters the hosts (state `ready`, every label the
request's constraints name, enough free memory and CPU after what is already reserved and what
this call has placed so far), then scores the ones left: fewest replicas of the same app first
(spread), then least allocated (the mean of the reserved memory and CPU fractions), then the
host name, so the outcome is deterministic. What runs without a Container row (one-offs) is
added to the hosts' reservations with `with_reservations` first.

Two ways to find the best host give the same answer, and the cheaper one is chosen per group of
identical requests:

- a global heap of hosts ordered by allocation (lazily refreshed: an entry whose host changed
  since it was pushed is skipped), walked until the first host that fits and has no replica of
  the app yet. Hosts passed over are few: the app's own hosts and the full ones. This is the
  common case (an app's replicas are far fewer than the hosts).
- a heap per group ordered by (replicas of the app, allocation), built once for the group from
  the hosts that pass the filter, when the group is large next to the host count or has
  constraints (then most hosts would be passed over).
"""

from __future__ import annotations

import heapq
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field, replace

READY = "ready"


@dataclass(frozen=True, slots=True)
class HostCapacity:
    """A host as placement sees it: its state, labels, capacity and what is reserved on it."""

    name: str
    state: str
    memory_mb: int
    cpus: float
    memory_reserved_mb: int = 0
    cpu_reserved: float = 0.0
    labels: Mapping[str, str] = field(default_factory=dict)


@dataclass(frozen=True, slots=True)
class Request:
    """One container to place: whose it is, how big, and which host labels it needs."""

    app: str
    process_type: str
    memory_mb: int
    cpu: float
    constraints: Mapping[str, str] = field(default_factory=dict)


@dataclass(frozen=True, slots=True)
class Reservation:
    """Room something already running holds on a host, outside the hosts' own reservations
    (a one-off: it has no Container row)."""

    host: str
    memory_mb: int
    cpu: float


def with_reservations(hosts: Sequence[HostCapacity], extra: Iterable[Reservation]) -> list[HostCapacity]:
    """The hosts with `extra` added to what they reserve; reservations on unknown hosts count
    nowhere."""
    added: dict[str, tuple[int, float]] = {}
    for x in extra:
        mem, cpu = added.get(x.host, (0, 0.0))
        added[x.host] = (mem + x.memory_mb, cpu + x.cpu)
    out: list[HostCapacity] = []
    for h in hosts:
        if h.name in added:
            mem, cpu = added[h.name]
            h = replace(h, memory_reserved_mb=h.memory_reserved_mb + mem, cpu_reserved=h.cpu_reserved + cpu)
        out.append(h)
    return out


@dataclass(frozen=True, slots=True)
class Assignment:
    """Where a request goes: a host name, or None with the reason it fits nowhere."""

    request: Request
    host: str | None
    reason: str = ""


class _Host:
    """Mutable bookkeeping for one host during a call."""

    __slots__ = ("cpu", "cpus", "labels", "mem", "memory_mb", "name", "version")

    def __init__(self, h: HostCapacity) -> None:
        self.name = h.name
        self.memory_mb = h.memory_mb
        self.cpus = h.cpus
        self.mem = h.memory_reserved_mb
        self.cpu = h.cpu_reserved
        self.labels = h.labels
        self.version = 0

    def allocated(self) -> float:
        mem = self.mem / self.memory_mb if self.memory_mb > 0 else 1.0
        cpu = self.cpu / self.cpus if self.cpus > 0 else 1.0
        return (mem + cpu) / 2

    def fits(self, r: Request) -> bool:
        return self.mem + r.memory_mb <= self.memory_mb and self.cpu + r.cpu <= self.cpus + 1e-9

    def matches(self, r: Request) -> bool:
        return all(self.labels.get(k) == v for k, v in r.constraints.items())

    def book(self, r: Request, heap: list[tuple[float, str, int]]) -> None:
        """Reserve room for `r` here and push the host's new allocation on the global heap."""
        self.mem += r.memory_mb
        self.cpu += r.cpu
        self.version += 1
        heapq.heappush(heap, (self.allocated(), self.name, self.version))


def place(
    requests: Sequence[Request],
    hosts: Sequence[HostCapacity],
    existing: Mapping[str, Mapping[str, int]] | None = None,
) -> list[Assignment]:
    """Assign each request a host (in order), or say why none fits.

    `existing` maps an app name to {host name: replicas of the app already there}; it steers
    the spread. Reservations already on a host are in its `memory_reserved_mb`/`cpu_reserved`.
    """
    ready = [_Host(h) for h in hosts if h.state == READY]
    by_name = {h.name: h for h in ready}
    counts: dict[str, dict[str, int]] = {app: dict(c) for app, c in (existing or {}).items()}
    heap: list[tuple[float, str, int]] = [(h.allocated(), h.name, 0) for h in ready]
    heapq.heapify(heap)

    # Identical requests next to each other form a group (the planner sends them so).
    out: list[Assignment] = []
    i = 0
    while i < len(requests):
        j = i + 1
        while j < len(requests) and requests[j] == requests[i]:
            j += 1
        group = requests[i:j]
        app_counts = counts.setdefault(group[0].app, {})
        if group[0].constraints or 4 * len(group) >= len(ready):
            chosen = _place_group_heap(group[0], len(group), ready, app_counts, heap)
        else:
            chosen = [_place_global(group[0], heap, by_name, app_counts) for _ in group]
        for name in chosen:
            if name is None:
                out.append(Assignment(group[0], None, _why_not(group[0], ready)))
            else:
                out.append(Assignment(group[0], name))
        i = j
    return out


def _place_global(
    r: Request, heap: list[tuple[float, str, int]], by_name: dict[str, _Host], app_counts: dict[str, int]
) -> str | None:
    """Walk the allocation heap to the least allocated host that fits, preferring no replica."""
    passed: list[tuple[float, str, int]] = []
    best: tuple[int, float, str] | None = None
    found: str | None = None
    while heap:
        entry = heapq.heappop(heap)
        alloc, name, version = entry
        h = by_name[name]
        if version != h.version:
            continue  # stale: a newer entry for this host is in the heap
        passed.append(entry)
        if not (h.fits(r) and h.matches(r)):
            continue
        replicas = app_counts.get(name, 0)
        if replicas == 0:
            found = name
            break
        if best is None or (replicas, alloc, name) < best:
            best = (replicas, alloc, name)
    for entry in passed:
        heapq.heappush(heap, entry)
    if found is None and best is not None:
        found = best[2]
    if found is not None:
        app_counts[found] = app_counts.get(found, 0) + 1
        by_name[found].book(r, heap)
    return found


def _place_group_heap(
    r: Request,
    n: int,
    ready: list[_Host],
    app_counts: dict[str, int],
    global_heap: list[tuple[float, str, int]],
) -> list[str | None]:
    """Place `n` copies of one request with a heap of the fitting hosts by (replicas, allocation)."""
    heap = [
        (app_counts.get(h.name, 0), h.allocated(), h.name, h)
        for h in ready
        if h.matches(r) and h.fits(r)
    ]
    heapq.heapify(heap)
    chosen: list[str | None] = []
    for _ in range(n):
        while heap and not heap[0][3].fits(r):
            heapq.heappop(heap)  # full for this size; it stays full for the rest of the group
        if not heap:
            chosen.append(None)
            continue
        replicas, _, name, h = heapq.heappop(heap)
        app_counts[name] = replicas + 1
        chosen.append(name)
        h.book(r, global_heap)
        if h.fits(r):
            heapq.heappush(heap, (replicas + 1, h.allocated(), name, h))
    return chosen


def _why_not(r: Request, ready: list[_Host]) -> str:
    """Say in one sentence why a request fits on no host."""
    what = f"{r.app} {r.process_type} ({r.memory_mb} MB, {r.cpu:g} CPU)"
    if not ready:
        return f"no ready host to place {what} on"
    labelled = [h for h in ready if h.matches(r)]
    if not labelled:
        wanted = " ".join(f"{k}={v}" for k, v in sorted(r.constraints.items()))
        plural = "s" if len(r.constraints) > 1 else ""
        return f"no ready host has label{plural} {wanted} (needed by {what})"
    return f"no ready host has room for {what}: every one is short of memory or CPU"
