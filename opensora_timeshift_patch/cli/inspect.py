"""``inspect``: per (resolution, frames) bucket and per setting, T_eff or the latent and tokens, the shift factor and
the quantiles of the shifted training timestep, as a table or JSON; written once over a view."""

from __future__ import annotations

import argparse
import json
from typing import Any, List, Sequence

from .common import STATUS_TEXT, fmt, format_table, rule_cell, strict
from .options import add_selection
from .views import Bucket, view_of


def columns(view: Any) -> List[str]:
    """The table's headers for a view: which numbers it has decides which columns there are."""
    return (["resolution", "frames"] + (["latent"] if view.latent else []) + [view.label_header]
            + (["rule"] if view.generation == "1.x" and view.rules else [])
            + (["T_eff"] if not view.tokens else ["tokens"])
            + [view.factor_header, "p5", "median", "p95"] + (["w_median"] if view.weighted else [])
            + (["share"] if view.banded else []) + ["status"])


def cells(view: Any, b: Bucket) -> List[Any]:
    digits = view.quantile_digits
    quantiles = b.quantiles if b.quantiles is not None else (None, None, None)
    return ([f"{b.height}x{b.width}", b.frames] + (["x".join(map(str, b.latent))] if view.latent else []) + [b.label]
            + ([rule_cell(b.rule)] if view.generation == "1.x" and view.rules else [])
            + ([fmt(b.t_eff, 2)] if not view.tokens else [b.tokens])
            + [fmt(b.factor, 3), *(fmt(q, digits) if q is not None else "nan" for q in quantiles)]
            + ([fmt(b.emphasis_median)] if view.weighted else []) + ([fmt(b.share, 3)] if view.banded else [])
            + [STATUS_TEXT[b.kind].row])


def cmd_inspect(args: argparse.Namespace) -> int:
    view = view_of(args)
    buckets: Sequence[Bucket] = list(view.buckets())
    if args.json:
        print(json.dumps(strict(view.json_document(buckets)), indent=1, allow_nan=False))
        return 0
    for line in view.header():
        print(line)
    print(format_table(columns(view), [cells(view, b) for b in buckets]))
    for note in view.notes(buckets):
        print(f"\nnote: {note}")
    for message in sorted({b.message for b in buckets if b.message}):
        print(f"\nguard (on_degenerate='error'): {message}")
    return 0


def add_parser(sub: Any, formatter: Any, epilog: str) -> None:
    p = sub.add_parser("inspect", help="table of T_eff, shift factor and shifted-timestep quantiles",
                       formatter_class=formatter, epilog=epilog,
                       description="For each resolution x frame count x mode: T_eff, the shift factor and the 5th,\n"
                                   "50th and 95th percentiles of the shifted training timestep (exact quantiles of\n"
                                   "the base distribution, shifted). Degenerate rows are marked with the guard's\n"
                                   "message. With --loss-weighting, w_median: the shifted t below which half the\n"
                                   "gradient budget lies (the effective emphasis: the density of the shifted t times\n"
                                   "the loss weight w(t), normalised). --set tries shift settings (spatial_exponent,\n"
                                   "temporal_exponent, token_count, ...) before a run, validated as training\n"
                                   "validates them. --opensora-version 2.0: per resolution x frame count, the latent, the\n"
                                   "tokens, alpha and the shifted-t quantiles under stock 2.0's rule and under your\n"
                                   "settings, built as rflow-timeshift builds them on 2.0. With noise_range, the\n"
                                   "quantiles are of the draw confined to it (converted through each bucket's\n"
                                   "factor) and share is the part of the unconfined shifted draw within it.")
    add_selection(p)
    p.add_argument("--json", action="store_true", help="machine-readable output")
    p.set_defaults(func=cmd_inspect)
