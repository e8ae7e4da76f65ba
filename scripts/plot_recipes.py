"""Every named recipe side by side at one clip size: the density of its shifted training timestep (its effective
emphasis: no recipe here weights the loss) and its sampling schedule.

    python scripts/plot_recipes.py --out docs/recipes_720x1280_81f.png [--resolution 720x1280 --frames 81 --steps 50]

The training density is computed, not sampled: the recipe's own training draw (``Recipe.training_timesteps``, the
1.x scheduler's path) applied to equally likely uniforms, binned. The schedule is ``opensora_timeshift_patch.recipes
.sigmas``, the function the ``sigmas`` command prints and the tests check against each model's own code.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
from pathlib import Path

import numpy as np
import torch

from opensora_timeshift_patch.core import Recipe
from opensora_timeshift_patch.density import midpoint_uniforms
from opensora_timeshift_patch.recipes import RECIPES, sigmas

BINS = 50


def training_density(name: str, height: int, width: int, frames: int) -> np.ndarray:
    """The recipe's shifted training t / N on BINS equal bins of [0, 1], as a density."""
    recipe = Recipe(dict(recipe=name))
    u = midpoint_uniforms()
    meta = {k: torch.full((u.numel(),), float(v)) for k, v in
            (("height", height), ("width", width), ("num_frames", frames))}
    with torch.no_grad():
        t = recipe.training_timesteps(u, meta) / recipe.num_timesteps
    density, _ = np.histogram(t.double().numpy(), bins=BINS, range=(0.0, 1.0), density=True)
    return density


def main(argv: list | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--out", required=True, help="the PNG to write (written to a temporary file, then renamed)")
    p.add_argument("--resolution", default="720x1280", help="HxW of the clip (default 720x1280)")
    p.add_argument("--frames", type=int, default=81, help="frames of the clip (default 81)")
    p.add_argument("--steps", type=int, default=50, help="sampling steps (default 50)")
    args = p.parse_args(argv)
    try:
        height, width = (int(x) for x in args.resolution.lower().split("x"))
    except ValueError:
        p.error(f"--resolution {args.resolution!r} is not HxW, e.g. 720x1280")
    if not (1 <= height <= 16384 and 1 <= width <= 16384 and 1 <= args.frames <= 1024 and 1 <= args.steps <= 1000):
        p.error("--resolution sides must be 1..16384, --frames 1..1024, --steps 1..1000")
    out = Path(args.out)
    if out.is_dir():
        p.error(f"--out {args.out!r} is a directory: give a .png path")

    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    names = list(RECIPES)
    fig, (left, right) = plt.subplots(1, 2, figsize=(14, 6))
    edges = np.linspace(0, 1, BINS + 1)
    cmap = plt.get_cmap("tab20")
    for i, name in enumerate(names):
        # past tab20's 20 colours, dashed, so that no two recipes share a line
        color, style = cmap(i % 20), ("-", "--", ":")[i // 20 % 3]
        left.stairs(training_density(name, height, width, args.frames), edges, color=color, lw=1.5, ls=style,
                    label=name)
        s = sigmas(name, args.steps, height, width, args.frames)
        right.plot(range(len(s)), s, color=color, lw=1.5, ls=style, label=f"{name} ({RECIPES[name].confidence})")
    left.set(xlabel="shifted training t / N (1 = pure noise)", ylabel="density",
             title=f"training timesteps at {height}x{width}, {args.frames} frames")
    right.set(xlabel="sampling step", ylabel="sigma", title=f"sampling schedule, {args.steps} steps")
    left.legend(fontsize=7, loc="upper left")
    right.legend(fontsize=7, loc="lower left")
    fig.tight_layout()
    out.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(suffix=".png", dir=out.parent)
    os.close(fd)
    try:
        fig.savefig(tmp, dpi=110)
        os.replace(tmp, out)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)
    plt.close(fig)
    print(out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
