"""``opensora-timeshift``: see, audit and configure the timestep shift before spending GPU time."""

from __future__ import annotations

import argparse
import csv
import json
import math
import os
import sys
import warnings
from collections import Counter
from pathlib import Path
from typing import Any, Dict, Iterator, List, Optional, Sequence, Tuple

import torch

from .policies import SHIFT_MODES, temporal_size
from .sampling import SAMPLE_METHODS, TimestepDistribution
from .shift import TimestepShift

DEFAULT_FRAMES = [1, 8, 16, 17, 32, 51, 102]
DEFAULT_RESOLUTIONS = ["256x256", "512x512", "720x1280"]
QUANTILES = (0.05, 0.5, 0.95)
# Open-Sora's bucket names and the pixel counts they stand for (opensora/datasets/aspect.py); the shift reads
# H * W only, so a nominal 16:9 (or square) size with that pixel count stands for every aspect ratio.
RESOLUTION_NAMES = {
    "144p": (144, 256), "240p": (240, 426), "360p": (360, 640), "480p": (480, 854), "720p": (720, 1280),
    "1080p": (1080, 1920), "256": (256, 256), "512": (512, 512), "1024": (1024, 1024), "2048": (2048, 2048),
}
CSV_COLUMNS = ("num_frames", "height", "width")


class UsageError(Exception):
    """Bad input from the command line or a file: reported in one line, exit status 2."""


# --- shared helpers ----------------------------------------------------------------------------------------

def parse_resolution(text: str) -> Tuple[int, int]:
    """``"720x1280"`` (height x width) or an Open-Sora bucket name such as ``"720p"``."""
    if text in RESOLUTION_NAMES:
        return RESOLUTION_NAMES[text]
    try:
        h, w = (int(v) for v in text.lower().split("x"))
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"resolution {text!r} is not HxW (e.g. 720x1280) or one of {', '.join(RESOLUTION_NAMES)}") from None
    if h <= 0 or w <= 0:
        raise argparse.ArgumentTypeError(f"resolution {text!r} must have a positive height and width")
    return h, w


def positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a whole number") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"{text!r} must be >= 1")
    return value


def add_selection(p: argparse.ArgumentParser) -> None:
    p.add_argument("--frames", type=positive_int, nargs="+", default=DEFAULT_FRAMES, metavar="N",
                   help=f"pixel frame counts (default: {' '.join(map(str, DEFAULT_FRAMES))})")
    p.add_argument("--resolution", type=parse_resolution, nargs="+", metavar="HxW",
                   default=[parse_resolution(r) for r in DEFAULT_RESOLUTIONS],
                   help=f"resolutions as HxW or Open-Sora bucket names (default: {' '.join(DEFAULT_RESOLUTIONS)})")
    p.add_argument("--mode", choices=SHIFT_MODES, nargs="+", default=list(SHIFT_MODES),
                   help="shift modes (default: all)")
    p.add_argument("--sample-method", choices=SAMPLE_METHODS, default="logit-normal",
                   help="base distribution of t (default: logit-normal, as Open-Sora's training configs)")
    p.add_argument("--loc", type=float, default=0.0, help="logit-normal loc (default 0)")
    p.add_argument("--scale", type=float, default=1.0, help="logit-normal scale (default 1)")


def distribution_of(args: argparse.Namespace) -> TimestepDistribution:
    params = dict(loc=args.loc, scale=args.scale) if args.sample_method == "logit-normal" else {}
    return TimestepDistribution(args.sample_method, **params)


