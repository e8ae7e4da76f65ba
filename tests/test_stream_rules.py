"""The per-sample stream meets per-bucket rules and Open-Sora 1.3's redraw: expected timesteps by hand.

``timestep_rng="per_sample"`` draws sample i's uniform at step k as ``counter_uniform(seed, k, i)`` (one process:
global index i), a pure function documented in :mod:`opensora_timeshift_patch.sampling`. Everything after the
uniform is computed here from the formulas: the inverse CDF of the distribution of the rule the sample falls under,
the rule's shift factor, the shift curve, and 1.3's redraw ``u2 (1 - threshold) + threshold`` with the redraw's
own uniforms, lane 2 of the stream. Timesteps are read where the model sees them (``training_losses``).
"""

import math
from statistics import NormalDist

import pytest
import torch

import opensora_timeshift_patch as ots
from opensora_timeshift_patch.sampling import counter_uniform, stratified_uniform
from standin.stubs import StubModel

N = 1000
PHI = NormalDist()


def sigmoid(x):
    return 1 / (1 + math.exp(-x))


def logit_normal(u, loc, scale):
    return sigmoid(loc + scale * PHI.inv_cdf(u))


def cosmap(u):
    return 1 - 1 / (math.tan(math.pi / 2 * u) + 1)


def rational(t, a):
    return a * t / (1 + (a - 1) * t)


def exponential(t, mu_factor, sigma):
    return mu_factor / (mu_factor + (1 / t - 1) ** sigma)


def seen_timesteps(scheduler, x, meta, steps=1):
    """The timesteps the model is called with, one list per training step."""
    out = []
    for _ in range(steps):
        model = StubModel()
        scheduler.training_losses(model, x, meta)
        out.append(model.seen[0].double().tolist())
    return out


# One batch of mixed clips: (height, width, num_frames) per sample. Images fall under rule 0, 51 frames under
# rule 1, 16-frame clips under no rule (the scheduler's own settings).
CLIPS = [(256, 256, 1), (720, 1280, 16), (512, 512, 1), (480, 854, 51), (256, 256, 16), (720, 1280, 1)]
META = {key: torch.tensor([float(clip[i]) for clip in CLIPS]) for i, key in enumerate(("height", "width", "num_frames"))}
X = torch.zeros(len(CLIPS), 4, 5, 4, 4)
RULES = [
    dict(frames=1, sample_method="logit-normal", loc=0.3, scale=0.9, resolution_shift="constant", shift=2.5),
    dict(frames=(40, None), sample_method="cosmap", shift_family="exponential", shift_sigma=1.5,
         resolution_shift="constant", shift=0.7, temporal_exponent=0.25),
]
SEED = 1234


