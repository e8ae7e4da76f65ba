"""Named recipes: the sampling schedules against the models' own code (goldens recorded by
scripts/record_model_schedules.py), the expansion into settings, and the README table."""

import json
import math
import re
from pathlib import Path

import pytest

from opensora_timeshift_patch.core import Recipe
from opensora_timeshift_patch.recipes import CONFIDENCE, RECIPES, expand, recipes_table, sigmas
from opensora_timeshift_patch.settings import SETTINGS, SettingError

GOLDENS = json.loads((Path(__file__).parent / "data" / "model_schedules.json").read_text(encoding="utf-8"))
COUNTS_PIXELS = {"ltx-video-0.9", "ltx-2", "ltx-2-hq"}
SECTIONS = tuple(k for k, v in GOLDENS.items() if isinstance(v, dict) and "recipes" in v)


def golden_cases():
    for section in SECTIONS:
        for name, cases in GOLDENS[section]["recipes"].items():
            for case in cases:
                yield pytest.param(name, case, id=f"{name}-{case['steps']}-{case['height']}x{case['width']}x"
                                                  f"{case['frames']}")


def test_every_recipe_has_a_golden_and_every_golden_a_recipe():
    recorded = {name for s in SECTIONS for name in GOLDENS[s]["recipes"]}
    assert recorded == set(RECIPES)


@pytest.mark.parametrize("name, case", list(golden_cases()))
def test_the_schedule_is_the_models_own(name, case):
    ours = sigmas(name, case["steps"], case["height"], case["width"], case["frames"])
    assert len(ours) == case["steps"] + 1 == len(case["sigmas"])
    # the models compute in float32 (torch.linspace) or float64 (numpy): equal to float32's precision
    assert ours == pytest.approx(case["sigmas"], rel=2e-6, abs=1e-7)
    # LTX-2's own first sigma is 1 - 2^-22; Wan's UniPC grid starts at its largest training sigma 0.999, shifted
    assert 0.999 <= ours[0] <= 1.0 and ours[-1] == 0.0


# Wan 2.1's maintainers (Wan2.1 issue #291): "For 480p video training, set flow_shift to 2", logit-normal
WAN21_TRAINED_AT = {"wan2.1-t2v-480p": 2.0, "wan2.1-i2v-480p": 2.0}


@pytest.mark.parametrize("name, case", [p.values for p in golden_cases() if "shift" in p.values[1]])
def test_a_constant_recipe_trains_at_the_models_own_sampling_shift(name, case):
    # or, where the maintainers said how they trained, at that
    training = RECIPES[name].training
    assert training["resolution_shift"] == "constant"
    assert training["shift"] == WAN21_TRAINED_AT.get(name, case["shift"])
    if name.startswith("wan2.1"):
        assert training["sample_method"] == "logit-normal" and RECIPES[name].training_confidence == (
            "maintainer statement") and "#291" in RECIPES[name].source


def test_wan22_boundaries_are_the_configs():
    for name, boundary in GOLDENS["wan22"]["boundaries"].items():
        assert RECIPES[name].extra.get("boundary") == boundary


def test_hand_derived_points():
    # Wan 2.2 T2V-A14B, 4 steps: 12 t / (1 + 11 t) on UniPC's grid from s = float32(0.999): t = s, 3s/4, s/2, s/4
    s = 0.9990000128746033
    assert sigmas("wan2.2-t2v-a14b", 4, 720, 1280, 81) == pytest.approx(
        [12 * t / (1 + 11 * t) for t in (s, 3 * s / 4, s / 2, s / 4)] + [0], rel=1e-7)
    # Open-Sora 2.0 at 768x768 x 1 frame: 48 * 48 = 2304 tokens, alpha = 1 + 2 (2304 - 256) / 3840
    alpha = 1 + 2 * 2048 / 3840
    assert sigmas("opensora-2.0", 2, 768, 768, 1)[1] == pytest.approx(alpha * 0.5 / (1 + (alpha - 1) * 0.5))
    # Flux at 1024x1024: 4096 tokens, mu = 1.15, sigma at t = 1/2 is e^mu / (e^mu + 1)
    assert sigmas("flux", 2, 1024, 1024, 1)[1] == pytest.approx(1 / (1 + math.exp(-1.15)))
    # Open-Sora 1.2 at 512x512 x 34 frames: T = 34 // 17 * 5 = 10, factor sqrt(10); 1.3 at 17 frames: T = 16 // 4
    # = 4, factor 2; an image: factor 1 in both
    a = math.sqrt(10)
    assert sigmas("opensora-1.2", 2, 512, 512, 34)[1] == pytest.approx(a * 0.5 / (1 + (a - 1) * 0.5))
    assert sigmas("opensora-1.3", 2, 512, 512, 17)[1] == pytest.approx(2 / 3)
    assert sigmas("opensora-1.3", 4, 512, 512, 1) == pytest.approx([1, 0.75, 0.5, 0.25, 0])


