"""Open-Sora 2.0: the drop-in selected by the config's ``scheduler`` key.

Expected numbers come from 2.0's formulas by hand (alpha = lin(tokens; 256 -> 1, 4096 -> 3) * sqrt(T_latent),
t' = a t / (1 + (a - 1) t), causal latent frames 1 + (n - 1) // 4) or from ``tests/data/opensora_golden.json``,
recorded from the real 2.0 code by ``scripts/check_against_opensora.py``. Script-level tests run a train.py and an
inference.py shaped like 2.0's (``fake_opensora.write_fake_opensora2``) in their own processes, as torchrun does.
"""

import json
import math
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch

import opensora_timeshift_patch as ots
from fake_opensora import write_fake_opensora2
from opensora_timeshift_patch.opensora2 import Opensora2LayoutError, Opensora2Timesteps

GOLDEN = json.loads((Path(__file__).parent / "data" / "opensora_golden.json").read_text())["opensora_2.0"]
M = 2 / 3840  # the slope of 2.0's get_res_lin_function: (3 - 1) / (4096 - 256)


def lin(tokens):
    return M * tokens + (1 - M * 256)


def rational(a, t):
    return a * t / (1 + (a - 1) * t)


# --- the rule, against the real 2.0 code's numbers ------------------------------------------------------------

