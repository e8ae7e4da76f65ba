"""inspect, plot and audit with the scheduler's bucket_settings: which rule each bucket trains under, and its numbers.

Expected numbers are worked by hand. The sqrt resolution rule against 512 x 512 gives 720 x 1280 the spatial factor
sqrt(921600 / 262144) = 1.875, and 240 x 426 sqrt(102240 / 262144); the temporal factor is sqrt(T_eff). For 16
frames, legacy gives T_eff = 16 // 17 * 5 = 0 (a collapse, refused by the default guard) and frames16 / latent give
4, so the factor is 1.875 * 2 = 3.75; 17 frames under legacy give T_eff 5, factor 1.875 * sqrt(5). The shift maps
t to a t / (1 + (a - 1) t), so a quantile of the shifted t is the shift of the base quantile: the logit-normal median
0.5 goes to 3.75 * 0.5 / (1 + 2.75 * 0.5) = 0.78947 at a = 3.75; uniform's 5th and 95th percentiles go at a = 1.875
to 0.09375 / 1.04375 and 1.78125 / 1.83125.
"""

import json
import math

import pytest

from test_cli import run, run_any

SPATIAL_720P = math.sqrt(720 * 1280 / 512 ** 2)
FRAMES16_RULE = "bucket_settings=[{'frames': (2, 16), 'shift_mode': 'frames16'}]"


def shifted(a, t):
    return a * t / (1 + (a - 1) * t)


def write_config(tmp_path, scheduler, buckets='{"720p": {1: (1.0, 8), 16: (1.0, 2), 51: (0.5, 1)}}'):
    cfg = tmp_path / "train.py"
    cfg.write_text(f"bucket_config = {buckets}\nscheduler = {scheduler}\n")
    return cfg


def table_rows(out):
    """The audit or inspect table as {(resolution, frames): cells} (the table is what follows the dashed line)."""
    lines = out.splitlines()
    start = next(i for i, line in enumerate(lines) if line.startswith("----------"))
    header = lines[start - 1].split()
    rows = {}
    for line in lines[start + 1:]:
        if not line.strip():
            break
        cells = line.split()
        if header[3:5] == ["current", "factor"] and cells[3] == "t":  # "t = 0 !"
            cells[3:7] = [" ".join(cells[3:7])]
        rows.setdefault((cells[0], int(cells[1])), []).append(dict(zip(header, cells)))
    return header, rows


def assert_one_line(code, err, *words):
    assert code == 2 and len(err.splitlines()) == 1, err
    for word in words:
        assert word in err, err


# --- audit -----------------------------------------------------------------------------------------------------

def test_audit_a_rule_that_fixes_a_collapsing_bucket_passes(tmp_path, capsys):
    cfg = write_config(tmp_path, 'dict(type="rflow-timeshift", shift_mode="legacy", '
                                 'bucket_settings=[dict(frames=(2, 16), shift_mode="frames16")])')
    code, out, err = run(capsys, "audit", "--config", cfg)
    assert code == 0, out + err
    assert "  bucket_settings[0] (frames 2..16): shift_mode='frames16'" in out.splitlines()
    header, rows = table_rows(out)
    assert header[:6] == ["resolution", "frames", "clips", "current", "factor", "rule"]
    row16 = rows[("720x1280", 16)][0]
    assert (row16["current"], row16["rule"], row16["legacy"]) == ("ok", "[0]", "0!")  # T_eff columns stay per mode
    assert float(row16["factor"]) == pytest.approx(SPATIAL_720P * 2, abs=5e-4) == 3.75
    row51 = rows[("720x1280", 51)][0]  # 51 frames: no rule, the scheduler's own legacy, T_eff 15
    assert row51["rule"] == "-" and float(row51["factor"]) == pytest.approx(SPATIAL_720P * math.sqrt(15), abs=5e-4)
    assert rows[("720x1280", 1)][0]["rule"] == "-"
    assert "OK: no clip" in out


def test_audit_without_the_rule_fails(tmp_path, capsys):
    cfg = write_config(tmp_path, 'dict(type="rflow-timeshift", shift_mode="legacy")')
    code, out, _ = run(capsys, "audit", "--config", cfg)
    assert code == 1 and "FAIL" in out
    header, rows = table_rows(out)
    assert "rule" not in header and "bucket_settings" not in out  # no rules: the table as before
    assert rows[("720x1280", 16)][0]["current"] == "refused"


