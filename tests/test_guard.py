"""The guard: one table decides ok / clamped / collapsed / refused, and every surface says the same sentence."""

from __future__ import annotations

import math
import warnings

import numpy as np
import pytest
import torch

from opensora_timeshift_patch import MetaError, TimestepShift
from opensora_timeshift_patch.guard import HIGH, LOW, Verdict, classify, judge

MODES = ("error", "clamp", "ignore")
SPATIAL_720P = math.sqrt(720 * 1280 / (512 * 512))  # 1.875, Open-Sora 1.2's resolution factor at 720p


def shift(mode: str, on: str, **settings) -> TimestepShift:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the clamp warning, said once at set-up
        return TimestepShift(mode, on, **settings)


def meta(h, w, n):
    return {k: torch.tensor([float(v)]) for k, v in zip(("height", "width", "num_frames"), (h, w, n))}


def f32_factor(h: float, w: float, t_eff: float) -> float:
    """Open-Sora 1.2's factor sqrt(H W / 512^2) sqrt(T_eff), in float32 as training computes it."""
    area = np.float32(h) * np.float32(w) / np.float32(512 * 512)
    return float(np.sqrt(area) * np.sqrt(np.float32(t_eff)))


# --- the table, on judge: one clip, hand-computed numbers -------------------------------------------------------

def test_latent_720p_51_frames_is_ok_in_every_mode():
    for on in MODES:  # latent: 51 // 17 * 5 + ceil(0 / 4) = 15 latent frames
        v = judge(shift("latent", on), 720, 1280, 51)
        assert v == Verdict("ok", f32_factor(720, 1280, 15), 15.0, "")
        assert v.factor == pytest.approx(SPATIAL_720P * math.sqrt(15), rel=1e-6)


def test_legacy_16_frames_collapses_each_mode_its_own_way():
    # Open-Sora 1.2: 16 // 17 * 5 = 0, so the factor is 0 and every t is 0.
    error, clamp, ignore = (judge(shift("legacy", on), 720, 1280, 16) for on in MODES)
    assert (error.kind, math.isnan(error.factor), error.t_eff) == ("refused", True, 0.0)
    assert "gives T_eff = 0 for num_frames=16 (sample 0)" in error.message
    assert (clamp.kind, clamp.factor, clamp.t_eff) == ("clamped", 1.875, 0.0)  # shifted as T_eff = 1
    assert "on_degenerate='clamp' shifts it as T_eff = 1 (a = 1.875)" in clamp.message
    assert (ignore.kind, ignore.factor, ignore.t_eff) == ("collapsed", 0.0, 0.0)  # stock's numbers
    assert "every timestep collapses to t = 0" in ignore.message


def test_v13_three_frames_and_images():
    # Open-Sora 1.3: (3 - 1) // 4 = 0; images are 1 in every policy.
    assert judge(shift("v13", "error"), 256, 256, 3).kind == "refused"
    assert judge(shift("v13", "error"), 256, 256, 1) == Verdict("ok", 0.5, 1.0, "")  # sqrt(65536 / 262144)


@pytest.mark.parametrize("side, expected", [
    (51200, {"error": "ok", "clamp": "ok", "ignore": "ok"}),  # a = 51200 / 512 = 100 exactly: inside
    (51204, {"error": "refused", "clamp": "clamped", "ignore": "ok"}),  # a = 100.0078
    (5.12, {"error": "ok", "clamp": "ok", "ignore": "ok"}),  # a = float32(0.01), the bound itself
    (5, {"error": "refused", "clamp": "clamped", "ignore": "ok"}),  # a = 5 / 512 = 0.00977
])
def test_factor_bounds(side, expected):
    a = f32_factor(side, side, 1)
    inside = np.float32(LOW) <= a <= np.float32(HIGH)  # compared in the factor's own dtype, float32
    for on in MODES:
        v = judge(shift("latent", on), side, side, 1)
        assert v.kind == expected[on], on
        if v.kind == "ok":
            assert v.factor == a
            assert (v.message == "") == inside  # "ignore" notes an extreme factor
        elif v.kind == "clamped":
            assert v.factor == float(np.float32(HIGH if a > 1 else LOW))  # what float32 training applies
            assert f"clamps it to {'100' if a > 1 else '0.01'}" in v.message
    end = "N" if a > 1 else "0"
    if not inside:
        assert judge(shift("latent", "error"), side, side, 1).message.endswith(
            "on_degenerate='clamp' clamps the factor into that range")
        assert f"its timesteps would pile up at {end}." in judge(shift("latent", "error"), side, side, 1).message
        assert judge(shift("latent", "ignore"), side, side, 1).message.startswith(
            f"note: the shift factor a = {a:.6g} for sample 0")


