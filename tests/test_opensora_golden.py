"""The standalone backend against numbers recorded from the real Open-Sora 1.2 and 1.3 code.

``tests/data/opensora_golden.json`` is the output of ``scripts/check_against_opensora.py --json`` run with each
Open-Sora branch importable (torch 2.5.1): stock ``rflow``'s training timesteps and losses and its sampling
schedules, from fixed seeds on the stub model of ``opensora_timeshift_patch.testing``. Reproducing them here
shows the policy and the rectified-flow conventions match stock without Open-Sora installed. The ``frames16``
policy, which stock has no counterpart for, is checked against its formula on the same RNG draws instead.
"""

import json
import math
from pathlib import Path

import pytest
import torch

import opensora_timeshift_patch as ots
from standin.stubs import StubModel, batch_meta, latent_shape, run_sampling, run_training

GOLDEN = json.loads((Path(__file__).parent / "data" / "opensora_golden.json").read_text())
RELEASES = [("opensora_1.2", "latent", True), ("opensora_1.3", "v13", False)]


def cases(section):
    return [(release, mode, scale_images, case) for release, mode, scale_images in RELEASES
            for case in GOLDEN[release][section]]


@pytest.mark.parametrize("release, mode, scale_images, case", cases("training"))
def test_training_timesteps_and_loss(release, mode, scale_images, case):
    n, h, w = case["num_frames"], case["height"], case["width"]
    x = torch.randn(*latent_shape(3, n), generator=torch.Generator().manual_seed(1))
    scheduler = ots.RFlowTimeShift(shift_mode=mode, sample_method=case["sample_method"], scale_images=scale_images)
    t, loss = run_training(scheduler, x, batch_meta(3, h, w, n), seed=0)
    assert t.tolist() == case["t"]
    torch.testing.assert_close(loss, torch.tensor(case["loss"]), rtol=1e-6, atol=0)


@pytest.mark.parametrize("release, mode, scale_images, case", cases("sampling"))
def test_sampling_schedule_and_output(release, mode, scale_images, case):
    n, h, w = case["num_frames"], case["height"], case["width"]
    z = torch.randn(*latent_shape(2, n), generator=torch.Generator().manual_seed(2))
    scheduler = ots.RFlowTimeShift(shift_mode=mode, num_sampling_steps=5)
    steps, out = run_sampling(scheduler, z, batch_meta(2, h, w, n))
    assert [s[0].item() for s in steps] == case["timesteps"]
    assert out.double().sum().item() == pytest.approx(case["z_sum"], rel=1e-6)


def test_stock_1_2_collapse_on_sixteen_frames_is_legacy_with_ignore():
    stock = GOLDEN["opensora_1.2"]["sixteen_frames"]
    assert stock["stock_training_t"] == [0.0] * 4 and not stock["stock_sample_finite"]
    x = torch.randn(*latent_shape(4, 16), generator=torch.Generator().manual_seed(3))
    replay = ots.RFlowTimeShift(shift_mode="legacy", on_degenerate="ignore", num_sampling_steps=5)
    t, _ = run_training(replay, x, batch_meta(4, 256, 256, 16), seed=0)
    assert t.tolist() == stock["stock_training_t"]
    steps, z = run_sampling(replay, x[:2], batch_meta(2, 256, 256, 16))
    got = [s[0].item() for s in steps]
    assert str(got) == str(stock["stock_sampling_t"])  # [nan, 0.0, ...]: NaN != NaN, so compare the text
    assert not bool(z.isfinite().all())


def stock_draws(sample_method, batch, seed):
    """The unshifted t / 1000 that Open-Sora 1.2's ``rflow`` draws from ``torch.manual_seed(seed)``, as floats.

    ``uniform``: ``torch.rand((B,)) * num_timesteps``. ``logit-normal``: ``LogisticNormal(0, 1).sample((B,))[:, 0]
    * num_timesteps``; with one logit, the stick-breaking transform is the logistic sigmoid of a ``randn`` draw.
    """
    torch.manual_seed(seed)
    if sample_method == "uniform":
        return torch.rand(batch).tolist()
    return [1 / (1 + math.exp(-z)) for z in torch.randn(batch, 1)[:, 0].tolist()]


# (height, width, num_frames). The first is the 16-frame case stock 1.2 collapses on (its a is exactly 1, so the
# shifted t are the draws themselves); the others move a away from 1, and 32 and 51 frames tell frames16's T_eff
# (8 and 12) apart from latent's (9 and 15) and legacy's (5 and 15).
FRAMES16_CASES = [(256, 256, 16), (512, 512, 16), (720, 1280, 16), (720, 1280, 32), (480, 854, 51)]