def test_audit_a_rule_that_breaks_a_bucket_fails_naming_the_rule(tmp_path, capsys):
    cfg = write_config(tmp_path, 'dict(type="rflow-timeshift", shift_mode="latent", on_degenerate="ignore", '
                                 'bucket_settings=[dict(frames=(2, 16), shift_mode="legacy")])')
    code, out, _ = run(capsys, "audit", "--config", cfg)
    assert code == 1
    _, rows = table_rows(out)
    row16 = rows[("720x1280", 16)][0]
    assert (row16["current"], row16["factor"], row16["rule"]) == ("t = 0 !", "0.000", "[0]")
    assert float(rows[("720x1280", 51)][0]["factor"]) == pytest.approx(SPATIAL_720P * math.sqrt(15), abs=5e-4)
    assert "Recommendation: shift_mode='latent' in bucket_settings[0]" in out


def test_audit_the_guard_refusing_under_a_rule_fails(tmp_path, capsys):
    cfg = write_config(tmp_path, 'dict(type="rflow-timeshift", shift_mode="latent", '
                                 'bucket_settings=[dict(frames=(2, 16), shift_mode="legacy")])')
    code, out, _ = run(capsys, "audit", "--config", cfg)
    assert code == 1 and "FAIL: the guard would stop training" in out and "720x1280 x 16 frames" in out
    assert table_rows(out)[1][("720x1280", 16)][0]["current"] == "refused"


def test_audit_a_rule_by_resolution_and_frames(tmp_path, capsys):
    # 240p's 102-frame bucket: legacy T_eff 102 // 17 * 5 = 30, times transform_scale 1.5 under the rule; 720p's 51
    # frames are outside its frame range, 240p's 16 outside it too.
    cfg = write_config(tmp_path, 'dict(type="rflow-timeshift", shift_mode="latent", bucket_settings=['
                                 'dict(frames=(65, None), resolution=(1, 200000), transform_scale=1.5)])',
                       buckets='{"240p": {16: (1.0, 12), 102: (1.0, 2)}, "720p": {51: (1.0, 1)}}')
    code, out, _ = run(capsys, "audit", "--config", cfg)
    assert code == 0
    assert "bucket_settings[0] (frames 65.., H*W 1..200000): transform_scale=1.5" in out
    _, rows = table_rows(out)
    spatial_240p = math.sqrt(240 * 426 / 512 ** 2)
    assert rows[("240x426", 102)][0]["rule"] == "[0]"
    assert float(rows[("240x426", 102)][0]["factor"]) == pytest.approx(spatial_240p * math.sqrt(30) * 1.5, abs=5e-4)
    assert rows[("240x426", 16)][0]["rule"] == "-"
    assert float(rows[("240x426", 16)][0]["factor"]) == pytest.approx(spatial_240p * 2, abs=5e-4)
    assert rows[("720x1280", 51)][0]["rule"] == "-"


def test_audit_csv_clips_take_their_buckets_rule(tmp_path, capsys):
    data = tmp_path / "data.csv"
    data.write_text("path,num_frames,height,width\na,16,720,1280\nb,16,720,1280\nc,17,720,1280\n")
    cfg = tmp_path / "train.py"
    cfg.write_text('scheduler = dict(type="rflow-timeshift", shift_mode="legacy", '
                   'bucket_settings=[dict(frames=(2, 16), shift_mode="frames16")])\n')
    code, out, _ = run(capsys, "audit", "--config", cfg, "--csv", data, "--no-progress")
    assert code == 0
    _, rows = table_rows(out)
    assert (rows[("720x1280", 16)][0]["clips"], rows[("720x1280", 16)][0]["rule"]) == ("2", "[0]")
    assert float(rows[("720x1280", 17)][0]["factor"]) == pytest.approx(SPATIAL_720P * math.sqrt(5), abs=5e-4)
    assert rows[("720x1280", 17)][0]["rule"] == "-"


