"""The route table contract: what the control plane writes to Redis and the router follows.

Redis keys (all writes go through the helpers below, which are atomic Lua scripts):

- ``paas:router:apps`` (hash): app name -> JSON
  ``{"endpoints": ["10.1.0.5:5000", ...], "maintenance": false}``; ``endpoints`` are the app's
  *ready* web containers as ``ip:port`` (``[v6]:port`` for IPv6), ``maintenance`` turns every
  request into a 503 maintenance page.
- ``paas:router:domains`` (hash): custom host name (lower case, no port, may be a wildcard
  ``*.example.com``) -> app name. ``<app>.$PAAS_DOMAIN`` needs no entry: the router derives it.
- ``paas:router:version`` (integer): incremented by every change.
- channel ``paas:router:changes``: after every change, the JSON message
  ``{"version": 8, "apps": ["web1"], "domains": ["www.example.com"]}`` naming what changed.
  A router that sees a version that is not its own plus one (it missed a message) reloads the
  whole table; so does a router that reconnects after a Redis outage.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Protocol

APPS_KEY = "paas:router:apps"
DOMAINS_KEY = "paas:router:domains"
VERSION_KEY = "paas:router:version"
CHANGES_CHANNEL = "paas:router:changes"

APP_NAME = re.compile(r"^[a-z][a-z0-9-]{0,62}$")
HOST_NAME = re.compile(r"^(\*\.)?([a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?\.)*[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?$")


class RouteError(ValueError):
    """A route table entry that the router cannot use."""


@dataclass(frozen=True, slots=True)
class Endpoint:
    """One ready web container, as the router connects to it."""

    key: str  # "ip:port", as written in the table
    host: str
    port: int


@dataclass(frozen=True, slots=True)
class AppRoute:
    """An app as the router sees it: where its web processes answer, and whether it is up."""

    app: str
    endpoints: tuple[Endpoint, ...]
    maintenance: bool = False


def parse_endpoint(text: str) -> Endpoint:
    """Parse `ip:port` (or `[v6]:port`) into an Endpoint, refusing anything else."""
    if not isinstance(text, str):
        raise RouteError(f"an endpoint must be a string like '10.1.0.5:5000', not {text!r}")
    host, sep, port_text = text.rpartition(":")
    if host.startswith("[") and host.endswith("]"):
        host = host[1:-1]
    if not sep or not host or not port_text.isdigit() or not 0 < int(port_text) < 65536:
        raise RouteError(f"an endpoint must look like '10.1.0.5:5000', not {text!r}")
    return Endpoint(key=text, host=host, port=int(port_text))


def check_app_name(app: str) -> str:
    if not isinstance(app, str) or not APP_NAME.match(app):
        raise RouteError(f"not an app name: {app!r}")
    return app


def normalise_host(host: str) -> str:
    """Lower-case a host name and check it is one the route table can hold."""
    if not isinstance(host, str):
        raise RouteError(f"not a host name: {host!r}")
    name = host.strip().lower().rstrip(".")
    if len(name) > 253 or not HOST_NAME.match(name):
        raise RouteError(f"not a host name: {host!r}")
    return name


def encode_app(endpoints: Sequence[str], maintenance: bool) -> str:
    for endpoint in endpoints:
        parse_endpoint(endpoint)
    return json.dumps({"endpoints": list(endpoints), "maintenance": bool(maintenance)})


def decode_app(app: str, raw: str | bytes) -> AppRoute:
    """Turn one `paas:router:apps` value into an AppRoute; RouteError when it is malformed."""
    try:
        data = json.loads(raw)
    except ValueError:
        raise RouteError(f"route for {app!r} is not JSON") from None
    if not isinstance(data, dict):
        raise RouteError(f"route for {app!r} is not a JSON object")
    endpoints = data.get("endpoints", [])
    if not isinstance(endpoints, list):
        raise RouteError(f"route for {app!r}: endpoints must be a list")
    maintenance = data.get("maintenance", False)
    if not isinstance(maintenance, bool):
        raise RouteError(f"route for {app!r}: maintenance must be true or false")
    return AppRoute(app=app, endpoints=tuple(parse_endpoint(e) for e in endpoints), maintenance=maintenance)


# --- writing (the control plane's side) -------------------------------------------------------

class SyncRedis(Protocol):
    def eval(self, script: str, numkeys: int, *keys_and_args: Any) -> Any: ...


# KEYS: apps, domains, version. ARGV[1]: JSON list of [op, field, value] with op one of
# "app_set", "app_del", "domain_set", "domain_del"; ARGV[2]: channel. One change, one version.
_APPLY = """
local ops = cjson.decode(ARGV[1])
local apps, domains = {}, {}
for _, op in ipairs(ops) do
  local kind, field, value = op[1], op[2], op[3]
  if kind == 'app_set' then
    redis.call('HSET', KEYS[1], field, value); table.insert(apps, field)
  elseif kind == 'app_del' then
    redis.call('HDEL', KEYS[1], field); table.insert(apps, field)
    local all = redis.call('HGETALL', KEYS[2])
    for i = 1, #all, 2 do
      if all[i + 1] == field then
        redis.call('HDEL', KEYS[2], all[i]); table.insert(domains, all[i])
      end
    end
  elseif kind == 'domain_set' then
    redis.call('HSET', KEYS[2], field, value); table.insert(domains, field)
  elseif kind == 'domain_del' then
    redis.call('HDEL', KEYS[2], field); table.insert(domains, field)
  end
