"""``audit``: what a dataset CSV and/or a training config's buckets meet under the config's scheduler.

Clips are counted per bucket (:func:`read_csv_buckets`, :func:`group_buckets`), each bucket is judged as a training
step would judge it (:func:`~opensora_timeshift_patch.guard.judge` on 1.x, :func:`~.views.opensora2_alpha` on 2.0), and the report says
which clips would collapse to t = 0 or be refused (exit status 1).
"""

from __future__ import annotations

import argparse
import codecs
import io
import math
import os
import warnings
from collections import Counter
from typing import Any, BinaryIO, Callable, Dict, List, Mapping, NamedTuple, Optional, Sequence, Tuple

import numpy as np
import torch

from .. import guard
from ..buckets import (RESOLUTION_NAMES, bucket_rule_of, closest_size, config_buckets, opensora2_base_size,
                       opensora2_fps_max, opensora2_geometry, opensora2_sizes, sampling_interval)
from ..opensora2 import SCHEDULER_TYPE, Opensora2Timesteps
from ..per_bucket import BucketRule, rule_for
from ..policies import SHIFT_MODES, temporal_size
from ..settings import SETTINGS, SettingError
from ..shift import TimestepShift
from .common import (STATUS_TEXT, UsageError, build_timeshift, buckets_text, format_table, input_file, load_config,
                     rule_cell, rule_text, short)
from .options import OPENSORA_VERSIONS, Once
from .views import (VAES, Alpha, Bucket, alpha_mismatch, bucket_children, build_opensora2, opensora2_alpha,
                    opensora2_inference_size, stock_opensora2)

CSV_COLUMNS = ("num_frames", "height", "width")
CHECKED = ("height", "width", "num_frames")  # a row's values are checked in this order: its first fault is named
MAX_CSV_VALUE = 2 ** 31 - 1
CHUNK_ROWS = 1 << 18  # rows per pandas chunk: a few MiB of numbers, whatever the file's size
EXTRA_FIELDS = "extra fields"
Key = Tuple[int, int, int, Optional[str]]  # (height, width, frames, bucket name or None)

class Current(NamedTuple):
    """The config's scheduler as the audit sees it: the shift it applies (None: no shift), and in words."""

    shift: Optional[TimestepShift]
    description: str
    rules: Tuple[BucketRule, ...] = ()  # rflow-timeshift's bucket_settings
    per_rule: Tuple[TimestepShift, ...] = ()  # the shift of each rule's samples: its child scheduler's
    recipe: Optional[str] = None  # the config's recipe=, when it names one
    recipe_shift: Optional[TimestepShift] = None  # that recipe's own training shift, nothing beside it

    def shift_for(self, height: int, width: int, frames: int) -> Tuple[Optional[TimestepShift], Optional[int]]:
        """The shift a clip of this size trains under, and the index of the rule that gives it (None: the
        scheduler's own)."""
        applies = rule_for(self.rules, frames, height, width)
        return (self.shift, None) if applies is None else (self.per_rule[applies.index], applies.index)


def current_scheduler(cfg: Optional[Any], version: str) -> Current:
    """The shift of a config's ``scheduler``, validated as training would validate it."""
    stock_mode = "legacy" if version == "1.2" else "v13"
    if cfg is None:
        return Current(TimestepShift(stock_mode, "ignore"),
                       f"no config: stock Open-Sora {version} rflow with use_timestep_transform=True")
    if not isinstance(cfg["scheduler"], dict):
        raise UsageError(f"scheduler must be a dict such as dict(type='rflow', ...), got {short(cfg['scheduler'])}")
    sched = dict(cfg["scheduler"])
    for key in ("use_timestep_transform", "scale_temporal"):  # truthiness would read "False" as on
        if key in sched and not isinstance(sched[key], bool):
            raise UsageError(f"scheduler {key}={short(sched[key])} must be True or False")
    kind = sched.get("type")
    if kind == "rflow":
        if not sched.get("use_timestep_transform", False):
            return Current(None, "stock rflow with use_timestep_transform=False: no shift")
        try:
            scale = SETTINGS["transform_scale"].check(sched.get("transform_scale", 1.0))
        except SettingError as err:
            raise UsageError(f"scheduler rflow: {err}") from err
        # scale_temporal=False (1.3): every sample is shifted as an image, transform_scale unused
        shift = (TimestepShift(stock_mode, "ignore", transform_scale=scale) if sched.get("scale_temporal", True)
                 else TimestepShift("spatial", "ignore"))
        return Current(shift, f"stock Open-Sora {version} rflow, shift on: shift_mode {shift.shift_mode!r} without a "
                              "guard")
    if kind == "rflow-timeshift":
        try:
            built = build_timeshift(sched)
        except (ValueError, TypeError, ImportError) as err:
            raise UsageError(f"scheduler rflow-timeshift: {err}") from err
        if not built.use_timestep_transform:
            return Current(None, "rflow-timeshift with use_timestep_transform=False: no shift")
        shift = built.shift
        rules = built.rules
        recipe = sched.get("recipe")  # valid: it built
        # the recipe's own training shift, to tell the settings beside it that move the training away from the
        # sampling shift the recipe pairs it with (where the model trains at another shift, the recipe says so)
        own = None if recipe is None else build_timeshift(dict(type=kind, recipe=recipe)).shift
        return Current(shift, f"rflow-timeshift, shift_mode {shift.shift_mode!r}, on_degenerate "
                              f"{shift.on_degenerate!r}"
                              + (f", {len(rules)} bucket_settings rule{'s' * (len(rules) > 1)}" if rules else ""),
                       rules, tuple(child.shift for child in bucket_children(built)), recipe, own)
    raise UsageError(f"scheduler type {short(kind)} is not audited: only 'rflow' and 'rflow-timeshift' shift timesteps")


