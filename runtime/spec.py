"""The container spec: what the control plane asks an agent to run, strictly validated.

`ContainerSpec.from_dict` is the single gate between untrusted JSON and the runtime: it refuses
unknown fields, wrong types and out-of-range values with a `SpecError` that names the field, so a
bad spec never reaches a syscall. `to_dict` is its inverse (`from_dict(to_dict(s)) == s`).
"""

from __future__ import annotations

import math
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, Literal

ID_RE = re.compile(r"^[a-z0-9][a-z0-9_.-]{0,62}$")
APP_RE = re.compile(r"^[a-z][a-z0-9-]{0,62}$")
PROCESS_TYPE_RE = re.compile(r"^[a-z][a-z0-9_-]{0,31}$")
ENV_NAME_RE = re.compile(r"^[A-Za-z_][A-Za-z0-9_]{0,255}$")
LABEL_KEY_RE = re.compile(r"^[a-z0-9][a-z0-9._/-]{0,127}$")
IMAGE_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._/:@+-]{0,511}$")

MAX_COMMAND_ARGS = 1024
MAX_ARG_BYTES = 128 * 1024
MAX_ENV_VARS = 1024
MAX_ENV_VALUE_BYTES = 128 * 1024
MAX_LABELS = 64
MAX_LABEL_VALUE = 256

MEMORY_MB_RANGE = (4, 1024 * 1024)
CPU_SHARES_RANGE = (2, 262144)
CPU_QUOTA_RANGE = (0.01, 1024.0)
PIDS_LIMIT_RANGE = (1, 1 << 22)
PORT_RANGE = (1, 65535)
READINESS_TIMEOUT_RANGE = (0.1, 3600.0)
MAX_MOUNTS = 16
MAX_MOUNT_PATH = 1024
# Mount targets never go over the file systems the init sets up itself, nor over the root.
RESERVED_TARGETS = ("/proc", "/sys", "/dev")


class SpecError(ValueError):
    """A container spec that cannot be run; the message names the field and the reason."""


@dataclass(frozen=True)
class Readiness:
    """How to tell that a container is ready: a TCP connect to $PORT or an HTTP GET."""

    type: Literal["tcp", "http"] = "tcp"
    path: str = "/"
    timeout_s: float = 60.0

    @classmethod
    def from_dict(cls, d: object) -> Readiness:
        m = _mapping(d, "readiness")
        _refuse_unknown(m, {"type", "path", "timeout_s"}, "readiness")
        kind = m.get("type", "tcp")
        if kind not in ("tcp", "http"):
            raise SpecError(f"readiness.type: must be 'tcp' or 'http', not {kind!r}")
        path = _str(m.get("path", "/"), "readiness.path")
        if not path.startswith("/") or len(path) > 2048 or any(c.isspace() for c in path):
            raise SpecError("readiness.path: must be an absolute URL path without spaces")
        timeout = _number(m.get("timeout_s", 60.0), "readiness.timeout_s", READINESS_TIMEOUT_RANGE)
        return cls(type=kind, path=path, timeout_s=timeout)

    def to_dict(self) -> dict[str, Any]:
        return {"type": self.type, "path": self.path, "timeout_s": self.timeout_s}


@dataclass(frozen=True)
class Network:
    """The container's network: `bridge` (a veth on the host bridge) or `none` (loopback only).

    `egress`: `open` (anywhere the host's network leads) or `build` (the build containers'
    policy: public addresses on TCP 80/443, the resolvers, what the host allows; see
    `runtime.egress`).
    """

    mode: Literal["bridge", "none"] = "bridge"
    nat: bool = True
    egress: Literal["open", "build"] = "open"

    @classmethod
    def from_dict(cls, d: object) -> Network:
        m = _mapping(d, "network")
        _refuse_unknown(m, {"mode", "nat", "egress"}, "network")
        mode = m.get("mode", "bridge")
        if mode not in ("bridge", "none"):
            raise SpecError(f"network.mode: must be 'bridge' or 'none', not {mode!r}")
        nat = m.get("nat", True)
        if not isinstance(nat, bool):
            raise SpecError("network.nat: must be true or false")
        egress = m.get("egress", "open")
        if egress not in ("open", "build"):
            raise SpecError(f"network.egress: must be 'open' or 'build', not {egress!r}")
        return cls(mode=mode, nat=nat, egress=egress)

    def to_dict(self) -> dict[str, Any]:
        d: dict[str, Any] = {"mode": self.mode, "nat": self.nat}
        if self.egress != "open":
            d["egress"] = self.egress
        return d


