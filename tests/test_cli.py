"""The opensora-timeshift command line: output, figures, audits, derived configs and their errors."""

import ast
import csv
import hashlib
import json
import math
import os
import re
import subprocess
import sys
import uuid
from pathlib import Path

import pytest
from mmengine.config import Config
from mmengine.logging import MMLogger

from opensora_timeshift_patch.cli import config as config_command
from opensora_timeshift_patch.cli import options, views
from opensora_timeshift_patch.cli import main

FIXTURES = Path(__file__).parent / "fixtures"
BASE = FIXTURES / "opensora_v1_2_stage1.py"


def run(capsys, *argv):
    code = main([str(a) for a in argv])
    out = capsys.readouterr()
    return code, out.out, out.err


def run_any(capsys, *argv):
    """Like run, for argparse's errors too, which leave through SystemExit."""
    try:
        code = main([str(a) for a in argv])
    except SystemExit as exit_:
        code = exit_.code
    out = capsys.readouterr()
    return code, out.out, out.err


def snapshot(root):
    """Every path under root with its content hash (or link target): what a command must not change."""
    state = {}
    for dirpath, dirnames, filenames in os.walk(root):
        for name in dirnames + filenames:
            path = os.path.join(dirpath, name)
            rel = os.path.relpath(path, root)
            if os.path.islink(path):
                state[rel] = "-> " + os.readlink(path)
            elif os.path.isdir(path):
                state[rel] = "dir"
            else:
                state[rel] = hashlib.sha256(Path(path).read_bytes()).hexdigest()
    return state


def sigmoid(x):
    return 1 / (1 + math.exp(-x))


@pytest.mark.parametrize("command", ["inspect", "plot", "audit", "config"])
def test_every_subcommand_has_help(command, capsys):
    with pytest.raises(SystemExit) as exit_:
        main([command, "--help"])
    assert exit_.value.code == 0
    assert f"usage: opensora-timeshift {command}" in capsys.readouterr().out


def test_module_entry_point():
    out = subprocess.run([sys.executable, "-m", "opensora_timeshift_patch", "--help"], capture_output=True, text=True)
    assert out.returncode == 0 and "inspect" in out.stdout and "audit" in out.stdout


def test_inspect_json_values(capsys):
    code, out, _ = run(capsys, "inspect", "--frames", 16, "--resolution", "512x512", "--mode", "latent", "legacy",
                       "--json")
    assert code == 0
    rows = {r["mode"]: r for r in json.loads(out)["rows"]}
    latent = rows["latent"]
    assert (latent["t_eff"], latent["shift_factor"]) == (4, 2)  # sqrt(1) * sqrt(4)
    p5 = sigmoid(-1.6448536269514722)  # logit-normal 5th percentile
    assert latent["p5"] == pytest.approx(1000 * 2 * p5 / (1 + p5), rel=1e-6)
    assert latent["median"] == pytest.approx(1000 * 2 / 3, rel=1e-6)
    assert not latent["degenerate"] and latent["message"] is None
    legacy = rows["legacy"]
    assert legacy["degenerate"] and legacy["median"] == 0 and "shift_mode='latent'" in legacy["message"]


def test_inspect_table_marks_degenerate_rows_and_shows_the_guard(capsys):
    code, out, _ = run(capsys, "inspect", "--frames", 1, 16, "--resolution", "720p", "--mode", "legacy", "v13")
    assert code == 0
    lines = [line for line in out.splitlines() if line.startswith("720x1280")]
    assert len(lines) == 4
    assert "DEGENERATE" in next(line for line in lines if " 16 " in line and "legacy" in line)
    assert "guard (on_degenerate='error'): shift_mode='legacy' gives T_eff = 0 for num_frames=16" in out


def test_inspect_rejects_bad_resolution(capsys):
    with pytest.raises(SystemExit) as exit_:
        main(["inspect", "--resolution", "720by1280"])
    assert exit_.value.code == 2
    assert "resolution '720by1280' is not HxW" in capsys.readouterr().err


def test_plot_writes_one_png_per_bucket(tmp_path, capsys):
    code, out, _ = run(capsys, "plot", "--out", tmp_path, "--frames", 16, 51, "--resolution", "256x256", "720x1280",
                       "--samples", 2000)
    assert code == 0
    files = sorted(tmp_path.glob("*.png"))
    assert [f.name for f in files] == ["timeshift_256x256_16f.png", "timeshift_256x256_51f.png",
                                       "timeshift_720x1280_16f.png", "timeshift_720x1280_51f.png"]
    assert all(f.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and f.stat().st_size > 10_000 for f in files)
    assert out.split() == [str(f) for f in files]


def test_audit_csv_finds_the_collapse_and_exits_1(capsys):
    code, out, _ = run(capsys, "audit", "--csv", FIXTURES / "dataset_mixed.csv", "--no-progress")
    assert code == 1
    assert "7 clips in 5 buckets" in out
    row = next(line for line in out.splitlines() if line.startswith("720x1280") and " 16 " in line)
    assert row.split()[:4] == ["720x1280", "16", "3", "t"] and "0!" in row
    assert "FAIL: 3 clips would train with every timestep at t = 0" in out and "shift_mode='latent'" in out


def test_audit_config_alone_and_both(capsys):
    code, out, _ = run(capsys, "audit", "--config", BASE)
    assert code == 1 and "buckets with [16] frames would train" in out
    code, out, _ = run(capsys, "audit", "--config", BASE, "--csv", FIXTURES / "dataset_mixed.csv", "--no-progress")
    assert code == 1
    # the 102-frame clip trains in the 51-frame bucket: the largest configured count it fills
    assert next(line for line in out.splitlines() if line.startswith("720x1280") and " 51 " in line).split()[2] == "1"


def test_audit_passes_a_fixed_config(tmp_path, capsys):
    code, _, _ = run(capsys, "config", BASE, "--shift-mode", "latent", "--out", tmp_path / "fixed.py")
    assert code == 0
    code, out, _ = run(capsys, "audit", "--config", tmp_path / "fixed.py", "--csv", FIXTURES / "dataset_mixed.csv",
                       "--no-progress")
    assert code == 0 and "OK: no clip would train at t = 0" in out


@pytest.mark.parametrize(
    "scheduler, code, words",
    [
        ('dict(type="rflow", use_timestep_transform=False)', 0, "no shift"),
        ('dict(type="rflow-timeshift", shift_mode="legacy")', 1, "the guard would stop training"),
        ('dict(type="rflow-timeshift", shift_mode="legacy", on_degenerate="clamp")', 0, "Clamped clips"),
        ('dict(type="rflow-timeshift", shift_mode="legacy", on_degenerate="ignore")', 1, "3 clips would train"),
        ('dict(type="rflow", use_timestep_transform=True, scale_temporal=False)', 0, "OK"),
    ],
)
def test_audit_reads_the_current_scheduler(tmp_path, capsys, scheduler, code, words):
    cfg = tmp_path / "cfg.py"
    cfg.write_text(f"scheduler = {scheduler}\n")
    got, out, _ = run(capsys, "audit", "--config", cfg, "--csv", FIXTURES / "dataset_mixed.csv", "--no-progress")
    assert got == code and words in out


def test_audit_1_3_rule(tmp_path, capsys):
    data = tmp_path / "d.csv"
    data.write_text("path,num_frames,height,width\na,3,256,256\nb,16,256,256\n")
    code, out, _ = run(capsys, "audit", "--csv", data, "--opensora-version", "1.3", "--no-progress")
    assert code == 1 and "1 clips would train" in out  # (3 - 1) // 4 = 0; (16 - 1) // 4 = 3


def test_audit_bad_rows_stop_with_the_row_number(capsys):
    code, _, err = run(capsys, "audit", "--csv", FIXTURES / "dataset_bad_rows.csv", "--no-progress")
    assert code == 2
    assert "row 3: invalid num_frames: 0 is not a whole number from 1 to 2147483647" in err and "--skip-bad-rows" in err


def test_audit_skips_and_counts_bad_rows_on_request(capsys):
    code, out, _ = run(capsys, "audit", "--csv", FIXTURES / "dataset_bad_rows.csv", "--skip-bad-rows", "--no-progress")
    assert code == 0
    assert "2 clips in 2 buckets" in out
    assert "skipped 3 malformed rows: 1 invalid num_frames, 1 non-numeric num_frames, 1 missing height" in out
    assert "row 4: non-numeric num_frames: 'sixteen'" in out and "row 5: missing height" in out


