"""TLS termination: a certificate per host name, chosen by SNI, picked up from files live."""

from __future__ import annotations

import asyncio
import json
import os
import ssl
from pathlib import Path
from typing import Any

import pytest

from router.proxy import Worker
from router.routing import RouteTable
from router.tls import CertStore, cert_file_names
from tests.router.app import App
from tests.router.certs import write_cert
from tests.router.helpers import DOMAIN, TEST_CONFIG, Client, route, run


def test_it_looks_for_the_exact_name_then_the_wildcard_then_the_default() -> None:
    assert cert_file_names("A.Example.com") == ["a.example.com.pem", "_wildcard.example.com.pem", "default.pem"]


async def tls_get(port: int, host: str, cafile: Path) -> tuple[dict[str, object], Any]:
    context = ssl.create_default_context(cafile=str(cafile))
    reader, writer = await asyncio.open_connection("127.0.0.1", port, ssl=context, server_hostname=host)
    client = Client(reader, writer)
    response = await client.request(host=host)
    peer = writer.get_extra_info("peercert")
    client.close()
    return json.loads(response.body), peer


@pytest.fixture
def certs_dir(tmp_path: Path) -> Path:
    d = tmp_path / "router" / "certs"
    d.mkdir(parents=True)
    return d


@run
async def test_it_terminates_tls_with_the_certificate_of_the_requested_name(certs_dir: Path) -> None:
    app = await App().start()
    one = write_cert(certs_dir / f"web1.{DOMAIN}.pem", [f"web1.{DOMAIN}"])
    wild = write_cert(certs_dir / "_wildcard.example.com.pem", ["*.example.com"])
    table = RouteTable(DOMAIN, {"web1": route("web1", [app.endpoint])}, {"*.example.com": "web1"})
    worker = Worker(TEST_CONFIG, table)
    store = CertStore(certs_dir, recheck=0.0)
    server = await asyncio.get_running_loop().create_server(
        worker.protocol_factory("https", 443), "127.0.0.1", 0, ssl=store.server_context())
    port = server.sockets[0].getsockname()[1]
    try:
        seen, _ = await tls_get(port, f"web1.{DOMAIN}", one)
        headers = {k.lower(): v for k, v in seen["headers"]}  # type: ignore[attr-defined]
        assert headers["x-forwarded-proto"] == "https" and headers["x-forwarded-port"] == "443"
        await tls_get(port, "shop.example.com", wild)
        with pytest.raises((ssl.SSLError, ConnectionError)):  # the handshake is refused
            await tls_get(port, "unknown.example.org", one)
        # The control plane renews the certificate: the next handshake uses the new file.
        renewed = write_cert(certs_dir / "renewed.tmp", [f"web1.{DOMAIN}"], common_name="renewed")
        os.replace(renewed, certs_dir / f"web1.{DOMAIN}.pem")
        _, peer = await tls_get(port, f"web1.{DOMAIN}", certs_dir / f"web1.{DOMAIN}.pem")
        assert dict(x[0] for x in peer["subject"])["commonName"] == "renewed"
    finally:
        server.close()
        worker.drain()
        await app.stop()


def test_it_keeps_the_last_good_certificate_when_a_file_is_broken(certs_dir: Path) -> None:
    path = write_cert(certs_dir / "a.example.com.pem", ["a.example.com"])
    store = CertStore(certs_dir, recheck=0.0)
    good = store.context_for("a.example.com")
    assert good is not None
    path.write_text("not a certificate")
    os.utime(path, (1, 1))
    assert store.context_for("a.example.com") is good
