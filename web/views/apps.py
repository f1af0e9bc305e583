"""The apps list and each app's pages: processes, scale, releases, builds, config, domains,
logs, metrics and audit events. Reads ask core.authz first; writes call core.actions."""

from __future__ import annotations

from typing import Any

from django.conf import settings
from django.http import HttpRequest, HttpResponse, HttpResponseRedirect
from django.shortcuts import render
from django.urls import reverse
from django.views.decorators.http import require_GET, require_http_methods, require_POST

from core import actions, authz
from core.authz import Verb
from core.errors import ActionError, Forbidden, Invalid, NotFound
from core.models import App, Build, BuildStatus, Role
from scheduler import applog
from web import live, reads
from web.views._common import (
    acting_user,
    back_with,
    dashboard_view,
    error_page,
    is_htmx,
    run_action,
)

LIVE_POLL_SECONDS = 3
STATUS_POLL_SECONDS = 5
METRICS_POLL_SECONDS = 30


def _app(request: HttpRequest, name: str, verb: Verb = Verb.APP_READ) -> tuple[App, Role]:
    app = authz.app_get(request.user, name, verb)
    role = authz.role_of(request.user, app.team)
    assert role is not None  # app_get raised NotFound otherwise
    return app, role


def _context(app: App, role: Role, tab: str, **extra: Any) -> dict[str, Any]:
    return {
        "nav": "apps",
        "tab": tab,
        "app": app,
        "role": role,
        "can_config": authz.allows(role, Verb.CONFIG_READ),
        "can_deploy": authz.allows(role, Verb.APP_DEPLOY),
        "can_manage": authz.allows(role, Verb.APP_MANAGE),
        "git_url": f"/git/{app.name}.git",
        **extra,
    }


# --- the list --------------------------------------------------------------------------------


@dashboard_view
@require_GET
def app_list(request: HttpRequest) -> HttpResponse:
    summaries = reads.app_summaries(request.user)
    if is_htmx(request):
        return render(request, "web/apps/_app_rows.html", {"summaries": summaries})
    teams = [row for row in reads.teams_of(request.user)
             if authz.allows(row.role, Verb.APP_MANAGE)]
    personal = getattr(request.user, "username", "")
    return render(request, "web/apps/list.html", {
        "nav": "apps", "summaries": summaries, "create_teams": teams, "personal": personal,
        "poll": STATUS_POLL_SECONDS, "paas_domain": settings.PAAS_DOMAIN,
    })


@dashboard_view
@require_http_methods(["GET", "POST"])
def app_index(request: HttpRequest) -> HttpResponse:
    """GET: the apps list lives at the site root; POST: create an app."""
    if request.method == "POST":
        return app_create(request)
    return HttpResponseRedirect(reverse("web:apps"))


def app_create(request: HttpRequest) -> HttpResponse:
    name = request.POST.get("name", "").strip()
    team_name = request.POST.get("team", "").strip()
    list_url = reverse("web:apps")
    try:
        team = authz.team_get(request.user, team_name) if team_name else None
        app = actions.app_create(actor=acting_user(request), name=name, team=team)
    except (NotFound, Forbidden) as exc:
        return error_page(request, exc)
    except ActionError as exc:
        return back_with(request, list_url, error=exc)
    return back_with(request, reverse("web:app", args=[app.name]),
                     success=f"Created {app.name} in team {app.team.name}.")


# --- overview: processes, scale, metrics -----------------------------------------------------


def _processes(app: App, role: Role) -> dict[str, Any]:
    summary = reads.app_summary(app, role)
    containers = reads.containers_of(app)
    by_type: dict[str, list[Any]] = {}
    for container in containers:
        by_type.setdefault(container.type, []).append(
            {"c": container, "usage": live.container_usage(container)})
    groups = [{"process": p, "type": p.type, "containers": by_type.pop(p.type, [])}
              for p in summary.processes]
    # Containers of a type no longer in the formation (being stopped) still show.
    groups += [{"process": None, "type": t, "containers": cs} for t, cs in sorted(by_type.items())]
    return {"summary": summary, "groups": groups, "poll": STATUS_POLL_SECONDS}


@dashboard_view
@require_GET
def app_detail(request: HttpRequest, name: str) -> HttpResponse:
    app, role = _app(request, name)
    if is_htmx(request):
        return render(request, "web/apps/_processes.html", _context(app, role, "overview",
                                                                  **_processes(app, role)))
    current = app.current_release()
    return render(request, "web/apps/overview.html", _context(
        app, role, "overview", current=current, domains=list(app.domains.all()),
        metrics_poll=METRICS_POLL_SECONDS, **_processes(app, role)))