def bucket_row(mode: str, hw: Tuple[int, int], frames: int, distribution: TimestepDistribution) -> Dict[str, Any]:
    """T_eff, shift factor and quantiles of the shifted t for one (mode, resolution, frames) bucket.

    The shift is increasing in t and t = F^-1(u), so the q-quantile of the shifted timestep is exactly the shift
    of F^-1(q): no sampling needed.
    """
    meta = {k: torch.tensor([float(v)], dtype=torch.float64) for k, v in zip(("height", "width", "num_frames"),
                                                                              (*hw, frames))}
    t_eff = temporal_size(meta["num_frames"], mode).item()
    q = distribution(torch.tensor(QUANTILES, dtype=torch.float64))
    shifted, ratio = TimestepShift(mode, "ignore")(q * 1000, {k: v.expand(3) for k, v in meta.items()},
                                                   num_timesteps=1000, ret_ratio=True)
    row = dict(mode=mode, height=hw[0], width=hw[1], frames=frames, t_eff=t_eff, shift_factor=ratio[0].item(),
               p5=shifted[0].item(), median=shifted[1].item(), p95=shifted[2].item(), degenerate=False, message=None)
    try:
        TimestepShift(mode, "error")(q, meta)
    except ValueError as err:
        row.update(degenerate=True, message=str(err))
    return row


def format_table(headers: Sequence[str], rows: Sequence[Sequence[Any]]) -> str:
    cells = [[str(c) for c in r] for r in rows]
    widths = [max(len(h), *(len(r[i]) for r in cells)) if cells else len(h) for i, h in enumerate(headers)]
    numeric = [all(_is_number(r[i]) for r in cells) for i in range(len(headers))]
    line = lambda r: "  ".join(c.rjust(w) if num else c.ljust(w)  # noqa: E731
                               for c, w, num in zip(r, widths, numeric)).rstrip()
    return "\n".join([line(headers), line(["-" * w for w in widths])] + [line(r) for r in cells])


def _is_number(text: str) -> bool:
    try:
        float(text.rstrip("!"))
        return True
    except ValueError:
        return False


def fmt(x: float, digits: int = 1) -> str:
    return "nan" if math.isnan(x) else f"{x:.{digits}f}"


# --- inspect -----------------------------------------------------------------------------------------------

def cmd_inspect(args: argparse.Namespace) -> int:
    distribution = distribution_of(args)
    rows = [bucket_row(m, hw, n, distribution) for hw in args.resolution for n in args.frames for m in args.mode]
    if args.json:
        print(json.dumps(dict(sample_method=args.sample_method, num_timesteps=1000, rows=rows), indent=1))
        return 0
    print(f"t ~ {distribution!r}, shifted, on the 0..1000 scale (1000 = pure noise)")
    table = [(f"{r['height']}x{r['width']}", r["frames"], r["mode"], fmt(r["t_eff"], 2), fmt(r["shift_factor"], 3),
              fmt(r["p5"]), fmt(r["median"]), fmt(r["p95"]), "DEGENERATE (t = 0)" if r["degenerate"] else "ok")
             for r in rows]
    print(format_table(["resolution", "frames", "mode", "T_eff", "shift", "p5", "median", "p95", "status"], table))
    messages = {r["message"] for r in rows if r["degenerate"]}
    for message in sorted(messages):
        print(f"\nguard (on_degenerate='error'): {message}")
    return 0


# --- plot --------------------------------------------------------------------------------------------------

