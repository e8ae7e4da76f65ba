"""Telemetry: its setting refuses hostile input; the expected bin probabilities are the shifted distribution's CDF;
drawn-vs-configured stays silent on correct draws and fires on wrong ones, per bucket; off changes nothing."""

import json
import math
import warnings

import pytest
import torch

from opensora_timeshift_patch import SCHEDULERS, SettingError, build_module
from opensora_timeshift_patch.core import Recipe
from opensora_timeshift_patch.telemetry import FILE_NAME, bin_probabilities, g_test
from standin.stubs import StubModel, batch_meta


def scheduler(tmp_path, **telemetry):
    return build_module(dict(type="rflow-timeshift", backend="standalone", timestep_rng="per_sample",
                             telemetry=dict(dir=str(tmp_path), **telemetry)), SCHEDULERS)


@pytest.mark.parametrize("bad, named", [
    (dict(bins=True), "telemetry.bins=True"), (dict(bins=1), "telemetry.bins=1"), (dict(bins=10**6), "1000000"),
    (dict(bins=2.5), "2.5"), (dict(bins="20"), "'20'"), (dict(bins=float("nan")), "nan"),
    (dict(every=0), "telemetry.every=0"), (dict(every=-3), "-3"), (dict(every=False), "False"),
    (dict(every=float("inf")), "inf"), (dict(every=1.0), "1.0"),
    (dict(colour=1), "'colour'=1"), (dict(), "needs dir"), (dict(dir=""), "telemetry.dir=''"),
    (dict(dir=3), "telemetry.dir=3"), (dict(dir=None), "telemetry.dir=None"), (dict(dir=["a"]), "['a']"),
])
def test_hostile_keys_are_refused_by_name(tmp_path, bad, named):
    settings = dict(dir=str(tmp_path), **bad) if "dir" not in bad and named != "needs dir" else bad
    with pytest.raises(SettingError, match=None) as err:
        Recipe({"telemetry": settings})
    assert named in str(err.value)
    assert "telemetry" in str(err.value)


@pytest.mark.parametrize("value", ["dir", 5, [1], torch.ones(2)])
def test_not_a_dict_is_refused(value):
    with pytest.raises(SettingError, match="telemetry=.* is not allowed"):
        Recipe({"telemetry": value})


def test_a_file_or_a_path_under_a_file_is_refused(tmp_path):
    f = tmp_path / "file"
    f.write_text("x")
    for d in (f, f / "below"):
        with pytest.raises(SettingError, match="telemetry.dir=.*(is a file|lies under the file)"):
            Recipe({"telemetry": dict(dir=str(d))})
    assert Recipe({"telemetry": dict(dir=str(tmp_path / "new" / "deep"))}).values["telemetry"]["bins"] == 20


def test_off_by_default_changes_nothing(tmp_path):
    stock = build_module(dict(type="rflow-timeshift", backend="standalone"), SCHEDULERS)
    assert stock.telemetry is None and stock.state_dict() == {"step": 0, "timestep_seed": 0}


def test_bin_probabilities_are_the_rational_shifts_cdf():
    # uniform t, a = 3: t' = a t / (1 + (a - 1) t) has P(t' < e) = e / (a - (a - 1) e), by inverting the shift.
    a, edges = 3.0, [i / 10 for i in range(11)]
    got = bin_probabilities(lambda u: a * u / (1 + (a - 1) * u), edges)
    cdf = [e / (a - (a - 1) * e) for e in edges]
    assert got == pytest.approx([cdf[i + 1] - cdf[i] for i in range(10)], abs=1e-12)


def test_bin_probabilities_put_a_point_mass_on_an_edge_in_the_bin_above():
    got = bin_probabilities(lambda u: torch.where(u < 0.5, torch.full_like(u, 0.25), torch.full_like(u, 0.5)),
                            [0, 0.25, 0.5, 0.75, 1.0])
    assert list(got) == pytest.approx([0, 0.5, 0.5, 0])


