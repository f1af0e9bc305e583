"""A real runtime daemon, in its own process, on a throw-away root, with the tiny busybox image."""

from __future__ import annotations

import contextlib
import os
import secrets
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from runtime import cgroups
from runtime.client import DaemonClient, DaemonError
from runtime.images import ImageStore
from runtime.tinyimage import build_tiny_image

REPO = Path(__file__).resolve().parents[2]
LOG_MAX_BYTES = 64 * 1024


@dataclass
class Image:
    layers: list[Path]
    config: dict[str, Any]
    digest: str


@dataclass
class Daemon:
    root: Path
    proc: subprocess.Popen[str] | None = None
    client: DaemonClient = field(init=False)
    made: list[str] = field(default_factory=list)
    network: tuple[str, str] | None = None  # (bridge, subnet) for a daemon with networking
    netns: str | None = None  # a named network namespace to run the daemon in (a simulated host)
    env: dict[str, str] = field(default_factory=dict)  # settings on top of the test's environment

    def __post_init__(self) -> None:
        self.client = DaemonClient(self.root / "daemon.sock", timeout=60)

    def start(self) -> None:
        env = {**os.environ, **self.env}
        args = [sys.executable, "-m", "runtime", "--root", str(self.root), "daemon",
                "--log-max-bytes", str(LOG_MAX_BYTES)]
        if self.netns is not None:
            # Only the network namespace: the daemon still sees the host's cgroups and mounts.
            args = ["nsenter", f"--net=/run/netns/{self.netns}", "--", *args]
        if self.network is None:
            args.append("--no-network")
        else:
            env["PAAS_BRIDGE"], env["PAAS_HOST_SUBNET"] = self.network
        self.proc = subprocess.Popen(
            args, cwd=REPO, env=env, stdout=subprocess.PIPE, text=True,
        )
        assert self.proc.stdout is not None
        line = self.proc.stdout.readline()
        if "ready" not in line:
            rest = self.proc.communicate(timeout=10)[0]
            raise RuntimeError(f"the daemon did not start: {line}{rest}")

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            self.proc.wait(timeout=30)
        self.proc = None

    def new_id(self, name: str = "c") -> str:
        cid = f"t{secrets.token_hex(4)}-{name}"[:63]
        self.made.append(cid)
        return cid

    def spec(self, image: Image, command: list[str], **over: Any) -> dict[str, Any]:
        d: dict[str, Any] = {
            "id": self.new_id(),
            "app": "test",
            "release": 1,
            "process_type": "web",
            "image": image.digest,
            "command": command,
            "memory_mb": 64,
            "pids_limit": 64,
            "network": {"mode": "none", "nat": False},
        }
        d.update(over)
        return d

    def run(self, image: Image, command: list[str], **over: Any) -> dict[str, Any]:
        """Create and start a container; return its record."""
        c = self.client.create(self.spec(image, command, **over), image.layers, image.config)
        return self.client.start(c["id"])

    def wait(self, cid: str, timeout: float = 60) -> dict[str, Any]:
        """Wait until the container is no longer running; return its record."""
        deadline = time.monotonic() + timeout
        while True:
            c = self.client.inspect(cid)
            if c["state"] != "running" or time.monotonic() > deadline:
                return c
            time.sleep(0.02)

    def output(self, cid: str) -> str:
        return "\n".join(i["line"] for i in self.client.logs(cid, tail=100000) if i["stream"] == "stdout")

    def cleanup(self) -> None:
        for cid in self.made:
            with contextlib.suppress(DaemonError):
                self.client.remove(cid, force=True)
            cg = cgroups.for_container(cid)
            with contextlib.suppress(cgroups.CgroupError, OSError):
                cgroups.kill_all(cg)
                cg.remove()
        self.made.clear()

    def teardown_network(self) -> None:
        if self.network is not None:
            from runtime.network import HostNetwork

            HostNetwork(self.network[0], self.network[1], self.root / "network", netns=self.netns).teardown()


@pytest.fixture(scope="module", name="tiny")
def tiny_fixture(tmp_path_factory: pytest.TempPathFactory) -> Image:
    store = ImageStore(tmp_path_factory.mktemp("images"))
    ref = build_tiny_image(store)
    img = store.resolve(ref)
    return Image(layers=img.layers, config=img.config, digest=img.digest)


@pytest.fixture(scope="module", name="daemon")
def daemon_fixture(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Daemon]:
    if os.geteuid() != 0:
        pytest.fail("the runtime tests need root")
    d = Daemon(tmp_path_factory.mktemp("runtime"))
    d.start()
    try:
        yield d
    finally:
        d.cleanup()
        d.stop()


@pytest.fixture(name="rt")
def rt_fixture(daemon: Daemon) -> Iterator[Daemon]:
    """The module's daemon; the containers a test makes are removed after it, pass or fail."""
    try:
        yield daemon
    finally:
        daemon.cleanup()
