"""Cost of telemetry per training step: the stand-in (TinySTDiT, bouncing blobs) at batch 8, telemetry on vs off.

    python scripts/bench_telemetry.py [--rounds 9] [--calls 10] [--every 100]

Each call is one full training step (training_losses, backward, AdamW step) through rflow-timeshift built from
configs/tiny/base.py's scheduler; the two schedulers alternate in interleaved rounds, and the median per-step time and
the median ratio on/off within a round are printed (target: at most 1.01). With telemetry on, every ``--every``-th
step also reports (the all_reduce is a no-op on one process; the JSONL line is written to a temporary dir).
"""

from __future__ import annotations

import argparse
import itertools
import sys
import tempfile
from pathlib import Path

import torch

from benchutil import interleaved_medians
from opensora_timeshift_patch import SCHEDULERS, build_module

sys.path.append(str(Path(__file__).resolve().parents[1]))  # standin/ is not installed
from standin.tiny import BouncingBlobs, TinySTDiT  # noqa: E402

SCHEDULER = dict(type="rflow-timeshift", use_timestep_transform=True, sample_method="logit-normal",
                 num_sampling_steps=20, backend="standalone")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rounds", type=int, default=9)
    parser.add_argument("--calls", type=int, default=10)
    parser.add_argument("--every", type=int, default=100)
    parser.add_argument("--batch", type=int, default=8)
    args = parser.parse_args()
    torch.set_num_threads(1)
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    data = BouncingBlobs([17, 51], seed=0)
    batches = [tuple(v.to(device) if i == 0 else {k: m.to(device) for k, m in v.items()}
                     for i, v in enumerate(data.batch(range(args.batch), frames))) for frames in (17, 51)]
    out = tempfile.mkdtemp()
    fns = {}
    for name, extra in (("off", {}), ("on", {"telemetry": dict(dir=out, every=args.every)})):
        scheduler = build_module({**SCHEDULER, **extra}, SCHEDULERS)
        torch.manual_seed(0)
        model = TinySTDiT().to(device)
        optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3)
        cycle = itertools.cycle(batches)

        def step(scheduler=scheduler, model=model, optimizer=optimizer, cycle=cycle):
            x, meta = next(cycle)
            loss = scheduler.training_losses(model, x, meta)["loss"].mean()
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            if device.type == "cuda":
                torch.cuda.synchronize()

        fns[name] = step
    result = interleaved_medians(fns, "off", rounds=args.rounds, calls=args.calls,
                                 clock="wall" if device.type == "cuda" else "cpu")
    for name, (seconds, ratio) in result.items():
        print(f"{name:>4}: {seconds * 1e3:8.3f} ms per step, {ratio:.4f} x off")
    print(f"telemetry added {100 * (result['on'][1] - 1):+.2f}% per step (median of {args.rounds} rounds, batch "
          f"{args.batch}, {device.type}); target <= 1%")


if __name__ == "__main__":
    main()
