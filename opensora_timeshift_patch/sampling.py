"""Distributions of the training timestep, and a counter-based stream of uniforms for distributed training.

Every distribution is an inverse CDF ``t = F^-1(u)`` on t in (0, 1) (1 = pure noise), so any uniform draw
(independent, stratified, or from the counter-based stream) works with any of them. The stream
:func:`counter_uniform` is a pure function of (seed, step, global sample index): ranks agree or differ
exactly as their sample indices do, with no generator state and no communication, and a resumed run
redraws exactly what it drew before.
"""

from __future__ import annotations

import functools
import math
from typing import Any, Callable, NamedTuple, Optional, Tuple

import torch
import torch.distributed as dist
from torch import Tensor

from .settings import DISTRIBUTIONS, SETTINGS, Component, Setting, SettingError, describe

register_distribution = DISTRIBUTIONS.register
"""Decorator registering an increasing ``F^-1(u: Tensor, **params) -> t``, mapping (0, 1) into [0, 1], as a
``sample_method``; keyword arguments declare its parameters as :class:`~.settings.Setting`, and ``cdf=`` may give
its closed-form CDF ``F(t: Tensor, **params) -> u`` (without one, :meth:`TimestepDistribution.cdf` bisects)."""


def _logit_normal_cdf(t: Tensor, loc: float = 0.0, scale: float = 1.0) -> Tensor:
    return torch.special.ndtr((torch.logit(t) - loc) / scale)


def _cosmap_cdf(t: Tensor) -> Tensor:
    return torch.atan2(t, 1 - t) * (2 / math.pi)  # tan(pi u / 2) = t / (1 - t), finite at t = 1


def _logsnr_cdf(t: Tensor, loc: float = 0.0, scale: float = 1.0) -> Tensor:
    return torch.special.ndtr((2 * torch.logit(t) + loc) / scale)


@register_distribution("uniform", cdf=lambda t: t)
def uniform(u: Tensor) -> Tensor:
    """t ~ U(0, 1) (Liu et al., 2022, rectified flow)."""
    return u


# Beyond these, float32 timesteps pile up at 0 or N (|loc| large) or at one value (scale small).
@register_distribution(
    "logit-normal", cdf=_logit_normal_cdf,
    loc=Setting("loc", "float", 0.0, "mean of the logit-normal's underlying normal", low=-5, high=5),
    scale=Setting("scale", "float", 1.0, "standard deviation of the logit-normal's underlying normal",
                  low=0.05, high=5),
)
def logit_normal(u: Tensor, loc: float = 0.0, scale: float = 1.0) -> Tensor:
    """logit(t) ~ N(loc, scale^2) (Esser et al., 2024, SD3; Open-Sora's ``logit-normal``)."""
    return torch.sigmoid(loc + scale * torch.special.ndtri(u))


@register_distribution(
    "mode",
    mode_scale=Setting("mode_scale", "float", 1.29, "the heavy-tail scale s of mode sampling (SD3: 1.29)",
                       low=-1, high=2 / (math.pi - 2)),
)
def mode(u: Tensor, mode_scale: float = 1.29) -> Tensor:
    """Mode sampling with heavy tails (Esser et al., 2024, SD3), written increasing in u.

    SD3 gives ``f(v) = 1 - v - s (cos^2(pi v / 2) - 1 + v)``; with ``v = 1 - u`` (also uniform) this is
    ``u - s (sin^2(pi u / 2) - u)``, the same distribution. It is monotone for ``-1 <= s <= 2 / (pi - 2)``.
    """
    return u - mode_scale * (torch.sin(math.pi / 2 * u) ** 2 - u)


@register_distribution("cosmap", cdf=_cosmap_cdf)
def cosmap(u: Tensor) -> Tensor:
    """CosMap (Esser et al., 2024, SD3): ``1 - 1 / (tan(pi u / 2) + 1)``."""
    return 1 - 1 / (torch.tan(math.pi / 2 * u) + 1)


@register_distribution(
    "logsnr", cdf=_logsnr_cdf,
    loc=Setting("loc", "float", 0.0, "mean of log-SNR (musubi-tuner's logit_mean), not of logit(t)", low=-10, high=10),
    scale=Setting("scale", "float", 1.0, "standard deviation of log-SNR (musubi-tuner's logit_std)",
                  low=0.1, high=10),
)
def logsnr(u: Tensor, loc: float = 0.0, scale: float = 1.0) -> Tensor:
    """log-SNR normal (musubi-tuner's ``logsnr``; Karras et al., 2024, arXiv:2411.14793): ``lambda ~ N(loc, scale^2)``,
    ``t = sigmoid(-lambda / 2)``, since ``SNR = ((1 - t) / t)^2``. A logit-normal with loc ``-loc / 2`` and scale
    ``scale / 2``: written increasing in u as ``sigmoid((scale ndtri(u) - loc) / 2)``."""
    return torch.sigmoid((scale * torch.special.ndtri(u) - loc) / 2)


