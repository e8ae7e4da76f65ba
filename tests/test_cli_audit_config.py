"""audit --config: a config that lacks what training reads is named, never reported as a stock scheduler's OK."""

from pathlib import Path

import pytest

from opensora_timeshift_patch.cli import main

FIXTURES = Path(__file__).parent / "fixtures"


def run(capsys, *argv):
    code = main([str(a) for a in argv])
    out = capsys.readouterr()
    return code, out.out, out.err


@pytest.mark.parametrize("version", ["1.2", "1.3", "2.0"])
@pytest.mark.parametrize("text", ["", "# only a comment\n"])
def test_an_empty_config_is_not_a_stock_one(text, version, tmp_path, capsys):
    cfg = tmp_path / "empty.py"
    cfg.write_text(text)
    for extra in ([], ["--csv", FIXTURES / "dataset_mixed.csv"]):
        code, out, err = run(capsys, "audit", "--config", cfg, "--opensora-version", version, "--no-progress", *extra)
        assert code == 2 and len(err.splitlines()) == 1 and "OK" not in out and "stock" not in out, err
        assert "sets nothing: no scheduler and no bucket_config, so it holds nothing to audit" in err


def test_a_1_x_config_without_a_scheduler_has_nothing_to_judge_by(tmp_path, capsys):
    cfg = tmp_path / "buckets.py"
    cfg.write_text('bucket_config = {"240p": {16: (1.0, 4)}}\n')
    code, out, err = run(capsys, "audit", "--config", cfg)
    assert code == 2 and "has no scheduler: Open-Sora 1.2's train.py builds cfg.scheduler" in err and "OK" not in out
    cfg.write_text("seed = 42\n")
    code, out, err = run(capsys, "audit", "--config", cfg, "--csv", FIXTURES / "dataset_mixed.csv", "--no-progress")
    assert code == 2 and "has no scheduler" in err and "OK" not in out


def test_a_2_0_config_without_a_scheduler_is_stock_2_0(capsys):
    # 2.0 builds no scheduler: no scheduler key is its stock rule, as its train.py reads it
    code, out, _ = run(capsys, "audit", "--opensora-version", "2.0", "--config", FIXTURES / "opensora_v2_stage1.py")
    assert code == 0 and "no scheduler key: stock Open-Sora 2.0's rule" in out


@pytest.mark.parametrize("extra, moved", [("", False), (", shift=5.0", True), (", temporal_exponent=0.5", True)])
def test_audit_notes_settings_that_move_a_recipes_training_shift(extra, moved, tmp_path, capsys):
    cfg = tmp_path / "recipe.py"
    cfg.write_text('bucket_config = {"720p": {1: (1.0, 4), 81: (1.0, 1)}}\n'
                   f'scheduler = dict(type="rflow-timeshift", recipe="wan2.2-t2v-a14b"{extra})\n')
    code, out, err = run(capsys, "audit", "--config", cfg)
    assert code == 0, err
    note = "note: the settings beside recipe='wan2.2-t2v-a14b' change its training shift"
    assert (note in out) is moved
    if moved:  # Wan 2.2 T2V-A14B trains and samples at 12: the note names both and the schedule
        assert "the recipe's own 12.000" in out and "constant shift 12.0" in out


def test_audit_does_not_note_a_recipe_that_trains_at_another_shift_on_purpose(tmp_path, capsys):
    # HunyuanVideo 1.5 trains at 3 and samples 720p T2V at 9, as its own code does: nothing to note
    cfg = tmp_path / "recipe.py"
    cfg.write_text('bucket_config = {"720p": {81: (1.0, 1)}}\n'
                   'scheduler = dict(type="rflow-timeshift", recipe="hunyuanvideo-1.5-720p-t2v")\n')
    code, out, err = run(capsys, "audit", "--config", cfg)
    assert code == 0 and "beside recipe=" not in out, err