@dashboard_view
@require_POST
def app_scale(request: HttpRequest, name: str) -> HttpResponse:
    app, _ = _app(request, name)
    updates: list[dict[str, object]] = []
    for ptype in request.POST.getlist("type"):
        update: dict[str, object] = {"type": ptype}
        raw_quantity = request.POST.get(f"quantity-{ptype}", "").strip()
        if raw_quantity:
            # Plain ASCII digits of sane length become a number; anything else goes to the
            # action as typed, whose validator explains what a quantity must be.
            wellformed = raw_quantity.isascii() and raw_quantity.isdigit() and len(raw_quantity) < 10
            update["quantity"] = int(raw_quantity) if wellformed else raw_quantity
        size = request.POST.get(f"size-{ptype}", "").strip()
        if size:
            update["size"] = size
        updates.append(update)
    return run_action(
        request, reverse("web:app", args=[name]),
        lambda rows: "Scaled " + ", ".join(
            f"{r.type} to {r.quantity} \N{MULTIPLICATION SIGN} {r.size}" for r in rows) + ".",
        lambda: actions.formation_scale(actor=acting_user(request), app=app, updates=updates))


@dashboard_view
@require_GET
def app_metrics(request: HttpRequest, name: str) -> HttpResponse:
    app, role = _app(request, name)
    return render(request, "web/apps/_metrics.html", _context(
        app, role, "overview", metrics=live.app_metrics(app.name), poll=METRICS_POLL_SECONDS))


@dashboard_view
@require_POST
def app_destroy(request: HttpRequest, name: str) -> HttpResponse:
    """Destroy the app, once its name has been typed to confirm (admins and owners)."""
    app, _ = _app(request, name)
    typed = request.POST.get("confirm", "").strip()

    def destroy() -> None:
        authz.require_app(request.user, Verb.APP_MANAGE, app)
        if typed != app.name:
            raise Invalid(f"Type the app's name, {app.name}, to confirm destroying it.",
                          fields={"confirm": ["Does not match."]})
        actions.app_destroy(actor=acting_user(request), app=app)

    response = run_action(request, reverse("web:app", args=[name]),
                          f"Destroyed {name} with its releases, config and domains.", destroy)
    if response.status_code == 303 and not App.objects.filter(pk=app.pk).exists():
        response["Location"] = reverse("web:apps")
    return response


# --- releases and rollback -------------------------------------------------------------------


@dashboard_view
@require_GET
def app_releases(request: HttpRequest, name: str) -> HttpResponse:
    app, role = _app(request, name)
    releases = reads.releases_of(app)
    current = releases[0].version if releases else None
    return render(request, "web/apps/releases.html",
                  _context(app, role, "releases", releases=releases, current_version=current))


@dashboard_view
@require_POST
def app_rollback(request: HttpRequest, name: str) -> HttpResponse:
    app, _ = _app(request, name)
    version = request.POST.get("version") or None
    url = reverse("web:app-releases", args=[name])
    return run_action(request, url, lambda release: f"Rolled back: made {release.name} "
                      f"({release.description}).",
                      lambda: actions.release_rollback(actor=acting_user(request), app=app,
                                                       version=version))


# --- builds ----------------------------------------------------------------------------------


@dashboard_view
@require_GET
def app_builds(request: HttpRequest, name: str) -> HttpResponse:
    app, role = _app(request, name)
    return render(request, "web/apps/builds.html",
                  _context(app, role, "builds", builds=reads.builds_of(app)))


def _build(app: App, build_id: int) -> Build:
    build = Build.objects.filter(app=app, pk=build_id).select_related("created_by").first()
    if build is None:
        raise NotFound(f"Build {build_id} of '{app.name}' not found.")
    return build


def _build_log(build: Build, after: str | None) -> dict[str, Any]:
    running = build.status in (BuildStatus.PENDING, BuildStatus.RUNNING)
    if running:
        tail = live.build_log_tail(build.pk, after=after)
        return {"running": True, "lines": tail.lines, "last_id": tail.last_id,
                "available": tail.available, "finished_log": ""}
    return {"running": False, "lines": [], "last_id": "", "available": True,
            "finished_log": build.log}


