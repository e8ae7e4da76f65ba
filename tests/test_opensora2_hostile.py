"""Open-Sora 2.0 under hostile use: bad timesteps and schedule arguments, odd scheduler entries, command-line
overrides, an Open-Sora whose config module fails, reloads and unpatch sequences.

Each case ends with a named error or a correct result; expected numbers are 2.0's formulas by hand.
"""

import os
import subprocess
import sys
import textwrap
import threading
import types

import pytest
import torch
from mmengine.config import Config, ConfigDict

import opensora_timeshift_patch as ots
from fake_opensora import write_fake_opensora2
from opensora_timeshift_patch import opensora2
from opensora_timeshift_patch.opensora2 import Opensora2LayoutError, Opensora2Timesteps

M = 2 / 3840  # the slope of 2.0's get_res_lin_function


def lin(tokens):
    return M * tokens + (1 - M * 256)


def rational(a, t):
    return a * t / (1 + (a - 1) * t)


# --- the timesteps train.py passes in -------------------------------------------------------------------------

BAD_T = [float("nan"), float("inf"), 1.5, -0.5]


@pytest.mark.parametrize("bad", BAD_T)
@pytest.mark.parametrize("settings", [{}, dict(use_timestep_transform=False)])
def test_a_t_outside_the_unit_interval_is_named_on_error(bad, settings):
    t = torch.tensor([0.25, bad, 0.5])
    with pytest.raises(ots.MetaError, match=rf"t={bad!r} is not allowed: train.py's timesteps are in \[0, 1\]"):
        Opensora2Timesteps(**settings).training_timesteps(t, (9, 32, 32))


@pytest.mark.parametrize("bad", BAD_T)
@pytest.mark.parametrize("mode", ["clamp", "ignore"])
def test_a_t_outside_the_unit_interval_stops_clamp_and_ignore_by_a_device_assert(bad, mode):
    # On the CPU torch._assert_async raises at once; on a GPU it stops the run at this step, with no host sync.
    with pytest.raises(RuntimeError, match=r"outside \[0, 1\] or not finite"):
        Opensora2Timesteps(on_degenerate=mode).training_timesteps(torch.tensor([bad, 0.5]), (9, 32, 32))


def test_t_at_the_ends_is_stock():
    t = torch.tensor([0.0, 1.0])
    alpha = lin(256) * 3  # a 32 x 32 latent of 9 frames
    assert Opensora2Timesteps().training_timesteps(t, (9, 32, 32)).tolist() == rational(alpha, t).tolist()


# --- get_schedule's arguments ---------------------------------------------------------------------------------

HOSTILE_SCHEDULE = [
    (dict(num_steps=True), "num_steps=True is not allowed: use an int in [0, 100000]"),
    (dict(num_steps=2.5), "num_steps=2.5 is not allowed"),
    (dict(num_steps=float("nan")), "num_steps=nan is not allowed"),
    (dict(num_steps=-1), "num_steps=-1 is not allowed"),
    (dict(num_steps=10**9), "num_steps=1000000000 is not allowed"),
    (dict(image_seq_len=0), "image_seq_len=0 is not allowed: use an int in [1, 1000000000]"),
    (dict(image_seq_len=False), "image_seq_len=False is not allowed"),
    (dict(image_seq_len=256.0), "image_seq_len=256.0 is not allowed"),
    (dict(image_seq_len=10**12), "image_seq_len=1000000000000 is not allowed"),
    (dict(num_frames=float("nan")), "num_frames=nan is not allowed"),
    (dict(num_frames=-3), "num_frames=-3 is not allowed: use an int in [1, 1000000]"),
    (dict(num_frames=True), "num_frames=True is not allowed"),
    (dict(num_frames=10**7), "num_frames=10000000 is not allowed"),
]


@pytest.mark.parametrize("bad, message", HOSTILE_SCHEDULE, ids=lambda v: str(v)[:40])
@pytest.mark.parametrize("settings", [{}, dict(use_timestep_transform=False)])
def test_schedule_arguments_are_named(bad, message, settings):
    args = {"num_steps": 4, "tokens": 256, "latent_frames": 9}
    args.update({{"image_seq_len": "tokens", "num_frames": "latent_frames"}.get(k, k): v for k, v in bad.items()})
    with pytest.raises(ots.SettingError, match=message.replace("[", r"\[").replace("]", r"\]")):
        Opensora2Timesteps(**settings).schedule(**args)


