"""Mixture components the shift does not move alike (shift=False, stretch, reflect): LTX-2's training draw.

Expected values come from formulas derived here by hand (the CDF of a stretched, reflected, clamped shifted
logit-normal, written with math.erf), from sampling each component by hand as LTX-2's trainer does, and from the
trainer's own sampler (goldens recorded by scripts/record_model_schedules.py from Lightricks/LTX-2).
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest
import torch
from scipy import stats

from opensora_timeshift_patch import Recipe
from opensora_timeshift_patch.sampling import TimestepDistribution
from opensora_timeshift_patch.settings import SettingError

GOLDENS = json.loads((Path(__file__).parent / "data" / "model_schedules.json").read_text(encoding="utf-8"))
DRAWS = GOLDENS["ltx2"]["training_draws"]
EPS = 1e-3
Z_LOW, Z_HIGH = -2.5758, 3.0902  # the trainer's normal_005_percentile and normal_999_percentile, std 1
# LTX-2 clips whose latent token counts (latent frames x H/32 x W/32) the goldens were drawn at
CLIPS = {"1024": (512, 512, 25), "2688": (512, 768, 49), "13376": (704, 1216, 121)}


def sigmoid(z: float) -> float:
    return 1 / (1 + math.exp(-z))


def logit(p: float) -> float:
    return math.log(p) - math.log1p(-p)


def phi(z: float) -> float:
    return 0.5 * math.erfc(-z / math.sqrt(2))


def ltx2_cdf(x: float, mu: float) -> float:
    """P(T <= x) of LTX-2's ShiftedLogitNormalTimestepSampler, derived by hand: with probability 0.9,
    Y = (sigmoid(mu + Z) - p0) / (p9 - p0), p0 = sigmoid(mu - 2.5758), p9 = sigmoid(mu + 3.0902), then Y < eps
    becomes 2 eps - Y, then clamp to [0, 1]; so P(T <= x) = P(2 eps - x <= Y <= x) for eps <= x < 1. Else a uniform
    on [eps, 1)."""
    if x >= 1:
        return 1.0
    if x < EPS:
        return 0.0
    p0, p9 = sigmoid(mu + Z_LOW), sigmoid(mu + Z_HIGH)

    def y_cdf(y: float) -> float:  # P(Y <= y) = P(Z <= logit(p0 + y (p9 - p0)) - mu)
        s = p0 + y * (p9 - p0)
        return 0.0 if s <= 0 else 1.0 if s >= 1 else phi(logit(s) - mu)

    return 0.9 * (y_cdf(x) - y_cdf(2 * EPS - x)) + 0.1 * (x - EPS) / (1 - EPS)


def mu_of(tokens: float) -> float:
    return 0.95 + (2.05 - 0.95) / (4096 - 1024) * (tokens - 1024)  # the trainer's line, not capped


def meta(*clips, repeat=1):
    rows = [c for c in clips for _ in range(repeat)]
    return {k: torch.tensor([float(c[i]) for c in rows]) for i, k in enumerate(("height", "width", "num_frames"))}


def test_the_recipe_counts_the_trainers_tokens_and_its_mu_is_not_capped():
    r = Recipe(dict(recipe="ltx-2"))
    for tokens, clip in CLIPS.items():
        factor = float(r.shift.shift_factor(meta(clip)).double())
        assert factor == pytest.approx(math.exp(mu_of(int(tokens))), rel=1e-6)
    # the golden at 13376 tokens is past 4096: an uncapped mu puts a draw's clamp at 1 above the 99.9% share
    assert DRAWS["by_tokens"]["13376"]["at_one"] > 1.2e-3


@pytest.mark.parametrize("tokens", [1024, 2688, 8192, 13376, 16384])
def test_the_recipes_cdf_is_the_hand_derived_one(tokens):
    r = Recipe(dict(recipe="ltx-2"))
    mu = mu_of(tokens)
    x = [0.0, 5e-4, EPS, 1.5e-3, 2e-3, 0.004, 0.01, 0.05, 0.1, 0.3, 0.5, 0.7, 0.9, 0.95, 0.99, 0.999, 1 - 1e-9, 1.0]
    ours = r.shifted_cdf(torch.tensor(x, dtype=torch.float64), math.exp(mu)).tolist()
    assert ours == pytest.approx([ltx2_cdf(v, mu) for v in x], abs=1e-12)


@pytest.mark.parametrize("tokens", sorted(DRAWS["by_tokens"], key=int))
def test_the_recipe_draws_as_the_trainers_own_sampler(tokens):
    """Against the trainer's own sample() (2^22 draws per token count): the CDF at each recorded point within the
    DKW bound at a 1e-6 false-alarm rate, and the share at exactly t = 1 within six binomial standard errors."""
    recorded, n = DRAWS["by_tokens"][tokens], DRAWS["draws"]
    r = Recipe(dict(recipe="ltx-2"))
    a = r.shift.shift_factor(meta(CLIPS[tokens])).double()
    ours = r.shifted_cdf(torch.tensor(DRAWS["points"], dtype=torch.float64), a)
    assert (ours - torch.tensor(recorded["cdf"], dtype=torch.float64)).abs().max() < math.sqrt(math.log(2e6) / (2 * n))
    at_one = 1 - float(r.shifted_cdf(torch.tensor([1 - 1e-12], dtype=torch.float64), a))
    assert abs(at_one - recorded["at_one"]) < 6 * math.sqrt(at_one / n)
    assert recorded["least"] >= EPS


def test_training_draws_each_sample_through_its_own_factor():
    """An uneven mixed-bucket batch: the 1.x training timesteps of each bucket's samples at midpoint uniforms are
    that bucket's hand-derived distribution (to the midpoints' 1 / (2 n) and float32), never below eps x N."""
    r = Recipe(dict(recipe="ltx-2", timestep_rng="per_sample"))
    sizes = {"1024": 3000, "2688": 1000, "13376": 5000}
    clips = [CLIPS[k] for k, m in sizes.items() for _ in range(m)]
    u = torch.cat([(torch.arange(m, dtype=torch.float64) + 0.5) / m for m in sizes.values()])
    t = r.training_timesteps(u, meta(*clips))
    assert t.dtype == torch.float32 and float(t.min()) >= EPS * 1000 * (1 - 1e-6)
    start = 0
    for tokens, m in sizes.items():
        part = t[start:start + m].double().sort().values / 1000
        start += m
        mu = mu_of(int(tokens))
        for q in (0.01, 0.1, 0.5, 0.9, 0.99):
            value = float(part[int(q * m)])
            assert ltx2_cdf(value * (1 + 1e-6), mu) >= q - 1 / m and ltx2_cdf(value * (1 - 1e-6), mu) <= q + 1 / m


def test_at_16k_tokens_the_factor_is_past_600_and_the_median_stays_near_092():
    r = Recipe(dict(recipe="ltx-2"))
    clip = (1024, 1024, 129)  # 17 latent frames x 32 x 32 = 17408 tokens
    a = float(r.shift.shift_factor(meta(clip)).double())
    assert a > 600
    u = torch.tensor([0.5], dtype=torch.float64)
    median = float(r.training_timesteps(u, meta(clip))) / 1000
    # the stretched logit-normal's median tends to (e^2.5758 - 1) / (e^2.5758 - e^-3.0902) = 0.927 as mu grows;
    # the mixture's solves 0.9 P(Y <= m) + 0.1 (m - eps) / (1 - eps) = 1/2
    assert ltx2_cdf(median, math.log(a)) == pytest.approx(0.5, abs=1e-6)
    assert 0.9 < median < 0.93


def test_a_shifted_and_an_unshifted_component_by_ks_against_sampling_each():
    """0.6 logit-normal shifted by 3 (rational) plus 0.4 uniform the shift never touches, drawn as the trainer
    would: pick the component by a uniform, draw it alone."""
    r = Recipe(dict(sample_method="mixture", resolution_shift="constant", shift=3.0, temporal_exponent=0.0,
                    components=[dict(sample_method="logit-normal", weight=0.6),
                                dict(sample_method="uniform", weight=0.4, shift=False)]))
    n = 20_000
    g = torch.Generator().manual_seed(1)
    s = torch.sigmoid(torch.randn(n, generator=g, dtype=torch.float64))
    shifted = 3 * s / (1 + 2 * s)
    hand = torch.where(torch.rand(n, generator=g, dtype=torch.float64) < 0.6, shifted,
                       torch.rand(n, generator=g, dtype=torch.float64))
    u = torch.rand(n, generator=torch.Generator().manual_seed(2), dtype=torch.float64)
    ours = r.training_timesteps(u, meta((256, 256, 1), repeat=n)).double() / 1000
    assert stats.ks_2samp(ours.numpy(), hand.numpy()).pvalue > 1e-6
    # and not the mixture with both shifted: the uniform shifted by 3 is far from it
    both = torch.where(torch.rand(n, generator=g, dtype=torch.float64) < 0.6, shifted,
                       (lambda v: 3 * v / (1 + 2 * v))(torch.rand(n, generator=g, dtype=torch.float64)))
    assert stats.ks_2samp(ours.numpy(), both.numpy()).pvalue < 1e-6


def test_a_stretch_without_reflect_puts_the_share_below_lo_at_zero():
    # stretch=(0.2, 0.8) of a uniform, shift 2: shift(0.2) = 1/3 goes to 0, so P(T = 0) = P(t <= 0.2) = 0.2 of that
    # component; T <= x for x in [0, 1) is the shifted draw <= 1/3 + x (shift(0.8) - 1/3) = 1/3 + x (8/9 - 1/3).
    r = Recipe(dict(sample_method="mixture", resolution_shift="constant", shift=2.0, temporal_exponent=0.0,
                    components=[dict(sample_method="uniform", weight=0.5, stretch=(0.2, 0.8)),
                                dict(sample_method="uniform", weight=0.5)]))
    x = torch.tensor([0.0, 0.25, 0.5, 0.99], dtype=torch.float64)
    s = 1 / 3 + x * (8 / 9 - 1 / 3)
    expected = 0.5 * (s / (2 - s)) + 0.5 * (x / (2 - x))  # unshifting y: y / (a - (a - 1) y)
    assert r.shifted_cdf(x, 2.0).tolist() == pytest.approx(expected.tolist(), abs=1e-12)
    assert float(r.shifted_cdf(torch.tensor([-1e-9], dtype=torch.float64), 2.0)) == 0.0


def test_noise_range_confines_the_ltx2_draw_as_rejection_sampling_does():
    r = Recipe(dict(recipe="ltx-2", noise_range=(0.9, 1.0)))
    clip = CLIPS["2688"]
    a = float(r.shift.shift_factor(meta(clip)).double())
    n = 4000
    u = torch.rand(n, generator=torch.Generator().manual_seed(3), dtype=torch.float64)
    ours = r.training_timesteps(u, meta(clip, repeat=n)).double().numpy() / 1000
    assert ours.min() >= 0.9 and ours.max() <= 1.0
    x = np.linspace(0.9, 1 - 1e-12, 400)
    cdf = np.array([ltx2_cdf(v, math.log(a)) for v in x])
    conditioned = (cdf - ltx2_cdf(0.9 - 1e-15, math.log(a))) / (1 - ltx2_cdf(0.9 - 1e-15, math.log(a)))
    assert stats.kstest(ours, lambda v: np.interp(v, x, conditioned)).pvalue > 1e-6


def test_the_guard_and_inspect_see_the_draw_as_training_makes_it():
    from opensora_timeshift_patch.cli.views import drawn

    r = Recipe(dict(recipe="ltx-2"))
    clip = CLIPS["13376"]
    a = float(r.shift.shift_factor(meta(clip)).double())
    u = torch.tensor([0.001, 0.5, 0.999], dtype=torch.float64)
    shifted = r.shift.curve(drawn(r, u, a), torch.tensor(a, dtype=torch.float64))
    for q, t in zip(u.tolist(), shifted.tolist()):
        assert ltx2_cdf(t * (1 + 1e-9), math.log(a)) >= q - 1e-9 and ltx2_cdf(t * (1 - 1e-9), math.log(a)) <= q + 1e-9
    shares = r.shift.base(torch.tensor([[0.5]], dtype=torch.float64), torch.tensor([[a]], dtype=torch.float64))
    assert float(r.shift.curve(shares, torch.tensor(a, dtype=torch.float64))) == pytest.approx(shifted[1].item())


def comps(**first):
    return [dict(dict(sample_method="logit-normal", weight=0.9), **first), dict(sample_method="uniform", weight=0.1)]


@pytest.mark.parametrize("components, message", [
    (comps(shift="no"), r"component 0 .*shift='no' is not allowed: use True or False"),
    (comps(shift=0), r"shift=0 is not allowed: use True or False"),
    (comps(shift=None), r"shift=None is not allowed"),
    (comps(t_range=(0.5, 0.1)), r"t_range=\(0.5, 0.1\) is not allowed"),
    (comps(t_range=(0.1, math.nan)), r"t_range=.* is not allowed"),
    (comps(t_range="0.1,0.9"), r"t_range='0.1,0.9' is not allowed"),
    (comps(t_range_mode="squash", t_range=(0.1, 0.9)), r"t_range_mode='squash' is not allowed"),
    (comps(t_range_mode="rescale"), r"t_range_mode='rescale' without t_range"),
    (comps(stretch=(0.9, 0.1)), r"stretch=\(0.9, 0.1\) is not allowed"),
    (comps(stretch=(0.1,)), r"stretch=\(0.1,\) is not allowed"),
    (comps(stretch=(-0.1, 0.9)), r"stretch=.* is not allowed"),
    (comps(stretch=(0.1, math.inf)), r"stretch=.* is not allowed"),
    (comps(stretch=(True, 0.9)), r"stretch=.* is not allowed"),
    (comps(reflect=1e-3), r"reflect=0.001 without stretch"),
    (comps(stretch=(0.1, 0.9), reflect=-1e-3), r"reflect=-0.001 is not allowed: use None or a finite number in "
                                                r"\[0, 0.5\]"),
    (comps(stretch=(0.1, 0.9), reflect=math.nan), r"reflect=nan is not allowed"),
    (comps(stretch=(0.1, 0.9), reflect=0.7), r"reflect=0.7 is not allowed"),
    (comps(stretch=(0.1, 0.9), reflect="0.001"), r"reflect='0.001' is not allowed"),
    (comps(sample_method="fixed", timesteps=(0.2, 0.8), stretch=(0.1, 0.9)), "stretches sample_method='fixed'"),
    (comps(t_range=(0.4, 0.4000001)), "collapses"),
])
def test_hostile_component_keys_are_refused_by_name(components, message):
    with pytest.raises(SettingError, match=message):
        TimestepDistribution("mixture", components=components)
    with pytest.raises(SettingError, match=message):
        Recipe(dict(sample_method="mixture", components=components))


@pytest.mark.parametrize("extra, message", [
    (dict(use_timestep_transform=False), "only apply with use_timestep_transform=True"),
    (dict(t_range=(0.1, 0.9)), "give each component its own t_range"),
    (dict(uniform_over_threshold=0.5), "components with shift=False or stretch and uniform_over_threshold=0.5"),
])
def test_shifted_components_refuse_what_cannot_combine(extra, message):
    with pytest.raises(SettingError, match=message):
        Recipe(dict(sample_method="mixture", components=comps(shift=False), **extra))


def test_components_shifted_alike_keep_the_plain_draw():
    # shift=True and no stretch are the defaults: the mixture stays a base distribution, shifted as any is
    r = Recipe(dict(sample_method="mixture", components=comps(shift=True, t_range=None)))
    assert r.shifted_components is None and not r.factor_dependent


def test_a_checked_mixture_round_trips_its_component_keys():
    d = TimestepDistribution("mixture", components=comps(shift=False, t_range=(0.1, 0.9), t_range_mode="rescale"))
    again = TimestepDistribution("mixture", components=list(d.params["components"]))
    assert again.params == d.params
    assert d.params["components"][0].keys() == dict(sample_method="logit-normal", weight=0.9, shift=False,
                                                    t_range=(0.1, 0.9), t_range_mode="rescale")


UNSHIFTED_UNIFORM = dict(sample_method="mixture", components=[dict(sample_method="logit-normal", weight=0.6),
                                                              dict(sample_method="uniform", weight=0.4, shift=False)])


def hand_cdf(x: np.ndarray, a: float) -> np.ndarray:
    """0.6 sigmoid(N(0, 1)) shifted by a (rational), 0.4 uniform unshifted: P(T <= x)."""
    base = x / (a - (a - 1) * x)
    return 0.6 * stats.norm.cdf(np.log(base) - np.log1p(-base)) + 0.4 * x


def test_the_1x_scheduler_draws_each_sample_through_its_own_factor():
    import opensora_timeshift_patch as ots

    scheduler = ots.RFlowTimeShift(**UNSHIFTED_UNIFORM, timestep_rng="per_sample")
    n = 3000
    m = {k: torch.cat([meta((512, 512, 1), repeat=n)[k], meta((1024, 1024, 1), repeat=n)[k]]) for k in meta((1, 1, 1))}
    t = scheduler.sample_timesteps(torch.zeros(2 * n, 4, 1, 4, 4), m, step=5).double().numpy() / 1000
    for part, a in ((t[:n], 1.0), (t[n:], 2.0)):  # 1.x: sqrt(H W / 512^2), an image
        assert stats.kstest(part, lambda v: hand_cdf(np.clip(v, 1e-12, 1 - 1e-12), a)).pvalue > 1e-6
    # the shift=False uniform is what moves: with it shifted too, the 1024 half is refused
    assert stats.kstest(t[n:], lambda v: hand_cdf(np.clip(v, 1e-12, 1 - 1e-12), 1.0)).pvalue < 1e-6


def test_a_bucket_rule_may_select_the_shifted_components():
    import opensora_timeshift_patch as ots

    scheduler = ots.RFlowTimeShift(bucket_settings=[dict(frames=1, **UNSHIFTED_UNIFORM)], timestep_rng="per_sample",
                                   sample_method="logit-normal")
    n = 3000
    t = scheduler.sample_timesteps(torch.zeros(n, 4, 1, 4, 4), meta((1024, 1024, 1), repeat=n), step=2)
    assert stats.kstest(t.double().numpy() / 1000, lambda v: hand_cdf(np.clip(v, 1e-12, 1 - 1e-12), 2.0)).pvalue > 1e-6


def test_the_opensora2_drop_in_draws_through_its_alpha():
    from opensora_timeshift_patch.opensora2 import Opensora2Timesteps

    ts = Opensora2Timesteps(**UNSHIFTED_UNIFORM)
    latent = (5, 128, 128)  # 4096 tokens: alpha = 3 sqrt(5)
    a = 3 * math.sqrt(5)
    assert ts.factor(latent[0], latent[1] * latent[2] // 4) == pytest.approx(a)
    torch.manual_seed(0)
    t = ts.training_timesteps(torch.rand(4000), latent).double().numpy()
    assert stats.kstest(t, lambda v: hand_cdf(np.clip(v, 1e-12, 1 - 1e-12), a)).pvalue > 1e-6


def test_the_ltx_recipes_count_ltxs_latent_whatever_latent_training_passes():
    """On Open-Sora 1.x the latent comes from Open-Sora's VAE (4x in time, 8x in space): 256x256 at 25 frames is
    7 x 32 x 32. LTX-2 counts its own latent of that clip, 4 x 8 x 8 = 256 tokens (mu = 0.95 + 1.1 (256 - 1024) /
    3072), as inspect does from the pixel meta; counting Open-Sora's latent would give 7168 tokens."""
    import opensora_timeshift_patch as ots

    for name in ("ltx-2", "ltx-video-0.9"):
        scheduler = ots.RFlowTimeShift(recipe=name, timestep_rng="per_sample")
        m = meta((256, 256, 25), repeat=2)
        t = scheduler.sample_timesteps(torch.zeros(2, 4, 7, 32, 32), m, step=3)
        recipe = scheduler.recipe
        u, _ = recipe.stream_uniforms(2, "cpu", 3)
        expected_factor = math.exp(mu_of(4 * 8 * 8))
        assert float(recipe.shift.shift_factor(m, 7, torch.float32, None, (32, 32), 2)[0]) == pytest.approx(
            expected_factor, rel=1e-6)
        assert torch.equal(t, recipe.training_timesteps(u, m))  # the same draw as with no latent at all


