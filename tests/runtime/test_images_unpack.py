"""Unpacking untrusted layer tarballs: nothing escapes the layer directory; whiteouts honoured."""

from __future__ import annotations

import io
import os
import stat
import subprocess
import tarfile
from collections.abc import Callable
from pathlib import Path

import pytest

from runtime.images import MEDIA_LAYER, ImageStore, UnsafeLayer, unpack_layer

Entry = Callable[[tarfile.TarFile], None]


def _file(name: str, data: bytes = b"x", mode: int = 0o644) -> Entry:
    def add(tar: tarfile.TarFile) -> None:
        info = tarfile.TarInfo(name)
        info.size = len(data)
        info.mode = mode
        tar.addfile(info, io.BytesIO(data))

    return add


def _special(name: str, kind: bytes, linkname: str = "", mode: int = 0o755) -> Entry:
    def add(tar: tarfile.TarFile) -> None:
        info = tarfile.TarInfo(name)
        info.type = kind
        info.linkname = linkname
        info.mode = mode
        if kind in (tarfile.CHRTYPE, tarfile.BLKTYPE):
            info.devmajor, info.devminor = 1, 3
        tar.addfile(info)

    return add


def _tar(*entries: Entry) -> io.BytesIO:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.GNU_FORMAT) as tar:
        for add in entries:
            add(tar)
    buf.seek(0)
    return buf


@pytest.fixture
def sandbox(tmp_path: Path) -> tuple[Path, Path]:
    """A layer directory and, beside it, a victim directory that nothing may touch."""
    dest = tmp_path / "layer"
    dest.mkdir()
    victim = tmp_path / "victim"
    victim.mkdir()
    (victim / "secret").write_text("untouched")
    return dest, victim


def _untouched(victim: Path) -> bool:
    return sorted(p.name for p in victim.iterdir()) == ["secret"] and (
        (victim / "secret").read_text() == "untouched"
    )


def test_it_refuses_a_path_climbing_out_with_dotdot(sandbox: tuple[Path, Path]) -> None:
    dest, victim = sandbox
    with pytest.raises(UnsafeLayer, match=r"'\.\.'"):
        unpack_layer(_tar(_file("../victim/evil")), dest)
    assert _untouched(victim)


def test_it_refuses_an_absolute_path(sandbox: tuple[Path, Path]) -> None:
    dest, victim = sandbox
    with pytest.raises(UnsafeLayer, match="absolute path"):
        unpack_layer(_tar(_file(str(victim / "evil"))), dest)
    assert _untouched(victim)


def test_it_refuses_writing_through_a_symlink(sandbox: tuple[Path, Path]) -> None:
    dest, victim = sandbox
    tar = _tar(_special("escape", tarfile.SYMTYPE, str(victim)), _file("escape/evil"))
    with pytest.raises(UnsafeLayer, match="through a symlink"):
        unpack_layer(tar, dest)
    assert _untouched(victim)


def test_it_refuses_writing_through_a_relative_symlink(sandbox: tuple[Path, Path]) -> None:
    dest, victim = sandbox
    tar = _tar(_special("up", tarfile.SYMTYPE, "../victim"), _file("up/secret", b"owned"))
    with pytest.raises(UnsafeLayer, match="through a symlink"):
        unpack_layer(tar, dest)
    assert _untouched(victim)


def test_it_refuses_writing_into_a_directory_replaced_by_a_symlink(
    sandbox: tuple[Path, Path],
) -> None:
    dest, victim = sandbox
    tar = _tar(
        _special("d", tarfile.DIRTYPE),
        _file("d/first", b"1"),
        _special("d", tarfile.SYMTYPE, str(victim)),
        _file("d/second", b"2"),
    )
    with pytest.raises(UnsafeLayer, match="through a symlink"):
        unpack_layer(tar, dest)
    assert _untouched(victim)


def test_it_replaces_a_symlink_with_a_file_instead_of_following_it(
    sandbox: tuple[Path, Path],
) -> None:
    dest, victim = sandbox
    tar = _tar(_special("link", tarfile.SYMTYPE, str(victim / "secret")), _file("link", b"owned"))
    unpack_layer(tar, dest)
    assert _untouched(victim)
    assert not (dest / "link").is_symlink()
    assert (dest / "link").read_bytes() == b"owned"


def test_it_keeps_absolute_symlinks_without_following_them(sandbox: tuple[Path, Path]) -> None:
    dest, _victim = sandbox
    unpack_layer(_tar(_special("bin", tarfile.SYMTYPE, "/usr/bin")), dest)
    assert os.readlink(dest / "bin") == "/usr/bin"


def test_it_refuses_a_hard_link_to_a_file_outside_the_layer(sandbox: tuple[Path, Path]) -> None:
    dest, victim = sandbox
    with pytest.raises(UnsafeLayer):
        unpack_layer(_tar(_special("stolen", tarfile.LNKTYPE, str(victim / "secret"))), dest)
    with pytest.raises(UnsafeLayer, match=r"'\.\.'"):
        unpack_layer(_tar(_special("stolen", tarfile.LNKTYPE, "../victim/secret")), dest)
    assert not (dest / "stolen").exists()


def test_it_refuses_a_hard_link_through_a_symlink(sandbox: tuple[Path, Path]) -> None:
    dest, victim = sandbox
    tar = _tar(
        _special("out", tarfile.SYMTYPE, str(victim)),
        _special("stolen", tarfile.LNKTYPE, "out/secret"),
    )
    with pytest.raises(UnsafeLayer, match="through a symlink"):
        unpack_layer(tar, dest)
    assert not (dest / "stolen").exists()


