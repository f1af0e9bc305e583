"""The endpoints of docs/api.md. Views read through core.authz and write through core.actions;
they never change a model themselves."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from django.contrib.auth import authenticate
from django.contrib.auth.models import User
from drf_spectacular.types import OpenApiTypes
from drf_spectacular.utils import OpenApiParameter, extend_schema
from rest_framework import permissions
from rest_framework.exceptions import AuthenticationFailed
from rest_framework.exceptions import NotFound as DrfNotFound
from rest_framework.request import Request
from rest_framework.response import Response
from rest_framework.views import APIView

from core import actions, authz, lookups
from core.actions.certs import cert_get
from core.actions.releases import release_get
from core.authz import Verb
from core.errors import Invalid, NotFound, invalid_field
from core.models import ApiToken, App, AuditEvent, Certificate, Container, Host, Membership, Team
from restapi import serializers as s
from restapi.auth import LoginRateThrottle
from scheduler.conf import SchedulerSettings

EVENTS_DEFAULT = 100
EVENTS_MAX = 1000


def _body(request: Request, required: tuple[str, ...] = (), optional: tuple[str, ...] = ()) -> dict[str, Any]:
    """The JSON object body, with the required keys present and no keys outside both lists."""
    data = request.data
    if not isinstance(data, Mapping):
        raise Invalid("The body must be a JSON object.")
    missing = [key for key in required if data.get(key) in (None, "")]
    if missing:
        raise Invalid(f"{missing[0]}: This field is required.",
                      fields={key: ["This field is required."] for key in missing})
    unknown = sorted(set(data) - set(required) - set(optional))
    if unknown:
        raise Invalid(f"Unknown field(s): {', '.join(map(str, unknown))}.",
                      fields={str(key): ["Unknown field."] for key in unknown})
    return dict(data)


def _user(request: Request) -> User:
    user = request.user
    assert isinstance(user, User)
    return user


def _roles(user: User) -> dict[int, str]:
    return dict(Membership.objects.filter(user_id=user.pk).values_list("team_id", "role"))


def _limit(request: Request) -> int:
    raw = request.query_params.get("limit", str(EVENTS_DEFAULT))
    if not raw.isdigit() or not 0 < int(raw) <= EVENTS_MAX:
        raise invalid_field("limit", f"limit must be a whole number from 1 to {EVENTS_MAX}.")
    return int(raw)


_LIMIT = OpenApiParameter("limit", OpenApiTypes.INT, description=f"at most {EVENTS_MAX}; default {EVENTS_DEFAULT}")


# --- auth and account ------------------------------------------------------------------------


class LoginView(APIView):
    authentication_classes: list[type] = []
    permission_classes = [permissions.AllowAny]
    throttle_classes = [LoginRateThrottle]

    def get_authenticate_header(self, request: Request) -> str:
        # A wrong password is a 401 (DRF would make it 403 for a view without authentication).
        return "Bearer"

    @extend_schema(request=s.LoginInput, responses={201: s.LoginOutput}, auth=[])
    def post(self, request: Request) -> Response:
        """Exchange a user name and password for a new token described `cli`."""
        data = _body(request, required=("username", "password"))
        username, password = data["username"], data["password"]
        if not isinstance(username, str) or not isinstance(password, str):
            raise Invalid("username and password must be strings.")
        user = authenticate(request._request, username=username, password=password)
        if user is None:
            raise AuthenticationFailed("Wrong user name or password.")
        _row, token = actions.token_create(actor=user, description="cli")
        return Response({"token": token, "user": s.AccountSerializer(user).data}, status=201)


class AccountView(APIView):
    @extend_schema(responses=s.AccountSerializer)
    def get(self, request: Request) -> Response:
        """Who you are and which teams you are in."""
        return Response(s.AccountSerializer(_user(request)).data)


# --- teams and members -----------------------------------------------------------------------


class TeamListView(APIView):
    @extend_schema(responses=s.TeamSerializer(many=True))
    def get(self, request: Request) -> Response:
        """The teams you are in, with your role."""
        user = _user(request)
        teams = Team.objects.filter(memberships__user_id=user.pk).order_by("name")
        return Response(s.TeamSerializer(teams, many=True, context={"roles": _roles(user)}).data)

    @extend_schema(request=s.NameInput, responses={201: s.TeamSerializer})
    def post(self, request: Request) -> Response:
        """Create a team; you become its owner."""
        user = _user(request)
        data = _body(request, required=("name",))
        team = actions.team_create(actor=user, name=data["name"])
        return Response(s.TeamSerializer(team, context={"roles": _roles(user)}).data, status=201)


class TeamView(APIView):
    @extend_schema(responses=s.TeamDetailSerializer)
    def get(self, request: Request, team: str) -> Response:
        """A team and its members."""
        user = _user(request)
        row = authz.team_get(user, team)
        return Response(s.TeamDetailSerializer(row, context={"roles": _roles(user)}).data)

    @extend_schema(responses={204: None})
    def delete(self, request: Request, team: str) -> Response:
        """Delete a team without apps (owners only)."""
        user = _user(request)
        actions.team_destroy(actor=user, team=authz.team_get(user, team))
        return Response(status=204)


class MemberListView(APIView):
    @extend_schema(responses=s.MemberSerializer(many=True))
    def get(self, request: Request, team: str) -> Response:
        """A team's members and their roles."""
        row = authz.team_get(_user(request), team)
        members = row.memberships.select_related("user").order_by("user__username")
        return Response(s.MemberSerializer(members, many=True).data)

    @extend_schema(request=s.MemberInput, responses={201: s.MemberSerializer})
    def post(self, request: Request, team: str) -> Response:
        """Add a user, by user name or e-mail address, with a role (default member)."""
        user = _user(request)
        row = authz.team_get(user, team)
        data = _body(request, optional=("username", "email", "role"))
        if bool(data.get("username")) == bool(data.get("email")):
            raise invalid_field("username", "Give either a username or an email.")
        who = lookups.user_find(data.get("username") or data.get("email"))
        membership = actions.member_add(actor=user, team=row, user=who, role=data.get("role", "member"))
        return Response(s.MemberSerializer(membership).data, status=201)


