"""A real git repository with one commit, made with the real `git` client, for build tests."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

GIT_ENV = {"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "HOME": "/nonexistent",
           "GIT_CONFIG_NOSYSTEM": "1", "GIT_AUTHOR_NAME": "t", "GIT_AUTHOR_EMAIL": "t@example.com",
           "GIT_COMMITTER_NAME": "t", "GIT_COMMITTER_EMAIL": "t@example.com"}


def one_commit_repo(tmp_path: Path, files: dict[str, str]) -> tuple[Path, str]:
    """A repository with one commit of `files` under `tmp_path/src`; its git dir and the commit."""
    work = tmp_path / "src"
    work.mkdir()
    for name, text in files.items():
        (work / name).write_text(text)
    for args in (["init", "-q", "-b", "main"], ["add", "-A"], ["commit", "-q", "-m", "c"]):
        subprocess.run(["git", *args], cwd=work, env=GIT_ENV, check=True)
    head = subprocess.run(["git", "rev-parse", "HEAD"], cwd=work, env=GIT_ENV, check=True,
                          capture_output=True, text=True).stdout.strip()
    return work / ".git", head
