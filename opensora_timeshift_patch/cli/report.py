"""``opensora-timeshift report DIR``: PNG figures of the telemetry a run wrote to DIR/timeshift_telemetry.jsonl.

Records are cumulative per bucket (the telemetry's format, ``timeshift-telemetry/1``), so consecutive records of a
bucket are differenced into intervals: the heatmap shows, per bucket, the mean loss per noise-level bin of each
interval (step x bin); the curves, each bucket's loss per bin over its latest interval; the last figure, the
drawn fraction of timesteps per bin against the configured distribution's, with the record's G-test p.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import sys
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence, Tuple

import numpy as np

from ..telemetry import FILE_NAME, FORMAT
from .common import UsageError
from .options import MAX_DPI, Once, int_in
from .plot import quiet_matplotlib, save

Bucket = Tuple[Any, Any, Any, Any]


class Record:
    """One parsed line: its bucket, step and per-bin statistics (counts/sums None where the release keeps none)."""

    def __init__(self, line: int, obj: Dict[str, Any], where: str) -> None:
        self.line, self.where = line, where
        self.bucket: Bucket = (obj["rule"], obj["height"], obj["width"], obj["num_frames"])
        self.step = obj["step"]
        self.edges = obj["edges"]
        self.count, self.sum, self.drawn = obj["count"], obj["sum"], obj["drawn"]
        self.expected, self.check = obj["expected"], obj["check"]


def _is_int(v: Any) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def _is_num(v: Any) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)


def _numbers(obj: Dict[str, Any], key: str, n: Optional[int], where: str, ints: bool = False,
             nullable: bool = False) -> Optional[int]:
    v = obj.get(key, None)
    if v is None and nullable:
        return n
    ok = _is_int if ints else _is_num
    if not isinstance(v, list) or not v or not all(ok(x) for x in v) or (n is not None and len(v) != n):
        what = "integers" if ints else "finite numbers"
        size = f" of {n}" if n is not None else ""
        raise UsageError(f"{where}: {key!r} must be a list{size} {what}, got {_short(v)}")
    if any(x < 0 for x in v) and key != "sum":
        raise UsageError(f"{where}: {key!r} has a negative entry: {_short(v)}")
    return len(v)


def _short(v: Any) -> str:
    text = json.dumps(v) if not isinstance(v, bytes) else repr(v)
    return text if len(text) <= 60 else text[:57] + "..."


def parse_record(line: int, text: str, where: str) -> Record:
    """One line's record; a UsageError naming ``where`` (file:line) and the field for anything else."""
    try:
        obj = json.loads(text)
    except ValueError as err:
        raise UsageError(f"{where}: not JSON ({err.msg} at column {err.colno})") from err
    if not isinstance(obj, dict):
        raise UsageError(f"{where}: a {type(obj).__name__}, not a telemetry record (a JSON object)")
    if obj.get("format") != FORMAT:
        raise UsageError(f"{where}: 'format' is {_short(obj.get('format'))}, not {FORMAT!r}: not this telemetry's "
                         "record")
    if not _is_int(obj.get("step")) or obj["step"] < 0:
        raise UsageError(f"{where}: 'step' must be an integer >= 0, got {_short(obj.get('step'))}")
    edges = _numbers(obj, "edges", None, where)
    if edges < 2 or any(b <= a for a, b in zip(obj["edges"], obj["edges"][1:])):
        raise UsageError(f"{where}: 'edges' must be at least 2 increasing numbers, got {_short(obj['edges'])}")
    bins = edges - 1
    _numbers(obj, "drawn", bins, where, ints=True)
    _numbers(obj, "count", bins, where, ints=True, nullable=True)
    _numbers(obj, "sum", bins, where, nullable=True)
    _numbers(obj, "expected", bins, where, nullable=True)
    if (obj.get("count") is None) != (obj.get("sum") is None):
        raise UsageError(f"{where}: 'count' and 'sum' must both be lists or both null")
    for key in ("rule", "height", "width", "num_frames"):
        v = obj.get(key, "missing")
        if v is not None and not _is_num(v):
            raise UsageError(f"{where}: {key!r} must be a number or null, got {_short(v)}")
    check = obj.get("check")
    if check is not None and (not isinstance(check, dict) or not (check.get("p") is None or _is_num(check["p"]))):
        raise UsageError(f"{where}: 'check' must be null or an object with a numeric or null 'p', got {_short(check)}")
    return Record(line, obj, where)