def _member(team: Team, username: str) -> User:
    membership = Membership.objects.filter(team=team, user__username=username).select_related("user").first()
    if membership is None:
        raise NotFound(f"'{username}' is not a member of '{team.name}'.")
    return membership.user


class MemberView(APIView):
    @extend_schema(request=s.RoleInput, responses=s.MemberSerializer)
    def patch(self, request: Request, team: str, username: str) -> Response:
        """Change a member's role."""
        user = _user(request)
        row = authz.team_get(user, team)
        data = _body(request, required=("role",))
        membership = actions.member_role_set(actor=user, team=row, user=_member(row, username),
                                             role=data["role"])
        return Response(s.MemberSerializer(membership).data)

    @extend_schema(responses={204: None})
    def delete(self, request: Request, team: str, username: str) -> Response:
        """Remove a member (a team keeps at least one owner)."""
        user = _user(request)
        row = authz.team_get(user, team)
        actions.member_remove(actor=user, team=row, user=_member(row, username))
        return Response(status=204)


def _events(request: Request, **filters: Any) -> Response:
    events = AuditEvent.objects.filter(**filters).order_by("-created_at", "-id")[: _limit(request)]
    return Response(s.EventSerializer(events, many=True).data)


class TeamEventsView(APIView):
    @extend_schema(parameters=[_LIMIT], responses=s.EventSerializer(many=True))
    def get(self, request: Request, team: str) -> Response:
        """The team's audit events, newest first."""
        return _events(request, team=authz.team_get(_user(request), team))


# --- tokens ----------------------------------------------------------------------------------


