"""scripts/plot_recipes.py: its training density is the shifted distribution's, by hand; it writes a PNG and refuses
a directory for --out."""

import sys
from pathlib import Path

import numpy as np
import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "scripts"))
import plot_recipes  # noqa: E402


def test_a_constant_shift_recipe_s_density_is_the_rational_shift_of_uniform():
    """Wan 2.2 TI2V-5B trains (in its recipe) uniform t shifted by a = 5: P(t' <= s) = s / (a - (a - 1) s)."""
    a = 5.0
    edges = np.linspace(0, 1, plot_recipes.BINS + 1)
    cdf = edges / (a - (a - 1) * edges)
    expected = np.diff(cdf) * plot_recipes.BINS
    got = plot_recipes.training_density("wan2.2-ti2v-5b", 720, 1280, 81)
    assert np.allclose(got, expected, atol=2e-3 * plot_recipes.BINS / 50)


def test_writes_a_png_and_refuses_a_directory(tmp_path, capsys):
    out = tmp_path / "r.png"
    assert plot_recipes.main(["--out", str(out), "--steps", "8"]) == 0
    assert out.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    for argv in (["--out", str(tmp_path)], ["--out", str(out), "--resolution", "abc"],
                 ["--out", str(out), "--frames", "0"]):
        with pytest.raises(SystemExit) as e:
            plot_recipes.main(argv)
        assert e.value.code == 2
    assert "Traceback" not in capsys.readouterr().err


def test_wan21_480p_density_is_its_maintainers_logit_normal_at_shift_2():
    # P(t' <= s) = Phi(logit(s / (a - (a - 1) s))) for t = sigmoid(N(0, 1)) shifted by a = 2 (Wan2.1 issue #291)
    from scipy.stats import norm

    a = 2.0
    edges = np.linspace(0, 1, plot_recipes.BINS + 1)
    base = np.clip(edges / (a - (a - 1) * edges), 1e-300, 1 - 1e-16)
    expected = np.diff(norm.cdf(np.log(base) - np.log1p(-base))) * plot_recipes.BINS
    got = plot_recipes.training_density("wan2.1-t2v-480p", 480, 832, 81)
    assert np.allclose(got, expected, atol=2e-3 * plot_recipes.BINS / 50)
