"""One view per Open-Sora generation: given the chosen settings, what they do with each (resolution, frames) bucket.

:class:`Opensora1View` (1.2 and 1.3: one row per ``--mode``, under the bucket's ``bucket_settings`` rule) and
:class:`Opensora2View` (2.0: stock 2.0's rule, then the user's settings) both yield :class:`Bucket` records: the
latent, the tokens, T_eff, the factor in training and at inference, the verdict and the quantiles of the shifted
timestep. ``inspect`` and ``plot`` are written once over a view. Every verdict is the guard's
(:func:`opensora_timeshift_patch.guard.judge`): the views only choose which shift to ask it about; :func:`opensora2_alpha`
is the form ``audit`` reads on 2.0.
"""

from __future__ import annotations

import argparse
import math
import warnings
from typing import Any, Dict, Iterator, List, Mapping, NamedTuple, Optional, Sequence, Tuple

import numpy as np
import torch

from .. import guard
from ..core import Recipe
from ..buckets import (OPENSORA2_ASPECT_RATIOS, Opensora2Geometry, opensora2_base_size, opensora2_pixels,
                       opensora2_sizes)
from ..density import density_quantile, midpoint_uniforms, shifted_quantiles
from ..opensora2 import Opensora2Timesteps
from ..recipes import ModelRecipe, expand
from ..settings import POLICIES, SETTINGS, names_in
from ..shift import META_KEYS, SHIFT_SETTINGS, TimestepShift
from ..weighting import LossWeighting, effective_emphasis
from .common import UsageError, build_timeshift, rule_text, short
from .options import VAES, chosen_settings, frames_of, given_options, named_resolutions, resolutions_of

QUANTILES = (0.05, 0.5, 0.95)
# The effective emphasis is computed, not sampled: the shifted inverse CDF at midpoint_uniforms(), histogrammed on
# EMPHASIS_EDGES (inspect's median: to 0.1 on the 0..1000 scale) or a plot's own edges.
EMPHASIS_EDGES = np.linspace(0.0, 1.0, 10_001)

# What inspect and plot show on Open-Sora 1.x: the shift (each --mode, guarded as on_degenerate='error' guards it,
# with stock's numbers beside), the timestep distribution and the loss weighting. The stream settings are taken too
# (they decide which sample draws which t, not the distribution shown; fixed_order='cycle' needs timestep_rng=
# 'per_sample'). Other scheduler settings would be accepted and silently change nothing shown, so --set refuses them.
SHOWN_ON_1X = set(names_in("recipe", "distribution", "shift", "loss", "stream", "rules")) - {"shift_mode"}
NOT_SHOWN_ON_1X = {
    "shift_mode": "use --mode (every mode given is shown)",
    "on_degenerate": "inspect and plot show stock's numbers and mark what on_degenerate='error' refuses",
    "use_timestep_transform": "inspect and plot show the shift",
}
BAND_LINE = ("noise_range: the quantiles and curves are of the draw confined to it, converted through each bucket's "
             "own factor as training converts it; share: the part of the unconfined shifted draw within it")


def recipe_of(scheduler: Any) -> Recipe:
    """The Recipe of a scheduler, a 2.0 drop-in or a rule's own Recipe."""
    return scheduler if isinstance(scheduler, Recipe) else scheduler.recipe


def drawn(scheduler: Any, u: torch.Tensor, factor: Optional[float]) -> torch.Tensor:
    """The base timesteps in [0, 1] that uniforms ``u`` draw for a bucket of shift factor ``factor``: the Recipe's
    own :meth:`~opensora_timeshift_patch.core.Recipe.base_draw`, as training draws them. A factor of 0 (every shifted
    t at 0) or none (no shift) has nothing to convert through: the distribution alone."""
    recipe = recipe_of(scheduler)
    if factor is not None and factor > 0:
        return recipe.base_draw(u, factor)
    return recipe.distribution(u)


def band_share(scheduler: Any, factor: Optional[float]) -> Optional[float]:
    """The share of a bucket's unconfined shifted draw that falls within noise_range (None without noise_range, or
    without a factor to convert through)."""
    recipe = recipe_of(scheduler)
    if recipe.noise_range is None or factor is None or not factor > 0:
        return None
    low, high = recipe.band_uniforms(torch.tensor([0.0, 1.0], dtype=torch.float64), factor).tolist()
    return high - low


