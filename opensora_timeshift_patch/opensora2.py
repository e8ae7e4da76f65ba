"""Open-Sora 2.0: ``rflow-timeshift`` as a drop-in for its training script and its inference schedule.

2.0 builds no scheduler. Its ``scripts/diffusion/train.py`` binds ``time_shift`` and ``get_res_lin_function`` from
``opensora.utils.sampling`` at import and parses its config inside ``main()``; each batch's ``prepare_inputs`` then
computes ``alpha = get_res_lin_function()((H W) // 4) * sqrt(T)`` from the latent ``x_0``, draws
``t = sigmoid(randn(bs))`` (the same on every rank: one seed, no rank offset) and calls ``time_shift(alpha, t)``.
Inference calls ``opensora.utils.sampling.get_schedule``. Both names are looked up when called, so they can be
replaced while the config is parsed: importing this package (the config's ``custom_imports``) wraps
``opensora.utils.config.merge_args``, the last step of 2.0's ``parse_configs``, and when the parsed config holds
``scheduler = dict(type="rflow-timeshift", ...)`` it binds

- ``time_shift`` in the script that called ``parse_configs``: training timesteps drawn and shifted by the settings;
- ``opensora.utils.sampling.get_schedule``: the inference schedule shifted by the same settings.

With no settings both give stock 2.0's bits; without a ``scheduler`` key nothing is replaced; :func:`unpatch`
restores everything. The latent shape is read from the caller's own ``x_0`` (and ``z`` at inference) and checked
against the numbers stock passed, so a script that is not shaped like 2.0's is refused, never silently mis-read.
"""

from __future__ import annotations

import importlib
import importlib.util
import logging
import math
import sys
from types import FrameType, ModuleType
from typing import Any, Callable, Dict, List, Mapping, Optional, Sequence, Tuple

import numpy as np
import torch
import torch.distributed as dist
from torch import Tensor

from .core import Recipe
from .guard import judge
from .sampling import TimestepDistribution
from .settings import DISTRIBUTIONS, SETTINGS, Setting, SettingError, describe
from .shift import MetaError, TimestepShift

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
                           and values["t_range"] is None
                           and all(self.distribution.params.get(k, v) == v
                                   for k, v in DISTRIBUTIONS.defaults("logit-normal").items()))
        # The pixel meta (clip size) matter only to the 'sqrt' rule and to policies of the pixel frame count.
        self.needs_pixels = (self.shift.resolution_shift == "sqrt"
                             or self.shift.shift_mode not in ("latent", "spatial"))

    def __repr__(self) -> str:
        shown = ", ".join(f"{k}={v!r}" for k, v in self.given.items()) or "no settings: stock 2.0's rule"
        return f"{SCHEDULER_TYPE}({shown})"

    def factor(self, latent_frames: int, tokens: int, pixel_thw: Optional[Tuple[int, int, int]] = None) -> float:
        """The shift factor ``alpha`` for one bucket, as a Python float (what stock 2.0 passes to ``time_shift``).

        ``latent_frames`` and ``tokens`` are the latent's length and token count; ``pixel_thw`` the clip's frames,
        height and width, needed by the 'sqrt' rule and the pixel-frame policies only. Computed on the host in
        float64 with stock's operations, and judged there by the guard (:func:`~.guard.judge`, the same decision
        as on 1.x), at no device cost: ``on_degenerate`` says what a T_eff <= 0 or an alpha outside [0.01, 100]
        gets.
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

    def base_timesteps(self, t_stock: Tensor, step: Optional[int]) -> Tensor:
        """Unshifted training timesteps in [0, 1], one per sample, on ``t_stock``'s device (float32 or wider)."""
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
        return self.distribution(u).to(torch.promote_types(t_stock.dtype, torch.float32))

    def training_timesteps(self, t_stock: Tensor, latent_thw: Tuple[int, int, int],
                           pixel_thw: Optional[Tuple[int, int, int]] = None, step: Optional[int] = None) -> Tensor:
        """What train.py's ``time_shift(alpha, t)`` returns for one bucket's batch: ``t_stock`` is stock's draw
        (one floating t per sample, used as it is when the settings ask for stock's distribution)."""
        if not (isinstance(t_stock, Tensor) and t_stock.dim() == 1 and t_stock.is_floating_point()):
            raise SettingError(f"t={describe(t_stock)} is not allowed: one floating timestep per sample, shape (B,)")
        if not (isinstance(latent_thw, (tuple, list)) and len(latent_thw) == 3):
            raise SettingError(f"latent_thw={describe(latent_thw)} is not allowed: the latent's (T, H, W)")
        t = self.base_timesteps(t_stock, step)
        if not self.use_timestep_transform:
            return t
        # Stock counts (H W) // 4 whatever the model's patch size; patch_size, when set, counts as inference does.
        h, w = (Setting(name, "int", None, "", low=1, high=1_000_000).check(v)
                for name, v in zip(("latent height", "latent width"), latent_thw[1:]))
        patch = 2 if self.patch_size is None else self.patch_size
        tokens = _tokens((h, w), patch)
        if tokens < 1:
            raise MetaError(f"a latent of {h}x{w} holds no token of patch size {patch}: nothing to shift (2.0's model "
                            "cannot pack it either)")
        return _shifted(self.shift, t, self.factor(latent_thw[0], tokens, pixel_thw))

    def schedule(self, num_steps: int, tokens: int, latent_frames: int,
                 pixel_thw: Optional[Tuple[int, int, int]] = None) -> List[float]:
        """What ``get_schedule`` returns: ``num_steps + 1`` times from 1 down to 0, shifted."""
        timesteps = torch.linspace(1, 0, _STEPS.check(num_steps) + 1)
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
_STEPS = Setting("num_steps", "int", None, "", low=0, high=100_000)


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


