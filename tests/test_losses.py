"""training_losses on inputs that would make a loss NaN, infinite or negative, and Open-Sora's per-timestep weights.

Expected losses are computed here from the rectified-flow formulas (Open-Sora 1.x: ``x_t = (1 - t/N) x0 + (t/N) eps``,
velocity target ``x0 - eps``, per-sample mean over the noised frames) and the stub model's field ``0.5 x + t / 1000``;
the weights' index is stock's ``_extract_into_tensor(weights, t, shape)``, i.e. ``weights[t]`` for integer t.
"""

import math

import pytest
import torch

import opensora_timeshift_patch as ots
from conftest import meta
from opensora_timeshift_patch import RFlowTimeShift, SettingError
from opensora_timeshift_patch.weighting import LossWeighting
from standin.stubs import StubModel

N = 1000


def scheduler(**settings):
    """The shift stays on (on_degenerate is its setting too); the t handed in is not shifted, as in stock."""
    return RFlowTimeShift(backend="standalone", **settings)


def batch(b=4, frames=3, seed=1):
    gen = torch.Generator().manual_seed(seed)
    x0 = torch.randn(b, 4, frames, 2, 2, generator=gen, dtype=torch.float64)
    eps = torch.randn(b, 4, frames, 2, 2, generator=gen, dtype=torch.float64)
    return x0, eps


def hand_loss(x0, eps, t, mask=None):
    """Per-sample velocity loss by the formula, in float64, with t a list of numbers."""
    out = []
    for i, ti in enumerate(t):
        x_t = (1 - ti / N) * x0[i] + (ti / N) * eps[i]
        if mask is not None:  # frames outside the mask stay clean (t = 0)
            x_t = torch.where(mask[i][None, :, None, None], x_t, x0[i])
        err = (0.5 * x_t + ti / 1000 - (x0[i] - eps[i])) ** 2  # (C, T, H, W)
        if mask is not None:
            err = err[:, mask[i]]
        out.append(float(err.mean()))
    return torch.tensor(out, dtype=torch.float64)


def losses(s, x0, eps, **kw):
    return s.training_losses(StubModel(), x0.float(), meta(256, 256, [17] * len(x0)), noise=eps.float(), **kw)["loss"]


# --- Open-Sora's per-timestep weights: which entry a timestep takes ------------------------------------------------

TABLE_N1 = torch.arange(1, N + 2, dtype=torch.float32)  # weights[k] = k + 1, k = 0..N
TABLE_N = torch.arange(1, N + 1, dtype=torch.float32)  # k = 0..N-1


@pytest.mark.parametrize("table, t, index", [
    # integer t: stock's weights[t]
    (TABLE_N1, [0, 1, 499, 1000], [0, 1, 499, 1000]),
    (TABLE_N, [0, 1, 998, 999], [0, 1, 998, 999]),
    # t = N with a table of N: the last entry (stock has none there)
    (TABLE_N, [0, 1000, 3, 7], [0, 999, 3, 7]),
    # continuous t (stock refuses a float index): floor(t)
    (TABLE_N1, [0.0, 0.5, 1.999, 999.9], [0, 0, 1, 999]),
    (TABLE_N1, [1000.0, 250.25, 2.0, 0.999], [1000, 250, 2, 0]),
    (TABLE_N, [1000.0, 999.5, 998.999, 1.0], [999, 999, 998, 1]),
])
def test_a_non_constant_table_is_indexed_by_the_integer_timestep(table, t, index):
    x0, eps = batch()
    dtype = torch.long if all(isinstance(v, int) for v in t) else torch.float32
    got = losses(scheduler(), x0, eps, t=torch.tensor(t, dtype=dtype), weights=table)
    expected = hand_loss(x0, eps, [float(v) for v in t]) * torch.tensor([k + 1.0 for k in index], dtype=torch.float64)
    torch.testing.assert_close(got.double(), expected, rtol=1e-5, atol=0)