class Bucket(NamedTuple):
    """What one setting (a 1.x --mode, a 2.0 rule) does with one (resolution, frames) bucket."""

    label: str  # the --mode (1.x) or the rule's label (2.0: stock, settings, settings:MODE)
    rule: Optional[int]  # 1.x: the bucket_settings rule the bucket trains under (None: the scheduler's own)
    height: int
    width: int
    frames: int
    t_eff: float  # the temporal size the shift uses (stock's, before any clamp)
    factor: Optional[float]  # the training shift factor (1.x: stock's; None: no shift, or refused on 2.0)
    kind: str  # the guard's "ok", "collapsed", "clamped", "refused"; "no shift"; "extreme" (2.0: the guard's ok with
    # a note, an alpha outside [0.01, 100] that on_degenerate='ignore' keeps)
    message: Optional[str]  # the guard's, where it refuses
    quantiles: Optional[Tuple[float, float, float]]  # the shifted training t at QUANTILES (None: refused)
    latent: Optional[Tuple[int, int, int]] = None  # 2.0: the latent T x h x w
    tokens: Optional[int] = None  # 2.0: tokens as training counts them
    inference_tokens: Optional[int] = None  # 2.0: tokens as inference counts them
    inference_factor: Optional[float] = None  # 2.0: the inference alpha
    emphasis_median: Optional[float] = None  # 1.x with a loss weighting: the effective emphasis's median
    inference_size: Optional[Tuple[int, int]] = None  # 2.0: the (H, W) inference samples the bucket at
    share: Optional[float] = None  # with noise_range: the part of the unconfined shifted draw within it


class Curve(NamedTuple):
    """One line of a plot: the transform on a grid of t, the shifted draws, and whether every t collapses to 0."""

    label: str
    transform: Optional[torch.Tensor]  # None: refused by the guard (named in the legend, nothing drawn)
    draws: Optional[torch.Tensor]
    collapsed: bool


def bucket_children(scheduler: Any) -> Tuple[Any, ...]:
    """The recipe of each of a scheduler's bucket_settings rules, in the rules' order (each has the rule's
    ``distribution``, ``shift`` and ``weighting``)."""
    return tuple(scheduler.recipe.children)


def unguarded(shift: TimestepShift) -> TimestepShift:
    """``shift`` under on_degenerate='ignore': stock's numbers, a collapse included."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        given = {k: v for k, v in shift.settings.items() if v != SETTINGS[k].default}  # as the shift was given
        return TimestepShift(**{**given, **shift.policy_params, "on_degenerate": "ignore"})


def view_of(args: argparse.Namespace) -> Any:
    """The view of an inspect or plot command line: 1.x's or 2.0's, from --opensora-version."""
    if args.opensora_version == "2.0":
        return Opensora2View.from_args(args)
    return Opensora1View.from_args(args)


# --- Open-Sora 1.x ------------------------------------------------------------------------------------------

class Mode1(NamedTuple):
    """One Open-Sora 1.x --mode under the chosen settings."""

    mode: str
    scheduler: Any  # the RFlowTimeShift training would build (a rule's Recipe for a child): its distribution,
    # weighting, and guarded shift
    stock: TimestepShift  # the same shift under on_degenerate='ignore': stock's numbers, a collapse included
    children: Tuple["Mode1", ...] = ()  # per bucket_settings rule, the mode under that rule's settings
    rule: Optional[int] = None  # for a child, the index of its rule

    @property
    def label(self) -> str:
        """The mode's name in a plot legend, with the rule whose settings it is under."""
        return self.mode + ("" if self.rule is None else f" under bucket_settings[{self.rule}]")

    def for_bucket(self, hw: Tuple[int, int], frames: int) -> "Mode1":
        """The mode under the settings a clip of this size gets: its bucket_settings rule's, else the scheduler's."""
        index, _ = self.scheduler.recipe.for_clip(frames, *hw)
        return self if index is None else self.children[index]

    def t_eff(self, frames: int) -> float:
        return self.stock.temporal_size(torch.tensor([float(frames)], dtype=torch.float64)).item()


def with_rules(mode: str, scheduler: Any, stock: TimestepShift) -> Mode1:
    """The Mode1 of a scheduler, with one child per bucket_settings rule (the rule's own scheduler, built by the
    scheduler itself from the rule's merged settings)."""
    children = tuple(Mode1(mode, child, unguarded(child.shift), (), rule.index)
                     for rule, child in zip(scheduler.rules, bucket_children(scheduler)))
    return Mode1(mode, scheduler, stock, children)