def current_opensora2(cfg: Optional[Any]) -> Tuple[Opensora2Timesteps, str]:
    """The timesteps a 2.0 config trains with: stock 2.0's rule without a scheduler key, else rflow-timeshift's, built
    as the package's hook builds them when 2.0 parses the config."""
    sched = None if cfg is None else cfg.get("scheduler")
    if sched is None:
        return stock_opensora2(), (f"{'no config' if cfg is None else 'no scheduler key'}: stock Open-Sora 2.0's "
                                   "rule (alpha = lin((h w) // 4) * sqrt(T)), without a guard")
    if not isinstance(sched, dict) or sched.get("type") != SCHEDULER_TYPE:
        got = sched.get("type") if isinstance(sched, dict) else sched
        raise UsageError(f"scheduler type={short(got)} is not allowed on Open-Sora 2.0, which builds no scheduler: "
                         f"use dict(type={SCHEDULER_TYPE!r}, ...) or remove the scheduler key")
    ts = build_opensora2({k: v for k, v in sched.items() if k != "type"}, "scheduler rflow-timeshift (Open-Sora 2.0): ")
    return ts, f"{ts!r}, on_degenerate {ts.shift.on_degenerate!r}"


class _NotUtf8(Exception):
    def __init__(self, reason: str, offset: int) -> None:
        super().__init__(reason)
        self.reason, self.offset = reason, offset


class _HeadedStream(io.RawIOBase):
    """A CSV file's bytes after a header line of our own, for pandas.

    Drops a leading UTF-8 byte-order mark (pandas does, and ours now comes first), checks that every byte is UTF-8
    (pandas decodes only the columns it converts; Open-Sora's full read decodes them all), and moves the progress
    bar.
    """

    def __init__(self, f: BinaryIO, head: bytes, bar: Any) -> None:
        self.f, self.head, self.bar = f, head, bar
        self.decoder = codecs.getincrementaldecoder("utf-8")()
        self.offset = 0  # of the next byte of the file

    def readable(self) -> bool:
        return True

    def readinto(self, buffer: Any) -> int:
        if self.head:
            n = min(len(buffer), len(self.head))
            buffer[:n], self.head = self.head[:n], self.head[n:]
            return n
        if self.offset == 0:
            mark = self.f.read(len(codecs.BOM_UTF8))
            self.offset = len(mark)
            if mark != codecs.BOM_UTF8:
                self.f.seek(0)
                self.offset = 0
        n = self.f.readinto(buffer)
        data = memoryview(buffer)[:n]
        if not (self.decoder.getstate()[0] == b"" and data.tobytes().isascii()):
            try:
                self.decoder.decode(data, final=n == 0)
            except UnicodeDecodeError as err:
                raise _NotUtf8(err.reason, self.offset + max(err.start, 0)) from None
        elif n == 0:
            self.decoder.decode(b"", final=True)
        self.offset += n
        self.bar.update(n)
        return n


def read_csv_buckets(path: str, progress: bool, skip_bad_rows: bool, fps: bool = False
                     ) -> Tuple[Counter, Counter, List[str]]:
    """Count the clips of an Open-Sora dataset CSV per (height, width, num_frames), in bounded memory.

    With ``fps`` (Open-Sora 2.0's bucket rule strides frames by it) the key also holds the row's fps, None where the
    column or the value is missing (2.0 reads a missing value as NaN: no stride).

    Read with ``pandas.read_csv``, Open-Sora's reader, in chunks of the needed columns: its quoting, its missing-value
    words, its numbers. What reading only some columns would let through is checked apart: the bytes are UTF-8, a
    first data row longer than the header (pandas would shift every column) is refused, and a later row with a
    surplus field is malformed (pandas refuses the whole file for it). Returns the counts, the malformed rows skipped
    by reason, and the first few of them in words.
    """
    import pandas as pd
    from tqdm.auto import tqdm

    input_file(path, "--csv")
    buckets: Counter = Counter()
    skipped: Counter = Counter()
    examples: List[str] = []
    try:
        header = _read_header(path)
        _check_header(path, header)
        _check_first_row(path, header)
        columns = [*CHECKED, *(["fps"] if fps and "fps" in header else [])]
        names = [f"c{i}" for i in range(len(header) + 1)]  # by position; the one past the header catches surplus
        where = {column: names[header.index(column)] for column in columns}
        faults = _Faults(columns)
        with open(path, "rb") as f, \
                tqdm(total=os.fstat(f.fileno()).st_size, unit="B", unit_scale=True, desc="audit", leave=False,
                     disable=None if progress else True) as bar, \
                warnings.catch_warnings():
            warnings.simplefilter("ignore")  # pandas' DtypeWarning for a chunk of mixed types: read per value below
            stream = io.BufferedReader(_HeadedStream(f, (",".join(names) + "\n").encode("ascii"), bar), 1 << 18)
            with pd.read_csv(stream, usecols=[*where.values(), names[-1]], chunksize=CHUNK_ROWS,
                             encoding="utf-8") as reader:
                reader.get_chunk(1)  # the file's own header row
                for chunk in reader:
                    for message in _tally(chunk, where, names[-1], faults, buckets, skipped, len(examples),
                                          fps, skip_bad_rows):
                        if not skip_bad_rows:
                            raise UsageError(f"{path}, {message} (pass --skip-bad-rows to count and skip such rows)")
                        examples.append(message)
    except _NotUtf8 as err:
        raise UsageError(f"{path} is not UTF-8 text ({err.reason} at line {_line_at(path, err.offset)}); save it as "
                         "UTF-8") from None
    except pd.errors.ParserError as err:
        raise UsageError(f"{path}: not readable as CSV by pandas.read_csv: {err}") from None
    except OSError as err:
        raise UsageError(f"cannot read {path}: {err.strerror or err}") from None
    return buckets, skipped, examples


