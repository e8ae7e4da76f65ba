"""The core Recipe: one object, built once from the settings, that every integration consumes.

Expected values come from the settings' meaning (the list a cycle must visit, the release a setting belongs to),
not from the Recipe's own output.
"""

from collections import Counter

import pytest
import torch

import opensora_timeshift_patch as ots
from opensora_timeshift_patch.core import Recipe
from opensora_timeshift_patch.opensora2 import Opensora2Timesteps
from opensora_timeshift_patch.settings import NOT_ON_OPENSORA2, SETTINGS

CYCLE = dict(sample_method="fixed", timesteps=[0.2, 0.5, 0.8], fixed_order="cycle", timestep_rng="per_sample")


@pytest.mark.parametrize("t_range, t_range_mode, kept", [
    ((0.4, 0.9), "truncate", [0.5, 0.8]),  # 0.2 is outside: the other two, equally often
    ((0.2, 0.5), "truncate", [0.2, 0.5]),  # both bounds are kept
    (None, "truncate", [0.2, 0.5, 0.8]),
])
def test_a_cycle_visits_every_kept_timestep_equally_on_1x(t_range, t_range_mode, kept):
    extra = {} if t_range is None else dict(t_range=t_range, t_range_mode=t_range_mode)
    scheduler = ots.RFlowTimeShift(**CYCLE, **extra, use_timestep_transform=False)
    x = torch.zeros(5, 4, 1, 8, 8)
    seen = Counter()
    for step in range(2 * len(kept)):  # every sample visits the kept list twice over
        seen.update(round(v / 1000, 6) for v in scheduler.sample_timesteps(x, None, step=step).tolist())
    assert seen == Counter({t: 2 * 5 for t in kept})


def test_a_cycle_with_rescale_keeps_the_whole_list_squeezed():
    scheduler = ots.RFlowTimeShift(**CYCLE, t_range=(0.4, 0.9), t_range_mode="rescale", use_timestep_transform=False)
    seen = Counter()
    for step in range(3):
        seen.update(round(v / 1000, 6) for v in scheduler.sample_timesteps(torch.zeros(3, 4, 1, 8, 8), None,
                                                                            step=step).tolist())
    assert seen == Counter({round(0.4 + 0.5 * t, 6): 3 for t in (0.2, 0.5, 0.8)})


def test_a_cycle_visits_every_kept_timestep_equally_on_2_0():
    ts = Opensora2Timesteps(**CYCLE, t_range=(0.4, 0.9), use_timestep_transform=False)
    seen = Counter()
    for step in range(4):
        seen.update(round(v, 6) for v in ts.base_timesteps(torch.rand(6), step).tolist())
    assert seen == Counter({0.5: 12, 0.8: 12})


@pytest.mark.parametrize("key", sorted(NOT_ON_OPENSORA2))
def test_every_setting_with_no_meaning_on_2_0_is_refused_there_and_taken_on_1x(key):
    value = {"uniform_over_threshold": 0.5, "bucket_settings": [dict(frames=1, transform_scale=2.0)],
             "timestep_start_step": 3, "min_snr_gamma": 2.0, "max_loss_weight": 10.0}.get(key)
    declared = SETTINGS.get(key)
    if value is None and declared is not None and declared.default is not None:
        value = declared.default
    with pytest.raises(ots.SettingError, match=f"{key}=.* has no meaning on Open-Sora 2.0"):
        Recipe({key: value}, release="2.0")


def test_a_recipe_knows_its_release_and_refuses_another():
    assert Recipe().shift.resolution_shift == "sqrt" and Recipe(release="2.0").shift.resolution_shift == "linear"
    assert Recipe(release="2.0").distribution.sample_method == "logit-normal"
    with pytest.raises(ots.SettingError, match="release='1.3' is not allowed: use one of '1.x', '2.0'"):
        Recipe(release="1.3")


def test_the_scheduler_and_the_2_0_drop_in_consume_the_same_recipe_decisions():
    settings = dict(sample_method="logit-normal", loc=0.3, shift_mode="latent", temporal_exponent=0.25)
    one, two = ots.RFlowTimeShift(**settings), Opensora2Timesteps(**settings)
    assert one.recipe.distribution.params == two.recipe.distribution.params == {"loc": 0.3}
    assert one.shift.temporal_exponent == two.shift.temporal_exponent == 0.25
    for bad in (dict(timestep_seed=3), dict(stratified=True), dict(fixed_order="cycle", sample_method="fixed")):
        with pytest.raises(ots.SettingError) as a:
            ots.RFlowTimeShift(**bad)
        with pytest.raises(ots.SettingError) as b:
            Opensora2Timesteps(**bad)
        assert str(a.value) == str(b.value)  # one decision, one message


def test_derive_overrides_what_it_names_and_inherits_what_still_applies():
    base = Recipe(dict(sample_method="logit-normal", loc=1.0, resolution_shift="constant", shift=2.0))
    same = base.derive(dict(scale=0.5))
    assert same.distribution.params == {"loc": 1.0, "scale": 0.5} and same.shift.shift == 2.0
    other = base.derive(dict(sample_method="uniform", resolution_shift="sqrt"))
    assert other.distribution.params == {} and other.shift.resolution_shift == "sqrt"  # loc and shift dropped
    with pytest.raises(ots.SettingError, match="loc=1.0 is a parameter of sample_method 'logit-normal'"):
        base.derive(dict(sample_method="uniform", loc=1.0))  # named explicitly: refused, not dropped


def test_the_readme_example_of_a_registered_distribution_works_everywhere():
    """The Architecture section's example, run as written: its parameter is a setting, and draws follow its
    inverse CDF on the per-sample stream's uniforms."""
    from pathlib import Path

    from opensora_timeshift_patch.sampling import counter_uniform
    from opensora_timeshift_patch.settings import DISTRIBUTIONS

    readme = Path(__file__).resolve().parents[1].joinpath("README.md").read_text(encoding="utf-8")
    section = readme[readme.index("**Adding a policy, distribution or weighting**"):]
    code = section[section.index("```python\n") + len("```python\n"):section.index("```\n", section.index("```python"))]
    try:
        exec(compile(code, "README.md", "exec"), {})
        scheduler = ots.RFlowTimeShift(sample_method="kumaraswamy", a=4.0, timestep_rng="per_sample",
                                       use_timestep_transform=False)
        t = scheduler.sample_timesteps(torch.zeros(6, 4, 1, 8, 8), None, step=2)
        u = counter_uniform(0, 2, torch.arange(6))
        torch.testing.assert_close(t.double(), 1000 * u ** 0.25, rtol=1e-6, atol=1e-4)
        with pytest.raises(ots.SettingError, match=r"a=20 is not allowed: use a finite number in \[0.1, 10\]"):
            ots.RFlowTimeShift(sample_method="kumaraswamy", a=20)
    finally:
        DISTRIBUTIONS.unregister("kumaraswamy")


@pytest.mark.parametrize("settings", ["abc", [("shift_mode", "v13")], 3, torch.tensor(1.0)])
def test_a_recipe_takes_a_dict_of_settings_only(settings):
    with pytest.raises(ots.SettingError, match=r"settings=.* is not allowed: use a dict of the scheduler's keywords"):
        Recipe(settings)
    with pytest.raises(ots.SettingError, match=r"overrides=.* is not allowed: use a dict of settings"):
        Recipe().derive(settings)
