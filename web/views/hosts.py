"""Hosts: state, capacity and usage, their containers, and the drain action (staff)."""

from __future__ import annotations

from django.http import HttpRequest, HttpResponse
from django.shortcuts import render
from django.urls import reverse
from django.views.decorators.http import require_GET, require_POST

from core import actions, authz
from core.errors import NotFound
from core.models import Host
from web import reads
from web.views._common import acting_user, dashboard_view, is_htmx, run_action

POLL_SECONDS = 10


@dashboard_view
@require_GET
def host_list(request: HttpRequest) -> HttpResponse:
    context = {"nav": "hosts", "rows": reads.hosts_with_containers(request.user),
               "is_staff": bool(getattr(request.user, "is_staff", False)), "poll": POLL_SECONDS}
    if is_htmx(request):
        return render(request, "web/hosts/_hosts.html", context)
    return render(request, "web/hosts/list.html", context)


@dashboard_view
@require_POST
def host_drain(request: HttpRequest, name: str) -> HttpResponse:
    def drain() -> object:
        authz.require_staff(request.user, "drain hosts")
        host = Host.objects.filter(name=name).first()
        if host is None:
            raise NotFound(f"Host '{name}' not found.")
        return actions.host_drain(actor=acting_user(request), host=host)

    return run_action(request, reverse("web:hosts"),
                      f"Draining {name}: no new containers go there; its containers move elsewhere.",
                      drain)
