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


# --- mixtures --------------------------------------------------------------------------------------------------

from scipy.optimize import brentq  # noqa: E402

from conftest import meta  # noqa: E402
from opensora_timeshift_patch import RFlowTimeShift  # noqa: E402
from opensora_timeshift_patch.core import Recipe  # noqa: E402
from opensora_timeshift_patch.opensora2 import Opensora2Timesteps  # noqa: E402
from opensora_timeshift_patch.sampling import counter_uniform, global_sample_index  # noqa: E402
from opensora_timeshift_patch.settings import MAX_COMPONENTS  # noqa: E402

LN_U = [dict(sample_method="logit-normal", loc=0.0, scale=1.0, weight=0.7), dict(sample_method="uniform", weight=0.3)]


def ln_u_cdf(t):
    """0.7 Phi(logit t) + 0.3 t, by hand."""
    t = np.asarray(t, dtype=float)
    with np.errstate(divide="ignore"):
        return 0.7 * stats.norm.cdf(logit(t)) + 0.3 * t


def ln_u_quantile(u):
    return np.array([0.0 if x == 0 else brentq(lambda t: ln_u_cdf(t) - x, 0, 1, xtol=1e-16, rtol=1e-15) for x in u])


def test_mixture_draws_the_hand_quantiles():
    d = TimestepDistribution("mixture", components=LN_U)
    np.testing.assert_allclose(d(U).numpy(), ln_u_quantile(U.numpy()), rtol=1e-12, atol=1e-15)
    torch.testing.assert_close(d.cdf(T), torch.tensor(ln_u_cdf(T.numpy())), rtol=1e-14, atol=1e-16)


@pytest.mark.parametrize("components", [
    LN_U,
    [dict(sample_method="beta", beta_alpha=0.4, beta_beta=3.0, weight=0.25), dict(sample_method="mode", weight=0.5),
     dict(sample_method="logit-normal", loc=3.0, scale=0.3, weight=0.25)],
    [dict(sample_method="logsnr", loc=-4.0, scale=2.0, weight=0.9), dict(sample_method="cosmap", weight=0.1)],
])
def test_mixture_inverse_is_accurate(components):
    u = torch.cat([U, torch.rand(300, dtype=F64, generator=torch.Generator().manual_seed(0))])
    for t_range in (None, (0.05, 0.8)):
        d = TimestepDistribution("mixture", t_range, components=components)
        t = d(u)
        assert (d.cdf(t) - u).abs().max() < 1e-12
        if t_range is None:  # the least float64 t with F(t) >= u: the float below it falls short
            assert (d.cdf(torch.nextafter(t, torch.zeros_like(t))) < u).all()
        else:
            assert t_range[0] <= t.min() and t.max() <= t_range[1]


def by_component(components, n, seed):
    """The mixture drawn the other way: a component picked per sample with its weight, then drawn from."""
    g = torch.Generator().manual_seed(seed)
    pick = torch.multinomial(torch.tensor([c["weight"] for c in components]), n, replacement=True, generator=g)
    u = torch.rand(n, dtype=F64, generator=g)
    out = torch.empty(n, dtype=F64)
    for k, c in enumerate(components):
        params = {key: v for key, v in c.items() if key not in ("sample_method", "weight")}
        out[pick == k] = TimestepDistribution(c["sample_method"], **params)(u[pick == k])
    return out.numpy()


@pytest.mark.parametrize("components", [
    LN_U,
    [dict(sample_method="logit-normal", loc=-2.0, scale=0.5, weight=0.4),
     dict(sample_method="beta", beta_alpha=5.0, beta_beta=1.5, weight=0.6)],
])
def test_mixture_matches_sampling_each_component_with_its_weight(components):
    d = TimestepDistribution("mixture", components=components)
    drawn = d(torch.rand(20000, dtype=F64, generator=torch.Generator().manual_seed(1))).numpy()
    assert stats.kstest(drawn, by_component(components, 20000, seed=2)).pvalue > 1e-3
    assert stats.kstest(drawn, lambda t: d.cdf(torch.tensor(t)).numpy()).pvalue > 1e-3
    swapped = [dict(c, weight=w) for c, w in zip(components, [c["weight"] for c in components][::-1])]
    assert stats.kstest(drawn, by_component(swapped, 20000, seed=2)).pvalue < 1e-6  # the test can tell


def test_mixture_with_a_fixed_component_keeps_its_atoms():
    d = TimestepDistribution("mixture", components=[dict(sample_method="fixed", timesteps=(0.5, 1.0), weight=0.5),
                                                     dict(sample_method="uniform", weight=0.5)])
    t = d(torch.tensor([0.1, 0.3, 0.5, 0.6, 0.7, 0.8], dtype=F64))
    # F(t) = t / 2 below 1/2, 1/4 + t / 2 from 1/2 on, 1 at 1: u in (1/4, 1/2] lands on the atom at 1/2, above 3/4 on 1
    torch.testing.assert_close(t, torch.tensor([0.2, 0.5, 0.5, 0.7, 0.9, 1.0], dtype=F64))


