"""The built-in buildpacks build the sample apps, whose web process then answers on $PORT.

These install real packages from PyPI and the npm registry; the cache directory is shared by
the builds of one test run.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Callable
from pathlib import Path

import pytest

from builder.buildpack import BUILTIN_DIR, BuildRequest, BuildResult, build
from builder.errors import BuildError
from builder.executor import HostExecutor
from builder.slug import launch_argv

from .conftest import APPS, Output

SELECT_PYTHON = BUILTIN_DIR / "python" / "lib" / "select-python"
LOCKFILE = BUILTIN_DIR / "python" / "lib" / "lockfile.py"


@pytest.fixture(scope="module")
def shared_cache(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("cache")


def _build(app: str, tmp_path: Path, cache: Path, output: Output):  # type: ignore[no-untyped-def]
    req = BuildRequest(
        app="sample-" + app, source_dir=APPS / app, work_dir=tmp_path / "work", cache_dir=cache,
        build_id="b1", commit="0" * 40, timeout=600,
    )
    return build(req, HostExecutor(), output.append)


@pytest.mark.slow
def test_it_builds_and_runs_the_flask_app_under_gunicorn(
    tmp_path: Path, shared_cache: Path, output: Output, run_web: Callable[..., str]
) -> None:
    result = _build("flask", tmp_path, shared_cache, output)
    assert output[0] == "-----> Python app detected"
    assert any(line.startswith("       Using Python 3.11.") for line in output)
    assert "-----> Installing dependencies from requirements.txt" in output
    assert (shared_cache / "pip").is_dir()
    assert run_web(result.app_dir, result.process_types.types["web"]) == "Hello from Flask on paas"
    # Console scripts find the virtualenv through PATH, so the slug still works at /app.
    assert (result.app_dir / ".venv" / "bin" / "gunicorn").read_text().startswith("#!/usr/bin/env python3\n")
    assert result.exported_env["VIRTUAL_ENV"] == "/app/.venv"
    assert result.exported_env["PATH"].startswith("/app/.venv/bin:")
    # The stack's pip installed into the virtualenv, which has none of its own.
    site = next((result.app_dir / ".venv" / "lib").glob("python3.*/site-packages"))
    assert (site / "flask").is_dir() and not (site / "pip").exists()
    # The slug's files carry one fixed time: the bytecode is hash-checked, not mtime-checked.
    pyc = next((site / "flask" / "__pycache__").glob("app.*.pyc"))
    assert int.from_bytes(pyc.read_bytes()[4:8], "little") == 0b11
    # The virtualenv is a layer of its own, under the app's.
    venv_layer, app_layer = result.slug.layers
    assert venv_layer.media_type == "application/vnd.oci.image.layer.v1.tar"
    assert result.slug.size == venv_layer.size + app_layer.size


PYPROJECT_VIRTUAL = """
[project]
name = "locked"
version = "0.1.0"
requires-python = ">=3.11"
dependencies = ["six==1.16.0"]
"""

UV_LOCK_SIX = """
version = 1
requires-python = ">=3.11"

[[package]]
name = "locked"
version = "0.1.0"
source = { virtual = "." }
dependencies = [{ name = "six" }]

[package.dev-dependencies]
dev = [{ name = "iniconfig" }]

[[package]]
name = "six"
version = "1.16.0"
source = { registry = "https://pypi.org/simple" }