def test_declarations_are_complete():
    for r in RECIPES.values():
        assert r.confidence in CONFIDENCE and r.source and r.schedule_text and r.training_note
        assert Recipe(dict(recipe=r.name)).recipe is r  # every recipe builds on 1.x, and on 2.0 but for
        if r.name in COUNTS_PIXELS:  # a recipe counting LTX's 32x latent tokens from the pixel size
            with pytest.raises(SettingError, match="spatial_compression=32 has no meaning on Open-Sora 2.0"):
                Recipe(dict(recipe=r.name), release="2.0")
            assert "2.0" in r.training_note
        else:
            assert Recipe(dict(recipe=r.name), release="2.0").recipe is r


def test_the_recipe_expands_and_what_is_beside_it_wins():
    r = Recipe(dict(recipe="wan2.2-t2v-a14b"))
    assert r.recipe is RECIPES["wan2.2-t2v-a14b"]
    assert (r.values["resolution_shift"], r.values["shift"], r.values["temporal_exponent"]) == ("constant", 12.0, 0.0)
    r = Recipe(dict(recipe="wan2.2-t2v-a14b", shift=5.0, sample_method="logit-normal"))
    assert r.values["shift"] == 5.0 and r.values["sample_method"] == "logit-normal"
    assert Recipe({}).recipe is None and Recipe(dict(recipe=None)).recipe is None
    assert expand({"shift_mode": "v13"}) == {"shift_mode": "v13"}


def test_the_expanded_settings_are_judged_as_any():
    with pytest.raises(SettingError, match=r"use_timestep_transform=True .*\(recipe='wan2.1-t2v' sets "
                                           r"sample_method='logit-normal', resolution_shift='constant', shift=5.0, "
                                           r"temporal_exponent=0.0\)"):
        Recipe(dict(recipe="wan2.1-t2v", use_timestep_transform=False))
    with pytest.raises(SettingError, match="resolution_shift='linear'"):
        Recipe(dict(recipe="wan2.1-t2v", max_shift=3.0))


@pytest.mark.parametrize("bad", ["wan", "", 1, 1.5, True, float("nan"), ["flux"], {"flux": 1}, b"flux"])
def test_a_bad_recipe_is_refused_by_name(bad):
    with pytest.raises(SettingError, match=r"recipe=.* is not allowed: use None or one of 'opensora-2.0'"):
        Recipe(dict(recipe=bad))


def test_the_recipe_is_declared_once():
    assert SETTINGS["recipe"].choices == tuple(RECIPES) and SETTINGS["recipe"].default is None


def test_the_readme_lists_every_recipe_as_declared():
    readme = (Path(__file__).resolve().parents[1] / "README.md").read_text(encoding="utf-8")
    assert recipes_table() in readme


def test_hunyuanvideo15_trains_as_its_train_py():
    recorded = GOLDENS["hunyuanvideo15"]["training"]
    eps = recorded["train_eps"]
    for name in GOLDENS["hunyuanvideo15"]["recipes"]:
        values = Recipe(dict(recipe=name)).values
        # the training shift is train.py's, not the sampling shift (validation uses 5.0, inference 2 to 9)
        assert (values["resolution_shift"], values["shift"]) == ("constant", recorded["train_timestep_shift"])
        assert values["t_range"] == (eps, 1 - eps) and values["t_range_mode"] == "rescale"
    assert Recipe(dict(recipe="hunyuanvideo-1.5-480p")).values["sample_method"] == "logit-normal"
    mix = Recipe(dict(recipe="hunyuanvideo-1.5-480p-mix")).distribution
    assert mix.sample_method == "mixture"
    assert [(c.sample_method, c.weight, c.params) for c in mix.params["components"]] == [
        ("logit-normal", 0.7, (("loc", 0.0), ("scale", 1.0))), ("uniform", 0.3, ())]