@pytest.mark.parametrize("rules, words", [
    ("5", ["bucket_settings=5", "list"]),
    ("[]", ["bucket_settings", "list of 1"]),
    ("['x']", ["bucket_settings[0]", "dict"]),
    ("[dict(shift_mode='latent')]", ["bucket_settings[0]", "neither frames nor resolution"]),
    ("[dict(frames=1)]", ["bucket_settings[0]", "sets nothing"]),
    ("[dict(frames=0, shift_mode='latent')]", ["bucket_settings[0] frames=0"]),
    ("[dict(frames=(16, 2), shift_mode='latent')]", ["bucket_settings[0] frames="]),
    ("[dict(frames=True, shift_mode='latent')]", ["bucket_settings[0] frames=True"]),
    ("[dict(frames=(1, 16), shift_mode='latent'), dict(frames=(16, 32), shift_mode='v13')]",
     ["bucket_settings[1]", "overlaps bucket_settings[0]"]),
    ("[dict(frames=1, timestep_rng='per_sample')]", ["bucket_settings[0]", "timestep_rng", "cannot differ"]),
    ("[dict(frames=1, shift_mode='nope')]", ["bucket_settings[0]", "nope"]),
    ("[dict(frames=1, transform_scale=float('nan'))]", ["bucket_settings[0]", "transform_scale"]),
])
def test_audit_malformed_rules_are_one_line(tmp_path, capsys, rules, words):
    cfg = write_config(tmp_path, f'dict(type="rflow-timeshift", shift_mode="latent", bucket_settings={rules})')
    code, out, err = run_any(capsys, "audit", "--config", cfg)
    assert_one_line(code, err, "scheduler rflow-timeshift", *words)
    assert out == ""


def test_audit_opensora2_refuses_bucket_settings(tmp_path, capsys):
    cfg = tmp_path / "v2.py"
    cfg.write_text('scheduler = dict(type="rflow-timeshift", bucket_settings=[dict(frames=1, '
                   'sample_method="uniform")])\n')
    data = tmp_path / "data.csv"
    data.write_text("num_frames,height,width\n16,720,1280\n")
    code, _, err = run_any(capsys, "audit", "--opensora-version", "2.0", "--config", cfg, "--csv", data,
                           "--no-progress")
    assert_one_line(code, err, "bucket_settings", "Open-Sora 2.0")


# --- inspect and plot ------------------------------------------------------------------------------------------

def inspect_json(capsys, *argv):
    code, out, err = run(capsys, "inspect", "--json", *argv)
    assert code == 0, err
    return json.loads(out)


def test_inspect_rows_take_their_rules_settings(capsys):
    data = inspect_json(capsys, "--frames", "1", "16", "17", "--resolution", "720x1280", "--mode", "legacy",
                        "--set", "bucket_settings=[{'frames': (2, 16), 'shift_mode': 'frames16'}, "
                                 "{'frames': 1, 'sample_method': 'uniform'}]")
    rows = {r["frames"]: r for r in data["rows"]}
    assert [r["rule"] for r in data["rows"]] == [1, 0, None]
    assert rows[16]["mode"] == "legacy" and rows[16]["status"] == "ok"
    assert rows[16]["t_eff"] == 4 and rows[16]["shift_factor"] == pytest.approx(3.75)
    assert rows[16]["median"] == pytest.approx(1000 * shifted(3.75, 0.5))
    assert rows[17]["t_eff"] == 5 and rows[17]["shift_factor"] == pytest.approx(SPATIAL_720P * math.sqrt(5))
    # the image rule draws uniformly: its quantiles are the shifted 0.05, 0.5, 0.95
    assert [rows[1][k] for k in ("p5", "median", "p95")] == pytest.approx(
        [1000 * shifted(1.875, q) for q in (0.05, 0.5, 0.95)])
    assert [(r["rule"], r["settings"]) for r in data["bucket_settings"]] == [
        (0, {"shift_mode": "frames16"}), (1, {"sample_method": "uniform"})]
    assert data["bucket_settings"][1]["distribution"].startswith("TimestepDistribution('uniform'")


def test_inspect_without_rules_has_null_rule_and_no_column(capsys):
    data = inspect_json(capsys, "--frames", "16", "--resolution", "720x1280", "--mode", "legacy")
    assert data["rows"][0]["rule"] is None and data["bucket_settings"] == []
    code, out, _ = run(capsys, "inspect", "--frames", "16", "--resolution", "720x1280", "--mode", "legacy")
    assert code == 0 and " rule " not in out.splitlines()[1] and "DEGENERATE" in out