# float32 does not tell t below 2^-126 from 0 (it keeps them only as subnormals) nor t above 1 - 2^-24 from 1: a Beta
# that puts more than this share of its draws there would train that share on t = 0 or N.
BETA_END_SHARE = 1e-3
_BETA_LOGIT_EDGE = 38.0  # beyond |logit(u)| of every uniform a stream draws: 37.4 at 2^-54, 36.7 at 1 - 2^-53


def _beta_cdf(t: Tensor, beta_alpha: float = 2.0, beta_beta: float = 2.0) -> Tensor:
    """The exact inverse of :func:`beta`'s interpolated table (not scipy's ``betainc``), so that ``F(F^-1(u)) = u``
    to rounding: ``logit(t)`` is located among the table's increasing values and ``logit(u)`` interpolated back."""
    table = _beta_table(float(beta_alpha), float(beta_beta), t.device, t.dtype)
    size = len(table) - 1
    y = torch.logit(t)
    i = (torch.searchsorted(table, y.contiguous()) - 1).clamp(0, size - 1)
    x = (i + (y - table[i]) / (table[i + 1] - table[i])) * (2 * _BETA_LOGIT_EDGE / size) - _BETA_LOGIT_EDGE
    return torch.where(x > 0, 1 - torch.sigmoid(-x), torch.sigmoid(x))


@register_distribution(
    "beta", cdf=_beta_cdf,
    beta_alpha=Setting("beta_alpha", "float", 2.0, "the Beta distribution's alpha (SimpleTuner's default 2)",
                       low=0.1, high=100),
    beta_beta=Setting("beta_beta", "float", 2.0, "the Beta distribution's beta (SimpleTuner's default 2); with "
                      "beta_alpha, it may put at most 0.1% of the draws within float32's reach of t = 0 or 1 "
                      "(beta_beta >= 0.59 always does)", low=0.1, high=100),
)
def beta(u: Tensor, beta_alpha: float = 2.0, beta_beta: float = 2.0) -> Tensor:
    """t ~ Beta(alpha, beta) (SimpleTuner's ``flow_use_beta_schedule``), by its inverse CDF.

    The inverse regularised incomplete beta function has no closed form: it is tabulated once per (alpha, beta)
    with scipy's ``betaincinv`` as ``logit(t)`` against ``logit(u)`` at 16385 evenly spaced nodes over
    ``|logit(u)| <= 38`` (every uniform a stream draws), and interpolated linearly on the device, with no loop over
    samples and no host sync. In these coordinates both tails are straight lines (``t ~ (u alpha B)^(1/alpha)`` as
    u -> 0, likewise 1 - t as u -> 1), so the tails are as accurate as the middle, and u = 0 and 1 give t = 0 and 1.
    Accuracy, measured in the tests against scipy's ``betainc`` for float64 uniforms (10^5 draws and both tails out
    to 2^-54) over accepted pairs across [0.1, 100]: ``|F(t) - u| < 1e-6`` (7e-7 at worst), and within 5e-7 of the
    error of the exact quantile rounded to float64, which near t = 1 alone reaches 8e-7 at the smallest accepted
    beta (float64 holds no t between 1 - 2^-53 and 1).

    Refused when built: a pair that puts more than :data:`BETA_END_SHARE` (0.1%) of its draws below 2^-126 or above
    1 - 2^-24, where float32 training timesteps land on t = 0 or N (Beta(0.1, 0.1) puts 9.6% there, by its true law).
    """
    table = _beta_table(float(beta_alpha), float(beta_beta), u.device, u.dtype)
    size = len(table) - 1
    position = (torch.logit(u) + _BETA_LOGIT_EDGE) * (size / (2 * _BETA_LOGIT_EDGE))
    # past the end nodes the end segments extend, so u = 0 and 1 (logit -inf, inf) give t = 0 and 1; NaN stays NaN
    i = position.floor().clamp(0, size - 1).nan_to_num(0).long()
    logit_t = torch.lerp(table[i], table[i + 1], position - i)
    # 1 - sigmoid(-y) above 1/2: 1 / (1 + e^-y) would round 1 + e^-y to 1 already at e^-y = 2^-53, twice too early
    return torch.where(logit_t > 0, 1 - torch.sigmoid(-logit_t), torch.sigmoid(logit_t))


@functools.lru_cache(maxsize=32)
def _beta_table(alpha: float, beta_: float, device: Any, dtype: torch.dtype) -> Tensor:
    return _beta_logit_table(alpha, beta_).to(device, dtype)  # once per device: no copy per training step


