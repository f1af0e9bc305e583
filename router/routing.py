"""Pure routing: which app a Host header means, and what to do with the request.

No sockets and no Redis here: the table follower builds a RouteTable, the proxy asks it.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

from router.table import AppRoute


@dataclass(frozen=True, slots=True)
class Forward:
    """Send the request to one of these endpoints."""

    route: AppRoute


@dataclass(frozen=True, slots=True)
class Refuse:
    """Answer the request ourselves with an error page."""

    status: int
    code: str
    message: str
    app: str | None = None


UNKNOWN_HOST = Refuse(404, "no_such_app", "There is no app at this address.")
MISSING_HOST = Refuse(400, "bad_request", "The request has no Host header.")

Decision = Forward | Refuse


def host_name(header: str) -> str:
    """Reduce a Host header to a bare lower-case name: no port, no trailing dot."""
    host = header.strip().lower()
    if host.startswith("["):  # an IPv6 literal, maybe with a port
        end = host.find("]")
        return host[: end + 1] if end > 0 else host
    colon = host.rfind(":")
    if colon >= 0:
        host = host[:colon]
    return host.rstrip(".")


class RouteTable:
    """The routes one router worker serves from, replaced whole or patched per app and domain."""

    def __init__(
        self,
        domain: str,
        apps: Mapping[str, AppRoute] | None = None,
        domains: Mapping[str, str] | None = None,
        version: int = 0,
    ) -> None:
        self.domain = domain.lower().strip(".")
        self._suffix = "." + self.domain
        self.apps: dict[str, AppRoute] = dict(apps or {})
        self.domains: dict[str, str] = dict(domains or {})
        self.version = version
        self._cache: dict[str, Decision] = {}

    def app_for_host(self, host: str) -> str | None:
        """Find the app a bare host name belongs to: exact domain, default domain, wildcard."""
        app = self.domains.get(host)
        if app is not None:
            return app
        if host.endswith(self._suffix):
            label = host[: -len(self._suffix)]
            if label and "." not in label:
                return label
        # Wildcards, most specific first: a.b.example.com tries *.b.example.com, *.example.com.
        rest = host
        while True:
            dot = rest.find(".")
            if dot < 0:
                return None
            rest = rest[dot + 1 :]
            app = self.domains.get("*." + rest)
            if app is not None:
                return app

    def decide(self, host_header: str | None) -> Decision:
        """Decide what to do with a request for this Host header."""
        if host_header is None:
            return MISSING_HOST
        decision = self._cache.get(host_header)
        if decision is not None:
            return decision
        host = host_name(host_header)
        app = self.app_for_host(host) if host else None
        route = self.apps.get(app) if app is not None else None
        if route is None:
            decision = UNKNOWN_HOST
        elif route.maintenance:
            decision = Refuse(503, "maintenance", "This app is down for maintenance.", app)
        elif not route.endpoints:
            decision = Refuse(503, "no_web_process", "This app has no web process running.", app)
        else:
            decision = Forward(route)
        if len(self._cache) > 10_000:
            self._cache.clear()
        self._cache[host_header] = decision
        return decision

    def replace(self, apps: Mapping[str, AppRoute], domains: Mapping[str, str], version: int) -> None:
        self.apps = dict(apps)
        self.domains = dict(domains)
        self.version = version
        self._cache.clear()

    def patch(
        self,
        apps: Mapping[str, AppRoute | None],
        domains: Mapping[str, str | None],
        version: int,
    ) -> None:
        """Apply a change: None removes an app or a domain."""
        for name, route in apps.items():
            if route is None:
                self.apps.pop(name, None)
            else:
                self.apps[name] = route
        for host, app in domains.items():
            if app is None:
                self.domains.pop(host, None)
            else:
                self.domains[host] = app
        self.version = version
        self._cache.clear()
