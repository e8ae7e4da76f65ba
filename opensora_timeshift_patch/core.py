"""The core: every decision about training timesteps, made once, when the settings are read.

A :class:`Recipe` is built from the ``scheduler`` dict's settings for one Open-Sora generation (``"1.x"`` or
``"2.0"``, whose defaults differ so that no settings means that release's stock rule) and carried to every
integration: the 1.x scheduler (:mod:`.scheduler`), the 2.0 hooks (:mod:`.opensora2`), ``patch`` and each command of
the CLI. It holds

- the base distribution of t (:class:`~.sampling.TimestepDistribution`),
- the guarded shift (:class:`~.shift.TimestepShift`; its guard is :mod:`.guard`),
- the loss weighting (:class:`~.weighting.LossWeighting`),
- the stream the uniforms come from (:class:`Stream`),
- the per-bucket rules, each with a Recipe *derived* from this one (:meth:`Recipe.derive`): a rule overrides what it
  names and inherits the rest.

Every refusal of a combination lives here or in :func:`~.settings.resolve`; integrations consume the Recipe and
never decide again.
"""

from __future__ import annotations

import functools
import math
import warnings
from typing import Any, Callable, Dict, List, Mapping, NamedTuple, Optional, Tuple

import torch
from torch import Tensor

from .recipes import RECIPES, ModelRecipe, expand
from .per_bucket import BucketRule, outside, parse_bucket_settings, rule_for
from .sampling import (ShiftCurves, TimestepDistribution, counter_uniform, data_parallel_layout, global_sample_index,
                       mixture_cdf, mixture_quantile, stream_uniform)
from .settings import (OPENSORA_ONLY, RELEASE_DEFAULTS, SETTINGS, Component,
                       SettingError, describe, not_on_opensora2, resolve, route, still_meant, unknown_setting_error)
from .shift import (SHIFT_SETTINGS, TimestepShift, inverse_shift, inverse_shift_complement, read_meta,
                    shift_complement)
from .weighting import LossWeighting

RELEASES = tuple(RELEASE_DEFAULTS)
"""The Open-Sora generations a Recipe is built for: ``"1.x"`` (1.2 and 1.3) and ``"2.0"``."""


class Stream(NamedTuple):
    """Where a training step's uniforms come from (the ``stream`` settings)."""

    rng: str  # "global": torch's RNG, as stock; "per_sample": the counter-based stream
    seed: int
    stratified: bool
    start_step: int
    cycle: Optional[int]  # fixed_order="cycle": the number of list entries visited in turn; else None


