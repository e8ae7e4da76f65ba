"""The standalone backend against numbers recorded from the real Open-Sora 1.2 and 1.3 code.

``tests/data/opensora_golden.json`` is the output of ``scripts/check_against_opensora.py --json`` run with each
Open-Sora branch importable (torch 2.5.1): stock ``rflow``'s training timesteps and losses and its sampling
schedules, from fixed seeds on the stub model of ``opensora_timeshift_patch.testing``. Reproducing them here
shows the policy and the rectified-flow conventions match stock without Open-Sora installed.
"""

import json
from pathlib import Path

import pytest
import torch

import opensora_timeshift_patch as ots
from opensora_timeshift_patch.testing import batch_meta, latent_shape, run_sampling, run_training

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
    fixed, _ = run_training(ots.RFlowTimeShift(shift_mode="frames16"), x, batch_meta(4, 256, 256, 16), seed=0)
    assert fixed.tolist() == stock["frames16_training_t"]


def test_stock_1_3_on_sixteen_frames_is_v13():
    stock = GOLDEN["opensora_1.3"]["sixteen_frames"]
    x = torch.randn(*latent_shape(4, 16), generator=torch.Generator().manual_seed(3))
    scheduler = ots.RFlowTimeShift(shift_mode="v13", num_sampling_steps=5)
    t, _ = run_training(scheduler, x, batch_meta(4, 256, 256, 16), seed=0)
    assert t.tolist() == stock["stock_training_t"]
    steps, _ = run_sampling(scheduler, x[:2], batch_meta(2, 256, 256, 16))
    assert [s[0].item() for s in steps] == stock["stock_sampling_t"]
