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
import warnings
from typing import Any, Callable, Dict, Mapping, Optional, Tuple, Union

import numpy as np
import torch
from torch import Tensor

from .guard import explain, factor_bounded, kind_codes, pile_check
from .policies import apply_policy, degenerate_frame_counts, get_policy
from .settings import (MAX_SHIFT_FACTOR, SETTINGS, SHIFT_SETTINGS, Setting, SettingError, describe, is_real_number, resolve,
                       route, unknown_setting_error)

ON_DEGENERATE: Tuple[str, ...] = tuple(SETTINGS["on_degenerate"].choices)  # type: ignore[arg-type]
"""What to do with a sample whose policy gives ``T_eff <= 0``."""

META_KEYS: Tuple[str, ...] = ("height", "width", "num_frames")
"""The per-sample meta the shift reads from ``model_kwargs``, as Open-Sora's loader provides them."""


class MetaError(ValueError):
    """The batch meta (``height``, ``width``, ``num_frames``) cannot be shifted; the message names key and value."""


_CLAMP_WARNED: set = set()  # the clamp warning is said once per policy and process


def rational_shift(t: Tensor, shift: Tensor) -> Tensor:
    """``a t / (1 + (a - 1) t)`` on t in [0, 1] (Esser et al., 2024, SD3); the operation order is Open-Sora's."""
    return shift * t / (1 + (shift - 1) * t)


def exponential_shift(t: Tensor, shift: Tensor, sigma: float = 1.0) -> Tensor:
    """``a / (a + (1/t - 1)^sigma)`` with ``a = e^mu`` (Black Forest Labs, 2024, Flux); sigma = 1 is the rational shift."""
    return shift / (shift + (1 / t - 1) ** sigma)


def inverse_shift(y: Tensor, shift: Tensor, family: str = "rational", sigma: float = 1.0) -> Tensor:
    """The unshifted t whose shift is ``y``: ``y / (a - (a - 1) y)`` (rational), ``1 / (1 + (a (1 - y) / y)^(1/sigma))``
    (exponential). The start of expert boundaries in noise level (Wan 2.2's 0.875): the shifted level ``y`` is the
    unshifted ``inverse_shift(y, a)`` for a sample of factor ``a``, so each sample's own factor converts it."""
    if family == "exponential" and sigma != 1:
        return 1 / (1 + (shift * (1 - y) / y) ** (1 / sigma))
    return y / (shift - (shift - 1) * y)


def shift_complement(t: Tensor, shift: Tensor, family: str = "rational", sigma: float = 1.0) -> Tensor:
    """``1 - s(t)``, written so that it keeps its digits where a large factor puts ``s(t)`` next to 1:
    ``(1 - t) / (1 + (a - 1) t)`` (rational), ``r / (a + r)`` with ``r = (1/t - 1)^sigma`` (exponential)."""
    if family == "exponential" and sigma != 1:
        r = (1 / t - 1) ** sigma
        return r / (shift + r)
    return (1 - t) / (1 + (shift - 1) * t)


def inverse_shift_complement(c: Tensor, shift: Tensor, family: str = "rational", sigma: float = 1.0) -> Tensor:
    """The unshifted t whose shift is ``1 - c``, from ``c`` itself: ``(1 - c) / (1 + (a - 1) c)`` (rational),
    ``1 / (1 + (a c / (1 - c))^(1/sigma))`` (exponential)."""
    if family == "exponential" and sigma != 1:
        return 1 / (1 + (shift * c / (1 - c)) ** (1 / sigma))
    return (1 - c) / (1 + (shift - 1) * c)


SHIFT_FAMILIES: Tuple[str, ...] = tuple(SETTINGS["shift_family"].choices)  # type: ignore[arg-type]
"""The shift curves: SD3 / Open-Sora 1.x's rational shift, and Flux's exponential shift."""

RESOLUTION_SHIFTS: Tuple[str, ...] = tuple(SETTINGS["resolution_shift"].choices)  # type: ignore[arg-type]
"""How the resolution sets the shift: Open-Sora 1.x's ``sqrt(H W / base_resolution)``; linear in the latent token
count between two anchors (Flux's ``mu``, Open-Sora 2.0's ``alpha``); or a constant (SD3 3.0, HunyuanVideo 7, Wan 5)."""