def test_hunyuanvideo15_draws_as_its_train_py():
    import torch

    # train.py's 'lognorm' at the normal's quantile u: sigmoid(ndtri(u)) * (1 - 2 eps) + eps, before its shift;
    # 'mix' at u < 0.7 follows the logit-normal share, the rest the uniform share (inverse CDF of the mixture)
    u = torch.tensor([0.1, 0.5, 0.9], dtype=torch.float64)
    expected = torch.sigmoid(torch.special.ndtri(u)) * (1 - 2e-5) + 1e-5
    drawn = Recipe(dict(recipe="hunyuanvideo-1.5-720p-t2v")).distribution(u)
    assert drawn.tolist() == pytest.approx(expected.tolist(), rel=1e-12)
    mix = Recipe(dict(recipe="hunyuanvideo-1.5-480p-mix")).distribution
    t = torch.tensor([0.2, 0.5, 0.8], dtype=torch.float64)
    f = 0.7 * torch.special.ndtr(torch.logit((t - 1e-5) / (1 - 2e-5))) + 0.3 * (t - 1e-5) / (1 - 2e-5)
    assert mix.cdf(t).tolist() == pytest.approx(f.tolist(), rel=1e-9)
    # the sampling shift is the resolution's: 9 at 720p T2V, so 9/2 / (1 + 8/2) at the midpoint
    assert sigmas("hunyuanvideo-1.5-720p-t2v", 2, 720, 1280, 121)[1] == pytest.approx(0.9)


def test_sd3_trains_near_diffusers_and_as_the_paper():
    import torch

    recorded = GOLDENS["sd3"]["training"]
    values = Recipe(dict(recipe="sd3")).values
    assert recorded["weighting_scheme"] == "logit_normal"
    assert (values["sample_method"], values["resolution_shift"], values["shift"]) == (
        "logit-normal", "constant", recorded["shift"])
    # diffusers draws u = sigmoid(N(0, 1)) and trains at sigmas[floor(1000 u)] = shift(1 - floor(1000 u) / 1000):
    # the logit-normal at the opposite quantile, shifted, rounded up to a multiple of 1/1000 before the shift
    q = torch.tensor(recorded["quantiles"], dtype=torch.float64)
    ours = Recipe(dict(recipe="sd3")).distribution(1 - q)
    a = recorded["shift"]
    shifted = (a * ours / (1 + (a - 1) * ours)).tolist()
    assert shifted == pytest.approx(recorded["sigmas"], abs=a * 1e-3)
    assert shifted != pytest.approx(recorded["sigmas"], abs=1e-7)  # the rounding the note names


def test_sd3_smallest_sigma_is_shifted_twice():
    # 2 steps: [1, shift(shift(1/1000)), 0] with shift(x) = 3x / (1 + 2x)
    once = 3e-3 / (1 + 2e-3)
    assert sigmas("sd3", 2, 1024, 1024, 1) == pytest.approx([1, 3 * once / (1 + 2 * once), 0])


def test_ltxvideo_hand_derived_and_undefined_at_one_step():
    # 1024x1024 image: 32 * 32 = 1024 tokens, mu = 0.95; 3 steps: t = 1, 2/3, 1/3, s = e^mu / (e^mu + 1/t - 1),
    # then 1 - s stretched so that the last is 0.1
    s = [math.exp(0.95) / (math.exp(0.95) + 1 / t - 1) for t in (1, 2 / 3, 1 / 3)]
    k = (1 - s[-1]) / 0.9
    assert sigmas("ltx-video-0.9", 3, 1024, 1024, 1) == pytest.approx([1, 1 - (1 - s[1]) / k, 0.1, 0])
    with pytest.raises(SettingError, match="steps=1 is not allowed for LTX-Video"):
        sigmas("ltx-video-0.9", 1, 1024, 1024, 1)


@pytest.mark.parametrize("h, w, f, tokens", [(480, 832, 81, 11 * 15 * 26), (1024, 1024, 1, 1024),
                                             (512, 768, 121, 16 * 16 * 24)])