def read_telemetry(directory: str) -> Tuple[Path, List[Record], Optional[str]]:
    """The records of ``directory``'s telemetry file, and a note when its last line was cut (a crash) and skipped."""
    base = Path(directory)
    if not base.exists():
        raise UsageError(f"DIR {directory!r} does not exist")
    if not base.is_dir():
        raise UsageError(f"DIR {directory!r} is not a directory (give the run's telemetry dir, not a file)")
    path = base / FILE_NAME
    if not path.exists():
        raise UsageError(f"{path} does not exist: no telemetry in {directory!r}")
    if path.is_dir():
        raise UsageError(f"{path} is a directory, not the telemetry file")
    if not path.is_file():
        raise UsageError(f"{path} is not a regular file")
    try:
        data = path.read_bytes()
    except OSError as err:
        raise UsageError(f"cannot read {path}: {err.strerror}") from err
    lines = data.split(b"\n")
    note = None
    if lines and lines[-1] == b"":
        lines.pop()
    elif lines:
        # the telemetry writes whole lines: a last line without its newline is a crash's cut line, skipped if bad
        try:
            json.loads(lines[-1].decode("utf-8"))
        except ValueError:
            note = f"{path}:{len(lines)}: the last line is cut (no newline, not JSON), skipped"
            lines.pop()
    records = []
    for i, raw in enumerate(lines, 1):
        where = f"{path}:{i}"
        try:
            text = raw.decode("utf-8")
        except UnicodeDecodeError as err:
            raise UsageError(f"{where}: not UTF-8 text (byte {err.start + 1}): not a telemetry file") from err
        if not text.strip():
            raise UsageError(f"{where}: an empty line (the telemetry writes none)")
        records.append(parse_record(i, text, where))
    if not records:
        raise UsageError(f"{path}: no telemetry records" + (" (its only line is cut)" if note else " (empty file)"))
    return path, records, note


def by_bucket(records: Sequence[Record]) -> Dict[Bucket, List[Record]]:
    """Each bucket's records in step order; a step going back within a bucket is refused (not one run)."""
    out: Dict[Bucket, List[Record]] = {}
    for r in records:
        seen = out.setdefault(r.bucket, [])
        if seen:
            prev = seen[-1]
            if r.step < prev.step:
                raise UsageError(f"{r.where}: step {r.step} after step {prev.step} of the same bucket (line "
                                 f"{prev.line}): records of more than one run")
            if r.edges != prev.edges:
                raise UsageError(f"{r.where}: 'edges' differ from line {prev.line}'s for the same bucket")
        seen.append(r)
    return out


def interval_means(records: Sequence[Record]) -> Tuple[List[int], np.ndarray]:
    """Steps and the mean loss per bin of each interval between consecutive cumulative records (NaN: no count)."""
    steps, rows = [], []
    prev_c = prev_s = None
    for r in records:
        c, s = np.asarray(r.count, float), np.asarray(r.sum, float)
        dc, ds = (c, s) if prev_c is None else (c - prev_c, s - prev_s)
        with np.errstate(invalid="ignore", divide="ignore"):
            rows.append(np.where(dc > 0, ds / np.where(dc > 0, dc, 1), np.nan))
        steps.append(r.step)
        prev_c, prev_s = c, s
    return steps, np.vstack(rows)


def bucket_label(b: Bucket) -> str:
    rule, h, w, f = b
    if h is None:
        return "unmatched"
    num = lambda v: f"{v:g}"  # noqa: E731
    return f"r{'base' if rule is None else num(rule)}_{num(h)}x{num(w)}x{num(f)}"


