"""The vectorised CDF of every distribution, and mixtures of distributions drawn by one inverse CDF."""

import math

import numpy as np
import pytest
import torch
from scipy import special, stats

from opensora_timeshift_patch.sampling import DISTRIBUTIONS, TimestepDistribution, register_distribution
from opensora_timeshift_patch.settings import SettingError

F64 = torch.float64
T = torch.tensor([1e-12, 1e-4, 0.01, 0.1, 0.3, 0.5, 0.7, 0.9, 0.99, 1 - 1e-9], dtype=F64)
U = torch.tensor([2.0**-54, 1e-12, 1e-6, 0.01, 0.2, 0.5, 0.8, 0.99, 1 - 1e-9, 1 - 2.0**-53], dtype=F64)


def logit(t):
    return np.log(t) - np.log1p(-t)


@pytest.mark.parametrize("method, params, by_hand", [
    ("uniform", {}, lambda t: t),
    ("logit-normal", dict(loc=0.4, scale=1.7), lambda t: stats.norm.cdf((logit(t) - 0.4) / 1.7)),
    # SNR = ((1 - t) / t)^2, lambda = log SNR = -2 logit(t) ~ N(loc, scale^2): P(T <= t) = P(lambda >= -2 logit t)
    ("logsnr", dict(loc=1.5, scale=3.0), lambda t: stats.norm.sf(-2 * logit(t), loc=1.5, scale=3.0)),
    ("cosmap", {}, lambda t: 2 / math.pi * np.arctan(t / (1 - t))),
])
def test_closed_form_cdfs_against_scipy(method, params, by_hand):
    got = TimestepDistribution(method, **params).cdf(T)
    assert got.dtype == F64
    np.testing.assert_allclose(got.numpy(), by_hand(T.numpy()), rtol=1e-12, atol=1e-15)


@pytest.mark.parametrize("a, b", [(2.0, 2.0), (0.5, 3.0), (5.0, 0.7), (30.0, 60.0)])
def test_beta_cdf_against_scipy(a, b):
    t = torch.tensor(stats.beta.ppf(U.numpy(), a, b), dtype=F64)  # the exact quantiles
    got = TimestepDistribution("beta", beta_alpha=a, beta_beta=b).cdf(t)
    assert (got - U).abs().max() < 1e-6  # the table's accuracy (sampling.beta's docstring)
    got = TimestepDistribution("beta", beta_alpha=a, beta_beta=b).cdf(T)
    np.testing.assert_allclose(got.numpy(), special.betainc(a, b, T.numpy()), atol=1e-6)


def test_mode_cdf_by_hand():
    # mode's inverse CDF u - s (sin^2(pi u / 2) - u) at u = 1/4, 1/2: sin^2(pi/8) = (1 - cos(pi/4)) / 2
    s = 0.8
    t = torch.tensor([0.25 - s * ((1 - math.sqrt(0.5)) / 2 - 0.25), 0.5 - s * (0.5 - 0.5)], dtype=F64)
    torch.testing.assert_close(TimestepDistribution("mode", mode_scale=s).cdf(t), torch.tensor([0.25, 0.5], dtype=F64),
                               rtol=0, atol=1e-15)


def test_fixed_cdf_counts_the_atoms_at_and_below_t():
    d = TimestepDistribution("fixed", timesteps=(0.7, 0.2, 0.2, 0.9))
    got = d.cdf(torch.tensor([0.0, 0.19, 0.2, 0.5, 0.7, 0.899, 0.9, 1.0], dtype=F64))
    torch.testing.assert_close(got, torch.tensor([0, 0, 0.5, 0.5, 0.75, 0.75, 1, 1], dtype=F64))


@pytest.mark.parametrize("method, params", [
    ("uniform", {}), ("logit-normal", dict(loc=-1.0, scale=0.5)), ("logit-normal", dict(loc=2.0, scale=3.0)),
    ("mode", {}), ("mode", dict(mode_scale=-0.9)), ("cosmap", {}), ("logsnr", dict(loc=-3.0, scale=4.0)),
    ("beta", dict(beta_alpha=0.3, beta_beta=2.0)), ("beta", {}),
])
def test_cdf_inverts_the_draw(method, params):
    for t_range, mode in ((None, "truncate"), ((0.1, 0.6), "truncate"), ((0.2, 0.9), "rescale")):
        d = TimestepDistribution(method, t_range, mode, **params)
        # rescale's t_min + (t_max - t_min) t rounds a t below 1e-16 away (to t_min): only the body inverts there
        u = U if mode == "truncate" else U[3:-2]
        assert (d.cdf(d(u)) - u).abs().max() < 1e-12, (t_range, mode)


