"""Per-bucket settings: rules that give some frame counts and resolutions their own distribution and shift.

Expected numbers come from the shift formula by hand on the same uniform draws: a = sqrt(H W / 512^2) *
T_eff ** e * scale, t' = a t / (1 + (a - 1) t), with Open-Sora 1.3's T_eff = (n - 1) // 4 (1 for images).
"""

import math

import pytest
import torch

import opensora_timeshift_patch as ots
from conftest import meta
from opensora_timeshift_patch.opensora2 import Opensora2Timesteps
from opensora_timeshift_patch.per_bucket import parse_bucket_settings, rule_for
from standin.stubs import StubModel


def rational(a, t):
    return a * t / (1 + (a - 1) * t)


RULES = [dict(frames=1, sample_method="uniform"), dict(frames=(65, None), temporal_exponent=0.0)]


def test_each_sample_is_drawn_and_shifted_by_its_rule():
    scheduler = ots.RFlowTimeShift(sample_method="logit-normal", shift_mode="v13", bucket_settings=RULES)
    x = torch.zeros(3, 4, 5, 8, 8)
    kw = meta(512, 512, [1, 17, 129])
    torch.manual_seed(3)
    t = scheduler.sample_timesteps(x, kw)
    torch.manual_seed(3)
    u = torch.rand(3, dtype=torch.float64)
    image = u[0] * 1000  # uniform, a = 1 at 512 x 512
    video = rational(math.sqrt(4), torch.sigmoid(torch.special.ndtri(u[1]))) * 1000  # the scheduler's own
    long_clip = torch.sigmoid(torch.special.ndtri(u[2])) * 1000  # temporal factor ^ 0: a = 1
    torch.testing.assert_close(t.double(), torch.stack([image, video, long_clip]), rtol=1e-6, atol=1e-4)


def test_sampling_follows_the_rules_too():
    scheduler = ots.RFlowTimeShift(num_sampling_steps=4, shift_mode="v13",
                                   bucket_settings=[dict(frames=1, transform_scale=3.0)])
    z = torch.zeros(2, 4, 5, 8, 8)
    steps = scheduler.sampling_timesteps(z, meta(512, 512, [1, 17]))
    grid = torch.tensor([1.0, 0.75, 0.5, 0.25])
    torch.testing.assert_close(torch.stack([s[0] for s in steps]), rational(3.0, grid) * 1000)
    torch.testing.assert_close(torch.stack([s[1] for s in steps]), rational(2.0, grid) * 1000)


def test_each_guard_judges_only_its_own_samples():
    kw, x = meta(256, 256, [16, 51]), torch.zeros(2, 4, 15, 8, 8)
    with pytest.raises(ValueError, match="T_eff = 0 for num_frames=16"):
        ots.RFlowTimeShift(shift_mode="legacy").sample_timesteps(x, kw)
    fixed = ots.RFlowTimeShift(shift_mode="legacy", bucket_settings=[dict(frames=(2, 16), shift_mode="frames16")])
    t = fixed.sample_timesteps(x, kw)
    assert bool(((t > 0) & (t < 1000)).all())


def test_the_stream_and_the_loss_work_with_rules():
    scheduler = ots.RFlowTimeShift(timestep_rng="per_sample", stratified=True, loss_weighting="cosmap",
                                   bucket_settings=[dict(frames=1, sample_method="beta")])
    x = torch.randn(4, 4, 5, 8, 8)
    kw = meta(256, 256, [1, 1, 17, 17])
    first = scheduler.sample_timesteps(x, kw, step=7)
    assert torch.equal(first, scheduler.sample_timesteps(x, kw, step=7))  # a resume redraws the same
    assert bool(scheduler.training_losses(StubModel(), x, kw)["loss"].isfinite().all())


def test_no_rules_is_exactly_todays_scheduler():
    x, kw = torch.randn(3, 4, 5, 8, 8), meta(720, 1280, [17, 17, 17])
    torch.manual_seed(0)
    plain = ots.RFlowTimeShift().sample_timesteps(x, kw)
    torch.manual_seed(0)
    assert torch.equal(ots.RFlowTimeShift(bucket_settings=None).sample_timesteps(x, kw), plain)


def test_rule_for_names_the_bucket():
    rules = parse_bucket_settings(RULES + [dict(frames=(2, 64), resolution=(921600, None), transform_scale=1.5)])
    assert rule_for(rules, 1, 720, 1280).index == 0
    assert rule_for(rules, 17, 720, 1280).index == 2 and rule_for(rules, 17, 480, 854) is None
    assert str(rules[2]) == "bucket_settings[2] (frames 2..64, H*W 921600..)"


