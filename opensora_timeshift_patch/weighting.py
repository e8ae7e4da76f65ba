"""Loss weightings: a weight ``w(t)`` per sample, a function of its shifted timestep t in [0, 1] (1 = pure noise).

Rectified flow noises ``x_t = (1 - t) x_0 + t eps`` and regresses the velocity ``v = eps - x_0`` (Open-Sora's sign:
``x_0 - eps``), so ``sigma = t`` and ``SNR(t) = ((1 - t) / t)^2``. The weight multiplies each sample's loss,
together with Open-Sora's own per-timestep ``weights`` (as stock applies those: a per-sample factor).
A new weighting is one decorated function; its keyword parameters become settings.
"""

from __future__ import annotations

import math
from typing import Any, Dict, List

import numpy as np
import torch
from torch import Tensor

from .settings import SETTINGS, WEIGHTINGS, Setting, SettingError, describe

register_weighting = WEIGHTINGS.register
"""Decorator registering ``fn(t: Tensor, **params) -> w`` (t in [0, 1], w >= 0) as a ``loss_weighting``; keyword
arguments declare its parameters as :class:`~.settings.Setting`."""


@register_weighting("none")
def none(t: Tensor) -> Tensor:
    """w = 1: the plain velocity loss (Open-Sora's)."""
    return torch.ones_like(t)


@register_weighting("sigma_sqrt")
def sigma_sqrt(t: Tensor) -> Tensor:
    """w = sigma^-2 (Esser et al., 2024, SD3; diffusers' ``weighting_scheme="sigma_sqrt"``): infinite at t = 0."""
    return t ** -2.0


@register_weighting("cosmap")
def cosmap(t: Tensor) -> Tensor:
    """w = 2 / (pi (1 - 2 sigma + 2 sigma^2)) (Esser et al., 2024, SD3; diffusers' ``"cosmap"``)."""
    return 2 / (math.pi * (1 - 2 * t + 2 * t ** 2))


@register_weighting(
    "min_snr",
    min_snr_gamma=Setting("min_snr_gamma", "float", 5.0, "the SNR cap gamma of Min-SNR (Hang et al.: 5)",
                          low=0.01, high=1000),
)
def min_snr(t: Tensor, min_snr_gamma: float = 5.0) -> Tensor:
    """Min-SNR-gamma (Hang et al., 2023, "Efficient Diffusion Training via Min-SNR Weighting Strategy"), for the
    rectified-flow velocity target.

    Min-SNR weights the x_0-prediction loss by ``min(SNR, gamma)``. Given x_t, the velocity prediction's implied
    ``x_0 = x_t - t v``, so ``|x0_hat - x0|^2 = t^2 |v_hat - v|^2`` and the velocity loss needs
    ``w = t^2 min(SNR, gamma) = min((1 - t)^2, gamma t^2)``: at most 1, 0 at both ends.
    """
    return torch.minimum((1 - t) ** 2, min_snr_gamma * t ** 2)


@register_weighting("debiased")
def debiased(t: Tensor) -> Tensor:
    """w = 1 / sqrt(min(SNR, 1000)) (kohya-ss' ``debiased_estimation_loss``; Yu et al., 2023): ``t / (1 - t)`` below
    SNR 1000, infinite at t = 1."""
    snr = ((1 - t) / t) ** 2
    return snr.clamp(max=1000).rsqrt()


WEIGHTING_NAMES = tuple(WEIGHTINGS)
"""Names of the built-in loss weightings, the valid values of ``loss_weighting``."""

# The built-ins are finite and >= 0 on all of [0, 1] in closed form (up to +inf, which is clipped): training need not
# look at their values. A registered weighting is checked on a grid when built and, under on_degenerate="error",
# at every training timestep.
_CLOSED_FORM = frozenset({none, sigma_sqrt, cosmap, min_snr, debiased})


def _check_grids() -> List[Tensor]:
    """Where a weighting is checked when built: 0, 1 and 1001 points of [0, 1] between; then the points closest to
    each end in float32 and float64, a few more near the ends, and the midpoints of a second grid."""
    f32, f64 = torch.finfo(torch.float32), torch.finfo(torch.float64)
    ends = [f64.tiny, 2.0 ** -149, f32.tiny, f32.eps, 1e-6, 1e-3, 1 - 1e-3, 1 - 1e-6, 1 - f32.eps / 2, 1 - f64.eps / 2]
    midpoints = (torch.arange(1001 - len(ends), dtype=torch.float64) + 0.5) / (1001 - len(ends))
    return [torch.linspace(0, 1, 1001, dtype=torch.float64), torch.cat([torch.tensor(ends, dtype=torch.float64),
                                                                         midpoints])]