end
local version = redis.call('INCR', KEYS[3])
local message = {version = version, apps = apps, domains = domains}
if #apps == 0 then message.apps = nil end
if #domains == 0 then message.domains = nil end
redis.call('PUBLISH', ARGV[2], cjson.encode(message))
return version
"""


def _apply(redis: SyncRedis, ops: list[list[str]]) -> int:
    return int(redis.eval(_APPLY, 3, APPS_KEY, DOMAINS_KEY, VERSION_KEY, json.dumps(ops), CHANGES_CHANNEL))


def route_app_set(redis: SyncRedis, app: str, endpoints: Sequence[str], *, maintenance: bool = False) -> int:
    """Publish an app's ready endpoints and maintenance flag; returns the table's new version."""
    return _apply(redis, [["app_set", check_app_name(app), encode_app(endpoints, maintenance)]])


def route_app_delete(redis: SyncRedis, app: str) -> int:
    """Remove an app and every custom domain that points at it."""
    return _apply(redis, [["app_del", check_app_name(app), ""]])


def route_domain_set(redis: SyncRedis, host: str, app: str) -> int:
    """Point a custom host name (or a wildcard like `*.example.com`) at an app."""
    return _apply(redis, [["domain_set", normalise_host(host), check_app_name(app)]])


def route_domain_delete(redis: SyncRedis, host: str) -> int:
    return _apply(redis, [["domain_del", normalise_host(host), ""]])


def route_table_replace(
    redis: SyncRedis,
    apps: Mapping[str, tuple[Sequence[str], bool]],
    domains: Mapping[str, str],
    existing_apps: Iterable[str] = (),
    existing_domains: Iterable[str] = (),
) -> int:
    """Write several apps and domains as one change (the scheduler's reconcile tick)."""
    ops: list[list[str]] = []
    ops += [["app_del", check_app_name(a), ""] for a in existing_apps if a not in apps]
    ops += [["domain_del", normalise_host(d), ""] for d in existing_domains if d not in domains]
    ops += [["app_set", check_app_name(a), encode_app(e, m)] for a, (e, m) in apps.items()]
    ops += [["domain_set", normalise_host(d), check_app_name(a)] for d, a in domains.items()]
    return _apply(redis, ops)


def parse_change(raw: str | bytes) -> tuple[int, list[str], list[str]]:
    """Read a change message: (version, apps changed, domains changed); RouteError if garbled."""
    try:
        data = json.loads(raw)
        version = data["version"]
        apps = data.get("apps") or []
        domains = data.get("domains") or []
    except (ValueError, KeyError, TypeError, AttributeError):
        raise RouteError(f"garbled route change message: {raw!r}") from None
    if not isinstance(version, int) or not isinstance(apps, list) or not isinstance(domains, list):
        raise RouteError(f"garbled route change message: {raw!r}")
    return version, [str(a) for a in apps], [str(d) for d in domains]
