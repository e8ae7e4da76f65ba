"""The fixed-timestep probe against Open-Sora 1.x's eval/loss/eval_loss.py (goldens) and by hand."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest
import torch

import opensora_timeshift_patch as ots
from opensora_timeshift_patch import build_module
from opensora_timeshift_patch.probe import eval_timesteps, probe_loss, sample_noise

ROOT = Path(__file__).resolve().parents[1]
sys.path.append(str(ROOT / "scripts"))
from record_eval_loss_goldens import BUCKETS, held_out_batches  # noqa: E402
from standin.stubs import StubModel  # noqa: E402

GOLDENS = json.loads((ROOT / "tests" / "data" / "eval_loss_goldens.json").read_text())

# a stock-like recipe and two that shift differently: an explicit t= is never shifted, so all three agree
RECIPES = [dict(backend="standalone", use_timestep_transform=False),
           dict(backend="standalone", shift_mode="latent"),
           dict(backend="standalone", shift_mode="v13", transform_scale=2.0)]


def scheduler(**cfg):
    return build_module(dict(type="rflow-timeshift", **cfg), ots.SCHEDULERS)


def with_y(batches):
    return [(x, {"y": torch.zeros(x.shape[0], 1, 2, 4), **meta}) for x, meta in batches]


@pytest.mark.parametrize("release", sorted(GOLDENS))
@pytest.mark.parametrize("recipe", RECIPES, ids=["stock-like", "latent", "v13x2"])
def test_stock_noise_gives_eval_loss_numbers(release, recipe):
    """Configured as eval_loss.py (seed once, noise drawn in training_losses), the probe gives its losses."""
    golden = GOLDENS[release]
    sched = scheduler(**recipe)
    model = StubModel()
    for k, (bucket, (h, w, f, b, n)) in enumerate(zip(golden["buckets"], BUCKETS)):
        assert (bucket["height"], bucket["width"], bucket["num_frames"]) == (h, w, f)
        out = probe_loss(sched, model, with_y(held_out_batches(h, w, f, b, n)),
                         num_eval_timesteps=golden["num_eval_timesteps"],
                         seed=golden["seed"] if k == 0 else None, noise="stock")
        assert out["loss"] == bucket["loss"]  # the same float32 ops: bit for bit
        assert out["mean"] == pytest.approx(sum(bucket["loss"]) / len(bucket["loss"]), rel=1e-6)


def test_grid_is_eval_loss_linspace():
    assert eval_timesteps(1000, 4).tolist() == pytest.approx([200.0, 400.0, 600.0, 800.0])
    assert eval_timesteps(1000).tolist() == pytest.approx([1000 * i / 11 for i in range(1, 11)])
    for bad in (0, -1, True, 2.5, "3"):
        with pytest.raises(ValueError, match="num_eval_timesteps"):
            eval_timesteps(1000, bad)
    for bad in (0, float("nan"), float("inf"), "1000", True):
        with pytest.raises(ValueError, match="num_timesteps"):
            eval_timesteps(bad, 3)


def test_per_sample_noise_by_hand_and_same_across_recipes():
    """Sample i's noise comes from seed * 1_000_003 + i at every t; the loss is the stub's error, by hand."""
    h, w, f, b, n = BUCKETS[0]
    batches = with_y(held_out_batches(h, w, f, b, n))
    outs = [probe_loss(scheduler(**r), StubModel(), batches, num_eval_timesteps=3, seed=7) for r in RECIPES]
    assert outs[0] == outs[1] == outs[2]
    xs = torch.cat([x for x, _ in batches])
    noise = torch.stack([torch.randn(xs.shape[1:], generator=torch.Generator().manual_seed(7 * 1_000_003 + i))
                         for i in range(xs.shape[0])])
    for t, got in zip([250.0, 500.0, 750.0], outs[0]["loss"]):
        s = t / 1000
        x_t = (1 - s) * xs + s * noise  # rectified flow: t / N of noise
        velocity = 0.5 * x_t + s
        expected = (velocity - (xs - noise)).pow(2).mean(dim=(1, 2, 3, 4)).mean().item()
        assert got == pytest.approx(expected, rel=1e-5)
    # the batching does not matter: sample indices run over all batches
    one = [(torch.cat([x for x, _ in batches]), {k: torch.cat([m[k] for _, m in batches]) for k in batches[0][1]})]
    assert probe_loss(scheduler(**RECIPES[0]), StubModel(), one, 3, seed=7)["loss"] == pytest.approx(
        outs[0]["loss"], rel=1e-6)


def test_per_sample_noise_ignores_global_rng():
    h, w, f, b, n = BUCKETS[0]
    batches = with_y(held_out_batches(h, w, f, b, n))
    torch.manual_seed(1)
    first = probe_loss(scheduler(**RECIPES[1]), StubModel(), batches, 2)
    torch.manual_seed(2)
    torch.randn(10)
    assert probe_loss(scheduler(**RECIPES[1]), StubModel(), batches, 2) == first
    x = torch.zeros(2, 1, 1, 1, 1)
    assert not torch.equal(sample_noise(x, 0, 1)[1], sample_noise(x, 0, 2)[1])
    assert torch.equal(sample_noise(x, 0, 1)[1], sample_noise(x, 1, 1)[0])


@pytest.mark.parametrize("kwargs, match", [
    (dict(noise="fresh"), "noise='fresh'"), (dict(seed=-1), "seed=-1"), (dict(seed=True), "seed=True"),
    (dict(seed=None), "seed=None"), (dict(seed=1.5), "seed=1.5"), (dict(batches=[]), "batches is empty"),
    (dict(mask=[None, None]), "mask has 2 entries"), (dict(num_eval_timesteps=0), "num_eval_timesteps=0")])
def test_bad_arguments_are_refused(kwargs, match):
    h, w, f, b, n = BUCKETS[1]
    args = dict(batches=with_y(held_out_batches(h, w, f, b, n)))
    args.update(kwargs)
    with pytest.raises(ValueError, match=match):
        probe_loss(scheduler(**RECIPES[0]), StubModel(), **args)


def test_probe_tiny_same_footing_across_policies(capsys):
    """The stand-in's probe: the same initial model under two policies gives the same numbers (t is not shifted)."""
    from probe_tiny import main as probe_tiny

    outs = []
    for name in ("latent", "v13"):
        assert probe_tiny([str(ROOT / "configs" / "tiny" / f"{name}.py"), "--clips", "2",
                           "--num-eval-timesteps", "2"]) == 0
        outs.append(json.loads(capsys.readouterr().out))
    assert outs[0] == outs[1] and set(outs[0]) == {"8", "16", "17", "32", "51"}
    assert probe_tiny([str(ROOT / "configs" / "tiny" / "missing.py")]) == 2
    assert "probe_tiny:" in capsys.readouterr().err