class LossWeighting:
    """A configured weighting: ``w(t)`` for t in [0, 1], clipped to ``[0, max_loss_weight]``.

    ``loss_weighting`` and ``max_loss_weight`` are validated as the scheduler's settings of those names. The
    weighting is evaluated when built on 0, 1, the points just inside them and a dense grid of [0, 1]; a negative
    weight, a NaN, or the wrong shape there is refused. Off that grid a registered weighting can still misbehave:
    what a NaN or negative weight then does is ``on_degenerate``'s choice (see :meth:`__call__`).
    """

    def __init__(self, loss_weighting: str = "none", max_loss_weight: float = 1000.0, **params: Any) -> None:
        self.name: str = SETTINGS["loss_weighting"].check(loss_weighting)
        self.max_loss_weight: float = SETTINGS["max_loss_weight"].check(max_loss_weight)
        self.params: Dict[str, Any] = WEIGHTINGS.check_params(self.name, params)
        self._fn = WEIGHTINGS.get(self.name)
        self.checked_per_call: bool = self._fn not in _CLOSED_FORM
        """Whether training must look at this weighting's values (a registered one), or need not (a built-in)."""
        for t in _check_grids():
            with torch.no_grad():
                w = self._fn(t.clone(), **self.params)
            if not isinstance(w, Tensor) or w.shape != t.shape or w.dtype.is_complex:
                raise SettingError(f"loss_weighting={self.name!r} gives {describe(w)} for {describe(t)}: a weighting "
                                   "must return one weight >= 0 (possibly +inf, which is clipped) per timestep")
            problem = self.problem(t, w)
            if problem:
                raise SettingError(f"{problem} (checked when built at 0, 1, the points next to them and on grids of "
                                   "[0, 1])")

    def __repr__(self) -> str:
        params = "".join(f", {k}={v!r}" for k, v in self.params.items())
        return f"LossWeighting({self.name!r}{params}, max_loss_weight={self.max_loss_weight!r})"

    @property
    def is_identity(self) -> bool:
        return self.name == "none"

    def __call__(self, t: Tensor, on_degenerate: str = "clamp") -> Tensor:
        """Weights for timesteps ``t`` in [0, 1] (clamped into it), in float64 (float32 on devices without it is
        the caller's cast), clipped to ``[0, max_loss_weight]``.

        A NaN or negative weight from a registered weighting (the built-ins have none): ``on_degenerate="error"``
        raises a :class:`~.settings.SettingError` naming the timestep (a host sync per call); ``"clamp"`` counts it
        as 0, so that sample does not train; ``"ignore"`` stops the run with a device-side assert (no host sync).
        """
        on_degenerate = SETTINGS["on_degenerate"].check(on_degenerate)
        w = self.unclipped(t)
        if self.checked_per_call and on_degenerate == "error":
            host_t, host_w = torch.stack([t.to(w.dtype).reshape(-1), w.reshape(-1)]).cpu()
            problem = self.problem(host_t, host_w)
            if problem:
                raise SettingError(problem)
        return self.clip(w, on_degenerate)

    def unclipped(self, t: Tensor) -> Tensor:
        """``w(t)`` as the weighting returns it (float64, NaN and negative weights included), its shape checked."""
        w = self._fn(t.to(torch.float64).clamp(0, 1), **self.params)
        if not isinstance(w, Tensor) or w.shape != t.shape:
            raise SettingError(f"loss_weighting={self.name!r} returned {describe(w)} for timesteps of shape "
                               f"{tuple(t.shape)}: a weighting returns one weight per timestep")
        return w

    def clip(self, w: Tensor, on_degenerate: str = "clamp") -> Tensor:
        """Unclipped weights clipped to ``[0, max_loss_weight]``, a NaN counted as 0 (``"ignore"``: asserted
        against on the device first, with a negative weight)."""
        if self.checked_per_call and on_degenerate == "ignore":
            torch._assert_async((w >= 0).all(), f"loss_weighting={self.name!r} gave a NaN or negative weight")
        return w.nan_to_num(nan=0.0, posinf=self.max_loss_weight).clamp(0, self.max_loss_weight)

    def problem(self, t: Tensor, w: Tensor) -> str:
        """On the host: the first timestep where ``w`` is NaN or negative, in words, or "" if there is none."""
        bad = (w.isnan() | (w < 0)).reshape(-1).nonzero()
        if len(bad) == 0:
            return ""
        i = int(bad[0])
        return (f"loss_weighting={self.name!r} gives w(t={float(t.reshape(-1)[i])!r}) = {float(w.reshape(-1)[i])!r}: "
                "a weighting must return one weight >= 0 (possibly +inf, which is clipped) per timestep, never NaN")


def effective_emphasis(t: Any, weighting: LossWeighting, edges: Any) -> np.ndarray:
    """Where the gradient budget goes: the density of the shifted training timestep times its loss weight,
    normalised to integrate to 1, on the bins ``edges`` of [0, 1].

    A sample at t contributes its loss times ``w(t)``, so the share of the training signal spent near t is
    ``p(t) w(t) / integral(p w)``, with p the density of the shifted timestep. ``t`` are shifted timesteps in
    [0, 1] standing for p, each with equal probability: draws, or (no noise) the shifted inverse CDF at the
    midpoints ``(i + 1/2) / n`` of n equal cells of (0, 1). The result is their histogram weighted by ``w(t)``
    (clipped as training clips it), divided by its total and by the bin widths: with ``weighting`` 'none' it is the
    sampling density itself. Pure: nothing is drawn here.

    Raises ``ValueError`` if ``t`` is empty, holds a value outside [0, 1] or NaN, or if every weight is 0 (then
    nothing trains, and there is no budget to share out).
    """
    t = torch.as_tensor(t, dtype=torch.float64).reshape(-1)
    if t.numel() == 0 or not bool(((t >= 0) & (t <= 1)).all()):
        raise ValueError(f"t={describe(t)} must be a non-empty set of timesteps in [0, 1]")
    edges = np.asarray(edges, dtype=np.float64)
    mass, _ = np.histogram(t.numpy(), bins=edges, weights=weighting(t).numpy())
    total = mass.sum()
    if not total > 0:
        raise ValueError(f"{weighting!r} gives weight 0 to every timestep here: nothing would train")
    return mass / (total * np.diff(edges))