def test_a_table_with_a_loss_weighting_multiplies_both():
    x0, eps = batch()
    t = [10.0, 250.0, 600.0, 990.0]
    got = losses(scheduler(loss_weighting="cosmap"), x0, eps, t=torch.tensor(t), weights=TABLE_N1)
    sigma = torch.tensor(t, dtype=torch.float64) / N
    cosmap = 2 / (math.pi * (1 - 2 * sigma + 2 * sigma ** 2))
    expected = hand_loss(x0, eps, t) * torch.tensor([11.0, 251.0, 601.0, 991.0], dtype=torch.float64) * cosmap
    torch.testing.assert_close(got.double(), expected, rtol=1e-5, atol=0)


class StockRFlow:
    """Open-Sora 1.2's RFlowScheduler.training_losses with t handed in, as upstream writes it: the weight is
    ``_extract_into_tensor(weights, t, shape)`` = ``weights.to(t.device)[t].float()``, broadcast, times the error."""

    num_timesteps = N

    def training_losses(self, model, x_start, model_kwargs=None, noise=None, mask=None, weights=None, t=None):
        keep = (1 - t.float() / N).view(-1, 1, 1, 1, 1)
        x_t = keep * x_start + (1 - keep) * noise
        velocity = model(x_t, t, **model_kwargs).chunk(2, dim=1)[0]
        err = (velocity - (x_start - noise)).pow(2)
        if weights is not None:
            err = weights.to(t.device)[t].float().view(-1, 1, 1, 1, 1) * err
        return {"loss": err.mean(dim=(1, 2, 3, 4))}


def on_stock(**settings):
    s = scheduler(**settings)
    s.backend, s.rflow = "opensora", StockRFlow()
    return s


def test_open_soras_rflow_gets_the_table_and_integer_t_as_given():
    x0, eps = batch()
    t = [0, 1, 499, 999]
    got = losses(on_stock(), x0, eps, t=torch.tensor(t), weights=TABLE_N)
    expected = hand_loss(x0, eps, [float(v) for v in t]) * torch.tensor([1.0, 2.0, 500.0, 1000.0], dtype=torch.float64)
    torch.testing.assert_close(got.double(), expected, rtol=1e-5, atol=0)


def test_open_soras_rflow_cannot_index_weights_by_a_continuous_or_missing_timestep():
    x0, eps = batch()
    with pytest.raises(SettingError, match=r"weights with continuous timesteps: Open-Sora's RFLOW indexes weights\[t\]"):
        losses(on_stock(), x0, eps, t=torch.tensor([1.0, 2.0, 3.0, 4.0]), weights=TABLE_N1)
    with pytest.raises(SettingError, match=r"t\[2\] = 1000 is not allowed: .*a table of 1000 has no entry for t = 1000"):
        losses(on_stock(), x0, eps, t=torch.tensor([1, 2, 1000, 4]), weights=TABLE_N)
    s = on_stock(use_discrete_timesteps=True, use_timestep_transform=False)  # its own draw: integers in [0, N - 1]
    assert losses(s, x0, eps, weights=TABLE_N).isfinite().all()


# --- weights that are NaN, infinite or negative --------------------------------------------------------------------

def table_with(k, value):
    table = torch.ones(N + 1)
    table[k] = value
    return table


@pytest.mark.parametrize("value", [math.nan, math.inf, -math.inf, -0.5])
def test_a_bad_weight_is_named_on_the_error_path(value):
    x0, eps = batch()
    with pytest.raises(SettingError, match=rf"weights\[7\] = {value!r} is not allowed: .* finite and >= 0"):
        losses(scheduler(), x0, eps, t=torch.tensor([1.0, 2.0, 3.0, 4.0]), weights=table_with(7, value))


def test_an_integer_table_with_a_negative_weight_is_named():
    x0, eps = batch()
    table = torch.ones(N + 1, dtype=torch.long)
    table[3] = -2
    with pytest.raises(SettingError, match=r"weights\[3\] = -2 is not allowed"):
        losses(scheduler(), x0, eps, weights=table)


