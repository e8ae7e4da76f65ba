"""inspect and plot with every sampler, loss weightings and their effective emphasis, and shift settings on 1.x.

Expected numbers are worked by hand. With no shift (512x512 is base_resolution, an image has T_eff 1, so the factor
is 1) and uniform sampling, the effective emphasis is w(t) / integral(w):

- cosmap: w = 2 / (pi (1 - 2t + 2t^2)) integrates to 1 on [0, 1] (substitute x = 2t - 1: (2/pi) atan(x) from -1 to
  1), so the emphasis is w itself; it is symmetric about 1/2, so its median is 1/2;
- sigma_sqrt: w = min(t^-2, M) (clipped at max_loss_weight M), flat at M below a = M^-1/2. Its integral is
  M a + (1/a - 1) = 2 sqrt(M) - 1, of which M a = sqrt(M) lies below a: more than half, so the median m solves
  M m = (2 sqrt(M) - 1) / 2, m = (2 sqrt(M) - 1) / (2 M): 0.0311 for M = 1000, 0.095 for M = 100;
- fixed timesteps [0.2, 0.8], each with probability 1/2: weighting none gives two spikes of mass 1/2 each;
  sigma_sqrt weighs them 1/0.04 = 25 and 1/0.64 = 1.5625, so masses 25 / 26.5625 and 1.5625 / 26.5625.
"""

import json
import math

import numpy as np
import pytest
import torch

from opensora_timeshift_patch.density import density_quantile, midpoint_uniforms
from opensora_timeshift_patch.sampling import DISTRIBUTIONS, TimestepDistribution, register_distribution
from opensora_timeshift_patch.settings import Setting
from opensora_timeshift_patch.weighting import WEIGHTINGS, LossWeighting, effective_emphasis

from test_cli import run, run_any, snapshot

NO_SHIFT = ["--frames", "1", "--resolution", "512x512", "--mode", "spatial"]
PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


def inspect_json(capsys, *argv):
    code, out, err = run(capsys, "inspect", "--json", *argv)
    assert code == 0, err
    return json.loads(out)


def only_row(capsys, *argv):
    rows = inspect_json(capsys, *argv)["rows"]
    assert len(rows) == 1
    return rows[0]


def sigma_sqrt_median(max_weight):
    return (2 * math.sqrt(max_weight) - 1) / (2 * max_weight)


# --- the pure function -----------------------------------------------------------------------------------------

def test_emphasis_of_cosmap_under_uniform_sampling_is_the_cosmap_weight():
    edges = np.linspace(0, 1, 101)
    density = effective_emphasis(midpoint_uniforms(), LossWeighting("cosmap"), edges)
    centres = (edges[:-1] + edges[1:]) / 2
    assert density == pytest.approx(2 / (math.pi * (1 - 2 * centres + 2 * centres ** 2)), abs=2e-3)
    assert float((density * np.diff(edges)).sum()) == pytest.approx(1.0)
    assert density_quantile(edges, density, 0.5) == pytest.approx(0.5, abs=1e-9)


@pytest.mark.parametrize("max_weight", [1000.0, 100.0])
def test_emphasis_of_sigma_sqrt_lies_near_t_0(max_weight):
    edges = np.linspace(0, 1, 10_001)
    density = effective_emphasis(midpoint_uniforms(), LossWeighting("sigma_sqrt", max_weight), edges)
    assert density_quantile(edges, density, 0.5) == pytest.approx(sigma_sqrt_median(max_weight), rel=1e-3)
    a = max_weight ** -0.5  # below a the weight is clipped flat: density M / (2 sqrt(M) - 1)
    flat = density[edges[1:] < a * 0.9]
    assert flat == pytest.approx(max_weight / (2 * math.sqrt(max_weight) - 1), rel=1e-3)


