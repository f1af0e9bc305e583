"""Remove what a destroyed app leaves outside the database: its directories and its Redis keys.

An app's name can be taken again once it is destroyed, and the new app must start empty: no
old repository (that would hand the old app's code to whoever takes the name), no old build
cache, no old metrics, one-offs or logs. `core.app_data_remove` calls `remove_app_data` once the
destroy has committed.

On the controller's disk, under `$PAAS_DATA_DIR`:

    repos/<app>.git, repos/<app>.push-lock   the git receiver's bare repository and push lock
    cache/<app>, cache/<app>.layers          the build cache and the slug's layer cache
    builds/<app>-XXXXXXXX                    a build's scratch directory (a build removes its
                                             own; one is left only by a web process that died)

Removal never follows a symbolic link: a link in one of those places is removed as a link,
links inside a directory are unlinked, not followed (`shutil.rmtree` works through directory
descriptors on Linux), and a place whose parent directory resolves outside the data directory
is left alone and logged.

In Redis (keys that do not name the app, such as the agents' streams, are not touched):

    paas:logs:<app>                          the app's log stream
    paas:metrics:router:<app>[:<minute>]     the router's request counters
    paas:metrics:runtime:<app>:<minute>      the agents' memory and CPU figures
    paas:scheduler:readiness:<app>           the scheduler's readiness records (older versions)
    paas:oneoffs:<app>, paas:oneoff:counter:<app>, paas:oneoff:<app>.<type>.<n>.<hex>,
    paas:run:<app>.<type>.<n>.<hex>, paas:release-phase:<app>:<release id>
                                             one-offs and release phases, and the app's
                                             members of the sorted set paas:scheduler:oneoffs
    paas:build-logs:<build id>               the live logs of the app's builds (ids given)
    paas:build-cancel:<build id>             asks a running build to stop (see below)

A push or build still running holds the app's push lock and the builder's cache lock; removing
the cache under it would leave a half-written one behind. So `remove_app_data` refuses
(`AppDataBusy`) while either is held, and the task sets `paas:build-cancel:<build id>` for the
app's builds, which the build's watcher (`gitserver.deploy`) sees within a second: it kills the
running step and ends the push with "The app was destroyed". The task comes back a few seconds
later and removes everything, the build's last writes too.

The scheduler's key names are spelled here because `core` never imports the scheduler;
`tests/controlplane/test_app_data.py` checks them against the scheduler's own.
"""

from __future__ import annotations

import fcntl
import logging
import os
import re
import shutil
import stat
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path

import redis

from builder.buildpack import default_cache_dir
from builder.slug import layer_cache_dir
from core.validators import APP_NAME_RE
from router.metrics import logs_key, metrics_key

log = logging.getLogger(__name__)

# A build's scratch directory: tempfile.mkdtemp(prefix="<app>-") adds 8 characters of
# [a-z0-9_], never a dash, so `web-1a2b3c4d` is web's and never web-api's.
_SCRATCH_SUFFIX_RE = re.compile(r"^[a-z0-9_]{8}$")
_ONEOFF_SUFFIX_RE = re.compile(r"^\.(run|release)\.\d+\.[0-9a-f]{6}$")
_NUMBER_RE = re.compile(r"^\d+$")
SCAN_COUNT = 500
PLACED_ONEOFFS_KEY = "paas:scheduler:oneoffs"  # every app's one-offs, for placement
BUILD_CANCEL_TTL_S = 3600


def build_cancel_key(build_id: int) -> str:
    """The key whose presence tells the running build `build_id` to stop (its app is gone)."""
    return f"paas:build-cancel:{int(build_id)}"


def request_build_cancel(client: redis.Redis[bytes], build_ids: Iterable[int]) -> None:
    """Ask the running builds among `build_ids` to stop (the others never look)."""
    ids = list(build_ids)
    if not ids:
        return
    pipe = client.pipeline(transaction=False)
    for b in ids:
        pipe.set(build_cancel_key(b), "app destroyed", ex=BUILD_CANCEL_TTL_S)
    pipe.execute()


class AppDataBusy(Exception):
    """A push or build of the app still holds its lock; removing now would race with it."""


@dataclass
class Removed:
    """What `remove_app_data` removed (for the task's log line and for tests)."""

    paths: list[Path] = field(default_factory=list)
    refused: list[Path] = field(default_factory=list)
    keys: int = 0


def check_name(app: str) -> str:
    """Refuse anything that is not a valid app name, before it goes into a path or a pattern."""
    if not isinstance(app, str) or not APP_NAME_RE.match(app) or "--" in app:
        raise ValueError(f"not an app name: {app!r}")
    return app


def app_paths(data_dir: Path, app: str) -> list[Path]:
    """Every place on the controller's disk that holds data of `app` (existing or not)."""
    check_name(app)
    cache = default_cache_dir(app, data_dir)
    paths = [
        data_dir / "repos" / f"{app}.git",
        data_dir / "repos" / f"{app}.push-lock",
        cache,
        layer_cache_dir(cache),
    ]
    builds = data_dir / "builds"
    try:
        names = sorted(os.listdir(builds))
    except OSError:
        names = []
    prefix = f"{app}-"
    paths += [builds / n for n in names
              if n.startswith(prefix) and _SCRATCH_SUFFIX_RE.match(n[len(prefix):])]
    return paths


