"""The container plan: a pure function from spec, image and paths to what the init is told.

Nothing here touches the host; `runtime.daemon` applies the plan (cgroups, upper dir, spawn).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from runtime.spec import ContainerSpec

DEFAULT_UID = 1000
DEFAULT_GID = 1000
DEFAULT_PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"


class PlanError(ValueError):
    """The spec and the image together cannot make a container; the message says why."""


@dataclass(frozen=True)
class Paths:
    """Where one container's state lives on the host."""

    dir: Path

    @property
    def state(self) -> Path:
        return self.dir / "state.json"

    @property
    def rootfs(self) -> Path:
        return self.dir / "rootfs"

    @property
    def upper(self) -> Path:
        return self.dir / "upper"

    @property
    def work(self) -> Path:
        return self.dir / "work"

    @property
    def log(self) -> Path:
        return self.dir / "container.log"

    @property
    def exit(self) -> Path:
        return self.dir / "exit"

    @property
    def init_err(self) -> Path:
        return self.dir / "init.err"


@dataclass(frozen=True)
class Plan:
    """Everything the init needs to start one container."""

    argv: tuple[str, ...]
    env: Mapping[str, str]
    uid: int
    gid: int
    cwd: str
    hostname: str

    def init_args(
        self,
        init: Path,
        paths: Paths,
        layers: Sequence[Path],
        cgroup_procs: Sequence[Path],
        log_max_bytes: int,
        wait_for_go: bool = True,
        net_args: Sequence[str] = (),
    ) -> list[str]:
        """Return the argv of `paas-init run` for this plan."""
        args = [
            str(init), "run",
            "--root", str(paths.rootfs),
            "--upper", str(paths.upper),
            "--work", str(paths.work),
            "--state", str(paths.dir),
            "--hostname", self.hostname,
            "--uid", str(self.uid),
            "--gid", str(self.gid),
            "--cwd", self.cwd,
            "--log-max", str(log_max_bytes),
            "--wait", "go" if wait_for_go else "none",
            *net_args,
        ]
        for layer in layers:
            args += ["--lower", str(layer)]
        for procs in cgroup_procs:
            args += ["--cgroup", str(procs)]
        return [*args, "--", *self.argv]


def image_settings(image_config: Mapping[str, Any]) -> Mapping[str, Any]:
    """Return the `config` part of an OCI image config, or the mapping itself if it is that part."""
    inner = image_config.get("config")
    return inner if isinstance(inner, Mapping) else image_config


def plan(
    spec: ContainerSpec,
    image_config: Mapping[str, Any],
    passwd: Mapping[str, tuple[int, int]] | None = None,
) -> Plan:
    """Plan a container: command, environment, user, working directory and hostname.

    The spec's command replaces the image's entrypoint and command; without one the image's
    `Entrypoint + Cmd` runs. The spec's environment overrides the image's; `PORT` is set when the
    spec has a port. The image's `User` (numeric, or a name found in `passwd`) is used unless it
    is root: apps never run as root.
    """
    cfg = image_settings(image_config)
    argv = tuple(spec.command) or tuple(_strings(cfg.get("Entrypoint"))) + tuple(
        _strings(cfg.get("Cmd"))
    )
    if not argv:
        raise PlanError("nothing to run: the spec has no command and the image none either")
    env: dict[str, str] = {}
    for item in _strings(cfg.get("Env")):
        key, sep, value = item.partition("=")
        if sep and key:
            env[key] = value
    env.setdefault("PATH", DEFAULT_PATH)
    env.update(spec.env)
    if spec.port is not None:
        env["PORT"] = str(spec.port)
    env["HOSTNAME"] = spec.id
    cwd = str(cfg.get("WorkingDir") or "/")
    if not cwd.startswith("/") or ".." in cwd.split("/"):
        raise PlanError(f"the image's working directory {cwd!r} is not a clean absolute path")
    uid, gid = _user(str(cfg.get("User") or ""), passwd or {})
    env.setdefault("HOME", "/app" if cwd == "/app" else "/tmp")
    return Plan(argv=argv, env=env, uid=uid, gid=gid, cwd=cwd, hostname=spec.id[:63])


def _strings(v: object) -> list[str]:
    if v is None:
        return []
    if not isinstance(v, list) or not all(isinstance(s, str) for s in v):
        raise PlanError(f"the image config has {v!r} where a list of strings belongs")
    return list(v)


def _user(user: str, passwd: Mapping[str, tuple[int, int]]) -> tuple[int, int]:
    if not user:
        return DEFAULT_UID, DEFAULT_GID
    name, _, group = user.partition(":")
    if name.isdigit():
        uid, gid = int(name), int(name)
    elif name in passwd:
        uid, gid = passwd[name]
    else:
        raise PlanError(f"the image's user {name!r} is not in its /etc/passwd")
    if group:
        if not group.isdigit():
            raise PlanError(f"the image's group {group!r} must be numeric")
        gid = int(group)
    if uid == 0 or gid == 0:
        raise PlanError("the image wants to run as root; apps run as an unprivileged user")
    return uid, gid


def read_passwd(layers: Sequence[Path]) -> dict[str, tuple[int, int]]:
    """Return name -> (uid, gid) from the topmost layer that has /etc/passwd."""
    for layer in reversed(layers):
        path = layer / "etc" / "passwd"
        if path.is_file() and not path.is_symlink():
            out: dict[str, tuple[int, int]] = {}
            for line in path.read_text(errors="replace").splitlines():
                parts = line.split(":")
                if len(parts) >= 4 and parts[2].isdigit() and parts[3].isdigit():
                    out[parts[0]] = (int(parts[2]), int(parts[3]))
            return out
    return {}
