"""``sigmas``: a named recipe's sampling schedule, one sigma per step plus the terminal, as the model's own
inference code computes it (see :mod:`..recipes`)."""

from __future__ import annotations

import argparse
import json
from typing import Any, Tuple

from ..recipes import RECIPES
from ..settings import SettingError
from .common import UsageError, format_table
from .options import MAX_FRAMES, MAX_SIDE, Once, int_in, pixel_size

MAX_STEPS = 10_000


def hxw(text: str) -> Tuple[int, int]:
    """argparse type: ``HxW`` in pixels, sides 1 to MAX_SIDE (bucket names are Open-Sora's, not these models')."""
    size = pixel_size(text)
    if size is None:
        raise argparse.ArgumentTypeError(f"resolution {text!r} is not HxW with sides from 1 to {MAX_SIDE} "
                                         "(e.g. 480x832)")
    return size


def cmd_sigmas(args: argparse.Namespace) -> int:
    if args.recipe not in RECIPES:  # argparse's choices catch this; kept for callers building the namespace
        raise UsageError(f"--recipe {args.recipe!r} is not one of {', '.join(RECIPES)}")
    recipe = RECIPES[args.recipe]
    (height, width), frames, steps = args.resolution, args.frames, args.steps
    try:
        values = recipe.schedule(steps, height, width, frames)
    except SettingError as err:  # a size or step count the model's own schedule is undefined at
        raise UsageError(str(err)) from None
    if args.json:
        print(json.dumps(dict(recipe=recipe.name, model=recipe.model, steps=steps, height=height, width=width,
                              frames=frames, schedule=recipe.schedule_text, source=recipe.source,
                              confidence=recipe.confidence, training_confidence=recipe.trained_confidence,
                              recorded=recipe.extra, sigmas=values),
                         indent=1, allow_nan=False))
        return 0
    print(f"recipe {recipe.name} ({recipe.model}): {recipe.schedule_text}")
    print(f"source: {recipe.source} ({recipe.confidence_text})")
    print(f"{steps} steps at {height}x{width} x {frames} frames: {steps} sigmas, then the terminal")
    rows: Any = [[i if i < steps else "terminal", f"{s:.6f}"] for i, s in enumerate(values)]
    print(format_table(["step", "sigma"], rows))
    return 0


def add_parser(sub: Any, formatter: Any, epilog: str) -> None:
    p = sub.add_parser("sigmas", help="a named recipe's sampling schedule", formatter_class=formatter,
                       epilog=epilog,
                       description="The sampling schedule of a named model's recipe, one sigma (noise level, 1 =\n"
                                   "noise) per step and then the terminal, as that model's own inference code\n"
                                   "computes it, with the recipe's source and confidence.")
    p.add_argument("--recipe", required=True, choices=list(RECIPES), action=Once, help="the recipe")
    p.add_argument("--steps", type=int_in(1, MAX_STEPS), default=50, action=Once,
                   help=f"sampling steps, 1 to {MAX_STEPS} (default 50)")
    p.add_argument("--resolution", type=hxw, default=(720, 1280), action=Once, metavar="HxW",
                   help="pixel height x width (default 720x1280)")
    p.add_argument("--frames", type=int_in(1, MAX_FRAMES), default=81, action=Once,
                   help=f"pixel frames, 1 to {MAX_FRAMES} (default 81)")
    p.add_argument("--json", action="store_true", help="machine-readable output")
    p.set_defaults(func=cmd_sigmas)