def _say_once(hook: Any, text: str) -> None:
    """One line on rank 0, the first time a hook takes effect."""
    if hook.announced:
        return
    hook.announced = True
    if not (dist.is_available() and dist.is_initialized()) or dist.get_rank() == 0:
        logger.info(text)


class TrainingTimeShift:
    """Bound as train.py's ``time_shift(alpha, t)``: returns the configured timesteps for the caller's batch."""

    def __init__(self, timesteps: Opensora2Timesteps, stock_lin: Callable[..., Any]) -> None:
        self.timesteps, self.stock_lin, self.announced = timesteps, stock_lin, False

    def __call__(self, alpha: Any, t: Tensor) -> Tensor:
        caller = sys._getframe(1)
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
        _say_once(self, f"rflow-timeshift: Open-Sora 2.0 training timesteps now come from {self.timesteps!r} "
                        "(train.py's time_shift replaced)")
        return self.timesteps.training_timesteps(t, latent, _shape5(pixels["x"]) if pixels else None, step)


class InferenceSchedule:
    """Bound as ``opensora.utils.sampling.get_schedule``: the same signature, shifted by the settings.

    An explicit ``shift_alpha`` (``sampling_option.flow_shift``), ``shift=False`` (``sampling_option.shift``) or
    anchors of the caller's own keep stock's meaning.
    """

    def __init__(self, timesteps: Opensora2Timesteps, stock: Callable[..., List[float]]) -> None:
        self.timesteps, self.stock, self.announced = timesteps, stock, False

    def __call__(self, num_steps: int, image_seq_len: int, num_frames: int, shift_alpha: Optional[float] = None,
                 base_shift: float = 1, max_shift: float = 3, shift: bool = True) -> List[float]:
        if shift_alpha is not None and shift and not (isinstance(shift_alpha, (int, float)) and
                                                      not isinstance(shift_alpha, bool) and
                                                      math.isfinite(shift_alpha) and shift_alpha > 0):
            raise SettingError(f"sampling_option.flow_shift={describe(shift_alpha)} is not allowed: an explicit shift "
                               "factor alpha is a finite number > 0")
        if not shift or shift_alpha is not None or (base_shift, max_shift) != (1, 3):
            return self.stock(num_steps, image_seq_len, num_frames, shift_alpha, base_shift, max_shift, shift)
        for name, value in (("num_steps", num_steps), ("image_seq_len", image_seq_len), ("num_frames", num_frames)):
            Setting(f"get_schedule {name}", "int", None, "", low=0 if name == "num_steps" else 1).check(value)
        tokens, pixels = image_seq_len, None
        ts = self.timesteps
        if ts.patch_size is not None or ts.needs_pixels:
            caller = sys._getframe(1)
            found = _locals_of(caller, ("z", "opt", "patch_size"), 1)
            del caller
            latent = _shape5(found["z"]) if found else None
            if latent is None or latent[0] != num_frames or _tokens(latent[1:], found["patch_size"]) != image_seq_len:
                raise Opensora2LayoutError(
                    f"{ts!r} needs the latent and clip sizes at inference, read from 2.0's api_fn (z, opt, "
                    "patch_size), but get_schedule's caller does not bind them as 2.0's does")
            if ts.patch_size is not None:
                tokens = _tokens(latent[1:], ts.patch_size)
            opt = found["opt"]
            pixels = (getattr(opt, "num_frames", None), getattr(opt, "height", None), getattr(opt, "width", None))
        _say_once(self, f"rflow-timeshift: Open-Sora 2.0's inference schedule now comes from {ts!r} "
                        "(opensora.utils.sampling.get_schedule replaced)")
        return ts.schedule(int(num_steps), int(tokens), int(num_frames), pixels)


# --- binding and unbinding --------------------------------------------------------------------------------

_ORIGINALS: List[Tuple[Any, str, Any]] = []  # (module or globals dict, name, what it bound before us)
_MARK = "__opensora_timeshift__"


def _get(namespace: Any, name: str) -> Any:
    return namespace.get(name) if isinstance(namespace, dict) else getattr(namespace, name, None)


def _bind(namespace: Any, name: str, value: Any) -> None:
    current = _get(namespace, name)
    if not any(ns is namespace and n == name for ns, n, _ in _ORIGINALS):
        # What a hook replaced travels with it too, so a reloaded copy of this module can still restore it.
        _ORIGINALS.append((namespace, name, getattr(current, "original", current) if _ours(current) else current))
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
    return bool(getattr(obj, _MARK, False))


