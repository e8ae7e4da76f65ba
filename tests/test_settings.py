"""The one declaration of every setting: strict types, named errors, refused combinations (the property tests over
random settings are in test_property.py)."""

import math

import numpy as np
import pytest
import torch

import opensora_timeshift_patch as ots
from conftest import meta
from opensora_timeshift_patch import SETTINGS, RFlowTimeShift, SettingError, TimestepShift, timestep_transform
from opensora_timeshift_patch.sampling import DISTRIBUTIONS, TimestepDistribution

HOSTILE = [True, False, "3", "x", "no", None, math.nan, math.inf, -math.inf, 1e308, -1e308, [1], {"a": 1},
           torch.tensor(2.0), b"1", 2**70]


def hostile_cases():
    for name, s in SETTINGS.items():
        for value in HOSTILE:
            try:
                s.check(value)
            except SettingError:
                yield name, value


@pytest.mark.parametrize("name, value", list(hostile_cases()))
def test_every_refused_value_names_the_setting_value_and_what_is_allowed(name, value):
    with pytest.raises(SettingError) as err:
        SETTINGS[name].check(value)
    msg = str(err.value)
    assert msg.startswith(f"{name}=") and "is not allowed: use " in msg
    # short, but a choice names every allowed value (the recipes are many)
    allowed = sum(len(repr(c)) + 2 for c in SETTINGS[name].choices or ())
    assert "tensor(" not in msg and len(msg) < 300 + allowed


@pytest.mark.parametrize("name", [n for n, s in SETTINGS.items() if s.type in ("int", "float")])
def test_numbers_refuse_bools_strings_nan_and_inf(name):
    for value in (True, False, "1", "1.0", math.nan, math.inf, -math.inf):
        with pytest.raises(SettingError, match=f"^{name}="):
            SETTINGS[name].check(value)


@pytest.mark.parametrize("name", [n for n, s in SETTINGS.items() if s.type == "bool"])
def test_bools_refuse_truthy_strings_and_numbers(name):
    for value in ("no", "yes", "False", "", 0, 1, 1.0, None):
        with pytest.raises(SettingError, match=f"^{name}="):
            SETTINGS[name].check(value)
    assert SETTINGS[name].check(np.bool_(False)) is False  # as a config may hold it


def test_numpy_scalars_are_their_python_values():
    assert SETTINGS["num_sampling_steps"].check(np.int64(30)) == 30
    assert SETTINGS["transform_scale"].check(np.float32(2.0)) == 2.0
    assert type(SETTINGS["num_sampling_steps"].check(np.int64(30))) is int


def test_declared_bounds_hold_at_the_edges():
    s = SETTINGS["uniform_over_threshold"]
    assert s.check(0) == 0.0 and s.check(0.999) == 0.999 and s.check(None) is None
    with pytest.raises(SettingError, match=r"use None or a finite number in \[0, 1\)"):
        s.check(1.0)
    assert SETTINGS["timestep_seed"].check(2**64 - 1) == 2**64 - 1
    with pytest.raises(SettingError):
        SETTINGS["timestep_seed"].check(2**64)


@pytest.mark.parametrize(
    "settings, match",
    [
        # a distribution that collapses every timestep to one end, or to one value
        (dict(sample_method="logit-normal", loc=math.inf), r"loc=inf is not allowed: use a finite number in \[-5, 5\]"),
        (dict(sample_method="logit-normal", loc=1e6), r"loc=1000000.0 is not allowed"),
        (dict(sample_method="logit-normal", loc=-math.inf), r"loc=-inf is not allowed"),
        (dict(sample_method="logit-normal", loc=math.nan), r"loc=nan is not allowed"),
        (dict(sample_method="logit-normal", scale=math.inf), r"scale=inf is not allowed"),
        (dict(sample_method="logit-normal", scale=1e-9), r"scale=1e-09 is not allowed"),
        (dict(sample_method="logit-normal", loc="0"), r"loc='0' is not allowed: use a finite number"),
        (dict(t_range=(0.5, 0.50001)), r"sample_method='uniform', t_range=\(0.5, 0.50001\) collapses"),
        # shift parameters that would leave [0, N] or overflow, caught when built
        (dict(resolution_shift="constant", shift_family="exponential", shift=math.nan), "shift=nan is not allowed"),
        (dict(resolution_shift="constant", shift_family="exponential", shift=1000.0), "shift=1000.0 is not allowed"),
        (dict(resolution_shift="linear", base_shift=-1.0), "base_shift=-1 is not allowed for shift_family='rational'"),
        (dict(resolution_shift="linear", max_shift="3"), "max_shift='3' is not allowed: use None or a finite number"),
        (dict(cfg_scale="x"), "cfg_scale='x' is not allowed: use a finite number in"),
        (dict(cfg_scale=math.nan), "cfg_scale=nan is not allowed"),
        (dict(use_discrete_timesteps="no"), "use_discrete_timesteps='no' is not allowed: use True or False"),
        (dict(stratified="no", timestep_rng="per_sample"), "stratified='no' is not allowed: use True or False"),
        # combinations
        (dict(scale_temporal=False, shift_mode="latent"), r"scale_temporal=False .* contradicts shift_mode='latent'"),
        (dict(t_range_mode="rescale"), "t_range_mode='rescale' only applies with a t_range"),
        (dict(base_resolution=1024 * 1024, resolution_shift="linear"), "base_resolution=1048576 only applies with"),
    ],
)
def test_settings_that_would_collapse_or_mislead_are_refused_when_built(settings, match):
    with pytest.raises(ValueError, match=match):
        RFlowTimeShift(**settings)


