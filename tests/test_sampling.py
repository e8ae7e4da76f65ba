"""Timestep distributions, shift families and the counter-based stream, by hand and as properties."""

import math
import re

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from conftest import meta
from opensora_timeshift_patch import RFlowTimeShift, TimestepShift
from opensora_timeshift_patch.sampling import (
    DISTRIBUTIONS, SAMPLE_METHODS, TimestepDistribution, counter_uniform, data_parallel_layout, global_sample_index,
    register_distribution, stratified_uniform, stream_uniform,
)
from opensora_timeshift_patch.settings import SettingError
from opensora_timeshift_patch.shift import SHIFT_FAMILIES, exponential_shift, rational_shift

U = torch.tensor([0.1, 0.25, 0.5, 0.75, 0.9], dtype=torch.float64)
NEEDS = {"mixture": dict(components=[dict(sample_method="logit-normal", weight=0.6),
                                     dict(sample_method="uniform", weight=0.4)])}  # what has no usable default


def test_sample_methods():
    assert SAMPLE_METHODS == ("uniform", "logit-normal", "mode", "cosmap", "logsnr", "beta", "fixed", "mixture")


def test_inverse_cdfs_by_hand():
    torch.testing.assert_close(TimestepDistribution("uniform")(U), U)
    # logit-normal: the median is sigmoid(loc); at u = Phi(1) = 0.8413 the draw is sigmoid(loc + scale)
    ln = TimestepDistribution("logit-normal", loc=0.5, scale=2.0)
    phi1 = 0.5 * (1 + math.erf(1 / math.sqrt(2)))
    got = ln(torch.tensor([0.5, phi1], dtype=torch.float64))
    torch.testing.assert_close(got, torch.tensor([1 / (1 + math.exp(-0.5)), 1 / (1 + math.exp(-2.5))],
                                                 dtype=torch.float64))
    # cosmap: 1 - 1 / (tan(pi u / 2) + 1); tan(pi/8) = sqrt(2) - 1
    torch.testing.assert_close(TimestepDistribution("cosmap")(torch.tensor([0.25, 0.5], dtype=torch.float64)),
                               torch.tensor([1 - 1 / math.sqrt(2), 0.5], dtype=torch.float64))
    # mode: u - s (sin^2(pi u / 2) - u); sin^2(pi/8) = (1 - cos(pi/4)) / 2
    s, sin2 = 1.29, (1 - math.sqrt(0.5)) / 2
    got = TimestepDistribution("mode", mode_scale=s)(torch.tensor([0.25, 0.5], dtype=torch.float64))
    torch.testing.assert_close(got, torch.tensor([0.25 - s * (sin2 - 0.25), 0.5], dtype=torch.float64))


def test_mode_is_sd3s_formula_in_distribution():
    """SD3 writes f(v) = 1 - v - s (cos^2(pi v / 2) - 1 + v); ours on u = 1 - v gives the same values."""
    v, s = torch.rand(1000, dtype=torch.float64), 0.8
    sd3 = 1 - v - s * (torch.cos(math.pi * v / 2) ** 2 - 1 + v)
    torch.testing.assert_close(TimestepDistribution("mode", mode_scale=s)(1 - v), sd3)


def test_truncated_range_is_the_conditional_distribution():
    d = TimestepDistribution("logit-normal", t_range=(0.2, 0.9))
    ends = d(torch.tensor([1e-12, 1 - 1e-12], dtype=torch.float64))
    torch.testing.assert_close(ends, torch.tensor([0.2, 0.9], dtype=torch.float64), atol=1e-9, rtol=0)
    # Phi(logit(0.2)) and Phi(logit(0.9)), the CDF at the bounds, found by bisection at set-up
    cdf = lambda t: 0.5 * (1 + math.erf(math.log(t / (1 - t)) / math.sqrt(2)))  # noqa: E731
    assert d._u_range == pytest.approx((cdf(0.2), cdf(0.9)), abs=1e-12)
    mid = (cdf(0.2) + cdf(0.9)) / 2  # the conditional median is F^-1 of the middle of [F(0.2), F(0.9)]
    want = 1 / (1 + math.exp(-math.sqrt(2) * torch.special.erfinv(torch.tensor(2 * mid - 1)).item()))
    assert d(torch.tensor([0.5], dtype=torch.float64)).item() == pytest.approx(want, rel=1e-6)