class Recipe:
    """The configured training-timestep recipe: see the module docstring.

    Args:
        settings: the ``scheduler`` dict's keywords (without ``type``): the scheduler's settings
            (:data:`~.settings.SETTINGS`), the selected policy's, distribution's and weighting's parameters, and on
            1.x Open-Sora 1.3's RFLOW keywords (kept in :attr:`rflow_keywords` for its RFLOW).
        release: ``"1.x"`` or ``"2.0"``; on 2.0 a setting with no meaning there is refused with the reason.
        who: how errors name the caller.
    """

    def __init__(self, settings: Optional[Mapping[str, Any]] = None, release: str = "1.x",
                 who: str = "rflow-timeshift") -> None:
        if release not in RELEASES:
            raise SettingError(f"release={describe(release)} is not allowed: use one of {', '.join(map(repr, RELEASES))}")
        if settings is not None and not isinstance(settings, Mapping):
            raise SettingError(f"settings={describe(settings)} is not allowed: use a dict of the scheduler's "
                               "keywords, as the config's scheduler = dict(type='rflow-timeshift', ...) holds")
        if settings and settings.get("recipe") is not None:
            # The one place a named recipe becomes settings: what is given beside it overrides it, and the expanded
            # settings are judged as any are; a refusal says which of them the recipe set.
            name, expanded = settings["recipe"], expand(settings, release)
            try:
                self.__init__(expanded, release, who)
            except SettingError as err:
                sets = ", ".join(f"{k}={v!r}" for k, v in RECIPES[name].training.items() if k not in settings)
                raise SettingError(f"{err} (recipe={name!r} sets {sets})") from None
            self.recipe = RECIPES[name]
            return
        given = {k: v for k, v in (settings or {}).items() if k != "recipe"}  # recipe=None: no recipe
        self.recipe: Optional[ModelRecipe] = None
        if release == "2.0":
            for key, value in given.items():
                why = not_on_opensora2(key)
                if why:
                    raise SettingError(f"{key}={describe(value)} has no meaning on Open-Sora 2.0 ({why}): remove it")
        own, policy, dist, weight, rest = route(given, SETTINGS, distribution=True, release=release)
        values = resolve(own, release=release)
        for key, value in rest.items():
            if key not in OPENSORA_ONLY:
                takes = [n for n in SETTINGS if release == "1.x" or not not_on_opensora2(n)]
                raise unknown_setting_error(who, key, value, takes, values["shift_mode"], values["sample_method"],
                                            OPENSORA_ONLY if release == "1.x" else (), values["loss_weighting"])
        if policy and not values["use_timestep_transform"]:
            key = next(iter(policy))
            raise SettingError(f"{key}={describe(given[key])} only applies with use_timestep_transform=True (got "
                               "False): remove it or turn the shift on")
        self.release, self.who = release, who
        self.given: Dict[str, Any] = given
        self.values: Dict[str, Any] = values
        self.rflow_keywords: Dict[str, Any] = {k: OPENSORA_ONLY[k].check(v) for k, v in rest.items()}
        self.settings: Dict[str, Any] = {**values, **policy, **dist, **weight}
        if not values["scale_temporal"]:
            unused = [f"{k}={values[k]!r}" for k in ("transform_scale", "uniform_over_threshold")
                      if values[k] != SETTINGS[k].default]
            if unused:
                warnings.warn(f"scale_temporal=False: as in stock Open-Sora 1.3, every sample is shifted as an image, "
                              f"so {' and '.join(unused)} {'does' if len(unused) == 1 else 'do'} not apply",
                              stacklevel=3)

        self.distribution = TimestepDistribution(values["sample_method"], values["t_range"], values["t_range_mode"],
                                                 **dist)
        release_shift = {k: v for k, v in RELEASE_DEFAULTS[release].items() if k in SHIFT_SETTINGS}
        self.shift = TimestepShift(**{**release_shift, **{k: v for k, v in own.items() if k in SHIFT_SETTINGS}},
                                   **policy)
        # Components the shift does not move alike (LTX-2's unshifted uniform, its stretch) make the draw a function
        # of each sample's factor, as noise_range does; the draw is then made in the shifted noise level.
        self.shifted_components: Optional[Tuple[Component, ...]] = None
        components = self.distribution.params.get("components") or ()
        if not all(c.shifted_alike for c in components):
            _check_shifted_components(values, components)
            self.shifted_components = self.distribution.params["components"]
        self.shift.base = self.base_draw  # the guard judges the shifted distribution, not the factor alone
        self.weighting = LossWeighting(values["loss_weighting"], values["max_loss_weight"], **weight)

        cycle = self.distribution.cycle_length if dist.get("fixed_order") == "cycle" else None
        self.stream = Stream(values["timestep_rng"], values["timestep_seed"], values["stratified"],
                             values["timestep_start_step"], cycle)
        if cycle is not None and (self.stream.rng != "per_sample" or self.stream.stratified):
            raise SettingError("fixed_order='cycle' visits the list by step and sample index, which needs "
                               f"timestep_rng='per_sample' without stratified (got timestep_rng={self.stream.rng!r}, "
                               f"stratified={self.stream.stratified!r})")
        if values["use_discrete_timesteps"] and self.distribution.spread * values["num_timesteps"] < 2:
            raise SettingError(f"use_discrete_timesteps=True with num_timesteps={values['num_timesteps']} and "
                               f"{self.distribution!r} leaves fewer than two integer timesteps: every draw would be "
                               "the same. Widen t_range or raise num_timesteps")

        self.noise_range: Optional[Tuple[float, float]] = values["noise_range"]
        if self.noise_range is not None:
            _check_noise_range(self.noise_range, values, self.distribution)

        self.rules: Tuple[BucketRule, ...] = ()
        self.children: Tuple[Recipe, ...] = ()
        if values["bucket_settings"] is not None:
            self.rules = parse_bucket_settings(values["bucket_settings"])
            if values["uniform_over_threshold"] is not None or not values["use_timestep_transform"]:
                raise SettingError("bucket_settings needs use_timestep_transform=True and no uniform_over_threshold "
                                   "(Open-Sora 1.3's redraw is not applied per bucket)")
            if cycle is not None:
                raise SettingError("fixed_order='cycle' with bucket_settings: the cycle is the whole batch's stream, "
                                   "which the rules' own distributions cannot share. Use fixed_order='random'")
            self.children = tuple(self._rule_recipe(rule) for rule in self.rules)

    def __repr__(self) -> str:
        shown = ", ".join(f"{k}={v!r}" for k, v in self.given.items())
        return f"Recipe({shown or 'stock ' + self.release}, release={self.release!r})"

    # --- the time scale -------------------------------------------------------------------------------------

    @property
    def use_timestep_transform(self) -> bool:
        return self.values["use_timestep_transform"]

    @property
    def num_timesteps(self) -> int:
        """N: training timesteps live in [0, N] (1.x's num_timesteps; 1 on 2.0, whose t is in [0, 1])."""
        return self.values["num_timesteps"] if self.release == "1.x" else 1

    # --- deriving ---------------------------------------------------------------------------------------------

    def derive(self, overrides: Mapping[str, Any], keep_rules: bool = True) -> "Recipe":
        """This recipe with ``overrides``: what they name is replaced and the rest inherited, except an inherited
        setting that no longer means anything under the new selection (a parameter of a distribution, policy or
        weighting that is no longer selected; a setting whose ``applies_with`` no longer holds). A contradiction
        between what is inherited and what is overridden is refused, as for any settings."""
        if not isinstance(overrides, Mapping):
            raise SettingError(f"overrides={describe(overrides)} is not allowed: use a dict of settings")
        inherited = {k: v for k, v in self.given.items() if keep_rules or k != "bucket_settings"}
        return Recipe(still_meant(inherited, overrides, self.release), self.release, self.who)

    def _rule_recipe(self, rule: BucketRule) -> "Recipe":
        """A rule's samples' recipe: this one, overridden by the rule (:meth:`derive`)."""
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")  # the scheduler's own settings have said what they warn about
                child = self.derive(rule.settings, keep_rules=False)
        except (SettingError, TypeError) as err:
            raise SettingError(f"{rule}: {err}") from None
        if child.stream.cycle is not None:
            raise SettingError(f"{rule}: fixed_order='cycle' is the whole batch's stream, not a bucket's; a rule "
                               "takes fixed_order='random'")
        return child

    def for_clip(self, num_frames: float, height: float, width: float) -> Tuple[Optional[int], "Recipe"]:
        """The recipe a clip of this size trains under, and the index of the rule that gives it (None: this
        recipe's own settings). On the host, for reports."""
        rule = rule_for(self.rules, num_frames, height, width)
        return (None, self) if rule is None else (rule.index, self.children[rule.index])

    # --- a training step ----------------------------------------------------------------------------------------

    def stream_uniforms(self, batch: int, device: Any, step: int,
                        groups: Tuple[Any, Any] = (None, None)) -> Tuple[Tensor, Optional[Tensor]]:
        """This rank's uniforms of the per-sample stream at ``step``, and the redraw's own (lane 2) where Open-Sora
        1.3's ``uniform_over_threshold`` is set."""
        dp_rank, dp_size = data_parallel_layout(*groups)
        index = global_sample_index(batch, dp_rank, dp_size, device)
        u = stream_uniform(self.stream.seed, step, index, dp_rank, dp_size, self.stream.stratified, self.stream.cycle)
        redraw = None
        if self.values["uniform_over_threshold"] is not None:
            redraw = counter_uniform(self.stream.seed, step, index, lane=2)
        return u, redraw

    @property
    def factor_dependent(self) -> bool:
        """Whether the base draw depends on each sample's shift factor (``noise_range``, or mixture components the
        shift does not move alike), so that the factor is needed before the draw."""
        return self.noise_range is not None or self.shifted_components is not None

    def timesteps(self, u: Tensor, factor: Any = None) -> Tensor:
        """Unshifted timesteps in [0, N] from uniforms (integers with ``use_discrete_timesteps``): :meth:`base_draw`,
        times N. Where the draw is :attr:`factor_dependent`, ``factor`` is each sample's shift factor (a tensor of
        u's shape, or one number)."""
        if self.factor_dependent and factor is None:
            raise TypeError("this draw converts through each sample's shift factor (noise_range, or mixture "
                            "components not shifted alike): pass factor=")
        t = self.base_draw(u, factor)
        n = self.num_timesteps
        if self.values["use_discrete_timesteps"]:
            return (t * n).floor().clamp(max=n - 1).long()
        return (t * n).float() if n != 1 else t

    def base_draw(self, u: Tensor, factor: Any = None) -> Tensor:
        """Unshifted timesteps in [0, 1] for uniforms ``u`` under shift factor ``factor`` (broadcast against u): THE
        draw, which training, the guard, inspect and plot all make through here.

        Plainly ``F^-1(u)``. With ``noise_range``, u is first mapped into ``[G(lo), G(hi)]``, G the CDF of the shifted
        draw for that factor (:meth:`shifted_cdf`), so that the draw is conditioned on the shifted t landing in the
        range (per sample, the stream's stratification kept). With :attr:`shifted_components`, the draw is made in
        the shifted noise level, ``G^-1(u)`` by bisection, and mapped back through the factor's inverse shift, so
        that the shift every integration applies next lands it where the mixture puts it (to the shift's float
        rounding)."""
        if not self.factor_dependent:
            return self.distribution(u)
        curves, a = self._curves(factor, u.device)
        # A factor of 0 (T_eff = 0, kept by on_degenerate='ignore' as stock keeps it) shifts every t < 1 to 0, and its
        # inverse shift is 0 / 0: there the draw is 0, which the shift collapses to stock's 0 instead of NaN.
        collapsed = (a == 0) & (u >= 0) & (u <= 1)
        band = u if self.noise_range is None else self._noise_band(u, curves, a)
        if self.shifted_components is None:
            t = self.distribution(band)
        else:
            x = mixture_quantile(band, self.shifted_components, curves, torch.broadcast_shapes(u.shape, a.shape))
            t = curves.unshift(x).clamp(0, 1)
        # the band maps a uniform just outside [0, 1] inside it: NaN, as the distribution gives one, not a valid t
        return torch.where((u >= 0) & (u <= 1), torch.where(collapsed, 0.0, t), torch.nan).to(u.dtype)

    def shifted_cdf(self, x: Tensor, factor: Any) -> Tensor:
        """``G(x) = P(t' <= x)``, float64, of the shifted draw for shift factor ``factor`` (without noise_range's
        confinement): ``F(s^-1(x))``, or the mixture's CDF in the shifted noise level
        (:func:`~.sampling.mixture_cdf`)."""
        return self._shifted_cdf(x, self._curves(factor, x.device)[0])

    def _shifted_cdf(self, x: Tensor, curves: ShiftCurves) -> Tensor:
        if self.shifted_components is None:
            return self.distribution.cdf(curves.unshift(x))
        return mixture_cdf(x.to(torch.float64), self.shifted_components, curves)

    def _curves(self, factor: Any, device: Any) -> Tuple[ShiftCurves, Tensor]:
        """The inverse shift for ``factor`` and the shift and its inverse in complements, as functions of t
        (float64), and the factor as a tensor."""
        a = torch.as_tensor(factor, dtype=torch.float64, device=device)
        family, sigma = self.shift.shift_family, self.shift.shift_sigma
        return ShiftCurves(lambda y: inverse_shift(y, a, family, sigma),
                           lambda t: shift_complement(t, a, family, sigma),
                           lambda c: inverse_shift_complement(c, a, family, sigma)), a

    def band_uniforms(self, u: Tensor, factor: Any) -> Tensor:
        """``u`` mapped into ``noise_range``'s band of the uniforms for shift factor ``factor`` (``u`` itself
        without ``noise_range``): what :meth:`base_draw` draws through. The band's width is the share of the
        unconfined shifted draw that falls within ``noise_range`` (what inspect shows per bucket)."""
        return u if self.noise_range is None else self._noise_band(u, *self._curves(factor, u.device))

    def _noise_band(self, u: Tensor, curves: ShiftCurves, a: Tensor) -> Tensor:
        assert self.noise_range is not None
        low, high = (self._shifted_cdf(torch.full_like(a, y), curves) for y in self.noise_range)  # broadcast against u
        return low + (high - low) * u.to(torch.float64)

    def in_noise_range(self, shifted: Tensor) -> Tensor:
        """Shifted timesteps in [0, N] kept within ``noise_range`` x N: the band of :meth:`timesteps` puts them there
        up to the shift's float rounding, which this takes back (each end rounded inwards in ``shifted``'s dtype)."""
        if self.noise_range is None:
            return shifted
        n = self.num_timesteps
        low, high = (_inward(y * n, shifted.dtype, up) for y, up in zip(self.noise_range, (True, False)))
        return shifted.clamp(low, high)

    def training_timesteps(self, u: Tensor, meta: Any, latent_frames: Optional[int] = None,
                           latent_hw: Optional[Tuple[int, int]] = None) -> Tensor:
        """1.x's shifted training timesteps in [0, N] from uniforms: the base draw (within ``noise_range``'s band
        for each sample's own factor, from ``meta``), then the shift."""
        factor = None
        if self.factor_dependent:
            factor = self.shift.shift_factor(meta, latent_frames, torch.float32, u.device, latent_hw,
                                             u.shape[0] if u.dim() == 1 else None)
        t = self.shift(self.timesteps(u, factor), meta, self.num_timesteps, latent_frames=latent_frames,
                       latent_hw=latent_hw)
        return self.in_noise_range(t)

    def by_rule(self, meta: Any, batch: int, device: Any,
                shifted: Callable[["Recipe", Dict[str, Tensor]], Tensor]) -> Tensor:
        """Per sample, ``shifted(recipe, meta)`` under the recipe of the rule it falls under, or this one's; no host
        sync. Each recipe sees only its own samples' meta (the others as a stand-in), so its guard judges only its
        own samples."""
        height, width, num_frames = (x.expand(batch) for x in read_meta(meta, torch.float64, device, batch))
        full = {"height": height, "width": width, "num_frames": num_frames}
        masks = [rule.mask(num_frames, height, width) for rule in self.rules]
        owners: List[Tuple[Optional[BucketRule], Recipe, Tensor]] = [(None, self, ~torch.stack(masks).any(dim=0))]
        owners += list(zip(self.rules, self.children, masks))
        # The guard's error path looks at the values anyway (one host sync): there, recipes with no sample in the
        # batch are skipped and the others' samples stand in as copies of an own one, so no guard ever judges a
        # sample that is not its own. Elsewhere a 512 x 512 image stands in, which every recipe shifts validly.
        judged = self.shift.on_degenerate == "error"
        out: Optional[Tensor] = None
        for rule, recipe, mask in owners:
            if judged and not bool(mask.any()):
                continue
            try:
                value = shifted(recipe, outside(mask, full, int(mask.nonzero()[0]) if judged else None))
            except ValueError as err:
                if rule is None:
                    raise
                raise type(err)(f"{rule}: {err}") from None
            out = value if out is None else torch.where(mask, value.to(out.dtype), out)
        assert out is not None  # every sample is someone's
        return out


