"""The build container's settings: checked when the control plane starts, named when wrong."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from builder.executor import ContainerLimits, HostExecutor
from controlplane.env import ConfigError
from gitserver import deploy
from runtime.images import ImageStore

ROOT = Path(__file__).resolve().parents[2]


def test_it_reads_the_build_container_limits(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PAAS_BUILD_MEMORY_MB", "512")
    monkeypatch.setenv("PAAS_BUILD_CPUS", "0")
    monkeypatch.setenv("PAAS_BUILD_PIDS", "300")
    assert deploy.container_limits() == ContainerLimits(memory_mb=512, cpu_quota=None, pids_limit=300)


@pytest.mark.parametrize(("name", "value", "message"), [
    ("PAAS_BUILD_MEMORY_MB", "8", "PAAS_BUILD_MEMORY_MB must be between 64 and 1048576, not 8"),
    ("PAAS_BUILD_CPUS", "-1", "PAAS_BUILD_CPUS must be between 0 (no limit) and 1024, not -1"),
    ("PAAS_BUILD_PIDS", "lots", "PAAS_BUILD_PIDS must be a whole number, not 'lots'"),
])
def test_it_names_a_bad_limit(monkeypatch: pytest.MonkeyPatch, name: str, value: str, message: str) -> None:
    monkeypatch.setenv(name, value)
    with pytest.raises(ConfigError) as err:
        deploy.container_limits()
    assert str(err.value) == message


def test_it_refuses_a_ca_directory_without_a_bundle(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("PAAS_BUILD_CA_CERTS", str(tmp_path))
    with pytest.raises(ConfigError, match=r"has no ca-certificates\.crt"):
        deploy.build_ca_certs()
    monkeypatch.setenv("PAAS_BUILD_CA_CERTS", "none")
    assert deploy.build_ca_certs() is None


def test_it_builds_on_the_host_when_told_to(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("PAAS_BUILD_EXECUTOR", "host")
    executor = deploy.build_executor("app", "1", ImageStore(tmp_path), "stack:debian-13")
    assert isinstance(executor, HostExecutor)


def test_it_stops_the_control_plane_at_start_on_a_bad_executor_setting(tmp_path: Path) -> None:
    env = {"PATH": "/usr/bin:/bin", "PAAS_DATA_DIR": str(tmp_path), "PAAS_BUILD_EXECUTOR": "docker"}
    proc = subprocess.run([sys.executable, str(ROOT / "manage.py"), "check"], cwd=ROOT, env=env,
                          capture_output=True, text=True, timeout=120, check=False)
    assert proc.returncode != 0
    assert "PAAS_BUILD_EXECUTOR must be host, runtime or auto, not 'docker'" in proc.stderr
