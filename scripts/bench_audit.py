"""Throughput and peak memory of ``audit``'s dataset reader, against pandas' own chunked read of the same columns.

    python scripts/bench_audit.py [--rows 3000000] [--repeats 5] [--caption 100] [--full-read]

Writes an Open-Sora-shaped dataset CSV (path, text, num_frames, height, width, aspect_ratio, fps, resolution; six
clip sizes, a quoted caption of ``--caption`` characters with a comma) into a temporary directory, then times, in
interleaved rounds and each in a fresh process (so its peak resident memory is its own):

- ``audit``: ``read_csv_buckets``, audit's reader (with the fps column, as ``--opensora-version 2.0`` reads it);
- ``pandas usecols``: ``pandas.read_csv(usecols=[num_frames, height, width, fps], chunksize=...)`` and nothing
  else: the floor for any reader built on pandas;
- with ``--full-read``, once: ``pandas.read_csv(path)``, Open-Sora's own read, which holds the whole table.

Each row gives the median rows per second and MB per second (the pandas import excluded: it is the same fixed cost
for both), the median of the per-round ratios to ``pandas usecols``, and the median peak resident memory. The rows
are read twice, at ``--rows`` and at a quarter of it, to show that memory does not grow with the file.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

SIZES = [(16, 240, 426), (17, 240, 426), (51, 480, 854), (1, 720, 1280), (102, 720, 1280), (32, 360, 640)]
COLUMNS = ["num_frames", "height", "width", "fps"]


def write_csv(path: str, rows: int, caption: int) -> None:
    words = ("a person walks along a beach at sunset, waves rolling in and gulls overhead " * (caption // 40 + 1))
    text = words[:caption]
    with open(path, "w", encoding="utf-8", newline="") as f:
        f.write("path,text,num_frames,height,width,aspect_ratio,fps,resolution\n")
        block = []
        for i in range(rows):
            n, h, w = SIZES[i % len(SIZES)]
            block.append(f'/data/clips/{i:09d}.mp4,"{text}",{n},{h},{w},{h / w:.4f},{(24, 30, 60)[i % 3]},{h * w}\n')
            if len(block) == 100_000:
                f.writelines(block)
                block.clear()
        f.writelines(block)


def child(kind: str, path: str) -> None:
    """One timed read in this process; prints its seconds, rows and peak resident memory as JSON."""
    import pandas as pd

    from opensora_timeshift_patch.cli.audit import CHUNK_ROWS, read_csv_buckets

    start = time.perf_counter()
    if kind == "audit":
        buckets, skipped, _ = read_csv_buckets(path, progress=False, skip_bad_rows=False, fps=True)
        rows = sum(buckets.values()) + sum(skipped.values())
    elif kind == "pandas usecols":
        rows = sum(len(chunk) for chunk in pd.read_csv(path, usecols=COLUMNS, chunksize=CHUNK_ROWS))
    else:
        rows = len(pd.read_csv(path))
    seconds = time.perf_counter() - start
    peak_kib = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss  # KiB on Linux
    print(json.dumps({"seconds": seconds, "rows": rows, "peak_mib": peak_kib / 1024}))


def timed(kind: str, path: str) -> dict:
    done = subprocess.run([sys.executable, __file__, "--child", kind, path], capture_output=True, text=True)
    if done.returncode:
        raise SystemExit(f"the {kind!r} read failed:\n{done.stderr}")
    return json.loads(done.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=3_000_000)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--caption", type=int, default=100, help="caption length in characters")
    parser.add_argument("--full-read", action="store_true", help="also time pandas.read_csv(path) once")
    parser.add_argument("--child", nargs=2, metavar=("KIND", "PATH"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        child(*args.child)
        return
    kinds = ["pandas usecols", "audit"]
    with tempfile.TemporaryDirectory(prefix="bench-audit-") as scratch:
        print(f"{'rows':>9}  {'reader':<16} {'rows/s':>10} {'MB/s':>7} {'ratio':>6} {'peak MiB':>9}")
        for rows in (args.rows // 4, args.rows):
            path = os.path.join(scratch, f"data_{rows}.csv")
            write_csv(path, rows, args.caption)
            mb = os.path.getsize(path) / 1e6
            rounds = [{kind: timed(kind, path) for kind in kinds} for _ in range(args.repeats)]
            for kind in kinds:
                seconds = statistics.median(r[kind]["seconds"] for r in rounds)
                ratio = statistics.median(r["pandas usecols"]["seconds"] / r[kind]["seconds"] for r in rounds)
                peak = statistics.median(r[kind]["peak_mib"] for r in rounds)
                assert all(r[kind]["rows"] == rows for r in rounds), "a reader lost rows"
                print(f"{rows:>9}  {kind:<16} {rows / seconds:>10,.0f} {mb / seconds:>7.1f} {ratio:>6.2f} {peak:>9.0f}")
            if args.full_read:
                full = timed("full", path)
                print(f"{rows:>9}  {'pandas full read':<16} {rows / full['seconds']:>10,.0f} "
                      f"{mb / full['seconds']:>7.1f} {'':>6} {full['peak_mib']:>9.0f}")
            os.unlink(path)
        print(f"(CSV rows of {mb / args.rows * 1e6:.0f} bytes: a {args.caption}-character caption; ratio: pandas "
              "usecols' time over the reader's, median of rounds; rows/s excludes the pandas import)")


if __name__ == "__main__":
    main()
