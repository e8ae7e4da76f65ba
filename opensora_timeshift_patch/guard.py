"""The guard: the one place that decides whether a sample's shift is ok, clamped, collapsed or refused.

Every surface asks it: the 1.x training step (``TimestepShift`` under ``on_degenerate="error"``, on its one host
copy of the meta), Open-Sora 2.0's host-side factor, and the command line's ``inspect`` and ``audit``. So they agree
by construction, and say the same sentence for the same sample.

=======================================================  =========  ===========  ==========
the sample                                               "error"    "clamp"      "ignore"
=======================================================  =========  ===========  ==========
invalid meta: frames not a whole number >= 1,            refused    refused      refused
min(H, W) <= 0, or H * W not finite
T_eff <= 0 (the policy's temporal size)                  refused    clamped      collapsed
                                                                    (T_eff = 1)  (factor 0)
factor negative or not finite                            refused    refused      refused
factor outside [0.01, 100] (the bound: a shift with no   refused    clamped      ok, with a
base distribution, and always under "clamp")                        into range   note
shifted draws pile up at one end (a Recipe's shift)      refused    ok, with a   ok, with a
                                                                    note         note
anything else                                            ok         ok           ok
=======================================================  =========  ===========  ==========

Why [0.01, 100], where the factor's bound still decides: the shift maps t to a t / (1 + (a - 1) t). With a = 100 the median of a uniform t lands at
0.990, and a quarter of float32 timesteps on a 1000-step scale sit within 1 of N; with a = 1/100 the mirror image at
0. Beyond, training sees almost only noise (or almost only clean latents): the silent collapse this package exists
to prevent, reached by meta or settings rather than by the policy.

"collapsed" is what stock does with T_eff = 0: a factor of 0, so every t is 0. Under ``"ignore"`` any factor of 0
is called so (an H * W that underflows gives one too); a T_eff <= 0 whose factor is not 0 (a linear rule counting
the clip's tokens) is judged by its factor. Under ``"clamp"`` the factor judged is the one computed with T_eff
clamped to 1, before the factor's own clamp.

Piled up at one end (:func:`end_shares`, :func:`pile_message`): the factor's bound says nothing about the
distribution training actually sees. LTX-2's ``e^mu`` passes 600 at 16k tokens while its stretched draw keeps a
median near 0.92, and a factor well inside [0.01, 100] on a base already leaning to one end can put most draws next
to it. So the shifted distribution itself is judged: the share of draws within ``PILE_EPS`` = 1/1000 (one step of
Open-Sora's 1000-step scale) of t = 0 or of t = 1, computed from the Recipe's base draw for that factor on
``PILE_POINTS`` midpoint uniforms (exact to 1/(2 ``PILE_POINTS``), since the shift is increasing). More than
``PILE_SHARE`` = 1/2 of the draws there is called piled up: then most training steps see only noise (or only
clean latents) for that bucket, which is the collapse this package exists to prevent. For a uniform base and the
rational shift with factor a the shares are ``eps / (a - (a - 1) eps)`` near 0 and ``a eps / (1 + (a - 1) eps)``
near 1, so the uniform base piles up from a = 999 (or below 1/999); a logit-normal base shifts its logit by ln a.
"""

from __future__ import annotations

import math
from typing import TYPE_CHECKING, Any, Callable, NamedTuple, Optional, Tuple

import numpy as np
import torch

from .density import midpoint_uniforms
from .policies import temporal_size
from .settings import MAX_SHIFT_FACTOR, number_text

if TYPE_CHECKING:
    from .shift import TimestepShift

LOW, HIGH = 1 / MAX_SHIFT_FACTOR, MAX_SHIFT_FACTOR
"""The range a shift factor must lie in (see the module's docstring)."""

KINDS = ("ok", "clamped", "collapsed", "refused")

PILE_EPS = 1e-3
"""How close to an end of [0, 1] a shifted draw counts as piled up there: one step of a 1000-step scale."""
PILE_SHARE = 0.5
"""The share of draws within ``PILE_EPS`` of one end above which a bucket's shifted distribution is refused."""
PILE_POINTS = 100_000
"""Midpoint uniforms standing for the base distribution when the shares are computed."""


class Verdict(NamedTuple):
    """What the guard says about one bucket or clip."""

    kind: str  # "ok" | "clamped" | "collapsed" | "refused"
    factor: float  # the shift factor training applies (clamped under 'clamp', 0 for a collapse); nan when refused
    t_eff: float  # the policy's T_eff before any clamp (nan when the meta is invalid)
    message: str  # "" for a plain ok; otherwise one line: which sample, the values, why, and the fix


