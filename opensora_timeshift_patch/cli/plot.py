"""``plot``: per (resolution, frames) bucket, one PNG of the transform t -> t' and the histogram of the shifted
training timesteps for every setting side by side, and with a loss weighting one PNG of the effective emphasis;
written once over a view. :func:`bucket_curves` and :func:`emphasis_curves` return what is drawn."""

from __future__ import annotations

import argparse
import atexit
import contextlib
import logging
import os
import shutil
import sys
import tempfile
import warnings
from pathlib import Path
from typing import Any, Iterator, List, NamedTuple, Optional

import numpy as np
import torch

from ..density import density_quantile
from ..weighting import LossWeighting
from .common import UsageError
from .options import MAX_DPI, MAX_SAMPLES, Once, add_selection, int_in
from .views import Curve, view_of

PLOT_EDGES = np.linspace(0.0, 1.0, 101)
T_GRID_POINTS = 201


@contextlib.contextmanager
def quiet_matplotlib() -> Iterator[None]:
    """Use matplotlib with nothing of its own on stderr, so that an error stays one line.

    Where its default config or cache directory cannot be written (HOME unwritable or not a directory), it would
    say so on stderr and make a temporary one: give it one (removed at exit) instead. Its log messages (e.g. a font
    cache being built) and warnings are held back while it runs.
    """
    if "MPLCONFIGDIR" not in os.environ and "matplotlib" not in sys.modules:
        home = os.path.expanduser("~")
        defaults = [os.path.join(os.environ.get(var) or os.path.join(home, sub), "matplotlib")
                    for var, sub in (("XDG_CONFIG_HOME", ".config"), ("XDG_CACHE_HOME", ".cache"))]
        if not all(map(_writable_dir, defaults)):
            made = tempfile.mkdtemp(prefix="opensora-timeshift-mpl-")
            atexit.register(shutil.rmtree, made, True)
            os.environ["MPLCONFIGDIR"] = made
    logger = logging.getLogger("matplotlib")
    level = logger.level
    logger.setLevel(logging.ERROR)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            yield
    finally:
        logger.setLevel(level)


def _writable_dir(path: str) -> bool:
    try:
        os.makedirs(path, exist_ok=True)
    except OSError:
        return False
    return os.path.isdir(path) and os.access(path, os.W_OK | os.X_OK)


def uniforms_of(samples: int) -> torch.Tensor:
    """The uniforms every histogram draws through its distribution (seeded: a plot is reproducible)."""
    return torch.rand(samples, dtype=torch.float64, generator=torch.Generator().manual_seed(0))


def t_grid() -> torch.Tensor:
    return torch.linspace(0, 1, T_GRID_POINTS, dtype=torch.float64)


def bucket_curves(view: Any, hw: Any, frames: int, uniforms: torch.Tensor) -> List[Curve]:
    """What the timeshift_*.png of a bucket draws: per setting, the transform on :func:`t_grid` and ``uniforms``
    (:func:`uniforms_of`) through the setting's distribution, shifted."""
    return list(view.curves(hw, frames, t_grid(), uniforms))


class EmphasisCurve(NamedTuple):
    """One setting in an emphasis_*.png: its sampling density and effective emphasis on PLOT_EDGES."""

    label: str
    density: Optional[np.ndarray]  # the shifted training t's density; None: refused by the guard
    emphasis: Optional[np.ndarray]  # that density times w(t), normalised; None: every loss weight is 0
    collapsed: bool  # every draw at t' = 0