def test_emphasis_of_fixed_timesteps_is_two_spikes():
    t = TimestepDistribution("fixed", timesteps=[0.2, 0.8])(midpoint_uniforms())
    edges = np.linspace(0, 1, 101)
    width = edges[1] - edges[0]
    mass = effective_emphasis(t, LossWeighting("none"), edges) * width
    spikes = np.flatnonzero(mass)
    assert len(spikes) == 2 and edges[spikes[0]] <= 0.2 < edges[spikes[0] + 1]
    assert edges[spikes[1]] <= 0.8 < edges[spikes[1] + 1]
    assert mass[spikes] == pytest.approx([0.5, 0.5])
    weighted = effective_emphasis(t, LossWeighting("sigma_sqrt"), edges) * width
    assert weighted[spikes] == pytest.approx([25 / 26.5625, 1.5625 / 26.5625])


def test_emphasis_refuses_what_has_no_budget():
    edges = np.linspace(0, 1, 11)
    with pytest.raises(ValueError, match="weight 0 to every timestep"):  # min_snr weighs t = 0 and t = 1 by 0
        effective_emphasis(torch.tensor([0.0, 1.0]), LossWeighting("min_snr"), edges)
    for bad in (torch.tensor([]), torch.tensor([0.5, float("nan")]), torch.tensor([1.5])):
        with pytest.raises(ValueError, match="timesteps in"):
            effective_emphasis(bad, LossWeighting("none"), edges)


# --- inspect: the emphasis column --------------------------------------------------------------------------------

def test_inspect_cosmap_with_no_shift_has_its_emphasis_median_at_one_half(capsys):
    data = inspect_json(capsys, *NO_SHIFT, "--sample-method", "uniform", "--loss-weighting", "cosmap")
    row = data["rows"][0]
    assert row["shift_factor"] == pytest.approx(1.0) and row["median"] == pytest.approx(500.0)
    assert row["emphasis_median"] == pytest.approx(500.0, abs=0.2)
    assert data["loss_weighting"] == "LossWeighting('cosmap', max_loss_weight=1000.0)"


@pytest.mark.parametrize("extra, max_weight", [([], 1000.0), (["--max-loss-weight", "100"], 100.0)])
def test_inspect_sigma_sqrt_puts_half_the_budget_far_below_one_half(extra, max_weight, capsys):
    row = only_row(capsys, *NO_SHIFT, "--sample-method", "uniform", "--loss-weighting", "sigma_sqrt", *extra)
    assert row["emphasis_median"] == pytest.approx(1000 * sigma_sqrt_median(max_weight), rel=2e-3)
    assert row["emphasis_median"] < 100 < row["median"]


def test_inspect_fixed_timesteps_median_is_the_lower_spike(capsys):
    row = only_row(capsys, *NO_SHIFT, "--sample-method", "fixed", "--timesteps", "0.8", "0.2", "--loss-weighting",
                   "none")
    assert (row["p5"], row["median"], row["p95"]) == pytest.approx((200.0, 800.0, 800.0))
    # half the mass sits at 0.2: the smallest t with half below is 0.2, to inspect's bin width (0.1 of 1000)
    assert 200.0 <= row["emphasis_median"] <= 200.1 + 1e-9


def test_inspect_weighting_none_gives_the_sampling_median_under_a_shift(capsys):
    # constant shift 3: t' = 3t / (1 + 2t), the uniform's median 1/2 goes to 3/4
    row = only_row(capsys, *NO_SHIFT, "--sample-method", "uniform", "--loss-weighting", "none", "--set",
                   "resolution_shift=constant", "shift=3.0")
    assert row["shift_factor"] == pytest.approx(3.0) and row["median"] == pytest.approx(750.0)
    assert row["emphasis_median"] == pytest.approx(750.0, abs=0.2)