def test_expected_matches_the_scheduler_formula(tmp_path):
    s = scheduler(tmp_path, bins=10, every=1)
    x = torch.randn(4, 4, 5, 4, 4)
    s.training_losses(StubModel(), x, batch_meta(4, 512, 512, 17))
    record = json.loads((tmp_path / FILE_NAME).read_text().splitlines()[0])
    a = math.sqrt(5)  # latent policy: T_eff = 5 latent frames, 512 x 512 is the base resolution
    cdf = [e / (a - (a - 1) * e) for e in (i / 10 for i in range(11))]
    assert record["expected"] == pytest.approx([cdf[i + 1] - cdf[i] for i in range(10)], abs=1e-6)
    assert (record["height"], record["num_frames"], record["rule"], record["samples"]) == (512, 17, None, 4)


def run_draws(tmp_path, draw_cfg, steps=200, batch=16):
    """Telemetry of the default recipe, fed timesteps drawn by ``draw_cfg``'s scheduler (a wrong draw when it
    differs), for two buckets; returns the records of the last report and the warnings."""
    s = scheduler(tmp_path, bins=20, every=steps)
    drawer = build_module(dict(type="rflow-timeshift", backend="standalone", timestep_rng="per_sample",
                               **draw_cfg), SCHEDULERS)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        for step in range(steps):
            hw = 256 if step % 2 else 512
            x = torch.randn(batch, 4, 5 if step % 2 else 3, 4, 4)
            meta = batch_meta(batch, hw, hw, 17 if step % 2 else 9)
            t = drawer.sample_timesteps(x, meta, step=step)
            height, width, frames = (v.double() for v in meta.values())
            s.telemetry.observe(t, torch.ones(batch), height, width, frames, tuple(x.shape[2:]), True)
        records = s.telemetry.report(steps)
    return records, [str(w.message) for w in caught if "disagree" in str(w.message)]


def test_correct_draws_stay_silent_over_many_steps(tmp_path):
    records, alarms = run_draws(tmp_path, {})
    assert len(records) == 2 and all(r["samples"] == 1600 for r in records)
    assert alarms == [] and not any(r["check"]["alarm"] for r in records)
    assert all(r["check"]["p"] > 1e-4 for r in records)


@pytest.mark.parametrize("wrong", [dict(sample_method="logit-normal"), dict(transform_scale=2.0)],
                         ids=["another distribution", "another shift"])
def test_a_wrong_draw_fires_per_bucket(tmp_path, wrong):
    records, alarms = run_draws(tmp_path, wrong)
    assert all(r["check"]["alarm"] for r in records)
    assert len(alarms) == 2 and any("256x256, 17 frames" in a for a in alarms) and any("512x512, 9" in a for a in alarms)


def test_a_shift_that_did_not_take_effect_fires_where_it_would_have_moved_the_draws(tmp_path):
    """Draws left unshifted while the recipe shifts: the 512x512, 9-frame bucket (factor sqrt(3) under latent) fires;
    the 256x256, 17-frame one (factor sqrt(1/4 * 5) = 1.118) is too close to unshifted for 1600 draws to tell, and
    the test says nothing there rather than guess."""
    records, alarms = run_draws(tmp_path, dict(use_timestep_transform=False))
    by_size = {r["height"]: r for r in records}
    assert by_size[512]["check"]["alarm"] and not by_size[256]["check"]["alarm"]
    assert len(alarms) == 1 and "512x512, 9 frames" in alarms[0]


def test_g_test_draws_where_nothing_can_fall_is_an_alarm():
    assert g_test([0, 5, 5], [0.0, 0.5, 0.5], 1e-6)["alarm"] is False
    assert g_test([1, 5, 5], [0.0, 0.5, 0.5], 1e-6)["alarm"] is True


def test_load_state_dict_refuses_a_different_bins_and_junk(tmp_path):
    s = scheduler(tmp_path, bins=10, every=5)
    s.training_losses(StubModel(), torch.randn(2, 4, 5, 4, 4), batch_meta(2, 256, 256, 17))
    state = s.state_dict()
    other = scheduler(tmp_path, bins=12, every=5)
    with pytest.raises(SettingError, match="bins=10"):
        other.load_state_dict(state)
    with pytest.raises(SettingError, match="telemetry state="):
        other.load_state_dict({**state, "telemetry": {"bins": 12}})