def test_it_refuses_a_hard_link_to_a_symlink(sandbox: tuple[Path, Path]) -> None:
    dest, victim = sandbox
    tar = _tar(
        _special("out", tarfile.SYMTYPE, str(victim / "secret")),
        _special("stolen", tarfile.LNKTYPE, "out"),
    )
    with pytest.raises(UnsafeLayer, match="not a regular file"):
        unpack_layer(tar, dest)


def test_it_keeps_hard_links_inside_the_layer(sandbox: tuple[Path, Path]) -> None:
    dest, _victim = sandbox
    unpack_layer(_tar(_file("a", b"same"), _special("b", tarfile.LNKTYPE, "a")), dest)
    assert (dest / "a").stat().st_ino == (dest / "b").stat().st_ino


@pytest.mark.parametrize("kind", [tarfile.CHRTYPE, tarfile.BLKTYPE])
def test_it_refuses_device_nodes(sandbox: tuple[Path, Path], kind: bytes) -> None:
    dest, _victim = sandbox
    with pytest.raises(UnsafeLayer, match="device node"):
        unpack_layer(_tar(_special("mem", kind)), dest)
    assert not (dest / "mem").exists()


def test_it_refuses_something_that_is_not_a_tar(sandbox: tuple[Path, Path]) -> None:
    dest, _victim = sandbox
    with pytest.raises(UnsafeLayer, match="not a tar"):
        unpack_layer(io.BytesIO(b"\x00garbage" * 100), dest)


def test_it_refuses_a_truncated_tar(sandbox: tuple[Path, Path]) -> None:
    dest, _victim = sandbox
    data = _tar(_file("big", b"y" * 5000)).getvalue()[:1500]
    with pytest.raises(UnsafeLayer):
        unpack_layer(io.BytesIO(data), dest)


def test_it_keeps_modes_including_setuid_and_sticky(sandbox: tuple[Path, Path]) -> None:
    dest, _victim = sandbox
    unpack_layer(
        _tar(_special("tmp", tarfile.DIRTYPE, mode=0o1777), _file("tool", b"#!", mode=0o4755)),
        dest,
    )
    assert stat.S_IMODE((dest / "tmp").stat().st_mode) == 0o1777
    assert stat.S_IMODE((dest / "tool").stat().st_mode) == 0o4755


@pytest.mark.root
def test_it_turns_whiteouts_into_overlayfs_whiteouts(sandbox: tuple[Path, Path]) -> None:
    dest, _victim = sandbox
    unpack_layer(_tar(_special("etc", tarfile.DIRTYPE), _file("etc/.wh.motd", b"")), dest)
    st = os.lstat(dest / "etc" / "motd")
    assert stat.S_ISCHR(st.st_mode)
    assert st.st_rdev == os.makedev(0, 0)
    assert not (dest / "etc" / ".wh.motd").exists()


@pytest.mark.root
def test_it_marks_opaque_directories_for_overlayfs(sandbox: tuple[Path, Path]) -> None:
    dest, _victim = sandbox
    unpack_layer(_tar(_special("cache", tarfile.DIRTYPE), _file("cache/.wh..wh..opq", b"")), dest)
    assert os.getxattr(dest / "cache", "trusted.overlay.opaque") == b"y"
    assert list((dest / "cache").iterdir()) == []


@pytest.mark.root
def test_it_hides_a_lower_layers_file_behind_a_whiteout_when_mounted(tmp_path: Path) -> None:
    store = ImageStore(tmp_path / "images")
    lower = _tar(_file("keep", b"k"), _file("gone", b"g"), _special("dir", tarfile.DIRTYPE),
                 _file("dir/old", b"o")).getvalue()
    upper = _tar(_file(".wh.gone", b""), _special("dir", tarfile.DIRTYPE),
                 _file("dir/.wh..wh..opq", b""), _file("dir/new", b"n")).getvalue()
    blobs = [(*store.put_blob_bytes(data), MEDIA_LAYER) for data in (lower, upper)]
    store.add_image("wh", blobs, {"rootfs": {"type": "layers", "diff_ids": []}})
    image = store.resolve("wh")
    mnt = tmp_path / "mnt"
    mnt.mkdir()
    lowerdirs = ":".join(str(p) for p in reversed(image.layers))  # overlayfs: top first
    subprocess.run(["mount", "-t", "overlay", "overlay", "-o", f"lowerdir={lowerdirs}", str(mnt)],
                   check=True)
    try:
        assert sorted(p.name for p in mnt.iterdir()) == ["dir", "keep"]
        assert sorted(p.name for p in (mnt / "dir").iterdir()) == ["new"]
    finally:
        subprocess.run(["umount", str(mnt)], check=True)


def test_it_refuses_a_malicious_layer_when_resolving_an_image_and_leaves_no_trace(
    tmp_path: Path,
) -> None:
    store = ImageStore(tmp_path / "images")
    evil = _tar(_file("ok", b"1"), _file("../../escaped", b"2")).getvalue()
    digest, size = store.put_blob_bytes(evil)
    with pytest.raises(UnsafeLayer):
        store.add_image("evil", [(digest, size, MEDIA_LAYER)], {})
    assert store.images() == []
    assert list(store.layers_dir.iterdir()) == []
    assert list(store.tmp.iterdir()) == []
    assert not (tmp_path / "escaped").exists()
