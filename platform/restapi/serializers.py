"""The JSON shapes of docs/api.md. Output serializers only read; input ones only check types
and presence: the rules themselves live in the actions (core.validators)."""

from __future__ import annotations

import time
from typing import Any

from django.contrib.auth.models import User
from drf_spectacular.utils import extend_schema_field
from rest_framework import serializers

from core.models import (
    ApiToken,
    App,
    AuditEvent,
    Build,
    Certificate,
    Container,
    Domain,
    Formation,
    Host,
    Membership,
    Release,
    Role,
    Team,
)

# --- output ----------------------------------------------------------------------------------


class TeamRoleSerializer(serializers.Serializer[Membership]):
    name = serializers.CharField(source="team.name")
    role = serializers.CharField()


class AccountSerializer(serializers.Serializer[User]):
    username = serializers.CharField()
    email = serializers.EmailField()
    is_staff = serializers.BooleanField()
    teams = serializers.SerializerMethodField()

    @extend_schema_field(TeamRoleSerializer(many=True))
    def get_teams(self, user: User) -> list[dict[str, Any]]:
        memberships = Membership.objects.filter(user_id=user.pk).select_related("team")
        rows = memberships.order_by("team__name")
        return list(TeamRoleSerializer(rows, many=True).data)  # type: ignore[arg-type]


class TeamSerializer(serializers.ModelSerializer[Team]):
    role = serializers.SerializerMethodField(help_text="Your role in the team.")
    personal = serializers.BooleanField(source="is_personal")

    class Meta:
        model = Team
        fields = ["name", "role", "personal", "created_at"]

    def get_role(self, team: Team) -> str | None:
        roles: dict[int, str] = self.context.get("roles", {})
        return roles.get(team.pk)


class MemberSerializer(serializers.ModelSerializer[Membership]):
    username = serializers.CharField(source="user.username")
    email = serializers.EmailField(source="user.email")

    class Meta:
        model = Membership
        fields = ["username", "email", "role"]


class TeamDetailSerializer(TeamSerializer):
    members = serializers.SerializerMethodField()

    class Meta(TeamSerializer.Meta):
        fields = [*TeamSerializer.Meta.fields, "members"]

    @extend_schema_field(MemberSerializer(many=True))
    def get_members(self, team: Team) -> list[dict[str, Any]]:
        rows = team.memberships.select_related("user").order_by("user__username")
        return MemberSerializer(rows, many=True).data  # type: ignore[return-value]


class TokenSerializer(serializers.ModelSerializer[ApiToken]):
    class Meta:
        model = ApiToken
        fields = ["id", "prefix", "description", "created_at", "last_used_at"]


class NewTokenSerializer(TokenSerializer):
    token = serializers.CharField(help_text="The token itself: shown this once only.")

    class Meta(TokenSerializer.Meta):
        fields = ["id", "token", "prefix", "description", "created_at", "last_used_at"]


class ReleaseSerializer(serializers.ModelSerializer[Release]):
    name = serializers.CharField(help_text="v<version>")
    build = serializers.IntegerField(source="build_id", allow_null=True, help_text="build id")
    commit = serializers.SerializerMethodField()
    created_by = serializers.CharField(source="created_by.username", allow_null=True, default=None)

    class Meta:
        model = Release
        fields = ["version", "name", "description", "build", "commit", "config_keys",
                  "created_by", "created_at", "status", "status_reason", "status_log"]
        read_only_fields = fields

    def get_commit(self, release: Release) -> str | None:
        return release.build.commit if release.build is not None else None


class FormationSerializer(serializers.ModelSerializer[Formation]):
    class Meta:
        model = Formation
        fields = ["type", "quantity", "size", "memory_mb", "cpu", "constraints",
                  "readiness_path", "boot_timeout_s"]


