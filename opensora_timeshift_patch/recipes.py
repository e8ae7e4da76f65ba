"""Named recipes: other open video models' timestep rules, declared once each.

A recipe is what ``recipe="wan2.2-t2v-a14b"`` in the ``scheduler`` dict expands to (its training settings, the
rflow-timeshift keywords), the sampling schedule that model's own inference code uses (one sigma per step plus the
terminal, a function of steps, resolution and frames), where those numbers come from and how sure they are.
Settings given beside ``recipe`` override the recipe's (:func:`expand`); contradictions are then refused as for any
settings, where the :class:`~.core.Recipe` is built.
"""

from __future__ import annotations

import math
from typing import Any, Callable, Dict, List, Mapping, NamedTuple, Optional, Tuple

CONFIDENCE = ("official code", "maintainer statement", "community practice", "not published")
"""How sure a recipe's numbers are; "not published" (a training rule only) means the recipe assumes the model trains
at its sampling rule."""

Schedule = Callable[[int, int, int, int], List[float]]  # (steps, height, width, frames) -> steps + 1 sigmas


class ModelRecipe(NamedTuple):
    """One model's recipe (see the module docstring)."""

    name: str
    model: str
    training: Dict[str, Any]  # the rflow-timeshift keywords it expands to
    training_note: str  # what of the training rule is published, in words
    schedule: Schedule
    schedule_text: str
    source: str  # repository, file and commit
    confidence: str  # one of CONFIDENCE: of the sampling schedule, and of the training rule unless given apart
    extra: Dict[str, Any]  # recorded only (a Wan 2.2 expert boundary)
    training_confidence: str = ""  # one of CONFIDENCE where the training rule's differs from the schedule's

    @property
    def trained_confidence(self) -> str:
        """The training rule's confidence: its own where given apart, else the schedule's."""
        return self.training_confidence or self.confidence

    @property
    def confidence_text(self) -> str:
        """The confidence in words: one, or the schedule's and the training rule's."""
        if self.trained_confidence == self.confidence:
            return self.confidence
        return f"{self.confidence} (sampling); {self.trained_confidence} (training)"


def _grid(steps: int) -> List[float]:
    """linspace(1, 0, steps + 1): the unshifted grid every recipe here starts from."""
    return [1.0 - i / steps for i in range(steps)] + [0.0]


def rational(a: float, t: float) -> float:
    """a t / (1 + (a - 1) t): SD3's, Wan's and Open-Sora's shift of a noise level t (1 = noise)."""
    return a * t / (1 + (a - 1) * t)


def exponential(mu: float, t: float, sigma: float = 1.0) -> float:
    """Flux's ``time_shift``: e^mu / (e^mu + (1/t - 1)^sigma), with 0 kept at 0."""
    if t <= 0:
        return 0.0
    return math.exp(mu) / (math.exp(mu) + (1 / t - 1) ** sigma)


def _linear(x: float, x1: float, y1: float, x2: float, y2: float) -> float:
    """m x + b with b = y1 - m x1, in the models' own operation order."""
    m = (y2 - y1) / (x2 - x1)
    return m * x + (y1 - m * x1)


def constant_shift(a: float) -> Schedule:
    def schedule(steps: int, height: int, width: int, frames: int) -> List[float]:
        return [rational(a, t) for t in _grid(steps)]
    return schedule


def _wan_unipc(a: float) -> Schedule:
    """Wan's default solver (generate.py's ``--sample_solver unipc``): FlowUniPCMultistepScheduler built with shift 1,
    whose largest training sigma is float32(1 - 1/1000), then ``set_timesteps(steps, shift=a)``:
    ``linspace(sigma_max, 0, steps + 1)[:steps]`` shifted in float64, the terminal 0, all cast to float32. (Its
    ``dpm++`` solver instead shifts ``linspace(1, 0, steps + 1)[:steps]``, get_sampling_sigmas.)"""
    import numpy as np

    sigma_max = float(np.float32(1.0 - 1 / 1000))

    def schedule(steps: int, height: int, width: int, frames: int) -> List[float]:
        grid = np.linspace(sigma_max, 0.0, steps + 1)[:-1]
        shifted = a * grid / (1 + (a - 1) * grid)
        return np.concatenate([shifted, [0.0]]).astype(np.float32).astype(np.float64).tolist()
    return schedule


