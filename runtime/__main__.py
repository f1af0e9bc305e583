"""`python -m runtime`: the runtime daemon, a debug CLI for it, and `doctor`.

    python -m runtime daemon                      run the daemon (the Procfile's `runtime`)
    python -m runtime doctor                      what this host supports, in plain words
    python -m runtime run [-d] IMAGE [CMD...]     create and start a container (and follow it)
    python -m runtime ps | exec | logs | stop | rm | images | stacks
"""

from __future__ import annotations

import argparse
import json
import os
import secrets
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from runtime.client import DaemonClient, DaemonError, runtime_root

BRIDGE_DEFAULT = "paas0"
SUBNET_DEFAULT = "10.88.0.0/24"


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m runtime", description="paas container runtime")
    p.add_argument("--root", type=Path, help="runtime root (default $PAAS_DATA_DIR/runtime)")
    sub = p.add_subparsers(dest="cmd", required=True)
    d = sub.add_parser("daemon", help="run the runtime daemon")
    d.add_argument("--cgroup-root", type=Path, default=Path("/sys/fs/cgroup"))
    d.add_argument("--no-network", action="store_true", help="containers get loopback only")
    d.add_argument(
        "--log-max-bytes", type=int, default=int(os.environ.get("PAAS_RUNTIME_LOG_MAX_BYTES", 10 << 20)),
        help="rotate a container's log at this size (default $PAAS_RUNTIME_LOG_MAX_BYTES or 10 MiB)",
    )
    sub.add_parser("doctor", help="say what this host supports")
    r = sub.add_parser("run", help="create and start a container")
    r.add_argument("image")
    r.add_argument("command", nargs=argparse.REMAINDER)
    r.add_argument("--name", help="container id (default: random)")
    r.add_argument("-d", "--detach", action="store_true", help="do not follow the logs")
    r.add_argument("-e", "--env", action="append", default=[], metavar="NAME=VALUE")
    r.add_argument("-m", "--memory", type=int, default=256, metavar="MB")
    r.add_argument("--pids", type=int, default=256)
    r.add_argument("--cpus", type=float, default=None)
    r.add_argument("--port", type=int, default=None)
    r.add_argument("--no-network", action="store_true")
    sub.add_parser("ps", help="list containers")
    e = sub.add_parser("exec", help="run a command in a running container")
    e.add_argument("id")
    e.add_argument("command", nargs=argparse.REMAINDER)
    lg = sub.add_parser("logs", help="print a container's logs")
    lg.add_argument("id")
    lg.add_argument("-f", "--follow", action="store_true")
    lg.add_argument("-n", "--tail", type=int, default=100)
    s = sub.add_parser("stop", help="stop a container (SIGTERM, then SIGKILL)")
    s.add_argument("id")
    s.add_argument("-t", "--timeout", type=float, default=10.0)
    rm = sub.add_parser("rm", help="remove a container")
    rm.add_argument("id")
    rm.add_argument("-f", "--force", action="store_true")
    sub.add_parser("images", help="list images in the store")
    sub.add_parser("stacks", help="list the stacks this host can build")
    return p


