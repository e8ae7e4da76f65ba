"""Loss weightings, samplers and shift exponents against the peers' own definitions.

Each reference below is the peer's formula or sampler as the peer writes it (diffusers'
``compute_loss_weighting_for_sd3``, kohya-ss' debiased estimation, musubi-tuner's ``logsnr`` draw, SimpleTuner's
``torch.distributions.Beta`` draw), evaluated independently of this package's code.
"""

import math

import pytest
import torch

import opensora_timeshift_patch as ots
from conftest import meta
from opensora_timeshift_patch.opensora2 import Opensora2Timesteps
from opensora_timeshift_patch.sampling import TimestepDistribution
from standin.stubs import StubModel
from opensora_timeshift_patch.weighting import LossWeighting

T = torch.linspace(0.001, 0.999, 999, dtype=torch.float64)
DRAWS = 200_000


def diffusers_sd3_weighting(scheme, sigmas):
    """diffusers.training_utils.compute_loss_weighting_for_sd3, as diffusers writes it."""
    if scheme == "sigma_sqrt":
        return (sigmas ** -2.0).float()
    if scheme == "cosmap":
        bot = 1 - 2 * sigmas + 2 * sigmas ** 2
        return 2 / (math.pi * bot)
    return torch.ones_like(sigmas)


def kohya_debiased(snr):
    """kohya-ss' apply_debiased_estimation: 1 / sqrt(min(SNR, 1000))."""
    snr_t = torch.min(torch.stack([snr, torch.ones_like(snr) * 1000]), dim=0)[0]
    return 1 / torch.sqrt(snr_t)


def ks_distance(a, b):
    """The two-sample Kolmogorov-Smirnov statistic."""
    a, b = a.sort().values, b.sort().values
    grid = torch.cat([a, b])
    fa = torch.searchsorted(a, grid, right=True) / len(a)
    fb = torch.searchsorted(b, grid, right=True) / len(b)
    return (fa - fb).abs().max().item()


KS_LIMIT = 1.95 * math.sqrt(2 / DRAWS)  # the 0.1% critical value: a seeded draw either passes or fails every run


@pytest.mark.parametrize("scheme", ["none", "sigma_sqrt", "cosmap"])
def test_weightings_equal_diffusers_sd3(scheme):
    ours = LossWeighting(scheme, max_loss_weight=1e6)(T)
    torch.testing.assert_close(ours.float(), diffusers_sd3_weighting(scheme, T).float(), rtol=1e-6, atol=0)


def test_debiased_equals_kohya():
    snr = ((1 - T) / T) ** 2
    torch.testing.assert_close(LossWeighting("debiased", max_loss_weight=1e6)(T), kohya_debiased(snr))


def test_min_snr_weights_the_implied_x0_loss_by_min_snr_gamma():
    # Hang et al.: the x_0-prediction loss weighted by min(SNR, gamma). From a velocity prediction at x_t,
    # x0_hat = x_t - t v_hat; the weighted velocity loss must equal that, sample by sample.
    gen = torch.Generator().manual_seed(0)
    x0, eps, v_hat = (torch.randn(999, 8, generator=gen, dtype=torch.float64) for _ in range(3))
    t = T[:, None]
    x_t = (1 - t) * x0 + t * eps
    x0_hat = x_t - t * v_hat
    snr = ((1 - T) / T) ** 2
    x0_loss = torch.minimum(snr, torch.tensor(5.0, dtype=torch.float64)) * ((x0_hat - x0) ** 2).mean(1)
    v_loss = LossWeighting("min_snr", min_snr_gamma=5.0)(T) * ((v_hat - (eps - x0)) ** 2).mean(1)
    torch.testing.assert_close(v_loss, x0_loss)


def test_weights_are_clipped_never_nan_at_the_ends():
    ends = torch.tensor([0.0, 1.0], dtype=torch.float64)
    assert LossWeighting("sigma_sqrt")(ends).tolist() == [1000.0, 1.0]
    assert LossWeighting("debiased", max_loss_weight=50.0)(ends).tolist() == [1 / math.sqrt(1000), 50.0]
    assert LossWeighting("min_snr")(ends).tolist() == [0.0, 0.0]


def test_a_registered_weighting_is_validated_like_the_built_ins():
    @ots.register_weighting("negative_test")
    def negative(t):
        return t - 0.5

    @ots.register_weighting("nan_test", gain=ots.Setting("gain", "float", 1.0, "", low=0, high=10))
    def nan_weight(t, gain=1.0):
        return gain * t / t  # NaN at t = 0

    try:
        with pytest.raises(ots.SettingError, match="a weighting must return one weight >= 0"):
            ots.RFlowTimeShift(loss_weighting="negative_test")
        with pytest.raises(ots.SettingError, match="never NaN"):
            ots.RFlowTimeShift(loss_weighting="nan_test")
        with pytest.raises(ots.SettingError, match="gain=-1.0 is not allowed"):
            ots.RFlowTimeShift(loss_weighting="nan_test", gain=-1.0)
    finally:
        ots.settings.WEIGHTINGS.unregister("negative_test")
        ots.settings.WEIGHTINGS.unregister("nan_test")