@pytest.mark.parametrize("bad, message", HOSTILE_SCHEDULE, ids=lambda v: str(v)[:40])
@pytest.mark.parametrize("extra", [{}, dict(shift=False), dict(shift_alpha=3.0)])
def test_get_schedule_arguments_are_named_on_every_path(fake2, bad, message, extra):
    _, sampling = fake2
    opensora2.install(dict(scheduler=dict(type="rflow-timeshift")))
    args = dict(dict(num_steps=4, image_seq_len=256, num_frames=9), **bad, **extra)
    with pytest.raises(ots.SettingError, match="get_schedule " + message.replace("[", r"\[").replace("]", r"\]")):
        sampling.get_schedule(**args)


@pytest.mark.parametrize("kwargs, message", [
    (dict(shift="False"), "sampling_option.shift='False' is not allowed: use True or False"),
    (dict(shift=1), "sampling_option.shift=1 is not allowed"),
    (dict(base_shift=float("nan")), "get_schedule base_shift=nan is not allowed"),
    (dict(max_shift="3"), "get_schedule max_shift='3' is not allowed"),
])
def test_get_schedule_switches_are_strict(fake2, kwargs, message):
    _, sampling = fake2
    opensora2.install(dict(scheduler=dict(type="rflow-timeshift")))
    with pytest.raises(ots.SettingError, match=message):
        sampling.get_schedule(4, 256, 9, **kwargs)


def test_stock_meanings_at_inference_are_said_once_and_stay_stock(fake2, caplog):
    _, sampling = fake2
    stock = sampling.get_schedule
    opensora2.install(dict(scheduler=dict(type="rflow-timeshift", shift_mode="spatial")))
    grid = torch.linspace(1, 0, 5)
    with caplog.at_level("WARNING", logger="opensora_timeshift_patch"):
        for _ in range(2):
            assert sampling.get_schedule(4, 256, 9, shift_alpha=3.0) == rational(3.0, grid).tolist()
            assert sampling.get_schedule(4, 256, 9, shift=False) == grid.tolist()
            # The caller's own anchors: stock's rule with them, lin(256; 256 -> 0.5, 4096 -> 1.15) * sqrt(9).
            assert sampling.get_schedule(4, 256, 9, base_shift=0.5, max_shift=1.15) == pytest.approx(
                rational(0.5 * 3, grid).tolist(), abs=1e-7)
    said = [r.getMessage() for r in caplog.records]
    assert len(said) == 3 and all("shift settings do not apply" in s for s in said)
    assert "flow_shift=3.0 sets the shift factor" in said[0] and "shift=False" in said[1]
    # Stock's get_schedule, called as it is, still gives stock's bits: its time_shift call gets stock's own.
    assert sampling.time_shift is not None and opensora2._ours(sampling.time_shift)
    assert stock(4, 256, 9) == rational(lin(256) * 3, grid).tolist()


# --- the scheduler entry --------------------------------------------------------------------------------------

def test_config_dict_and_config_entries_work(fake2):
    _, sampling = fake2
    grid = torch.linspace(1, 0, 5)
    for entry in (ConfigDict(type="rflow-timeshift", shift_mode="spatial"),
                  Config(dict(type="rflow-timeshift", shift_mode="spatial"))):
        assert opensora2.install(Config(dict(scheduler=entry)) if isinstance(entry, ConfigDict)
                                 else dict(scheduler=entry))
        assert sampling.get_schedule(4, 256, 9) == rational(lin(256), grid).tolist()


@pytest.mark.parametrize("scheduler, message", [
    (dict(type="rflow_timeshift"), r"scheduler type='rflow_timeshift' is not allowed .* Did you mean 'rflow-timeshift'"),
    (dict(type="RFlow-TimeShift"), "Did you mean 'rflow-timeshift'"),
    (dict(type="rflow"), r"scheduler type='rflow' is not allowed on Open-Sora 2.0, which builds no scheduler: use "
                         r"dict\(type='rflow-timeshift', ...\) or remove the scheduler key$"),
    (dict(shift_mode="legacy"), "scheduler type=None is not allowed"),
    (dict(type=["rflow-timeshift"]), r"scheduler type=\['rflow-timeshift'\] is not allowed"),
    ({"type": "rflow-timeshift", 1: 2}, "scheduler key 1 is not allowed: setting names are strings"),
    (5, "scheduler type=5 is not allowed"),
])
def test_bad_entries_are_named(fake2, scheduler, message):
    with pytest.raises(ots.SettingError, match=message):
        opensora2.install(dict(scheduler=scheduler))


# --- command-line overrides (the fake 2.0 merge_args: literal values, else strings) ---------------------------

