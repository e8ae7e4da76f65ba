"""The opensora-timeshift command line on Open-Sora 2.0: inspect, plot, audit and config.

Expected numbers come from 2.0's rule, worked by hand: latent frames 1 + (n - 1) // 4 (causal) or n // 4, latent side
patch_size * ceil(side / D) with D = 16 (HunyuanVideo VAE 8x, patch 2) or 32 (DC-AE, patch 1), training tokens
(h w) // 4, inference tokens (h w) // patch_size**2, alpha = lin(tokens) * sqrt(T) with lin linear through
(256, 1) and (4096, 3).
"""

import json
import math
from pathlib import Path

import pytest
from mmengine.config import Config

from opensora_timeshift_patch.cli import main
from opensora_timeshift_patch.settings import NOT_ON_OPENSORA2

from test_cli import run, run_any, snapshot, write_csv

FIXTURES = Path(__file__).parent / "fixtures"
STAGE1 = FIXTURES / "opensora_v2_stage1.py"
HIGH = FIXTURES / "opensora_v2_high_compression.py"
P5 = 1 / (1 + math.exp(1.6448536269514722))  # the logit-normal's 5th percentile, sigmoid(-1.6449)


def lin(tokens):
    return 1 + (tokens - 256) * (3 - 1) / (4096 - 256)


def shifted(t, alpha):
    return alpha * t / (1 + (alpha - 1) * t)


def inspect_rows(capsys, *argv):
    code, out, err = run(capsys, "inspect", "--opensora-version", "2.0", "--json", *argv)
    assert code == 0, err
    return {(r["height"], r["width"], r["frames"], r["rule"]): r for r in json.loads(out)["rows"]}


def audit_rows(out):
    """The audit table's rows as split cells, keyed by (resolution, frames)."""
    return {tuple(line.split()[:2]): line.split() for line in out.splitlines()
            if line[:1].isdigit() and "x" in line.split()[0]}


# --- inspect ---------------------------------------------------------------------------------------------------

def test_inspect_256px_33_frames(capsys):
    rows = inspect_rows(capsys, "--resolution", "256px", "--frames", 33)
    stock = rows[(256, 256, 33, "stock")]
    # 33 frames -> 1 + 32 // 4 = 9 latent frames; 256 / 8 = 32 latent side; 32 * 32 // 4 = 256 tokens; alpha 1 * 3
    assert (stock["latent_frames"], stock["latent_height"], stock["latent_width"]) == (9, 32, 32)
    assert stock["tokens"] == stock["inference_tokens"] == 256
    assert stock["alpha"] == pytest.approx(3.0) and stock["inference_alpha"] == pytest.approx(3.0)
    assert stock["median"] == pytest.approx(0.75)  # 3 * 0.5 / (1 + 2 * 0.5)
    assert stock["p5"] == pytest.approx(shifted(P5, 3.0))
    assert stock["status"] == "ok"
    settings = rows[(256, 256, 33, "settings")]  # no settings: rflow-timeshift is stock 2.0's rule
    assert settings["alpha"] == pytest.approx(3.0) and settings["median"] == pytest.approx(0.75)


def test_inspect_768px_and_a_16_9_name(capsys):
    rows = inspect_rows(capsys, "--resolution", "768px", "720p", "--frames", 1, 129)
    # 768 / 8 = 96: 96 * 96 // 4 = 2304 tokens, alpha lin(2304) = 1 + 2048 / 1920
    image = rows[(768, 768, 1, "stock")]
    assert image["tokens"] == 2304 and image["alpha"] == pytest.approx(1 + 2048 / 1920)
    # 129 frames: 1 + 128 // 4 = 33 latent frames
    video = rows[(768, 768, 129, "stock")]
    assert video["latent_frames"] == 33 and video["alpha"] == pytest.approx(lin(2304) * math.sqrt(33))
    # 720p at 16:9 is 720 x 1280 at D = 16: 90 x 160 latent, 3600 tokens
    hd = rows[(720, 1280, 1, "stock")]
    assert (hd["latent_height"], hd["latent_width"], hd["tokens"]) == (90, 160, 3600)
    assert hd["alpha"] == pytest.approx(lin(3600))


