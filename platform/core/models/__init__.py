"""The control plane's domain model, one model per module."""

from __future__ import annotations

from core.models.api_token import ApiToken
from core.models.app import App
from core.models.audit_event import AuditEvent
from core.models.build import Build, BuildStatus
from core.models.certificate import Certificate
from core.models.config_var import ConfigVar
from core.models.container import Container, ContainerState
from core.models.domain import Domain
from core.models.formation import Formation
from core.models.host import Host, HostState
from core.models.membership import Membership, Role
from core.models.release import ImmutableReleaseError, Release, ReleaseStatus
from core.models.team import Team

__all__ = [
    "ApiToken",
    "App",
    "AuditEvent",
    "Build",
    "BuildStatus",
    "Certificate",
    "ConfigVar",
    "Container",
    "ContainerState",
    "Domain",
    "Formation",
    "Host",
    "HostState",
    "ImmutableReleaseError",
    "Membership",
    "Release",
    "ReleaseStatus",
    "Role",
    "Team",
]
