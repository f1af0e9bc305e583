"""The bare repositories under `$PAAS_DATA_DIR/repos`, their push locks and size limit."""

from __future__ import annotations

import contextlib
import fcntl
import os
import shutil
import uuid
from pathlib import Path

from dulwich.repo import Repo

from controlplane.env import data_dir, env_int

DEFAULT_BRANCH = b"refs/heads/main"
DEPLOY_BRANCHES = (b"refs/heads/main", b"refs/heads/master")


def repos_dir() -> Path:
    return data_dir() / "repos"


def repo_path(app: str) -> Path:
    return repos_dir() / f"{app}.git"


def max_repo_bytes() -> int:
    """PAAS_GIT_MAX_REPO_MB (default 1024): a push that would make the repository bigger fails."""
    return env_int("PAAS_GIT_MAX_REPO_MB", 1024) * 1024 * 1024


def open_repo(app: str) -> Repo:
    """The app's bare repository, created (HEAD on `main`) on first use."""
    path = repo_path(app)
    if not (path / "HEAD").exists():
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(f".{path.name}.{uuid.uuid4().hex}.tmp")
        tmp.mkdir()
        repo = Repo.init_bare(str(tmp))
        repo.refs.set_symbolic_ref(b"HEAD", DEFAULT_BRANCH)
        repo.close()
        try:
            tmp.rename(path)  # atomic: a concurrent first use sees a whole repository or none
        except OSError:  # another request made it first
            shutil.rmtree(tmp, ignore_errors=True)
    return Repo(str(path))


def repo_size(app: str) -> int:
    total = 0
    for root, _dirs, files in os.walk(repo_path(app)):
        for name in files:
            with contextlib.suppress(OSError):
                total += os.lstat(os.path.join(root, name)).st_size
    return total


class PushLock:
    """An exclusive, non-blocking file lock: one push per app at a time, across web processes."""

    def __init__(self, app: str) -> None:
        repos_dir().mkdir(parents=True, exist_ok=True)
        self._fd: int | None = os.open(repos_dir() / f"{app}.push-lock", os.O_RDWR | os.O_CREAT, 0o600)
        try:
            fcntl.flock(self._fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            self.held = True
        except BlockingIOError:
            self.held = False

    def release(self) -> None:
        if self._fd is not None:
            os.close(self._fd)  # closing the only descriptor drops the lock
            self._fd = None