def _read_header(path: str) -> List[str]:
    """The header row's names as pandas reads them, before it renames a repeated one ``name.1``."""
    import pandas as pd

    try:
        first = pd.read_csv(path, header=None, nrows=1, dtype=str, keep_default_na=False, encoding="utf-8")
    except pd.errors.EmptyDataError:
        return []
    except UnicodeDecodeError as err:
        raise _NotUtf8(err.reason, 0) from None
    return [str(name) for name in first.iloc[0]] if len(first) else []


def _check_header(path: str, header: Sequence[str]) -> None:
    if not header:
        raise UsageError(f"{path} is empty: no header row (Open-Sora's data tools write path, text, num_frames, "
                         "height, width, fps, ...)")
    missing = [c for c in CSV_COLUMNS if c not in header]
    if missing:
        raise UsageError(f"{path}: missing column(s) {', '.join(missing)} (has: {short(', '.join(header))});"
                         " Open-Sora's data tools write path, text, num_frames, height, width, fps, ...")
    # pandas would rename the second one 'num_frames.1' and read the first: which one was meant is not ours to guess
    repeated = [c for c in (*CSV_COLUMNS, "fps") if list(header).count(c) > 1]
    if repeated:
        raise UsageError(f"{path}: column {repeated[0]!r} appears {list(header).count(repeated[0])} times in the "
                         f"header (pandas would read the second as '{repeated[0]}.1'); keep one")


def _check_first_row(path: str, header: Sequence[str]) -> None:
    """Refuse a first data row longer than the header: pandas takes its surplus fields as the row index, and then
    reads every column of every row from the field that many places to its right."""
    import pandas as pd

    try:
        first = pd.read_csv(path, nrows=1, encoding="utf-8")
    except (pd.errors.ParserError, UnicodeDecodeError):
        return  # read again below, where the error is named
    if isinstance(first.index, pd.RangeIndex):
        return
    k = first.index.nlevels
    raise UsageError(f"{path}, row 2 has {k} more field(s) than the header's {len(header)}, so pandas.read_csv "
                     f"(Open-Sora's reader) makes the first {k} column(s) the row index and reads every column from "
                     f"the field {k} place(s) to its right: each clip's size would be misread. Name every column in "
                     "the header, or remove the surplus fields")


class _Faults:
    """What can be wrong with a row, one code each (0: nothing), and the words for it."""

    def __init__(self, columns: Sequence[str]) -> None:
        self.reasons = ["", EXTRA_FIELDS]
        for column in columns:
            kinds = ("non-numeric", "invalid") if column == "fps" else ("missing", "non-numeric", "invalid")
            self.reasons += [f"{kind} {column}" for kind in kinds]

    def code(self, reason: str) -> int:
        return self.reasons.index(reason)

    def describe(self, code: int, value: Any) -> str:
        reason = self.reasons[code]
        kind, _, column = reason.partition(" ")
        if reason == EXTRA_FIELDS:
            return (f"{reason}: the row has more fields than the header; pandas.read_csv, Open-Sora's reader, refuses "
                    "the whole file for such a row")
        if kind == "missing":
            return f"{reason}: the field is empty, a missing-value word such as NaN, or the row is short of fields"
        if kind == "non-numeric":  # pandas reads True and False (any case) as booleans
            return f"{reason}: {short(value if isinstance(value, str) else str(bool(value)))}"
        allowed = "a finite number >= 0" if column == "fps" else f"a whole number from 1 to {MAX_CSV_VALUE}"
        read = "" if math.isfinite(value) else " (pandas reads a number beyond float64's range, or inf, as inf)"
        return f"{reason}: {_shown(value)}{read} is not {allowed}"


