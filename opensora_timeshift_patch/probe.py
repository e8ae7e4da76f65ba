"""Fixed-timestep loss probe: a model's loss at a fixed grid of timesteps on held-out batches.

Training draws its timesteps from the configured distribution and shift, so training losses of runs with different
policies are not comparable. The probe evaluates every run at the same timesteps, on the same batches, with the
same noise, whatever the run's shift or policy: an explicit ``t=`` is not shifted by ``rflow-timeshift``, nor by
stock RFLOW.

The grid is Open-Sora 1.x's ``eval/loss/eval_loss.py``: ``torch.linspace(0, num_timesteps, num_eval_timesteps +
2)[1:-1]``, one loss per timestep = sum of per-sample losses / samples. Noise:

* ``"per-sample"`` (default): sample ``i`` (counted over all batches) gets noise from its own generator seeded
  ``seed * 1_000_003 + i``, the same at every timestep and in every run, so a run's numbers do not depend on the
  order or number of timesteps evaluated before.
* ``"stock"``: eval_loss.py's: ``mmengine.runner.set_random_seed(seed)`` once, then ``training_losses`` draws its
  noise from the global generator, fresh for each batch and timestep. Configured alike, the probe gives
  eval_loss.py's numbers (``tests/data/eval_loss_goldens.json``).
"""

from __future__ import annotations

from typing import Any, Callable, Dict, List, Mapping, Optional, Sequence, Tuple

import torch
from torch import Tensor

NOISE_MODES = ("per-sample", "stock")
SAMPLE_SEED_STRIDE = 1_000_003


def eval_timesteps(num_timesteps: float, num_eval_timesteps: int = 10) -> Tensor:
    """eval_loss.py's grid: ``num_eval_timesteps`` evenly spaced interior points of [0, num_timesteps]."""
    if isinstance(num_eval_timesteps, bool) or not isinstance(num_eval_timesteps, int) or num_eval_timesteps < 1:
        raise ValueError(f"num_eval_timesteps={num_eval_timesteps!r} must be an integer >= 1")
    if isinstance(num_timesteps, bool) or not isinstance(num_timesteps, (int, float)) or not (
            0 < float(num_timesteps) < float("inf")):
        raise ValueError(f"num_timesteps={num_timesteps!r} must be a finite number > 0")
    return torch.linspace(0, num_timesteps, num_eval_timesteps + 2)[1:-1]


def sample_noise(x: Tensor, first_index: int, seed: int) -> Tensor:
    """Noise for the samples ``first_index, first_index + 1, ...`` of ``x``, each from its own seeded generator."""
    rows = []
    for j in range(x.shape[0]):
        g = torch.Generator().manual_seed(seed * SAMPLE_SEED_STRIDE + first_index + j)
        rows.append(torch.randn(tuple(x.shape[1:]), generator=g, dtype=torch.float32))
    return torch.stack(rows).to(device=x.device, dtype=x.dtype)


def probe_loss(scheduler: Any, model: Callable[..., Tensor],
               batches: Sequence[Tuple[Tensor, Mapping[str, Any]]], num_eval_timesteps: int = 10,
               seed: Optional[int] = 42, noise: str = "per-sample", mask: Optional[Sequence[Optional[Tensor]]] = None,
               dtype: Optional[torch.dtype] = None) -> Dict[str, Any]:
    """Mean loss at each timestep of :func:`eval_timesteps` over ``batches`` (``(x, model_args)`` pairs).

    ``scheduler`` is anything with Open-Sora's ``num_timesteps`` and ``training_losses(model, x, model_args,
    mask=, t=, noise=)``: stock RFLOW or ``rflow-timeshift``. With ``noise="stock"``, ``seed=None`` does not reseed:
    the global generator continues, as it does from one bucket to the next in eval_loss.py. The timesteps are of
    ``dtype`` (default ``x``'s: eval_loss.py casts them to the model's dtype). Returns ``timesteps``, ``loss`` (one
    per timestep) and ``mean`` (their mean, eval_loss.py's per-bucket figure).
    """
    if noise not in NOISE_MODES:
        raise ValueError(f"noise={noise!r} must be one of {', '.join(NOISE_MODES)}")
    if seed is None and noise == "stock":
        pass  # eval_loss.py seeds once for all its buckets: later buckets continue the global generator
    elif isinstance(seed, bool) or not isinstance(seed, int) or seed < 0:
        raise ValueError(f"seed={seed!r} must be an integer >= 0 (None only with noise='stock')")
    batches = list(batches)
    if not batches:
        raise ValueError("batches is empty: the probe needs at least one held-out batch")
    masks = [None] * len(batches) if mask is None else list(mask)
    if len(masks) != len(batches):
        raise ValueError(f"mask has {len(masks)} entries for {len(batches)} batches")
    timesteps = eval_timesteps(scheduler.num_timesteps, num_eval_timesteps)
    fixed: List[Optional[Tensor]] = [None] * len(batches)
    if noise == "stock":
        if seed is not None:
            from mmengine.runner import set_random_seed
            set_random_seed(seed=seed)
    else:
        start = 0
        for k, (x, _) in enumerate(batches):
            fixed[k] = sample_noise(x, start, seed)
            start += x.shape[0]
    losses = []
    with torch.no_grad():
        for t in timesteps:
            total, samples = 0.0, 0
            for k, (x, model_args) in enumerate(batches):
                timestep = torch.tensor([t] * x.shape[0], device=x.device, dtype=dtype or x.dtype)
                # noise=None: drawn inside training_losses (stock); weights=None: eval_loss.py passes none
                out = scheduler.training_losses(model, x, dict(model_args), noise=fixed[k], mask=masks[k],
                                                weights=None, t=timestep)["loss"]
                total += out.sum().item()
                samples += x.shape[0]
            losses.append(total / samples)
    return {"timesteps": [float(t) for t in timesteps], "loss": losses, "mean": sum(losses) / len(losses)}
