"""Loss weightings: a weight ``w(t)`` per sample, a function of its shifted timestep t in [0, 1] (1 = pure noise).

Rectified flow noises ``x_t = (1 - t) x_0 + t eps`` and regresses the velocity ``v = eps - x_0`` (Open-Sora's sign:
``x_0 - eps``), so ``sigma = t`` and ``SNR(t) = ((1 - t) / t)^2``. The weight multiplies each sample's loss,
together with Open-Sora's own per-timestep ``weights`` (as stock applies those: a per-sample factor).
A new weighting is one decorated function; its keyword parameters become settings.
"""

from __future__ import annotations

import math
from typing import Any, Dict

import numpy as np
import torch
from torch import Tensor

from .settings import WEIGHTINGS, Setting, SettingError, describe

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


class LossWeighting:
    """A configured weighting: ``w(t)`` for t in [0, 1], clipped to ``[0, max_loss_weight]``, never NaN.

    A weighting that returns a negative weight, a NaN, or the wrong shape anywhere on [0, 1] is refused here.
    """

    def __init__(self, loss_weighting: str = "none", max_loss_weight: float = 1000.0, **params: Any) -> None:
        self.name = loss_weighting
        self.params: Dict[str, Any] = WEIGHTINGS.check_params(loss_weighting, params)
        self.max_loss_weight = max_loss_weight
        self._fn = WEIGHTINGS.get(loss_weighting)
        t = torch.linspace(0, 1, 1001, dtype=torch.float64)
        with torch.no_grad():
            w = self._fn(t.clone(), **self.params)
        if not isinstance(w, Tensor) or w.shape != t.shape or w.dtype.is_complex or bool(w.isnan().any()) or \
                bool((w < 0).any()):
            raise SettingError(f"loss_weighting={loss_weighting!r} gives {describe(w)} on t in [0, 1]: a weighting "
                               "must return one weight >= 0 (possibly +inf, which is clipped) per timestep, never NaN")

    def __repr__(self) -> str:
        params = "".join(f", {k}={v!r}" for k, v in self.params.items())
        return f"LossWeighting({self.name!r}{params}, max_loss_weight={self.max_loss_weight!r})"

    @property
    def is_identity(self) -> bool:
        return self.name == "none"

    def __call__(self, t: Tensor) -> Tensor:
        """Weights for timesteps ``t`` in [0, 1], in float64 (float32 on devices without it is the caller's cast)."""
        w = self._fn(t.to(torch.float64).clamp(0, 1), **self.params)
        if not isinstance(w, Tensor) or w.shape != t.shape:
            raise SettingError(f"loss_weighting={self.name!r} returned {describe(w)} for timesteps of shape "
                               f"{tuple(t.shape)}: a weighting returns one weight per timestep")
        # A registered weighting was checked on a grid of [0, 1]; off it, a NaN or a negative weight counts as 0.
        return w.nan_to_num(nan=0.0, posinf=self.max_loss_weight).clamp(0, self.max_loss_weight)


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
