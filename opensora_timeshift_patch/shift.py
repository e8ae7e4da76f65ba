"""The resolution- and clip-length-dependent timestep shift, and the drop-in ``timestep_transform``.

Open-Sora 1.x shifts a rectified-flow timestep ``t`` in [0, 1] (1 = pure noise) with

    t' = a t / (1 + (a - 1) t),   a = sqrt(H W / base_resolution) * sqrt(T_eff / base_num_frames) * scale

(the SD3 shift, Esser et al., 2024, "Scaling Rectified Flow Transformers"). ``T_eff`` comes from a
temporal-size policy (:mod:`.policies`). Everything here is computed in float32 or wider whatever
the dtype of the meta tensors, per sample, and without host syncs except the one check that
``on_degenerate="error"`` needs.
"""

from __future__ import annotations

import math
import numbers
import warnings
from typing import Any, Callable, Dict, Mapping, Optional, Tuple, Union

import torch
from torch import Tensor

from .policies import check_policy_params, degenerate_frame_counts, get_policy, temporal_size
from .policies import policy_params as policy_params_of

ON_DEGENERATE: Tuple[str, ...] = ("error", "clamp", "ignore")
"""What to do with a sample whose policy gives ``T_eff <= 0``."""

META_KEYS: Tuple[str, ...] = ("height", "width", "num_frames")
"""The per-sample meta the shift reads from ``model_kwargs``, as Open-Sora's loader provides them."""


_CLAMP_WARNED: set = set()  # the clamp warning is said once per policy and process


def rational_shift(t: Tensor, shift: Tensor) -> Tensor:
    """``a t / (1 + (a - 1) t)`` on t in [0, 1] (Esser et al., 2024, SD3); the operation order is Open-Sora's."""
    return shift * t / (1 + (shift - 1) * t)


def exponential_shift(t: Tensor, shift: Tensor, sigma: float = 1.0) -> Tensor:
    """``a / (a + (1/t - 1)^sigma)`` with ``a = e^mu`` (Black Forest Labs, 2024, Flux); sigma = 1 is the rational shift."""
    return shift / (shift + (1 / t - 1) ** sigma)


SHIFT_FAMILIES: Tuple[str, ...] = ("rational", "exponential")
"""The shift curves: SD3 / Open-Sora 1.x's rational shift, and Flux's exponential shift."""

RESOLUTION_SHIFTS: Tuple[str, ...] = ("sqrt", "linear", "constant")
"""How the resolution sets the shift: Open-Sora 1.x's ``sqrt(H W / base_resolution)``; linear in the latent token
count between two anchors (Flux's ``mu``, Open-Sora 2.0's ``alpha``); or a constant (SD3 3.0, HunyuanVideo 7, Wan 5)."""

# Anchor values of the linear rule, in each family's own parameter: alpha (rational), mu (exponential).
_LINEAR_DEFAULTS = {"rational": (1.0, 3.0), "exponential": (0.5, 1.15)}


def _one_of(name: str, value: Any, valid: Tuple[str, ...]) -> str:
    if value not in valid:
        raise ValueError(f"{name}={value!r} is not valid; use one of {', '.join(map(repr, valid))}")
    return value


def check_int(name: str, value: Any, minimum: int = 1) -> None:
    """Reject anything but an int (bools included) below ``minimum``, naming the parameter."""
    if not isinstance(value, int) or isinstance(value, bool) or value < minimum:
        raise ValueError(f"{name}={value!r} must be " + ("a positive int" if minimum == 1 else f"an int >= {minimum}"))


def _positive(name: str, value: Any, hint: str = "") -> None:
    ok = isinstance(value, numbers.Real) and not isinstance(value, bool) and math.isfinite(value) and value > 0
    if not ok:
        raise ValueError(f"{name}={value!r} must be a finite number > 0{hint}")