def draw(buckets: Dict[Bucket, List[Record]], out: Path, dpi: int) -> List[Path]:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    written = []
    with_loss = {b: rs for b, rs in buckets.items() if rs[-1].count is not None}
    if with_loss:
        n = len(with_loss)
        fig, axes = plt.subplots(n, 1, figsize=(8, 2.6 * n), squeeze=False)
        fig_c, ax_c = plt.subplots(figsize=(8, 4.5))
        for ax, (b, rs) in zip(axes[:, 0], with_loss.items()):
            steps, means = interval_means(rs)
            edges = rs[-1].edges
            y = np.arange(len(steps) + 1)
            mesh = ax.pcolormesh(edges, y, np.ma.masked_invalid(means), shading="flat")
            ax.set_yticks(y[:-1] + 0.5, [str(s) for s in steps])
            ax.set_title(f"{bucket_label(b)}: mean loss per interval ending at step (rows) and t bin (columns)")
            ax.set_xlabel("shifted timestep t")
            ax.set_ylabel("step")
            fig.colorbar(mesh, ax=ax)
            mids = 0.5 * (np.asarray(edges[:-1]) + np.asarray(edges[1:]))
            ax_c.plot(mids, means[-1], marker="o", label=f"{bucket_label(b)} (to step {steps[-1]})")
        fig.tight_layout()
        written.append(save(plt, fig, out / "loss_heatmap.png", dpi))
        ax_c.set_xlabel("shifted timestep t")
        ax_c.set_ylabel("mean loss over the latest interval")
        ax_c.legend(fontsize="small")
        written.append(save(plt, fig_c, out / "loss_latest.png", dpi))
    n = len(buckets)
    fig, axes = plt.subplots(n, 1, figsize=(8, 2.6 * n), squeeze=False)
    for ax, (b, rs) in zip(axes[:, 0], buckets.items()):
        r = rs[-1]
        edges = np.asarray(r.edges, float)
        drawn = np.asarray(r.drawn, float)
        total = drawn.sum()
        ax.stairs(drawn / total if total else drawn, edges, label=f"drawn ({int(total)} samples)")
        if r.expected is not None:
            ax.stairs(np.asarray(r.expected, float), edges, label="configured", linestyle="--")
        p = None if r.check is None else r.check.get("p")
        alarm = bool(r.check and r.check.get("alarm"))
        ax.set_title(f"{bucket_label(b)} at step {r.step}: G-test p = {'n/a' if p is None else f'{p:.3g}'}"
                     + (" ALARM" if alarm else ""))
        ax.set_ylabel("fraction per bin")
        ax.legend(fontsize="small")
    axes[-1, 0].set_xlabel("shifted timestep t")
    fig.tight_layout()
    written.append(save(plt, fig, out / "drawn_vs_configured.png", dpi))
    return written


def cmd_report(args: argparse.Namespace) -> int:
    if not args.out:
        raise UsageError("--out is empty: give a directory for the PNG files")
    out = Path(args.out)
    if os.path.lexists(out) and not out.is_dir():
        raise UsageError(f"--out {args.out!r} exists and is not a directory: give a directory for the PNG files")
    path, records, note = read_telemetry(args.dir)  # every line is checked before anything is written
    buckets = by_bucket(records)
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as err:
        raise UsageError(f"cannot create the --out directory {args.out!r}: {err.strerror}") from err
    if note:
        print(f"opensora-timeshift report: note: {note}", file=sys.stderr)
    with quiet_matplotlib():
        written = draw(buckets, out, args.dpi)
    for p in written:
        print(p)
    return 0


def add_parser(sub: Any, formatter: Any, epilog: str) -> None:
    p = sub.add_parser("report", help="PNG figures of a run's timestep telemetry (loss per noise level, draws)",
                       formatter_class=formatter, epilog=epilog,
                       description=f"Reads DIR/{FILE_NAME} (the telemetry's records, cumulative per bucket) and\n"
                                   "writes into --out: loss_heatmap.png (per bucket, the mean loss per t bin of each\n"
                                   "interval between records), loss_latest.png (each bucket's latest interval) and\n"
                                   "drawn_vs_configured.png (the latest drawn fraction per bin against the\n"
                                   "configured distribution, with the G-test p). Loss figures only where the\n"
                                   "release records losses (1.x). A last line cut by a crash is skipped, with a note.")
    p.add_argument("dir", metavar="DIR", help=f"the run's telemetry directory (holding {FILE_NAME})")
    p.add_argument("--out", required=True, action=Once, help="directory for the PNG files (not an existing file)")
    p.add_argument("--dpi", type=int_in(10, MAX_DPI), default=110, action=Once,
                   help=f"figure resolution, 10 to {MAX_DPI} (default 110)")
    p.set_defaults(func=cmd_report)
