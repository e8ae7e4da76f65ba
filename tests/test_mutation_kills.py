"""Behaviour that mutation testing of the mixture components, the shifted draw and the recipes found unpinned.

Every expected value is derived by hand here (closed forms of uniform and logit-normal components, the rational
shift a t / (1 + (a - 1) t) and its inverse y / (a - (a - 1) y)), never read back from the package.
"""

from __future__ import annotations

import math

import pytest
import torch

from opensora_timeshift_patch import Recipe
from opensora_timeshift_patch.sampling import TimestepDistribution
from opensora_timeshift_patch.settings import SettingError

F64 = torch.float64


def shift(a: float, t: float) -> float:
    return a * t / (1 + (a - 1) * t)


def unshift(a: float, y: float) -> float:
    return y / (a - (a - 1) * y)


def phi(z: float) -> float:
    return 0.5 * math.erfc(-z / math.sqrt(2))


def logit(p: float) -> float:
    return math.log(p) - math.log1p(-p)


def test_a_reflected_stretch_below_a_small_factor_counts_nothing_below_zero():
    """A uniform stretched over (0.01, 0.99) and reflected at 0.1, shifted by a = 0.25 (a 1.x image at 128x128),
    half of a plain uniform. For e <= x < 1, P(T <= x) = P(2 e - x <= Y <= x), and P(Y <= y) = P(U <= unshift(s)) with
    s = shift(lo) + y (shift(hi) - shift(lo)) clipped to [0, 1]: for x near 1, s at 2 e - x is far below 0 (where
    unshift, for a < 1/2, turns positive again), and that share must count as 0."""
    a, lo, hi, e = 0.25, 0.01, 0.99, 0.1
    r = Recipe(dict(sample_method="mixture", resolution_shift="constant", shift=a, temporal_exponent=0.0,
                    components=[dict(sample_method="uniform", weight=0.5, stretch=(lo, hi), reflect=e),
                                dict(sample_method="uniform", weight=0.5)]))
    s_lo, s_hi = shift(a, lo), shift(a, hi)

    def y_cdf(y: float) -> float:
        s = min(max(s_lo + y * (s_hi - s_lo), 0.0), 1.0)
        return min(max(unshift(a, s), 0.0), 1.0)

    def by_hand(x: float) -> float:
        stretched = 0.0 if x < e else y_cdf(x) - y_cdf(2 * e - x)
        return 0.5 * stretched + 0.5 * unshift(a, x)

    x = [0.0, 0.05, 0.1, 0.15, 0.3, 0.6, 0.9, 0.99]
    got = r.shifted_cdf(torch.tensor(x, dtype=F64), a).tolist()
    assert got == pytest.approx([by_hand(v) for v in x], abs=1e-12)


def test_a_components_rescaled_t_range_squeezes_it_rather_than_truncating():
    """t_range_mode='rescale' on a component: its draw is t_min + (t_max - t_min) T, T ~ sigmoid(N(0, 1)); so
    P(t <= x) = Phi(logit((x - t_min) / (t_max - t_min))) inside the range (truncating would give
    (Phi(logit x) - Phi(logit t_min)) / (Phi(logit t_max) - Phi(logit t_min)) instead)."""
    lo, hi = 0.2, 0.6
    d = TimestepDistribution("mixture", components=[
        dict(sample_method="logit-normal", weight=0.5, t_range=(lo, hi), t_range_mode="rescale"),
        dict(sample_method="uniform", weight=0.5)])
    x = [0.1, 0.25, 0.3, 0.4, 0.5, 0.55, 0.7]

    def by_hand(v: float) -> float:
        inner = 0.0 if v <= lo else 1.0 if v >= hi else phi(logit((v - lo) / (hi - lo)))
        return 0.5 * inner + 0.5 * v

    assert d.cdf(torch.tensor(x, dtype=F64)).tolist() == pytest.approx([by_hand(v) for v in x], abs=1e-12)


def test_a_mixture_draw_keeps_the_uniforms_dtype():
    d = TimestepDistribution("mixture", components=[dict(sample_method="logit-normal", weight=0.5),
                                                    dict(sample_method="uniform", weight=0.5)])
    u = torch.tensor([0.1, 0.5, 0.9], dtype=torch.float32)
    assert d(u).dtype == torch.float32


def test_the_shifted_components_draw_is_nan_for_uniforms_outside_the_unit_interval():
    """As every distribution's draw (TimestepDistribution.__call__): a uniform outside [0, 1], or NaN, gives NaN,
    never a valid-looking timestep (the bisection alone would put u < 0 at t = 0 and u > 1 at t = 1)."""
    r = Recipe(dict(recipe="ltx-2"))
    t = r.base_draw(torch.tensor([-0.25, 1.25, math.nan, 0.5], dtype=F64), 10.0)
    assert t[:3].isnan().all() and 0 < float(t[3]) < 1


