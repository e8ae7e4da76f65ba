"""The Python API tried as a hostile user would: each input gets a named error or a correct result."""

import math
import warnings

import numpy as np
import pytest
import torch

import opensora_timeshift_patch as ots
from conftest import meta
from opensora_timeshift_patch import RFlowTimeShift, SettingError, TimestepShift, temporal_size, timestep_transform
from opensora_timeshift_patch.policies import POLICIES
from opensora_timeshift_patch.sampling import DISTRIBUTIONS
from standin.stubs import StubModel, StubTextEncoder, batch_meta


def quiet(fn, *args, **kwargs):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return fn(*args, **kwargs)


def test_the_first_sampling_timestep_never_rounds_above_n():
    """At 64 x 64 the factor is 0.125 * sqrt(5) < 1/2, where float32 rounds a / (1 + (a - 1)) just above 1."""
    z = torch.randn(2, 4, 5, 8, 8)
    grid = RFlowTimeShift().sampling_timesteps(z, batch_meta(2, 64, 64, 17))
    assert grid[0].tolist() == [1000.0, 1000.0]
    assert all(bool(((t >= 0) & (t <= 1000)).all()) for t in grid)


@pytest.mark.parametrize(
    "settings, kw, match",
    [
        (dict(base_resolution=1, base_num_frames=1e-3, transform_scale=100), meta(512, 512, 17),
         r"the shift factor a = 3.62039e\+06 for sample 0 \(512 x 512, 17 frames, T_eff = 5\) is outside \[0.01, 100\]: its timesteps would pile up at N"),
        (dict(base_resolution=1e9, base_num_frames=1e5, transform_scale=0.01), meta(256, 256, 17),
         r"is outside \[0.01, 100\]: its timesteps would pile up at 0"),
        (dict(), meta(1e15, 1e15, 17), r"is outside \[0.01, 100\]"),
        (dict(shift_mode="continuous"), meta(512, 512, 1e16), r"is outside \[0.01, 100\]"),
    ],
)
def test_a_factor_that_would_pile_timesteps_at_an_end_is_refused(settings, kw, match):
    with pytest.raises(ValueError, match=match) as err:
        TimestepShift(**settings)(torch.tensor([0.5]), kw)
    assert len(str(err.value)) < 600


def test_clamp_clamps_an_extreme_factor_and_ignore_refuses_a_negative_one():
    kw = meta(512, 512, 17)
    t = quiet(TimestepShift(on_degenerate="clamp", base_resolution=1, base_num_frames=1e-3, transform_scale=100),
              torch.tensor([0.5]), kw)
    assert t.item() == pytest.approx(100 * 0.5 / (1 + 99 * 0.5))  # a clamped to 100
    shift = TimestepShift(on_degenerate="ignore", resolution_shift="linear", base_seq_len=2, max_seq_len=3,
                          base_shift=1, max_shift=1.99)
    with pytest.raises(RuntimeError, match="timestep shift: a shift factor is negative or not finite"):
        shift(torch.tensor([0.5]), meta(8, 8, 17))  # 1/4 token from pixel meta: a < 0


@pytest.mark.parametrize("value", [10**400, -(10**400), 10**5000], ids=["1e400", "-1e400", "1e5000"])
@pytest.mark.parametrize("name", ["cfg_scale", "transform_scale", "timestep_start_step", "num_timesteps"])
def test_huge_ints_are_named(name, value):
    with pytest.raises(SettingError, match=f"^{name}=(<int>|-?\\d+\\.\\.\\.|-?\\d+) is not allowed"):
        RFlowTimeShift(**{name: value, **({"timestep_rng": "per_sample"} if name == "timestep_start_step" else {})})


def test_the_drop_in_cache_tells_true_from_one():
    kw = meta(256, 256, 17)
    timestep_transform(torch.tensor([0.5]), kw, causal=True)
    with pytest.raises(SettingError, match="causal=1 is not allowed: use True or False"):
        timestep_transform(torch.tensor([0.5]), kw, causal=1)


@pytest.mark.parametrize(
    "kwargs, match",
    [
        (dict(latent_frames=0), r"latent_frames=0 is not allowed: use an int in \[1, 1000000\]"),
        (dict(latent_frames=2.5), "latent_frames=2.5 is not allowed"),
        (dict(latent_hw=(4,)), r"latent_hw=\(4,\) is not allowed"),
        (dict(latent_hw=("a", "b")), "latent_hw='a' is not allowed"),
        (dict(resample_u=torch.rand(3)), r"resample_u=<Tensor of shape \(3,\).* one uniform per timestep"),
    ],
)
def test_latent_sizes_and_redraw_uniforms_are_checked(kwargs, match):
    with pytest.raises(SettingError, match=match):
        TimestepShift()(torch.tensor([0.5, 0.5]), meta(256, 256, [17, 17]), **kwargs)


def test_numpy_scalars_work_as_meta_and_timesteps():
    kw = dict(height=np.int64(512), width=np.float32(512), num_frames=np.int64(16))
    got = timestep_transform(np.float32(0.25), kw, shift_mode="frames16")
    assert got.item() == pytest.approx(0.4)  # a = 2


