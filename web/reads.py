"""Reads the dashboard's pages need, each a fixed, small number of queries.

Permission checks are not made here: the views ask `core.authz` first, then read.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from django.db.models import Exists, OuterRef, Prefetch, Subquery

from core.models import (
    ApiToken,
    App,
    AuditEvent,
    Build,
    BuildStatus,
    Container,
    ContainerState,
    Formation,
    Host,
    Membership,
    Release,
    ReleaseStatus,
    Role,
    Team,
)

if TYPE_CHECKING:
    from django.contrib.auth.models import AbstractBaseUser, AnonymousUser, User

    Actor = AbstractBaseUser | AnonymousUser

UP_STATES = frozenset({ContainerState.RUNNING, ContainerState.READY})
DOWN_STATES = frozenset({ContainerState.EXITED, ContainerState.FAILED, ContainerState.OOM})
EVENTS_SHOWN = 100
# A container back in `starting` after this many restarts is in a crash loop, not starting.
CRASH_LOOP_RESTARTS = 3


@dataclass(frozen=True, slots=True)
class Status:
    """An app's state at a glance: a word, a badge style and a sentence for the tooltip."""

    key: str  # running, crashing, deploying, starting, idle
    label: str
    css: str
    detail: str


@dataclass(slots=True)
class ProcessCount:
    type: str
    wanted: int
    up: int
    size: str


@dataclass(slots=True)
class AppSummary:
    app: App
    role: Role
    status: Status
    release_name: str
    processes: list[ProcessCount] = field(default_factory=list)


def app_status(
    *, formation: list[Formation], containers: list[Container], release_status: str | None,
    building: bool,
) -> Status:
    """Decide running / crashing / deploying / starting / idle from what the database knows."""
    wanted = sum(row.quantity for row in formation)
    up = sum(1 for c in containers if c.state in UP_STATES)
    down = [c for c in containers if c.state in DOWN_STATES
            or (c.state == ContainerState.STARTING and c.restarts >= CRASH_LOOP_RESTARTS)]
    if down:
        names = ", ".join(sorted(c.name for c in down)[:5])
        return Status("crashing", "crashing", "bad", f"Stopped or failed: {names}.")
    if building or release_status in (ReleaseStatus.PENDING, ReleaseStatus.RELEASING):
        what = "a build is running" if building else "a release is rolling out"
        return Status("deploying", "deploying", "info", f"Deploying: {what}.")
    if release_status == ReleaseStatus.FAILED:
        return Status("crashing", "failed", "bad", "The current release's containers never got ready.")
    if wanted == 0:
        return Status("idle", "idle", "idle", "No processes are scaled up.")
    if up >= wanted:
        return Status("running", "running", "ok", f"{up} of {wanted} containers up.")
    return Status("starting", "starting", "warn", f"{up} of {wanted} containers up.")


def _latest_release(column: str) -> Subquery:
    return Subquery(
        Release.objects.filter(app=OuterRef("pk")).order_by("-version").values(column)[:1]
    )


def _apps_with_state() -> Any:
    return (
        App.objects.select_related("team")
        .annotate(
            current_version=_latest_release("version"),
            current_status=_latest_release("status"),
            building=Exists(Build.objects.filter(
                app=OuterRef("pk"), status__in=[BuildStatus.PENDING, BuildStatus.RUNNING])),
        )
        .prefetch_related(
            Prefetch("formation", queryset=Formation.objects.order_by("type")),
            Prefetch("containers", queryset=Container.objects.order_by("type", "number")),
        )
    )


def summarize(app: Any, role: Role) -> AppSummary:
    formation = list(app.formation.all())
    containers = list(app.containers.all())
    status = app_status(formation=formation, containers=containers,
                        release_status=app.current_status, building=app.building)
    up_by_type = Counter(c.type for c in containers if c.state in UP_STATES)
    processes = [ProcessCount(row.type, row.quantity, up_by_type.get(row.type, 0), row.size)
                 for row in formation]
    release = f"v{app.current_version}" if app.current_version else "\N{EN DASH}"
    return AppSummary(app=app, role=role, status=status, release_name=release, processes=processes)


