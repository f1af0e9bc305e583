"""Run Heroku-style buildpacks (buildpack API v2) over an app's source.

For each buildpack, in order: `bin/detect BUILD_DIR` (exit 0 means "mine"; its first output
line names the kind of app), `bin/compile BUILD_DIR CACHE_DIR ENV_DIR` (config vars are files
in ENV_DIR, one per variable), then `bin/release BUILD_DIR` once the last one compiled (YAML
with `default_process_types` and `config_vars`). A buildpack may write an `export` file in its
own directory; the next buildpacks' commands run with it sourced. Every command goes through an
`Executor` (see builder.executor), and its output reaches the caller's `on_line` as it happens.

Which buildpacks run: the request's explicit list, else the `BUILDPACK_URL` config var, else
the app's `.buildpacks` file (one per line), else the first built-in buildpack whose detect
accepts the app. A buildpack is a built-in name, a git URL (`url#branch-or-tag` picks a ref)
or, when the request allows local buildpacks, a directory or a local repository path.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import os
import re
import shutil
import subprocess
import threading
import time
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import yaml

from builder.errors import BuildError, BuildTimeout
from builder.executor import BuildDirs, Executor, OnLine, StepTimeout
from builder.procfile import ProcessTypes, read_procfile, resolve_process_types
from builder.slug import SlugLayer, image_config, layer_cache_dir, pack_slug
from builder.source import (
    DEFAULT_MAX_FILE_BYTES,
    apply_slugignore,
    check_source,
    copy_source,
    tree_size,
)

BUILTIN_DIR = Path(__file__).resolve().parent / "buildpacks"
# Tried in this order when the app names no buildpack; each with what its detect looks for.
BUILTINS: dict[str, str] = {
    "nodejs": "package.json (Node.js)",
    "python": "requirements.txt, pyproject.toml, setup.py, Pipfile.lock or uv.lock (Python)",
    "static": "index.html (static site)",
    "procfile": "Procfile (any language on the stack)",
}
HOST_PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"
DEFAULT_STACK = "debian-12"
_APP_RE = re.compile(r"^[a-z][a-z0-9-]{1,29}$")
_VAR_RE = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")
_ENV_LINE_RE = re.compile(r"^([A-Za-z_][A-Za-z0-9_]*)=(.*)$")
_REMOTE_RE = re.compile(r"^(https?|git|ssh)://[^\s]+$|^[\w.-]+@[\w.-]+:[^\s]+$")
_WORK_ENTRIES = {"app", "env", "buildpacks", "home", "tmp", "slug.tar.gz"}
INDENT = "       "


@dataclass(frozen=True)
class BuildRequest:
    """Everything one build needs. `work_dir` must not exist yet; the build creates it."""

    app: str
    source_dir: Path
    work_dir: Path
    cache_dir: Path
    config: Mapping[str, str] = field(default_factory=dict)
    buildpacks: Sequence[str] = ()
    build_id: str = ""
    commit: str = ""
    stack: str = DEFAULT_STACK
    timeout: float = 15 * 60
    progress_interval: float = 20.0
    max_file_bytes: int = DEFAULT_MAX_FILE_BYTES
    max_slug_bytes: int = 500 * 1024**2
    allow_local_buildpacks: bool = False
    clear_cache: bool = False
    slug_uid: int = 0
    slug_gid: int = 0


@dataclass(frozen=True)
class Buildpack:
    """A buildpack ready to run: where it came from and its private copy for this build."""

    source: str
    name: str
    path: Path


@dataclass(frozen=True)
class BuildResult:
    """A finished build: the app directory, what it runs, and the packed slug."""

    app_dir: Path
    kinds: tuple[str, ...]
    buildpacks: tuple[str, ...]
    process_types: ProcessTypes
    config_vars: dict[str, str]
    exported_env: dict[str, str]
    slug: SlugLayer
    image_config: dict[str, Any]

    def summary(self) -> dict[str, Any]:
        """Return what the control plane records about the build, as JSON-ready values."""
        return {
            "kinds": list(self.kinds),
            "buildpacks": list(self.buildpacks),
            "process_types": dict(self.process_types.types),
            "release_command": self.process_types.release,
            "warnings": list(self.process_types.warnings),
            "config_vars": dict(self.config_vars),
            "slug": {
                "digest": self.slug.digest,
                "size": self.slug.size,
                "diff_id": self.slug.diff_id,
                "media_type": self.slug.media_type,
            },
        }


def redact_url(url: str) -> str:
    """The URL with any credentials in it replaced, fit to show in build output."""
    parts = urlsplit(url)
    if parts.username is None and parts.password is None:
        return url
    host = parts.hostname or ""
    netloc = f"***@{host}" + (f":{parts.port}" if parts.port else "")
    return urlunsplit(parts._replace(netloc=netloc))


def default_cache_dir(app: str, data_dir: Path) -> Path:
    """Return where the build cache of `app` lives: `<data dir>/cache/<app>`."""
    _check_app_name(app)
    return data_dir / "cache" / app


def build(request: BuildRequest, executor: Executor, on_line: OnLine) -> BuildResult:
    """Build `request.source_dir` into an app directory and a slug layer.

    Raise BuildError (or a subclass) with a message for the user when the build fails.
    """
    try:
        return _Build(request, executor, on_line).run()
    except OSError as e:
        # Disk full, a permission the builder lacks, ...: the builder's trouble, said plainly.
        where = f" ({e.filename})" if e.filename else ""
        raise BuildError(f"The builder could not go on: {e.strerror or e}{where}.") from e


class _Output:
    """Serialise output from the step and the progress ticker; remember when it last spoke."""

    def __init__(self, on_line: OnLine) -> None:
        self._on_line = on_line
        self._lock = threading.Lock()
        self.last = time.monotonic()

    def __call__(self, line: str) -> None:
        with self._lock:
            self.last = time.monotonic()
            self._on_line(line)

    @contextlib.contextmanager
    def ticking(self, what: str, interval: float) -> Iterator[None]:
        """While the block runs, say every `interval` silent seconds that `what` goes on."""
        done = threading.Event()
        started = time.monotonic()

        def tick() -> None:
            while not done.wait(min(interval, 1.0)):
                if time.monotonic() - self.last >= interval:
                    self(f"{INDENT}... still running {what} ({time.monotonic() - started:.0f} s)")

        thread = threading.Thread(target=tick, name="build-progress", daemon=True)
        thread.start()
        try:
            yield
        finally:
            done.set()
            thread.join()


class _Build:
    def __init__(self, request: BuildRequest, executor: Executor, on_line: OnLine) -> None:
        self.req = request
        self.executor = executor
        self.out = _Output(on_line)
        self.deadline = time.monotonic() + request.timeout
        work = request.work_dir
        self.app_dir = work / "app"
        self.env_dir = work / "env"
        self.bp_dir = work / "buildpacks"
        self.home = work / "home"
        self.tmp = work / "tmp"

    # -- the steps ---------------------------------------------------------------------------

    def run(self) -> BuildResult:
        req = self.req
        _check_app_name(req.app)
        for name in req.config:
            if not _VAR_RE.match(name):
                raise BuildError(f"config var name {name!r} is not a valid environment variable name")
        if not req.source_dir.is_dir():
            raise BuildError(f"the source directory {req.source_dir} does not exist")
        check_source(req.source_dir, req.max_file_bytes)
        try:
            req.work_dir.mkdir(parents=True)
        except FileExistsError:
            raise BuildError(f"the build directory {req.work_dir} already exists") from None
        try:
            copy_source(req.source_dir, self.app_dir)
        except (OSError, shutil.Error) as e:
            raise BuildError(f"cannot copy the source into the build directory: {e}") from None
        for d in (self.env_dir, self.bp_dir, self.home, self.tmp):
            d.mkdir()
        for name, value in req.config.items():
            (self.env_dir / name).write_text(value)
        req.cache_dir.mkdir(parents=True, exist_ok=True)
        with _locked(req.cache_dir):
            if req.clear_cache:
                self.out("-----> Clearing the build cache")
                for entry in req.cache_dir.iterdir():
                    if entry.name == ".lock":
                        continue
                    if entry.is_dir() and not entry.is_symlink():
                        shutil.rmtree(entry)
                    else:
                        entry.unlink()
            owner = self.executor.owner
            if owner is not None:
                # The steps' user writes the app, its cache, HOME, TMPDIR and the buildpacks'
                # copies (for `export`); ENV_DIR and the work dir itself stay the builder's.
                for path in (self.app_dir, req.cache_dir, self.home, self.tmp, self.bp_dir):
                    _chown_tree(path, owner)
                self.env_dir.chmod(0o755)
            dirs = BuildDirs(
                work=req.work_dir, app=self.app_dir, cache=req.cache_dir, env=self.env_dir,
                buildpacks=self.bp_dir, home=self.home, tmp=self.tmp,
            )
            self.executor.prepare(dirs, self._left())
            try:
                return self._run_locked()
            finally:
                self.executor.close()

    def _run_locked(self) -> BuildResult:
        req = self.req
        removed = apply_slugignore(self.app_dir)
        if removed:
            count = f"{len(removed)} path" + ("" if len(removed) == 1 else "s")
            self.out(f"-----> Removing what .slugignore lists ({count})")
        specs = self._buildpack_specs()
        if specs:
            packs = [self._fetch(i, spec) for i, spec in enumerate(specs)]
            kinds = []
            for bp in packs:
                kind = self._detect(bp)
                if kind is None:
                    raise BuildError(f"The buildpack {bp.source} does not accept this app (its bin/detect failed).")
                kinds.append(kind)
        else:
            bp, kind = self._auto_detect()
            packs, kinds = [bp], [kind]

        exports: list[Path] = []
        for bp, kind in zip(packs, kinds, strict=True):
            self.out(f"-----> {kind} app detected")
            self._compile(bp, exports)
            export = bp.path / "export"
            if export.is_file():
                exports.append(export)

        defaults, config_vars = self._release(packs[-1], exports)
        process_types = self._process_types(packs[-1], defaults)
        exported = self._exported_env(exports)

        self.out("-----> Compressing...")
        size = tree_size(self.app_dir)
        if size > req.max_slug_bytes:
            raise BuildError(
                f"The app is {size / 1024**2:.1f} MiB after the build, over the slug limit of "
                f"{req.max_slug_bytes / 1024**2:.0f} MiB."
            )
        slug = pack_slug(self.app_dir, req.work_dir / "slug.tar.gz", req.slug_uid, req.slug_gid,
                         layer_cache=layer_cache_dir(req.cache_dir))
        self.out(f"{INDENT}Done: {_human(slug.size)}")
        env = {**exported, **config_vars}
        config = image_config(
            slug=slug, process_types=process_types, env=env,
            app=req.app, build=req.build_id, commit=req.commit,
        )
        return BuildResult(
            app_dir=self.app_dir,
            kinds=tuple(kinds),
            buildpacks=tuple(bp.source for bp in packs),
            process_types=process_types,
            config_vars=config_vars,
            exported_env=exported,
            slug=slug,
            image_config=config,
        )

    def _buildpack_specs(self) -> list[str]:
        req = self.req
        if req.buildpacks:
            return list(req.buildpacks)
        url = req.config.get("BUILDPACK_URL", "").strip()
        if url:
            return [url]
        listing = self.app_dir / ".buildpacks"
        if listing.is_file() and not listing.is_symlink():
            specs = []
            for line in listing.read_text(errors="replace").splitlines():
                line = line.strip()
                if line and not line.startswith("#"):
                    specs.append(line)
            if not specs:
                raise BuildError(".buildpacks names no buildpack; list one per line or remove the file.")
            return specs
        return []

    def _auto_detect(self) -> tuple[Buildpack, str]:
        for i, name in enumerate(BUILTINS):
            bp = self._fetch(i, name)
            kind = self._detect(bp)
            if kind is not None:
                return bp, kind
        looked_for = "; ".join(BUILTINS.values())
        raise BuildError(
            "No buildpack detected this app. Looked for: " + looked_for + ". "
            "Add one of these files, or name a buildpack in .buildpacks or BUILDPACK_URL."
        )

    def _fetch(self, index: int, spec: str) -> Buildpack:
        bp = self._fetch_copy(index, spec)
        if self.executor.owner is not None:
            _chown_tree(bp.path, self.executor.owner)
        return bp

    def _fetch_copy(self, index: int, spec: str) -> Buildpack:
        dest = self.bp_dir / f"{index:02d}"
        if spec in BUILTINS:
            shutil.copytree(BUILTIN_DIR / spec, dest, symlinks=True)
            shutil.copytree(BUILTIN_DIR / "lib", dest / "lib", dirs_exist_ok=True)
            return Buildpack(source=spec, name=spec, path=dest)
        url, _, ref = spec.partition("#")
        if spec.startswith("-") or not url:
            raise BuildError(f"{spec!r} is not a buildpack name or URL")
        local = url.startswith("file://") or url.startswith("/")
        if local and not self.req.allow_local_buildpacks:
            raise BuildError(
                f"The buildpack {spec!r} is a local path; only built-in buildpacks "
                f"({', '.join(BUILTINS)}) and https, git or ssh URLs are allowed here."
            )
        if not local and not _REMOTE_RE.match(url):
            raise BuildError(
                f"Unknown buildpack {spec!r}: expected a built-in name ({', '.join(BUILTINS)}) "
                "or a git URL."
            )
        name = _name_from_url(url)
        plain_dir = Path(url)
        if url.startswith("/") and (plain_dir / "bin").is_dir():
            if ref:
                raise BuildError(f"The buildpack {spec!r} is a directory; it cannot take a #ref")
            shutil.copytree(plain_dir, dest, symlinks=True)
        else:
            self._clone(url, ref, dest)
        for script in ("detect", "compile"):
            path = dest / "bin" / script
            if not path.is_file():
                raise BuildError(f"The buildpack {spec!r} has no bin/{script}.")
            if not os.access(path, os.X_OK):
                raise BuildError(f"The buildpack {spec!r} has a bin/{script} that is not executable.")
        return Buildpack(source=spec, name=name, path=dest)

    def _clone(self, url: str, ref: str, dest: Path) -> None:
        shown = redact_url(url)
        self.out(f"-----> Fetching buildpack {shown}{'#' + ref if ref else ''}")
        protocols = "https:http:git:ssh" + (":file" if self.req.allow_local_buildpacks else "")
        env = {
            "PATH": HOST_PATH,
            "HOME": str(self.home),
            "GIT_TERMINAL_PROMPT": "0",
            "GIT_CONFIG_NOSYSTEM": "1",
            "GIT_ALLOW_PROTOCOL": protocols,
            "LANG": "C.UTF-8",
        }
        argv = ["git", "clone", "--quiet", "--depth", "1"]
        if url.startswith("/"):
            argv[-2:] = ["--no-hardlinks"]
        if ref:
            argv += ["--branch", ref]
        argv += ["--", url, str(dest)]
        try:
            proc = subprocess.run(
                argv, env=env, capture_output=True, text=True, timeout=self._left(), check=False
            )
        except subprocess.TimeoutExpired:
            raise BuildTimeout(f"Fetching the buildpack {shown} took longer than the build may.") from None
        if proc.returncode != 0:
            detail = " ".join(proc.stderr.strip().splitlines()[-2:]).replace(url, shown)
            raise BuildError(f"Cannot fetch the buildpack {shown}{'#' + ref if ref else ''}: {detail}")
        shutil.rmtree(dest / ".git", ignore_errors=True)

    def _detect(self, bp: Buildpack) -> str | None:
        lines: list[str] = []
        code = self._step(bp, "detect", [str(self.app_dir)], [], lines.append, tick=False)
        if code != 0:
            return None
        first = next((line.strip() for line in lines if line.strip()), "")
        return first[:60] or bp.name

    def _compile(self, bp: Buildpack, exports: list[Path]) -> None:
        before = self._snapshot(exclude=bp.path)
        args = [str(self.app_dir), str(self.req.cache_dir), str(self.env_dir)]
        code = self._step(bp, "compile", args, exports, self.out, tick=True)
        if code != 0:
            raise BuildError(f"Failed to compile the app: bin/compile of buildpack {bp.source} exited with {_exit(code)}.")
        after = self._snapshot(exclude=bp.path)
        if after != before:
            changed = sorted(set(after.items()) ^ set(before.items()))
            where = changed[0][0]
            raise BuildError(
                f"The buildpack {bp.source} wrote outside the app, cache and its own directory: {where}"
            )

    def _release(self, bp: Buildpack, exports: list[Path]) -> tuple[dict[str, str], dict[str, str]]:
        script = bp.path / "bin" / "release"
        if not script.exists():
            return {}, {}
        lines: list[str] = []
        code = self._step(bp, "release", [str(self.app_dir)], exports, lines.append, tick=False)
        if code != 0:
            raise BuildError(f"bin/release of buildpack {bp.source} exited with {_exit(code)}.")
        return parse_release("\n".join(lines), bp.source)

    def _process_types(self, bp: Buildpack, defaults: dict[str, str]) -> ProcessTypes:
        self.out("-----> Discovering process types")
        procfile = read_procfile(self.app_dir)
        types = resolve_process_types(procfile, defaults)
        if procfile:
            self.out(f"{INDENT}Procfile declares types -> {', '.join(procfile)}")
        extra = [t for t in defaults if not procfile or t not in procfile]
        if extra:
            self.out(f"{INDENT}Default types for buildpack -> {', '.join(extra)}")
        if types.release is not None:
            self.out(f"{INDENT}Release command -> {types.release}")
        for warning in types.warnings:
            self.out(f"{INDENT}Warning: {warning}")
        return types

    def _exported_env(self, exports: list[Path]) -> dict[str, str]:
        if not exports:
            return {}
        lines: list[str] = []
        # The environment as the step sees it, then after sourcing: where steps run may add
        # variables of its own, and only what the export files change counts.
        script = f"env; echo {_EXPORTS_MARK}; " + _SOURCE_EXPORTS + "exec env"
        argv = ["/bin/bash", "-c", script, "paas-step", *map(str, exports), "--"]
        code = self._run(argv, lines.append, "the export files", tick=False)
        if code != 0 or _EXPORTS_MARK not in lines:
            raise BuildError(f"Sourcing the buildpacks' export files failed with {_exit(code)}.")
        mark = lines.index(_EXPORTS_MARK)
        base: dict[str, str] = {}
        for line in lines[:mark]:
            m = _ENV_LINE_RE.match(line)
            if m:
                base[m.group(1)] = m.group(2)
        found: dict[str, str] = {}
        for line in lines[mark + 1:]:
            m = _ENV_LINE_RE.match(line)
            if m and base.get(m.group(1)) != m.group(2) and m.group(1) not in ("_", "SHLVL", "PWD", "OLDPWD"):
                # Paths into the build directory are /app once the slug runs.
                value = m.group(2).replace(self.executor.visible_path(self.app_dir), "/app")
                found[m.group(1)] = value.replace(str(self.app_dir), "/app")
        return found

    # -- running commands --------------------------------------------------------------------

    def _env(self) -> dict[str, str]:
        return {
            "PATH": HOST_PATH,
            "HOME": str(self.home),
            "LANG": "C.UTF-8",
            "TMPDIR": str(self.tmp),
            "STACK": self.req.stack,
            "SOURCE_VERSION": self.req.commit,
        }

    def _step(
        self, bp: Buildpack, script: str, args: list[str], exports: list[Path],
        on_line: OnLine, *, tick: bool,
    ) -> int:
        path = bp.path / "bin" / script
        argv = ["/bin/bash", "-c", _SOURCE_EXPORTS + 'exec "$@"', "paas-step",
                *map(str, exports), "--", str(path), *args]
        return self._run(argv, on_line, f"bin/{script} of {bp.name}", tick=tick)

    def _run(self, argv: list[str], on_line: OnLine, what: str, *, tick: bool) -> int:
        left = self._left()
        try:
            if tick:
                with self.out.ticking(what, self.req.progress_interval):
                    return self.executor.run(argv, self.app_dir, self._env(), left, on_line)
            return self.executor.run(argv, self.app_dir, self._env(), left, on_line)
        except StepTimeout:
            raise BuildTimeout(
                f"The build took longer than {self.req.timeout:.0f} s and was stopped "
                f"(during {what})."
            ) from None

    def _left(self) -> float:
        left = self.deadline - time.monotonic()
        if left <= 0:
            raise BuildTimeout(f"The build took longer than {self.req.timeout:.0f} s and was stopped.")
        return left

    def _snapshot(self, exclude: Path) -> dict[str, str]:
        """Fingerprint what a compile step must leave alone: the work dir minus its own dirs."""
        out: dict[str, str] = {}
        work = self.req.work_dir
        for entry in sorted(os.listdir(work)):
            if entry not in _WORK_ENTRIES:
                out[entry] = "unexpected"
        for top in (self.env_dir, self.bp_dir):
            for dirpath, dirnames, filenames in os.walk(top):
                here = Path(dirpath)
                if here == exclude or exclude in here.parents:
                    dirnames[:] = []
                    continue
                for name in filenames:
                    path = here / name
                    rel = path.relative_to(work).as_posix()
                    out[rel] = _fingerprint(path)
        return out


_EXPORTS_MARK = "@@paas-exports-sourced@@"
# Source each export file named before `--`, then leave the rest of the arguments in "$@".
_SOURCE_EXPORTS = 'while [ "$1" != -- ]; do . "$1" || exit 1; shift; done; shift; '


def parse_release(text: str, source: str) -> tuple[dict[str, str], dict[str, str]]:
    """Return (default_process_types, config_vars) from bin/release output."""
    try:
        data = yaml.safe_load(text) if text.strip() else {}
    except yaml.YAMLError as e:
        raise BuildError(f"bin/release of buildpack {source} printed invalid YAML: {str(e).splitlines()[0]}") from None
    if data is None:
        data = {}
    if not isinstance(data, dict):
        raise BuildError(f"bin/release of buildpack {source} must print a YAML mapping")
    out: list[dict[str, str]] = []
    for key in ("default_process_types", "config_vars"):
        section = data.get(key) or {}
        if not isinstance(section, dict):
            raise BuildError(f"bin/release of buildpack {source}: {key} must be a mapping")
        values: dict[str, str] = {}
        for name, value in section.items():
            if not isinstance(name, str) or isinstance(value, (dict, list)) or value is None:
                raise BuildError(f"bin/release of buildpack {source}: bad entry {name!r} in {key}")
            if key == "config_vars" and not _VAR_RE.match(name):
                raise BuildError(f"bin/release of buildpack {source}: bad config var name {name!r}")
            values[name] = str(value)
        out.append(values)
    return out[0], out[1]


def _chown_tree(root: Path, owner: tuple[int, int]) -> None:
    uid, gid = owner
    os.chown(root, uid, gid, follow_symlinks=False)
    for dirpath, dirnames, filenames in os.walk(root):
        for name in dirnames + filenames:
            os.chown(os.path.join(dirpath, name), uid, gid, follow_symlinks=False)


def _check_app_name(app: str) -> None:
    if not _APP_RE.match(app):
        raise BuildError(f"{app!r} is not a valid app name")


def _name_from_url(url: str) -> str:
    tail = url.rstrip("/").rsplit("/", 1)[-1].rsplit(":", 1)[-1]
    tail = tail.removesuffix(".git")
    return tail.removeprefix("heroku-buildpack-") or "buildpack"


def _fingerprint(path: Path) -> str:
    st = path.lstat()
    if not path.is_file() or path.is_symlink():
        return f"{st.st_mode}"
    return hashlib.sha256(path.read_bytes()).hexdigest()


def _human(n: int) -> str:
    return f"{n / 1024**2:.1f} MiB" if n >= 1024**2 else f"{n / 1024:.1f} KiB"


def _exit(code: int) -> str:
    return f"signal {-code}" if code < 0 else f"status {code}"


@contextlib.contextmanager
def _locked(cache_dir: Path) -> Iterator[None]:
    """Hold the app's cache for this build: two builds of one app take turns."""
    with (cache_dir / ".lock").open("a") as f:
        fcntl.flock(f, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(f, fcntl.LOCK_UN)