def cmd_plot(args: argparse.Namespace) -> int:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    distribution = distribution_of(args)
    t_grid = torch.linspace(0, 1, 201, dtype=torch.float64)
    draws = distribution(torch.rand(args.samples, dtype=torch.float64, generator=torch.Generator().manual_seed(0)))
    written = []
    for hw in args.resolution:
        for frames in args.frames:
            fig, (ax_curve, ax_hist) = plt.subplots(1, 2, figsize=(12, 4.5))
            peak = 0.0
            for mode in args.mode:
                shift = TimestepShift(mode, "ignore")
                kw = lambda n: {k: torch.full((n,), float(v), dtype=torch.float64)  # noqa: E731
                                for k, v in zip(("height", "width", "num_frames"), (*hw, frames))}
                t_eff = temporal_size(torch.tensor([float(frames)]), mode).item()
                label = f"{mode} (T_eff {t_eff:.3g})" + (": t = 0, degenerate" if t_eff <= 0 else "")
                ax_curve.plot(t_grid, shift(t_grid, kw(len(t_grid))), label=label)
                shifted = shift(draws, kw(len(draws)))
                if t_eff <= 0:  # all mass at t = 0: a bar at 0, so the other histograms keep their scale
                    ax_hist.axvline(0.0, lw=3, color=ax_curve.lines[-1].get_color(), label=label)
                    continue
                density, *_ = ax_hist.hist(shifted.numpy(), bins=50, range=(0, 1), histtype="step", density=True,
                                           label=label, color=ax_curve.lines[-1].get_color())
                peak = max(peak, float(density.max()))
            ax_curve.plot([0, 1], [0, 1], color="grey", lw=0.8, ls=":", label="no shift")
            ax_curve.set(xlabel="t (1 = noise)", ylabel="shifted t'", title="transform t -> t'")
            ax_hist.set(xlabel="shifted t'", ylabel="density",
                        title=f"training timesteps, {args.sample_method}, {args.samples} draws")
            ax_hist.set_ylim(0, 1.15 * peak if peak else None)
            ax_curve.legend(fontsize=8, loc="lower right")
            ax_hist.legend(fontsize=8, loc="upper left")
            fig.suptitle(f"{hw[0]}x{hw[1]}, {frames} frames")
            fig.tight_layout()
            path = out / f"timeshift_{hw[0]}x{hw[1]}_{frames}f.png"
            fig.savefig(path, dpi=args.dpi)
            plt.close(fig)
            written.append(path)
    for path in written:
        print(path)
    return 0


# --- audit -------------------------------------------------------------------------------------------------

class RowError(UsageError):
    pass


def read_csv_buckets(path: str, progress: bool, skip_bad_rows: bool) -> Tuple[Counter, Counter, List[str]]:
    """Stream an Open-Sora dataset CSV into counts per (height, width, num_frames): bounded memory for any size.

    Returns the bucket counts, the skipped rows by reason, and the first few skipped rows' descriptions.
    """
    from tqdm.auto import tqdm

    buckets: Counter = Counter()
    skipped: Counter = Counter()
    examples: List[str] = []
    size = os.path.getsize(path)
    with open(path, newline="", encoding="utf-8") as f, \
            tqdm(total=size, unit="B", unit_scale=True, desc="audit", disable=None if progress else True) as bar:
        lines = _counting_lines(f, bar)
        reader = csv.DictReader(lines)
        missing = [c for c in CSV_COLUMNS if c not in (reader.fieldnames or [])]
        if missing:
            raise UsageError(f"{path}: missing column(s) {', '.join(missing)} (has: {', '.join(reader.fieldnames or [])});"
                             " Open-Sora's data tools write path, text, num_frames, height, width, fps, ...")
        for row_number, row in enumerate(reader, start=2):  # row 1 is the header
            try:
                buckets[_bucket_of(row)] += 1
            except RowError as err:
                if not skip_bad_rows:
                    raise UsageError(f"{path}, row {row_number}: {err} (pass --skip-bad-rows to count and skip such rows)")
                reason = str(err).split(":")[0]
                skipped[reason] += 1
                if len(examples) < 5:
                    examples.append(f"row {row_number}: {err}")
    return buckets, skipped, examples


def _counting_lines(f: Any, bar: Any) -> Iterator[str]:
    for line in f:
        bar.update(len(line.encode("utf-8")))
        yield line


def _bucket_of(row: Dict[str, Optional[str]]) -> Tuple[int, int, int]:
    values = []
    for column in ("height", "width", "num_frames"):
        text = row.get(column)
        if text is None or text.strip() == "":
            raise RowError(f"missing {column}: the row has fewer fields than the header")
        try:
            value = float(text)
        except ValueError:
            raise RowError(f"non-numeric {column}: {text!r}") from None
        if not (math.isfinite(value) and value > 0 and value.is_integer()):
            raise RowError(f"invalid {column}: {text!r} is not a positive whole number")
        values.append(int(value))
    return values[0], values[1], values[2]


