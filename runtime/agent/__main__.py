"""`python -m runtime.agent [--host NAME]`: run this host's agent (the Procfile's `agent`)."""

from __future__ import annotations

import argparse
import sys

from runtime.agent.config import AgentSettings, ConfigError


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m runtime.agent", description=__doc__)
    parser.add_argument("--host", help="this host's name (default $PAAS_HOST_NAME or hostname)")
    parser.add_argument("--loglevel", default="INFO", choices=["DEBUG", "INFO", "WARNING", "ERROR"])
    args = parser.parse_args(argv)
    try:
        settings = AgentSettings.from_env(host=args.host)
    except ConfigError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    from runtime.agent.app import run_worker

    run_worker(settings, loglevel=args.loglevel)
    return 0


if __name__ == "__main__":
    sys.exit(main())
