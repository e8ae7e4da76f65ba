"""``rflow-timeshift``: Open-Sora's rectified-flow scheduler with a chosen timestep-shift policy."""

from __future__ import annotations

import importlib.util
import warnings
from typing import Any, Callable, Dict, List, Mapping, Optional, Sequence, Tuple

import torch
from torch import Tensor
from torch.distributions import LogisticNormal

from ..core import Recipe
from .patch import swapped_transform
from ..per_bucket import BucketRule
from .rflow import (Check, StandaloneRFlow, guarded_table, mark_table_checked, mask_problem, refuse,
                    sampling_grid, timestep_problem)
from ..sampling import TimestepDistribution
from ..settings import OPENSORA_ONLY, SETTINGS, SettingError, describe, is_numpy_bool, settings_doc
from ..shift import MetaError, TimestepShift, read_meta
from ..telemetry import Telemetry
from ..weighting import LossWeighting

# Open-Sora 1.3 keywords of RFLOW.sample that only its own RFLOW implements: the standalone backend takes them at
# their inert values (None, False, empty) and refuses anything else.
_OPENSORA_ONLY_SAMPLE = ("neg_prompts", "z_cond", "z_cond_mask", "image_cfg_scale", "use_sdedit", "mask_index",
                         "use_oscillation_guidance_for_text", "use_oscillation_guidance_for_image")


_PARTIAL_INSTALL_WARNED: List[str] = []


def warn_partial_install(problem: str) -> None:
    """Say once per process that an installed Open-Sora could not be used, and what rflow-timeshift does instead."""
    if not _PARTIAL_INSTALL_WARNED:
        _PARTIAL_INSTALL_WARNED.append(problem)
        warnings.warn(f"an 'opensora' package is installed but {problem}: rflow-timeshift is registered in its own "
                      "registry and runs on its standalone rectified flow. Install Open-Sora's requirements to use "
                      "its RFLOW, or pass backend='opensora' to make this an error.", stacklevel=3)


def _stock_rflow(backend: str) -> Optional[type]:
    """Open-Sora 1.x's ``RFLOW`` class for ``backend``, or None for the standalone backend."""
    if backend == "standalone" or (backend == "auto" and importlib.util.find_spec("opensora") is None):
        return None
    try:
        from opensora.schedulers.rf import RFLOW
    except ImportError as err:
        if backend == "opensora":
            raise ImportError(
                f"backend='opensora' needs Open-Sora 1.2 or 1.3's opensora.schedulers.rf, which failed to import: "
                f"{err}. Install Open-Sora from its checkout with its requirements, or use backend='standalone'."
            ) from err
        if importlib.util.find_spec("opensora.schedulers") is not None:  # 1.x with a missing dependency
            warn_partial_install(f"opensora.schedulers.rf failed to import ({err})")
        return None  # Open-Sora 2.0 has no opensora.schedulers: nothing to warn about
    return RFLOW


