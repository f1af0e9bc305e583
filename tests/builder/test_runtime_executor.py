"""Builds inside a build container on a real runtime daemon, on the real debian stack."""

from __future__ import annotations

import contextlib
import os
import secrets
import shutil
import socket
from collections.abc import Callable
from pathlib import Path

import pytest

from builder.buildpack import BuildRequest, build
from builder.errors import BuildError, BuildTimeout
from builder.executor import ContainerLimits, HostExecutor, RuntimeExecutor
from runtime import cgroups
from tests.runtime.daemon_fixtures import Image

from .conftest import APPS, MakeBuildpack, Output
from .runtime_fixtures import BuildHost, build_host_fixture  # noqa: F401  (fixture)

pytestmark = [pytest.mark.root, pytest.mark.slow]

RequestFor = Callable[..., BuildRequest]


def in_container(host: BuildHost, **kwargs: object) -> RuntimeExecutor:
    return RuntimeExecutor(
        host.daemon.client, host.stack.digest, host.stack.layers, host.stack.config,
        app="demo", build_id="b1", **kwargs,  # type: ignore[arg-type]
    )


def build_containers(host: BuildHost) -> list[str]:
    return [c["id"] for c in host.daemon.client.list() if c["spec"]["process_type"] == "build"]


def copy_app(name: str, tmp_path: Path) -> Path:
    dest = tmp_path / f"src-{name}"
    shutil.copytree(APPS / name, dest)
    return dest


@pytest.mark.parametrize("app", ["shell", "static"])
def test_it_builds_an_app_in_a_container_into_the_same_slug_as_on_the_host(
    build_host: BuildHost, request_for: RequestFor, tmp_path: Path, app: str
) -> None:
    src = copy_app(app, tmp_path)
    on_host = build(request_for(src, cache_dir=tmp_path / "host-cache"), HostExecutor(), [].append)
    lines = Output()
    inside = build(request_for(src, cache_dir=tmp_path / "ctr-cache"), in_container(build_host), lines.append)
    assert inside.slug.digest == on_host.slug.digest
    assert inside.process_types == on_host.process_types
    assert inside.kinds == on_host.kinds
    assert f"-----> {inside.kinds[0]} app detected" in lines
    assert build_containers(build_host) == []


def test_it_runs_the_steps_as_an_unprivileged_user_with_the_build_dirs_bound_in(
    build_host: BuildHost, app_source: Path, request_for: RequestFor, make_buildpack: MakeBuildpack
) -> None:
    bp = make_buildpack("where", compile="""
        echo "user=$(id -u):$(id -g) build=$1 cache=$2 env=$3 home=$HOME cwd=$PWD"
        echo "greeting=$(cat "$3/GREETING")"
        touch "$3/GREETING" 2>/dev/null && echo "env writable" || echo "env read-only"
        grep -q "^[^ ]* /tmp/build " /proc/self/mounts && echo "build dir is a mount"
    """)
    lines = Output()
    req = request_for(app_source, buildpacks=[str(bp)], config={"GREETING": "hi"})
    build(req, in_container(build_host), lines.append)
    assert "user=1000:1000 build=/tmp/build cache=/tmp/cache env=/tmp/env home=/tmp/home cwd=/tmp/build" in lines
    assert "greeting=hi" in lines
    assert "env read-only" in lines
    assert "build dir is a mount" in lines


def test_it_keeps_a_buildpack_that_writes_outside_its_dirs_off_the_host(
    build_host: BuildHost, app_source: Path, request_for: RequestFor, make_buildpack: MakeBuildpack,
    tmp_path: Path,
) -> None:
    token = secrets.token_hex(4)
    escapes = [Path(f"/etc/paas-escape-{token}"), Path(f"/paas-escape-{token}"), Path(f"/tmp/paas-escape-{token}")]
    bp = make_buildpack("escape", compile=f"""
        for target in /etc/paas-escape-{token} "$1/../../paas-escape-{token}" /tmp/paas-escape-{token} \\
                      "$1/../paas-escape-{token}" "$3/../../paas-escape-{token}"; do
            if echo owned > "$target" 2>/dev/null; then echo "wrote $target"; else echo "refused $target"; fi
        done
        exit 0
    """)
    before = set(os.listdir(tmp_path))
    lines = Output()
    req = request_for(app_source, buildpacks=[str(bp)])
    build(req, in_container(build_host), lines.append)
    assert f"refused /etc/paas-escape-{token}" in lines
    for path in escapes:
        assert not path.exists(), path
    # What the buildpack could write lands in the container's own file system, gone with it;
    # next to the build on the host there is only what the build itself makes.
    assert set(os.listdir(tmp_path)) - before <= {req.work_dir.name, req.cache_dir.name}
    assert not any(p.name.startswith("paas-escape") for p in tmp_path.rglob("*"))
    assert build_containers(build_host) == []


