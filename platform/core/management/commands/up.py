"""`manage.py up`: bring the whole platform up on this host with the embedded defaults.

Migrate; create the first admin when there is no user yet and print their token once; then run
the platform's Procfile under honcho until Ctrl-C or SIGTERM, which stops every process: web,
worker, beat, the scheduler's report follower, the router, a redis-server unless one is
configured or already running, and - as root, since containers need it - the runtime daemon and
this host's agent, with this host registered so the scheduler places apps on it.
"""

from __future__ import annotations

import os
import secrets
import shutil
import socket
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from django.conf import settings
from django.contrib.auth import get_user_model
from django.core.management import call_command
from django.core.management.base import BaseCommand, CommandError, CommandParser
from django.db import connections, transaction
from honcho.environ import parse_procfile
from honcho.manager import Manager

from controlplane.env import ConfigError, env_list, env_str
from core.actions import host_register, token_create, user_create
from core.errors import ActionError
from core.models import Host

REPO_ROOT = Path(__file__).resolve().parents[4]
DEFAULT_BIND = "127.0.0.1:8000"
DEFAULT_REDIS_URL = "redis://127.0.0.1:6379/0"
LOOPBACK = {"127.0.0.1", "localhost", "::1"}
# Exit statuses honcho reports after it stopped everything on SIGINT / SIGTERM.
STOPPED_ON_REQUEST = {130, 143}
# Procfile processes that run containers: they need root (namespaces, cgroups, mounts).
NEEDS_ROOT = ("runtime", "agent")


def processes_to_run(
    names: list[str], *, own_redis: bool, is_root: bool, skip: set[str]
) -> tuple[list[str], list[str]]:
    """Choose the Procfile processes `up` runs; return (run, left out with the reason)."""
    run: list[str] = []
    left_out: list[str] = []
    for name in names:
        if name in skip:
            left_out.append(f"{name} (PAAS_UP_SKIP)")
        elif name == "redis" and not own_redis:
            continue  # the configured or already running redis-server is announced instead
        elif name in NEEDS_ROOT and not is_root:
            left_out.append(f"{name} (containers need root: run `make up` as root)")
        else:
            run.append(name)
    return run, left_out


def this_host() -> tuple[str, str, int, int]:
    """This host's name, address, memory (MB) and CPUs, as its agent reports them."""
    name = env_str("PAAS_HOST_NAME", socket.gethostname().split(".")[0].lower())
    address = env_str("PAAS_HOST_ADDRESS", "127.0.0.1")
    memory_mb = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") // (1024 * 1024)
    return name, address, int(memory_mb), os.cpu_count() or 1


@dataclass(frozen=True)
class Bind:
    host: str
    port: int

    @property
    def url(self) -> str:
        # A wildcard bind is reachable on the loopback address from this host.
        host = "127.0.0.1" if self.host in ("0.0.0.0", "") else self.host
        host = "[::1]" if host == "::" else (f"[{host}]" if ":" in host else host)
        return f"http://{host}:{self.port}"


def parse_bind(value: str) -> Bind:
    """Read PAAS_BIND (`host:port`)."""
    host, sep, port = value.rpartition(":")
    host = host.strip("[]")
    if not sep or not host or not port.isdigit() or not 0 < int(port) < 65536:
        raise ConfigError(f"PAAS_BIND must be host:port, like {DEFAULT_BIND}, not {value!r}")
    return Bind(host, int(port))


@dataclass(frozen=True)
class RedisPlan:
    url: str
    port: int | None  # the port of the redis-server `up` runs, None when it runs none
    reason: str