def test_ltxvideo_trains_at_its_sampling_mu_where_expressible(h, w, f, tokens):
    import torch

    # frames 8k + 1, sides multiples of 32: the exponential factor is e^mu with LTX's mu of all latent tokens
    r = Recipe(dict(recipe="ltx-video-0.9"))
    meta = dict(height=torch.tensor([float(h)]), width=torch.tensor([float(w)]), num_frames=torch.tensor([float(f)]))
    mu = 0.95 + (2.05 - 0.95) * (tokens - 1024) / 3072
    assert math.log(r.shift.shift_factor(meta).item()) == pytest.approx(mu, rel=1e-6)


def test_ltx2_training_is_declared_with_its_samplers_own_numbers():
    # the draw itself is tested against the trainer's own sampler in test_shifted_components.py
    recorded = GOLDENS["ltx2"]["training"]
    r = Recipe(dict(recipe="ltx-2"))
    v = r.values
    assert (v["base_seq_len"], v["max_seq_len"], v["base_shift"], v["max_shift"]) == (
        recorded["min_tokens"], recorded["max_tokens"], recorded["min_shift"], recorded["max_shift"])
    stretched, uniform = r.distribution.params["components"]
    assert dict(stretched.params) == {"loc": 0.0, "scale": recorded["std"]}
    assert stretched.weight == pytest.approx(1 - recorded["uniform_prob"])
    assert uniform.weight == pytest.approx(recorded["uniform_prob"])
    sigmoid = lambda z: 1 / (1 + math.exp(-z))  # noqa: E731
    assert stretched.stretch == pytest.approx((sigmoid(recorded["lower_quantile_z"]),
                                               sigmoid(recorded["upper_quantile_z"])), rel=1e-15)
    assert stretched.reflect == recorded["eps"] and uniform.t_range == (recorded["eps"], 1.0)
    assert not uniform.shift and uniform.t_range_mode == "rescale"
    assert "NOT EXACT" not in RECIPES["ltx-2"].training_note
    with pytest.raises(SettingError, match="steps=1 is not allowed for LTX-2"):
        sigmas("ltx-2", 1, 480, 832, 81)


def test_ltx2_schedule_is_one_at_every_size():
    # its pipelines count 4096 tokens whatever the size: mu = 2.05; 2 steps: [1, terminal 0.1, 0]
    assert sigmas("ltx-2", 3, 480, 832, 81) == sigmas("ltx-2", 3, 1024, 1024, 1)
    s = math.exp(2.05) / (math.exp(2.05) + 1 / (2 / 3) - 1)
    low = math.exp(2.05) / (math.exp(2.05) + 1 / (1 / 3) - 1)
    assert sigmas("ltx-2", 3, 720, 1280, 121) == pytest.approx([1, 1 - (1 - s) * 0.9 / (1 - low), 0.1, 0], rel=1e-6)


OPENSORA1 = {"opensora12": ("opensora-1.2", "legacy"), "opensora13": ("opensora-1.3", "v13")}


@pytest.mark.parametrize("section", OPENSORA1)
def test_opensora1_recipes_train_as_their_train_config(section):
    name, mode = OPENSORA1[section]
    recorded = GOLDENS[section]
    r = Recipe(dict(recipe=name))
    assert r.values["sample_method"] == recorded["training"]["sample_method"] == "logit-normal"
    assert r.values["use_timestep_transform"] is recorded["training"]["use_timestep_transform"] is True
    assert r.values["shift_mode"] == mode and r.values["resolution_shift"] == "sqrt"
    assert f"{recorded['inference']['num_sampling_steps']} steps" in RECIPES[name].schedule_text
    # the training shift (the 1.x path the recipe configures) meets stock's own transform at every recorded t
    import torch

    for case in recorded["recipes"][name]:
        meta = {k: torch.tensor([float(case[k])]) for k in ("height", "width")}
        meta["num_frames"] = torch.tensor([float(case["frames"])])
        for i, sigma in enumerate(case["sigmas"][:-1]):
            t = torch.tensor([(1.0 - i / case["steps"]) * 1000])
            assert float(r.shift(t, meta, 1000)[0]) / 1000 == pytest.approx(sigma, rel=2e-6, abs=1e-7)


