"""The opensora-timeshift command line: output, figures, audits, derived configs and their errors."""

import csv
import json
import math
import subprocess
import sys
from pathlib import Path

import pytest
from mmengine.config import Config

from opensora_timeshift_patch.cli import main

FIXTURES = Path(__file__).parent / "fixtures"
BASE = FIXTURES / "opensora_v1_2_stage1.py"


def run(capsys, *argv):
    code = main([str(a) for a in argv])
    out = capsys.readouterr()
    return code, out.out, out.err


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
    assert "row 3: invalid num_frames: '0' is not a positive whole number" in err and "--skip-bad-rows" in err


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


def test_config_that_does_not_build_is_not_kept(tmp_path, capsys):
    out_path = tmp_path / "out.py"
    code, _, err = run(capsys, "config", BASE, "--shift-mode", "latent", "--out", out_path, "--stratified")
    assert code == 2 and "did not build" in err and "timestep_rng='per_sample'" in err
    assert not out_path.exists()
    code, _, err = run(capsys, "config", tmp_path / "nope.py", "--shift-mode", "latent", "--out", out_path)
    assert code == 2 and "does not exist" in err