class RFlowTimeShift:
    """Rectified-flow scheduler whose timestep shift follows a temporal-size policy.

    Registered as ``type="rflow-timeshift"``. It takes every keyword of Open-Sora 1.2/1.3's ``rflow`` and keeps
    its call signatures; only the timesteps differ. With Open-Sora importable it delegates everything but the
    timesteps to Open-Sora's own ``RFLOW``; without it, to :class:`~.rflow.StandaloneRFlow`. With the same RNG
    state, ``shift_mode="latent"`` draws, shifts and samples exactly as stock ``rflow`` on 17k-frame clips and
    images (``"v13"`` likewise against Open-Sora 1.3), for meta in float32; Open-Sora casts the meta to bf16,
    and stock then rounds the shift factor in bf16 where this scheduler computes it in float32.

    Every setting is declared once in :mod:`.settings` (listed below) and validated there when the scheduler is
    built, as are the selected policy's parameters (e.g. ``micro_frame_size``) and distribution's (``loc``,
    ``scale``, ``mode_scale``). Open-Sora 1.3's guidance and conditioning keywords (``use_oscillation_guidance``,
    ...) go to its ``RFLOW``.

    Settings:
"""

    def __init__(self, **settings: Any) -> None:
        self.recipe = Recipe(settings, release="1.x")
        values = self.recipe.values
        self.settings: Dict[str, Any] = self.recipe.settings
        self.distribution: TimestepDistribution = self.recipe.distribution
        self.shift: TimestepShift = self.recipe.shift
        self.weighting: LossWeighting = self.recipe.weighting
        self.rules: Tuple[BucketRule, ...] = self.recipe.rules
        self.num_sampling_steps: int = values["num_sampling_steps"]
        self.num_timesteps: int = values["num_timesteps"]
        self.cfg_scale: float = values["cfg_scale"]
        self.use_discrete_timesteps: bool = values["use_discrete_timesteps"]
        self.use_timestep_transform: bool = values["use_timestep_transform"]
        self.sample_method: str = values["sample_method"]
        self.uniform_over_threshold: Optional[float] = values["uniform_over_threshold"]
        self.timestep_rng: str = values["timestep_rng"]
        self.timestep_seed: int = values["timestep_seed"]
        self.stratified: bool = values["stratified"]
        self.step: int = values["timestep_start_step"]
        self._groups: Tuple[Any, Any] = (None, None)
        # Stock's draws, kept call for call where they apply, so the same RNG state gives the same timesteps.
        self._stock_draw = (self.timestep_rng == "global" and values["t_range"] is None and not self.rules
                            and values["noise_range"] is None and self.sample_method in ("uniform", "logit-normal"))
        if self._stock_draw and self.sample_method == "logit-normal":
            loc, scale = self.distribution.params.get("loc", 0.0), self.distribution.params.get("scale", 1.0)
            self._logistic_normal = LogisticNormal(torch.tensor([loc]), torch.tensor([scale]))
        self.backend, self.rflow = _backend(values, self.recipe.rflow_keywords)
        self.telemetry: Optional[Telemetry] = None
        if values["telemetry"] is not None:
            self.telemetry = Telemetry(**values["telemetry"], num_timesteps=self.num_timesteps,
                                       bucket=self._telemetry_bucket)

    def __repr__(self) -> str:
        stream = f", timestep_seed={self.timestep_seed}, stratified={self.stratified}" * (self.timestep_rng == "per_sample")
        return (f"RFlowTimeShift(backend={self.backend!r}, num_timesteps={self.num_timesteps}, "
                f"use_timestep_transform={self.use_timestep_transform}, distribution={self.distribution!r}, "
                f"timestep_rng={self.timestep_rng!r}{stream}, shift={self.shift!r})")

    # --- state ----------------------------------------------------------------------------------------------

    def set_process_groups(self, data_parallel_group: Any = None, sequence_parallel_group: Any = None) -> None:
        """Tell the per-sample stream which ranks are data-parallel replicas (default: Open-Sora's groups, or the world)."""
        self._groups = (data_parallel_group, sequence_parallel_group)
        if self.telemetry is not None:
            self.telemetry.groups = self._groups

    def state_dict(self) -> Dict[str, Any]:
        """What a checkpoint needs to resume the timestep stream exactly: the step count and the seed (and, with
        ``telemetry``, its statistics: this rank's, so each rank saves and loads its own)."""
        state: Dict[str, Any] = {"step": self.step, "timestep_seed": self.timestep_seed}
        if self.telemetry is not None:
            state["telemetry"] = self.telemetry.state_dict()
        return state

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        """Resume from :meth:`state_dict`; a different seed is refused, since it would silently change the stream.
        Telemetry statistics in the state are continued when telemetry is on (and not loaded when it is off)."""
        if not isinstance(state, Mapping) or "step" not in state or set(state) - {"step", "timestep_seed",
                                                                                   "telemetry"}:
            raise SettingError(f"state={describe(state)} is not allowed: load the dict that state_dict() returned "
                               "(it has 'step' and 'timestep_seed', and 'telemetry' with telemetry on, nothing else)")
        seed = SETTINGS["timestep_seed"].check(state.get("timestep_seed", self.timestep_seed))
        if seed != self.timestep_seed:
            raise SettingError(f"the checkpoint's timestep_seed={seed!r} differs from this scheduler's "
                               f"{self.timestep_seed!r}: resume with the same seed, or start a new stream deliberately "
                               "by not loading the scheduler state")
        self.step = SETTINGS["timestep_start_step"].check(state["step"])
        if self.telemetry is not None and "telemetry" in state:
            self.telemetry.load_state_dict(state["telemetry"])

    def _telemetry_bucket(self, height: float, width: float, num_frames: float, latent_thw: Tuple[int, ...]
                          ) -> Tuple[Optional[int], Callable[[Tensor], Tensor], Optional[float]]:
        """For the telemetry: a clip's rule, the quantile function of its shifted timestep (the training code's own
        draw and shift, of uniforms) and Open-Sora 1.3's redraw threshold where it applies to the clip."""
        rule, recipe = self.recipe.for_clip(num_frames, height, width)

        def quantile(u: Tensor) -> Tensor:
            if not recipe.use_timestep_transform:
                return recipe.timesteps(u)
            meta = {k: torch.full(u.shape, float(v), dtype=torch.float64)
                    for k, v in (("height", height), ("width", width), ("num_frames", num_frames))}
            return recipe.training_timesteps(u, meta, latent_thw[0], tuple(latent_thw[1:]))

        redraw = self.uniform_over_threshold if (self.use_timestep_transform and self.shift.scale_temporal
                                                 and num_frames != 1) else None
        return rule, quantile, redraw

    # --- timesteps ------------------------------------------------------------------------------------------

    def sample_timesteps(self, x_start: Tensor, model_kwargs: Optional[Mapping[str, Any]],
                         step: Optional[int] = None) -> Tensor:
        """Training timesteps in [0, N] for latents ``(B, C, T, H, W)``: drawn, then shifted.

        ``step`` keys the per-sample stream (default: this scheduler's count of ``training_losses`` calls).
        """
        recipe, n, device = self.recipe, _check_latents("x_start", x_start), x_start.device
        step = self.step if step is None else SETTINGS["timestep_start_step"].check(step)
        redraw_u = None
        if self.timestep_rng == "per_sample":
            u, redraw_u = recipe.stream_uniforms(n, device, step, self._groups)
        elif not self._stock_draw:
            u = torch.rand((n,), device=device, dtype=torch.float64)
        elif self.use_discrete_timesteps:
            u, t = None, torch.randint(0, self.num_timesteps, (n,), device=device)
        elif self.sample_method == "uniform":
            u, t = None, torch.rand((n,), device=device) * self.num_timesteps
        else:
            u, t = None, self._logistic_normal.sample((n,))[:, 0].to(device) * self.num_timesteps
        if not self.use_timestep_transform:
            return t if u is None else recipe.timesteps(u)
        latent_frames, latent_hw = _latent_frames(x_start), _latent_hw(x_start)
        if self.rules:  # one uniform per sample, mapped by the recipe of the rule it falls under
            return recipe.by_rule(model_kwargs, n, device, lambda rule, meta: rule.training_timesteps(
                u, meta, latent_frames, latent_hw))
        if recipe.factor_dependent:  # the draw needs each sample's factor first
            return recipe.training_timesteps(u, model_kwargs, latent_frames, latent_hw)
        if u is not None:
            t = recipe.timesteps(u)
        return self.shift(t, model_kwargs, self.num_timesteps, latent_frames=latent_frames,
                          uniform_over_threshold=self.uniform_over_threshold, latent_hw=latent_hw,
                          resample_u=redraw_u)

    def sampling_timesteps(self, z: Tensor, additional_args: Optional[Mapping[str, Any]]) -> List[Tensor]:
        """The timesteps :meth:`sample` visits, from t = N down, one batch-length tensor per step."""
        grid = sampling_grid(self.num_sampling_steps, self.num_timesteps, _check_latents("z", z), z.device,
                             self.use_discrete_timesteps)
        shift = self._sampling_shift(z)
        return grid if shift is None else [shift(t, additional_args) for t in grid]

    def training_losses(self, model: Callable[..., Tensor], x_start: Tensor,
                        model_kwargs: Optional[Dict[str, Any]] = None, noise: Optional[Tensor] = None,
                        mask: Optional[Tensor] = None, weights: Optional[Tensor] = None, t: Optional[Tensor] = None,
                        *, model_args: Optional[Dict[str, Any]] = None, step: Optional[int] = None,
                        **kwargs: Any) -> Dict[str, Tensor]:
        """Open-Sora's ``training_losses`` (1.2 names it ``model_kwargs``, 1.3 ``model_args``) with shifted timesteps.

        Each call counts one step of the per-sample stream; ``step`` overrides the count for this call. On the
        standalone backend, 1.3's ``x_gt``, ``noise_disable_threshold``, ``text_uncond_prob`` and (with no
        ``mask_index``) ``x_noisy_ref`` keep their stock meaning; i2v/v2v conditioning needs Open-Sora's RFLOW.
        Open-Sora's per-timestep ``weights`` are indexed as :func:`~.rflow.weight_index` says; Open-Sora's own RFLOW
        takes them only with integer timesteps.

        Inputs that would make a loss NaN, infinite or negative are handled as ``on_degenerate`` says:

        - ``"error"`` raises a :class:`~.settings.SettingError` naming the value: a ``weights`` entry that is NaN,
          infinite or negative; a ``mask`` row with no True frame (its masked mean is 0/0); an explicit ``t`` outside
          [0, N] or NaN; a NaN or negative weight from a registered ``loss_weighting``. One host copy of a few flags
          per call, only when there is a mask, an explicit ``t``, a registered weighting or a new table to look at:
          a ``weights`` tensor is checked once, and again only after it changes (its ``_version``).
        - ``"clamp"``: a row with no frame gets loss 0 (and no gradient); ``t`` is clamped into [0, N]; a negative
          ``weights`` entry counts as 0, as does a weighting's NaN or negative weight. No host sync: a NaN ``t`` or
          a NaN or +inf ``weights`` entry, which has nothing to be clamped to, stops the run with a device-side assert.
        - ``"ignore"``: stock's numbers (a ``t`` outside [0, N], a negative weight), with a device-side assert where
          stock's loss could only be NaN or infinite: a row with no frame, a non-finite ``t`` or ``weights`` entry,
          and a weighting's NaN or negative weight. No host sync.
        """
        if model_args is not None:
            if model_kwargs is not None:
                raise TypeError("pass the model arguments once, as model_kwargs (Open-Sora 1.2) or model_args (1.3)")
            model_kwargs = model_args
        batch = _check_latents("x_start", x_start)
        _check_mask(mask, x_start, torch.bool)
        _check_weights(weights, self.num_timesteps)
        given_t = t is not None
        if t is not None and (not isinstance(t, Tensor) or t.shape != (batch,) or t.dtype.is_complex or t.dtype == torch.bool):
            raise SettingError(f"t={describe(t)} is not allowed: pass one real timestep per sample, shape ({batch},)")
        step = self.step if step is None else SETTINGS["timestep_start_step"].check(step)
        if t is None:
            t = self.sample_timesteps(x_start, model_kwargs, step)
        guard, n = self.shift.on_degenerate, self.num_timesteps
        high, why = n, " (t = N is pure noise)"
        if weights is not None and self.backend == "opensora":
            if t.is_floating_point():
                raise SettingError("weights with continuous timesteps: Open-Sora's RFLOW indexes weights[t], which needs "
                                   "integer t (use_discrete_timesteps=True with use_timestep_transform=False, or an "
                                   "integer t=). The standalone backend takes weights[floor(t)]")
            if len(weights) == n:
                high, why = n - 1, f": Open-Sora's RFLOW indexes weights[t], and a table of {n} has no entry for t = {n}"

        checks: List[Check] = []  # the "error" path's, looked at in one host copy
        table = weights
        if weights is not None:
            table, table_checks = guarded_table(weights, guard)
            checks += table_checks
        has_frame = None if mask is None else mask.any(dim=1)
        loss_mask = mask
        if has_frame is not None and guard == "error":
            checks.append((~has_frame.all(), lambda: mask_problem(mask)))
        elif has_frame is not None and guard == "clamp":  # such a row is averaged over all its frames, then zeroed
            loss_mask = mask | ~has_frame[:, None]
        elif has_frame is not None:
            torch._assert_async(has_frame.all(), "a mask row has no noised frame: its loss would be 0/0 = NaN")
        if given_t and guard == "error":
            explicit = t
            checks.append((~((t >= 0) & (t <= high)).all(), lambda: timestep_problem(explicit, high, why)))
        elif given_t and guard == "clamp":
            if t.is_floating_point():
                torch._assert_async(~t.isnan().any(), "t holds a NaN timestep")
            t = t.clamp(0, high)
        elif given_t and t.is_floating_point():
            torch._assert_async(t.isfinite().all(), "t holds a NaN or infinite timestep")
        w = None if self.weighting.is_identity else self.weighting.unclipped(t / n)
        if w is not None and self.weighting.checked_per_call and guard == "error":
            unclipped, at = w, t / n
            checks.append(((w.isnan() | (w < 0)).any(), lambda: self.weighting.problem(at.cpu(), unclipped.cpu())))
        refuse(checks)
        if weights is not None and guard == "error":
            mark_table_checked(weights, guard)

        self.step += 1  # counted once the step's timesteps exist, so a refused batch does not advance the stream
        if self.backend == "opensora":
            terms = self.rflow.training_losses(model, x_start, model_kwargs, noise, loss_mask, table, t, **kwargs)
        else:
            terms = self.rflow.training_losses(model, x_start, model_kwargs, noise, loss_mask, table, t,
                                               **_standalone_training_keywords(kwargs))
        loss = terms["loss"]
        if has_frame is not None and guard == "clamp":
            loss = torch.where(has_frame, loss, torch.zeros_like(loss))
        if w is not None:  # a per-sample factor, as stock applies its own weights
            loss = loss * self.weighting.clip(w, guard).to(loss.dtype)
        terms["loss"] = loss
        if self.telemetry is not None:
            self._observe(t, loss, model_kwargs, x_start, drawn=not given_t)
        return terms

    def _observe(self, t: Tensor, loss: Tensor, model_kwargs: Any, x_start: Tensor, drawn: bool) -> None:
        telemetry = self.telemetry
        assert telemetry is not None
        batch = x_start.shape[0]
        try:
            meta = read_meta(model_kwargs, torch.float64, x_start.device, batch)
        except MetaError as err:
            raise MetaError(f"telemetry keys its buckets by the batch meta: {err}") from None
        height, width, num_frames = (x.expand(batch) for x in meta)
        telemetry.observe(t, loss, height, width, num_frames, tuple(x_start.shape[2:]), drawn)
        if telemetry.due():
            telemetry.report(self.step)

    def sample(self, model: Callable[..., Tensor], text_encoder: Any, z: Tensor, prompts: Sequence[str], device: Any,
               additional_args: Optional[Dict[str, Any]] = None, mask: Optional[Tensor] = None,
               guidance_scale: Optional[float] = None, progress: bool = True, **kwargs: Any) -> Tensor:
        """Open-Sora's ``sample``: Euler steps with classifier-free guidance over the shifted grid."""
        batch = _check_latents("z", z)
        if isinstance(prompts, (str, bytes)) or not isinstance(prompts, Sequence) or len(prompts) != batch or \
                not all(isinstance(p, str) for p in prompts):
            raise SettingError(f"prompts={describe(prompts)} is not allowed: give a list of {batch} prompts, one per "
                               f"latent in z (shape {tuple(z.shape)})")
        _check_mask(mask, z, torch.float32)
        if guidance_scale is not None:
            guidance_scale = SETTINGS["cfg_scale"].check(guidance_scale)
        if not isinstance(progress, bool) and not is_numpy_bool(progress):
            raise SettingError(f"progress={describe(progress)} is not allowed: use True or False")
        shift = self._sampling_shift(z)
        call = dict(additional_args=additional_args, mask=mask, guidance_scale=guidance_scale, progress=progress)
        if self.backend == "opensora":
            if shift is None:
                return self.rflow.sample(model, text_encoder, z, prompts, device, **call, **kwargs)
            with swapped_transform(lambda t, args, *_, **__: shift(t, args)):
                return self.rflow.sample(model, text_encoder, z, prompts, device, **call, **kwargs)
        for key, value in kwargs.items():
            if key not in _OPENSORA_ONLY_SAMPLE:
                raise TypeError(f"rflow-timeshift's sample() got an unexpected keyword argument {key!r}")
            _inert_or_refuse(key, value)
        return self.rflow.sample(model, text_encoder, z, prompts, device, **call, timestep_fn=shift)

    def _sampling_shift(self, z: Tensor) -> Optional[Callable[[Tensor, Any], Tensor]]:
        if not self.use_timestep_transform:
            return None
        latent_frames, latent_hw = _latent_frames(z), _latent_hw(z)

        def shift(t: Tensor, args: Any) -> Tensor:
            if self.rules:
                return self.recipe.by_rule(args, t.shape[0], t.device, lambda rule, meta: rule.shift(
                    t, meta, self.num_timesteps, latent_frames=latent_frames, latent_hw=latent_hw))
            return self.shift(t, args, self.num_timesteps, latent_frames=latent_frames, latent_hw=latent_hw)

        return shift