def test_shifted_components_refuse_open_soras_redraw():
    # a valid threshold, so that the refusal reached is the one about the mixture (500 is refused as out of range)
    components = [dict(sample_method="logit-normal", weight=0.9, shift=False), dict(sample_method="uniform", weight=0.1)]
    with pytest.raises(SettingError, match="would replace the mixture's shifted draws above the threshold"):
        Recipe(dict(sample_method="mixture", components=components, uniform_over_threshold=0.5))


def test_the_1x_draw_converts_through_the_factor_of_the_latents_own_tokens():
    """The linear rule counts the latent tensor's tokens when it has one (the latent is the truth): a 64 x 64 latent
    with patch 2 is 1024 tokens, so a = 1 + (3 - 1) (1024 - 256) / (4096 - 256) = 1.4, whatever the pixel meta says
    (1024 x 1024 here, 4096 tokens at 16 pixels a token: a = 3). The draw must convert through the same factor the
    shift then applies: 0.6 sigmoid(N(0, 1)) shifted by a, 0.4 uniform unshifted."""
    import numpy as np
    from scipy import stats

    import opensora_timeshift_patch as ots

    scheduler = ots.RFlowTimeShift(sample_method="mixture", timestep_rng="per_sample", resolution_shift="linear",
                                   base_seq_len=256, max_seq_len=4096, base_shift=1.0, max_shift=3.0, patch_size=2,
                                   components=[dict(sample_method="logit-normal", weight=0.6),
                                               dict(sample_method="uniform", weight=0.4, shift=False)])
    n = 3000
    m = {"height": torch.full((n,), 1024.0), "width": torch.full((n,), 1024.0), "num_frames": torch.ones(n)}
    t = scheduler.sample_timesteps(torch.zeros(n, 4, 1, 64, 64), m, step=3).double().numpy() / 1000

    def by_hand(v: np.ndarray, a: float) -> np.ndarray:
        v = np.clip(v, 1e-12, 1 - 1e-12)
        base = v / (a - (a - 1) * v)
        return 0.6 * stats.norm.cdf(np.log(base) - np.log1p(-base)) + 0.4 * v

    assert stats.kstest(t, lambda v: by_hand(v, 1.4)).pvalue > 1e-6


def test_wans_unipc_grids_are_the_recorded_float32_values_bit_for_bit():
    """Wan's FlowUniPCMultistepScheduler casts its sigmas to float32: the recorded goldens (from Wan's own file) are
    float32 numbers, and the recipe's grid is exactly them, not float64 values within float32's precision."""
    import json
    from pathlib import Path

    import numpy as np

    from opensora_timeshift_patch.recipes import sigmas

    goldens = json.loads((Path(__file__).parent / "data" / "model_schedules.json").read_text(encoding="utf-8"))
    for section in ("wan21", "wan22"):
        for name, cases in goldens[section]["recipes"].items():
            for case in cases:
                ours = sigmas(name, case["steps"], case["height"], case["width"], case["frames"])
                assert all(float(np.float32(s)) == s for s in ours)
                assert ours == case["sigmas"]


def test_ltx2_hq_counts_latent_frames_as_the_causal_vae_does_for_any_frame_count():
    """VideoLatentShape.from_pixel_shape: (F - 1) // 8 + 1 latent frames, not F // 8 + 1; the two agree at 8k + 1
    frames only. 24 frames at 512x768: stage 1 at 256x384, 3 x 8 x 12 = 288 tokens."""
    from opensora_timeshift_patch.recipes import ltx2_hq_tokens

    assert ltx2_hq_tokens(512, 768, 24) == 3 * 8 * 12
    assert ltx2_hq_tokens(512, 768, 25) == 4 * 8 * 12
    assert ltx2_hq_tokens(512, 768, 1) == 1 * 8 * 12


def test_pile_check_judges_every_factor_given_not_only_the_first():
    """A uniform base under the rational shift puts a eps / (1 + (a - 1) eps) of its draws within eps of t = 1:
    0.2% at a = 2, 5 / 5.999 = 83% at a = 5000. A batch holding both factors piles up."""
    import numpy as np

    from opensora_timeshift_patch.guard import pile_check

    shift = Recipe(dict(sample_method="uniform")).shift
    assert pile_check(shift, np.array([2.0]), "the batch") == ""
    message = pile_check(shift, np.array([2.0, 5000.0]), "the batch")
    assert "shift factor 5000" in message and "83.3%" in message