def test_rescaled_range_squeezes_the_whole_distribution():
    d = TimestepDistribution("uniform", t_range=(0.1, 0.5), t_range_mode="rescale")
    torch.testing.assert_close(d(U), 0.1 + 0.4 * U)


@pytest.mark.parametrize(
    "kwargs, error, match",
    [
        (dict(sample_method="gamma"), ValueError, "sample_method='gamma' is not allowed: use one of 'uniform'"),
        (dict(sample_method="logit-normal", scale=0), ValueError, r"scale=0 is not allowed: use a finite number in \[0.05, 5\]"),
        (dict(sample_method="mode", mode_scale=2.0), ValueError, r"mode_scale=2.0 is not allowed: use a finite number in \[-1, 1.751"),
        (dict(sample_method="uniform", loc=1.0), TypeError, r"'uniform' got unexpected parameter\(s\) \['loc'\]; it takes no parameters"),
        (dict(t_range=(0.5, 0.2)), ValueError, r"t_range=\(0.5, 0.2\) is not allowed: use None or a pair \(t_min, t_max\) of numbers with 0 <= t_min < t_max <= 1"),
        (dict(t_range=0.5), ValueError, "t_range=0.5 is not allowed: use None or a pair"),
        (dict(t_range=(0, 1), t_range_mode="clip"), ValueError, "t_range_mode='clip' is not allowed: use one of 'truncate', 'rescale'"),
    ],
)
def test_bad_distribution_settings(kwargs, error, match):
    with pytest.raises(error, match=match):
        TimestepDistribution(**kwargs)


def test_shift_families():
    t = torch.linspace(0.01, 0.99, 50, dtype=torch.float64)
    a = torch.tensor(3.0, dtype=torch.float64)
    torch.testing.assert_close(exponential_shift(t, a, 1.0), rational_shift(t, a))
    # sigma = 2 at t = 0.5: (1/t - 1)^2 = 1, so a / (a + 1)
    assert exponential_shift(torch.tensor([0.5]), torch.tensor(3.0), 2.0).item() == pytest.approx(0.75)
    assert SHIFT_FAMILIES == ("rational", "exponential")


def test_constant_shift_sd3():
    """SD3's constant shift 3.0 with no temporal factor: t = 0.5 -> 1.5 / 2 = 0.75."""
    s = TimestepShift("spatial", resolution_shift="constant", shift=3.0)
    assert s(torch.tensor([0.5]), meta(123, 457, 17)).item() == pytest.approx(0.75)


def test_flux_mu_linear_in_tokens():
    """Flux: mu = 0.5 at 256 tokens, 1.15 at 4096; 1024 x 1024 pixels = 64 x 64 tokens (VAE 8, patch 2)."""
    s = TimestepShift("spatial", shift_family="exponential", resolution_shift="linear")
    mu = 0.5 + (1.15 - 0.5) / (4096 - 256) * (4096 - 256)
    got = s(torch.tensor([0.5]), meta(1024, 1024, 1))
    assert got.item() == pytest.approx(math.exp(mu) / (math.exp(mu) + 1), rel=1e-6)
    got = s(torch.tensor([0.5]), meta(256, 256, 1))  # 16 x 16 = 256 tokens: mu = 0.5
    assert got.item() == pytest.approx(math.exp(0.5) / (math.exp(0.5) + 1), rel=1e-6)


def test_opensora_2_alpha_times_sqrt_latent_frames():
    """Open-Sora 2.0: alpha = lin(latent h w / 4; 256 -> 1, 4096 -> 3) * sqrt(T_latent), from the latent tensor."""
    scheduler = RFlowTimeShift(resolution_shift="linear", shift_mode="latent", causal=True)
    z = torch.zeros(1, 4, 9, 64, 64)  # 32 x 32 = 1024 tokens: alpha = 1 + 2 * 768 / 3840 = 1.4
    grid = scheduler.sampling_timesteps(z, meta(512, 512, 33))
    a = 1.4 * math.sqrt(9)
    t = 0.9
    assert grid[1].item() == pytest.approx(1000 * a * t / (1 + (a - 1) * t), rel=1e-6)