def test_inspect_table_shows_the_weighting_and_its_column(capsys):
    code, out, _ = run(capsys, "inspect", *NO_SHIFT, "--sample-method", "uniform", "--loss-weighting", "cosmap")
    assert code == 0 and "LossWeighting('cosmap'" in out
    header = next(line for line in out.splitlines() if line.startswith("resolution"))
    assert header.split() == ["resolution", "frames", "mode", "T_eff", "shift", "p5", "median", "p95", "w_median",
                              "status"]
    row = next(line for line in out.splitlines() if line.startswith("512x512")).split()
    assert row[8] == "500.0" and row[9] == "ok"


def test_inspect_without_a_weighting_has_no_emphasis(capsys):
    data = inspect_json(capsys, *NO_SHIFT)
    assert data["loss_weighting"] is None and "emphasis_median" not in data["rows"][0]
    code, out, _ = run(capsys, "inspect", *NO_SHIFT)
    assert code == 0 and "w_median" not in out


def test_inspect_collapsed_rows_under_min_snr_have_no_emphasis(capsys):
    # legacy at 16 frames: every t' = 0, where min_snr weighs 0: no budget to share out
    row = only_row(capsys, "--frames", "16", "--resolution", "512x512", "--mode", "legacy", "--loss-weighting",
                   "min_snr")
    assert row["status"] == "collapsed" and row["emphasis_median"] is None
    code, out, _ = run(capsys, "inspect", "--frames", "16", "--resolution", "512x512", "--mode", "legacy",
                       "--loss-weighting", "min_snr")
    assert code == 0 and "DEGENERATE (t = 0)" in out


# --- inspect: every sampler's parameters ---------------------------------------------------------------------

def test_every_declared_distribution_parameter_is_an_option(capsys):
    code, out, _ = run_any(capsys, "inspect", "--help")
    text = " ".join(out.split())
    for method in DISTRIBUTIONS:
        for name, setting in DISTRIBUTIONS.params(method).items():
            assert f"--{name.replace('_', '-')}" in text and " ".join(setting.doc.split()) in text
    for method in WEIGHTINGS:
        for name in WEIGHTINGS.params(method):
            assert f"--{name.replace('_', '-')}" in text
    assert "--timesteps T [T ...]" in text


def test_logsnr_takes_loc_in_its_own_range(capsys):
    # logsnr: t = sigmoid(-lambda / 2), lambda ~ N(loc, scale^2): median sigmoid(-loc / 2); loc 8 is outside
    # logit-normal's [-5, 5] but inside logsnr's [-10, 10]
    row = only_row(capsys, *NO_SHIFT, "--sample-method", "logsnr", "--loc", "8")
    assert row["median"] == pytest.approx(1000 / (1 + math.exp(4)), rel=1e-9)


def test_beta_1_1_is_uniform(capsys):
    row = only_row(capsys, *NO_SHIFT, "--sample-method", "beta", "--beta-alpha", "1", "--beta-beta", "1")
    assert (row["p5"], row["median"], row["p95"]) == pytest.approx((50.0, 500.0, 950.0), abs=0.05)


def test_mode_scale_zero_is_uniform(capsys):
    row = only_row(capsys, *NO_SHIFT, "--sample-method", "mode", "--mode-scale", "0")
    assert (row["p5"], row["median"], row["p95"]) == pytest.approx((50.0, 500.0, 950.0))


def test_fixed_cycle_with_the_per_sample_stream(capsys):
    row = only_row(capsys, *NO_SHIFT, "--sample-method", "fixed", "--timesteps", "0.1", "0.9", "--fixed-order",
                   "cycle", "--set", "timestep_rng=per_sample")
    assert (row["p5"], row["p95"]) == pytest.approx((100.0, 900.0))


