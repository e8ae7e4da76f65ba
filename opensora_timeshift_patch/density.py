"""Densities and quantiles of the shifted timestep, computed rather than sampled.

Pure functions on tensors and arrays: no scheduler, no command line. The shift t -> t' is increasing, so it maps
quantiles to quantiles, and the image of equally likely points of (0, 1) under an inverse CDF stands for a
distribution without sampling noise.
"""

from __future__ import annotations

from typing import Any, Callable, Sequence

import numpy as np
import torch

# Equally likely points standing for a distribution in an effective-emphasis histogram.
EMPHASIS_POINTS = 100_000


def midpoint_uniforms(n: int = EMPHASIS_POINTS) -> torch.Tensor:
    """``(i + 1/2) / n`` for i < n: equally likely points of (0, 1), whose image under an inverse CDF stands for the
    distribution without sampling noise."""
    return (torch.arange(n, dtype=torch.float64) + 0.5) / n


def shifted_quantiles(inverse_cdf: Callable[[torch.Tensor], torch.Tensor],
                      shift: Callable[[torch.Tensor], torch.Tensor], qs: Sequence[float]) -> torch.Tensor:
    """The ``qs``-quantiles of ``shift(t)`` for ``t = inverse_cdf(u)``, u uniform: exactly ``shift(inverse_cdf(q))``,
    since an increasing map takes the q-quantile to the q-quantile."""
    return shift(inverse_cdf(torch.tensor(list(qs), dtype=torch.float64)))


def density_quantile(edges: Any, density: Any, q: float) -> float:
    """The q-quantile of a density given on bins: the smallest t at which its integral from 0 reaches q, linear
    within a bin (so exact to a bin's width; for mass at one point, the right edge of its bin)."""
    edges = np.asarray(edges, dtype=np.float64)
    cumulative = np.concatenate([[0.0], np.cumsum(np.asarray(density) * np.diff(edges))])
    i = min(max(int(np.searchsorted(cumulative, q - 1e-9)), 1), len(edges) - 1)
    lo, hi = cumulative[i - 1], cumulative[i]
    part = 1.0 if hi <= lo else min(max((q - lo) / (hi - lo), 0.0), 1.0)
    return float(edges[i - 1] + part * (edges[i] - edges[i - 1]))
