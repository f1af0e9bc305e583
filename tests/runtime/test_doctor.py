"""`python -m runtime doctor` says what the host supports in plain words."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

from runtime.doctor import (
    check_cgroups,
    check_network_tools,
    check_overlayfs,
    check_seccomp,
    report,
)

REPO = Path(__file__).resolve().parents[2]


def test_it_reports_this_hosts_support_in_plain_words() -> None:
    out = subprocess.run(
        [sys.executable, "-m", "runtime", "doctor"], cwd=REPO, capture_output=True, text=True
    )
    for name in ("cgroups:", "overlayfs:", "seccomp:", "user namespaces:", "pidfd:", "gcc:", "iptables:"):
        assert name in out.stdout
    assert "Traceback" not in out.stderr


def test_it_names_what_is_missing_on_a_host_without_overlayfs_or_seccomp(tmp_path: Path) -> None:
    proc = tmp_path / "proc"
    (proc / "self").mkdir(parents=True)
    (proc / "filesystems").write_text("nodev\tsysfs\nnodev\tproc\n\text4\n")
    (proc / "self" / "status").write_text("Name:\tx\n")
    cg = tmp_path / "cgroup"
    cg.mkdir()
    ok, text = report(tmp_path / "rt", proc=proc, cgroup_root=cg)
    assert not ok
    assert "MISSING overlayfs: not available" in text
    assert "MISSING seccomp:" in text
    assert "MISSING cgroups: no cgroup hierarchy" in text
    assert text.endswith("this host cannot run containers yet")


def test_it_describes_a_cgroup_v2_host_and_its_missing_controllers(tmp_path: Path) -> None:
    (tmp_path / "cgroup.controllers").write_text("cpu io memory\n")
    c = check_cgroups(tmp_path)
    assert not c.ok and "version 2" in c.detail and "missing controllers: pids" in c.detail


def test_it_finds_overlayfs_and_seccomp_where_the_kernel_lists_them(tmp_path: Path) -> None:
    (tmp_path / "filesystems").write_text("nodev\toverlay\n")
    (tmp_path / "sys" / "kernel" / "seccomp").mkdir(parents=True)
    (tmp_path / "sys" / "kernel" / "seccomp" / "actions_avail").write_text("kill_process kill_thread trap errno user_notif trace log allow\n")
    assert check_overlayfs(tmp_path).ok and check_seccomp(tmp_path).ok


def test_it_names_a_missing_ebtables_which_the_build_egress_filter_needs() -> None:
    found = check_network_tools(lambda tool: None if tool == "ebtables" else f"/usr/sbin/{tool}")
    assert not found.ok and found.required and "missing ebtables" in found.detail and "iptables" in found.detail
    assert check_network_tools(lambda tool: f"/usr/sbin/{tool}").ok
