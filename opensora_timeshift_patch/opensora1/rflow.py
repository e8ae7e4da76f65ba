"""A standalone rectified-flow backend with Open-Sora 1.x's conventions, for use without Open-Sora.

Conventions (Liu et al., 2022, "Flow Straight and Fast"; as in Open-Sora 1.2's ``RFlowScheduler``):
timesteps live in [0, num_timesteps] and t = num_timesteps is pure noise; ``x_t = (1 - t/N) x0 + (t/N) noise``;
the model returns twice the latent channels (learned sigma) and the first half is the velocity, whose
target is ``x0 - noise``; the loss is the per-sample mean. Sampling is Euler from t = N down to 0 with
classifier-free guidance on a doubled batch. Random numbers are drawn in the same order as Open-Sora's,
so the same RNG state gives the same noise.
"""

from __future__ import annotations

import weakref
from typing import Any, Callable, Dict, List, Optional, Sequence, Tuple

import torch
from torch import Tensor
from tqdm.auto import tqdm

from ..settings import SettingError

TimestepFn = Callable[[Tensor, Dict[str, Any]], Tensor]


def mean_flat(x: Tensor, mask: Optional[Tensor] = None) -> Tensor:
    """Mean over all non-batch dimensions; with a (B, T) frame mask, over the unmasked frames only."""
    if mask is None:
        return x.mean(dim=list(range(1, x.dim())))
    if x.dim() != 5 or mask.shape != (x.shape[0], x.shape[2]):
        raise ValueError(f"a frame mask of shape {tuple(mask.shape)} needs latents (B, C, T, H, W) with (B, T) = "
                         f"{(x.shape[0], x.shape[2]) if x.dim() > 2 else '?'}; got latents {tuple(x.shape)}")
    per_frame = x.transpose(1, 2).flatten(2)  # (B, T, C*H*W)
    # Two single-axis sums, in Open-Sora's order, so the float rounding is the same.
    return (per_frame * mask.unsqueeze(2)).sum(dim=1).sum(dim=1) / (mask.sum(dim=1) * per_frame.shape[-1])


def weight_index(t: Tensor, table_size: int) -> Tensor:
    """The entry of Open-Sora's per-timestep ``weights`` table that timestep ``t`` takes: ``weights[t]``, as stock
    indexes it, for integer t; ``floor(t)`` for continuous t (stock refuses a float index); and the last entry for
    t = N when the table has only N entries (stock has none there)."""
    return t.long().clamp(max=table_size - 1)


# --- training_losses' inputs that would make a loss NaN, infinite or negative ---------------------------------------

Check = Tuple[Tensor, Callable[[], str]]
"""A flag (a one-element bool tensor: something is wrong) and, to call only when it is set, what is wrong in words."""

# id of a table -> (a weak reference to it, its _version when checked, the mode it was checked under); an entry goes
# when its table does. (A WeakKeyDictionary would compare tensors with ==, which is elementwise.)
_CHECKED_TABLES: Dict[int, Tuple["weakref.ref[Tensor]", int, str]] = {}


def table_checked(weights: Tensor, on_degenerate: str) -> bool:
    """Whether this very ``weights`` tensor, unchanged since (same ``_version``), was checked under
    ``on_degenerate`` already: a table changes rarely, so it is looked at once, not every step. One checked under
    ``"error"`` holds only finite weights >= 0, which every mode takes as they are."""
    entry = _CHECKED_TABLES.get(id(weights))
    if entry is None or entry[0]() is not weights:
        return False
    try:
        return entry[1] == weights._version and entry[2] in ("error", on_degenerate)
    except RuntimeError:  # an inference-mode tensor has no version counter: checked every time
        return False


def mark_table_checked(weights: Tensor, on_degenerate: str) -> None:
    try:
        version = weights._version
    except RuntimeError:
        return
    key = id(weights)
    _CHECKED_TABLES[key] = (weakref.ref(weights, lambda _, key=key: _CHECKED_TABLES.pop(key, None)), version,
                            on_degenerate)


