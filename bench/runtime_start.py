"""Container start: our runtime daemon vs runc and crun, side by side in one run.

Each round starts `/bin/true` on the tiny busybox image and waits for it to exit: with our
daemon (one `run` request over its socket that answers at the container's exit), with
`runc run` and with `crun run` on a bundle whose root is the same image layer, with the same
namespaces (mount, PID, UTS, IPC, network, cgroup), and with our daemon again with networking
(a veth on a bridge, NAT) and cgroup limits. Every round runs the four in a new random order, so
a noisy machine, or what one run leaves the kernel to clean up, slows them all alike. Then the
resident memory the platform spends per running container beyond the app's own processes (the
init's RSS plus the daemon's growth).

    python bench/runtime_start.py [--rounds N] [--containers N] [--json]

Needs root, runc and crun (Debian packages).
"""

from __future__ import annotations

import argparse
import ctypes
import json
import os
import random
import secrets
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from runtime.client import DaemonClient  # noqa: E402
from runtime.images import ImageStore  # noqa: E402
from runtime.tinyimage import build_tiny_image  # noqa: E402


def private_cgroup_view() -> None:
    """Hide the empty cgroup2 mount of a hybrid host from everything this process starts.

    crun refuses hybrid hosts ("cgroups in hybrid mode not supported"); in a mount namespace of
    our own without /sys/fs/cgroup/unified it uses the v1 controllers like runc and the daemon.
    """
    libc = ctypes.CDLL(None, use_errno=True)
    if libc.unshare(0x00020000) != 0:  # CLONE_NEWNS
        raise OSError(ctypes.get_errno(), "unshare(CLONE_NEWNS)")
    if libc.mount(None, b"/", None, 0x4000 | 0x40000, None) != 0:  # MS_REC | MS_PRIVATE
        raise OSError(ctypes.get_errno(), "make / private")
    unified = Path("/sys/fs/cgroup/unified")
    if unified.is_mount() and not (unified / "cgroup.subtree_control").read_text().strip():
        libc.umount2(bytes(unified), 2)  # MNT_DETACH


