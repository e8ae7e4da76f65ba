"""Open-Sora 2.0: ``rflow-timeshift`` as a drop-in for its training script and its inference schedule.

2.0 builds no scheduler. Its ``scripts/diffusion/train.py`` binds ``time_shift`` and ``get_res_lin_function`` from
``opensora.utils.sampling`` at import and parses its config inside ``main()``; each batch's ``prepare_inputs`` then
computes ``alpha = get_res_lin_function()((H W) // 4) * sqrt(T)`` from the latent ``x_0``, draws
``t = sigmoid(randn(bs))`` (the same on every rank: one seed, no rank offset) and calls ``time_shift(alpha, t)``.
Inference calls ``opensora.utils.sampling.get_schedule``. Both names are looked up when called, so they can be
replaced while the config is parsed: importing this package (the config's ``custom_imports``) wraps
``opensora.utils.config.merge_args``, the last step of 2.0's ``parse_configs``, and when the parsed config holds
``scheduler = dict(type="rflow-timeshift", ...)`` it binds, in place of 2.0's ``time_shift`` and ``get_schedule``,

- ``opensora.utils.sampling``'s own two names (a script calling ``sampling.time_shift(...)``; stock ``get_schedule``
  calls ``time_shift`` there too, and gets stock's);
- every imported module's global of those names that holds 2.0's (``from opensora.utils.sampling import ...``);
- any name holding them in the modules of the frames that called ``parse_configs`` (the script, its helpers).

Training timesteps are then drawn and shifted by the settings, and the inference schedule shifted by them. A
script whose code (read at parse time) would not use either is refused: one that computes 2.0's factor but never
calls ``time_shift``, or one that calls neither ``time_shift`` nor ``get_schedule`` / ``prepare_api``.

With no settings both give stock 2.0's bits; without a ``scheduler`` key nothing is replaced; :func:`unpatch`
restores everything. The latent shape is read from the caller's own ``x_0`` (and ``z`` at inference) and checked
against the numbers stock passed, so a script that is not shaped like 2.0's is refused, never silently mis-read.
"""

from __future__ import annotations

import difflib
import dis
import importlib
import importlib.util
import logging
import math
import os
import sys
import warnings
from types import CodeType, FrameType, ModuleType
from dataclasses import replace
from typing import Any, Callable, Dict, List, Mapping, Optional, Sequence, Tuple

import numpy as np
import torch
import torch.distributed as dist
from torch import Tensor

from .core import Recipe
from .guard import judge
from .sampling import TimestepDistribution
from .settings import DISTRIBUTIONS, POLICIES, SETTINGS, Setting, SettingError, describe
from .shift import MetaError, TimestepShift
from .telemetry import Telemetry, global_rank

SCHEDULER_TYPE = "rflow-timeshift"
logger = logging.getLogger("opensora_timeshift_patch")


class Opensora2LayoutError(RuntimeError):
    """Open-Sora 2.0's code is not shaped as this package expects (a name missing or renamed, a changed formula)."""