def _meta(hw: Tuple[int, int], frames: int, n: int = 1) -> Dict[str, torch.Tensor]:
    return {k: torch.full((n,), float(v), dtype=torch.float64) for k, v in zip(META_KEYS, (*hw, frames))}


def _other_modes_param(key: str, mode: str, modes: Sequence[str]) -> bool:
    """Whether ``key`` is a parameter of other selected modes' policies, not of ``mode``'s (then ``mode`` skips it;
    a parameter no selected mode takes goes to all, to be refused)."""
    owners = POLICIES.owners(key)
    return bool(owners) and mode not in owners and any(m in owners for m in modes)


def opensora1_modes(args: argparse.Namespace) -> Tuple[List[Mode1], Dict[str, Any]]:
    """The scheduler for each --mode, built from the chosen settings as training builds it (standalone backend), so
    it accepts and refuses what training would, and the chosen settings. A policy's parameter goes to the selected
    modes that take it. A recipe that sets shift_mode is shown under that mode alone unless --mode is given."""
    settings = chosen_settings(args, v2=False)
    for key, value in settings.items():
        if key in NOT_SHOWN_ON_1X or (key in SETTINGS and key not in SHOWN_ON_1X):
            why = NOT_SHOWN_ON_1X.get(key, "inspect and plot show the shift, the timestep distribution and the loss "
                                           "weighting, which it does not change (config --set takes it)")
            raise UsageError(f"--set {key}={short(value)}: not for inspect and plot on Open-Sora 1.x: {why}")
    modes = args.mode
    try:
        own_mode = expand(settings).get("shift_mode") if "recipe" in settings else None
    except ValueError as err:  # an unknown recipe
        raise UsageError(str(err)) from err
    if own_mode is not None and "mode" not in given_options(args):  # the recipe's policy, unless --mode asks
        modes = [own_mode]
    out = []
    for mode in modes:
        mine = {k: v for k, v in settings.items() if not _other_modes_param(k, mode, modes)}
        mine["shift_mode"] = mode
        try:
            # stock's numbers under the recipe's shift too (the scheduler expands it in its Recipe)
            shift = {k: v for k, v in expand(mine).items() if k in SHIFT_SETTINGS or POLICIES.owners(k)}
            scheduler = build_timeshift(mine)
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                stock = TimestepShift(**{**shift, "on_degenerate": "ignore"})
        except (ValueError, TypeError) as err:
            raise UsageError(str(err)) from err
        out.append(with_rules(mode, scheduler, stock))
    return out, settings


def recipe_lines(recipe: Optional[ModelRecipe]) -> List[str]:
    """The selected named recipe's source, for a view's header (none when no recipe is selected)."""
    if recipe is None:
        return []
    return [f"recipe {recipe.name} ({recipe.model}): {recipe.source} ({recipe.confidence_text}); training: "
            f"{recipe.training_note}"]


def only_opensora2(args: argparse.Namespace) -> None:
    """Refuse the 2.0-only options under Open-Sora 1.x, where nothing would read them."""
    for option in ("vae",):
        if getattr(args, option, None):
            raise UsageError(f"--{option} applies to --opensora-version 2.0 only, not {args.opensora_version}: remove "
                             "it or pass --opensora-version 2.0")