def test_cdf_respects_t_range():
    a, b, loc, scale = 0.2, 0.7, 0.5, 1.2
    phi = lambda t: stats.norm.cdf((logit(t) - loc) / scale)  # noqa: E731
    t = np.array([0.0, 0.1, 0.2, 0.35, 0.5, 0.7, 0.8, 1.0])
    truncated = TimestepDistribution("logit-normal", (a, b), "truncate", loc=loc, scale=scale).cdf(torch.tensor(t))
    inside = np.clip(t, a, b)
    np.testing.assert_allclose(truncated.numpy(), (phi(inside) - phi(a)) / (phi(b) - phi(a)), atol=1e-12)
    rescaled = TimestepDistribution("logit-normal", (a, b), "rescale", loc=loc, scale=scale).cdf(torch.tensor(t))
    np.testing.assert_allclose(rescaled.numpy(), phi(np.clip((t - a) / (b - a), 0, 1)), atol=1e-12)


def test_cdf_outside_the_unit_interval_and_nan():
    for method in ("uniform", "mode", "fixed"):
        got = TimestepDistribution(method).cdf(torch.tensor([-1.0, -0.0, 1.0, 5.0, math.inf, -math.inf, math.nan]))
        assert got[[0, 2, 3, 4, 5]].tolist() == [0.0, 1.0, 1.0, 1.0, 0.0] and got[1] < 1e-300 and got[6].isnan()


def test_bisection_is_exact_to_one_float64_step():
    # mode has no closed form: F(t) is the least u with F^-1(u) > t, so the float64 just below it maps to <= t
    d = TimestepDistribution("mode", mode_scale=1.29)
    u = d.cdf(T)
    assert (d(u) > T).all()
    assert (d(torch.nextafter(u, torch.zeros_like(u))) <= T).all()


@pytest.fixture
def squared():
    """A user distribution with no closed form given: t = u^2, so F(t) = sqrt(t)."""
    register_distribution("test-squared")(lambda u: u * u)
    yield
    DISTRIBUTIONS.unregister("test-squared")


def test_user_distribution_cdf_by_bisection(squared):
    d = TimestepDistribution("test-squared")
    torch.testing.assert_close(d.cdf(T), T.sqrt(), rtol=1e-15, atol=0)
    d = TimestepDistribution("test-squared", t_range=(0.25, 0.64))  # sqrt: 0.5 .. 0.8
    torch.testing.assert_close(d.cdf(torch.tensor([0.36], dtype=F64)), torch.tensor([(0.6 - 0.5) / 0.3], dtype=F64))


def test_user_distribution_with_its_own_cdf():
    register_distribution("test-cubed", cdf=lambda t: t ** (1 / 3))(lambda u: u ** 3)
    try:
        assert DISTRIBUTIONS.cdf_of("test-cubed") is not None
        torch.testing.assert_close(TimestepDistribution("test-cubed").cdf(T), T ** (1 / 3))
    finally:
        DISTRIBUTIONS.unregister("test-cubed")
    assert "test-cubed" not in DISTRIBUTIONS
    register_distribution("test-cubed")(lambda u: u ** 3)  # unregister dropped the closed form too
    try:
        assert DISTRIBUTIONS.cdf_of("test-cubed") is None
    finally:
        DISTRIBUTIONS.unregister("test-cubed")


def test_cdf_refuses_what_is_not_a_float_tensor():
    d = TimestepDistribution("uniform")
    for bad in (0.5, [0.5], torch.tensor([1, 2]), "0.5", None):
        with pytest.raises(SettingError, match="t="):
            d.cdf(bad)
    with pytest.raises(TypeError, match="cdf="):
        register_distribution("test-bad-cdf", cdf=0.5)
    assert "test-bad-cdf" not in DISTRIBUTIONS


def test_cdf_keeps_shape_and_device():
    d = TimestepDistribution("mode")
    t = torch.rand(3, 4, dtype=torch.float32)
    assert d.cdf(t).shape == (3, 4) and d.cdf(t).dtype == F64