def test_a_registered_distribution_gets_its_options(capsys):
    @register_distribution("toy-window", toy_width=Setting("toy_width", "float", 0.5, "the window's width",
                                                           low=0.1, high=1))
    def toy_window(u, toy_width=0.5):
        return 0.5 + toy_width * (u - 0.5)

    try:
        row = only_row(capsys, *NO_SHIFT, "--sample-method", "toy-window", "--toy-width", "0.4")
        assert (row["p5"], row["median"]) == pytest.approx((1000 * (0.5 - 0.4 * 0.45), 500.0))
        code, _, err = run_any(capsys, "inspect", "--sample-method", "toy-window", "--toy-width", "2")
        assert code == 2 and "toy_width=2.0 is not allowed" in err
    finally:
        DISTRIBUTIONS.unregister("toy-window")


# --- inspect: shift settings on 1.x ------------------------------------------------------------------------------

@pytest.mark.parametrize("settings, hw, frames, mode, factor", [
    # 1024x1024 is 4 times base_resolution: the spatial factor 4 ** e
    ([], "1024x1024", 1, "spatial", 2.0),
    (["spatial_exponent=1"], "1024x1024", 1, "spatial", 4.0),
    (["spatial_exponent=0"], "1024x1024", 1, "spatial", 1.0),
    # 17 frames: T_eff 5 under latent; the temporal factor 5 ** e
    ([], "512x512", 17, "latent", math.sqrt(5)),
    (["temporal_exponent=1"], "512x512", 17, "latent", 5.0),
    # the linear rule: 512 / (8 * 2) = 32, 1024 tokens per frame, lin(n) = 1 + (n - 256) * 2 / 3840
    (["resolution_shift=linear"], "512x512", 17, "latent", (1 + 768 * 2 / 3840) * math.sqrt(5)),
    # token_count='video': 5 * 1024 = 5120 tokens and no temporal factor
    (["resolution_shift=linear", "token_count=video"], "512x512", 17, "latent", 1 + (5120 - 256) * 2 / 3840),
])
def test_inspect_set_shift_settings_on_1_x(settings, hw, frames, mode, factor, capsys):
    argv = ["--frames", str(frames), "--resolution", hw, "--mode", mode, *(["--set", *settings] if settings else [])]
    data = inspect_json(capsys, *argv)
    assert data["rows"][0]["shift_factor"] == pytest.approx(factor, rel=1e-6)
    assert set(data["shift_settings"]) == {s.split("=")[0] for s in settings}


def test_a_policy_parameter_goes_to_the_modes_that_take_it(capsys):
    # micro_frame_size=None: latent encodes the 51-frame clip whole, padded to 52: ceil(51 / 4) = 13 (instead of
    # three 17-frame micro-batches of ceil(17 / 4) = 5: 15); legacy, which does not take it, keeps 51 // 17 * 5 = 15
    rows = inspect_json(capsys, "--frames", "51", "--resolution", "512x512", "--mode", "latent", "legacy", "--set",
                        "micro_frame_size=None")["rows"]
    t_eff = {r["mode"]: r["t_eff"] for r in rows}
    assert t_eff == {"latent": 13.0, "legacy": 15.0}


def test_an_extreme_factor_is_refused_not_degenerate(capsys):
    # temporal_exponent 2 at 102 frames: T_eff 30 under latent, 30 ** 2 * 2 = 1800 > 100
    row = only_row(capsys, "--frames", "102", "--resolution", "1024x1024", "--mode", "latent", "--set",
                   "temporal_exponent=2")
    assert row["status"] == "refused" and row["degenerate"] and row["t_eff"] > 0
    code, out, _ = run(capsys, "inspect", "--frames", "102", "--resolution", "1024x1024", "--mode", "latent", "--set",
                       "temporal_exponent=2")
    assert code == 0 and "refused by the guard" in out and "DEGENERATE" not in out


# --- hostile input: one line, exit 2, nothing written ------------------------------------------------------------