class Opensora1View:
    """Open-Sora 1.2/1.3 under the chosen settings: per bucket, each --mode (under the bucket's bucket_settings rule)
    with stock's numbers (a collapse included) and the verdict of on_degenerate='error'."""

    generation = "1.x"
    label_header = "mode"
    factor_header = "shift"
    quantile_digits = 1  # the 0..1000 scale
    latent = tokens = False

    def __init__(self, modes: Sequence[Mode1], settings: Dict[str, Any], resolutions: Sequence[Tuple[int, int]],
                 frames: Sequence[int], sample_method: str) -> None:
        self.modes = list(modes)
        self.settings = settings
        self.resolutions = list(resolutions)
        self.frames = list(frames)
        self.sample_method = sample_method
        self.scheduler = self.modes[0].scheduler
        self.rules = self.scheduler.rules
        self.weighted = "loss_weighting" in settings
        self._points: Dict[int, Tuple[Any, torch.Tensor]] = {}

    @classmethod
    def from_args(cls, args: argparse.Namespace) -> "Opensora1View":
        only_opensora2(args)
        modes, settings = opensora1_modes(args)
        return cls(modes, settings, resolutions_of(args, None), frames_of(args, v2=False), args.sample_method)

    @property
    def distribution(self) -> Any:
        return self.scheduler.distribution

    @property
    def weighting(self) -> LossWeighting:
        return self.scheduler.weighting

    @property
    def shift_settings(self) -> Dict[str, Any]:
        return {k: v for k, v in self.settings.items() if k in SHIFT_SETTINGS or POLICIES.owners(k)}

    def buckets(self) -> Iterator[Bucket]:
        for hw in self.resolutions:
            for n in self.frames:
                for mode in self.modes:
                    yield self.bucket(mode.for_bucket(hw, n), hw, n)

    def bucket(self, mode: Mode1, hw: Tuple[int, int], frames: int) -> Bucket:
        """T_eff, stock's shift factor, the quantiles of the shifted t (exact: see
        :func:`~opensora_timeshift_patch.density.shifted_quantiles`) and the verdict of ``mode`` (already under the
        bucket's rule) for one bucket; with a loss weighting, the median of the effective emphasis.

        The numbers are stock's (the shift under on_degenerate='ignore'); the status is the guard's on them where
        stock collapses every t to 0, else the guard's under the mode's on_degenerate ('error'). Where even stock
        is refused (a factor that is not finite), there are no numbers.
        """
        stock = self.verdict(mode.stock, hw, frames)
        guarded = self.verdict(mode.scheduler.shift, hw, frames)
        kind = stock.kind if stock.kind in ("collapsed", "refused") else guarded.kind
        message = next((v.message for v in (guarded, stock) if v.kind == "refused"), None)
        if stock.kind == "refused":
            return Bucket(mode.mode, mode.rule, hw[0], hw[1], frames, stock.t_eff, None, kind, message, None)
        batch = _meta(hw, frames, len(QUANTILES))
        factor = self.factor(mode, hw, frames)
        shifted = shifted_quantiles(lambda q: drawn(mode.scheduler, q, factor),
                                    lambda t: mode.stock(t * 1000, batch, num_timesteps=1000), QUANTILES)
        median = None
        if self.weighted:
            try:
                density = self.emphasis(mode, factor, EMPHASIS_EDGES)
                median = 1000 * density_quantile(EMPHASIS_EDGES, density, 0.5)
            except ValueError:  # every weight 0 (a collapse to t = 0 under min_snr): no budget to share out
                median = None
        return Bucket(mode.mode, mode.rule, hw[0], hw[1], frames, stock.t_eff, factor, kind, message,
                      tuple(shifted.tolist()), emphasis_median=median, share=band_share(mode.scheduler, factor))

    @staticmethod
    def verdict(shift: TimestepShift, hw: Tuple[int, int], frames: int) -> guard.Verdict:
        """The guard's verdict on ``shift`` for the bucket, in float64 as the numbers shown are computed."""
        return guard.judge(shift, hw[0], hw[1], frames, dtype=np.float64)

    def refused(self, mode: Mode1, hw: Tuple[int, int], frames: int) -> bool:
        """Whether stock's numbers do not exist for the bucket (the guard refuses even on_degenerate='ignore')."""
        return self.verdict(mode.stock, hw, frames).kind == "refused"

    def factor(self, mode: Mode1, hw: Tuple[int, int], frames: int) -> float:
        """The shift factor stock's numbers use for a bucket under a mode (0 for a collapse)."""
        _, ratio = mode.stock(torch.tensor([0.5], dtype=torch.float64), _meta(hw, frames), ret_ratio=True)
        return ratio[0].item()

    def base_points(self, distribution: Any) -> torch.Tensor:
        """The base timesteps standing for a distribution in the effective emphasis (computed once each)."""
        if id(distribution) not in self._points:  # the distribution is kept too, so its id is not reused
            self._points[id(distribution)] = (distribution, distribution(midpoint_uniforms()))
        return self._points[id(distribution)][1]

    def emphasis(self, mode: Mode1, factor: float, edges: Any, weighting: Optional[LossWeighting] = None
                 ) -> np.ndarray:
        """The effective emphasis of a bucket under a mode: its distribution's base points shifted by the bucket's
        stock ``factor`` (0 for a collapse), then :func:`~opensora_timeshift_patch.weighting.effective_emphasis` with
        the mode's weighting (or ``weighting``: 'none' gives the sampling density). Raises ValueError when every
        weight is 0."""
        if not recipe_of(mode.scheduler).factor_dependent:
            base_t = self.base_points(mode.scheduler.distribution)
        else:  # the draw depends on the factor: nothing to share between buckets
            base_t = drawn(mode.scheduler, midpoint_uniforms(), factor)
        shifted = mode.stock.curve(base_t, torch.as_tensor(factor, dtype=torch.float64)).clamp(0, 1)
        return effective_emphasis(shifted, mode.scheduler.weighting if weighting is None else weighting, edges)

    def bucket_modes(self, hw: Tuple[int, int], frames: int) -> List[Mode1]:
        return [m.for_bucket(hw, frames) for m in self.modes]

    def curves(self, hw: Tuple[int, int], frames: int, t_grid: torch.Tensor, uniforms: torch.Tensor
               ) -> Iterator[Curve]:
        """Per mode (under the bucket's rule, if any), shifted as stock does: the transform on ``t_grid`` and
        ``uniforms`` through the mode's distribution (the chosen one, or the rule's), shifted."""
        for mode in self.bucket_modes(hw, frames):
            if self.refused(mode, hw, frames):
                yield Curve(f"{mode.label}: refused by the guard", None, None, False)
                continue
            draws = drawn(mode.scheduler, uniforms, self.factor(mode, hw, frames))
            t_eff = mode.t_eff(frames)
            label = f"{mode.label} (T_eff {t_eff:.3g})" + (": t = 0, degenerate" if t_eff <= 0 else "")
            yield Curve(label, mode.stock(t_grid, _meta(hw, frames, len(t_grid))),
                        mode.stock(draws, _meta(hw, frames, len(draws))), t_eff <= 0)

    def title(self, hw: Tuple[int, int], frames: int) -> str:
        return f"{hw[0]}x{hw[1]}, {frames} frames"

    @property
    def method(self) -> str:
        # the distribution drawn, not --sample-method's: a --set recipe=... replaces that option's default
        return self.distribution.sample_method + (" or a rule's" if self.rules else "")

    def header(self) -> List[str]:
        lines = recipe_lines(self.scheduler.recipe.recipe)
        lines.append(f"t ~ {self.distribution!r}, shifted, on the 0..1000 scale (1000 = pure noise)")
        if self.shift_settings:
            lines.append("shift settings: " + ", ".join(f"{k}={v!r}" for k, v in self.shift_settings.items()))
        if self.rules:
            lines.append("bucket_settings: a row takes the settings of the rule it falls under (column rule; '-': "
                         "the settings above):")
            for r, child in zip(self.rules, self.modes[0].children):
                d = child.scheduler.distribution
                lines.append(f"  {rule_text(r)}" + ("" if repr(d) == repr(self.distribution) else f"; t ~ {d!r}"))
        if self.banded:
            lines.append(BAND_LINE)
        if self.weighted:
            lines.append(f"loss weight {self.weighting!r}; w_median: the shifted t below which half the gradient "
                         "budget lies (the density of the shifted t times w(t), normalised)")
        return lines

    def notes(self, buckets: Sequence[Bucket]) -> List[str]:
        return []

    def json_row(self, b: Bucket) -> Dict[str, Any]:
        p5, median, p95 = b.quantiles if b.quantiles is not None else (None, None, None)
        row = dict(mode=b.label, rule=b.rule, height=b.height, width=b.width, frames=b.frames, t_eff=b.t_eff,
                   shift_factor=b.factor, p5=p5, median=median, p95=p95, degenerate=b.kind != "ok",
                   message=b.message, status=b.kind)
        if self.weighted:
            row["emphasis_median"] = b.emphasis_median
        if self.banded:
            row["noise_range_share"] = b.share
        return row

    @property
    def banded(self) -> bool:
        """Whether noise_range confines some bucket's draw (the scheduler's own settings or a rule's)."""
        mode = self.modes[0]
        return any(recipe_of(m.scheduler).noise_range is not None for m in (mode, *mode.children))

    def json_document(self, buckets: Sequence[Bucket]) -> Dict[str, Any]:
        return dict(sample_method=self.distribution.sample_method, distribution=repr(self.distribution),
                    loss_weighting=repr(self.weighting) if self.weighted else None,
                    shift_settings=self.shift_settings,
                    bucket_settings=[dict(rule=r.index, applies=str(r), settings=dict(r.settings),
                                          distribution=repr(child.scheduler.distribution))
                                     for r, child in zip(self.rules, self.modes[0].children)],
                    num_timesteps=1000, rows=[self.json_row(b) for b in buckets])


