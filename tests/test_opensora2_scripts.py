"""Open-Sora 2.0: every way a script can reach (or miss) 2.0's timestep code, run as its own process.

The scripts are 2.0's train.py and inference.py (``fake_opensora``) with one change each: the config parsed
through a helper module, ``time_shift`` called as a module attribute, the training loop in a module of its own,
the shift written inline, ``get_schedule`` imported by the script. Each must either take the settings or stop with
an error that says why; none may train on stock's timesteps in silence. Expected numbers are 2.0's formulas by
hand (alpha = lin(tokens; 256 -> 1, 4096 -> 3) * sqrt(T_latent), t' = a t / (1 + (a - 1) t)).
"""

import json
import os
import subprocess
import sys

import pytest
import torch

from fake_opensora import INFERENCE_2, TRAIN_2, write_fake_opensora2

BUCKETS = [(2, 1, 256, 256), (3, 33, 256, 256)]
IMPORTS = 'custom_imports = dict(imports=["opensora_timeshift_patch"], allow_failed_imports=False)\n'
UNIFORM = IMPORTS + 'scheduler = dict(type="rflow-timeshift", sample_method="uniform", use_timestep_transform=False)\n'
PER_SAMPLE = IMPORTS + 'scheduler = dict(type="rflow-timeshift", timestep_rng="per_sample", sample_method="uniform")\n'
M = 2 / 3840  # the slope of 2.0's get_res_lin_function: (3 - 1) / (4096 - 256)


def lin(tokens):
    return M * tokens + (1 - M * 256)


def rational(a, t):
    return a * t / (1 + (a - 1) * t)


STOCK_IMPORT = "from opensora.utils.sampling import get_res_lin_function, time_shift"
SCRIPTS = {
    # parse_configs called by a helper module: the frame above parse_configs is the helper's, not train.py's
    "train_helper.py": TRAIN_2.replace("from opensora.utils.config import parse_configs\n", "import helper\n")
                              .replace("cfg = parse_configs()", "cfg = helper.load()"),
    # time_shift looked up on the module at each call
    "train_attr.py": TRAIN_2.replace(STOCK_IMPORT, "import opensora.utils.sampling as sampling")
                            .replace("get_res_lin_function()", "sampling.get_res_lin_function()")
                            .replace("t = time_shift(", "t = sampling.time_shift("),
    # the whole training loop in a module imported before the config is parsed
    "train_lib.py": "import trainlib\nfrom opensora.utils.config import parse_configs\n\n"
                    "if __name__ == '__main__':\n    trainlib.run(parse_configs())\n",
    # 2.0's factor, but the shift written out instead of time_shift
    "train_inline.py": TRAIN_2.replace(STOCK_IMPORT, "from opensora.utils.sampling import get_res_lin_function")
                              .replace("t = time_shift(shift_alpha, t).to(dtype)",
                                       "t = (shift_alpha * t / (1 + (shift_alpha - 1) * t)).to(dtype)"),
    # no 2.0 timestep code at all
    "train_own.py": TRAIN_2.replace(STOCK_IMPORT, "")
                           .replace("get_res_lin_function()((x_0.shape[-1] * x_0.shape[-2]) // 4)", "1.0")
                           .replace("t = time_shift(shift_alpha, t).to(dtype)", "t = t.to(dtype)"),
    # an inference script that calls get_schedule itself
    "infer_own.py": INFERENCE_2.replace("from opensora.utils.sampling import SamplingOption, prepare_api",
                                        "from opensora.utils.sampling import get_schedule")
                               .replace("    api_fn = prepare_api()\n    opt = SamplingOption(**cfg.sampling_option)\n"
                                        "    timesteps = api_fn(opt, patch_size=cfg.get(\"patch_size\", 2),\n"
                                        "                       spatial_compression=cfg.get(\"ae_spatial_compression\","
                                        " 16))\n",
                                        "    timesteps = get_schedule(4, 256, 9)\n"),
}
HELPER = "from opensora.utils.config import parse_configs\n\n\ndef load():\n    return parse_configs()\n"
TRAINLIB = TRAIN_2.replace("def main():\n    cfg = parse_configs()\n", "def run(cfg):\n") \
                  .replace('if __name__ == "__main__":\n    main()\n', "")


@pytest.fixture(scope="module")
def root(tmp_path_factory):
    root = write_fake_opensora2(tmp_path_factory.mktemp("opensora2_scripts"))
    for name, text in SCRIPTS.items():
        assert text != TRAIN_2 and text != INFERENCE_2, name  # each replace above found its line
        (root / name).write_text(text)
    (root / "helper.py").write_text(HELPER)
    (root / "trainlib.py").write_text(TRAINLIB)
    assert "def run(cfg)" in TRAINLIB and "parse_configs()" not in TRAINLIB
    return root


def run(root, script, name, lines, **keys):
    """Run ``script`` on a config of ``keys`` and ``lines``: (records or None, exit code, stderr)."""
    keys = {"buckets": BUCKETS, **keys}
    out = root / f"{name}_0.json"
    (root / f"{name}.py").write_text("".join(f"{k} = {v!r}\n" for k, v in keys.items())
                                     + f"out = {str(root / name)!r} + '_{{rank}}.json'\n" + lines)
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(root), os.environ.get("PYTHONPATH", "")]),
               OMP_NUM_THREADS="1")
    done = subprocess.run([sys.executable, str(root / script), str(root / f"{name}.py")], capture_output=True,
                          text=True, env=env, cwd=root, timeout=600)
    return (json.loads(out.read_text()) if out.exists() else None), done.returncode, done.stderr