@pytest.mark.parametrize("rules, message", [
    ("images", "bucket_settings='images' is not allowed: use a list of 1 to 64 dicts"),
    ([], "bucket_settings=\\[\\] is not allowed"),
    ([dict(frames=1, sample_method="uniform"), dict(frames=(1, 4), shift_mode="v13")],
     r"bucket_settings\[1\] \(frames 1..4\) overlaps bucket_settings\[0\] \(frames 1\)"),
    ([dict(sample_method="uniform")], "has neither frames nor resolution"),
    ([dict(frames=1)], "sets nothing besides where it applies"),
    ([dict(frames=0, sample_method="uniform")], r"frames=0 is not allowed: use a frame count >= 1"),
    ([dict(frames=(9, 3), sample_method="uniform")], r"frames=\(9, 3\) is not allowed"),
    ([dict(frames=True, sample_method="uniform")], "frames=True is not allowed"),
    ([dict(resolution=(float("nan"), None), sample_method="uniform")], "resolution=\\(nan, None\\) is not allowed"),
    ([dict(frames=1, timestep_rng="per_sample")], "timestep_rng='per_sample', which cannot differ per bucket"),
    ([dict(frames=1, sample_method="uniform", loc=1.0)], r"bucket_settings\[0\] \(frames 1\): loc=1.0 is a parameter"),
    ([dict(frames=1, shift=3.0)], r"bucket_settings\[0\] \(frames 1\): shift=3.0 only applies with"),
    (["images"], r"bucket_settings\[0\]='images' is not allowed: each rule is a dict"),
])
def test_bad_rules_are_refused_by_name(rules, message):
    with pytest.raises(ots.SettingError, match=message):
        ots.RFlowTimeShift(bucket_settings=rules)


def test_a_rule_replacing_the_distribution_drops_the_scheduler_parameters_of_the_old_one():
    scheduler = ots.RFlowTimeShift(sample_method="logit-normal", loc=0.5,
                                   bucket_settings=[dict(frames=1, sample_method="uniform")])
    child = scheduler.recipe.children[0].distribution
    assert child.sample_method == "uniform" and child.params == {}


def _image_timesteps(scheduler, seed=11, batch=4):
    """Timesteps of a batch of 512 x 512 images (resolution factor 1 under the sqrt rule), and the uniforms the
    scheduler drew for them (with bucket_settings it draws float64 uniforms from the global RNG)."""
    torch.manual_seed(seed)
    t = scheduler.sample_timesteps(torch.zeros(batch, 4, 1, 8, 8), meta(512, 512, [1] * batch))
    torch.manual_seed(seed)
    return t.double(), torch.rand(batch, dtype=torch.float64)


# A rule overrides what it names and inherits the rest: each case restates the scheduler's selection, so every
# parameter of that selection must be inherited (each of these was once dropped or refused).
def test_a_rule_restating_logit_normal_keeps_the_scheduler_loc():
    scheduler = ots.RFlowTimeShift(sample_method="logit-normal", loc=1.0,
                                   bucket_settings=[dict(frames=1, sample_method="logit-normal", scale=0.5)])
    t, u = _image_timesteps(scheduler)
    torch.testing.assert_close(t, 1000 * torch.sigmoid(1.0 + 0.5 * torch.special.ndtri(u)), rtol=1e-6, atol=1e-4)


def test_a_rule_with_only_t_range_keeps_rescale():
    scheduler = ots.RFlowTimeShift(sample_method="logit-normal", t_range=(0.2, 0.6), t_range_mode="rescale",
                                   bucket_settings=[dict(frames=1, t_range=(0.5, 0.7))])
    t, u = _image_timesteps(scheduler)  # rescale squeezes the whole logit-normal into (0.5, 0.7); truncate would not
    torch.testing.assert_close(t, 1000 * (0.5 + 0.2 * torch.sigmoid(torch.special.ndtri(u))), rtol=1e-6, atol=1e-4)


def test_a_rule_restating_the_exponential_family_keeps_shift_sigma():
    scheduler = ots.RFlowTimeShift(shift_family="exponential", shift_sigma=2.0, resolution_shift="constant",
                                   shift=0.5, bucket_settings=[dict(frames=1, shift_family="exponential")])
    t, u = _image_timesteps(scheduler)
    a = math.exp(0.5)
    torch.testing.assert_close(t, 1000 * a / (a + (1 / u - 1) ** 2), rtol=1e-5, atol=1e-3)


