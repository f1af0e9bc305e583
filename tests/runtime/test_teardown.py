"""`python -m runtime network teardown` and `python -m runtime down` (what `make down` runs)."""

from __future__ import annotations

import os
import random
import secrets
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.runtime.daemon_fixtures import REPO, Daemon, Image, tiny_fixture  # noqa: F401  (fixtures)

pytestmark = [pytest.mark.root, pytest.mark.slow]


@pytest.fixture(name="netd")
def netd_fixture(tmp_path: Path) -> Iterator[Daemon]:
    subnet = f"10.{random.randint(160, 250)}.{random.randint(0, 255)}.0/24"
    d = Daemon(tmp_path / "runtime", network=(f"pd{secrets.token_hex(3)}", subnet))
    try:
        d.start()
        yield d
    finally:
        if d.proc is None:
            d.start()  # to remove what the test made through it
        d.cleanup()
        d.stop()
        d.teardown_network()


def cli(d: Daemon, *args: str) -> subprocess.CompletedProcess[str]:
    assert d.network is not None
    env = {**os.environ, "PAAS_BRIDGE": d.network[0], "PAAS_HOST_SUBNET": d.network[1]}
    return subprocess.run(
        [sys.executable, "-m", "runtime", "--root", str(d.root), *args],
        cwd=REPO, env=env, capture_output=True, text=True, timeout=120,
    )


def network_left(d: Daemon) -> list[str]:
    """What is left of the daemon's network on the host: the bridge, iptables rules, state."""
    assert d.network is not None
    bridge = d.network[0]
    left = []
    if Path(f"/sys/class/net/{bridge}").exists():
        left.append(f"bridge {bridge}")
    for table in ("nat", "filter"):
        rules = subprocess.run(["iptables-save", "-t", table], capture_output=True, text=True, check=True).stdout
        left += [line for line in rules.splitlines() if f"paas:{bridge}" in line or f"-{bridge}" in line]
    # The build containers' egress rules on their bridge ports, and the chains that hold them.
    bridged = subprocess.run(["ebtables-save"], capture_output=True, text=True, check=True).stdout
    left += [line for line in bridged.splitlines() if f"-{bridge}" in line]
    if (d.root / "network").exists():
        left.append("state " + " ".join(sorted(p.name for p in (d.root / "network").rglob("*"))))
    return left


def ended(pid: int) -> bool:
    """Whether the process has exited (gone, or a zombie its new parent has not reaped yet)."""
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] == "Z"
    except FileNotFoundError:
        return True


def start_networked(d: Daemon, tiny: Image) -> dict[str, object]:
    c = d.run(tiny, ["sleep", "1000"], network={"mode": "bridge", "nat": True})
    assert c["state"] == "running" and c["ip"]
    return c


def test_it_refuses_to_tear_the_network_down_under_attached_containers(netd: Daemon, tiny: Image) -> None:
    c = start_networked(netd, tiny)
    refused = cli(netd, "network", "teardown")
    assert refused.returncode == 1
    assert refused.stderr == (
        f"error: 1 container(s) are still attached to {netd.network[0] if netd.network else ''} ({c['id']}); "
        "stop them first (python -m runtime down) or force it with --force (they lose their network)\n"
    )
    assert f"bridge {netd.network[0] if netd.network else ''}" in network_left(netd)
    forced = cli(netd, "network", "teardown", "--force")
    assert forced.returncode == 0, forced.stderr
    assert "the runtime daemon still runs" in forced.stdout
    assert network_left(netd) == []
    assert netd.client.inspect(str(c["id"]))["state"] == "running"  # only its network is gone


def test_it_stops_the_containers_through_the_daemon_and_tears_the_network_down(netd: Daemon, tiny: Image) -> None:
    c = start_networked(netd, tiny)
    assert network_left(netd) != []
    down = cli(netd, "down")
    assert down.returncode == 0, down.stderr
    assert down.stdout.splitlines()[0] == f"stopped {c['id']}"
    assert netd.client.inspect(str(c["id"]))["state"] == "exited"
    assert network_left(netd) == []
    again = cli(netd, "down")  # nothing left to do is not an error
    assert again.returncode == 0 and again.stdout.startswith("no container was running\n")


def test_it_takes_a_build_containers_egress_rules_down_with_the_rest(netd: Daemon, tiny: Image) -> None:
    c = netd.run(tiny, ["sleep", "1000"], process_type="build",
                 network={"mode": "bridge", "nat": True, "egress": "build"})
    assert any(f"{c['ip']}/32" in line for line in network_left(netd))
    down = cli(netd, "down")
    assert down.returncode == 0, down.stderr
    assert network_left(netd) == []


def test_it_stops_the_containers_of_a_daemon_that_is_not_running(netd: Daemon, tiny: Image) -> None:
    c = start_networked(netd, tiny)
    netd.stop()  # containers outlive their daemon
    assert Path(f"/proc/{c['pid']}").exists()
    down = cli(netd, "down")
    assert down.returncode == 0, down.stderr
    assert down.stdout.splitlines()[0] == f"stopped {c['id']}"
    assert ended(int(str(c["pid"])))
    assert network_left(netd) == []
    netd.start()
    assert netd.client.inspect(str(c["id"]))["state"] == "exited"


def test_it_explains_what_it_needs(netd: Daemon) -> None:
    bad = cli(netd, "network", "frobnicate")
    assert bad.returncode == 2 and "invalid choice" in bad.stderr and "Traceback" not in bad.stderr
    assert netd.network is not None
    env = {**os.environ, "PAAS_BRIDGE": netd.network[0], "PAAS_HOST_SUBNET": "10.1.2.0/33"}
    wrong = subprocess.run(
        [sys.executable, "-m", "runtime", "--root", str(netd.root), "network", "teardown"],
        cwd=REPO, env=env, capture_output=True, text=True, timeout=60,
    )
    assert wrong.returncode == 1 and wrong.stderr.startswith("error: cannot tear the network down: invalid subnet")
