"""Temporal-size policies: pixel frame count ``n`` -> effective temporal size ``T_eff``.

The rectified-flow shift of Open-Sora scales with ``sqrt(T_eff)``. Each policy below is one
rule for ``T_eff``, written as a pure tensor function so that it runs per sample, on any
device, with no host sync and inside ``torch.compile(fullgraph=True)``. Images (``n == 1``)
are handled by the caller (:func:`temporal_size`), so a policy only ever sees videos.

A new mode is one decorated function; its keyword parameters become the policy's parameters.
"""

from __future__ import annotations

import math
from typing import Callable, Dict, Optional, Tuple

import torch
from torch import Tensor

from .settings import POLICIES, Setting, SettingError, describe

register_policy = POLICIES.register
"""Decorator registering ``fn(num_frames: Tensor, **params) -> T_eff`` as a ``shift_mode``; keyword arguments
declare its parameters as :class:`~.settings.Setting` (undeclared ones are checked against their default's type)."""


def _floordiv(n: Tensor, d: int) -> Tensor:
    return torch.div(n, d, rounding_mode="floor")


@register_policy("legacy")
def legacy(n: Tensor) -> Tensor:
    """Open-Sora 1.2, bug for bug: ``n // 17 * 5`` (0 for every clip shorter than 17 frames)."""
    return _floordiv(n, 17) * 5


@register_policy("frames16")
def frames16(n: Tensor) -> Tensor:
    """The maintainers' fix for 16-frame data (Open-Sora issue #601): ``n // 16 * 4``."""
    return _floordiv(n, 16) * 4


@register_policy("v13")
def v13(n: Tensor) -> Tensor:
    """Open-Sora 1.3: ``(n - 1) // 4`` (0 for 2 to 4 frames)."""
    return _floordiv(n - 1, 4)


_FROM_LATENT = "2.0's latent length comes from the latent itself"


@register_policy(
    "latent",
    micro_frame_size=Setting("micro_frame_size", "int", 17, "frames per VAE micro-batch (None: whole clips)",
                             low=1, high=100_000, optional=True, not_on_2=_FROM_LATENT),
    temporal_compression=Setting("temporal_compression", "int", 4, "pixel frames per latent frame", low=1, high=64,
                                 not_on_2=_FROM_LATENT),
    causal=Setting("causal", "bool", False, "the causal-VAE rule 1 + (n - 1) // temporal_compression",
                   not_on_2=_FROM_LATENT),
)
def latent(
    n: Tensor,
    micro_frame_size: Optional[int] = 17,
    temporal_compression: int = 4,
    causal: bool = False,
) -> Tensor:
    """The latent temporal length the VAE produces.

    Defaults are Open-Sora 1.2's VAE pipeline: clips cut into micro-batches of
    ``micro_frame_size`` frames, each padded to a multiple of ``temporal_compression`` and
    compressed by it, so ``(n // 17) * 5 + ceil((n % 17) / 4)``. ``micro_frame_size=None``
    encodes the clip whole. ``causal=True`` is the causal-VAE rule (Open-Sora 2.0,
    HunyuanVideo, Wan, CogVideoX): the first frame alone, then ``temporal_compression``
    frames per latent frame, ``1 + (n - 1) // temporal_compression``.
    """
    c = temporal_compression
    if causal:
        return 1 + _floordiv(n - 1, c)
    if micro_frame_size is None:
        return torch.ceil(n / c)
    # q full micro-batches give q * k latent frames (k = ceil(m / c)), the rest ceil((n - q m) / c); since q k is
    # an integer the sum is ceil((n + (k c - m) q) / c): four kernels instead of six.
    q = _floordiv(n, micro_frame_size)
    k = math.ceil(micro_frame_size / c)
    return torch.add(n, q, alpha=k * c - micro_frame_size).div_(c).ceil_()


@register_policy("continuous")
def continuous(n: Tensor) -> Tensor:
    """``n * 5 / 17`` without flooring: the legacy ratio as a smooth function of clip length."""
    return n * 5 / 17


@register_policy("spatial")
def spatial(n: Tensor) -> Tensor:
    """Temporal factor 1: resolution-only shift (Open-Sora 1.3's ``scale_temporal=False``)."""
    return torch.ones_like(n)


SHIFT_MODES: Tuple[str, ...] = tuple(POLICIES)
"""Names of the built-in temporal-size policies, the valid values of ``shift_mode``."""


def get_policy(shift_mode: str) -> Callable[..., Tensor]:
    """The policy for ``shift_mode``, or a ``ValueError`` listing the valid names."""
    return POLICIES.get(shift_mode)  # a call, not a bound-method alias: torch 2.2's dynamo traces only the former


def temporal_size(num_frames: Tensor, shift_mode: str = "latent", **params: object) -> Tensor:
    """``T_eff`` per sample, in the floating dtype of ``num_frames`` (float32 for integer frame counts): 1 for
    images, the policy otherwise.

    Unlike Open-Sora, which looks only at ``num_frames[0]``, every sample is classified on its own.
    """
    if not isinstance(num_frames, Tensor):
        num_frames = torch.as_tensor(num_frames, dtype=torch.float64) if _numbers(num_frames) else num_frames
    if not isinstance(num_frames, Tensor) or num_frames.dtype.is_complex or num_frames.dtype == torch.bool:
        raise SettingError(f"num_frames={describe(num_frames)} is not allowed: use a tensor (or numbers) of frame counts")
    if not num_frames.is_floating_point():  # the policies compute in place, and T_eff need not be whole
        num_frames = num_frames.float()
    bad = ~((num_frames >= 1) & (num_frames - num_frames.floor() == 0))
    if bool(bad.any()):  # a utility, not the training path: one look at the values is fine here
        raise SettingError(f"num_frames={describe(num_frames[bad][0].item())} is not allowed: frame counts are whole "
                           "numbers >= 1")
    return apply_policy(num_frames, shift_mode, POLICIES.check_params(shift_mode, params))


def apply_policy(num_frames: Tensor, shift_mode: str, params: Dict[str, object]) -> Tensor:
    """:func:`temporal_size` for float frame counts and parameters already validated: the per-step path."""
    t_eff = get_policy(shift_mode)(num_frames, **params)
    return torch.where(num_frames == 1, torch.ones_like(t_eff), t_eff)


def _numbers(value: object) -> bool:
    items = value if isinstance(value, (list, tuple)) else [value]
    return all(isinstance(x, (int, float)) and not isinstance(x, bool) for x in items)


def degenerate_frame_counts(shift_mode: str, max_frames: int = 256, **params: object) -> Tuple[int, ...]:
    """The frame counts in ``2..max_frames`` for which the policy gives ``T_eff <= 0``."""
    max_frames = Setting("max_frames", "int", 256, "", low=1, high=1_000_000).check(max_frames)
    n = torch.arange(2, max_frames + 1, dtype=torch.float64)
    bad = temporal_size(n, shift_mode, **params) <= 0
    return tuple(int(x) for x in n[bad].tolist())