def rss_kib(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    return 0


def oci_bundle(path: Path, rootfs: Path) -> Path:
    path.mkdir(parents=True)
    subprocess.run(["runc", "spec"], cwd=path, check=True)
    cfg = json.loads((path / "config.json").read_text())
    cfg["root"] = {"path": str(rootfs), "readonly": True}
    cfg["process"]["terminal"] = False
    cfg["process"]["args"] = ["/bin/true"]
    cfg["process"]["user"] = {"uid": 1000, "gid": 1000}
    cfg["linux"]["namespaces"].append({"type": "cgroup"})
    (path / "config.json").write_text(json.dumps(cfg))
    return path


class Ours:
    """Drive the daemon: one `run` request that answers when the container has exited."""

    def __init__(self, client: DaemonClient, image: Any) -> None:
        self.client = client
        self.image = image

    def spec(self, cmd: list[str], net: bool) -> dict[str, Any]:
        return {
            "id": f"bench-{secrets.token_hex(4)}",
            "app": "bench",
            "release": 1,
            "process_type": "web",
            "image": self.image.digest,
            "command": cmd,
            "memory_mb": 64,
            "cpu_quota": 1.0,
            "pids_limit": 64,
            "network": {"mode": "bridge" if net else "none", "nat": True},
        }

    def run_once(self, net: bool) -> float:
        spec = self.spec(["/bin/true"], net)
        t0 = time.perf_counter()
        done = self.client.run(spec, self.image.layers, self.image.config, wait=True)
        ms = (time.perf_counter() - t0) * 1000
        if done["exit_code"] != 0:
            raise RuntimeError(f"/bin/true failed in a container: {done}")
        self.client.remove(spec["id"], force=True)
        return ms


def run_peer(tool: str, state: Path, bundle: Path) -> float:
    cid = f"bench-{secrets.token_hex(4)}"
    t0 = time.perf_counter()
    subprocess.run([tool, "--root", str(state), "run", "--bundle", str(bundle), cid],
                   check=True, stdin=subprocess.DEVNULL)
    return (time.perf_counter() - t0) * 1000


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--rounds", type=int, default=40)
    ap.add_argument("--containers", type=int, default=20, help="running containers for the memory figure")
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args()
    if os.geteuid() != 0:
        print("error: the benchmark needs root", file=sys.stderr)
        return 1
    for tool in ("runc", "crun"):
        if shutil.which(tool) is None:
            print(f"error: {tool} is not installed (Debian package {tool})", file=sys.stderr)
            return 1
    private_cgroup_view()
    work = Path(tempfile.mkdtemp(prefix="paas-bench-"))
    bridge = f"pb{secrets.token_hex(3)}"
    subnet = f"10.{random.randint(160, 250)}.{random.randint(0, 255)}.0/24"
    daemon: subprocess.Popen[str] | None = None
    client = DaemonClient(work / "rt" / "daemon.sock")
    try:
        store = ImageStore(work / "images")
        img = store.resolve(build_tiny_image(store))
        rootfs = img.layers[0]
        env = {**os.environ, "PAAS_BRIDGE": bridge, "PAAS_HOST_SUBNET": subnet}
        daemon = subprocess.Popen(
            [sys.executable, "-m", "runtime", "--root", str(work / "rt"), "daemon"],
            cwd=REPO, env=env, stdout=subprocess.PIPE, text=True,
        )
        assert daemon.stdout is not None
        if "ready" not in daemon.stdout.readline():
            print("error: the runtime daemon did not start", file=sys.stderr)
            return 1
        ours = Ours(client, img)
        bundle = oci_bundle(work / "bundle", rootfs)
        times: dict[str, list[float]] = {"paas": [], "runc": [], "crun": [], "paas_net": []}
        for _ in range(3):  # warm caches for everyone
            ours.run_once(False)
            run_peer("runc", work / "runc", bundle)
            run_peer("crun", work / "crun", bundle)
        runs: dict[str, Callable[[], float]] = {
            "paas": lambda: ours.run_once(False),
            "runc": lambda: run_peer("runc", work / "runc", bundle),
            "crun": lambda: run_peer("crun", work / "crun", bundle),
            "paas_net": lambda: ours.run_once(True),
        }
        order = list(runs)
        for _ in range(args.rounds):
            # A new order every round: what one run leaves to the kernel (a network namespace
            # being torn down, say) must not always slow the same runtime.
            random.shuffle(order)
            for key in order:
                times[key].append(runs[key]())

        before = rss_kib(daemon.pid)
        running = []
        for _ in range(args.containers):
            spec = ours.spec(["sleep", "3600"], True)
            client.create(spec, img.layers, img.config)
            running.append(client.start(spec["id"]))
        time.sleep(0.5)
        inits = [rss_kib(c["pid"]) for c in running]
        growth = max(0, rss_kib(daemon.pid) - before)
        per_container = statistics.mean(inits) + growth / len(running)
        for c in running:
            client.remove(c["id"], force=True)
    finally:
        if daemon is not None:
            for c in client.list() if daemon.poll() is None else []:
                client.remove(c["id"], force=True)
            daemon.terminate()
            daemon.wait(timeout=30)
        from runtime.network import HostNetwork

        HostNetwork(bridge, subnet, work / "rt" / "network").teardown()
        shutil.rmtree(work, ignore_errors=True)

    med = {k: statistics.median(v) for k, v in times.items()}
    print(f"container start to exit, /bin/true on the tiny image, median of {args.rounds} rounds")
    print(f"{'runtime':<34} {'median ms':>10} {'min ms':>8} {'p90 ms':>8} {'ours/peer':>10}")
    for key, label in (("paas", "paas daemon"), ("runc", "runc run"), ("crun", "crun run")):
        p90 = statistics.quantiles(times[key], n=10)[-1]
        ratio = "" if key == "paas" else f"{med['paas'] / med[key]:.2f}"
        print(f"{label:<34} {med[key]:>10.1f} {min(times[key]):>8.1f} {p90:>8.1f} {ratio:>10}")
    p90 = statistics.quantiles(times["paas_net"], n=10)[-1]
    print(f"{'paas daemon, network + limits':<34} {med['paas_net']:>10.1f} {min(times['paas_net']):>8.1f} {p90:>8.1f}")
    print(f"resident memory per running container beyond the app: {per_container:.0f} KiB "
          f"(init {statistics.mean(inits):.0f} KiB + daemon growth {growth / len(running):.0f} KiB)")
    result = {
        "start_ms_paas": round(med["paas"], 2),
        "start_ms_runc": round(med["runc"], 2),
        "start_ms_crun": round(med["crun"], 2),
        "ratio_vs_crun": round(med["paas"] / med["crun"], 3),
        "ratio_vs_runc": round(med["paas"] / med["runc"], 3),
        "start_ms_paas_net": round(med["paas_net"], 2),
        "rss_kib_per_container": round(per_container, 1),
    }
    if args.json:
        print(json.dumps(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