def unpatch() -> None:
    """Restore every name bound in Open-Sora 2.0's modules and script; a no-op when none is.

    Also undoes hooks that an earlier import of this package bound (a reload, a re-import), from what they carry.
    """
    _restore()
    for module_name, name in (("opensora.utils.config", "merge_args"), ("opensora.utils.sampling", "get_schedule")):
        module = sys.modules.get(module_name)
        while module is not None and _ours(getattr(module, name, None)):
            setattr(module, name, getattr(module, name).original)
    script = getattr(sys.modules.get("__main__"), "__dict__", {})
    while _ours(script.get("time_shift")):
        script["time_shift"] = script["time_shift"].original


def is_hooked() -> bool:
    """Whether a 2.0 training or inference hook is bound."""
    return any(name in ("time_shift", "get_schedule") for _, name, _ in _ORIGINALS)


def _module(name: str, needs: Sequence[str]) -> ModuleType:
    module = sys.modules.get(name) or importlib.import_module(name)
    missing = [n for n in needs if not callable(getattr(module, n, None))]
    if missing:
        raise Opensora2LayoutError(
            f"{name} has no {', '.join(missing)}: this Open-Sora is not the 2.0 layout rflow-timeshift hooks into "
            "(branch main of hpcaitech/Open-Sora). Remove the scheduler key, or pin that Open-Sora")
    return module


def install(cfg: Mapping[str, Any], script_globals: Optional[Dict[str, Any]] = None) -> bool:
    """Bind the hooks for a parsed 2.0 config; returns whether it selects ``rflow-timeshift``.

    ``script_globals`` are the training script's module globals (where ``time_shift`` is bound); None binds the
    inference schedule only. A config without a ``scheduler`` key restores stock.
    """
    _restore(keep=("merge_args",))
    scheduler = cfg.get("scheduler", None)
    if scheduler is None:
        return False
    if not isinstance(scheduler, Mapping) or scheduler.get("type") != SCHEDULER_TYPE:
        got = scheduler.get("type") if isinstance(scheduler, Mapping) else scheduler
        raise SettingError(f"scheduler type={describe(got)} is not allowed on Open-Sora 2.0, which builds no "
                           f"scheduler: use dict(type={SCHEDULER_TYPE!r}, ...) or remove the scheduler key")
    timesteps = Opensora2Timesteps(**{k: v for k, v in scheduler.items() if k != "type"})
    sampling = _module("opensora.utils.sampling", ("time_shift", "get_res_lin_function", "get_schedule"))
    stock_schedule = _original(sampling, "get_schedule")
    if script_globals is not None and "time_shift" in script_globals:
        bound = script_globals["time_shift"]
        if bound is not sampling.time_shift and not _ours(bound):
            raise Opensora2LayoutError(
                f"the training script's time_shift is {describe(bound)}, not opensora.utils.sampling.time_shift: "
                "rflow-timeshift replaces only 2.0's own. Restore its import or remove the scheduler key")
        _bind(script_globals, "time_shift", TrainingTimeShift(timesteps, sampling.get_res_lin_function))
    _bind(sampling, "get_schedule", InferenceSchedule(timesteps, stock_schedule))
    return True


def _original(namespace: Any, name: str) -> Any:
    for ns, n, original in _ORIGINALS:
        if ns is namespace and n == name:
            return original
    return _get(namespace, name)


def hook_config_parsing() -> bool:
    """At import: when Open-Sora 2.0 is installed, make its config parsing install the hooks.

    2.0 is recognised by ``opensora.utils.config`` (1.x has ``opensora.utils.config_utils``); it is light (mmengine
    and torch), so it is imported here even when the package is imported before Open-Sora parses its config.
    Returns whether 2.0 was found.
    """
    if "opensora.utils.config" not in sys.modules:
        try:
            if importlib.util.find_spec("opensora.utils.config") is None:
                return False
        except ImportError:  # no opensora, or one whose package __init__ fails: not ours to hook
            return False
    config = _module("opensora.utils.config", ("parse_configs", "merge_args"))
    if _ours(config.merge_args):
        if not any(ns is config for ns, _, _ in _ORIGINALS):  # bound by an earlier import: adopt its original
            _ORIGINALS.append((config, "merge_args", config.merge_args.original))
        return True
    merge_args, parse_configs = config.merge_args, config.parse_configs

    def merge_args_then_install(cfg: Any, args: Any) -> Any:
        cfg = merge_args(cfg, args)
        install(cfg, _caller_globals_of(getattr(parse_configs, "__code__", None)))
        return cfg

    _bind(config, "merge_args", merge_args_then_install)
    return True


def _caller_globals_of(code: Any) -> Optional[Dict[str, Any]]:
    """The module globals of whoever called the function running ``code`` (the script calling parse_configs)."""
    frame: Optional[FrameType] = sys._getframe(1)
    try:
        while frame is not None:
            if frame.f_code is code:
                return frame.f_back.f_globals if frame.f_back is not None else None
            frame = frame.f_back
        return None
    finally:
        del frame
