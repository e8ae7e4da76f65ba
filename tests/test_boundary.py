"""Expert boundaries in noise level: the shifted level converts to an unshifted t through each sample's factor."""

from __future__ import annotations

import pytest
import torch

from opensora_timeshift_patch.shift import exponential_shift, inverse_shift, rational_shift


def test_wan22_boundary_reproduces_diffsynth_fraction_at_shift_5_and_moves_at_shift_3():
    # t' = a t / (1 + (a - 1) t) gives t = t' / (a - (a - 1) t'): at a = 5, t' = 0.875: t = 0.875 / 1.5 = 7/12.
    # DiffSynth-Studio counts its 0.417 from the noisy end of the schedule: 1 - 7/12 = 5/12 = 0.41667.
    t = float(inverse_shift(torch.tensor(0.875, dtype=torch.float64), torch.tensor(5.0, dtype=torch.float64)))
    assert t == pytest.approx(7 / 12) and round(1 - t, 3) == 0.417
    # That same 0.417 under shift 3: 3 (7/12) / (1 + 2 (7/12)) = 21/26 = 0.8077, not 0.875.
    moved = float(rational_shift(torch.tensor(1 - 5 / 12, dtype=torch.float64), torch.tensor(3.0, dtype=torch.float64)))
    assert moved == pytest.approx(21 / 26) and round(moved, 3) == 0.808


@pytest.mark.parametrize("family, sigma", [("rational", 1.0), ("exponential", 1.0), ("exponential", 2.0),
                                           ("exponential", 0.5)])
def test_inverse_shift_undoes_the_shift(family, sigma):
    y = torch.linspace(0.01, 0.99, 99, dtype=torch.float64)
    for a in (0.3, 1.0, 5.0, 600.0):
        a_t = torch.tensor(a, dtype=torch.float64)
        t = inverse_shift(y, a_t, family, sigma)
        back = exponential_shift(t, a_t, sigma) if family == "exponential" else rational_shift(t, a_t)
        assert torch.allclose(back, y, rtol=1e-12, atol=1e-12)


# --- noise_range: the draw confined to one side of a boundary in shifted noise level ----------------------------

import json  # noqa: E402
import math  # noqa: E402

import numpy as np  # noqa: E402
from scipy import stats  # noqa: E402

import opensora_timeshift_patch as ots  # noqa: E402
from opensora_timeshift_patch.core import Recipe  # noqa: E402
from opensora_timeshift_patch.opensora2 import Opensora2Timesteps  # noqa: E402
from opensora_timeshift_patch.settings import SettingError  # noqa: E402
from standin.stubs import StubModel, batch_meta  # noqa: E402

N = 1000
# Images (one latent frame): a = sqrt(H W / 512^2), Open-Sora 1.x's rule, so 512x512 is a = 1 and 1024x2304 a = 3.
BUCKETS = [((512, 512), 1.0), ((1024, 2304), 3.0)]


def _base(sample_method, size, rng):
    # The base draws by their own definitions: logit-normal(0, 1) is sigmoid of a standard normal.
    if sample_method == "uniform":
        return rng.random(size)
    return 1 / (1 + np.exp(-rng.standard_normal(size)))


def _rejection(sample_method, a, lo, hi, size=200_000, seed=0):
    """The full shifted distribution (a t / (1 + (a - 1) t), by hand), keeping the draws inside [lo, hi]."""
    t = _base(sample_method, size, np.random.default_rng(seed))
    shifted = a * t / (1 + (a - 1) * t)
    return shifted[(shifted >= lo) & (shifted <= hi)]


def _images(batch, hw):
    return torch.zeros(batch, 4, 1, 4, 4), batch_meta(batch, hw[0], hw[1], 1)


@pytest.mark.parametrize("sample_method", ["uniform", "logit-normal"])
@pytest.mark.parametrize("hw, a", BUCKETS)
@pytest.mark.parametrize("lo, hi", [(0.875, 1.0), (0.0, 0.875)])
def test_noise_range_draws_the_shifted_distribution_conditioned_on_the_range(sample_method, hw, a, lo, hi):
    scheduler = ots.RFlowTimeShift(noise_range=(lo, hi), sample_method=sample_method, timestep_rng="per_sample",
                                   stratified=True)
    x, meta = _images(4000, hw)
    ours = scheduler.sample_timesteps(x, meta, step=11).double()
    assert ours.min() >= lo * N and ours.max() <= hi * N  # every sample on its side
    assert stats.ks_2samp(ours.numpy() / N, _rejection(sample_method, a, lo, hi)).pvalue > 1e-3


