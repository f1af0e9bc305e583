"""`paas logs`: print an app's log lines (`2026-11-27T23:59:59Z app[web.1]: line`), and with
`--follow` keep printing new ones until Ctrl-C.

The API answers JSON lines (docs/api.md, logs); a follow answer ends after a while with a
`reconnect` line, and this asks again from the last line it printed, so a long `paas logs -f`
neither misses nor repeats lines.
"""

from __future__ import annotations

import json
import os
import sys
import time
from typing import Any, TextIO

import httpx

from paas_cli.client import ApiClient, ApiError, segment

READ_TIMEOUT_S = 120.0  # the server sends a keep-alive line at least every 15 s
RETRIES = 3

_COLOURS = ("36", "33", "32", "35", "34", "91", "96", "93", "92", "95")


def format_line(entry: dict[str, Any], colour: bool) -> str:
    """`<time to the second>Z <tag>: <line>`, the time and tag coloured on a terminal."""
    when = str(entry.get("time") or "")
    if len(when) >= 19 and when[10] == "T":
        when = when[:19] + "Z"
    tag, line = str(entry.get("tag") or ""), str(entry.get("line") or "")
    if not colour:
        return f"{when} {tag}: {line}"
    code = _COLOURS[sum(tag.split("[")[-1].split(".")[0].encode()) % len(_COLOURS)]
    return f"\x1b[2m{when}\x1b[0m \x1b[{code}m{tag}:\x1b[0m {line}"


def use_colour(stream: TextIO) -> bool:
    return stream.isatty() and not os.environ.get("NO_COLOR") and os.environ.get("TERM") != "dumb"


def show_logs(api: ApiClient, app: str, lines: int, ps: str | None, follow: bool) -> int:
    """Print the lines; follow until Ctrl-C (then end quietly). Return the exit status."""
    colour = use_colour(sys.stdout)
    params: dict[str, str] = {"lines": str(lines)}
    if ps:
        params["ps"] = ps
    if follow:
        params["follow"] = "1"
    path = f"/apps/{segment(app)}/logs"
    failures = 0
    try:
        while True:
            try:
                after = _read(api, path, params, colour)
                failures = 0
                if after is None:
                    return 0
            except _Dropped as exc:
                failures += 1
                if failures > RETRIES:
                    raise ApiError(f"Following the logs of {app} failed: {exc}.") from None
                time.sleep(failures)
                after = exc.after
            if after is not None:
                params.update(after=after, lines="0")
    except KeyboardInterrupt:
        return 0


class _Dropped(Exception):
    def __init__(self, message: str, after: str | None) -> None:
        super().__init__(message)
        self.after = after


def _read(api: ApiClient, path: str, params: dict[str, str], colour: bool) -> str | None:
    """One request: print its lines; return where to reconnect from (None: the answer ended)."""
    http: httpx.Client = api._http
    timeout = httpx.Timeout(30.0, read=READ_TIMEOUT_S)
    last: str | None = params.get("after")
    try:
        with http.stream("GET", path, params=params, timeout=timeout) as response:
            if response.status_code >= 400:
                response.read()
                api._decode(response)  # raises the API's error
            for raw in response.iter_lines():
                if not raw.strip():
                    continue  # a keep-alive
                try:
                    entry = json.loads(raw)
                except ValueError:
                    continue
                if not isinstance(entry, dict):
                    continue
                if "line" in entry:
                    print(format_line(entry, colour), flush=True)
                    last = str(entry.get("id") or last)
                elif isinstance(entry.get("reconnect"), dict):
                    return str(entry["reconnect"].get("after") or last or "") or None
    except httpx.ConnectError:
        if last is None:
            api.get("/account")  # raises the client's plain-words error for an unreachable server
        raise _Dropped("the server went away", last) from None
    except httpx.HTTPError as exc:
        if "follow" not in params:
            raise ApiError(f"Reading the logs failed: {exc or type(exc).__name__}.") from None
        raise _Dropped(str(exc) or type(exc).__name__, last) from None
    if "follow" in params:
        raise _Dropped("the server ended the answer early", last)
    return None
