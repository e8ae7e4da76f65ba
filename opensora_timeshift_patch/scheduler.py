"""``rflow-timeshift``: Open-Sora's rectified-flow scheduler with a chosen timestep-shift policy."""

from __future__ import annotations

import importlib.util
import inspect
import warnings
from typing import Any, Callable, Dict, List, Optional, Sequence, Tuple

import torch
from torch import Tensor
from torch.distributions import LogisticNormal

from .patch import swapped_transform
from .policies import policy_params
from .rflow import StandaloneRFlow, sampling_grid
from .sampling import (TimestepDistribution, counter_uniform, data_parallel_layout, global_sample_index,
                       stratified_uniform)
from .shift import TimestepShift, check_int

BACKENDS = ("auto", "opensora", "standalone")
TIMESTEP_RNGS = ("global", "per_sample")

# Open-Sora 1.3 keywords that only its own RFLOW implements (guidance variants, image/video conditioning):
# the standalone backend accepts them at these inert values and refuses anything else.
_OPENSORA_ONLY_INIT = {
    "use_oscillation_guidance": False, "use_flaw_fix": False, "scale_image_weight": False,
    "initial_image_scale": 1.0, "force_num": 10, "drop_condition": None, "x_cond_weight": 1,
}
_OPENSORA_ONLY_CALL = ("mask_index", "x_gt", "noise_disable_threshold", "text_uncond_prob", "x_noisy_ref",
                       "neg_prompts", "z_cond", "z_cond_mask", "image_cfg_scale", "use_sdedit",
                       "use_oscillation_guidance_for_text", "use_oscillation_guidance_for_image")


def _stock_rflow(backend: str) -> Optional[type]:
    """Open-Sora 1.x's ``RFLOW`` class for ``backend``, or None for the standalone backend."""
    if backend not in BACKENDS:
        raise ValueError(f"backend={backend!r} is not valid; use one of {', '.join(map(repr, BACKENDS))}")
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
        warnings.warn(
            f"an 'opensora' package is installed but opensora.schedulers.rf failed to import ({err}); "
            "rflow-timeshift falls back to its standalone rectified flow. Pass backend='opensora' to make this an error.",
            stacklevel=3,
        )
        return None
    return RFLOW