def guarded_table(weights: Tensor, on_degenerate: str) -> Tuple[Tensor, List[Check]]:
    """The per-timestep ``weights`` training uses under ``on_degenerate``, and what the ``"error"`` path still has to
    look at (nothing for a table already checked). ``"clamp"`` clips negative weights to 0 and ``"ignore"`` keeps
    them; both stop the run with a device-side assert at a NaN or +inf one (``"ignore"`` at -inf too), once per
    table. Mark the table checked (:func:`mark_table_checked`) once the checks have passed."""
    checks: List[Check] = []
    if not table_checked(weights, on_degenerate):
        floating = weights.is_floating_point()
        if on_degenerate == "error":
            bad = ~(weights.isfinite() & (weights >= 0)).all() if floating else (weights < 0).any()
            checks.append((bad, lambda: table_problem(weights)))
        elif floating:
            ok = weights.isfinite() if on_degenerate == "ignore" else ~(weights.isnan() | weights.isposinf())
            torch._assert_async(ok.all(), f"weights holds a NaN or infinite per-timestep loss weight "
                                          f"(on_degenerate={on_degenerate!r})")
            mark_table_checked(weights, on_degenerate)
        else:
            mark_table_checked(weights, on_degenerate)
    return (weights.clamp(min=0) if on_degenerate == "clamp" else weights), checks


def table_problem(weights: Tensor) -> str:
    bad = ~(weights.isfinite() & (weights >= 0)) if weights.is_floating_point() else weights < 0
    k = int(bad.nonzero()[0])
    return (f"weights[{k}] = {weights[k].item()!r} is not allowed: Open-Sora's per-timestep loss weights must be finite "
            "and >= 0 (on_degenerate='clamp' clips a negative weight to 0; 'ignore' keeps it)")


def mask_problem(mask: Tensor) -> str:
    i = int((~mask.any(dim=1)).nonzero()[0])
    return (f"mask row {i} has no noised frame (all False): sample {i}'s loss, a mean over its noised frames, would be "
            "0/0 = NaN. Give every sample at least one True frame, or use on_degenerate='clamp', which gives such a "
            "sample loss 0")


def timestep_problem(t: Tensor, high: float, why: str) -> str:
    bad = ~((t >= 0) & (t <= high))
    i = int(bad.nonzero()[0])
    return f"t[{i}] = {t[i].item()!r} is not allowed: training timesteps lie in [0, {high:g}]{why}"


def refuse(checks: Sequence[Check]) -> None:
    """Raise a :class:`~.settings.SettingError` for the first ``(bad, explain)`` whose flag ``bad`` is set, with the
    message ``explain()``. The flags on an accelerator come to the host in one copy (the one sync); CPU ones are read
    where they are. ``explain`` looks at the values again, which costs nothing that matters: it is about to raise."""
    on_device = [bad for bad, _ in checks if bad.device.type != "cpu"]
    device_flags = iter(torch.stack(on_device).cpu().tolist() if on_device else [])
    for bad, explain in checks:
        if (bool(bad) if bad.device.type == "cpu" else next(device_flags)):
            raise SettingError(explain())


def sampling_grid(num_sampling_steps: int, num_timesteps: int, batch_size: int, device: Any,
                  discrete: bool = False) -> List[Tensor]:
    """The unshifted sampling grid ``(1 - i/steps) N``, i = 0..steps-1, one batch-length tensor per step."""
    grid: Sequence[float] = [(1.0 - i / num_sampling_steps) * num_timesteps for i in range(num_sampling_steps)]
    if discrete:
        grid = [int(round(t)) for t in grid]
    return [torch.tensor([t] * batch_size, device=device) for t in grid]


