"""Train the stand-in video model through the path Open-Sora's scripts/train.py takes, then evaluate it.

    torchrun --nproc_per_node=2 scripts/train_tiny.py configs/tiny/latent.py --work-dir work_dirs/latent
    torchrun --nproc_per_node=2 scripts/train_tiny.py configs/tiny/latent.py --work-dir work_dirs/latent --resume auto

The mmengine config names the scheduler; it is built with ``build_module(cfg.scheduler, SCHEDULERS)`` and called
as ``scheduler.training_losses(model, x, model_args)`` every step, as Open-Sora does. Every rank is seeded alike,
as Open-Sora's ``set_seed`` does (reseeded per step, so a resumed run continues bit for bit); each rank trains on
its own bucket of clips (one frame count per batch). Gloo on CPU, NCCL on GPU. Rank 0 shows a tqdm bar, writes
checkpoints (model, optimizer, the scheduler's ``state_dict``, step) to the work dir, and at the end an
evaluation, ``eval.json``:

* ``heldout_loss``: the (unweighted) flow-matching loss on held-out clips, averaged over ``evaluation.loss_timesteps``
  uniformly spaced t (unshifted, so every policy is scored on the same footing);
* ``fd``: the Fréchet distance between random-conv features of held-out clips and of clips generated with the
  scheduler's own ``sample()`` (NaN when a sample is not finite);
* ``nonfinite``: whether sampling produced any non-finite value;
* ``t_zero_fraction`` and ``t_mean``: how many training timesteps were exactly 0 (the collapse), and their mean.
"""

from __future__ import annotations

import argparse
import glob
import json
import math
import os
import sys
from typing import Any, Dict, List, Optional

import torch
import torch.distributed as dist
from mmengine.config import Config, DictAction
from tqdm.auto import tqdm

from opensora_timeshift_patch import SCHEDULERS, build_module

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.append(ROOT)  # standin/, the stand-in model and data, is not installed with the plugin
from standin.tiny import (BouncingBlobs, NullTextEncoder, RandomFeatures, TinySTDiT,  # noqa: E402
                          features_by_length, frechet_distance)

EVAL_SEED_OFFSET = 10_000  # held-out clips come from another seed of the same generator


def set_up_distributed() -> tuple:
    """(rank, world, device): torchrun's environment if present, else a single process."""
    if "RANK" not in os.environ:
        return 0, 1, torch.device("cuda" if torch.cuda.is_available() else "cpu")
    backend = "nccl" if torch.cuda.is_available() else "gloo"
    if not dist.is_initialized():
        dist.init_process_group(backend)
    rank = dist.get_rank()
    device = torch.device("cpu")
    if backend == "nccl":
        device = torch.device("cuda", int(os.environ.get("LOCAL_RANK", 0)))
        torch.cuda.set_device(device)
    return rank, dist.get_world_size(), device


def latest_checkpoint(work_dir: str) -> Optional[str]:
    found = glob.glob(os.path.join(work_dir, "ckpt_step*.pt"))
    return max(found, key=lambda p: int(p.rsplit("step", 1)[1].split(".")[0])) if found else None


def train(cfg: Config, work_dir: str, resume: Optional[str] = None, progress: bool = True) -> Dict[str, Any]:
    """Train as configured and return the evaluation; usable in-process (one rank) or under torchrun."""
    rank, world, device = set_up_distributed()
    os.makedirs(work_dir, exist_ok=True)
    data = BouncingBlobs(cfg.dataset.frames, seed=cfg.dataset.seed,
                         nominal_resolution=tuple(cfg.dataset.nominal_resolution))
    scheduler = build_module(cfg.scheduler, SCHEDULERS)
    torch.manual_seed(cfg.seed)  # the same initial weights on every rank
    core = TinySTDiT(**cfg.model).to(device)
    model = core if world == 1 else torch.nn.parallel.DistributedDataParallel(core)
    optimizer = torch.optim.AdamW(core.parameters(), lr=cfg.train.lr, weight_decay=0.0)
    seen: List[torch.Tensor] = []
    core.register_forward_pre_hook(lambda _, args: seen.append(args[1].detach().float().cpu()))

    start = 0
    if resume == "auto":
        resume = latest_checkpoint(work_dir)
    if resume:
        state = torch.load(resume, map_location=device, weights_only=True)  # tensors and numbers only
        core.load_state_dict(state["model"])
        optimizer.load_state_dict(state["optimizer"])
        scheduler.load_state_dict(state["scheduler"])
        start = state["step"]
        seen.extend(state["timesteps"])
    steps, batch = cfg.train.steps, cfg.train.batch_size
    bar = tqdm(range(start, steps), initial=start, total=steps, desc="train", disable=rank != 0 or not progress)
    for step in bar:
        pick = torch.Generator().manual_seed(cfg.seed * 7919 + step * 104729 + rank)
        frames = data.frames[int(torch.randint(len(data.frames), (1,), generator=pick))]
        first = (step * world + rank) * batch
        x, model_args = data.batch(range(first, first + batch), frames)
        x = x.to(device)
        model_args = {k: v.to(device) for k, v in model_args.items()}
        torch.manual_seed(cfg.seed * 1_000_003 + step)  # alike on every rank, as Open-Sora seeds them
        loss = scheduler.training_losses(model, x, model_args)["loss"].mean()
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        if rank == 0 and step % cfg.train.log_every == 0:
            bar.set_postfix(loss=f"{loss.item():.3f}", frames=frames, t_mean=f"{seen[-1].mean().item():.0f}")
        done = step + 1
        if done % cfg.train.ckpt_every == 0 or done == steps:
            save_checkpoint(work_dir, done, core, optimizer, scheduler, seen, rank, world)
    bar.close()

    result = None
    if rank == 0:
        t = torch.cat(seen[:steps]) if seen else torch.zeros(0)
        result = evaluate(core, scheduler, cfg, device)
        result.update(t_zero_fraction=float((t == 0).float().mean()), t_mean=float(t.mean()), steps=steps,
                      world=world, resumed_from=start)
        with open(os.path.join(work_dir, "eval.json"), "w") as f:
            json.dump(result, f, indent=1)
    if world > 1:
        dist.barrier()
    return result or {}