HOSTILE = {
    "weighting unknown": (["--loss-weighting", "bogus"], "--loss-weighting"),
    "weighting a number": (["--loss-weighting", "1"], "--loss-weighting"),
    "sample method unknown": (["--sample-method", "Uniform"], "--sample-method"),
    "bool for a number": (["--sample-method", "beta", "--beta-alpha", "True"], "beta_alpha='True'"),
    "string for a number": (["--loss-weighting", "min_snr", "--min-snr-gamma", "five"], "min_snr_gamma='five'"),
    "NaN for a number": (["--sample-method", "beta", "--beta-beta", "nan"], "beta_beta=nan"),
    "inf max weight": (["--loss-weighting", "cosmap", "--max-loss-weight", "inf"], "max_loss_weight=inf"),
    "max weight below 1": (["--loss-weighting", "cosmap", "--max-loss-weight", "0.5"], "max_loss_weight=0.5"),
    "non-ASCII digit": (["--loss-weighting", "min_snr", "--min-snr-gamma", "\u0663"], "ASCII"),
    "loc out of logsnr's range": (["--sample-method", "logsnr", "--loc", "11"], "loc=11.0"),
    "loc in logsnr's range, not logit-normal's": (["--loc", "8"], "loc=8.0 is not allowed"),
    "empty timesteps": (["--sample-method", "fixed", "--timesteps"], "--timesteps"),
    "timesteps NaN": (["--sample-method", "fixed", "--timesteps", "0.2", "nan"], "timesteps=[nan]"),
    "timesteps out of [0, 1]": (["--sample-method", "fixed", "--timesteps", "0.2", "1.5"], "timesteps=[1.5]"),
    "timesteps twice": (["--sample-method", "fixed", "--timesteps", "0.2", "--timesteps", "0.8"], "given more"),
    "one timestep collapses": (["--sample-method", "fixed", "--timesteps", "0.5"], "collapses"),
    "empty timesteps by --set": (["--sample-method", "fixed", "--set", "timesteps=[]"], "timesteps=[]"),
    "fixed order unknown": (["--sample-method", "fixed", "--fixed-order", "shuffle"], "--fixed-order"),
    "loc for beta": (["--sample-method", "beta", "--loc", "1"], "--loc applies to --sample-method logit-normal or"),
    "timesteps for uniform": (["--sample-method", "uniform", "--timesteps", "0.2"],
                              "--timesteps applies to --sample-method fixed only, not 'uniform'"),
    "beta parameter for logsnr": (["--sample-method", "logsnr", "--beta-beta", "2"], "--beta-beta applies"),
    "fixed order for the default": (["--fixed-order", "cycle"], "--fixed-order applies"),
    "gamma without min_snr": (["--min-snr-gamma", "2"], "--min-snr-gamma applies to --loss-weighting min_snr"),
    "gamma for cosmap": (["--loss-weighting", "cosmap", "--min-snr-gamma", "2"], "not 'cosmap'"),
    "max weight without a weighting": (["--max-loss-weight", "10"], "max_loss_weight=10.0 only applies"),
    "gamma twice": (["--loss-weighting", "min_snr", "--min-snr-gamma", "2", "--set", "min_snr_gamma=3"],
                    "already set"),
    "cycle without per_sample": (["--sample-method", "fixed", "--fixed-order", "cycle"], "timestep_rng='per_sample'"),
    "set bool for a number": (["--set", "temporal_exponent=True"], "temporal_exponent=True is not allowed"),
    "set string for a number": (["--set", "spatial_exponent='0.5'"], "spatial_exponent='0.5' is not allowed"),
    "set bare nan": (["--set", "temporal_exponent=nan"], "True, False or None"),
    "set exponent out of range": (["--set", "spatial_exponent=3"], "spatial_exponent=3 is not allowed"),
    "set token count without linear": (["--set", "token_count=video"], "only applies with resolution_shift='linear'"),
    "set token count unknown": (["--set", "resolution_shift=linear", "token_count=clip"], "token_count='clip'"),
    "set temporal exponent with video tokens": (["--set", "resolution_shift=linear", "token_count=video",
                                                 "temporal_exponent=1"], "does not apply with token_count='video'"),
    "set a typo": (["--set", "spatial_exponnt=0.3"], "Did you mean 'spatial_exponent'"),
    "set a setting inspect does not show": (["--set", "num_sampling_steps=3"], "not for inspect and plot"),
    "set the guard": (["--set", "on_degenerate=clamp"], "on_degenerate"),
    "set the mode": (["--set", "shift_mode=latent"], "--mode"),
    "set a policy parameter no mode takes": (["--mode", "legacy", "--set", "micro_frame_size=None"],
                                             "micro_frame_size"),
    "weighting on 2.0": (["--opensora-version", "2.0", "--loss-weighting", "cosmap"], "no meaning on Open-Sora 2.0"),
}