def test_a_table_changed_in_place_is_looked_at_again():
    x0, eps = batch()
    table = torch.ones(N + 1)
    s = scheduler()
    losses(s, x0, eps, weights=table)
    table[500] = math.nan
    with pytest.raises(SettingError, match=r"weights\[500\] = nan"):
        losses(s, x0, eps, weights=table)


def test_a_table_checked_once_is_not_looked_at_again(monkeypatch):
    from opensora_timeshift_patch.opensora1 import scheduler as module

    x0, eps = batch()
    real, looks = module.guarded_table, []

    def counted(weights, guard):
        table, checks = real(weights, guard)
        looks.append(len(checks))
        return table, checks

    monkeypatch.setattr(module, "guarded_table", counted)
    table, s = torch.ones(N + 1), scheduler()
    for _ in range(3):
        losses(s, x0, eps, weights=table)
    losses(s, x0, eps, weights=table.clone())  # another tensor: looked at
    assert looks == [1, 0, 0, 1]


def test_clamp_clips_a_negative_weight_to_zero_and_stops_at_nan():
    x0, eps = batch()
    t = [5.0, 6.0, 7.0, 8.0]
    got = losses(scheduler(on_degenerate="clamp"), x0, eps, t=torch.tensor(t), weights=table_with(7, -3.0))
    expected = hand_loss(x0, eps, t) * torch.tensor([1.0, 1.0, 0.0, 1.0], dtype=torch.float64)
    torch.testing.assert_close(got.double(), expected, rtol=1e-5, atol=0)
    for value in (math.nan, math.inf):
        with pytest.raises(RuntimeError, match="NaN or infinite per-timestep loss weight"):
            losses(scheduler(on_degenerate="clamp"), x0, eps, weights=table_with(7, value))


def test_ignore_keeps_stocks_negative_loss_and_stops_at_non_finite():
    x0, eps = batch()
    t = [5.0, 6.0, 7.0, 8.0]
    got = losses(scheduler(on_degenerate="ignore"), x0, eps, t=torch.tensor(t), weights=table_with(7, -3.0))
    expected = hand_loss(x0, eps, t) * torch.tensor([1.0, 1.0, -3.0, 1.0], dtype=torch.float64)
    torch.testing.assert_close(got.double(), expected, rtol=1e-5, atol=0)
    for value in (math.nan, math.inf, -math.inf):
        with pytest.raises(RuntimeError, match="NaN or infinite per-timestep loss weight"):
            losses(scheduler(on_degenerate="ignore"), x0, eps, weights=table_with(7, value))


@pytest.mark.parametrize("weights", [torch.ones(N + 1, dtype=torch.bool), torch.ones(N + 1, dtype=torch.complex64),
                                     torch.ones(N + 1, 1), [1.0] * (N + 1), torch.ones(0)])
def test_a_table_of_the_wrong_kind_is_named(weights):
    x0, eps = batch()
    with pytest.raises(SettingError, match="weights=.* is not allowed: give a real tensor of 1000 or 1001"):
        losses(scheduler(), x0, eps, weights=weights)


# --- a mask row with no frame --------------------------------------------------------------------------------------

MASK = torch.tensor([[True, True, False], [False, False, False], [False, True, True], [True, True, True]])


def test_a_mask_row_without_frames_is_named_on_the_error_path():
    x0, eps = batch()
    s = scheduler()
    with pytest.raises(SettingError, match=r"mask row 1 has no noised frame .* 0/0 = NaN"):
        losses(s, x0, eps, mask=MASK)
    assert s.step == 0  # a refused batch does not advance the stream


