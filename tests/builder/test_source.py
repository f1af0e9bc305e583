from __future__ import annotations

import os
from pathlib import Path

import pytest

from builder.errors import SourceError
from builder.source import check_source


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