def test_mixture_through_recipe_rflow_and_opensora2():
    cfg = dict(sample_method="mixture", components=LN_U)
    assert Recipe(cfg).distribution.cdf(torch.tensor([0.5], dtype=F64)).item() == pytest.approx(0.5, abs=1e-15)
    # Open-Sora 1.x: the per-sample stream's uniforms, through the mixture, unshifted, times N
    scheduler = RFlowTimeShift(timestep_rng="per_sample", timestep_seed=5, use_timestep_transform=False, **cfg)
    x, kw = torch.zeros(6, 4, 5, 2, 2), meta(256, 256, [17] * 6)
    u = counter_uniform(5, 3, global_sample_index(6, 0, 1))
    got = scheduler.sample_timesteps(x, kw, step=3)
    np.testing.assert_allclose(got.double().numpy(), 1000 * ln_u_quantile(u.numpy()), rtol=1e-6)
    # stratified: the same stream through the mixture
    strat = RFlowTimeShift(timestep_rng="per_sample", stratified=True, use_timestep_transform=False, **cfg)
    got = strat.sample_timesteps(x, kw, step=0) / 1000
    assert sorted(np.floor(ln_u_cdf(got.double().numpy()) * 6).tolist()) == [0, 1, 2, 3, 4, 5]  # one per stratum
    # Open-Sora 2.0's drop-in: torch.rand's uniforms through the mixture
    ts = Opensora2Timesteps(**cfg)
    torch.manual_seed(3)
    t = ts.base_timesteps(torch.zeros(5), step=None)
    torch.manual_seed(3)
    np.testing.assert_allclose(t.double().numpy(), ln_u_quantile(torch.rand(5, dtype=F64).numpy()), rtol=1e-6)


def test_components_are_normalised_and_rechecked():
    d = TimestepDistribution("mixture", components=[dict(sample_method="uniform", weight=0.3 + 1e-7),
                                                    dict(sample_method="cosmap", weight=0.7)])
    weights = [c.weight for c in d.params["components"]]
    assert math.fsum(weights) == pytest.approx(1, abs=1e-15) and weights[0] == pytest.approx((0.3 + 1e-7) / (1 + 1e-7))
    again = TimestepDistribution("mixture", components=d.params["components"])  # a Recipe's values, checked again
    assert again.params == d.params


def comps(*extra, **first):
    return [dict(dict(sample_method="uniform", weight=0.5), **first), dict(sample_method="cosmap", weight=0.5), *extra]


@pytest.mark.parametrize("components, message", [
    (None, "components=None is not allowed"),
    ("uniform", "is not allowed: use a list of 2 to"),
    (dict(sample_method="uniform", weight=1.0), "is not allowed: use a list of 2 to"),
    ([], "a list of 2 to"),
    ([dict(sample_method="uniform", weight=1.0)], "a list of 2 to"),
    ([dict(sample_method="uniform", weight=1 / 17)] * 17, f"a list of 2 to {MAX_COMPONENTS}"),
    ([dict(sample_method="uniform", weight=1e-5)] * 100_000, "a list of 2 to"),
    (comps(sample_method="nope"), r"component 0 .* sample_method='nope': use one of 'uniform'"),
    (comps(sample_method="mixture", components=LN_U), "is itself a mixture"),
    (comps(sample_method=None), "sample_method=None"),
    (comps(weight=0), "component 0 .*weight=0 is not allowed"),
    (comps(weight=-0.5), "weight=-0.5 is not allowed"),
    (comps(weight=math.nan), "weight=nan is not allowed"),
    (comps(weight=math.inf), "weight=inf is not allowed"),
    (comps(weight=True), "weight=True is not allowed"),
    (comps(weight="0.5"), "weight='0.5' is not allowed"),
    (comps(weight=1.5), "weight=1.5 is not allowed"),
    ([dict(sample_method="uniform", weight=0.5), dict(sample_method="cosmap", weight=0.4)], "the weights sum to 0.9"),
    ([dict(sample_method="uniform", weight=0.7)] * 2, "the weights sum to 1.4"),
    (comps(loc=0.3), r"component 0 .*unexpected parameter\(s\) \['loc'\]"),
    (comps(sample_method="logit-normal", loc=0.3, scael=1.0), r"\['scael'\]"),
    (comps(sample_method="logit-normal", scale=0.0), "scale=0.0 is not allowed"),
    (comps(sample_method="logit-normal", loc="big"), "loc='big' is not allowed"),
    (comps(shfit=False), r"unexpected parameter\(s\) \['shfit'\]"),
    (comps(dict(sample_method="fixed", fixed_order="cycle", weight=0.0001), weight=0.4999), "fixed_order='cycle'"),
    ([0.5, 0.5], "component 0 .* is not a dict"),
    ([dict(sample_method="uniform"), dict(sample_method="cosmap", weight=1.0)], "has no weight"),
    ([dict(weight=0.5), dict(sample_method="cosmap", weight=0.5)], "has no sample_method"),
    (comps(sample_method="beta", beta_alpha=0.1, beta_beta=0.1), "float32 training timesteps land"),
])
def test_hostile_components_are_refused_by_name(components, message):
    with pytest.raises(SettingError, match=message):
        TimestepDistribution("mixture", components=components)
    with pytest.raises(SettingError, match=message):
        Recipe(dict(sample_method="mixture", components=components))


def test_mixture_needs_components():
    with pytest.raises(SettingError, match="sample_method='mixture' needs components, e.g. components="):
        Recipe(dict(sample_method="mixture"))


def test_a_component_must_be_an_accepted_distribution_itself():
    with pytest.raises(SettingError, match="timesteps=\\(0.5,\\).* collapses"):
        TimestepDistribution("mixture", components=comps(sample_method="fixed", timesteps=(0.5,)))


def test_components_need_sample_method_mixture():
    with pytest.raises(SettingError, match="components=.* is a parameter of sample_method 'mixture'"):
        Recipe(dict(sample_method="uniform", components=LN_U))
    with pytest.raises(SettingError, match="components=.* is a parameter of sample_method 'mixture'"):
        Opensora2Timesteps(components=LN_U)
