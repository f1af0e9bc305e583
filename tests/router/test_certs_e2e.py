"""A certificate added through the control plane is what the real router serves for its name.

The control plane (cert_set/cert_remove, after commit) writes and removes the files of
`PAAS_DATA_DIR/router/certs`; `python -m router`, with the same data dir, picks each change up
on a later handshake (it re-checks a file at most once a second, so the test polls).
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import signal
import socket
import ssl
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from core import actions
from tests.controlplane import certgen
from tests.router.helpers import DOMAIN, free_port

ROOT = Path(__file__).resolve().parents[2]
HOST = "www.example.com"
REFUSED = "handshake refused"
pytestmark = [pytest.mark.slow, pytest.mark.django_db]


@contextlib.contextmanager
def router(redis_url: str, data_dir: Path) -> Iterator[int]:
    """`python -m router` with TLS on a free port; yields that port once it accepts."""
    tls_port = free_port()
    env = dict(os.environ, REDIS_URL=redis_url, PAAS_DOMAIN=DOMAIN, PAAS_DATA_DIR=str(data_dir),
               PAAS_ROUTER_BIND=f"127.0.0.1:{free_port()}", PAAS_ROUTER_TLS_BIND=f"127.0.0.1:{tls_port}",
               PAAS_ROUTER_WORKERS="1", PYTHONPATH=str(ROOT))
    proc = subprocess.Popen([sys.executable, "-m", "router"], env=env, cwd=ROOT,
                            start_new_session=True, stdout=subprocess.DEVNULL,
                            stderr=subprocess.PIPE)
    try:
        deadline = time.monotonic() + 20
        while True:
            assert proc.poll() is None, proc.stderr.read().decode() if proc.stderr else ""
            with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", tls_port), 1):
                break
            assert time.monotonic() < deadline, "the router did not open its TLS port"
            time.sleep(0.05)
        yield tls_port
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGTERM)
        with contextlib.suppress(subprocess.TimeoutExpired):
            proc.wait(20)
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)  # the group this test started, workers included
        proc.wait()
        if proc.stderr:
            proc.stderr.close()


def served(port: int, host: str = HOST) -> str:
    """The SHA-256 fingerprint of the certificate the router presents for `host` (SNI)."""
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    context.check_hostname = False
    context.verify_mode = ssl.CERT_NONE  # the fingerprint is what is checked
    with socket.create_connection(("127.0.0.1", port), 5) as raw, \
            context.wrap_socket(raw, server_hostname=host) as tls:
        der = tls.getpeercert(binary_form=True)
        assert der is not None
        tls.sendall(f"GET / HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\n\r\n".encode())
        assert tls.recv(16).startswith(b"HTTP/1.1 ")  # the router answers over it
        return hashlib.sha256(der).hexdigest()


def until(probe: Callable[[], Any], expected: Any, timeout: float = 15.0) -> None:
    deadline, last = time.monotonic() + timeout, None
    while time.monotonic() < deadline:
        try:
            last = probe()
        except ssl.SSLError:  # an alert or the connection closed during the handshake
            last = REFUSED
        except OSError as exc:
            last = f"no connection: {exc!r}"
        if last == expected:
            return
        time.sleep(0.1)
    raise AssertionError(f"expected {expected!r}, last saw {last!r}")


def test_it_serves_added_and_replaced_certificates_and_refuses_once_removed(
    settings: Any, tmp_path: Path, redis_url: str, django_capture_on_commit_callbacks: Any,
) -> None:
    settings.DATA_DIR = tmp_path
    owner = actions.user_create(actor=None, username="tls-owner", email="tls@example.com")
    team = actions.team_create(actor=owner, name="tls-team")
    web1 = actions.app_create(actor=owner, name="web1", team=team)
    actions.domain_add(actor=owner, app=web1, hostname=HOST)
    first, second = certgen.leaf([HOST]), certgen.leaf([HOST, "*.example.com"])
    with router(redis_url, tmp_path) as port:
        until(lambda: served(port), REFUSED)  # no certificate, and no default.pem

        with django_capture_on_commit_callbacks(execute=True):
            actions.cert_set(actor=owner, app=web1, hostname=HOST, chain=first.pem,
                             key=first.key_pem)
        until(lambda: served(port), first.fingerprint)

        with django_capture_on_commit_callbacks(execute=True):
            actions.cert_set(actor=owner, app=web1, hostname=HOST, chain=second.pem,
                             key=second.key_pem)
        until(lambda: served(port), second.fingerprint)

        with django_capture_on_commit_callbacks(execute=True):
            actions.cert_remove(actor=owner, app=web1, hostname=HOST)
        until(lambda: served(port), REFUSED)