@functools.lru_cache(maxsize=32)
def _beta_logit_table(alpha: float, beta_: float, size: int = 16384) -> Tensor:
    """``logit(F^-1(u))`` at ``logit(u)`` evenly spaced over [-38, 38]; the upper half through the mirror
    ``1 - F^-1(u; alpha, beta) = F^-1(1 - u; beta, alpha)``, since 1 - u, not u, keeps its digits there."""
    import numpy as np
    from scipy.special import betainc, betaincinv, expit

    near_0, near_1 = betainc(alpha, beta_, 2.0**-126), betainc(beta_, alpha, 2.0**-24)
    if not near_0 + near_1 <= BETA_END_SHARE:
        raise SettingError(
            f"sample_method='beta' with beta_alpha={alpha!r}, beta_beta={beta_!r} puts {near_0 + near_1:.2%} of its "
            f"draws below t = 2^-126 ({near_0:.2g}) or above t = 1 - 2^-24 ({near_1:.2g}), where float32 training "
            f"timesteps land on t = 0 or N: at most {BETA_END_SHARE:.1%} is allowed. Raise beta_beta "
            "(beta_beta >= 0.59 passes with any beta_alpha)")
    x = np.linspace(-_BETA_LOGIT_EDGE, _BETA_LOGIT_EDGE, size + 1)
    lower = x <= 0
    t = betaincinv(alpha, beta_, expit(x[lower]))
    s = betaincinv(beta_, alpha, expit(-x[~lower]))  # 1 - t
    y = np.concatenate([np.log(t) - np.log1p(-t), np.log1p(-s) - np.log(s)])
    if not (np.isfinite(y).all() and (np.diff(y) > 0).all()):  # an old scipy's betaincinv in the far tails
        raise SettingError(f"sample_method='beta' with beta_alpha={alpha!r}, beta_beta={beta_!r}: scipy's betaincinv "
                           "does not give a finite, increasing inverse CDF here; upgrade scipy")
    return torch.from_numpy(y)


def _fixed_cdf(t: Tensor, timesteps: Tuple[float, ...] = (0.25, 0.5, 0.75), fixed_order: str = "random") -> Tensor:
    values = torch.tensor(sorted(timesteps), dtype=t.dtype, device=t.device)
    return torch.searchsorted(values, t.contiguous(), right=True).to(t.dtype) / len(values)  # P(T <= t)


@register_distribution(
    "fixed", cdf=_fixed_cdf,
    timesteps=Setting("timesteps", "list", (0.25, 0.5, 0.75), "the timesteps to train on, fractions of N",
                      low=0, high=1),
    fixed_order=Setting("fixed_order", "choice", "random",
                        "'random' draws from the list uniformly; 'cycle' visits it in ascending order, keyed on "
                        "(step, global sample index), the same on every rank and after a resume",
                        choices=("random", "cycle")),
)
def fixed(u: Tensor, timesteps: Tuple[float, ...] = (0.25, 0.5, 0.75), fixed_order: str = "random") -> Tensor:
    """A list of timesteps (SimpleTuner's ``flow_custom_timesteps``), each with probability 1 / K: the inverse CDF of
    the discrete uniform on the sorted list, ``t_(floor(u K))``."""
    values = torch.tensor(sorted(timesteps), dtype=u.dtype, device=u.device)
    return values[(u * len(values)).long().clamp(0, len(values) - 1)]


@functools.lru_cache(maxsize=32)
def _mixture_parts(components: Optional[Tuple[Component, ...]]
                   ) -> Tuple[Tuple[Component, "TimestepDistribution"], ...]:
    if components is None:
        raise SettingError("sample_method='mixture' needs components, e.g. components=[dict(sample_method="
                           "'logit-normal', loc=0.0, scale=1.0, weight=0.7), dict(sample_method='uniform', weight=0.3)]")
    parts = tuple((c, TimestepDistribution(c.sample_method, c.t_range, c.t_range_mode, **dict(c.params)))
                  for c in components)
    _check_stretches(parts)
    return parts


STRETCH_END_SHARE = 0.5
"""The share of a mixture's draws that its stretches may clamp onto t = 0 or t = 1 (at most; the guard's
``PILE_SHARE``, for both ends together)."""


def _check_stretches(parts: Tuple[Tuple[Component, "TimestepDistribution"], ...]) -> None:
    """Refuse stretches that clamp most of the mixture's draws onto exactly t = 0 or t = 1. A stretch (lo, hi) sends
    a component's draws below lo to 0 (reflected instead where it has ``reflect``) and those above hi to 1, for every
    shift factor alike (the shift is increasing): F(lo) and 1 - F(hi) of the component's own distribution. The
    guard's pile-up judgement looks at one end at a time, so a narrow stretch that splits its draws between both
    ends (all of them at 0 or N) would pass it."""
    shares = []
    for k, (c, d) in enumerate(parts):
        if c.stretch is not None:
            low, high = d.cdf(torch.tensor(c.stretch, dtype=torch.float64)).tolist()
            shares.append((k, c, (0.0 if c.reflect is not None else low) + 1 - high))
    total = math.fsum(c.weight * share for _, c, share in shares)
    if total > STRETCH_END_SHARE:
        k, c, share = max(shares, key=lambda s: s[1].weight * s[2])
        raise SettingError(
            f"components={describe(list(c for c, _ in parts))} is not allowed: their stretches clamp {total:.1%} of "
            f"the draws onto exactly t = 0 or t = 1 (component {k}'s stretch={c.stretch!r} clamps {share:.1%} of its "
            f"draws: those above hi, and below lo unless reflected), more than the {STRETCH_END_SHARE:.0%} allowed, so "
            "training would see almost only those ends. Widen the stretch to hold most of the component's draws "
            "(LTX-2's holds 99.4%)")


