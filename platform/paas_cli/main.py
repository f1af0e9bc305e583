"""The `paas` command: a thin HTTP client of the REST API (docs/api.md).

Heroku-style command names (`config:set`), with short aliases (`create`, `destroy`, `info`).
Every app command takes `--app/-a`; without it the app comes from the `paas` git remote of the
repository in the current directory. Every listing takes `--json` and prints the API's JSON.
"""

from __future__ import annotations

import datetime
import os
import re
import sys
from collections.abc import Callable
from typing import Any, TypeVar

import click

from paas_cli import credentials, gitcredential, gitremote, output
from paas_cli.client import ApiClient, ApiError, dumps, segment
from paas_cli.credentials import Credentials, CredentialsError
from paas_cli.logs import show_logs
from paas_cli.parsing import (
    UsageError,
    normalize_server,
    parse_assignments,
    parse_keys,
    parse_labels,
    parse_scale,
    parse_version,
)

DEFAULT_SERVER = "http://127.0.0.1:8000"
ROLES = ("owner", "admin", "member", "viewer")

F = TypeVar("F", bound=Callable[..., Any])

ALIASES = {
    "create": "apps:create",
    "destroy": "apps:destroy",
    "info": "apps:info",
    "apps:list": "apps",
    "config:add": "config:set",
    "config:remove": "config:unset",
    "releases:rollback": "rollback",
    "ps:scale": "scale",
    "domains:list": "domains",
    "certs:list": "certs",
    "teams:list": "teams",
    "members:list": "members",
    "tokens:list": "tokens",
    "hosts:list": "hosts",
}


class CliGroup(click.Group):
    """Resolve the short aliases, and list commands in the order they were written."""

    def get_command(self, ctx: click.Context, cmd_name: str) -> click.Command | None:
        return super().get_command(ctx, ALIASES.get(cmd_name, cmd_name))

    def list_commands(self, ctx: click.Context) -> list[str]:
        return list(self.commands)

    def resolve_command(
        self, ctx: click.Context, args: list[str]
    ) -> tuple[str | None, click.Command | None, list[str]]:
        _name, cmd, rest = super().resolve_command(ctx, args)
        # Report the real name (`apps:create`), not the alias, in usage messages.
        return (cmd.name if cmd else None), cmd, rest


# ---------------------------------------------------------------------------------------------
# Sessions: which server, which token, which app


def _env_server() -> str | None:
    value = os.environ.get("PAAS_SERVER", "").strip()
    return normalize_server(value) if value else None


def session() -> ApiClient:
    """An API client with the user's token, or a clear error when they are not logged in."""
    env_token = os.environ.get("PAAS_TOKEN", "").strip()
    env_server = _env_server()
    if env_token:
        if env_server:
            return ApiClient(env_server, env_token)
        stored_for_url = credentials.load()
        return ApiClient(stored_for_url.server if stored_for_url else DEFAULT_SERVER, env_token)
    stored = credentials.load()
    if stored is None:
        raise UsageError("You are not logged in: run `paas login --server URL` first.")
    if env_server and env_server != stored.server:
        # Never send the token of one server to another.
        raise UsageError(
            f"You are logged in to {stored.server}, but PAAS_SERVER is {env_server}: "
            "run `paas login` for that server, or unset PAAS_SERVER."
        )
    return ApiClient(stored.server, stored.token)


def resolve_app(app: str | None) -> str:
    if app:
        return app
    env_app = os.environ.get("PAAS_APP", "").strip()
    if env_app:
        return env_app
    found = gitremote.app_from_remote()
    if found:
        return found
    raise UsageError(
        "No app given: use --app NAME, or run this inside a git repository whose "
        "`paas` remote points at the app."
    )


def app_option(func: F) -> F:
    return click.option(
        "-a", "--app", "app", metavar="APP",
        help="The app (default: from the `paas` git remote of this repository).",
    )(func)


def json_option(func: F) -> F:
    return click.option("--json", "as_json", is_flag=True, help="Print the API's JSON.")(func)


def team_option(func: F) -> F:
    return click.option(
        "-t", "--team", "team", metavar="TEAM", help="The team (default: your personal team)."
    )(func)


def _personal_team(api: ApiClient) -> str:
    """The name of the personal team of whoever the token belongs to (named after them)."""
    account = api.get("/account")
    return str(account["username"])


def _read_line(prompt: str, hidden: bool = False) -> str:
    """Prompt on a terminal; read a plain line when stdin is a pipe (scripts, CI)."""
    if sys.stdin.isatty():
        return str(click.prompt(prompt, hide_input=hidden, err=True))
    line = sys.stdin.readline()
    if not line:
        raise UsageError(f"{prompt}: no input (stdin is closed).")
    return line.rstrip("\r\n")


# ---------------------------------------------------------------------------------------------
# The commands


