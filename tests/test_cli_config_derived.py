"""config: nothing the base config reads is replaced, and a derived config says how it trains differently.

Stock rflow's behaviour is Open-Sora's: ``RFLOW(use_timestep_transform=False)`` by default (1.2 and 1.3), the 1.2
rule ``num_frames // 17 * 5`` (shift_mode 'legacy') or 1.3's ``(num_frames - 1) // 4`` ('v13'), no guard, and 1.3
multiplying ``transform_scale`` into videos' factors only.
"""

import ast
import hashlib
import os
import py_compile
import sys
from pathlib import Path

import pytest
from mmengine.config import Config

from opensora_timeshift_patch.cli import main

FIXTURES = Path(__file__).parent / "fixtures"
EVAL_1_2 = FIXTURES / "opensora_v1_2_eval_loss.py"
EVAL_1_3 = FIXTURES / "opensora_v1_3_eval_loss.py"
STAGE1 = FIXTURES / "opensora_v1_2_stage1.py"


def run(capsys, *argv):
    code = main([str(a) for a in argv])
    out = capsys.readouterr()
    return code, out.out, out.err


def digest(path):
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()


SHIFTING_RFLOW = 'scheduler = dict(type="rflow", use_timestep_transform=True)\n'


def refused_onto(capsys, tmp_path, reads, target):
    """``config`` of a base whose first line is ``reads``, with ``--out target --force``: the exit code, the error
    line, and whether ``target`` is unchanged."""
    base = tmp_path / "base.py"
    base.write_text(reads + "\n" + SHIFTING_RFLOW)
    before = digest(target)
    code, _, err = run(capsys, "config", base, "--shift-mode", "latent", "--out", target, "--force")
    return code, err, digest(target) == before


def header(path):
    """The derived config's comment lines before _base_, without '# '."""
    lines = Path(path).read_text().splitlines()
    return [line[2:] for line in lines[:lines.index(next(x for x in lines if x.startswith("_base_")))]]


# --- nothing the base reads is replaced -------------------------------------------------------------------------

def test_out_onto_a_file_the_base_executes(tmp_path, capsys):
    (tmp_path / "extra.py").write_text("lr = 2e-5\n")
    code, err, unchanged = refused_onto(capsys, tmp_path, 'exec(open("{{ fileDirname }}/extra.py").read())',
                                        tmp_path / "extra.py")
    assert code == 2 and "another file it reads (one it opens or executes" in err
    assert unchanged


def test_out_onto_a_file_the_base_opens_through_os_open(tmp_path, capsys):
    (tmp_path / "note.py").write_text("# read as text\n")
    code, err, unchanged = refused_onto(
        capsys, tmp_path, 'note = __import__("os").fstat(__import__("os").open("{{ fileDirname }}/note.py", 0)).st_size',
        tmp_path / "note.py")
    assert code == 2 and "another file it reads" in err and unchanged


