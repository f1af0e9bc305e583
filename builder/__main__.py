"""Build a source directory on this host: `python -m builder SOURCE_DIR [options]`.

A tool for buildpack authors and for measuring builds; the platform itself builds through the
control plane. Commands run with the host executor (no isolation) unless `--executor runtime`
asks for a build container on this host's runtime daemon (root; the stack must be built).
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
from builder.executor import Executor, HostExecutor, RuntimeExecutor
from runtime.client import DaemonClient, DaemonError, runtime_root
from runtime.images import ImageError, ImageStore


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
    parser.add_argument("--executor", choices=("host", "runtime"), default="host",
                        help="where steps run: on this host (default) or in a runtime build container")
    parser.add_argument("--stack", default="stack:debian-13",
                        help="stack image for --executor runtime (default stack:debian-13)")
    args = parser.parse_args(argv)

    config: dict[str, str] = {}
    for item in args.env:
        key, sep, value = item.partition("=")
        if not sep:
            parser.error(f"--env wants KEY=VALUE, not {item!r}")
        config[key] = value
    try:
        executor = _executor(args.executor, args.stack, args.app)
    except (ImageError, BuildError) as e:
        print(f" !     {e}", file=sys.stderr)
        return 1
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
            executor,
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


def _executor(kind: str, stack: str, app: str) -> Executor:
    if kind == "host":
        return HostExecutor()
    client = DaemonClient()
    try:
        client.ping()
    except (DaemonError, OSError) as e:
        raise BuildError(f"--executor runtime needs the runtime daemon: {e}") from None
    image = ImageStore(runtime_root() / "images").resolve(stack)
    return RuntimeExecutor(client, image.digest, image.layers, image.config, app=app)


if __name__ == "__main__":
    sys.exit(main())