def emphasis_curves(view: Any, hw: Any, frames: int) -> List[EmphasisCurve]:
    """What the emphasis_*.png of a bucket draws, per mode under the bucket's rule (1.x with a loss weighting)."""
    out = []
    for mode in view.bucket_modes(hw, frames):
        if view.refused(mode, hw, frames):  # no numbers to draw: named in the legend
            out.append(EmphasisCurve(f"{mode.label}: refused by the guard", None, None, False))
            continue
        label = f"{mode.label} (T_eff {mode.t_eff(frames):.3g})"
        factor = view.factor(mode, hw, frames)
        density = view.emphasis(mode, factor, PLOT_EDGES, LossWeighting("none"))
        collapsed = density[0] * (PLOT_EDGES[1] - PLOT_EDGES[0]) > 0.999
        try:
            emphasis: Optional[np.ndarray] = None if collapsed else view.emphasis(mode, factor, PLOT_EDGES)
        except ValueError:  # every weight 0
            emphasis = None
        out.append(EmphasisCurve(label, density, emphasis, collapsed))
    return out


def cmd_plot(args: argparse.Namespace) -> int:
    if not args.out:
        raise UsageError("--out is empty: give a directory for the PNG files")
    with quiet_matplotlib():
        return _plot(args)


def _plot(args: argparse.Namespace) -> int:
    out = Path(args.out)
    if os.path.lexists(out) and not out.is_dir():
        raise UsageError(f"--out {args.out!r} exists and is not a directory: give a directory for the PNG files")
    view = view_of(args)  # every setting is checked before anything is written
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as err:
        raise UsageError(f"cannot create the --out directory {args.out!r}: {err.strerror}") from err

    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    grid = t_grid()
    uniforms = uniforms_of(args.samples)
    written = []
    for hw in view.resolutions:
        for frames in view.frames:
            fig, (ax_curve, ax_hist) = plt.subplots(1, 2, figsize=(12, 4.5))
            peak = 0.0
            for curve in bucket_curves(view, hw, frames, uniforms):
                if curve.transform is None:  # refused by the guard: named in the legend, nothing drawn
                    ax_curve.plot([], [], ls="none", label=curve.label)
                    continue
                ax_curve.plot(grid, curve.transform, label=curve.label)
                color = ax_curve.lines[-1].get_color()
                if curve.collapsed:  # all mass at t = 0: a bar at 0, so the other histograms keep their scale
                    ax_hist.axvline(0.0, lw=3, color=color, label=curve.label)
                    continue
                density, *_ = ax_hist.hist(curve.draws.numpy(), bins=50, range=(0, 1), histtype="step",
                                           density=True, label=curve.label, color=color)
                peak = max(peak, float(density.max()))
            ax_curve.plot([0, 1], [0, 1], color="grey", lw=0.8, ls=":", label="no shift")
            ax_curve.set(xlabel="t (1 = noise)", ylabel="shifted t'", title="transform t -> t'")
            ax_hist.set(xlabel="shifted t'", ylabel="density",
                        title=f"training timesteps, {view.method}, {args.samples} draws")
            ax_hist.set_ylim(0, 1.15 * peak if peak else None)
            ax_curve.legend(fontsize=8, loc="lower right")
            ax_hist.legend(fontsize=8, loc="upper left")
            fig.suptitle(view.title(hw, frames))
            fig.tight_layout()
            written.append(save(plt, fig, out / f"timeshift_{hw[0]}x{hw[1]}_{frames}f.png", args.dpi))
            if view.weighted:
                written.append(plot_emphasis(plt, view, hw, frames, out, args.dpi))
    for path in written:
        print(path)
    return 0


def save(plt: Any, fig: Any, path: Path, dpi: int) -> Path:
    """Written to a temporary name and renamed, so a reader never sees half a PNG."""
    tmp = path.with_name(f".{path.name}.tmp{os.getpid()}")
    try:
        fig.savefig(tmp, dpi=dpi, format="png")
        os.replace(tmp, path)
    except OSError as err:
        raise UsageError(f"cannot write {path}: {err.strerror or err}") from err
    finally:
        plt.close(fig)
        if tmp.exists():
            tmp.unlink()
    return path


