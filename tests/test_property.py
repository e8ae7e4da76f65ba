"""Property tests: random valid settings and random batch meta, against the formulas computed here by hand.

Settings are generated valid by construction (every shift_mode, both shift families, every resolution rule with its
own anchors, exponents, transform_scale, t_range in both modes, every sample_method with its parameters, the global
RNG and the per-sample stream, plain, stratified or cycled; Open-Sora 1.3's redraw), and the meta as Open-Sora's
loader gives it (bf16, fp16, fp32 or int64 tensors, batches of 1 to 6 mixing images and videos). For each example the
test computes, per sample and in float64, T_eff from the policy's formula, the factor a from the rule, the guard's
verdict, the uniform the stream draws, F^-1(u), the shifted and (1.3) redrawn timestep, and the sampling grid, and
checks that ``training_losses`` and ``sample`` agree: refused exactly when the guard says so, timesteps as the
formula says, monotone in the base draw, in [0, N], with a finite loss.

A second property gives hostile values to a valid configuration: each is refused with an error naming it, or
accepted and trains as any valid configuration does.

Derandomized, so CI runs the same examples every time; ``PROPERTY_EXAMPLES=N`` explores N fresh ones.
``pytest --hypothesis-show-statistics`` prints how many examples trained, per mode, family, rule and stream.
"""

import contextlib
import math
import os
import warnings
from statistics import NormalDist

import numpy as np
import pytest
import torch
from hypothesis import HealthCheck, assume, event, example, given, settings as hypothesis_settings, strategies as st
from scipy.special import betainc, betaincinv

from opensora_timeshift_patch import RFlowTimeShift
from opensora_timeshift_patch.sampling import counter_uniform, stratified_uniform
from standin.stubs import StubModel, run_sampling

PHI = NormalDist()
MODES = ["legacy", "frames16", "v13", "latent", "continuous", "spatial"]
METHODS = ["uniform", "logit-normal", "mode", "cosmap", "logsnr", "beta", "fixed"]
EXAMPLES = int(os.environ.get("PROPERTY_EXAMPLES", 200))
SAMPLING_STEPS = 3


def floats(lo, hi):
    return st.floats(lo, hi, allow_nan=False, allow_infinity=False)


def maybe(strategy):
    """Either leave the setting out (its default) or give it a value."""
    return st.one_of(st.none(), strategy)