def config_buckets(bucket_config: Dict[str, Dict[Any, Any]]) -> List[Tuple[int, int, int]]:
    """(height, width, frames) for each bucket of an Open-Sora ``bucket_config``."""
    out = []
    for name, frame_map in bucket_config.items():
        if name not in RESOLUTION_NAMES:
            raise UsageError(f"bucket_config resolution {name!r} is not one of {', '.join(RESOLUTION_NAMES)}")
        for frames in frame_map:
            out.append((*RESOLUTION_NAMES[name], int(frames)))
    return out


def current_scheduler(cfg: Optional[Any], version: str) -> Tuple[Optional[str], str, str]:
    """(shift_mode or None when no shift, on_degenerate, description) of a config's ``scheduler``."""
    stock_mode = "legacy" if version == "1.2" else "v13"
    if cfg is None or "scheduler" not in cfg:
        return stock_mode, "ignore", f"no config: stock Open-Sora {version} rflow with use_timestep_transform=True"
    sched = dict(cfg["scheduler"])
    kind = sched.get("type")
    if kind == "rflow":
        if not sched.get("use_timestep_transform", False):
            return None, "ignore", "stock rflow with use_timestep_transform=False: no shift"
        mode = stock_mode if sched.get("scale_temporal", True) else "spatial"
        return mode, "ignore", f"stock Open-Sora {version} rflow, shift on: shift_mode {mode!r} without a guard"
    if kind == "rflow-timeshift":
        if not sched.get("use_timestep_transform", True):
            return None, "ignore", "rflow-timeshift with use_timestep_transform=False: no shift"
        mode = sched.get("shift_mode", "latent") if sched.get("scale_temporal", True) else "spatial"
        guard = sched.get("on_degenerate", "error")
        return mode, guard, f"rflow-timeshift, shift_mode {mode!r}, on_degenerate {guard!r}"
    raise UsageError(f"scheduler type {kind!r} is not audited: only 'rflow' and 'rflow-timeshift' shift timesteps")


def assign_to_config(buckets: Counter, frame_counts: List[int]) -> Tuple[Counter, int]:
    """Each clip trains at the largest configured frame count it can fill (Open-Sora cuts clips down to a bucket).

    A deterministic stand-in for Open-Sora's bucket choice, which also draws keep-probabilities per bucket.
    Returns the counts per (height, width, trained frames) and the number of clips too short for every bucket.
    """
    out: Counter = Counter()
    too_short = 0
    for (h, w, n), count in buckets.items():
        fitting = [f for f in frame_counts if f <= n]
        if fitting:
            out[(h, w, max(fitting))] += count
        else:
            too_short += count
    return out, too_short


