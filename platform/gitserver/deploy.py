"""Build a pushed commit into an image and a release, reporting every line as it happens."""

from __future__ import annotations

import contextlib
import logging
import os
import shutil
import tempfile
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import redis
from django.conf import settings

from builder.buildpack import BuildRequest, build, default_cache_dir
from builder.errors import BuildError
from builder.executor import (
    BuildDirs,
    ContainerLimits,
    Executor,
    HostExecutor,
    OnLine,
    RuntimeExecutor,
    executor_mode,
)
from builder.image import assemble_image
from builder.source import checkout
from controlplane.env import ConfigError, data_dir, env_int, env_str
from core.actions import build_create, build_finish
from core.appdata import build_cancel_key
from core.errors import ActionError
from core.models import App, Build
from gitserver.buildlog import BuildLogStream
from runtime.client import DaemonClient, DaemonError, runtime_root
from runtime.images import ImageError, ImageStore

log = logging.getLogger(__name__)

DEFAULT_STACK = "stack:debian-13"
DEFAULT_CA_CERTS = "/etc/ssl/certs"
CANCEL_POLL_S = 0.5
APP_DESTROYED = "The app was destroyed; the build was cancelled."


class ClientGone(Exception):
    """The git client hung up; the build is cancelled."""


@dataclass
class Outcome:
    ok: bool
    reason: str  # for the client's `! [remote rejected] main -> main (<reason>)`


class CancellableExecutor:
    """An executor whose running step is stopped once `cancelled` is set.

    A silent step gives the builder no output line to fail on when the client has hung up, so a
    watcher thread cancels the inner executor (the host one kills the step's process group,
    the runtime one the whole build container).
    """

    def __init__(self, inner: Executor, cancelled: threading.Event) -> None:
        self.inner = inner
        self.owner = inner.owner
        self.cancelled = cancelled

    def prepare(self, dirs: BuildDirs, timeout: float) -> None:
        if self.cancelled.is_set():
            raise ClientGone
        self.inner.prepare(dirs, timeout)

    def close(self) -> None:
        self.inner.close()

    def visible_path(self, path: Path) -> str:
        return self.inner.visible_path(path)

    def cancel(self) -> None:
        self.inner.cancel()

    def run(self, argv: Sequence[str], cwd: Path, env: Mapping[str, str], timeout: float,
            on_line: OnLine) -> int:
        if self.cancelled.is_set():
            raise ClientGone
        done = threading.Event()

        def watch() -> None:
            while not done.wait(0.2):
                if self.cancelled.is_set():
                    self.inner.cancel()
                    return

        watcher = threading.Thread(target=watch, name="build-cancel", daemon=True)
        watcher.start()
        try:
            return self.inner.run(argv, cwd, env, timeout, on_line)
        finally:
            done.set()
            watcher.join()


class DestroyWatch:
    """Set `cancelled` once `paas:build-cancel:<build id>` appears: the app has been destroyed.

    The destroy's clean-up (`core.app_data_remove`) sets that key while the build holds the
    app's cache; one EXISTS every half second is all a build pays. An unreachable Redis only
    means the build is not cancelled early (the clean-up then waits for its end).
    """

    def __init__(self, build_id: int, redis_url: str, cancelled: threading.Event) -> None:
        self.destroyed = threading.Event()
        self._cancelled = cancelled
        self._key = build_cancel_key(build_id)
        self._stop = threading.Event()
        self._redis: redis.Redis[bytes] = redis.Redis.from_url(
            redis_url, socket_connect_timeout=1, socket_timeout=2)
        self._thread = threading.Thread(target=self._run, name=f"build-{build_id}-destroy",
                                        daemon=True)
        self._thread.start()

    def _run(self) -> None:
        try:
            while not self._stop.wait(CANCEL_POLL_S):
                try:
                    seen = self._redis.exists(self._key)
                except (redis.RedisError, OSError):
                    continue
                if seen:
                    self.destroyed.set()
                    self._cancelled.set()
                    return
        finally:
            self._redis.close()

    def close(self) -> None:
        self._stop.set()