def test_noise_range_converts_through_each_samples_own_factor_in_a_mixed_batch():
    # Half the batch at a = 1, half at a = 3, in one call with the global RNG: each half is its own conditioned law.
    scheduler = ots.RFlowTimeShift(noise_range=(0.875, 1.0), sample_method="logit-normal")
    meta = {k: torch.cat([batch_meta(3000, *hw, 1)[k] for hw, _ in BUCKETS]) for k in ("height", "width", "num_frames")}
    torch.manual_seed(0)
    ours = scheduler.sample_timesteps(torch.zeros(6000, 4, 1, 4, 4), meta).double().numpy() / N
    for half, (_, a) in zip((ours[:3000], ours[3000:]), BUCKETS):
        assert half.min() >= 0.875 and half.max() <= 1
        assert stats.ks_2samp(half, _rejection("logit-normal", a, 0.875, 1.0)).pvalue > 1e-3


def test_noise_range_unshifted_boundary_at_shift_5_is_seven_twelfths():
    # Uniform base: F is the identity, so u = 0 draws the unshifted boundary s^-1(0.875) = 0.875 / (5 - 4 0.875) =
    # 7/12, and u = 1 the top; the shift then takes 7/12 back to 0.875.
    recipe = Recipe(dict(noise_range=(0.875, 1.0)))
    u = torch.tensor([0.0, 0.5, 1.0], dtype=torch.float64)
    t = recipe.timesteps(u, torch.tensor([5.0, 5.0, 5.0]))
    assert t[0].item() == pytest.approx(7 / 12 * N, rel=1e-6) and t[2].item() == pytest.approx(N)
    assert t[1].item() == pytest.approx((7 / 12 + 5 / 12 / 2) * N, rel=1e-6)
    with pytest.raises(TypeError, match="factor"):
        recipe.timesteps(u)


def test_noise_range_keeps_the_extreme_uniforms_of_the_stream_inside():
    # The ends of the band are where the inverse CDF and the float32 shift round: every sample still lands inside.
    from opensora_timeshift_patch.sampling import STREAM_EXTREMES
    u = torch.tensor(STREAM_EXTREMES, dtype=torch.float64)
    for sample_method in ("uniform", "logit-normal", "cosmap"):
        for lo, hi in ((0.875, 1.0), (0.0, 0.875), (0.3, 0.7), (0.123456789, 0.987654321)):
            recipe = Recipe(dict(noise_range=(lo, hi), sample_method=sample_method))
            for hw, _ in BUCKETS + [((720, 1280), None), ((144, 256), None)]:
                t = recipe.training_timesteps(u, batch_meta(len(u), *hw, 1), 1, None).double()
                assert t.min() >= lo * N and t.max() <= hi * N, (sample_method, lo, hi, hw, t)


def test_noise_range_through_training_losses():
    scheduler = ots.RFlowTimeShift(noise_range=(0.9, 1.0), timestep_rng="per_sample", sample_method="logit-normal")
    model = StubModel()
    x, meta = _images(64, (1024, 2304))
    scheduler.training_losses(model, x, meta)
    seen = model.seen[0].double()
    assert seen.min() >= 900 and seen.max() <= 1000
    torch.testing.assert_close(seen, scheduler.sample_timesteps(x, meta, step=0).double())


def test_noise_range_per_bucket_rule():
    # Only the rule's bucket (images) trains one side; videos keep the whole shifted distribution.
    scheduler = ots.RFlowTimeShift(bucket_settings=[dict(frames=1, noise_range=(0.875, 1.0))], timestep_rng="per_sample")
    images = scheduler.sample_timesteps(*_images(2000, (512, 512)), step=1)
    assert images.min() >= 875
    videos = scheduler.sample_timesteps(torch.zeros(2000, 4, 4, 4, 4), batch_meta(2000, 512, 512, 16), step=1)
    assert videos.min() < 875