@click.group(cls=CliGroup, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option("0.1.0", prog_name="paas")
def cli() -> None:
    """Manage apps on a paas platform.

    \b
    Start with: paas login --server URL
    App commands take --app/-a, else use the `paas` git remote of this repository.
    Environment: PAAS_SERVER (the platform's URL), PAAS_TOKEN (a token to use instead of
    the stored one), PAAS_APP (the app), XDG_CONFIG_HOME (where credentials are kept).
    """


@cli.command()
@click.option("--server", metavar="URL", help=f"The platform's URL (default: $PAAS_SERVER, "
              f"the last one used, or {DEFAULT_SERVER}).")
@click.option("--token", metavar="TOKEN", help="Log in with an API token instead of a password.")
def login(server: str | None, token: str | None) -> None:
    """Log in and store the token for the next commands."""
    try:
        stored = credentials.load()
    except CredentialsError:
        stored = None  # a damaged file is replaced by this login
    url = normalize_server(server) if server else (
        _env_server() or (stored.server if stored else DEFAULT_SERVER)
    )
    made_here = token is None
    if token is not None:
        token = token.strip()
        if not token:
            raise UsageError("The token is empty.")
        with ApiClient(url, token) as api:
            account = api.get("/account")
    else:
        username = _read_line("User name").strip()
        password = _read_line("Password", hidden=True)
        if not username or not password:
            raise UsageError("Both a user name and a password are needed.")
        with ApiClient(url) as api:
            answer = api.post("/auth/login", {"username": username, "password": password})
        token = str(answer["token"])
        account = answer.get("user") or {"username": username}
    name = str(account.get("username", ""))
    path = credentials.save(Credentials(
        server=url, token=token, username=name, revoke_on_logout=made_here,
    ))
    output.say(f"Logged in to {url} as {name}.")
    output.error(f"Token stored in {path}.")
    output.error(gitcredential.configure(url))


@cli.command("git-credential", hidden=True)
@click.argument("action")
def git_credential(action: str) -> None:
    """git's credential helper (set up by `paas login`): answer with the stored token."""
    try:
        stored = credentials.load()
    except CredentialsError:
        stored = None
    request = gitcredential.parse_request(sys.stdin.read())
    sys.stdout.write(gitcredential.answer(action, request, stored))


@cli.command()
def logout() -> None:
    """Forget the stored token, and revoke it when `paas login` made it from a password."""
    try:
        stored = credentials.load()
    except CredentialsError:
        stored = None
    if stored is not None and stored.revoke_on_logout:
        try:
            _revoke_own_token(stored)
        except ApiError as exc:
            # Logging out must work with the server down too: forget the token anyway.
            output.error(f"paas: could not revoke the token on the server: {exc}")
    if credentials.delete():
        output.say("Logged out.")
    else:
        output.say("You were not logged in.")


def _revoke_own_token(stored: Credentials) -> None:
    with ApiClient(stored.server, stored.token, timeout=10) as api:
        tokens = api.get("/tokens")
        mine = [t for t in tokens if isinstance(t, dict)
                and stored.token.startswith(str(t.get("prefix") or "\0"))]
        if len(mine) == 1:
            api.delete(f"/tokens/{segment(str(mine[0]['id']))}")


@cli.command()
@json_option
def whoami(as_json: bool) -> None:
    """Show who you are logged in as."""
    with session() as api:
        account = api.get("/account")
        if as_json:
            output.say(dumps(account))
            return
        output.say(f"{account['username']} on {api.server}")


# --- apps ------------------------------------------------------------------------------------


@cli.command("apps")
@json_option
def apps_list(as_json: bool) -> None:
    """List your apps."""
    with session() as api:
        apps = api.get("/apps")
    if as_json:
        output.say(dumps(apps))
        return
    output.print_table(
        apps, [("name", "NAME"), ("team", "TEAM"), ("current_release", "RELEASE"), ("url", "URL")],
        empty="You have no apps yet: paas apps:create NAME",
        formatters={"current_release": output.release_name},
    )


@cli.command("apps:create")
@click.argument("name")
@team_option
@click.option("--no-remote", is_flag=True, help="Do not add the `paas` git remote.")
@json_option
def apps_create(name: str, team: str | None, no_remote: bool, as_json: bool) -> None:
    """Create an app (alias: create); inside a git repository, add the `paas` remote."""
    body: dict[str, Any] = {"name": name}
    if team:
        body["team"] = team
    with session() as api:
        app = api.post("/apps", body)
    if as_json:
        output.say(dumps(app))
    else:
        output.say(f"Created {app['name']}: {app.get('url', '')}")
    git_url = app.get("git_url")
    if not no_remote and git_url and gitremote.in_work_tree():
        message = gitremote.add_remote(str(git_url))
        (output.error if as_json else output.say)(message)


@cli.command("apps:info")
@app_option
@json_option
def apps_info(app: str | None, as_json: bool) -> None:
    """Show an app (alias: info)."""
    name = resolve_app(app)
    with session() as api:
        data = api.get(f"/apps/{segment(name)}")
    if as_json:
        output.say(dumps(data))
        return
    shown = {"name", "team", "url", "git_url", "current_release", "formation", "domains",
             "created_at"}
    pairs = [
        ("Name", output.text(data.get("name"))),
        ("Team", output.text(data.get("team"))),
        ("URL", output.text(data.get("url"))),
        ("Git URL", output.text(data.get("git_url"))),
        ("Release", output.release_name(data.get("current_release"))),
        ("Formation", _formation_summary(data.get("formation"))),
        ("Domains", output.text(data.get("domains")) or "none"),
        ("Created", output.when(data.get("created_at"))),
    ]
    for key, value in data.items():
        if key not in shown and not isinstance(value, (dict, list)):
            pairs.append((key.replace("_", " ").capitalize(), output.text(value)))
    output.print_pairs(pairs)


def _formation_summary(formation: Any) -> str:
    if isinstance(formation, dict):
        formation = [{"type": k, **(v if isinstance(v, dict) else {"quantity": v})}
                     for k, v in formation.items()]
    if not isinstance(formation, list) or not formation:
        return "none"
    parts = []
    for item in formation:
        if isinstance(item, dict):
            size = f":{item['size']}" if item.get("size") else ""
            parts.append(f"{item.get('type')}={item.get('quantity', 0)}{size}")
    return " ".join(parts)


@cli.command("apps:destroy")
@app_option
@click.option("--confirm", metavar="APP", help="The app's name, to confirm without a prompt.")
def apps_destroy(app: str | None, confirm: str | None) -> None:
    """Destroy an app for good (alias: destroy)."""
    name = resolve_app(app)
    if confirm is None:
        output.error(f"This destroys {name} and everything in it; it cannot be undone.")
        confirm = _read_line(f"Type {name} to confirm").strip()
    if confirm != name:
        raise UsageError(f"Confirmation {confirm!r} does not match {name!r}; nothing destroyed.")
    with session() as api:
        api.delete(f"/apps/{segment(name)}")
    output.say(f"Destroyed {name}.")
    if gitremote.remove_remote_if_app(name):
        output.say(f"Git remote {gitremote.REMOTE} removed.")


# --- config ----------------------------------------------------------------------------------


@cli.command("config")
@app_option
@json_option
@click.option("--shell", is_flag=True, help="Print KEY=VALUE lines.")
def config_show(app: str | None, as_json: bool, shell: bool) -> None:
    """Show an app's config vars."""
    name = resolve_app(app)
    with session() as api:
        config = api.get(f"/apps/{segment(name)}/config")
    if as_json:
        output.say(dumps(config))
        return
    if not config:
        output.say(f"{name} has no config vars.")
        return
    if shell:
        for key, value in config.items():
            output.say(f"{key}={value}")
        return
    output.print_pairs([(key, str(value)) for key, value in config.items()])


@cli.command("config:get")
@click.argument("key")
@app_option
def config_get(key: str, app: str | None) -> None:
    """Print one config var's value."""
    parse_keys([key])
    name = resolve_app(app)
    with session() as api:
        config = api.get(f"/apps/{segment(name)}/config")
    if key not in config:
        raise UsageError(f"{name} has no config var {key}.")
    click.echo(config[key])


@cli.command("config:set")
@click.argument("pairs", nargs=-1, metavar="KEY=VALUE...")
@app_option
@json_option
def config_set(pairs: tuple[str, ...], app: str | None, as_json: bool) -> None:
    """Set config vars; makes a new release."""
    values = parse_assignments(pairs)
    name = resolve_app(app)
    with session() as api:
        answer = api.patch(f"/apps/{segment(name)}/config", values)
    if as_json:
        output.say(dumps(answer))
        return
    release = output.release_name(answer.get("release")) if isinstance(answer, dict) else ""
    output.say(f"Set {', '.join(values)} on {name}; released {release}.")


@cli.command("config:unset")
@click.argument("keys", nargs=-1, metavar="KEY...")
@app_option
@json_option
def config_unset(keys: tuple[str, ...], app: str | None, as_json: bool) -> None:
    """Remove config vars; makes a new release."""
    names = parse_keys(keys)
    name = resolve_app(app)
    with session() as api:
        answer = api.patch(f"/apps/{segment(name)}/config", dict.fromkeys(names))
    if as_json:
        output.say(dumps(answer))
        return
    release = output.release_name(answer.get("release")) if isinstance(answer, dict) else ""
    output.say(f"Unset {', '.join(names)} on {name}; released {release}.")


# --- processes -------------------------------------------------------------------------------

FORMATION_COLUMNS = [("type", "TYPE"), ("quantity", "QUANTITY"), ("size", "SIZE"),
                     ("memory_mb", "MEMORY MB"), ("cpu", "CPU"), ("constraints", "CONSTRAINTS"),
                     ("readiness", "READINESS")]


def _readiness(row: Any) -> str:
    """`http GET /healthz, 90 s`, `tcp $PORT`, or nothing for types without a port."""
    if not isinstance(row, dict) or row.get("type") != "web":
        return ""
    check = f"http GET {row['readiness_path']}" if row.get("readiness_path") else "tcp $PORT"
    timeout = row.get("boot_timeout_s")
    return f"{check}, {timeout} s" if timeout else check


def _last_exit(row: Any) -> str:
    """How the container this one replaced ended: `oom`, `code 1`."""
    if not isinstance(row, dict) or not row.get("last_exit_state"):
        return ""
    if row["last_exit_state"] == "exited":
        code = row.get("last_exit_code")
        return f"code {code}" if code is not None else "exited"
    return str(row["last_exit_state"])


def _one_offs(api: ApiClient, name: str) -> list[Any]:
    """The app's running one-offs (`paas run`); none when the server cannot say."""
    try:
        runs = api.get(f"/apps/{segment(name)}/runs")
    except ApiError:
        return []
    return runs if isinstance(runs, list) else []


def _epoch(value: Any) -> str:
    import datetime

    if isinstance(value, (int, float)) and not isinstance(value, bool):
        return datetime.datetime.fromtimestamp(value, datetime.UTC).strftime("%Y-%m-%d %H:%M:%S UTC")
    return output.text(value)


@cli.command("ps")
@app_option
@json_option
def ps(app: str | None, as_json: bool) -> None:
    """Show an app's formation and its containers."""
    name = resolve_app(app)
    with session() as api:
        formation = api.get(f"/apps/{segment(name)}/formation")
        containers = api.get(f"/apps/{segment(name)}/containers")
        releases = api.get(f"/apps/{segment(name)}/releases")
        runs = _one_offs(api, name)
    if as_json:
        output.say(dumps({"formation": formation, "containers": containers, "runs": runs}))
        return
    for row in formation if isinstance(formation, list) else []:
        if isinstance(row, dict):
            row["readiness"] = _readiness(row)
    output.print_table(formation, FORMATION_COLUMNS, empty=f"{name} has no process types yet.")
    output.say("")
    for row in containers if isinstance(containers, list) else []:
        if isinstance(row, dict):
            row["last_exit"] = _last_exit(row)
    output.print_table(
        containers,
        [("name", "CONTAINER"), ("status", "STATUS"), ("release", "RELEASE"), ("host", "HOST"),
         ("address", "ADDRESS"), ("started_at", "STARTED"), ("restarts", "RESTARTS"),
         ("last_exit", "LAST EXIT")],
        empty=f"{name} has no containers running.",
        formatters={"release": output.release_name, "started_at": output.when},
    )
    if runs:
        output.say("")
        output.print_table(
            runs, [("name", "ONE-OFF"), ("command", "COMMAND"), ("release", "RELEASE"),
                   ("host", "HOST"), ("created_at", "STARTED")], empty="",
            formatters={"command": lambda c: " ".join(map(str, c)) if isinstance(c, list) else output.text(c),
                        "release": lambda v: f"v{v}", "created_at": _epoch},
        )
    # The newest release, when it is not simply rolled out: why (pending, failed, unplaced).
    newest = releases[0] if isinstance(releases, list) and releases else None
    if isinstance(newest, dict) and (newest.get("status") != "deployed" or newest.get("status_reason")):
        reason = output.text(newest.get("status_reason"))
        output.say("")
        output.say(f"{output.release_name(newest)} is {output.text(newest.get('status'))}"
                   + (f": {reason}" if reason else "."))


@cli.command("run", context_settings={"ignore_unknown_options": True,
                                      "allow_interspersed_args": False})
@click.argument("command", nargs=-1, required=True, type=click.UNPROCESSED, metavar="-- COMMAND...")
@app_option
@click.option("-s", "--size", metavar="SIZE", help="basic (default) or a memory like 1G.")
def run(command: tuple[str, ...], app: str | None, size: str | None) -> int:
    """Run a one-off command in the app's current release and exit with its status:
    `paas run -- python manage.py migrate`. Ctrl-C stops it."""
    from paas_cli.run import run_oneoff

    args = list(command[1:] if command[:1] == ("--",) else command)
    if not args:
        raise UsageError("Give the command to run: paas run -- COMMAND [ARGS...]")
    name = resolve_app(app)
    with session() as api:
        return run_oneoff(api, name, args, size)


@cli.command("logs")
@click.option("-f", "--follow", is_flag=True, help="Keep printing new lines until Ctrl-C.")
@click.option("-n", "--num", "lines", type=click.IntRange(0, 10_000), default=100,
              show_default=True, help="How many of the last lines to print first.")
@click.option("-p", "--ps", "ps", metavar="TYPE[.N]",
              help="Only a process type (web) or one container (web.1); also router.")
@app_option
def logs(follow: bool, lines: int, ps: str | None, app: str | None) -> int:
    """Print an app's logs: its containers' output, the router's and the platform's lines."""
    name = resolve_app(app)
    with session() as api:
        return show_logs(api, name, lines, ps, follow)


@cli.command("scale")
@click.argument("updates", nargs=-1, metavar="TYPE=QUANTITY[:SIZE]...")
@app_option
@json_option
@click.option("--constraint", "constraints", multiple=True, metavar="LABEL=VALUE",
              help="Run these types only on hosts with this label (repeatable).")
def scale(updates: tuple[str, ...], app: str | None, as_json: bool,
          constraints: tuple[str, ...]) -> None:
    """Scale process types: `paas scale web=2 worker=1`, `web=2:512M`, `web=1G`,
    `web=3 --constraint region=eu`."""
    parsed = parse_scale(updates)
    labels = parse_labels(constraints)
    name = resolve_app(app)
    body = [u.as_api() for u in parsed]
    if labels:
        for item in body:
            item["constraints"] = labels
    with session() as api:
        formation = api.patch(f"/apps/{segment(name)}/formation", {"updates": body})
    if as_json:
        output.say(dumps(formation))
        return
    output.say(f"Scaled {name}: {_formation_summary(formation)}")


@cli.command("ps:constraints")
@click.argument("ptype", metavar="TYPE")
@click.argument("pairs", nargs=-1, metavar="[LABEL=VALUE]...")
@click.option("--clear", is_flag=True, help="Run the type on any host again.")
@app_option
@json_option
def ps_constraints(ptype: str, pairs: tuple[str, ...], clear: bool, app: str | None,
                   as_json: bool) -> None:
    """Run a process type only on hosts with these labels: `paas ps:constraints web region=eu`."""
    if clear == bool(pairs):
        raise UsageError("Give LABEL=VALUE pairs, or --clear to remove the constraints.")
    labels = {} if clear else parse_labels(pairs)
    name = resolve_app(app)
    with session() as api:
        formation = api.patch(f"/apps/{segment(name)}/formation",
                              {"updates": [{"type": ptype, "constraints": labels}]})
    if as_json:
        output.say(dumps(formation))
        return
    shown = " ".join(f"{k}={v}" for k, v in labels.items())
    output.say(f"{name} {ptype} now runs on " + (f"hosts labelled {shown}." if shown else "any host."))


@cli.command("ps:readiness")
@click.argument("ptype", metavar="TYPE")
@click.argument("path", required=False)
@click.option("--tcp", is_flag=True, help="Back to the default: a TCP connect to $PORT.")
@click.option("--timeout", type=click.IntRange(1, 3600), metavar="SECONDS",
              help="How long a new container has to get ready (default: the platform's, 60 s).")
@app_option
@json_option
def ps_readiness(ptype: str, path: str | None, tcp: bool, timeout: int | None, app: str | None,
                 as_json: bool) -> None:
    """Set how a new container shows it is ready: `paas ps:readiness web /healthz` (an HTTP GET
    answered 2xx or 3xx), `--tcp`, and `--timeout SECONDS`."""
    if path is not None and tcp:
        raise UsageError("Give a PATH or --tcp, not both.")
    if path is None and not tcp and timeout is None:
        raise UsageError("Give a PATH (like /healthz), --tcp, or --timeout SECONDS.")
    update: dict[str, Any] = {"type": ptype}
    if path is not None or tcp:
        update["readiness_path"] = path or ""
    if timeout is not None:
        update["boot_timeout_s"] = timeout
    name = resolve_app(app)
    with session() as api:
        formation = api.patch(f"/apps/{segment(name)}/formation", {"updates": [update]})
    if as_json:
        output.say(dumps(formation))
        return
    row = next((r for r in formation if isinstance(r, dict) and r.get("type") == ptype), {})
    output.say(f"{name} {ptype} is ready on: {_readiness(row)} (from its next container on).")


# --- releases --------------------------------------------------------------------------------


@cli.command("releases")
@app_option
@json_option
def releases(app: str | None, as_json: bool) -> None:
    """List an app's releases, newest first."""
    name = resolve_app(app)
    with session() as api:
        items = api.get(f"/apps/{segment(name)}/releases")
    if as_json:
        output.say(dumps(items))
        return
    output.print_table(
        items,
        [("name", "RELEASE"), ("description", "DESCRIPTION"), ("created_by", "BY"),
         ("created_at", "CREATED"), ("status", "STATUS"), ("status_reason", "REASON")],
        empty=f"{name} has no releases.",
        formatters={"created_at": output.when},
    )


@cli.command("releases:info")
@click.argument("version")
@app_option
@json_option
def releases_info(version: str, app: str | None, as_json: bool) -> None:
    """Show one release (`v3` or `3`)."""
    number = parse_version(version)
    name = resolve_app(app)
    with session() as api:
        release = api.get(f"/apps/{segment(name)}/releases/{number}")
    if as_json:
        output.say(dumps(release))
        return
    reason = output.text(release.get("status_reason"))
    output.print_pairs([
        ("Release", output.release_name(release)),
        ("Description", output.text(release.get("description"))),
        ("Build", output.text(release.get("build")) or "none"),
        ("Commit", output.text(release.get("commit")) or "none"),
        ("Config keys", output.text(release.get("config_keys"))),
        ("By", output.text(release.get("created_by"))),
        ("Created", output.when(release.get("created_at"))),
        ("Status", output.text(release.get("status"))),
        *([("Reason", reason)] if reason else []),
    ])
    log = output.text(release.get("status_log"))
    if log:
        output.say("Last output:")
        for line in log.splitlines():
            output.say(f"  {line}")


@cli.command("rollback")
@click.argument("version", required=False)
@app_option
@json_option
def rollback(version: str | None, app: str | None, as_json: bool) -> None:
    """Roll back to a release (default: the one before the current); makes a new release."""
    body: dict[str, Any] = {}
    if version is not None:
        body["version"] = parse_version(version)
    name = resolve_app(app)
    with session() as api:
        release = api.post(f"/apps/{segment(name)}/releases/rollback", body)
    if as_json:
        output.say(dumps(release))
        return
    if "version" in body:
        target = f"v{body['version']}"
    else:
        # The API names the release it went back to in the new release's description.
        found = re.search(r"\bv\d+\b", output.text(release.get("description")))
        target = found.group(0) if found else "the previous release"
    output.say(f"Rolled back {name} to {target}: released {output.release_name(release)}.")


# --- domains ---------------------------------------------------------------------------------


@cli.command("domains")
@app_option
@json_option
def domains(app: str | None, as_json: bool) -> None:
    """List an app's custom domains."""
    name = resolve_app(app)
    with session() as api:
        items = api.get(f"/apps/{segment(name)}/domains")
    if as_json:
        output.say(dumps(items))
        return
    output.print_table(
        items, [("hostname", "HOSTNAME"), ("created_at", "ADDED"), ("certificate", "HTTPS")],
        empty=f"{name} has no custom domains.",
        formatters={"created_at": output.when, "certificate": _https},
    )


def _https(certificate: Any) -> str:
    """A domain's certificate in one cell: until when, or how to add one."""
    if not isinstance(certificate, dict):
        return "no certificate (paas certs:add)"
    days = _days_left(certificate.get("not_after"))
    if days == "expired":
        return f"expired {output.when(certificate.get('not_after'))[:10]}"
    return f"until {output.when(certificate.get('not_after'))[:10]} ({days} days)"


@cli.command("domains:add")
@click.argument("hostname")
@app_option
@json_option
def domains_add(hostname: str, app: str | None, as_json: bool) -> None:
    """Add a custom domain to an app."""
    name = resolve_app(app)
    with session() as api:
        domain = api.post(f"/apps/{segment(name)}/domains", {"hostname": hostname})
    if as_json:
        output.say(dumps(domain))
        return
    output.say(f"Added {domain.get('hostname', hostname)} to {name}.")


@cli.command("domains:remove")
@click.argument("hostname")
@app_option
def domains_remove(hostname: str, app: str | None) -> None:
    """Remove a custom domain from an app."""
    name = resolve_app(app)
    with session() as api:
        api.delete(f"/apps/{segment(name)}/domains/{segment(hostname)}")
    output.say(f"Removed {hostname} from {name}.")


# --- certificates ----------------------------------------------------------------------------

CERT_FILE_MAX = 64 * 1024


def _read_pem(path: str, what: str) -> str:
    """A PEM file's text, or a UsageError that says what is wrong with the file."""
    try:
        with open(path, "rb") as handle:
            raw = handle.read(CERT_FILE_MAX + 1)
    except OSError as exc:
        raise UsageError(f"Cannot read the {what} file {path}: {exc.strerror or exc}.") from None
    if len(raw) > CERT_FILE_MAX:
        raise UsageError(f"The {what} file {path} is larger than {CERT_FILE_MAX // 1024} KiB: "
                         "is it the right file?")
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError:
        raise UsageError(f"The {what} file {path} is not PEM text (DER? convert it with "
                         "`openssl x509 -inform der` or `openssl pkey -inform der`).") from None
    if not text.strip():
        raise UsageError(f"The {what} file {path} is empty.")
    return text


def _days_left(not_after: Any) -> str:
    try:
        end = datetime.datetime.fromisoformat(str(not_after))
    except ValueError:
        return ""
    days = (end - datetime.datetime.now(datetime.UTC)) // datetime.timedelta(days=1)
    return "expired" if days < 0 else str(days)


@cli.command("certs")
@app_option
@json_option
def certs(app: str | None, as_json: bool) -> None:
    """List the TLS certificates of an app's custom domains."""
    name = resolve_app(app)
    with session() as api:
        domains = api.get(f"/apps/{segment(name)}/domains")
    rows = [dict(d["certificate"], hostname=d.get("hostname")) for d in domains
            if isinstance(d, dict) and isinstance(d.get("certificate"), dict)]
    if as_json:
        output.say(dumps(rows))
        return
    for row in rows:
        row["days_left"] = _days_left(row.get("not_after"))
    output.print_table(
        rows, [("hostname", "HOSTNAME"), ("names", "NAMES"), ("not_after", "EXPIRES"),
               ("days_left", "DAYS LEFT")],
        empty=f"{name} has no certificates: add one with `paas certs:add HOSTNAME CHAIN.pem KEY.pem`.",
        formatters={"not_after": output.when},
    )


@cli.command("certs:add")
@click.argument("hostname")
@click.argument("chain_file", metavar="CHAIN.pem")
@click.argument("key_file", metavar="KEY.pem")
@app_option
@json_option
def certs_add(hostname: str, chain_file: str, key_file: str, app: str | None, as_json: bool) -> None:
    """Serve a custom domain over HTTPS with this certificate chain and key (adds or replaces)."""
    name = resolve_app(app)
    body = {"chain": _read_pem(chain_file, "certificate chain"),
            "key": _read_pem(key_file, "private key")}
    with session() as api:
        cert = api.request(
            "PUT", f"/apps/{segment(name)}/domains/{segment(hostname)}/certificate", body)
    if as_json:
        output.say(dumps(cert))
        return
    output.say(f"Certificate for {cert.get('hostname', hostname)} on {name}: "
               f"{output.text(cert.get('names'))}, expires {output.when(cert.get('not_after'))} "
               f"({_days_left(cert.get('not_after'))} days left).")


@cli.command("certs:info")
@click.argument("hostname")
@app_option
@json_option
def certs_info(hostname: str, app: str | None, as_json: bool) -> None:
    """Show the certificate of one custom domain: names, issuer, validity, fingerprint."""
    name = resolve_app(app)
    with session() as api:
        cert = api.get(f"/apps/{segment(name)}/domains/{segment(hostname)}/certificate")
    if as_json:
        output.say(dumps(cert))
        return
    output.print_pairs([
        ("Hostname", output.text(cert.get("hostname"))),
        ("Names", output.text(cert.get("names"))),
        ("Subject", output.text(cert.get("subject"))),
        ("Issuer", output.text(cert.get("issuer"))),
        ("Valid from", output.when(cert.get("not_before"))),
        ("Expires", f"{output.when(cert.get('not_after'))} "
                    f"({_days_left(cert.get('not_after'))} days left)"),
        ("SHA-256", output.text(cert.get("fingerprint"))),
        ("Updated", output.when(cert.get("updated_at"))),
    ])


@cli.command("certs:remove")
@click.argument("hostname")
@app_option
def certs_remove(hostname: str, app: str | None) -> None:
    """Remove a custom domain's certificate (it is no longer served over HTTPS)."""
    name = resolve_app(app)
    with session() as api:
        api.delete(f"/apps/{segment(name)}/domains/{segment(hostname)}/certificate")
    output.say(f"Removed the certificate of {hostname} from {name}.")


# --- teams and members -----------------------------------------------------------------------


@cli.command("teams")
@json_option
def teams(as_json: bool) -> None:
    """List the teams you are in."""
    with session() as api:
        items = api.get("/teams")
    if as_json:
        output.say(dumps(items))
        return
    output.print_table(
        items, [("name", "TEAM"), ("role", "YOUR ROLE"), ("created_at", "CREATED")],
        empty="You are in no team.", formatters={"created_at": output.when},
    )


@cli.command("teams:create")
@click.argument("name")
@json_option
def teams_create(name: str, as_json: bool) -> None:
    """Create a team; you become its owner."""
    with session() as api:
        team = api.post("/teams", {"name": name})
    if as_json:
        output.say(dumps(team))
        return
    output.say(f"Created team {team.get('name', name)}; you are its owner.")


@cli.command("members")
@team_option
@json_option
def members(team: str | None, as_json: bool) -> None:
    """List a team's members."""
    with session() as api:
        team = team or _personal_team(api)
        items = api.get(f"/teams/{segment(team)}/members")
    if as_json:
        output.say(dumps(items))
        return
    output.print_table(
        items, [("username", "USER"), ("email", "EMAIL"), ("role", "ROLE")],
        empty=f"{team} has no members.",
    )


@cli.command("members:add")
@click.argument("user")
@team_option
@click.option("--role", type=click.Choice(ROLES), default="member", show_default=True)
@json_option
def members_add(user: str, team: str | None, role: str, as_json: bool) -> None:
    """Add a user (by user name or email) to a team."""
    with session() as api:
        team = team or _personal_team(api)
        key = "email" if "@" in user else "username"
        member = api.post(f"/teams/{segment(team)}/members", {key: user, "role": role})
    if as_json:
        output.say(dumps(member))
        return
    output.say(f"Added {member.get('username', user)} to {team} as {member.get('role', role)}.")


@cli.command("members:remove")
@click.argument("username")
@team_option
def members_remove(username: str, team: str | None) -> None:
    """Remove a member from a team."""
    with session() as api:
        team = team or _personal_team(api)
        api.delete(f"/teams/{segment(team)}/members/{segment(username)}")
    output.say(f"Removed {username} from {team}.")


@cli.command("members:set-role")
@click.argument("username")
@click.argument("role", type=click.Choice(ROLES))
@team_option
@json_option
def members_set_role(username: str, role: str, team: str | None, as_json: bool) -> None:
    """Change a member's role."""
    with session() as api:
        team = team or _personal_team(api)
        member = api.patch(f"/teams/{segment(team)}/members/{segment(username)}", {"role": role})
    if as_json:
        output.say(dumps(member))
        return
    output.say(f"{username} is now {member.get('role', role)} in {team}.")


# --- tokens ----------------------------------------------------------------------------------


@cli.command("tokens")
@json_option
def tokens(as_json: bool) -> None:
    """List your API tokens (never their secret part)."""
    with session() as api:
        items = api.get("/tokens")
    if as_json:
        output.say(dumps(items))
        return
    output.print_table(
        items,
        [("id", "ID"), ("prefix", "PREFIX"), ("description", "DESCRIPTION"),
         ("created_at", "CREATED"), ("last_used_at", "LAST USED")],
        empty="You have no tokens.",
        formatters={"created_at": output.when, "last_used_at": output.when},
    )


@cli.command("tokens:create")
@click.option("-d", "--description", default="", help="What the token is for.")
@json_option
def tokens_create(description: str, as_json: bool) -> None:
    """Create an API token; it is shown this once only."""
    with session() as api:
        token = api.post("/tokens", {"description": description})
    if as_json:
        output.say(dumps(token))
        return
    output.error("Here is the new token; it is shown this once only:")
    click.echo(token["token"])


@cli.command("tokens:revoke")
@click.argument("token_id", metavar="ID")
def tokens_revoke(token_id: str) -> None:
    """Revoke an API token by its id (see `paas tokens`)."""
    with session() as api:
        api.delete(f"/tokens/{segment(token_id)}")
    output.say(f"Revoked token {token_id}.")


# --- hosts -----------------------------------------------------------------------------------


@cli.command("hosts")
@json_option
def hosts(as_json: bool) -> None:
    """List the platform's hosts."""
    with session() as api:
        items = api.get("/hosts")
    if as_json:
        output.say(dumps(items))
        return
    output.print_table(
        items,
        [("name", "HOST"), ("address", "ADDRESS"), ("state", "STATE"),
         ("capacity", "CAPACITY"), ("usage", "USAGE"), ("last_heartbeat_at", "LAST HEARTBEAT"),
         ("labels", "LABELS")],
        empty="No hosts are registered.",
        formatters={"last_heartbeat_at": output.when},
    )


@cli.command("hosts:label")
@click.argument("name")
@click.argument("pairs", nargs=-1, required=True, metavar="LABEL=VALUE|LABEL-...")
@json_option
def hosts_label(name: str, pairs: tuple[str, ...], as_json: bool) -> None:
    """Set (`region=eu`) or remove (`region-`) labels of a host (staff only)."""
    labels = parse_labels(pairs, removals=True)
    with session() as api:
        host = api.patch(f"/hosts/{segment(name)}", {"labels": labels})
    if as_json:
        output.say(dumps(host))
        return
    output.say(f"{name} labels: {output.text(host.get('labels')) or 'none'}.")


@cli.command("hosts:drain")
@click.argument("name")
@json_option
def hosts_drain(name: str, as_json: bool) -> None:
    """Drain a host: no new containers; its containers move elsewhere (staff only)."""
    with session() as api:
        host = api.post(f"/hosts/{segment(name)}/drain")
    if as_json:
        output.say(dumps(host))
        return
    output.say(f"Draining {name}: now {output.text(host.get('state'))}.")


# ---------------------------------------------------------------------------------------------


def main(argv: list[str] | None = None) -> int:
    """Run the CLI; every failure becomes one line on stderr and a non-zero exit status."""
    try:
        result = cli.main(args=argv, prog_name="paas", standalone_mode=False)
    except ApiError as exc:
        first, *details = exc.lines()
        output.error(f"paas: {first}")
        for line in details:
            output.error(line)
        if exc.status == 401:
            output.error("paas: log in again with `paas login`.")
        return 1
    except (UsageError, CredentialsError) as exc:
        output.error(f"paas: {exc}")
        return 1
    except click.exceptions.ClickException as exc:
        exc.show()
        return exc.exit_code
    except click.exceptions.Abort:
        output.error("paas: aborted.")
        return 1
    except click.exceptions.Exit as exc:
        return exc.exit_code
    except KeyboardInterrupt:
        output.error("paas: interrupted.")
        return 130
    except BrokenPipeError:
        # `paas apps | head -1`: the reader went away; that is not an error.
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        return 0
    except Exception as exc:  # the last line of defence: no traceback reaches a user
        output.error(f"paas: unexpected error: {type(exc).__name__}: {exc}")
        return 1
    return result if isinstance(result, int) else 0