def plot_emphasis(plt: Any, view: Any, hw: Any, frames: int, out: Path, dpi: int) -> Path:
    """One PNG for a bucket: per mode (under the bucket's rule, if any), the density of the shifted training
    timestep (dashed) and the effective emphasis (solid: that density times the loss weight, normalised), with w(t')
    on the right axis."""
    weighting = view.weighting
    fig, ax = plt.subplots(figsize=(8, 4.8))
    colors = plt.rcParams["axes.prop_cycle"].by_key()["color"]
    for i, curve in enumerate(emphasis_curves(view, hw, frames)):
        color = colors[i % len(colors)]
        if curve.density is None:
            ax.plot([], [], ls="none", label=curve.label)
            continue
        if curve.collapsed:  # every draw at t' = 0: a line at 0 keeps the scale
            ax.axvline(0.0, lw=3, color=color, label=f"{curve.label}: t = 0, degenerate")
            continue
        ax.stairs(curve.density, PLOT_EDGES, ls="--", lw=1, color=color, label=f"{curve.label}: sampling density")
        if curve.emphasis is None:
            ax.plot([], [], ls="none", label=f"{curve.label}: every loss weight is 0")
            continue
        median = density_quantile(PLOT_EDGES, curve.emphasis, 0.5)
        ax.stairs(curve.emphasis, PLOT_EDGES, lw=1.8, color=color,
                  label=f"{curve.label}: effective emphasis (half below t' = {median:.2f})")
    grid = torch.linspace(0, 1, 401, dtype=torch.float64)
    weights = weighting(grid)
    right = ax.twinx()
    right.plot(grid, weights, color="grey", lw=0.9, ls=":", label=f"loss weight w(t') ({weighting.name})")
    if bool((weights > 0).all()) and float(weights.max() / weights.min()) >= 100:
        right.set_yscale("log")
    right.set_ylabel("loss weight w(t'), clipped at max_loss_weight")
    ax.set(xlabel="shifted t' (1 = noise)", ylabel="density (each curve integrates to 1)", xlim=(0, 1),
           title=f"{hw[0]}x{hw[1]}, {frames} frames: where the gradient budget goes\n{weighting!r}")
    ax.set_ylim(bottom=0)
    handles, labels = ax.get_legend_handles_labels()
    more, more_labels = right.get_legend_handles_labels()
    ax.legend(handles + more, labels + more_labels, fontsize=7, loc="upper left")
    fig.tight_layout()
    return save(plt, fig, out / f"emphasis_{hw[0]}x{hw[1]}_{frames}f.png", dpi)


def add_parser(sub: Any, formatter: Any, epilog: str) -> None:
    p = sub.add_parser("plot", help="PNG figures of the transform and the timestep histogram per bucket",
                       formatter_class=formatter, epilog=epilog,
                       description="One PNG per resolution x frame count: the transform t -> t' and the histogram\n"
                                   "of sampled training timesteps, for every selected mode side by side. --out is a\n"
                                   "directory (created if missing); its timeshift_*.png files of the same name are\n"
                                   "replaced. With --loss-weighting, also one emphasis_*.png per resolution x frame\n"
                                   "count: per mode, the density of the shifted training timestep and the effective\n"
                                   "emphasis (that density times the loss weight w(t), normalised), with w(t); both\n"
                                   "computed at 100000 equally likely points, not sampled. With noise_range, the\n"
                                   "draws are confined to it through each bucket's own factor, as training draws.")
    p.add_argument("--out", required=True, action=Once, help="directory for the PNG files (not an existing file)")
    add_selection(p)
    p.add_argument("--samples", type=int_in(1, MAX_SAMPLES), default=20000, action=Once,
                   help=f"draws per histogram, 1 to {MAX_SAMPLES} (default 20000)")
    p.add_argument("--dpi", type=int_in(10, MAX_DPI), default=110, action=Once,
                   help=f"figure resolution, 10 to {MAX_DPI} (default 110)")
    p.set_defaults(func=cmd_plot)
