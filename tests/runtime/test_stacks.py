"""Stacks: the host's mirror, the build pipeline (bootstrap faked), caching, and one real build."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from runtime.images import ImageStore
from runtime.stacks import (
    STACKS,
    StackDef,
    StackError,
    build_stack,
    cache_archive,
    host_mirror,
    main,
    stack_def,
)

ROOT = Path(__file__).resolve().parents[2]


def write(path: Path, text: str) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
    return path


def test_it_takes_the_mirror_from_deb822_sources(tmp_path: Path) -> None:
    write(
        tmp_path / "sources.list.d" / "debian.sources",
        "Types: deb\n# a comment\nURIs: http://mirror.example/debian/\nSuites: bookworm bookworm-updates\n"
        "Components: main\n\nTypes: deb\nURIs: http://security.example/debian-security\n"
        "Suites: bookworm-security\nComponents: main\n",
    )
    assert host_mirror(tmp_path) == "http://mirror.example/debian"


def test_it_takes_the_mirror_from_a_one_line_sources_list(tmp_path: Path) -> None:
    write(
        tmp_path / "sources.list",
        "# deb http://commented.example/debian bookworm main\n"
        "deb-src http://src.example/debian bookworm main\n"
        "deb [arch=amd64 signed-by=/k.gpg] http://one.example/debian trixie main\n",
    )
    assert host_mirror(tmp_path) == "http://one.example/debian"


def test_it_ignores_disabled_sources_and_third_party_archives(tmp_path: Path) -> None:
    d = tmp_path / "sources.list.d"
    write(d / "vendor.sources", "Types: deb\nURIs: https://vendor.example/apt\nSuites: nodistro\n")
    write(d / "old.list.disabled", "deb http://disabled.example/debian bookworm main\n")
    write(d / "off.sources", "Types: deb\nURIs: http://off.example/debian\nSuites: bookworm\nEnabled: no\n")
    write(d / "debian.sources", "Types: deb\nURIs: http://right.example/debian\nSuites: bookworm\n")
    assert host_mirror(tmp_path) == "http://right.example/debian"


def test_it_falls_back_to_the_debian_redirector(tmp_path: Path) -> None:
    assert host_mirror(tmp_path) == "http://deb.debian.org/debian"


def test_it_defines_debian_12_and_13_with_the_runtimes_apps_need() -> None:
    assert (STACKS["debian-12"].suite, STACKS["debian-13"].suite) == ("bookworm", "trixie")
    for stack in STACKS.values():
        for package in ("python3", "python3-venv", "python3-pip", "nodejs", "npm",
                        "ca-certificates", "tzdata", "tini", "build-essential"):
            assert package in stack.packages


def test_it_refuses_an_unknown_stack() -> None:
    with pytest.raises(StackError, match="unknown stack 'heroku-24'; known stacks: debian-12, debian-13"):
        stack_def("heroku-24")


class FakeBootstrap:
    """Stands in for debootstrap (minutes, network): a busybox tree with a device node."""

    def __init__(self) -> None:
        self.calls: list[tuple[str, str]] = []

    def __call__(self, stack: StackDef, target: Path, mirror: str) -> None:
        self.calls.append((stack.suite, mirror))
        (target / "bin").mkdir()
        shutil.copy("/bin/busybox", target / "bin" / "busybox")
        os.symlink("busybox", target / "bin" / "sh")
        write(target / "etc" / "os-release", f"VERSION_CODENAME={stack.suite}\n")
        write(target / "var" / "cache" / "apt" / "archives" / "x.deb", "cached package")
        write(target / "etc" / "machine-id", "0123456789abcdef\n")
        (target / "dev").mkdir()
        if os.geteuid() == 0:
            os.mknod(target / "dev" / "null", 0o666 | 0o020000, os.makedev(1, 3))


def test_it_builds_a_stack_into_the_image_store(tmp_path: Path) -> None:
    store = ImageStore(tmp_path / "images")
    fake = FakeBootstrap()
    ref, how = build_stack(store, "debian-13", tmp_path / "cache", mirror="http://m.example/debian",
                           bootstrap=fake)
    assert (ref, how) == ("stack:debian-13", "built")
    assert fake.calls == [("trixie", "http://m.example/debian")]
    image = store.resolve("stack:debian-13")
    [layer] = image.layers
    assert (layer / "etc" / "os-release").read_text() == "VERSION_CODENAME=trixie\n"
    assert list((layer / "dev").iterdir()) == []
    assert list((layer / "var" / "cache" / "apt" / "archives").iterdir()) == []
    assert (layer / "etc" / "machine-id").read_text() == ""
    assert (layer / "app").is_dir()
    assert image.config["config"]["WorkingDir"] == "/app"
    assert image.config["config"]["Labels"]["paas.stack"] == "debian-13"
    assert image.config["rootfs"]["diff_ids"][0].startswith("sha256:")
    assert image.config["rootfs"]["diff_ids"][0] != image.layer_digests[0]  # gzip: differs


def test_it_skips_a_stack_already_in_the_store(tmp_path: Path) -> None:
    store = ImageStore(tmp_path / "images")
    fake = FakeBootstrap()
    build_stack(store, "debian-12", tmp_path / "cache", mirror="http://m/debian", bootstrap=fake)
    assert build_stack(store, "debian-12", tmp_path / "cache", bootstrap=fake)[1] == "present"
    assert len(fake.calls) == 1


def test_it_imports_a_stack_from_the_per_host_cache_into_a_new_store(tmp_path: Path) -> None:
    fake = FakeBootstrap()
    first = ImageStore(tmp_path / "one")
    build_stack(first, "debian-12", tmp_path / "cache", mirror="http://m/debian", bootstrap=fake)
    assert cache_archive(tmp_path / "cache", "debian-12").is_file()
    second = ImageStore(tmp_path / "two")
    assert build_stack(second, "debian-12", tmp_path / "cache", bootstrap=fake)[1] == "cache"
    assert len(fake.calls) == 1
    assert second.resolve("stack:debian-12").digest == first.resolve("stack:debian-12").digest


def test_it_rebuilds_when_forced(tmp_path: Path) -> None:
    store = ImageStore(tmp_path / "images")
    fake = FakeBootstrap()
    build_stack(store, "debian-12", tmp_path / "cache", mirror="http://m/debian", bootstrap=fake)
    build_stack(store, "debian-12", tmp_path / "cache", mirror="http://m/debian", bootstrap=fake,
                force=True)
    assert len(fake.calls) == 2


def test_it_leaves_nothing_behind_when_the_bootstrap_fails(tmp_path: Path) -> None:
    store = ImageStore(tmp_path / "images")

    def failing(stack: StackDef, target: Path, mirror: str) -> None:
        (target / "partial").write_text("x")
        raise StackError("debootstrap of trixie failed: E: no network")

    with pytest.raises(StackError, match="no network"):
        build_stack(store, "debian-13", tmp_path / "cache", mirror="http://m/debian", bootstrap=failing)
    assert [p.name for p in (tmp_path / "cache").iterdir()] == ["debian-13.lock"]
    assert store.images() == []


def test_its_command_refuses_an_unknown_stack_without_a_traceback(tmp_path: Path) -> None:
    proc = subprocess.run(
        [sys.executable, "-m", "runtime.stacks", "--root", str(tmp_path), "build", "debian-99"],
        capture_output=True, text=True, cwd=ROOT,
    )
    assert proc.returncode == 1
    assert proc.stderr.strip() == "error: unknown stack 'debian-99'; known stacks: debian-12, debian-13"


def test_its_command_lists_stacks(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["--root", str(tmp_path), "list"]) == 0
    out = capsys.readouterr().out
    assert "debian-12" in out and "bookworm" in out and "not built" in out


@pytest.mark.slow
@pytest.mark.root
def test_it_builds_a_real_debian_13_stack_once_per_host() -> None:
    """debootstrap from the host's mirror, once per host: the archive and a store of the stack
    are kept in the per-host cache, so later runs find it present instead of unpacking 1 GB."""
    cache = Path(os.environ.get("PAAS_STACK_CACHE_DIR", "/var/cache/paas/stacks"))
    _check_real_stack(ImageStore(cache / "test-store"), cache)


def _check_real_stack(store: ImageStore, cache: Path) -> None:
    ref, how = build_stack(store, "debian-13", cache)
    assert how in ("built", "cache", "present")
    image = store.resolve(ref)
    [layer] = image.layers
    assert "trixie" in (layer / "etc" / "os-release").read_text()
    for tool in ("usr/bin/python3", "usr/bin/node", "usr/bin/npm", "usr/bin/tini", "usr/bin/pip3"):
        assert (layer / tool).exists() or (layer / tool).is_symlink(), tool
    assert (layer / "usr" / "lib" / "python3" / "dist-packages").exists() or (
        layer / "usr" / "lib" / "python3.13"
    ).is_dir()
    assert (layer / "etc" / "ssl" / "certs" / "ca-certificates.crt").is_file()
    assert (layer / "usr" / "share" / "zoneinfo" / "UTC").exists()
    # The stack really runs: its python, chrooted, reports the suite's version.
    out = subprocess.run(["chroot", str(layer), "python3", "-B", "-c", "import sys, venv; print(sys.version_info[:2])"],
                         capture_output=True, text=True, check=True).stdout
    assert out.strip() == "(3, 13)"