@pytest.mark.parametrize("args, message", [
    (["--scheduler.shift_mode", "None"], "shift_mode=None is not allowed"),
    (["--scheduler.stratified", "yes", "--scheduler.timestep_rng", "per_sample"], "stratified='yes' is not allowed"),
    (["--scheduler.transform_scale", "2,5"], r"transform_scale=\(2, 5\) is not allowed"),
    (["--scheduler.type", "rflow-timeshfit"], "Did you mean 'rflow-timeshift'"),
    (["--scheduler.patch_size", "1.0"], "patch_size=1.0 is not allowed"),
])
def test_overrides_that_change_a_type_are_named(fake2, args, message):
    config, _ = fake2
    opensora2.hook_config_parsing()
    with pytest.raises((ots.SettingError, TypeError), match=message):
        config.merge_args(Config(dict(scheduler=dict(type="rflow-timeshift"))), args)


def test_a_failing_override_names_the_scheduler_override_and_others_stay_2_0s(fake2):
    config, _ = fake2
    opensora2.hook_config_parsing()
    with pytest.raises(ots.SettingError, match=r"merge_args refused the command line \(KeyError: 'scheduler'\) with "
                                               "the scheduler overrides --scheduler.shift_mode legacy"):
        config.merge_args(Config(dict(seed=1)), ["--scheduler.shift_mode", "legacy"])
    with pytest.raises(KeyError):  # not a scheduler override: 2.0's own error, untouched
        config.merge_args(Config(dict(seed=1)), ["--model.depth", "2"])


# --- where time_shift is bound --------------------------------------------------------------------------------

PREPARE = textwrap.dedent('''
    import math
    import opensora.utils.sampling as sampling

    def prepare_inputs(x_0, t):
        shift_alpha = sampling.get_res_lin_function()((x_0.shape[-1] * x_0.shape[-2]) // 4)
        shift_alpha *= math.sqrt(x_0.shape[-3])
        return sampling.time_shift(shift_alpha, t)
''')


def test_module_attribute_and_every_imported_module_are_bound_and_unpatch_restores(fake2):
    _, sampling = fake2
    stock = sampling.time_shift
    ns = {}
    exec(compile(PREPARE, "train.py", "exec"), ns)
    lib = types.ModuleType("trainlib_for_test")
    exec("from opensora.utils.sampling import time_shift\n", vars(lib))
    sys.modules[lib.__name__] = lib
    try:
        opensora2.install(dict(scheduler=dict(type="rflow-timeshift", shift_mode="spatial")))
        x_0, t = torch.zeros(2, 16, 9, 32, 32), torch.tensor([0.25, 0.5])
        assert ns["prepare_inputs"](x_0, t).tolist() == t.tolist()  # spatial: alpha = lin(256) = 1
        assert opensora2._ours(lib.time_shift)
        late = types.ModuleType("late_for_test")  # imported after the hooks: it gets them from the module
        exec("from opensora.utils.sampling import time_shift\n", vars(late))
        sys.modules[late.__name__] = late
        assert opensora2._ours(late.time_shift)
        ots.unpatch()
        assert sampling.time_shift is stock and lib.time_shift is stock and late.time_shift is stock
        assert ns["prepare_inputs"](x_0, t).tolist() == rational(3.0, t).tolist()  # stock: lin(256) * sqrt(9)
    finally:
        sys.modules.pop(lib.__name__)
        sys.modules.pop("late_for_test", None)


def test_script_aliases_are_bound_by_value(fake2):
    _, sampling = fake2
    ns = {}
    exec("from opensora.utils.sampling import time_shift as ts\n", ns)
    opensora2.install(dict(scheduler=dict(type="rflow-timeshift")), ns)
    assert opensora2._ours(ns["ts"])
    ots.unpatch()
    assert ns["ts"] is sampling.time_shift and not opensora2._ours(ns["ts"])


# --- reloads and unpatch sequences ----------------------------------------------------------------------------