def main(argv: Sequence[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    root: Path = args.root or runtime_root()
    try:
        if args.cmd == "daemon":
            return _daemon(root, args)
        if args.cmd == "doctor":
            from runtime.doctor import report

            ok, text = report(root)
            print(text)
            return 0 if ok else 1
        return _client_command(root, args)
    except DaemonError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 130


def _daemon(root: Path, args: argparse.Namespace) -> int:
    from runtime.build import BuildError
    from runtime.cgroups import CgroupError
    from runtime.daemon import NetworkHook, Runtime, serve, set_child_subreaper

    if os.geteuid() != 0:
        print("error: the runtime daemon needs root (namespaces, mounts, cgroups)", file=sys.stderr)
        return 1
    root.mkdir(parents=True, exist_ok=True)
    network: NetworkHook | None = None
    if not args.no_network:
        from runtime.network import HostNetwork, NetworkError

        try:
            net = HostNetwork(
                os.environ.get("PAAS_BRIDGE", BRIDGE_DEFAULT),
                os.environ.get("PAAS_HOST_SUBNET", SUBNET_DEFAULT),
                root / "network",
            )
            net.ensure()
            network = net
        except NetworkError as exc:
            print(f"error: host networking: {exc}", file=sys.stderr)
            return 1
    set_child_subreaper()
    try:
        rt = Runtime(
            root, cgroup_root=args.cgroup_root, network=network, log_max_bytes=args.log_max_bytes
        )
    except (BuildError, CgroupError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1

    def ready() -> None:
        print(f"runtime daemon ready on {root / 'daemon.sock'}", flush=True)

    # uvloop: each container start is a handful of event-loop wakeups; they cost less there.
    import uvloop

    uvloop.run(serve(rt, root / "daemon.sock", ready))
    return 0


def _client_command(root: Path, args: argparse.Namespace) -> int:
    client = DaemonClient(root / "daemon.sock")
    if args.cmd == "ps":
        rows = client.list()
        print(f"{'ID':<28} {'STATE':<8} {'PID':>7} {'EXIT':>5} {'IP':<15} COMMAND")
        for c in rows:
            cmd = " ".join(c["spec"]["command"])[:40]
            print(
                f"{c['id']:<28} {c['state']:<8} {c['pid'] or '-':>7} "
                f"{'-' if c['exit_code'] is None else c['exit_code']:>5} {c['ip'] or '-':<15} {cmd}"
            )
        return 0
    if args.cmd == "run":
        return _run(root, client, args)
    if args.cmd == "exec":
        if not args.command:
            print("error: exec needs a command", file=sys.stderr)
            return 2
        out = client.exec(args.id, _strip_dashes(args.command))
        sys.stdout.write(out["stdout"])
        sys.stderr.write(out["stderr"])
        return int(out["exit_code"])
    if args.cmd == "logs":
        for item in client.logs(args.id, tail=args.tail, follow=args.follow):
            print(f"{item['time']} {item['stream']} {item['line']}", flush=True)
        return 0
    if args.cmd == "stop":
        c = client.stop(args.id, timeout_s=args.timeout)
        print(f"{c['id']} {c['state']} exit={c['exit_code']}")
        return 0
    if args.cmd == "rm":
        client.remove(args.id, force=args.force)
        print(args.id)
        return 0
    if args.cmd == "images":
        from runtime.images import ImageStore

        if not (root / "images").is_dir():
            print(f"no image store at {root / 'images'} yet", file=sys.stderr)
            return 0
        for ref, digest in ImageStore(root / "images").images():
            print(f"{ref:<40} {digest}")
        return 0
    if args.cmd == "stacks":
        from runtime import stacks
        from runtime.images import ImageStore

        store = ImageStore(root / "images") if (root / "images").is_dir() else None
        for name in sorted(stacks.STACKS):
            ref = stacks.stack_def(name).reference
            built = store is not None and store.exists(ref)
            print(f"{name:<12} {ref:<24} {'built' if built else 'not built (python -m runtime.stacks build ' + name + ')'}")
        return 0
    raise AssertionError(args.cmd)


def _strip_dashes(cmd: list[str]) -> list[str]:
    return cmd[1:] if cmd and cmd[0] == "--" else cmd


def _run(root: Path, client: DaemonClient, args: argparse.Namespace) -> int:
    from runtime.images import ImageError, ImageStore

    try:
        image = ImageStore(root / "images").resolve(args.image)
    except ImageError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    env: dict[str, str] = {}
    for item in args.env:
        name, sep, value = item.partition("=")
        if not sep:
            print(f"error: -e {item!r}: use NAME=VALUE", file=sys.stderr)
            return 2
        env[name] = value
    spec: dict[str, Any] = {
        "id": args.name or f"run-{secrets.token_hex(4)}",
        "app": "debug",
        "release": 1,
        "process_type": "run",
        "image": image.digest,
        "command": _strip_dashes(args.command),
        "env": env,
        "port": args.port,
        "memory_mb": args.memory,
        "pids_limit": args.pids,
        "cpu_quota": args.cpus,
        "network": {"mode": "none" if args.no_network else "bridge", "nat": True},
    }
    c = client.create(spec, image.layers, image.config)
    c = client.start(c["id"])
    if args.detach:
        print(c["id"])
        return 0
    for item in client.logs(c["id"], tail=1 << 30, follow=True):
        stream = sys.stdout if item["stream"] == "stdout" else sys.stderr
        print(item["line"], file=stream, flush=True)
    final = client.inspect(c["id"])
    if final["state"] == "oom":
        print(f"{c['id']}: killed, out of memory", file=sys.stderr)
    return int(final["exit_code"] or 0)


if __name__ == "__main__":
    try:
        sys.exit(main())
    except BrokenPipeError:
        sys.exit(1)
    except json.JSONDecodeError as exc:  # pragma: no cover - defensive
        print(f"error: {exc}", file=sys.stderr)
        sys.exit(1)
