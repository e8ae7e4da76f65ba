"""Small deterministic stand-ins for Open-Sora's model and text encoder, for checking schedulers.

Used by the test-suite and by ``scripts/check_against_opensora.py``, so that numbers recorded against the
real Open-Sora code can be reproduced here without it, and by ``scripts/demo_policies.py``.
"""

from __future__ import annotations

from typing import Any, Dict, List, Sequence, Tuple

import torch
from torch import Tensor

from opensora_timeshift_patch.policies import temporal_size


def batch_meta(batch: int, height: float, width: float, num_frames: float) -> Dict[str, Tensor]:
    """The ``height``, ``width`` and ``num_frames`` tensors Open-Sora's loader gives a batch."""
    return {k: torch.full((batch,), float(v)) for k, v in (("height", height), ("width", width),
                                                           ("num_frames", num_frames))}


def latent_shape(batch: int, num_frames: int, channels: int = 4, size: int = 4) -> Tuple[int, ...]:
    """``(B, C, T, H, W)`` with ``T`` the latent length of Open-Sora 1.2's VAE."""
    frames = int(temporal_size(torch.tensor([float(num_frames)]), "latent").item())
    return (batch, channels, frames, size, size)


class StubModel:
    """A fixed velocity field ``0.5 x + t / 1000`` with a zero learned-sigma half; records every ``t`` it sees."""

    def __init__(self) -> None:
        self.seen: List[Tensor] = []

    def __call__(self, x: Tensor, t: Tensor, **kwargs: Any) -> Tensor:
        self.seen.append(t.clone())
        velocity = 0.5 * x + (t.float() / 1000).view(-1, *([1] * (x.dim() - 1)))
        return torch.cat([velocity, torch.zeros_like(x)], dim=1)


class StubTextEncoder:
    """Both of Open-Sora's call styles: 1.2 ``encode(prompts)``, 1.3 ``encode(**tokenize_fn(prompts))``."""

    def tokenize_fn(self, prompts: Sequence[str]) -> Dict[str, Sequence[str]]:
        return {"prompts": prompts}

    def encode(self, prompts: Sequence[str]) -> Dict[str, Tensor]:
        return {"y": torch.zeros(len(prompts), 1, 2, 4)}

    def null(self, n: int) -> Tensor:
        return torch.zeros(n, 1, 2, 4)


def run_training(scheduler: Any, x: Tensor, model_args: Dict[str, Tensor], seed: int) -> Tuple[Tensor, Tensor]:
    """One ``training_losses`` call from ``torch.manual_seed(seed)``: the timesteps drawn and the loss."""
    model = StubModel()
    torch.manual_seed(seed)
    loss = scheduler.training_losses(model, x, model_args)["loss"]
    return model.seen[0], loss


def run_sampling(scheduler: Any, z: Tensor, model_args: Dict[str, Tensor]) -> Tuple[List[Tensor], Tensor]:
    """One ``sample`` call from noise ``z``: the timesteps visited (conditional half) and the result."""
    model = StubModel()
    out = scheduler.sample(model, StubTextEncoder(), z=z.clone(), prompts=["a"] * z.shape[0], device=z.device,
                           additional_args=model_args, progress=False)
    return [t[: z.shape[0]] for t in model.seen], out