@pytest.mark.parametrize("latent, alpha", [((5, 32, 32), math.sqrt(5)), ((5, 128, 128), 3 * math.sqrt(5))])
@pytest.mark.parametrize("lo, hi", [(0.0, 0.9), (0.9, 1.0)])
def test_noise_range_on_the_opensora2_drop_in(latent, alpha, lo, hi):
    # 2.0: alpha = lin(tokens; 256 -> 1, 4096 -> 3) sqrt(T); tokens = H W / 4; logit-normal base, as stock.
    timesteps = Opensora2Timesteps(noise_range=(lo, hi))
    assert timesteps.factor(latent[0], latent[1] * latent[2] // 4) == pytest.approx(alpha)
    torch.manual_seed(0)
    ours = timesteps.training_timesteps(torch.rand(4000), latent).double()
    assert ours.min() >= lo and ours.max() <= hi
    assert stats.ks_2samp(ours.numpy(), _rejection("logit-normal", alpha, lo, hi)).pvalue > 1e-3
    stream = Opensora2Timesteps(noise_range=(lo, hi), timestep_rng="per_sample", stratified=True)
    drawn = stream.training_timesteps(torch.rand(4000), latent, step=3).double()
    assert drawn.min() >= lo and drawn.max() <= hi
    assert stats.ks_2samp(drawn.numpy(), _rejection("logit-normal", alpha, lo, hi)).pvalue > 1e-3


@pytest.mark.parametrize("value", [0.875, (0.875,), (0.5, 0.7, 0.9), (0.9, 0.875), (float("nan"), 1.0),
                                   (0.875, float("nan")), (True, 1.0), ("0.875", 1.0), "0.875,1", (0.9, 0.9),
                                   (-0.1, 0.5), (0.5, 1.5), (0.0, float("inf")), {}, torch.tensor([0.8, 0.9])])
def test_noise_range_hostile_values(value):
    with pytest.raises(SettingError, match="noise_range=.*not allowed"):
        Recipe(dict(noise_range=value))


@pytest.mark.parametrize("extra, says", [
    (dict(use_timestep_transform=False), r"use t_range=\(0.875, 1.0\)"),
    (dict(t_range=(0.1, 0.9)), "both confine the draw"),
    (dict(uniform_over_threshold=0.9), "redraw"),
    (dict(use_discrete_timesteps=True), "floored before the shift"),
    (dict(sample_method="fixed", fixed_order="cycle", timestep_rng="per_sample"), "cycle"),
    (dict(sample_method="fixed"), "sample_method='fixed'"),
])
def test_noise_range_refused_combinations(extra, says):
    with pytest.raises(SettingError, match=says):
        Recipe(dict(noise_range=(0.875, 1.0), **extra))


def test_noise_range_refused_narrow_and_in_a_rule_with_t_range():
    with pytest.raises(SettingError, match="collapses"):
        Recipe(dict(noise_range=(0.5, 0.504)))
    Recipe(dict(noise_range=(0.5, 0.505)))
    with pytest.raises(SettingError, match=r"bucket_settings\[0\].*both confine"):
        Recipe(dict(t_range=(0.1, 0.9), bucket_settings=[dict(frames=1, noise_range=(0.875, 1.0))]))


def test_no_noise_range_keeps_the_draw():
    # Off by default: the same stream gives the same timesteps as a scheduler that never heard of it.
    x, meta = _images(16, (1024, 2304))
    plain = ots.RFlowTimeShift(timestep_rng="per_sample").sample_timesteps(x, meta, step=2)
    full = ots.RFlowTimeShift(timestep_rng="per_sample", noise_range=(0.0, 1.0)).sample_timesteps(x, meta, step=2)
    assert plain.min() < 875
    torch.testing.assert_close(full, plain, rtol=1e-5, atol=1e-3)


def test_noise_range_in_the_telemetrys_expected_quantiles():
    # The telemetry compares what trains with the quantile function of each bucket's draw: the band included.
    u = (torch.arange(1000, dtype=torch.float64) + 0.5) / 1000
    scheduler = ots.RFlowTimeShift(noise_range=(0.875, 1.0))
    q = scheduler._telemetry_bucket(2304.0, 1024.0, 1.0, (1, 4, 4))[1](u).double()
    assert q.min() >= 875 and q.max() <= 1000
    timesteps = Opensora2Timesteps(noise_range=(0.0, 0.9))
    q2 = timesteps._telemetry_bucket(128.0, 128.0, 5.0, (5, 32, 32))[1](u).double()
    assert q2.min() >= 0 and q2.max() <= 0.9
    # Its median is the conditioned law's: F_shifted^-1 of the middle of [F(s^-1(0)), F(s^-1(0.9))], by hand.
    a = math.sqrt(5)
    top = stats.norm.cdf(math.log((0.9 / (a - (a - 1) * 0.9)) / (1 - 0.9 / (a - (a - 1) * 0.9))))
    t = 1 / (1 + math.exp(-stats.norm.ppf(top / 2)))
    assert float(q2[499:501].mean()) == pytest.approx(a * t / (1 + (a - 1) * t), abs=2e-3)


@pytest.mark.parametrize("lo, hi", [(0.9, 1.0), (0.0, 0.9)])
def test_noise_range_on_the_exponential_family(lo, hi):
    # Flux's curve e^mu / (e^mu + (1/t - 1)^sigma) with a constant mu = 1 (a = e) and sigma = 2, no temporal factor.
    scheduler = ots.RFlowTimeShift(noise_range=(lo, hi), sample_method="logit-normal", shift_family="exponential",
                                   shift_sigma=2.0, resolution_shift="constant", shift=1.0, shift_mode="spatial",
                                   timestep_rng="per_sample")
    x, meta = _images(4000, (512, 512))
    ours = scheduler.sample_timesteps(x, meta, step=5).double().numpy() / N
    t = _base("logit-normal", 200_000, np.random.default_rng(1))
    full = math.e / (math.e + (1 / t - 1) ** 2)
    assert ours.min() >= lo and ours.max() <= hi
    assert stats.ks_2samp(ours, full[(full >= lo) & (full <= hi)]).pvalue > 1e-3


# --- inspect and plot show the confined draw ------------------------------------------------------------------
# Uniform base, rational shift a = 5 (resolution_shift='constant', shift=5): the shifted s is the unshifted
# s / (a - (a - 1) s), so the band (0.875, 1] is t in [7/12, 1], a share 5/12 of the uniform draw. The q-quantile
# of the confined shifted draw is s_5(7/12 + q 5/12), s_5(t) = 5 t / (1 + 4 t): by hand, p5 = s_5(29/48) = 145/164,
# median = s_5(19/24) = 95/100, p95 = s_5(47/48) = 235/236.
AT_SHIFT_5 = ["--set", "resolution_shift='constant'", "--set", "shift=5", "--set", "noise_range=(0.875, 1.0)"]
CONFINED_AT_5 = (145 / 164, 0.95, 235 / 236)


def _inspect(capsys, *argv):
    from test_cli import run_any
    code, stdout, err = run_any(capsys, "inspect", "--frames", "1", "--resolution", "512x512", *map(str, argv))
    assert code == 0 and err == "", err
    return stdout


def _row(stdout, label):
    (line,) = [line for line in stdout.splitlines() if line.startswith("512x512") and f" {label} " in line]
    return line.split()


def test_inspect_shows_the_confined_draw_and_its_share_on_1x(capsys):
    argv = ("--sample-method", "uniform", "--mode", "spatial", *AT_SHIFT_5)
    table = _inspect(capsys, *argv)
    assert "noise_range: the quantiles" in table
    row = _row(table, "spatial")  # resolution frames mode T_eff shift p5 median p95 share status
    assert row[4] == "5.000"
    assert [float(x) for x in row[5:8]] == pytest.approx([1000 * q for q in CONFINED_AT_5], abs=0.051)
    assert row[8] == "0.417"
    (doc,) = [json.loads(_inspect(capsys, *argv, "--json"))["rows"]]
    (r,) = doc
    assert (r["p5"], r["median"], r["p95"]) == pytest.approx(tuple(1000 * q for q in CONFINED_AT_5), rel=1e-9)
    assert r["noise_range_share"] == pytest.approx(5 / 12, rel=1e-12)


def test_inspect_shows_the_confined_draw_and_its_share_on_2x(capsys):
    argv = ("--opensora-version", "2.0", "--set", "sample_method='uniform'", *AT_SHIFT_5)
    row = _row(_inspect(capsys, *argv), "settings")  # ... rule tokens alpha p5 median p95 share status
    assert row[5] == "5.000"
    assert [float(x) for x in row[6:9]] == pytest.approx(CONFINED_AT_5, abs=5e-4) and row[9] == "0.417"
    stock, settings = json.loads(_inspect(capsys, *argv, "--json"))["rows"]
    assert stock["noise_range_share"] is None  # stock 2.0's rule has no band
    assert (settings["p5"], settings["median"], settings["p95"]) == pytest.approx(CONFINED_AT_5, rel=1e-9)
    assert settings["noise_range_share"] == pytest.approx(5 / 12, rel=1e-12)


def test_inspect_confines_only_the_buckets_of_a_rule_with_noise_range(capsys):
    # The 16-frame rule's bucket at shift a = 5 (T_eff does not enter under resolution_shift='constant' and
    # shift_mode='spatial') is confined to (0, 0.5]: t in [0, 0.5 / (5 - 4 * 0.5)] = [0, 1/6], share 1/6, median
    # s_5(1/12) = (5/12) / (1 + 4/12) = 5/16. The 1-frame bucket keeps the unconfined median s_5(1/2) = 5/6.
    doc = json.loads(_inspect(capsys, "--frames", "16", "--sample-method", "uniform", "--mode", "spatial",
                              "--set", "resolution_shift='constant'", "--set", "shift=5",
                              "--set", "bucket_settings=[{'frames': 16, 'noise_range': (0.0, 0.5)}]", "--json"))
    one, sixteen = sorted(doc["rows"], key=lambda r: r["frames"])
    assert sixteen["rule"] == 0 and sixteen["median"] == pytest.approx(1000 * 5 / 16, rel=1e-9)
    assert sixteen["noise_range_share"] == pytest.approx(1 / 6, rel=1e-12)
    assert one["rule"] is None and one["median"] == pytest.approx(1000 * 5 / 6, rel=1e-9)
    assert one["noise_range_share"] is None


def _plot_view(*argv):
    from opensora_timeshift_patch.cli import build_parser
    from opensora_timeshift_patch.cli.views import view_of
    return view_of(build_parser().parse_args(["plot", "--out", "unused", *map(str, argv)]))


@pytest.mark.parametrize("v2", [False, True])
def test_plot_draws_the_confined_shifted_draw(v2):
    from opensora_timeshift_patch.cli.plot import bucket_curves, uniforms_of
    argv = (["--opensora-version", "2.0", "--set", "sample_method='uniform'"] if v2
            else ["--sample-method", "uniform", "--mode", "spatial"])
    view = _plot_view("--frames", "1", "--resolution", "512x512", *argv, *AT_SHIFT_5)
    curve = bucket_curves(view, (512, 512), 1, uniforms_of(20_000))[-1]
    draws = curve.draws.double().numpy()  # shifted t in [0, 1] on both
    # The confined law's CDF by hand: P(t' <= x) = (s_5^-1(x) - 7/12) / (5/12) on [0.875, 1].
    assert draws.min() >= 0.875 - 1e-9 and draws.max() <= 1 + 1e-9
    cdf = lambda x: (np.clip(x / (5 - 4 * x), 7 / 12, 1) - 7 / 12) / (5 / 12)  # noqa: E731
    assert stats.kstest(draws, cdf).pvalue > 1e-3


def test_plot_emphasis_density_is_the_confined_one():
    # With a loss weighting, the sampling density drawn per bucket: bin [x0, x1) holds (s_5^-1(x1) - s_5^-1(x0))
    # / (5/12) of the confined draw, none below 0.875.
    from opensora_timeshift_patch.cli.plot import PLOT_EDGES, emphasis_curves
    view = _plot_view("--frames", "1", "--resolution", "512x512", "--sample-method", "uniform", "--mode", "spatial",
                      "--loss-weighting", "sigma_sqrt", *AT_SHIFT_5)
    (curve,) = emphasis_curves(view, (512, 512), 1)
    mass = curve.density * np.diff(PLOT_EDGES)
    back = PLOT_EDGES / (5 - 4 * PLOT_EDGES)
    expected = np.clip(np.diff(np.clip(back, 7 / 12, 1)) / (5 / 12), 0, None)
    assert mass[:87].sum() == 0
    assert mass == pytest.approx(expected, abs=2e-4)


def test_the_guard_judges_the_confined_draw():
    # t = 1 - (1 - u)^4: P(1 - t < x) = x^(1/4). Unconfined, 0.001^(1/4) = 18% lies within 1/1000 of t = 1 (a = 1):
    # trained as usual. Confined to (0.995, 1], (0.001 / 0.005)^(1/4) = 67% does: over the 1/2 that piles up.
    from opensora_timeshift_patch.sampling import DISTRIBUTIONS, register_distribution
    from opensora_timeshift_patch.shift import MetaError
    register_distribution("test-top-heavy")(lambda u: 1 - (1 - u) ** 4)
    try:
        x, meta = _images(8, (512, 512))
        ots.RFlowTimeShift(sample_method="test-top-heavy").sample_timesteps(x, meta)
        ots.RFlowTimeShift(sample_method="test-top-heavy", noise_range=(0.9, 1.0)).sample_timesteps(x, meta)
        with pytest.raises(MetaError, match=r"pile up.*66\.9%"):
            ots.RFlowTimeShift(sample_method="test-top-heavy", noise_range=(0.995, 1.0)).sample_timesteps(x, meta)
    finally:
        DISTRIBUTIONS.unregister("test-top-heavy")


def test_noise_range_gives_nan_for_a_uniform_outside_the_unit_interval():
    # as every distribution does: the band [F(s^-1(lo)), F(s^-1(hi))] would map u = 1.1 or -0.1 inside it
    recipe = Recipe(dict(noise_range=(0.2, 0.6)))
    t = recipe.base_draw(torch.tensor([-0.1, 1.1, float("nan"), 0.5], dtype=torch.float64), 3.0)
    assert t[:3].isnan().all() and 0 < t[3] < 1
