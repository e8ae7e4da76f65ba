"""T_eff per mode, against the formulas written out in plain integer arithmetic."""

import math

import pytest
import torch

from opensora_timeshift_patch import SHIFT_MODES, degenerate_frame_counts, register_policy, temporal_size
from opensora_timeshift_patch.policies import get_policy


def reference(mode, n):
    """Each rule as Open-Sora and the VAE define it, on Python ints; images are 1 in every mode."""
    if n == 1:
        return 1
    return {
        "legacy": n // 17 * 5,
        "frames16": n // 16 * 4,
        "v13": (n - 1) // 4,
        "latent": (n // 17) * 5 + math.ceil((n % 17) / 4),
        "continuous": n * 5 / 17,
        "spatial": 1,
    }[mode]


def test_modes_are_the_documented_six():
    assert SHIFT_MODES == ("legacy", "frames16", "v13", "latent", "continuous", "spatial")


@pytest.mark.parametrize("mode", ["legacy", "frames16", "v13", "latent", "continuous", "spatial"])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64, torch.int64])
def test_every_mode_matches_its_formula_for_1_to_204_frames(mode, dtype):
    n = torch.arange(1, 205).to(dtype)
    got = temporal_size(n.double(), mode) if dtype == torch.int64 else temporal_size(n, mode)
    want = torch.tensor([reference(mode, k) for k in range(1, 205)], dtype=torch.float64)
    torch.testing.assert_close(got.double(), want, rtol=1e-6, atol=0)


@pytest.mark.parametrize(
    "n, row",
    [  # legacy, frames16, v13, latent, spatial: worked out by hand
        (1, (1, 1, 1, 1, 1)),
        (8, (0, 0, 1, 2, 1)),
        (16, (0, 4, 3, 4, 1)),
        (17, (5, 4, 4, 5, 1)),
        (32, (5, 8, 7, 9, 1)),
        (51, (15, 12, 12, 15, 1)),
        (102, (30, 24, 25, 30, 1)),
        (113, (30, 28, 28, 33, 1)),  # 6 * 17 + 11: 30 + ceil(11 / 4)
    ],
)
def test_worked_examples(n, row):
    modes = ("legacy", "frames16", "v13", "latent", "spatial")
    got = tuple(int(temporal_size(torch.tensor([float(n)]), m).item()) for m in modes)
    assert got == row


def test_latent_equals_legacy_on_17k_frames_and_images():
    n = torch.tensor([1.0] + [17.0 * k for k in range(1, 13)])
    assert torch.equal(temporal_size(n, "latent"), temporal_size(n, "legacy"))


@pytest.mark.parametrize(
    "params, frames, want",
    [
        (dict(micro_frame_size=None), [1, 16, 17, 33], [1, 4, 5, 9]),  # whole clip, ceil(n / 4)
        (dict(causal=True), [1, 5, 17, 33, 129], [1, 2, 5, 9, 33]),  # 1 + (n - 1) // 4
        (dict(micro_frame_size=16, temporal_compression=8), [16, 17, 40], [2, 3, 5]),
    ],
)
def test_latent_geometry_is_configurable(params, frames, want):
    got = temporal_size(torch.tensor(frames, dtype=torch.float32), "latent", **params)
    assert got.tolist() == want


def test_images_are_one_per_sample_not_by_element_zero():
    n = torch.tensor([16.0, 1.0, 51.0, 1.0])
    assert temporal_size(n, "v13").tolist() == [3, 1, 12, 1]
    assert temporal_size(n, "continuous")[1].item() == 1


def test_degenerate_frame_counts():
    assert degenerate_frame_counts("legacy", 40) == tuple(range(2, 17))
    assert degenerate_frame_counts("frames16", 20) == tuple(range(2, 16))
    assert degenerate_frame_counts("v13", 40) == (2, 3, 4)
    assert degenerate_frame_counts("latent", 256) == ()
    assert degenerate_frame_counts("continuous", 256) == ()


def test_unknown_mode_lists_the_valid_ones():
    with pytest.raises(ValueError, match=r"shift_mode='frames17'.*'legacy', 'frames16', 'v13', 'latent'"):
        get_policy("frames17")


def test_a_new_mode_is_one_registered_function():
    from opensora_timeshift_patch.policies import POLICIES

    @register_policy("test-double")
    def double(n):
        return 2 * n

    try:
        assert temporal_size(torch.tensor([1.0, 8.0]), "test-double").tolist() == [1, 16]
        with pytest.raises(ValueError, match="already registered"):
            register_policy("test-double")(double)
    finally:
        POLICIES.unregister("test-double")