@pytest.mark.parametrize("command", ["inspect", "plot"])
@pytest.mark.parametrize("argv, words", list(HOSTILE.values()), ids=list(HOSTILE))
def test_hostile_input_is_one_line_and_exit_2(command, argv, words, tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    out = ["--out", "figs", "--samples", "10", "--dpi", "10"] if command == "plot" else []
    before = snapshot(tmp_path)
    code, stdout, err = run_any(capsys, command, *out, "--frames", "16", "--resolution", "256x256", *argv)
    assert code == 2, err
    assert len(err.splitlines()) == 1 and "Traceback" not in err and words in err, err
    assert stdout == "" and snapshot(tmp_path) == before


# --- plot: the emphasis figure -----------------------------------------------------------------------------------

def is_png(path):
    import matplotlib.pyplot as plt

    data = path.read_bytes()
    return data[:8] == PNG_SIGNATURE and data[-8:-4] == b"IEND" and plt.imread(str(path)).ndim == 3


def test_plot_writes_an_emphasis_figure_per_bucket(tmp_path, capsys):
    code, out, err = run(capsys, "plot", "--out", tmp_path, "--frames", 16, 17, "--resolution", "256x256", "--mode",
                         "legacy", "latent", "--loss-weighting", "sigma_sqrt", "--samples", 200, "--dpi", 30)
    assert code == 0 and err == "", err
    names = ["timeshift_256x256_16f.png", "emphasis_256x256_16f.png", "timeshift_256x256_17f.png",
             "emphasis_256x256_17f.png"]
    assert out.split() == [str(tmp_path / name) for name in names]
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(names)
    assert all(is_png(tmp_path / name) for name in names)


def test_plot_without_a_weighting_draws_no_emphasis(tmp_path, capsys):
    code, out, _ = run(capsys, "plot", "--out", tmp_path, "--frames", 16, "--resolution", "256x256", "--samples", 50,
                       "--dpi", 20)
    assert code == 0 and [p.name for p in tmp_path.iterdir()] == ["timeshift_256x256_16f.png"]


def test_plot_every_sampler_with_a_zero_weight_collapse(tmp_path, capsys):
    # legacy at 16 frames collapses to t' = 0, which min_snr weighs 0: named in the legend, not drawn
    for method, params in [("fixed", ["--timesteps", "0.2", "0.8"]), ("beta", ["--beta-alpha", "3"]),
                           ("logsnr", ["--scale", "2"]), ("mode", []), ("cosmap", []), ("uniform", [])]:
        out_dir = tmp_path / method
        code, _, err = run(capsys, "plot", "--out", out_dir, "--frames", 16, "--resolution", "256x256", "--mode",
                           "legacy", "latent", "--sample-method", method, *params, "--loss-weighting", "min_snr",
                           "--min-snr-gamma", "2", "--samples", 50, "--dpi", 20)
        assert code == 0, err
        assert is_png(out_dir / "emphasis_256x256_16f.png")


# --- what plot draws, against the formulas ------------------------------------------------------------------------
# Open-Sora 1.2's stock shift: a = sqrt(H W / 512^2) * sqrt(T) with T = n // 17 * 5 (legacy) or 1.2's VAE latent
# length (n // 17) * 5 + ceil((n % 17) / 4) (latent), t' = a t / (1 + (a - 1) t); logit-normal draws are sigmoid(probit(u)). Open-Sora 2.0:
# alpha = lin(tokens; 256 -> 1, 4096 -> 3) * sqrt(T), the same t'.

def view_for(*argv):
    from opensora_timeshift_patch.cli import build_parser
    from opensora_timeshift_patch.cli.views import view_of

    return view_of(build_parser().parse_args(["plot", "--out", "unused", *map(str, argv)]))


def shift_of(t, a):
    return a * t / (1 + (a - 1) * t)


def test_plot_curves_1_x_are_the_stock_shift_of_logit_normal_draws():
    from scipy.stats import norm

    from opensora_timeshift_patch.cli.plot import bucket_curves, t_grid, uniforms_of

    view = view_for("--resolution", "720x1280", "--frames", 40, "--mode", "legacy", "latent")
    uniforms = uniforms_of(1000)
    curves = bucket_curves(view, (720, 1280), 40, uniforms)
    space = math.sqrt(720 * 1280 / 512 ** 2)
    t = t_grid().numpy()
    base = 1 / (1 + np.exp(-norm.ppf(uniforms.numpy())))
    for curve, frames_t in zip(curves, (40 // 17 * 5, 2 * 5 + math.ceil(6 / 4))):  # legacy 10, latent 12
        a = space * math.sqrt(frames_t)
        assert curve.transform.numpy() == pytest.approx(shift_of(t, a), abs=1e-9)
        assert curve.draws.numpy() == pytest.approx(shift_of(base, a), abs=1e-6)
        assert not curve.collapsed and f"T_eff {frames_t}" in curve.label


def test_plot_curves_1_x_collapse_and_refusal():
    from opensora_timeshift_patch.cli.plot import bucket_curves, uniforms_of

    view = view_for("--resolution", "256x256", "--frames", 16, "--mode", "legacy")
    (curve,) = bucket_curves(view, (256, 256), 16, uniforms_of(100))
    # 16 // 17 * 5 = 0, so a = 0: t' = 0 for t < 1, and stock's 0 / 0 at t = 1 (sampling would start from NaN)
    assert curve.collapsed and float(curve.transform[:-1].abs().max()) == 0.0
    assert math.isnan(float(curve.transform[-1]))
    view = view_for("--resolution", "1080x1920", "--frames", 5000, "--mode", "latent", "--set",
                    "shift_family=exponential", "resolution_shift=linear", "token_count=video")
    (curve,) = bucket_curves(view, (1080, 1920), 5000, uniforms_of(100))
    assert curve.transform is None and "refused" in curve.label


def test_plot_curves_2_0_are_alpha_shifts():
    from opensora_timeshift_patch.cli.plot import bucket_curves, t_grid, uniforms_of

    view = view_for("--opensora-version", "2.0", "--resolution", "768px", "--frames", 33)
    uniforms = uniforms_of(500)
    stock, settings = bucket_curves(view, (768, 768), 33, uniforms)
    # 768 / 8 = 96 latent side, 96 * 96 // 4 = 2304 tokens; 1 + 32 // 4 = 9 latent frames
    alpha = (1 + (2304 - 256) * 2 / 3840) * 3
    assert stock.transform.numpy() == pytest.approx(shift_of(t_grid().numpy(), alpha), abs=1e-9)
    assert settings.transform.numpy() == pytest.approx(stock.transform.numpy())
    assert "2304 tokens" in stock.label


def test_plot_emphasis_curves_are_the_shifted_density_times_the_weight():
    from scipy.stats import norm

    from opensora_timeshift_patch.cli.plot import PLOT_EDGES, emphasis_curves

    # 720x1280 image under spatial: a = sqrt(720 * 1280 / 512^2) = 1.875. The shifted t' = f(t) has density
    # p(f^-1(t')) * d f^-1 / dt', with f^-1(t') = t' / (a - (a - 1) t') and d f^-1 / dt' = a / (a - (a - 1) t')^2.
    view = view_for("--resolution", "720x1280", "--frames", 1, "--mode", "spatial", "--loss-weighting", "cosmap")
    (curve,) = emphasis_curves(view, (720, 1280), 1)
    a = 1.875
    centres = (PLOT_EDGES[:-1] + PLOT_EDGES[1:]) / 2
    keep = (centres > 0.02) & (centres < 0.98)  # bins near 0 and 1 hold steep tails
    base = centres / (a - (a - 1) * centres)
    logit_normal = norm.pdf(np.log(base / (1 - base))) / (base * (1 - base))
    density = logit_normal * a / (a - (a - 1) * centres) ** 2
    assert curve.density[keep] == pytest.approx(density[keep], rel=0.02, abs=0.02)
    weight = 2 / (math.pi * (1 - 2 * centres + 2 * centres ** 2))  # cosmap's w(t')
    emphasis = density * weight / float((density * weight * np.diff(PLOT_EDGES)).sum())
    assert curve.emphasis[keep] == pytest.approx(emphasis[keep], rel=0.02, abs=0.02)


def test_inspect_1_x_a_non_finite_factor_is_a_refused_row(capsys):
    argv = ["--resolution", "1080p", "--frames", 5000, "--mode", "latent", "spatial", "--set",
            "shift_family=exponential", "resolution_shift=linear", "token_count=video"]
    code, out, err = run(capsys, "inspect", "--json", *argv)
    assert code == 0, err

    def refuse(constant):
        raise AssertionError(f"non-JSON constant {constant}")

    latent, spatial = json.loads(out, parse_constant=refuse)["rows"]
    assert latent["status"] == "refused" and latent["shift_factor"] is None and latent["p5"] is None
    assert "not a finite number" in latent["message"]
    assert spatial["status"] == "ok"  # an image's shift: linear in 1080 * 1920 tokens, finite
    code, out, err = run(capsys, "inspect", *argv)
    assert code == 0 and "refused by the guard" in out and err == ""


@pytest.mark.parametrize("argv", [
    ["--resolution", "1x1", "100000x100000", "--frames", 1, 4, 16, 4096],
    ["--resolution", "1080x1920", "--frames", 16, 5000, "--set", "shift_family=exponential", "resolution_shift=linear",
     "token_count=video"],
    ["--resolution", "256x256", "--frames", 16, "--loss-weighting", "min_snr", "--min-snr-gamma", "2"],
    # a collapse (a = 0) of a distribution with mass at t = 1: stock's 0 / 0 there, so p95 does not exist
    ["--resolution", "256x256", "--frames", 16, "--mode", "legacy", "--sample-method", "fixed", "--timesteps", 0.5, 1],
])
def test_inspect_1_x_json_is_strict(argv, capsys):
    code, out, err = run(capsys, "inspect", "--json", *argv)
    assert code == 0, err

    def refuse(constant):
        raise AssertionError(f"non-JSON constant {constant}")

    rows = json.loads(out, parse_constant=refuse)["rows"]
    if "fixed" in argv:
        assert rows[0]["p95"] is None and rows[0]["status"] == "collapsed"


def test_plot_a_non_finite_factor_is_named_not_a_traceback(tmp_path, capsys):
    code, out, err = run(capsys, "plot", "--out", tmp_path, "--resolution", "1080p", "--frames", 5000, "--mode",
                         "latent", "--loss-weighting", "min_snr", "--set", "shift_family=exponential",
                         "resolution_shift=linear", "token_count=video", "--samples", 50, "--dpi", 20)
    assert code == 0 and err == "", err
    assert is_png(tmp_path / "timeshift_1080x1920_5000f.png") and is_png(tmp_path / "emphasis_1080x1920_5000f.png")