@dataclass(frozen=True)
class Mount:
    """A host directory bound into the container at `target` (nosuid, nodev; read-only if asked).

    Only the host's own builder asks for these, through the daemon's socket: specs that come
    from the control plane are parsed without `allow_mounts` and a `mounts` field is refused.
    """

    source: str
    target: str
    readonly: bool = True

    @classmethod
    def from_dict(cls, d: object, where: str) -> Mount:
        m = _mapping(d, where)
        _refuse_unknown(m, {"source", "target", "readonly"}, where)
        for key in ("source", "target"):
            if key not in m:
                raise SpecError(f"{where}: missing required field {key}")
        source = _clean_path(m["source"], f"{where}.source")
        target = _clean_path(m["target"], f"{where}.target")
        if target == "/" or any(target == r or target.startswith(r + "/") for r in RESERVED_TARGETS):
            raise SpecError(f"{where}.target: {target!r} is reserved for the container's own file systems")
        readonly = m.get("readonly", True)
        if not isinstance(readonly, bool):
            raise SpecError(f"{where}.readonly: must be true or false")
        return cls(source=source, target=target, readonly=readonly)

    def to_dict(self) -> dict[str, Any]:
        return {"source": self.source, "target": self.target, "readonly": self.readonly}


@dataclass(frozen=True)
class ContainerSpec:
    """One container of one process type of one release of an app."""

    id: str
    app: str
    release: int
    process_type: str
    image: str
    command: tuple[str, ...] = ()
    env: Mapping[str, str] = field(default_factory=dict)
    port: int | None = None
    memory_mb: int = 512
    cpu_shares: int = 1024
    cpu_quota: float | None = None
    pids_limit: int = 512
    labels: Mapping[str, str] = field(default_factory=dict)
    readiness: Readiness | None = None
    network: Network = field(default_factory=Network)
    mounts: tuple[Mount, ...] = ()

    FIELDS = frozenset(
        {
            "id", "app", "release", "process_type", "image", "command", "env", "port",
            "memory_mb", "cpu_shares", "cpu_quota", "pids_limit", "labels", "readiness",
            "network", "mounts",
        }
    )
    REQUIRED = frozenset({"id", "app", "release", "process_type", "image"})

    @classmethod
    def from_dict(cls, d: object, *, allow_mounts: bool = False) -> ContainerSpec:
        """Validate untrusted input and build a spec, or raise `SpecError`.

        Host bind mounts are refused unless `allow_mounts` (the daemon's own socket, which only
        root on this host reaches): a spec from the control plane never names host paths.
        """
        m = _mapping(d, "spec")
        _refuse_unknown(m, cls.FIELDS, "spec")
        if "mounts" in m and not allow_mounts:
            raise SpecError("mounts: host bind mounts are not allowed in this spec")
        missing = sorted(cls.REQUIRED - m.keys())
        if missing:
            raise SpecError(f"spec: missing required field(s): {', '.join(missing)}")
        cid = _matching(m["id"], "id", ID_RE, "lowercase letters, digits, '.', '_', '-'; 1-63")
        app = _matching(m["app"], "app", APP_RE, "a lowercase name starting with a letter")
        release = _int(m["release"], "release", (1, 1 << 31))
        ptype = _matching(
            m["process_type"], "process_type", PROCESS_TYPE_RE, "a lowercase process type name"
        )
        image = _matching(m["image"], "image", IMAGE_RE, "an image reference or digest")
        command = _command(m.get("command", []))
        env = _env(m.get("env", {}))
        port = m.get("port")
        if port is not None:
            port = _int(port, "port", PORT_RANGE)
        cpu_quota = m.get("cpu_quota")
        if cpu_quota is not None:
            cpu_quota = _number(cpu_quota, "cpu_quota", CPU_QUOTA_RANGE)
        readiness = m.get("readiness")
        return cls(
            id=cid,
            app=app,
            release=release,
            process_type=ptype,
            image=image,
            command=command,
            env=env,
            port=port,
            memory_mb=_int(m.get("memory_mb", 512), "memory_mb", MEMORY_MB_RANGE),
            cpu_shares=_int(m.get("cpu_shares", 1024), "cpu_shares", CPU_SHARES_RANGE),
            cpu_quota=cpu_quota,
            pids_limit=_int(m.get("pids_limit", 512), "pids_limit", PIDS_LIMIT_RANGE),
            labels=_labels(m.get("labels", {})),
            readiness=None if readiness is None else Readiness.from_dict(readiness),
            network=Network.from_dict(m.get("network", {})),
            mounts=_mounts(m.get("mounts", [])),
        )

    def to_dict(self) -> dict[str, Any]:
        d = self._fields()
        if self.mounts:  # left out when empty, so a plain spec reads as it always has
            d["mounts"] = [mount.to_dict() for mount in self.mounts]
        return d

    def _fields(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "app": self.app,
            "release": self.release,
            "process_type": self.process_type,
            "image": self.image,
            "command": list(self.command),
            "env": dict(self.env),
            "port": self.port,
            "memory_mb": self.memory_mb,
            "cpu_shares": self.cpu_shares,
            "cpu_quota": self.cpu_quota,
            "pids_limit": self.pids_limit,
            "labels": dict(self.labels),
            "readiness": None if self.readiness is None else self.readiness.to_dict(),
            "network": self.network.to_dict(),
        }

    def __hash__(self) -> int:
        return hash(self.id)