def plan_redis(redis_url: str | None, port_open: Any) -> RedisPlan:
    """Decide whether `up` runs its own redis-server.

    It does when REDIS_URL is unset, or names this host on a port where nothing answers yet (a
    Debian package's redis-server service may already run on 6379: then that one is used).
    """
    url = redis_url or DEFAULT_REDIS_URL
    parts = urlsplit(url)
    if parts.scheme not in ("redis", "rediss", "unix"):
        raise ConfigError(f"REDIS_URL must be a redis:// URL, not {url!r}")
    if parts.scheme != "redis" or (parts.hostname or "") not in LOOPBACK:
        return RedisPlan(url, None, f"using the redis at {parts.hostname or url}")
    try:
        port = parts.port or 6379
    except ValueError:
        raise ConfigError(f"REDIS_URL has a bad port: {url!r}") from None
    if port_open(parts.hostname, port):
        return RedisPlan(url, None, f"using the redis-server already listening on port {port}")
    return RedisPlan(url, port, f"running redis-server on 127.0.0.1:{port}")


def port_open(host: str, port: int) -> bool:
    try:
        with socket.create_connection((host, port), timeout=1):
            return True
    except OSError:
        return False


def port_free(host: str, port: int) -> bool:
    """Whether a server could listen on host:port now (SO_REUSEADDR, as gunicorn binds)."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    with socket.socket(family, socket.SOCK_STREAM) as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind((host, port))
        except OSError:
            return False
    return True


class Command(BaseCommand):
    help = "Migrate, create the first admin, and run the platform's processes until Ctrl-C."

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument(
            "--admin", default="admin", help="User name of the first admin (default: admin)."
        )
        parser.add_argument(
            "--no-run", action="store_true",
            help="Only migrate and create the first admin; do not start the processes.",
        )

    def handle(self, *args: Any, **options: Any) -> None:
        try:
            bind = parse_bind(env_str("PAAS_BIND", DEFAULT_BIND))
            redis = plan_redis(os.environ.get("REDIS_URL") or None, port_open)
        except ConfigError as exc:
            raise CommandError(str(exc)) from None
        data_dir = Path(settings.DATA_DIR)
        procfile = REPO_ROOT / "Procfile"
        if not procfile.is_file():
            raise CommandError(f"There is no Procfile at {procfile}.")

        if not options["no_run"]:
            self._check_can_run(bind, redis)

        self.stdout.write("paas: migrating the database")
        call_command("migrate", interactive=False, verbosity=0)
        admin = self._first_admin(options["admin"])

        names = list(parse_procfile(procfile.read_text()).processes)
        skip = set(env_list("PAAS_UP_SKIP", []))
        run, left_out = processes_to_run(
            names, own_redis=redis.port is not None, is_root=os.geteuid() == 0, skip=skip
        )
        host = self._register_this_host() if "agent" in run else None

        self._announce(bind, admin, data_dir, redis)
        w = self.stdout.write
        w(f"  Processes:  {', '.join(run)}")
        for reason in left_out:
            w(f"  Left out:   {reason}")
        if host is not None:
            w(f"  This host:  {host} (apps are placed here)")
        if "router" in run:
            router_port = env_str("PAAS_ROUTER_BIND", "0.0.0.0:8080").rpartition(":")[2]
            w(f"  Apps:       http://<app>.{settings.PAAS_DOMAIN}:{router_port}/")
        w("")
        w("  Ctrl-C stops the platform.")
        w("")
        if options["no_run"]:
            return
        sys.stdout.flush()
        # The processes have their own connections; none of this one's may leak into a fork.
        connections.close_all()
        code = self._run(procfile, run, bind, redis, data_dir, host)
        if code in STOPPED_ON_REQUEST:
            self.stdout.write("paas: stopped.")
            return
        raise CommandError(f"a process stopped (status {code}); the others were stopped too.")

    def _check_can_run(self, bind: Bind, redis: RedisPlan) -> None:
        """Fail with a clear message now rather than with one process's log line later."""
        if redis.port is not None and shutil.which("redis-server") is None:
            raise CommandError(
                "redis-server is not installed: `make up` installs it (Debian package "
                "redis-server), or set REDIS_URL to a Redis server to use."
            )
        if not port_free(bind.host, bind.port):
            raise CommandError(
                f"{bind.host}:{bind.port} is already in use: stop what listens there, or set "
                "PAAS_BIND to another host:port."
            )

    def _first_admin(self, username: str) -> tuple[str, str, str] | None:
        """Create the first admin if there is no user; return (name, password, token)."""
        User = get_user_model()
        if User.objects.exists():
            return None
        password = secrets.token_urlsafe(15)
        try:
            with transaction.atomic():
                user = user_create(
                    actor=None, username=username, password=password, is_staff=True
                )
                # Superuser is Django's own flag (the admin site), outside the domain model.
                User.objects.filter(pk=user.pk).update(is_superuser=True)
                _row, token = token_create(actor=user, description="created by make up")
        except ActionError as exc:
            raise CommandError(f"cannot create the first admin: {exc.message}") from None
        return username, password, token

    def _announce(
        self, bind: Bind, admin: tuple[str, str, str] | None, data_dir: Path, redis: RedisPlan,
    ) -> None:
        w = self.stdout.write
        w("")
        w(f"  Dashboard:  {bind.url}/")
        w(f"  API:        {bind.url}/api/v1/  (reference: {bind.url}/api/v1/docs/)")
        w(f"  Data:       {data_dir}")
        w(f"  Redis:      {redis.reason}")
        w("")
        if admin is not None:
            name, password, token = admin
            w(f"  First admin created: {name}  (shown this once only; keep them safe)")
            w(f"    password: {password}")
            w(f"    token:    {token}")
            w("")
            w("  Next, in another terminal:")
            w(f"    paas login --server {bind.url} --token {token}")
        else:
            w("  Next, in another terminal:")
            w(f"    paas login --server {bind.url}")
        w("")

    def _register_this_host(self) -> str:
        """Register this host for its agent's heartbeats, once; return its name."""
        name, address, memory_mb, cpus = this_host()
        if Host.objects.filter(name=name).exists():
            return name
        admin = get_user_model().objects.filter(is_staff=True).order_by("pk").first()
        if admin is None:
            raise CommandError("no staff user to register this host with: create one first")
        try:
            host_register(actor=admin, name=name, address=address, memory_mb=memory_mb, cpus=cpus)
        except ActionError as exc:
            raise CommandError(
                f"cannot register this host as {name!r}: {exc.message} (set PAAS_HOST_NAME or "
                "PAAS_HOST_ADDRESS)"
            ) from None
        return name

    def _run(
        self, procfile: Path, run: list[str], bind: Bind, redis: RedisPlan, data_dir: Path,
        host: str | None,
    ) -> int:
        processes = parse_procfile(procfile.read_text()).processes
        env = dict(os.environ)
        venv_bin = str(Path(sys.executable).parent)
        env["PATH"] = venv_bin + os.pathsep + env.get("PATH", os.defpath)
        env["PAAS_DATA_DIR"] = str(data_dir)
        env["PAAS_BIND"] = f"{bind.host}:{bind.port}"
        env["REDIS_URL"] = redis.url
        env["PYTHONUNBUFFERED"] = "1"
        if redis.port is not None:
            env["PAAS_REDIS_PORT"] = str(redis.port)
            (data_dir / "redis").mkdir(parents=True, exist_ok=True)
        if host is not None:
            env["PAAS_HOST_NAME"] = host
        if "router" in run and "PAAS_APP_URL" not in env:
            port = env_str("PAAS_ROUTER_BIND", "0.0.0.0:8080").rpartition(":")[2]
            if port != "80":
                env["PAAS_APP_URL"] = f"http://{{app}}.{{domain}}:{port}"
        manager = Manager()
        for name in run:
            manager.add_process(name, processes[name], env=env, cwd=str(REPO_ROOT))
        manager.loop()
        return int(manager.returncode or 0)