def test_training_loss_is_stock_loss_times_weight_times_open_sora_weights():
    x = torch.randn(4, 4, 5, 8, 8, generator=torch.Generator().manual_seed(1))
    kw = meta(256, 256, [17] * 4)
    t = torch.tensor([10.0, 250.0, 600.0, 990.0])
    table = torch.linspace(0.5, 2.0, 1001)  # Open-Sora's per-timestep weights
    plain = ots.RFlowTimeShift(backend="standalone")
    weighted = ots.RFlowTimeShift(backend="standalone", loss_weighting="cosmap")
    noise = torch.randn_like(x)
    base = plain.training_losses(StubModel(), x, kw, noise=noise, t=t, weights=table)["loss"]
    ours = weighted.training_losses(StubModel(), x, kw, noise=noise, t=t, weights=table)["loss"]
    sigma = t / 1000
    torch.testing.assert_close(ours, base * diffusers_sd3_weighting("cosmap", sigma).float())


def test_sigma_sqrt_at_t_zero_gives_a_finite_loss():
    x = torch.randn(2, 4, 1, 8, 8)
    loss = ots.RFlowTimeShift(backend="standalone", loss_weighting="sigma_sqrt").training_losses(
        StubModel(), x, meta(256, 256, [1, 1]), t=torch.tensor([0.0, 500.0]))["loss"]
    assert bool(loss.isfinite().all())


@pytest.mark.parametrize("settings, message", [
    (dict(max_loss_weight=10.0), "max_loss_weight=10.0 only applies with a loss_weighting"),
    (dict(loss_weighting="min_snr", min_snr_gamma=0), r"min_snr_gamma=0 is not allowed: use a finite number in"),
    (dict(min_snr_gamma=5.0), "min_snr_gamma=5.0 is a parameter of loss_weighting 'min_snr'"),
    (dict(loss_weighting="snr"), "loss_weighting='snr' is not allowed: use one of 'none', 'sigma_sqrt'"),
    (dict(sample_method="beta", beta_alpha=True), "beta_alpha=True is not allowed"),
    (dict(sample_method="fixed", timesteps=[]), r"timesteps=\[\] is not allowed: use a list of 1 to 10000"),
    (dict(sample_method="fixed", timesteps=[0.5, 1.5]), r"timesteps=\[0.5, 1.5\] is not allowed"),
    (dict(sample_method="fixed", timesteps=[0.5, 0.501]), "collapses"),
    (dict(sample_method="fixed", timesteps=[0.2, 0.8], fixed_order="cycle"), "fixed_order='cycle' visits the list"),
    (dict(resolution_shift="linear", spatial_exponent=0.4), "spatial_exponent=0.4 only applies with resolution_shift='sqrt'"),
    (dict(temporal_exponent=-1), r"temporal_exponent=-1 is not allowed: use a finite number in \[0, 2\]"),
    (dict(resolution_shift="linear", token_count="video", temporal_exponent=0.3),
     "temporal_exponent=0.3 does not apply with token_count='video'"),
    (dict(token_count="video"), "token_count='video' only applies with resolution_shift='linear'"),
])
def test_bad_toolkit_settings_are_refused_by_name(settings, message):
    with pytest.raises((ValueError, TypeError), match=message):
        ots.RFlowTimeShift(**settings)


def test_loss_weighting_is_refused_on_opensora2():
    with pytest.raises(ots.SettingError, match="loss_weighting='cosmap' has no meaning on Open-Sora 2.0"):
        Opensora2Timesteps(loss_weighting="cosmap")


# --- samplers --------------------------------------------------------------------------------------------------

def ours(method, **params):
    u = torch.rand(DRAWS, generator=torch.Generator().manual_seed(7), dtype=torch.float64)
    return TimestepDistribution(method, **params)(u)


@pytest.mark.parametrize("loc, scale", [(0.0, 1.0), (-1.0, 2.0), (2.0, 0.5)])
def test_logsnr_matches_musubi_tuner(loc, scale):
    gen = torch.Generator().manual_seed(11)
    logsnr = torch.normal(mean=loc, std=scale, size=(DRAWS,), generator=gen, dtype=torch.float64)
    peer = torch.sigmoid(-logsnr / 2)
    assert ks_distance(ours("logsnr", loc=loc, scale=scale), peer) < KS_LIMIT