def test_clamp_gives_a_row_without_frames_loss_zero_and_no_nan_gradient():
    x0, eps = batch()
    t = [100.0, 200.0, 300.0, 400.0]
    got = losses(scheduler(on_degenerate="clamp"), x0, eps, mask=MASK, t=torch.tensor(t))
    full = hand_loss(x0, eps, t, MASK | torch.tensor([False, True, False, False])[:, None])
    torch.testing.assert_close(got.double(), full * torch.tensor([1.0, 0.0, 1.0, 1.0], dtype=torch.float64),
                               rtol=1e-5, atol=0)
    gain = torch.ones((), requires_grad=True)

    def model(x, t, **kw):
        return StubModel()(x, t) * gain

    loss = scheduler(on_degenerate="clamp").training_losses(model, x0.float(), meta(256, 256, [17] * 4), mask=MASK,
                                                            noise=eps.float(), t=torch.tensor(t))["loss"]
    loss.sum().backward()
    assert torch.isfinite(gain.grad)


def test_ignore_stops_at_a_row_without_frames():
    x0, eps = batch()
    with pytest.raises(RuntimeError, match="a mask row has no noised frame"):
        losses(scheduler(on_degenerate="ignore"), x0, eps, mask=MASK)


@pytest.mark.parametrize("guard", ["error", "clamp", "ignore"])
def test_a_full_mask_row_is_the_masked_mean(guard):
    x0, eps = batch()
    mask = MASK.clone()
    mask[1, 0] = True
    t = [100.0, 200.0, 300.0, 400.0]
    got = losses(scheduler(on_degenerate=guard), x0, eps, mask=mask, t=torch.tensor(t))
    torch.testing.assert_close(got.double(), hand_loss(x0, eps, t, mask), rtol=1e-5, atol=0)


# --- an explicit t outside [0, N] ----------------------------------------------------------------------------------

@pytest.mark.parametrize("t, shown", [([1.0, -0.5, 3.0, 4.0], "-0.5"), ([1.0, 1000.5, 3.0, 4.0], "1000.5"),
                                      ([1.0, math.nan, 3.0, 4.0], "nan"), ([1.0, math.inf, 3.0, 4.0], "inf"),
                                      ([1, 2000, 3, 4], "2000"), ([1, -1, 3, 4], "-1")])
def test_a_timestep_outside_0_n_is_named_on_the_error_path(t, shown):
    x0, eps = batch()
    dtype = torch.long if isinstance(t[1], int) else torch.float32
    s = scheduler()
    with pytest.raises(SettingError, match=rf"t\[1\] = {shown} is not allowed: training timesteps lie in \[0, 1000\]"):
        losses(s, x0, eps, t=torch.tensor(t, dtype=dtype))
    assert s.step == 0


def test_clamp_clamps_t_into_0_n_and_stops_at_nan():
    x0, eps = batch()
    got = losses(scheduler(on_degenerate="clamp"), x0, eps, t=torch.tensor([-5.0, 1e9, -math.inf, 500.0]))
    torch.testing.assert_close(got.double(), hand_loss(x0, eps, [0.0, 1000.0, 0.0, 500.0]), rtol=1e-5, atol=0)
    with pytest.raises(RuntimeError, match="t holds a NaN timestep"):
        losses(scheduler(on_degenerate="clamp"), x0, eps, t=torch.tensor([1.0, math.nan, 3.0, 4.0]))


def test_ignore_keeps_stocks_numbers_outside_0_n_and_stops_at_non_finite():
    x0, eps = batch()
    got = losses(scheduler(on_degenerate="ignore"), x0, eps, t=torch.tensor([-5.0, 1010.0, 3.0, 4.0]))
    torch.testing.assert_close(got.double(), hand_loss(x0, eps, [-5.0, 1010.0, 3.0, 4.0]), rtol=1e-5, atol=0)
    for bad in (math.nan, math.inf):
        with pytest.raises(RuntimeError, match="t holds a NaN or infinite timestep"):
            losses(scheduler(on_degenerate="ignore"), x0, eps, t=torch.tensor([1.0, bad, 3.0, 4.0]))


# --- LossWeighting's own settings ----------------------------------------------------------------------------------

