"""Both cgroup writers against directories laid out like the real hierarchies, plus v1 for real."""

from __future__ import annotations

import secrets
import subprocess
from pathlib import Path

import pytest

from runtime import cgroups
from runtime.cgroups import CgroupError, CgroupV1, CgroupV2, Limits, cpu_weight, detect_version


@pytest.fixture
def v2_root(tmp_path: Path) -> Path:
    """A directory shaped like a cgroup2 mount: controllers listed, none enabled below the root."""
    (tmp_path / "cgroup.controllers").write_text("cpuset cpu io memory hugetlb pids rdma misc\n")
    (tmp_path / "cgroup.subtree_control").write_text("")
    (tmp_path / "paas").mkdir()
    (tmp_path / "paas" / "cgroup.subtree_control").write_text("")
    return tmp_path


def test_it_tells_v2_from_v1_by_the_files_at_the_root(v2_root: Path, tmp_path_factory: pytest.TempPathFactory) -> None:
    assert detect_version(v2_root) == 2
    v1 = tmp_path_factory.mktemp("v1")
    (v1 / "memory").mkdir()
    (v1 / "memory" / "memory.limit_in_bytes").write_text("9223372036854771712\n")
    assert detect_version(v1) == 1
    with pytest.raises(CgroupError, match="no cgroup hierarchy found"):
        detect_version(tmp_path_factory.mktemp("empty"))


def test_the_v2_writer_enables_controllers_and_writes_every_limit(v2_root: Path) -> None:
    cg = CgroupV2(v2_root, "web1-1")
    # The kernel creates the interface files with a new cgroup; the fake starts with swap's.
    (v2_root / "paas" / "web1-1").mkdir()
    (v2_root / "paas" / "web1-1" / "memory.swap.max").write_text("max\n")
    cg.create(Limits(memory_bytes=64 << 20, cpu_shares=512, cpu_quota=0.5, pids=100))
    assert (v2_root / "cgroup.subtree_control").read_text() == "+cpu +memory +pids"
    assert (v2_root / "paas" / "cgroup.subtree_control").read_text() == "+cpu +memory +pids"
    d = v2_root / "paas" / "web1-1"
    assert (d / "memory.max").read_text() == f"{64 << 20}\n"
    assert (d / "memory.swap.max").read_text() == "0\n"
    assert (d / "cpu.max").read_text() == "50000 100000\n"
    assert (d / "cpu.weight").read_text() == f"{cpu_weight(512)}\n"
    assert (d / "pids.max").read_text() == "100\n"
    assert cg.procs_files() == [d / "cgroup.procs"]


def test_the_v2_writer_leaves_enabled_controllers_alone_and_writes_no_quota_as_max(v2_root: Path) -> None:
    (v2_root / "cgroup.subtree_control").write_text("cpu memory pids\n")
    (v2_root / "paas" / "cgroup.subtree_control").write_text("cpu memory pids\n")
    CgroupV2(v2_root, "w").create(Limits(memory_bytes=1 << 20))
    assert (v2_root / "cgroup.subtree_control").read_text() == "cpu memory pids\n"
    assert (v2_root / "paas" / "w" / "cpu.max").read_text() == "max 100000\n"


def test_the_v2_reader_reports_usage_and_oom_kills(v2_root: Path) -> None:
    cg = CgroupV2(v2_root, "w")
    cg.create(Limits(memory_bytes=32 << 20))
    d = v2_root / "paas" / "w"
    (d / "memory.current").write_text("123456\n")
    (d / "cpu.stat").write_text("usage_usec 2500\nuser_usec 2000\nsystem_usec 500\n")
    (d / "pids.current").write_text("3\n")
    (d / "memory.events").write_text("low 0\nhigh 0\nmax 4\noom 1\noom_kill 1\noom_group_kill 0\n")
    u = cg.usage()
    assert (u.memory_bytes, u.memory_limit_bytes, u.cpu_ns, u.pids, u.oom_kills) == (
        123456, 32 << 20, 2_500_000, 3, 1
    )


def test_the_v1_writer_limits_memory_without_swap_cpu_and_pids(tmp_path: Path) -> None:
    for c in cgroups.V1_CONTROLLERS:
        (tmp_path / c).mkdir()
    d = tmp_path / "memory" / "paas" / "w"
    d.mkdir(parents=True)
    (d / "memory.memsw.limit_in_bytes").write_text("9223372036854771712\n")
    cg = CgroupV1(tmp_path, "w")
    cg.create(Limits(memory_bytes=16 << 20, cpu_shares=256, cpu_quota=1.5, pids=10))
    assert (d / "memory.limit_in_bytes").read_text() == f"{16 << 20}\n"
    assert (d / "memory.memsw.limit_in_bytes").read_text() == f"{16 << 20}\n"
    assert (tmp_path / "cpu" / "paas" / "w" / "cpu.cfs_quota_us").read_text() == "150000\n"
    assert (tmp_path / "cpu" / "paas" / "w" / "cpu.shares").read_text() == "256\n"
    assert (tmp_path / "pids" / "paas" / "w" / "pids.max").read_text() == "10\n"


def test_it_maps_cpu_shares_onto_cpu_weight_like_runc() -> None:
    assert cpu_weight(2) == 1
    assert cpu_weight(1024) == 39
    assert cpu_weight(262144) == 10000


def test_it_says_which_file_it_could_not_write(tmp_path: Path) -> None:
    (tmp_path / "cgroup.controllers").write_text("cpu memory pids\n")
    (tmp_path / "cgroup.subtree_control").mkdir()  # unwritable as a file
    with pytest.raises(CgroupError, match=r"cgroup\.subtree_control"):
        CgroupV2(tmp_path, "w").create(Limits(memory_bytes=1 << 20))


@pytest.mark.root
def test_the_v1_writer_works_against_the_real_hierarchy() -> None:
    root = cgroups.DEFAULT_ROOT
    if detect_version(root) != 1:
        pytest.fail("this test is for the cgroup v1 hosts the suite runs on")
    cid = f"t{secrets.token_hex(4)}-cg"
    cg = CgroupV1(root, cid)
    sleeper = subprocess.Popen(["sleep", "30"])
    try:
        cg.create(Limits(memory_bytes=20 << 20, cpu_shares=100, cpu_quota=0.25, pids=7))
        assert int((cg.dir("memory") / "memory.limit_in_bytes").read_text()) == 20 << 20
        assert int((cg.dir("pids") / "pids.max").read_text()) == 7
        for procs in cg.procs_files():
            procs.write_text(str(sleeper.pid))
        assert cg.pids() == [sleeper.pid]
        u = cg.usage()
        assert u.memory_limit_bytes == 20 << 20 and u.pids == 1 and u.oom_kills == 0
        cgroups.kill_all(cg)
        sleeper.wait(timeout=10)
    finally:
        sleeper.kill()
        sleeper.wait()
        cg.remove()
    assert not cg.dir("memory").exists()