@pytest.mark.parametrize(
    "settings, match",
    [
        (dict(use_timestep_transform=False, shift_mode="frames16"), "shift_mode='frames16' only applies with "
                                                                   "use_timestep_transform=True"),
        (dict(use_timestep_transform=False, transform_scale=2.0), "transform_scale=2.0 only applies with"),
        (dict(use_timestep_transform=False, micro_frame_size=16), "micro_frame_size=16 only applies with"),
        (dict(use_discrete_timesteps=True, num_timesteps=1), "leaves fewer than two integer timesteps"),
        (dict(use_discrete_timesteps=True, t_range=(0, 0.0011)), "fewer than two integer timesteps|collapses"),
        (dict(sample_method="logit-normal", loc=5, scale=0.05), "collapses: 98% of its timesteps"),
        (dict(scale_temporal=np.bool_(False), micro_frame_size=17),
         "micro_frame_size=17 is a parameter of shift_mode 'latent', not of shift_mode='spatial'"),
    ],
)
def test_settings_that_nothing_reads_or_that_collapse_are_refused(settings, match):
    with pytest.raises(SettingError, match=match):
        RFlowTimeShift(**settings)


def test_state_prompts_and_steps():
    s = RFlowTimeShift(timestep_rng="per_sample")
    with pytest.raises(SettingError, match="nothing else"):
        s.load_state_dict({"step": 5, "bogus": 1})
    with pytest.raises(SettingError, match="timestep_start_step=-5 is not allowed"):
        s.sample_timesteps(torch.randn(2, 4, 5, 2, 2), batch_meta(2, 256, 256, 17), step=-5)
    with pytest.raises(SettingError, match="give a list of 2 prompts"):
        s.sample(StubModel(), StubTextEncoder(), z=torch.randn(2, 4, 5, 2, 2), prompts=(1, 2), device="cpu",
                 additional_args=batch_meta(2, 256, 256, 17), progress=False)
    with pytest.raises(ValueError):
        s.training_losses(StubModel(), torch.randn(2, 4, 5, 2, 2), None)
    assert s.step == 0  # a refused batch does not advance the stream
    s.training_losses(StubModel(), torch.randn(2, 4, 5, 2, 2), batch_meta(2, 256, 256, 17))
    assert s.step == 1


def test_weights_of_length_n_take_the_pure_noise_timestep():
    s = RFlowTimeShift(use_timestep_transform=False)
    x = torch.randn(2, 4, 5, 2, 2)
    loss = s.training_losses(StubModel(), x, batch_meta(2, 256, 256, 17), weights=torch.ones(1000),
                             t=torch.tensor([0.0, 1000.0]))["loss"]
    assert bool(loss.isfinite().all())
    with pytest.raises(SettingError, match="per-timestep loss weights"):
        s.training_losses(StubModel(), x, batch_meta(2, 256, 256, 17), weights=torch.ones(10))


@pytest.mark.parametrize("frames", [[0], [-1], [16.5], [math.nan], [math.inf]])
def test_temporal_size_refuses_invalid_frame_counts(frames):
    with pytest.raises(SettingError, match="frame counts are whole numbers >= 1"):
        temporal_size(torch.tensor(frames), "latent")


def test_temporal_size_takes_plain_numbers_and_refuses_other_types():
    assert temporal_size([16, 17], "latent").tolist() == [4.0, 5.0]
    for value in ("16", None, torch.tensor([True])):
        with pytest.raises(SettingError, match="is not allowed: use a tensor"):
            temporal_size(value, "latent")


def test_registration_mistakes_are_named_at_registration():
    with pytest.raises(TypeError, match="shift_mode 'bad': 5 is not a function"):
        ots.register_policy("bad")(5)
    with pytest.raises(TypeError, match="keyword parameters with defaults"):
        ots.register_policy("bad")(lambda n, k: n)
    with pytest.raises(SettingError, match="parameter name 'loc' is already a parameter of sample_method "
                                           "'logit-normal'"):
        ots.register_policy("bad")(lambda n, loc=1.0: n)
    with pytest.raises(SettingError, match="parameter name 'on_degenerate' is already a scheduler setting"):
        ots.register_distribution("bad")(lambda u, on_degenerate="x": u)
    assert "bad" not in POLICIES and "bad" not in DISTRIBUTIONS


def test_a_policy_returning_no_tensor_is_refused_when_built():
    ots.register_policy("scalar")(lambda n: 4.0)
    try:
        with pytest.raises(SettingError, match="shift_mode='scalar' returned 4.0 .* a policy must return a floating"):
            TimestepShift("scalar")
    finally:
        POLICIES.unregister("scalar")


def test_distribution_call_needs_a_tensor():
    with pytest.raises(SettingError, match="u=0.5 is not allowed"):
        ots.TimestepDistribution("uniform")(0.5)


@pytest.mark.parametrize("t", [[math.nan], [-5.0], [1500.0], [math.inf]])
def test_timesteps_outside_the_range_are_refused_on_every_path(t):
    kw = meta(256, 256, 17)
    with pytest.raises(ValueError, match=r"a timestep is outside \[0, num_timesteps\] or not finite"):
        TimestepShift()(torch.tensor(t), kw, num_timesteps=1000)
    with pytest.raises(RuntimeError, match=r"a timestep is outside \[0, num_timesteps\] or not finite"):
        TimestepShift(on_degenerate="clamp")(torch.tensor(t), kw, num_timesteps=1000)


def test_a_huge_t_range_bound_is_named():
    with pytest.raises(SettingError, match=r"t_range=\(0.1, 1000000000"):
        RFlowTimeShift(t_range=(0.1, 10**400))