RFlowTimeShift.__doc__ = (RFlowTimeShift.__doc__ or "") + settings_doc(SETTINGS)


def _backend(values: Dict[str, Any], opensora_only: Dict[str, Any]) -> Tuple[str, Any]:
    """Open-Sora's own RFLOW with its 1.3-only keywords, or the standalone rectified flow (which refuses them)."""
    common = {k: values[k] for k in ("num_sampling_steps", "num_timesteps", "cfg_scale", "use_discrete_timesteps")}
    rflow = _stock_rflow(values["backend"])
    if rflow is not None:
        return "opensora", rflow(**common, use_timestep_transform=values["use_timestep_transform"], **opensora_only)
    for key, value in opensora_only.items():
        if value != OPENSORA_ONLY[key].default:
            raise SettingError(f"{key}={describe(value)} needs Open-Sora 1.3's RFLOW (backend='opensora'); the "
                               "standalone backend implements plain classifier-free guidance. Remove it or install "
                               "Open-Sora.")
    return "standalone", StandaloneRFlow(**common)


def _check_latents(name: str, x: Any) -> int:
    """The batch size of latents ``(B, C, T, H, W)``, refusing other shapes and empty ones by name."""
    if not isinstance(x, Tensor) or x.dim() != 5 or not x.is_floating_point():
        raise SettingError(f"{name}={describe(x)} is not allowed: latents must be a floating tensor (B, C, T, H, W)")
    if 0 in x.shape:
        axes = "BCTHW" if x.dim() == 5 else None
        empty = ", ".join(axes[i] if axes else str(i) for i, size in enumerate(x.shape) if size == 0)
        raise SettingError(f"{name} of shape {tuple(x.shape)} is empty along {empty}: the latent tensor has no "
                           "samples, frames or pixels to train on (check the VAE's output)")
    return x.shape[0]