@st.composite
def configs(draw, modes=MODES):
    """Settings the scheduler must accept: every choice with parameters inside their documented ranges (the
    temporal policy among ``modes``; without scale_temporal=False when ``spatial`` is not among them)."""
    c = {"backend": "standalone", "num_sampling_steps": SAMPLING_STEPS,
         "num_timesteps": draw(st.sampled_from([1000, 1000, 250, 1])),
         "on_degenerate": draw(st.sampled_from(["error", "error", "clamp", "ignore"]))}
    scale_temporal = draw(st.sampled_from([True, True, True, False] if "spatial" in modes else [True]))
    if scale_temporal:
        c["shift_mode"] = draw(st.sampled_from(modes))
        if c["shift_mode"] == "latent":  # the pixel-frame fallback's geometry; training reads the latent itself
            for key, value in (("micro_frame_size", maybe(st.integers(1, 40))),
                               ("temporal_compression", st.integers(1, 8)), ("causal", st.booleans())):
                if draw(st.booleans()):
                    c[key] = draw(value)
    else:
        c["scale_temporal"] = False

    family = c["shift_family"] = draw(st.sampled_from(["rational", "exponential"]))
    if family == "exponential" and draw(st.booleans()):
        c["shift_sigma"] = draw(floats(0.3, 3))
    rule = c["resolution_shift"] = draw(st.sampled_from(["sqrt", "linear", "constant"]))
    if rule == "sqrt":
        if draw(st.booleans()):  # small ones drive large clips' factor past 100
            c["base_resolution"] = draw(st.one_of(floats(1e4, 4e6), floats(1, 1e4)))
        if draw(st.booleans()):
            c["spatial_exponent"] = draw(floats(0, 1))
    elif rule == "constant":
        c["shift"] = draw(floats(0.05, 20) if family == "rational" else floats(-3, 3))
    else:
        c["patch_size"] = draw(st.sampled_from([1, 2, 4]))
        c["token_count"] = draw(st.sampled_from(["frame", "video"]))
        lo_len = draw(floats(1, 1000))
        c["base_seq_len"], c["max_seq_len"] = lo_len, lo_len + draw(floats(1, 5000))
        if family == "rational":  # the line may not fall below 0.01 at one token, nor decrease
            base = draw(floats(0.05, 5))
            room = (base - 0.01) * (c["max_seq_len"] - lo_len) / (lo_len - 1) if lo_len > 1 else 10.0
            c["base_shift"], c["max_shift"] = base, base + draw(floats(0, 1)) * min(room, 10.0) * 0.99
        else:
            c["base_shift"] = draw(floats(-3, 2))
            c["max_shift"] = c["base_shift"] + draw(floats(0, 2))
    temporal_factor = scale_temporal and c.get("token_count") != "video"
    if temporal_factor and draw(st.booleans()):
        c["temporal_exponent"] = draw(st.one_of(st.sampled_from([0.0, 0.25, 1.0]), floats(0, 1.5)))
    if temporal_factor and draw(st.booleans()):
        c["base_num_frames"] = draw(floats(0.5, 20))
    if scale_temporal and draw(st.booleans()):
        c["transform_scale"] = draw(st.one_of(floats(0.2, 5), floats(0.01, 100)))
        c["scale_images"] = draw(st.booleans())

    method = c["sample_method"] = draw(st.sampled_from(METHODS))
    if method in ("logit-normal", "logsnr") and draw(st.booleans()):
        c["loc"] = draw(floats(-2, 2) if method == "logit-normal" else floats(-4, 4))
        c["scale"] = draw(floats(0.3, 2) if method == "logit-normal" else floats(0.5, 4))
    elif method == "mode" and draw(st.booleans()):
        c["mode_scale"] = draw(floats(-1, 1.75))
    elif method == "beta":
        # a few pairs: each new pair tabulates its inverse CDF once (about half a second)
        c["beta_alpha"], c["beta_beta"] = draw(st.sampled_from([(2.0, 2.0), (0.5, 3.0), (5.0, 1.2), (1.0, 1.0),
                                                                 (3.5, 0.8), (0.2, 0.6)]))
    elif method == "fixed":
        c["timesteps"] = draw(st.lists(floats(0.02, 0.98), min_size=2, max_size=5, unique=True)
                              .filter(lambda ts: max(ts) - min(ts) > 0.05))
    if method != "fixed" and draw(st.booleans()):
        lo = draw(floats(0, 0.7))
        c["t_range"] = (lo, min(lo + draw(floats(0.25, 1 - lo)), 1.0))
        c["t_range_mode"] = draw(st.sampled_from(["truncate", "rescale"]))

    if draw(st.booleans()):
        c["timestep_rng"] = "per_sample"
        c["timestep_seed"] = draw(st.integers(0, 2**64 - 1))
        if method == "fixed" and draw(st.booleans()):
            c["fixed_order"] = "cycle"
        else:
            c["stratified"] = draw(st.booleans())
    if scale_temporal and draw(st.integers(0, 3)) == 0:
        c["uniform_over_threshold"] = draw(floats(0, 0.95))
    return c


FRAMES = [1, 1, 2, 3, 4, 8, 16, 17, 32, 33, 51, 64, 113, 129]


@st.composite
def batches(draw, frames=FRAMES):
    """Open-Sora's batch: the latent (B, C, T, h, w) and the meta, 1 to 6 samples drawn from up to 3 clips (so
    some share their meta), images and videos mixed, in one of the dtypes the training loop casts them to."""
    pool = [(draw(st.integers(16, 2160)), draw(st.integers(16, 3840)), draw(st.sampled_from(frames)))
            for _ in range(draw(st.integers(1, 3)))]
    clips = draw(st.lists(st.sampled_from(pool), min_size=1, max_size=6))
    dtype = draw(st.sampled_from([torch.float32, torch.bfloat16, torch.float16, torch.int64]))
    meta = {key: torch.tensor([float(clip[i]) for clip in clips]).to(dtype)
            for i, key in enumerate(("height", "width", "num_frames"))}
    side = st.sampled_from([1, 2, 3] + list(range(4, 13)) * 3)  # now and then smaller than a patch_size of 4
    latent = (len(clips), 4, draw(st.integers(1, 9)), draw(side), draw(side))
    return meta, latent


