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

from ._functions import FunctionRegistry

POLICIES = FunctionRegistry("shift_mode", "policy")
register_policy = POLICIES.register
"""Decorator registering ``fn(num_frames: Tensor, **params) -> T_eff`` as a ``shift_mode``."""


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


@register_policy("latent")
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


def policy_params(shift_mode: str) -> Dict[str, object]:
    """The keyword parameters of a policy with their defaults."""
    return POLICIES.params(shift_mode)


def check_policy_params(shift_mode: str, params: Dict[str, object]) -> None:
    """Reject parameters the policy does not take, and invalid geometry, before any tensor is seen."""
    known = policy_params(shift_mode)
    unknown = sorted(set(params) - set(known))
    if unknown:
        takes = ", ".join(known) if known else "no parameters"
        raise TypeError(f"shift_mode={shift_mode!r} got unexpected parameter(s) {unknown}; it takes {takes}")
    merged = {**known, **params}
    for key in ("micro_frame_size", "temporal_compression"):
        value = merged.get(key)
        if key in merged and value is not None and (not isinstance(value, int) or isinstance(value, bool) or value < 1):
            hint = " or None to encode whole clips" if key == "micro_frame_size" else ""
            raise ValueError(f"{key}={value!r} for shift_mode={shift_mode!r} must be a positive int{hint}")


def temporal_size(num_frames: Tensor, shift_mode: str = "latent", **params: object) -> Tensor:
    """``T_eff`` per sample, in the dtype of ``num_frames``: 1 for images, the policy otherwise.

    Unlike Open-Sora, which looks only at ``num_frames[0]``, every sample is classified on its own.
    """
    t_eff = get_policy(shift_mode)(num_frames, **params)
    return torch.where(num_frames == 1, torch.ones_like(t_eff), t_eff)


def degenerate_frame_counts(shift_mode: str, max_frames: int = 256, **params: object) -> Tuple[int, ...]:
    """The frame counts in ``2..max_frames`` for which the policy gives ``T_eff <= 0``."""
    n = torch.arange(2, max_frames + 1, dtype=torch.float64)
    bad = temporal_size(n, shift_mode, **params) <= 0
    return tuple(int(x) for x in n[bad].tolist())