def test_audit_missing_columns_and_inputs(tmp_path, capsys):
    data = tmp_path / "d.csv"
    data.write_text("path,text,frames\na,b,16\n")
    code, _, err = run(capsys, "audit", "--csv", data)
    assert code == 2 and "missing column(s) num_frames, height, width" in err
    code, _, err = run(capsys, "audit")
    assert code == 2 and "give --csv PATH, --config PATH or both" in err
    code, _, err = run(capsys, "audit", "--csv", tmp_path / "absent.csv")
    assert code == 2 and "absent.csv" in err


def test_audit_streams_a_large_csv(tmp_path, capsys):
    data = tmp_path / "big.csv"
    with data.open("w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["path", "text", "num_frames", "height", "width", "fps"])
        for i in range(200_000):
            writer.writerow([f"/clips/{i}.mp4", "a caption, with a comma", (16, 17, 51, 1)[i % 4], 240, 426, 24])
    code, out, _ = run(capsys, "audit", "--csv", data, "--no-progress")
    assert code == 1
    assert "200000 clips in 4 buckets" in out and "FAIL: 50000 clips would train" in out


def test_config_writes_loads_and_builds(tmp_path, capsys):
    out_path = tmp_path / "configs" / "train_frames16.py"
    code, out, _ = run(capsys, "config", BASE, "--shift-mode", "frames16", "--out", out_path, "--timestep-rng",
                       "per_sample", "--stratified", "--set", "timestep_seed=7", "resolution_shift=sqrt")
    assert code == 0 and f"wrote {out_path}" in out and "built the scheduler" in out
    cfg = Config.fromfile(str(out_path))
    assert cfg.scheduler == dict(type="rflow-timeshift", use_timestep_transform=True, sample_method="logit-normal",
                                 shift_mode="frames16", on_degenerate="error", timestep_rng="per_sample",
                                 stratified=True, timestep_seed=7, resolution_shift="sqrt")
    assert cfg.custom_imports["imports"] == ["opensora_timeshift_patch"]
    assert cfg.bucket_config == Config.fromfile(str(BASE)).bucket_config
    base_entry = out_path.read_text().split("_base_ = ['")[1].split("'")[0]
    assert not Path(base_entry).is_absolute()  # relative, so the pair of files can move together
    assert (out_path.parent / base_entry).resolve() == BASE.resolve()


def test_config_keeps_the_base_custom_imports(tmp_path, capsys):
    base = tmp_path / "base.py"
    base.write_text('custom_imports = dict(imports=["json"], allow_failed_imports=False)\n'
                    'scheduler = dict(type="rflow", use_timestep_transform=True)\n')
    code, _, _ = run(capsys, "config", base, "--shift-mode", "latent", "--out", tmp_path / "out.py")
    assert code == 0
    assert Config.fromfile(str(tmp_path / "out.py")).custom_imports["imports"] == ["json", "opensora_timeshift_patch"]


def test_config_keeps_a_single_custom_import_of_the_base(tmp_path, capsys):
    base = tmp_path / "base.py"
    base.write_text('custom_imports = dict(imports="json")\n'
                    'scheduler = dict(type="rflow", use_timestep_transform=True)\n')
    code, _, _ = run(capsys, "config", base, "--shift-mode", "latent", "--out", tmp_path / "out.py")
    assert code == 0
    assert Config.fromfile(str(tmp_path / "out.py")).custom_imports["imports"] == ["json", "opensora_timeshift_patch"]


def test_config_that_does_not_build_is_not_kept(tmp_path, capsys):
    out_path = tmp_path / "out.py"
    code, _, err = run(capsys, "config", BASE, "--shift-mode", "latent", "--out", out_path, "--stratified")
    assert code == 2 and "did not build" in err and "timestep_rng='per_sample'" in err
    assert not out_path.exists()
    code, _, err = run(capsys, "config", tmp_path / "nope.py", "--shift-mode", "latent", "--out", out_path)
    assert code == 2 and "does not exist" in err


# --- config: never lose a file, never run what --set says --------------------------------------------------

def test_config_never_writes_the_base(tmp_path, capsys):
    base = tmp_path / "base.py"
    base.write_text(BASE.read_text())
    (tmp_path / "link.py").symlink_to(base)
    before = snapshot(tmp_path)
    for out in (base, tmp_path / "link.py", tmp_path / "sub" / ".." / "base.py"):
        for force in ([], ["--force"]):
            code, _, err = run(capsys, "config", base, "--shift-mode", "latent", "--out", out, *force)
            assert code == 2 and "is the base config or one of its _base_ files" in err
    assert snapshot(tmp_path) == before


def test_config_never_writes_a_file_of_the_base_chain(tmp_path, capsys):
    (tmp_path / "common").mkdir()
    (tmp_path / "common" / "grand.py").write_text("seed = 1\n")
    (tmp_path / "stage").mkdir()
    (tmp_path / "stage" / "mid.py").write_text('_base_ = ["../common/grand.py"]\n')
    (tmp_path / "child.py").write_text('_base_ = ["stage/mid.py"]\n'
                                       'scheduler = dict(type="rflow", use_timestep_transform=True)\n')
    (tmp_path / "alias.py").symlink_to(tmp_path / "stage" / "mid.py")
    before = snapshot(tmp_path)
    for out in ("common/grand.py", "stage/mid.py", "alias.py", "stage/../common/grand.py"):
        code, _, err = run(capsys, "config", tmp_path / "child.py", "--shift-mode", "latent", "--out",
                           tmp_path / out, "--force")
        assert code == 2 and "_base_" in err, out
    assert snapshot(tmp_path) == before
    code, _, _ = run(capsys, "config", tmp_path / "child.py", "--shift-mode", "latent", "--out", tmp_path / "new.py")
    assert code == 0 and Config.fromfile(str(tmp_path / "new.py")).seed == 1


def test_config_keeps_an_existing_out_unless_forced_and_built(tmp_path, capsys):
    out_path = tmp_path / "train.py"
    out_path.write_text("# the user's own file\n")
    code, _, err = run(capsys, "config", BASE, "--shift-mode", "latent", "--out", out_path)
    assert code == 2 and "exists; pass --force" in err
    code, _, err = run(capsys, "config", BASE, "--shift-mode", "latent", "--out", out_path, "--force",
                       "--set", "bogus_key=1")
    assert code == 2 and "did not build" in err and "bogus_key" in err and len(err.splitlines()) == 1
    assert out_path.read_text() == "# the user's own file\n"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["train.py"]  # no temporary file left behind
    code, _, _ = run(capsys, "config", BASE, "--shift-mode", "latent", "--out", out_path, "--force")
    assert code == 0 and Config.fromfile(str(out_path)).scheduler.shift_mode == "latent"


def test_config_out_directory_is_a_named_error(tmp_path, capsys):
    code, _, err = run(capsys, "config", BASE, "--shift-mode", "latent", "--out", tmp_path)
    assert code == 2 and "is a directory" in err
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize("item", [
    "x=1),__import__('os').system('touch PWNED'",
    "**{'a': __import__('os').system('touch PWNED')}, b=1",
    "x=__import__('os').system('touch PWNED')",
    "x=(lambda: __import__('os').system('touch PWNED'))()",
    "x=1\nimport os; os.system('touch PWNED')",
])
def test_config_set_cannot_run_code(item, tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    code, _, err = run_any(capsys, "config", BASE, "--shift-mode", "latent", "--out", "out.py", "--set", item)
    assert code == 2 and len(err.splitlines()) == 1 and "--set" in err
    assert list(tmp_path.iterdir()) == []  # neither PWNED nor out.py


def test_config_set_writes_only_literals(tmp_path, capsys):
    out_path = tmp_path / "out.py"
    code, _, err = run(capsys, "config", BASE, "--shift-mode", "latent", "--out", out_path, "--timestep-rng",
                       "per_sample", "--set", "t_range=(0.1, 0.9)", "timestep_seed=7", "resolution_shift=sqrt",
                       "sample_method='uniform'", "base_resolution=65536.0")
    assert code == 0, err
    scheduler = Config.fromfile(str(out_path)).scheduler
    assert (tuple(scheduler.t_range), scheduler.timestep_seed, scheduler.resolution_shift, scheduler.sample_method,
            scheduler.base_resolution) == ((0.1, 0.9), 7, "sqrt", "uniform", 65536.0)
    # The file is three assignments of literals: _base_ = [...] and two dict(...) calls of literal keywords.
    module = ast.parse(out_path.read_text())
    assert [node.targets[0].id for node in module.body] == ["_base_", "custom_imports", "scheduler"]
    ast.literal_eval(module.body[0].value)
    for node in module.body[1:]:
        assert isinstance(node.value, ast.Call) and node.value.func.id == "dict" and not node.value.args
        for kw in node.value.keywords:
            ast.literal_eval(kw.value)


@pytest.mark.parametrize("text, value", [
    ("k=7", 7), ("k=-0.5", -0.5), ("k=True", True), ("k=None", None), ("k=(0.1, 0.9)", (0.1, 0.9)),
    ("k=0.1,0.9", (0.1, 0.9)), ("k=[1, 2]", [1, 2]), ("k={'a': 1}", {"a": 1}), ("k='a b'", "a b"),
    ("k=uniform", "uniform"), ("k=logit-normal", "logit-normal"), ("k='true'", "true"), ("k='inf'", "inf"),
])
def test_set_values_are_python_literals_or_bare_words(text, value):
    assert options.parse_set_item(text) == ("k", value)


# --- audit: reads as pandas would, and never changes its inputs --------------------------------------------

def test_audit_never_modifies_its_inputs(tmp_path, capsys):
    for name in ("dataset_mixed.csv", "opensora_v1_2_stage1.py"):
        (tmp_path / name).write_bytes((FIXTURES / name).read_bytes())
    before = snapshot(tmp_path)
    code, _, _ = run(capsys, "audit", "--csv", tmp_path / "dataset_mixed.csv", "--config",
                     tmp_path / "opensora_v1_2_stage1.py", "--no-progress")
    assert code == 1
    assert snapshot(tmp_path) == before


def test_audit_accepts_a_byte_order_mark(capsys):
    code, out, _ = run(capsys, "audit", "--csv", FIXTURES / "dataset_bom.csv", "--no-progress")
    assert code == 1 and "3 clips in 3 buckets" in out


def test_audit_quotes_as_pandas(capsys):
    # commas, doubled quotes and a line break inside quoted fields: three rows, as pandas.read_csv reads them
    code, out, _ = run(capsys, "audit", "--csv", FIXTURES / "dataset_quoting.csv", "--no-progress")
    assert code == 1 and "3 clips in 3 buckets" in out
    assert [line.split()[:3] for line in out.splitlines() if line.startswith("256x256")] == [
        ["256x256", "16", "1"], ["256x256", "17", "1"], ["256x256", "51", "1"]]


def test_audit_refuses_a_duplicated_column(capsys):
    code, _, err = run(capsys, "audit", "--csv", FIXTURES / "dataset_duplicate_column.csv", "--no-progress")
    assert code == 2 and "column 'num_frames' appears 2 times" in err and "num_frames.1" in err


def test_audit_rows_with_extra_fields_are_bad_rows(capsys):
    code, _, err = run(capsys, "audit", "--csv", FIXTURES / "dataset_extra_fields.csv", "--no-progress")
    assert code == 2 and "row 3: extra fields" in err
    code, out, _ = run(capsys, "audit", "--csv", FIXTURES / "dataset_extra_fields.csv", "--no-progress",
                       "--skip-bad-rows")
    assert code == 0 and "2 clips in 2 buckets" in out and "skipped 1 malformed rows: 1 extra fields" in out


@pytest.mark.parametrize("skip", [[], ["--skip-bad-rows"]])
def test_audit_reads_a_field_over_128_kib(skip, tmp_path, capsys):
    data = tmp_path / "long.csv"
    data.write_text(f"path,text,num_frames,height,width\na,\"{'x' * 200_000}\",16,256,256\nb,short,17,256,256\n")
    code, out, err = run(capsys, "audit", "--csv", data, "--no-progress", *skip)
    assert code == 1 and "2 clips in 2 buckets" in out and "Traceback" not in err


@pytest.mark.parametrize("scheduler, words", [
    ('dict(type="rflow-timeshift", on_degenerate="bogus")', "on_degenerate"),
    ('dict(type="rflow-timeshift", shift_mode="nope")', "shift_mode"),
    ('dict(type="rflow-timeshift", timestep_rng=1)', "timestep_rng"),
    ('dict(type="rflow-timeshift", use_timestep_transform="False")', "use_timestep_transform"),
    ('dict(type="rflow-timeshift", frobnicate=1)', "frobnicate"),
    ('dict(type="rflow", use_timestep_transform="yes")', "use_timestep_transform"),
    ('dict(type="rflow", use_timestep_transform=True, scale_temporal=0)', "scale_temporal"),
])
def test_audit_refuses_a_scheduler_training_would_refuse(scheduler, words, tmp_path, capsys):
    cfg = tmp_path / "cfg.py"
    cfg.write_text(f"scheduler = {scheduler}\n")
    code, out, err = run(capsys, "audit", "--config", cfg, "--csv", FIXTURES / "dataset_mixed.csv", "--no-progress")
    assert code == 2 and words in err and len(err.splitlines()) == 1 and "OK" not in out


# --- exit status: 0, 1 (audit verdict), 2 (bad input, one line), 3 (bug, traceback) -------------------------

def test_an_internal_error_exits_3_with_its_traceback(monkeypatch, capsys):
    def broken(*args, **kwargs):
        raise KeyError("a bug")

    monkeypatch.setattr(views.Opensora1View, "bucket", broken)
    code, _, err = run(capsys, "inspect", "--frames", 16)
    assert code == 3 and "Traceback" in err and "KeyError: 'a bug'" in err and "internal error" in err


@pytest.mark.parametrize("command", [[], ["inspect"], ["plot"], ["audit"], ["config"]])
def test_help_documents_the_exit_status(command, capsys):
    with pytest.raises(SystemExit) as exit_:
        main([*command, "--help"])
    out = capsys.readouterr().out
    assert exit_.value.code == 0 and "exit status:" in out
    assert all(f"  {code}  " in out for code in (0, 2, 3))
    assert ("  1  " in out) == (command in ([], ["audit"]))


def test_bad_input_is_one_line_in_a_real_process(tmp_path):
    # warnings, progress bars and argparse's usage all go to stderr: check the real stream, not a capture
    for argv in (["audit", "--csv", str(tmp_path)], ["inspect", "--frames", "0"],
                 ["config", str(BASE), "--shift-mode", "latent", "--out", str(tmp_path / "o.py"), "--set", "x=1e999"]):
        done = subprocess.run([sys.executable, "-m", "opensora_timeshift_patch", *argv], capture_output=True,
                              text=True)
        assert done.returncode == 2 and len(done.stderr.splitlines()) == 1, (argv, done.stderr)
    assert list(tmp_path.iterdir()) == []


# --- a hostile user: every bad input is exit 2, one line, no traceback, no file lost or made ----------------

@pytest.fixture
def workspace(tmp_path, monkeypatch):
    """A directory of good and bad inputs, and the current directory for the hostile invocations."""
    files = {
        "base.py": BASE.read_text(),
        "existing.py": "# the user's own config\n",
        "existing.png": "not a png\n",
        "data.csv": (FIXTURES / "dataset_mixed.csv").read_text(),
        "bad_rows.csv": (FIXTURES / "dataset_bad_rows.csv").read_text(),
        "empty.csv": "",
        "blank.csv": "\n\n\n",
        "nocols.csv": "path,text\na,b\n",
        "header_only.csv": "path,num_frames,height,width\n",
        "all_bad.csv": "path,num_frames,height,width\na,0,256,256\nb,nan,256,256\n",
        "syntax.py": "bucket_config = (\n",
        "raises.py": "raise RuntimeError('boom')\n",
        "exits.py": "import sys\nsys.exit(0)\n",
        "missing_base.py": "_base_ = ['nowhere.py']\n",
        "conf.cfg": "scheduler = dict(type='rflow')\n",
        "conf.txt": "scheduler = dict(type='rflow')\n",
        "conf": "scheduler = dict(type='rflow')\n",
        "bad_imports.py": "custom_imports = 5\n" + BASE.read_text(),
        "child.py": "_base_ = ['sub/mid.py']\nscheduler = dict(type='rflow', use_timestep_transform=True)\n",
        "sub/mid.py": "_base_ = ['../common/grand.py']\n",
        "common/grand.py": "seed = 1\n",
    }
    buckets = {"list": "[1, 2]", "str_frames": '{"240p": {"16": (1.0, 4)}}', "zero": '{"240p": {0: (1.0, 4)}}',
               "negative": '{"240p": {-1: (1.0, 4)}}', "bool": '{"240p": {True: (1.0, 4)}}',
               "huge": '{"240p": {10**9: (1.0, 4)}}', "name": '{"999p": {16: (1.0, 4)}}',
               "not_dict": '{"240p": 5}', "bare_prob": '{"240p": {16: 1.0}}', "prob": '{"240p": {16: (2.0, 4)}}',
               "nan": '{"240p": {16: (float("nan"), 4)}}', "batch": '{"240p": {16: (1.0, 0)}}',
               "float_batch": '{"240p": {16: (1.0, 2.5)}}', "triple": '{"240p": {16: (1.0, 4, 1)}}'}
    files.update({f"bucket_{k}.py": f"bucket_config = {v}\n" for k, v in buckets.items()})
    schedulers = {"int": "5", "unknown": 'dict(type="ddpm")', "untyped": "dict(use_timestep_transform=True)",
                  "degenerate": 'dict(type="rflow-timeshift", on_degenerate="bogus")',
                  "mode": 'dict(type="rflow-timeshift", shift_mode="nope")',
                  "rng": 'dict(type="rflow-timeshift", timestep_rng=1)',
                  "key": 'dict(type="rflow-timeshift", **{"not an identifier": 1})',
                  "truthy": 'dict(type="rflow", use_timestep_transform="False")'}
    files.update({f"sched_{k}.py": f"scheduler = {v}\n" for k, v in schedulers.items()})
    for name, text in files.items():
        (tmp_path / name).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / name).write_text(text)
    (tmp_path / "binary.csv").write_bytes(b"\xff\xfe\x00num_frames\x00\x89PNG\r\n")
    (tmp_path / "latin1.csv").write_bytes("path,text,num_frames,height,width\na,caf\xe9,16,256,256\n".encode("latin-1"))
    (tmp_path / "utf16.csv").write_text("num_frames,height,width\n16,256,256\n", encoding="utf-16")
    (tmp_path / "dup.csv").write_text("num_frames,height,width,height\n16,256,256,512\n")
    (tmp_path / "adir").mkdir()
    (tmp_path / "base_link.py").symlink_to(tmp_path / "base.py")
    (tmp_path / "png_link").symlink_to(tmp_path / "existing.png")
    (tmp_path / "dangling.py").symlink_to(tmp_path / "nowhere.py")
    monkeypatch.chdir(tmp_path)
    return tmp_path


CONFIG = ["config", "base.py", "--shift-mode", "latent"]
HOSTILE = {
    # inspect and plot: numbers
    "frames 0": (["inspect", "--frames", "0"], "--frames"),
    "frames -1": (["inspect", "--frames", "-1"], "--frames"),
    "frames 1e9": (["inspect", "--frames", "1e9"], "--frames"),
    "frames over the bound": (["inspect", "--frames", "100001"], "100000"),
    "frames a word": (["inspect", "--frames", "sixteen"], "--frames"),
    "resolution 0x0": (["inspect", "--resolution", "0x0"], "--resolution"),
    "resolution 720x0": (["inspect", "--resolution", "720x0"], "--resolution"),
    "resolution negative": (["inspect", "--resolution", "-720x1280"], "--resolution"),
    "resolution huge": (["inspect", "--resolution", "100001x1"], "--resolution"),
    "resolution 3 sides": (["inspect", "--resolution", "720x1280x3"], "--resolution"),
    "resolution empty": (["inspect", "--resolution", ""], "--resolution"),
    "loc inf": (["inspect", "--loc", "inf"], "--loc"),
    "loc -inf": (["inspect", "--loc", "-inf"], "--loc"),
    "loc nan": (["inspect", "--loc", "nan"], "--loc"),
    "scale 0": (["inspect", "--scale", "0"], "scale"),
    "scale -1": (["inspect", "--scale", "-1"], "scale"),
    "scale nan": (["inspect", "--scale", "nan"], "--scale"),
    "mode unknown": (["inspect", "--mode", "bogus"], "--mode"),
    "sample method unknown": (["inspect", "--sample-method", "bogus"], "--sample-method"),
    "no command": ([], "COMMAND"),
    "unknown command": (["frobnicate"], "frobnicate"),
    "plot onto a file": (["plot", "--out", "existing.png", "--frames", "16"], "not a directory"),
    "plot onto a link to a file": (["plot", "--out", "png_link", "--frames", "16"], "not a directory"),
    "plot under a file": (["plot", "--out", "existing.png/figs", "--frames", "16"], "--out"),
    "plot samples 0": (["plot", "--out", "figs", "--samples", "0"], "--samples"),
    "plot samples huge": (["plot", "--out", "figs", "--samples", "10000001"], "--samples"),
    "plot dpi 0": (["plot", "--out", "figs", "--dpi", "0"], "--dpi"),
    "plot dpi huge": (["plot", "--out", "figs", "--dpi", "100000"], "--dpi"),
    "plot scale 0": (["plot", "--out", "figs", "--scale", "0"], "scale"),
    "plot without out": (["plot"], "--out"),
    # audit: files that are not what they claim
    "audit nothing": (["audit"], "--csv"),
    "csv directory": (["audit", "--csv", "adir"], "is a directory"),
    "csv missing": (["audit", "--csv", "missing.csv"], "does not exist"),
    "csv device": (["audit", "--csv", os.devnull], "not a regular file"),
    "csv dangling link": (["audit", "--csv", "dangling.py"], "does not exist"),
    "csv binary": (["audit", "--csv", "binary.csv"], "not UTF-8"),
    "csv latin-1": (["audit", "--csv", "latin1.csv"], "not UTF-8"),
    "csv utf-16": (["audit", "--csv", "utf16.csv"], "not UTF-8"),
    "csv empty": (["audit", "--csv", "empty.csv"], "no header"),
    "csv blank lines": (["audit", "--csv", "blank.csv"], "no header"),
    "csv no columns": (["audit", "--csv", "nocols.csv"], "missing column"),
    "csv duplicated column": (["audit", "--csv", "dup.csv"], "'height' appears 2 times"),
    "csv bad row": (["audit", "--csv", "bad_rows.csv"], "row 3"),
    "csv header only": (["audit", "--csv", "header_only.csv"], "no clips"),
    "csv every row skipped": (["audit", "--csv", "all_bad.csv", "--skip-bad-rows"], "all 2 rows are malformed"),
    "csv is a config": (["audit", "--csv", "base.py"], "missing column"),
    "config syntax error": (["audit", "--config", "syntax.py"], "SyntaxError"),
    "config raises": (["audit", "--config", "raises.py"], "boom"),
    "config exits 0": (["audit", "--config", "exits.py"], "SystemExit"),
    "config missing base": (["audit", "--config", "missing_base.py"], "does not load"),
    "config .cfg": (["audit", "--config", "conf.cfg"], ".py"),
    "config .txt": (["audit", "--config", "conf.txt"], ".py"),
    "config no extension": (["audit", "--config", "conf"], ".py"),
    "config is a csv": (["audit", "--config", "data.csv"], ".py"),
    "config directory": (["audit", "--config", "adir"], "is a directory"),
    "config missing": (["audit", "--config", "missing.py"], "does not exist"),
    "opensora version": (["audit", "--config", "base.py", "--opensora-version", "3.0"], "--opensora-version"),
    **{f"bucket_config {k}": (["audit", "--config", f"bucket_{k}.py"], "bucket_config")
       for k in ("list", "str_frames", "zero", "negative", "bool", "huge", "name", "not_dict", "bare_prob", "prob",
                 "nan", "batch", "float_batch", "triple")},
    **{f"scheduler {k}": (["audit", "--config", f"sched_{k}.py"], "scheduler")
       for k in ("int", "unknown", "untyped", "degenerate", "mode", "rng", "key", "truthy")},
    # config: outputs onto inputs, and --set
    "out onto the base": ([*CONFIG, "--out", "base.py", "--force"], "_base_"),
    "out onto a link to the base": ([*CONFIG, "--out", "base_link.py", "--force"], "_base_"),
    "out onto the base, spelled another way": ([*CONFIG, "--out", "adir/../base.py", "--force"], "_base_"),
    "out onto a _base_ of the base": (["config", "child.py", "--shift-mode", "latent", "--out", "common/grand.py",
                                       "--force"], "_base_"),
    "out exists": ([*CONFIG, "--out", "existing.py"], "--force"),
    "out is a dangling link": ([*CONFIG, "--out", "dangling.py"], "--force"),
    "out forced but does not build": ([*CONFIG, "--out", "existing.py", "--force", "--set", "bogus_key=1"],
                                      "bogus_key"),
    "out new but does not build": ([*CONFIG, "--out", "new/dir/new.py", "--stratified"], "did not build"),
    "out directory": ([*CONFIG, "--out", "adir"], "is a directory"),
    "out not .py": ([*CONFIG, "--out", "new.txt"], ".py"),
    "out under a file": ([*CONFIG, "--out", "existing.png/new.py"], "existing.png"),
    "set without =": ([*CONFIG, "--out", "new.py", "--set", "timestep_seed"], "KEY=VALUE"),
    "set with nothing": ([*CONFIG, "--out", "new.py", "--set"], "--set"),
    "set empty value": ([*CONFIG, "--out", "new.py", "--set", "timestep_seed="], "literal"),
    "set code in the key": ([*CONFIG, "--out", "new.py", "--set", "x=1),__import__('os').system('touch PWNED'"],
                            "literal"),
    "set a call": ([*CONFIG, "--out", "new.py", "--set", "x=__import__('os')"], "literal"),
    "set key with spaces": ([*CONFIG, "--out", "new.py", "--set", "a b=1"], "identifier"),
    "set keyword key": ([*CONFIG, "--out", "new.py", "--set", "class=1"], "identifier"),
    "set non-ASCII key": ([*CONFIG, "--out", "new.py", "--set", "\ufb01eld=1"], "identifier"),
    "set mmengine key": ([*CONFIG, "--out", "new.py", "--set", "_delete_=True"], "reserved"),
    "set inf": ([*CONFIG, "--out", "new.py", "--set", "loc=1e999"], "finite"),
    "set bare inf": ([*CONFIG, "--out", "new.py", "--set", "loc=inf"], "True, False or None"),
    "set bare nan": ([*CONFIG, "--out", "new.py", "--set", "loc=nan"], "True, False or None"),
    "set lower-case true": ([*CONFIG, "--out", "new.py", "--set", "stratified=true"], "True, False or None"),
    "set a set": ([*CONFIG, "--out", "new.py", "--set", "x={1, 2}"], "lists, tuples or dicts"),
    "set bytes": ([*CONFIG, "--out", "new.py", "--set", "x=b'a'"], "lists, tuples or dicts"),
    "set complex": ([*CONFIG, "--out", "new.py", "--set", "x=1+2j"], "lists, tuples or dicts"),
    "set deep nesting": ([*CONFIG, "--out", "new.py", "--set", "x=" + "[" * 5000 + "]" * 5000], "literal"),
    "set twice": ([*CONFIG, "--out", "new.py", "--set", "timestep_seed=1", "timestep_seed=2"], "already set"),
    "set over an option": ([*CONFIG, "--out", "new.py", "--set", "shift_mode=legacy"], "already set"),
    "set the type": ([*CONFIG, "--out", "new.py", "--set", "type=rflow"], "already set"),
    "set unknown key": ([*CONFIG, "--out", "new.py", "--set", "bogus_key=1"], "bogus_key"),
    "base missing": (["config", "missing.py", "--shift-mode", "latent", "--out", "new.py"], "does not exist"),
    "base directory": (["config", "adir", "--shift-mode", "latent", "--out", "new.py"], "is a directory"),
    "base syntax error": (["config", "syntax.py", "--shift-mode", "latent", "--out", "new.py"], "SyntaxError"),
    "base .cfg": (["config", "conf.cfg", "--shift-mode", "latent", "--out", "new.py"], ".py"),
    "base custom_imports": (["config", "bad_imports.py", "--shift-mode", "latent", "--out", "new.py"],
                            "does not load"),
    "shift mode unknown": (["config", "base.py", "--shift-mode", "bogus", "--out", "new.py"], "--shift-mode"),
    "config without out": (["config", "base.py", "--shift-mode", "latent"], "--out"),
    # a single-valued option given twice: argparse would keep the last one silently
    "csv twice": (["audit", "--csv", "data.csv", "--csv", "header_only.csv"], "argument --csv: given more than once"),
    "config twice": (["audit", "--config", "base.py", "--config", "conf.cfg"], "argument --config: given more"),
    "version twice": (["audit", "--csv", "data.csv", "--opensora-version", "1.2", "--opensora-version", "1.3"],
                      "argument --opensora-version: given more"),
    "out twice": ([*CONFIG, "--out", "a.py", "--out", "b.py"], "argument --out: given more than once"),
    "shift mode twice": (["config", "base.py", "--shift-mode", "legacy", "--shift-mode", "latent", "--out", "a.py"],
                         "argument --shift-mode: given more"),
    "on-degenerate twice": ([*CONFIG, "--out", "a.py", "--on-degenerate", "clamp", "--on-degenerate", "error"],
                            "argument --on-degenerate: given more"),
    "loc twice": (["inspect", "--loc", "0", "--loc", "1"], "argument --loc: given more than once"),
    "plot out twice": (["plot", "--out", "figs", "--out", "figs2"], "argument --out: given more"),
    "samples twice": (["plot", "--out", "figs", "--samples", "10", "--samples", "20"], "argument --samples: given"),
    # numbers in ASCII digits only (int() and float() also read other scripts' digits and '1_0')
    "frames arabic-indic digit": (["inspect", "--frames", "\u0663"], "ASCII"),
    "samples arabic-indic digits": (["plot", "--out", "figs", "--samples", "\u0661\u0660"], "ASCII"),
    "dpi underscore": (["plot", "--out", "figs", "--dpi", "1_00"], "ASCII"),
    "loc arabic-indic digit": (["inspect", "--loc", "\u0663"], "ASCII"),
    "scale fullwidth digit": (["inspect", "--scale", "\uff11"], "ASCII"),
    # settings that would be silently ignored
    "loc with uniform": (["inspect", "--sample-method", "uniform", "--loc", "3"], "--loc applies to"),
    "scale with cosmap": (["inspect", "--sample-method", "cosmap", "--scale", "0.5"], "--scale applies to"),
    "plot loc with mode": (["plot", "--out", "figs", "--sample-method", "mode", "--loc", "1"], "--loc applies to"),
    "plot out empty": (["plot", "--out", "", "--frames", "16", "--samples", "10"], "--out is empty"),
    "config out empty": ([*CONFIG, "--out", ""], "--out is empty"),
}


@pytest.mark.parametrize("argv, words", list(HOSTILE.values()), ids=list(HOSTILE))
def test_hostile_input_is_one_line_and_exit_2(argv, words, workspace, capsys):
    before = snapshot(workspace)
    code, _, err = run_any(capsys, *argv)
    assert code == 2, err
    assert len([line for line in err.splitlines() if line.strip()]) == 1 and err.strip(), err
    assert "Traceback" not in err and words in err
    assert snapshot(workspace) == before


def test_audit_takes_numbers_as_pandas_does(tmp_path, capsys):
    # Python's float() also reads these; pandas leaves them as text, so Open-Sora would not get a frame count
    odd = ["16_000", "\u0661\u0666", "nan", "Infinity", "0x10", "1e400", "16.5", "-16", "0"]
    data = tmp_path / "odd.csv"
    data.write_text("path,num_frames,height,width\n" + "".join(f"c,{n},256,256\n" for n in odd)
                    + "a,16,256,256\nb, 17.0 ,256,256\nd,5.1e1,256,256\n", encoding="utf-8")
    code, out, _ = run(capsys, "audit", "--csv", data, "--no-progress", "--skip-bad-rows")
    assert code == 1 and "3 clips in 3 buckets" in out and f"skipped {len(odd)} malformed rows" in out


def test_distribution_flags_come_from_the_declared_settings(capsys):
    """--loc and --scale take their range and message from the logit-normal's own declaration (logsnr's allows
    loc=6, so the selected method's declaration decides, when the distribution is built)."""
    from opensora_timeshift_patch.sampling import DISTRIBUTIONS

    loc = DISTRIBUTIONS.params("logit-normal")["loc"]
    code, _, err = run_any(capsys, "inspect", "--loc", "6")
    assert code == 2 and len(err.splitlines()) == 1
    assert f"loc=6.0 is not allowed: use {loc.allowed()}" in err
    with pytest.raises(SystemExit):
        main(["inspect", "--help"])
    assert loc.doc in " ".join(capsys.readouterr().out.split())


def test_audit_accepts_open_sora_1_3_guidance_keywords(tmp_path, capsys):
    """use_oscillation_guidance=True is Open-Sora 1.3 RFLOW's: valid there, so audit type-checks it and goes on."""
    cfg = tmp_path / "v13.py"
    cfg.write_text('bucket_config = {"144p": {17: (1.0, 8)}}\n'
                   'scheduler = dict(type="rflow-timeshift", use_oscillation_guidance=True, force_num=5)\n')
    code, out, _ = run(capsys, "audit", "--config", cfg, "--opensora-version", "1.3")
    assert code == 0 and "OK" in out
    cfg.write_text('bucket_config = {"144p": {17: (1.0, 8)}}\n'
                   'scheduler = dict(type="rflow-timeshift", use_oscillation_guidance="yes")\n')
    code, _, err = run(capsys, "audit", "--config", cfg)
    assert code == 2 and "use_oscillation_guidance='yes' is not allowed: use True or False" in err


# --- config: the _base_ chain as mmengine resolves it, placeholders, paths -----------------------------------

@pytest.mark.parametrize("entry, env", [
    ("{{$OPENSORA_TIMESHIFT_TEST_UNSET:base_real.py}}", {}),  # the default of an unset variable
    ("{{$OPENSORA_TIMESHIFT_TEST_BASE:nothing.py}}", {"OPENSORA_TIMESHIFT_TEST_BASE": "ABS"}),  # a set variable
    ("{{ fileDirname }}/base_real.py", {}),  # a predefined variable
    ("{{fileBasenameNoExtension}}_real.py", {}),
])
def test_config_never_writes_a_base_named_by_a_placeholder(entry, env, tmp_path, monkeypatch, capsys):
    base_real = tmp_path / "base_real.py"
    base_real.write_text(BASE.read_text())
    (tmp_path / "base.py").write_text(f"_base_ = [{entry!r}]\nlr = 2e-5\n")
    monkeypatch.delenv("OPENSORA_TIMESHIFT_TEST_UNSET", raising=False)
    MMLogger.get_instance(f"test-{uuid.uuid4().hex}")  # mmengine logs each variable it uses: to this test's stdout
    for key, value in env.items():
        monkeypatch.setenv(key, str(base_real) if value == "ABS" else value)
    before = snapshot(tmp_path)
    code, _, err = run(capsys, "config", tmp_path / "base.py", "--shift-mode", "latent", "--out", base_real,
                       "--force")
    assert code == 2 and "_base_" in err and len(err.splitlines()) == 1, err
    assert snapshot(tmp_path) == before


def test_config_never_writes_the_default_base_of_the_example(tmp_path, capsys, monkeypatch):
    """configs/examples/derive_from_opensora.py names its base {{$OPENSORA_CONFIG:../../tests/fixtures/...}}."""
    monkeypatch.delenv("OPENSORA_CONFIG", raising=False)
    example = Path(__file__).parents[1] / "configs" / "examples" / "derive_from_opensora.py"
    (tmp_path / "configs" / "examples").mkdir(parents=True)
    (tmp_path / "tests" / "fixtures").mkdir(parents=True)
    (tmp_path / "configs" / "examples" / example.name).write_text(example.read_text())
    target = tmp_path / "tests" / "fixtures" / BASE.name
    target.write_text(BASE.read_text())
    before = snapshot(tmp_path)
    code, _, err = run(capsys, "config", tmp_path / "configs" / "examples" / example.name, "--shift-mode",
                       "frames16", "--out", target, "--force")
    assert code == 2 and "_base_" in err
    assert snapshot(tmp_path) == before


def test_config_refuses_an_out_that_mmengine_read_even_if_the_chain_missed_it(tmp_path, monkeypatch, capsys):
    """Belt and braces: after verification, an --out that mmengine read while loading the new config is kept."""
    base = tmp_path / "base.py"
    base.write_text('_base_ = ["grand.py"]\n')
    (tmp_path / "grand.py").write_text(BASE.read_text())
    monkeypatch.setattr(config_command, "load_base",  # a first check that saw nothing
                        lambda path: (config_command.load_config(path, "base config"), set()))
    before = snapshot(tmp_path)
    code, _, err = run(capsys, "config", base, "--shift-mode", "latent", "--out", tmp_path / "grand.py", "--force")
    assert code == 2 and "a file the derived config reads" in err
    assert snapshot(tmp_path) == before


@pytest.mark.parametrize("item", [
    "sample_method='{{$OPENSORA_TIMESHIFT_EVIL:uniform}}'",
    "resolution_shift='{{ fileDirname }}'",
    "x={'{{a': 1}",
    "x=['ok', ('}}',)]",
])
def test_config_set_refuses_mmengine_placeholders(item, tmp_path, monkeypatch, capsys):
    pwned = tmp_path / "PWNED"
    monkeypatch.setenv("OPENSORA_TIMESHIFT_EVIL", f"uniform'+__import__('os').system('touch {pwned}')+'")
    code, _, err = run_any(capsys, "config", BASE, "--shift-mode", "latent", "--out", tmp_path / "out.py", "--set",
                           item)
    assert code == 2 and len(err.splitlines()) == 1 and "--set" in err and "mmengine" in err, err
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize("name", ["we{{ird}}.py", "a}}b.py", "line\nbreak.py"])
def test_config_refuses_a_base_path_mmengine_would_substitute(name, tmp_path, capsys):
    (tmp_path / "in").mkdir()
    base = tmp_path / "in" / name
    base.write_text(BASE.read_text())
    code, _, err = run(capsys, "config", base, "--shift-mode", "latent", "--out", tmp_path / "out.py")
    assert code == 2 and len(err.splitlines()) == 1 and "base config's" in err, err
    assert not (tmp_path / "out.py").exists()


def test_config_keeps_open_sora_1_3_keywords(tmp_path, capsys):
    """A 1.3 config's RFLOW keywords are type-checked and kept, as audit does, without Open-Sora installed."""
    base = tmp_path / "v13.py"
    base.write_text('scheduler = dict(type="rflow", use_timestep_transform=True, use_oscillation_guidance=True,\n'
                    '                 scale_image_weight=True, initial_image_scale=0.0, force_num=5,\n'
                    '                 drop_condition={"cond": 0.05, "text": 0.05, "null": 0.05, "keep": 0.85})\n')
    code, out, err = run(capsys, "config", base, "--shift-mode", "v13", "--out", tmp_path / "out.py")
    assert code == 0, err
    scheduler = Config.fromfile(str(tmp_path / "out.py")).scheduler
    assert scheduler.use_oscillation_guidance is True and scheduler.drop_condition["keep"] == 0.85
    assert scheduler.type == "rflow-timeshift" and scheduler.shift_mode == "v13"
    base.write_text('scheduler = dict(type="rflow", use_oscillation_guidance="yes")\n')
    code, _, err = run(capsys, "config", base, "--shift-mode", "v13", "--out", tmp_path / "out2.py")
    assert code == 2 and "use_oscillation_guidance='yes' is not allowed" in err
    assert not (tmp_path / "out2.py").exists()


def test_config_out_through_a_symlinked_directory(tmp_path, capsys):
    (tmp_path / "proj").mkdir()
    (tmp_path / "elsewhere" / "real").mkdir(parents=True)
    (tmp_path / "proj" / "base.py").write_text(BASE.read_text())
    (tmp_path / "proj" / "mine").symlink_to(tmp_path / "elsewhere" / "real")
    out_path = tmp_path / "proj" / "mine" / "derived.py"
    code, _, err = run(capsys, "config", tmp_path / "proj" / "base.py", "--shift-mode", "latent", "--out", out_path)
    assert code == 0, err
    assert Config.fromfile(str(out_path)).bucket_config == Config.fromfile(str(BASE)).bucket_config
    assert (tmp_path / "elsewhere" / "real" / "derived.py").exists()


def test_config_out_name_too_long_is_bad_input(tmp_path, capsys):
    code, _, err = run(capsys, "config", BASE, "--shift-mode", "latent", "--out", tmp_path / ("c" * 300 + ".py"))
    assert code == 2 and len(err.splitlines()) == 1 and "Traceback" not in err, err
    assert list(tmp_path.iterdir()) == []


def test_config_whose_base_chain_fails_to_load_is_bad_input(tmp_path, capsys):
    """A derived config that does not load (here a lazy-import base, which mmengine will not mix) is exit 2."""
    (tmp_path / "other.py").write_text("lr = 1\n")
    base = tmp_path / "lazy.py"
    base.write_text("from mmengine.config import read_base\n\nwith read_base():\n    from .other import *\n")
    code, _, err = run(capsys, "config", base, "--shift-mode", "latent", "--out", tmp_path / "out.py")
    assert code == 2 and len(err.splitlines()) == 1, err
    assert not (tmp_path / "out.py").exists()


# --- audit: Open-Sora's bucket rule, the guard's own verdict, Open-Sora's bucket configs -------------------------

def write_csv(path, clips):
    """clips: (num_frames, height, width, count) rows."""
    path.write_text("path,text,num_frames,height,width\n"
                    + "".join(f"/c/{n}_{h}_{w}_{i}.mp4,clip,{n},{h},{w}\n" for n, h, w, count in clips
                              for i in range(count)))
    return path


def table_rows(out):
    """The audit table's rows as split cells, keyed by (resolution, frames)."""
    return {tuple(line.split()[:2]): line.split() for line in out.splitlines()
            if re.match(r"\d+x\d+ ", line)}


def test_audit_17_frame_clips_train_at_16_under_open_sora_1_2(tmp_path, capsys):
    """Open-Sora's bucket takes a frame count t only when T > t: 17 frames train in the 16-frame bucket, T_eff 0."""
    data = write_csv(tmp_path / "c17.csv", [(17, 144, 256, 10)])
    code, out, _ = run(capsys, "audit", "--csv", data, "--config", BASE, "--no-progress")
    assert code == 1 and "FAIL: 10 clips would train with every timestep at t = 0" in out
    row = table_rows(out)[("144x256", "16")]
    assert row[2] == "10" and row[3:7] == ["t", "=", "0", "!"] and row[-1] == "144p"
    assert ("144x256", "17") not in table_rows(out)
    code, out, _ = run(capsys, "audit", "--csv", data, "--config", BASE, "--no-progress", "--opensora-version", "1.3")
    assert code == 0 and table_rows(out)[("144x256", "16")][2] == "10"  # 1.3's rule: T_eff 3


def test_audit_reports_clips_open_sora_drops(capsys):
    # dataset_mixed.csv: three 16-frame 720p clips fit no frame count of the config (16 is not > 16, and 1 is never
    # a video's); the 51-frame 480p and the 17-frame 240p clips train in 240p's 16-frame bucket; the image in 720p's.
    code, out, _ = run(capsys, "audit", "--config", BASE, "--csv", FIXTURES / "dataset_mixed.csv", "--no-progress")
    assert code == 1 and "4 clips in 3 buckets" in out
    assert "3 clips fit no bucket, so Open-Sora drops them (3 videos)" in out
    rows = table_rows(out)
    assert sorted(rows) == [("240x426", "16"), ("720x1280", "1"), ("720x1280", "51")]
    assert rows[("240x426", "16")][2] == "2" and rows[("720x1280", "1")][2] == "1"


def test_audit_short_videos_are_dropped_not_images(tmp_path, capsys):
    data = write_csv(tmp_path / "d.csv", [(5, 144, 256, 2), (17, 144, 256, 1)])
    cfg = tmp_path / "cfg.py"
    cfg.write_text('bucket_config = {"144p": {1: (1.0, 10), 16: (1.0, 4)}}\n'
                   'scheduler = dict(type="rflow-timeshift", shift_mode="latent")\n')
    code, out, _ = run(capsys, "audit", "--csv", data, "--config", cfg, "--no-progress")
    assert code == 0 and "2 clips fit no bucket, so Open-Sora drops them (2 videos)" in out
    assert sorted(table_rows(out)) == [("144x256", "16")]
    data = write_csv(tmp_path / "d.csv", [(5, 144, 256, 2)])
    code, _, err = run(capsys, "audit", "--csv", data, "--config", cfg, "--no-progress")
    assert code == 2 and "none of the 2 clips" in err and "fits a bucket" in err


def test_audit_bucket_rule_falls_back_to_lower_resolutions(tmp_path, capsys):
    # frame_interval=2: a clip fits frame count t when T > 2 t. 480p's 51-frame bucket is off: a clip that reaches it
    # (T > 102) tries the next resolution down, not 480p's 17.
    cfg = tmp_path / "cfg.py"
    cfg.write_text('dataset = dict(type="VariableVideoTextDataset", frame_interval=2)\n'
                   'bucket_config = {"480p": {17: (1.0, 4), 51: (0.0, None)}, "240p": {8: (1.0, 8), 51: (1.0, 4)}}\n'
                   'scheduler = dict(type="rflow-timeshift", shift_mode="latent")\n')
    data = write_csv(tmp_path / "d.csv", [(110, 480, 854, 1), (60, 480, 854, 2), (35, 480, 854, 3), (17, 240, 426, 4)])
    code, out, _ = run(capsys, "audit", "--csv", data, "--config", cfg, "--no-progress")
    assert code == 0, out
    rows = table_rows(out)
    # 110 > 102: 480p/51, off -> 240p/51. 60 and 35 frames > 34: 480p/17. 17 frames at 240p: 17 > 16 -> 240p/8.
    assert {k: r[2] for k, r in rows.items()} == {("240x426", "51"): "1", ("240x426", "8"): "4", ("480x854", "17"): "5"}


def test_audit_runs_the_guard_on_each_bucket(tmp_path, capsys):
    """Shifted draws that pile up are refused by on_degenerate='error': audit must not call that OK. (Changed on
    purpose from the old factor bound: 1080p x 51 frames at a = 435.7 > 100 is meaningful for uniform t now.)"""
    # a = sqrt(1080 * 1920 / 512^2) sqrt(T_eff) 40 (in float32): 435.7 at T_eff = 15 (51 frames), 1232.3 at 120 (408 frames);
    # for uniform t the share within 1/1000 of N is a eps / (1 + (a - 1) eps): 30.4% and 55.2% (> 1/2: piled).
    cfg = tmp_path / "cfg.py"
    body = 'bucket_config = {"1080p": {1: (1.0, 5), 51: (1.0, 2), 408: (1.0, 1)}}\n'
    cfg.write_text(body + 'scheduler = dict(type="rflow-timeshift", shift_mode="latent", transform_scale=40.0)\n')
    code, out, _ = run(capsys, "audit", "--config", cfg)
    assert code == 1 and "FAIL: the guard would stop training at the first batch from 1080x1920 x 408 frames" in out
    assert "55.2% of the draws lie within 0.001 of t = 1" in out and table_rows(out)[("1080x1920", "408")][3] == "refused"
    assert table_rows(out)[("1080x1920", "51")][3:5] == ["ok", "435.711"]
    cfg.write_text(body + 'scheduler = dict(type="rflow-timeshift", shift_mode="latent", transform_scale=40.0, '
                          'on_degenerate="clamp")\n')
    code, out, _ = run(capsys, "audit", "--config", cfg)
    assert code == 0 and table_rows(out)[("1080x1920", "408")][3:5] == ["clamped", "100.000"]
    cfg.write_text(body + 'scheduler = dict(type="rflow-timeshift", shift_mode="latent", transform_scale=40.0, '
                          'on_degenerate="ignore")\n')
    code, out, _ = run(capsys, "audit", "--config", cfg)
    assert code == 0 and "note: timesteps pile up at one end for 1080x1920 x 408 frames" in out
    assert "55.2% of the draws lie within 0.001 of t = 1" in out
    data = write_csv(tmp_path / "d.csv", [(409, 1080, 1920, 3), (52, 1080, 1920, 1)])
    cfg.write_text(body + 'scheduler = dict(type="rflow-timeshift", shift_mode="latent", transform_scale=40.0)\n')
    code, out, _ = run(capsys, "audit", "--config", cfg, "--csv", data, "--no-progress")
    assert code == 1 and "from 3 clips in 1080x1920 x 408 frames (1080p)" in out


def test_audit_linear_exponential_shift_beyond_the_bound_is_judged_by_its_distribution(tmp_path, capsys):
    # Changed on purpose (was: refused for a > 100). 2048^2 latent: 128^2 = 16384 tokens, 60 latent frames:
    # a = e^(0.5 + 0.65 (16384 - 256) / 3840) sqrt(60) ~ 195.8; for uniform t only a eps / (1 + (a - 1) eps) ~ 16.4%
    # of the draws lie within 1/1000 of N, so it trains. Past a = 999 the same rule refuses (max_shift raised).
    a = math.exp(0.5 + 0.65 * (16384 - 256) / 3840) * math.sqrt(60)
    assert abs(a * 1e-3 / (1 + (a - 1) * 1e-3) - 0.164) < 1e-3
    cfg = tmp_path / "cfg.py"
    cfg.write_text('bucket_config = {"2048": {1: (1.0, 5), 204: (1.0, 1)}}\n'
                   'scheduler = dict(type="rflow-timeshift", shift_mode="latent", shift_family="exponential", '
                   'resolution_shift="linear")\n')
    code, out, _ = run(capsys, "audit", "--config", cfg)
    assert code == 0 and table_rows(out)[("2048x2048", "204")][3:5] == ["ok", f"{a:.3f}"]
    cfg.write_text('bucket_config = {"2048": {1: (1.0, 5), 204: (1.0, 1)}}\n'
                   'scheduler = dict(type="rflow-timeshift", shift_mode="latent", shift_family="exponential", '
                   'resolution_shift="linear", max_shift=2.0)\n')
    code, out, _ = run(capsys, "audit", "--config", cfg)
    assert code == 1 and table_rows(out)[("2048x2048", "204")][3] == "refused" and "pile up" in out


@pytest.mark.parametrize("bucket_config, version, rows", [
    ('{"480p": {1: (1.0, 89), 51: (0.5, 5), 408: (0.0, None)}, "720p": {204: (0.0, None)}}', "1.2",
     {("480x854", "408"): "off", ("720x1280", "204"): "off", ("480x854", "51"): "ok"}),
    ('{"2k": {1: (1.0, 5)}, "2880": {1: (1.0, 5)}, "4k": {1: (1.0, 5), 51: (0.5, 1)}}', "1.2",
     {("1440x2560", "1"): "ok", ("2880x2880", "1"): "ok", ("2160x3840", "51"): "ok"}),
    ('{"360p_16d": {1: (1.0, 60), 49: (1.0, 5)}, "240p_16d": {33: ((1.0, 0.0), 4)}}', "1.3",
     {("352x640", "49"): "ok", ("240x416", "33"): "off"}),
])
def test_audit_accepts_open_sora_bucket_configs(bucket_config, version, rows, tmp_path, capsys):
    cfg = tmp_path / "cfg.py"
    cfg.write_text(f"bucket_config = {bucket_config}\nscheduler = dict(type='rflow', use_timestep_transform=True)\n")
    code, out, err = run(capsys, "audit", "--config", cfg, "--opensora-version", version)
    assert code == 0, err
    got = table_rows(out)
    assert {k: got[k][3] for k in rows} == rows


@pytest.mark.parametrize("text, words", [
    ('bucket_config = {"360p_16d": {1: (1.0, 60)}}\n', "is Open-Sora 1.3's"),
    ('bucket_config = {"240p": {16: (1.0, None)}}\n', "batch size of None"),
    ('bucket_config = {"240p": {16: (1.0, 4)}}\ndataset = dict(bucket_class="Bucket_ar_first")\n', "bucket_class"),
    ('bucket_config = {"240p": {16: (1.0, 4)}}\ndataset = dict(frame_interval=0)\n', "frame_interval"),
])
def test_audit_refuses_bucket_configs_open_sora_would_not_run(text, words, tmp_path, capsys):
    cfg = tmp_path / "cfg.py"
    cfg.write_text(text)
    code, _, err = run(capsys, "audit", "--config", cfg)
    assert code == 2 and words in err and len(err.splitlines()) == 1, err


def test_audit_image_bucket_with_a_pair_probability_fails_as_in_open_sora(tmp_path, capsys):
    cfg = tmp_path / "cfg.py"
    cfg.write_text('bucket_config = {"240p": {1: ((1.0, 0.5), 8), 16: (1.0, 4)}}\n')
    code, _, err = run(capsys, "audit", "--config", cfg, "--csv", write_csv(tmp_path / "d.csv", [(1, 240, 426, 1)]),
                       "--no-progress")
    assert code == 2 and "bucket_config['240p'][1] has a pair" in err


def test_list_options_accumulate_when_repeated(capsys):
    """--frames 16 --frames 17 is --frames 16 17 (argparse alone would keep only 17); the default is replaced."""
    code, out, _ = run(capsys, "inspect", "--frames", 16, "--frames", 17, 16, "--resolution", "240p", "--resolution",
                       "512x512", "--mode", "latent", "--mode", "v13", "--json")
    assert code == 0
    rows = json.loads(out)["rows"]
    assert sorted({r["frames"] for r in rows}) == [16, 17] and sorted({r["mode"] for r in rows}) == ["latent", "v13"]
    assert sorted({(r["height"], r["width"]) for r in rows}) == [(240, 426), (512, 512)] and len(rows) == 8


def test_loc_and_scale_still_apply_to_logit_normal(capsys):
    code, out, _ = run(capsys, "inspect", "--frames", 16, "--resolution", "512x512", "--mode", "latent", "--loc", 0.5,
                       "--scale", 2, "--json")
    assert code == 0 and json.loads(out)["rows"][0]["median"] == pytest.approx(1000 * 2 * sigmoid(0.5) /
                                                                               (1 + sigmoid(0.5)), rel=1e-6)
    code, out, _ = run(capsys, "inspect", "--frames", 16, "--sample-method", "uniform", "--mode", "latent")
    assert code == 0 and "uniform" in out


# --- exit status in a real process: a closed pipe, a home matplotlib cannot write ------------------------------

def cli_process(*argv, **kwargs):
    return subprocess.Popen([sys.executable, "-m", "opensora_timeshift_patch", *map(str, argv)],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, **kwargs)


@pytest.mark.parametrize("argv, code", [
    (["inspect", "--mode", "latent", "legacy", "--resolution", "720p", "--frames", *range(1, 801)], 0),
    (["audit", "--csv", "BIG", "--no-progress"], 1),  # a FAIL verdict stays 1 when the reader stops early
])
def test_closed_stdout_pipe_is_quiet(argv, code, tmp_path):
    if "BIG" in argv:
        big = write_csv(tmp_path / "big.csv", [(n, 240, 426, 1) for n in range(1, 3000)])
        argv = [str(big) if a == "BIG" else a for a in argv]
    process = cli_process(*argv)
    assert process.stdout.readline()  # like `| head -1`: read one line, close the pipe
    process.stdout.close()
    assert process.wait(timeout=300) == code
    assert process.stderr.read() == ""


def test_plot_with_an_unwritable_home_keeps_stderr_to_one_line(tmp_path):
    home = tmp_path / "home"
    home.write_text("a file, so nothing can be made under it\n")
    env = {k: v for k, v in os.environ.items() if k not in ("MPLCONFIGDIR", "XDG_CONFIG_HOME", "XDG_CACHE_HOME")}
    env["HOME"] = str(home)
    (tmp_path / "figs" / "timeshift_240x426_16f.png").mkdir(parents=True)  # a directory where the PNG goes
    args = ["plot", "--frames", 16, "--resolution", "240p", "--samples", 10, "--dpi", 10, "--out"]
    process = cli_process(*args, tmp_path / "figs", env=env)
    out, err = process.communicate(timeout=300)
    assert process.returncode == 2 and len(err.splitlines()) == 1 and "cannot write" in err, err
    process = cli_process(*args, tmp_path / "ok", env=env)
    out, err = process.communicate(timeout=300)
    assert process.returncode == 0 and err == "" and out.strip().endswith("timeshift_240x426_16f.png")