def test_a_rule_restating_the_linear_rule_keeps_its_anchors():
    scheduler = ots.RFlowTimeShift(resolution_shift="linear", base_shift=0.5, max_shift=2.0,
                                   bucket_settings=[dict(frames=1, resolution_shift="linear")])
    t, u = _image_timesteps(scheduler)
    tokens = (8 // 2) * (8 // 2)  # the 8 x 8 latent's own tokens of patch_size 2
    a = 0.5 + (2.0 - 0.5) * (tokens - 256) / (4096 - 256)  # 0.406, where the default anchors 1 -> 3 give 0.875
    torch.testing.assert_close(t, 1000 * rational(a, u), rtol=1e-5, atol=1e-3)


def test_a_rule_restating_the_constant_rule_keeps_the_scheduler_shift():
    scheduler = ots.RFlowTimeShift(resolution_shift="constant", shift=2.0,
                                   bucket_settings=[dict(frames=1, resolution_shift="constant")])
    t, u = _image_timesteps(scheduler)
    torch.testing.assert_close(t, 1000 * rational(2.0, u), rtol=1e-5, atol=1e-3)


def test_a_rule_switching_the_policy_drops_the_old_policy_parameters_only():
    scheduler = ots.RFlowTimeShift(shift_mode="latent", micro_frame_size=None, temporal_exponent=0.25,
                                   bucket_settings=[dict(frames=(2, None), shift_mode="v13")])
    child = scheduler.recipe.children[0].shift
    assert child.shift_mode == "v13" and child.policy_params == {} and child.temporal_exponent == 0.25
    same = ots.RFlowTimeShift(shift_mode="latent", micro_frame_size=None,
                              bucket_settings=[dict(frames=(2, None), shift_mode="latent", transform_scale=2.0)])
    assert same.recipe.children[0].shift.policy_params == {"micro_frame_size": None}


def test_refused_where_it_cannot_apply():
    with pytest.raises(ots.SettingError, match="bucket_settings=.* has no meaning on Open-Sora 2.0"):
        Opensora2Timesteps(bucket_settings=RULES)
    with pytest.raises(ots.SettingError, match="no uniform_over_threshold"):
        ots.RFlowTimeShift(uniform_over_threshold=0.5, bucket_settings=RULES)


def test_settings_with_no_sample_in_the_batch_are_never_judged():
    # A rule for 4K images whose settings suit only 4K: a batch of 1080p images (none of them its own) trains, and a
    # batch mixing both gives each its own settings' result.
    rule = dict(frames=1, resolution=(8_000_000, None), base_resolution=8_294_400.0, spatial_exponent=2.0)
    scheduler = ots.RFlowTimeShift(bucket_settings=[rule])
    x = torch.zeros(2, 4, 1, 8, 8)
    assert bool(scheduler.sample_timesteps(x, meta(1080, 1920, [1, 1])).isfinite().all())
    both = meta([2160, 1080], [3840, 1920], [1, 1])
    torch.manual_seed(5)
    t = scheduler.sample_timesteps(x, both)
    torch.manual_seed(5)
    s = torch.rand(2, dtype=torch.float64)  # the scheduler's uniform draw
    expected = [s[0] * 1000, rational(math.sqrt(1080 * 1920 / 512 ** 2), s[1]) * 1000]  # 4K: a = 1 ** 2
    torch.testing.assert_close(t.double(), torch.stack(expected), rtol=1e-5, atol=1e-3)


def test_a_guard_error_under_a_rule_names_the_rule():
    scheduler = ots.RFlowTimeShift(shift_mode="legacy", bucket_settings=[dict(frames=(2, 16), shift_mode="frames16")])
    with pytest.raises(ots.MetaError, match=r"bucket_settings\[0\] \(frames 2..16\): shift_mode='frames16' gives "
                                            "T_eff = 0 for num_frames=5"):
        scheduler.sample_timesteps(torch.zeros(1, 4, 2, 8, 8), meta(256, 256, [5]))


@pytest.mark.parametrize("settings, message", [
    (dict(bucket_settings=[dict(frames=(1, 10 ** 400), temporal_exponent=0.3)]), r"frames=\(1, 1000"),
    (dict(bucket_settings=[dict(frames=1, foo=1)]), "sets foo=1, which is no setting of rflow-timeshift"),
    (dict(sample_method="fixed", timesteps=[0.2, 0.8], fixed_order="cycle", timestep_rng="per_sample",
          bucket_settings=[dict(frames=1, sample_method="uniform")]), "fixed_order='cycle' with bucket_settings"),
    (dict(scale_temporal=False, temporal_exponent=2.0), "temporal_exponent=2.0 does not apply with scale_temporal"),
])
def test_more_refusals(settings, message):
    with pytest.raises(ots.SettingError, match=message):
        ots.RFlowTimeShift(**settings)