def _check_noise_range(noise_range: Tuple[float, float], values: Mapping[str, Any],
                       distribution: TimestepDistribution) -> None:
    """Refuse what noise_range cannot be combined with (the draw it confines is the base draw, shifted as usual)."""
    given = f"noise_range={noise_range!r}"
    if not values["use_timestep_transform"]:
        raise SettingError(f"{given} is a range of the shifted noise level, and use_timestep_transform=False shifts "
                           f"nothing: there it is the unshifted range, so use t_range={noise_range!r}")
    if values["t_range"] is not None:
        raise SettingError(f"{given} with t_range={values['t_range']!r}: both confine the draw (one after the shift, "
                           "one before); give one")
    if values["uniform_over_threshold"] is not None:
        raise SettingError(f"{given} with uniform_over_threshold={values['uniform_over_threshold']!r}: Open-Sora "
                           "1.3's redraw replaces shifted timesteps above the threshold, which would leave the range; "
                           "remove one")
    if values["use_discrete_timesteps"]:
        raise SettingError(f"{given} with use_discrete_timesteps=True: the integer timestep is floored before the "
                           "shift, which moves draws below the range's lower end; remove one")
    if distribution.sample_method == "fixed":
        raise SettingError(f"{given} with sample_method='fixed': a list of timesteps (fixed_order 'random' or "
                           "'cycle') has no draw to confine; list the timesteps inside the range instead")
    if noise_range[1] - noise_range[0] < 5e-3:
        raise SettingError(f"{given} collapses: every timestep would fall within {noise_range[1] - noise_range[0]:.2g}"
                           " (x N), under the 5/1000 a distribution must spread over. Widen the range")