def _tally(chunk: Any, where: Dict[str, str], extra: str, faults: _Faults, buckets: Counter, skipped: Counter,
           examples: int, fps: bool, skip_bad_rows: bool) -> List[str]:
    """Count a chunk's clips into ``buckets`` and its malformed rows into ``skipped``; return the first malformed
    rows in words (one without ``skip_bad_rows``, else up to five in all)."""
    surplus = chunk[extra].notna().to_numpy()
    values: Dict[str, np.ndarray] = {}
    checks: List[Tuple[str, np.ndarray]] = [(EXTRA_FIELDS, surplus)]  # (reason, rows that have it), in order
    for column, name in where.items():
        v, text = _numbers_of(chunk[name])
        values[column] = v
        number = ~np.isnan(v)
        if column == "fps":  # missing: 2.0 reads it as NaN, no stride
            checks += [("non-numeric fps", text), ("invalid fps", number & ~(np.isfinite(v) & (v >= 0)))]
        else:
            whole = (v >= 1) & (v <= MAX_CSV_VALUE) & (np.floor(v) == v)
            checks += [(f"missing {column}", ~number & ~text), (f"non-numeric {column}", text),
                       (f"invalid {column}", number & ~whole)]
    bad = np.logical_or.reduce([rows for _, rows in checks])
    messages = []
    if bad.any():
        fault = np.zeros(len(chunk), dtype=np.int64)
        for reason, rows in reversed(checks):  # the first check a row fails names it
            fault[rows] = faults.code(reason)
        bad_rows = np.flatnonzero(bad)
        for i in bad_rows[:max(0, 5 - examples) if skip_bad_rows else 1]:
            column = faults.reasons[fault[i]].partition(" ")[2]
            value = chunk[where[column]].iloc[i] if column in where else None  # the text, where it is no number
            if column in values and not np.isnan(values[column][i]):
                value = float(values[column][i])
            messages.append(f"row {chunk.index[i] + 1}: {faults.describe(int(fault[i]), value)}")
        codes, first, counts = np.unique(fault[bad_rows], return_index=True, return_counts=True)
        for j in np.argsort(first):  # in the order the file shows them
            skipped[faults.reasons[codes[j]]] += int(counts[j])
    ok = ~bad
    sizes = [values[c][ok] for c in CHECKED]
    if fps:
        sizes.append(values["fps"][ok] if "fps" in values else np.full(len(sizes[0]), np.nan))
    for key, count in _distinct(sizes):
        clip: Tuple[Any, ...] = tuple(int(k) for k in key[:3])
        if fps:
            clip += (None if math.isnan(key[3]) else key[3],)
        buckets[clip] += count
    return messages


def _numbers_of(series: Any) -> Tuple[np.ndarray, np.ndarray]:
    """A chunk's column as pandas reads its values: float64 (NaN where missing, or not a number), and a mask of the
    values that are not numbers.

    pandas reads a column of numbers as numbers, but keeps all of a chunk's values as text once one is not a number
    (and reads True/False as booleans): those are then read one by one, each as pandas reads a column of one value.
    """
    import pandas as pd

    if series.dtype.kind in "iuf":
        return series.to_numpy(dtype=np.float64), np.zeros(len(series), dtype=bool)
    missing = series.isna().to_numpy(dtype=bool)
    values = np.full(len(series), np.nan)
    if series.dtype.kind == "b":
        return values, ~missing
    present = series[~missing].tolist()
    texts = sorted({v for v in present if isinstance(v, str)})
    read: Dict[str, float] = {}
    if texts:  # one row with one column per distinct text: pandas infers each column's type alone
        row = pd.read_csv(io.StringIO(",".join('"' + t.replace('"', '""') + '"' for t in texts)), header=None,
                          na_filter=False)
        read = {t: _as_number(row[c].iloc[0]) for t, c in zip(texts, row.columns)}
    values[~missing] = [read[v] if isinstance(v, str) else _as_number(v) for v in present]
    return values, ~missing & np.isnan(values)


def _as_number(value: Any) -> float:
    """float of a value pandas read (NaN: not a number); a whole number beyond float64 is +inf or -inf."""
    if isinstance(value, (bool, np.bool_)) or not isinstance(value, (int, float, np.integer, np.floating)):
        return math.nan
    try:
        return float(value)
    except OverflowError:
        return math.inf if value > 0 else -math.inf


def _shown(value: Any) -> str:
    """A value as pandas read it, for a message: a whole number without '.0'."""
    if isinstance(value, float) and math.isfinite(value) and value.is_integer() and abs(value) < 2 ** 63:
        return str(int(value))
    return short(value) if isinstance(value, str) else repr(float(value))


def _line_at(path: str, offset: int) -> int:
    """The line of a byte offset (1-based), counted once there is an error to name."""
    line = 1
    with open(path, "rb") as f:
        while offset > 0:
            block = f.read(min(offset, 1 << 20))
            if not block:
                break
            line += block.count(b"\n")
            offset -= len(block)
    return line


