"""The framework-free parts must import, and keep working, with Django absent."""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
FRAMEWORK_FREE = ["builder", "runtime", "router"]


def _imported_modules(path: Path) -> set[str]:
    tree = ast.parse(path.read_text(), filename=str(path))
    names: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names.add(node.module)
    return names


@pytest.mark.parametrize("part", FRAMEWORK_FREE)
def test_it_never_imports_django_or_the_control_plane(part: str) -> None:
    forbidden = ("django", "rest_framework", "controlplane", "core", "restapi", "web")
    offenders = []
    for path in sorted((ROOT / part).rglob("*.py")):
        for name in _imported_modules(path):
            if name.split(".")[0] in forbidden:
                offenders.append(f"{path.relative_to(ROOT)} imports {name}")
    assert offenders == []


@pytest.mark.parametrize("part", FRAMEWORK_FREE)
def test_it_imports_with_django_absent(part: str) -> None:
    # A meta-path hook that refuses django: importing the part must still work.
    code = (
        "import sys, importlib, pkgutil\n"
        "class NoDjango:\n"
        "    def find_spec(self, name, path=None, target=None):\n"
        "        if name == 'django' or name.startswith('django.'):\n"
        "            raise ImportError('django is absent')\n"
        "sys.meta_path.insert(0, NoDjango())\n"
        f"pkg = importlib.import_module({part!r})\n"
        "for info in pkgutil.walk_packages(pkg.__path__, pkg.__name__ + '.'):\n"
        "    if info.name.endswith('__main__'):\n"
        "        continue\n"
        "    importlib.import_module(info.name)\n"
        "assert 'django' not in sys.modules\n"
    )
    subprocess.run([sys.executable, "-c", code], check=True, cwd=ROOT)


def test_platform_is_a_source_root_not_a_package() -> None:
    assert not (ROOT / "platform" / "__init__.py").exists()
    out = subprocess.run(
        [sys.executable, "-c", "import platform; print(platform.__file__)"],
        check=True, cwd=ROOT, capture_output=True, text=True,
    ).stdout
    assert "platform.py" in out and str(ROOT) not in out