Curve = Callable[[Tensor], Tensor]  # elementwise in t: a shift with its factor bound, its inverse, a CDF


def _identity(t: Tensor) -> Tensor:
    return t


def _one_minus(t: Tensor) -> Tensor:
    return 1 - t


class ShiftCurves(NamedTuple):
    """A shift s with its factor bound, as a mixture's CDF in the shifted noise level needs it: its inverse
    ``unshift(y)``, and in complements ``complement(t) = 1 - s(t)`` and ``from_complement(c) = unshift(1 - c)``, which
    keep their digits where a large factor puts the shifted draw next to 1 (LTX-2's stretch ends at mu = 37 lie within
    1e-16 of 1)."""

    unshift: Curve
    complement: Curve
    from_complement: Curve


IDENTITY = ShiftCurves(_identity, _one_minus, _one_minus)
"""No shift: the mixture's own, unshifted CDF."""


def component_cdf(x: Tensor, component: Component, distribution: "TimestepDistribution",
                  curves: ShiftCurves = IDENTITY) -> Tensor:
    """``P(T <= x)`` of one mixture component's draw in the shifted noise level, for the shift ``curves``,
    elementwise in float64: ``F(unshift(x))`` for a component shifted as usual, ``F(x)`` for ``shift=False``. With
    ``stretch=(lo, hi)`` the shifted draw S becomes ``Y = (S - s(lo)) / (s(hi) - s(lo))``, then with ``reflect=e``
    values below e become ``2 e - Y``, then the clamp to [0, 1]: for ``e <= x < 1``, ``P(T <= x) = P(2 e - x <= Y
    <= x)`` (0 below e, 1 at 1, where the clamp puts ``Y > 1``). ``Y <= y`` is computed in complements, ``1 - S >=
    (1 - s(lo)) - y (s(hi) - s(lo))``, so that it holds its digits whatever the factor."""
    return _component_cdf_of(component, distribution, curves, x.device)(x)


def _component_cdf_of(component: Component, distribution: "TimestepDistribution", curves: ShiftCurves,
                      device: Any) -> Curve:
    """:func:`component_cdf` as a function of x, its stretch ends computed once (a bisection evaluates it 62 times
    under one shift)."""
    if not component.shift:
        curves = IDENTITY
    if component.stretch is None:
        return lambda x: distribution.cdf(curves.unshift(x))
    # 1 - s(lo), 1 - s(hi); shaped as the factor, they broadcast against x
    low, high = (curves.complement(torch.tensor(end, dtype=torch.float64, device=device)) for end in component.stretch)

    def stretched(y: Tensor) -> Tensor:  # P(Y <= y) = P(1 - S >= (1 - s(lo)) - y (s(hi) - s(lo)))
        return distribution.cdf(curves.from_complement((low - y * (low - high)).clamp(0, 1)))

    def cdf(x: Tensor) -> Tensor:
        if component.reflect is None:
            f = torch.where(x < 0, 0.0, stretched(x))
        else:
            e = component.reflect
            f = torch.where(x < e, 0.0, stretched(x) - stretched(2 * e - x))
        return torch.where(x >= 1, 1.0, f)
    return cdf


def _mixture_cdf_of(components: Optional[Tuple[Component, ...]], curves: ShiftCurves, device: Any) -> Curve:
    parts = [(c.weight, _component_cdf_of(c, d, curves, device)) for c, d in _mixture_parts(components)]
    return lambda x: sum(w * cdf(x) for w, cdf in parts)


def mixture_cdf(x: Tensor, components: Optional[Tuple[Component, ...]], curves: ShiftCurves = IDENTITY) -> Tensor:
    """``G(x) = sum_i w_i G_i(x)``: the mixture's CDF in the shifted noise level for the shift ``curves``
    (:func:`component_cdf`); with the identity, the CDF of the unshifted mixture."""
    return _mixture_cdf_of(components, curves, x.device)(x)