def save_checkpoint(work_dir: str, step: int, core: torch.nn.Module, optimizer: Any, scheduler: Any,
                    seen: List[torch.Tensor], rank: int, world: int) -> None:
    if rank == 0:
        state = dict(model=core.state_dict(), optimizer=optimizer.state_dict(), scheduler=scheduler.state_dict(),
                     step=step, timesteps=seen[:step])
        path = os.path.join(work_dir, f"ckpt_step{step}.pt")
        torch.save(state, path + ".tmp")
        os.replace(path + ".tmp", path)  # never a half-written checkpoint
    if world > 1:
        dist.barrier()


@torch.no_grad()
def evaluate(model: torch.nn.Module, scheduler: Any, cfg: Config, device: torch.device) -> Dict[str, Any]:
    """Held-out loss over uniformly spaced t, FD of sampled clips against held-out clips, and finiteness."""
    model.eval()
    data = BouncingBlobs(cfg.dataset.frames, seed=cfg.dataset.seed + EVAL_SEED_OFFSET,
                         nominal_resolution=tuple(cfg.dataset.nominal_resolution))
    n = max(1, cfg.evaluation.clips // len(data.frames))
    k_steps, big_n = cfg.evaluation.loss_timesteps, scheduler.num_timesteps
    g = torch.Generator().manual_seed(4321)
    losses, real, generated, nonfinite = [], [], [], False
    for frames in data.frames:
        x, meta = data.batch(range(n), frames)
        x, meta = x.to(device), {k: v.to(device) for k, v in meta.items()}
        for k in range(k_steps):
            t = torch.full((n,), (k + 0.5) / k_steps * big_n, device=device)
            noise = torch.randn(x.shape, generator=g).to(device)
            # The plain velocity loss, whatever loss_weighting trains with, so that runs compare on one scale.
            plain = getattr(scheduler, "rflow", scheduler)
            losses.append(plain.training_losses(model, x, meta, noise, None, None, t)["loss"].mean().item())
        z = torch.randn(x.shape, generator=g).to(device)
        sample = scheduler.sample(model, NullTextEncoder(), z=z, prompts=[""] * n, device=device,
                                  additional_args=meta, progress=False)
        nonfinite |= not bool(torch.isfinite(sample).all())
        real.append(x.cpu())
        generated.append(sample.cpu())
    net = RandomFeatures()
    fd = frechet_distance(features_by_length(real, net), features_by_length(generated, net))
    model.train()
    return dict(heldout_loss=sum(losses) / len(losses), fd=fd, nonfinite=nonfinite)


def main(argv: Optional[List[str]] = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("config", help="mmengine config, e.g. configs/tiny/latent.py")
    parser.add_argument("--work-dir", default=None, help="checkpoints and eval.json (default work_dirs/<config>)")
    parser.add_argument("--resume", default=None, help="a checkpoint path, or 'auto' for the latest in the work dir")
    parser.add_argument("--cfg-options", nargs="+", action=DictAction, metavar="KEY=VALUE",
                        help="override config keys, e.g. train.steps=50 dataset.frames=[16]")
    parser.add_argument("--telemetry", default=None, metavar="DIR",
                        help="write the scheduler's per-noise-level loss telemetry to DIR (default: off, as the "
                             "committed comparison ran)")
    parser.add_argument("--telemetry-every", type=int, default=100, metavar="STEPS")
    args = parser.parse_args(argv)
    cfg = Config.fromfile(args.config)
    if args.cfg_options:
        cfg.merge_from_dict(args.cfg_options)
    if args.telemetry is not None:
        cfg.scheduler["telemetry"] = dict(dir=args.telemetry, every=args.telemetry_every)
    work_dir = args.work_dir or os.path.join("work_dirs", os.path.splitext(os.path.basename(args.config))[0])
    result = train(cfg, work_dir, args.resume)
    if result:
        print(json.dumps({k: (None if isinstance(v, float) and math.isnan(v) else v) for k, v in result.items()}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
