"""/api/v1/ routes. A trailing slash is accepted on every path."""

from __future__ import annotations

from collections.abc import Callable

from django.http import HttpResponseBase
from django.urls import URLPattern, URLResolver, re_path
from drf_spectacular.views import SpectacularAPIView, SpectacularSwaggerView

from restapi import runs
from restapi import views as v
from restapi.logs import AppLogsView

_NAME = r"[^/]+"


def _route(pattern: str, view: Callable[..., HttpResponseBase], name: str) -> URLPattern:
    regex = "^" + pattern.replace("{", "(?P<").replace("}", f">{_NAME})") + "/?$"
    return re_path(regex, view, name=name)


urlpatterns: list[URLPattern | URLResolver] = [
    _route("auth/login", v.LoginView.as_view(), "api-login"),
    _route("account", v.AccountView.as_view(), "api-account"),
    _route("teams", v.TeamListView.as_view(), "api-teams"),
    _route("teams/{team}", v.TeamView.as_view(), "api-team"),
    _route("teams/{team}/members", v.MemberListView.as_view(), "api-members"),
    _route("teams/{team}/members/{username}", v.MemberView.as_view(), "api-member"),
    _route("teams/{team}/events", v.TeamEventsView.as_view(), "api-team-events"),
    _route("tokens", v.TokenListView.as_view(), "api-tokens"),
    _route("tokens/{token_id}", v.TokenView.as_view(), "api-token"),
    _route("apps", v.AppListView.as_view(), "api-apps"),
    _route("apps/{app}", v.AppView.as_view(), "api-app"),
    _route("apps/{app}/config", v.ConfigView.as_view(), "api-config"),
    _route("apps/{app}/formation", v.FormationView.as_view(), "api-formation"),
    _route("apps/{app}/containers", v.ContainerListView.as_view(), "api-containers"),
    _route("apps/{app}/releases", v.ReleaseListView.as_view(), "api-releases"),
    _route("apps/{app}/releases/rollback", v.RollbackView.as_view(), "api-rollback"),
    _route("apps/{app}/releases/{version}", v.ReleaseView.as_view(), "api-release"),
    _route("apps/{app}/builds", v.BuildListView.as_view(), "api-builds"),
    _route("apps/{app}/domains", v.DomainListView.as_view(), "api-domains"),
    _route("apps/{app}/domains/{hostname}", v.DomainView.as_view(), "api-domain"),
    _route("apps/{app}/domains/{hostname}/certificate", v.CertificateView.as_view(), "api-certificate"),
    _route("apps/{app}/events", v.AppEventsView.as_view(), "api-app-events"),
    _route("apps/{app}/runs", runs.RunListView.as_view(), "api-runs"),
    _route("apps/{app}/runs/{run_id}", runs.RunView.as_view(), "api-run"),
    _route("apps/{app}/runs/{run_id}/output", runs.RunOutputView.as_view(), "api-run-output"),
    _route("apps/{app}/logs", AppLogsView.as_view(), "api-app-logs"),
    _route("hosts", v.HostListView.as_view(), "api-hosts"),
    _route("hosts/{name}", v.HostView.as_view(), "api-host"),
    _route("hosts/{name}/drain", v.HostDrainView.as_view(), "api-host-drain"),
    _route("schema", SpectacularAPIView.as_view(authentication_classes=[], permission_classes=[]), "api-schema"),
    _route("docs", SpectacularSwaggerView.as_view(url_name="api-schema", authentication_classes=[], permission_classes=[]), "api-docs"),
]