class Opensora2Timesteps:
    """The settings of ``rflow-timeshift`` for Open-Sora 2.0: training timesteps and the inference schedule.

    Takes the scheduler's settings (:mod:`.settings`) with 2.0's defaults (:data:`~.settings.RELEASE_DEFAULTS`):
    with none, t is 2.0's logit-normal draw and ``alpha = lin(tokens; 256 -> 1, 4096 -> 3) * sqrt(T_latent)``,
    the rational shift. Settings with no meaning on 2.0 (:data:`~.settings.NOT_ON_OPENSORA2`) are refused.
    """

    def __init__(self, **settings: Any) -> None:
        self.recipe = Recipe(settings, release="2.0", who=f"{SCHEDULER_TYPE} (Open-Sora 2.0)")
        values = self.recipe.values
        self.given: Dict[str, Any] = self.recipe.given
        self.settings: Dict[str, Any] = self.recipe.settings
        self.distribution: TimestepDistribution = self.recipe.distribution
        self.shift: TimestepShift = self.recipe.shift
        self.use_timestep_transform: bool = values["use_timestep_transform"]
        self.timestep_rng: str = values["timestep_rng"]
        self.patch_size: Optional[int] = values["patch_size"] if "patch_size" in settings else None
        # Stock's own draw, sigmoid(randn), is used as it is where the settings ask for that distribution.
        self.stock_draw = (self.timestep_rng == "global" and values["sample_method"] == "logit-normal"
                           and values["t_range"] is None and values["noise_range"] is None
                           and all(self.distribution.params.get(k, v) == v
                                   for k, v in DISTRIBUTIONS.defaults("logit-normal").items()))
        # The pixel meta (clip size) matter only to the 'sqrt' rule and to policies of the pixel frame count.
        self.needs_pixels = (self.shift.resolution_shift == "sqrt"
                             or self.shift.shift_mode not in ("latent", "spatial"))
        # 2.0's train.py computes the loss itself and keeps only its batch mean: the telemetry sees the draws only,
        # and only rank 0's (stock 2.0 draws the same t on every rank, so a sum over ranks would count each R times).
        self.telemetry: Optional[Telemetry] = None
        if values["telemetry"] is not None:
            self.telemetry = Telemetry(**values["telemetry"], num_timesteps=1, bucket=self._telemetry_bucket,
                                       release="2.0", reduce=False)

    def __repr__(self) -> str:
        shown = ", ".join(f"{k}={v!r}" for k, v in self.given.items()) or "no settings: stock 2.0's rule"
        return f"{SCHEDULER_TYPE}({shown})"

    @property
    def training_patch_size(self) -> int:
        """What train.py counts tokens by: 2 (stock's ``(h w) // 4``, whatever the model's patch size), or the
        setting ``patch_size``."""
        return 2 if self.patch_size is None else self.patch_size

    def training_tokens(self, latent_hw: Sequence[int]) -> int:
        """Tokens as 2.0's train.py counts them (see :attr:`training_patch_size`)."""
        return _tokens(latent_hw, self.training_patch_size)

    def inference_tokens(self, latent_hw: Sequence[int], model_patch_size: int) -> int:
        """Tokens as 2.0's inference counts them: ``(h w) //`` the model's patch size squared, or the setting's."""
        return _tokens(latent_hw, model_patch_size if self.patch_size is None else self.patch_size)

    def factor(self, latent_frames: int, tokens: int, pixel_thw: Optional[Tuple[int, int, int]] = None) -> float:
        """The shift factor ``alpha`` for one bucket, as a Python float (what stock 2.0 passes to ``time_shift``).

        ``latent_frames`` and ``tokens`` are the latent's length and token count; ``pixel_thw`` the clip's frames,
        height and width, needed by the 'sqrt' rule and the pixel-frame policies only. Computed on the host in
        float64 with stock's operations, and judged there by the guard (:func:`~.guard.judge`, the same decision
        as on 1.x), at no device cost: ``on_degenerate`` says what a T_eff <= 0, or an alpha whose shifted draws pile
        up at one end (under ``"clamp"``: an alpha outside [0.01, 100]), gets.
        """
        latent_frames = _LATENT_COUNT.check(latent_frames)
        tokens = _TOKENS.check(tokens)
        if pixel_thw is None:
            if self.needs_pixels:
                raise MetaError(f"{self.shift!r} needs the clip's pixel size and frame count, which the caller does "
                                "not have: use resolution_shift='linear' and shift_mode='latent' (2.0's rule)")
            clip = ""
            pixel_thw = (latent_frames, 1, 1)  # read by nothing (and T == 1 for images, as the latent's)
        else:
            pixel_thw = tuple(Setting(name, "int", None, "", low=1, high=1_000_000).check(v)  # type: ignore
                              for name, v in zip(("clip frames", "clip height", "clip width"), pixel_thw))
            clip = f", clip of {pixel_thw[0]} frames at {pixel_thw[1]}x{pixel_thw[2]}"
        where = f"a latent of {latent_frames} frames and {tokens} tokens{clip}"
        verdict = judge(self.shift, pixel_thw[1], pixel_thw[2], pixel_thw[0], latent_frames, tokens, where,
                        dtype=np.float64)  # stock 2.0 computes alpha in Python floats
        if verdict.kind == "refused":
            raise MetaError(verdict.message)
        return verdict.factor

    def base_timesteps(self, t_stock: Tensor, step: Optional[int], alpha: Optional[float] = None) -> Tensor:
        """Unshifted training timesteps in [0, 1], one per sample, on ``t_stock``'s device (float32 or wider);
        ``alpha`` is the batch's shift factor, which ``noise_range`` converts through."""
        if self.stock_draw:
            return t_stock
        n, device = t_stock.shape[0], t_stock.device
        if self.timestep_rng == "per_sample":
            if step is None:
                raise Opensora2LayoutError("timestep_rng='per_sample' keys its stream on train.py's step, which was "
                                           "not found")
            u, _ = self.recipe.stream_uniforms(n, device, SETTINGS["timestep_start_step"].check(step))
        else:
            u = torch.rand(n, device=device, dtype=torch.float64)
        return self.recipe.timesteps(u, alpha).to(torch.promote_types(t_stock.dtype, torch.float32))

    def training_timesteps(self, t_stock: Tensor, latent_thw: Tuple[int, int, int],
                           pixel_thw: Optional[Tuple[int, int, int]] = None, step: Optional[int] = None) -> Tensor:
        """What train.py's ``time_shift(alpha, t)`` returns for one bucket's batch: ``t_stock`` is stock's draw
        (one floating t per sample, used as it is when the settings ask for stock's distribution)."""
        if not (isinstance(t_stock, Tensor) and t_stock.dim() == 1 and t_stock.is_floating_point()):
            raise SettingError(f"t={describe(t_stock)} is not allowed: one floating timestep per sample, shape (B,)")
        if not (isinstance(latent_thw, (tuple, list)) and len(latent_thw) == 3):
            raise SettingError(f"latent_thw={describe(latent_thw)} is not allowed: the latent's (T, H, W)")
        _check_unit_interval(t_stock, self.shift.on_degenerate)
        if not self.use_timestep_transform:
            return self.base_timesteps(t_stock, step)
        # Stock counts (H W) // 4 whatever the model's patch size; patch_size, when set, counts as inference does.
        h, w = (Setting(name, "int", None, "", low=1, high=1_000_000).check(v)
                for name, v in zip(("latent height", "latent width"), latent_thw[1:]))
        patch, tokens = self.training_patch_size, self.training_tokens((h, w))
        if tokens < 1:
            raise MetaError(f"a latent of {h}x{w} holds no token of patch size {patch}: nothing to shift (2.0's model "
                            "cannot pack it either)")
        alpha = self.factor(latent_thw[0], tokens, pixel_thw)
        return self.recipe.in_noise_range(_shifted(self.shift, self.base_timesteps(t_stock, step, alpha), alpha))

    def observe(self, t: Tensor, latent_thw: Tuple[int, int, int], pixel_thw: Optional[Tuple[int, int, int]]) -> None:
        """Count one batch's training timesteps in the telemetry (rank 0 only), keyed by the clip's pixel size and
        frames (the latent's where the caller holds no pixel ``x``); every ``every`` batches a report."""
        telemetry = self.telemetry
        if telemetry is None or global_rank() != 0:
            return
        frames, height, width = pixel_thw if pixel_thw is not None else latent_thw
        shape = tuple(latent_thw) + (tuple(pixel_thw) if pixel_thw is not None else ())
        telemetry.observe_drawn(t, (float(height), float(width), float(frames)), shape)
        if telemetry.due():
            telemetry.report(telemetry.steps)

    def _telemetry_bucket(self, height: float, width: float, num_frames: float, shape: Tuple[int, ...]
                          ) -> Tuple[None, Callable[[Tensor], Tensor], None]:
        """For the telemetry: the quantile function of a bucket's training timestep (the draw's distribution, then
        this bucket's shift, as :meth:`training_timesteps` applies them); 2.0 has no bucket rules and no redraw."""
        latent, pixel = tuple(shape[:3]), (tuple(shape[3:]) or None)
        if not self.use_timestep_transform:
            return None, lambda u: self.distribution(u).to(torch.float32), None
        alpha = self.factor(latent[0], self.training_tokens(latent[1:]), pixel)  # once, not per bisection step

        def quantile(u: Tensor) -> Tensor:
            t = self.recipe.timesteps(u, alpha).to(torch.float32)
            return self.recipe.in_noise_range(_shifted(self.shift, t, alpha))

        return None, quantile, None

    def schedule(self, num_steps: int, tokens: int, latent_frames: int,
                 pixel_thw: Optional[Tuple[int, int, int]] = None) -> List[float]:
        """What ``get_schedule`` returns: ``num_steps + 1`` times from 1 down to 0, shifted."""
        num_steps, tokens, latent_frames = (_SCHEDULE_ARGS[name].check(value) for name, value in
                                            (("num_steps", num_steps), ("image_seq_len", tokens),
                                             ("num_frames", latent_frames)))
        timesteps = torch.linspace(1, 0, num_steps + 1)
        if self.use_timestep_transform:
            timesteps = _shifted(self.shift, timesteps, self.factor(latent_frames, tokens, pixel_thw))
        return timesteps.tolist()