@pytest.mark.parametrize(
    "kwargs, match",
    [
        (dict(shift_family="cubic"), "shift_family='cubic' is not allowed: use one of 'rational', 'exponential'"),
        (dict(resolution_shift="log"), "resolution_shift='log' is not allowed: use one of 'sqrt', 'linear'"),
        (dict(resolution_shift="constant"), "resolution_shift='constant' needs shift"),
        (dict(shift=3.0), "shift=3.0 only applies with resolution_shift='constant' \\(got resolution_shift='sqrt'\\)"),
        (dict(resolution_shift="constant", shift=-1.0), "shift=-1 is not allowed for shift_family='rational'"),
        (dict(resolution_shift="constant", shift=1000.0), "shift=1000.0 is not allowed: use None or a finite number"),
        (dict(resolution_shift="constant", shift_family="exponential", shift=10.0),
         r"shift=10 is not allowed for shift_family='exponential' \(mu, so a = e\^mu = 2.2e\+04\)"),
        (dict(resolution_shift="linear", max_seq_len=100), "max_seq_len=100 must exceed base_seq_len=256"),
        (dict(resolution_shift="linear", base_shift=3.0, max_shift=1.0), "max_shift=1 is below base_shift=3"),
        (dict(shift_family="exponential", shift_sigma=0), r"shift_sigma=0 is not allowed: use a finite number in \[0.1, 10\]"),
        (dict(shift_sigma=2.0), "shift_sigma=2.0 only applies with shift_family='exponential'"),
        (dict(resolution_shift="linear", patch_size=0), r"patch_size=0 is not allowed: use an int in \[1, 64\]"),
        (dict(patch_size=2), "patch_size=2 only applies with resolution_shift='linear'"),
    ],
)
def test_bad_shift_settings(kwargs, match):
    with pytest.raises(ValueError, match=match):
        TimestepShift(**kwargs)


def test_linear_rule_that_reaches_zero_is_refused_when_built():
    """alpha(1 token) = 0.1 - 2.9 / 3840 * 255 < 0: refused at construction, not at the first small batch."""
    with pytest.raises(ValueError, match=r"the linear rule gives a = -0.09\d+ at 1 latent token"):
        TimestepShift("spatial", resolution_shift="linear", base_shift=0.1, max_shift=3.0)


# --- properties over every distribution x family -------------------------------------------------------------

FAMILIES = [dict(), dict(shift_family="exponential", shift_sigma=0.7), dict(resolution_shift="linear"),
            dict(shift_family="exponential", resolution_shift="constant", shift=-0.4)]


@settings(max_examples=60, deadline=None)
@given(
    u=st.lists(st.floats(1e-9, 1 - 1e-9), min_size=2, max_size=16),
    method=st.sampled_from(SAMPLE_METHODS),
    family=st.sampled_from(FAMILIES),
    frames=st.sampled_from([1, 8, 16, 17, 51, 113]),
    hw=st.sampled_from([(144, 256), (512, 512), (720, 1280)]),
    t_range=st.sampled_from([None, (0.05, 0.95)]),
)
def test_outputs_in_range_monotone_and_finite(u, method, family, frames, hw, t_range):
    u = torch.tensor(sorted(u), dtype=torch.float64)
    dist = TimestepDistribution(method, t_range=t_range, **NEEDS.get(method, {}))
    shift = TimestepShift("latent", **family)
    t = shift(dist(u) * 1000, meta(hw[0], hw[1], [frames] * len(u), dtype=torch.float64), num_timesteps=1000)
    assert bool(t.isfinite().all())
    assert bool(((t >= 0) & (t <= 1000)).all())
    assert bool((t.diff() >= 0).all())


@settings(max_examples=30, deadline=None)
@given(seed=st.integers(0, 2**40), step=st.integers(0, 2**33), start=st.integers(0, 2**31))
def test_counter_uniform_is_open_unit_and_pure(seed, step, start):
    index = torch.arange(start, start + 64)
    u = counter_uniform(seed, step, index)
    assert bool(((u > 0) & (u < 1)).all())
    assert torch.equal(u, counter_uniform(seed, step, index))
    assert torch.equal(u[5:9], counter_uniform(seed, step, index[5:9]))  # any subset, any rank


