"""Stacks: the Debian base images apps are built and run on.

`python -m runtime.stacks build debian-13` bootstraps a Debian root file system with debootstrap
(variant minbase plus the stack's packages) from the mirror the host's own apt configuration
names, packs it as one layer and records it in the image store as `stack:debian-13`.

A stack is built once per host: a build whose image is already in the store is skipped, and every
build is also kept as an OCI archive in a per-host cache directory, so a fresh image store (a new
data directory, a test run) imports it in seconds instead of bootstrapping again.
"""

from __future__ import annotations

import argparse
import contextlib
import fcntl
import os
import re
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from runtime.client import runtime_root
from runtime.images import MEDIA_LAYER_GZIP, ImageError, ImageStore

# Packages on top of minbase: the language runtimes the built-in buildpacks use, certificates
# and time zones apps expect, the build libraries native extensions commonly link against, and
# tini as the containers' tiny init.
STACK_PACKAGES = (
    "ca-certificates",
    "tzdata",
    "tini",
    "python3",
    "python3-venv",
    "python3-pip",
    "python3-dev",
    "nodejs",
    "npm",
    "build-essential",
    "pkg-config",
    "libssl-dev",
    "libffi-dev",
    "zlib1g-dev",
    "libpq-dev",
    "libsqlite3-dev",
    "libxml2-dev",
    "libyaml-dev",
    "curl",
    "git",
    "locales",
)


@dataclass(frozen=True)
class StackDef:
    """A stack's name, the Debian suite it is built from, and its packages."""

    name: str
    suite: str
    packages: tuple[str, ...] = STACK_PACKAGES

    @property
    def reference(self) -> str:
        return f"stack:{self.name}"


STACKS = {
    "debian-12": StackDef("debian-12", "bookworm"),
    "debian-13": StackDef("debian-13", "trixie"),
}

STACK_PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"
DEFAULT_MIRROR = "http://deb.debian.org/debian"


class StackError(Exception):
    """A stack cannot be built; the message says why."""


def stack_def(name: str) -> StackDef:
    try:
        return STACKS[name]
    except KeyError:
        raise StackError(f"unknown stack {name!r}; known stacks: {', '.join(sorted(STACKS))}") from None


# -- the host's apt configuration ------------------------------------------------------------


def _deb822_paragraphs(text: str) -> Iterator[dict[str, str]]:
    para: dict[str, str] = {}
    key = ""
    for raw in [*text.splitlines(), ""]:
        line = raw.rstrip()
        if line.startswith("#"):
            continue
        if not line.strip():
            if para:
                yield para
            para, key = {}, ""
        elif line[0] in " \t" and key:
            para[key] += " " + line.strip()
        elif ":" in line:
            key, _, value = line.partition(":")
            key = key.strip().lower()
            para[key] = value.strip()


def apt_sources(etc_apt: Path = Path("/etc/apt")) -> list[tuple[str, list[str]]]:
    """Return (URI, suites) of every enabled `deb` source of the host's apt configuration."""
    out: list[tuple[str, list[str]]] = []
    files = [etc_apt / "sources.list"] if (etc_apt / "sources.list").is_file() else []
    d = etc_apt / "sources.list.d"
    if d.is_dir():
        files += sorted(p for p in d.iterdir() if p.suffix in (".list", ".sources"))
    for path in files:
        try:
            text = path.read_text()
        except OSError:
            continue
        if path.suffix == ".sources":
            for para in _deb822_paragraphs(text):
                if "deb" not in para.get("types", "").split():
                    continue
                if para.get("enabled", "yes").lower() == "no":
                    continue
                for uri in para.get("uris", "").split():
                    out.append((uri, para.get("suites", "").split()))
        else:
            for line in text.splitlines():
                words = re.sub(r"\[[^\]]*\]", " ", line.split("#", 1)[0]).split()
                if len(words) >= 3 and words[0] == "deb":
                    out.append((words[1], [words[2]]))
    return out


def host_mirror(etc_apt: Path = Path("/etc/apt")) -> str:
    """Return the Debian mirror the host's apt uses (not its security or backports archive)."""
    codename = re.compile(r"^(bullseye|bookworm|trixie|forky|sid|stable|testing|unstable)$")
    for uri, suites in apt_sources(etc_apt):
        if any(codename.match(s) for s in suites):
            return uri.rstrip("/")
    for uri, _suites in apt_sources(etc_apt):
        if "debian" in uri and "security" not in uri:
            return uri.rstrip("/")
    return DEFAULT_MIRROR


# -- building --------------------------------------------------------------------------------