def _shifted(shift: TimestepShift, t: Tensor, alpha: float) -> Tensor:
    """Stock's shift: alpha a Python float, as stock's, so the same float32 operations give the same bits.

    For alpha >= 1/2 float32 rounding keeps the result within one ulp of [0, 1] (stock's t = 1 can give 1 + 2^-23,
    kept for parity); below, where stock 2.0 never goes, it can stray further and is clamped.
    """
    shifted = shift.curve(t, alpha)
    return shifted.clamp(0, 1) if alpha < 0.5 else shifted


_LATENT_COUNT = Setting("latent_frames", "int", None, "", low=0, high=1_000_000)  # 0: a too-short clip, for the guard
_TOKENS = Setting("tokens", "int", None, "", low=1, high=10**9)
# get_schedule's arguments, as 2.0's api_fn passes them: the step count, the latent's tokens and frames.
_SCHEDULE_ARGS = {
    "num_steps": Setting("num_steps", "int", None, "", low=0, high=100_000),
    "image_seq_len": Setting("image_seq_len", "int", None, "", low=1, high=10**9),
    "num_frames": Setting("num_frames", "int", None, "", low=1, high=1_000_000),
}
_SHIFT_ON = Setting("sampling_option.shift", "bool", True, "")
_ANCHOR = Setting("get_schedule anchor", "float", None, "")
_BAD_T = ("Open-Sora 2.0: a timestep t that train.py passed to time_shift is outside [0, 1] or not finite "
          "(stock draws sigmoid(randn))")


