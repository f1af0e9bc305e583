"""`paas run`: start a one-off of the app's current release, print its output as it comes, and
end with its exit status. Ctrl-C stops the one-off."""

from __future__ import annotations

import json
import re
import sys
from typing import Any

import httpx

from paas_cli import output
from paas_cli.client import ApiClient, ApiError, segment

# A single argument with shell syntax in it is run by /bin/sh -c (`paas run 'echo $PORT'`).
_SHELLISH = re.compile(r"[\s$;&|<>()`*?~'\"\\]")


def command_body(args: list[str]) -> list[str] | str:
    """The API's `command`: the arguments as they are, or one string for /bin/sh -c."""
    if len(args) == 1 and _SHELLISH.search(args[0]):
        return args[0]
    return args


def run_oneoff(api: ApiClient, app: str, args: list[str], size: str | None) -> int:
    """Run, follow and return the exit status (1 when it never ran, 130 after Ctrl-C)."""
    body: dict[str, Any] = {"command": command_body(args)}
    if size:
        body["size"] = size
    base = f"/apps/{segment(app)}/runs"
    run = api.post(base, body)
    run_id, name = str(run.get("id", "")), str(run.get("name", "run"))
    output.error(f"Running {' '.join(args)} on {app} as {name} (v{run.get('release')})...")
    try:
        return _follow(api, f"{base}/{segment(run_id)}/output", name)
    except KeyboardInterrupt:
        try:
            api.delete(f"{base}/{segment(run_id)}")
            output.error(f"paas: stopped {name}.")
        except ApiError as exc:
            output.error(f"paas: could not stop {name}: {exc}")
        return 130


def _follow(api: ApiClient, path: str, name: str) -> int:
    http: httpx.Client = api._http
    timeout = httpx.Timeout(30.0, read=None)  # the output may be quiet for a long time
    try:
        with http.stream("GET", path, timeout=timeout) as response:
            if response.status_code >= 400:
                response.read()
                api._decode(response)  # raises the API's error
            for raw in response.iter_lines():
                if not raw.strip():
                    continue
                try:
                    entry = json.loads(raw)
                except ValueError:
                    continue
                if not isinstance(entry, dict):
                    continue
                if "line" in entry:
                    out = sys.stderr if entry.get("stream") == "stderr" else sys.stdout
                    out.write(str(entry["line"]) + "\n")
                    out.flush()
                elif "exit" in entry:
                    return _exit_status(entry, name)
    except httpx.HTTPError as exc:
        raise ApiError(f"Following the output of {name} failed: {exc or type(exc).__name__}.") from None
    raise ApiError(f"The server stopped sending the output of {name} before it ended.")


def _exit_status(entry: dict[str, Any], name: str) -> int:
    code, message = entry.get("exit"), str(entry.get("message") or "")
    if not isinstance(code, int) or isinstance(code, bool):
        output.error(f"paas: {name} did not run to its end: {message or 'no exit status'}.")
        return 1
    if message:
        output.error(f"paas: {name}: {message}.")
    return code if 0 <= code <= 255 else 255