def _distinct(columns: Sequence[np.ndarray]) -> List[Tuple[Tuple[float, ...], int]]:
    """The distinct rows of equally long columns and how often each occurs (NaN counts as a value).

    Real datasets hold few distinct sizes: each row becomes one number (the three sizes packed in 21 bits each when
    they fit, else the combined codes of each column's distinct values), and those are hashed and counted at once.
    """
    import pandas as pd

    if not len(columns[0]):
        return []
    parts = list(columns)
    if all(c.max() < 1 << 21 for c in parts[:3]):  # sizes are whole numbers >= 1 here
        h, w, n = (c.astype(np.int64) for c in parts[:3])
        parts[:3] = [(h << 42) | (w << 21) | n]
    factorized = [pd.factorize(c, use_na_sentinel=False) for c in parts]
    size = math.prod(len(u) for _, u in factorized)
    if size >= 1 << 62:  # combined codes would overflow int64
        frame = pd.DataFrame(dict(enumerate(columns)))
        return [(tuple(k), int(c)) for k, c in frame.value_counts(sort=False, dropna=False).items()]
    key = factorized[0][0].astype(np.int64)
    for codes, uniques in factorized[1:]:
        key = key * len(uniques) + codes
    if size <= 1 << 20:
        counts = np.bincount(key, minlength=size)
        found = np.flatnonzero(counts)
        counts = counts[found]
    else:
        found, counts = np.unique(key, return_counts=True)
    out = []
    for k, count in zip(found.tolist(), counts.tolist()):
        row: List[float] = []
        for _, uniques in reversed(factorized):
            k, code = divmod(k, len(uniques))
            row.append(uniques[code])
        first = int(row.pop())
        if len(parts) < len(columns):  # unpack the sizes
            row += [first & ((1 << 21) - 1), (first >> 21) & ((1 << 21) - 1), first >> 42]
        else:
            row.append(first)
        out.append((tuple(float(x) for x in reversed(row)), count))
    return out


def print_bucket_report(csv: Optional[str], groups: Mapping[Any, Any], legend: str, headers: Sequence[str],
                        rows: Sequence[Sequence[Any]], dropped: Mapping[str, int], why_dropped: str,
                        skipped: Counter, examples: Sequence[str]) -> None:
    """The part of an audit report both releases share: the clip count, the table, dropped clips, malformed rows."""
    if csv is not None:
        print(f"{sum(c for c in groups.values() if c)} clips in {len(groups)} buckets from {csv}")
    print(legend)
    print(format_table(headers, rows))
    if dropped:
        print(f"\n{sum(dropped.values())} clips fit no bucket, so Open-Sora drops them ("
              + ", ".join(f"{c} {what}" for what, c in sorted(dropped.items())) + f"): {why_dropped}")
    if skipped:
        print(f"\nskipped {sum(skipped.values())} malformed rows: "
              + ", ".join(f"{c} {r}" for r, c in skipped.most_common()))
        for example in examples:
            print(f"  {example}")


def group_buckets(args: argparse.Namespace, cfg: Optional[Any], bucket_list: Sequence[Any], bucketed: bool,
                  assign: Callable[[Tuple[Any, ...]], Any], place: Callable[[str, int, Optional[Tuple[Any, ...]]], Key],
                  fps: bool = False) -> Tuple[Dict[Key, Optional[int]], set, Counter, Counter, List[str]]:
    """The buckets an audit reports: with --csv, its clips per bucket (``assign`` maps a clip to Open-Sora's bucket,
    or None when it drops it; ``place`` gives a bucket's row key, sized for the clip), else the config's buckets
    (``place`` with no clip: the bucket's own size), with None for a count.

    Returns the clip count per key, the keys of buckets that keep no clip, the dropped clips (images, videos), and
    the malformed rows skipped with a few examples.
    """
    skipped: Counter = Counter()
    examples: List[str] = []
    dropped: Counter = Counter()
    groups: Dict[Key, Optional[int]] = {}
    off: set = set()
    if args.csv is not None:
        clips, skipped, examples = read_csv_buckets(args.csv, not args.no_progress, args.skip_bad_rows, fps=fps)
        if not clips:  # an audit that saw nothing must not pass a launch gate as "OK"
            raise UsageError(f"{args.csv} has no clips to audit"
                             + (f": all {sum(skipped.values())} rows are malformed ({examples[0]})" if skipped else ""))
        for clip, count in clips.items():
            if not bucketed:
                groups[(*clip[:3], None)] = count
                continue
            bucket = assign(clip)
            if bucket is None:
                dropped["images" if clip[2] == 1 else "videos"] += count
                continue
            key = place(bucket.name, bucket.frames, clip)
            groups[key] = (groups.get(key) or 0) + count
        if not groups:
            raise UsageError(f"none of the {sum(dropped.values())} clips in {args.csv} fits a bucket of bucket_config: "
                             "Open-Sora would drop them all")
    else:
        if cfg is None or cfg.get("bucket_config") is None:
            raise UsageError(f"{args.config} has no bucket_config: give --csv too")
        for b in bucket_list:
            key = place(b.name, b.frames, None)
            groups[key] = None
            if not b.on:
                off.add(key)
    return groups, off, dropped, skipped, examples