class RFlowTimeShift:
    """Rectified-flow scheduler whose timestep shift follows a temporal-size policy.

    Registered as ``type="rflow-timeshift"``. It takes every keyword of Open-Sora 1.2/1.3's ``rflow`` and keeps
    its call signatures; only the timesteps differ. With Open-Sora importable it delegates everything but the
    timesteps to Open-Sora's own ``RFLOW``; without it, to :class:`~.rflow.StandaloneRFlow`. With the same RNG
    state, ``shift_mode="latent"`` draws, shifts and samples exactly as stock ``rflow`` on 17k-frame clips and
    images (``"v13"`` likewise against Open-Sora 1.3).

    Args:
        num_sampling_steps: Euler steps in :meth:`sample`.
        num_timesteps: the time scale N; t = N is pure noise.
        cfg_scale: classifier-free guidance scale when ``sample`` gets none.
        use_discrete_timesteps: draw integer training timesteps and round the sampling grid, as stock does.
        use_timestep_transform: shift timesteps at all. Default True here (stock: False): a timeshift
            scheduler that does not shift would be a plain ``rflow``.
        sample_method: base distribution of training timesteps, one of :data:`~.sampling.SAMPLE_METHODS`:
            ``"uniform"``, ``"logit-normal"`` (``loc``, ``scale``), ``"mode"`` (``mode_scale``), ``"cosmap"``.
        loc: mean of the logit-normal's underlying normal.
        scale: standard deviation of the logit-normal's underlying normal.
        t_range: ``(t_min, t_max)``, fractions of N, confining the base draw (before the shift).
        t_range_mode: ``"truncate"`` (condition on the range) or ``"rescale"`` (squeeze into it).
        transform_scale: extra multiplier on the shift factor, applied in training and sampling alike
            (stock applies it in training only in 1.2, in sampling only in 1.3).
        scale_temporal: False drops the temporal factor, as ``shift_mode="spatial"`` (Open-Sora 1.3's name).
        uniform_over_threshold: Open-Sora 1.3's redraw of shifted video timesteps above this fraction of N.
        shift_mode: temporal-size policy, one of :data:`~.policies.SHIFT_MODES`.
        on_degenerate: ``"error"``, ``"clamp"`` or ``"ignore"`` for samples whose ``T_eff <= 0``.
        base_resolution: ``H * W`` with spatial factor 1.
        base_num_frames: ``T_eff`` with temporal factor 1.
        scale_images: whether ``transform_scale`` applies to images too (1.2: yes; 1.3: videos only).
        timestep_rng: ``"global"`` draws from torch's global RNG exactly as stock does (so every data-parallel
            rank, seeded alike by Open-Sora, draws the same t); ``"per_sample"`` draws from a counter-based
            stream keyed on (``timestep_seed``, step, global sample index): distinct across data-parallel
            ranks, identical within a sequence-parallel group, and reproducible on resume.
        timestep_seed: the stream's seed (``"per_sample"`` only).
        stratified: stratify the uniforms of the whole global batch, ``u_i = (u0 + i / N) mod 1``, before the
            distribution and the shift (``"per_sample"`` only).
        timestep_start_step: the step count to start from, for resuming under a trainer that does not restore
            :meth:`state_dict` (Open-Sora's ``train.py``): the number of ``training_losses`` calls already made.
        backend: ``"auto"`` (Open-Sora's RFLOW when importable), ``"opensora"`` or ``"standalone"``.
        **kwargs: the shift's keywords (``shift_family``, ``resolution_shift``, ``shift``, ``base_shift``, ...; see
            :class:`~.shift.TimestepShift`), the policy's parameters (e.g. ``micro_frame_size``), the distribution's
            (``mode_scale``); anything else goes to Open-Sora's ``RFLOW`` (e.g. 1.3's ``use_oscillation_guidance``).
    """

    def __init__(
        self,
        num_sampling_steps: int = 10,
        num_timesteps: int = 1000,
        cfg_scale: float = 4.0,
        use_discrete_timesteps: bool = False,
        use_timestep_transform: bool = True,
        sample_method: str = "uniform",
        loc: float = 0.0,
        scale: float = 1.0,
        t_range: Optional[Tuple[float, float]] = None,
        t_range_mode: str = "truncate",
        transform_scale: float = 1.0,
        scale_temporal: bool = True,
        uniform_over_threshold: Optional[float] = None,
        shift_mode: str = "latent",
        on_degenerate: str = "error",
        base_resolution: float = 512 * 512,
        base_num_frames: float = 1,
        scale_images: bool = True,
        timestep_rng: str = "global",
        timestep_seed: int = 0,
        stratified: bool = False,
        timestep_start_step: int = 0,
        backend: str = "auto",
        **kwargs: Any,
    ) -> None:
        check_int("num_timesteps", num_timesteps)
        check_int("num_sampling_steps", num_sampling_steps)
        check_int("timestep_seed", timestep_seed, minimum=0)
        check_int("timestep_start_step", timestep_start_step, minimum=0)
        if use_discrete_timesteps and sample_method != "uniform":
            raise ValueError(f"use_discrete_timesteps=True needs sample_method='uniform', got {sample_method!r}")
        if uniform_over_threshold is not None and not 0 <= uniform_over_threshold < 1:
            raise ValueError(f"uniform_over_threshold={uniform_over_threshold!r} must be None or in [0, 1)")
        if timestep_rng not in TIMESTEP_RNGS:
            raise ValueError(f"timestep_rng={timestep_rng!r} is not valid; use 'global' (stock) or 'per_sample'")
        if stratified and timestep_rng != "per_sample":
            raise ValueError("stratified=True stratifies the global batch through the per-sample stream: "
                             "set timestep_rng='per_sample' too")

        if not scale_temporal:
            shift_mode = "spatial"
        shift_keys = set(inspect.signature(TimestepShift).parameters) | set(policy_params(shift_mode))
        shift_kwargs = {k: kwargs.pop(k) for k in list(kwargs) if k in shift_keys}
        dist_kwargs = {k: kwargs.pop(k) for k in list(kwargs) if k in ("mode_scale",)}
        if sample_method == "logit-normal":
            dist_kwargs.update(loc=loc, scale=scale)
        self.distribution = TimestepDistribution(sample_method, t_range, t_range_mode, **dist_kwargs)
        self.shift = TimestepShift(shift_mode, on_degenerate, base_resolution, base_num_frames, transform_scale,
                                   scale_images, **shift_kwargs)
        self.num_sampling_steps = num_sampling_steps
        self.num_timesteps = num_timesteps
        self.cfg_scale = cfg_scale
        self.use_discrete_timesteps = use_discrete_timesteps
        self.use_timestep_transform = use_timestep_transform
        self.sample_method = sample_method
        self.uniform_over_threshold = uniform_over_threshold
        self.timestep_rng = timestep_rng
        self.timestep_seed = timestep_seed
        self.stratified = stratified
        self.step = timestep_start_step
        self._groups: Tuple[Any, Any] = (None, None)
        # Stock's draws, kept call for call where they apply, so the same RNG state gives the same timesteps.
        self._stock_draw = timestep_rng == "global" and t_range is None and sample_method in ("uniform", "logit-normal")
        if self._stock_draw and sample_method == "logit-normal":
            self._logistic_normal = LogisticNormal(torch.tensor([loc]), torch.tensor([scale]))

        rflow = _stock_rflow(backend)
        self.backend = "standalone" if rflow is None else "opensora"
        common = dict(num_sampling_steps=num_sampling_steps, num_timesteps=num_timesteps, cfg_scale=cfg_scale,
                      use_discrete_timesteps=use_discrete_timesteps)
        if rflow is None:
            _check_standalone_kwargs(kwargs, shift_mode)
            self.rflow: Any = StandaloneRFlow(**common)
        else:
            self.rflow = rflow(**common, use_timestep_transform=use_timestep_transform, **kwargs)

    def __repr__(self) -> str:
        stream = f", timestep_seed={self.timestep_seed}, stratified={self.stratified}" * (self.timestep_rng == "per_sample")
        return (f"RFlowTimeShift(backend={self.backend!r}, num_timesteps={self.num_timesteps}, "
                f"use_timestep_transform={self.use_timestep_transform}, distribution={self.distribution!r}, "
                f"timestep_rng={self.timestep_rng!r}{stream}, shift={self.shift!r})")

    # --- state ----------------------------------------------------------------------------------------------

    def set_process_groups(self, data_parallel_group: Any = None, sequence_parallel_group: Any = None) -> None:
        """Tell the per-sample stream which ranks are data-parallel replicas (default: Open-Sora's groups, or the world)."""
        self._groups = (data_parallel_group, sequence_parallel_group)

    def state_dict(self) -> Dict[str, Any]:
        """What a checkpoint needs to resume the timestep stream exactly: the step count and the seed."""
        return {"step": self.step, "timestep_seed": self.timestep_seed}

    def load_state_dict(self, state: Dict[str, Any]) -> None:
        """Resume from :meth:`state_dict`; a different seed is refused, since it would silently change the stream."""
        if state.get("timestep_seed", self.timestep_seed) != self.timestep_seed:
            raise ValueError(f"the checkpoint's timestep_seed={state['timestep_seed']!r} differs from this scheduler's "
                             f"{self.timestep_seed!r}: resume with the same seed, or start a new stream deliberately "
                             "by not loading the scheduler state")
        self.step = int(state["step"])

    # --- timesteps ------------------------------------------------------------------------------------------

    def sample_timesteps(self, x_start: Tensor, model_kwargs: Optional[Dict[str, Any]],
                         step: Optional[int] = None) -> Tensor:
        """Training timesteps in [0, N] for latents ``(B, C, T, H, W)``: drawn, then shifted.

        ``step`` keys the per-sample stream (default: this scheduler's count of ``training_losses`` calls).
        """
        n, device = x_start.shape[0], x_start.device
        resample_u = None
        if self.timestep_rng == "per_sample":
            step = self.step if step is None else step
            dp_rank, dp_size = data_parallel_layout(*self._groups)
            index, total = global_sample_index(n, dp_rank, dp_size, device)
            if self.stratified:
                u = stratified_uniform(self.timestep_seed, step, index, total)
            else:
                u = counter_uniform(self.timestep_seed, step, index)
            if self.uniform_over_threshold is not None:
                resample_u = counter_uniform(self.timestep_seed, step, index, lane=2)
            t = self._from_uniform(u)
        elif self._stock_draw and self.use_discrete_timesteps:
            t = torch.randint(0, self.num_timesteps, (n,), device=device)
        elif self._stock_draw and self.sample_method == "uniform":
            t = torch.rand((n,), device=device) * self.num_timesteps
        elif self._stock_draw:
            t = self._logistic_normal.sample((n,))[:, 0].to(device) * self.num_timesteps
        else:
            t = self._from_uniform(torch.rand((n,), device=device, dtype=torch.float64))
        if not self.use_timestep_transform:
            return t
        return self.shift(t, model_kwargs, self.num_timesteps, latent_frames=_latent_frames(x_start),
                          uniform_over_threshold=self.uniform_over_threshold, latent_hw=_latent_hw(x_start),
                          resample_u=resample_u)

    def _from_uniform(self, u: Tensor) -> Tensor:
        t = self.distribution(u)
        if self.use_discrete_timesteps:
            return (t * self.num_timesteps).floor().clamp(max=self.num_timesteps - 1).long()
        return (t * self.num_timesteps).float()

    def sampling_timesteps(self, z: Tensor, additional_args: Optional[Dict[str, Any]]) -> List[Tensor]:
        """The timesteps :meth:`sample` visits, from t = N down, one batch-length tensor per step."""
        grid = sampling_grid(self.num_sampling_steps, self.num_timesteps, z.shape[0], z.device,
                             self.use_discrete_timesteps)
        shift = self._sampling_shift(z)
        return grid if shift is None else [shift(t, additional_args) for t in grid]

    def training_losses(self, model: Callable[..., Tensor], x_start: Tensor,
                        model_kwargs: Optional[Dict[str, Any]] = None, noise: Optional[Tensor] = None,
                        mask: Optional[Tensor] = None, weights: Optional[Tensor] = None, t: Optional[Tensor] = None,
                        *, model_args: Optional[Dict[str, Any]] = None, step: Optional[int] = None,
                        **kwargs: Any) -> Dict[str, Tensor]:
        """Open-Sora's ``training_losses`` (1.2 names it ``model_kwargs``, 1.3 ``model_args``) with shifted timesteps.

        Each call counts one step of the per-sample stream; ``step`` overrides the count for this call.
        """
        if model_args is not None:
            if model_kwargs is not None:
                raise TypeError("pass the model arguments once, as model_kwargs (Open-Sora 1.2) or model_args (1.3)")
            model_kwargs = model_args
        step, self.step = (self.step if step is None else step), self.step + 1
        if t is None:
            t = self.sample_timesteps(x_start, model_kwargs, step)
        if self.backend == "opensora":
            return self.rflow.training_losses(model, x_start, model_kwargs, noise, mask, weights, t, **kwargs)
        _check_standalone_call(kwargs)
        return self.rflow.training_losses(model, x_start, model_kwargs, noise, mask, weights, t)

    def sample(self, model: Callable[..., Tensor], text_encoder: Any, z: Tensor, prompts: Sequence[str], device: Any,
               additional_args: Optional[Dict[str, Any]] = None, mask: Optional[Tensor] = None,
               guidance_scale: Optional[float] = None, progress: bool = True, **kwargs: Any) -> Tensor:
        """Open-Sora's ``sample``: Euler steps with classifier-free guidance over the shifted grid."""
        shift = self._sampling_shift(z)
        call = dict(additional_args=additional_args, mask=mask, guidance_scale=guidance_scale, progress=progress)
        if self.backend == "opensora":
            if shift is None:
                return self.rflow.sample(model, text_encoder, z, prompts, device, **call, **kwargs)
            with swapped_transform(lambda t, args, *_, **__: shift(t, args)):
                return self.rflow.sample(model, text_encoder, z, prompts, device, **call, **kwargs)
        _check_standalone_call(kwargs)
        return self.rflow.sample(model, text_encoder, z, prompts, device, **call, timestep_fn=shift)

    def _sampling_shift(self, z: Tensor) -> Optional[Callable[[Tensor, Any], Tensor]]:
        if not self.use_timestep_transform:
            return None
        latent_frames, latent_hw = _latent_frames(z), _latent_hw(z)
        return lambda t, args: self.shift(t, args, self.num_timesteps, latent_frames=latent_frames,
                                          latent_hw=latent_hw)


