"""`python -m router`: run the router (a master and `PAAS_ROUTER_WORKERS` workers)."""

from __future__ import annotations

import argparse
import os
import sys

from router.config import ConfigError, RouterConfig
from router.server import Master, configure_logging


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m router",
        description="HTTP reverse proxy in front of the apps' web processes. "
        "Every option can also be set by its environment variable.",
    )
    parser.add_argument("--bind", help="host:port for HTTP (PAAS_ROUTER_BIND, default 0.0.0.0:8080)")
    parser.add_argument("--tls-bind", help="host:port for HTTPS (PAAS_ROUTER_TLS_BIND, off by default)")
    parser.add_argument("--workers", help="worker processes (PAAS_ROUTER_WORKERS, default: CPUs)")
    args = parser.parse_args(argv)
    env = dict(os.environ)
    for option, name in (("bind", "PAAS_ROUTER_BIND"), ("tls_bind", "PAAS_ROUTER_TLS_BIND"), ("workers", "PAAS_ROUTER_WORKERS")):
        value = getattr(args, option)
        if value is not None:
            env[name] = value
    try:
        config = RouterConfig.from_env(env)
    except ConfigError as error:
        print(f"router: {error}", file=sys.stderr)
        return 2
    configure_logging()
    try:
        master = Master(config)
    except OSError as error:
        print(f"router: cannot listen on {config.bind[0]}:{config.bind[1]}: {error.strerror}", file=sys.stderr)
        return 1
    return master.run()


if __name__ == "__main__":
    sys.exit(main())
