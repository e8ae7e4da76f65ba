"""The guard judges the shifted distribution: the share of draws within PILE_EPS of an end, from hand formulas."""

from __future__ import annotations

import math
import warnings

import numpy as np
import pytest
import torch

import opensora_timeshift_patch as ots
from opensora_timeshift_patch import MetaError, Recipe, TimestepShift
from opensora_timeshift_patch.guard import PILE_EPS, PILE_POINTS, PILE_SHARE, end_shares, judge, piled_up
from opensora_timeshift_patch.opensora2 import Opensora2Timesteps
from opensora_timeshift_patch.sampling import TimestepDistribution
from opensora_timeshift_patch.shift import exponential_shift, rational_shift

EPS = PILE_EPS
GRID = 0.5 / PILE_POINTS + 1e-12  # midpoint uniforms count a share to within half a cell


def phi(x: float) -> float:
    return 0.5 * (1 + math.erf(x / math.sqrt(2)))


def logit(p: float) -> float:
    return math.log(p / (1 - p))


def _draw(distribution):
    """A distribution as the guard's base draw (u, factor) -> t: the same draw for every factor."""
    return lambda u, a: distribution(u)


def batch(h, w, n):
    return {k: torch.tensor([float(v)]) for k, v in zip(("height", "width", "num_frames"), (h, w, n))}


@pytest.mark.parametrize("a", [0.001, 0.3, 5.0, 100.0, 999.0, 3000.0])
def test_uniform_rational_shares_match_the_closed_form(a):
    # t' = a t / (1 + (a - 1) t) inverts to t = t' / (a - (a - 1) t'), so for uniform t
    # P(t' < eps) = eps / (a - (a - 1) eps) and P(t' > 1 - eps) = 1 - (1 - eps) / (1 + (a - 1) eps).
    low, high = end_shares(_draw(TimestepDistribution("uniform")), rational_shift, [a])
    assert abs(low[0] - EPS / (a - (a - 1) * EPS)) <= GRID
    assert abs(high[0] - a * EPS / (1 + (a - 1) * EPS)) <= GRID


def test_uniform_rational_piles_up_exactly_past_a_999():
    # a eps / (1 + (a - 1) eps) = 1/2 at a = (1 - eps) / eps = 999 for eps = 1/1000.
    assert PILE_SHARE == 0.5 and EPS == 1e-3
    shares = end_shares(_draw(TimestepDistribution("uniform")), rational_shift, [990.0, 1010.0, 1 / 990, 1 / 1010])
    assert piled_up(*shares).tolist() == [False, True, False, True]


def test_logit_normal_shares_shift_the_logit_by_ln_a():
    # logit(t') = logit(t) + ln a, so P(t' > 1 - eps) = 1 - Phi((logit(1 - eps) - loc - ln a) / scale).
    loc, scale, a = 2.0, 1.5, 100.0
    low, high = end_shares(_draw(TimestepDistribution("logit-normal", loc=loc, scale=scale)), rational_shift, [a])
    assert abs(high[0] - (1 - phi((logit(1 - EPS) - loc - math.log(a)) / scale))) <= GRID
    assert abs(low[0] - phi((logit(EPS) - loc - math.log(a)) / scale)) <= GRID


def test_exponential_family_shares():
    # a / (a + (1/t - 1)^s) > 1 - eps  <=>  t > 1 / (1 + (a eps / (1 - eps))^(1/s)), for uniform t.
    a, s = 40.0, 2.0
    curve = lambda t, f: exponential_shift(t, f, s)  # noqa: E731
    _, high = end_shares(_draw(TimestepDistribution("uniform")), curve, [a])
    assert abs(high[0] - (1 - 1 / (1 + (a * EPS / (1 - EPS)) ** (1 / s)))) <= GRID


# --- the rule on every surface -----------------------------------------------------------------------------------

PAST_100 = dict(sample_method="logit-normal", loc=-2.0, shift_mode="latent", transform_scale=4.0)
# 1080p, 408 frames: T_eff = 120 latent frames, a = sqrt(1080 * 1920 / 512^2) sqrt(120) 4 ~ 123.2; the shifted median
# is sigmoid(-2 + ln a) ~ 0.943 and the share near 1 is 1 - Phi(logit(0.999) + 2 - ln a) ~ 1.5e-3.
A_PAST_100 = math.sqrt(1080 * 1920 / 512 ** 2) * math.sqrt(120) * 4
PILED = dict(sample_method="logit-normal", loc=4.0, resolution_shift="constant", shift=20.0)
# share near 1 = 1 - Phi(logit(0.999) - 4 - ln 20) = 1 - Phi(-0.089) ~ 0.535 > 1/2, with a = 20 well inside [0.01, 100]


