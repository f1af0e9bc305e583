"""The dashboard's URLs, mounted at the site root (the API lives under /api/v1/, git under /git/)."""

from __future__ import annotations

from django.urls import path, re_path

from web.views import account, apps, hosts, static, teams

app_name = "web"

urlpatterns = [
    path("", apps.app_list, name="apps"),
    path("login/", account.LoginView.as_view(), name="login"),
    path("logout/", account.LogoutView.as_view(), name="logout"),
    path("account/password/", account.PasswordChangeView.as_view(), name="password-change"),
    path("account/tokens/", account.tokens, name="tokens"),
    path("account/tokens/<int:token_id>/revoke/", account.token_revoke, name="token-revoke"),
    # GET lists, POST creates: no fixed word below teams/ or apps/ may shadow a name.
    path("teams/", teams.team_index, name="teams"),
    path("teams/<str:name>/", teams.team_detail, name="team"),
    path("teams/<str:name>/members/", teams.member_add, name="member-add"),
    path("teams/<str:name>/members/<str:username>/role/", teams.member_role, name="member-role"),
    path("teams/<str:name>/members/<str:username>/remove/", teams.member_remove,
         name="member-remove"),
    path("teams/<str:name>/events/", teams.team_events, name="team-events"),
    path("teams/<str:name>/delete/", teams.team_delete, name="team-delete"),
    path("apps/", apps.app_index, name="app-index"),
    path("apps/<str:name>/", apps.app_detail, name="app"),
    path("apps/<str:name>/scale/", apps.app_scale, name="app-scale"),
    path("apps/<str:name>/destroy/", apps.app_destroy, name="app-destroy"),
    path("apps/<str:name>/metrics/", apps.app_metrics, name="app-metrics"),
    path("apps/<str:name>/releases/", apps.app_releases, name="app-releases"),
    path("apps/<str:name>/releases/rollback/", apps.app_rollback, name="app-rollback"),
    path("apps/<str:name>/builds/", apps.app_builds, name="app-builds"),
    path("apps/<str:name>/builds/<int:build_id>/", apps.app_build, name="app-build"),
    path("apps/<str:name>/config/", apps.app_config, name="app-config"),
    path("apps/<str:name>/config/set/", apps.app_config_set, name="app-config-set"),
    path("apps/<str:name>/config/unset/", apps.app_config_unset, name="app-config-unset"),
    path("apps/<str:name>/config/<str:key>/reveal/", apps.app_config_reveal,
         name="app-config-reveal"),
    path("apps/<str:name>/domains/", apps.app_domains, name="app-domains"),
    path("apps/<str:name>/domains/add/", apps.app_domain_add, name="app-domain-add"),
    path("apps/<str:name>/domains/remove/", apps.app_domain_remove, name="app-domain-remove"),
    path("apps/<str:name>/logs/", apps.app_logs, name="app-logs"),
    path("apps/<str:name>/events/", apps.app_events, name="app-events"),
    path("hosts/", hosts.host_list, name="hosts"),
    path("hosts/<str:name>/drain/", hosts.host_drain, name="host-drain"),
    re_path(r"^static/(?P<path>.+)$", static.static_file, name="static"),
]