@pytest.mark.parametrize("sample_method", ["uniform", "logit-normal"])
@pytest.mark.parametrize("height, width, num_frames", FRAMES16_CASES)
def test_frames16_training_timesteps_follow_the_formula(height, width, num_frames, sample_method):
    """frames16's training timesteps, derived by hand from the shift formula on the stock RNG draws."""
    batch, seed = 4, 0
    t_eff = num_frames // 16 * 4  # the maintainers' fix for 16-frame data (Open-Sora issue #601)
    a = math.sqrt(height * width / 512**2) * math.sqrt(t_eff)
    expected = [a * u / (1 + (a - 1) * u) * 1000 for u in stock_draws(sample_method, batch, seed)]
    assert all(0 < t < 1000 for t in expected)  # real noise levels (stock 1.2 trains 16-frame clips at t = 0)

    x = torch.randn(*latent_shape(batch, num_frames), generator=torch.Generator().manual_seed(3))
    scheduler = ots.RFlowTimeShift(shift_mode="frames16", sample_method=sample_method)
    t, _ = run_training(scheduler, x, batch_meta(batch, height, width, num_frames), seed=seed)
    assert t.dtype == torch.float32
    # The expectation is float64 arithmetic; the scheduler computes in float32 as Open-Sora does (the sigmoid of
    # the logit-normal draw, times 1000, over 1000, the factor a, the shift's multiply, add and divide, times 1000),
    # each step rounding by up to half a float32 ulp. That stays under one float32 epsilon relative here; 4 leave
    # room. T_eff off by one moves t by over 10^5 epsilons, so this is as discriminating as an exact comparison.
    eps = torch.finfo(torch.float32).eps
    torch.testing.assert_close(t.double(), torch.tensor(expected, dtype=torch.float64), rtol=4 * eps, atol=0)


def test_stock_1_3_on_sixteen_frames_is_v13():
    stock = GOLDEN["opensora_1.3"]["sixteen_frames"]
    x = torch.randn(*latent_shape(4, 16), generator=torch.Generator().manual_seed(3))
    scheduler = ots.RFlowTimeShift(shift_mode="v13", num_sampling_steps=5)
    t, _ = run_training(scheduler, x, batch_meta(4, 256, 256, 16), seed=0)
    assert t.tolist() == stock["stock_training_t"]
    steps, _ = run_sampling(scheduler, x[:2], batch_meta(2, 256, 256, 16))
    assert [s[0].item() for s in steps] == stock["stock_sampling_t"]


V13_FLAGS = GOLDEN["opensora_1.3"]["v13_flags"]


def test_v13_scale_temporal_false_ignores_transform_scale_as_stock():
    """Stock 1.3 treats a scale_temporal=False batch as images: a = sqrt(720 * 1280 / 512^2) = 1.875, no scale."""
    z = torch.randn(*latent_shape(2, 51), generator=torch.Generator().manual_seed(2))
    with pytest.warns(UserWarning, match="transform_scale=2.0 does not apply"):
        scheduler = ots.RFlowTimeShift(num_sampling_steps=4, transform_scale=2.0, scale_temporal=False)
    steps, _ = run_sampling(scheduler, z, batch_meta(2, 720, 1280, 51))
    got = [s[0].item() for s in steps]
    assert got == V13_FLAGS["scale_temporal_false_sampling_t"]
    a = 1.875
    assert got == pytest.approx([1000 * a * t / (1 + (a - 1) * t) for t in (1, 0.75, 0.5, 0.25)], rel=1e-6)


@pytest.mark.parametrize("n", [1, 51])
def test_v13_uniform_over_threshold_consumes_the_rng_as_stock(n):
    """Stock draws the redraw uniforms for video batches only: t and every later random number agree with it."""
    x = torch.randn(*latent_shape(3, n), generator=torch.Generator().manual_seed(1))
    scheduler = ots.RFlowTimeShift(shift_mode="v13", scale_images=False, uniform_over_threshold=0.5)
    t, _ = run_training(scheduler, x, batch_meta(3, 512, 512, n), seed=0)
    want = V13_FLAGS[f"uniform_over_threshold_{n}f"]
    assert t.tolist() == want["t"] and torch.rand(2).tolist() == want["next_rand"]


def test_v13_train_call_keywords_on_the_standalone_backend():
    """1.3's train.py passes model_args, mask_index=[], x_gt, noise_disable_threshold, text_uncond_prob, x_noisy_ref."""
    x = torch.randn(*latent_shape(3, 17), generator=torch.Generator().manual_seed(1))
    x_gt = torch.randn(*latent_shape(3, 17), generator=torch.Generator().manual_seed(4))
    before = x.clone()
    torch.manual_seed(0)
    loss = ots.RFlowTimeShift(shift_mode="v13", backend="standalone").training_losses(
        StubModel(), x, model_args=batch_meta(3, 256, 256, 17), mask=None, mask_index=[], x_gt=x_gt,
        noise_disable_threshold=500, text_uncond_prob=0.0, x_noisy_ref=x)["loss"]
    torch.testing.assert_close(loss, torch.tensor(V13_FLAGS["train_call_loss"]), rtol=1e-6, atol=0)
    assert torch.equal(x, before)  # stock writes x_gt into x_start in place; this backend leaves the batch alone


def test_v13_conditioning_on_the_standalone_backend_is_refused_briefly():
    x = torch.randn(*latent_shape(2, 17))
    with pytest.raises(ValueError) as err:
        ots.RFlowTimeShift(backend="standalone").training_losses(
            StubModel(), x, batch_meta(2, 256, 256, 17), mask_index=[0], x_noisy_ref=x)
    assert "mask_index=[0]" in str(err.value) and "backend='opensora'" in str(err.value)
    assert len(str(err.value)) < 300 and "tensor(" not in str(err.value)
