"""`python -m runtime`: the runtime daemon, a debug CLI for it, and `doctor`.

    python -m runtime daemon                      run the daemon (the Procfile's `runtime`)
    python -m runtime doctor                      what this host supports, in plain words
    python -m runtime run [-d] IMAGE [CMD...]     create and start a container (and follow it)
    python -m runtime run -it [--rm] IMAGE -- /bin/sh   an interactive shell in a new container
    python -m runtime exec [-i] [-t] ID -- CMD... run a command in a running container
    python -m runtime ps | logs | stop | rm | images | stacks
    python -m runtime network teardown [--force]  remove the bridge, its iptables rules and state
    python -m runtime down                        stop every container here, tear the network down
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import secrets
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any, Literal

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
    r.add_argument("--no-network", action="store_true", help="loopback only")
    r.add_argument("--net", action="store_true", help="on the host's bridge, with NAT (the default)")
    r.add_argument("-i", "--interactive", action="store_true", help="our stdin is the app's")
    r.add_argument("-t", "--tty", action="store_true", help="the app runs on a terminal: ours")
    r.add_argument("--rm", action="store_true", help="remove the container once it has ended")
    sub.add_parser("ps", help="list containers")
    e = sub.add_parser("exec", help="run a command in a running container")
    e.add_argument("-i", "--interactive", action="store_true", help="our stdin is the command's")
    e.add_argument("-t", "--tty", action="store_true", help="the command runs on a terminal: ours")
    e.add_argument("id")
    e.add_argument("command", nargs=argparse.REMAINDER)
    n = sub.add_parser("network", help="the host's container network")
    nsub = n.add_subparsers(dest="network_cmd", required=True)
    td = nsub.add_parser("teardown", help="remove the bridge, its iptables rules and its state")
    td.add_argument("-f", "--force", action="store_true", help="even while containers are attached")
    sub.add_parser("down", help="stop every container on this host and tear the network down")
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
        if args.cmd in ("network", "down"):
            from runtime.teardown import TeardownError, down, network_teardown

            try:
                if args.cmd == "down":
                    return down(root, _host_network_settings())
                return network_teardown(root, _host_network_settings(), force=args.force)
            except TeardownError as exc:
                print(f"error: {exc}", file=sys.stderr)
                return 1
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
        from runtime.egress import ALLOW_SETTING, EgressError, parse_allow
        from runtime.network import HostNetwork, NetworkError

        try:
            allow = parse_allow(os.environ.get(ALLOW_SETTING, ""))
        except EgressError as exc:
            print(f"error: {exc}", file=sys.stderr)
            return 1
        try:
            net = HostNetwork(*_host_network_settings(), root / "network", build_allow=allow)
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


def _host_network_settings() -> tuple[str, str]:
    """The host network's bridge and subnet: `$PAAS_BRIDGE`, `$PAAS_HOST_SUBNET`."""
    return os.environ.get("PAAS_BRIDGE", BRIDGE_DEFAULT), os.environ.get("PAAS_HOST_SUBNET", SUBNET_DEFAULT)


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
        if not _strip_dashes(args.command):
            print("error: exec needs a command", file=sys.stderr)
            return 2
        if _not_a_terminal(args):
            return 2
        if args.interactive or args.tty:
            return _exec_attached(client, args)
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


def _exec_attached(client: DaemonClient, args: argparse.Namespace) -> int:
    from runtime import attach

    size = attach.terminal_size(0, 1)
    env = {"TERM": os.environ.get("TERM", "xterm")} if args.tty else {}
    with client.exec_session(args.id, _strip_dashes(args.command), env=env, tty=args.tty, size=size) as s:
        if args.tty:
            return attach.interact_tty(s, forward_input=args.interactive)
        return attach.interact_pipes(s)


def _not_a_terminal(args: argparse.Namespace) -> bool:
    """-it types into the container's terminal: our input must be a terminal too (say so if not)."""
    if args.tty and args.interactive and not os.isatty(0):
        print("error: the input is not a terminal: use -i without -t to pipe input", file=sys.stderr)
        return True
    return False


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
    if args.net and args.no_network:
        print("error: --net and --no-network contradict each other", file=sys.stderr)
        return 2
    if _not_a_terminal(args):
        return 2
    if args.tty or args.interactive:
        return _run_attached(root, client, args, spec, image.layers, image.config)
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
    if args.rm:
        client.remove(c["id"], force=True)
    return int(final["exit_code"] or 0)


def _run_attached(
    root: Path, client: DaemonClient, args: argparse.Namespace, spec: dict[str, Any],
    layers: list[Path], config: dict[str, Any],
) -> int:
    """`run -t` (a terminal, ours) or `run -i` (our stdin; the output comes from the log)."""
    import threading

    from runtime import attach

    if args.detach:
        print("error: -d and -i/-t exclude each other: an attached container lives as long as its session", file=sys.stderr)
        return 2
    if args.tty:
        spec["env"].setdefault("TERM", os.environ.get("TERM", "xterm"))
    size = attach.terminal_size(0, 1)
    mode: Literal["tty", "stdin"] = "tty" if args.tty else "stdin"
    # With -i the output comes from the log, so the container is removed here once it is read.
    with client.run_attached(spec, layers, config, attach=mode, size=size, remove=args.rm and args.tty) as s:
        cid = str(s.result["id"])
        if args.tty:
            code = attach.interact_tty(s, forward_input=args.interactive)
        else:
            def follow() -> None:
                with contextlib.suppress(DaemonError, OSError):
                    for item in DaemonClient(root / "daemon.sock").logs(cid, tail=1 << 30, follow=True):
                        print(item["line"], file=sys.stdout if item["stream"] == "stdout" else sys.stderr, flush=True)

            printer = threading.Thread(target=follow, daemon=True)
            printer.start()
            code = attach.interact_stdin(s)
            printer.join()
            if args.rm:
                client.remove(cid, force=True)
    if code == 128 + 9 and not args.rm:
        with contextlib.suppress(DaemonError):
            if client.inspect(cid)["state"] == "oom":
                print(f"{cid}: killed, out of memory", file=sys.stderr)
    return code


if __name__ == "__main__":
    try:
        sys.exit(main())
    except BrokenPipeError:
        sys.exit(1)
    except json.JSONDecodeError as exc:  # pragma: no cover - defensive
        print(f"error: {exc}", file=sys.stderr)
        sys.exit(1)
