"""Cost of the timestep transform per call, against the stock Open-Sora 1.2 formula on the same inputs.

    python scripts/bench_transform.py [--batch 1 4 64 512 4096] [--device cpu|cuda] [--rounds 15] [--calls 500]
                                      [--clock cpu|wall]

The baseline is Open-Sora's own ``timestep_transform`` when Open-Sora is importable, otherwise the stock 1.2
formula written out below (the same operations in the same order). The transforms are timed in interleaved rounds,
so drift hits all alike; each row gives the median time per call and the median of the per-round ratios to the
baseline. The drop-in ``timestep_transform`` is timed as Open-Sora calls it (its defaults, ``num_timesteps=1000``).
On the CPU the clock is this thread's CPU time by default, which other work on a shared machine disturbs far less
than wall time; on a GPU it is wall time (a sync waits).
"""

from __future__ import annotations

import argparse
import functools
import warnings

import torch
from benchutil import interleaved_medians
from opensora_timeshift_patch import TimestepShift, timestep_transform


def stock_formula(t, model_kwargs, base_resolution=512 * 512, base_num_frames=1, scale=1.0, num_timesteps=1):
    """Open-Sora 1.2's transform: temporal size from element 0 of the batch (a host sync), 17-frame rule."""
    t = t / num_timesteps
    ratio_space = (model_kwargs["height"] * model_kwargs["width"] / base_resolution).sqrt()
    n = model_kwargs["num_frames"]
    temporal = torch.ones_like(n) if n[0] == 1 else n // 17 * 5
    ratio = ratio_space * (temporal / base_num_frames).sqrt() * scale
    return ratio * t / (1 + (ratio - 1) * t) * num_timesteps


def baseline():
    try:
        from opensora.schedulers.rf import timestep_transform

        return "Open-Sora timestep_transform", timestep_transform
    except ImportError:
        return "stock 1.2 formula", stock_formula


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--batch", type=int, nargs="+", default=[1, 4, 64, 512, 4096], help="batch sizes to time")
    parser.add_argument("--device", default="cpu", help="torch device (cpu or cuda)")
    parser.add_argument("--rounds", type=int, default=15, help="interleaved timing rounds")
    parser.add_argument("--calls", type=int, default=500, help="calls per transform and round")
    parser.add_argument("--clock", choices=("cpu", "wall"), default=None,
                        help="cpu: this thread's CPU time (default on the CPU); wall: elapsed time (default on a GPU)")
    args = parser.parse_args()
    clock = args.clock or ("cpu" if args.device == "cpu" else "wall")
    torch.set_num_threads(1)

    base_name, base_fn = baseline()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        candidates = {
            "timestep_transform (default)": timestep_transform,
            "legacy, ignore": TimestepShift("legacy", "ignore"),
            "latent, error (default)": TimestepShift("latent", "error"),
            "latent, clamp": TimestepShift("latent", "clamp"),
            "latent, clamp, torch.compile": torch.compile(TimestepShift("latent", "clamp").__call__, fullgraph=True),
        }
    print(f"baseline: {base_name}; device {args.device}; one thread; {args.rounds} interleaved rounds of "
          f"{args.calls} calls; {clock} clock; medians over rounds, ratios taken within each round")
    print(f"{'batch':>6}  {'transform':<30} {'µs/call':>9} {'vs baseline':>12}")
    for batch in args.batch:
        device = torch.device(args.device)
        kw = {k: torch.full((batch,), v, device=device) for k, v in (("height", 720.0), ("width", 1280.0),
                                                                      ("num_frames", 51.0))}
        t = torch.rand(batch, device=device) * 1000
        fns = {name: functools.partial(fn, t, kw, num_timesteps=1000)
               for name, fn in {base_name: base_fn, **candidates}.items()}
        for name, (cost, ratio) in interleaved_medians(fns, base_name, args.rounds, args.calls, clock).items():
            print(f"{batch:>6}  {name:<30} {cost * 1e6:>9.1f} {ratio:>11.2f}x")


if __name__ == "__main__":
    main()