class TokenListView(APIView):
    @extend_schema(responses=s.TokenSerializer(many=True))
    def get(self, request: Request) -> Response:
        """Your tokens that still work (never the tokens themselves)."""
        tokens = ApiToken.objects.active().filter(user_id=_user(request).pk)
        return Response(s.TokenSerializer(tokens, many=True).data)

    @extend_schema(request=s.TokenInput, responses={201: s.NewTokenSerializer})
    def post(self, request: Request) -> Response:
        """Make a token; the answer is the only time it is shown."""
        data = _body(request, optional=("description",))
        row, token = actions.token_create(actor=_user(request),
                                          description=data.get("description") or "")
        answer = dict(s.TokenSerializer(row).data)
        answer["token"] = token
        return Response(answer, status=201)


class TokenView(APIView):
    @extend_schema(responses={204: None})
    def delete(self, request: Request, token_id: str) -> Response:
        """Revoke one of your tokens."""
        user = _user(request)
        row = None
        if token_id.isdigit() and len(token_id) < 18:
            row = ApiToken.objects.active().filter(pk=int(token_id), user_id=user.pk).first()
        if row is None:
            raise NotFound(f"Token {token_id} not found.")
        actions.token_revoke(actor=user, token=row)
        return Response(status=204)


# --- apps ------------------------------------------------------------------------------------


def _app_data(request: Request, app: App) -> dict[str, Any]:
    return dict(s.AppSerializer(app, context={"request": request}).data)


class AppListView(APIView):
    @extend_schema(responses=s.AppSerializer(many=True))
    def get(self, request: Request) -> Response:
        """The apps of every team you are in."""
        apps = authz.visible_apps(_user(request))
        context = {"request": request, "current_releases": lookups.current_releases(apps)}
        return Response(s.AppSerializer(apps, many=True, context=context).data)

    @extend_schema(request=s.AppInput, responses={201: s.AppSerializer})
    def post(self, request: Request) -> Response:
        """Create an app (in your personal team unless `team` is given); it starts at v1."""
        user = _user(request)
        data = _body(request, required=("name",), optional=("team",))
        if data.get("team") is not None and not isinstance(data["team"], str):
            raise invalid_field("team", "team must be a team name.")
        team = authz.team_get(user, data["team"]) if data.get("team") else None
        app = actions.app_create(actor=user, name=data["name"], team=team)
        return Response(_app_data(request, app), status=201)


class AppView(APIView):
    @extend_schema(responses=s.AppSerializer)
    def get(self, request: Request, app: str) -> Response:
        """One app: its URL, git remote, current release and formation."""
        return Response(_app_data(request, authz.app_get(_user(request), app)))

    @extend_schema(responses={204: None})
    def delete(self, request: Request, app: str) -> Response:
        """Destroy an app with everything it owns."""
        user = _user(request)
        actions.app_destroy(actor=user, app=authz.app_get(user, app))
        return Response(status=204)


class ConfigView(APIView):
    @extend_schema(responses=OpenApiTypes.OBJECT)
    def get(self, request: Request, app: str) -> Response:
        """The app's config values (not for viewers)."""
        return Response(authz.app_get(_user(request), app, Verb.CONFIG_READ).config())

    @extend_schema(request=OpenApiTypes.OBJECT, responses=s.ConfigChangeSerializer)
    def patch(self, request: Request, app: str) -> Response:
        """Set keys to strings and unset keys given as null; one new release for the lot."""
        user = _user(request)
        row = authz.app_get(user, app)
        if not isinstance(request.data, Mapping):
            raise Invalid("The body must be a JSON object of KEY: value (or null to unset).")
        release = actions.config_set(actor=user, app=row, values=dict(request.data))
        row.refresh_from_db()
        return Response({"config": row.config(), "release": s.ReleaseSerializer(release).data})


