"""Bearer-token authentication: `Authorization: Bearer paas_...` (see docs/api.md)."""

from __future__ import annotations

from typing import Any

from django.conf import settings
from django.contrib.auth.models import User
from drf_spectacular.extensions import OpenApiAuthenticationExtension
from rest_framework import authentication, exceptions
from rest_framework.request import Request
from rest_framework.throttling import SimpleRateThrottle

from core.models import ApiToken
from core.models.api_token import TOKEN_PREFIX, token_digest


class BearerTokenAuthentication(authentication.BaseAuthentication):
    """Authenticate a request by one of the user's API tokens (stored as SHA-256 digests)."""

    keyword = "Bearer"

    def authenticate(self, request: Request) -> tuple[User, ApiToken] | None:
        header = authentication.get_authorization_header(request).decode("latin-1")
        if not header:
            return None
        scheme, _, token = header.partition(" ")
        token = token.strip()
        if scheme.lower() != self.keyword.lower() or not token:
            raise exceptions.AuthenticationFailed(
                "Send the token as 'Authorization: Bearer paas_...'."
            )
        if not token.startswith(TOKEN_PREFIX):
            raise exceptions.AuthenticationFailed("That is not a paas API token.")
        row = (
            ApiToken.objects.active()
            .select_related("user")
            .filter(digest=token_digest(token))
            .first()
        )
        if row is None or not row.user.is_active:
            raise exceptions.AuthenticationFailed("The token is wrong or has been revoked.")
        row.touch()
        return row.user, row

    def authenticate_header(self, request: Request) -> str:
        # Makes DRF answer 401 (with WWW-Authenticate) rather than 403 when no token is sent.
        return self.keyword



class BearerTokenScheme(OpenApiAuthenticationExtension):  # type: ignore[no-untyped-call]
    """Describe the scheme in the OpenAPI schema."""

    target_class = "restapi.auth.BearerTokenAuthentication"
    name = "bearerToken"

    def get_security_definition(self, auto_schema: Any) -> dict[str, str]:
        return {"type": "http", "scheme": "bearer", "bearerFormat": "paas_<40 chars>"}


class LoginRateThrottle(SimpleRateThrottle):
    """Limit password logins per client address (PAAS_LOGIN_RATE), against password guessing.

    The counters live in Django's cache: with the default local-memory cache each web process
    counts on its own.
    """

    scope = "login"

    def get_rate(self) -> str | None:
        rate: str = settings.PAAS_LOGIN_RATE
        return rate or None

    def get_cache_key(self, request: Request, view: Any) -> str | None:
        return self.cache_format % {"scope": self.scope, "ident": self.get_ident(request)}
