"""A real runtime daemon with networking and the real debian stack, for builds in containers."""

from __future__ import annotations

import os
import random
import secrets
import shutil
import subprocess
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from runtime.images import Image, ImageStore
from runtime.stacks import build_stack
from tests.runtime.daemon_fixtures import Daemon

STACK = "debian-13"


def stack_cache() -> Path:
    return Path(os.environ.get("PAAS_STACK_CACHE_DIR", "/var/cache/paas/stacks"))


def shared_stack_store() -> ImageStore:
    """The per-host test store with the real stack in it, built (or imported) once per host.

    Tests only read it: containers use its unpacked layer as a read-only lower directory.
    """
    cache = stack_cache()
    shared = ImageStore(cache / "test-store")
    build_stack(shared, STACK, cache)
    return shared


def linked_stack_store(dest: Path) -> ImageStore:
    """A throw-away image store holding the real stack, for tests that add images to it.

    Its OCI layout is hard links into the per-host test store's, and each unpacked layer a
    symlink to the test store's (read-only to every container): seconds to make and to remove,
    where unpacking the stack takes a minute.
    """
    shared = shared_stack_store()
    dest.mkdir(parents=True, exist_ok=True)
    subprocess.run(["cp", "-al", str(shared.root / "oci"), str(dest / "oci")], check=True)
    layers = dest / "layers" / "sha256"
    layers.mkdir(parents=True)
    for layer in shared.layers_dir.iterdir():
        (layers / layer.name).symlink_to(layer)
    return ImageStore(dest)


def start_network_daemon(root: Path) -> Daemon:
    subnet = f"10.{random.randint(160, 250)}.{random.randint(0, 255)}.0/24"
    daemon = Daemon(root, network=(f"pb{secrets.token_hex(3)}", subnet))
    daemon.start()
    return daemon


def stop_daemon(daemon: Daemon) -> None:
    """Remove every container the daemon still has, stop it and take its network down."""
    try:
        for c in daemon.client.list():
            daemon.made.append(c["id"])
    except Exception:  # the daemon may be gone already; clean up what we can
        pass
    try:
        daemon.cleanup()
    finally:
        daemon.stop()
        daemon.teardown_network()


@dataclass
class BuildHost:
    daemon: Daemon
    stack: Image
    store: ImageStore


@pytest.fixture(scope="module", name="build_host")
def build_host_fixture(tmp_path_factory: pytest.TempPathFactory) -> Iterator[BuildHost]:
    if os.geteuid() != 0:
        pytest.fail("builds in runtime containers need root")
    root = tmp_path_factory.mktemp("build-runtime")
    store = shared_stack_store()
    daemon = start_network_daemon(root / "runtime")
    try:
        yield BuildHost(daemon=daemon, stack=store.resolve(f"stack:{STACK}"), store=store)
    finally:
        stop_daemon(daemon)
        shutil.rmtree(root, ignore_errors=True)
