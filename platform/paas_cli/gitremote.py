"""The `paas` git remote of the repository the user is in (read with the real `git`)."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

from paas_cli.parsing import app_from_git_url

REMOTE = "paas"


def _git(args: list[str], cwd: Path | None) -> subprocess.CompletedProcess[str] | None:
    """Run git; None when git is not installed."""
    if shutil.which("git") is None:
        return None
    return subprocess.run(
        ["git", *args], cwd=cwd, capture_output=True, text=True, check=False,
        stdin=subprocess.DEVNULL,
    )


def in_work_tree(cwd: Path | None = None) -> bool:
    result = _git(["rev-parse", "--is-inside-work-tree"], cwd)
    return result is not None and result.returncode == 0 and result.stdout.strip() == "true"


def remote_url(cwd: Path | None = None, name: str = REMOTE) -> str | None:
    """The URL of the remote `name`, or None when there is no repository or no such remote."""
    result = _git(["remote", "get-url", name], cwd)
    if result is None or result.returncode != 0:
        return None
    return result.stdout.strip() or None


def app_from_remote(cwd: Path | None = None) -> str | None:
    """The app named by the `paas` remote's URL (`.../git/<app>.git`), or None."""
    url = remote_url(cwd)
    return app_from_git_url(url) if url else None


def add_remote(url: str, cwd: Path | None = None, name: str = REMOTE) -> str:
    """Add the remote and return what was done, in words for the user.

    An existing remote of that name is left alone: it may point at another app on purpose.
    """
    existing = remote_url(cwd, name)
    if existing == url:
        return f"Git remote {name} already points to {url}."
    if existing is not None:
        return (
            f"Git remote {name} already points to {existing}; left unchanged "
            f"(git remote set-url {name} {url} to switch)."
        )
    result = _git(["remote", "add", name, url], cwd)
    if result is None or result.returncode != 0:
        detail = result.stderr.strip() if result is not None else "git is not installed"
        return f"Could not add git remote {name}: {detail}"
    return f"Git remote {name} added: {url}"


def remove_remote_if_app(app: str, cwd: Path | None = None, name: str = REMOTE) -> bool:
    """Remove the remote when it points at `app` (after the app is destroyed)."""
    url = remote_url(cwd, name)
    if url is None or app_from_git_url(url) != app:
        return False
    result = _git(["remote", "remove", name], cwd)
    return result is not None and result.returncode == 0