def test_it_kills_a_hanging_buildpack_at_the_timeout_and_removes_the_container(
    build_host: BuildHost, app_source: Path, request_for: RequestFor, make_buildpack: MakeBuildpack
) -> None:
    bp = make_buildpack("hang", compile="echo started; sleep 600 & sleep 600")
    lines = Output()
    executor = in_container(build_host)
    with pytest.raises(BuildTimeout) as err:
        build(request_for(app_source, buildpacks=[str(bp)], timeout=10), executor, lines.append)
    assert "took longer than 10 s and was stopped (during bin/compile of hang)" in str(err.value)
    assert "started" in lines
    assert build_containers(build_host) == []
    assert executor.container_id is None


def test_it_stops_a_fork_bomb_at_the_pids_limit(
    build_host: BuildHost, app_source: Path, request_for: RequestFor, make_buildpack: MakeBuildpack
) -> None:
    bp = make_buildpack("forkbomb", compile="""
        exec python3 - <<'EOF'
        import os, sys, time
        n = 0
        try:
            while n < 10000:
                if os.fork() == 0:
                    time.sleep(300)
                    os._exit(0)
                n += 1
        except OSError as e:
            print(f"forked {n} then: {e.strerror}", flush=True)
            sys.exit(1)
        print(f"forked all {n}", flush=True)
        EOF
    """)
    lines = Output()
    with pytest.raises(BuildError, match=r"bin/compile of buildpack .*forkbomb exited with status 1"):
        build(request_for(app_source, buildpacks=[str(bp)]),
              in_container(build_host, limits=ContainerLimits(pids_limit=64)), lines.append)
    [said] = [line for line in lines if line.startswith("forked")]
    forked = int(said.split()[1])
    assert forked < 64
    assert said.endswith("Resource temporarily unavailable")
    assert build_containers(build_host) == []


def test_it_keeps_the_cache_dir_across_two_builds(
    build_host: BuildHost, app_source: Path, request_for: RequestFor, make_buildpack: MakeBuildpack,
    tmp_path: Path,
) -> None:
    bp = make_buildpack("counter", compile="""
        n=$(cat "$2/count" 2>/dev/null || echo 0)
        echo "build number $((n + 1))"
        echo $((n + 1)) > "$2/count"
    """)
    cache = tmp_path / "app-cache"
    for expected in ("build number 1", "build number 2"):
        lines = Output()
        build(request_for(app_source, buildpacks=[str(bp)], cache_dir=cache), in_container(build_host), lines.append)
        assert expected in lines
    assert (cache / "count").read_text() == "2\n"


def test_it_reaches_the_package_registry_through_nat_with_the_hosts_ca_certificates(
    build_host: BuildHost, app_source: Path, request_for: RequestFor, make_buildpack: MakeBuildpack
) -> None:
    bp = make_buildpack("fetch", compile="""
        python3 -c "import urllib.request as u; print('registry', u.urlopen('https://pypi.org/simple/pip/', timeout=30).status)"
    """)
    lines = Output()
    executor = in_container(build_host, ca_certs=Path("/etc/ssl/certs"))
    build(request_for(app_source, buildpacks=[str(bp)]), executor, lines.append)
    assert "registry 200" in lines


def test_it_keeps_a_buildpack_off_the_hosts_services_and_the_metadata_address(
    build_host: BuildHost, app_source: Path, request_for: RequestFor, make_buildpack: MakeBuildpack
) -> None:
    assert build_host.daemon.network is not None
    gateway = build_host.daemon.network[1].rsplit(".", 1)[0] + ".1"
    accepted: list[object] = []
    with socket.create_server((gateway, 0)) as server:  # a platform service on the bridge address
        server.settimeout(0.2)
        port = server.getsockname()[1]
        probe = "import socket, sys; s = socket.socket(); s.settimeout(5); print('probe', sys.argv[1], s.connect_ex((sys.argv[1], int(sys.argv[2]))))"
        bp = make_buildpack("probe", compile=f"""
            python3 -c "{probe}" {gateway} {port}
            python3 -c "{probe}" 169.254.169.254 80
        """)
        lines = Output()
        build(request_for(app_source, buildpacks=[str(bp)]), in_container(build_host), lines.append)
        with contextlib.suppress(TimeoutError):
            accepted.append(server.accept())
    # 113: EHOSTUNREACH, the policy's answer (icmp-admin-prohibited), at once.
    assert f"probe {gateway} 113" in lines, lines.text
    assert "probe 169.254.169.254 113" in lines, lines.text
    assert accepted == []


def test_it_puts_the_build_container_under_its_memory_cpu_and_pids_limits(
    build_host: BuildHost, app_source: Path, request_for: RequestFor, make_buildpack: MakeBuildpack
) -> None:
    bp = make_buildpack("limits", compile="""
        echo measure
        while [ ! -e "$1/measured" ]; do sleep 0.1; done
    """)
    executor = in_container(build_host, limits=ContainerLimits(memory_mb=300, cpu_quota=1.5, pids_limit=50))
    req = request_for(app_source, buildpacks=[str(bp)])
    seen: dict[str, object] = {}

    def on_line(line: str) -> None:
        if line == "measure":
            assert executor.container_id is not None
            seen.update(build_host.daemon.client.stats(executor.container_id))
            cg = cgroups.for_container(executor.container_id)
            if isinstance(cg, cgroups.CgroupV1):
                seen["cpu"] = (cg.dir("cpu") / "cpu.cfs_quota_us").read_text().split()[0]
            else:
                seen["cpu"] = (cg.path / "cpu.max").read_text().split()[0]
            (req.work_dir / "app" / "measured").touch()

    build(req, executor, on_line)
    assert seen["memory_limit_bytes"] == 300 * 1024 * 1024
    assert seen["cpu"] == str(int(1.5 * cgroups.CPU_PERIOD_US))
    assert 0 < int(seen["pids"]) <= 50  # type: ignore[call-overload]