class AppSerializer(serializers.ModelSerializer[App]):
    team = serializers.CharField(source="team.name")
    url = serializers.CharField()
    git_url = serializers.SerializerMethodField()
    current_release = serializers.SerializerMethodField()
    formation = FormationSerializer(many=True)
    domains = serializers.SerializerMethodField()
    created_by = serializers.CharField(source="created_by.username", allow_null=True, default=None)

    class Meta:
        model = App
        fields = ["name", "team", "url", "git_url", "current_release", "formation", "domains",
                  "created_by", "created_at"]

    def get_git_url(self, app: App) -> str:
        request = self.context.get("request")
        path = f"/git/{app.name}.git"
        return request.build_absolute_uri(path) if request is not None else path

    @extend_schema_field(ReleaseSerializer(allow_null=True))
    def get_current_release(self, app: App) -> dict[str, Any] | None:
        known: dict[int, Release] | None = self.context.get("current_releases")
        release = known.get(app.pk) if known is not None else app.current_release()
        return ReleaseSerializer(release).data if release is not None else None

    def get_domains(self, app: App) -> list[str]:
        # all(), not order_by(): the list view prefetches the domains.
        return sorted(domain.hostname for domain in app.domains.all())


class BuildSerializer(serializers.ModelSerializer[Build]):
    created_by = serializers.CharField(source="created_by.username", allow_null=True, default=None)
    duration_seconds = serializers.FloatField(allow_null=True)

    class Meta:
        model = Build
        fields = ["id", "status", "commit", "image_digest", "process_types", "slug_size",
                  "created_by", "created_at", "started_at", "finished_at", "duration_seconds"]


class ContainerSerializer(serializers.ModelSerializer[Container]):
    name = serializers.CharField(help_text="<type>.<number>, e.g. web.1")
    release = serializers.IntegerField(source="release.version")
    host = serializers.CharField(source="host.name", allow_null=True, default=None)
    status = serializers.SerializerMethodField(
        help_text="up, starting, crashing, exited, failed or oom")

    class Meta:
        model = Container
        fields = ["id", "type", "number", "name", "release", "host", "status", "state",
                  "address", "exit_code", "started_at", "ready_at", "restarts",
                  "last_exit_state", "last_exit_code", "message"]

    def get_status(self, c: Container) -> str:
        from scheduler.conf import SchedulerSettings
        from scheduler.planner import status

        stable_s = self.context.get("crash_reset_after_s")
        if stable_s is None:
            stable_s = SchedulerSettings.from_env().crash_reset_after_s
        ready_at = c.ready_at.timestamp() if c.ready_at else None
        return status(c.state, c.restarts, ready_at, time.time(), float(stable_s))


class CertificateSummarySerializer(serializers.ModelSerializer[Certificate]):
    class Meta:
        model = Certificate
        fields = ["names", "not_after", "fingerprint"]


class CertificateSerializer(serializers.ModelSerializer[Certificate]):
    """A certificate's metadata; the key never leaves the control plane."""

    hostname = serializers.CharField(source="domain.hostname")
    days_left = serializers.SerializerMethodField()

    class Meta:
        model = Certificate
        fields = ["hostname", "names", "fingerprint", "subject", "issuer", "not_before",
                  "not_after", "days_left", "created_at", "updated_at"]

    def get_days_left(self, certificate: Certificate) -> int:
        return certificate.days_left()


class DomainSerializer(serializers.ModelSerializer[Domain]):
    certificate = serializers.SerializerMethodField()

    class Meta:
        model = Domain
        fields = ["hostname", "created_at", "certificate"]

    @extend_schema_field(CertificateSummarySerializer(allow_null=True))
    def get_certificate(self, domain: Domain) -> dict[str, Any] | None:
        # A missing reverse one-to-one raises an AttributeError subclass.
        certificate = getattr(domain, "certificate", None)
        if not isinstance(certificate, Certificate):
            return None
        return dict(CertificateSummarySerializer(certificate).data)


class EventSerializer(serializers.ModelSerializer[AuditEvent]):
    actor = serializers.CharField(source="actor_name")
    team = serializers.CharField(source="team_name")
    app = serializers.CharField(source="app_name")

    class Meta:
        model = AuditEvent
        fields = ["id", "action", "actor", "team", "app", "data", "created_at"]


class ResourcesSerializer(serializers.Serializer[Any]):
    memory_mb = serializers.IntegerField()
    cpus = serializers.FloatField()


