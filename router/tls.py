"""TLS termination with one certificate per host name, chosen by SNI, read from files.

The control plane writes `<certs dir>/<host>.pem` (certificate chain and private key in one file;
`_wildcard.example.com.pem` for `*.example.com`, and optionally `default.pem` for clients that
send no or an unknown name). A changed or new file is used from the next handshake on: the
router looks at a file's modification time at most once a second per name.
"""

from __future__ import annotations

import logging
import ssl
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

log = logging.getLogger("router.tls")


def cert_file_names(host: str) -> list[str]:
    """The files that may hold a certificate for a host name, most specific first."""
    host = host.lower().rstrip(".")
    names = [f"{host}.pem"]
    if "." in host:
        names.append(f"_wildcard.{host.split('.', 1)[1]}.pem")
    names.append("default.pem")
    return names


@dataclass
class _Cached:
    context: ssl.SSLContext | None
    mtime: float
    checked: float


class CertStore:
    """Certificates by host name, loaded lazily and reloaded when their file changes."""

    def __init__(self, directory: Path, clock: Callable[[], float] = time.monotonic, recheck: float = 1.0) -> None:
        self.directory = directory
        self.clock = clock
        self.recheck = recheck
        self._files: dict[str, _Cached] = {}

    def _load(self, name: str) -> ssl.SSLContext | None:
        now = self.clock()
        cached = self._files.get(name)
        if cached is not None and now - cached.checked < self.recheck:
            return cached.context
        path = self.directory / name
        try:
            mtime = path.stat().st_mtime
        except OSError:
            self._files[name] = _Cached(None, 0.0, now)
            return None
        if cached is not None and cached.mtime == mtime:
            cached.checked = now
            return cached.context
        context: ssl.SSLContext | None = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        assert context is not None
        context.minimum_version = ssl.TLSVersion.TLSv1_2
        context.set_alpn_protocols(["http/1.1"])
        try:
            context.load_cert_chain(str(path))
        except (OSError, ssl.SSLError) as error:
            log.error("at=error code=bad_certificate file=%s error=%r", path, str(error))
            context = cached.context if cached is not None else None  # keep the last good one
        self._files[name] = _Cached(context, mtime, now)
        return context

    def context_for(self, host: str | None) -> ssl.SSLContext | None:
        names = cert_file_names(host) if host else ["default.pem"]
        for name in names:
            context = self._load(name)
            if context is not None:
                return context
        return None

    def server_context(self) -> ssl.SSLContext:
        """The context the listener starts every handshake with; SNI picks the real one."""
        context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        context.minimum_version = ssl.TLSVersion.TLSv1_2
        context.set_alpn_protocols(["http/1.1"])

        def choose(sslobj: ssl.SSLObject, server_name: str | None, _: ssl.SSLContext) -> int | None:
            chosen = self.context_for(server_name)
            if chosen is None:
                return ssl.ALERT_DESCRIPTION_UNRECOGNIZED_NAME
            sslobj.context = chosen
            return None

        context.sni_callback = choose
        return context
