"""Per-bucket settings: rules giving the samples of some frame counts and resolutions timestep settings of their own.

Open-Sora trains on buckets of (resolution, frame count), and images and videos want different timesteps::

    scheduler = dict(type="rflow-timeshift", shift_mode="latent", bucket_settings=[
        dict(frames=1, sample_method="uniform"),                        # images
        dict(frames=(65, None), temporal_exponent=0.25),                # long clips
        dict(frames=(2, 64), resolution=(921600, None), transform_scale=1.5),
    ])

A rule matches a sample whose pixel frame count lies in ``frames`` (an int, or an inclusive ``(lo, hi)``, ``hi``
None for no bound) and whose ``height * width`` lies in ``resolution`` (pixels, inclusive, likewise); a sample no
rule matches keeps the scheduler's own settings. Rules may not overlap, so which one applies never depends on their
order. A rule's other keys override the distribution and shift settings for its samples; the rest (the stream,
the time scale, the guard mode) are the scheduler's, shared by every sample.
"""

from __future__ import annotations

import numbers
from dataclasses import dataclass
from typing import Any, Dict, Mapping, Optional, Sequence, Tuple

import torch
from torch import Tensor

from .settings import DISTRIBUTIONS, PER_BUCKET, POLICIES, SETTINGS, SettingError, describe

MAX_RULES = 64


@dataclass(frozen=True)
class BucketRule:
    """One rule: inclusive ranges of pixel frame counts and of H * W, and the settings its samples get."""

    index: int
    frames: Tuple[int, Optional[int]]
    resolution: Tuple[float, Optional[float]]
    settings: Mapping[str, Any]

    def __str__(self) -> str:
        def span(lo: Any, hi: Any, unit: str) -> str:
            return f"{unit} {lo:g}" if lo == hi else f"{unit} {lo:g}..{'' if hi is None else f'{hi:g}'}"
        where = [span(*self.frames, "frames")] + ([span(*self.resolution, "H*W")] if self.resolution != (0, None)
                                                  else [])
        return f"bucket_settings[{self.index}] ({', '.join(where)})"

    def contains(self, num_frames: float, hw: float) -> bool:
        """Whether a clip of ``num_frames`` frames and ``hw`` pixels is this rule's (on the host)."""
        return _inside(num_frames, self.frames) and _inside(hw, self.resolution)

    def mask(self, num_frames: Tensor, height: Tensor, width: Tensor) -> Tensor:
        """Per sample, whether it is this rule's: tensor comparisons, no host sync."""
        inside = num_frames >= self.frames[0]
        if self.frames[1] is not None:
            inside = inside & (num_frames <= self.frames[1])
        hw = height * width
        inside = inside & (hw >= self.resolution[0])
        if self.resolution[1] is not None:
            inside = inside & (hw <= self.resolution[1])
        return inside


def _inside(value: float, span: Tuple[Any, Optional[Any]]) -> bool:
    return span[0] <= value and (span[1] is None or value <= span[1])


def _span(rule: int, key: str, value: Any, integral: bool) -> Tuple[Any, Optional[Any]]:
    kind = numbers.Integral if integral else numbers.Real
    what = "a frame count >= 1" if integral else "a pixel count H * W >= 0"
    least = 1 if integral else 0

    def ok(v: Any) -> bool:
        return isinstance(v, kind) and not isinstance(v, bool) and least <= v <= 2 ** 53  # exact in float64

    if ok(value):
        return value, value
    if isinstance(value, (list, tuple)) and len(value) == 2 and ok(value[0]) and (value[1] is None or ok(value[1])):
        if value[1] is None or value[0] <= value[1]:
            return value[0], value[1]
    raise SettingError(f"bucket_settings[{rule}] {key}={describe(value)} is not allowed: use {what}, or an "
                       f"inclusive pair (lo, hi) with lo <= hi (hi None for no upper bound)")


def parse_bucket_settings(value: Any) -> Tuple[BucketRule, ...]:
    """Validate ``bucket_settings`` (a list of dicts) into rules; the overridden values are validated by the
    scheduler, which builds each rule's settings as it builds its own."""
    if not isinstance(value, (list, tuple)) or not 1 <= len(value) <= MAX_RULES:
        raise SettingError(f"bucket_settings={describe(value)} is not allowed: use a list of 1 to {MAX_RULES} dicts "
                           "such as dict(frames=(lo, hi), resolution=(lo, hi), **settings)")
    rules = []
    for i, entry in enumerate(value):
        if not isinstance(entry, Mapping):
            raise SettingError(f"bucket_settings[{i}]={describe(entry)} is not allowed: each rule is a dict")
        if "frames" not in entry and "resolution" not in entry:
            raise SettingError(f"bucket_settings[{i}] has neither frames nor resolution, so it would match every "
                               "sample: put its settings at the top level of the scheduler instead")
        frames = _span(i, "frames", entry["frames"], True) if "frames" in entry else (1, None)
        resolution = _span(i, "resolution", entry["resolution"], False) if "resolution" in entry else (0, None)
        settings = {k: v for k, v in entry.items() if k not in ("frames", "resolution")}
        params = {p for registry in (POLICIES, DISTRIBUTIONS) for name in registry for p in registry.params(name)}
        for key in settings:
            if key not in SETTINGS and key not in params:
                raise SettingError(f"bucket_settings[{i}] sets {key}={describe(settings[key])}, which is no setting of "
                                   "rflow-timeshift")
            if key not in PER_BUCKET and key not in params:
                raise SettingError(f"bucket_settings[{i}] sets {key}={describe(settings[key])}, which cannot differ "
                                   f"per bucket: a rule sets only {', '.join(PER_BUCKET)} and policy or distribution "
                                   "parameters")
        if not settings:
            raise SettingError(f"bucket_settings[{i}] sets nothing besides where it applies: remove it")
        rules.append(BucketRule(i, frames, resolution, settings))
    for j, later in enumerate(rules):
        for earlier in rules[:j]:
            if _overlap(earlier.frames, later.frames) and _overlap(earlier.resolution, later.resolution):
                raise SettingError(f"{later} overlaps {earlier}: a clip could match both. Make the frame or "
                                   "resolution ranges disjoint")
    return tuple(rules)


def _overlap(a: Tuple[Any, Optional[Any]], b: Tuple[Any, Optional[Any]]) -> bool:
    return (a[1] is None or b[0] <= a[1]) and (b[1] is None or a[0] <= b[1])


def rule_for(rules: Sequence[BucketRule], num_frames: float, height: float, width: float) -> Optional[BucketRule]:
    """The rule a clip falls under, or None (the scheduler's own settings): for reports, on the host."""
    return next((r for r in rules if r.contains(num_frames, height * width)), None)


def outside(mask: Tensor, meta: Dict[str, Tensor], like: Optional[int] = None) -> Dict[str, Tensor]:
    """The meta with every sample outside ``mask`` replaced: by sample ``like`` (one of the mask's own), or by a
    512 x 512 image, so that a rule's guard never judges a sample that is not its own."""
    if like is not None:
        return {key: torch.where(mask, value, value[like]) for key, value in meta.items()}
    return {key: torch.where(mask, value, torch.full_like(value, 1.0 if key == "num_frames" else 512.0))
            for key, value in meta.items()}
