"""Containers as apps see them: isolation, confinement, limits and hostile apps."""

from __future__ import annotations

import os
import socket
import subprocess
import time
from pathlib import Path
from urllib.parse import urlparse

import pytest

from runtime import cgroups
from runtime.client import DaemonError
from tests.runtime.daemon_fixtures import (  # noqa: F401  (fixtures)
    Daemon,
    Image,
    daemon_fixture,
    rt_fixture,
    tiny_fixture,
)

pytestmark = pytest.mark.root

HOSTILE_OPS = [
    "mount_tmpfs", "mount_proc", "remount_root", "remount_proc", "umount_proc", "unshare_user",
    "clone_newuser", "setns", "pivot_root", "chroot", "ptrace", "bpf", "keyctl", "kexec_load",
    "init_module", "finit_module", "open_by_handle_at", "userfaultfd", "perf_event_open",
]
EPERM = 1


@pytest.fixture(scope="module")
def probe(tiny: Image, tmp_path_factory: pytest.TempPathFactory) -> Image:
    """The tiny image plus a layer with a static program that tries forbidden syscalls."""
    layer = tmp_path_factory.mktemp("probe-layer")
    (layer / "bin").mkdir()
    src = Path(__file__).with_name("probe.c")
    subprocess.run(["gcc", "-static", "-O2", "-o", str(layer / "bin" / "probe"), str(src)], check=True)
    return Image(layers=[*tiny.layers, layer], config=tiny.config, digest=tiny.digest)


def run_to_exit(rt: Daemon, image: Image, command: list[str], **over: object) -> tuple[dict, str]:
    c = rt.run(image, command, **over)
    done = rt.wait(c["id"])
    return done, rt.output(c["id"])


def test_it_runs_a_command_to_completion_and_records_its_exit_code(rt: Daemon, tiny: Image) -> None:
    done, out = run_to_exit(rt, tiny, ["sh", "-c", "echo hello; exit 3"])
    assert done["state"] == "exited" and done["exit_code"] == 3
    assert out == "hello"


def test_it_reports_a_command_that_does_not_exist_as_a_failed_start(rt: Daemon, tiny: Image) -> None:
    spec = rt.spec(tiny, ["no-such-program"])
    rt.client.create(spec, tiny.layers, tiny.config)
    with pytest.raises(Exception, match="cannot run no-such-program: No such file or directory"):
        rt.client.start(spec["id"])
    assert rt.client.inspect(spec["id"])["state"] == "failed"


def test_it_gives_the_app_its_own_hostname_pids_and_an_unprivileged_user(rt: Daemon, tiny: Image) -> None:
    _, out = run_to_exit(
        rt, tiny, ["sh", "-c", "hostname; id -u; id -g; echo $$; ls /proc | grep -c '^[0-9]'"]
    )
    hostname, uid, gid, pid, nprocs = out.splitlines()
    assert hostname == rt.made[-1]
    assert (uid, gid) == ("1000", "1000")
    assert pid == "2"  # the init is PID 1
    assert int(nprocs) <= 4  # init, sh, ls and grep: nothing of the host


def test_it_confines_the_app_with_no_capabilities_no_new_privs_and_seccomp(rt: Daemon, tiny: Image) -> None:
    _, out = run_to_exit(rt, tiny, ["sh", "-c", "grep -E '^(Cap|NoNewPrivs|Seccomp)' /proc/self/status"])
    status = dict(line.split(":\t") for line in out.splitlines())
    assert status["CapEff"] == status["CapPrm"] == status["CapAmb"] == "0000000000000000"
    bounding = int(status["CapBnd"], 16)
    cap_sys_admin, cap_net_raw, cap_sys_ptrace, cap_sys_module = 21, 13, 19, 16
    for cap in (cap_sys_admin, cap_net_raw, cap_sys_ptrace, cap_sys_module):
        assert not bounding & (1 << cap)
    assert status["NoNewPrivs"] == "1" and status["Seccomp"] == "2"


def test_it_closes_every_descriptor_above_two_before_exec(rt: Daemon, tiny: Image) -> None:
    _, out = run_to_exit(rt, tiny, ["sh", "-c", "ls /proc/1/fd >/dev/null 2>&1; exec ls /proc/self/fd"])
    # ls itself holds one descriptor open on the directory it lists.
    fds = sorted(int(x) for x in out.split())
    assert fds[:3] == [0, 1, 2] and len(fds) == 4