RELOAD_SEQUENCE = textwrap.dedent("""
    import importlib
    import torch
    from mmengine.config import Config
    import opensora_timeshift_patch as ots
    from opensora_timeshift_patch import opensora2
    from opensora.utils import config, sampling

    grid = torch.linspace(1, 0, 5).tolist()
    spatial = Config(dict(scheduler=dict(type="rflow-timeshift", shift_mode="spatial")))
    stock_merge, stock_schedule, stock_shift = (opensora2._stock_of(f) for f in
                                                (config.merge_args, sampling.get_schedule, sampling.time_shift))
    assert opensora2.hook_config_parsing() and opensora2.hook_config_parsing()
    assert config.merge_args.original is stock_merge  # hooked once, not wrapped twice
    config.merge_args(Config(dict(scheduler=dict(type="rflow-timeshift"))), [])
    importlib.reload(opensora2)  # fresh bookkeeping; the hooks bound before stay
    assert opensora2.hook_config_parsing() and config.merge_args.original is stock_merge
    config.merge_args(spatial, [])
    assert sampling.get_schedule(4, 256, 9) == grid
    importlib.reload(ots)
    ots.unpatch()
    ots.unpatch()
    assert (config.merge_args, sampling.get_schedule, sampling.time_shift) == (stock_merge, stock_schedule,
                                                                               stock_shift)
    config.merge_args(spatial, [])  # unhooked: stock
    assert sampling.get_schedule is stock_schedule
    assert opensora2.hook_config_parsing()  # hooked again, a parse applies again
    config.merge_args(spatial, [])
    assert sampling.get_schedule(4, 256, 9) == grid
    print("sequence ok")
""")


def test_reload_hook_again_and_unpatch_twice(tmp_path):
    write_fake_opensora2(tmp_path)
    (tmp_path / "uses.py").write_text("from opensora.utils.sampling import get_schedule\n")  # what the check reads
    done = python(tmp_path, "import uses\n" + RELOAD_SEQUENCE)
    assert done.returncode == 0 and "sequence ok" in done.stdout, done.stderr[-3000:]


def test_a_failed_install_leaves_stock_bound(fake2):
    config, sampling = fake2
    stock = (sampling.time_shift, sampling.get_schedule)
    opensora2.hook_config_parsing()
    with pytest.raises(Opensora2LayoutError, match="neither it nor a module imported before parse_configs"):
        parse_in_a_script_without_2_0_code(config)
    assert (sampling.time_shift, sampling.get_schedule) == stock


def parse_in_a_script_without_2_0_code(config):
    """Parse from a thread of its own, so that no frame above it (this test's) names 2.0's functions."""
    ns = {"config": config, "Config": Config}
    exec(compile("def main():\n    config.merge_args(Config(dict(scheduler=dict(type='rflow-timeshift'))), [])\n",
                 "own.py", "exec"), ns)
    errors = []

    def target():
        try:
            ns["main"]()
        except Exception as err:
            errors.append(err)

    thread = threading.Thread(target=target)
    thread.start()
    thread.join()
    if errors:
        raise errors[0]


# --- an Open-Sora 2.0 whose config module cannot be hooked ---------------------------------------------------

BROKEN = {
    "import_fails": 'raise TypeError("unsupported operand type(s) for |: \'type\' and \'type\'")\n',
    "no_merge_args": "def parse_configs():\n    return None\n",
}


def python(root, code):
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(root), os.environ.get("PYTHONPATH", "")]))
    return subprocess.run([sys.executable, "-W", "always", "-c", code], capture_output=True, text=True, env=env,
                          cwd=root, timeout=600)


@pytest.mark.parametrize("kind", list(BROKEN))
def test_an_unhookable_2_0_warns_once_and_refuses_a_config_that_asks(tmp_path, kind):
    write_fake_opensora2(tmp_path)
    (tmp_path / "opensora" / "utils" / "config.py").write_text(BROKEN[kind])
    problem = ("opensora.utils.config failed to import (TypeError: unsupported operand" if kind == "import_fails"
               else "opensora.utils.config has no merge_args")
    done = python(tmp_path, "import opensora_timeshift_patch, importlib; "
                            "importlib.reload(opensora_timeshift_patch); print('imported')")
    assert done.returncode == 0 and "imported" in done.stdout, done.stderr[-2000:]
    assert done.stderr.count(problem) == 1 and "Traceback" not in done.stderr
    (tmp_path / "asks.py").write_text('custom_imports = dict(imports=["opensora_timeshift_patch"])\n'
                                      'scheduler = dict(type="rflow-timeshift")\n')
    (tmp_path / "plain.py").write_text('custom_imports = dict(imports=["opensora_timeshift_patch"])\nseed = 1\n')
    read = "from mmengine.config import Config; Config.fromfile({!r}); print('read')"
    done = python(tmp_path, read.format(str(tmp_path / "plain.py")))
    assert done.returncode == 0 and "read" in done.stdout, done.stderr[-2000:]
    done = python(tmp_path, read.format(str(tmp_path / "asks.py")))
    assert done.returncode != 0
    last = done.stderr.strip().splitlines()[-1]
    assert "Opensora2LayoutError: this config has scheduler = {'type': 'rflow-timeshift'}, but " + problem in last
    assert "the scheduler would silently not apply" in last
