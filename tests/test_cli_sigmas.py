"""``opensora-timeshift sigmas``: the recipe's schedule as a table or JSON, and the CLI's exit-code contract."""

import json
import math

import pytest

from test_cli import run_any
from test_recipes import GOLDENS


def test_json_is_the_models_own_schedule(capsys):
    case = GOLDENS["wan22"]["recipes"]["wan2.2-i2v-a14b"][1]
    code, out, err = run_any(capsys, "sigmas", "--recipe", "wan2.2-i2v-a14b", "--steps", case["steps"],
                             "--resolution", f"{case['height']}x{case['width']}", "--frames", case["frames"], "--json")
    assert code == 0 and err == ""
    doc = json.loads(out)
    assert doc["sigmas"] == pytest.approx(case["sigmas"], rel=2e-6)
    assert doc["recorded"] == {"boundary": 0.9} and doc["confidence"] == "official code"
    assert doc["training_confidence"] == "not published"  # Wan 2.2 publishes no training rule
    assert "Wan-Video/Wan2.2" in doc["source"]
    # where the recipe gives no training confidence apart, the schedule's stands for both
    doc = json.loads(run_any(capsys, "sigmas", "--recipe", "sd3", "--steps", 2, "--json")[1])
    assert doc["confidence"] == doc["training_confidence"] == "official code"


def test_table_has_one_row_per_step_and_the_terminal(capsys):
    code, out, _ = run_any(capsys, "sigmas", "--recipe", "wan2.2-t2v-a14b", "--steps", 4)
    assert code == 0
    rows = [r for r in (line.split() for line in out.splitlines()) if len(r) == 2 and r[0] != "step"][1:]
    assert [r[0] for r in rows] == ["0", "1", "2", "3", "terminal"]
    s = 0.9990000128746033  # UniPC's grid starts at float32(0.999): 12 t / (1 + 11 t) at t = s, 3s/4, s/2, s/4
    assert [float(r[1]) for r in rows] == pytest.approx(
        [12 * t / (1 + 11 * t) for t in (s, 3 * s / 4, s / 2, s / 4)] + [0], abs=1e-6)
    assert "wan_t2v_A14B.py" in out


def test_the_size_reaches_the_schedule(capsys):
    small = json.loads(run_any(capsys, "sigmas", "--recipe", "flux", "--steps", 2, "--resolution", "256x256",
                               "--frames", 1, "--json")[1])["sigmas"][1]
    large = json.loads(run_any(capsys, "sigmas", "--recipe", "flux", "--steps", 2, "--resolution", "1024x1024",
                               "--frames", 1, "--json")[1])["sigmas"][1]
    assert large > small


@pytest.mark.parametrize("argv", [
    ["--recipe", "nope"], ["--steps", "4"], ["--recipe", "flux", "--steps", "0"],
    ["--recipe", "flux", "--steps", "-3"], ["--recipe", "flux", "--steps", "1.5"],
    ["--recipe", "flux", "--steps", "nan"], ["--recipe", "flux", "--steps", "99999999"],
    ["--recipe", "flux", "--resolution", "0x10"], ["--recipe", "flux", "--resolution", "720p"],
    ["--recipe", "flux", "--resolution", ""], ["--recipe", "flux", "--frames", "0"],
    ["--recipe", "flux", "--recipe", "flux"], ["--recipe", "flux", "--steps", "2", "--steps", "3"],
    ["--recipe", "ltx-video-0.9", "--steps", "1"],  # its own schedule is 0 / 0 there
    ["--recipe", "opensora-1.2", "--frames", "16"],  # T_eff = 16 // 17 * 5 = 0: stock's first step is NaN
    ["--recipe", "opensora-1.3", "--frames", "3"],  # T_eff = (3 - 1) // 4 = 0
])
def test_bad_input_is_one_line_and_exit_2(argv, capsys):
    code, out, err = run_any(capsys, "sigmas", *argv)
    assert code == 2 and out == ""
    assert len(err.strip().splitlines()) == 1 and "Traceback" not in err