# --- the formulas, by hand ----------------------------------------------------------------------------------

def temporal_size(c, n, latent_frames):
    """T_eff of one sample: the latent's own length in latent mode, 1 for images, else the policy's formula."""
    mode = c.get("shift_mode", "latent") if c.get("scale_temporal", True) else "spatial"
    if mode == "latent":
        return float(latent_frames)
    if n == 1 or mode == "spatial":
        return 1.0
    return {"legacy": n // 17 * 5, "frames16": n // 16 * 4, "v13": (n - 1) // 4, "continuous": n * 5 / 17}[mode]


def shift_factor(c, h, w, n, latent):
    """(T_eff, a) of one sample, a as the guard sees it (clamped under "clamp")."""
    t_eff = temporal_size(c, n, latent[2])
    used = 1.0 if c["on_degenerate"] == "clamp" and t_eff <= 0 else t_eff
    family, rule = c["shift_family"], c["resolution_shift"]
    if rule == "sqrt":
        r = (h * w / c.get("base_resolution", 512 * 512)) ** c.get("spatial_exponent", 0.5)
    else:
        if rule == "constant":
            value = c["shift"]
        else:
            p = c["patch_size"]
            tokens = (latent[3] // p) * (latent[4] // p)
            count = tokens * used if c["token_count"] == "video" else tokens
            slope = (c["max_shift"] - c["base_shift"]) / (c["max_seq_len"] - c["base_seq_len"])
            value = c["base_shift"] + slope * (count - c["base_seq_len"])
        r = math.exp(value) if family == "exponential" else value
    if c.get("token_count") == "video" and rule == "linear":
        a = r
    else:
        a = r * (used / c.get("base_num_frames", 1)) ** c.get("temporal_exponent", 0.5)
    if c.get("transform_scale", 1.0) != 1 and (c.get("scale_images", True) or n != 1):
        a *= c["transform_scale"]
    if c["on_degenerate"] == "clamp":
        a = min(max(a, 0.01), 100.0)
    return t_eff, a


def curve(c, t, a):
    if c["shift_family"] == "exponential":
        return a / (a + (1 / t - 1) ** c.get("shift_sigma", 1.0)) if t > 0 else 0.0
    return a * t / (1 + (a - 1) * t)


PILE_EPS = 1e-3  # the guard's: more than half the shifted draws within 1/1000 of an end piles up


def drawn_cdf(c, x):
    """P(T <= x) of the base distribution as drawn, t_range applied."""
    t_range, mode = c.get("t_range"), c.get("t_range_mode", "truncate")
    if t_range is None:
        return cdf(c, x)
    if mode == "rescale":
        return cdf(c, (x - t_range[0]) / (t_range[1] - t_range[0]))
    lo, hi = cdf(c, t_range[0]), cdf(c, t_range[1])
    return min(max((cdf(c, x) - lo) / (hi - lo), 0.0), 1.0)


def end_shares(c, a):
    """The shares of shifted draws within PILE_EPS of 0 and of 1: F(s^-1(eps)) and 1 - F(s^-1(1 - eps)), with
    s^-1(y) = y / (a - (a - 1) y) (rational) or 1 / (1 + (a (1 - y) / y)^(1/sigma)) (exponential)."""
    def inverse(y):
        if c["shift_family"] == "exponential":
            return 1 / (1 + (a * (1 - y) / y) ** (1 / c.get("shift_sigma", 1.0)))
        return y / (a - (a - 1) * y)
    return drawn_cdf(c, inverse(PILE_EPS)), 1 - drawn_cdf(c, inverse(1 - PILE_EPS))


def piles(c, a):
    return a >= 0 and math.isfinite(a) and max(end_shares(c, a)) > 0.5


def near_the_pile_line(c, factors):
    """Too close to call, either way (the guard counts on a grid, in the factor's float32)."""
    return any(a >= 0 and math.isfinite(a) and abs(max(end_shares(c, a)) - 0.5) < 1e-3 for _, a in factors)


def inverse_cdf(c, u):
    """F^-1(u) of the base distribution on (0, 1), with t_range applied."""
    t_range, mode = c.get("t_range"), c.get("t_range_mode", "truncate")
    if t_range is not None and mode == "truncate":
        lo, hi = cdf(c, t_range[0]), cdf(c, t_range[1])
        u = lo + (hi - lo) * u
    t = base_inverse_cdf(c, u)
    if t_range is not None and mode == "rescale":
        t = t_range[0] + (t_range[1] - t_range[0]) * t
    return t


def base_inverse_cdf(c, u):
    method = c["sample_method"]
    if method == "uniform":
        return u
    if method == "logit-normal":
        return sigmoid(c.get("loc", 0.0) + c.get("scale", 1.0) * PHI.inv_cdf(u))
    if method == "logsnr":
        return sigmoid((c.get("scale", 1.0) * PHI.inv_cdf(u) - c.get("loc", 0.0)) / 2)
    if method == "mode":
        return u - c.get("mode_scale", 1.29) * (math.sin(math.pi / 2 * u) ** 2 - u)
    if method == "cosmap":
        return 1 - 1 / (math.tan(math.pi / 2 * u) + 1)
    if method == "fixed":
        ts = sorted(c["timesteps"])
        return ts[min(int(u * len(ts)), len(ts) - 1)]
    return float(betaincinv(c["beta_alpha"], c["beta_beta"], u))


def cdf(c, t):
    """F(t) of the untruncated base distribution."""
    method = c["sample_method"]
    if t <= 0 or t >= 1:
        return float(t >= 1)
    logit = math.log(t / (1 - t))
    if method == "uniform":
        return t
    if method == "logit-normal":
        return PHI.cdf((logit - c.get("loc", 0.0)) / c.get("scale", 1.0))
    if method == "logsnr":  # t = sigmoid((scale z - loc) / 2)
        return PHI.cdf((2 * logit + c.get("loc", 0.0)) / c.get("scale", 1.0))
    if method == "beta":
        return float(betainc(c["beta_alpha"], c["beta_beta"], t))
    lo, hi = 0.0, 1.0  # mode and cosmap: invert the increasing inverse CDF
    for _ in range(80):
        mid = (lo + hi) / 2
        lo, hi = (mid, hi) if base_inverse_cdf(c, mid) < t else (lo, mid)
    return (lo + hi) / 2


def sigmoid(x):
    return 1 / (1 + math.exp(-x)) if x > -700 else 0.0


def uniforms(c, batch, seed, dtype):
    """The stream's base uniforms, the base timesteps where stock's own draw is kept (else None), and the redraw's
    uniforms, as the README and ``sampling`` document them; the global RNG is seeded with ``seed`` first, and its
    redraw is stock's ``rand_like(t)``, in the timesteps' ``dtype``."""
    step, index = 0, torch.arange(batch)
    if c.get("timestep_rng") == "per_sample":
        if c.get("fixed_order") == "cycle":
            k = len(c["timesteps"])
            u = [((i + step) % k + 0.5) / k for i in range(batch)]
        elif c.get("stratified"):
            u0 = stratified_uniform(c["timestep_seed"], step, 0, 1, 1).item()
            u = [(u0 + i / batch) % 1 for i in range(batch)]
        else:
            u = counter_uniform(c["timestep_seed"], step, index).tolist()
        return u, None, counter_uniform(c["timestep_seed"], step, index, lane=2).tolist()
    torch.manual_seed(seed)
    stock = c.get("t_range") is None and c["sample_method"] in ("uniform", "logit-normal")
    if stock and c["sample_method"] == "uniform":  # Open-Sora's torch.rand(B)
        u, base = None, torch.rand(batch).double().tolist()
    elif stock:  # Open-Sora's LogisticNormal(loc, scale), first component
        dist = torch.distributions.LogisticNormal(torch.tensor([c.get("loc", 0.0)]), torch.tensor([c.get("scale", 1.0)]))
        u, base = None, dist.sample((batch,))[:, 0].double().tolist()
    else:
        u, base = torch.rand(batch, dtype=torch.float64).tolist(), None
    return u, base, torch.rand(batch, dtype=dtype).double().tolist()  # drawn only when the batch holds a video


# --- the property -------------------------------------------------------------------------------------------

@contextlib.contextmanager
def quiet():
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        yield


def label(c, outcome):
    """What the example reached, for ``--hypothesis-show-statistics``: its outcome, and for those that trained,
    the mode, family, rule, distribution and stream."""
    event(f"outcome: {outcome}")
    if outcome != "trained":
        return
    event(f"trained, on_degenerate: {c['on_degenerate']}")
    event(f"trained, mode: {c.get('shift_mode', 'spatial (scale_temporal=False)')}")
    event(f"trained, family: {c['shift_family']}" + " with shift_sigma" * ("shift_sigma" in c))
    event(f"trained, rule: {c['resolution_shift']}"
          + (f" ({c['token_count']})" if c["resolution_shift"] == "linear" else ""))
    event(f"trained, sample_method: {c['sample_method']}")
    event(f"trained, stream: {c.get('timestep_rng', 'global')}" + " stratified" * bool(c.get("stratified"))
          + " cycle" * (c.get("fixed_order") == "cycle"))
    if c.get("t_range"):
        event(f"trained, t_range: {c.get('t_range_mode', 'truncate')}")
    if c.get("uniform_over_threshold") is not None:
        event("trained, uniform_over_threshold")
    if any(k in c for k in ("temporal_exponent", "base_num_frames", "spatial_exponent", "transform_scale")):
        event("trained, exponents or transform_scale set")


def tol(a):
    """On [0, 1]: float32 along the way (F^-1 times N, over N, the curve) against float64 here. The curve's
    denominator 1 + (a - 1) t cancels for small a, costing float32 digits in proportion to 1 / a."""
    return 1e-6 * (1 + 1 / a) if a > 0 else 1e-6


def guard_factors(c, meta, latent):
    """(T_eff, a) per sample of the batch, by hand."""
    h_, w_, n_ = (meta[k].double().tolist() for k in ("height", "width", "num_frames"))
    return [shift_factor(c, h, w, n, latent) for h, w, n in zip(h_, w_, n_)]


def check_training(c, meta, latent, seed, record=False):
    """One training step of ``c`` on the batch, checked against the formulas: refused exactly when the guard says
    so, else the stream's uniforms through F^-1, shifted (and redrawn) by hand, in [0, N], monotone in the draw,
    with a finite loss. Returns the scheduler, the factors and the latent when it trained, else None."""
    h_, w_, n_ = (meta[k].double().tolist() for k in ("height", "width", "num_frames"))
    b, n_timesteps = latent[0], c["num_timesteps"]
    with quiet():
        scheduler = RFlowTimeShift(**c)  # valid by construction: a refusal here fails the test
    factors = guard_factors(c, meta, latent)
    if c["on_degenerate"] == "error":  # the pile-up line in float32: too close to call, either way
        assume(not near_the_pile_line(c, factors))
    no_token = c["resolution_shift"] == "linear" and (latent[3] // c["patch_size"]) * (latent[4] // c["patch_size"]) < 1
    # A scheduler's shift knows its base distribution: the guard judges the shifted draws, not the factor's bound.
    refused = c["on_degenerate"] == "error" and any(t <= 0 or not (a >= 0 and math.isfinite(a)) or piles(c, a)
                                                    for t, a in factors)
    stopped = c["on_degenerate"] == "ignore" and any(not (a >= 0 and math.isfinite(a)) for _, a in factors)
    say = label if record else (lambda *_: None)

    x = torch.randn(*latent, generator=torch.Generator().manual_seed(seed))
    model = StubModel()
    torch.manual_seed(seed)
    try:
        with quiet():
            loss = scheduler.training_losses(model, x, dict(meta))["loss"]
    except ValueError as err:
        msg = str(err)
        if no_token:
            assert "holds no token of patch_size" in msg, msg
        else:
            assert refused, (c, factors, msg)
            assert "T_eff" in msg or "pile up" in msg or "not a finite number" in msg, msg
        say(c, "refused by the guard" if refused else "refused: no token")
        return None
    except RuntimeError as err:  # "ignore": a device-side assert stops a negative or non-finite factor
        assert stopped and "shift factor is negative or not finite" in str(err), (c, factors, str(err))
        say(c, "stopped (ignore, negative factor)")
        return None
    assert not (refused or no_token or stopped), (c, factors)
    say(c, "trained")

    u, base, u2 = uniforms(c, b, seed, model.seen[0].dtype)
    t = model.seen[0].double() / n_timesteps
    assert bool(loss.isfinite().all()), (c, loss)
    assert bool(((t >= 0) & (t <= 1)).all()), (c, t)

    threshold = c.get("uniform_over_threshold")
    redraw = threshold is not None and any(n != 1 for n in n_)
    for i, ((_, a), n) in enumerate(zip(factors, n_)):
        if c["sample_method"] == "beta" and base is None:
            # no closed form: within the tabulated inverse CDF's accuracy in u (documented: 2e-5), so between
            # the timesteps of u - 2e-5 and u + 2e-5
            if threshold is not None and n != 1 and redraw:
                continue
            low, high = (curve(c, inverse_cdf(c, min(max(u[i] + d, 0.0), 1.0)), a) for d in (-2e-5, 2e-5))
            assert low - tol(a) <= t[i].item() <= high + tol(a), (c, i, a, low, high)
            continue
        tau = base[i] if base is not None else inverse_cdf(c, u[i])
        want = min(max(curve(c, tau, a), 0.0), 1.0)
        if threshold is not None and n != 1 and redraw:
            if abs(want - threshold) < 1e-4:
                continue  # which side float32 lands on is too close to call
            if want > threshold:
                want = u2[i] * (1 - threshold) + threshold
        assert t[i].item() == pytest.approx(want, abs=tol(a), rel=1e-6), (c, i, tau, a)

    # monotone in the base draw: samples with the same meta and larger uniforms get larger timesteps
    if u is not None and threshold is None:
        for i in range(b):
            for j in range(b):
                same = (h_[i], w_[i], n_[i]) == (h_[j], w_[j], n_[j])
                if same and u[i] < u[j]:
                    assert t[i] <= t[j], (c, i, j)
    return scheduler, factors, x


@hypothesis_settings(max_examples=EXAMPLES, deadline=None, derandomize="PROPERTY_EXAMPLES" not in os.environ,
                     suppress_health_check=[HealthCheck.too_slow, HealthCheck.filter_too_much])
@given(c=configs(), batch=batches(), seed=st.integers(0, 2**31 - 1))
@example(  # the tabulated Beta, truncated, on the per-sample stream, shifted by 2.0's rule of the clip's tokens
    c=dict(backend="standalone", num_sampling_steps=SAMPLING_STEPS, num_timesteps=1000, on_degenerate="error",
           shift_mode="latent", shift_family="rational", resolution_shift="linear", patch_size=2, token_count="frame",
           base_seq_len=256, max_seq_len=4096, base_shift=1.0, max_shift=3.0, sample_method="beta", beta_alpha=0.5,
           beta_beta=3.0, t_range=(0.05, 0.6), t_range_mode="truncate", timestep_rng="per_sample",
           timestep_seed=3, stratified=False),
    batch=({"height": torch.tensor([720.0, 720.0, 256.0]), "width": torch.tensor([1280.0, 1280.0, 256.0]),
            "num_frames": torch.tensor([33.0, 33.0, 33.0]).to(torch.bfloat16)}, (3, 4, 9, 12, 10)),
    seed=0)
@example(  # mode truncated to (0.5, 1): its float64 inverse CDF dips by an ulp at the stream's extreme u = 2^-54
    c=dict(backend="standalone", num_sampling_steps=3, num_timesteps=1000, on_degenerate="error", shift_mode="legacy",
           shift_family="rational", resolution_shift="linear", patch_size=1, token_count="video", base_seq_len=1.0,
           max_seq_len=2.0, base_shift=1.0, max_shift=1.0, sample_method="mode", t_range=(0.5, 1.0),
           t_range_mode="truncate", uniform_over_threshold=0.0),
    batch=({"height": torch.tensor([16.0]), "width": torch.tensor([16.0]), "num_frames": torch.tensor([1.0])},
           (1, 4, 1, 1, 1)),
    seed=0)
@example(  # e^mu = e^-104 at one token: a positive factor in float64, 0 in the float32 sampling computes it in
    c=dict(backend="standalone", num_sampling_steps=3, num_timesteps=1000, on_degenerate="ignore", shift_mode="legacy",
           shift_family="exponential", resolution_shift="linear", patch_size=1, token_count="video",
           base_seq_len=53.0, max_seq_len=54.0, base_shift=0.0, max_shift=2.0, sample_method="uniform",
           uniform_over_threshold=0.0),
    batch=({"height": torch.tensor([16.0]), "width": torch.tensor([16.0]), "num_frames": torch.tensor([1.0])},
           (1, 4, 1, 1, 1)),
    seed=0)
def test_valid_settings_train_and_sample_as_the_formulas_say(c, batch, seed):
    meta, latent = batch
    trained = check_training(c, meta, latent, seed, record=True)
    if trained is None:
        return
    scheduler, factors, x = trained
    # Where the guard accepts the batch, the "error" path, which computes the factor on its host copy of the meta,
    # must follow the same formulas as the drawn path.
    strict = {**c, "on_degenerate": "error"}
    if c["on_degenerate"] != "error" and all(t > 0 and 0.01 * 1.0001 < a < 100 * 0.9999
                                             for t, a in guard_factors(strict, meta, latent)):
        check_training(strict, meta, latent, seed)

    # sample(): the same factor on the grid (1 - k / steps), visited from t = N down; no redraw at inference
    # ("ignore" keeps stock's collapse: a = 0 starts from 0/0 = NaN, then stays at 0)
    n_timesteps = c["num_timesteps"]
    steps, z = run_sampling(scheduler, x, dict(meta))
    grid = torch.stack(steps).double() / n_timesteps  # (steps, B)
    # sampling computes the factor in float32: one below its least subnormal (an exponential rule's e^-104) is 0 there
    collapsed = torch.tensor([float(np.float32(a)) == 0 for _, a in factors])
    assert bool(z[~collapsed].isfinite().all())
    assert bool(grid[0, collapsed].isnan().all()) and bool((grid[1:, collapsed] == 0).all())
    assert bool((grid[:, ~collapsed].diff(dim=0) <= 0).all()), (c, grid)
    for k in range(SAMPLING_STEPS):
        for i, (_, a) in enumerate(factors):
            if not collapsed[i]:
                want = min(curve(c, 1 - k / SAMPLING_STEPS, a), 1.0)
                assert grid[k, i].item() == pytest.approx(want, abs=tol(a), rel=1e-6), (c, k, i)


@hypothesis_settings(max_examples=max(EXAMPLES // 2, 1), deadline=None,
                     derandomize="PROPERTY_EXAMPLES" not in os.environ,
                     suppress_health_check=[HealthCheck.too_slow, HealthCheck.filter_too_much])
@given(c=configs(modes=["legacy", "frames16", "v13", "continuous"]),
       batch=batches(frames=[1, 2, 3, 4, 5, 8, 15, 16, 17, 33, 2000]))
@example(  # T_eff = 0 with temporal_exponent=0: the factor, 0^0 = 1, looks fine; the clip still collapses
    c=dict(backend="standalone", num_sampling_steps=SAMPLING_STEPS, num_timesteps=1000, on_degenerate="error",
           shift_mode="legacy", shift_family="rational", resolution_shift="sqrt", temporal_exponent=0.0,
           sample_method="uniform"),
    batch=({"height": torch.tensor([512.0, 512.0]), "width": torch.tensor([512.0, 512.0]),
            "num_frames": torch.tensor([17.0, 16.0])}, (2, 4, 4, 8, 8)))
@example(  # an image whose factor 3 * 34 is past 100 before a clip whose T_eff is 0: the first refusal is named
    c=dict(backend="standalone", num_sampling_steps=3, num_timesteps=1000, on_degenerate="error", shift_mode="legacy",
           shift_family="rational", resolution_shift="constant", shift=3.0, transform_scale=34.0, scale_images=True,
           sample_method="uniform"),
    batch=({"height": torch.tensor([16.0, 16.0]), "width": torch.tensor([16.0, 16.0]),
            "num_frames": torch.tensor([1.0, 2.0])}, (2, 4, 1, 1, 1)))
def test_the_guard_refuses_exactly_when_t_eff_or_the_factor_says_so(c, batch):
    """Under "error", with the policies that collapse on short clips (and one that never does), short clips and
    long ones: refused exactly when a sample's T_eff <= 0 or its shifted draws pile up at one end (the guard's rule, from the CDF), by the formulas
    above. A T_eff of 0 whose factor is not 0 (temporal_exponent=0, or the linear rule counting the clip's tokens)
    is refused too."""
    meta, latent = batch
    c["on_degenerate"] = "error"
    with quiet():
        scheduler = RFlowTimeShift(**c)
    h_, w_, n_ = (meta[k].double().tolist() for k in ("height", "width", "num_frames"))
    factors = [shift_factor(c, h, w, n, latent) for h, w, n in zip(h_, w_, n_)]
    assume(not near_the_pile_line(c, factors))
    assume((latent[3] // c.get("patch_size", 1)) * (latent[4] // c.get("patch_size", 1)) >= 1)
    collapses = any(t <= 0 for t, _ in factors)
    extreme = any(not (a >= 0 and math.isfinite(a)) or piles(c, a) for _, a in factors)
    if collapses and all(a != 0 for t, a in factors if t <= 0):
        event("T_eff = 0 with a factor that is not 0")
    try:
        scheduler.training_losses(StubModel(), torch.randn(*latent), dict(meta))
    except ValueError as err:
        assert collapses or extreme, (c, factors, str(err))
        # The guard names the first sample it refuses: with both kinds in the batch, either message is right.
        said = {"T_eff = 0": "T_eff = 0" in str(err),
                "factor": "pile up" in str(err) or "not a finite number" in str(err)}
        assert (said["T_eff = 0"] and collapses) or (said["factor"] and extreme), str(err)
        event("refused: " + ("T_eff <= 0" if collapses else "shifted draws pile up"))
        return
    assert not (collapses or extreme), (c, factors)
    event("accepted")


# --- hostile values on a valid configuration ----------------------------------------------------------------

HOSTILE = [True, False, "3", "x", None, math.nan, math.inf, -math.inf, 1e308, -1e308, 0, -1, [1], {"a": 1},
           torch.tensor(2.0), b"1", 2**70, np.float64("nan")]


@hypothesis_settings(max_examples=max(EXAMPLES // 2, 1), deadline=None,
                     derandomize="PROPERTY_EXAMPLES" not in os.environ, suppress_health_check=[HealthCheck.too_slow])
@given(c=configs(), batch=batches(), data=st.data())
def test_a_hostile_value_is_refused_by_name_or_trains_validly(c, batch, data):
    meta, latent = batch
    key = data.draw(st.sampled_from(sorted(set(c) - {"backend", "num_sampling_steps"})), label="key")
    c[key] = data.draw(st.sampled_from(HOSTILE), label="value")
    try:
        with quiet():
            scheduler = RFlowTimeShift(**c)
    except (ValueError, TypeError) as err:
        assert key in str(err) or any(name in str(err) for name in c), (key, c[key], str(err))
        event("refused when built")
        return
    x = torch.randn(*latent)
    model = StubModel()
    try:
        with quiet():
            loss = scheduler.training_losses(model, x, dict(meta))["loss"]
    except ValueError as err:  # the guard, or a latent smaller than one token
        assert ("T_eff" in str(err) or "pile up" in str(err) or "not a finite number" in str(err)
                or "holds no token" in str(err)), str(err)
        event("refused at the step")
        return
    except RuntimeError as err:
        assert "shift factor is negative or not finite" in str(err), str(err)
        event("stopped at the step")
        return
    event("accepted and trained")
    t = model.seen[0].double()
    assert bool(loss.isfinite().all()) and bool(((t >= 0) & (t <= scheduler.num_timesteps)).all()), (c, t)