# --- Open-Sora 2.0 ------------------------------------------------------------------------------------------

class Rule(NamedTuple):
    """A row label and the 2.0 timesteps it stands for: stock 2.0's rule, or the user's settings."""

    label: str
    timesteps: Opensora2Timesteps


def build_opensora2(settings: Dict[str, Any], what: str = "") -> Opensora2Timesteps:
    """``Opensora2Timesteps(**settings)``, its refusal (which names the setting) as bad input."""
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            return Opensora2Timesteps(**settings)
    except (ValueError, TypeError) as err:
        raise UsageError(f"{what}{err}") from err


def stock_opensora2() -> Opensora2Timesteps:
    """Stock 2.0's rule, which has no guard: a factor of 0 or beyond [0.01, 100] is shown, not refused."""
    return build_opensora2(dict(on_degenerate="ignore"))


def opensora2_rules(args: argparse.Namespace) -> List[Rule]:
    """Stock 2.0's rule, then the user's settings (one rule per --mode when --mode is given)."""
    given = given_options(args)
    settings = chosen_settings(args, v2=True)
    rules = [Rule("stock", stock_opensora2())]
    for mode in (args.mode if "mode" in given else [None]):
        chosen = dict(settings) if mode is None else {**settings, "shift_mode": mode}
        rules.append(Rule("settings" if mode is None else f"settings:{mode}", build_opensora2(chosen)))
    return rules