def _latent_frames(x: Tensor) -> Optional[int]:
    return x.shape[2] if x.dim() == 5 else None


def _latent_hw(x: Tensor) -> Optional[Tuple[int, int]]:
    return (x.shape[-2], x.shape[-1]) if x.dim() == 5 else None


def _check_standalone_kwargs(kwargs: Dict[str, Any], shift_mode: str) -> None:
    for key, value in kwargs.items():
        if key not in _OPENSORA_ONLY_INIT:
            takes = ", ".join(policy_params(shift_mode)) or "none"
            raise TypeError(f"rflow-timeshift got an unexpected keyword {key}={value!r} (shift_mode={shift_mode!r} "
                            f"takes policy parameters: {takes})")
        if value != _OPENSORA_ONLY_INIT[key]:
            raise ValueError(f"{key}={value!r} needs Open-Sora 1.3's RFLOW (backend='opensora'); the standalone "
                             f"backend implements plain classifier-free guidance. Remove it or install Open-Sora.")


def _check_standalone_call(kwargs: Dict[str, Any]) -> None:
    for key, value in kwargs.items():
        if key not in _OPENSORA_ONLY_CALL:
            raise TypeError(f"rflow-timeshift got an unexpected keyword argument {key!r}")
        inert = value is None or value is False or (key == "mask_index" and len(value) == 0)
        if not inert:
            raise ValueError(f"{key}={value!r} (image/video conditioning or guidance variants) needs Open-Sora 1.3's "
                             "RFLOW: install Open-Sora and use backend='opensora'")
