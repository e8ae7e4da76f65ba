"""A laptop-sized stand-in for Open-Sora's data, VAE and STDiT, to train and compare timestep policies end to end.

* :class:`BouncingBlobs`: clips of Gaussian blobs moving at constant velocity and bouncing off the walls, made on
  the fly from (seed, index), at any frame count.
* :func:`encode` / :func:`decode`: a fixed latent map with the temporal geometry of Open-Sora 1.2's VAE. Frames
  are average-pooled 4x4 (32x32 -> 8x8) and normalised; the clip is cut into micro-batches of 17 frames, each
  padded at the front (repeating its first frame) to a multiple of 4; every 4 consecutive frames become the 4
  channels of one latent frame. So 16 frames -> 4 latent frames, 17 -> 5, 32 -> 9, 51 -> 15, 1 -> 1, exactly what
  ``shift_mode="latent"`` computes, and the map is invertible (decode drops the padding).
* :class:`TinySTDiT`: a spatio-temporal network (factorised 3x3 spatial and 3-tap temporal convolutions, FiLM from a
  sinusoidal timestep embedding) returning twice the latent channels, as STDiT does.
* :func:`frechet_distance` on :class:`RandomFeatures`: a sample-quality score (below).
"""

from __future__ import annotations

import math
from typing import Dict, List, Sequence, Tuple

import torch
import torch.nn.functional as F
from torch import Tensor, nn

FRAME_SIZE = 32  # pixels per side
POOL = 4  # pixels per latent pixel side
MICRO_FRAMES = 17  # Open-Sora 1.2's VAE micro-batch
TEMPORAL = 4  # Open-Sora 1.2's temporal compression
LATENT_CHANNELS = TEMPORAL
# Normalisation of pooled frames, so latents have about zero mean and unit variance (a VAE's scaling factor).
PIXEL_MEAN, PIXEL_STD = 0.08, 0.16


class BouncingBlobs:
    """Clips of 1-2 Gaussian blobs bouncing in a 32x32 box, a pure function of (seed, index, frames).

    Each batch carries Open-Sora's meta: ``height`` and ``width`` (the nominal resolution, which sets the shift
    factor; the pixels here are 32x32), ``num_frames`` and ``fps``.
    """

    def __init__(self, frames: Sequence[int], seed: int = 0, nominal_resolution: Tuple[int, int] = (720, 1280),
                 fps: float = 24.0) -> None:
        if not frames or any(int(n) < 1 for n in frames):
            raise ValueError(f"frames={list(frames)!r} must be a non-empty list of frame counts >= 1")
        self.frames = [int(n) for n in frames]
        self.seed = seed
        self.nominal_resolution = nominal_resolution
        self.fps = fps

    WALL = 3.0  # blob centres move in [WALL, 32 - WALL]

    def trajectory(self, index: int, num_frames: int) -> Tuple[Tensor, Tensor, Tensor]:
        """Blob centres ``(frames, blobs, 2)``, velocities ``(blobs, 2)`` in pixels per frame, radii ``(blobs, 1)``."""
        g = torch.Generator().manual_seed(self.seed * 1_000_003 + index)
        blobs = int(torch.randint(1, 3, (1,), generator=g))
        lo, hi = self.WALL, FRAME_SIZE - self.WALL
        p0 = lo + (hi - lo) * torch.rand(blobs, 2, generator=g)
        v = (torch.rand(blobs, 2, generator=g) * 2 - 1) * 1.5
        radius = 2.0 + 1.5 * torch.rand(blobs, 1, generator=g)
        k = torch.arange(num_frames, dtype=torch.float32).view(-1, 1, 1)
        # constant velocity, reflected at the walls: a triangle wave of period 2 (hi - lo)
        span = hi - lo
        pos = torch.remainder(p0 - lo + v * k, 2 * span)
        return lo + torch.where(pos > span, 2 * span - pos, pos), v, radius

    def clip(self, index: int, num_frames: int) -> Tensor:
        """One clip, ``(num_frames, 32, 32)`` in [0, 1]."""
        pos, _, radius = self.trajectory(index, num_frames)
        blobs = pos.shape[1]
        grid = torch.arange(FRAME_SIZE, dtype=torch.float32) + 0.5
        dy = grid.view(1, 1, -1, 1) - pos[..., 0].view(num_frames, blobs, 1, 1)
        dx = grid.view(1, 1, 1, -1) - pos[..., 1].view(num_frames, blobs, 1, 1)
        images = torch.exp(-(dx**2 + dy**2) / (2 * radius.view(1, blobs, 1, 1) ** 2))
        return images.sum(dim=1).clamp(max=1.0)

    def batch(self, indices: Sequence[int], num_frames: int) -> Tuple[Tensor, Dict[str, Tensor]]:
        """Latents ``(B, 4, T, 8, 8)`` and meta for clips ``indices``, all of ``num_frames`` frames (one bucket)."""
        pixels = torch.stack([self.clip(i, num_frames) for i in indices])
        n = len(indices)
        h, w = self.nominal_resolution
        meta = {"height": torch.full((n,), float(h)), "width": torch.full((n,), float(w)),
                "num_frames": torch.full((n,), float(num_frames)), "fps": torch.full((n,), float(self.fps))}
        return encode(pixels), meta