def _check_shifted_components(values: Mapping[str, Any], components: Tuple[Component, ...]) -> None:
    """Refuse what mixture components that the shift does not move alike cannot be combined with."""
    given = "components with shift=False or stretch"
    if not values["use_timestep_transform"]:
        raise SettingError(f"{given} only apply with use_timestep_transform=True (got False): with no shift, give "
                           "the components without them")
    if not any(c.shift for c in components):  # each drawn where it lands: the shift's settings would change nothing
        raise SettingError(f"components={describe(list(components))} all have shift=False: the shift moves none of "
                           "the draws, so its settings would not apply. Leave shift=True on a component the shift "
                           "should move, or turn the shift off (use_timestep_transform=False) and give the "
                           "components without shift=False")
    if values["t_range"] is not None:
        raise SettingError(f"{given} and t_range={values['t_range']!r}: the mixture is then drawn in the shifted "
                           "noise level, where an unshifted range of the whole draw means nothing; give each "
                           "component its own t_range, or confine the shifted draw with noise_range")
    if values["uniform_over_threshold"] is not None:
        raise SettingError(f"{given} and uniform_over_threshold={values['uniform_over_threshold']!r}: Open-Sora "
                           "1.3's redraw would replace the mixture's shifted draws above the threshold; remove one")


@functools.lru_cache(maxsize=64)
def _inward(value: float, dtype: torch.dtype, up: bool) -> float:
    """``value`` in ``dtype``, rounded up (``up``) or down where the dtype cannot hold it: on the host, once per
    (value, dtype), so a training step's clamp costs no device-to-host copy. The result is exact in ``dtype``."""
    out = torch.tensor(value, dtype=torch.float64).to(dtype)
    if (float(out) < value) if up else (float(out) > value):
        out = torch.nextafter(out, torch.tensor(math.inf if up else -math.inf, dtype=dtype))
    return float(out)