def mixture_quantile(u: Tensor, components: Optional[Tuple[Component, ...]], curves: ShiftCurves = IDENTITY,
                     shape: Optional[Tuple[int, ...]] = None) -> Tensor:
    """``G^-1(u)``, float64: the least float64 x with ``G(x) >= u`` (:func:`mixture_cdf`), found by
    :func:`_least_true`, elementwise over ``shape`` (u's, or its broadcast with a per-sample shift's factor)."""
    cdf = _mixture_cdf_of(components, curves, u.device)  # a missing components is refused before the search
    target = u.to(torch.float64)
    return _least_true(lambda x: cdf(x) >= target, u.shape if shape is None else shape, u.device)


@register_distribution(
    "mixture", cdf=mixture_cdf,
    components=Setting("components", "components", None,
                       "the mixture's components, each dict(sample_method=..., weight=..., and that distribution's "
                       "parameters; optionally shift=False, t_range, t_range_mode, stretch, reflect), drawn as one "
                       "inverse CDF"),
)
def mixture(u: Tensor, components: Optional[Tuple[Component, ...]] = None) -> Tensor:
    """A mixture ``F(t) = sum_i w_i F_i(t)`` of registered distributions, drawn as the inverse CDF of one uniform (not
    by picking a component per sample), so the per-sample stream, stratification and t_range work as for any other.

    ``F^-1(u)`` is the least float64 t with ``F(t) >= u`` (:func:`mixture_quantile`: 62 halvings over the float64
    numbers in [0, 1], each evaluating every component's CDF), so ``F(t') < u <= F(t)`` for the float64 t' just
    below t: ``|F(t) - u|`` is at most the mass of one float64 step of t, below 1e-12 over the uniforms a stream draws
    for mixtures of the continuous built-ins (in the tests), and an atom's mass at a ``fixed`` component's timestep.
    Components that the shift does not move alike (``shift=False``, ``stretch``) make the mixture a function of each
    sample's shift factor: :class:`~.core.Recipe` draws it in the shifted noise level (``mixture_quantile`` with the
    sample's shift); here, unshifted, they are drawn with the identity shift.
    """
    return mixture_quantile(u, components).to(u.dtype)


SAMPLE_METHODS: Tuple[str, ...] = tuple(DISTRIBUTIONS)
"""Names of the built-in timestep distributions, the valid values of ``sample_method``."""


# The extreme uniforms a stream draws: torch.rand's 0 (float32 and float64), CUDA's float64 and CPU's float64
# least above 0, the counter stream's (and CUDA float32's) least, CPU float32's least; and their mirrors below 1.
STREAM_EXTREMES: Tuple[float, ...] = (0.0, 2.0**-54, 2.0**-53, 2.0**-33, 2.0**-24,
                                      1 - 2.0**-24, 1 - 2.0**-33, 1 - 2.0**-53)