[[package]]
name = "iniconfig"
version = "2.0.0"
source = { registry = "https://pypi.org/simple" }
"""

PIPFILE_LOCK_SIX = json.dumps({
    "_meta": {"requires": {"python_version": "3.11"}},
    "default": {"six": {"version": "==1.16.0"}},
    "develop": {"iniconfig": {"version": "==2.0.0"}},
})


@pytest.mark.slow
@pytest.mark.parametrize(
    ("files", "heading"),
    [
        ({"pyproject.toml": PYPROJECT_VIRTUAL, "uv.lock": UV_LOCK_SIX}, "uv.lock"),
        ({"Pipfile": "[packages]\nsix = '==1.16.0'\n", "Pipfile.lock": PIPFILE_LOCK_SIX}, "Pipfile.lock"),
    ],
)
def test_it_installs_exactly_what_a_lock_file_pins_for_run_time(
    tmp_path: Path, shared_cache: Path, output: Output, files: dict[str, str], heading: str
) -> None:
    src = tmp_path / "src"
    src.mkdir()
    for name, text in files.items():
        (src / name).write_text(text)
    (src / "Procfile").write_text("worker: python -c 'import six; print(six.__version__)'\n")
    req = BuildRequest(app="locked", source_dir=src, work_dir=tmp_path / "work", cache_dir=shared_cache,
                       timeout=600)
    result = build(req, HostExecutor(), output.append)
    assert f"-----> Installing dependencies from {heading}" in output
    site = next((result.app_dir / ".venv" / "lib").glob("python3.*/site-packages"))
    installed = {p.name.split("-")[0].lower() for p in site.glob("*.dist-info")}
    assert "six" in installed
    assert "iniconfig" not in installed


@pytest.mark.slow
def test_it_builds_and_runs_the_express_app_with_npm_ci(
    tmp_path: Path, shared_cache: Path, output: Output, run_web: Callable[..., str]
) -> None:
    result = _build("express", tmp_path, shared_cache, output)
    assert output[0] == "-----> Node.js app detected"
    assert "-----> Installing dependencies with npm ci" in output
    assert any("engines.node is >=18; the stack's Node.js v" in line for line in output)
    assert result.process_types.types == {"web": "npm start"}
    assert (shared_cache / "npm").is_dir()
    assert run_web(result.app_dir, "npm start") == "Hello from Express on paas"


@pytest.mark.slow
def test_it_reuses_node_modules_while_the_lockfile_and_package_json_stay_the_same(
    tmp_path: Path, output: Output, run_web: Callable[..., str]
) -> None:
    src = tmp_path / "src"
    shutil.copytree(APPS / "express", src)
    cache = tmp_path / "cache"

    def build_once(n: int) -> BuildResult:
        output.clear()
        req = BuildRequest(app="node-reuse", source_dir=src, work_dir=tmp_path / f"work{n}",
                           cache_dir=cache, timeout=600)
        return build(req, HostExecutor(), output.append)

    build_once(1)
    assert "-----> Installing dependencies with npm ci" in output
    (src / "server.js").write_text((src / "server.js").read_text() + "// changed\n")
    result = build_once(2)
    assert "-----> Reusing the node_modules of the last build (package-lock.json, Node.js and npm unchanged)" in output
    assert "-----> Installing dependencies with npm ci" not in output
    assert run_web(result.app_dir, "npm start") == "Hello from Express on paas"
    package = json.loads((src / "package.json").read_text())
    package["description"] = "changed"
    (src / "package.json").write_text(json.dumps(package))
    build_once(3)
    assert "-----> Installing dependencies with npm ci" in output


def test_it_builds_and_serves_the_static_site(
    tmp_path: Path, shared_cache: Path, output: Output, run_web: Callable[..., str]
) -> None:
    result = _build("static", tmp_path, shared_cache, output)
    assert result.kinds == ("Static site",)
    page = run_web(result.app_dir, result.process_types.types["web"])
    assert "<h1>Hello from a static site on paas</h1>" in page


def test_it_builds_and_runs_the_procfile_only_shell_app(
    tmp_path: Path, shared_cache: Path, output: Output, run_web: Callable[..., str]
) -> None:
    result = _build("shell", tmp_path, shared_cache, output)
    assert result.kinds == ("Procfile",)
    page = run_web(result.app_dir, result.process_types.types["web"], "/cgi-bin/hello")
    assert page.startswith("Hello from a shell app on paas")


# -- the Python buildpack's helpers ---------------------------------------------------------


@pytest.fixture
def fake_stack(tmp_path: Path) -> Path:
    """A PATH directory holding python3.9 and python3.12 that only report their version."""
    bindir = tmp_path / "stack-bin"
    bindir.mkdir()
    for version in ("3.9.18", "3.12.4"):
        exe = bindir / ("python" + version.rsplit(".", 1)[0])
        exe.write_text(f"#!/bin/sh\necho {version}\n")
        exe.chmod(0o755)
    return bindir


def select(fake_stack: Path, *args: str) -> tuple[str, str]:
    proc = subprocess.run(
        [str(SELECT_PYTHON), *args], env={"PATH": f"{fake_stack}:/usr/bin:/bin"},
        capture_output=True, text=True, check=True,
    )
    return proc.stdout.strip(), proc.stderr


def test_it_uses_the_python_the_app_asks_for_when_the_stack_has_it(fake_stack: Path) -> None:
    exe, said = select(fake_stack, "3.9", ".python-version")
    assert exe == str(fake_stack / "python3.9")
    assert "Using Python 3.9.18 (.python-version asks for 3.9)" in said


def test_it_says_which_patch_release_it_uses_instead(fake_stack: Path) -> None:
    exe, said = select(fake_stack, "python-3.12.1", "runtime.txt")
    assert exe == str(fake_stack / "python3.12")
    assert "runtime.txt asks for Python 3.12.1; the stack has 3.12.4, which is used" in said


def test_it_falls_back_to_the_newest_python_with_a_clear_message(fake_stack: Path) -> None:
    exe, said = select(fake_stack, "3.7", ".python-version")
    assert exe == str(fake_stack / "python3.12")
    assert ".python-version asks for Python 3.7, which this stack does not have" in said
    assert "using the stack's newest, 3.12" in said
    exe, said = select(fake_stack, "latest please", ".python-version")
    assert exe == str(fake_stack / "python3.12")
    assert "not a version like 3.12 or 3.12.4" in said


UV_LOCK = """
version = 1
requires-python = ">=3.11"