def opensora2_schedule(steps: int, height: int, width: int, frames: int) -> List[float]:
    # get_noise rounds the latent up to 16-pixel multiples: (8x VAE, patch 2) one token per 16x16 pixels;
    # causal VAE: 1 + (frames - 1) // 4 latent frames.
    tokens = math.ceil(height / 16) * math.ceil(width / 16)
    latent_frames = 1 if frames == 1 else (frames - 1) // 4 + 1
    alpha = _linear(tokens, 256, 1, 4096, 3) * math.sqrt(latent_frames)
    return [rational(alpha, t) for t in _grid(steps)]


def flux_schedule(steps: int, height: int, width: int, frames: int) -> List[float]:
    # Flux packs 2x2 latent pixels of its 8x VAE into a token: (H/16)(W/16) tokens.
    tokens = math.ceil(height / 16) * math.ceil(width / 16)
    mu = _linear(tokens, 256, 0.5, 4096, 1.15)
    return [exponential(mu, t) for t in _grid(steps)]


def diffusers_constant_shift(a: float, num_train_timesteps: int = 1000) -> Schedule:
    """diffusers' FlowMatchEulerDiscreteScheduler with a constant ``shift``: its sigmas run from 1 to its smallest
    training sigma, a(1/N) / (1 + (a - 1)/N), evenly spaced, and are then shifted again (so that smallest is shifted
    twice); then the terminal 0."""
    def schedule(steps: int, height: int, width: int, frames: int) -> List[float]:
        low = rational(a, 1 / num_train_timesteps)
        grid = [1.0] if steps == 1 else [1.0 + (low - 1.0) * i / (steps - 1) for i in range(steps)]
        return [rational(a, t) for t in grid] + [0.0]
    return schedule


