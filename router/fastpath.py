"""Build and load the compiled fast path, or say why the router goes without.

`router/fastpath.c` (message parsing, log-line encoding) includes `router/fastconn.c` (the
connection cores). The extension is compiled with gcc at first use, once per version of its source and of the
Python ABI, into `PAAS_ROUTER_BUILD_DIR` (default: `_build/` next to this file, or a directory
under the system's temporary directory when that is not writable). A missing compiler or Python
headers only cost speed: `load()` logs one line and returns None, and the proxy keeps to its
general path, which handles every request on its own.
"""

from __future__ import annotations

import hashlib
import importlib.machinery
import importlib.util
import logging
import os
import shutil
import stat
import subprocess
import sysconfig
import tempfile
from pathlib import Path
from typing import Any, Protocol, cast

from router.headers import hand_over_request_ids

log = logging.getLogger("router")
SOURCE = Path(__file__).with_name("fastpath.c")
# Sources the main one includes, looked for next to it (then next to this file).
INCLUDED = ("fastconn.c",)

# request(): method, target, host, request id, keep-alive, HTTP/1.1, head and body for the app,
# body length, start time (Unix seconds).
RequestParts = tuple[bytes, bytes, str, str, bool, bool, bytes, int, float]
# response(): status, head and body so far for the client, body bytes in it, body bytes still
# to come, whether the app keeps its connection open.
ResponseParts = tuple[int, bytes, int, int, bool]


class FastPath(Protocol):
    def request(self, data: bytes, ctx: tuple[Any, ...], /) -> RequestParts | None: ...

    def response(self, data: bytes, via: bytes, client_keep_alive: bool, /) -> ResponseParts | None: ...

    def access_lines(self, entries: list[tuple[float, Any]], /) -> str | None: ...

    def xadd_batch(self, key: bytes, entries: list[tuple[float, Any]], maxlen: int, /) -> bytes | None: ...

    def seed_request_ids(self, prefix: str, start: int, /) -> None: ...

    def new_request_id(self) -> str: ...


class BuildError(RuntimeError):
    """The extension could not be compiled."""


def build_dir() -> Path:
    configured = os.environ.get("PAAS_ROUTER_BUILD_DIR", "").strip()
    if configured:
        return Path(configured)
    here = Path(__file__).with_name("_build")
    try:
        here.mkdir(mode=0o755, exist_ok=True)
        if os.access(here, os.W_OK):
            return here
    except OSError:
        pass
    return Path(tempfile.gettempdir()) / f"paas-router-build-{os.getuid()}"


def check_private(directory: Path) -> None:
    """Refuse a build directory others could write to: the router loads code from it."""
    info = os.lstat(directory)
    if not stat.S_ISDIR(info.st_mode) or info.st_uid not in (os.getuid(), 0) or info.st_mode & 0o022:
        raise BuildError(f"{directory} must be a directory owned by this user and writable by no one else")


def compile_extension(target_dir: Path | None = None, source: Path = SOURCE) -> Path:
    """Return the compiled extension's path, compiling it first if this version is not built."""
    suffix = sysconfig.get_config_var("EXT_SUFFIX") or ".so"
    include = sysconfig.get_paths()["include"]
    parts = [source.read_bytes()]
    for name in INCLUDED:
        beside = source.with_name(name)
        parts.append((beside if beside.exists() else SOURCE.with_name(name)).read_bytes())
    digest = hashlib.sha256(b"".join(parts) + suffix.encode() + include.encode()).hexdigest()[:16]
    directory = target_dir or build_dir()
    directory.mkdir(mode=0o700, parents=True, exist_ok=True)
    check_private(directory)
    target = directory / f"_fastpath-{digest}{suffix}"
    if target.exists():
        return target
    gcc = shutil.which("gcc") or shutil.which("cc")
    if gcc is None:
        raise BuildError("no C compiler (Debian package gcc)")
    if not (Path(include) / "Python.h").exists():
        raise BuildError(f"no Python headers in {include} (Debian package python3-dev)")
    tmp = target.with_name(f".{target.name}.{os.getpid()}")
    cmd = [gcc, "-shared", "-fPIC", "-O2", "-Wall", f"-I{include}", f"-I{source.parent}", f"-I{SOURCE.parent}",
           "-o", str(tmp), str(source), "-lm"]
    proc = subprocess.run(cmd, capture_output=True, text=True, check=False)
    if proc.returncode != 0:
        tmp.unlink(missing_ok=True)
        raise BuildError(f"gcc failed: {proc.stderr.strip()[:2000]}")
    os.replace(tmp, target)
    return target


def import_extension(path: Path) -> FastPath:
    loader = importlib.machinery.ExtensionFileLoader("_fastpath", str(path))
    spec = importlib.util.spec_from_file_location("_fastpath", str(path), loader=loader)
    if spec is None:
        raise BuildError(f"cannot load {path}")
    module = importlib.util.module_from_spec(spec)
    loader.exec_module(module)
    return cast(FastPath, module)


_loaded: dict[str, FastPath | None] = {}


def load() -> FastPath | None:
    """The fast path, or None (with one log line) when it cannot be built here."""
    if "module" in _loaded:
        return _loaded["module"]
    module: FastPath | None
    try:
        module = import_extension(compile_extension())
        hand_over_request_ids(module.seed_request_ids, module.new_request_id)
    except (BuildError, OSError, ImportError) as error:  # OSError: the directory, gcc itself
        log.warning('at=warning code=fast_path_unavailable desc="using the general path only: %s"', error)
        module = None
    _loaded["module"] = module
    return module