def _lock_held(path: Path) -> bool:
    """Whether another process holds an flock on the file at `path` (never following a link)."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC | os.O_NONBLOCK)
    except OSError:  # missing, a symlink (ELOOP), unreadable: nobody can be building through it
        return False
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        return True
    finally:
        os.close(fd)  # closing drops the lock if this call took it
    return False


def busy(data_dir: Path, app: str) -> bool:
    """Whether a push (its lock spans the build) or a build of `app` is running right now."""
    check_name(app)
    return (_lock_held(data_dir / "repos" / f"{app}.push-lock")
            or _lock_held(default_cache_dir(app, data_dir) / ".lock"))


def _within(path: Path, root: Path) -> bool:
    return path == root or path.is_relative_to(root)


def remove_path(path: Path, data_dir: Path) -> bool | None:
    """Remove `path` (a file, a link or a directory tree) without following any link out.

    Returns True when something was removed, False when nothing was there, None when it was
    refused because its parent directory resolves outside `data_dir`.
    """
    root = data_dir.resolve()
    try:
        parent = path.parent.resolve(strict=True)
    except (FileNotFoundError, NotADirectoryError):
        return False
    if not _within(parent, root):
        log.warning("not removing %s: %s is outside the data directory %s", path, parent, root)
        return None
    target = parent / path.name
    try:
        mode = os.lstat(target).st_mode
    except FileNotFoundError:
        return False
    if stat.S_ISDIR(mode):
        try:
            shutil.rmtree(target)
        except FileNotFoundError:
            return False
        except OSError:
            # rmtree refuses a symbolic link (and a file that took the directory's place since
            # the lstat): remove that itself.
            if stat.S_ISDIR(os.lstat(target).st_mode):
                raise
            os.unlink(target)
    else:
        try:
            os.unlink(target)  # a symbolic link goes as a link; what it points to stays
        except FileNotFoundError:
            return False
    return True


def redis_keys(client: redis.Redis[bytes], app: str, build_ids: Iterable[int] = ()) -> list[bytes]:
    """Every key in Redis that holds data of `app` (see the module's docstring)."""
    check_name(app)
    exact = [logs_key(app), metrics_key(app), f"paas:scheduler:readiness:{app}",
             f"paas:oneoffs:{app}", f"paas:oneoff:counter:{app}",
             *(k for b in build_ids for k in (f"paas:build-logs:{int(b)}", build_cancel_key(b)))]
    found = [k.encode() for k in exact]
    # An app name has no glob characters (checked above); each key a pattern finds is checked
    # again against its exact shape.
    families: list[tuple[str, re.Pattern[str]]] = [
        (f"{metrics_key(app)}:", _NUMBER_RE),
        (f"paas:metrics:runtime:{app}:", _NUMBER_RE),
        (f"paas:release-phase:{app}:", _NUMBER_RE),
        (f"paas:oneoff:{app}", _ONEOFF_SUFFIX_RE),
        (f"paas:run:{app}", _ONEOFF_SUFFIX_RE),
    ]
    for prefix, rest in families:
        for key in client.scan_iter(match=f"{prefix}*", count=SCAN_COUNT):
            name = key.decode(errors="replace")
            if rest.match(name[len(prefix):]):
                found.append(key)
    return found


def forget_keys(client: redis.Redis[bytes], app: str, build_ids: Iterable[int] = ()) -> int:
    """Delete the Redis keys of `app`, and its members of the shared one-off set; returns how
    many keys existed plus how many members went."""
    keys = redis_keys(client, app, build_ids)
    deleted = 0
    for start in range(0, len(keys), SCAN_COUNT):
        deleted += int(client.delete(*keys[start:start + SCAN_COUNT]))
    members = [m for m, _score in client.zscan_iter(PLACED_ONEOFFS_KEY, match=f"{app}.*",
                                                     count=SCAN_COUNT)
               if _ONEOFF_SUFFIX_RE.match(m.decode(errors="replace")[len(app):])]
    if members:
        deleted += int(client.zrem(PLACED_ONEOFFS_KEY, *members))
    return deleted


def remove_app_data(data_dir: Path, client: redis.Redis[bytes], app: str,
                    build_ids: Iterable[int] = (), *, wait_for_builds: bool = True) -> Removed:
    """Remove everything `app` keeps on this disk and in Redis. Safe to run again.

    Raises AppDataBusy while a push or build of the app holds its lock (unless
    `wait_for_builds` is False): the caller tries again later, so the build's last writes to
    the cache are removed too instead of leaving half a cache behind.
    """
    check_name(app)
    if wait_for_builds and busy(data_dir, app):
        raise AppDataBusy(f"a push or build of {app} is still running")
    done = Removed()
    for path in app_paths(data_dir, app):
        outcome = remove_path(path, data_dir)
        if outcome:
            done.paths.append(path)
        elif outcome is None:
            done.refused.append(path)
    done.keys = forget_keys(client, app, build_ids)
    return done