def roles_of(user: Actor) -> dict[int, Role]:
    """The user's role in each of their teams, by team id (one query)."""
    if not user.is_authenticated:
        return {}
    return {team_id: Role(role) for team_id, role in
            Membership.objects.filter(user_id=user.pk).values_list("team_id", "role")}


def app_summaries(user: Actor, team: Team | None = None) -> list[AppSummary]:
    """Every app the user can see (optionally of one team), with its status (four queries)."""
    roles = roles_of(user)
    apps = _apps_with_state().filter(team_id__in=list(roles)).order_by("name")
    if team is not None:
        apps = apps.filter(team=team)
    return [summarize(app, roles[app.team_id]) for app in apps]


def app_summary(app: App, role: Role) -> AppSummary:
    return summarize(_apps_with_state().get(pk=app.pk), role)


def containers_of(app: App) -> list[Container]:
    return list(Container.objects.filter(app=app).select_related("host", "release")
                .order_by("type", "number"))


def releases_of(app: App, limit: int = 50) -> list[Release]:
    return list(Release.objects.filter(app=app).select_related("created_by", "build")
                .order_by("-version")[:limit])


def builds_of(app: App, limit: int = 50) -> list[Build]:
    return list(Build.objects.filter(app=app).select_related("created_by")
                .defer("log").order_by("-created_at", "-id")[:limit])


def events_of_app(app: App) -> list[AuditEvent]:
    return list(AuditEvent.objects.filter(app=app).order_by("-created_at", "-id")[:EVENTS_SHOWN])


def events_of_team(team: Team) -> list[AuditEvent]:
    return list(AuditEvent.objects.filter(team=team).order_by("-created_at", "-id")[:EVENTS_SHOWN])


def token_list(user: User) -> list[ApiToken]:
    return list(ApiToken.objects.filter(user=user).order_by("-created_at", "-id"))


@dataclass(slots=True)
class TeamRow:
    team: Team
    role: Role
    members: int
    apps: int


def teams_of(user: Actor) -> list[TeamRow]:
    from django.db.models import Count

    roles = roles_of(user)
    teams = (Team.objects.filter(pk__in=list(roles))
             .annotate(member_count=Count("memberships", distinct=True),
                       app_count=Count("apps", distinct=True)).order_by("name"))
    return [TeamRow(t, roles[t.pk], t.member_count, t.app_count) for t in teams]


def members_of(team: Team) -> list[Membership]:
    return list(Membership.objects.filter(team=team).select_related("user")
                .order_by("user__username"))


@dataclass(slots=True)
class HostRow:
    host: Host
    containers: list[Container]  # those the user may see
    hidden: int = 0  # containers of apps the user may not see: counted, never named

    @property
    def memory_percent(self) -> int:
        return _percent(self.host.memory_mb_used, self.host.memory_mb)

    @property
    def cpu_percent(self) -> int:
        return _percent(self.host.cpus_used, self.host.cpus)


def _percent(used: float, capacity: float) -> int:
    if capacity <= 0:
        return 0
    return max(0, min(100, round(100 * used / capacity)))


def hosts_with_containers(user: Actor) -> list[HostRow]:
    """Every host with the containers on it; containers of apps the user cannot see are counted
    but not named (hosts are platform-wide, apps are not); staff see them all."""
    roles = roles_of(user)
    staff = bool(getattr(user, "is_staff", False))
    hosts = Host.objects.order_by("name").prefetch_related(
        Prefetch("containers", queryset=Container.objects.select_related("app")
                 .order_by("app__name", "type", "number")))
    rows = []
    for host in hosts:
        visible = [c for c in host.containers.all() if staff or c.app.team_id in roles]
        rows.append(HostRow(host, visible, len(host.containers.all()) - len(visible)))
    return rows