def test_a_resume_from_state_continues_the_records_exactly(tmp_path):
    def run(s, steps):
        for step in steps:
            torch.manual_seed(step)
            hw = (256, 512)[step % 2]
            s.training_losses(StubModel(), torch.randn(3, 4, 5, 4, 4), batch_meta(3, hw, hw, 17))

    a = scheduler(tmp_path / "a", bins=6, every=4)
    run(a, range(6))
    state = json.loads(json.dumps(a.state_dict()))
    run(a, range(6, 12))
    b = scheduler(tmp_path / "b", bins=6, every=4)
    b.load_state_dict(state)
    run(b, range(6, 12))
    lines = (tmp_path / "a" / FILE_NAME).read_text().splitlines()
    assert (tmp_path / "b" / FILE_NAME).read_text().splitlines() == [l for l in lines if json.loads(l)["step"] > 6]


def test_train_tiny_writes_telemetry_only_when_asked(tmp_path):
    import sys
    from pathlib import Path

    root = Path(__file__).resolve().parents[1]
    sys.path.insert(0, str(root / "scripts"))
    import train_tiny

    small = ["model.width=16", "model.depth=2", "evaluation.clips=10", "evaluation.loss_timesteps=2",
             "scheduler.num_sampling_steps=2", "train.ckpt_every=100", "train.batch_size=2", "train.steps=4",
             "dataset.frames=[16]"]
    config = str(root / "configs" / "tiny" / "latent.py")
    train_tiny.main([config, "--work-dir", str(tmp_path / "off"), "--cfg-options", *small])
    assert not list((tmp_path / "off").rglob(FILE_NAME))
    train_tiny.main([config, "--work-dir", str(tmp_path / "on"), "--telemetry", str(tmp_path / "tel"),
                     "--telemetry-every", "2", "--cfg-options", *small])
    records = [json.loads(l) for l in (tmp_path / "tel" / FILE_NAME).read_text().splitlines()]
    assert [r["step"] for r in records] == [2, 4] and records[-1]["samples"] == 8


def test_another_ranks_state_leaves_its_unreduced_part_out_and_says_so(tmp_path):
    s = scheduler(tmp_path / "a", bins=6, every=4)
    s.training_losses(StubModel(), torch.randn(3, 4, 5, 4, 4), batch_meta(3, 256, 256, 17))
    state = {**s.state_dict(), "telemetry": {**s.state_dict()["telemetry"], "rank": 1}}
    other = scheduler(tmp_path / "b", bins=6, every=4)
    with pytest.warns(UserWarning, match="rank 0 loads the state rank 1 saved"):
        other.load_state_dict(state)
    for _ in range(3):
        other.training_losses(StubModel(), torch.randn(3, 4, 5, 4, 4), batch_meta(3, 256, 256, 17))
    record = json.loads((tmp_path / "b" / FILE_NAME).read_text().splitlines()[0])
    assert record["step"] == 4 and record["samples"] == 9  # the first step's 3 samples were rank 1's part


def test_a_nul_in_dir_is_refused_and_a_pathlike_taken(tmp_path):
    with pytest.raises(SettingError, match="telemetry.dir="):
        Recipe({"telemetry": dict(dir="a\x00b")})
    assert Recipe({"telemetry": dict(dir=tmp_path)}).values["telemetry"]["dir"] == str(tmp_path)


def test_tensorboard_scalars_when_it_imports(tmp_path, monkeypatch):
    import sys
    import types

    written = []

    class Writer:
        def __init__(self, log_dir):
            written.append(("dir", log_dir))

        def add_scalar(self, tag, value, step):
            written.append((tag, value, step))

        def flush(self):
            pass

    monkeypatch.setitem(sys.modules, "torch.utils.tensorboard", types.SimpleNamespace(SummaryWriter=Writer))
    s = scheduler(tmp_path, bins=4, every=2)
    for _ in range(2):
        s.training_losses(StubModel(), torch.randn(8, 4, 5, 4, 4), batch_meta(8, 256, 256, 17))
    record = json.loads((tmp_path / FILE_NAME).read_text())
    tags = {w[0]: w[1:] for w in written}
    assert tags["dir"] == (str(tmp_path),)
    for i, (c, total) in enumerate(zip(record["count"], record["sum"])):
        if c:
            assert tags[f"timeshift/rbase_256x256x17/loss_bin{i}"] == (total / c, 2)
    assert tags["timeshift/rbase_256x256x17/drawn_p"] == (record["check"]["p"], 2)