def test_it_keeps_the_inits_descriptors_and_environment_from_the_app(rt: Daemon, tiny: Image) -> None:
    _, out = run_to_exit(
        rt, tiny,
        ["sh", "-c", "ls /proc/1/fd >/dev/null 2>&1; echo fd=$?; cat /proc/1/environ >/dev/null 2>&1; echo env=$?;"
         "ls /proc/1/cwd/ >/dev/null 2>&1; echo cwd=$?"],
        env={"SECRET": "x"},
    )
    assert out.split() == ["fd=1", "env=1", "cwd=1"]


def test_it_gives_the_container_a_cgroup_namespace_rooted_at_its_own_cgroup(rt: Daemon, tiny: Image) -> None:
    _, out = run_to_exit(rt, tiny, ["cat", "/proc/self/cgroup"])
    mine = {line.split(":")[1]: line.split(":")[2] for line in out.splitlines()}
    for controller in ("memory", "pids", "cpu", "cpuacct"):
        assert mine[controller] == "/"  # the host's hierarchy above it is invisible


def test_it_refuses_to_start_in_a_working_directory_that_does_not_exist(rt: Daemon, tiny: Image) -> None:
    config = {"config": {**tiny.config["config"], "WorkingDir": "/nowhere"}}
    spec = rt.spec(tiny, ["true"])
    rt.client.create(spec, tiny.layers, config)
    with pytest.raises(DaemonError, match="cannot change to the working directory /nowhere"):
        rt.client.start(spec["id"])


def test_it_builds_a_minimal_dev_with_the_real_null_device(rt: Daemon, tiny: Image) -> None:
    _, out = run_to_exit(rt, tiny, ["sh", "-c", "ls /dev; stat -c '%F %t:%T' /dev/null; echo x > /dev/null && echo wrote"])
    lines = out.splitlines()
    assert set(lines[:-2]) == {
        "fd", "full", "mqueue", "null", "ptmx", "pts", "random", "shm", "stderr", "stdin",
        "stdout", "tty", "urandom", "zero",
    }
    assert lines[-2] == "character special file 1:3"
    assert lines[-1] == "wrote"


MASKED_FILES = ["/proc/kcore", "/proc/keys", "/proc/timer_list", "/proc/interrupts", "/proc/sched_debug"]
MASKED_DIRS = ["/proc/acpi", "/proc/scsi", "/sys/firmware"]


def test_it_masks_and_write_protects_the_oci_default_proc_paths(rt: Daemon, tiny: Image) -> None:
    files = [p for p in MASKED_FILES if os.path.exists(p)]  # what the host kernel has to hide
    dirs = [p for p in MASKED_DIRS if os.path.isdir(p) and os.listdir(p)]
    assert files
    script = "".join(f"echo {p} $(cat {p} | wc -c);" for p in files)
    script += "".join(f"echo {p} $(ls {p} | wc -l);" for p in dirs)
    script += (
        "echo h > /proc/sysrq-trigger && echo sysrq-written;"
        "echo evil > /proc/sys/kernel/hostname && echo sysctl-written;"
        "touch /sys/x && echo sys-written;"
        "grep -E ' /(proc/sys|sys|proc/sysrq-trigger) ' /proc/mounts | cut -d' ' -f2,4 | cut -d, -f1"
    )
    _, out = run_to_exit(rt, tiny, ["sh", "-c", script])
    lines = out.splitlines()
    assert lines[: len(files) + len(dirs)] == [f"{p} 0" for p in files + dirs]
    assert "written" not in out
    read_only = {"/sys ro", "/proc/sys ro"}
    if os.path.exists("/proc/sysrq-trigger"):
        read_only.add("/proc/sysrq-trigger ro")
    assert set(lines[len(files) + len(dirs):]) == read_only


def test_it_denies_the_syscalls_dockers_default_profile_denies(rt: Daemon, probe: Image) -> None:
    _, out = run_to_exit(rt, probe, ["probe", "getpid", *HOSTILE_OPS])
    results = dict(line.split() for line in out.splitlines())
    assert results.pop("getpid") == "0"
    assert results == {op: str(EPERM) for op in HOSTILE_OPS}