@dashboard_view
@require_GET
def app_build(request: HttpRequest, name: str, build_id: int) -> HttpResponse:
    app, role = _app(request, name)
    build = _build(app, build_id)
    after = request.GET.get("after") or None
    log = _build_log(build, after)
    if is_htmx(request):
        return render(request, "web/apps/_build_log.html",
                      _context(app, role, "builds", build=build, poll=LIVE_POLL_SECONDS, **log))
    return render(request, "web/apps/build.html",
                  _context(app, role, "builds", build=build, poll=LIVE_POLL_SECONDS, **log))


# --- config ----------------------------------------------------------------------------------


@dashboard_view
@require_GET
def app_config(request: HttpRequest, name: str) -> HttpResponse:
    app, role = _app(request, name)
    keys = list(app.config_vars.order_by("key").values_list("key", flat=True))
    return render(request, "web/apps/config.html", _context(app, role, "config", keys=keys))


@dashboard_view
@require_GET
def app_config_reveal(request: HttpRequest, name: str, key: str) -> HttpResponse:
    app, role = _app(request, name, Verb.CONFIG_READ)
    var = app.config_vars.filter(key=key).first()
    if var is None:
        raise NotFound(f"'{app.name}' has no config var '{key}'.")
    return render(request, "web/apps/_config_value.html",
                  _context(app, role, "config", key=key, value=var.value))


@dashboard_view
@require_POST
def app_config_set(request: HttpRequest, name: str) -> HttpResponse:
    app, _ = _app(request, name)
    key = request.POST.get("key", "").strip()
    # Values keep their spaces and newlines; browsers send CRLF in a textarea.
    value = request.POST.get("value", "").replace("\r\n", "\n")
    return run_action(request, reverse("web:app-config", args=[name]),
                      lambda release: f"Set {key}: made {release.name}.",
                      lambda: actions.config_set(actor=acting_user(request), app=app, values={key: value}))


@dashboard_view
@require_POST
def app_config_unset(request: HttpRequest, name: str) -> HttpResponse:
    app, _ = _app(request, name)
    key = request.POST.get("key", "")

    def unset() -> object:
        authz.require_app(request.user, Verb.APP_DEPLOY, app)
        if not app.config_vars.filter(key=key).exists():
            raise Invalid(f"'{app.name}' has no config var '{key}' (any more).")
        return actions.config_unset(actor=acting_user(request), app=app, keys=[key])

    return run_action(request, reverse("web:app-config", args=[name]),
                      lambda release: f"Removed {key}: made {release.name}.", unset)


# --- domains ---------------------------------------------------------------------------------


@dashboard_view
@require_GET
def app_domains(request: HttpRequest, name: str) -> HttpResponse:
    app, role = _app(request, name)
    return render(request, "web/apps/domains.html",
                  _context(app, role, "domains", domains=list(app.domains.all())))


@dashboard_view
@require_POST
def app_domain_add(request: HttpRequest, name: str) -> HttpResponse:
    app, _ = _app(request, name)
    hostname = request.POST.get("hostname", "").strip()
    return run_action(request, reverse("web:app-domains", args=[name]), f"Added {hostname}.",
                      lambda: actions.domain_add(actor=acting_user(request), app=app, hostname=hostname))


@dashboard_view
@require_POST
def app_domain_remove(request: HttpRequest, name: str) -> HttpResponse:
    app, _ = _app(request, name)
    hostname = request.POST.get("hostname", "").strip()
    return run_action(request, reverse("web:app-domains", args=[name]), f"Removed {hostname}.",
                      lambda: actions.domain_remove(actor=acting_user(request), app=app, hostname=hostname))


# --- logs and events -------------------------------------------------------------------------


@dashboard_view
@require_GET
def app_logs(request: HttpRequest, name: str) -> HttpResponse:
    app, role = _app(request, name)
    after = request.GET.get("after") or None
    tail = live.app_log_tail(app.name, after=after, since=applog.first_log_id(app))
    context = _context(app, role, "logs", tail=tail, poll=LIVE_POLL_SECONDS)
    if is_htmx(request):
        return render(request, "web/apps/_log_lines.html", context)
    return render(request, "web/apps/logs.html", context)


@dashboard_view
@require_GET
def app_events(request: HttpRequest, name: str) -> HttpResponse:
    app, role = _app(request, name)
    return render(request, "web/apps/events.html",
                  _context(app, role, "events", events=reads.events_of_app(app)))