def expected_with_rules(u):
    """Sample by sample: the owning rule's inverse CDF of u, then its shift, on the 0..N scale."""
    out = []
    for (h, w, n), ui in zip(CLIPS, u):
        if n == 1:  # rule 0: logit-normal(0.3, 0.9), constant a = 2.5 (T_eff = 1 for images)
            out.append(N * rational(logit_normal(ui, 0.3, 0.9), 2.5))
        elif n >= 40:  # rule 1: cosmap, exponential family, a = e^0.7 * T_eff^0.25 with v13's T_eff = (n - 1) // 4
            out.append(N * exponential(cosmap(ui), math.exp(0.7) * ((n - 1) // 4) ** 0.25, 1.5))
        else:  # the scheduler's own: uniform, v13, a = sqrt(H W / 512^2) * sqrt(T_eff)
            a = math.sqrt(h * w / 512**2) * math.sqrt((n - 1) // 4)
            out.append(N * rational(ui, a))
    return out


def test_per_sample_stream_drives_each_rule_own_distribution_and_shift():
    scheduler = ots.RFlowTimeShift(shift_mode="v13", timestep_rng="per_sample", timestep_seed=SEED,
                                   bucket_settings=RULES)
    index = torch.arange(len(CLIPS))
    for step, got in enumerate(seen_timesteps(scheduler, X, META, steps=2)):
        u = counter_uniform(SEED, step, index).tolist()
        assert got == pytest.approx(expected_with_rules(u), rel=1e-5)


def test_per_sample_stratified_uniforms_reach_the_rules():
    """Stratified on one rank: u_i = (u0 + i / B) mod 1, one u0 per step."""
    scheduler = ots.RFlowTimeShift(shift_mode="v13", timestep_rng="per_sample", timestep_seed=SEED, stratified=True,
                                   bucket_settings=RULES)
    b = len(CLIPS)
    for step, got in enumerate(seen_timesteps(scheduler, X, META, steps=2)):
        u0 = stratified_uniform(SEED, step, 0, 1, 1).item()
        u = [(u0 + i / b) % 1 for i in range(b)]
        assert got == pytest.approx(expected_with_rules(u), rel=1e-5)


def test_per_sample_rules_with_t_range_both_modes():
    """A rule's t_range under per_sample: truncate conditions the logit-normal on the range (F^-1 of a uniform
    between F(t_min) and F(t_max)); rescale squeezes the uniform into it."""
    rules = [dict(frames=1, sample_method="logit-normal", loc=-0.4, scale=1.3, t_range=(0.2, 0.7)),
             dict(frames=(2, None), t_range=(0.1, 0.5), t_range_mode="rescale")]
    scheduler = ots.RFlowTimeShift(shift_mode="frames16", timestep_rng="per_sample", timestep_seed=7,
                                   bucket_settings=rules)
    got = seen_timesteps(scheduler, X, META)[0]
    u = counter_uniform(7, 0, torch.arange(len(CLIPS))).tolist()

    def cdf(t):
        return PHI.cdf((math.log(t / (1 - t)) + 0.4) / 1.3)

    want = []
    for (h, w, n), ui in zip(CLIPS, u):
        space = math.sqrt(h * w / 512**2)
        if n == 1:
            lo, hi = cdf(0.2), cdf(0.7)
            want.append(N * rational(logit_normal(lo + (hi - lo) * ui, -0.4, 1.3), space))
        else:
            want.append(N * rational(0.1 + 0.4 * ui, space * math.sqrt(n // 16 * 4)))
    assert got == pytest.approx(want, rel=1e-5)


def test_global_rng_rules_map_one_uniform_per_sample():
    """Under the global RNG a batch with rules draws one float64 uniform per sample, as every non-stock draw."""
    scheduler = ots.RFlowTimeShift(shift_mode="v13", bucket_settings=RULES)
    torch.manual_seed(5)
    u = torch.rand(len(CLIPS), dtype=torch.float64).tolist()
    torch.manual_seed(5)
    got = seen_timesteps(scheduler, X, META)[0]
    assert got == pytest.approx(expected_with_rules(u), rel=1e-5)


# --- Open-Sora 1.3's redraw under the per-sample stream -------------------------------------------------------

THRESHOLD = 0.8
REDRAW_CLIPS = [(720, 1280, 51), (144, 256, 9), (720, 1280, 1), (480, 854, 33), (256, 256, 17), (720, 1280, 113),
                (512, 512, 5), (256, 256, 1)]
REDRAW_META = {key: torch.tensor([float(c[i]) for c in REDRAW_CLIPS])
               for i, key in enumerate(("height", "width", "num_frames"))}
REDRAW_X = torch.zeros(len(REDRAW_CLIPS), 4, 5, 4, 4)


def expected_redraw(u, u2):
    """v13's shift of uniform t, then videos above the threshold redrawn as u2 (1 - thr) + thr; images kept."""
    out, redrawn = [], []
    for (h, w, n), ui, vi in zip(REDRAW_CLIPS, u, u2):
        a = math.sqrt(h * w / 512**2) * (math.sqrt((n - 1) // 4) if n > 1 else 1.0)
        t = rational(ui, a)
        if n != 1 and t > THRESHOLD:
            t = vi * (1 - THRESHOLD) + THRESHOLD
            redrawn.append(True)
        else:
            redrawn.append(False)
        out.append(N * t)
    return out, redrawn


@pytest.mark.parametrize("stratified", [False, True])
def test_per_sample_redraw_draws_its_own_lane(stratified):
    """The redraw's uniforms are lane 2 of the stream, counter_uniform(seed, step, i, lane=2), whether or not the
    base uniforms are stratified: never the base uniforms again (a redrawn t would then be a function of its own
    draw)."""
    scheduler = ots.RFlowTimeShift(shift_mode="v13", scale_images=False, uniform_over_threshold=THRESHOLD,
                                   timestep_rng="per_sample", timestep_seed=SEED, stratified=stratified)
    index = torch.arange(len(REDRAW_CLIPS))
    redrawn_any, kept_video, kept_image_above = False, False, False
    for step, got in enumerate(seen_timesteps(scheduler, REDRAW_X, REDRAW_META, steps=2)):
        if stratified:
            u0 = stratified_uniform(SEED, step, 0, 1, 1).item()
            u = [(u0 + i / len(index)) % 1 for i in range(len(index))]
        else:
            u = counter_uniform(SEED, step, index).tolist()
        u2 = counter_uniform(SEED, step, index, lane=2).tolist()
        want, redrawn = expected_redraw(u, u2)
        reused, _ = expected_redraw(u, u)
        assert all(abs(a - b) > 1 for a, b, r in zip(want, reused, redrawn) if r)  # the lanes are told apart
        assert got == pytest.approx(want, rel=1e-5)
        redrawn_any |= any(redrawn)
        kept_video |= any(n != 1 and not r for (_, _, n), r in zip(REDRAW_CLIPS, redrawn))
        kept_image_above |= any(n == 1 and t > THRESHOLD * N for (_, _, n), t in zip(REDRAW_CLIPS, want))
    # the batches reach every branch: videos redrawn and kept, and an image above the threshold kept
    assert redrawn_any and kept_video and kept_image_above
