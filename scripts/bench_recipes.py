"""What a recipe's draw costs per training step, against stock's logit-normal draw, on one process.

    python scripts/bench_recipes.py [--batch 8 64] [--rounds 15] [--calls 200]

Per step, the 1.x scheduler's ``sample_timesteps`` for a batch of 720x1280, 121-frame clips (steady state: the
bucket's meta already judged), for

- ``stock``: the stock draw (logit-normal from torch's RNG) and shift, as Open-Sora 1.x with ``shift_mode="latent"``;
- ``hunyuanvideo-1.5-480p-mix``: a mixture every component of which the shift moves alike (drawn unshifted, by
  bisection of its CDF, then shifted);
- ``ltx-2``: a mixture with an unshifted and a stretched component, drawn per sample in the shifted noise level
  (bisection of its CDF for each sample's factor, then the inverse shift) after the factor is computed;

as medians of interleaved rounds and of the per-round ratios to ``stock``, by this thread's CPU time. Then, once,
what a bucket never seen before costs on its first step (its guard judges 100 000 shifted draws for pile-up).
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import torch

from benchutil import interleaved_medians
from opensora_timeshift_patch import RFlowTimeShift

sys.path.append(str(Path(__file__).resolve().parents[1]))  # standin/, the stub meta, is not installed
from standin.stubs import batch_meta  # noqa: E402

RECIPES = {"stock": dict(shift_mode="latent", sample_method="logit-normal"),
           "hunyuanvideo-1.5-480p-mix": dict(recipe="hunyuanvideo-1.5-480p-mix", shift_mode="latent"),
           "ltx-2": dict(recipe="ltx-2")}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--batch", type=int, nargs="+", default=[8, 64])
    p.add_argument("--rounds", type=int, default=15)
    p.add_argument("--calls", type=int, default=200)
    args = p.parse_args()
    torch.set_num_threads(1)
    print(f"torch {torch.__version__}, 1 thread, 720x1280 at 121 frames, medians of {args.rounds} rounds of "
          f"{args.calls} calls (CPU time)")
    for batch in args.batch:
        x = torch.zeros(batch, 4, 31, 90, 160)  # the latent's shape only is read
        meta = batch_meta(batch, 720, 1280, 121)
        fns = {}
        for name, settings in RECIPES.items():
            scheduler = RFlowTimeShift(**settings)
            fns[name] = lambda s=scheduler: s.sample_timesteps(x, meta)
        for name, (cost, ratio) in interleaved_medians(fns, "stock", args.rounds, args.calls, clock="cpu").items():
            print(f"  batch {batch:>4}  {name:<28} {cost * 1e6:9.1f} µs  {ratio:6.2f}x")
    print("first step of a new bucket (its guard's pile-up judgement included), batch 8:")
    for name, settings in RECIPES.items():
        scheduler = RFlowTimeShift(**settings)
        start = time.thread_time()
        scheduler.sample_timesteps(torch.zeros(8, 4, 31, 90, 160), batch_meta(8, 720, 1280, 121))
        print(f"  {name:<28} {(time.thread_time() - start) * 1e3:9.1f} ms")


if __name__ == "__main__":
    main()