def test_a_factor_past_100_whose_distribution_stays_meaningful_is_accepted():
    recipe = Recipe(PAST_100)
    v = judge(recipe.shift, 1080, 1920, 408)
    assert v.kind == "ok" and v.message == "" and v.factor == pytest.approx(A_PAST_100, rel=1e-6)
    _, high = end_shares(recipe.base_draw, rational_shift, [v.factor])
    assert abs(high[0] - (1 - phi(logit(1 - EPS) + 2 - math.log(v.factor)))) <= GRID
    out = recipe.shift(torch.full((1,), 500.0), batch(1080, 1920, 408), num_timesteps=1000)  # the 1.x step
    assert float(out) == pytest.approx(1000 * A_PAST_100 * 0.5 / (1 + (A_PAST_100 - 1) * 0.5), rel=1e-5)
    # The 2.0 hooks: 4K, 129 frames, 2.0's own logit-normal(0, 1): alpha = lin(32400) sqrt(33) ~ 102 trains as
    # stock 2.0 trains it (share near 1: 1 - Phi(logit(0.999) - ln 102) ~ 1.1%).
    alpha = ((3 - 1) / (4096 - 256) * 32400 + (1 - (3 - 1) / (4096 - 256) * 256)) * math.sqrt(33)
    assert Opensora2Timesteps().factor(33, 32400) == pytest.approx(alpha) and alpha > 100


def test_without_a_base_distribution_the_factor_bound_stays():
    # A bare TimestepShift knows no distribution: it keeps refusing past [0.01, 100], as before.
    bare = TimestepShift("latent", transform_scale=4.0)
    assert judge(bare, 1080, 1920, 408).kind == "refused"
    assert "outside [0.01, 100]" in judge(bare, 1080, 1920, 408).message


def pile_core(message: str) -> str:
    """The surface-independent part of the pile-up sentence."""
    return message[message.index("pile up:"):message.index("Check the meta")]


def test_a_factor_inside_the_bound_that_piles_up_is_refused_with_one_message_everywhere():
    share = 1 - phi(logit(1 - EPS) - 4.0 - math.log(20.0))
    recipe = Recipe(PILED)
    v = judge(recipe.shift, 512, 512, 1)
    assert v.kind == "refused" and math.isnan(v.factor)
    expected = (f"pile up: with shift factor 20, {share:.1%} of the draws lie within 0.001 of t = 1 (noise), more "
                "than the 50% allowed, so training would see almost only that end. ")
    assert pile_core(v.message) == expected
    with pytest.raises(MetaError) as err:  # the 1.x training step
        recipe.shift(torch.full((1,), 500.0), batch(512, 512, 1), num_timesteps=1000)
    assert pile_core(str(err.value)) == expected
    with pytest.raises(MetaError) as err:  # the 2.0 hooks
        Opensora2Timesteps(**PILED).factor(1, 880)
    assert pile_core(str(err.value)) == expected


def test_ignore_keeps_a_piled_bucket_with_a_note_and_clamp_keeps_its_bound():
    ignore = judge(Recipe({**PILED, "on_degenerate": "ignore"}).shift, 512, 512, 1)
    assert ignore.kind == "ok" and ignore.factor == 20.0 and ignore.message.startswith("note: the shifted timesteps")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        clamp = judge(Recipe({**PAST_100, "on_degenerate": "clamp"}).shift, 1080, 1920, 408)
    assert clamp.kind == "clamped" and clamp.factor == 100.0  # clamp's steps look at nothing: the bound decides


def test_the_verdict_is_cached_per_factor_not_recomputed_each_step(monkeypatch):
    recipe = Recipe(PAST_100)
    calls = []
    real = ots.guard.end_shares
    monkeypatch.setattr(ots.guard, "end_shares", lambda *a, **k: calls.append(1) or real(*a, **k))
    for h, w in ((1080, 1920), (1080, 1920), (1920, 1080), (720, 1280), (1080, 1920)):
        recipe.shift(torch.full((1,), 500.0), batch(h, w, 408), num_timesteps=1000)
    assert len(calls) == 2  # one judgement per factor when first seen (1920 x 1080 has 1080 x 1920's factor)


def test_inspect_and_audit_say_the_same_pile_up_sentence(capsys, tmp_path):
    from opensora_timeshift_patch.cli import main

    share = 1 - phi(logit(1 - EPS) - 4.0 - math.log(20.0))
    expected = (f"pile up: with shift factor 20, {share:.1%} of the draws lie within 0.001 of t = 1 (noise), more "
                "than the 50% allowed, so training would see almost only that end. ")
    code = main(["inspect", "--frames", "1", "--resolution", "512x512", "--mode", "latent", "--sample-method",
                 "logit-normal", "--loc", "4", "--set", "resolution_shift=constant", "shift=20"])
    out = capsys.readouterr().out
    assert code == 0 and "refused by the guard" in out and pile_core(out) == expected
    cfg = tmp_path / "cfg.py"
    cfg.write_text('bucket_config = {"512": {1: (1.0, 5)}}\nscheduler = dict(type="rflow-timeshift", '
                   'sample_method="logit-normal", loc=4.0, resolution_shift="constant", shift=20.0)\n')
    code = main(["audit", "--config", str(cfg)])
    out = capsys.readouterr().out
    assert code == 1 and pile_core(out) == expected