def cmd_audit(args: argparse.Namespace) -> int:
    if args.csv is None and args.config is None:
        raise UsageError("give --csv PATH, --config PATH or both")
    cfg = None
    if args.config is not None:
        from mmengine.config import Config

        cfg = Config.fromfile(args.config)
    mode, guard, description = current_scheduler(cfg, args.opensora_version)

    skipped: Counter = Counter()
    too_short = 0
    if args.csv is not None:
        buckets, skipped, examples = read_csv_buckets(args.csv, not args.no_progress, args.skip_bad_rows)
        if cfg is not None and "bucket_config" in cfg:
            frame_counts = sorted({f for *_, f in config_buckets(cfg["bucket_config"])})
            buckets, too_short = assign_to_config(buckets, frame_counts)
    else:
        buckets = Counter({b: 0 for b in config_buckets(cfg.get("bucket_config") or {})})
        if not buckets:
            raise UsageError(f"{args.config} has no bucket_config: give --csv too")

    total = sum(buckets.values())
    headers = ["resolution", "frames", "clips", "current"] + [f"{m}" for m in SHIFT_MODES]
    rows, collapsed, refused, degenerate = [], 0, 0, set()
    for (h, w, n), count in sorted(buckets.items()):
        n_t = torch.tensor([float(n)])
        cells = []
        for m in SHIFT_MODES:
            t = temporal_size(n_t, m).item()
            cells.append(f"{t:.2f}" if m == "continuous" else f"{int(t)}" + ("!" if t <= 0 else ""))
        status = "no shift" if mode is None else "ok"
        if mode is not None and temporal_size(n_t, mode).item() <= 0:
            degenerate.add(n)
            if guard == "ignore":
                status, collapsed = "t = 0 !", collapsed + count
            elif guard == "error":
                status, refused = "refused", refused + count
            else:
                status = "clamped"
        rows.append([f"{h}x{w}", n, count if args.csv is not None else "-", status] + cells)

    print(f"current scheduler: {description}")
    if args.csv is not None:
        print(f"{total} clips in {len(buckets)} buckets from {args.csv}")
    print("T_eff per mode ('!' marks T_eff <= 0: every timestep of such a clip collapses to t = 0)")
    print(format_table(headers, rows))
    if too_short:
        print(f"\n{too_short} clips are shorter than every bucket_config frame count: Open-Sora drops them")
    if skipped:
        print(f"\nskipped {sum(skipped.values())} malformed rows: "
              + ", ".join(f"{c} {r}" for r, c in skipped.most_common()))
        for example in examples:
            print(f"  {example}")

    if collapsed or (args.csv is None and degenerate and guard == "ignore"):
        what = f"{collapsed} clips" if args.csv is not None else f"buckets with {sorted(degenerate)} frames"
        print(f"\nFAIL: {what} would train with every timestep at t = 0 under the current scheduler. "
              "Recommendation: scheduler = dict(type='rflow-timeshift', shift_mode='latent'), which matches the "
              "VAE's latent length and equals the stock rule on 17k-frame clips.")
        return 1
    if refused or (args.csv is None and degenerate and guard == "error"):
        print(f"\nFAIL: the guard would stop training at the first batch with {sorted(degenerate)} frames "
              f"(shift_mode {mode!r} gives T_eff <= 0). Recommendation: shift_mode='latent'.")
        return 1
    print("\nOK: no clip would train at t = 0." + (" Clamped clips train as T_eff = 1; shift_mode='latent' needs no "
                                                     "clamping." if guard == "clamp" and degenerate else ""))
    return 0


# --- config ------------------------------------------------------------------------------------------------

def cmd_config(args: argparse.Namespace) -> int:
    from mmengine.config import Config

    from .registry import SCHEDULERS, build_module

    base = Path(args.base_config).resolve()
    if not base.is_file():
        raise UsageError(f"base config {args.base_config!r} does not exist")
    out = Path(args.out).resolve()
    base_cfg = Config.fromfile(str(base))
    imports = list(dict(base_cfg.get("custom_imports") or {}).get("imports", []))
    if "opensora_timeshift_patch" not in imports:
        imports.append("opensora_timeshift_patch")
    options = dict(type="rflow-timeshift", shift_mode=args.shift_mode, on_degenerate=args.on_degenerate)
    for key in ("sample_method", "timestep_rng"):
        if getattr(args, key) is not None:
            options[key] = getattr(args, key)
    if args.stratified:
        options["stratified"] = True
    options.update(args.set or {})
    try:
        rel = os.path.relpath(base, out.parent)
    except ValueError:  # another drive on Windows
        rel = str(base)
    body = "".join(f"    {k}={v!r},\n" for k, v in options.items())
    text = (f"# Derived from {base.name} by `opensora-timeshift config`: its scheduler switched to rflow-timeshift.\n"
            f"# Keys below merge into the base's scheduler dict; the rest of the base is unchanged.\n"
            f"_base_ = [{rel!r}]\n\n"
            f"custom_imports = dict(imports={imports!r}, allow_failed_imports=False)\n\n"
            f"scheduler = dict(\n{body})\n")
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(text)
    # Prove it: load the written file as Open-Sora will, then build the scheduler through the registry. A config
    # that fails is removed rather than left for a launch script to find.
    try:
        cfg = Config.fromfile(str(out))
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            scheduler = build_module(cfg.scheduler, SCHEDULERS)
    except Exception as err:
        out.unlink()
        raise UsageError(f"the derived config did not build, so {out} was not kept: {err}") from err
    print(f"wrote {out}")
    print(f"loaded it with mmengine and built the scheduler: {scheduler!r}")
    print(f"merged scheduler config: {dict(cfg.scheduler)}")
    return 0