@pytest.mark.parametrize("h, w, n, why", [
    (720, 1280, math.nan, "num_frames=nan (sample 0) is not a valid frame count"),
    (720, 1280, math.inf, "num_frames=inf (sample 0) is not a valid frame count"),
    (720, 1280, 0, "num_frames=0 (sample 0) is not a valid frame count"),
    (720, 1280, -4, "num_frames=-4 (sample 0) is not a valid frame count"),
    (720, 1280, 16.5, "num_frames=16.5 (sample 0) is not a valid frame count"),
    (0, 1280, 51, "height x width = 0 x 1280 (sample 0) is not a valid resolution"),
    (-720, -1280, 51, "height x width = -720 x -1280 (sample 0) is not a valid resolution"),
    (math.nan, 1280, 51, "is not a valid resolution"),
    (math.inf, 1280, 51, "is not a valid resolution"),
    (2e19, 2e19, 51, "product finite in float32"),  # 4e38 overflows float32
])
def test_invalid_meta_is_refused_in_every_mode(h, w, n, why):
    for on in MODES:
        v = judge(shift("latent", on), h, w, n)
        assert v.kind == "refused" and math.isnan(v.factor) and math.isnan(v.t_eff), on
        assert why in v.message


def test_the_dtype_decides_what_overflows():
    # 2e19 squared is finite in float64 (Open-Sora 2.0 computes there): then it is the factor that is out of range.
    v = judge(shift("latent", "error"), 2e19, 2e19, 1, dtype=np.float64)
    assert v.kind == "refused" and "outside [0.01, 100]" in v.message
    assert judge(shift("latent", "clamp"), 2e19, 2e19, 1, dtype=np.float64).factor == 100.0


@pytest.mark.parametrize("value", ["720", None, True, [720], torch.tensor(720.0)])
def test_judge_never_raises_for_user_meta(value):
    for on in MODES:
        v = judge(shift("latent", on), value, 1280, 51)
        assert v.kind == "refused" and "meta height=" in v.message


def test_linear_rule_without_tokens_is_refused_not_raised():
    v = judge(shift("latent", "error", resolution_shift="linear"), 720, 1280, 51, latent_frames=15, tokens=0)
    assert v.kind == "refused" and "holds no token" in v.message


def test_where_gives_opensora2_wording():
    s = shift("legacy", "error", resolution_shift="linear")
    v = judge(s, 1, 1, 16, latent_frames=5, tokens=880, where="a latent of 5 frames and 880 tokens", dtype=np.float64)
    assert v.kind == "refused"
    assert v.message == ("shift_mode='legacy' gives T_eff = 0 for a latent of 5 frames and 880 tokens: every timestep "
                         "would collapse to t = 0. Use shift_mode='latent' (2.0's rule), or on_degenerate='clamp' to "
                         "shift such clips as T_eff = 1")


# --- classify on arrays: the decision itself --------------------------------------------------------------------