def test_inspect_dc_ae_mismatch_and_its_fix(capsys):
    rows = inspect_rows(capsys, "--vae", "dc-ae", "--resolution", "768px", "--frames", 128, "--set", "patch_size=1")
    stock = rows[(768, 768, 128, "stock")]
    # non-causal: 128 // 4 = 32 latent frames; 768 / 32 = 24 latent side; training 576 // 4 = 144, inference 576
    assert (stock["latent_frames"], stock["latent_height"], stock["latent_width"]) == (32, 24, 24)
    assert (stock["tokens"], stock["inference_tokens"]) == (144, 576)
    assert stock["alpha"] == pytest.approx((1 - 112 / 1920) * math.sqrt(32))
    assert stock["inference_alpha"] == pytest.approx((1 + 320 / 1920) * math.sqrt(32))
    fixed = rows[(768, 768, 128, "settings")]
    assert fixed["tokens"] == fixed["inference_tokens"] == 576
    assert fixed["alpha"] == fixed["inference_alpha"] == pytest.approx((1 + 320 / 1920) * math.sqrt(32))
    code, out, _ = run(capsys, "inspect", "--opensora-version", "2.0", "--vae", "dc-ae", "--resolution", "768px",
                       "--frames", 128)
    assert code == 0 and "patch_size=1" in out and "144 tokens" in out and "576" in out


def test_inspect_modes_and_distribution_settings(capsys):
    rows = inspect_rows(capsys, "--resolution", "256x256", "--frames", 16, "--mode", "latent", "spatial",
                        "--sample-method", "uniform")
    # 16 frames: 1 + 15 // 4 = 4 latent frames; 256 tokens: alpha 1 * sqrt(4) = 2 (latent), 1 (spatial)
    assert rows[(256, 256, 16, "stock")]["alpha"] == pytest.approx(2.0)
    latent, spatial = rows[(256, 256, 16, "settings:latent")], rows[(256, 256, 16, "settings:spatial")]
    assert latent["alpha"] == pytest.approx(2.0) and spatial["alpha"] == pytest.approx(1.0)
    assert latent["median"] == pytest.approx(shifted(0.5, 2.0)) and latent["p5"] == pytest.approx(shifted(0.05, 2.0))
    assert rows[(256, 256, 16, "stock")]["p5"] == pytest.approx(shifted(P5, 2.0))  # stock keeps its logit-normal


def test_inspect_table(capsys):
    code, out, _ = run(capsys, "inspect", "--opensora-version", "2.0", "--resolution", "256px", "--frames", 33)
    assert code == 0
    lines = [line.split() for line in out.splitlines() if line.startswith("256x256")]
    assert [cells[:6] for cells in lines] == [["256x256", "33", "9x32x32", "stock", "256", "3.000"],
                                              ["256x256", "33", "9x32x32", "settings", "256", "3.000"]]


def test_non_causal_short_clip_collapses_under_stock_and_is_refused_under_the_guard(capsys):
    rows = inspect_rows(capsys, "--vae", "dc-ae", "--resolution", "768px", "--frames", 2)
    # 2 // 4 = 0 latent frames: alpha = lin * sqrt(0) = 0
    assert rows[(768, 768, 2, "stock")]["alpha"] == 0 and rows[(768, 768, 2, "stock")]["status"] == "collapsed"
    assert rows[(768, 768, 2, "stock")]["median"] == 0
    assert rows[(768, 768, 2, "settings")]["status"] == "refused" and rows[(768, 768, 2, "settings")]["message"]


@pytest.mark.parametrize("key", sorted(NOT_ON_OPENSORA2))
def test_settings_with_no_meaning_on_2_0_are_refused(key, capsys):
    code, out, err = run(capsys, "inspect", "--opensora-version", "2.0", "--set", f"{key}=1")
    assert code == 2 and out == "" and len(err.splitlines()) == 1, err
    assert f"{key}=1" in err and "Open-Sora 2.0" in err