class Alpha(NamedTuple):
    """What a 2.0 rule does with one bucket: its training and inference alpha (None: refused or no shift)."""

    latent: Tuple[int, int, int]
    tokens: int
    infer_tokens: int
    alpha: Optional[float]
    infer_alpha: Optional[float]
    kind: str  # the guard's ("ok", "collapsed", "clamped", "refused"), "no shift", or "extreme" (a noted ok)
    message: Optional[str]  # the guard's, where it refuses
    t_eff: float = math.nan


def opensora2_alpha(ts: Opensora2Timesteps, geometry: Opensora2Geometry, height: int, width: int, frames: int,
                    inference_hw: Optional[Tuple[int, int]] = None) -> Alpha:
    """The alpha a 2.0 rule gives a bucket in training and at inference, as the guard judges them (in float64, as
    2.0 computes alpha). ``inference_hw``: the size inference samples the bucket at (default: the training size).

    "extreme" is the guard's ok with a note: a factor outside [0.01, 100] that on_degenerate='ignore' keeps.
    """
    latent = geometry.latent(frames, height, width)
    infer_latent = latent if inference_hw is None else geometry.latent(frames, *inference_hw)
    tokens, infer = ts.training_tokens(latent[1:]), ts.inference_tokens(infer_latent[1:], geometry.patch_size)
    if not ts.use_timestep_transform:
        return Alpha(latent, tokens, infer, None, None, "no shift", None)
    train, at_inference = (guard.judge(ts.shift, height, width, frames, latent[0], count,
                                       _where(latent[0], count, frames, height, width), dtype=np.float64)
                           for count in (tokens, infer))
    if train.kind == "refused" or at_inference.kind == "refused":
        refusal = train if train.kind == "refused" else at_inference
        return Alpha(latent, tokens, infer, None, None, "refused", refusal.message, train.t_eff)
    kind = "extreme" if train.kind == "ok" and train.message else train.kind
    return Alpha(latent, tokens, infer, train.factor, at_inference.factor, kind, None, train.t_eff)


def _where(latent_frames: int, tokens: int, frames: int, height: int, width: int) -> str:
    """A 2.0 bucket in the guard's message, in the words of Opensora2Timesteps.factor."""
    return f"a latent of {latent_frames} frames and {tokens} tokens, clip of {frames} frames at {height}x{width}"