Bootstrap = Callable[[StackDef, Path, str], None]


def debootstrap(stack: StackDef, target: Path, mirror: str) -> None:
    """Bootstrap `stack` into the empty directory `target`: debootstrap, then apt in a chroot.

    debootstrap's own resolver cannot install large dependency trees (`--include=npm` leaves
    packages unconfigured), so it lays down minbase only and apt-get installs the rest.
    """
    if shutil.which("debootstrap") is None:
        raise StackError("debootstrap is not installed (Debian package: debootstrap)")
    _run_logged(
        ["debootstrap", "--variant=minbase", stack.suite, str(target), mirror],
        f"debootstrap of {stack.suite} from {mirror}",
        target / "debootstrap" / "debootstrap.log",
    )
    # Keep services from starting inside the chroot (invoke-rc.d honours policy-rc.d).
    policy = target / "usr" / "sbin" / "policy-rc.d"
    policy.write_text("#!/bin/sh\nexit 101\n")
    policy.chmod(0o755)
    resolv = target / "etc" / "resolv.conf"
    if resolv.is_symlink() or resolv.exists():
        resolv.unlink()
    shutil.copyfile("/etc/resolv.conf", resolv)
    proc_dir = target / "proc"
    proc_dir.mkdir(exist_ok=True)
    subprocess.run(["mount", "-t", "proc", "proc", str(proc_dir)], check=True)
    try:
        env = {
            "PATH": STACK_PATH,
            "DEBIAN_FRONTEND": "noninteractive",
            "LANG": "C.UTF-8",
            "HOME": "/root",
        }
        chroot = ["chroot", str(target)]
        _run_logged([*chroot, "apt-get", "update", "-q"], "apt-get update in the new stack", env=env)
        _run_logged(
            [*chroot, "apt-get", "install", "-q", "-y", "--no-install-recommends", *stack.packages],
            "installing the stack's packages",
            env=env,
        )
        _run_logged([*chroot, "apt-get", "clean"], "apt-get clean", env=env)
    finally:
        subprocess.run(["umount", "-l", str(proc_dir)], check=False)
        policy.unlink(missing_ok=True)
        resolv.unlink(missing_ok=True)
        resolv.write_text("")


def _run_logged(
    argv: list[str], what: str, log: Path | None = None, env: dict[str, str] | None = None
) -> None:
    proc = subprocess.run(
        argv, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env
    )
    if proc.returncode != 0:
        detail = log.read_text()[-3000:] if log is not None and log.is_file() else proc.stdout[-3000:]
        raise StackError(f"{what} failed:\n{detail}")


def finish_rootfs(rootfs: Path) -> None:
    """Tidy a bootstrapped tree into an image: no devices, caches, machine id or apt lists."""
    dev = rootfs / "dev"
    if dev.is_dir():
        shutil.rmtree(dev)
    dev.mkdir(mode=0o755)
    for sub in ("var/cache/apt/archives", "var/lib/apt/lists", "var/log", "tmp", "run"):
        d = rootfs / sub
        if d.is_dir():
            for child in d.iterdir():
                if child.is_dir() and not child.is_symlink():
                    shutil.rmtree(child)
                else:
                    child.unlink()
    (rootfs / "tmp").mkdir(exist_ok=True)
    os.chmod(rootfs / "tmp", 0o1777)
    machine_id = rootfs / "etc" / "machine-id"
    if machine_id.exists() or machine_id.is_symlink():
        machine_id.unlink()
        machine_id.write_text("")
    (rootfs / "app").mkdir(mode=0o755, exist_ok=True)


def pack_layer(rootfs: Path, dest: Path) -> None:
    """Write `rootfs` as a gzip-compressed layer tarball (numeric owners, devices left out)."""
    argv = [
        "tar",
        "--numeric-owner",
        "--one-file-system",
        "--sort=name",
        "--use-compress-program=gzip -1",
        "-C",
        str(rootfs),
        "-cf",
        str(dest),
        ".",
    ]
    proc = subprocess.run(argv, capture_output=True, text=True)
    if proc.returncode != 0:
        raise StackError(f"packing {rootfs} failed: {proc.stderr.strip()[-2000:]}")


def stack_config(stack: StackDef, diff_id: str) -> dict[str, Any]:
    return {
        "architecture": "amd64",
        "os": "linux",
        "config": {
            "Env": [f"PATH={STACK_PATH}", "LANG=C.UTF-8", "DEBIAN_FRONTEND=noninteractive"],
            "Cmd": ["/bin/bash"],
            "WorkingDir": "/app",
            "Labels": {"paas.stack": stack.name, "paas.stack.suite": stack.suite},
        },
        "rootfs": {"type": "layers", "diff_ids": [diff_id]},
        "history": [
            {"created_by": f"debootstrap --variant=minbase {stack.suite} + {' '.join(stack.packages)}"}
        ],
    }