class FormationView(APIView):
    @extend_schema(responses=s.FormationSerializer(many=True))
    def get(self, request: Request, app: str) -> Response:
        """The app's process types, how many of each and how big."""
        row = authz.app_get(_user(request), app)
        return Response(s.FormationSerializer(row.formation.order_by("type"), many=True).data)

    @extend_schema(request=s.FormationInput, responses=s.FormationSerializer(many=True))
    def patch(self, request: Request, app: str) -> Response:
        """Scale: change quantity and/or size of process types, all or none."""
        user = _user(request)
        row = authz.app_get(user, app)
        data = _body(request, required=("updates",))
        formation = actions.formation_scale(actor=user, app=row, updates=data["updates"])
        return Response(s.FormationSerializer(formation, many=True).data)


class ContainerListView(APIView):
    @extend_schema(responses=s.ContainerSerializer(many=True))
    def get(self, request: Request, app: str) -> Response:
        """The app's containers as last observed on the hosts."""
        row = authz.app_get(_user(request), app)
        containers = Container.objects.filter(app=row).select_related("release", "host")
        context = {"crash_reset_after_s": SchedulerSettings.from_env().crash_reset_after_s}
        return Response(s.ContainerSerializer(containers.order_by("type", "number"), many=True,
                                              context=context).data)


class ReleaseListView(APIView):
    @extend_schema(responses=s.ReleaseSerializer(many=True))
    def get(self, request: Request, app: str) -> Response:
        """The app's releases, newest first."""
        row = authz.app_get(_user(request), app)
        releases = row.releases.select_related("build", "created_by").order_by("-version")
        return Response(s.ReleaseSerializer(releases, many=True).data)


class ReleaseView(APIView):
    @extend_schema(responses=s.ReleaseSerializer)
    def get(self, request: Request, app: str, version: str) -> Response:
        """One release, by number (`3`) or name (`v3`)."""
        row = authz.app_get(_user(request), app)
        return Response(s.ReleaseSerializer(release_get(row, version)).data)


class RollbackView(APIView):
    @extend_schema(request=s.RollbackInput, responses={201: s.ReleaseSerializer})
    def post(self, request: Request, app: str) -> Response:
        """Make a new release from an earlier one's build and config."""
        user = _user(request)
        row = authz.app_get(user, app)
        data = _body(request, optional=("version",)) if request.data else {}
        release = actions.release_rollback(actor=user, app=row, version=data.get("version"))
        return Response(s.ReleaseSerializer(release).data, status=201)


class BuildListView(APIView):
    @extend_schema(responses=s.BuildSerializer(many=True))
    def get(self, request: Request, app: str) -> Response:
        """The app's builds, newest first."""
        row = authz.app_get(_user(request), app)
        builds = row.builds.select_related("created_by").order_by("-created_at", "-id")
        return Response(s.BuildSerializer(builds, many=True).data)


class DomainListView(APIView):
    @extend_schema(responses=s.DomainSerializer(many=True))
    def get(self, request: Request, app: str) -> Response:
        """The app's custom domains."""
        row = authz.app_get(_user(request), app)
        domains = row.domains.select_related("certificate").order_by("hostname")
        return Response(s.DomainSerializer(domains, many=True).data)

    @extend_schema(request=s.DomainInput, responses={201: s.DomainSerializer})
    def post(self, request: Request, app: str) -> Response:
        """Route a custom hostname to the app."""
        user = _user(request)
        row = authz.app_get(user, app)
        data = _body(request, required=("hostname",))
        domain = actions.domain_add(actor=user, app=row, hostname=data["hostname"])
        return Response(s.DomainSerializer(domain).data, status=201)


class DomainView(APIView):
    @extend_schema(responses={204: None})
    def delete(self, request: Request, app: str, hostname: str) -> Response:
        """Stop routing a custom hostname to the app."""
        user = _user(request)
        actions.domain_remove(actor=user, app=authz.app_get(user, app), hostname=hostname)
        return Response(status=204)