class TimestepDistribution:
    """A base distribution of t in (0, 1), optionally confined to ``t_range``, applied to uniform draws.

    Args:
        sample_method: one of :data:`SAMPLE_METHODS`.
        t_range: ``(t_min, t_max)`` within [0, 1], before the shift, or None for the whole interval.
        t_range_mode: ``"truncate"`` draws from the distribution conditioned on the range (the density's
            shape inside the range is kept, its tails are cut); ``"rescale"`` maps the whole distribution
            affinely into the range (``t_min + (t_max - t_min) t``), squeezing its shape.
        **params: the distribution's parameters (``loc``, ``scale`` for logit-normal, ``mode_scale`` for mode),
            validated by their declarations; a distribution that would put (almost) every draw at one point, or
            outside [0, 1], is refused here.
    """

    def __init__(self, sample_method: str = "uniform", t_range: Optional[Tuple[float, float]] = None,
                 t_range_mode: str = "truncate", **params: Any) -> None:
        self.sample_method = SETTINGS["sample_method"].check(sample_method)
        self.params = DISTRIBUTIONS.check_params(sample_method, params)
        self.t_range = SETTINGS["t_range"].check(t_range)
        self.t_range_mode = SETTINGS["t_range_mode"].check(t_range_mode)
        self._inverse_cdf = DISTRIBUTIONS.get(sample_method)
        self._u_range = None
        if self.t_range is not None and t_range_mode == "truncate":
            self._u_range = (self._cdf(self.t_range[0]), self._cdf(self.t_range[1], upper=True))
        self._check_spread()

    def __repr__(self) -> str:
        params = "".join(f", {k}={v!r}" for k, v in self.params.items())
        return (f"TimestepDistribution({self.sample_method!r}{params}, t_range={self.t_range!r}, "
                f"t_range_mode={self.t_range_mode!r})")

    @property
    def cycle_length(self) -> Optional[int]:
        """For ``fixed``, how many listed timesteps the draws keep: those within t_range under ``"truncate"`` (both
        bounds included, duplicates counted), all of them otherwise; None for every other distribution.
        :func:`cycle_uniform` over this many cells visits each kept entry in turn, in ascending order."""
        if self.sample_method != "fixed":
            return None
        timesteps = self.params.get("timesteps", DISTRIBUTIONS.defaults("fixed")["timesteps"])
        if self._u_range is None:
            return len(timesteps)
        t_min, t_max = self.t_range
        return sum(t_min <= t <= t_max for t in timesteps)

    def __call__(self, u: Tensor) -> Tensor:
        """Map uniforms in [0, 1] to timesteps in [0, 1], increasing in ``u``. A NaN uniform, or one outside [0, 1],
        gives NaN, as does a distribution that returns NaN: never a valid-looking timestep."""
        if not isinstance(u, Tensor) or not u.is_floating_point():
            raise SettingError(f"u={describe(u)} is not allowed: uniforms are a floating tensor with values in (0, 1)")
        t = self._unclamped(u).clamp(0, 1)  # rounding can step past the ends; clamp keeps NaN as NaN
        return torch.where((u >= 0) & (u <= 1), t, torch.nan)  # fixed's index would turn a NaN u into a listed t

    def _unclamped(self, u: Tensor) -> Tensor:
        if self._u_range is not None:
            lo, hi = self._u_range
            u = lo + (hi - lo) * u
        t = self._inverse_cdf(u, **self.params)
        if self.t_range is not None and self.t_range_mode == "rescale":
            t = self.t_range[0] + (self.t_range[1] - self.t_range[0]) * t
        return t

    def cdf(self, t: Tensor) -> Tensor:
        """``F(t) = P(T <= t)``, float64, elementwise, for the distribution as drawn (t_range and t_range_mode
        applied): 0 below the support, 1 at and above its top, NaN for NaN. The registered closed form where the
        distribution has one (every built-in but ``mode``); otherwise, user-registered ones included, the inverse CDF
        bisected on the float64 grid (62 evaluations), exact to one float64 step of u. Right-continuous: at an atom
        of ``fixed`` it includes the atom. ``cdf(self(u))`` is ``u`` to within 1e-12 for the continuous built-ins
        (in the tests)."""
        if not isinstance(t, Tensor) or not t.is_floating_point():
            raise SettingError(f"t={describe(t)} is not allowed: timesteps are a floating tensor, fractions of N")
        x = t.to(torch.float64)
        if self.t_range is not None and self.t_range_mode == "rescale":
            x = (x - self.t_range[0]) / (self.t_range[1] - self.t_range[0])
        closed = DISTRIBUTIONS.cdf_of(self.sample_method)
        inside = x.clamp(0, 1)
        if closed is not None:
            f = closed(inside, **self.params).to(torch.float64)
        else:
            f = _least_true(lambda u: self._inverse_cdf(u, **self.params) > inside, x.shape, x.device)
        if self._u_range is not None:
            lo, hi = self._u_range
            f = ((f - lo) / (hi - lo)).clamp(0, 1)
        f = torch.where(x < 0, 0.0, torch.where(x >= 1, 1.0, f))
        return torch.where(x.isnan(), torch.nan, f)

    def _check_spread(self) -> None:
        """Refuse a distribution that leaves [0, 1] or gives NaN (on a grid of u and at every extreme uniform a stream
        draws), decreases, or puts 98% of its draws within 5/1000: at Open-Sora's N = 1000, five timesteps."""
        grid = torch.arange(1, 1000, dtype=torch.float64) / 1000
        low, high = [x for x in STREAM_EXTREMES if x < 0.5], [x for x in STREAM_EXTREMES if x > 0.5]
        u = torch.cat([torch.tensor(low, dtype=torch.float64), grid, torch.tensor(high, dtype=torch.float64)])
        with torch.no_grad():
            t = self._unclamped(u)
        params = {**DISTRIBUTIONS.defaults(self.sample_method), **self.params}
        what = f"sample_method={self.sample_method!r}" + "".join(f", {k}={v!r}" for k, v in params.items())
        what += f", t_range={self.t_range!r}" if self.t_range is not None else ""
        if not isinstance(t, Tensor) or t.shape != u.shape:
            raise SettingError(f"{what} does not map (0, 1) into [0, 1]: it returned {describe(t)} for "
                               f"{describe(u)}; a distribution must return one t in [0, 1] per u")
        outside = ~((t >= 0) & (t <= 1))  # NaN too
        if bool(outside.any()):
            k = int(outside.nonzero()[0])
            raise SettingError(f"{what} does not map (0, 1) into [0, 1]: t={t[k].item()!r} at u={u[k].item()!r}; "
                               "a distribution must return t in [0, 1] for every u a stream draws, 0 and "
                               "1 - 2^-53 included")
        # A float64 inverse CDF may dip by an ulp where the range's mapping rounds (mode at t_range (0.5, 1) does at
        # u = 2^-54); a real decrease is many orders larger than this, and than any float32 timestep step.
        falls = t.diff() < -1e-12
        if bool(falls.any()):
            k = int(falls.nonzero()[0])
            raise SettingError(f"{what} is not increasing in u (t={t[k].item()!r} at u={u[k].item()!r}, "
                               f"{t[k + 1].item()!r} at u={u[k + 1].item()!r}): register its inverse CDF")
        t = t[len(low):len(low) + len(grid)]
        self.spread = spread = (t[989] - t[9]).item()
        if not spread >= 5e-3:
            raise SettingError(f"{what} collapses: 98% of its timesteps fall within {spread:.2g} of "
                               f"t = {t[499].item():.4g} (x N). Widen the distribution or the t_range.")

    def _cdf(self, t: float, upper: bool = False) -> float:
        """F(t) by bisection on the increasing inverse CDF, once per bound at set-up (float64, 60 halvings): the
        least u with F^-1(u) >= t, or with ``upper`` the greatest u with F^-1(u) <= t, so that a distribution with
        atoms (``fixed``) keeps the ones on both bounds of t_range."""
        lo, hi = 0.0, 1.0
        for _ in range(60):
            mid = (lo + hi) / 2
            value = self._inverse_cdf(torch.tensor([mid], dtype=torch.float64), **self.params).item()
            if value < t or (upper and value == t):
                lo = mid
            else:
                hi = mid
        return (lo + hi) / 2