def expected_uniform(seed=1024):
    """Stock draws randn(bs) in prepare_inputs first; the uniform draw follows from the same global RNG."""
    torch.manual_seed(seed)
    out = []
    for bs, *_ in BUCKETS:
        torch.randn(bs)
        out.append(torch.rand(bs, dtype=torch.float64).float().tolist())
    return out


@pytest.mark.parametrize("script", ["train.py", "train_helper.py", "train_attr.py", "train_lib.py"])
def test_every_route_to_time_shift_takes_the_settings(root, script):
    records, rc, log = run(root, script, script[:-3] + "_uniform", UNIFORM)
    assert rc == 0, log[-3000:]
    assert [r["t"] for r in records] == expected_uniform()
    assert log.count("training timesteps now come from") == 1


def test_per_sample_stream_is_the_same_through_a_helper_and_a_module_attribute(root):
    stock, rc, log = run(root, "train.py", "ps_stock", "")
    assert rc == 0, log[-3000:]
    runs = {}
    for script in ("train.py", "train_helper.py", "train_attr.py", "train_lib.py"):
        records, rc, log = run(root, script, f"ps_{script[:-3]}", PER_SAMPLE)
        assert rc == 0, log[-3000:]
        runs[script] = [r["t"] for r in records]
    assert len({json.dumps(v) for v in runs.values()}) == 1  # one stream, whichever way train.py reaches time_shift
    assert runs["train.py"] != [r["t"] for r in stock]


def test_an_inline_shift_is_refused_at_parse_time(root):
    records, rc, log = run(root, "train_inline.py", "inline", PER_SAMPLE)
    assert rc != 0 and records is None
    assert "train_inline.py computes 2.0's shift factor (get_res_lin_function) but never calls time_shift" in log
    # Without the scheduler key the same script runs as it is.
    _, rc, log = run(root, "train_inline.py", "inline_stock", IMPORTS)
    assert rc == 0, log[-3000:]


def test_a_script_with_no_2_0_timestep_code_is_refused(root):
    records, rc, log = run(root, "train_own.py", "own", PER_SAMPLE)
    assert rc != 0 and records is None
    assert "neither it nor a module imported before parse_configs calls time_shift" in log


def test_inference_names_the_training_only_settings(root):
    keys = dict(sampling_option=dict(height=256, width=256, num_frames=33, num_steps=4))
    stock, rc, log = run(root, "inference.py", "inf_stock", "", **keys)
    assert rc == 0, log[-3000:]
    ours, rc, log = run(root, "inference.py", "inf_ps", PER_SAMPLE, **keys)
    assert rc == 0, log[-3000:]
    assert ours == stock == rational(3.0, torch.linspace(1, 0, 5)).tolist()  # 256 tokens, 9 latent frames: 1 x 3
    assert "timestep_rng, sample_method act on training only and do not change it" in log


def test_an_inference_script_calling_get_schedule_itself_takes_the_settings(root):
    lines = IMPORTS + 'scheduler = dict(type="rflow-timeshift", shift_mode="spatial")\n'
    ours, rc, log = run(root, "infer_own.py", "infer_own_cfg", lines)
    assert rc == 0, log[-3000:]
    assert ours == rational(lin(256), torch.linspace(1, 0, 5)).tolist()  # spatial: no sqrt(9); stock would be 3
    assert "get_schedule replaced" in log


def test_a_whole_scheduler_override_on_a_config_without_one_names_the_override(root):
    (root / "noscheduler.py").write_text(f"buckets = {BUCKETS!r}\nout = {str(root / 'nos')!r} + '_{{rank}}.json'\n"
                                         + IMPORTS)
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(root), os.environ.get("PYTHONPATH", "")]))
    done = subprocess.run([sys.executable, str(root / "train.py"), str(root / "noscheduler.py"),
                           "--scheduler.shift_mode", "legacy"], capture_output=True, text=True, env=env, cwd=root,
                          timeout=600)
    assert done.returncode != 0
    last = done.stderr.strip().splitlines()[-1]
    assert "merge_args refused the command line" in last and "--scheduler.shift_mode legacy" in last


def test_a_misspelled_type_on_the_command_line_is_named(root):
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(root), os.environ.get("PYTHONPATH", "")]))
    (root / "typo.py").write_text(f"buckets = {BUCKETS!r}\nout = {str(root / 'typo')!r} + '_{{rank}}.json'\n"
                                  + PER_SAMPLE)
    done = subprocess.run([sys.executable, str(root / "train.py"), str(root / "typo.py"),
                           "--scheduler.type", "rflow_timeshift"], capture_output=True, text=True, env=env,
                          cwd=root, timeout=600)
    assert done.returncode != 0
    assert "scheduler type='rflow_timeshift' is not allowed" in done.stderr
    assert "Did you mean 'rflow-timeshift'?" in done.stderr