def test_help(capsys):
    code, out, _ = run_any(capsys, "sigmas", "--help")
    assert code == 0 and "usage: opensora-timeshift sigmas" in out and "exit status" in out


def test_inspect_shows_the_recipes_source_and_its_shift(capsys):
    code, out, _ = run_any(capsys, "inspect", "--set", "recipe=wan2.2-t2v-a14b", "--frames", 17, "--resolution",
                           "720x1280", "--mode", "latent")
    assert code == 0
    assert "recipe wan2.2-t2v-a14b" in out and "wan_t2v_A14B.py" in out
    assert "(official code (sampling); not published (training))" in out
    row = next(line for line in out.splitlines() if line.startswith("720x1280"))
    assert row.split()[4] == "12.000"  # the constant shift, no temporal factor


def test_inspect_on_2_shows_the_recipe_of_the_settings_row(capsys):
    code, out, _ = run_any(capsys, "inspect", "--opensora-version", "2.0", "--set", "recipe=flux", "--frames", 1,
                           "--resolution", "720p")
    assert code == 0 and "recipe flux" in out and "black-forest-labs/flux" in out


def test_inspect_without_a_recipe_names_none(capsys):
    code, out, _ = run_any(capsys, "inspect", "--frames", 17, "--resolution", "720x1280", "--mode", "latent")
    assert code == 0 and "recipe " not in out


def test_inspect_refuses_a_bad_recipe_in_one_line(capsys):
    code, out, err = run_any(capsys, "inspect", "--set", "recipe=nope", "--mode", "latent")
    assert code == 2 and out == "" and "recipe='nope' is not allowed" in err and len(err.strip().splitlines()) == 1


def test_inspect_shows_a_recipe_as_its_training_draws_it(capsys):
    # LTX-2 at 512x768, 49 frames: 7 x 16 x 24 = 2688 tokens, e^mu with mu = 0.95 + 1.1 (2688 - 1024) / 3072; its
    # median solves 0.9 P(Y <= m) + 0.1 (m - 0.001) / 0.999 = 1/2 (the hand-derived CDF of test_shifted_components)
    from test_shifted_components import ltx2_cdf, mu_of

    code, out, err = run_any(capsys, "inspect", "--set", "recipe=ltx-2", "--resolution", "512x768", "--frames", 49,
                             "--json")
    assert code == 0, err
    (row,) = json.loads(out)["rows"]  # the recipe's own shift_mode alone, not the command's default modes
    assert row["mode"] == "latent" and row["shift_factor"] == pytest.approx(math.exp(mu_of(2688)), rel=1e-6)
    for q in ("p5", "median", "p95"):
        share = {"p5": 0.05, "median": 0.5, "p95": 0.95}[q]
        assert ltx2_cdf(row[q] / 1000, mu_of(2688)) == pytest.approx(share, abs=1e-6)


def test_inspect_shows_a_recipes_own_distribution_not_the_commands_default(capsys):
    # Wan 2.2 sets no sample_method: training draws the scheduler's default, uniform, so p5 at shift 5 is
    # 5 (0.05) / (1 + 4 (0.05)), not the logit-normal default of inspect
    code, out, err = run_any(capsys, "inspect", "--set", "recipe=wan2.2-ti2v-5b", "--resolution", "480x832",
                             "--frames", 81, "--mode", "latent", "--json")
    assert code == 0, err
    (row,) = json.loads(out)["rows"]
    assert row["p5"] == pytest.approx(1000 * 5 * 0.05 / (1 + 4 * 0.05), rel=1e-6)
    # --mode given explicitly still overrides a recipe's shift_mode
    code, out, err = run_any(capsys, "inspect", "--set", "recipe=opensora-1.2", "--resolution", "512x512", "--frames",
                             51, "--mode", "latent", "v13", "--json")
    assert code == 0, err
    assert [r["mode"] for r in json.loads(out)["rows"]] == ["latent", "v13"]