def _diff_id(layer_gz: Path) -> str:
    import gzip
    import hashlib

    h = hashlib.sha256()
    with gzip.open(layer_gz, "rb") as f:
        while chunk := f.read(1 << 20):
            h.update(chunk)
    return "sha256:" + h.hexdigest()


@contextlib.contextmanager
def _cache_lock(cache_dir: Path, name: str) -> Iterator[None]:
    fd = os.open(cache_dir / f"{name}.lock", os.O_RDWR | os.O_CREAT, 0o600)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)


def cache_archive(cache_dir: Path, name: str) -> Path:
    return cache_dir / f"{name}.oci.tar"


def build_stack(
    store: ImageStore,
    name: str,
    cache_dir: Path,
    mirror: str | None = None,
    force: bool = False,
    bootstrap: Bootstrap = debootstrap,
    log: Callable[[str], None] = lambda _msg: None,
) -> tuple[str, str]:
    """Make sure the image `stack:<name>` is in `store`; return (reference, how).

    `how` is "present" (already in the store), "cache" (imported from the per-host cache) or
    "built" (bootstrapped now, and added to the cache).
    """
    stack = stack_def(name)
    if not force and store.exists(stack.reference):
        return stack.reference, "present"
    cache_dir.mkdir(parents=True, exist_ok=True)
    archive = cache_archive(cache_dir, stack.name)
    with _cache_lock(cache_dir, stack.name):
        if not force and archive.is_file():
            log(f"importing {stack.reference} from {archive}")
            try:
                store.import_archive(archive, reference=stack.reference)
                return stack.reference, "cache"
            except ImageError as e:
                log(f"cached {archive} is unusable ({e}); building again")
        mirror = mirror or host_mirror()
        log(f"bootstrapping {stack.suite} from {mirror}")
        work = Path(tempfile.mkdtemp(dir=cache_dir, prefix=f"build-{stack.name}-"))
        try:
            rootfs = work / "rootfs"
            rootfs.mkdir()
            bootstrap(stack, rootfs, mirror)
            finish_rootfs(rootfs)
            layer = work / "layer.tar.gz"
            log("packing the root file system")
            pack_layer(rootfs, layer)
            digest, size = store.put_blob_file(layer)
            config = stack_config(stack, _diff_id(layer))
            log("unpacking it into the image store")
            store.add_image(stack.reference, [(digest, size, MEDIA_LAYER_GZIP)], config)
            store.export_archive(stack.reference, archive)
        finally:
            shutil.rmtree(work, ignore_errors=True)
    return stack.reference, "built"


# -- command line ----------------------------------------------------------------------------


def default_cache_dir(root: Path) -> Path:
    env = os.environ.get("PAAS_STACK_CACHE_DIR")
    return Path(env) if env else root / "stack-cache"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m runtime.stacks", description=__doc__.split("\n")[0])
    parser.add_argument("--root", type=Path, help="runtime root (default $PAAS_RUNTIME_DIR or $PAAS_DATA_DIR/runtime)")
    sub = parser.add_subparsers(dest="command", required=True)
    build = sub.add_parser("build", help="build a stack (skipped when already built)")
    build.add_argument("stack", help=f"one of: {', '.join(sorted(STACKS))}")
    build.add_argument("--mirror", help="Debian mirror (default: the host's apt configuration)")
    build.add_argument("--cache-dir", type=Path, help="per-host cache (default $PAAS_STACK_CACHE_DIR)")
    build.add_argument("--force", action="store_true", help="bootstrap again even if cached")
    sub.add_parser("list", help="list the stacks and whether they are built")
    args = parser.parse_args(argv)
    root: Path = args.root or runtime_root()
    try:
        store = ImageStore(root / "images")
        if args.command == "list":
            for name in sorted(STACKS):
                ref = STACKS[name].reference
                state = store.manifest(ref)[0] if store.exists(ref) else "not built"
                print(f"{name:<12} {STACKS[name].suite:<10} {state}")
            return 0
        cache = args.cache_dir or default_cache_dir(root)
        ref, how = build_stack(
            store, args.stack, cache, mirror=args.mirror, force=args.force,
            log=lambda msg: print(f"-----> {msg}", flush=True),
        )
        print(f"{ref} {store.manifest(ref)[0]} ({how})")
        return 0
    except (StackError, ImageError, OSError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
