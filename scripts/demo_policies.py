"""A short tour of the timestep-shift policies: T_eff per mode, the stock collapse on 16-frame clips, the fix.

    python scripts/demo_policies.py
"""

from __future__ import annotations

import sys
from pathlib import Path

import torch

import opensora_timeshift_patch as ots

sys.path.append(str(Path(__file__).resolve().parents[1]))  # standin/, the stub model, is not installed
from standin.stubs import batch_meta, latent_shape, run_sampling, run_training  # noqa: E402

FRAMES = [1, 8, 16, 17, 24, 32, 51, 68, 102, 113, 204]


def main() -> None:
    print("T_eff, the temporal size each policy feeds the shift (bold in the README: 0 = collapse)")
    print("frames " + "".join(f"{m:>12}" for m in ots.SHIFT_MODES))
    for n in FRAMES:
        row = [ots.temporal_size(torch.tensor([float(n)]), m).item() for m in ots.SHIFT_MODES]
        print(f"{n:>6} " + "".join(f"{v:>12.2f}" if m == "continuous" else f"{int(v):>12d}"
                                  for m, v in zip(ots.SHIFT_MODES, row)))

    print("\n16-frame clips at 512x512 (a = 2 for T_eff = 4), training timesteps from the same RNG state:")
    x = torch.randn(*latent_shape(4, 16))
    meta = batch_meta(4, 512, 512, 16)
    for mode, on_degenerate in (("legacy", "ignore"), ("frames16", "error"), ("latent", "error")):
        scheduler = ots.RFlowTimeShift(shift_mode=mode, on_degenerate=on_degenerate, num_sampling_steps=5)
        t, loss = run_training(scheduler, x, meta, seed=0)
        steps, z = run_sampling(scheduler, x[:2], batch_meta(2, 512, 512, 16))
        label = f"{mode} ({on_degenerate})"
        print(f"  {label:<18} t = {[round(v, 1) for v in t.tolist()]}")
        print(f"  {'':<18} sampling t = {[round(s[0].item(), 1) for s in steps]}, finite: {bool(z.isfinite().all())}")

    print("\nThe default guard refuses the stock rule on 16 frames:")
    try:
        run_training(ots.RFlowTimeShift(shift_mode="legacy"), x, meta, seed=0)
    except ValueError as err:
        print(f"  ValueError: {err}")


if __name__ == "__main__":
    main()