def _check_unit_interval(t: Tensor, on_degenerate: str) -> None:
    """Refuse a t outside [0, 1] (NaN included): named on the host for "error", by a device-side assert else."""
    ok = (t >= 0) & (t <= 1)  # NaN fails both
    if on_degenerate != "error":
        torch._assert_async(ok.all(), _BAD_T)  # no host sync: on a GPU it stops the run at this step
        return
    if not bool(ok.all()):  # the one host look per step that on_degenerate='error' pays for
        bad = t[~ok][0].item()
        raise MetaError(f"t={bad!r} is not allowed: train.py's timesteps are in [0, 1] (stock 2.0 draws "
                        "sigmoid(randn)); this one would give a shifted t outside [0, 1] or NaN")


def _tokens(latent_hw: Sequence[int], patch_size: int) -> int:
    return (latent_hw[0] * latent_hw[1]) // patch_size ** 2  # as 2.0 counts them


# --- reading the caller's frame ---------------------------------------------------------------------------

def _locals_of(frame: Optional[FrameType], names: Sequence[str], depth: int) -> Optional[Dict[str, Any]]:
    """The values of ``names`` in the nearest of ``depth`` frames from ``frame`` up that binds them all."""
    try:
        for _ in range(depth):
            if frame is None:
                return None
            found = frame.f_locals
            if all(name in found for name in names):
                return {name: found[name] for name in names}
            frame = frame.f_back
        return None
    finally:
        del frame  # frames hold their locals: no reference cycle through this one


def _shape5(value: Any) -> Optional[Tuple[int, int, int]]:
    """(T, H, W) of a 5-D tensor (B, C, T, H, W), else None."""
    return tuple(value.shape[-3:]) if isinstance(value, Tensor) and value.dim() == 5 else None  # type: ignore


def _say_once(hook: Any, key: str, text: str, level: int = logging.INFO) -> None:
    """One line on rank 0, the first time a hook meets ``key``: taking effect, or a reason a setting does not."""
    if key in hook.said:
        return
    hook.said.add(key)
    if global_rank() == 0:
        logger.log(level, text)


