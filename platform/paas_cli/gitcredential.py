"""git's credential helper protocol, answered with the token `paas login` stored.

`paas login` sets `credential.<server>.helper` in the user's global git configuration to run
`paas git-credential`; git then asks it for a password when it pushes to the platform, and the
stored API token is the answer (the user name is ignored by the server, as on Heroku).
"""

from __future__ import annotations

import shlex
import shutil
import subprocess
import sys
from pathlib import Path
from urllib.parse import urlsplit

from paas_cli.credentials import Credentials

USERNAME = "paas"


def parse_request(text: str) -> dict[str, str]:
    """git's `key=value` lines (up to a blank line) as a mapping; unknown lines are ignored."""
    fields: dict[str, str] = {}
    for line in text.splitlines():
        if not line:
            break
        key, sep, value = line.partition("=")
        if sep:
            fields[key] = value
    return fields


def answer(action: str, request: dict[str, str], creds: Credentials | None) -> str:
    """What `paas git-credential <action>` prints: the token for the logged-in server, else nothing."""
    if action != "get" or creds is None:
        return ""  # `store` and `erase`: the token is kept by `paas login` and `paas logout`
    server = urlsplit(creds.server)
    if request.get("protocol") != server.scheme or request.get("host") != server.netloc:
        return ""
    return f"username={USERNAME}\npassword={creds.token}\n"


def helper_command(executable: str | None = None) -> str:
    """The helper as git runs it: a shell command (`!...`) naming this very `paas`."""
    if executable is None:
        running = Path(sys.argv[0])
        # The `paas` being run (its console script), else the one on PATH.
        executable = (str(running.absolute()) if running.name == "paas" and running.is_file()
                      else shutil.which("paas") or "paas")
    exe = executable
    return f"!{shlex.quote(exe)} git-credential"


def configure(server: str, executable: str | None = None) -> str:
    """Make git ask `paas git-credential` for the server's password; say what happened."""
    if shutil.which("git") is None:
        return "git is not installed; `git push` will need the token as its password."
    key = f"credential.{server.rstrip('/')}.helper"
    # Replace what an earlier login set for this server; other helpers stay as they are.
    subprocess.run(["git", "config", "--global", "--unset-all", key], capture_output=True,
                   check=False, stdin=subprocess.DEVNULL)
    result = subprocess.run(["git", "config", "--global", "--add", key, helper_command(executable)],
                            capture_output=True, text=True, check=False, stdin=subprocess.DEVNULL)
    if result.returncode != 0:
        return f"Could not configure git's credential helper: {result.stderr.strip()}"
    return f"git will push to {server} with this token ({key})."
