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
from django.core.wsgi import get_wsgi_application

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

    def as_user(self, user: Any) -> InProcessCli:
        _row, self._token = actions.token_create(actor=user, description="cli test")
        return self

    def __call__(self, *args: str) -> Result:
        self._capsys.readouterr()
        code = cli_main.main(list(args))
        captured = self._capsys.readouterr()
        return Result(code, captured.out, captured.err)