def test_it_keeps_the_containers_files_apart(rt: Daemon, tiny: Image) -> None:
    a = rt.run(tiny, ["sh", "-c", "echo s3cret > /tmp/secret; echo ready; sleep 30"])
    for _ in range(200):
        if "ready" in rt.output(a["id"]):
            break
        time.sleep(0.02)
    _, out = run_to_exit(
        rt, tiny,
        ["sh", "-c", "cat /tmp/secret /proc/*/root/tmp/secret 2>/dev/null; find / -name secret 2>/dev/null; echo end"],
    )
    assert out == "end"
    rt.client.stop(a["id"], timeout_s=1)


def test_it_keeps_the_host_loopback_out_of_reach(rt: Daemon, tiny: Image) -> None:
    url = urlparse(os.environ["REDIS_URL"])
    with socket.create_connection((url.hostname, url.port), timeout=5) as s:  # reachable from the host
        s.sendall(b"PING\r\n")
        assert s.recv(16) == b"+PONG\r\n"
    _, out = run_to_exit(
        rt, tiny,
        ["sh", "-c", f"printf 'PING\\r\\n' | nc -w 2 {url.hostname} {url.port}; echo rc=$?; ip -o link | cut -d: -f2"],
    )
    assert "PONG" not in out
    assert "rc=1" in out
    assert out.split("rc=1")[1].split() == ["lo"]


@pytest.mark.slow
def test_it_kills_a_process_that_exceeds_its_memory_and_reports_oom(rt: Daemon, tiny: Image) -> None:
    neighbour = rt.run(tiny, ["sleep", "30"], memory_mb=16)
    done, _ = run_to_exit(rt, tiny, ["dd", "if=/dev/zero", "of=/dev/null", "bs=64M", "count=1"], memory_mb=16)
    assert done["state"] == "oom" and done["oom"] is True
    assert done["exit_code"] == 137
    assert rt.client.inspect(neighbour["id"])["state"] == "running"
    rt.client.stop(neighbour["id"], timeout_s=1)


@pytest.mark.slow
def test_it_stops_a_fork_bomb_at_the_pids_limit(rt: Daemon, probe: Image) -> None:
    c = rt.run(probe, ["probe", "forkbomb"], pids_limit=16)
    for _ in range(500):
        if "forked=" in rt.output(c["id"]):
            break
        time.sleep(0.02)
    # The init and the bomb itself count: 14 children fit, the other 986 forks are refused.
    assert rt.output(c["id"]) == "forked=14 refused=986"
    assert rt.client.stats(c["id"])["pids"] == 16
    stopped = rt.client.stop(c["id"], timeout_s=1)
    assert stopped["state"] == "exited"


def test_it_applies_memory_cpu_and_pids_limits_in_the_containers_cgroup(rt: Daemon, tiny: Image) -> None:
    c = rt.run(tiny, ["sleep", "30"], memory_mb=48, cpu_quota=0.5, cpu_shares=512, pids_limit=33)
    cg = cgroups.for_container(c["id"])
    assert isinstance(cg, cgroups.CgroupV1)  # these hosts are cgroup v1; v2 is tested on files
    mem = cg.dir("memory")
    assert int((mem / "memory.limit_in_bytes").read_text()) == 48 * 1024 * 1024
    assert int((mem / "memory.memsw.limit_in_bytes").read_text()) == 48 * 1024 * 1024
    assert (cg.dir("cpu") / "cpu.cfs_quota_us").read_text().strip() == "50000"
    assert (cg.dir("cpu") / "cpu.shares").read_text().strip() == "512"
    assert (cg.dir("pids") / "pids.max").read_text().strip() == "33"
    assert c["pid"] in cg.pids()
    stats = rt.client.stats(c["id"])
    assert stats["memory_limit_bytes"] == 48 * 1024 * 1024
    assert 0 < stats["memory_bytes"] < 48 * 1024 * 1024
    assert stats["pids"] == 2 and stats["cpu_ns"] > 0
    rt.client.stop(c["id"], timeout_s=1)
    deadline = time.monotonic() + 10  # released off the daemon's event loop
    while mem.exists() and time.monotonic() < deadline:
        time.sleep(0.02)
    assert not mem.exists()  # the cgroup goes with the container


def test_it_reaps_orphaned_zombies_as_pid_1(rt: Daemon, tiny: Image) -> None:
    script = "for i in 1 2 3; do (sleep 0.05 &); done; sleep 0.5; cat /proc/[0-9]*/stat | cut -d' ' -f3 | sort | uniq -c"
    _, out = run_to_exit(rt, tiny, ["sh", "-c", script])
    assert " Z" not in out and "R" in out