def test_classify_table():
    # One column per row of the table: ok; T_eff 0 (factor 0); T_eff 0 with a factor in range (a linear rule
    # counting the clip's tokens); factor -1; factor nan; factor inf; just below 0.01; just above 100; invalid frames.
    n = np.array([17, 16, 16, 17, 17, 17, 17, 17, 2.5])
    t_eff = np.array([5, 0, 0, 5, 5, 5, 5, 5, 0])
    a = np.array([2.0, 0.0, 2.0, -1.0, np.nan, np.inf, np.nextafter(LOW, 0), np.nextafter(HIGH, np.inf), 1.0])
    h = w = np.full(9, 512.0)
    assert classify("error", n, h, w, t_eff, a).tolist() == ["ok"] + ["refused"] * 8
    assert classify("clamp", n, h, w, t_eff, a).tolist() == [
        "ok", "clamped", "clamped", "refused", "refused", "refused", "clamped", "clamped", "refused"]
    assert classify("ignore", n, h, w, t_eff, a).tolist() == [
        "ok", "collapsed", "ok", "refused", "refused", "refused", "ok", "ok", "refused"]


def test_classify_bounds_are_inclusive_and_numbers_broadcast():
    for on in MODES:
        assert classify(on, 17, 512, 512, 5, np.array([LOW, HIGH, 1.0])).tolist() == ["ok"] * 3
    with pytest.raises(ValueError, match="on_degenerate='bogus' is not allowed"):
        classify("bogus", 17, 512, 512, 5, 1.0)


# --- the training step says what judge says ---------------------------------------------------------------------

@pytest.mark.parametrize("mode, h, w, n", [
    ("legacy", 720, 1280, 16),
    ("v13", 256, 256, 3),
    ("latent", 51204, 51204, 1),
    ("latent", 5, 5, 1),
    ("latent", 720, 1280, math.nan),
    ("latent", 720, 1280, 16.5),
    ("latent", 0, 1280, 51),
    ("latent", 2e19, 2e19, 51),
])
def test_training_error_is_judges_message(mode, h, w, n):
    s = shift(mode, "error")
    with pytest.raises(MetaError) as err:
        s(torch.tensor([0.5]), meta(h, w, n))
    assert str(err.value) == judge(s, h, w, n).message
    with pytest.raises(MetaError) as err:
        s.shift_factor(meta(h, w, n))
    assert str(err.value) == judge(s, h, w, n).message


def test_training_factor_is_judges_factor():
    for mode, on, (h, w, n) in [("latent", "error", (720, 1280, 51)), ("legacy", "clamp", (720, 1280, 16)),
                                ("latent", "clamp", (51204, 51204, 1)), ("legacy", "ignore", (720, 1280, 16))]:
        s = shift(mode, on)
        _, ratio = s(torch.tensor([0.5]), meta(h, w, n), ret_ratio=True)
        assert ratio.item() == judge(s, h, w, n).factor, (mode, on)


def test_a_mixed_batch_names_its_bad_sample():
    s = shift("legacy", "error")
    batch = {"height": torch.full((3,), 720.0), "width": torch.full((3,), 1280.0),
             "num_frames": torch.tensor([51.0, 17.0, 16.0])}
    with pytest.raises(MetaError, match=r"gives T_eff = 0 for num_frames=16 \(sample 2\)"):
        s(torch.full((3,), 0.5), batch)


def test_a_judged_batch_is_kept_but_never_a_refusal():
    s = shift("latent", "error")
    good, bad = meta(720, 1280, 51), meta(720, 1280, math.nan)
    first, ratio = s(torch.tensor([0.5]), good, ret_ratio=True)
    ratio.mul_(0)  # the caller's copy: the kept factor must not change
    assert torch.equal(s(torch.tensor([0.5]), good), first)
    for _ in range(2):
        with pytest.raises(MetaError, match="not a valid frame count"):
            s(torch.tensor([0.5]), bad)
    with pytest.raises(MetaError, match="a timestep is outside"):  # t is checked every call, kept meta or not
        s(torch.tensor([1.5]), good)
