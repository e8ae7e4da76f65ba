"""The stand-in data, latent map, model and metric used by the end-to-end comparison."""

import math
import re
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

from opensora_timeshift_patch import temporal_size
from standin.tiny import (BouncingBlobs, RandomFeatures, TinySTDiT, decode, encode, features_by_length,
                          frechet_distance, latent_frames)


def test_latent_map_has_the_geometry_of_the_latent_policy():
    for n in range(1, 205):
        assert latent_frames(n) == temporal_size(torch.tensor([float(n)]), "latent").item()
    for n, t in [(1, 1), (8, 2), (16, 4), (17, 5), (32, 9), (51, 15)]:  # from Open-Sora 1.2's VAE
        assert encode(torch.rand(2, n, 32, 32)).shape == (2, 4, t, 8, 8)


def test_latent_map_is_invertible_up_to_pooling_and_pads_at_the_front():
    x = torch.rand(3, 17, 32, 32)
    z = encode(x)
    torch.testing.assert_close(decode(z, 17), F.avg_pool2d(x, 4))
    first = (F.avg_pool2d(x[:, :1], 4) - 0.08) / 0.16
    for c in range(3):  # 17 frames pad to 20: three copies of frame 0 in front
        torch.testing.assert_close(z[:, c, 0], first[:, 0])
    torch.testing.assert_close(z[:, 3, 0], (F.avg_pool2d(x[:, :1], 4)[:, 0] - 0.08) / 0.16)
    torch.testing.assert_close(z[:, 0, 1], (F.avg_pool2d(x[:, 1:2], 4)[:, 0] - 0.08) / 0.16)


def test_blob_clips_are_deterministic_bounded_and_moving():
    data = BouncingBlobs([16], seed=3)
    a, b = data.clip(5, 16), data.clip(5, 16)
    assert torch.equal(a, b) and not torch.equal(a, data.clip(6, 16))
    assert a.min() >= 0 and a.max() <= 1 and a.shape == (16, 32, 32)
    assert not torch.equal(a[0], a[-1])


def test_blob_motion_is_constant_speed_reflected_at_the_walls():
    """Along each axis a blob moves |v| per frame, except on a step where it touches a wall and turns back."""
    data = BouncingBlobs([51], seed=0)
    lo, hi = data.WALL, 32 - data.WALL
    bounces = 0
    for index in range(20):
        pos, v, _ = data.trajectory(index, 51)
        assert bool(((pos >= lo - 1e-4) & (pos <= hi + 1e-4)).all())
        step = pos.diff(dim=0).abs()  # (50, blobs, 2)
        off = (step - v.abs()).abs() > 1e-4
        near_wall = ((pos[:-1] - lo < v.abs()) | (hi - pos[:-1] < v.abs()) |
                     (pos[1:] - lo < v.abs()) | (hi - pos[1:] < v.abs()))
        assert bool((~off | near_wall).all())
        bounces += int(off.sum())
    assert bounces > 0  # the walls are reached within 51 frames


def test_batches_carry_open_soras_meta():
    x, meta = BouncingBlobs([16], nominal_resolution=(720, 1280), fps=24).batch([0, 1], 16)
    assert x.shape == (2, 4, 4, 8, 8)
    assert {k: v.tolist() for k, v in meta.items()} == {"height": [720.0] * 2, "width": [1280.0] * 2,
                                                        "num_frames": [16.0] * 2, "fps": [24.0] * 2}
    with pytest.raises(ValueError, match="frames=\\[0\\] must be a non-empty list of frame counts >= 1"):
        BouncingBlobs([0])


def test_tiny_model_shape_size_and_timestep_input():
    model = TinySTDiT()
    assert 100_000 < sum(p.numel() for p in model.parameters()) < 1_000_000
    x = torch.randn(2, 4, 5, 8, 8)
    out = model(x, torch.tensor([10.0, 10.0]), height=torch.ones(2))
    assert out.shape == (2, 8, 5, 8, 8)
    assert not torch.allclose(out, model(x, torch.tensor([900.0, 900.0])))


def test_frechet_distance_by_hand():
    g = torch.Generator().manual_seed(0)
    a = torch.randn(20000, 3, generator=g)
    b = torch.randn(20000, 3, generator=g) + torch.tensor([1.0, 2.0, 0.0])
    assert frechet_distance(a, b) == pytest.approx(5.0, abs=0.1)  # |m|^2 for equal covariances
    c = torch.randn(20000, 3, generator=g) * 2
    assert frechet_distance(a, c) == pytest.approx(3 * (1 + 4 - 2 * 2), abs=0.1)  # tr(I + 4I - 2 * 2I)
    assert math.isnan(frechet_distance(a, torch.full((10, 3), math.nan)))


def test_real_clips_score_well_and_noise_badly():
    data, other = BouncingBlobs([16, 51], seed=100), BouncingBlobs([16, 51], seed=200)
    real = [data.batch(range(80), n)[0] for n in (16, 51)]
    real2 = [other.batch(range(80), n)[0] for n in (16, 51)]
    noise = [torch.randn(x.shape, generator=torch.Generator().manual_seed(1)) for x in real]
    blurred = [x.mean(dim=(3, 4), keepdim=True).expand_as(x) for x in real]  # blobs smeared flat
    net = RandomFeatures()
    f = features_by_length(real, net)
    close, far, flat = (frechet_distance(f, features_by_length(s, net)) for s in (real2, noise, blurred))
    assert close * 10 < far and close * 10 < flat


def test_the_stand_in_is_not_installed_with_the_plugin(monkeypatch):
    """pip puts only opensora_timeshift_patch next to Open-Sora, and the plugin never imports standin/."""
    import setuptools

    root = Path(__file__).resolve().parents[1]
    declared = {}
    monkeypatch.setattr(setuptools, "setup", lambda **kwargs: declared.update(kwargs))
    monkeypatch.chdir(root)
    exec(compile((root / "setup.py").read_text(), "setup.py", "exec"), {"__name__": "__main__"})
    assert declared["packages"] and all(p.split(".")[0] == "opensora_timeshift_patch" for p in declared["packages"])
    plugin = root / "opensora_timeshift_patch"
    assert not (plugin / "standin.py").exists() and not (plugin / "testing.py").exists()  # their old places
    for source in plugin.rglob("*.py"):
        imports = re.findall(r"^\s*(?:from|import)\s+(\w+)", source.read_text(encoding="utf-8"), re.MULTILINE)
        assert "standin" not in imports, source.relative_to(root)
