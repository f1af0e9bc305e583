"""Run the `paas` CLI in this process against the real API (Django's WSGI app over httpx).

Fast enough for checking what each command shows; test_cli_e2e.py covers the installed command
against a server on a real socket.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Any

import httpx
import pytest
from django.core.signals import request_finished, request_started
from django.core.wsgi import get_wsgi_application
from django.db import close_old_connections

from core import actions
from paas_cli import main as cli_main
from paas_cli.client import ApiClient


@dataclass
class Result:
    code: int
    out: str
    err: str


class InProcessCli:
    def __init__(self, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:
        self._monkeypatch = monkeypatch
        self._capsys = capsys
        self._transport = httpx.WSGITransport(app=get_wsgi_application())
        self._token = ""
        monkeypatch.setattr(
            cli_main, "session",
            lambda: ApiClient("http://testserver", self._token, transport=self._transport),
        )
        monkeypatch.setitem(os.environ, "COLUMNS", "200")

    def __enter__(self) -> InProcessCli:
        return self

    def __exit__(self, *exc: object) -> None:
        request_started.connect(close_old_connections)
        request_finished.connect(close_old_connections)

    def as_user(self, user: Any) -> InProcessCli:
        _row, self._token = actions.token_create(actor=user, description="cli test")
        return self

    def __call__(self, *args: str) -> Result:
        self._capsys.readouterr()
        # As Django's test client does: the test's transaction (and, on PostgreSQL, its
        # connection) must outlive each request.
        request_started.disconnect(close_old_connections)
        request_finished.disconnect(close_old_connections)
        try:
            code = cli_main.main(list(args))
        finally:
            request_started.connect(close_old_connections)
            request_finished.connect(close_old_connections)
        captured = self._capsys.readouterr()
        return Result(code, captured.out, captured.err)
