"""Turn uv.lock or Pipfile.lock into pinned pip requirements (printed to stdout).

Run by the Python buildpack with the app's interpreter: `lockfile.py uv.lock`,
`lockfile.py Pipfile.lock`, or `lockfile.py --is-package pyproject.toml` (exit 0 when the
project declares a build system, i.e. is installable itself).
"""

from __future__ import annotations

import json
import sys
from collections import deque
from pathlib import Path
from typing import Any


class LockError(Exception):
    pass


def _load_toml(path: Path) -> dict[str, Any]:
    try:
        import tomllib
    except ImportError:  # Python before 3.11
        raise LockError(f"reading {path.name} needs Python 3.11 or newer") from None
    try:
        return tomllib.loads(path.read_text())
    except (tomllib.TOMLDecodeError, UnicodeDecodeError) as e:
        raise LockError(f"{path.name} is not valid TOML: {e}") from None


def _requirement(pkg: dict[str, Any]) -> str | None:
    name, version = pkg.get("name"), pkg.get("version")
    source = pkg.get("source") or {}
    if "git" in source:
        return f"{name} @ git+{source['git']}"
    if "url" in source:
        return f"{name} @ {source['url']}"
    if "registry" in source:
        if not version:
            raise LockError(f"uv.lock: package {name!r} has no version")
        return f"{name}=={version}"
    return None  # the project itself, or a local path: not something to fetch


def uv_requirements(path: Path) -> list[str]:
    """Return the requirements the project needs at run time (no dev dependencies)."""
    data = _load_toml(path)
    packages = data.get("package")
    if not isinstance(packages, list):
        raise LockError("uv.lock has no [[package]] entries")
    by_name: dict[str, dict[str, Any]] = {}
    roots: list[dict[str, Any]] = []
    for pkg in packages:
        if not isinstance(pkg, dict) or not isinstance(pkg.get("name"), str):
            raise LockError("uv.lock has a [[package]] entry without a name")
        if pkg["name"] in by_name:
            raise LockError(
                f"uv.lock holds several versions of {pkg['name']!r} (split by platform); "
                "install from requirements.txt instead"
            )
        by_name[pkg["name"]] = pkg
        source = pkg.get("source") or {}
        if source.get("editable") == "." or source.get("virtual") == ".":
            roots.append(pkg)
    if not roots:
        raise LockError("uv.lock names no project at '.'")
    # Walk the run-time dependency graph from the project; remember the markers on the edges.
    markers: dict[str, set[str | None]] = {}
    queue: deque[tuple[str, tuple[str, ...]]] = deque((r["name"], ()) for r in roots)
    seen: set[tuple[str, tuple[str, ...]]] = set()
    while queue:
        name, extras = queue.popleft()
        if (name, extras) in seen:
            continue
        seen.add((name, extras))
        pkg = by_name.get(name)
        if pkg is None:
            raise LockError(f"uv.lock refers to {name!r} but has no entry for it")
        edges = list(pkg.get("dependencies") or [])
        optional = pkg.get("optional-dependencies") or {}
        for extra in extras:
            edges += optional.get(extra) or []
        for dep in edges:
            dep_name = dep["name"]
            markers.setdefault(dep_name, set()).add(dep.get("marker"))
            queue.append((dep_name, tuple(sorted(dep.get("extra") or []))))
    out = []
    root_names = {r["name"] for r in roots}
    for name in sorted(markers):
        if name in root_names:
            continue
        req = _requirement(by_name[name])
        if req is None:
            continue
        edge_markers = markers[name]
        if None not in edge_markers:
            req += " ; " + " or ".join(f"({m})" for m in sorted(m for m in edge_markers if m))
        out.append(req)
    return out


def pipfile_requirements(path: Path) -> list[str]:
    """Return the `default` (run-time) section of Pipfile.lock as pinned requirements."""
    try:
        data = json.loads(path.read_text())
    except (ValueError, UnicodeDecodeError) as e:
        raise LockError(f"Pipfile.lock is not valid JSON: {e}") from None
    default = data.get("default") if isinstance(data, dict) else None
    if not isinstance(default, dict):
        raise LockError("Pipfile.lock has no 'default' section")
    out = []
    for name, spec in sorted(default.items()):
        if not isinstance(spec, dict):
            raise LockError(f"Pipfile.lock: entry {name!r} is not a table")
        if "git" in spec:
            req = f"{name} @ git+{spec['git']}" + (f"@{spec['ref']}" if spec.get("ref") else "")
        elif "version" in spec:
            req = f"{name}{spec['version']}"
        else:
            raise LockError(f"Pipfile.lock: entry {name!r} has no version or git source")
        if spec.get("markers"):
            req += f" ; {spec['markers']}"
        out.append(req)
    return out


def is_package(path: Path) -> bool:
    return "build-system" in _load_toml(path)


def main(argv: list[str]) -> int:
    try:
        if len(argv) == 2 and argv[0] == "--is-package":
            return 0 if is_package(Path(argv[1])) else 1
        if len(argv) != 1:
            raise LockError("usage: lockfile.py uv.lock|Pipfile.lock")
        path = Path(argv[0])
        reqs = uv_requirements(path) if path.name == "uv.lock" else pipfile_requirements(path)
    except LockError as e:
        print(f" !     {e}", file=sys.stderr)
        return 1
    print("\n".join(reqs))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