@pytest.mark.parametrize("argv, words", [
    (["--set", "bogus=1"], "bogus"),
    (["--set", "patch_size=0"], "patch_size=0 is not allowed"),
    (["--sample-method", "uniform", "--loc", "1"], "loc"),
    (["--mode", "latent", "--set", "shift_mode=spatial"], "already set"),
    (["--resolution", "2k"], "not an Open-Sora 2.0 name"),
    (["--resolution", "1px"], "too small"),
])
def test_inspect_2_0_hostile_input(argv, words, capsys):
    code, _, err = run_any(capsys, "inspect", "--opensora-version", "2.0", *argv)
    assert code == 2 and len(err.splitlines()) == 1 and words in err, err


@pytest.mark.parametrize("argv, words", [
    (["--vae", "dc-ae"], "--vae applies to --opensora-version 2.0 only"),
    (["--set", "patch_size=1"], "patch_size=1 only applies with resolution_shift='linear'"),
    (["--resolution", "256px"], "is an Open-Sora 2.0 name"),
])
def test_2_0_options_are_refused_on_1_x(argv, words, capsys):
    code, _, err = run_any(capsys, "inspect", *argv)
    assert code == 2 and len(err.splitlines()) == 1 and words in err, err


def test_plot_2_0(tmp_path, capsys):
    code, out, err = run(capsys, "plot", "--opensora-version", "2.0", "--vae", "dc-ae", "--out", tmp_path,
                         "--resolution", "768px", "--frames", 2, 32, "--samples", 500, "--dpi", 30)
    assert code == 0, err
    files = sorted(tmp_path.glob("*.png"))
    assert [f.name for f in files] == ["timeshift_768x768_2f.png", "timeshift_768x768_32f.png"]
    assert all(f.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" for f in files)
    code, _, err = run(capsys, "plot", "--opensora-version", "2.0", "--out", tmp_path / "x", "--set", "cfg_scale=4")
    assert code == 2 and "cfg_scale=4" in err and not (tmp_path / "x").exists()


# --- audit -----------------------------------------------------------------------------------------------------

def test_audit_stage1_config(capsys):
    code, out, err = run(capsys, "audit", "--opensora-version", "2.0", "--config", STAGE1)
    assert code == 0, err
    rows = audit_rows(out)
    assert sorted(rows) == [("256x256", "1"), ("256x256", "129"), ("256x256", "33"), ("256x256", "5"),
                            ("768x768", "1")]
    # resolution frames clips latent tokens alpha inf.tokens inf.alpha current bucket
    assert rows[("256x256", "33")][3:] == ["9x32x32", "256", "3.000", "256", "3.000", "ok", "256px"]
    assert rows[("256x256", "5")][3:6] == ["2x32x32", "256", f"{math.sqrt(2):.3f}"]
    assert rows[("768x768", "1")][3:] == ["1x96x96", "2304", f"{lin(2304):.3f}", "2304", f"{lin(2304):.3f}", "ok",
                                          "768px"]
    assert "stock Open-Sora 2.0's rule" in out and "OK" in out and "WARNING" not in out


def test_audit_high_compression_flags_the_token_mismatch(capsys):
    code, out, err = run(capsys, "audit", "--opensora-version", "2.0", "--config", HIGH)
    assert code == 0, err  # exit 1 is for t = 0 and the guard only
    row = audit_rows(out)[("768x768", "32")]
    # 32 // 4 = 8 latent frames, 24 x 24 latent; 576 // 4 = 144 tokens in training, 576 at inference
    assert row[3:9] == ["8x24x24", "144", f"{lin(144) * math.sqrt(8):.3f}", "576", f"{lin(576) * math.sqrt(8):.3f}",
                        "mismatch"]
    assert ("WARNING: training and inference shift differently: training counts (h w) // 2**2 = 144 tokens at "
            "768x768 where inference counts (h w) // 1**2 = 576, so 4 bucket(s)") in out
    assert "patch_size=1" in out and "non-causal" in out


def test_audit_shows_the_size_inference_samples_a_bucket_at(tmp_path, capsys):
    # 256px at 3:2 (2.0's get_image_size): w = int(sqrt(256^2 3/2) // 16) 16 = 304, h = int((256^2 / 304) // 16) 16
    # = 208; training's buckets then take one step of 16 towards 256^2 pixels (208 x 320 is closer: 1024 off, not
    # 2304), inference does not. 33 frames, causal VAE: 9 latent frames; tokens (h / 8)(w / 8) / 4.
    csv = tmp_path / "clips.csv"
    csv.write_text("path,text,num_frames,height,width,fps\n" + "".join(f"/c/{i}.mp4,x,33,720,1080,24\n"
                                                                     for i in range(3)), encoding="utf-8")
    code, out, err = run(capsys, "audit", "--opensora-version", "2.0", "--config", STAGE1, "--csv", csv)
    assert code == 0, err
    row = audit_rows(out)[("208x320", "33")]
    train, infer = 26 * 40 // 4, 26 * 38 // 4
    assert row[3:11] == ["9x26x40", str(train), f"{lin(train) * 3:.3f}", str(infer), "at", "208x304",
                         f"{lin(infer) * 3:.3f}", "mismatch"]
    assert "inference samples at 208x304 (2.0's get_image_size with training=False)" in out


def test_audit_high_compression_fixed_by_patch_size(tmp_path, capsys):
    code, out, err = run(capsys, "config", HIGH, "--opensora-version", "2.0", "--set", "patch_size=1", "--out",
                         tmp_path / "fixed.py")
    assert code == 0, err
    code, out, err = run(capsys, "audit", "--opensora-version", "2.0", "--config", tmp_path / "fixed.py")
    assert code == 0, err
    row = audit_rows(out)[("768x768", "32")]
    assert row[4:9] == ["576", f"{lin(576) * math.sqrt(8):.3f}", "576", f"{lin(576) * math.sqrt(8):.3f}", "ok"]
    assert "WARNING" not in out and "rflow-timeshift(patch_size=1)" in out


def test_audit_csv_with_2_0_bucket_rule(tmp_path, capsys):
    data = tmp_path / "d.csv"
    data.write_text("path,text,num_frames,height,width,fps\n"
                    "a,x,33,720,1280,24\n"  # fps 24 is not below fps_max 24: stride ceil(24 / 24) = 1; 33 >= 33
                    "b,x,66,256,256,48\n"  # stride ceil(48 / 24) = 2: 33 frames
                    "c,x,32,256,256,\n"  # no fps: no stride; 32 < 33, so the 5-frame bucket
                    "d,x,1,720,1280,\n"  # an image: 768px's image bucket (keep 0.5, taken as kept)
                    "f,x,1,720,1280,30\n"  # an image at fps 30: stride 2, and 2.0 divides its frame too: 1 // 2 = 0
                    "e,x,3,256,256,24\n")  # fewer frames than any video bucket: dropped
    code, out, err = run(capsys, "audit", "--opensora-version", "2.0", "--config", STAGE1, "--csv", data,
                         "--no-progress")
    assert code == 0, err
    rows = audit_rows(out)
    # The 720x1280 video fits 768px by pixels, which has no video bucket, so 256px's; 9:16 in 256px at D = 16 is
    # 192 x 336: latent 24 x 42, 1008 // 4 = 252 tokens. 768px's 9:16 size is 576 x 1024: 72 x 128, 2304 tokens.
    assert sorted(rows) == [("192x336", "33"), ("256x256", "33"), ("256x256", "5"), ("576x1024", "1")]
    assert rows[("192x336", "33")][2:6] == ["1", "9x24x42", "252", f"{lin(252) * 3:.3f}"]
    assert rows[("256x256", "33")][2] == "1" and rows[("256x256", "5")][2] == "1"
    assert rows[("576x1024", "1")][3:6] == ["1x72x128", "2304", f"{lin(2304):.3f}"]
    assert "2 clips fit no bucket, so Open-Sora drops them (1 images, 1 videos)" in out


def test_audit_collapse_and_guard_exit_1(tmp_path, capsys):
    cfg = tmp_path / "cfg.py"
    body = ('bucket_config = {"768px": {1: (1.0, 20), 2: (1.0, 8), 32: (1.0, 8)}}\n'
            "patch_size = 1\nae_spatial_compression = 32\nis_causal_vae = False\n")
    cfg.write_text(body)
    code, out, _ = run(capsys, "audit", "--opensora-version", "2.0", "--config", cfg)
    assert code == 1  # 2 // 4 = 0 latent frames: alpha 0, in training and at inference
    assert audit_rows(out)[("768x768", "2")][3:12] == ["0x24x24", "144", "0.000", "576", "0.000", "t", "=", "0", "!"]
    assert "FAIL" in out and "768x768 x 2 frames" in out
    cfg.write_text(body + 'scheduler = dict(type="rflow-timeshift", patch_size=1)\n')
    code, out, _ = run(capsys, "audit", "--opensora-version", "2.0", "--config", cfg)
    assert code == 1 and audit_rows(out)[("768x768", "2")][8] == "refused" and "the guard would stop" in out
    cfg.write_text(body + 'scheduler = dict(type="rflow-timeshift", patch_size=1, on_degenerate="clamp")\n')
    code, out, _ = run(capsys, "audit", "--opensora-version", "2.0", "--config", cfg)
    # clamped to one latent frame: alpha = lin(576) * sqrt(1)
    assert code == 0 and audit_rows(out)[("768x768", "2")][5:9] == [f"{lin(576):.3f}", "576", f"{lin(576):.3f}",
                                                                    "clamped"]


@pytest.mark.parametrize("text, words", [
    ('scheduler = dict(type="rflow", use_timestep_transform=True)\n', "scheduler type='rflow' is not allowed"),
    ('scheduler = dict(type="rflow-timeshift", num_sampling_steps=30)\n', "num_sampling_steps=30 has no meaning"),
    ('scheduler = dict(type="rflow-timeshift", backend="standalone")\n', "backend='standalone' has no meaning"),
    ('scheduler = dict(type="rflow-timeshift", patch_size=1.5)\n', "patch_size=1.5 is not allowed"),
    ('bucket_config = {"256pix": {1: (1.0, 4)}}\n', "'256pix' is not an Open-Sora 2.0 name"),
    ('bucket_config = {"256px_ar7:3": {1: (1.0, 4)}}\n', "aspect ratio '7:3'"),
    ('bucket_config = {"256px": {1: (1.0, 4)}}\npatch_size = 3\n', "not a multiple of patch_size=3"),
    ('bucket_config = {"256px": {1: (1.0, 4)}}\nis_causal_vae = "yes"\n', "is_causal_vae='yes'"),
    ('bucket_config = {"256px": {1: (1.0, 4)}}\nae_spatial_compression = 0\n', "ae_spatial_compression=0"),
    ('bucket_config = {"256px": {5: (1.0, 4)}}\ndataset = dict(fps_max="24")\n', "fps_max='24'"),
])
def test_audit_2_0_refuses_bad_configs(text, words, tmp_path, capsys):
    cfg = tmp_path / "cfg.py"
    cfg.write_text(text if "bucket_config" in text else 'bucket_config = {"256px": {1: (1.0, 4)}}\n' + text)
    code, out, err = run(capsys, "audit", "--opensora-version", "2.0", "--config", cfg)
    assert code == 2 and len(err.splitlines()) == 1 and words in err and "OK" not in out, err


def test_audit_1_x_points_2_0_names_to_2_0(capsys):
    code, _, err = run(capsys, "audit", "--config", STAGE1)
    assert code == 2 and "'256px' is Open-Sora 2.0's: pass --opensora-version 2.0" in err


def test_audit_2_0_bad_fps_row(tmp_path, capsys):
    data = tmp_path / "d.csv"
    data.write_text("path,num_frames,height,width,fps\na,33,256,256,fast\n")
    code, _, err = run(capsys, "audit", "--opensora-version", "2.0", "--config", STAGE1, "--csv", data,
                       "--no-progress")
    assert code == 2 and "row 2: non-numeric fps: 'fast'" in err


# --- config ----------------------------------------------------------------------------------------------------

def test_config_2_0_writes_loads_and_keeps_the_base(tmp_path, capsys):
    base = tmp_path / "base.py"
    base.write_text(HIGH.read_text())
    before = snapshot(tmp_path)
    out_path = tmp_path / "derived" / "hc_fixed.py"
    code, out, err = run(capsys, "config", base, "--opensora-version", "2.0", "--out", out_path, "--set",
                         "patch_size=1", "--timestep-rng", "per_sample", "--stratified")
    assert code == 0, err
    assert "wrote" in out and "rflow-timeshift(" in out and "patch_size=1" in out
    cfg = Config.fromfile(str(out_path))
    assert dict(cfg.scheduler) == dict(type="rflow-timeshift", timestep_rng="per_sample", stratified=True,
                                       patch_size=1)
    assert cfg.custom_imports["imports"] == ["opensora_timeshift_patch"]
    assert cfg.bucket_config == Config.fromfile(str(base)).bucket_config and cfg.patch_size == 1
    after = snapshot(tmp_path)
    assert {k: v for k, v in after.items() if not k.startswith("derived")} == before


def test_config_2_0_without_settings_is_stock_2_0(tmp_path, capsys):
    code, out, err = run(capsys, "config", STAGE1, "--opensora-version", "2.0", "--out", tmp_path / "o.py")
    assert code == 0, err
    assert dict(Config.fromfile(str(tmp_path / "o.py")).scheduler) == dict(type="rflow-timeshift")
    assert "no settings: stock 2.0's rule" in out


@pytest.mark.parametrize("argv, words", [
    (["--set", "cfg_scale=4"], "cfg_scale=4 has no meaning on Open-Sora 2.0"),
    (["--set", "causal=True"], "causal=True has no meaning on Open-Sora 2.0"),
    (["--set", "spatial_compression=8"], "spatial_compression=8 has no meaning"),
    (["--set", "patch_size=0"], "patch_size=0 is not allowed"),
    (["--stratified"], "timestep_rng='per_sample'"),
])
def test_config_2_0_refusals_write_nothing(argv, words, tmp_path, capsys):
    code, _, err = run(capsys, "config", STAGE1, "--opensora-version", "2.0", "--out", tmp_path / "o.py", *argv)
    assert code == 2 and len(err.splitlines()) == 1 and words in err, err
    assert list(tmp_path.iterdir()) == []


def test_config_2_0_never_writes_the_base(tmp_path, capsys):
    base = tmp_path / "base.py"
    base.write_text(STAGE1.read_text())
    before = snapshot(tmp_path)
    code, _, err = run(capsys, "config", base, "--opensora-version", "2.0", "--out", base, "--force")
    assert code == 2 and "is the base config" in err
    assert snapshot(tmp_path) == before


def test_config_1_x_still_needs_a_shift_mode(tmp_path, capsys):
    code, _, err = run(capsys, "config", FIXTURES / "opensora_v1_2_stage1.py", "--out", tmp_path / "o.py")
    assert code == 2 and "--shift-mode is required" in err and list(tmp_path.iterdir()) == []


def test_json_is_strict_even_for_refused_rows(capsys):
    import json as _json

    from opensora_timeshift_patch.cli import main as cli_main

    assert cli_main(["inspect", "--opensora-version", "2.0", "--resolution", "256px", "--frames", "2", "--vae",
                     "dc-ae", "--json"]) == 0
    out = capsys.readouterr().out

    def refuse(constant):
        raise AssertionError(f"non-JSON constant {constant}")

    rows = _json.loads(out, parse_constant=refuse)["rows"]
    assert any(row["status"] == "refused" and row["p5"] is None for row in rows)


# --- inference sizes a name as 2.0's inference does ---------------------------------------------------------------
# 2.0's aspect.py: for a name of P pixels and ratio W:H, w = int(sqrt(P W / H) // D) * D, h = int((P / w) // D) * D;
# training (its buckets) then moves one side one step of D when that lands closer to P, inference
# (get_image_size(..., training=False), then each side rounded up to 16) does not.
#   1080p, D = 16: P = 1080 * 1080 / 9 * 16 = 2073600; 16:9: w = 1920, h = 1072 (|1072 * 1920 - P| = 15360);
#     training takes (1072, 1936) (|...| = 1792): latent 2 * 67 x 2 * 121 = 134 x 242, (h w) // 4 = 8107 tokens;
#     inference keeps (1072, 1920): 134 x 240, 8040 tokens.
#   720p, D = 32 (DC-AE, patch 1): P = 921600; 16:9: w = 1280, h = 704 (|...| = 20480); training takes (704, 1312)
#     (|...| = 2048): latent 22 x 41 = 902 tokens at patch 1; inference keeps (704, 1280): 22 x 40 = 880.

def test_inference_tokens_at_1080p_hunyuan_are_inference_size(capsys):
    rows = inspect_rows(capsys, "--resolution", "1080p", "--frames", 1)
    stock = rows[(1072, 1936, 1, "stock")]
    assert (stock["latent_height"], stock["latent_width"], stock["tokens"]) == (134, 242, 8107)
    assert stock["inference_tokens"] == 8040
    assert stock["alpha"] == pytest.approx(lin(8107)) and stock["inference_alpha"] == pytest.approx(lin(8040))
    code, out, _ = run(capsys, "inspect", "--opensora-version", "2.0", "--resolution", "1080p", "--frames", 1)
    assert code == 0 and "1072x1920" in out and "8040" in out and "no setting here changes them" in out


def test_inference_tokens_at_720p_dc_ae_are_inference_size(capsys):
    rows = inspect_rows(capsys, "--vae", "dc-ae", "--resolution", "720p", "--frames", 33, "--set", "patch_size=1")
    settings = rows[(704, 1312, 33, "settings")]
    assert (settings["latent_frames"], settings["latent_height"], settings["latent_width"]) == (8, 22, 41)
    assert (settings["tokens"], settings["inference_tokens"]) == (902, 880)
    assert settings["inference_alpha"] == pytest.approx(lin(880) * math.sqrt(8))
    stock = rows[(704, 1312, 33, "stock")]
    assert (stock["tokens"], stock["inference_tokens"]) == (225, 880)  # training (22 * 41) // 4, inference // 1


def test_a_size_given_as_hxw_samples_at_that_size(capsys):
    rows = inspect_rows(capsys, "--resolution", "1072x1936", "--frames", 1)
    stock = rows[(1072, 1936, 1, "stock")]
    assert stock["tokens"] == stock["inference_tokens"] == 8107


def test_an_alpha_beyond_100_is_shown_under_stock_and_refused_under_the_guard(capsys):
    rows = inspect_rows(capsys, "--resolution", "100000x100000", "--frames", 1)
    # 100000 / 8 = 12500 latent side: 12500**2 // 4 = 39062500 tokens, alpha lin(39062500), far above 100
    stock, settings = rows[(100000, 100000, 1, "stock")], rows[(100000, 100000, 1, "settings")]
    assert stock["tokens"] == 39062500 and stock["alpha"] == pytest.approx(lin(39062500))
    assert stock["status"] == "extreme" and stock["message"] is None  # stock 2.0 has no guard: shown, kept
    # ln(alpha) ~ 9.9 moves 2.0's logit-normal(0, 1) past logit(0.999) ~ 6.9: most draws within 1/1000 of t = 1
    assert settings["status"] == "refused" and "pile up" in settings["message"]
    code, out, _ = run(capsys, "inspect", "--opensora-version", "2.0", "--resolution", "100000x100000", "--frames", 1)
    assert code == 0 and "alpha outside [0.01, 100]" in out and "refused by the guard" in out