def cmd_audit(args: argparse.Namespace) -> int:
    if args.csv is None and args.config is None:
        raise UsageError("give --csv PATH, --config PATH or both")
    cfg = None if args.config is None else load_config(args.config, "--config")
    if cfg is not None and not list(cfg.keys()):  # an empty config must not pass for a stock one
        raise UsageError(f"--config {args.config!r} sets nothing: no scheduler and no bucket_config, so it holds "
                         "nothing to audit; give the training config, or --csv alone to see each clip under stock "
                         f"Open-Sora {args.opensora_version}'s rule")
    if args.opensora_version == "2.0":
        return audit_opensora2(args, cfg)
    current = current_scheduler(cfg, args.opensora_version) if cfg is None or "scheduler" in cfg else None
    has_buckets = cfg is not None and cfg.get("bucket_config") is not None
    config_bucket_list = config_buckets(cfg["bucket_config"], args.opensora_version) if has_buckets else []
    rule = bucket_rule_of(cfg, config_bucket_list, args.opensora_version) if has_buckets else None

    groups, off, dropped, skipped, examples = group_buckets(
        args, cfg, config_bucket_list, rule is not None, lambda clip: rule.assign(*clip),
        lambda name, frames, clip: (*RESOLUTION_NAMES[name], frames, name))
    if current is None:  # checked after the buckets and the CSV, whose errors name more
        raise UsageError(f"--config {args.config!r} has no scheduler: Open-Sora {args.opensora_version}'s train.py "
                         "builds cfg.scheduler and would stop there, so there is no current scheduler to judge its "
                         "buckets by; add scheduler = dict(type='rflow', ...) or dict(type='rflow-timeshift', ...), or "
                         "audit --csv alone to see each clip under the stock rule")

    ruled = bool(current.rules)
    headers = (["resolution", "frames", "clips", "current", "factor"] + (["rule"] if ruled else []) + [*SHIFT_MODES]
               + (["bucket"] if has_buckets else []))
    rows: List[List[Any]] = []
    counted: Dict[str, List[Tuple[Tuple[int, int, int, Optional[str]], int]]] = {k: [] for k in STATUS_TEXT}
    extreme: List[Tuple[int, int, int, Optional[str]]] = []  # not refused, but timesteps pile up at one end
    notes: List[str] = []  # the guard's note on each of them
    messages: List[str] = []
    moved: List[Tuple[Key, float, float]] = []  # (bucket, the config's factor, the recipe's own training factor)
    rule_of: Dict[Tuple[int, int, int, Optional[str]], Optional[int]] = {}  # the bucket_settings rule of a bucket
    for key in sorted(groups, key=lambda k: (k[0], k[1], k[2], k[3] or "")):
        h, w, n, name = key
        count = groups[key]
        shift, applies = current.shift_for(h, w, n)
        rule_of[key] = applies
        if key in off or shift is None:
            verdict = guard.Verdict("off" if key in off else "no shift", math.nan, math.nan, "")
        else:  # the guard's decision, computed in float32 as 1.x trains
            verdict = guard.judge(shift, h, w, n)
        counted[verdict.kind].append((key, 1 if count is None else count))
        if verdict.kind == "ok" and verdict.message:  # the guard's note: a factor past its bound, or a pile-up, kept
            extreme.append(key)
            notes.append(verdict.message)
        if verdict.kind == "refused" and verdict.message not in messages:
            messages.append(verdict.message)
        if current.recipe_shift is not None and applies is None and not math.isnan(verdict.factor):
            own = guard.judge(current.recipe_shift, h, w, n).factor
            if not math.isclose(verdict.factor, own, rel_tol=1e-6):
                moved.append((key, verdict.factor, own))
        n_t = torch.tensor([float(n)])
        cells = []
        for m in SHIFT_MODES:
            t = temporal_size(n_t, m).item()
            cells.append(f"{t:.2f}" if m == "continuous" else f"{int(t)}" + ("!" if t <= 0 else ""))
        rows.append([f"{h}x{w}", n, "-" if count is None else count, STATUS_TEXT[verdict.kind].cell,
                     "-" if math.isnan(verdict.factor) else f"{verdict.factor:.3f}",
                     *([rule_cell(applies)] if ruled else []), *cells]
                    + ([name] if has_buckets else []))
    collapsed, refused = counted["collapsed"], counted["refused"]
    code = 1 if collapsed or refused else 0
    args.verdict = code  # what a broken stdout pipe still exits with

    print(f"current scheduler: {current.description}")
    if ruled:
        print("bucket_settings: a bucket trains under the settings of the rule it falls under (column rule; '-': "
              "the scheduler's own), and current and factor are that rule's:")
        for r in current.rules:
            print(f"  {rule_text(r)}")
    if rule is not None:
        print(f"buckets: Open-Sora's Bucket rule, every keep probability above 0 taken as kept (frame_interval "
              f"{rule.frame_interval}); sizes are each resolution's base aspect ratio")
    print_bucket_report(
        args.csv, groups, "T_eff per mode ('!' marks T_eff <= 0: every timestep of such a clip collapses to t = 0); "
        "factor: the current scheduler's shift factor", headers, rows, dropped,
        "a video needs more frames than a frame count other than 1 (T > t), at a resolution whose pixel count it "
        "reaches to 0.8; an image needs a kept 1-frame bucket", skipped, examples)
    if extreme:
        first = notes[0][len("note: "):] if notes[0].startswith("note: ") else notes[0]
        print(f"\nnote: timesteps pile up at one end for {buckets_text(extreme)} (on_degenerate='error' would refuse "
              f"such batches); the guard says, for the first: {first}")

    if moved:
        from ..recipes import RECIPES

        r = RECIPES[current.recipe]
        _, f, g = moved[0]
        print(f"\nnote: the settings beside recipe={r.name!r} change its training shift for "
              f"{buckets_text([k for k, _, _ in moved])} (the first: factor {f:.3f}, the recipe's own {g:.3f}), so "
              f"training no longer meets the sampling schedule as the recipe pairs them (sampling: {r.schedule_text})")

    def frames_of(items: List[Tuple[Tuple[int, int, int, Optional[str]], int]]) -> List[int]:
        return sorted({k[2] for k, _ in items})

    if collapsed:
        what = (f"{sum(c for _, c in collapsed)} clips" if args.csv is not None
                else f"buckets with {frames_of(collapsed)} frames")
        by_rule = sorted({rule_of[k] for k, _ in collapsed if rule_of[k] is not None})
        own = any(rule_of[k] is None for k, _ in collapsed)
        where = " and ".join((["scheduler = dict(type='rflow-timeshift', shift_mode='latent')"] if own else [])
                             + [f"shift_mode='latent' in bucket_settings[{i}]" for i in by_rule])
        print(f"\nFAIL: {what} would train with every timestep at t = 0 under the current scheduler. "
              f"Recommendation: {where}, which matches the VAE's latent length and equals the stock rule on "
              "17k-frame clips.")
    if refused:
        what = (f"{sum(c for _, c in refused)} clips in {buckets_text([k for k, _ in refused])}"
                if args.csv is not None else buckets_text([k for k, _ in refused]))
        print(f"\nFAIL: the guard would stop training at the first batch from {what}: {messages[0]}"
              + (f" ({len(messages) - 1} more such messages)" if len(messages) > 1 else ""))
    if code:
        return code
    clamped = counted["clamped"]
    print("\nOK: no clip would train at t = 0 or be refused by the guard."
          + (f" Clamped clips ({buckets_text([k for k, _ in clamped])}) train as T_eff = 1 where T_eff <= 0, with "
             "factors held to [0.01, 100]; shift_mode='latent' needs no clamping." if clamped else ""))
    return 0