@pytest.mark.parametrize("settings, message", [
    (dict(latent_from="pixels"), r"latent_from='pixels' is not allowed: use one of 'tensor', 'meta'"),
    (dict(latent_from=True), r"latent_from=True is not allowed"),
    (dict(latent_from="meta", shift_mode="legacy"), r"latent_from='meta' with shift_mode='legacy' and "
                                                    r"resolution_shift='sqrt': nothing counts the latent"),
])
def test_latent_from_refuses_what_it_cannot_mean(settings, message):
    with pytest.raises(SettingError, match=message):
        Recipe(settings)


def test_latent_from_has_no_meaning_on_opensora2():
    with pytest.raises(SettingError, match="latent_from='meta' has no meaning on Open-Sora 2.0"):
        Recipe(dict(latent_from="meta"), release="2.0")


def ltx2_cdf_complement(x: float, mu: float) -> float:
    """ltx2_cdf written in complements, for large mu, where sigmoid(mu + z) rounds to 1: with q = 1 - S =
    sigmoid(-(mu + Z)), Y <= y holds when q >= c = (1 - p0) - y (p9 - p0), that is Z <= -mu - logit(c)."""
    if x >= 1:
        return 1.0
    if x < EPS:
        return 0.0
    c0, c9 = sigmoid(-(mu + Z_LOW)), sigmoid(-(mu + Z_HIGH))  # 1 - p0, 1 - p9

    def y_cdf(y: float) -> float:
        c = c0 - y * (c0 - c9)
        return 1.0 if c <= 0 else 0.0 if c >= 1 else phi(-mu - logit(c))

    return 0.9 * (y_cdf(x) - y_cdf(2 * EPS - x)) + 0.1 * (x - EPS) / (1 - EPS)