def valid_meta(num_frames: Any, height: Any, width: Any) -> np.ndarray:
    """Per sample: a whole frame count >= 1, and a positive resolution with a finite H * W (in the arrays' dtype).
    On host arrays, under ``np.errstate(all="ignore")`` (``inf - inf`` and an overflowing H * W would warn)."""
    # n - floor(n) is NaN for NaN and inf, so one comparison also refuses those.
    return ((num_frames >= 1) & (num_frames - np.floor(num_frames) == 0) & (np.minimum(height, width) > 0)
            & np.isfinite(height * width))


_NAMES = np.array(["ok", "refused", "clamped", "collapsed"])  # indexed by kind_codes


def factor_bounded(shift: "TimestepShift") -> bool:
    """Whether the factor's [0.01, 100] bound decides: for a shift that knows no base distribution, and under
    ``"clamp"`` (whose steps clamp the factor on the device, looking at nothing). Otherwise the shifted
    distribution is judged instead (:func:`pile_check`), and the factor need only be finite and >= 0."""
    return shift.base is None or shift.on_degenerate == "clamp"


def kind_codes(on_degenerate: str, num_frames: np.ndarray, height: np.ndarray, width: np.ndarray,
               t_eff: np.ndarray, factor: np.ndarray, bounded: bool = True) -> np.ndarray:
    """THE decision, per sample, as the table in the module's docstring says: 0 ok, 1 refused, 2 clamped,
    3 collapsed (:func:`classify` names them). On host arrays, under ``np.errstate(all="ignore")``: the training
    step calls it on its one host copy with nothing else around it.

    ``t_eff`` is the policy's temporal size before any clamp; ``factor`` the shift factor the mode computes
    (under ``"clamp"``: with T_eff clamped to 1, before the factor's own clamp).
    """
    valid = valid_meta(num_frames, height, width)
    # False for NaN. Unbounded, the pile-up judgement (pile_check) stands in for the factor's bound.
    in_range = ((factor >= LOW) & (factor <= HIGH)) if bounded else ((factor >= 0) & np.isfinite(factor))
    if on_degenerate == "error":
        return (~(valid & (t_eff > 0) & in_range)).view(np.uint8)
    refused = ~valid | ~((factor >= 0) & np.isfinite(factor))
    codes = refused.astype(np.uint8)
    if on_degenerate == "clamp":
        codes[~refused & (~(t_eff > 0) | ~in_range)] = 2
    elif on_degenerate == "ignore":
        codes[~refused & (factor == 0)] = 3
    else:
        raise ValueError(f"on_degenerate={on_degenerate!r} is not allowed: use one of 'error', 'clamp', 'ignore'")
    return codes


def classify(on_degenerate: str, num_frames: Any, height: Any, width: Any, t_eff: Any, factor: Any) -> np.ndarray:
    """The guard's kinds per sample (``"ok"``, ``"clamped"``, ``"collapsed"``, ``"refused"``): :func:`kind_codes`,
    named, for any numbers or host arrays (broadcast together)."""
    arrays = np.broadcast_arrays(*(np.asarray(x) for x in (num_frames, height, width, t_eff, factor)))
    with np.errstate(all="ignore"):
        return _NAMES[kind_codes(on_degenerate, *arrays)]


def explain(shift: "TimestepShift", kinds: np.ndarray, num_frames: Any, height: Any, width: Any, t_eff: Any,
            factor: Any, where: Optional[str] = None) -> str:
    """The message for the first sample that has one (``""`` when none has): the sentence users see, from the
    training error, from :func:`judge` and from the command line alike. ``kinds`` are :func:`classify`'s names or
    :func:`kind_codes`'s codes. ``where`` describes the sample in the
    caller's words (Open-Sora 2.0: "a latent of 5 frames and 880 tokens"); without it, "sample i"."""
    if kinds.dtype.kind == "u":
        kinds = _NAMES[kinds]
    n, h, w, t, a, k = (np.asarray(x).reshape(-1) for x in
                        np.broadcast_arrays(num_frames, height, width, t_eff, factor, kinds))
    noted = k != "ok"
    if shift.on_degenerate == "ignore" and factor_bounded(shift):
        with np.errstate(invalid="ignore"):
            noted |= ~((a >= LOW) & (a <= HIGH))
    hits = np.flatnonzero(noted)
    if hits.size == 0:
        return ""
    i = int(hits[0])
    return _sentence(shift, str(k[i]), i, float(n[i]), float(h[i]), float(w[i]), float(t[i]), float(a[i]),
                     np.asarray(height).dtype.name, where)