_ONE_BITS = 0x3FF0000000000000  # 1.0's float64 bits: non-negative float64s are ordered as their int64 bits


def _least_true(pred: Any, shape: Tuple[int, ...], device: Any) -> Tensor:
    """Elementwise, the least float64 x in [0, 1] where ``pred(x)`` (a bool tensor of ``shape``, False then True
    as x grows) is True, 1 where it never is: a vectorised bisection over the float64 numbers themselves (their bit
    patterns), so 62 halvings reach one float64 step anywhere in [0, 1], tails included."""
    lo = torch.full(shape, -1, dtype=torch.int64, device=device)  # pred(lo) False: below 0
    hi = torch.full(shape, _ONE_BITS, dtype=torch.int64, device=device)  # pred(hi) True, or taken as True at 1
    for _ in range(62):  # the interval holds 2^62 - 2^52 + 1 numbers
        active = hi - lo > 1
        mid = torch.where(active, lo + (hi - lo) // 2, hi)
        up = pred(mid.view(torch.float64))
        lo = torch.where(active & ~up, mid, lo)
        hi = torch.where(active & up, mid, hi)
    return hi.view(torch.float64)


# --- the counter-based stream -----------------------------------------------------------------------------

_MASK32 = 0xFFFFFFFF
Int = Any  # a Python int or an int64 tensor: the hash below is written for both


def _mul32(x: Int, m: int) -> Int:
    """``x * m mod 2^32`` for x in [0, 2^32), in int64 without overflow: the two 16-bit halves of m separately."""
    lo = x * (m & 0xFFFF)
    hi = ((x * (m >> 16)) & 0xFFFF) << 16
    return (lo + hi) & _MASK32


def _mix32(x: Int) -> Int:
    """A 32-bit integer finaliser (Wellons' lowbias32): every input bit changes about half the output bits."""
    x = x ^ (x >> 16)
    x = _mul32(x, 0x7FEB352D)
    x = x ^ (x >> 15)
    x = _mul32(x, 0x846CA68B)
    return x ^ (x >> 16)


def _key(seed: int, step: int, lane: int) -> Tuple[int, int]:
    """Two 32-bit round keys for (seed, step, lane), in plain Python: nothing here touches a device."""
    key = _mix32((seed & _MASK32) ^ 0x9E3779B9)
    for word in ((seed >> 32) & _MASK32, step & _MASK32, (step >> 32) & _MASK32, lane & _MASK32):
        key = _mix32(key ^ word)
    return key, _mix32(key ^ 0x85EBCA6B)


def _to_unit(bits: Int) -> Any:
    return (bits + 0.5) / 2.0**32  # centred in its cell: never 0, never 1


def counter_uniform(seed: int, step: int, index: Tensor, lane: int = 0) -> Tensor:
    """Uniforms in (0, 1), float64, one per entry of ``index``: a pure function of (seed, step, index, lane).

    Counter-based in the sense of Salmon et al. (2011, "Parallel random numbers: as easy as 1, 2, 3"): the
    key (seed, step, lane) and the counter (the global sample index) are hashed, so any rank can compute any
    sample's draw, on any device, without state, host sync or communication. 32 bits per draw.
    """
    k1, k2 = _key(seed, step, lane)
    bits = _mix32(_mix32(index.to(torch.int64) & _MASK32 ^ k1) ^ k2)  # two rounds: no cross-step collisions
    return _to_unit(bits.to(torch.float64))


def cycle_uniform(step: int, index: Tensor, count: int) -> Tensor:
    """The centre of cell ``(step + index) mod count`` of the unit interval. With ``count`` the distribution's
    :attr:`TimestepDistribution.cycle_length`, ``fixed`` maps cell j to the j-th smallest kept entry (t_range's
    truncation maps the unit interval onto the kept entries' cells), so each sample visits the kept entries in
    ascending order, one per step, each once per ``count`` steps, and neighbouring samples neighbouring entries."""
    if isinstance(count, bool) or not isinstance(count, int) or count < 1:
        raise SettingError(f"count={describe(count)} is not allowed: use the distribution's cycle_length, an int >= 1")
    return (torch.remainder(index.to(torch.int64) + step % count, count).to(torch.float64) + 0.5) / count


def stratified_uniform(seed: int, step: int, dp_rank: int, dp_size: int, batch_size: int, device: Any = None) -> Tensor:
    """Uniforms stratified over the global batch (Kingma et al., 2021, VDM), however many samples each rank holds.

    Data-parallel rank ``r`` of ``R`` owns the slice ``[r / R, (r + 1) / R)`` of the unit interval, shifted by one
    ``u0`` per (seed, step) that every rank computes alike, and spreads its ``B_r`` samples evenly across it:
    ``u = (u0 + (r + i / B_r) / R) mod 1``. Ranks never share a position, whatever their batch sizes (Open-Sora's
    bucket sampler gives them different ones). When every rank holds ``B`` samples this is exactly
    ``(u0 + k / (R B)) mod 1`` over ``k = 0 .. R B - 1``: one draw in each of the ``R B`` strata. When they differ,
    each rank is stratified within its own slice; Open-Sora averages each rank's loss before averaging across
    ranks, so every slice, and so the whole interval, still gets equal weight.
    """
    k1, k2 = _key(seed, step, lane=1)
    u0 = _to_unit(_mix32(_mix32(k1) ^ k2))
    i = torch.arange(batch_size, device=device, dtype=torch.float64)
    return torch.remainder(u0 + (dp_rank + i / batch_size) / dp_size, 1.0)


def stream_uniform(seed: int, step: int, index: Tensor, dp_rank: int, dp_size: int, stratified: bool,
                   cycle: Optional[int] = None) -> Tensor:
    """This rank's uniforms of the per-sample stream at ``step``, for the samples at global positions ``index``:
    :func:`cycle_uniform` over ``cycle`` cells when given (the distribution's ``cycle_length``), else
    :func:`stratified_uniform` or :func:`counter_uniform`."""
    if cycle is not None:
        return cycle_uniform(step, index, cycle)
    if stratified:
        return stratified_uniform(seed, step, dp_rank, dp_size, index.shape[0], index.device)
    return counter_uniform(seed, step, index)


# --- where a rank's samples sit in the global batch -------------------------------------------------------

def data_parallel_layout(data_parallel_group: Any = None, sequence_parallel_group: Any = None) -> Tuple[int, int]:
    """This rank's place among the data-parallel replicas: ``(dp_rank, dp_size)``.

    Sequence-parallel ranks that share a sample share a data-parallel rank, hence its timesteps. Groups
    passed in win; otherwise Open-Sora's ``parallel_states`` when it is importable; otherwise the world.
    A single process (no ``torch.distributed``) is ``(0, 1)``.
    """
    if not (dist.is_available() and dist.is_initialized()):
        return 0, 1
    if data_parallel_group is None or sequence_parallel_group is None:
        dp, sp = _opensora_groups()
        data_parallel_group = dp if data_parallel_group is None else data_parallel_group
        sequence_parallel_group = sp if sequence_parallel_group is None else sequence_parallel_group
    group = dist.group.WORLD if data_parallel_group is None else data_parallel_group
    sp_size = 1 if sequence_parallel_group is None else dist.get_world_size(sequence_parallel_group)
    # Tensor- and pipeline-parallel ranks may multiply the world further; they share their samples, so only the
    # product has to divide it.
    if sp_size > 1 and dist.get_world_size() % (dist.get_world_size(group) * sp_size) != 0:
        raise ValueError(
            f"a sequence-parallel group of {sp_size} ranks and a data-parallel group of {dist.get_world_size(group)} "
            f"do not divide the world of {dist.get_world_size()} ranks: pass data_parallel_group to "
            "set_process_groups(), or set it in Open-Sora's parallel_states"
        )
    return dist.get_rank(group), dist.get_world_size(group)


def _opensora_groups() -> Tuple[Any, Any]:
    try:
        from opensora.acceleration import parallel_states
    except ImportError:
        return None, None
    return parallel_states.get_data_parallel_group(), parallel_states.get_sequence_parallel_group()


def global_sample_index(batch_size: int, dp_rank: int, dp_size: int, device: Any = None) -> Tensor:
    """Global stream positions of this rank's samples, interleaved: ``i * dp_size + dp_rank``.

    Interleaving keeps positions unique however many samples each rank holds, with no communication.
    """
    return torch.arange(batch_size, device=device, dtype=torch.int64) * dp_size + dp_rank