def _mapping(d: object, where: str) -> Mapping[str, Any]:
    if not isinstance(d, Mapping):
        raise SpecError(f"{where}: must be an object, not {type(d).__name__}")
    for key in d:
        if not isinstance(key, str):
            raise SpecError(f"{where}: keys must be strings")
    return d


def _refuse_unknown(m: Mapping[str, Any], allowed: frozenset[str] | set[str], where: str) -> None:
    unknown = sorted(set(m) - set(allowed))
    if unknown:
        raise SpecError(f"{where}: unknown field(s): {', '.join(unknown)}")


def _str(v: object, name: str) -> str:
    if not isinstance(v, str):
        raise SpecError(f"{name}: must be a string, not {type(v).__name__}")
    if "\0" in v:
        raise SpecError(f"{name}: must not contain a NUL character")
    return v


def _matching(v: object, name: str, pattern: re.Pattern[str], what: str) -> str:
    s = _str(v, name)
    if not pattern.fullmatch(s):
        raise SpecError(f"{name}: {s[:80]!r} is not valid ({what})")
    return s


def _int(v: object, name: str, bounds: tuple[int, int]) -> int:
    if isinstance(v, bool) or not isinstance(v, int):
        raise SpecError(f"{name}: must be an integer, not {type(v).__name__}")
    lo, hi = bounds
    if not lo <= v <= hi:
        raise SpecError(f"{name}: {v} is out of range ({lo}..{hi})")
    return v


def _number(v: object, name: str, bounds: tuple[float, float]) -> float:
    if isinstance(v, bool) or not isinstance(v, int | float):
        raise SpecError(f"{name}: must be a number, not {type(v).__name__}")
    f = float(v)
    lo, hi = bounds
    if math.isnan(f) or not lo <= f <= hi:
        raise SpecError(f"{name}: {v} is out of range ({lo}..{hi})")
    return f


def _command(v: object) -> tuple[str, ...]:
    if not isinstance(v, list | tuple):
        raise SpecError("command: must be a list of strings")
    if len(v) > MAX_COMMAND_ARGS:
        raise SpecError(f"command: more than {MAX_COMMAND_ARGS} arguments")
    args = tuple(_str(a, f"command[{i}]") for i, a in enumerate(v))
    if sum(len(a.encode()) for a in args) > MAX_ARG_BYTES:
        raise SpecError(f"command: longer than {MAX_ARG_BYTES} bytes")
    if args and not args[0]:
        raise SpecError("command[0]: must not be empty")
    return args


def _env(v: object) -> dict[str, str]:
    m = _mapping(v, "env")
    if len(m) > MAX_ENV_VARS:
        raise SpecError(f"env: more than {MAX_ENV_VARS} variables")
    out: dict[str, str] = {}
    for key, value in m.items():
        if not ENV_NAME_RE.fullmatch(key):
            raise SpecError(f"env: {key[:80]!r} is not a valid variable name")
        s = _str(value, f"env.{key}")
        if len(s.encode()) > MAX_ENV_VALUE_BYTES:
            raise SpecError(f"env.{key}: longer than {MAX_ENV_VALUE_BYTES} bytes")
        out[key] = s
    return out


def _clean_path(v: object, name: str) -> str:
    s = _str(v, name)
    if not s.startswith("/") or len(s) > MAX_MOUNT_PATH:
        raise SpecError(f"{name}: must be an absolute path of at most {MAX_MOUNT_PATH} characters")
    parts = s.split("/")[1:]
    if s != "/" and any(p in ("", ".", "..") for p in parts):
        raise SpecError(f"{name}: {s[:80]!r} must be a clean path (no '..', '.', '//' or trailing '/')")
    # The init takes a mount as one "mode:source:target" argument.
    if ":" in s or any(c.isspace() or ord(c) < 32 for c in s):
        raise SpecError(f"{name}: {s[:80]!r} must not contain ':', spaces or control characters")
    return s


def _mounts(v: object) -> tuple[Mount, ...]:
    if not isinstance(v, list | tuple):
        raise SpecError("mounts: must be a list of {source, target, readonly} objects")
    if len(v) > MAX_MOUNTS:
        raise SpecError(f"mounts: more than {MAX_MOUNTS} mounts")
    mounts = tuple(Mount.from_dict(x, f"mounts[{i}]") for i, x in enumerate(v))
    targets = [mount.target for mount in mounts]
    if len(set(targets)) != len(targets):
        raise SpecError("mounts: two mounts share one target")
    return mounts


def _labels(v: object) -> dict[str, str]:
    m = _mapping(v, "labels")
    if len(m) > MAX_LABELS:
        raise SpecError(f"labels: more than {MAX_LABELS} labels")
    out: dict[str, str] = {}
    for key, value in m.items():
        if not LABEL_KEY_RE.fullmatch(key):
            raise SpecError(f"labels: {key[:80]!r} is not a valid label key")
        s = _str(value, f"labels.{key}")
        if len(s) > MAX_LABEL_VALUE:
            raise SpecError(f"labels.{key}: longer than {MAX_LABEL_VALUE} characters")
        out[key] = s
    return out