def test_counter_uniform_statistics():
    """Chi-square over 64 bins on 2^16 draws, and no correlation across steps, seeds or lanes."""
    index = torch.arange(2**16)
    u = counter_uniform(3, 11, index)
    counts = torch.histc(u, bins=64, min=0, max=1)
    expected = len(u) / 64
    chi2 = ((counts - expected) ** 2 / expected).sum().item()
    assert chi2 < 120  # 63 degrees of freedom: the 99.99th percentile is about 114
    for other in (counter_uniform(3, 12, index), counter_uniform(4, 11, index), counter_uniform(3, 11, index, lane=1)):
        assert abs(torch.corrcoef(torch.stack([u, other]))[0, 1].item()) < 0.02


def test_stratified_covers_every_stratum_once():
    """4 ranks of 6 samples: the 24 draws of a step fall one in each stratum [k/24, (k+1)/24)."""
    n, ranks = 24, 4
    u = torch.cat([stratified_uniform(5, 2, r, ranks, n // ranks) for r in range(ranks)])
    assert sorted(int(x) for x in (u * n).floor()) == list(range(n))
    assert torch.equal(u[:6], stratified_uniform(5, 2, 0, ranks, 6))
    assert not torch.equal(u[:6], stratified_uniform(5, 3, 0, ranks, 6))


@pytest.mark.parametrize("sizes", [(4, 2), (1, 7, 3), (5, 1, 1, 2), (8, 8, 1)])
def test_stratified_never_shares_a_position_across_ranks_with_uneven_batches(sizes):
    """Open-Sora's bucket sampler gives ranks different batch sizes at the same step: positions stay distinct and
    each rank's draws lie in its own 1/R slice (after the shared offset), evenly spaced within it."""
    ranks = len(sizes)
    draws = [stratified_uniform(11, 4, r, ranks, b) for r, b in enumerate(sizes)]
    every = torch.cat(draws)
    assert len(set(every.tolist())) == len(every)
    u0 = draws[0][0].item()  # rank 0's first draw is the shared offset itself
    for r, (u, b) in enumerate(zip(draws, sizes)):
        offset = torch.remainder(u - u0, 1.0) * ranks - r  # position within the rank's slice, in [0, 1)
        torch.testing.assert_close(offset, torch.arange(b, dtype=torch.float64) / b, rtol=0, atol=1e-9)


def test_single_process_layout_and_interleaved_indices():
    assert data_parallel_layout() == (0, 1)
    index = global_sample_index(3, dp_rank=1, dp_size=4)
    assert index.tolist() == [1, 5, 9]


def test_per_sample_scheduler_counts_steps_and_resumes():
    cfg = dict(timestep_rng="per_sample", timestep_seed=9, sample_method="logit-normal")
    a, b = RFlowTimeShift(**cfg), RFlowTimeShift(**cfg)
    x, kw = torch.zeros(4, 4, 5, 2, 2), meta(256, 256, [17] * 4)
    model = lambda x, t, **k: torch.cat([x, x], 1)  # noqa: E731
    first = [a.sample_timesteps(x, kw, step=s) for s in range(3)]
    for _ in range(3):
        a.training_losses(model, x, kw)
    assert a.state_dict() == {"step": 3, "timestep_seed": 9}
    b.load_state_dict(a.state_dict())
    assert torch.equal(a.sample_timesteps(x, kw), b.sample_timesteps(x, kw))
    assert not torch.equal(first[0], first[1])
    torch.manual_seed(0)
    g1 = a.sample_timesteps(x, kw, step=0)
    torch.manual_seed(1)
    assert torch.equal(g1, a.sample_timesteps(x, kw, step=0))  # the global RNG plays no part
    with pytest.raises(ValueError, match="timestep_seed=1 differs"):
        b.load_state_dict({"step": 3, "timestep_seed": 1})
    resumed = RFlowTimeShift(timestep_start_step=2, **cfg)
    assert torch.equal(resumed.sample_timesteps(x, kw), first[2])


def test_discrete_timesteps_respect_the_range_under_the_global_rng():
    x, kw = torch.zeros(256, 4, 5, 2, 2), meta(256, 256, [17] * 256)
    t = RFlowTimeShift(use_discrete_timesteps=True, use_timestep_transform=False, t_range=(0.5, 1.0),
                       t_range_mode="rescale").sample_timesteps(x, kw)
    assert t.dtype == torch.int64 and t.min() >= 500 and t.max() <= 999 and t.float().std() > 100


def test_per_sample_discrete_and_threshold():
    x, kw = torch.zeros(64, 4, 5, 2, 2), meta(256, 256, [17] * 64)
    t = RFlowTimeShift(timestep_rng="per_sample", use_discrete_timesteps=True,
                       use_timestep_transform=False).sample_timesteps(x, kw)
    assert t.dtype == torch.int64 and 0 <= t.min() and t.max() <= 999
    t = RFlowTimeShift(timestep_rng="per_sample", uniform_over_threshold=0.5).sample_timesteps(x, kw)
    assert bool((t >= 0).all())


@pytest.mark.parametrize(
    "kwargs, match",
    [
        (dict(timestep_rng="cuda"), "timestep_rng='cuda' is not allowed: use one of 'global', 'per_sample'"),
        (dict(stratified=True), "stratified=True only applies with timestep_rng='per_sample'"),
        (dict(timestep_rng="per_sample", timestep_seed=-1), r"timestep_seed=-1 is not allowed: use an int in \[0, "),
        (dict(timestep_rng="per_sample", timestep_start_step=1.5), "timestep_start_step=1.5 is not allowed: use an int"),
        (dict(timestep_seed=3), "timestep_seed=3 only applies with timestep_rng='per_sample'"),
    ],
)
def test_bad_stream_settings(kwargs, match):
    with pytest.raises(ValueError, match=match):
        RFlowTimeShift(**kwargs)


def test_new_distributions_under_the_global_rng_use_one_uniform_each():
    x, kw = torch.zeros(8, 4, 5, 2, 2), meta(256, 256, [17] * 8)
    s = RFlowTimeShift(sample_method="cosmap", use_timestep_transform=False)
    torch.manual_seed(0)
    t = s.sample_timesteps(x, kw)
    torch.manual_seed(0)
    u = torch.rand(8, dtype=torch.float64)
    torch.testing.assert_close(t, (1000 * (1 - 1 / (torch.tan(math.pi * u / 2) + 1))).float())


def test_the_sampling_benchmark_draws_its_streams_through_the_current_api():
    """scripts/bench_sampling.py builds each rank's uniforms as the scheduler does; keep it in step with the API."""
    import importlib.util
    import sys
    from pathlib import Path

    scripts = Path(__file__).resolve().parents[1] / "scripts"
    sys.path.insert(0, str(scripts))
    try:
        spec = importlib.util.spec_from_file_location("bench_sampling", scripts / "bench_sampling.py")
        bench = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(bench)
    finally:
        sys.path.remove(str(scripts))
    for stream in ("stock", "per_sample", "stratified"):
        u = bench.global_uniforms(stream, step=3, ranks=4, batch=2)
        assert u.shape == (8,) and bool(((u > 0) & (u < 1)).all())
    stratified = bench.global_uniforms("stratified", step=3, ranks=4, batch=2)
    assert sorted(int(x) for x in stratified * 8) == list(range(8))


# --- beta: accuracy against scipy, and the ends float32 cannot resolve -------------------------------------------

BETA_PAIRS = [(2.0, 2.0), (0.5, 0.5), (1.0, 1.0), (0.1, 1.0), (0.1, 100.0), (100.0, 0.59), (100.0, 100.0),
              (0.1, 0.34), (0.13, 0.345), (3.0, 0.45), (1.0, 3.0), (5.0, 1.5), (0.3, 30.0)]


def _beta_uniforms():
    """10^5 uniforms, plus both tails down to the most extreme uniforms a stream draws."""
    u = torch.rand(100_000, generator=torch.Generator().manual_seed(17), dtype=torch.float64)
    tail = torch.logspace(-16.5, -1, 3000, dtype=torch.float64)
    return torch.cat([u, tail, 1 - tail, torch.tensor([2.0**-54, 2.0**-53, 2.0**-33, 1 - 2.0**-33, 1 - 2.0**-53],
                                                      dtype=torch.float64)])


@pytest.mark.parametrize("a, b", BETA_PAIRS)
def test_beta_inverse_cdf_is_accurate_across_the_accepted_range(a, b):
    """|F(t) - u| < 1e-6 by scipy's betainc, and within 5e-7 of what the exact quantile rounded to float64 achieves
    (near t = 1 float64's spacing of 2^-53 alone costs up to 8e-7 at the smallest accepted beta)."""
    from scipy.special import betainc, betaincinv

    u = _beta_uniforms()
    t = TimestepDistribution("beta", beta_alpha=a, beta_beta=b)(u)
    error = (torch.from_numpy(betainc(a, b, t.numpy())) - u).abs()
    floor = (torch.from_numpy(betainc(a, b, betaincinv(a, b, u.numpy()))) - u).abs()
    assert float(error.max()) < 1e-6
    assert float((error - floor).max()) < 5e-7
    near_1 = u > 1 - 1e-5  # where float64's spacing dominates: as good as the rounded exact quantile
    assert float((error - floor)[near_1].max()) < 5e-8


def test_beta_ends_are_exact_and_nan_stays_nan():
    d = TimestepDistribution("beta", beta_alpha=0.5, beta_beta=0.5)
    got = d(torch.tensor([0.0, 0.5, 1.0, float("nan")], dtype=torch.float64))
    assert got[0].item() == 0.0 and got[1].item() == pytest.approx(0.5, abs=1e-15) and got[2].item() == 1.0
    assert math.isnan(got[3].item())


BETA_GRID = [0.1, 0.2, 0.3, 0.35, 0.4, 0.5, 0.6, 1.0, 3.0, 10.0, 30.0, 100.0]


@pytest.mark.parametrize("b", BETA_GRID)
def test_no_accepted_beta_puts_a_visible_share_of_float32_timesteps_on_0_or_n(b):
    """Every accepted pair keeps its 0.1% and 99.9% quantiles off t = 0 and N in float32 (t x 1000 as Open-Sora 1.x
    stores it, t itself as 2.0 does), so at most 0.1% of the draws can land there; a refused one says how many."""
    ends = torch.tensor([1e-3, 1 - 1e-3], dtype=torch.float64)
    for a in BETA_GRID:
        try:
            q = TimestepDistribution("beta", beta_alpha=a, beta_beta=b)(ends)
        except ValueError as err:
            assert re.search(r"sample_method='beta' with beta_alpha=.*, beta_beta=.* puts \d+\.\d\d% of its draws "
                             r"below t = 2\^-126 .* at most 0.1% is allowed", str(err)), str(err)
            continue
        assert 0 < (q[0] * 1000).float() and (q[1] * 1000).float() < 1000, (a, b)
        assert 0 < q[0].float() and q[1].float() < 1, (a, b)


def test_beta_refusal_names_the_pair_and_the_share():
    # Beta(0.1, 0.1) puts I(2^-24; 0.1, 0.1) = 9.6% of its mass above 1 - 2^-24, by its true law
    with pytest.raises(ValueError, match=r"beta_alpha=0.1, beta_beta=0.1 puts 9.62% of its draws .* Raise beta_beta"):
        TimestepDistribution("beta", beta_alpha=0.1, beta_beta=0.1)
    # both ends count: I(2^-126; 0.1, 0.3325) = 1.3e-4 below, I(2^-24; 0.3325, 0.1) = 9.5e-4 above, 0.108% in all
    with pytest.raises(ValueError, match=r"beta_beta=0.3325 puts 0.11% of its draws below t = 2\^-126 \(0.00013\) or "
                                         r"above t = 1 - 2\^-24 \(0.00095\)"):
        TimestepDistribution("beta", beta_alpha=0.1, beta_beta=0.3325)
    with pytest.raises(ValueError, match="beta_beta=0.05 is not allowed"):
        TimestepDistribution("beta", beta_beta=0.05)


# --- fixed_order="cycle" with t_range ------------------------------------------------------------------------------

@pytest.mark.parametrize("t_range_mode, kept", [("truncate", [0.5, 0.8]),
                                                ("rescale", [0.4 + 0.5 * 0.2, 0.4 + 0.5 * 0.5, 0.4 + 0.5 * 0.8])])
def test_cycle_visits_every_kept_entry_equally_in_order(t_range_mode, kept):
    """timesteps [0.2, 0.5, 0.8] with t_range (0.4, 0.9): truncate keeps 0.5 and 0.8, rescale all three (moved
    into the range). Over K steps of B samples each kept entry comes B times; sample i at step s gets entry
    (s + i) mod K, in ascending order."""
    d = TimestepDistribution("fixed", timesteps=[0.8, 0.2, 0.5], fixed_order="cycle", t_range=(0.4, 0.9),
                             t_range_mode=t_range_mode)
    k, batch = d.cycle_length, 5
    assert k == len(kept)
    index = global_sample_index(batch, 0, 1)
    seen = torch.stack([d(stream_uniform(0, s, index, 0, 1, False, k)) for s in range(3 * k)])
    values, counts = seen.unique(return_counts=True)
    torch.testing.assert_close(values, torch.tensor(kept, dtype=torch.float64))
    assert counts.tolist() == [3 * batch] * k
    want = torch.tensor([[kept[(s + i) % k] for i in range(batch)] for s in range(3 * k)], dtype=torch.float64)
    torch.testing.assert_close(seen, want)


def test_cycle_length_counts_the_kept_entries():
    fixed = lambda **kw: TimestepDistribution("fixed", **kw).cycle_length  # noqa: E731
    assert fixed() == 3  # the default list
    assert fixed(timesteps=[0.1, 0.3, 0.3, 0.5, 0.7, 0.9], t_range=(0.3, 0.7)) == 4  # both bounds, duplicates
    assert fixed(timesteps=[0.1, 0.3, 0.5], t_range=(0.3, 0.7), t_range_mode="rescale") == 3
    assert TimestepDistribution("uniform").cycle_length is None
    with pytest.raises(ValueError, match="count=0 is not allowed"):
        stream_uniform(0, 0, torch.arange(2), 0, 1, False, 0)


# --- registered distributions: the extreme uniforms, and NaN never made valid --------------------------------------

@pytest.mark.parametrize("bad, where", [
    (lambda u: torch.where(u < 1e-4, torch.nan, u), r"u=0\.0"),                 # torch.rand's 0
    (lambda u: torch.where(u < 2e-16, torch.nan, u), r"u=0\.0"),
    (lambda u: torch.where(u > 1 - 1e-7, torch.nan, u), r"u=0\.9999999403953552"),  # float32 rand's 1 - 2^-24
    (lambda u: torch.where(u > 1 - 1e-9, 1.5, u), r"t=1\.5 at u=0\.9999999998835847"),  # the counter's 1 - 2^-33
    (lambda u: torch.where(u > 1 - 1e-15, torch.nan, u), r"u=0\.9999999999999999"),  # float64 rand's 1 - 2^-53
    (lambda u: torch.where((u > 0) & (u < 1e-12), -0.5, u), r"t=-0\.5 at u=5\.551115123125783e-17"),  # 2^-54
])
def test_a_registered_distribution_bad_only_in_its_far_tails_is_refused(bad, where):
    register_distribution("tail_test")(bad)
    try:
        with pytest.raises(SettingError, match=r"sample_method='tail_test' does not map \(0, 1\) into \[0, 1\]: .*"
                                               + where):
            TimestepDistribution("tail_test")
    finally:
        DISTRIBUTIONS.unregister("tail_test")


@pytest.mark.parametrize("method", SAMPLE_METHODS)
def test_nan_or_out_of_range_uniforms_give_nan_never_a_valid_timestep(method):
    d = TimestepDistribution(method, t_range=(0.1, 0.9), **NEEDS.get(method, {}))
    u = torch.tensor([float("nan"), -0.5, 1.5, 0.5], dtype=torch.float64)
    t = d(u)
    assert bool(t[:3].isnan().all()) and 0.1 <= t[3].item() <= 0.9


def test_a_nan_inside_the_check_grid_reaches_the_draw_as_nan():
    register_distribution("hole_test")(lambda u: torch.where((u > 0.5) & (u < 0.5005), torch.nan, u))
    try:
        t = TimestepDistribution("hole_test")(torch.tensor([0.5002, 0.7], dtype=torch.float64))
        assert math.isnan(t[0].item()) and t[1].item() == 0.7
    finally:
        DISTRIBUTIONS.unregister("hole_test")
