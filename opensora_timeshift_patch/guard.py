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
factor outside [0.01, 100]                               refused    clamped      ok, with a
                                                                    into range   note
anything else                                            ok         ok           ok
=======================================================  =========  ===========  ==========

Why [0.01, 100]: the shift maps t to a t / (1 + (a - 1) t). With a = 100 the median of a uniform t lands at
0.990, and a quarter of float32 timesteps on a 1000-step scale sit within 1 of N; with a = 1/100 the mirror image at
0. Beyond, training sees almost only noise (or almost only clean latents): the silent collapse this package exists
to prevent, reached by meta or settings rather than by the policy.

"collapsed" is what stock does with T_eff = 0: a factor of 0, so every t is 0. Under ``"ignore"`` any factor of 0
is called so (an H * W that underflows gives one too); a T_eff <= 0 whose factor is not 0 (a linear rule counting
the clip's tokens) is judged by its factor. Under ``"clamp"`` the factor judged is the one computed with T_eff
clamped to 1, before the factor's own clamp.
"""

from __future__ import annotations

import math
from typing import TYPE_CHECKING, Any, NamedTuple, Optional

import numpy as np
import torch

from .policies import temporal_size
from .settings import MAX_SHIFT_FACTOR, number_text

if TYPE_CHECKING:
    from .shift import TimestepShift

LOW, HIGH = 1 / MAX_SHIFT_FACTOR, MAX_SHIFT_FACTOR
"""The range a shift factor must lie in (see the module's docstring)."""

KINDS = ("ok", "clamped", "collapsed", "refused")


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


def kind_codes(on_degenerate: str, num_frames: np.ndarray, height: np.ndarray, width: np.ndarray,
               t_eff: np.ndarray, factor: np.ndarray) -> np.ndarray:
    """THE decision, per sample, as the table in the module's docstring says: 0 ok, 1 refused, 2 clamped,
    3 collapsed (:func:`classify` names them). On host arrays, under ``np.errstate(all="ignore")``: the training
    step calls it on its one host copy with nothing else around it.

    ``t_eff`` is the policy's temporal size before any clamp; ``factor`` the shift factor the mode computes
    (under ``"clamp"``: with T_eff clamped to 1, before the factor's own clamp).
    """
    valid = valid_meta(num_frames, height, width)
    in_range = (factor >= LOW) & (factor <= HIGH)  # False for NaN
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
    if shift.on_degenerate == "ignore":
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
            codes = kind_codes(shift.on_degenerate, n, h, w, t_eff, factor)
            valid = bool(valid_meta(n, h, w)[0])
    except (MetaError, TypeError) as err:
        return Verdict("refused", math.nan, math.nan, str(err))
    kind, t, a = str(_NAMES[codes[0]]), float(t_eff[0]), float(factor[0])
    message = explain(shift, codes, n, h, w, t_eff, factor, where)
    if kind == "refused":
        a = math.nan
    elif kind == "clamped":  # in the factor's dtype, as training clamps it
        a = float(np.clip(factor, LOW, HIGH)[0])
    return Verdict(kind, a, t if valid else math.nan, message)


def _real(value: Any, key: str) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float, np.integer, np.floating)):
        raise TypeError(f"meta {key}={value!r} is not allowed: it must be a real number")
    return float(value)


def _latent_length(n: float) -> float:
    return float(temporal_size(torch.tensor([n], dtype=torch.float64), "latent")[0])
