"""Expert boundaries in noise level: the shifted level converts to an unshifted t through each sample's factor."""

from __future__ import annotations

import pytest
import torch

from opensora_timeshift_patch.shift import exponential_shift, inverse_shift, rational_shift


def test_wan22_boundary_reproduces_diffsynth_fraction_at_shift_5_and_moves_at_shift_3():
    # t' = a t / (1 + (a - 1) t) gives t = t' / (a - (a - 1) t'): at a = 5, t' = 0.875: t = 0.875 / 1.5 = 7/12.
    # DiffSynth-Studio counts its 0.417 from the noisy end of the schedule: 1 - 7/12 = 5/12 = 0.41667.
    t = float(inverse_shift(torch.tensor(0.875, dtype=torch.float64), torch.tensor(5.0, dtype=torch.float64)))
    assert t == pytest.approx(7 / 12) and round(1 - t, 3) == 0.417
    # That same 0.417 under shift 3: 3 (7/12) / (1 + 2 (7/12)) = 21/26 = 0.8077, not 0.875.
    moved = float(rational_shift(torch.tensor(1 - 5 / 12, dtype=torch.float64), torch.tensor(3.0, dtype=torch.float64)))
    assert moved == pytest.approx(21 / 26) and round(moved, 3) == 0.808


@pytest.mark.parametrize("family, sigma", [("rational", 1.0), ("exponential", 1.0), ("exponential", 2.0),
                                           ("exponential", 0.5)])
def test_inverse_shift_undoes_the_shift(family, sigma):
    y = torch.linspace(0.01, 0.99, 99, dtype=torch.float64)
    for a in (0.3, 1.0, 5.0, 600.0):
        a_t = torch.tensor(a, dtype=torch.float64)
        t = inverse_shift(y, a_t, family, sigma)
        back = exponential_shift(t, a_t, sigma) if family == "exponential" else rational_shift(t, a_t)
        assert torch.allclose(back, y, rtol=1e-12, atol=1e-12)