@pytest.mark.parametrize("cfg", [
    dict(bucket_settings=[dict(resolution=(300 * 300, None), sample_method="logit-normal", transform_scale=2.0)]),
    dict(uniform_over_threshold=0.6),
], ids=["a bucket rule's own recipe", "Open-Sora 1.3's redraw"])
def test_the_scheduler_s_own_draws_are_silent_where_the_recipe_differs_by_bucket(tmp_path, cfg):
    """Through training_losses: the rule's bucket (512 x 512) is expected under the rule's recipe, the redraw's
    videos under the redrawn mixture; either wrong would fire at 2000 samples a bucket."""
    s = build_module(dict(type="rflow-timeshift", backend="standalone", timestep_rng="per_sample",
                          telemetry=dict(dir=str(tmp_path), bins=20, every=250), **cfg), SCHEDULERS)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        for step in range(250):
            hw = 256 if step % 2 else 512
            s.training_losses(StubModel(), torch.randn(16, 4, 5, 4, 4), batch_meta(16, hw, hw, 17))
    records = [json.loads(line) for line in (tmp_path / FILE_NAME).read_text().splitlines()]
    assert len(records) == 2 and all(r["samples"] == 2000 for r in records)
    assert [str(w.message) for w in caught if "disagree" in str(w.message)] == []
    if "bucket_settings" in cfg:
        assert {(r["rule"], r["height"]) for r in records} == {(0, 512), (None, 256)}


def test_a_steady_step_never_looks_at_a_tensor_on_the_host(tmp_path, monkeypatch):
    """After the first sight of each latent shape, observe() only queues device work: no item, cpu, tolist,
    numpy, bool, int or float of a tensor (each would be a host sync on a GPU), also for meta new to a known latent
    shape (the spill) and after a resume."""
    s = scheduler(tmp_path, bins=8, every=1000)
    tel = s.telemetry

    def step(hw, frames, latent_t):
        t = torch.rand(4) * 1000
        meta = batch_meta(4, hw, hw, frames)
        tel.observe(t, torch.rand(4), *(v.double() for v in meta.values()), (latent_t, 4, 4), True)

    step(256, 17, 5)
    step(256, 9, 3)
    state = tel.state_dict()

    def sync(*_args, **_kwargs):
        raise AssertionError("a host sync on the step path")

    with monkeypatch.context() as m:
        for name in ("item", "cpu", "tolist", "numpy", "__bool__", "__int__", "__float__"):
            m.setattr(torch.Tensor, name, sync)
        step(256, 17, 5)
        step(512, 17, 5)  # new meta under a known latent shape: spilled on the device
        step(256, 9, 3)
    tel.load_state_dict(state)
    with monkeypatch.context() as m:
        for name in ("item", "cpu", "tolist", "numpy", "__bool__", "__int__", "__float__"):
            m.setattr(torch.Tensor, name, sync)
        step(256, 17, 5)
    records = tel.report(10)
    assert {(r["height"], r["num_frames"]): r["samples"] for r in records} == {(256, 17): 8, (256, 9): 4}


def test_a_batch_without_meta_is_refused_naming_the_telemetry(tmp_path):
    s = build_module(dict(type="rflow-timeshift", backend="standalone", use_timestep_transform=False,
                          telemetry=dict(dir=str(tmp_path))), SCHEDULERS)
    with pytest.raises(ValueError, match="telemetry keys its buckets by the batch meta"):
        s.training_losses(StubModel(), torch.randn(2, 4, 5, 4, 4), {})
