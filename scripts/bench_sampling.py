"""Variance of the minibatch loss estimate under each timestep stream, and the per-step cost of the streams.

    python scripts/bench_sampling.py [--ranks 8] [--batch 4] [--steps 400] [--seeds 3]

1. Variance. A tiny model, first fitted briefly (so its loss depends on t as a flow model's does), then frozen,
   and a fixed global batch (``--ranks`` data-parallel ranks of ``--batch`` clips) are
   scored with the flow-matching loss at timesteps drawn three ways, for ``--steps`` steps each, with the same
   noise per step for all three (common random numbers), so the spread comes from the timesteps alone:
   - ``stock``: every rank draws the same timesteps (Open-Sora seeds all ranks alike), so the global batch holds
     each timestep ``--ranks`` times;
   - ``per_sample``: the counter-based stream, independent draws across the global batch;
   - ``stratified``: the same stream, stratified over the global batch.
   The variance of the minibatch mean loss across steps is reported, and its ratio to ``per_sample``, with the
   spread over ``--seeds`` model seeds.
2. Cost. ``sample_timesteps`` per step for the per-sample streams against the stock draw, on one process.
"""

from __future__ import annotations

import argparse
import functools
import statistics
import sys
from pathlib import Path

import torch

from benchutil import interleaved_medians
from opensora_timeshift_patch import RFlowTimeShift
from opensora_timeshift_patch.sampling import TimestepDistribution, counter_uniform, global_sample_index
from opensora_timeshift_patch.sampling import stratified_uniform
from opensora_timeshift_patch.shift import TimestepShift

sys.path.append(str(Path(__file__).resolve().parents[1]))  # standin/, the stub meta, is not installed
from standin.stubs import batch_meta  # noqa: E402


class TinyModel(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.net = torch.nn.Sequential(torch.nn.Conv3d(5, 16, 3, padding=1), torch.nn.SiLU(),
                                       torch.nn.Conv3d(16, 8, 3, padding=1))

    def forward(self, x, t):
        tt = (t.float() / 1000).view(-1, 1, 1, 1, 1).expand(-1, 1, *x.shape[2:])
        return self.net(torch.cat([x, tt], dim=1))


def fit(model: torch.nn.Module, x0: torch.Tensor, steps: int = 200) -> torch.nn.Module:
    """A short fit at uniform t, so the frozen model's loss varies with t the way a trained one's does."""
    opt = torch.optim.Adam(model.parameters(), lr=3e-3)
    for _ in range(steps):
        t = torch.rand(x0.shape[0]) * 1000
        noise = torch.randn_like(x0)
        keep = (1 - t / 1000).view(-1, 1, 1, 1, 1)
        loss = (model(keep * x0 + (1 - keep) * noise, t).chunk(2, dim=1)[0] - (x0 - noise)).pow(2).mean()
        opt.zero_grad()
        loss.backward()
        opt.step()
    return model.eval()


def global_uniforms(stream: str, step: int, ranks: int, batch: int) -> torch.Tensor:
    """The uniforms of the whole global batch, rank by rank, as each rank would compute its own."""
    parts = []
    for rank in range(ranks):
        if stream == "stock":
            torch.manual_seed(1024 + step)  # the same seed on every rank: the same draws
            parts.append(torch.rand(batch, dtype=torch.float64))
        elif stream == "stratified":
            parts.append(stratified_uniform(0, step, rank, ranks, batch))
        else:
            parts.append(counter_uniform(0, step, global_sample_index(batch, rank, ranks)))
    return torch.cat(parts)


@torch.no_grad()
def loss_variance(stream: str, model: torch.nn.Module, x0: torch.Tensor, ranks: int, batch: int, steps: int) -> float:
    distribution = TimestepDistribution("logit-normal")
    shift = TimestepShift("latent")
    meta = batch_meta(x0.shape[0], 512, 512, 16)
    losses = []
    for step in range(steps):
        t = shift(distribution(global_uniforms(stream, step, ranks, batch)) * 1000, meta, num_timesteps=1000,
                  latent_frames=x0.shape[2]).float()
        noise = torch.randn(x0.shape, generator=torch.Generator().manual_seed(step))
        keep = (1 - t / 1000).view(-1, 1, 1, 1, 1)
        velocity = model(keep * x0 + (1 - keep) * noise, t).chunk(2, dim=1)[0]
        losses.append((velocity - (x0 - noise)).pow(2).mean().item())
    return statistics.variance(losses)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--ranks", type=int, default=8, help="data-parallel ranks simulated")
    parser.add_argument("--batch", type=int, default=4, help="clips per rank")
    parser.add_argument("--steps", type=int, default=400, help="steps per variance estimate")
    parser.add_argument("--seeds", type=int, default=3, help="model seeds")
    parser.add_argument("--rounds", type=int, default=15, help="timing rounds")
    parser.add_argument("--calls", type=int, default=300, help="calls per timing round")
    args = parser.parse_args()
    torch.set_num_threads(1)

    n = args.ranks * args.batch
    print(f"1. Variance of the minibatch mean loss, global batch {n} = {args.ranks} ranks x {args.batch}, "
          f"{args.steps} steps, logit-normal + latent shift, {args.seeds} model seeds")
    ratios = {"stock": [], "per_sample": [], "stratified": []}
    for seed in range(args.seeds):
        torch.manual_seed(seed)
        x0 = torch.randn(n, 4, 1, 1, 1).expand(n, 4, 4, 8, 8).contiguous()  # flat clips: easy to fit
        model = fit(TinyModel(), x0)
        var = {s: loss_variance(s, model, x0, args.ranks, args.batch, args.steps) for s in ratios}
        for s in ratios:
            ratios[s].append(var[s] / var["per_sample"])
        print(f"   seed {seed}: " + ", ".join(f"{s} {v:.3e}" for s, v in var.items()))
    for s, r in ratios.items():
        print(f"   {s:<11} variance / per_sample: median {statistics.median(r):.3f} (min {min(r):.3f}, max {max(r):.3f})")

    print("\n2. Cost of sample_timesteps per step, one process, median of interleaved rounds")
    for batch in (4, 64):
        x, meta = torch.zeros(batch, 4, 5, 8, 8), batch_meta(batch, 512, 512, 17)
        schedulers = {
            "stock draw (global RNG)": RFlowTimeShift(sample_method="logit-normal"),
            "per_sample": RFlowTimeShift(sample_method="logit-normal", timestep_rng="per_sample"),
            "per_sample, stratified": RFlowTimeShift(sample_method="logit-normal", timestep_rng="per_sample",
                                                     stratified=True),
        }
        fns = {name: functools.partial(s.sample_timesteps, x, meta) for name, s in schedulers.items()}
        for name, (cost, ratio) in interleaved_medians(fns, "stock draw (global RNG)", args.rounds, args.calls).items():
            print(f"   batch {batch:>3}  {name:<24} {cost * 1e6:8.1f} µs  {ratio:5.2f}x")


if __name__ == "__main__":
    main()
