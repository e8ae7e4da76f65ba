"""The fixed-timestep probe on the stand-in: a tiny run's loss at eval_loss.py's grid of timesteps.

Builds the config's scheduler and TinySTDiT (weights from ``--checkpoint``, a train_tiny.py checkpoint; else the
seeded initial weights), takes held-out BouncingBlobs clips (train_tiny.py's held-out seed) per frame count of the
config, and prints, as JSON, :func:`opensora_timeshift_patch.probe.probe_loss` per bucket. The timesteps, clips and
noise do not depend on the config's shift or policy, so the numbers of runs with different policies compare::

    python scripts/probe_tiny.py configs/tiny/latent.py --checkpoint work_dirs/latent/ckpt_000200.pt
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any, Dict, Optional

import torch
from mmengine.config import Config

ROOT = Path(__file__).resolve().parents[1]
sys.path.append(str(ROOT))

from opensora_timeshift_patch import SCHEDULERS, build_module  # noqa: E402
from opensora_timeshift_patch.probe import NOISE_MODES, probe_loss  # noqa: E402
from standin.tiny import BouncingBlobs, TinySTDiT  # noqa: E402

HELDOUT_SEED_OFFSET = 10_000  # train_tiny.py's EVAL_SEED_OFFSET: clips training never sees


def probe(cfg: Config, checkpoint: Optional[str], clips: int, batch: int, num_eval_timesteps: int, seed: int,
          noise: str) -> Dict[str, Any]:
    """The probe per frame count of ``cfg.dataset.frames``: ``{frames: probe_loss(...)}``."""
    scheduler = build_module(cfg.scheduler, SCHEDULERS)
    torch.manual_seed(cfg.get("seed", 0))
    model = TinySTDiT(**cfg.model)
    if checkpoint is not None:
        model.load_state_dict(torch.load(checkpoint, map_location="cpu", weights_only=True)["model"])
    model.eval()
    data = BouncingBlobs(cfg.dataset.frames, seed=cfg.dataset.seed + HELDOUT_SEED_OFFSET,
                         nominal_resolution=tuple(cfg.dataset.nominal_resolution))
    # the plain velocity loss, whatever loss_weighting trains with (the standalone rectified flow's)
    plain = getattr(scheduler, "rflow", scheduler)
    out = {}
    for frames in data.frames:
        batches = [data.batch(range(i, min(i + batch, clips)), frames) for i in range(0, clips, batch)]
        out[str(frames)] = probe_loss(plain, model, batches, num_eval_timesteps=num_eval_timesteps, seed=seed,
                                      noise=noise)
    return out


def main(argv: Any = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("config", help="mmengine config, e.g. configs/tiny/latent.py")
    parser.add_argument("--checkpoint", default=None, help="a train_tiny.py checkpoint (default: initial weights)")
    parser.add_argument("--clips", type=int, default=8, help="held-out clips per frame count")
    parser.add_argument("--batch", type=int, default=4)
    parser.add_argument("--num-eval-timesteps", type=int, default=10)
    parser.add_argument("--seed", type=int, default=42, help="noise seed (eval_loss.py's config: 42)")
    parser.add_argument("--noise", choices=NOISE_MODES, default="per-sample")
    args = parser.parse_args(argv)
    if args.clips < 1 or args.batch < 1:
        parser.error(f"--clips={args.clips} and --batch={args.batch} must be >= 1")
    try:
        cfg = Config.fromfile(args.config)
        result = probe(cfg, args.checkpoint, args.clips, args.batch, args.num_eval_timesteps, args.seed, args.noise)
    except (OSError, ValueError, KeyError) as err:
        print(f"probe_tiny: {err}", file=sys.stderr)
        return 2
    print(json.dumps(result, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
