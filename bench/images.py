#!/usr/bin/env python3
"""Benchmark: unpacking an untrusted layer safely, against GNU tar extracting the same tarball.

Packs a directory tree (default: a generated one like an app's dependencies: 6000 files of 1 to
32 KiB in 300 directories, plus symlinks) into an uncompressed layer tarball in a throw-away directory, then unpacks it alternately with
the image store's safe unpacker (`runtime.images.unpack_layer`) and with `tar -xpf` (which
checks nothing), each into a fresh directory, and prints the median of each and their ratio.

    python bench/images.py [--source DIR] [--rounds 5] [--json]
"""

from __future__ import annotations

import argparse
import json
import random
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from runtime.images import unpack_layer  # noqa: E402 - after the path is set


def generate_tree(root: Path, dirs: int = 300, files_per_dir: int = 20) -> None:
    rng = random.Random(42)
    for d in range(dirs):
        sub = root / f"pkg{d // 30}" / f"mod{d}"
        sub.mkdir(parents=True)
        for f in range(files_per_dir):
            (sub / f"f{f}.py").write_bytes(rng.randbytes(rng.randint(1024, 32 * 1024)))
        (sub / "latest").symlink_to("f0.py")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--source", type=Path, help="a directory to pack instead of the generated tree")
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--json", action="store_true", help="print one JSON object as the last line")
    args = parser.parse_args()
    if args.source is not None and not args.source.is_dir():
        print(f"error: {args.source} is not a directory", file=sys.stderr)
        return 1
    work = Path(tempfile.mkdtemp(prefix="paas-bench-images-"))
    try:
        if args.source is None:
            args.source = work / "tree"
            generate_tree(args.source)
        layer = work / "layer.tar"
        subprocess.run(["tar", "--numeric-owner", "-C", str(args.source), "-cf", str(layer), "."],
                       check=True)
        entries = int(subprocess.run(["tar", "-tf", str(layer)], check=True, capture_output=True,
                                     text=True).stdout.count("\n"))
        size_mb = layer.stat().st_size / 1e6
        ours: list[float] = []
        gnu: list[float] = []
        for i in range(args.rounds):
            dest = work / f"ours-{i}"
            dest.mkdir()
            t0 = time.perf_counter()
            with layer.open("rb") as f:
                unpack_layer(f, dest)
            ours.append(time.perf_counter() - t0)
            shutil.rmtree(dest)
            dest = work / f"tar-{i}"
            dest.mkdir()
            t0 = time.perf_counter()
            subprocess.run(["tar", "--numeric-owner", "-xpf", str(layer), "-C", str(dest)], check=True)
            gnu.append(time.perf_counter() - t0)
            shutil.rmtree(dest)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    figures = {
        "layer_entries": entries,
        "layer_mb": round(size_mb, 1),
        "unpack_s": round(statistics.median(ours), 3),
        "gnu_tar_s": round(statistics.median(gnu), 3),
        "unpack_vs_gnu_tar": round(statistics.median(ours) / statistics.median(gnu), 2),
        "unpack_mb_s": round(size_mb / statistics.median(ours), 1),
    }
    print(f"layer: {args.source} packed, {entries} entries, {size_mb:.1f} MB, {args.rounds} rounds")
    print(f"{'unpacker':<28}{'median s':>10}{'MB/s':>10}")
    print(f"{'runtime.images.unpack_layer':<28}{figures['unpack_s']:>10}{figures['unpack_mb_s']:>10}")
    print(f"{'GNU tar -xpf':<28}{figures['gnu_tar_s']:>10}{round(size_mb / figures['gnu_tar_s'], 1):>10}")
    print(f"ratio (ours / tar): {figures['unpack_vs_gnu_tar']}")
    if args.json:
        print(json.dumps(figures))
    return 0


if __name__ == "__main__":
    sys.exit(main())
