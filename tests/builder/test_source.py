from __future__ import annotations

import os
import subprocess
from pathlib import Path

import pytest

from builder.errors import SourceError
from builder.source import apply_slugignore, check_source, checkout, copy_source


@pytest.fixture
def src(tmp_path: Path) -> Path:
    root = tmp_path / "src"
    (root / "lib").mkdir(parents=True)
    (root / "lib" / "a.txt").write_text("a")
    return root


def test_it_accepts_links_that_stay_inside_the_app(src: Path) -> None:
    (src / "link").symlink_to("lib/a.txt")
    (src / "lib" / "up").symlink_to("../lib")
    (src / "dangling").symlink_to("lib/missing")
    check_source(src)


def test_it_refuses_a_relative_symlink_leading_outside(src: Path) -> None:
    (src / "lib" / "passwd").symlink_to("../../../../etc/passwd")
    with pytest.raises(SourceError, match=r"^lib/passwd is a symlink to '../../../../etc/passwd', which points outside the app$"):
        check_source(src)


def test_it_refuses_an_absolute_symlink(src: Path) -> None:
    (src / "conf").symlink_to("/etc/passwd")
    with pytest.raises(SourceError, match=r"^conf is a symlink to the absolute path '/etc/passwd'"):
        check_source(src)


def test_it_refuses_a_chain_of_links_that_ends_outside(src: Path) -> None:
    (src / "hop").symlink_to("..")
    (src / "lib" / "via").symlink_to("../hop/secret")
    with pytest.raises(SourceError, match=r"^hop is a symlink to '..', which points outside"):
        check_source(src)


def test_it_refuses_a_file_over_the_size_limit(src: Path) -> None:
    (src / "lib" / "dump.sql").write_bytes(b"x" * 3 * 1024 * 1024)
    with pytest.raises(SourceError, match=r"^lib/dump.sql is 3.0 MiB, over the limit of 2.0 MiB per file"):
        check_source(src, max_file_bytes=2 * 1024 * 1024)


def test_it_refuses_special_files(src: Path) -> None:
    os.mkfifo(src / "pipe")
    with pytest.raises(SourceError, match=r"^pipe is not a regular file, directory or symlink"):
        check_source(src)


def _git(*args: str, cwd: Path) -> str:
    env = {"PATH": "/usr/bin:/bin", "HOME": str(cwd), "GIT_CONFIG_NOSYSTEM": "1",
           "GIT_AUTHOR_NAME": "t", "GIT_AUTHOR_EMAIL": "t@example.com",
           "GIT_COMMITTER_NAME": "t", "GIT_COMMITTER_EMAIL": "t@example.com"}
    return subprocess.run(["git", *args], cwd=cwd, env=env, check=True, capture_output=True, text=True).stdout.strip()


@pytest.fixture
def repo(tmp_path: Path) -> tuple[Path, str]:
    """A bare repository (as pushes land) holding one commit."""
    work = tmp_path / "work"
    (work / "bin").mkdir(parents=True)
    (work / "bin" / "run").write_text("#!/bin/sh\necho run\n")
    (work / "bin" / "run").chmod(0o755)
    (work / "README").write_text("hello\n")
    (work / "readme-link").symlink_to("README")
    (work / "notes.txt").write_text("not shipped\n")
    (work / "data").mkdir()
    (work / "data" / "blob.bin").write_bytes(b"x" * 4096)
    (work / ".gitattributes").write_text("notes.txt export-ignore\n")
    _git("init", "-q", "-b", "main", cwd=work)
    _git("add", ".", cwd=work)
    _git("commit", "-q", "-m", "one", cwd=work)
    bare = tmp_path / "app.git"
    _git("clone", "-q", "--bare", str(work), str(bare), cwd=tmp_path)
    return bare, _git("rev-parse", "HEAD", cwd=work)


def test_it_checks_out_a_commit_with_modes_and_symlinks(repo: tuple[Path, str], tmp_path: Path) -> None:
    bare, commit = repo
    dest = tmp_path / "out"
    checkout(bare, commit, dest)
    assert sorted(p.relative_to(dest).as_posix() for p in dest.rglob("*")) == [
        ".gitattributes", "README", "bin", "bin/run", "data", "data/blob.bin", "readme-link",
    ]
    assert os.access(dest / "bin" / "run", os.X_OK)
    assert os.readlink(dest / "readme-link") == "README"


def test_it_names_a_commit_the_repository_lacks(repo: tuple[Path, str], tmp_path: Path) -> None:
    bare, _commit = repo
    with pytest.raises(SourceError, match=r"^cannot check out 0123456789ab: "):
        checkout(bare, "0123456789abcdef0123456789abcdef01234567", tmp_path / "out")
    with pytest.raises(SourceError, match=r"is not a full commit id"):
        checkout(bare, "HEAD", tmp_path / "out2")


def test_it_refuses_an_oversized_file_before_writing_it(repo: tuple[Path, str], tmp_path: Path) -> None:
    bare, commit = repo
    dest = tmp_path / "out"
    with pytest.raises(SourceError, match=r"^data/blob.bin is 4.0 KiB, over the limit of 1.0 KiB per file"):
        checkout(bare, commit, dest, max_file_bytes=1024)
    assert (dest / "bin" / "run").exists()
    assert not (dest / "data" / "blob.bin").exists()


def test_it_removes_what_slugignore_lists(tmp_path: Path) -> None:
    app = tmp_path / "app"
    for rel in ("docs/guide.md", "src/docs/keep.txt", "src/main.py", "tests/test_x.py", "a.psd", "img/b.psd"):
        (app / rel).parent.mkdir(parents=True, exist_ok=True)
        (app / rel).write_text("x")
    (app / ".slugignore").write_text("# not for the slug\n/docs\n*.psd\ntests/\n")
    removed = apply_slugignore(app)
    assert removed == ["a.psd", "docs", "img/b.psd", "tests"]
    left = sorted(p.relative_to(app).as_posix() for p in app.rglob("*") if p.is_file())
    assert left == [".slugignore", "src/docs/keep.txt", "src/main.py"]


def test_it_leaves_git_metadata_out_of_the_copy(tmp_path: Path) -> None:
    src = tmp_path / "src"
    (src / ".git" / "objects").mkdir(parents=True)
    (src / "sub" / ".git").mkdir(parents=True)
    (src / "app.py").write_text("x")
    copy_source(src, tmp_path / "dest")
    assert sorted(p.relative_to(tmp_path / "dest").as_posix() for p in (tmp_path / "dest").rglob("*")) == [
        "app.py", "sub", "sub/.git",
    ]