@pytest.mark.parametrize("clip", [(2048, 2048, 193), (2048, 3584, 257)])
def test_the_stretch_holds_its_digits_at_huge_token_counts(clip):
    # 25 x 64 x 64 = 102400 tokens (mu 37.3) and 33 x 64 x 112 = 236544 (mu 84.7): the stretch ends
    # sigmoid(mu - 2.5758) and sigmoid(mu + 3.0902) both lie within 1e-15 of 1, and still the draw is the trainer's
    r = Recipe(dict(recipe="ltx-2"))
    a = float(r.shift.shift_factor(meta(clip)).double())
    mu = math.log(a)
    assert mu > 37
    x = [2e-3, 0.01, 0.1, 0.5, 0.8, 0.9, 0.95, 0.99]
    ours = r.shifted_cdf(torch.tensor(x, dtype=torch.float64), a).tolist()
    assert ours == pytest.approx([ltx2_cdf_complement(v, mu) for v in x], abs=1e-9)
    median = float(r.training_timesteps(torch.tensor([0.5], dtype=torch.float64), meta(clip))) / 1000
    assert ltx2_cdf_complement(median, mu) == pytest.approx(0.5, abs=1e-6) and 0.9 < median < 0.93


def test_the_guards_end_shares_convert_the_draw_through_each_factor():
    """end_shares counts the shifted draw within 1/1000 of each end, the base draw made for that factor: for LTX-2
    at 13376 tokens, 1 - G(1 - eps) near t = 1 and G(eps-) = 0 near t = 0 (the reflect keeps every draw at or above
    eps), G the hand-derived CDF; exact to the midpoints' 1 / (2 points)."""
    from opensora_timeshift_patch.guard import end_shares

    r = Recipe(dict(recipe="ltx-2"))
    a = float(r.shift.shift_factor(meta(CLIPS["13376"])).double())
    points = 20_000
    low, high = end_shares(r.shift.base, r.shift.curve, [a], points=points)
    assert float(low[0]) == 0.0
    assert float(high[0]) == pytest.approx(1 - ltx2_cdf(1 - 1e-3, math.log(a)), abs=1 / points)