def opensora2_inference_size(name: str, token_pixels: int,
                             size: Optional[Tuple[int, int]] = None) -> Tuple[int, int]:
    """The (H, W) 2.0's inference samples a resolution name at, for the aspect ratio of ``size``, one of the name's
    training sizes (default: the size the name is shown at,
    :func:`~opensora_timeshift_patch.buckets.opensora2_base_size`).

    2.0's inference sizes by ``get_image_size(resolution, aspect_ratio, training=False)`` (opensora/datasets/
    aspect.py): the same table as training's buckets without their one step of D towards the pixel count, and with
    vertical ratios the transpose of the horizontal ones; then each side rounded up to a multiple of 16.
    """
    base = opensora2_base_size(name, token_pixels) if size is None else size
    ratio = next((r for r, s in opensora2_sizes(name, token_pixels).items() if s == base), None)
    if ratio is None:  # not one of the name's training sizes: nothing to resize by
        return base
    pixels, d = opensora2_pixels(name), token_pixels
    sizes: Dict[str, Tuple[int, int]] = {}
    vertical: Dict[str, Tuple[int, int]] = {}
    for r in OPENSORA2_ASPECT_RATIOS:
        rw, rh = map(float, r.split(":"))
        w = int(math.sqrt(pixels * (rw / rh)) // d) * d
        h = int((pixels / w) // d) * d if w > 0 else 0
        sizes[r] = (h, w)
        vertical[":".join(reversed(r.split(":")))] = (w, h)
    sizes.update(vertical)
    h, w = sizes.get(ratio, base)
    if h <= 0 or w <= 0:
        return base
    return -(-h // 16) * 16, -(-w // 16) * 16


def alpha_mismatch(b: Bucket, count: int, own_patch: Optional[int], model_patch: int) -> str:
    """The one sentence, for inspect and audit, on 2.0 buckets whose training alpha differs from their inference
    alpha (``b`` the first of ``count``): inference samples a name at another size than training buckets it at
    (2.0's own sizes), or counts tokens with another patch size (``patch_size`` fixes that)."""
    train_patch = 2 if own_patch is None else own_patch
    infer_patch = model_patch if own_patch is None else own_patch
    resized = b.inference_size is not None and b.inference_size != (b.height, b.width)
    sampled = (f"inference samples at {b.inference_size[0]}x{b.inference_size[1]} (2.0's get_image_size with "
               "training=False) and counts " if resized else "inference counts ")
    fix = []
    if train_patch != infer_patch:
        fix.append(f"scheduler = dict(type='rflow-timeshift', patch_size={model_patch}) counts both with the "
                   "model's patch_size")
    if resized:
        fix.append(("both" if fix else "Both") + " sizes are 2.0's own (its training buckets', its inference's): no "
                   "setting here changes them")
    return (f"training counts (h w) // {train_patch}**2 = {b.tokens} tokens at {b.height}x{b.width} where {sampled}"
            f"(h w) // {infer_patch}**2 = {b.inference_tokens}, so {count} bucket(s) train at another alpha than they "
            f"sample at ({b.height}x{b.width} x {b.frames} frames: {b.factor:.3f} in training, "
            f"{b.inference_factor:.3f} at inference). " + "; ".join(fix))


def quantiles_of(ts: Opensora2Timesteps, alpha: Optional[float]) -> List[float]:
    """The 5th, 50th and 95th percentiles of a rule's training t in [0, 1], shifted by alpha (exact: the shift is
    increasing, so it maps quantiles to quantiles; with noise_range, of the draw confined to it for alpha)."""
    shift = (lambda t: t) if alpha is None else (lambda t: ts.shift.curve(t, alpha))
    return shifted_quantiles(lambda q: drawn(ts, q, alpha), shift, QUANTILES).tolist()


class Opensora2View:
    """Open-Sora 2.0 under stock 2.0's rule and under the chosen settings: per bucket, the latent, the tokens and
    alpha in training and at inference, judged as the guard judges them."""

    generation = "2.0"
    label_header = "rule"
    factor_header = "alpha"
    quantile_digits = 3  # t in [0, 1]
    latent = tokens = True
    weighted = False

    def __init__(self, rules: Sequence[Rule], geometry: Opensora2Geometry, vae: str,
                 resolutions: Mapping[Tuple[int, int], Optional[str]], frames: Sequence[int]) -> None:
        """``resolutions``: {(H, W): the 2.0 name it stands for, or None for a size given as HxW}."""
        self.rules = list(rules)
        self.geometry = geometry
        self.vae = vae
        self.resolutions = list(resolutions)
        # A name is sampled at its training=False size; a size given as HxW at that size, sides rounded up to 16
        # (which changes no latent side: D is 16 or 32).
        self.inference_sizes = {hw: hw if name is None else opensora2_inference_size(name, geometry.token_pixels)
                                for hw, name in resolutions.items()}
        self.frames = list(frames)

    @classmethod
    def from_args(cls, args: argparse.Namespace) -> "Opensora2View":
        vae = args.vae or "hunyuan"
        geometry = VAES[vae]
        rules = opensora2_rules(args)
        return cls(rules, geometry, vae, named_resolutions(args, geometry), frames_of(args, v2=True))

    def buckets(self) -> Iterator[Bucket]:
        for hw in self.resolutions:
            for n in self.frames:
                for rule in self.rules:
                    yield self.bucket(rule, hw, n)

    def bucket(self, rule: Rule, hw: Tuple[int, int], frames: int) -> Bucket:
        a = opensora2_alpha(rule.timesteps, self.geometry, hw[0], hw[1], frames, self.inference_sizes[hw])
        quantiles = None if a.kind == "refused" else tuple(quantiles_of(rule.timesteps, a.alpha))
        return Bucket(rule.label, None, hw[0], hw[1], frames, a.t_eff, a.alpha, a.kind, a.message, quantiles,
                      a.latent, a.tokens, a.infer_tokens, a.infer_alpha, inference_size=self.inference_sizes[hw],
                      share=None if a.kind == "refused" else band_share(rule.timesteps, a.alpha))

    @property
    def banded(self) -> bool:
        """Whether noise_range confines some rule's draw."""
        return any(r.timesteps.recipe.noise_range is not None for r in self.rules)

    def curves(self, hw: Tuple[int, int], frames: int, t_grid: torch.Tensor, uniforms: torch.Tensor
               ) -> Iterator[Curve]:
        """Per 2.0 rule: the transform on ``t_grid`` and ``uniforms`` through the rule's distribution, shifted by
        its training alpha; no curve where the guard refuses."""
        for rule in self.rules:
            ts = rule.timesteps
            a = opensora2_alpha(ts, self.geometry, hw[0], hw[1], frames, self.inference_sizes[hw])
            if a.kind == "refused":
                yield Curve(f"{rule.label}: refused by the guard", None, None, False)
                continue
            draws = drawn(ts, uniforms, a.alpha)
            if a.alpha is None:
                yield Curve(f"{rule.label} (no shift)", t_grid, draws, False)
                continue
            label = f"{rule.label} ({a.tokens} tokens, alpha {a.alpha:.3g})" + (
                ": t = 0, degenerate" if a.kind == "collapsed" else "")
            yield Curve(label, ts.shift.curve(t_grid, a.alpha), ts.shift.curve(draws, a.alpha), a.alpha == 0)

    def title(self, hw: Tuple[int, int], frames: int) -> str:
        t, h, w = self.geometry.latent(frames, *hw)
        return f"{hw[0]}x{hw[1]}, {frames} frames (Open-Sora 2.0, latent {t}x{h}x{w}, {self.vae} VAE)"

    method = "per rule"

    def header(self) -> List[str]:
        g = self.geometry
        lines = [f"Open-Sora 2.0: {g.describe()}; latent T x h x w, h = {g.patch_size} * ceil(H / {g.token_pixels})",
                 "stock: t = sigmoid(randn), alpha = lin(tokens; 256 -> 1, 4096 -> 3) * sqrt(T), tokens (h w) // 4 in "
                 f"training and (h w) // {g.patch_size ** 2} at inference, no guard"]
        lines += [f"{r.label}: {r.timesteps!r}" for r in self.rules[1:]]
        for r in self.rules[1:]:
            lines += recipe_lines(r.timesteps.recipe.recipe)
        lines.append("shifted training t in [0, 1] (1 = pure noise), exact quantiles")
        if self.banded:
            lines.append(BAND_LINE)
        return lines

    def notes(self, buckets: Sequence[Bucket]) -> List[str]:
        """Per rule, a note when its training alpha differs from its inference alpha (:func:`alpha_mismatch`)."""
        notes = []
        for rule in self.rules:
            differ = [b for b in buckets if b.label == rule.label and b.factor is not None
                      and b.inference_factor != b.factor]
            if differ:
                notes.append(f"{rule.label}: " + alpha_mismatch(differ[0], len(differ), rule.timesteps.patch_size,
                                                                self.geometry.patch_size))
        return notes

    def json_row(self, b: Bucket) -> Dict[str, Any]:
        p5, median, p95 = b.quantiles if b.quantiles is not None else (None, None, None)
        return dict(rule=b.label, height=b.height, width=b.width, frames=b.frames, latent_frames=b.latent[0],
                    latent_height=b.latent[1], latent_width=b.latent[2], tokens=b.tokens,
                    inference_tokens=b.inference_tokens, alpha=b.factor, inference_alpha=b.inference_factor,
                    p5=p5, median=median, p95=p95, status=b.kind, message=b.message,
                    **(dict(noise_range_share=b.share) if self.banded else {}))

    def json_document(self, buckets: Sequence[Bucket]) -> Dict[str, Any]:
        return dict(opensora_version="2.0", vae=self.vae, geometry=self.geometry._asdict(),
                    rules={r.label: repr(r.timesteps) for r in self.rules}, rows=[self.json_row(b) for b in buckets],
                    notes=self.notes(buckets))