class TimestepShift:
    """A configured shift: a temporal-size policy, its guard, and Open-Sora's shift factor.

    Args:
        shift_mode: temporal-size policy, one of :data:`~.policies.SHIFT_MODES`. ``"latent"`` (default)
            uses the VAE's own latent length and equals ``"legacy"`` on 17k-frame clips and images.
        on_degenerate: what a sample with ``T_eff <= 0`` gets. ``"error"`` raises a ``ValueError``
            naming the frame count and the fix (one host sync per call: the price of the check);
            ``"clamp"`` shifts it as ``T_eff = 1`` without looking at tensor values (so it warns once,
            here, which frame counts it will clamp); ``"ignore"`` keeps the stock numbers, collapse
            included, for replaying old runs.
        base_resolution: ``H * W`` at which the spatial factor is 1 (Open-Sora: 512 * 512).
        base_num_frames: ``T_eff`` at which the temporal factor is 1 (Open-Sora: 1).
        scale: extra multiplier on the shift factor (Open-Sora's ``transform_scale``).
        scale_images: whether ``scale`` applies to images too (Open-Sora 1.2: yes; 1.3: videos only).
        shift_family: ``"rational"`` (SD3, Open-Sora 1.x and 2.0) or ``"exponential"`` (Flux). The family also
            says what ``shift``, ``base_shift`` and ``max_shift`` are: the factor ``a`` itself (rational) or
            ``mu = log a`` (exponential), each interpolated linearly as its source does.
        shift_sigma: the exponent of the exponential family (Flux: 1.0).
        resolution_shift: ``"sqrt"`` (Open-Sora 1.x: ``sqrt(H W / base_resolution)``), ``"linear"`` (linear
            in the latent token count from ``(base_seq_len, base_shift)`` to ``(max_seq_len, max_shift)``) or
            ``"constant"`` (``shift``). The temporal factor ``sqrt(T_eff / base_num_frames)`` multiplies ``a``
            in every case; ``shift_mode="spatial"`` turns it off.
        shift: the constant of ``resolution_shift="constant"``.
        base_shift, max_shift: the linear rule's values at its anchors; default 1 -> 3 for rational
            (Open-Sora 2.0's alpha), 0.5 -> 1.15 for exponential (Flux's mu).
        base_seq_len, max_seq_len: the linear rule's anchor token counts (256 and 4096).
        patch_size: latent pixels per token side, for the token count (2).
        spatial_compression: pixels per latent pixel side, for token counts from pixel meta when the latent
            tensor is not at hand (8).
        **policy_params: the policy's own parameters, e.g. ``micro_frame_size`` for ``"latent"``.
    """

    def __init__(
        self,
        shift_mode: str = "latent",
        on_degenerate: str = "error",
        base_resolution: float = 512 * 512,
        base_num_frames: float = 1,
        scale: float = 1.0,
        scale_images: bool = True,
        shift_family: str = "rational",
        shift_sigma: float = 1.0,
        resolution_shift: str = "sqrt",
        shift: Optional[float] = None,
        base_shift: Optional[float] = None,
        max_shift: Optional[float] = None,
        base_seq_len: float = 256,
        max_seq_len: float = 4096,
        patch_size: int = 2,
        spatial_compression: int = 8,
        **policy_params: Any,
    ) -> None:
        get_policy(shift_mode)
        _one_of("on_degenerate", on_degenerate, ON_DEGENERATE)
        _positive("base_resolution", base_resolution, " (pixels, H * W; Open-Sora uses 512 * 512)")
        _positive("base_num_frames", base_num_frames, " (Open-Sora uses 1)")
        _positive("scale", scale, " (1.0 keeps Open-Sora's shift; use shift_mode='spatial' to drop the temporal factor)")
        check_policy_params(shift_mode, policy_params)
        self.shift_family = _one_of("shift_family", shift_family, SHIFT_FAMILIES)
        self.resolution_shift = _one_of("resolution_shift", resolution_shift, RESOLUTION_SHIFTS)
        _positive("shift_sigma", shift_sigma, " (Flux uses 1.0)")
        self.shift_sigma = shift_sigma
        if (shift is None) != (resolution_shift != "constant"):
            raise ValueError(f"shift={shift!r} goes with resolution_shift='constant' and only with it "
                             f"(got resolution_shift={resolution_shift!r})")
        if shift is not None and shift_family == "rational":
            _positive("shift", shift, " (the rational shift factor; SD3 uses 3.0)")
        self.shift = shift
        default_lo, default_hi = _LINEAR_DEFAULTS[shift_family]
        self.base_shift = default_lo if base_shift is None else base_shift
        self.max_shift = default_hi if max_shift is None else max_shift
        _positive("base_seq_len", base_seq_len)
        _positive("max_seq_len", max_seq_len)
        if not max_seq_len > base_seq_len:
            raise ValueError(f"max_seq_len={max_seq_len!r} must exceed base_seq_len={base_seq_len!r}")
        self.base_seq_len, self.max_seq_len = base_seq_len, max_seq_len
        check_int("patch_size", patch_size)
        check_int("spatial_compression", spatial_compression)
        self.patch_size, self.spatial_compression = patch_size, spatial_compression
        self.shift_mode = shift_mode
        self.on_degenerate = on_degenerate
        self.base_resolution = base_resolution
        self.base_num_frames = base_num_frames
        self.scale = scale
        self.scale_images = scale_images
        self.policy_params: Dict[str, Any] = dict(policy_params)
        # A policy that already maps n = 1 to 1 needs no image override: one op fewer per call. While
        # torch.compile traces a construction, nothing here may read a tensor, so the override stays.
        compiling = _is_compiling()
        one = torch.ones(1, dtype=torch.float64)
        self._images_are_one = not compiling and bool(get_policy(shift_mode)(one, **policy_params) == 1)
        # Likewise, a policy that maps invalid frame counts to T_eff <= 0 or NaN lets the guard see them in the
        # shift factor alone; only the others (spatial) need the frame counts checked beside it.
        invalid = torch.tensor([0.0, -1.0, -17.0, math.nan], dtype=torch.float64)
        self._check_frames = compiling or bool((get_policy(shift_mode)(invalid, **policy_params) > 0).any())
        warn_key = (shift_mode, tuple(sorted(policy_params.items())))
        if on_degenerate == "clamp" and not compiling and warn_key not in _CLAMP_WARNED:
            _CLAMP_WARNED.add(warn_key)
            bad = degenerate_frame_counts(shift_mode, **policy_params)
            if bad:
                warnings.warn(
                    f"shift_mode={shift_mode!r} gives T_eff <= 0 for num_frames in {_ranges(bad)}; with "
                    "on_degenerate='clamp' those samples are shifted as T_eff = 1. Steps do not check it (that would "
                    "cost a host sync), so it is said once, here. shift_mode='latent' needs no clamping.",
                    stacklevel=2,
                )

    def __repr__(self) -> str:
        params = "".join(f", {k}={v!r}" for k, v in self.policy_params.items())
        if self.resolution_shift == "constant":
            rule = f"shift={self.shift!r}"
        elif self.resolution_shift == "linear":
            rule = (f"base_shift={self.base_shift!r}, max_shift={self.max_shift!r}, base_seq_len={self.base_seq_len!r}, "
                    f"max_seq_len={self.max_seq_len!r}")
        else:
            rule = f"base_resolution={self.base_resolution!r}"
        family = self.shift_family + (f", shift_sigma={self.shift_sigma!r}" if self.shift_family == "exponential" else "")
        return (
            f"TimestepShift(shift_mode={self.shift_mode!r}, on_degenerate={self.on_degenerate!r}, "
            f"shift_family={family!r}, resolution_shift={self.resolution_shift!r}, {rule}, "
            f"base_num_frames={self.base_num_frames!r}, scale={self.scale!r}, scale_images={self.scale_images!r}{params})"
        )

    def resolution_factor(self, height: Tensor, width: Tensor, latent_hw: Optional[Tuple[int, int]] = None) -> Any:
        """The resolution's part of ``a``: a tensor per sample, or a float shared by the batch."""
        if self.resolution_shift == "sqrt":
            return (height * width).div_(self.base_resolution).sqrt_()  # in place: our own temporaries
        if self.resolution_shift == "constant":
            value: Any = self.shift
        else:
            if latent_hw is not None:  # the latent tensor is the truth, as for T_eff
                tokens: Any = (latent_hw[0] // self.patch_size) * (latent_hw[1] // self.patch_size)
            else:
                tokens = height * width / (self.spatial_compression * self.patch_size) ** 2
            slope = (self.max_shift - self.base_shift) / (self.max_seq_len - self.base_seq_len)
            value = self.base_shift + slope * (tokens - self.base_seq_len)
        if self.shift_family == "exponential":
            return torch.exp(value) if isinstance(value, Tensor) else math.exp(value)
        return value

    def curve(self, t: Tensor, ratio: Tensor) -> Tensor:
        """Apply the family's curve with factor ``ratio`` to t in [0, 1]."""
        if self.shift_family == "exponential" and self.shift_sigma != 1:
            return exponential_shift(t, ratio, self.shift_sigma)
        return rational_shift(t, ratio)  # the exponential family with sigma = 1 is exactly this curve

    def temporal_size(self, num_frames: Tensor, latent_frames: Optional[int] = None) -> Tensor:
        """``T_eff`` per sample, before the guard. ``latent_frames``, the latent tensor's own length, wins in ``latent`` mode."""
        if latent_frames is not None and self.shift_mode == "latent":
            return torch.full_like(num_frames, float(latent_frames))
        if self._images_are_one:
            return get_policy(self.shift_mode)(num_frames, **self.policy_params)
        return temporal_size(num_frames, self.shift_mode, **self.policy_params)

    def shift_factor(
        self,
        model_kwargs: Mapping[str, Any],
        latent_frames: Optional[int] = None,
        dtype: torch.dtype = torch.float32,
        device: Optional[torch.device] = None,
        latent_hw: Optional[Tuple[int, int]] = None,
    ) -> Tensor:
        """The shift factor ``a`` per sample, guarded as ``on_degenerate`` says."""
        height, width, num_frames = _read_meta(model_kwargs, dtype, device)
        ratio_space = self.resolution_factor(height, width, latent_hw)
        t_eff = self.temporal_size(num_frames, latent_frames)
        if self.on_degenerate == "clamp":
            t_eff = torch.where(t_eff > 0, t_eff, 1.0)
        # x / 1 and x * 1 are exact: skipping them keeps Open-Sora's bits and saves two kernels.
        if self.base_num_frames != 1:
            t_eff = t_eff / self.base_num_frames
        ratio = ratio_space * t_eff.sqrt()
        if self.scale != 1:
            scale = self.scale
            if not self.scale_images:
                scale = torch.where(num_frames == 1, torch.ones_like(ratio), torch.full_like(ratio, scale))
            ratio = ratio * scale
        if self.on_degenerate == "error":
            # log maps 0 to -inf and negatives to NaN, and a sum keeps any inf or NaN, so one finite scalar says
            # every ratio (and frame count, where the policy does not already poison the ratio) is finite and > 0.
            # Two or three kernels and the one host sync this mode pays for.
            checked = ratio * num_frames if self._check_frames else ratio
            if not math.isfinite(checked.log().sum().item()):
                raise ValueError(self._diagnose(height, width, num_frames, latent_frames))
        return ratio

    def __call__(
        self,
        t: Tensor,
        model_kwargs: Mapping[str, Any],
        num_timesteps: float = 1,
        latent_frames: Optional[int] = None,
        uniform_over_threshold: Optional[float] = None,
        ret_ratio: bool = False,
        latent_hw: Optional[Tuple[int, int]] = None,
        resample_u: Optional[Tensor] = None,
    ) -> Union[Tensor, Tuple[Tensor, Tensor]]:
        """Shift timesteps ``t`` in [0, num_timesteps]; Open-Sora's ``timestep_transform`` contract.

        ``latent_frames`` and ``latent_hw`` are the latent tensor's own sizes where the caller has it;
        ``resample_u`` are the uniforms for ``uniform_over_threshold`` (default: drawn from the global RNG).
        """
        _positive("num_timesteps", num_timesteps, " (Open-Sora uses 1000)")
        if not isinstance(t, Tensor):
            t = torch.as_tensor(t)
        dtype = torch.promote_types(t.dtype, torch.float32) if t.is_floating_point() else torch.float32
        t = _as(t, dtype, None)
        if num_timesteps != 1:
            t = t / num_timesteps
        ratio = self.shift_factor(model_kwargs, latent_frames, dtype, t.device, latent_hw)
        t = self.curve(t, ratio)
        if uniform_over_threshold is not None:
            num_frames = _read_meta(model_kwargs, dtype, t.device)[2]
            t = resample_over_threshold(t, uniform_over_threshold, num_frames, resample_u)
        if num_timesteps != 1:
            t = t * num_timesteps
        return (t, ratio) if ret_ratio else t

    def _diagnose(self, height: Tensor, width: Tensor, num_frames: Tensor, latent_frames: Optional[int]) -> str:
        """Say which samples are degenerate and why; only runs once the check has already failed."""
        h, w, n = (x.reshape(-1).tolist() for x in torch.broadcast_tensors(height, width, num_frames))
        raw = self.temporal_size(torch.tensor(n, dtype=torch.float64), latent_frames).tolist()
        for i, (hi, wi, ni, ti) in enumerate(zip(h, w, n, raw)):
            if not ni >= 1:
                return (
                    f"num_frames={_num(ni)} (sample {i}) is not a valid frame count: it must be >= 1. "
                    "Check the dataset's num_frames column or the meta passed in model_kwargs."
                )
            if not (hi > 0 and wi > 0 and math.isfinite(hi * wi)):
                return (
                    f"height x width = {_num(hi)} x {_num(wi)} (sample {i}) is not a valid resolution: both must be "
                    "finite and > 0. Check the height/width meta passed in model_kwargs."
                )
            if not ti > 0:
                return (
                    f"shift_mode={self.shift_mode!r} gives T_eff = {_num(ti)} for num_frames={_num(ni)} (sample {i}), so "
                    "the shift factor is 0 and every timestep collapses to t = 0: training would only see clean "
                    "latents and sampling would start from NaN. Use shift_mode='latent' (the VAE's latent length, "
                    f"{_num(temporal_size(torch.tensor([ni]), 'latent').item())} for {_num(ni)} frames), or "
                    "on_degenerate='clamp' to shift such samples as T_eff = 1."
                )
        return (f"the shift factor is not finite and > 0 for meta {dict(height=h, width=w, num_frames=n)} under "
                f"{self!r}: check shift, base_shift and max_shift (a linear rule can reach 0 below its anchors)")


def resample_over_threshold(t: Tensor, threshold: float, num_frames: Tensor, u: Optional[Tensor] = None) -> Tensor:
    """Open-Sora 1.3's ``uniform_over_threshold``: video timesteps above it redrawn uniformly above it."""
    if not 0 <= threshold < 1:
        raise ValueError(f"uniform_over_threshold={threshold!r} must be in [0, 1) (a fraction of num_timesteps)")
    u = torch.rand_like(t) if u is None else u.to(t.dtype)
    resampled = u * (1 - threshold) + threshold
    return torch.where((t > threshold) & (num_frames != 1), resampled, t)


def _read_meta(model_kwargs: Mapping[str, Any], dtype: torch.dtype, device: Optional[torch.device]) -> Tuple[Tensor, ...]:
    if model_kwargs is None:
        raise ValueError(
            "model_kwargs=None: the timestep shift needs the batch meta height, width and num_frames; "
            "pass the model_args dict that Open-Sora's training loop builds from the batch"
        )
    missing = [k for k in META_KEYS if k not in model_kwargs]
    if missing:
        raise KeyError(
            f"model_kwargs is missing {', '.join(map(repr, missing))} (it has {sorted(model_kwargs)}); the timestep "
            "shift needs height, width and num_frames per sample, as Open-Sora's video dataset returns them"
        )
    return tuple(_as(model_kwargs[k], dtype, device) for k in META_KEYS)


def _as(value: Any, dtype: torch.dtype, device: Optional[torch.device]) -> Tensor:
    # Open-Sora's meta usually arrive in the right dtype already: skip the conversion kernels then.
    if isinstance(value, Tensor) and value.dtype == dtype and (device is None or value.device == device):
        return value
    return torch.as_tensor(value, device=device).to(dtype)


# Resolved once here: torch 2.2's dynamo cannot trace a hasattr on a module. torch.compiler.is_compiling is 2.3+.
_is_compiling: Callable[[], bool] = getattr(torch.compiler, "is_compiling", None) or torch._dynamo.is_compiling


def _num(x: float) -> str:
    return str(int(x)) if math.isfinite(x) and float(x).is_integer() else str(x)


def _ranges(values: Tuple[int, ...]) -> str:
    """``(2, 3, 4, 7)`` -> ``"2-4, 7"``."""
    runs: list = []
    for v in values:
        if runs and v == runs[-1][1] + 1:
            runs[-1][1] = v
        else:
            runs.append([v, v])
    return ", ".join(f"{a}-{b}" if b > a else f"{a}" for a, b in runs)


_SHIFTS: Dict[Tuple[Tuple[str, Any], ...], TimestepShift] = {}  # one configured shift per setting


def _cached_shift(settings: Tuple[Tuple[str, Any], ...]) -> TimestepShift:
    shift = _SHIFTS.get(settings)
    if shift is None:
        shift = TimestepShift(**dict(settings))
        if not _is_compiling():
            _SHIFTS[settings] = shift
    return shift


def timestep_transform(
    t: Tensor,
    model_kwargs: Mapping[str, Any],
    base_resolution: float = 512 * 512,
    base_num_frames: float = 1,
    scale: float = 1.0,
    num_timesteps: float = 1,
    shift_mode: str = "latent",
    on_degenerate: str = "error",
    scale_temporal: bool = True,
    ret_ratio: bool = False,
    uniform_over_threshold: Optional[float] = None,
    scale_images: bool = True,
    latent_frames: Optional[int] = None,
    **policy_params: Any,
) -> Union[Tensor, Tuple[Tensor, Tensor]]:
    """Drop-in for Open-Sora's ``timestep_transform`` (1.2 and 1.3 signatures) with a temporal-size policy.

    The first six arguments are Open-Sora 1.2's; ``scale_temporal`` (False means ``shift_mode="spatial"``),
    ``ret_ratio`` and ``uniform_over_threshold`` are the keywords Open-Sora 1.3 adds. ``shift_mode``,
    ``on_degenerate``, ``scale_images`` and ``policy_params`` (a policy's parameters, or the shift family's
    keywords) are :class:`TimestepShift`'s;
    ``latent_frames`` is the latent tensor's temporal length where the caller has it.
    """
    if not scale_temporal:  # Open-Sora 1.3's switch for the spatial-only shift
        own = set(policy_params_of(shift_mode))
        shift_mode, policy_params = "spatial", {k: v for k, v in policy_params.items() if k not in own}
    settings = dict(shift_mode=shift_mode, on_degenerate=on_degenerate, base_resolution=base_resolution,
                    base_num_frames=base_num_frames, scale=scale, scale_images=scale_images, **policy_params)
    # A plain dict, so torch.compile reads a shift built by an earlier eager call as a constant: older dynamo
    # (torch 2.2) cannot trace the construction itself.
    shift = _cached_shift(tuple(sorted(settings.items())))
    return shift(t, model_kwargs, num_timesteps, latent_frames, uniform_over_threshold, ret_ratio)
