"""A small HTTP client for the paas REST API (docs/api.md).

Every failure — the server not running, a proxy answering HTML, a 5xx, an API error — becomes an
`ApiError` with one human sentence, which the CLI prints instead of a traceback.
"""

from __future__ import annotations

import json
from typing import Any
from urllib.parse import quote

import httpx

API_PREFIX = "/api/v1"
USER_AGENT = "paas-cli/0.1"


class ApiError(Exception):
    """The request failed; `str()` is the message for the user."""

    def __init__(
        self, message: str, *, status: int | None = None, code: str | None = None,
        fields: dict[str, list[str]] | None = None,
    ) -> None:
        super().__init__(message)
        self.status = status
        self.code = code
        self.fields = fields or {}

    def lines(self) -> list[str]:
        """The message, then one line per field problem."""
        out = [str(self)]
        for field, problems in self.fields.items():
            for problem in problems if isinstance(problems, list) else [problems]:
                line = f"  {field}: {problem}"
                if line.strip() != str(self).strip():
                    out.append(line)
        return out


def segment(value: str) -> str:
    """Quote one path segment, so that a `/` in user input cannot change the path."""
    return quote(value, safe="")


class ApiClient:
    def __init__(
        self, server: str, token: str | None = None, *, timeout: float = 30.0,
        transport: httpx.BaseTransport | None = None,
    ) -> None:
        self.server = server
        headers = {"User-Agent": USER_AGENT, "Accept": "application/json"}
        if token:
            headers["Authorization"] = f"Bearer {token}"
        self._http = httpx.Client(
            base_url=server + API_PREFIX, headers=headers, timeout=timeout,
            transport=transport,
        )

    def close(self) -> None:
        self._http.close()

    def __enter__(self) -> ApiClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def get(self, path: str) -> Any:
        return self.request("GET", path)

    def post(self, path: str, body: Any = None) -> Any:
        return self.request("POST", path, body)

    def patch(self, path: str, body: Any) -> Any:
        return self.request("PATCH", path, body)

    def delete(self, path: str) -> Any:
        return self.request("DELETE", path)

    def request(self, method: str, path: str, body: Any = None) -> Any:
        """Send one request; return the decoded JSON (None for an empty answer)."""
        try:
            if body is None:
                response = self._http.request(method, path)
            else:
                response = self._http.request(method, path, json=body)
        except httpx.ConnectError as exc:
            raise ApiError(
                f"Cannot reach the paas server at {self.server} ({_reason(exc)}). "
                "Is it running, and is the URL right?"
            ) from None
        except httpx.TimeoutException:
            raise ApiError(f"The paas server at {self.server} did not answer in time.") from None
        except httpx.HTTPError as exc:
            raise ApiError(
                f"Talking to the paas server at {self.server} failed: {_reason(exc)}."
            ) from None
        return self._decode(response)

    def _decode(self, response: httpx.Response) -> Any:
        status = response.status_code
        data: Any = None
        is_json = False
        if response.content:
            try:
                data = response.json()
                is_json = True
            except (ValueError, UnicodeDecodeError):
                is_json = False
        if status < 400:
            if response.content and not is_json:
                raise ApiError(
                    f"The server at {self.server} answered {status} with something that is "
                    "not JSON; is this URL a paas server?",
                    status=status,
                )
            return data
        error = data.get("error") if isinstance(data, dict) else None
        if isinstance(error, dict) and isinstance(error.get("message"), str):
            fields = error.get("fields")
            raise ApiError(
                error["message"], status=status, code=str(error.get("code") or ""),
                fields=fields if isinstance(fields, dict) else None,
            )
        if status == 401:
            raise ApiError("Your token is not valid (wrong, expired or revoked).", status=status)
        if status >= 500:
            raise ApiError(
                f"The paas server at {self.server} failed ({status} "
                f"{response.reason_phrase}). Try again, or ask its operator to look at its log.",
                status=status,
            )
        raise ApiError(
            f"The server at {self.server} answered {status} {response.reason_phrase} "
            "without a paas error message; is this URL a paas server?",
            status=status,
        )


def _reason(exc: Exception) -> str:
    text = str(exc).strip()
    lowered = text.lower()
    if "connection refused" in lowered or "errno 111" in lowered:
        return "connection refused"
    if "name or service not known" in lowered or "nodename nor servname" in lowered:
        return "unknown host name"
    return text or type(exc).__name__


def dumps(data: Any) -> str:
    """Pretty JSON for `--json` output."""
    return json.dumps(data, indent=2, sort_keys=False, ensure_ascii=False)