def build_executor(app: str, build_id: str, store: ImageStore, stack: str) -> Executor:
    """Where this build's steps run: PAAS_BUILD_EXECUTOR (`host`, `runtime`, default auto).

    Auto builds in a runtime build container when this process is root and the runtime daemon
    answers, else on the host (development without root).
    """
    client = DaemonClient(timeout=60)

    def daemon_answers() -> bool:
        try:
            client.ping()
        except (DaemonError, OSError):
            return False
        return True

    mode = executor_mode(executor_setting(), daemon_answers, os.geteuid() == 0)
    if mode == "host":
        return HostExecutor()
    image = store.resolve(stack)
    return RuntimeExecutor(client, image.digest, image.layers, image.config, app=app,
                           build_id=build_id, limits=container_limits(), ca_certs=build_ca_certs())


def executor_setting() -> str:
    """PAAS_BUILD_EXECUTOR: `host`, `runtime`, or empty / `auto`."""
    value = env_str("PAAS_BUILD_EXECUTOR", "")
    if value.strip().lower() not in ("", "auto", "host", "runtime"):
        raise ConfigError(f"PAAS_BUILD_EXECUTOR must be host, runtime or auto, not {value!r}")
    return value


def container_limits() -> ContainerLimits:
    """PAAS_BUILD_MEMORY_MB (2048), PAAS_BUILD_CPUS (2; 0 for no limit), PAAS_BUILD_PIDS (1024)."""
    memory = env_int("PAAS_BUILD_MEMORY_MB", ContainerLimits.memory_mb)
    cpus = env_int("PAAS_BUILD_CPUS", 2)
    pids = env_int("PAAS_BUILD_PIDS", ContainerLimits.pids_limit)
    if not 64 <= memory <= 1024 * 1024:
        raise ConfigError(f"PAAS_BUILD_MEMORY_MB must be between 64 and 1048576, not {memory}")
    if not 0 <= cpus <= 1024:
        raise ConfigError(f"PAAS_BUILD_CPUS must be between 0 (no limit) and 1024, not {cpus}")
    if not 16 <= pids <= 1 << 22:
        raise ConfigError(f"PAAS_BUILD_PIDS must be between 16 and {1 << 22}, not {pids}")
    return ContainerLimits(memory_mb=memory, cpu_quota=float(cpus) or None, pids_limit=pids)


def build_ca_certs() -> Path | None:
    """PAAS_BUILD_CA_CERTS: the host's CA certificates that build containers trust.

    Default `/etc/ssl/certs` when it has a `ca-certificates.crt` (so a host behind a
    TLS-inspecting proxy can still reach the package registries); `none` keeps the stack's own.
    """
    value = env_str("PAAS_BUILD_CA_CERTS", DEFAULT_CA_CERTS)
    if value.lower() == "none" or not value:
        return None
    path = Path(value)
    if not (path / "ca-certificates.crt").is_file():
        if value == DEFAULT_CA_CERTS:
            return None
        raise ConfigError(f"PAAS_BUILD_CA_CERTS: {value} has no ca-certificates.crt")
    return path


def image_store() -> ImageStore:
    return ImageStore(runtime_root() / "images")


def stack_reference() -> str:
    """PAAS_BUILD_STACK: the stack image apps are built on (default `stack:debian-13`)."""
    return env_str("PAAS_BUILD_STACK", DEFAULT_STACK)


def build_settings() -> tuple[float, float]:
    """PAAS_BUILD_TIMEOUT_S (default 900) and PAAS_BUILD_PROGRESS_S (default 20), in seconds."""
    return float(env_int("PAAS_BUILD_TIMEOUT_S", 900)), float(env_int("PAAS_BUILD_PROGRESS_S", 20))