[[package]]
name = "shop"
version = "0.1.0"
source = { editable = "." }
dependencies = [
    { name = "flask" },
    { name = "colorama", marker = "sys_platform == 'win32'" },
    { name = "httpx", extra = ["http2"] },
]

[package.dev-dependencies]
dev = [{ name = "pytest" }]

[[package]]
name = "flask"
version = "3.1.0"
source = { registry = "https://pypi.org/simple" }
dependencies = [{ name = "click" }]

[[package]]
name = "click"
version = "8.1.7"
source = { registry = "https://pypi.org/simple" }

[[package]]
name = "colorama"
version = "0.4.6"
source = { registry = "https://pypi.org/simple" }

[[package]]
name = "httpx"
version = "0.27.0"
source = { registry = "https://pypi.org/simple" }

[package.optional-dependencies]
http2 = [{ name = "h2" }]

[[package]]
name = "h2"
version = "4.1.0"
source = { git = "https://github.com/python-hyper/h2?rev=v4.1.0#abc" }

[[package]]
name = "pytest"
version = "8.3.0"
source = { registry = "https://pypi.org/simple" }
"""


def lockfile(tmp_path: Path, name: str, text: str) -> subprocess.CompletedProcess[str]:
    (tmp_path / name).write_text(text)
    return subprocess.run(
        [sys.executable, str(LOCKFILE), name], cwd=tmp_path, capture_output=True, text=True, check=False
    )


def test_it_installs_uv_lock_run_time_dependencies_without_dev_ones(tmp_path: Path) -> None:
    proc = lockfile(tmp_path, "uv.lock", UV_LOCK)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.splitlines() == [
        "click==8.1.7",
        "colorama==0.4.6 ; (sys_platform == 'win32')",
        "flask==3.1.0",
        "h2 @ git+https://github.com/python-hyper/h2?rev=v4.1.0#abc",
        "httpx==0.27.0",
    ]


def test_it_installs_the_default_section_of_pipfile_lock(tmp_path: Path) -> None:
    lock = {
        "_meta": {},
        "default": {
            "flask": {"version": "==3.1.0", "hashes": []},
            "pywin32": {"version": "==306", "markers": "sys_platform == 'win32'"},
        },
        "develop": {"pytest": {"version": "==8.3.0"}},
    }
    proc = lockfile(tmp_path, "Pipfile.lock", json.dumps(lock))
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.splitlines() == ["flask==3.1.0", "pywin32==306 ; sys_platform == 'win32'"]


def test_it_explains_a_broken_lock_file(tmp_path: Path) -> None:
    proc = lockfile(tmp_path, "uv.lock", "version = [")
    assert proc.returncode == 1
    assert proc.stderr.startswith(" !     uv.lock is not valid TOML")
    proc = lockfile(tmp_path, "Pipfile.lock", "{}")
    assert proc.stderr.strip() == "!     Pipfile.lock has no 'default' section"


def test_it_ships_every_builtin_script_as_an_executable_bash_script() -> None:
    scripts = sorted(BUILTIN_DIR.glob("*/bin/*"))
    assert {s.parent.parent.name for s in scripts} == {"nodejs", "python", "static", "procfile"}
    for script in scripts:
        assert script.stat().st_mode & 0o111, f"{script} is not executable"
        assert script.read_text().startswith("#!/usr/bin/env bash\n"), script


ENGINES = BUILTIN_DIR / "nodejs" / "lib" / "engines.js"


def engines(tmp_path: Path, wanted: str | None) -> str:
    pkg: dict[str, object] = {"name": "x"}
    if wanted is not None:
        pkg["engines"] = {"node": wanted}
    (tmp_path / "package.json").write_text(json.dumps(pkg))
    npm = subprocess.run(["bash", "-c", "command -v npm"], capture_output=True, text=True, check=True).stdout.strip()
    return subprocess.run(
        ["node", str(ENGINES), str(tmp_path / "package.json"), npm], capture_output=True, text=True, check=True
    ).stdout


def test_it_says_when_the_stacks_node_meets_engines_node(tmp_path: Path) -> None:
    major = subprocess.run(["node", "--version"], capture_output=True, text=True, check=True).stdout[1:].split(".")[0]
    assert "the stack's Node.js v" in engines(tmp_path, f"^{major}.0.0")
    assert "satisfies it" in engines(tmp_path, f">={major}")


def test_it_builds_with_the_stacks_node_when_engines_node_asks_for_another(tmp_path: Path) -> None:
    out = engines(tmp_path, "0.10.x")
    assert " !     engines.node asks for 0.10.x, which this stack does not have;" in out
    assert "building with the stack's Node.js v" in out
    assert "No engines.node in package.json" in engines(tmp_path, None)


@pytest.mark.slow
def test_it_explains_a_python_install_that_fails(tmp_path: Path, shared_cache: Path, output: Output) -> None:
    src = tmp_path / "src"
    src.mkdir()
    (src / ".python-version").write_text("# pinned later\n")
    (src / "requirements.txt").write_text("this is not a requirement!!\n")
    req = BuildRequest(app="broken", source_dir=src, work_dir=tmp_path / "work", cache_dir=shared_cache)
    with pytest.raises(BuildError, match=r"^Failed to compile the app: bin/compile of buildpack python exited with status 1\.$"):
        build(req, HostExecutor(), output.append)
    assert any("No Python version named in .python-version or runtime.txt" in line for line in output)
    assert " !     pip install failed (exit status 1); see its messages above" in output


@pytest.mark.slow
def test_it_reuses_the_virtualenv_while_requirements_and_python_stay_the_same(
    tmp_path: Path, shared_cache: Path, output: Output
) -> None:
    src = tmp_path / "src"
    src.mkdir()
    (src / "requirements.txt").write_text("# nothing yet\n")
    (src / "Procfile").write_text("worker: python -c 'import sys; print(sys.prefix)'\n")
    cache = shared_cache

    def build_once(n: int) -> BuildResult:
        req = BuildRequest(app="venv-reuse", source_dir=src, work_dir=tmp_path / f"work{n}", cache_dir=cache)
        return build(req, HostExecutor(), output.append)

    first = build_once(1)
    assert any(line.startswith("-----> Creating a virtualenv") for line in output)
    assert "-----> Keeping the virtualenv for the next build" in output
    output.clear()
    (src / "Procfile").write_text("worker: python -c 'import sys; print(sys.prefix, 2)'\n")
    second = build_once(2)
    app_dir = second.app_dir
    assert "-----> Reusing the virtualenv of the last build (requirements.txt and Python unchanged)" in output
    assert not any(line.startswith("-----> Creating a virtualenv") for line in output)
    # The same virtualenv packs to the same layer, which the image store then already holds.
    assert second.slug.lower[0].digest == first.slug.lower[0].digest
    assert second.slug.lower[0].reused  # from the app's layer cache, not packed again
    assert second.slug.digest != first.slug.digest
    prefix = subprocess.run(
        launch_argv("python -c 'import sys; print(sys.prefix)'"),
        env={"PATH": "/usr/bin:/bin", "HOME": str(app_dir)}, capture_output=True, text=True, check=True,
    ).stdout.strip()
    assert prefix == str(app_dir / ".venv")

    output.clear()
    (src / "requirements.txt").write_text("# nothing yet, still\n")
    build_once(3)
    assert any(line.startswith("-----> Creating a virtualenv") for line in output)
    assert not any(line.startswith("-----> Reusing the virtualenv") for line in output)


class Compile:
    """Run the Python buildpack's bin/compile by itself, with a PATH of our choosing."""

    def __init__(self, tmp_path: Path, cache: Path, path: str = "/usr/bin:/bin") -> None:
        self.bp = tmp_path / "bp"
        shutil.copytree(BUILTIN_DIR / "python", self.bp)
        shutil.copytree(BUILTIN_DIR / "lib", self.bp / "lib", dirs_exist_ok=True)
        self.build_dir, self.env_dir, home = (tmp_path / n for n in ("build", "env", "home"))
        self.cache = cache
        for d in (self.build_dir, cache, self.env_dir, home):
            d.mkdir(exist_ok=True)
        (self.build_dir / "requirements.txt").write_text("# nothing to install\n")
        self.env = {"PATH": path, "HOME": str(home), "TMPDIR": str(tmp_path), "LANG": "C.UTF-8"}

    def __call__(self) -> str:
        shutil.rmtree(self.build_dir / ".venv", ignore_errors=True)
        proc = subprocess.run(
            [str(self.bp / "bin" / "compile"), str(self.build_dir), str(self.cache), str(self.env_dir)],
            env=self.env, capture_output=True, text=True, check=False, timeout=300,
        )
        assert proc.returncode == 0, proc.stdout + proc.stderr
        return proc.stdout

    @property
    def site(self) -> Path:
        return next((self.build_dir / ".venv" / "lib").glob("python3.*/site-packages"))