class HostSerializer(serializers.ModelSerializer[Host]):
    capacity = serializers.SerializerMethodField()
    usage = serializers.SerializerMethodField()

    class Meta:
        model = Host
        fields = ["name", "address", "state", "capacity", "usage", "last_heartbeat_at", "labels"]

    @extend_schema_field(ResourcesSerializer)
    def get_capacity(self, host: Host) -> dict[str, float]:
        return {"memory_mb": host.memory_mb, "cpus": host.cpus}

    @extend_schema_field(ResourcesSerializer)
    def get_usage(self, host: Host) -> dict[str, float]:
        return {"memory_mb": host.memory_mb_used, "cpus": host.cpus_used}


class NewHostSerializer(HostSerializer):
    token = serializers.CharField(help_text="The agent's token: shown this once only.")

    class Meta(HostSerializer.Meta):
        fields = [*HostSerializer.Meta.fields, "token"]


class ConfigChangeSerializer(serializers.Serializer[Any]):
    config = serializers.DictField(child=serializers.CharField())
    release = ReleaseSerializer()


# --- input -----------------------------------------------------------------------------------


class LoginInput(serializers.Serializer[Any]):
    username = serializers.CharField()
    password = serializers.CharField(trim_whitespace=False)


class LoginOutput(serializers.Serializer[Any]):
    token = serializers.CharField()
    user = AccountSerializer()


class NameInput(serializers.Serializer[Any]):
    name = serializers.CharField(trim_whitespace=False)


class AppInput(NameInput):
    team = serializers.CharField(required=False, help_text="Default: your personal team.")


class MemberInput(serializers.Serializer[Any]):
    username = serializers.CharField(required=False)
    email = serializers.CharField(required=False)
    role = serializers.ChoiceField(choices=Role.choices, default=Role.MEMBER)

    def validate(self, attrs: dict[str, Any]) -> dict[str, Any]:
        if bool(attrs.get("username")) == bool(attrs.get("email")):
            raise serializers.ValidationError({"username": ["Give a username or an email."]})
        return attrs


class RoleInput(serializers.Serializer[Any]):
    role = serializers.ChoiceField(choices=Role.choices)


class TokenInput(serializers.Serializer[Any]):
    description = serializers.CharField(required=False, allow_blank=True, default="",
                                        max_length=200)


class ConfigInput(serializers.Serializer[Any]):
    """An object of KEY: value (a string), or KEY: null to unset."""


class FormationUpdateInput(serializers.Serializer[Any]):
    type = serializers.CharField()
    quantity = serializers.IntegerField(required=False)
    size = serializers.CharField(required=False)
    constraints = serializers.DictField(child=serializers.CharField(), required=False,
                                        help_text="host labels the type needs ({} clears)")
    readiness_path = serializers.CharField(required=False, allow_blank=True, allow_null=True,
                                           help_text="web only; empty or null: TCP check")
    boot_timeout_s = serializers.IntegerField(required=False, allow_null=True,
                                              help_text="web only; null: the default")


class FormationInput(serializers.Serializer[Any]):
    updates = FormationUpdateInput(many=True)


class RollbackInput(serializers.Serializer[Any]):
    version = serializers.CharField(required=False, help_text="3 or v3; default: the one before")


class DomainInput(serializers.Serializer[Any]):
    hostname = serializers.CharField()


class CertificateInput(serializers.Serializer[Any]):
    chain = serializers.CharField(help_text="PEM: the domain's certificate first, then its issuers")
    key = serializers.CharField(help_text="PEM: the certificate's private key, unencrypted")


class HostLabelsInput(serializers.Serializer[Any]):
    labels = serializers.DictField(child=serializers.CharField(allow_null=True),
                                   help_text="name: value to set, name: null to remove")


class HostInput(serializers.Serializer[Any]):
    name = serializers.CharField()
    address = serializers.CharField()
    memory_mb = serializers.IntegerField()
    cpus = serializers.IntegerField()
    labels = serializers.DictField(child=serializers.CharField(), required=False)