@pytest.mark.parametrize("case", GOLDEN["alpha"], ids=lambda c: "T={}-{}x{}".format(*c["latent"]))
def test_no_settings_give_2_0_training_alpha_bit_for_bit(case):
    frames, h, w = case["latent"]
    assert Opensora2Timesteps().factor(frames, (h * w) // 4) == case["alpha"]
    assert case["alpha"] == pytest.approx(lin((h * w) // 4) * math.sqrt(frames), rel=1e-15)


@pytest.mark.parametrize("case", GOLDEN["time_shift"], ids=lambda c: "T={}-{}x{}".format(*c["latent"]))
def test_no_settings_shift_as_2_0_time_shift(case):
    t = torch.linspace(0, 1, 21)
    assert Opensora2Timesteps().training_timesteps(t, tuple(case["latent"])).tolist() == case["t"]


@pytest.mark.parametrize("case", GOLDEN["schedules"], ids=lambda c: f"{c['num_steps']}-{c['image_seq_len']}")
def test_no_settings_give_2_0_inference_schedule(case):
    ours = Opensora2Timesteps().schedule(case["num_steps"], case["image_seq_len"], case["num_frames"])
    assert ours == case["timesteps"]


def test_hand_derived_alphas():
    ts = Opensora2Timesteps()
    assert ts.factor(9, 256) == 3.0  # 256px, 33 frames: 32 x 32 latent, 256 tokens, 9 latent frames
    assert ts.factor(1, 4096) == pytest.approx(3.0)
    assert ts.factor(1, 1024) == pytest.approx(1.4)


def test_settings_select_policy_distribution_and_shift():
    legacy = Opensora2Timesteps(shift_mode="legacy")
    assert legacy.factor(9, 256, pixel_thw=(33, 256, 256)) == pytest.approx(math.sqrt(33 // 17 * 5))
    spatial = Opensora2Timesteps(scale_temporal=False)
    assert spatial.factor(9, 1024) == pytest.approx(1.4)
    constant = Opensora2Timesteps(resolution_shift="constant", shift=5.0)
    assert constant.factor(1, 16) == 5.0 and constant.factor(4, 16) == 10.0
    flux = Opensora2Timesteps(shift_family="exponential")  # mu 0.5 -> 1.15 on the same anchors
    assert flux.factor(1, 256) == pytest.approx(math.exp(0.5))
    sqrt_rule = Opensora2Timesteps(resolution_shift="sqrt")  # 1.x's sqrt(H W / 512^2)
    assert sqrt_rule.factor(1, 4096, pixel_thw=(1, 1024, 1024)) == pytest.approx(2.0)
    uniform = Opensora2Timesteps(sample_method="uniform")
    torch.manual_seed(3)
    t = uniform.base_timesteps(torch.zeros(5), step=None)
    torch.manual_seed(3)
    assert t.tolist() == torch.rand(5, dtype=torch.float64).float().tolist()


def test_patch_size_makes_training_count_tokens_as_inference():
    # The high_compression setup: a 32x DC-AE, patch size 1, 256 x 256 images: an 8 x 8 latent, 64 tokens.
    stock = Opensora2Timesteps()
    assert stock.training_timesteps(torch.tensor([0.5]), (1, 8, 8)).item() == pytest.approx(
        rational(lin(64 // 4), 0.5), rel=1e-6)
    assert stock.schedule(2, 64, 1)[1] == pytest.approx(rational(lin(64), 0.5), rel=1e-6)  # inference: 64 tokens
    fixed = Opensora2Timesteps(patch_size=1)
    assert fixed.training_timesteps(torch.tensor([0.5]), (1, 8, 8)).item() == pytest.approx(
        rational(lin(64), 0.5), rel=1e-6)


def test_bf16_t_is_shifted_in_its_own_dtype_as_stock():
    t = torch.sigmoid(torch.randn(8, generator=torch.Generator().manual_seed(0)))
    alpha = lin(256) * math.sqrt(9)
    ours = Opensora2Timesteps().training_timesteps(t, (9, 32, 32)).to(torch.bfloat16)
    assert torch.equal(ours, (alpha * t / (1 + (alpha - 1) * t)).to(torch.bfloat16))


@pytest.mark.parametrize("settings, message", [
    (dict(num_timesteps=1000), r"num_timesteps=1000 has no meaning on Open-Sora 2.0 \(2.0 keeps t in \[0, 1\]\)"),
    (dict(timestep_start_step=5), "timestep_start_step=5 has no meaning on Open-Sora 2.0"),
    (dict(micro_frame_size=17), "micro_frame_size=17 has no meaning on Open-Sora 2.0"),
    (dict(use_oscillation_guidance=True), "use_oscillation_guidance=True has no meaning on Open-Sora 2.0"),
    (dict(base_resolution=1e6), "base_resolution=1000000.0 only applies with resolution_shift='sqrt'"),
    (dict(shift_mod="legacy"), "Did you mean 'shift_mode'"),
    (dict(patch_size=True), "patch_size=True is not allowed: use an int in"),
    (dict(timestep_rng="per_rank"), "timestep_rng='per_rank' is not allowed: use one of 'global', 'per_sample'"),
    (dict(stratified=True), "stratified=True only applies with timestep_rng='per_sample'"),
    (dict(loc=float("nan")), "loc=nan is not allowed"),
    (dict(sample_method="uniform", loc=0.5), "loc=0.5 is a parameter of sample_method 'logit-normal'"),
])
def test_bad_settings_are_refused_by_name(settings, message):
    with pytest.raises((ValueError, TypeError), match=message):
        Opensora2Timesteps(**settings)


def test_pixel_rules_need_the_clip_size():
    with pytest.raises(ots.MetaError, match="needs the clip's pixel size"):
        Opensora2Timesteps(shift_mode="v13").factor(9, 256)


def test_degenerate_clip_is_refused_or_clamped_on_the_host():
    with pytest.raises(ots.MetaError, match="T_eff = 0 for a latent of 4 frames and 256 tokens, clip of 16 frames"):
        Opensora2Timesteps(shift_mode="legacy").factor(4, 256, pixel_thw=(16, 256, 256))
    with pytest.warns(UserWarning, match="T_eff <= 0 for num_frames in 2-16"):
        clamped = Opensora2Timesteps(shift_mode="legacy", on_degenerate="clamp")
    assert clamped.factor(4, 256, (16, 256, 256)) == 1.0


# --- the hooks, on a miniature 2.0 in this process ------------------------------------------------------------

PREPARE_INPUTS = textwrap.dedent('''
    import math
    import torch
    from opensora.utils.sampling import get_res_lin_function, time_shift

    def prepare_inputs(x_0, t):
        shift_alpha = get_res_lin_function()((x_0.shape[-1] * x_0.shape[-2]) // 4)
        shift_alpha *= math.sqrt(x_0.shape[-3])
        return time_shift(shift_alpha, t)

    def changed_train_py(x_0, t):  # a script that fixed the token count itself
        return time_shift(get_res_lin_function()(x_0.shape[-1] * x_0.shape[-2]), t)

    def no_latent(t):
        return time_shift(2.0, t)
''')


def script(fake2):
    namespace = {}
    exec(compile(PREPARE_INPUTS, "train.py", "exec"), namespace)
    return namespace


def test_install_binds_the_script_and_get_schedule_and_unpatch_restores(fake2):
    config, sampling = fake2
    ns = script(fake2)
    stock_time_shift, stock_schedule, stock_merge = ns["time_shift"], sampling.get_schedule, config.merge_args
    assert ots.opensora2.hook_config_parsing()
    assert config.merge_args is not stock_merge
    assert ots.opensora2.install(dict(scheduler=dict(type="rflow-timeshift", shift_mode="spatial")), ns)
    x_0, t = torch.zeros(2, 16, 9, 32, 32), torch.tensor([0.25, 0.5])
    assert ns["prepare_inputs"](x_0, t).tolist() == rational(1.0, t).tolist()  # sqrt(9) dropped, lin(256) = 1
    assert sampling.get_schedule(4, 256, 9) == [1.0, 0.75, 0.5, 0.25, 0.0]
    ots.unpatch()
    assert (ns["time_shift"], sampling.get_schedule, config.merge_args) == (stock_time_shift, stock_schedule,
                                                                            stock_merge)


def test_no_scheduler_key_binds_nothing(fake2):
    config, sampling = fake2
    ns = script(fake2)
    before = (ns["time_shift"], sampling.get_schedule)
    assert not ots.opensora2.install(dict(seed=1), ns)
    assert (ns["time_shift"], sampling.get_schedule) == before and not ots.opensora2.is_hooked()


def test_a_later_config_without_scheduler_restores_stock(fake2):
    _, sampling = fake2
    ns = script(fake2)
    before = (ns["time_shift"], sampling.get_schedule)
    ots.opensora2.install(dict(scheduler=dict(type="rflow-timeshift")), ns)
    ots.opensora2.install(dict(), ns)
    assert (ns["time_shift"], sampling.get_schedule) == before


def test_inference_keeps_flow_shift_and_shift_false(fake2):
    _, sampling = fake2
    stock = sampling.get_schedule
    ots.opensora2.install(dict(scheduler=dict(type="rflow-timeshift", shift_mode="spatial")))
    assert sampling.get_schedule(4, 256, 9, shift_alpha=3.0) == stock(4, 256, 9, shift_alpha=3.0)
    assert sampling.get_schedule(4, 256, 9, shift=False) == [1.0, 0.75, 0.5, 0.25, 0.0]
    with pytest.raises(ots.SettingError, match="get_schedule num_steps=-1 is not allowed"):
        sampling.get_schedule(-1, 256, 9)


@pytest.mark.parametrize("scheduler, message", [
    (dict(type="rflow"), "scheduler type='rflow' is not allowed on Open-Sora 2.0"),
    ("rflow-timeshift", "scheduler type='rflow-timeshift' is not allowed"),
    (dict(type="rflow-timeshift", num_sampling_steps=30), "num_sampling_steps=30 has no meaning on Open-Sora 2.0"),
])
def test_bad_scheduler_entries_are_refused(fake2, scheduler, message):
    with pytest.raises(ots.SettingError, match=message):
        ots.opensora2.install(dict(scheduler=scheduler), script(fake2))


def test_a_script_not_shaped_like_2_0_is_refused_not_misread(fake2):
    ns = script(fake2)
    ots.opensora2.install(dict(scheduler=dict(type="rflow-timeshift")), ns)
    with pytest.raises(Opensora2LayoutError, match="computes its shift differently"):
        ns["changed_train_py"](torch.zeros(1, 16, 1, 32, 32), torch.tensor([0.5]))
    with pytest.raises(Opensora2LayoutError, match="its caller has no latent x_0"):
        ns["no_latent"](torch.tensor([0.5]))


def test_a_renamed_2_0_function_is_a_clear_error(fake2, monkeypatch):
    _, sampling = fake2
    monkeypatch.delattr(sampling, "get_schedule")
    with pytest.raises(Opensora2LayoutError, match="opensora.utils.sampling has no get_schedule"):
        ots.opensora2.install(dict(scheduler=dict(type="rflow-timeshift")), script(fake2))


def test_the_script_must_bind_2_0_own_time_shift(fake2):
    ns = script(fake2)
    ns["time_shift"] = lambda alpha, t: t
    with pytest.raises(Opensora2LayoutError, match="not opensora.utils.sampling.time_shift"):
        ots.opensora2.install(dict(scheduler=dict(type="rflow-timeshift")), ns)


# --- 2.0's scripts, unchanged, in their own processes -----------------------------------------------------------

BUCKETS = [(4, 1, 256, 256), (2, 33, 256, 256), (3, 17, 768, 768), (2, 129, 256, 256)]
IMPORTS = 'custom_imports = dict(imports=["opensora_timeshift_patch"], allow_failed_imports=False)\n'


def run_script(root, name, lines, script_name="train.py", ranks=1, **keys):
    cfg = root / f"{name}.py"
    cfg.write_text("".join(f"{k} = {v!r}\n" for k, v in {"buckets": BUCKETS, **keys}.items())
                   + f"out = {str(root / name)!r} + '_{{rank}}.json'\n" + lines)
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(root), os.environ.get("PYTHONPATH", "")]),
               OMP_NUM_THREADS="1")
    launcher = [sys.executable] if ranks == 1 else [sys.executable, "-m", "torch.distributed.run", "--standalone",
                                                     f"--nproc_per_node={ranks}"]
    done = subprocess.run(launcher + [str(root / script_name), str(cfg)], capture_output=True, text=True, env=env,
                          cwd=root, timeout=600)
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-3000:]
    outs = [root / f"{name}_{r}.json" for r in range(ranks)]
    return [json.loads(p.read_text()) for p in outs], done.stderr


@pytest.fixture(scope="module")
def root(tmp_path_factory):
    return write_fake_opensora2(tmp_path_factory.mktemp("opensora2"))


def stock_draws(seed, buckets):
    """sigmoid(randn(bs)) per batch from one seed: stock 2.0's draw, before its shift."""
    torch.manual_seed(seed)
    return [torch.sigmoid(torch.randn(bs)) for bs, *_ in buckets]


@pytest.mark.parametrize("dtype", ["fp32", "bf16"])
def test_train_py_no_settings_is_stock_and_no_key_changes_nothing(root, dtype):
    stock, _ = run_script(root, f"stock_{dtype}", "", dtype=dtype)
    imported, log = run_script(root, f"imported_{dtype}", IMPORTS, dtype=dtype)
    assert imported == stock and "rflow-timeshift" not in log
    plain, log = run_script(root, f"plain_{dtype}", IMPORTS + 'scheduler = dict(type="rflow-timeshift")\n',
                            dtype=dtype)
    assert plain == stock
    assert log.count("rflow-timeshift: Open-Sora 2.0 training timesteps now come from") == 1
    # And stock is 2.0's rule, by hand: the latent of (n, H, W) is (1 + (n - 1) // 4, H / 8, W / 8).
    for (bs, n, h, w), record, u in zip(BUCKETS, stock[0], stock_draws(1024, BUCKETS)):
        alpha = lin((h // 8) * (w // 8) // 4) * math.sqrt(1 + (n - 1) // 4)
        want = rational(alpha, u).to(torch.bfloat16 if dtype == "bf16" else torch.float32).float()
        assert record["t"] == want.tolist()


def test_train_py_settings_select_policy_and_distribution(root):
    lines = IMPORTS + 'scheduler = dict(type="rflow-timeshift", shift_mode="legacy", on_degenerate="clamp")\n'
    legacy, _ = run_script(root, "legacy", lines)
    for (bs, n, h, w), record, u in zip(BUCKETS, legacy[0], stock_draws(1024, BUCKETS)):
        t_eff = 1 if n == 1 else max(n // 17 * 5, 1)  # 1.2's rule on pixel frames; clamp lifts 0 to 1
        alpha = lin((h // 8) * (w // 8) // 4) * math.sqrt(t_eff)
        assert record["t"] == pytest.approx(rational(alpha, u).tolist(), abs=1e-6)
    uniform, _ = run_script(root, "uniform", IMPORTS + 'scheduler = dict(type="rflow-timeshift", '
                                                       'sample_method="uniform", use_timestep_transform=False)\n')
    torch.manual_seed(1024)
    expected = []
    for bs, *_ in BUCKETS:  # stock's randn is still drawn, then ours
        torch.randn(bs)
        expected.append(torch.rand(bs, dtype=torch.float64).float().tolist())
    assert [r["t"] for r in uniform[0]] == expected


def test_high_compression_training_matches_inference_with_patch_size(root):
    keys = dict(buckets=[(2, 1, 256, 256)], ae_spatial_compression=32, patch_size=1,
                sampling_option=dict(height=256, width=256, num_frames=1, num_steps=4, is_causal_vae=False))
    u = stock_draws(1024, [(2,)])[0]
    stock_train, _ = run_script(root, "hc_stock", "", **keys)
    assert stock_train[0][0]["t"] == pytest.approx(rational(lin(16), u).tolist(), rel=1e-6)  # (8 * 8) // 4 tokens
    stock_infer, _ = run_script(root, "hc_stock_infer", "", script_name="inference.py", **keys)
    grid = torch.linspace(1, 0, 5)
    assert stock_infer[0] == rational(lin(64), grid).tolist()  # 64 tokens at patch size 1: they disagree
    fixed = IMPORTS + 'scheduler = dict(type="rflow-timeshift", patch_size=patch_size)\n'
    train, _ = run_script(root, "hc_fixed", fixed, **keys)
    infer, log = run_script(root, "hc_fixed_infer", fixed, script_name="inference.py", **keys)
    assert train[0][0]["t"] == pytest.approx(rational(lin(64), u).tolist(), rel=1e-6)
    assert infer[0] == stock_infer[0] and "get_schedule replaced" in log


def test_inference_py_no_settings_is_stock_and_settings_apply(root):
    keys = dict(sampling_option=dict(height=768, width=768, num_frames=33, num_steps=10))
    stock, _ = run_script(root, "inf_stock", "", script_name="inference.py", **keys)
    plain, _ = run_script(root, "inf_plain", IMPORTS + 'scheduler = dict(type="rflow-timeshift")\n',
                          script_name="inference.py", **keys)
    grid = torch.linspace(1, 0, 11)  # 768 x 768, 33 frames: a 96 x 96 latent, 2304 tokens, 9 latent frames
    assert plain == stock and stock[0] == rational(lin(2304) * math.sqrt(9), grid).tolist()
    legacy, _ = run_script(root, "inf_legacy", IMPORTS + 'scheduler = dict(type="rflow-timeshift", shift_mode="legacy")\n',
                           script_name="inference.py", **keys)
    assert legacy[0] == pytest.approx(rational(lin(2304) * math.sqrt(33 // 17 * 5), grid).tolist())


def test_command_line_overrides_reach_the_settings(root):
    lines = IMPORTS + 'scheduler = dict(type="rflow-timeshift")\n'
    cfg_lines = "".join(f"{k} = {v!r}\n" for k, v in {"buckets": BUCKETS}.items())
    (root / "override.py").write_text(cfg_lines + f"out = {str(root / 'override')!r} + '_{{rank}}.json'\n" + lines)
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(root), os.environ.get("PYTHONPATH", "")]))
    done = subprocess.run([sys.executable, str(root / "train.py"), str(root / "override.py"),
                           "--scheduler.num_timesteps", "1000"], capture_output=True, text=True, env=env, cwd=root)
    assert done.returncode != 0
    assert "num_timesteps=1000 has no meaning on Open-Sora 2.0" in done.stderr.strip().splitlines()[-1]


def test_two_ranks_stock_shares_t_per_sample_does_not_and_resumes(root):
    stock, _ = run_script(root, "dist_stock", "", ranks=2)
    assert stock[0] == stock[1]  # one seed, no rank offset: 2.0's duplicated draws
    lines = IMPORTS + 'scheduler = dict(type="rflow-timeshift", timestep_rng="per_sample", stratified=True)\n'
    full, _ = run_script(root, "dist_full", lines, ranks=2, epochs=2)
    for a, b in zip(full[0], full[1]):
        assert set(a["t"]).isdisjoint(b["t"])
    resumed, _ = run_script(root, "dist_resumed", lines, ranks=2, epochs=2, start_epoch=1, start_step=2)
    for r in range(2):
        assert resumed[r] == full[r][-len(resumed[r]):]
    # Buckets of different sizes on each rank, as 2.0's bucket sampler gives them: still no shared position.
    uneven = {0: [(3, 17, 256, 256), (1, 1, 256, 256)], 1: [(1, 17, 256, 256), (4, 1, 256, 256)]}
    ragged, _ = run_script(root, "dist_uneven", lines, ranks=2, buckets=uneven)
    for a, b in zip(ragged[0], ragged[1]):
        assert set(a["t"]).isdisjoint(b["t"]) and len(set(a["t"])) == len(a["t"])


# --- the edges: what stock does past the guard's range, dtypes, direct calls, reloads ---------------------------

def test_past_the_old_bound_the_distribution_decides_and_ignore_is_stock():
    # 4K, 129 frames: 33 latent frames of 135 x 240 (32400 tokens at inference): alpha = lin(32400) sqrt(33) ~ 102.
    # Changed on purpose (was: refused past 100): 2.0's logit-normal(0, 1) shifted by ln 102 keeps only
    # 1 - Phi(logit(0.999) - ln 102) ~ 1.1% of its draws within 1/1000 of t = 1, so the guard lets it train as stock.
    stock = rational(lin(32400) * math.sqrt(33), torch.linspace(1, 0, 5)).tolist()
    assert Opensora2Timesteps().schedule(4, 32400, 33) == stock
    assert Opensora2Timesteps(on_degenerate="ignore").schedule(4, 32400, 33) == stock
    assert Opensora2Timesteps(on_degenerate="clamp").factor(33, 32400) == 100.0
    # 400000 tokens: alpha ~ 1202, ln alpha ~ 7.09 > logit(0.999) ~ 6.91: Phi(0.18) ~ 57% pile up at t = 1: refused.
    with pytest.raises(ots.MetaError, match=r"a latent of 33 frames and 400000 tokens pile up: with shift factor "
                                            r"1\d\d\d\.\d*, 5\d\.\d% of the draws lie within 0.001 of t = 1"):
        Opensora2Timesteps().factor(33, 400000)


def test_small_factors_and_half_precision_stay_in_the_unit_interval():
    assert Opensora2Timesteps(resolution_shift="constant", shift=0.011).schedule(10, 256, 1)[0] == 1.0
    ts = Opensora2Timesteps(sample_method="uniform", resolution_shift="constant", shift=0.02)
    t = ts.training_timesteps(torch.zeros(10_000, dtype=torch.bfloat16), (1, 32, 32))
    assert t.dtype == torch.float32 and float(t.max()) <= 1.0  # drawn and shifted in float32; train.py casts after


@pytest.mark.parametrize("call, error, message", [
    (lambda ts: ts.training_timesteps(torch.tensor([1, 0]), (1, 32, 32)), ots.SettingError, "one floating timestep"),
    (lambda ts: ts.training_timesteps(torch.tensor(0.5), (1, 32, 32)), ots.SettingError, "one floating timestep"),
    (lambda ts: ts.training_timesteps([0.5], (1, 32, 32)), ots.SettingError, "one floating timestep"),
    (lambda ts: ts.training_timesteps(torch.rand(2), (1, 1, 1)), ots.MetaError, "holds no token of patch size 2"),
    (lambda ts: ts.training_timesteps(torch.rand(2), (1, 32, 32), (0, 256, 256)), ots.SettingError,
     "clip frames=0 is not allowed"),
    (lambda ts: ts.factor(9, "256"), ots.SettingError, "tokens='256' is not allowed"),
    (lambda ts: ts.schedule(-1, 256, 1), ots.SettingError, "num_steps=-1 is not allowed"),
])
def test_direct_calls_are_validated(call, error, message):
    with pytest.raises(error, match=message):
        call(Opensora2Timesteps(on_degenerate="ignore"))


def test_unknown_setting_lists_only_what_2_0_takes():
    with pytest.raises(TypeError) as err:
        Opensora2Timesteps(foo=1)
    takes = str(err.value).split("(Open-Sora 2.0) takes ")[1].split(";")[0]
    assert "num_timesteps" not in takes and "backend" not in takes and "shift_mode" in takes


def test_flow_shift_must_be_a_positive_number(fake2):
    _, sampling = fake2
    ots.opensora2.install(dict(scheduler=dict(type="rflow-timeshift")))
    for bad in (float("nan"), 0.0, -1.0, True):
        with pytest.raises(ots.SettingError, match="sampling_option.flow_shift=.* is not allowed"):
            sampling.get_schedule(4, 256, 1, shift_alpha=bad)
    assert sampling.get_schedule(0, 256, 1) == [1.0]  # as stock: no step, the start only


def test_unpatch_after_a_reload_still_restores(fake2):
    config, sampling = fake2
    stock_schedule, stock_merge = sampling.get_schedule, config.merge_args
    ots.opensora2.hook_config_parsing()
    config.merge_args({"scheduler": {"type": "rflow-timeshift"}}, [])
    assert sampling.get_schedule is not stock_schedule
    ots.opensora2._ORIGINALS.clear()  # what a reloaded or re-imported copy of the module starts with
    ots.opensora2.unpatch()
    assert sampling.get_schedule is stock_schedule and config.merge_args is stock_merge


def test_fixed_cycle_on_2_0_follows_train_py_step():
    ts = Opensora2Timesteps(sample_method="fixed", timesteps=[0.2, 0.4, 0.6], fixed_order="cycle",
                            timestep_rng="per_sample", use_timestep_transform=False)
    seen = [ts.training_timesteps(torch.zeros(2), (1, 32, 32), step=s).tolist() for s in range(3)]
    torch.testing.assert_close(torch.tensor(seen), torch.tensor([[0.2, 0.4], [0.4, 0.6], [0.6, 0.2]]))
    with pytest.raises(ots.SettingError, match="fixed_order='cycle' visits the list"):
        Opensora2Timesteps(sample_method="fixed", fixed_order="cycle")