@pytest.mark.slow
def test_it_seeds_the_virtualenvs_own_pip_when_the_stacks_python_has_none(tmp_path: Path) -> None:
    # A stack whose python3.11 cannot import pip (site-packages off) gets a virtualenv with pip.
    stack_bin = tmp_path / "stack-bin"
    stack_bin.mkdir()
    wrapper = stack_bin / "python3.11"
    wrapper.write_text("#!/bin/sh\nexec /usr/bin/python3.11 -S \"$@\"\n")
    wrapper.chmod(0o755)
    compile_once = Compile(tmp_path, tmp_path / "cache", f"{stack_bin}:/usr/bin:/bin")
    assert "-----> Creating a virtualenv with Python 3.11" in compile_once()
    assert (compile_once.site / "pip").is_dir()
    (compile_once.build_dir / "requirements.txt").write_text("# still nothing\n")
    assert "(from the cached seed)" in compile_once()
    assert (compile_once.site / "pip").is_dir()


@pytest.mark.parametrize("cache_elsewhere", [False, True], ids=["same-fs", "cache-on-tmpfs"])
def test_it_restores_the_cached_virtualenv_with_its_times_as_links_or_as_a_copy(
    tmp_path: Path, cache_elsewhere: bool
) -> None:
    # In a build container the cache and the app are separate mounts: no hard links there.
    cache = Path(tempfile.mkdtemp(prefix="paas-test-venv-", dir="/dev/shm")) if cache_elsewhere \
        else tmp_path / "cache"
    try:
        compile_once = Compile(tmp_path, cache)
        assert "-----> Keeping the virtualenv for the next build" in compile_once()
        assert "-----> Reusing the virtualenv of the last build" in compile_once()
        cfg = compile_once.build_dir / ".venv" / "pyvenv.cfg"
        kept = cache / "python" / "venv" / "pyvenv.cfg"
        assert cfg.stat().st_mtime_ns == kept.stat().st_mtime_ns
        assert cfg.samefile(kept) is not cache_elsewhere
        assert not list(compile_once.build_dir.glob("*.link-trial"))
        python = compile_once.build_dir / ".venv" / "bin" / "python"
        out = subprocess.run([str(python), "-c", "import sys; print(sys.prefix != sys.base_prefix)"],
                             capture_output=True, text=True, check=True).stdout
        assert out.strip() == "True"
    finally:
        if cache_elsewhere:
            shutil.rmtree(cache, ignore_errors=True)
