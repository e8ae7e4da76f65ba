"""Mixture components the shift does not move alike (shift=False, stretch), and noise_range, tried as a hostile user
would: each input gets a named error or a correct result, never NaN timesteps or a setting that does not apply.

Expected values are derived by hand in each test."""

import warnings

import pytest
import torch

from opensora_timeshift_patch import Recipe

UNSHIFTED = [dict(sample_method="uniform", weight=0.5, shift=False), dict(sample_method="logit-normal", weight=0.5)]
STRETCHED = [dict(sample_method="uniform", weight=0.5),
             dict(sample_method="logit-normal", weight=0.5, stretch=(0.1, 0.9))]


def meta(height, width, frames, n):
    return {k: torch.full((n,), float(v)) for k, v in (("height", height), ("width", width), ("num_frames", frames))}


def quiet_recipe(settings):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # on_degenerate='ignore' warns of the collapse it keeps
        return Recipe(settings)


@pytest.mark.parametrize("draw", [dict(sample_method="mixture", components=UNSHIFTED),
                                  dict(sample_method="mixture", components=STRETCHED),
                                  dict(noise_range=(0.2, 0.8))])
@pytest.mark.parametrize("family", [dict(), dict(shift_family="exponential", shift_sigma=2.0)])
def test_a_collapse_kept_by_ignore_is_stocks_zero_not_nan(draw, family):
    """shift_mode='legacy' gives T_eff = 5 // 17 * 5 = 0 for 5 frames, so the factor is 0; on_degenerate='ignore' keeps
    stock's numbers: a t / (1 + (a - 1) t) = 0 for every t < 1 at a = 0 (and 0 / (0 + (1/t - 1)^2) = 0 for the
    exponential family), so every timestep is 0, as the plain logit-normal gives. A draw made through the factor's
    inverse shift, which is 0 / 0 there, must not turn that collapse into NaN. noise_range then keeps the shifted 0
    within its range: at its lower end, 0.2 N = 200."""
    r = quiet_recipe(dict(shift_mode="legacy", on_degenerate="ignore", **family, **draw))
    u = (torch.arange(8, dtype=torch.float64) + 0.5) / 8
    t = r.training_timesteps(u, meta(512, 512, 5, 8))
    assert t.tolist() == [200.0 if "noise_range" in draw else 0.0] * 8
    # a NaN uniform still gives NaN before the shift, as every draw's does
    assert r.base_draw(torch.tensor([float("nan")], dtype=torch.float64), 0.0).isnan().all()
