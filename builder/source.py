"""Check pushed source before anything runs on it, and copy it into the build directory."""

from __future__ import annotations

import fnmatch
import os
import re
import shutil
import stat
import subprocess
import tarfile
from pathlib import Path

from builder.errors import SourceError

DEFAULT_MAX_FILE_BYTES = 100 * 1024**2
_COMMIT_RE = re.compile(r"^[0-9a-f]{40}([0-9a-f]{24})?$")


def check_source(root: Path, max_file_bytes: int = DEFAULT_MAX_FILE_BYTES) -> None:
    """Refuse symlinks leading out of `root`, special files and files over `max_file_bytes`.

    Raise SourceError naming the first offending path (relative to `root`).
    """
    root = root.resolve()
    for dirpath, dirnames, filenames in os.walk(root):
        dirnames.sort()
        here = Path(dirpath)
        for name in sorted(dirnames + filenames):
            path = here / name
            rel = path.relative_to(root).as_posix()
            st = path.lstat()
            if stat.S_ISLNK(st.st_mode):
                _check_link(root, path, rel)
            elif stat.S_ISREG(st.st_mode):
                if st.st_size > max_file_bytes:
                    raise SourceError(
                        f"{rel} is {_mib(st.st_size)}, over the limit of {_mib(max_file_bytes)} "
                        "per file; keep large files out of the repository"
                    )
            elif not stat.S_ISDIR(st.st_mode):
                raise SourceError(f"{rel} is not a regular file, directory or symlink")


def _check_link(root: Path, path: Path, rel: str) -> None:
    target = os.readlink(path)
    if os.path.isabs(target):
        raise SourceError(f"{rel} is a symlink to the absolute path {target!r}; use a relative link inside the app")
    # Resolve lexically, link by link, so a chain of links cannot step outside either.
    resolved = Path(os.path.realpath(path))
    if resolved != root and root not in resolved.parents:
        raise SourceError(f"{rel} is a symlink to {target!r}, which points outside the app")


def checkout(
    repo: Path, commit: str, dest: Path, max_file_bytes: int = DEFAULT_MAX_FILE_BYTES,
    timeout: float = 300,
) -> None:
    """Write the tree of `commit` in the git repository `repo` into `dest` (created).

    Uses the real `git archive`, so `export-ignore` attributes apply and `.git` never lands in
    the app; submodules are not included. Raise SourceError for an unknown commit or a file
    over `max_file_bytes` (before it is written).
    """
    if not _COMMIT_RE.match(commit):
        raise SourceError(f"{commit!r} is not a full commit id")
    env = {"PATH": "/usr/local/bin:/usr/bin:/bin", "HOME": "/nonexistent", "GIT_CONFIG_NOSYSTEM": "1",
           "LANG": "C.UTF-8"}
    argv = ["git", f"--git-dir={repo}", "archive", "--format=tar", f"{commit}^{{tree}}"]
    dest.mkdir(parents=True)
    with subprocess.Popen(argv, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE) as proc:
        assert proc.stdout is not None and proc.stderr is not None
        try:
            with tarfile.open(fileobj=proc.stdout, mode="r|") as tar:
                for member in tar:
                    if member.isfile() and member.size > max_file_bytes:
                        raise SourceError(
                            f"{member.name} is {_mib(member.size)}, over the limit of "
                            f"{_mib(max_file_bytes)} per file; keep large files out of the repository"
                        )
                    tar.extract(member, dest, filter="tar")
        except tarfile.ReadError:
            pass  # git printed no archive: its exit status and message say why
        except tarfile.FilterError as e:
            raise SourceError(f"the commit holds an entry that cannot be checked out: {e}") from None
        finally:
            proc.stdout.close()
            try:
                err = proc.stderr.read().decode(errors="replace")
                proc.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                proc.kill()
                raise SourceError("git archive did not finish in time") from None
    if proc.returncode != 0:
        detail = err.strip().splitlines()[-1] if err.strip() else f"exit status {proc.returncode}"
        raise SourceError(f"cannot check out {commit[:12]}: {detail}")


def copy_source(src: Path, dest: Path) -> None:
    """Copy the checked source into `dest` (created), keeping symlinks, leaving out `.git`."""
    shutil.copytree(
        src, dest, symlinks=True,
        ignore=lambda directory, _names: [".git"] if Path(directory) == src else [],
    )


def apply_slugignore(app_dir: Path) -> list[str]:
    """Remove what the app's `.slugignore` names; return the removed paths (relative, sorted).

    One glob per line, `#` for comments. A pattern with a `/` is matched against the path from
    the app's root (a leading `/` is dropped); one without matches a name at any depth.
    """
    listing = app_dir / ".slugignore"
    if not listing.is_file() or listing.is_symlink():
        return []
    patterns = []
    for raw in listing.read_text(errors="replace").splitlines():
        line = raw.strip()
        if line and not line.startswith("#"):
            patterns.append(line.rstrip("/"))
    removed: list[str] = []
    for dirpath, dirnames, filenames in os.walk(app_dir):
        here = Path(dirpath)
        for name in sorted(dirnames + filenames):
            path = here / name
            rel = path.relative_to(app_dir).as_posix()
            if any(_ignored(rel, name, pattern) for pattern in patterns):
                removed.append(rel)
                if path.is_dir() and not path.is_symlink():
                    shutil.rmtree(path)
                    dirnames.remove(name)
                else:
                    path.unlink()
    return sorted(removed)


def _ignored(rel: str, name: str, pattern: str) -> bool:
    if "/" in pattern:
        return fnmatch.fnmatchcase(rel, pattern.lstrip("/"))
    return fnmatch.fnmatchcase(name, pattern)


def tree_size(root: Path) -> int:
    """Return the bytes held by regular files under `root` (symlinks not followed)."""
    total = 0
    for dirpath, _dirnames, filenames in os.walk(root):
        for name in filenames:
            st = os.lstat(os.path.join(dirpath, name))
            if stat.S_ISREG(st.st_mode):
                total += st.st_size
    return total


def _mib(n: int) -> str:
    if n >= 1024**2:
        return f"{n / 1024**2:.1f} MiB"
    return f"{n / 1024:.1f} KiB" if n >= 1024 else f"{n} bytes"
