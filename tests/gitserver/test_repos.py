"""The bare repositories and their push locks."""

from __future__ import annotations

import os
import subprocess
import sys
import threading
from pathlib import Path

import pytest

from gitserver import repos


@pytest.fixture(autouse=True)
def _data_dir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PAAS_DATA_DIR", str(tmp_path))


def test_it_creates_one_bare_repository_on_main_under_concurrent_first_use(tmp_path: Path) -> None:
    errors: list[BaseException] = []

    def use() -> None:
        try:
            repos.open_repo("web1").close()
        except BaseException as e:  # collected for the assertion below
            errors.append(e)

    threads = [threading.Thread(target=use) for _ in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()

    assert errors == []
    repo = repos.open_repo("web1")
    try:
        assert repo.bare
        assert repo.refs.get_symrefs()[b"HEAD"] == b"refs/heads/main"
    finally:
        repo.close()
    assert sorted(p.name for p in (tmp_path / "repos").iterdir()) == ["web1.git"]


def test_it_lets_one_push_per_app_hold_the_lock() -> None:
    first = repos.PushLock("web1")
    second = repos.PushLock("web1")
    other_app = repos.PushLock("web2")
    try:
        assert first.held and not second.held and other_app.held
        first.release()
        third = repos.PushLock("web1")
        assert third.held
        third.release()
    finally:
        for lock in (first, second, other_app):
            lock.release()


def test_it_reads_the_size_limit_in_mebibytes(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PAAS_GIT_MAX_REPO_MB", "3")
    assert repos.max_repo_bytes() == 3 * 1024 * 1024
    monkeypatch.setenv("PAAS_GIT_MAX_REPO_MB", "lots")
    with pytest.raises(ValueError, match="PAAS_GIT_MAX_REPO_MB must be a whole number"):
        repos.max_repo_bytes()


def test_it_refuses_to_start_with_a_bad_setting() -> None:
    env = {**os.environ, "PAAS_BUILD_TIMEOUT_S": "soon"}
    result = subprocess.run([sys.executable, "-c", "import django; django.setup()"], env=env,
                            capture_output=True, text=True, timeout=60)
    assert result.returncode != 0
    assert "PAAS_BUILD_TIMEOUT_S must be a whole number, not 'soon'" in result.stderr