def ltxv_tokens(height: int, width: int, frames: int) -> int:
    """LTX-Video's latent tokens: its VAE compresses 32x in space and 8x in time (causal, frames // 8 + 1 for a
    video, 1 for an image), patch size 1; its scheduler counts them all."""
    latent_frames = 1 if frames == 1 else frames // 8 + 1
    return latent_frames * (height // 32) * (width // 32)


def ltxv_schedule(steps: int, height: int, width: int, frames: int) -> List[float]:
    # rf.py's SD3 shifting: t = linspace(1, 1/steps, steps), mu = lin(1024 -> 0.95, 4096 -> 2.05)(tokens),
    # exponential shift, then 1 - s stretched so that the last sigma is the terminal 0.1; the step to 0 follows.
    if steps == 1:
        from .settings import SettingError

        # its stretch divides 1 - s[-1] = 0 by 0: LTX-Video's own schedule is NaN at one step
        raise SettingError("steps=1 is not allowed for LTX-Video's schedule (its stretch to the terminal divides "
                           "0 by 0 at one step): use 2 or more")
    import torch

    # in float32 as rf.py: the stretch divides by 1 - s[-1], which float32 holds to few digits at large mu, and the
    # model runs on those rounded sigmas
    mu = _linear(ltxv_tokens(height, width, frames), 1024, 0.95, 4096, 2.05)
    t = torch.linspace(1, 1 / steps, steps)
    shifted = math.exp(mu) / (math.exp(mu) + (1 / t - 1))
    one_minus = 1 - shifted
    stretched = 1 - one_minus / (one_minus[-1] / (1 - 0.1))
    return stretched.tolist() + [0.0]


def _ltx2_sigmas(steps: int, tokens: int) -> List[float]:
    # ltx-core's LTX2Scheduler.execute: linspace(1, 0, steps + 1), mu = lin(1024 -> 0.95, 4096 -> 2.05)(tokens),
    # exponential shift but 0 kept, the nonzero stretched to end at 0.1; in float32 as it is computed there; at one
    # step its stretch is 0 / 0.
    import torch

    if steps == 1:
        from .settings import SettingError

        raise SettingError("steps=1 is not allowed for LTX-2's schedule (its stretch to the terminal divides 0 by 0 "
                           "at one step): use 2 or more")
    mu = _linear(tokens, 1024, 0.95, 4096, 2.05)
    grid = torch.linspace(1.0, 0.0, steps + 1)[:-1]
    one_minus = 1 - math.exp(mu) / (math.exp(mu) + (1 / grid - 1))
    return (1 - one_minus / (one_minus[-1] / (1 - 0.1))).tolist() + [0.0]


def ltx2_schedule(steps: int, height: int, width: int, frames: int) -> List[float]:
    # LTX-2's pipelines call execute(steps) without a latent: 4096 tokens at every size, so mu = 2.05
    return _ltx2_sigmas(steps, 4096)


def ltx2_hq_tokens(height: int, width: int, frames: int) -> int:
    """The tokens of LTX-2's HQ pipeline's stage 1, the latent it passes to execute(): half the pixel size, then
    VideoLatentShape.from_pixel_shape ((F - 1) // 8 + 1 frames, H // 32, W // 32)."""
    return ((frames - 1) // 8 + 1) * ((height // 2) // 32) * ((width // 2) // 32)


def ltx2_hq_schedule(steps: int, height: int, width: int, frames: int) -> List[float]:
    tokens = ltx2_hq_tokens(height, width, frames)
    if tokens < 1:
        from .settings import SettingError

        raise SettingError(f"{height}x{width} is too small for LTX-2's HQ pipeline: half of it holds no 32x32 latent "
                           "token (its stage 1 samples at half the size); use 64x64 or more")
    return _ltx2_sigmas(steps, tokens)


def _opensora1_schedule(release: str, temporal: Callable[[int], int], rule: str, smallest: int) -> Schedule:
    """Open-Sora 1.x's sample(): t = (1 - i/steps) N through its timestep_transform (sqrt(H W / 512^2) times
    sqrt of the temporal size, rational), sigma = t / N, then the terminal 0."""
    def schedule(steps: int, height: int, width: int, frames: int) -> List[float]:
        size = 1 if frames == 1 else temporal(frames)  # stock looks at num_frames == 1 for an image
        if size <= 0:
            from .settings import SettingError

            # stock's factor is 0 there: its first step is 0 / 0 (NaN), every later one 0
            raise SettingError(f"frames={frames!r} is not allowed for Open-Sora {release}'s schedule (its temporal "
                               f"size {rule} is 0 there, so stock samples NaN at its first step): use 1 or "
                               f"{smallest} or more")
        ratio = math.sqrt(height * width / (512 * 512)) * math.sqrt(size)
        return [rational(ratio, t) for t in _grid(steps)]
    return schedule


def _constant_training(a: float) -> Dict[str, Any]:
    # A constant factor with no temporal part: these models shift by a number, not by clip length.
    return dict(resolution_shift="constant", shift=a, temporal_exponent=0.0)


_WAN21 = ("Wan-Video/Wan2.1 generate.py lines 76-81 and 228-233 (--sample_solver unipc), wan/utils/fm_solvers_unipc.py "
          "FlowUniPCMultistepScheduler (__init__, set_timesteps), wan/text2video.py lines 206-213, commit 9737cba9")
_WAN22 = ("Wan-Video/Wan2.2 wan/configs/{}, generate.py --sample_solver unipc, wan/utils/fm_solvers_unipc.py "
          "FlowUniPCMultistepScheduler, commit 42bf4cfa")
_UNIPC = " on its default UniPC grid, linspace(float32(0.999), 0, steps + 1)"
_WAN_TRAIN = "training distribution and shift not published: the recipe trains at the sampling shift"
# Wan 2.1's maintainers (Wan2.1 issue #291): logit-normal, as the technical report says, with flow_shift by
# resolution: 2 for 480p training, "increase flow_shift appropriately" for 720p and above (no number given)
_WAN21_ISSUE = "; training: Wan-Video/Wan2.1 issue #291 (wan-x-ai, 2025-03-31)"
_WAN21_480P = ("logit-normal with flow_shift 2 for 480p training (the maintainers, Wan2.1 issue #291; the technical "
               "report's logit-normal), not the sampling shift")
_WAN21_720P = ("logit-normal (the maintainers, Wan2.1 issue #291; the technical report); its shift for 720p and above "
               "is not given ('increase flow_shift appropriately'): the recipe trains at the sampling shift")

_HV15 = "Tencent-Hunyuan/HunyuanVideo-1.5 train.py lines 139-142, 204-275, 751-752, {}, commit 60783e70"
# train.py's default: t = sigmoid(N(0, 1)) squeezed into [1e-5, 1 - 1e-5] (TRAIN_EPS), then the rational shift 3.0
# (train_timestep_shift), whatever the resolution; its sampling shifts are larger (validation_timestep_shift 5.0).
_HV15_TRAIN = dict(sample_method="logit-normal", t_range=(1e-5, 1 - 1e-5), t_range_mode="rescale",
                   resolution_shift="constant", shift=3.0, temporal_exponent=0.0)
_HV15_NOTE = ("train.py's default snr_type 'lognorm': sigmoid(N(0, 1)) in [1e-5, 1 - 1e-5], shift 3.0 at every "
              "resolution (sampling shifts differ on purpose); its other options: snr_type 'uniform', 'mix' "
              "(recipe hunyuanvideo-1.5-480p-mix) and 'mode' (mode_scale 1.29)")
_HV15_TASKS = (
    ("480p", "480p T2V and I2V (and their distilled)", 5.0, "480p_t2v, 480p_i2v", "lines 49-58, 69-78"),
    ("720p-t2v", "720p T2V (and distilled)", 9.0, "720p_t2v", "lines 59-62, 79-82"),
    ("720p-i2v", "720p I2V (and distilled)", 7.0, "720p_i2v", "lines 64-67, 84-87"),
    ("480p-i2v-step-distilled", "480p I2V step-distilled", 7.0, "480p_i2v_step_distilled", "lines 100-103"),
    ("sr", "super-resolution 720p / 1080p (distilled)", 2.0, "720p_sr_distilled, 1080p_sr_distilled",
     "lines 109-124"),
)

# LTX's mu: linear from 0.95 at 1024 to 2.05 at 4096 latent tokens, all of the clip's (32x in space, causal 8x in
# time, patch 1), exponential
_LTX_TOKENS = dict(shift_family="exponential", resolution_shift="linear", token_count="video", base_seq_len=1024,
                   max_seq_len=4096, base_shift=0.95, max_shift=2.05, patch_size=1, spatial_compression=32,
                   shift_mode="latent", micro_frame_size=None, temporal_compression=8, causal=True, latent_from="meta")

def _sigmoid(z: float) -> float:
    return 1 / (1 + math.exp(-z))


# LTX-2's trainer: its logit-normal (std 1) stretched between sigmoid(mu - 2.5758) and sigmoid(mu + 3.0902), which
# are the shifted images of these two unshifted timesteps, reflected below eps; and its unshifted uniform on
# [eps, 1), (1 - eps) rand + eps
_LTX2_EPS = 1e-3
_LTX2_STRETCHED = dict(sample_method="logit-normal", loc=0.0, scale=1.0, weight=0.9,
                       stretch=(_sigmoid(-2.5758), _sigmoid(3.0902)), reflect=_LTX2_EPS)
_LTX2_UNIFORM = dict(sample_method="uniform", weight=0.1, shift=False, t_range=(_LTX2_EPS, 1.0), t_range_mode="rescale")

_OS1 = ("hpcaitech/Open-Sora configs/opensora-v1-{v}/train/stage1.py (scheduler), "
        "configs/opensora-v1-{v}/inference/{inf} (num_sampling_steps=30), opensora/schedulers/rf/__init__.py "
        "RFLOW.sample, opensora/schedulers/rf/{fn} timestep_transform, commit {c}")
_OS1_NOTE = ("its own rule, as its train config sets it: t = sigmoid(N(0, 1)) (logit-normal), then the rational "
             "shift by sqrt(H W / 512^2) sqrt({rule}) (1 for an image); not expressed: stock's bf16 meta, which round "
             "the factor")

_RECIPES = (
    ModelRecipe("opensora-2.0", "Open-Sora 2.0",
                dict(sample_method="logit-normal", resolution_shift="linear"),
                "t = sigmoid(randn), alpha = lin(256 -> 1, 4096 -> 3 tokens) x sqrt(latent frames), rational",
                opensora2_schedule, "alpha = lin(256 -> 1, 4096 -> 3)(ceil(H/16) ceil(W/16)) x sqrt(latent frames)",
                "hpcaitech/Open-Sora opensora/utils/sampling.py get_schedule (lines 307-332), "
                "scripts/diffusion/train.py, commit 7ad6a96a", "official code", {}),
    ModelRecipe("opensora-1.2", "Open-Sora 1.2",
                dict(sample_method="logit-normal", resolution_shift="sqrt", shift_mode="legacy"),
                _OS1_NOTE.format(rule="num_frames // 17 * 5"),
                _opensora1_schedule("1.2", lambda f: f // 17 * 5, "num_frames // 17 * 5", 17),
                "sqrt(H W / 512^2) sqrt(F // 17 * 5) (1 for an image), rational; 30 steps in its sample.py",
                _OS1.format(v=2, inf="sample.py", fn="rectified_flow.py", c="bde3c420"), "official code", {}),
    ModelRecipe("opensora-1.3", "Open-Sora 1.3",
                dict(sample_method="logit-normal", resolution_shift="sqrt", shift_mode="v13"),
                _OS1_NOTE.format(rule="(num_frames - 1) // 4"),
                _opensora1_schedule("1.3", lambda f: (f - 1) // 4, "(num_frames - 1) // 4", 5),
                "sqrt(H W / 512^2) sqrt((F - 1) // 4) (1 for an image), rational; 30 steps in its t2v.py",
                _OS1.format(v=3, inf="t2v.py", fn="time_sampler.py", c="2ca632a2"), "official code", {}),
    ModelRecipe("wan2.1-t2v", "Wan 2.1 T2V at 720p (and 720p I2V)",
                dict(sample_method="logit-normal", **_constant_training(5.0)), _WAN21_720P,
                _wan_unipc(5.0), "constant shift 5.0" + _UNIPC, _WAN21 + _WAN21_ISSUE, "official code", {},
                training_confidence="maintainer statement"),
    ModelRecipe("wan2.1-t2v-480p", "Wan 2.1 T2V at 832x480",
                dict(sample_method="logit-normal", **_constant_training(2.0)), _WAN21_480P,
                _wan_unipc(5.0), "constant shift 5.0" + _UNIPC, _WAN21 + _WAN21_ISSUE, "official code", {},
                training_confidence="maintainer statement"),
    ModelRecipe("wan2.1-i2v-480p", "Wan 2.1 I2V at 832x480",
                dict(sample_method="logit-normal", **_constant_training(2.0)), _WAN21_480P,
                _wan_unipc(3.0), "constant shift 3.0" + _UNIPC, _WAN21 + _WAN21_ISSUE, "official code", {},
                training_confidence="maintainer statement"),
    ModelRecipe("wan2.1-flf2v", "Wan 2.1 FLF2V and VACE (720p)",
                dict(sample_method="logit-normal", **_constant_training(16.0)), _WAN21_720P,
                _wan_unipc(16.0), "constant shift 16" + _UNIPC, _WAN21 + _WAN21_ISSUE, "official code", {},
                training_confidence="maintainer statement"),
    ModelRecipe("wan2.2-t2v-a14b", "Wan 2.2 T2V-A14B", _constant_training(12.0), _WAN_TRAIN,
                _wan_unipc(12.0), "constant shift 12.0" + _UNIPC + "; experts switch at boundary 0.875",
                _WAN22.format("wan_t2v_A14B.py lines 34-36"), "official code", dict(boundary=0.875),
                training_confidence="not published"),
    ModelRecipe("wan2.2-i2v-a14b", "Wan 2.2 I2V-A14B", _constant_training(5.0), _WAN_TRAIN,
                _wan_unipc(5.0), "constant shift 5.0" + _UNIPC + "; experts switch at boundary 0.900",
                _WAN22.format("wan_i2v_A14B.py lines 34-36"), "official code", dict(boundary=0.9),
                training_confidence="not published"),
    ModelRecipe("wan2.2-ti2v-5b", "Wan 2.2 TI2V-5B", _constant_training(5.0), _WAN_TRAIN,
                _wan_unipc(5.0),
                "constant shift 5.0" + _UNIPC, _WAN22.format("wan_ti2v_5B.py line 33"), "official code", {},
                training_confidence="not published"),
    ModelRecipe("hunyuanvideo", "HunyuanVideo 1.0", _constant_training(7.0),
                "training rule not in the repository: the recipe trains at the sampling shift",
                constant_shift(7.0), "constant shift 7.0 (--flow-shift default)",
                "Tencent-Hunyuan/HunyuanVideo hyvideo/config.py lines 187-190, "
                "hyvideo/diffusion/schedulers/scheduling_flow_match_discrete.py set_timesteps, commit fa14b001",
                "official code", {}, training_confidence="not published"),
    *(ModelRecipe(f"hunyuanvideo-1.5-{task}", f"HunyuanVideo 1.5 {model}", _HV15_TRAIN, _HV15_NOTE,
                  constant_shift(a), f"constant shift {a} (flow_shift of {configs})",
                  _HV15.format(f"hyvideo/commons/__init__.py {lines}"), "official code", {})
      for task, model, a, configs, lines in _HV15_TASKS),
    ModelRecipe("hunyuanvideo-1.5-480p-mix", "HunyuanVideo 1.5 480p, trained with snr_type 'mix'",
                {**_HV15_TRAIN, "sample_method": "mixture",
                 "components": [dict(sample_method="logit-normal", loc=0.0, scale=1.0, weight=0.7),
                                dict(sample_method="uniform", weight=0.3)]},
                "train.py's snr_type 'mix': sigmoid(N(0, 1)) with probability 0.7 (rand > 0.3), else uniform, both "
                "in [1e-5, 1 - 1e-5], shift 3.0", constant_shift(5.0), "constant shift 5.0 (flow_shift of 480p_t2v)",
                _HV15.format("hyvideo/commons/__init__.py lines 49-58"), "official code", {}),
    ModelRecipe("step-video-t2v", "Step-Video-T2V", _constant_training(13.0),
                "training rule not in the repository: the recipe trains at the sampling shift",
                constant_shift(13.0), "constant shift 13.0",
                "stepfun-ai/Step-Video-T2V stepvideo/diffusion/scheduler.py set_timesteps (lines 105-126), "
                "commit 675e08c0", "official code", {}, training_confidence="not published"),
    ModelRecipe("step-video-t2v-turbo", "Step-Video-T2V-Turbo (step-distilled)", _constant_training(17.0),
                "training rule not in the repository: the recipe trains at the sampling shift",
                constant_shift(17.0), "constant shift 17.0, 10-15 steps",
                "stepfun-ai/Step-Video-T2V README.md line 154, commit 675e08c0", "maintainer statement", {},
                training_confidence="not published"),
    ModelRecipe("sd3", "Stable Diffusion 3 (image)",
                dict(sample_method="logit-normal", loc=0.0, scale=1.0, **_constant_training(3.0)),
                "logit-normal(0, 1) then shift 3.0, continuous (SD3 paper; diffusers' train_dreambooth_sd3 default "
                "weighting_scheme 'logit_normal'); not exact to diffusers' script, which rounds each draw to one "
                "of the scheduler's 1000 training sigmas shift(k / 1000), k = 1..1000",
                diffusers_constant_shift(3.0),
                "diffusers FlowMatchEulerDiscreteScheduler, shift 3.0: linspace(1, shift(1/1000), steps), shifted",
                "huggingface/diffusers src/diffusers/schedulers/scheduling_flow_match_euler_discrete.py __init__ "
                "(lines 127-145) and set_timesteps (lines 283-383), src/diffusers/training_utils.py "
                "compute_density_for_timestep_sampling (lines 365-390), commit 58eb52c0; shift 3.0 from "
                "stabilityai/stable-diffusion-3-medium-diffusers scheduler_config.json",
                "official code", {}),
    ModelRecipe("ltx-video-0.9", "LTX-Video 0.9",
                dict(_LTX_TOKENS),
                "LTX-Video's training code is not in its repository: the recipe trains on the uniform base with its "
                "sampling shift (mu linear in all latent tokens, exponential); not expressed: the stretch to the "
                "terminal 0.1 (a rule of the sampling grid), and the token count where the frame count is not 8k + 1 "
                "(LTX: F // 8 + 1; the causal policy: 1 + (F - 1) // 8) or a side not a multiple of 32 (LTX floors "
                "H / 32 and W / 32; the linear rule counts H W / 32^2); it counts the pixel meta in LTX's 32x32, "
                "8x-causal latent tokens whatever latent training passes (latent_from='meta'), so 1.x and standalone "
                "only (2.0 counts its own latent and refuses spatial_compression)",
                ltxv_schedule, "mu = lin(1024 -> 0.95, 4096 -> 2.05)((F // 8 + 1)(H // 32)(W // 32)), exponential, "
                "stretched to the terminal 0.1",
                "Lightricks/LTX-Video ltx_video/schedulers/rf.py (lines 69-149, 176-262), "
                "ltx_video/utils/diffusers_config_mapping.py OURS_SCHEDULER_CONFIG (lines 65-72), "
                "ltx_video/pipelines/pipeline_ltx_video.py (lines 914-931), commit 5260738e", "official code", {},
                training_confidence="not published"),
    ModelRecipe("ltx-2", "LTX-2 (video; its default pipelines)",
                dict(sample_method="mixture", components=[dict(_LTX2_STRETCHED), dict(_LTX2_UNIFORM)], **_LTX_TOKENS),
                "ltx-trainer's ShiftedLogitNormalTimestepSampler: with probability 0.9, sigmoid(N(mu, 1)) with mu = "
                "lin(1024 -> 0.95, 4096 -> 2.05) of all latent tokens, not capped (here: logit-normal, then the "
                "exponential shift: the same draw), stretched affinely so that its points at mu - 2.5758 and "
                "mu + 3.0902 (its 0.5% and 99.9%) go to 0 and 1, values below eps = 0.001 reflected to 2 eps - t, "
                "clamped to [0, 1]; else an unshifted uniform on [eps, 1). Its percentile ends are computed in "
                "float32 there, in float64 here; counted on LTX's latent geometry from the pixel meta whatever latent "
                "training passes (latent_from='meta'); 1.x and standalone only (2.0 refuses spatial_compression)",
                ltx2_schedule, "mu = 2.05 at every size (execute(steps) without a latent counts 4096 tokens), "
                "exponential, stretched to the terminal 0.1",
                "Lightricks/LTX-2 packages/ltx-core/src/ltx_core/components/schedulers.py LTX2Scheduler (lines "
                "14-58), packages/ltx-pipelines/src/ltx_pipelines/ti2vid_two_stages.py line 244, "
                "packages/ltx-trainer/src/ltx_trainer/timestep_samplers.py ShiftedLogitNormalTimestepSampler "
                "(lines 48-134), commit 400fd310", "official code", {}),
    ModelRecipe("ltx-2-hq", "LTX-2 (video; its HQ two-stage pipeline)",
                dict(sample_method="mixture", components=[dict(_LTX2_STRETCHED), dict(_LTX2_UNIFORM)], **_LTX_TOKENS),
                "as recipe ltx-2 (ltx-trainer's ShiftedLogitNormalTimestepSampler, exactly); 1.x and standalone only "
                "(2.0 refuses spatial_compression)",
                ltx2_hq_schedule, "mu = lin(1024 -> 0.95, 4096 -> 2.05) of stage 1's latent tokens, at half the size: "
                "((F - 1) // 8 + 1)((H / 2) // 32)((W / 2) // 32), exponential, stretched to the terminal 0.1",
                "Lightricks/LTX-2 packages/ltx-core/src/ltx_core/components/schedulers.py LTX2Scheduler (lines "
                "14-58), packages/ltx-pipelines/src/ltx_pipelines/ti2vid_two_stages_hq.py lines 236-267, "
                "packages/ltx-core/src/ltx_core/types.py VideoLatentShape.from_pixel_shape (lines 108-123), commit "
                "400fd310", "official code", {}),
    ModelRecipe("flux", "Flux.1 (image)",
                dict(shift_family="exponential", resolution_shift="linear", temporal_exponent=0.0),
                "sampling rule applied to training: Flux's training code is not public, and Black Forest Labs is "
                "reported to have confirmed training with the scheduler's dynamic shift (Nerogar/OneTrainer pull "
                "request #1516)",
                flux_schedule, "mu = lin(256 -> 0.5, 4096 -> 1.15)(ceil(H/16) ceil(W/16)), exponential",
                "black-forest-labs/flux src/flux/sampling.py get_schedule (lines 277-305), commit 802fb471",
                "official code", {}, training_confidence="community practice"),
)

RECIPES: Dict[str, ModelRecipe] = {r.name: r for r in _RECIPES}
"""The named recipes by name: the choices of the ``recipe`` setting."""


def get(name: Any) -> ModelRecipe:
    """The recipe called ``name``, or a SettingError naming the value and the choices."""
    from .settings import SETTINGS

    return RECIPES[SETTINGS["recipe"].check(name)]  # the declaration's check, so its one message


def expand(given: Mapping[str, Any], release: str = "1.x") -> Dict[str, Any]:
    """``given`` with its ``recipe`` replaced by the recipe's training settings; what ``given`` names beside it wins,
    and takes with it the recipe's settings it deselects (``shift_mode="legacy"`` beside a recipe of the latent policy
    drops that policy's parameters: :func:`~.settings.still_meant`). Without ``recipe`` (or with ``recipe=None``),
    ``given`` unchanged."""
    from .settings import still_meant

    settings = dict(given)
    name = settings.pop("recipe", None)
    if name is None:
        return settings
    return still_meant(get(name).training, settings, release)


def sigmas(name: str, steps: int, height: int, width: int, frames: int) -> List[float]:
    """The recipe's sampling schedule: ``steps`` sigmas from 1 down, then the terminal."""
    return get(name).schedule(steps, height, width, frames)


def recipes_table() -> str:
    """The README's table of recipes, generated from the declaration."""
    lines = ["| recipe | model | training settings | sampling schedule | source | confidence |",
             "|---|---|---|---|---|---|"]
    for r in _RECIPES:
        training = ", ".join(f"{k}={v!r}" for k, v in r.training.items())
        extra = "".join(f"; {k} {v!r} (recorded only)" for k, v in r.extra.items())
        lines.append(f"| `{r.name}` | {r.model} | `{training}` ({r.training_note}) | {r.schedule_text}{extra} | "
                     f"{r.source} | {r.confidence_text} |")
    return "\n".join(lines)