# --- entry point -------------------------------------------------------------------------------------------

def build_parser() -> argparse.ArgumentParser:
    from mmengine.config import DictAction

    parser = argparse.ArgumentParser(
        prog="opensora-timeshift",
        description="See, audit and configure Open-Sora's timestep shift before spending GPU time.")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    p = sub.add_parser("inspect", help="table of T_eff, shift factor and shifted-timestep quantiles",
                       description="For each resolution x frame count x mode: T_eff, the shift factor and the 5th, "
                                   "50th and 95th percentiles of the shifted training timestep (exact quantiles of "
                                   "the base distribution, shifted). Degenerate rows are marked with the guard's "
                                   "message.")
    add_selection(p)
    p.add_argument("--json", action="store_true", help="machine-readable output")
    p.set_defaults(func=cmd_inspect)

    p = sub.add_parser("plot", help="PNG figures of the transform and the timestep histogram per bucket",
                       description="One PNG per resolution x frame count: the transform t -> t' and the histogram of "
                                   "sampled training timesteps, for every selected mode side by side.")
    p.add_argument("--out", required=True, help="directory for the PNG files")
    add_selection(p)
    p.add_argument("--samples", type=positive_int, default=20000, help="draws per histogram (default 20000)")
    p.add_argument("--dpi", type=positive_int, default=110, help="figure resolution (default 110)")
    p.set_defaults(func=cmd_plot)

    p = sub.add_parser("audit", help="check a dataset CSV and/or training config for collapsed timesteps",
                       description="Counts clips per bucket (resolution x frames) in an Open-Sora dataset CSV and/or "
                                   "the bucket_config of a training config, shows T_eff under every mode and what the "
                                   "config's current scheduler does with each bucket. Exits 1 when some clip would "
                                   "train with every timestep at t = 0 (or be refused by the guard), so it can gate "
                                   "a launch script; 2 on bad input.")
    p.add_argument("--csv", help="dataset CSV with num_frames, height, width columns (extra columns are ignored)")
    p.add_argument("--config", help="Open-Sora training config (its bucket_config and scheduler are read)")
    p.add_argument("--opensora-version", choices=["1.2", "1.3"], default="1.2",
                   help="which stock rule type='rflow' means (default 1.2: num_frames // 17 * 5)")
    p.add_argument("--skip-bad-rows", action="store_true", help="count and skip malformed rows instead of stopping")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    p.set_defaults(func=cmd_audit)

    p = sub.add_parser("config", help="write a config deriving from an Open-Sora config, with rflow-timeshift",
                       description="Writes an mmengine config whose _base_ is BASE_CONFIG and whose scheduler is "
                                   "rflow-timeshift with the chosen options, then loads it with mmengine and builds "
                                   "the scheduler through the registry before reporting success.")
    p.add_argument("base_config", metavar="BASE_CONFIG", help="the Open-Sora config to derive from")
    p.add_argument("--shift-mode", choices=SHIFT_MODES, required=True, help="temporal-size policy")
    p.add_argument("--out", required=True, help="path of the config to write")
    p.add_argument("--on-degenerate", choices=["error", "clamp", "ignore"], default="error",
                   help="guard for T_eff <= 0 (default error)")
    p.add_argument("--sample-method", choices=SAMPLE_METHODS, help="base distribution (default: the base config's)")
    p.add_argument("--timestep-rng", choices=["global", "per_sample"], help="timestep stream")
    p.add_argument("--stratified", action="store_true", help="stratify the global batch (needs per_sample)")
    p.add_argument("--set", nargs="+", action=DictAction, metavar="KEY=VALUE",
                   help="any other scheduler keyword, e.g. --set timestep_seed=7 resolution_shift=linear")
    p.set_defaults(func=cmd_config)
    return parser


def main(argv: Optional[Sequence[str]] = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        return args.func(args)
    except (UsageError, ValueError, TypeError, KeyError, FileNotFoundError) as err:
        print(f"opensora-timeshift {args.command}: error: {err}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