def latent_frames(num_frames: int) -> int:
    """Latent length of :func:`encode`: ``(n // 17) * 5 + ceil((n % 17) / 4)``."""
    return (num_frames // MICRO_FRAMES) * math.ceil(MICRO_FRAMES / TEMPORAL) + math.ceil(
        (num_frames % MICRO_FRAMES) / TEMPORAL)


def encode(pixels: Tensor) -> Tensor:
    """``(B, n, 32, 32)`` frames -> ``(B, 4, T, 8, 8)`` latents with Open-Sora 1.2's VAE temporal geometry."""
    pooled = (F.avg_pool2d(pixels, POOL) - PIXEL_MEAN) / PIXEL_STD  # (B, n, 8, 8)
    chunks = []
    for start in range(0, pixels.shape[1], MICRO_FRAMES):
        chunk = pooled[:, start:start + MICRO_FRAMES]
        pad = (-chunk.shape[1]) % TEMPORAL
        chunk = torch.cat([chunk[:, :1].expand(-1, pad, -1, -1), chunk], dim=1)
        b, m, h, w = chunk.shape
        chunks.append(chunk.view(b, m // TEMPORAL, TEMPORAL, h, w).transpose(1, 2))  # frames -> channels
    return torch.cat(chunks, dim=2)


def decode(latents: Tensor, num_frames: int) -> Tensor:
    """The inverse of :func:`encode` up to the pooling: ``(B, 4, T, 8, 8)`` -> ``(B, n, 8, 8)`` pooled frames."""
    frames, t = [], 0
    for start in range(0, num_frames, MICRO_FRAMES):
        m = min(MICRO_FRAMES, num_frames - start)
        k = math.ceil(m / TEMPORAL)
        chunk = latents[:, :, t:t + k].transpose(1, 2).reshape(latents.shape[0], k * TEMPORAL, *latents.shape[-2:])
        frames.append(chunk[:, k * TEMPORAL - m:])  # drop the front padding
        t += k
    return torch.cat(frames, dim=1) * PIXEL_STD + PIXEL_MEAN


def timestep_embedding(t: Tensor, dim: int) -> Tensor:
    """Sinusoidal embedding of t in [0, 1000] (Vaswani et al., 2017; as DiT and STDiT embed timesteps)."""
    half = dim // 2
    freqs = torch.exp(-math.log(10000.0) * torch.arange(half, dtype=torch.float32, device=t.device) / half)
    args = t.float().view(-1, 1) * freqs.view(1, -1)
    return torch.cat([torch.cos(args), torch.sin(args)], dim=1)


class Block(nn.Module):
    def __init__(self, width: int) -> None:
        super().__init__()
        self.norm = nn.GroupNorm(8, width)
        self.spatial = nn.Conv3d(width, width, (1, 3, 3), padding=(0, 1, 1))
        self.temporal = nn.Conv3d(width, width, (3, 1, 1), padding=(1, 0, 0))

    def forward(self, x: Tensor, film: Tensor) -> Tensor:
        scale, shift = film.view(*film.shape, 1, 1, 1).chunk(2, dim=1)
        h = self.norm(x) * (1 + scale) + shift
        return x + self.temporal(F.silu(self.spatial(F.silu(h))))


class TinySTDiT(nn.Module):
    """Stand-in for STDiT: ``forward(x, t, **model_args)`` -> ``(B, 2C, T, H, W)``, velocity in the first half."""

    def __init__(self, in_channels: int = LATENT_CHANNELS, width: int = 64, depth: int = 4, t_dim: int = 64) -> None:
        super().__init__()
        self.t_dim = t_dim
        self.inp = nn.Conv3d(in_channels, width, (1, 3, 3), padding=(0, 1, 1))
        self.t_mlp = nn.Sequential(nn.Linear(t_dim, width), nn.SiLU(), nn.Linear(width, 2 * width * depth))
        self.blocks = nn.ModuleList(Block(width) for _ in range(depth))
        self.out = nn.Conv3d(width, 2 * in_channels, (1, 3, 3), padding=(0, 1, 1))

    def forward(self, x: Tensor, t: Tensor, **model_args: Tensor) -> Tensor:
        films = self.t_mlp(timestep_embedding(t, self.t_dim)).chunk(len(self.blocks), dim=1)
        h = self.inp(x)
        for block, film in zip(self.blocks, films):
            h = block(h, film)
        return self.out(F.silu(h))


class NullTextEncoder:
    """Open-Sora's text-encoder interface with no text: the stand-in model is unconditional."""

    def encode(self, prompts: Sequence[str]) -> Dict[str, Tensor]:
        return {"y": torch.zeros(len(prompts), 1, 1, 1)}

    def null(self, n: int) -> Tensor:
        return torch.zeros(n, 1, 1, 1)


class RandomFeatures(nn.Module):
    """A fixed, randomly initialised 3-D conv net: clip latents -> 32 features (16 channel means, 16 std devs).

    Random convolutional features are a cheap, data-free stand-in for an Inception network: they still separate
    images by local structure (Naeem et al., 2020, and the random-network baselines of FID studies).
    """

    def __init__(self, seed: int = 1234) -> None:
        super().__init__()
        g = torch.Generator().manual_seed(seed)
        self.c1 = nn.Conv3d(LATENT_CHANNELS, 16, (1, 3, 3), padding=(0, 1, 1))
        self.c2 = nn.Conv3d(16, 16, (3, 3, 3), padding=1)
        for p in self.parameters():
            p.data = torch.randn(p.shape, generator=g) / math.sqrt(p[0].numel() if p.dim() > 1 else 4)
        self.requires_grad_(False)

    def forward(self, x: Tensor) -> Tensor:
        h = F.relu(self.c2(F.relu(self.c1(x))))
        return torch.cat([h.mean(dim=(2, 3, 4)), h.std(dim=(2, 3, 4))], dim=1)


def frechet_distance(a: Tensor, b: Tensor) -> float:
    """Fréchet distance between Gaussians fitted to two feature sets (Heusel et al., 2017, FID).

    ``|mu_a - mu_b|^2 + tr(S_a + S_b - 2 (S_a^1/2 S_b S_a^1/2)^1/2)``, in float64, matrix square roots by
    symmetric eigendecomposition. NaN when a set has non-finite features (a sample that blew up).
    """
    a, b = a.double(), b.double()
    if not (torch.isfinite(a).all() and torch.isfinite(b).all()):
        return math.nan
    mu_a, mu_b = a.mean(0), b.mean(0)
    cov_a, cov_b = torch.cov(a.T), torch.cov(b.T)
    root_a = _psd_sqrt(cov_a)
    cross = _psd_sqrt(root_a @ cov_b @ root_a)
    return float((mu_a - mu_b).pow(2).sum() + torch.trace(cov_a + cov_b - 2 * cross))


def _psd_sqrt(m: Tensor) -> Tensor:
    values, vectors = torch.linalg.eigh((m + m.T) / 2)
    return vectors @ torch.diag(values.clamp(min=0).sqrt()) @ vectors.T


def features_by_length(clips: List[Tensor], net: RandomFeatures) -> Tensor:
    """Features of clips that may differ in length (each list entry one length), stacked."""
    with torch.no_grad():
        return torch.cat([net(c) for c in clips])