def test_unknown_setting_suggests_the_near_miss_and_lists_who_takes_what():
    with pytest.raises(TypeError) as err:
        RFlowTimeShift(shift_mod="latent")
    msg = str(err.value)
    assert "unknown setting shift_mod='latent'. Did you mean 'shift_mode'?" in msg
    assert "shift_mode='latent' takes micro_frame_size, temporal_compression, causal" in msg
    assert "sample_method='uniform' takes nothing" in msg and "use_oscillation_guidance" in msg


def test_parameters_of_a_registered_distribution_reach_it_through_the_scheduler_dict():
    @ots.register_distribution("power", exponent=ots.Setting("exponent", "float", 1.0, "t = u^(1/k)", low=0.1, high=10))
    def power(u, exponent=1.0):
        return u ** (1 / exponent)

    try:
        scheduler = ots.build_module(dict(type="rflow-timeshift", sample_method="power", exponent=2.0,
                                          use_timestep_transform=False, timestep_rng="per_sample"), ots.SCHEDULERS)
        assert scheduler.distribution.params == {"exponent": 2.0}
        t = scheduler.sample_timesteps(torch.zeros(4096, 1, 1, 1, 1), None) / 1000
        assert t.mean().item() == pytest.approx(2 / 3, abs=0.02)  # E[U^(1/2)] = 2/3
        with pytest.raises(SettingError, match=r"exponent=0 is not allowed: use a finite number in \[0.1, 10\]"):
            RFlowTimeShift(sample_method="power", exponent=0)
        with pytest.raises(SettingError, match="exponent=2.0 is a parameter of sample_method 'power', not of "
                                               "sample_method='uniform'"):
            RFlowTimeShift(exponent=2.0)
    finally:
        DISTRIBUTIONS.unregister("power")


def test_a_registered_distribution_that_leaves_the_unit_interval_is_refused():
    @ots.register_distribution("broken")
    def broken(u, gain=2.0):
        return u * gain

    try:
        with pytest.raises(SettingError, match=r"sample_method='broken', gain=2.0 does not map \(0, 1\) into"):
            TimestepDistribution("broken")
        with pytest.raises(SettingError, match="gain='2' is not allowed: use a finite number"):
            TimestepDistribution("broken", gain="2")  # undeclared parameters are checked against their default
    finally:
        DISTRIBUTIONS.unregister("broken")


def test_scheduler_timestep_shift_and_drop_in_refuse_alike():
    """One declaration: the same bad value gets the same message through every entry point."""
    messages = set()
    for build in (lambda: RFlowTimeShift(on_degenerate="bogus"), lambda: TimestepShift(on_degenerate="bogus"),
                  lambda: timestep_transform(torch.tensor([0.5]), meta(256, 256, 17), on_degenerate="bogus")):
        with pytest.raises(SettingError) as err:
            build()
        messages.add(str(err.value))
    assert messages == {"on_degenerate='bogus' is not allowed: use one of 'error', 'clamp', 'ignore'"}


def test_load_state_dict_validates_the_step():
    s = RFlowTimeShift(timestep_rng="per_sample")
    for state, match in (({"step": -5}, "timestep_start_step=-5 is not allowed"),
                         ({"step": 1.5}, "timestep_start_step=1.5 is not allowed"),
                         ("x", "state='x' is not allowed"), ({}, r"state=\{\} is not allowed")):
        with pytest.raises(SettingError, match=match):
            s.load_state_dict(state)
    s.load_state_dict({"step": 7, "timestep_seed": 0})
    assert s.step == 7


def test_the_readme_lists_every_setting_as_declared():
    from pathlib import Path

    from opensora_timeshift_patch.settings import settings_table

    readme = (Path(__file__).resolve().parents[1] / "README.md").read_text(encoding="utf-8")
    assert settings_table() in readme