class CertificateView(APIView):
    @extend_schema(responses=s.CertificateSerializer)
    def get(self, request: Request, app: str, hostname: str) -> Response:
        """The certificate a custom domain is served with (metadata; never the key)."""
        row = authz.app_get(_user(request), app)
        return Response(s.CertificateSerializer(cert_get(app=row, hostname=hostname)).data)

    @extend_schema(request=s.CertificateInput, responses={200: s.CertificateSerializer,
                                                          201: s.CertificateSerializer})
    def put(self, request: Request, app: str, hostname: str) -> Response:
        """Add or replace a custom domain's certificate: 201 when added, 200 when replaced."""
        user = _user(request)
        row = authz.app_get(user, app)
        data = _body(request, required=("chain", "key"))
        had = Certificate.objects.filter(
            domain__app=row, domain__hostname=hostname.strip().lower().rstrip(".")).exists()
        certificate = actions.cert_set(actor=user, app=row, hostname=hostname,
                                       chain=data["chain"], key=data["key"])
        return Response(s.CertificateSerializer(certificate).data, status=200 if had else 201)

    @extend_schema(responses={204: None})
    def delete(self, request: Request, app: str, hostname: str) -> Response:
        """Remove a custom domain's certificate; the router stops serving HTTPS for it."""
        user = _user(request)
        actions.cert_remove(actor=user, app=authz.app_get(user, app), hostname=hostname)
        return Response(status=204)


class AppEventsView(APIView):
    @extend_schema(parameters=[_LIMIT], responses=s.EventSerializer(many=True))
    def get(self, request: Request, app: str) -> Response:
        """The app's audit events, newest first."""
        return _events(request, app=authz.app_get(_user(request), app))


# --- hosts -----------------------------------------------------------------------------------


class HostListView(APIView):
    @extend_schema(responses=s.HostSerializer(many=True))
    def get(self, request: Request) -> Response:
        """Every host of the platform."""
        return Response(s.HostSerializer(Host.objects.order_by("name"), many=True).data)

    @extend_schema(request=s.HostInput, responses={201: s.NewHostSerializer})
    def post(self, request: Request) -> Response:
        """Register a host (staff); the answer holds its agent token, shown this once."""
        user = _user(request)
        authz.require_staff(user, "register hosts")
        data = _body(request, required=("name", "address", "memory_mb", "cpus"), optional=("labels",))
        host, token = actions.host_register(actor=user, name=data["name"], address=data["address"],
                                            memory_mb=data["memory_mb"], cpus=data["cpus"],
                                            labels=data.get("labels"))
        answer = dict(s.HostSerializer(host).data)
        answer["token"] = token
        return Response(answer, status=201)


class HostView(APIView):
    @extend_schema(request=s.HostLabelsInput, responses=s.HostSerializer)
    def patch(self, request: Request, name: str) -> Response:
        """Set or remove a host's labels (staff): `{"labels": {"region": "eu", "old": null}}`."""
        user = _user(request)
        authz.require_staff(user, "label hosts")
        host = Host.objects.filter(name=name).first()
        if host is None:
            raise NotFound(f"Host '{name}' not found.")
        data = _body(request, required=("labels",))
        return Response(s.HostSerializer(
            actions.host_label(actor=user, host=host, changes=data["labels"])).data)


class HostDrainView(APIView):
    @extend_schema(request=None, responses=s.HostSerializer)
    def post(self, request: Request, name: str) -> Response:
        """Drain a host (staff): no new containers, and its containers move elsewhere."""
        user = _user(request)
        authz.require_staff(user, "drain hosts")
        host = Host.objects.filter(name=name).first()
        if host is None:
            raise NotFound(f"Host '{name}' not found.")
        return Response(s.HostSerializer(actions.host_drain(actor=user, host=host)).data)


# --- anything else under /api/ ---------------------------------------------------------------


class ApiNotFoundView(APIView):
    """Every unknown path under /api/: a JSON 404 whatever the method or credentials."""

    authentication_classes: list[type] = []
    permission_classes = [permissions.AllowAny]
    schema = None

    def initial(self, request: Request, *args: Any, **kwargs: Any) -> None:
        raise DrfNotFound(f"No API endpoint at {request.path}.")