def test_inspect_table_names_the_rule(capsys):
    code, out, err = run(capsys, "inspect", "--frames", "16", "17", "--resolution", "720x1280", "--mode", "legacy",
                         "--set", FRAMES16_RULE)
    assert code == 0, err
    assert "  bucket_settings[0] (frames 2..16): shift_mode='frames16'" in out.splitlines()
    header, rows = table_rows(out)
    assert header[:5] == ["resolution", "frames", "mode", "rule", "T_eff"]
    assert (rows[("720x1280", 16)][0]["rule"], rows[("720x1280", 16)][0]["shift"]) == ("[0]", "3.750")
    assert rows[("720x1280", 17)][0]["rule"] == "-"
    assert "DEGENERATE" not in out and "guard" not in out


def test_inspect_rule_breaking_a_bucket_is_marked(capsys):
    data = inspect_json(capsys, "--frames", "16", "--resolution", "720x1280", "--mode", "latent",
                        "--set", "bucket_settings=[{'frames': 16, 'shift_mode': 'legacy'}]")
    row = data["rows"][0]
    assert (row["rule"], row["t_eff"], row["status"], row["degenerate"]) == (0, 0, "collapsed", True)


def test_inspect_weighting_under_a_rules_distribution(capsys):
    # No shift (512x512 image, spatial), sigma_sqrt with max_loss_weight 100 under a rule's uniform sampling: the
    # emphasis median is (2 sqrt(M) - 1) / (2 M) = 0.095 (see test_cli_toolkit), not the logit-normal one.
    argv = ["--frames", "1", "--resolution", "512x512", "--mode", "spatial", "--loss-weighting", "sigma_sqrt",
            "--max-loss-weight", "100"]
    ruled = inspect_json(capsys, *argv, "--set", "bucket_settings=[{'frames': 1, 'sample_method': 'uniform'}]")
    assert ruled["rows"][0]["rule"] == 0
    assert ruled["rows"][0]["emphasis_median"] == pytest.approx(95.0, abs=0.2)
    plain = inspect_json(capsys, *argv)
    assert plain["rows"][0]["emphasis_median"] != pytest.approx(95.0, abs=5)


@pytest.mark.parametrize("value, words", [
    ("5", ["bucket_settings=5"]),
    ("[{'frames': 1}]", ["sets nothing"]),
    ("[{'frames': (1, 16), 'shift_mode': 'latent'}, {'frames': 16, 'shift_mode': 'v13'}]", ["overlaps"]),
    ("[{'shift_mode': 'latent'}]", ["neither frames nor resolution"]),
    ("[{'frames': 1, 'loss_weighting': 'cosmap'}]", ["loss_weighting", "cannot differ"]),
    ("[{'frames': 1, 'loc': 'x'}]", ["bucket_settings[0]", "loc"]),
])
def test_inspect_malformed_rules_are_one_line(capsys, value, words):
    code, out, err = run_any(capsys, "inspect", "--set", f"bucket_settings={value}")
    assert_one_line(code, err, *words)
    assert out == ""


def test_inspect_and_plot_opensora2_refuse_bucket_settings(tmp_path, capsys):
    rules = "bucket_settings=[{'frames': 1, 'sample_method': 'uniform'}]"
    code, _, err = run_any(capsys, "inspect", "--opensora-version", "2.0", "--set", rules)
    assert_one_line(code, err, "bucket_settings", "Open-Sora 2.0")
    code, _, err = run_any(capsys, "plot", "--out", tmp_path / "p", "--opensora-version", "2.0", "--set", rules)
    assert_one_line(code, err, "bucket_settings", "Open-Sora 2.0")


def test_plot_with_rules(tmp_path, capsys):
    code, out, err = run(capsys, "plot", "--out", tmp_path, "--frames", "1", "16", "--resolution", "720x1280",
                         "--mode", "legacy", "--samples", "2000", "--loss-weighting", "sigma_sqrt", "--set",
                         "bucket_settings=[{'frames': (2, 16), 'shift_mode': 'frames16'}, "
                         "{'frames': 1, 'sample_method': 'uniform'}]")
    assert code == 0, err
    assert sorted(p.name for p in tmp_path.iterdir()) == [
        "emphasis_720x1280_16f.png", "emphasis_720x1280_1f.png", "timeshift_720x1280_16f.png",
        "timeshift_720x1280_1f.png"]