@pytest.mark.parametrize("section", OPENSORA1)
def test_opensora1_recipes_are_that_release_s_rule_on_opensora2_too(section):
    # On 2.0 a recipe that named only its temporal rule would meet 2.0's token-linear resolution rule: the recipe
    # names its sqrt rule too, so 2.0's drop-in shifts by stock 1.x's own transform (the recorded sigmas).
    import torch

    from opensora_timeshift_patch.opensora2 import Opensora2Timesteps

    name, _ = OPENSORA1[section]
    ts = Opensora2Timesteps(recipe=name)
    for case in GOLDENS[section]["recipes"][name]:
        if case["frames"] == 1 or case["steps"] < 2:
            continue
        alpha = ts.factor(1, 1, (case["frames"], case["height"], case["width"]))  # the sqrt rule reads pixels only
        t = torch.tensor([1.0 - 1 / case["steps"]], dtype=torch.float64)
        assert float(ts.shift.curve(t, alpha)) == pytest.approx(case["sigmas"][1], rel=2e-6)


@pytest.mark.parametrize("section", OPENSORA1)
def test_opensora1_recipes_refuse_where_stock_samples_nan(section):
    import torch

    name, _ = OPENSORA1[section]
    release = name.split("-")[1]
    cases = GOLDENS[section]["nan_at_first_step"]
    assert cases  # the recorder saw stock's NaN there
    for case in cases:
        with pytest.raises(SettingError, match=rf"frames={case['frames']} is not allowed for Open-Sora "
                                               rf"{re.escape(release)}'s schedule .*NaN at its first step"):
            sigmas(name, case["steps"], case["height"], case["width"], case["frames"])
        meta = {"height": torch.tensor([720.0]), "width": torch.tensor([1280.0]),
                "num_frames": torch.tensor([float(case["frames"])])}
        with pytest.raises(ValueError, match="T_eff = 0"):  # training: the guard, as for any settings
            Recipe(dict(recipe=name)).shift(torch.tensor([500.0]), meta, 1000)


def test_ltx2_hq_counts_stage_1s_latent_at_half_the_size():
    # 720x1280, 121 frames: stage 1 at 360x640, latent 16 x 11 x 20 = 3520 tokens (360 // 32 = 11)
    mu = 0.95 + 1.1 * (16 * 11 * 20 - 1024) / 3072
    e = math.exp(mu)
    s = e / (e + 1 / (2 / 3) - 1)
    low = e / (e + 1 / (1 / 3) - 1)
    assert sigmas("ltx-2-hq", 3, 720, 1280, 121) == pytest.approx([1, 1 - (1 - s) * 0.9 / (1 - low), 0.1, 0], rel=1e-6)
    assert sigmas("ltx-2-hq", 3, 720, 1280, 121) != sigmas("ltx-2", 3, 720, 1280, 121)
    assert RECIPES["ltx-2-hq"].training == RECIPES["ltx-2"].training
    with pytest.raises(SettingError, match="too small for LTX-2's HQ pipeline"):
        sigmas("ltx-2-hq", 4, 32, 1280, 121)


def test_a_setting_beside_a_recipe_takes_what_it_deselects_with_it():
    # shift_mode='legacy' beside LTX-2's latent-policy recipe: its micro_frame_size, temporal_compression and causal
    # mean nothing under legacy and go; its linear rule stays. sample_method='uniform': its mixture's components go.
    r = Recipe(dict(recipe="ltx-2", shift_mode="legacy"))
    assert r.values["shift_mode"] == "legacy" and r.values["resolution_shift"] == "linear"
    assert r.shift.policy_params == {}
    r = Recipe(dict(recipe="ltx-2", sample_method="uniform"))
    assert r.distribution.sample_method == "uniform" and r.shifted_components is None
    # and a setting the recipe's selection still means is kept: causal under the latent policy
    assert Recipe(dict(recipe="ltx-2", micro_frame_size=17)).shift.policy_params["causal"] is True
    # a contradiction between settings given is still refused
    with pytest.raises(SettingError, match="micro_frame_size=17 is a parameter of shift_mode 'latent'"):
        Recipe(dict(recipe="ltx-2", shift_mode="legacy", micro_frame_size=17))