def _check_mask(mask: Any, x: Tensor, kind: torch.dtype) -> None:
    """A frame mask (B, T): bool in training (which frames are noised), floating in sampling (when each is)."""
    if mask is None:
        return
    want = (x.shape[0], x.shape[2])
    right_kind = isinstance(mask, Tensor) and (mask.dtype == torch.bool if kind == torch.bool else mask.is_floating_point())
    if not right_kind or tuple(mask.shape) != want:
        what = "bool" if kind == torch.bool else "floating"
        raise SettingError(f"mask={describe(mask)} is not allowed: a frame mask is a {what} tensor of shape (B, T) = "
                           f"{want} for latents of shape {tuple(x.shape)}")


def _check_weights(weights: Any, num_timesteps: int) -> None:
    """Open-Sora's per-timestep loss weights: one real number per integer timestep, indexed by t (their values are
    training_losses' to look at, as ``on_degenerate`` says)."""
    if weights is not None and (not isinstance(weights, Tensor) or weights.dtype == torch.bool or
                                weights.dtype.is_complex or weights.shape not in ((num_timesteps + 1,), (num_timesteps,))):
        raise SettingError(f"weights={describe(weights)} is not allowed: give a real tensor of {num_timesteps} or "
                           f"{num_timesteps + 1} per-timestep loss weights (indexed by the integer timestep)")