def audit_opensora2(args: argparse.Namespace, cfg: Optional[Any]) -> int:
    """audit --opensora-version 2.0: per bucket, the latent, the tokens and alpha in training and at inference."""
    geometry = opensora2_geometry(cfg) if cfg is not None else VAES["hunyuan"]
    ts, description = current_opensora2(cfg)
    has_buckets = cfg is not None and cfg.get("bucket_config") is not None
    bucket_list = config_buckets(cfg["bucket_config"], "2.0") if has_buckets else []
    rule = bucket_rule_of(cfg, bucket_list, "2.0") if has_buckets else None
    fps_max = opensora2_fps_max(cfg) if has_buckets else None
    sizes = {b.name: opensora2_sizes(b.name, geometry.token_pixels) for b in bucket_list}

    def assign(clip: Tuple[Any, ...]) -> Any:
        h, w, n, fps = clip
        return rule.assign(h, w, n // sampling_interval(fps, fps_max))

    def place(name: str, frames: int, clip: Optional[Tuple[Any, ...]]) -> Key:
        size = opensora2_base_size(name, geometry.token_pixels) if clip is None else closest_size(*clip[:2],
                                                                                                  sizes[name])
        return (*size, frames, name)

    groups, off, dropped, skipped, examples = group_buckets(args, cfg, bucket_list, rule is not None, assign, place,
                                                            fps=rule is not None)

    headers = ["resolution", "frames", "clips", "latent", "tokens", "alpha", "inf.tokens", "inf.alpha", "current"]
    headers += ["bucket"] if has_buckets else []
    rows: List[List[Any]] = []
    counted: Dict[str, List[Tuple[Tuple[int, int, int, Optional[str]], int]]] = {k: [] for k in STATUS_TEXT}
    mismatched: List[Tuple[Tuple[int, int, int, Optional[str]], Alpha, Optional[Tuple[int, int]]]] = []
    messages: List[str] = []
    for key in sorted(groups, key=lambda k: (k[0], k[1], k[2], k[3] or "")):
        h, w, n, name = key
        count = groups[key]
        inference = None if name is None else opensora2_inference_size(name, geometry.token_pixels, (h, w))
        a = opensora2_alpha(ts, geometry, h, w, n, inference)
        kind = "off" if key in off else a.kind
        counted[kind].append((key, 1 if count is None else count))
        if a.message and kind != "off" and a.message not in messages:
            messages.append(a.message)
        status = STATUS_TEXT[kind].cell
        if kind in ("ok", "extreme", "clamped") and a.alpha != a.infer_alpha:
            mismatched.append((key, a, inference))
            status = "mismatch" if kind != "clamped" else status
        shown = lambda x: "-" if x is None or kind in ("off", "refused") else f"{x:.3f}"  # noqa: E731
        infer_tokens: Any = a.infer_tokens
        if inference not in (None, (h, w)):
            infer_tokens = f"{a.infer_tokens} at {inference[0]}x{inference[1]}"
        rows.append([f"{h}x{w}", n, "-" if count is None else count, "x".join(map(str, a.latent)), a.tokens,
                     shown(a.alpha), infer_tokens, shown(a.infer_alpha), status] + ([name] if has_buckets else []))
    collapsed, refused = counted["collapsed"], counted["refused"]
    code = 1 if collapsed or refused else 0
    args.verdict = code

    print(f"current scheduler: {description}")
    print(f"geometry: {geometry.describe()}" + ("" if cfg is not None else " (no config: 2.0's default)"))
    if rule is not None:
        print("buckets: Open-Sora 2.0's Bucket rule (a video fits frame count t when its frames // stride >= t, the "
              f"stride ceil(fps / fps_max) at fps >= fps_max {fps_max}, 1 without an fps), every keep probability above "
              "0 taken as kept; sizes are "
              + ("each clip's closest aspect ratio" if args.csv is not None else "each name's square or 16:9 size"))
    print_bucket_report(
        args.csv, groups, "latent: T x h x w; tokens and alpha: what training counts and shifts by; inf.tokens and "
        "inf.alpha: what inference does for the bucket, at the size 2.0's inference samples its name and aspect ratio at "
        "(shown where it is not the training size)", headers, rows, dropped,
        "a video needs at least as many frames (after the fps stride) as a frame count other than 1, at a resolution "
        "whose pixel count it reaches to 0.8; an image needs a kept 1-frame bucket and an fps below fps_max, or none "
        "(2.0 divides its one frame by the stride too)", skipped, examples)
    extreme = [k for k, _ in counted["extreme"]]
    if extreme:
        print(f"\nnote: timesteps pile up at one end for {buckets_text(extreme)} (alpha outside [0.01, 100] with no "
              "base distribution, or more than half the shifted draws within 1/1000 of an end): rflow-timeshift's "
              "default on_degenerate='error' would refuse such batches")
    if mismatched:
        (h, w, n, name), a, inference = mismatched[0]
        first = Bucket("", None, h, w, n, a.t_eff, a.alpha, a.kind, None, None, a.latent, a.tokens, a.infer_tokens,
                       a.infer_alpha, inference_size=inference or (h, w))
        print("\nWARNING: training and inference shift differently: "
              + alpha_mismatch(first, len(mismatched), ts.patch_size, geometry.patch_size))
    if collapsed:
        what = ((f"{sum(c for _, c in collapsed)} clips in " if args.csv is not None else "")
                + buckets_text([k for k, _ in collapsed]))
        print(f"\nFAIL: {what} would train with every timestep at t = 0 under the current scheduler: alpha is 0. "
              "A non-causal VAE gives n // 4 latent frames, none below 4 frames: give such buckets 4 frames or more "
              "(or rflow-timeshift's on_degenerate='clamp', which shifts them as one frame).")
    if refused:
        what = ((f"{sum(c for _, c in refused)} clips in " if args.csv is not None else "")
                + buckets_text([k for k, _ in refused]))
        print(f"\nFAIL: the guard would stop training at the first batch from {what}: {messages[0]}"
              + (f" ({len(messages) - 1} more such messages)" if len(messages) > 1 else ""))
    if code:
        return code
    print("\nOK: no clip would train at t = 0 or be refused by the guard."
          + (" (Training and inference shift differently: see the warning above.)" if mismatched else ""))
    return 0


def add_parser(sub: Any, formatter: Any, epilog: str) -> None:
    p = sub.add_parser("audit", help="check a dataset CSV and/or training config for collapsed timesteps",
                       formatter_class=formatter, epilog=epilog,
                       description="Counts clips per bucket (resolution x frames) in an Open-Sora dataset CSV and/or\n"
                                   "the bucket_config of a training config, shows T_eff under every mode and what\n"
                                   "the config's current scheduler does with each bucket. Exits 1 when some clip\n"
                                   "would train with every timestep at t = 0 (or be refused by the guard), so it can\n"
                                   "gate a launch script. Reads its inputs only. The config is executed by mmengine,\n"
                                   "as training would: audit only configs you would train with. With\n"
                                   "--opensora-version 2.0: per bucket of a 2.0 config, the latent, tokens and alpha\n"
                                   "in training and at inference, with a warning where they differ.")
    p.add_argument("--csv", action=Once,
                   help="dataset CSV (UTF-8) with num_frames, height, width columns (others are ignored)")
    p.add_argument("--config", action=Once, help="Open-Sora training config (its bucket_config and scheduler are read)")
    p.add_argument("--opensora-version", choices=OPENSORA_VERSIONS, default="1.2", action=Once,
                   help="which stock rule type='rflow' means (default 1.2: num_frames // 17 * 5; 1.3: "
                        "(num_frames - 1) // 4), and which bucket_config resolution names exist (1.3 adds *_16d); "
                        "2.0: a 2.0 training config (bucket_config with 256px, 768px, ..., patch_size, "
                        "ae_spatial_compression, is_causal_vae, and scheduler = dict(type='rflow-timeshift', ...) or "
                        "none for stock 2.0's rule), reported per bucket with alpha in training and at inference")
    p.add_argument("--skip-bad-rows", action="store_true", help="count and skip malformed rows instead of stopping")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    p.set_defaults(func=cmd_audit)