def test_it_removes_the_container_when_the_build_is_cancelled(
    build_host: BuildHost, app_source: Path, request_for: RequestFor, make_buildpack: MakeBuildpack
) -> None:
    bp = make_buildpack("waits", compile="echo waiting; sleep 600")
    executor = in_container(build_host)

    def on_line(line: str) -> None:
        if line == "waiting":
            executor.cancel()

    with pytest.raises(BuildError, match=r"exited with (signal 9|status 137)"):
        build(request_for(app_source, buildpacks=[str(bp)]), executor, on_line)
    assert build_containers(build_host) == []


@pytest.mark.parametrize("app", ["flask", "express"])
def test_it_builds_a_real_app_with_its_registry_dependencies_in_a_container(
    build_host: BuildHost, request_for: RequestFor, tmp_path: Path, app: str
) -> None:
    lines = Output()
    executor = in_container(build_host, ca_certs=Path("/etc/ssl/certs"))
    result = build(request_for(copy_app(app, tmp_path), timeout=600), executor, lines.append)
    assert "web" in result.process_types.types, lines.text
    installed = {"flask": "app/.venv/bin/gunicorn", "express": "app/node_modules/express/package.json"}[app]
    assert (result.app_dir.parent / installed).exists(), lines.text
    assert build_containers(build_host) == []


def test_it_passes_exports_on_in_the_container_and_only_what_they_set_into_the_image(
    build_host: BuildHost, app_source: Path, request_for: RequestFor, make_buildpack: MakeBuildpack
) -> None:
    first = make_buildpack("first", compile="""
        mkdir -p "$1/vendor/bin"
        echo "export PATH=\\"$1/vendor/bin:\\$PATH\\"" > "$(dirname "$0")/../export"
        echo 'export TOOL_HOME=/opt/tool' >> "$(dirname "$0")/../export"
    """)
    second = make_buildpack("second", compile='echo "second sees TOOL_HOME=$TOOL_HOME PATH=$PATH"')
    lines = Output()
    req = request_for(app_source, buildpacks=[str(first), str(second)])
    result = build(req, in_container(build_host), lines.append)
    assert any(line.startswith("second sees TOOL_HOME=/opt/tool PATH=/tmp/build/vendor/bin:") for line in lines)
    # The container's own variables (HOSTNAME, DEBIAN_FRONTEND from the stack) stay out.
    assert sorted(result.exported_env) == ["PATH", "TOOL_HOME"]
    assert result.exported_env["PATH"].startswith("/app/vendor/bin:")


def test_it_sweeps_away_a_build_container_a_dead_builder_left_behind(
    build_host: BuildHost, app_source: Path, request_for: RequestFor
) -> None:
    # What a builder killed mid-build leaves: a build container that ended by itself.
    d = build_host.daemon
    left = d.run(Image(layers=build_host.stack.layers, config=build_host.stack.config, digest=build_host.stack.digest),
                 ["true"], process_type="build", app="demo")
    assert d.wait(left["id"])["state"] == "exited"
    running = d.run(Image(layers=build_host.stack.layers, config=build_host.stack.config, digest=build_host.stack.digest),
                    ["sleep", "60"], process_type="build", app="demo")
    try:
        build(request_for(app_source), in_container(build_host), [].append)
        ids = [c["id"] for c in d.client.list()]
        assert left["id"] not in ids
        assert running["id"] in ids  # a running one may be another build's
    finally:
        d.cleanup()


def test_it_passes_on_a_flood_of_output_without_keeping_it_on_disk(
    build_host: BuildHost, app_source: Path, request_for: RequestFor, make_buildpack: MakeBuildpack,
    tmp_path: Path,
) -> None:
    bp = make_buildpack("flood", compile="""
        python3 -c "
    import sys
    for i in range(300000):
        sys.stdout.write('%06d ' % i + 'x' * 93 + '\\\\n')
    print('flood done', flush=True)
    "
    """)
    executor = in_container(build_host)
    count = 0
    on_disk: list[int] = []

    def on_line(line: str) -> None:
        nonlocal count
        if line.endswith("x" * 93):
            count += 1
        elif line == "flood done":
            assert executor._steps_dir is not None
            on_disk.append(sum(p.stat().st_blocks * 512 for p in executor._steps_dir.iterdir()))

    build(request_for(app_source, buildpacks=[str(bp)]), executor, on_line)
    assert count == 300000  # 30 MB of output, every line passed on
    [used] = on_disk
    assert used < 10 * 1024 * 1024