def _sentence(shift: "TimestepShift", kind: str, i: int, n: float, h: float, w: float, t: float, a: float,
              dtype: str, where: Optional[str]) -> str:
    mode, on = shift.shift_mode, shift.on_degenerate
    at = f"({where})" if where is not None else f"(sample {i})"
    if not (n >= 1 and math.isfinite(n) and n.is_integer()):
        return (f"num_frames={number_text(n)} {at} is not a valid frame count: it must be a whole number >= 1. Check the "
                "dataset's num_frames column or the meta passed in model_kwargs.")
    with np.errstate(all="ignore"):
        valid = valid_meta(np.asarray([n], dtype), np.asarray([h], dtype), np.asarray([w], dtype))[0]
    if not valid:
        return (f"height x width = {number_text(h)} x {number_text(w)} {at} is not a valid resolution: both must be > 0 and their "
                f"product finite in {dtype}. Check the height/width meta passed in model_kwargs.")
    two = where is not None  # Open-Sora 2.0's words: alpha, t = 1 for noise, clips
    name = "alpha" if two else "a"
    subject = where if two else f"sample {i} ({number_text(h)} x {number_text(w)}, {number_text(n)} frames, T_eff = {number_text(t)})"
    if not t > 0 and on != "clamp" and (on == "error" or a == 0):
        if two:
            return (f"shift_mode={mode!r} gives T_eff = {number_text(t)} for {where}: every timestep would collapse to "
                    "t = 0. Use shift_mode='latent' (2.0's rule), or on_degenerate='clamp' to shift such clips as "
                    "T_eff = 1")
        return (f"shift_mode={mode!r} gives T_eff = {number_text(t)} for num_frames={number_text(n)} {at}, so the shift factor is 0 "
                "and every timestep collapses to t = 0: training would only see clean latents and sampling would "
                "start from NaN. Use shift_mode='latent' (the VAE's latent length, "
                f"{number_text(_latent_length(n))} for {number_text(n)} frames), or on_degenerate='clamp' to shift such samples "
                "as T_eff = 1.")
    if not (a >= 0 and math.isfinite(a)):
        return (f"the shift factor {name} = {number_text(a)} for {subject} is not a finite number >= 0: the meta is too "
                f"large for the rule. Check the meta, or the shift settings of {shift!r}")
    end = ("t = 1" if a > 1 else "t = 0") if two else ("N" if a > 1 else "0")
    if a == 0 and on == "ignore":
        return (f"the shift factor {name} = 0 for {subject}, so every timestep collapses to t = 0 (on_degenerate="
                f"'ignore' keeps it). Check the meta, or the shift settings of {shift!r}")
    if kind == "clamped":
        if not t > 0:
            clip = where if two else f"num_frames={number_text(n)} {at}"
            return (f"shift_mode={mode!r} gives T_eff = {number_text(t)} for {clip}: on_degenerate='clamp' shifts it as "
                    f"T_eff = 1 ({name} = {number_text(min(max(a, LOW), HIGH))}). shift_mode='latent' needs no clamping.")
        return (f"the shift factor {name} = {number_text(a)} for {subject} is outside [0.01, 100]: on_degenerate='clamp' "
                f"clamps it to {number_text(min(max(a, LOW), HIGH))}, where its timesteps would pile up at {end}")
    if on == "ignore":
        return (f"note: the shift factor {name} = {number_text(a)} for {subject} is outside [0.01, 100]: its timesteps pile "
                f"up at {end} (on_degenerate='ignore' keeps it)")
    if two:
        return (f"the shift factor alpha = {number_text(a)} for {where} is outside [0.01, 100]: its timesteps would pile up "
                f"at {end}. on_degenerate='clamp' clamps alpha into that range; on_degenerate='ignore' keeps it, as "
                "stock 2.0 does")
    return (f"the shift factor a = {number_text(a)} for {subject} is outside [0.01, 100]: its timesteps would pile up at "
            f"{end}. Check the meta, or the shift settings of {shift!r}; on_degenerate='clamp' clamps the factor "
            "into that range")