@pytest.fixture
def module_beside(tmp_path, monkeypatch):
    """A module beside the base config, importable from there, and forgotten again afterwards."""
    name = f"helper_{os.getpid()}_{abs(hash(str(tmp_path))) % 10 ** 8}"
    (tmp_path / f"{name}.py").write_text("VALUE = 3\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    yield name, tmp_path / f"{name}.py"
    sys.modules.pop(name, None)


def test_out_onto_a_module_the_base_imports(module_beside, tmp_path, capsys):
    name, module = module_beside
    code, err, unchanged = refused_onto(capsys, tmp_path, f'custom_imports = dict(imports=["{name}"], allow_failed_imports=False)', module)
    assert code == 2 and "a module it imports" in err and unchanged


def test_out_onto_a_module_imported_from_its_cached_bytecode(module_beside, tmp_path, capsys):
    # loading from a valid .pyc opens only the .pyc: the module's own file is known from the import
    name, module = module_beside
    py_compile.compile(str(module), cfile=str(tmp_path / "__pycache__" / f"{name}.{sys.implementation.cache_tag}.pyc"))
    code, err, unchanged = refused_onto(capsys, tmp_path, f'custom_imports = dict(imports=["{name}"], allow_failed_imports=False)', module)
    assert code == 2 and "a module it imports" in err and unchanged


def test_out_onto_a_module_imported_before_the_base_loaded(module_beside, tmp_path, capsys):
    name, module = module_beside
    __import__(name)  # already in sys.modules: loading the base imports nothing new
    code, err, unchanged = refused_onto(capsys, tmp_path, f'custom_imports = dict(imports="{name}")', module)
    assert code == 2 and "a module it imports" in err and unchanged


# --- a base that does not shift keeps not shifting -------------------------------------------------------------

@pytest.mark.parametrize("base, version", [(EVAL_1_2, "1.2"), (EVAL_1_3, "1.3")])
def test_a_base_without_shift_is_not_shifted_by_shift_mode(base, version, tmp_path, capsys):
    code, _, err = run(capsys, "config", base, "--opensora-version", version, "--shift-mode", "latent", "--out",
                       tmp_path / "o.py")
    assert code == 2 and len(err.splitlines()) == 1 and not (tmp_path / "o.py").exists()
    assert "does not shift timesteps (use_timestep_transform=False, stock rflow's default)" in err
    assert "--set use_timestep_transform=True" in err


@pytest.mark.parametrize("base, version", [(EVAL_1_2, "1.2"), (EVAL_1_3, "1.3")])
def test_a_base_without_shift_derives_without_shift(base, version, tmp_path, capsys):
    out = tmp_path / "o.py"
    code, stdout, err = run(capsys, "config", base, "--opensora-version", version, "--out", out, "--timestep-rng",
                            "per_sample")
    assert code == 0, err
    cfg = Config.fromfile(str(out))
    assert cfg.scheduler["use_timestep_transform"] is False and "shift_mode" not in cfg.scheduler
    assert header(out)[2:] == [
        f"the base's scheduler: stock Open-Sora {version} rflow",
        "carried over from it, to keep what it does: use_timestep_transform=False",
        "what this one changes:",
        "  timestep_rng: 'global' -> 'per_sample'"]
    assert all(line in stdout.splitlines() for line in header(out)[2:])


def test_shifting_an_unshifted_base_on_purpose_is_said(tmp_path, capsys):
    out = tmp_path / "o.py"
    code, stdout, _ = run(capsys, "config", EVAL_1_2, "--shift-mode", "latent", "--set", "use_timestep_transform=True",
                          "--out", out)
    assert code == 0 and Config.fromfile(str(out)).scheduler["use_timestep_transform"] is True
    assert header(out)[3:] == ["what this one changes:", "  use_timestep_transform: False -> True",
                               "  shift_mode: - -> 'latent'"]
    assert "  use_timestep_transform: False -> True" in stdout.splitlines()


# --- a base that shifts: every change named --------------------------------------------------------------------

def test_the_header_names_each_change_against_stock_1_2(tmp_path, capsys):
    out = tmp_path / "o.py"
    code, stdout, _ = run(capsys, "config", STAGE1, "--shift-mode", "latent", "--out", out)
    assert code == 0
    assert header(out)[2:] == ["the base's scheduler: stock Open-Sora 1.2 rflow", "what this one changes:",
                               "  shift_mode: 'legacy' -> 'latent'", "  on_degenerate: 'ignore' -> 'error'"]
    code, _, _ = run(capsys, "config", STAGE1, "--shift-mode", "legacy", "--on-degenerate", "ignore", "--out", out,
                     "--force")
    assert code == 0 and header(out)[2:] == ["the base's scheduler: stock Open-Sora 1.2 rflow",
                                             "what this one changes: nothing in how it trains"]


def test_stock_1_3_scales_only_videos_and_the_derived_config_keeps_it(tmp_path, capsys):
    base = tmp_path / "base.py"
    base.write_text('scheduler = dict(type="rflow", use_timestep_transform=True, transform_scale=2.0)\n')
    out = tmp_path / "o.py"
    code, _, _ = run(capsys, "config", base, "--opensora-version", "1.3", "--shift-mode", "v13", "--out", out)
    assert code == 0 and Config.fromfile(str(out)).scheduler["scale_images"] is False
    assert header(out)[2:] == ["the base's scheduler: stock Open-Sora 1.3 rflow",
                               "carried over from it, to keep what it does: scale_images=False",
                               "what this one changes:", "  on_degenerate: 'ignore' -> 'error'"]


def test_the_derived_scheduler_holds_only_literals(tmp_path, capsys):
    out = tmp_path / "o.py"
    code, _, _ = run(capsys, "config", EVAL_1_3, "--opensora-version", "1.3", "--out", out)
    assert code == 0
    tree = ast.parse(out.read_text())
    for node in tree.body:
        assert isinstance(node, ast.Assign)
        value = node.value
        if isinstance(value, ast.Call):  # dict(key=literal, ...)
            assert isinstance(value.func, ast.Name) and value.func.id == "dict" and not value.args
            for keyword in value.keywords:
                ast.literal_eval(keyword.value)
        else:
            ast.literal_eval(value)


def test_out_onto_a_module_that_an_imported_module_imports_from_bytecode(module_beside, tmp_path, capsys):
    name, module = module_beside  # imported by another module, from its .pyc: no open of its .py, not in imports
    outer = f"{name}_outer"
    (tmp_path / f"{outer}.py").write_text(f"import {name}\n")
    for mod in (name, outer):
        py_compile.compile(str(tmp_path / f"{mod}.py"),
                           cfile=str(tmp_path / "__pycache__" / f"{mod}.{sys.implementation.cache_tag}.pyc"))
    try:
        code, err, unchanged = refused_onto(
            capsys, tmp_path, f'custom_imports = dict(imports=["{outer}"], allow_failed_imports=False)', module)
    finally:
        sys.modules.pop(outer, None)
    assert code == 2 and "a module it imports" in err and unchanged