@pytest.mark.parametrize("a, b", [(2.0, 2.0), (0.5, 0.5), (1.0, 3.0), (5.0, 1.5)])
def test_beta_matches_simpletuner_and_its_inverse_is_exact(a, b):
    torch.manual_seed(13)
    peer = torch.distributions.Beta(torch.tensor(a, dtype=torch.float64), torch.tensor(b, dtype=torch.float64))
    assert ks_distance(ours("beta", beta_alpha=a, beta_beta=b), peer.sample((DRAWS,))) < KS_LIMIT
    from scipy.special import betainc

    u = torch.rand(100_000, generator=torch.Generator().manual_seed(17), dtype=torch.float64)
    t = TimestepDistribution("beta", beta_alpha=a, beta_beta=b)(u)
    assert float((torch.from_numpy(betainc(a, b, t.numpy())) - u).abs().max()) < 2e-5


def test_fixed_draws_each_listed_timestep_equally():
    t = ours("fixed", timesteps=[0.9, 0.1, 0.5, 0.3])
    counts = {v: int((t == v).sum()) for v in (0.1, 0.3, 0.5, 0.9)}
    assert set(t.unique().tolist()) == {0.1, 0.3, 0.5, 0.9}
    assert all(abs(c / DRAWS - 0.25) < 0.005 for c in counts.values())


def test_fixed_cycle_visits_the_list_in_order_across_ranks_and_resumes():
    scheduler = ots.RFlowTimeShift(sample_method="fixed", timesteps=[0.2, 0.4, 0.6, 0.8], fixed_order="cycle",
                                   timestep_rng="per_sample", use_timestep_transform=False)
    x = torch.zeros(2, 4, 1, 8, 8)
    seen = [scheduler.sample_timesteps(x, None, step=s).tolist() for s in range(4)]
    # sample i at step s gets entry (s + i) mod 4: one entry per step, in order.
    assert seen == [[200.0, 400.0], [400.0, 600.0], [600.0, 800.0], [800.0, 200.0]]
    assert scheduler.sample_timesteps(x, None, step=5).tolist() == seen[1]  # a resume at step 5 = step 1 + 4


# --- shift exponents and token counts ---------------------------------------------------------------------------

def test_exponents_at_one_half_are_todays_rule_bit_for_bit():
    kw = meta([144, 720, 1080], [256, 1280, 1920], [1, 51, 17])
    t = torch.linspace(0, 1000, 3)
    today = ots.timestep_transform(t, kw, num_timesteps=1000)
    assert torch.equal(ots.timestep_transform(t, kw, num_timesteps=1000, spatial_exponent=0.5,
                                              temporal_exponent=0.5), today)


def test_temporal_exponent_zero_is_the_spatial_rule_and_others_follow_the_formula():
    kw = meta(720, 1280, 51)
    t = torch.tensor([300.0])
    spatial = ots.timestep_transform(t, kw, num_timesteps=1000, shift_mode="spatial")
    assert torch.equal(ots.timestep_transform(t, kw, num_timesteps=1000, temporal_exponent=0.0), spatial)
    _, ratio = ots.timestep_transform(t, kw, num_timesteps=1000, spatial_exponent=0.3, temporal_exponent=0.25,
                                      ret_ratio=True)
    t_eff = (51 // 17) * 5  # the latent policy on 51 frames: 15
    assert ratio.item() == pytest.approx((720 * 1280 / 512 ** 2) ** 0.3 * t_eff ** 0.25, rel=1e-6)


def test_video_token_count_interpolates_on_the_whole_clip():
    shift = ots.TimestepShift(resolution_shift="linear", token_count="video")
    _, ratio = shift(torch.tensor([0.5]), meta(256, 256, 17), latent_frames=5, latent_hw=(32, 32), ret_ratio=True)
    tokens = 5 * 16 * 16  # 5 latent frames of 16 x 16 tokens
    assert ratio.item() == pytest.approx(1 + 2 / 3840 * (tokens - 256), rel=1e-6)


def test_opensora2_takes_the_exponents():
    assert Opensora2Timesteps(temporal_exponent=0.25).factor(16, 256) == pytest.approx(2.0)


def test_fixed_with_t_range_keeps_the_listed_timesteps_on_both_bounds():
    t = ours("fixed", timesteps=[0.1, 0.3, 0.5, 0.7, 0.9], t_range=(0.3, 0.7))
    assert sorted(set(t.tolist())) == [0.3, 0.5, 0.7]
    assert sorted(set(ours("fixed", timesteps=[0.0, 0.5, 1.0], t_range=(0.0, 1.0)).tolist())) == [0.0, 0.5, 1.0]


def test_a_weighting_of_the_wrong_shape_at_run_time_is_named():
    @ots.register_weighting("shape_test")
    def column(t):
        return t[:, None] if t.numel() != 1001 else torch.ones_like(t)

    try:
        with pytest.raises(ots.SettingError, match="returned <Tensor of shape \\(4, 1\\)"):
            LossWeighting("shape_test")(torch.rand(4))
    finally:
        ots.settings.WEIGHTINGS.unregister("shape_test")
