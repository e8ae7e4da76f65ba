"""Mixture components the shift does not move alike (shift=False, stretch), and noise_range, tried as a hostile user
would: each input gets a named error or a correct result, never NaN timesteps or a setting that does not apply.

Expected values are derived by hand in each test."""

import math
import warnings

import pytest
import torch

from opensora_timeshift_patch import Recipe
from opensora_timeshift_patch.settings import SettingError

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


def phi(z):
    return 0.5 * math.erfc(-z / math.sqrt(2))


def uniforms(lo, hi, **keys):
    return [dict(sample_method="uniform", weight=0.5, stretch=(lo, hi), **keys) for _ in range(2)]


def test_stretches_that_clamp_most_draws_onto_both_ends_are_refused():
    """A stretch (lo, hi) sends a component's draws below lo to t = 0 and above hi to t = 1, whatever the factor: a
    uniform's stretch (0.4, 0.6) clamps 0.4 + 0.4 = 80% of its draws, a logit-normal's P(logit t < ln(2/3)) +
    P(logit t > ln(3/2)) = 2 Phi(ln(2/3)) = 68.5%: together 0.5 * 0.8 + 0.5 * 0.685 = 74.3% of the draws at 0 or N,
    split between the ends so that neither holds more than half (which the guard's pile-up judgement looks for)."""
    share = 0.5 * 0.8 + 0.5 * 2 * phi(math.log(2 / 3))
    assert f"{share:.1%}" == "74.3%"
    components = [dict(sample_method="uniform", weight=0.5, stretch=(0.4, 0.6)),
                  dict(sample_method="logit-normal", weight=0.5, stretch=(0.4, 0.6))]
    with pytest.raises(SettingError, match=r"components=.* is not allowed: their stretches clamp 74\.3% of the draws "
                                           r"onto exactly t = 0 or t = 1 .*component 0's stretch=\(0\.4, 0\.6\) clamps "
                                           r"80\.0% .*more than the 50% allowed"):
        Recipe(dict(sample_method="mixture", components=components))
    # the same narrow stretch on a quarter of the draws leaves 0.25 * 0.8 = 20% at the ends: accepted
    Recipe(dict(sample_method="mixture", components=[dict(components[0], weight=0.25),
                                                     dict(sample_method="logit-normal", weight=0.75)]))


def test_a_reflected_stretch_clamps_nothing_below_it():
    """Both uniforms stretched over (0.6, 1): 60% of each below lo goes to t = 0 (refused), unless reflect turns
    them into 2 e - Y > 0 (accepted: nothing above hi = 1 is clamped)."""
    with pytest.raises(SettingError, match=r"clamp 60\.0% of the draws"):
        Recipe(dict(sample_method="mixture", components=uniforms(0.6, 1.0)))
    r = Recipe(dict(sample_method="mixture", components=uniforms(0.6, 1.0, reflect=0.01)))
    u = (torch.arange(1000, dtype=torch.float64) + 0.5) / 1000
    t = r.training_timesteps(u, meta(512, 512, 1, 1000))
    assert float((t == 0).double().mean()) == 0.0


def test_a_mixture_the_shift_moves_nowhere_is_refused():
    """Every component with shift=False is drawn where it lands: shift=5.0 (or any shift setting) would change no
    timestep, so it is refused rather than silently ignored."""
    components = [dict(c, shift=False) for c in UNSHIFTED]
    with pytest.raises(SettingError, match=r"components=.* all have shift=False: the shift moves none of the draws"):
        Recipe(dict(sample_method="mixture", components=components, resolution_shift="constant", shift=5.0,
                    temporal_exponent=0.0))
    stretched = [dict(STRETCHED[0], shift=False), dict(STRETCHED[1], shift=False)]
    with pytest.raises(SettingError, match=r"all have shift=False"):
        Recipe(dict(sample_method="mixture", components=stretched))


@pytest.mark.parametrize("given, method", [(["--set", "recipe=ltx-2"], "mixture"),
                                           (["--set", "recipe=wan2.2-ti2v-5b"], "uniform"),
                                           (["--sample-method", "cosmap"], "cosmap")])
def test_the_plots_histogram_names_the_distribution_it_draws(tmp_path, given, method):
    """plot's histogram title names the distribution drawn: a recipe's own (LTX-2's mixture; Wan 2.2's settings name none,
    so 1.x's default uniform), not the --sample-method default logit-normal that the recipe replaces."""
    from opensora_timeshift_patch.cli import build_parser
    from opensora_timeshift_patch.cli.views import view_of

    args = build_parser().parse_args(["plot", "--out", str(tmp_path), "--frames", "17", "--resolution", "512x512",
                                      *given])
    view = view_of(args)
    assert view.distribution.sample_method == method
    assert view.method == method
