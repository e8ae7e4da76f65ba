"""Check rflow-timeshift against the real Open-Sora 1.2 or 1.3 scheduler code.

Run with an Open-Sora checkout importable (e.g. ``PYTHONPATH=/path/to/Open-Sora``) in an environment that
can import ``opensora.schedulers`` (torch, mmengine, colossalai, einops). It compares, bit for bit:

* the stock ``timestep_transform`` against ours (``latent`` against 1.2, ``v13`` against 1.3) where stock is right;
* stock ``rflow`` against ``rflow-timeshift`` (both backends) built through Open-Sora's registry: the training
  timesteps, the loss and the sampling schedule, from the same RNG state;

then shows what stock does to 16-frame clips, and prints the numbers the test-suite keeps as goldens
(``tests/test_opensora_golden.py``). Exit status 1 when any parity check fails.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import torch
from mmengine.config import Config

import opensora_timeshift_patch as ots
from opensora_timeshift_patch.registry import build_module
from opensora_timeshift_patch.testing import StubModel, batch_meta as meta, latent_shape, run_sampling, run_training

RESOLUTIONS = [(144, 256), (256, 256), (480, 854), (512, 512), (720, 1280)]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--json", action="store_true", help="print only the golden numbers as JSON")
    args = parser.parse_args()

    from opensora.registry import SCHEDULERS
    from opensora.schedulers import rf

    v13 = hasattr(sys.modules.get("opensora.schedulers.rf.time_sampler"), "timestep_transform")
    version, mode = ("1.3", "v13") if v13 else ("1.2", "latent")
    failures = []

    def check(name, ok):
        if not ok:
            failures.append(name)
        if not args.json:
            print(f"{'ok  ' if ok else 'FAIL'} {name}")

    # 1. The transform, where stock is right: 17k-frame clips and images for 1.2, n >= 5 and images for 1.3.
    frames = [1, 5, 9, 16, 17, 33, 51, 113, 204] if v13 else [1, 17, 34, 51, 68, 102, 204]
    t = torch.linspace(0, 1000, 21)
    for h, w in RESOLUTIONS:
        for n in frames:
            kw = meta(len(t), h, w, n)
            stock = rf.timestep_transform(t, kw, num_timesteps=1000)
            ours = ots.timestep_transform(t, kw, num_timesteps=1000, shift_mode=mode, scale_images=not v13)
            check(f"transform {h}x{w} n={n}", torch.equal(stock, ours))

    # 2. Training and sampling through the registry, same RNG state.
    goldens = {"version": version, "torch": torch.__version__, "training": [], "sampling": []}
    for sample_method in ("uniform", "logit-normal"):
        for n, (h, w) in ((17, (256, 256)), (51, (720, 1280)), (1, (512, 512))):
            x = torch.randn(*latent_shape(3, n), generator=torch.Generator().manual_seed(1))
            stock = build_module(dict(type="rflow", use_timestep_transform=True, sample_method=sample_method),
                                 SCHEDULERS)
            t_stock, loss_stock = run_training(stock, x, meta(3, h, w, n), seed=0)
            for backend in ("opensora", "standalone"):
                ours = build_module(dict(type="rflow-timeshift", shift_mode=mode, sample_method=sample_method,
                                         backend=backend, scale_images=not v13), SCHEDULERS)
                t_ours, loss_ours = run_training(ours, x, meta(3, h, w, n), seed=0)
                check(f"training {sample_method} n={n} {h}x{w} {backend}: t",
                      torch.equal(t_stock.float(), t_ours.float()))
                check(f"training {sample_method} n={n} {h}x{w} {backend}: loss", torch.equal(loss_stock, loss_ours))
            goldens["training"].append(dict(sample_method=sample_method, num_frames=n, height=h, width=w,
                                            t=t_stock.tolist(), loss=loss_stock.tolist()))

    for n, (h, w) in ((17, (256, 256)), (51, (720, 1280)), (1, (512, 512))):
        z = torch.randn(*latent_shape(2, n), generator=torch.Generator().manual_seed(2))
        stock = build_module(dict(type="rflow", use_timestep_transform=True, num_sampling_steps=5), SCHEDULERS)
        ts_stock, z_stock = run_sampling(stock, z, meta(2, h, w, n))
        for backend in ("opensora", "standalone"):
            ours = build_module(dict(type="rflow-timeshift", shift_mode=mode, num_sampling_steps=5, backend=backend),
                                SCHEDULERS)
            ts_ours, z_ours = run_sampling(ours, z, meta(2, h, w, n))
            check(f"sampling n={n} {h}x{w} {backend}: schedule",
                  all(torch.equal(a, b) for a, b in zip(ts_stock, ts_ours)) and len(ts_stock) == len(ts_ours))
            check(f"sampling n={n} {h}x{w} {backend}: output", torch.equal(z_stock, z_ours))
        goldens["sampling"].append(dict(num_frames=n, height=h, width=w, timesteps=[t[0].item() for t in ts_stock],
                                        z_sum=z_stock.double().sum().item()))

    # 3. What stock does to 16-frame clips, and what frames16 does instead.
    x = torch.randn(*latent_shape(4, 16), generator=torch.Generator().manual_seed(3))
    stock = build_module(dict(type="rflow", use_timestep_transform=True), SCHEDULERS)
    t16, _ = run_training(stock, x, meta(4, 256, 256, 16), seed=0)
    ts16, z16 = run_sampling(build_module(dict(type="rflow", use_timestep_transform=True, num_sampling_steps=5),
                                          SCHEDULERS), x[:2], meta(2, 256, 256, 16))
    fixed = build_module(dict(type="rflow-timeshift", shift_mode="frames16"), SCHEDULERS)
    t_fixed, _ = run_training(fixed, x, meta(4, 256, 256, 16), seed=0)
    goldens["sixteen_frames"] = dict(stock_training_t=t16.tolist(), stock_sampling_t=[t[0].item() for t in ts16],
                                     stock_sample_finite=bool(torch.isfinite(z16).all()))
    cfg = Config.fromfile(str(Path(__file__).resolve().parents[1] / "configs" / "policies" / "frames16.py"))
    from_config = build_module(cfg.scheduler, SCHEDULERS, num_sampling_steps=5)
    t_cfg, loss_cfg = run_training(from_config, x, meta(4, 512, 512, 16), seed=0)
    check("config frames16 trains 16 frames at real noise levels", bool(((t_cfg > 0) & (t_cfg < 1000)).all()))
    steps_cfg, z_cfg = run_sampling(from_config, x[:2], meta(2, 512, 512, 16))
    grid = torch.stack([s[0] for s in steps_cfg])
    check("config frames16 samples finite, strictly decreasing timesteps",
          bool(grid.isfinite().all() and (grid.diff() < 0).all() and z_cfg.isfinite().all()))
    try:
        build_module(dict(type="rflow-timeshift", shift_mode="legacy"), SCHEDULERS).training_losses(
            StubModel(), x, meta(4, 256, 256, 16))
        check("legacy + error refuses 16 frames", False)
    except ValueError as err:
        check("legacy + error refuses 16 frames", "shift_mode='latent'" in str(err))

    # 4. patch(): plain type="rflow" gets the policy, unpatch() restores the original object.
    original = rf.timestep_transform
    ots.patch(shift_mode="frames16")
    t_patched, _ = run_training(stock, x, meta(4, 256, 256, 16), seed=0)
    ots.unpatch()
    check("patch: stock rflow trains 16 frames like frames16", torch.equal(t_patched, t_fixed))
    check("unpatch restores the original", rf.timestep_transform is original)

    if v13:
        goldens["v13_flags"] = check_v13_flags(SCHEDULERS, check)

    if args.json:
        print(json.dumps(goldens, indent=1))
    else:
        print(f"\nOpen-Sora {version}, torch {torch.__version__}: {len(failures)} parity failure(s)")
        print(f"stock on 16 frames: training t = {t16.tolist()}, sampling t = {goldens['sixteen_frames']['stock_sampling_t']}")
        print(f"frames16 on 16 frames: training t = {t_fixed.tolist()}")
    return 1 if failures else 0


def check_v13_flags(SCHEDULERS, check):
    """Open-Sora 1.3's own flags and call keywords, as its configs and train.py use them; returns stock's numbers."""
    out = {}
    # scale_temporal=False: stock treats the batch as images, so transform_scale does not apply.
    z = torch.randn(*latent_shape(2, 51), generator=torch.Generator().manual_seed(2))
    flags = dict(use_timestep_transform=True, num_sampling_steps=4, transform_scale=2.0, scale_temporal=False)
    ts_stock, _ = run_sampling(build_module(dict(type="rflow", **flags), SCHEDULERS), z, meta(2, 720, 1280, 51))
    for backend in ("opensora", "standalone"):
        ts_ours, _ = run_sampling(build_module(dict(type="rflow-timeshift", backend=backend, **flags), SCHEDULERS),
                                  z, meta(2, 720, 1280, 51))
        check(f"scale_temporal=False, transform_scale=2 {backend}: schedule",
              all(torch.equal(a, b) for a, b in zip(ts_stock, ts_ours)))
    out["scale_temporal_false_sampling_t"] = [t[0].item() for t in ts_stock]

    # uniform_over_threshold: stock draws its redraw uniforms only for video batches; the RNG after must agree.
    for n in (1, 51):
        x = torch.randn(*latent_shape(3, n), generator=torch.Generator().manual_seed(1))
        flags = dict(use_timestep_transform=True, uniform_over_threshold=0.5)
        results = {}
        for name, cfg in (("stock", dict(type="rflow", **flags)),
                          ("ours", dict(type="rflow-timeshift", shift_mode="v13", scale_images=False,
                                        backend="standalone", **flags))):
            t, loss = run_training(build_module(cfg, SCHEDULERS), x, meta(3, 512, 512, n), seed=0)
            results[name] = (t, loss, torch.rand(2))
        stock, ours = results["stock"], results["ours"]
        check(f"uniform_over_threshold n={n}: t, loss and the next random numbers",
              torch.equal(stock[0], ours[0]) and torch.equal(stock[1], ours[1]) and torch.equal(stock[2], ours[2]))
        out[f"uniform_over_threshold_{n}f"] = dict(t=stock[0].tolist(), next_rand=stock[2].tolist())

    # train.py's call: model_args=, mask_index=[], x_gt, noise_disable_threshold, text_uncond_prob, x_noisy_ref.
    x = torch.randn(*latent_shape(3, 17), generator=torch.Generator().manual_seed(1))
    x_gt = torch.randn(*latent_shape(3, 17), generator=torch.Generator().manual_seed(4))
    call = dict(model_args=meta(3, 256, 256, 17), mask=None, mask_index=[], x_gt=x_gt, noise_disable_threshold=500,
                text_uncond_prob=0.0, x_noisy_ref=x)
    losses = {}
    for name, cfg in (("stock", dict(type="rflow", use_timestep_transform=True)),
                      ("standalone", dict(type="rflow-timeshift", shift_mode="v13", backend="standalone"))):
        torch.manual_seed(0)
        losses[name] = build_module(cfg, SCHEDULERS).training_losses(StubModel(), x.clone(), **call)["loss"]
    check("1.3 train.py call on the standalone backend: loss", torch.equal(losses["stock"], losses["standalone"]))
    out["train_call_loss"] = losses["stock"].tolist()
    return out


if __name__ == "__main__":
    sys.exit(main())