def _latent_frames(x: Tensor) -> Optional[int]:
    return x.shape[2] if x.dim() == 5 else None


def _latent_hw(x: Tensor) -> Optional[Tuple[int, int]]:
    return (x.shape[-2], x.shape[-1]) if x.dim() == 5 else None


def _inert_or_refuse(key: str, value: Any) -> None:
    inert = value is None or value is False or (isinstance(value, (list, tuple)) and len(value) == 0)
    if not inert:
        raise SettingError(f"{key}={describe(value)} (image/video conditioning or guidance variants) needs Open-Sora "
                           "1.3's RFLOW: install Open-Sora and use backend='opensora'")


def _standalone_training_keywords(kwargs: Dict[str, Any]) -> Dict[str, Any]:
    """Open-Sora 1.3 train.py's keywords, for the standalone backend: the ones it implements, the rest refused."""
    implemented = ("x_gt", "noise_disable_threshold", "text_uncond_prob")
    for key, value in kwargs.items():
        if key == "mask_index":
            _inert_or_refuse(key, value)
        elif key not in implemented + ("x_noisy_ref",):
            raise TypeError(f"rflow-timeshift's training_losses() got an unexpected keyword argument {key!r}")
    # Stock 1.3 reads x_noisy_ref only for i2v/v2v (a non-empty mask_index), which is refused above.
    return {k: v for k, v in kwargs.items() if k in implemented}