class StandaloneRFlow:
    """Rectified-flow losses and Euler sampling, Open-Sora 1.2 style, with the timesteps handed in."""

    def __init__(self, num_timesteps: int = 1000, num_sampling_steps: int = 10, cfg_scale: float = 4.0,
                 use_discrete_timesteps: bool = False) -> None:
        self.num_timesteps = num_timesteps
        self.num_sampling_steps = num_sampling_steps
        self.cfg_scale = cfg_scale
        self.use_discrete_timesteps = use_discrete_timesteps

    def add_noise(self, x0: Tensor, noise: Tensor, t: Tensor) -> Tensor:
        """``(1 - t/N) x0 + (t/N) noise``; the same arithmetic as Open-Sora's, so the same bits."""
        keep = (1 - t.float() / self.num_timesteps).view(-1, *([1] * (x0.dim() - 1)))
        return keep * x0 + (1 - keep) * noise

    def training_losses(self, model: Callable[..., Tensor], x_start: Tensor, model_kwargs: Optional[Dict[str, Any]],
                        noise: Optional[Tensor], mask: Optional[Tensor], weights: Optional[Tensor],
                        t: Tensor, x_gt: Optional[Tensor] = None, noise_disable_threshold: Optional[float] = None,
                        text_uncond_prob: Optional[float] = None) -> Dict[str, Tensor]:
        """Velocity-matching loss per sample at the given timesteps ``t``.

        Open-Sora 1.3's keywords keep its meaning: the target is ``x_gt - noise`` when ``x_gt`` is given; samples
        with ``t > noise_disable_threshold`` start from ``x_gt`` (stock writes into ``x_start``; this does not);
        ``text_uncond_prob`` is handed to the model.
        """
        model_kwargs = {} if model_kwargs is None else dict(model_kwargs)
        if noise is None:
            noise = torch.randn_like(x_start)
        for name, other in (("noise", noise), ("x_gt", x_gt)):
            if other is not None and (not isinstance(other, Tensor) or other.shape != x_start.shape):
                shape = tuple(other.shape) if isinstance(other, Tensor) else type(other).__name__
                raise ValueError(f"{name} of shape {shape} must match x_start {tuple(x_start.shape)}")
        if noise_disable_threshold is not None:
            if isinstance(noise_disable_threshold, bool) or not isinstance(noise_disable_threshold, (int, float)):
                raise ValueError(f"noise_disable_threshold={noise_disable_threshold!r} must be a number (a timestep)")
            if x_gt is None:
                raise ValueError("noise_disable_threshold needs x_gt (Open-Sora 1.3 swaps x_gt in above it)")
            x_start = torch.where((t > noise_disable_threshold).view(-1, *([1] * (x_start.dim() - 1))), x_gt, x_start)
        if text_uncond_prob is not None:
            model_kwargs["text_uncond_prob"] = text_uncond_prob
        x_t = self.add_noise(x_start, noise, t)
        if mask is not None:
            # Frames outside the mask are conditioning frames and stay clean (t = 0).
            x_t = torch.where(mask[:, None, :, None, None], x_t, self.add_noise(x_start, noise, torch.zeros_like(t)))
        velocity = model(x_t, t, **model_kwargs).chunk(2, dim=1)[0]
        error = (velocity - ((x_start if x_gt is None else x_gt) - noise)).pow(2)
        if weights is not None:
            index = weight_index(t, len(weights))
            error = error * weights.to(t.device)[index].float().view(-1, *([1] * (x_start.dim() - 1)))
        return {"loss": mean_flat(error, mask=mask)}

    def sample(self, model: Callable[..., Tensor], text_encoder: Any, z: Tensor, prompts: Sequence[str], device: Any,
               additional_args: Optional[Dict[str, Any]] = None, mask: Optional[Tensor] = None,
               guidance_scale: Optional[float] = None, progress: bool = True,
               timestep_fn: Optional[TimestepFn] = None) -> Tensor:
        """Euler integration from noise ``z`` with classifier-free guidance; ``timestep_fn`` shifts the grid."""
        guidance_scale = self.cfg_scale if guidance_scale is None else guidance_scale
        model_args = text_encoder.encode(prompts)
        model_args["y"] = torch.cat([model_args["y"], text_encoder.null(len(prompts))], 0)
        if additional_args is not None:
            model_args.update(additional_args)

        timesteps = sampling_grid(self.num_sampling_steps, self.num_timesteps, z.shape[0], device,
                                  self.use_discrete_timesteps)
        if timestep_fn is not None:
            timesteps = [timestep_fn(t, additional_args) for t in timesteps]

        if mask is not None:
            noise_added = mask == 1
        for i, t in enumerate(tqdm(timesteps, desc="sampling", disable=not progress)):
            if mask is not None:
                # Frames whose mask value is below the current time are conditioning frames: kept clean.
                mask_t = mask * self.num_timesteps
                x0 = z.clone()
                x_noise = self.add_noise(x0, torch.randn_like(x0), t)
                mask_t_upper = mask_t >= t.unsqueeze(1)
                model_args["x_mask"] = mask_t_upper.repeat(2, 1)
                z = torch.where((mask_t_upper & ~noise_added)[:, None, :, None, None], x_noise, x0)
                noise_added = mask_t_upper

            pred = model(torch.cat([z, z], 0), torch.cat([t, t], 0), **model_args).chunk(2, dim=1)[0]
            pred_cond, pred_uncond = pred.chunk(2, dim=0)
            v_pred = pred_uncond + guidance_scale * (pred_cond - pred_uncond)

            dt = (timesteps[i] - timesteps[i + 1] if i < len(timesteps) - 1 else timesteps[i]) / self.num_timesteps
            z = z + v_pred * dt.view(-1, *([1] * (z.dim() - 1)))
            if mask is not None:
                z = torch.where(mask_t_upper[:, None, :, None, None], z, x0)
        return z