class TrainingTimeShift:
    """Bound as ``time_shift(alpha, t)`` wherever train.py can reach 2.0's: the configured timesteps for the caller's
    batch. Stock ``get_schedule`` calls it too (its module's own ``time_shift``): that call gets stock's."""

    def __init__(self, timesteps: Opensora2Timesteps, stock_lin: Callable[..., Any],
                 stock_time_shift: Callable[..., Any], stock_globals: Dict[str, Any]) -> None:
        self.timesteps, self.stock_lin, self.said = timesteps, stock_lin, set()
        self.stock_time_shift, self.stock_globals = stock_time_shift, stock_globals

    def __call__(self, alpha: Any, t: Tensor) -> Tensor:
        caller = sys._getframe(1)
        if caller.f_globals is self.stock_globals:  # opensora.utils.sampling's own call: inference stays stock's bits
            del caller
            return self.stock_time_shift(alpha, t)
        found = _locals_of(caller, ("x_0",), 1)
        latent = _shape5(found["x_0"]) if found else None
        if latent is None:
            raise Opensora2LayoutError(
                "rflow-timeshift replaced time_shift in Open-Sora 2.0's train.py, but its caller has no latent x_0 of "
                "shape (B, C, T, H, W): this script is not shaped like 2.0's train.py (prepare_inputs). Remove the "
                "scheduler key from the config, or call Opensora2Timesteps yourself")
        stock = self.stock_lin()((latent[1] * latent[2]) // 4) * math.sqrt(latent[0])
        if not isinstance(alpha, (int, float)) or isinstance(alpha, bool) or alpha != stock:
            raise Opensora2LayoutError(
                f"train.py passed time_shift alpha={describe(alpha)}, but stock 2.0 gives {stock!r} for its latent "
                f"x_0 of (T, H, W) = {latent}: this train.py computes its shift differently, and rflow-timeshift would "
                "silently replace that. Restore 2.0's lines or remove the scheduler key")
        if not isinstance(t, Tensor) or t.dim() != 1:
            raise Opensora2LayoutError(f"train.py passed time_shift t={describe(t)}: 2.0 passes one t per sample")
        pixels = _locals_of(caller, ("x",), 1)
        step = None
        if self.timesteps.timestep_rng == "per_sample":
            loop = _locals_of(caller.f_back, ("epoch", "step", "num_steps_per_epoch"), 8)
            if loop is None or not all(isinstance(v, int) for v in loop.values()):
                raise Opensora2LayoutError(
                    "timestep_rng='per_sample' keys its stream on train.py's step (epoch * num_steps_per_epoch + "
                    "step, which a resumed run restores), but no caller of prepare_inputs binds epoch, step and "
                    "num_steps_per_epoch: this script is not shaped like 2.0's train.py")
            step = loop["epoch"] * loop["num_steps_per_epoch"] + loop["step"]
        del caller
        _say_once(self, "on", f"rflow-timeshift: Open-Sora 2.0 training timesteps now come from {self.timesteps!r} "
                              "(train.py's time_shift replaced)")
        pixel_thw = _shape5(pixels["x"]) if pixels else None
        out = self.timesteps.training_timesteps(t, latent, pixel_thw, step)
        if self.timesteps.telemetry is not None:
            self.timesteps.observe(out, latent, pixel_thw)
        return out


def _training_only(key: str, shift_mode: str) -> bool:
    """Whether a given setting acts on training only (the distribution of t and its random stream)."""
    setting = SETTINGS.get(key)
    if setting is not None:
        return setting.group in ("distribution", "stream")
    return key not in POLICIES.params(shift_mode)  # else a distribution's parameter


_GET_SCHEDULE_ARGS = {name: replace(s, name=f"get_schedule {name}") for name, s in _SCHEDULE_ARGS.items()}


class InferenceSchedule:
    """Bound as ``opensora.utils.sampling.get_schedule``: the same signature, shifted by the settings.

    An explicit ``shift_alpha`` (``sampling_option.flow_shift``), ``shift=False`` (``sampling_option.shift``) or
    anchors of the caller's own keep stock's meaning, and rank 0 logs once that the shift settings do not apply.
    """

    def __init__(self, timesteps: Opensora2Timesteps, stock: Callable[..., List[float]]) -> None:
        self.timesteps, self.stock, self.said = timesteps, stock, set()
        self.training_only = [k for k in timesteps.given if _training_only(k, timesteps.shift.shift_mode)]

    def __call__(self, num_steps: int, image_seq_len: int, num_frames: int, shift_alpha: Optional[float] = None,
                 base_shift: float = 1, max_shift: float = 3, shift: bool = True) -> List[float]:
        for name, value in (("num_steps", num_steps), ("image_seq_len", image_seq_len), ("num_frames", num_frames)):
            _GET_SCHEDULE_ARGS[name].check(value)
        shift = _SHIFT_ON.check(shift)  # a truthy string would shift where the config says not to
        for name, value in (("base_shift", base_shift), ("max_shift", max_shift)):
            replace(_ANCHOR, name=f"get_schedule {name}").check(value)
        ts = self.timesteps
        if shift_alpha is not None and shift and not (isinstance(shift_alpha, (int, float)) and
                                                      not isinstance(shift_alpha, bool) and
                                                      math.isfinite(shift_alpha) and shift_alpha > 0):
            raise SettingError(f"sampling_option.flow_shift={describe(shift_alpha)} is not allowed: an explicit shift "
                               "factor alpha is a finite number > 0")
        why = ("sampling_option.shift=False: the schedule is stock's unshifted one" if not shift else
               f"sampling_option.flow_shift={shift_alpha!r} sets the shift factor: the schedule is stock's with that "
               "alpha (flow_shift=None uses the settings)" if shift_alpha is not None else
               f"get_schedule was called with the caller's own anchors base_shift={base_shift!r}, "
               f"max_shift={max_shift!r}: the schedule is stock's with them" if (base_shift, max_shift) != (1, 3)
               else "")
        if why:
            _say_once(self, why, f"rflow-timeshift: {why}; {ts!r}'s shift settings do not apply to it",
                      logging.WARNING)
            return self.stock(num_steps, image_seq_len, num_frames, shift_alpha, base_shift, max_shift, shift)
        tokens, pixels = image_seq_len, None
        if ts.patch_size is not None or ts.needs_pixels:
            caller = sys._getframe(1)
            found = _locals_of(caller, ("z", "opt", "patch_size"), 1)
            del caller
            latent = _shape5(found["z"]) if found else None
            if latent is None or latent[0] != num_frames or _tokens(latent[1:], found["patch_size"]) != image_seq_len:
                raise Opensora2LayoutError(
                    f"{ts!r} needs the latent and clip sizes at inference, read from 2.0's api_fn (z, opt, "
                    "patch_size), but get_schedule's caller does not bind them as 2.0's does")
            tokens = ts.inference_tokens(latent[1:], found["patch_size"])
            opt = found["opt"]
            pixels = (getattr(opt, "num_frames", None), getattr(opt, "height", None), getattr(opt, "width", None))
        unused = (f"; {', '.join(self.training_only)} act on training only and do not change it"
                  if self.training_only else "")
        _say_once(self, "on", f"rflow-timeshift: Open-Sora 2.0's inference schedule now comes from {ts!r} "
                              f"(opensora.utils.sampling.get_schedule replaced){unused}")
        return ts.schedule(int(num_steps), int(tokens), int(num_frames), pixels)


# --- binding and unbinding --------------------------------------------------------------------------------

_ORIGINALS: List[Tuple[Any, str, Any]] = []  # (module or globals dict, name, what it bound before us)
_MARK = "__opensora_timeshift__"
_HOOKED = ("time_shift", "get_schedule")  # 2.0's names the hooks stand in for, wherever they are bound


def _get(namespace: Any, name: str) -> Any:
    return namespace.get(name) if isinstance(namespace, dict) else getattr(namespace, name, None)


def _bind(namespace: Any, name: str, value: Any) -> None:
    current = _get(namespace, name)
    if not any(ns is namespace and n == name for ns, n, _ in _ORIGINALS):
        # What a hook replaced travels with it too, so a reloaded copy of this module can still restore it.
        _ORIGINALS.append((namespace, name, _stock_of(current)))
    value.original = _original(namespace, name)
    setattr(value, _MARK, True)
    if isinstance(namespace, dict):
        namespace[name] = value
    else:
        setattr(namespace, name, value)


def _restore(keep: Sequence[str] = ()) -> None:
    """Put back what :func:`_bind` replaced, except the names in ``keep``."""
    for entry in list(reversed(_ORIGINALS)):
        namespace, name, original = entry
        if name in keep:
            continue
        if isinstance(namespace, dict):
            namespace[name] = original
        else:
            setattr(namespace, name, original)
        _ORIGINALS.remove(entry)


def _ours(obj: Any) -> bool:
    try:
        return getattr(obj, _MARK, False) is True
    except Exception:  # an object whose attribute lookup fails is not one of ours
        return False


def _stock_of(obj: Any) -> Any:
    """What a hook stands in for (through the hooks of earlier imports of this module); anything else itself."""
    for _ in range(16):
        if not _ours(obj):
            break
        obj = getattr(obj, "original", None)
    return obj


def _module_dicts() -> List[Dict[str, Any]]:
    return [vars(m) for m in list(sys.modules.values()) if isinstance(m, ModuleType)
            and isinstance(getattr(m, "__dict__", None), dict)]


def unpatch() -> None:
    """Restore every name bound in Open-Sora 2.0's modules and scripts; a no-op when none is.

    Also undoes hooks that an earlier import of this package bound (a reload, a re-import), from what they carry.
    Importing the package again does not hook 2.0's config parsing again (the import is cached):
    :func:`hook_config_parsing` does.
    """
    _restore()
    for namespace in _module_dicts():
        for name in ("merge_args",) + _HOOKED:
            if _ours(namespace.get(name)):
                namespace[name] = _stock_of(namespace[name])


def is_hooked() -> bool:
    """Whether a 2.0 training or inference hook is bound."""
    return any(name in _HOOKED for _, name, _ in _ORIGINALS)


def _module(name: str, needs: Sequence[str]) -> ModuleType:
    try:
        module = sys.modules.get(name) or importlib.import_module(name)
    except Exception as err:  # what an import of Open-Sora's code raises is not ours to choose
        raise Opensora2LayoutError(
            f"the config selects rflow-timeshift on Open-Sora 2.0, which needs {name}, but it failed to import "
            f"({type(err).__name__}: {err}). Install 2.0's requirements, or remove the scheduler key") from err
    missing = [n for n in needs if not callable(getattr(module, n, None))]
    if missing:
        raise Opensora2LayoutError(
            f"{name} has no {', '.join(missing)}: this Open-Sora is not the 2.0 layout rflow-timeshift hooks into "
            "(branch main of hpcaitech/Open-Sora). Remove the scheduler key, or pin that Open-Sora")
    return module


def _scheduler_settings(cfg: Any) -> Optional[Dict[str, Any]]:
    """The settings of the config's ``scheduler`` entry, None without one; a named error for anything but ours."""
    scheduler = cfg.get("scheduler", None)
    if scheduler is None:
        return None
    if not isinstance(scheduler, Mapping) and callable(getattr(scheduler, "to_dict", None)):
        scheduler = scheduler.to_dict()  # an mmengine Config given as the entry
    kind = scheduler.get("type") if isinstance(scheduler, Mapping) else scheduler
    if not isinstance(scheduler, Mapping) or kind != SCHEDULER_TYPE:
        near = isinstance(kind, str) and difflib.get_close_matches(kind.lower().strip(), [SCHEDULER_TYPE], cutoff=0.8)
        raise SettingError(f"scheduler type={describe(kind)} is not allowed on Open-Sora 2.0, which builds no "
                           f"scheduler: use dict(type={SCHEDULER_TYPE!r}, ...) or remove the scheduler key"
                           + (f". Did you mean {SCHEDULER_TYPE!r}?" if near else ""))
    settings = {k: v for k, v in scheduler.items() if k != "type"}
    for key in settings:
        if not isinstance(key, str):
            raise SettingError(f"scheduler key {describe(key)} is not allowed: setting names are strings")
    return settings


def install(cfg: Mapping[str, Any], script_globals: Optional[Dict[str, Any]] = None) -> bool:
    """Bind the hooks for a parsed 2.0 config; returns whether it selects ``rflow-timeshift``.

    Binds ``opensora.utils.sampling``'s ``time_shift`` and ``get_schedule``, every imported module's global of
    those names that holds 2.0's, and in ``script_globals`` (the training script's module globals) any name
    holding them. A config without a ``scheduler`` key restores stock.
    """
    return _install(cfg, [] if script_globals is None else [script_globals])


def _install(cfg: Any, namespaces: List[Dict[str, Any]], stack: Optional[List[FrameType]] = None) -> bool:
    _restore(keep=("merge_args",))
    settings = _scheduler_settings(cfg)
    if settings is None:
        return False
    timesteps = Opensora2Timesteps(**settings)
    sampling = _module("opensora.utils.sampling", ("time_shift", "get_res_lin_function", "get_schedule"))
    stock = {name: _stock_of(getattr(sampling, name)) for name in _HOOKED}
    for namespace in namespaces:
        for name, function in stock.items():
            bound = namespace.get(name)
            if bound is not None and _stock_of(bound) is not function:
                raise Opensora2LayoutError(
                    f"the training script's {name} is {describe(bound)}, not opensora.utils.sampling.{name}: "
                    f"rflow-timeshift replaces only 2.0's own. Restore its import or remove the scheduler key")
    hooks = {"time_shift": TrainingTimeShift(timesteps, sampling.get_res_lin_function, stock["time_shift"],
                                             vars(sampling)),
             "get_schedule": InferenceSchedule(timesteps, stock["get_schedule"])}
    reached: set = set()  # the hooks bound somewhere else than opensora.utils.sampling

    def bind(namespace: Dict[str, Any], names: Sequence[str]) -> None:
        for name in names:
            value = namespace.get(name)
            for role, function in stock.items():
                if value is not None and _stock_of(value) is function:
                    _bind(namespace, name, hooks[role])
                    if namespace is not vars(sampling):
                        reached.add(role)

    try:
        bind(vars(sampling), _HOOKED)
        for namespace in namespaces:  # the script's own: under any name (an alias too)
            bind(namespace, [name for name, value in list(namespace.items()) if callable(value)])
        for namespace in _module_dicts():  # every module that imported 2.0's names
            bind(namespace, _HOOKED)
        if stack is not None:
            _check_reach(stack, reached)
    except BaseException:
        _restore(keep=("merge_args",))
        raise
    return True


_WATCHED = ("time_shift", "get_res_lin_function", "get_schedule", "prepare_api")


_NOT_GLOBAL = ("LOAD_FAST", "LOAD_DEREF", "LOAD_CLOSURE", "LOAD_FAST_CHECK", "LOAD_FAST_AND_CLEAR")


def _names_used(codes: Sequence[CodeType]) -> set:
    """The names of :data:`_WATCHED` that ``codes`` (and the functions they define) load as a global, an attribute
    or a string (``getattr(sampling, "time_shift")``); an import alone is not a use."""
    names: set = set()
    todo, seen = list(codes), set()
    while todo:
        code = todo.pop()
        if id(code) in seen:
            continue
        seen.add(id(code))
        for instruction in dis.get_instructions(code):
            if (instruction.opname.startswith("LOAD_") and instruction.opname not in _NOT_GLOBAL
                    and instruction.argval in _WATCHED):
                names.add(instruction.argval)
        todo.extend(const for const in code.co_consts if isinstance(const, CodeType))
    return names


def _script_name() -> str:
    path = getattr(sys.modules.get("__main__"), "__file__", None)
    return f"the script {os.path.basename(path)}" if isinstance(path, str) else "the script that parsed the config"


def _check_reach(stack: Sequence[FrameType], reached: set) -> None:
    """Refuse a config whose settings the script would never use: at parse time, from the script's code."""
    script = _script_name()
    names = _names_used([frame.f_code for frame in stack])
    if "get_res_lin_function" in names and "time_shift" not in names:
        raise Opensora2LayoutError(
            f"{script} computes 2.0's shift factor (get_res_lin_function) but never calls time_shift, the call "
            "rflow-timeshift replaces: its training timesteps would silently stay its own. Shift with "
            "opensora.utils.sampling.time_shift(alpha, t) as 2.0's train.py does, or remove the scheduler key")
    trains = "time_shift" in reached or "time_shift" in names
    infers = "get_schedule" in reached or bool(names & {"get_schedule", "prepare_api"})
    if not (trains or infers):
        raise Opensora2LayoutError(
            f"{script} parsed a config with scheduler type 'rflow-timeshift', but neither it nor a module imported "
            "before parse_configs calls time_shift (2.0's train.py) or get_schedule / prepare_api (2.0's "
            "inference): the settings would apply to nothing. Remove the scheduler key, or import the code that "
            "trains or samples before parsing the config")


def _original(namespace: Any, name: str) -> Any:
    for ns, n, original in _ORIGINALS:
        if ns is namespace and n == name:
            return original
    return _get(namespace, name)


# --- hooking 2.0's config parsing --------------------------------------------------------------------------

_UNHOOKABLE_WARNED: List[str] = []


def hook_config_parsing() -> bool:
    """At import: when Open-Sora 2.0 is installed, make its config parsing install the hooks.

    2.0 is recognised by ``opensora.utils.config`` (1.x has ``opensora.utils.config_utils``); it is light (mmengine
    and torch), so it is imported here even when the package is imported before Open-Sora parses its config.
    Returns whether 2.0's parsing is hooked. A 2.0 whose ``opensora.utils.config`` fails to import or lacks
    ``parse_configs`` / ``merge_args`` gets one warning, and a config being read that has a ``scheduler`` key
    (this import being its ``custom_imports``) a named error.
    """
    try:
        if "opensora.utils.config" not in sys.modules and importlib.util.find_spec("opensora.utils.config") is None:
            return False  # Open-Sora 1.x
    except ModuleNotFoundError as err:
        if err.name in ("opensora", "opensora.utils"):
            return False  # no Open-Sora, or one without opensora.utils: not 2.0
        return _unhookable(f"the opensora package failed to import ({type(err).__name__}: {err})", is_2_0=False)
    except Exception as err:  # a broken opensora/__init__: what it raises is not ours to choose
        return _unhookable(f"the opensora package failed to import ({type(err).__name__}: {err})", is_2_0=False)
    try:
        config = importlib.import_module("opensora.utils.config")
    except Exception as err:  # 2.0's `int | float` annotations on Python 3.9 raise TypeError, not ImportError
        return _unhookable(f"opensora.utils.config failed to import ({type(err).__name__}: {err})")
    missing = [n for n in ("parse_configs", "merge_args") if not callable(getattr(config, n, None))]
    if missing:
        return _unhookable(f"opensora.utils.config has no {', '.join(missing)} (not the 2.0 layout rflow-timeshift "
                           "hooks into)")
    merge_args = _stock_of(config.merge_args)  # a hook of an earlier import is replaced by this module's

    def merge_args_then_install(cfg: Any, args: Any) -> Any:
        try:
            cfg = merge_args(cfg, args)
        except Exception as err:
            overrides = _scheduler_overrides(args)
            if not overrides:
                raise
            raise SettingError(
                f"Open-Sora 2.0's merge_args refused the command line ({type(err).__name__}: {err}) with the "
                f"scheduler overrides {' '.join(overrides)}: 2.0 overrides only keys its config has, and converts a "
                "value with the type the config gives it. Put scheduler = dict(type='rflow-timeshift', ...) in the "
                "config and override its keys (--scheduler.shift_mode legacy)") from err
        stack = _frames_above(sys._getframe(1))
        try:
            namespaces = list({id(f.f_globals): f.f_globals for f in stack}.values())
            _install(cfg, namespaces, stack)
        finally:
            del stack
        return cfg

    _bind(config, "merge_args", merge_args_then_install)
    return True


def _scheduler_overrides(args: Any) -> List[str]:
    try:
        pairs = list(zip(args[::2], args[1::2]))
    except Exception:
        return []
    return [f"{k} {v}" for k, v in pairs
            if isinstance(k, str) and k[2:].replace("-", "_").split(".")[0] == "scheduler"]


def _frames_above(frame: Optional[FrameType]) -> List[FrameType]:
    """The frames from ``frame`` up, less this module's and opensora.utils.config's: the script and its helpers."""
    config = sys.modules.get("opensora.utils.config")
    skip = (globals(), getattr(config, "__dict__", None))
    frames = []
    while frame is not None and len(frames) < 256:
        if not any(frame.f_globals is ns for ns in skip):
            frames.append(frame)
        frame = frame.f_back
    return frames


def _unhookable(problem: str, is_2_0: bool = True) -> bool:
    """Say once that 2.0's config parsing cannot be hooked; refuse the config being read if it has a scheduler."""
    read = _config_being_read() if is_2_0 else None
    if read is not None and read.get("scheduler", None) is not None:
        raise Opensora2LayoutError(
            f"this config has scheduler = {describe(read.get('scheduler'))}, but {problem}, so rflow-timeshift "
            "cannot hook Open-Sora 2.0's config parsing and the scheduler would silently not apply. Fix that import "
            "(2.0 needs Python 3.10+), or remove the scheduler key")
    if not _UNHOOKABLE_WARNED:
        _UNHOOKABLE_WARNED.append(problem)
        warnings.warn(f"an 'opensora' package is installed but {problem}: Open-Sora 2.0's configs cannot select "
                      "rflow-timeshift in this process (a config with a scheduler key whose custom_imports first "
                      "imports this package is refused). Everything else works as without Open-Sora 2.0.",
                      stacklevel=3)
    return False


def _config_being_read() -> Optional[Mapping[str, Any]]:
    """The config mmengine's ``Config.fromfile`` is reading, when this import is its ``custom_imports``."""
    frame: Optional[FrameType] = sys._getframe(1)
    try:
        while frame is not None:
            if frame.f_code.co_name == "fromfile" and str(frame.f_globals.get("__name__")).startswith("mmengine."):
                read = frame.f_locals.get("cfg_dict")
                return read if isinstance(read, Mapping) else None
            frame = frame.f_back
        return None
    finally:
        del frame