class TimestepShift:
    """A configured shift: a temporal-size policy, its guard, and Open-Sora's shift factor.

    ``a = R(H, W) * sqrt(T_eff / base_num_frames) * transform_scale``, with ``R`` the resolution rule
    (``resolution_shift``) and ``T_eff`` the policy's (``shift_mode``), then ``t' = curve(t; a)`` (``shift_family``).
    Takes the settings in :data:`SHIFT_SETTINGS` by name, each declared and validated in :mod:`.settings`, plus the
    policy's own parameters (e.g. ``micro_frame_size`` for ``"latent"``).

    ``on_degenerate`` says what a sample with ``T_eff <= 0`` gets: ``"error"`` raises a ``ValueError`` naming the
    frame count and the fix (one host sync per call: the price of the check); ``"clamp"`` shifts it as
    ``T_eff = 1`` without looking at tensor values (so it warns once, here, which frame counts it will clamp);
    ``"ignore"`` keeps the stock numbers, collapse included, for replaying old runs. Where the Recipe has given the
    shift its base distribution (``base``), ``"error"`` refuses a bucket whose shifted draws pile up at 0 or N
    (:func:`.guard.pile_check`, judged once per factor); without one, and always under ``"clamp"``, a factor outside
    [0.01, 100] is refused under ``"error"`` and clamped under ``"clamp"``; the
    ``"error"`` path decides with :func:`.guard.kind_codes` and words it with :func:`.guard.explain`. Invalid
    meta (frame counts that are not whole numbers >= 1, resolutions that are not positive with a finite product) and
    timesteps outside [0, N] are refused on every path: ``"error"`` raises; ``"clamp"`` and ``"ignore"`` stop the
    run with a device-side assert (``torch._assert_async``), which costs no host sync on a GPU.
    """

    def __init__(self, shift_mode: Optional[str] = None, on_degenerate: Optional[str] = None, **settings: Any) -> None:
        given = dict(settings)
        given.update({k: v for k, v in (("shift_mode", shift_mode), ("on_degenerate", on_degenerate)) if v is not None})
        own, policy_params, _, _, unknown = route(given, SHIFT_SETTINGS)
        values = resolve(own)
        if unknown:
            key = next(iter(unknown))
            raise unknown_setting_error("TimestepShift", key, unknown[key], SHIFT_SETTINGS, values["shift_mode"])
        self.settings: Dict[str, Any] = {k: values[k] for k in SHIFT_SETTINGS}
        for key, value in self.settings.items():
            setattr(self, key, value)
        self.shift_mode = values["shift_mode"] if values["scale_temporal"] else "spatial"
        self.policy_params: Dict[str, Any] = policy_params
        # A policy that already maps n = 1 to 1 needs no image override: one op fewer per call. While
        # torch.compile traces a construction, nothing here may read a tensor, so the override stays.
        compiling = _is_compiling()
        if not compiling:
            _check_policy_output(self.shift_mode, policy_params)
        one = torch.ones(1, dtype=torch.float64)
        self._images_are_one = not compiling and bool(get_policy(self.shift_mode)(one, **policy_params) == 1)
        self._judged_meta: Dict[Tuple[Any, ...], np.ndarray] = {}  # see _judged
        # The base draw (u, factor) -> t whose shifted draws the guard judges for pile-up (the Recipe's base_draw,
        # set by the Recipe); None: the factor's bound alone is checked, as a bare TimestepShift has no distribution.
        self.base: Optional[Callable[[Tensor, Tensor], Tensor]] = None
        self.pile_shares: Dict[float, Tuple[float, float]] = {}  # the guard's end shares per factor, judged once
        self._rational = not (self.shift_family == "exponential" and self.shift_sigma != 1)  # see curve()
        warn_key = (self.shift_mode, tuple(sorted(policy_params.items())))
        if self.on_degenerate == "clamp" and not compiling and warn_key not in _CLAMP_WARNED:
            _CLAMP_WARNED.add(warn_key)
            bad = degenerate_frame_counts(self.shift_mode, **policy_params)
            if bad:
                warnings.warn(
                    f"shift_mode={self.shift_mode!r} gives T_eff <= 0 for num_frames in {_ranges(bad)}; with "
                    "on_degenerate='clamp' those samples are shifted as T_eff = 1. Steps do not check it (that would "
                    "cost a host sync), so it is said once, here. shift_mode='latent' needs no clamping.",
                    stacklevel=2,
                )

    def __repr__(self) -> str:
        shown = {k: v for k, v in self.settings.items() if v != SETTINGS[k].default or k in ("shift_mode", "on_degenerate")}
        shown.update(self.policy_params)
        return f"TimestepShift({', '.join(f'{k}={v!r}' for k, v in shown.items())})"

    def resolution_factor(self, height: Tensor, width: Tensor, latent_hw: Optional[Tuple[int, int]] = None,
                          tokens: Optional[int] = None, frames: Optional[Tensor] = None) -> Any:
        """The resolution's part of ``a``: a tensor per sample, or a float shared by the batch.

        The linear rule counts latent tokens: ``tokens`` when the caller has counted them, else from the latent's
        ``latent_hw`` (with ``latent_from='tensor'``), else from the pixel meta; times ``frames`` (T_eff) when it
        counts the whole clip.
        """
        if self.resolution_shift == "sqrt":
            area = (height * width).div_(self.base_resolution)  # in place: our own temporaries
            return area.sqrt_() if self.spatial_exponent == 0.5 else area.pow_(self.spatial_exponent)
        if self.resolution_shift == "constant":
            value: Any = self.shift
        else:
            # the latent tensor is the truth, as for T_eff, unless the rule is another model's geometry (latent_from)
            if tokens is None and latent_hw is not None and self.latent_from == "tensor":
                tokens = (latent_hw[0] // self.patch_size) * (latent_hw[1] // self.patch_size)
            if tokens is None:
                count: Any = height * width / (self.spatial_compression * self.patch_size) ** 2
            elif tokens < 1:
                raise MetaError(f"the latent{f' of {latent_hw[0]} x {latent_hw[1]}' if latent_hw else ''} holds no "
                                f"token of patch_size={self.patch_size} ({tokens} counted): the linear rule needs "
                                "at least one")
            else:
                count = tokens
            if frames is not None:
                count = count * frames
            # m x + b with b = y1 - m x1: Flux's and Open-Sora 2.0's operation order, so their numbers come out bit
            # for bit.
            slope = (self.max_shift - self.base_shift) / (self.max_seq_len - self.base_seq_len)
            value = slope * count + (self.base_shift - slope * self.base_seq_len)
        if self.shift_family == "exponential":
            return torch.exp(value) if isinstance(value, Tensor) else math.exp(value)
        return value

    def curve(self, t: Tensor, ratio: Tensor) -> Tensor:
        """Apply the family's curve with factor ``ratio`` to t in [0, 1]."""
        if self.shift_family == "exponential" and self.shift_sigma != 1:
            return exponential_shift(t, ratio, self.shift_sigma)
        return rational_shift(t, ratio)  # the exponential family with sigma = 1 is exactly this curve

    def temporal_size(self, num_frames: Tensor, latent_frames: Optional[int] = None) -> Tensor:
        """``T_eff`` per sample, before the guard. ``latent_frames``, the latent tensor's own length, wins in ``latent``
        mode (unless ``latent_from='meta'``, which counts the pixel frames through the policy's geometry)."""
        if latent_frames is not None and self.shift_mode == "latent" and self.latent_from == "tensor":
            return torch.full_like(num_frames, float(latent_frames))
        if self._images_are_one:
            return get_policy(self.shift_mode)(num_frames, **self.policy_params)
        return apply_policy(num_frames, self.shift_mode, self.policy_params)

    def shift_factor(
        self,
        model_kwargs: Mapping[str, Any],
        latent_frames: Optional[int] = None,
        dtype: torch.dtype = torch.float32,
        device: Optional[torch.device] = None,
        latent_hw: Optional[Tuple[int, int]] = None,
        batch_size: Optional[int] = None,
        t: Optional[Tensor] = None,
        tokens: Optional[int] = None,
    ) -> Tensor:
        """The shift factor ``a`` per sample, guarded as ``on_degenerate`` says (with the timesteps ``t`` in
        [0, 1] about to be shifted, when given: they are checked in the same pass). ``tokens`` is the latent's
        token count where the caller has counted it (the linear rule)."""
        height, width, num_frames = read_meta(model_kwargs, dtype, device, batch_size)
        if self.on_degenerate == "error":
            return self._judged_factor(height, width, num_frames, latent_frames, latent_hw, tokens, t)
        ratio = self._factor(height, width, num_frames, latent_frames, latent_hw, tokens)
        frames_ok, resolution_ok = meta_checks(height, width, num_frames)
        if self.on_degenerate == "clamp":  # degenerate T_eff was clamped to 1 above; extreme factors are clamped here
            ratio = ratio.clamp(1 / MAX_SHIFT_FACTOR, MAX_SHIFT_FACTOR)
        # No host sync: device-side asserts. On a GPU one stops the run at this step (CUDA then reports a
        # "device-side assert"); on the CPU it raises at once, with its message. "ignore" lets stock's zero factor
        # through, never a negative or non-finite one.
        torch._assert_async(frames_ok.all(), _INVALID_FRAMES)
        torch._assert_async(resolution_ok.all(), _INVALID_RESOLUTION)
        torch._assert_async(((ratio >= 0) & ratio.isfinite()).all(), _INVALID_FACTOR)
        if t is not None:
            torch._assert_async(((t >= 0) & (t <= 1)).all(), _BAD_TIMESTEPS)
        return ratio

    def _shift_on_host(self, t: Tensor, model_kwargs: Mapping[str, Any], num_timesteps: float,
                       latent_frames: Optional[int], latent_hw: Optional[Tuple[int, int]], ret_ratio: bool,
                       batch_size: Optional[int]) -> Union[Tensor, Tuple[Tensor, Tensor]]:
        """The default path (``"error"``, rational curve, no redraw): after the one host copy everything is computed
        there, in torch's operation order, and only the shifted t goes back."""
        # CPU torch divides by a number as numpy does; CUDA multiplies by its reciprocal (as stock does there).
        divide_on_host = t.is_cpu and num_timesteps != 1
        if num_timesteps != 1 and not divide_on_host:
            t = t / num_timesteps
        height, width, num_frames = read_meta(model_kwargs, t.dtype, t.device, batch_size)
        factor, host_t, size = self._judged(height, width, num_frames, latent_frames, latent_hw, None, t,
                                            num_timesteps if divide_on_host else 1)
        # In float32 a t / (1 + (a - 1) t) at t = 1 can round just above 1 (a < 1/2); it cannot fall below 0.
        shifted = np.minimum(rational_shift(host_t, factor), factor.dtype.type(1))
        if num_timesteps != 1:
            shifted = shifted * num_timesteps
        meta_scalar = height.dim() == width.dim() == num_frames.dim() == 0
        out = _to(shifted, None if meta_scalar and t.dim() == 0 else size, t.device)
        return (out, _to(factor.copy(), None if meta_scalar else size, t.device)) if ret_ratio else out  # kept

    def _judged_factor(self, height: Tensor, width: Tensor, num_frames: Tensor, latent_frames: Optional[int],
                       latent_hw: Optional[Tuple[int, int]], tokens: Optional[int], t: Optional[Tensor]) -> Tensor:
        """The ``"error"`` path's factor: judged on the host copy, and sent back with the meta's shape."""
        factor, _, size = self._judged(height, width, num_frames, latent_frames, latent_hw, tokens, t)
        scalar = height.dim() == width.dim() == num_frames.dim() == 0
        return _to(factor.copy(), None if scalar else size, height.device)  # a copy: the factor is kept

    def _judged(self, height: Tensor, width: Tensor, num_frames: Tensor, latent_frames: Optional[int],
                latent_hw: Optional[Tuple[int, int]], tokens: Optional[int], t: Optional[Tensor], t_scale: float = 1
                ) -> Tuple[np.ndarray, Optional[np.ndarray], int]:
        """The ``"error"`` path: one host copy of the meta and t (the one sync), the factor computed there and
        judged by the guard (:func:`.guard.kind_codes`), t (divided by ``t_scale`` there) checked in [0, 1].
        Returns the factor and t on the host, and the batch length. Each tiny device kernel would cost more than
        its numpy counterpart.

        Open-Sora's loader gives each batch one bucket, so the same meta come again and again: a batch whose meta
        equal one already judged (byte for byte, with the same latent sizes) takes that factor. A refusal is never
        kept, so a bad batch is refused every time, with its message.
        """
        if t is not None and t.requires_grad:
            t = t.detach()
        rows: Tuple[Tensor, ...] = (height, width, num_frames) if t is None else (height, width, num_frames, t)
        try:
            stacked = torch.stack(rows)
        except RuntimeError:  # shapes differ: a number for the batch beside per-sample values
            stacked = torch.stack(torch.broadcast_tensors(*rows))
        if stacked.dim() == 1:
            stacked = stacked.reshape(len(rows), 1)
        host = stacked.numpy() if stacked.is_cpu else stacked.cpu().numpy()
        meta = host[:3]
        key = (meta.tobytes(), meta.dtype.char, latent_frames, latent_hw, tokens)
        factor = self._judged_meta.get(key)
        if factor is None:
            factor = self._judge_meta(meta, latent_frames, latent_hw, tokens, height.device)
            if len(self._judged_meta) >= _MAX_JUDGED:  # meta that never repeat: keep the memory bounded
                self._judged_meta.clear()
            self._judged_meta[key] = factor
        if t is None:
            return factor, None, host.shape[1]
        host_t = host[3] if t_scale == 1 else host[3] / t_scale
        if not (host_t.min() >= 0 and host_t.max() <= 1):  # NaN fails too
            raise MetaError(_BAD_TIMESTEPS)
        return factor, host_t, host.shape[1]

    def _judge_meta(self, meta: np.ndarray, latent_frames: Optional[int], latent_hw: Optional[Tuple[int, int]],
                    tokens: Optional[int], device: torch.device) -> np.ndarray:
        """The factor for host meta rows (height, width, num_frames), computed on the batch's ``device`` (stock's
        bits there; a second sync, only for meta not judged before), or the guard's refusal as a :class:`MetaError`."""
        h, w, n = meta
        t_eff, factor = self.host_factor(h, w, n, latent_frames, latent_hw, tokens, device)
        with np.errstate(all="ignore"):
            codes = kind_codes("error", n, h, w, t_eff, factor, factor_bounded(self))
        if codes.any():
            raise MetaError(explain(self, codes, n, h, w, t_eff, factor))
        pile = pile_check(self, factor, "this batch")  # judged once per meta: the verdict is cached with them
        if pile:
            raise MetaError(pile)
        return factor

    def host_factor(self, height: np.ndarray, width: np.ndarray, num_frames: np.ndarray,
                    latent_frames: Optional[int] = None, latent_hw: Optional[Tuple[int, int]] = None,
                    tokens: Optional[int] = None, device: Optional[torch.device] = None
                    ) -> Tuple[np.ndarray, np.ndarray]:
        """``(T_eff before any clamp, the factor)`` per sample for 1-D host arrays of one floating dtype: what the
        guard judges. Computed by :meth:`temporal_size` and :meth:`_factor` themselves, on ``device`` (the CPU by
        default), so the factor has the bits training computes there (torch's sqrt is not numpy's in the last bit).
        """
        h, w, n = (torch.from_numpy(x).to(device) for x in (height, width, num_frames))
        t_eff = self.temporal_size(n, latent_frames)
        factor = self._factor(h, w, n, latent_frames, latent_hw, tokens)
        return t_eff.cpu().numpy(), factor.cpu().numpy()

    def _factor(self, height: Tensor, width: Tensor, num_frames: Tensor, latent_frames: Optional[int],
                latent_hw: Optional[Tuple[int, int]], tokens: Optional[int] = None) -> Tensor:
        t_eff = self.temporal_size(num_frames, latent_frames)
        if self.on_degenerate == "clamp":
            t_eff = torch.where(t_eff > 0, t_eff, 1.0)
        if self.resolution_shift == "linear" and self.token_count == "video":  # T_eff is in the token count
            ratio = self.resolution_factor(height, width, latent_hw, tokens, frames=t_eff)
            ratio = ratio if isinstance(ratio, Tensor) else torch.full_like(t_eff, ratio)
        else:
            ratio_space = self.resolution_factor(height, width, latent_hw, tokens)
            # x / 1 and x * 1 are exact: skipping them keeps Open-Sora's bits and saves two kernels.
            if self.base_num_frames != 1:
                t_eff = t_eff / self.base_num_frames
            temporal = t_eff.sqrt() if self.temporal_exponent == 0.5 else t_eff.pow(self.temporal_exponent)
            ratio = ratio_space * temporal
        if self.transform_scale != 1 and self.scale_temporal:  # stock 1.3 treats scale_temporal=False as images
            scale: Any = self.transform_scale
            if not self.scale_images:
                scale = torch.where(num_frames == 1, torch.ones_like(ratio), torch.full_like(ratio, scale))
            ratio = ratio * scale
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
        # Open-Sora passes these at its own values on every step: those are checked the quick way.
        if not (type(num_timesteps) in (int, float) and 0 < num_timesteps <= _NUM_TIMESTEPS.high):
            num_timesteps = _NUM_TIMESTEPS.check(num_timesteps)
        if ret_ratio is not False:
            ret_ratio = _RET_RATIO.check(ret_ratio)
        if uniform_over_threshold is not None:
            uniform_over_threshold = SETTINGS["uniform_over_threshold"].check(uniform_over_threshold)
        latent_frames = None if latent_frames is None else _LATENT_FRAMES.check(latent_frames)
        if latent_hw is not None:
            if not isinstance(latent_hw, (tuple, list)) or len(latent_hw) != 2:
                raise SettingError(f"latent_hw={describe(latent_hw)} is not allowed: use the latent's (H, W)")
            latent_hw = (_LATENT_HW.check(latent_hw[0]), _LATENT_HW.check(latent_hw[1]))
        t = _timesteps(t)
        if resample_u is not None and (not isinstance(resample_u, Tensor) or resample_u.shape != t.shape):
            raise SettingError(f"resample_u={describe(resample_u)} is not allowed: one uniform per timestep, shape "
                               f"{tuple(t.shape)}")
        dtype = torch.promote_types(t.dtype, torch.float32) if t.is_floating_point() else torch.float32
        t = _as(t, dtype, None)
        batch_size = t.shape[0] if t.dim() == 1 else None
        if self.on_degenerate == "error" and self._rational and not (uniform_over_threshold is not None
                                                                     and self.scale_temporal):
            return self._shift_on_host(t, model_kwargs, num_timesteps, latent_frames, latent_hw, ret_ratio, batch_size)
        if num_timesteps != 1:
            t = t / num_timesteps
        ratio = self.shift_factor(model_kwargs, latent_frames, dtype, t.device, latent_hw, batch_size, t)
        # In float32 a t / (1 + (a - 1) t) at t = 1 can round just above 1 (a < 1/2): keep every timestep in [0, N].
        t = self.curve(t, ratio).clamp(0, 1)
        if uniform_over_threshold is not None and self.scale_temporal:
            num_frames = _as(model_kwargs["num_frames"], dtype, t.device)
            t = resample_over_threshold(t, uniform_over_threshold, num_frames, resample_u)
        if num_timesteps != 1:
            t = t * num_timesteps
        return (t, ratio) if ret_ratio else t


_MAX_JUDGED = 1024  # distinct batch meta kept per shift: more than a bucket config's buckets and batch sizes
_LATENT_FRAMES = Setting("latent_frames", "int", None, "", low=1, high=1_000_000)
_LATENT_HW = Setting("latent_hw", "int", None, "", low=1, high=1_000_000)
_BAD_TIMESTEPS = "timestep shift: a timestep is outside [0, num_timesteps] or not finite"
# Open-Sora passes its time scale per call (as an int or a float), and 1 means t is already in [0, 1].
_NUM_TIMESTEPS = Setting("num_timesteps", "float", 1, "", low=0, low_open=True, high=1e6)
_RET_RATIO = Setting("ret_ratio", "bool", False, "")
_INVALID_FRAMES = "timestep shift: a num_frames in the batch meta is not a whole number >= 1"
_INVALID_RESOLUTION = "timestep shift: a height or width in the batch meta is not > 0 (or their product not finite)"
_INVALID_FACTOR = "timestep shift: a shift factor is negative or not finite (the meta is too large for the rule)"


def meta_checks(height: Tensor, width: Tensor, num_frames: Tensor) -> Tuple[Tensor, Tensor]:
    """Per sample: a whole frame count >= 1; a positive resolution with a finite H * W. Tensor ops, no sync."""
    # n - floor(n) is NaN for NaN and inf, so one comparison also refuses those.
    frames_ok = (num_frames >= 1) & (num_frames - num_frames.floor() == 0)
    return frames_ok, (torch.minimum(height, width) > 0) & (height * width).isfinite()


def resample_over_threshold(t: Tensor, threshold: float, num_frames: Tensor, u: Optional[Tensor] = None) -> Tensor:
    """Open-Sora 1.3's ``uniform_over_threshold``: video timesteps above it redrawn uniformly above it.

    Without ``u``, the uniforms come from the global RNG, and only when the batch holds a video: stock 1.3 draws
    nothing for image batches, so skipping the draw keeps every later random number as stock's. That look at the
    frame counts is a host sync, as stock's own ``num_frames[0] == 1`` is.
    """
    video = num_frames != 1
    if u is None:
        if not bool(video.any()):
            return t
        u = torch.rand_like(t)
    resampled = u.to(t.dtype) * (1 - threshold) + threshold
    return torch.where((t > threshold) & video, resampled, t)


def _check_policy_output(shift_mode: str, params: Dict[str, Any]) -> None:
    """A registered policy must map a frame-count tensor to a tensor of the same shape (checked once, at set-up)."""
    n = torch.tensor([1.0, 2.0, 16.0, 17.0, 51.0])
    out = get_policy(shift_mode)(n.clone(), **params)
    if not isinstance(out, Tensor) or out.shape != n.shape or not out.is_floating_point():
        raise SettingError(f"shift_mode={shift_mode!r} returned {describe(out)} for num_frames {n.tolist()}: a policy "
                           "must return a floating tensor of T_eff, one per frame count")


def _timesteps(t: Any) -> Tensor:
    if isinstance(t, Tensor) and not t.dtype.is_complex and t.dtype != torch.bool and t.dim() <= 1:
        return t
    if is_real_number(t):
        return torch.tensor(float(t))
    raise SettingError(f"t={describe(t)} is not allowed: timesteps must be a real vector, one per sample "
                       "(or a number)")


def read_meta(model_kwargs: Mapping[str, Any], dtype: torch.dtype, device: Optional[torch.device],
              batch_size: Optional[int] = None) -> Tuple[Tensor, Tensor, Tensor]:
    """``height``, ``width``, ``num_frames`` as tensors of ``dtype``: each a number or a batch-length vector.

    Shapes and types are checked here, on the host, for free; values are checked by the guard.
    """
    if type(model_kwargs) is dict and batch_size is not None:  # Open-Sora's own: batch-length tensors, ready
        given = [model_kwargs.get(key) for key in META_KEYS]
        if all(type(x) is Tensor and x.dtype == dtype and x.dim() == 1 and x.shape[0] == batch_size
               and (device is None or x.device == device) for x in given):
            return given[0], given[1], given[2]
    if not isinstance(model_kwargs, Mapping):
        raise MetaError(
            f"the batch meta (model_kwargs / additional_args) is {describe(model_kwargs)}: the timestep shift needs "
            "height, width and num_frames; pass the model_args dict that Open-Sora's training loop builds"
        )
    missing = [k for k in META_KEYS if k not in model_kwargs]
    if missing:
        raise MetaError(
            f"model_kwargs is missing {', '.join(map(repr, missing))} (it has {sorted(map(str, model_kwargs))}); the "
            "timestep shift needs height, width and num_frames per sample, as Open-Sora's video dataset returns them"
        )
    out = []
    for key in META_KEYS:
        value = model_kwargs[key]
        if isinstance(value, Tensor):
            ok = not value.dtype.is_complex and value.dtype != torch.bool
        else:
            ok = is_real_number(value)
        if not ok:
            raise MetaError(f"meta {key}={describe(value)} is not allowed: it must be a real number or a tensor of "
                            "real numbers, one per sample")
        tensor = _as(value, dtype, device)
        if tensor.dim() > 1 or (tensor.dim() == 1 and batch_size is not None and tensor.shape[0] != batch_size):
            want = f"({batch_size},)" if batch_size is not None else "(batch,)"
            raise MetaError(f"meta {key} has shape {tuple(tensor.shape)}: it must be {want}, one value per sample "
                            "(or a single number)")
        out.append(tensor)
    lengths = {x.shape[0] for x in out if x.dim() == 1}
    if len(lengths) > 1:
        raise MetaError(f"meta height, width and num_frames have different lengths {[tuple(x.shape) for x in out]}")
    return out[0], out[1], out[2]


def _to(values: np.ndarray, size: Optional[int], device: torch.device) -> Tensor:
    """Host results back as a tensor on ``device``: ``size`` values, or a 0-dim tensor for ``None``."""
    if size is None:  # all-scalar meta: their factor, broadcast to t's length on the host, is one value
        values = values[:1].reshape(())
    elif values.shape[0] != size:  # one value of all-scalar meta, for a batch of t
        values = np.repeat(values, size)
    tensor = torch.from_numpy(values)
    return tensor if device.type == "cpu" else tensor.to(device)


def _as(value: Any, dtype: torch.dtype, device: Optional[torch.device]) -> Tensor:
    # Open-Sora's meta usually arrive in the right dtype already: skip the conversion kernels then.
    if isinstance(value, Tensor) and value.dtype == dtype and (device is None or value.device == device):
        return value
    return torch.as_tensor(value, device=device).to(dtype)


# Resolved once here: torch 2.2's dynamo cannot trace a hasattr on a module. torch.compiler.is_compiling is 2.3+.
_is_compiling: Callable[[], bool] = getattr(torch.compiler, "is_compiling", None) or torch._dynamo.is_compiling


def _ranges(values: Tuple[int, ...]) -> str:
    """``(2, 3, 4, 7)`` -> ``"2-4, 7"``."""
    runs: list = []
    for v in values:
        if runs and v == runs[-1][1] + 1:
            runs[-1][1] = v
        else:
            runs.append([v, v])
    return ", ".join(f"{a}-{b}" if b > a else f"{a}" for a, b in runs)


_SHIFTS: Dict[Tuple[Tuple[str, bool, Any], ...], TimestepShift] = {}  # one configured shift per setting


def _cached_shift(settings: Dict[str, Any]) -> TimestepShift:
    key = tuple(sorted((k, isinstance(v, bool), v) for k, v in settings.items()))  # True == 1, not as a setting
    try:
        shift = _SHIFTS.get(key)
    except TypeError:  # an unhashable value: let the validation name it
        return TimestepShift(**settings)
    if shift is None:
        shift = TimestepShift(**settings)
        if not _is_compiling():
            _SHIFTS[key] = shift
    return shift


def timestep_transform(
    t: Tensor,
    model_kwargs: Mapping[str, Any],
    base_resolution: float = 512 * 512,
    base_num_frames: float = 1,
    scale: float = 1.0,
    num_timesteps: float = 1,
    scale_temporal: bool = True,
    ret_ratio: bool = False,
    uniform_over_threshold: Optional[float] = None,
    latent_frames: Optional[int] = None,
    **settings: Any,
) -> Union[Tensor, Tuple[Tensor, Tensor]]:
    """Drop-in for Open-Sora's ``timestep_transform`` (1.2 and 1.3 signatures) with a temporal-size policy.

    The first six arguments are Open-Sora 1.2's (``scale`` is the transform scale); ``scale_temporal``,
    ``ret_ratio`` and ``uniform_over_threshold`` are the keywords Open-Sora 1.3 adds, with its meaning:
    ``scale_temporal=False`` treats every sample as an image (no temporal factor, no scale, no redraw).
    ``settings`` are :class:`TimestepShift`'s (``shift_mode``, ``on_degenerate``, ``scale_images``, ...) and the
    policy's parameters; ``latent_frames`` is the latent tensor's temporal length where the caller has it.
    """
    if not isinstance(scale_temporal, bool):
        SETTINGS["scale_temporal"].check(scale_temporal)
    if not scale_temporal:  # stock 1.3: the batch is images, so its scale and redraw do not apply
        scale, uniform_over_threshold = 1.0, None
        settings.pop("scale_images", None)
        settings["scale_temporal"] = False
    # Open-Sora's call sites pass these positionally at their defaults; only a value of their own is a choice
    # (and a choice the selected rule does not read is refused).
    for name, value, default in (("base_resolution", base_resolution, 512 * 512), ("base_num_frames", base_num_frames, 1),
                                 ("transform_scale", scale, 1.0)):
        if not (is_real_number(value) and value == default):
            settings[name] = value
    shift = _cached_shift(settings)
    return shift(t, model_kwargs, num_timesteps, latent_frames, uniform_over_threshold, ret_ratio)
