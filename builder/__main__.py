"""Build a source directory on this host: `python -m builder SOURCE_DIR [options]`.

A tool for buildpack authors and for measuring builds; the platform itself builds through the
control plane. Commands run with the host executor (no isolation).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path

from builder.buildpack import BuildRequest, build
from builder.errors import BuildError
from builder.executor import HostExecutor


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m builder", description=__doc__.splitlines()[0])
    parser.add_argument("source", type=Path, help="the app's source directory")
    parser.add_argument("--app", default="local", help="app name (default: local)")
    parser.add_argument("--cache", type=Path, help="cache directory (default: a throw-away one)")
    parser.add_argument("--buildpack", action="append", default=[], help="buildpack (repeatable)")
    parser.add_argument("--env", action="append", default=[], metavar="KEY=VALUE", help="config var")
    parser.add_argument("--timeout", type=float, default=900.0, help="build deadline in seconds")
    parser.add_argument("--keep", type=Path, help="keep the work directory here (must not exist)")
    parser.add_argument("--json", action="store_true", help="print a JSON summary as the last line")
    args = parser.parse_args(argv)

    config: dict[str, str] = {}
    for item in args.env:
        key, sep, value = item.partition("=")
        if not sep:
            parser.error(f"--env wants KEY=VALUE, not {item!r}")
        config[key] = value
    scratch = Path(tempfile.mkdtemp(prefix="paas-build-"))
    work = args.keep or scratch / "work"
    cache = args.cache or scratch / "cache"
    started = time.monotonic()
    try:
        result = build(
            BuildRequest(
                app=args.app, source_dir=args.source, work_dir=work, cache_dir=cache,
                config=config, buildpacks=args.buildpack, timeout=args.timeout,
                allow_local_buildpacks=True,
            ),
            HostExecutor(),
            lambda line: print(line, flush=True),
        )
    except BuildError as e:
        print(f" !     {e}", file=sys.stderr)
        return 1
    except BrokenPipeError:
        # Whoever read the output went away (`| head`); stop quietly, as other tools do.
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 1
    finally:
        shutil.rmtree(scratch, ignore_errors=True)
    elapsed = time.monotonic() - started
    summary = {"app": args.app, **result.summary(), "build_seconds": round(elapsed, 2)}
    print(f"build took {elapsed:.1f} s; slug {result.slug.size} bytes, {result.slug.digest}")
    if args.json:
        print(json.dumps(summary))
    return 0


if __name__ == "__main__":
    sys.exit(main())