@pytest.mark.parametrize("value", [-5, -5.0, math.nan, math.inf, 0, 0.5, True, "10", None, 1e7])
def test_max_loss_weight_is_validated_as_the_setting(value):
    with pytest.raises(SettingError, match=r"max_loss_weight=.* is not allowed: use a finite number in \[1, 1000000\]"):
        LossWeighting("cosmap", max_loss_weight=value)


@pytest.mark.parametrize("value", ["snr", None, 3, True, ""])
def test_loss_weighting_is_validated_as_the_setting(value):
    with pytest.raises(SettingError, match=r"loss_weighting=.* is not allowed: use one of 'none', 'sigma_sqrt'"):
        LossWeighting(value)


def test_max_loss_weight_at_its_bounds_clips_there():
    ends = torch.tensor([0.0, 1.0], dtype=torch.float64)
    assert LossWeighting("sigma_sqrt", max_loss_weight=1).__call__(ends).tolist() == [1.0, 1.0]
    assert LossWeighting("sigma_sqrt", max_loss_weight=1e6)(ends).tolist() == [1e6, 1.0]


# --- a registered weighting that misbehaves between the points it was built on -------------------------------------

@pytest.fixture
def band_weighting():
    """NaN on (0.3003, 0.3004) and -1 on (0.7003, 0.7004), 1 elsewhere: between the points checked when built."""
    @ots.register_weighting("band_test")
    def band(t):
        w = torch.ones_like(t)
        w = torch.where((t > 0.3003) & (t < 0.3004), torch.full_like(t, math.nan), w)
        return torch.where((t > 0.7003) & (t < 0.7004), torch.full_like(t, -1.0), w)

    yield "band_test"
    ots.settings.WEIGHTINGS.unregister("band_test")


@pytest.mark.parametrize("t_bad, shown", [(300.35, r"w\(t=0.3003\d*\) = nan"), (700.35, r"w\(t=0.7003\d*\) = -1.0")])
def test_a_nan_or_negative_weight_between_grid_points_is_named_on_the_error_path(band_weighting, t_bad, shown):
    x0, eps = batch()
    s = scheduler(loss_weighting=band_weighting)
    with pytest.raises(SettingError, match=rf"loss_weighting='band_test' gives {shown}: a weighting must return"):
        losses(s, x0, eps, t=torch.tensor([100.0, t_bad, 500.0, 600.0]))
    assert s.step == 0
    with pytest.raises(SettingError, match=shown):
        s.weighting(torch.tensor([0.1, t_bad / N]), on_degenerate="error")


def test_clamp_counts_a_bad_weight_as_zero_and_ignore_stops(band_weighting):
    x0, eps = batch()
    t = [100.0, 300.35, 700.35, 600.0]
    got = losses(scheduler(loss_weighting=band_weighting, on_degenerate="clamp"), x0, eps, t=torch.tensor(t))
    expected = hand_loss(x0, eps, t) * torch.tensor([1.0, 0.0, 0.0, 1.0], dtype=torch.float64)
    torch.testing.assert_close(got.double(), expected, rtol=1e-5, atol=0)
    with pytest.raises(RuntimeError, match="loss_weighting='band_test' gave a NaN or negative weight"):
        losses(scheduler(loss_weighting=band_weighting, on_degenerate="ignore"), x0, eps, t=torch.tensor(t))


@pytest.mark.parametrize("where", ["near_0", "near_1"])
def test_a_weighting_bad_only_next_to_an_end_is_refused_when_built(where):
    @ots.register_weighting("edge_test")
    def edge(t):
        inside = (t > 0) & (t < 1e-9) if where == "near_0" else (t < 1) & (t > 1 - 1e-9)
        return torch.where(inside, torch.full_like(t, math.nan), torch.ones_like(t))

    try:
        with pytest.raises(SettingError, match=r"loss_weighting='edge_test' gives w\(t=.*\) = nan: .*\(checked when built"):
            scheduler(loss_weighting="edge_test")
    finally:
        ots.settings.WEIGHTINGS.unregister("edge_test")