def run_build(*, app: App, user: object, commit: str, repo: Path,
              say: Callable[[str], None], cancelled: threading.Event | None = None) -> Outcome:
    """Build `commit` of `app`; record the Build (and the release if good) either way.

    `say` sends one line to the client; it raises ClientGone once the client has hung up, which
    cancels the build (the builder kills the running step) and records it as failed; so does
    `cancelled` being set, even while the build is silent.
    """
    cancelled = cancelled or threading.Event()
    lines: list[str] = []
    record = build_create(actor=user, app=app, commit=commit)  # type: ignore[arg-type]
    live = BuildLogStream(record.pk, str(settings.REDIS_URL))
    watch = DestroyWatch(record.pk, str(settings.REDIS_URL), cancelled)

    def destroyed() -> bool:
        if watch.destroyed.is_set():
            return True
        try:
            return not Build.objects.filter(pk=record.pk).exists()
        except Exception:  # the database is away: not known to be destroyed
            return False

    def out(line: str) -> None:
        lines.append(line)
        live.add(line)
        say(line)

    started = time.monotonic()
    # Under the data dir, not /tmp: a build's copies (virtualenvs, node_modules) can be big.
    (data_dir() / "builds").mkdir(parents=True, exist_ok=True)
    scratch = Path(tempfile.mkdtemp(prefix=f"{app.name}-", dir=data_dir() / "builds"))
    stack = stack_reference()
    timeout, progress = build_settings()
    try:
        out(f"-----> Building {commit[:7]} of {app.name} (build {record.pk}) on {stack}")
        store = image_store()
        if not store.exists(stack):
            raise BuildError(f"The stack image {stack!r} is not on this host; build it with "
                             f"`python -m runtime.stacks build {stack.removeprefix('stack:')}`.")
        checkout(repo, commit, scratch / "src")
        executor = build_executor(app.name, str(record.pk), store, stack)
        if isinstance(executor, RuntimeExecutor):
            lim = executor.limits
            cpus = f"{lim.cpu_quota:g} CPUs" if lim.cpu_quota else "all CPUs"
            out(f"-----> Building in an isolated build container ({lim.memory_mb} MiB, {cpus}, "
                f"{lim.pids_limit} processes)")
        result = build(
            BuildRequest(
                app=app.name, source_dir=scratch / "src", work_dir=scratch / "work",
                cache_dir=default_cache_dir(app.name, data_dir()), config=app.config(),
                build_id=str(record.pk), commit=commit, stack=stack.removeprefix("stack:"),
                timeout=timeout, progress_interval=progress,
            ),
            CancellableExecutor(executor, cancelled),
            out,
        )
        out("-----> Assembling the image")
        digest = assemble_image(store, stack=stack, slug=result.slug, fragment=result.image_config,
                                reference=f"app/{app.name}:build-{record.pk}")
        release = build_finish(
            actor=user, build=record, succeeded=True, image_digest=digest,  # type: ignore[arg-type]
            process_types=result.process_types.as_label(), slug_size=result.slug.size,
            log="\n".join(lines),
        )
        assert release is not None
        out(f"       Image {digest[:19]}, slug {result.slug.size / 1e6:.1f} MB, "
            f"built in {time.monotonic() - started:.1f} s")
        out(f"-----> Released v{release.version}")
        out(f"       {app.url} deployed")
        return Outcome(True, "")
    except ClientGone:
        if destroyed():
            return _app_destroyed(out, app.name, record.pk)
        lines.append(" !     The git client disconnected; the build was cancelled.")
        _fail(user, record, lines)
        raise
    except (BuildError, ImageError, ActionError) as e:
        if destroyed():
            return _app_destroyed(out, app.name, record.pk)
        if cancelled.is_set():  # the step failed because it was killed: the client went away
            lines.append(" !     The git client disconnected; the build was cancelled.")
            _fail(user, record, lines)
            raise ClientGone from None
        _say_failed(out, str(e))
        _fail(user, record, lines)
        return Outcome(False, "build failed")
    except Exception:
        if destroyed():  # e.g. recording the finished build of an app destroyed meanwhile
            return _app_destroyed(out, app.name, record.pk)
        log.exception("build %s of %s failed unexpectedly", record.pk, app.name)
        _say_failed(out, f"The build failed on the server (build {record.pk}); see its log.")
        _fail(user, record, lines)
        return Outcome(False, "build failed")
    finally:
        watch.close()
        live.close()
        shutil.rmtree(scratch, ignore_errors=True)


def _app_destroyed(out: Callable[[str], None], app: str, build_id: int) -> Outcome:
    """End the build of an app destroyed meanwhile: its Build row went with it."""
    log.info("build %s of %s cancelled: the app was destroyed", build_id, app)
    with contextlib.suppress(ClientGone):
        out(f" !     {APP_DESTROYED}")
    return Outcome(False, "app destroyed")


def _say_failed(out: Callable[[str], None], message: str) -> None:
    try:
        for line in message.splitlines() or [""]:
            out(f" !     {line}")
        out(" !     Push rejected, failed to build the app.")
    except ClientGone:
        pass  # nobody is listening any more; the build is recorded as failed all the same


def _fail(user: object, record: object, lines: list[str]) -> None:
    try:
        build_finish(actor=user, build=record, succeeded=False, log="\n".join(lines))  # type: ignore[arg-type]
    except Exception:
        log.exception("cannot record the failed build")