def judge(shift: "TimestepShift", height: float, width: float, num_frames: float, latent_frames: Optional[int] = None,
          tokens: Optional[int] = None, where: Optional[str] = None, dtype: Any = np.float32) -> Verdict:
    """The guard's verdict on one bucket or clip, computed on the host as the training step computes it (in
    ``dtype``: float32 as 1.x trains; Open-Sora 2.0 computes its alpha in float64). Never raises for user meta.

    ``latent_frames`` and ``tokens`` are the latent's own length and token count where the caller has them.
    """
    from .shift import MetaError  # shift imports this module

    try:
        h, w, n = (np.asarray([_real(v, key)], dtype) for v, key in
                   ((height, "height"), (width, "width"), (num_frames, "num_frames")))
        with np.errstate(all="ignore"):
            t_eff, factor = shift.host_factor(h, w, n, latent_frames, None, tokens)
            codes = kind_codes(shift.on_degenerate, n, h, w, t_eff, factor, factor_bounded(shift))
            valid = bool(valid_meta(n, h, w)[0])
    except (MetaError, TypeError) as err:
        return Verdict("refused", math.nan, math.nan, str(err))
    kind, t, a = str(_NAMES[codes[0]]), float(t_eff[0]), float(factor[0])
    message = explain(shift, codes, n, h, w, t_eff, factor, where)
    pile = pile_check(shift, factor, where or f"sample 0 ({number_text(float(h[0]))} x {number_text(float(w[0]))}, "
                      f"{number_text(float(n[0]))} frames)") if kind in ("ok", "clamped") and not message else ""
    if pile:
        if shift.on_degenerate == "error":
            return Verdict("refused", math.nan, t if valid else math.nan, pile)
        message = "note: " + pile
    if kind == "refused":
        a = math.nan
    elif kind == "clamped":  # in the factor's dtype, as training clamps it
        a = float(np.clip(factor, LOW, HIGH)[0])
    return Verdict(kind, a, t if valid else math.nan, message)


def end_shares(draw: Callable[[torch.Tensor, torch.Tensor], torch.Tensor],
               curve: Callable[[torch.Tensor, torch.Tensor], torch.Tensor], factors: Any, eps: float = PILE_EPS,
               points: int = PILE_POINTS) -> Tuple[np.ndarray, np.ndarray]:
    """``(share within eps of 0, share within eps of 1)`` of ``curve(draw(u, a), a)`` for u uniform, per factor
    ``a`` in ``factors``: counted over ``points`` midpoint uniforms, so exact to ``1 / (2 points)`` (the shift and
    the draw are increasing in u). ``draw(u, a)`` is the base draw for factor ``a`` (the Recipe's
    :meth:`~.core.Recipe.base_draw`; a :class:`~.sampling.TimestepDistribution` ``d`` is ``lambda u, a: d(u)``);
    ``curve`` the shift family's (``TimestepShift.curve``). Computed once per bucket's factor, never per step:
    callers cache the verdict with the meta."""
    a = torch.as_tensor(np.asarray(factors, dtype=np.float64).reshape(-1), dtype=torch.float64)[:, None]
    base = draw(midpoint_uniforms(points)[None, :], a)
    with np.errstate(all="ignore"):
        shifted = curve(base, a)
    low = (shifted < eps).double().mean(1).numpy()
    high = (shifted > 1 - eps).double().mean(1).numpy()
    return low, high


def piled_up(low: np.ndarray, high: np.ndarray) -> np.ndarray:
    """THE pile-up rule, per factor: more than ``PILE_SHARE`` of the draws within ``PILE_EPS`` of one end."""
    return (np.asarray(low) > PILE_SHARE) | (np.asarray(high) > PILE_SHARE)


def pile_message(factor: float, low: float, high: float, subject: str, fix: str) -> str:
    """The one sentence for a piled-up bucket, on every surface. ``subject`` names the bucket in the caller's
    words; ``fix`` says what to change (surfaces differ only there)."""
    share, end = (high, "t = 1 (noise)") if high >= low else (low, "t = 0 (clean latents)")
    return (f"the shifted timesteps of {subject} pile up: with shift factor {number_text(factor)}, "
            f"{share:.1%} of the draws lie within {number_text(PILE_EPS)} of {end}, more than the "
            f"{PILE_SHARE:.0%} allowed, so training would see almost only that end. {fix}")


def pile_check(shift: "TimestepShift", factor: np.ndarray, subject: str) -> str:
    """The pile-up sentence for the first of ``factor`` whose shifted base distribution piles up, ``""`` when none
    does or the shift knows no base distribution (``shift.base``, set by the :class:`~.core.Recipe`)."""
    base = shift.base
    if base is None:
        return ""
    values = np.unique(np.asarray(factor, dtype=np.float64).reshape(-1))
    values = values[np.isfinite(values)]
    cache = shift.pile_shares  # per factor: a bucket is judged once
    new = [a for a in values.tolist() if a not in cache]
    if new:
        if len(cache) >= 4096:  # factors that never repeat: keep the memory bounded
            cache.clear()
        for a, low, high in zip(new, *end_shares(base, shift.curve, new)):
            cache[a] = (float(low), float(high))
    for a in values.tolist():
        low, high = cache[a]
        if piled_up(low, high):
            return pile_message(a, low, high, subject,
                                f"Check the meta, the base distribution, or the shift settings of {shift!r}")
    return ""


def _real(value: Any, key: str) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float, np.integer, np.floating)):
        raise TypeError(f"meta {key}={value!r} is not allowed: it must be a real number")
    return float(value)


def _latent_length(n: float) -> float:
    return float(temporal_size(torch.tensor([n], dtype=torch.float64), "latent")[0])
