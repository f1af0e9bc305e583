"""Containers on the host network: the daemon plugs the veth in before the app starts."""

from __future__ import annotations

import os
import random
import secrets
import socket
import threading
import time
from collections.abc import Iterator
from urllib.parse import urlparse

import pytest

from tests.runtime.daemon_fixtures import Daemon, Image, tiny_fixture  # noqa: F401  (fixtures)

pytestmark = [pytest.mark.root, pytest.mark.slow]


@pytest.fixture(scope="module", name="netd")
def netd_fixture(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Daemon]:
    subnet = f"10.{random.randint(160, 250)}.{random.randint(0, 255)}.0/24"
    d = Daemon(tmp_path_factory.mktemp("runtime-net"), network=(f"pt{secrets.token_hex(3)}", subnet))
    try:
        d.start()
        yield d
    finally:
        d.cleanup()
        d.stop()
        d.teardown_network()


@pytest.fixture(name="net")
def net_fixture(netd: Daemon) -> Iterator[Daemon]:
    try:
        yield netd
    finally:
        netd.cleanup()


def test_it_gives_the_container_an_address_before_the_app_starts(net: Daemon, tiny: Image) -> None:
    assert net.network is not None
    gateway = net.network[1].rsplit(".", 1)[0] + ".1"
    received: list[bytes] = []
    server = socket.create_server((gateway, 0))
    port = server.getsockname()[1]

    def accept() -> None:
        conn, _ = server.accept()
        with conn:
            received.append(conn.recv(100))

    t = threading.Thread(target=accept, daemon=True)
    t.start()
    c = net.run(tiny, ["sh", "-c", f"ip -o -4 addr show eth0 | tr -s ' ' | cut -d' ' -f4; echo hello | nc -w 2 {gateway} {port}"],
                network={"mode": "bridge", "nat": False})
    done = net.wait(c["id"])
    t.join(timeout=10)
    server.close()
    assert done["exit_code"] == 0
    assert net.output(c["id"]) == f"{c['ip']}/24"
    assert received == [b"hello\n"]
    assert c["ip"].startswith(net.network[1].rsplit(".", 1)[0] + ".")


def test_it_keeps_host_loopback_services_out_of_reach_from_a_networked_container(net: Daemon, tiny: Image) -> None:
    url = urlparse(os.environ["REDIS_URL"])
    assert net.network is not None
    gateway = net.network[1].rsplit(".", 1)[0] + ".1"
    script = (
        f"printf 'PING\\r\\n' | nc -w 2 127.0.0.1 {url.port}; echo rc=$?;"
        f"printf 'PING\\r\\n' | nc -w 2 {gateway} {url.port}; echo rc=$?"
    )
    c = net.run(tiny, ["sh", "-c", script], network={"mode": "bridge", "nat": True})
    net.wait(c["id"])
    out = net.output(c["id"])
    assert "PONG" not in out and out.count("rc=1") == 2


def test_it_releases_the_address_when_the_container_ends(net: Daemon, tiny: Image) -> None:
    c = net.run(tiny, ["true"], network={"mode": "bridge", "nat": True})
    net.wait(c["id"])
    record = net.root / "network" / "attachments" / f"{c['id']}.json"
    deadline = time.monotonic() + 10  # the daemon releases it off its event loop
    while record.exists() and time.monotonic() < deadline:
        time.sleep(0.02)
    assert not record.exists()
