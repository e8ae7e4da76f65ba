"""Check rflow-timeshift against the real Open-Sora 1.2, 1.3 or 2.0 code.

Run with an Open-Sora checkout importable (e.g. ``PYTHONPATH=/path/to/Open-Sora``) in an environment that
can import ``opensora.schedulers`` (torch, mmengine, colossalai, einops). It compares, bit for bit:

* the stock ``timestep_transform`` against ours (``latent`` against 1.2, ``v13`` against 1.3) where stock is right;
* stock ``rflow`` against ``rflow-timeshift`` (both backends) built through Open-Sora's registry: the training
  timesteps, the loss and the sampling schedule, from the same RNG state;

then shows what stock does to 16-frame clips. Exit status 1 when any check fails.

With Open-Sora 2.0 (branch ``main``; Python 3.10+) it checks ``opensora.utils.sampling`` and ``opensora.utils.config``
instead (:func:`check_opensora2`): stock's shift factor, ``time_shift`` and ``get_schedule`` against ours, and the
test-suite's script shaped like 2.0's ``train.py`` run on the real package, stock and with the config lines. 2.0's
``opensora.utils.sampling`` imports GPU-only packages (flash-attn, liger-kernel, tensornvme) that the checked
functions never call; where they are not installed, empty stand-ins are imported in their place.

The numbers stock gives are the test-suite's goldens (``tests/data/opensora_golden.json``, read by
``tests/test_opensora_golden.py`` and ``tests/test_opensora2.py``). ``--json`` prints this release's section. The
file is written by one command, which runs this script once per checkout (``PYTHONPATH`` set to each) and rewrites
the whole file only when every check of every release passed::

    python scripts/check_against_opensora.py --checkout /path/to/os-1.2 --checkout /path/to/os-1.3 \
        --checkout /path/to/os-2.0 --write-goldens
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import math
import os
import subprocess
import sys
import tempfile
from pathlib import Path

import torch
from mmengine.config import Config

ROOT = Path(__file__).resolve().parents[1]
sys.path.append(str(ROOT))  # standin/, the stub model, is not installed (nor, in a bare checkout, the package)

import opensora_timeshift_patch as ots  # noqa: E402
from opensora_timeshift_patch import build_module  # noqa: E402
from standin.stubs import StubModel, batch_meta as meta, latent_shape, run_sampling, run_training  # noqa: E402

RESOLUTIONS = [(144, 256), (256, 256), (480, 854), (512, 512), (720, 1280)]
GOLDENS = ROOT / "tests" / "data" / "opensora_golden.json"
RELEASES = ("1.2", "1.3", "2.0")


class Checker:
    """Records checks: ``check(name, ok)`` prints one line (to stderr with ``quiet``, where stdout is the JSON)."""

    def __init__(self, quiet: bool = False) -> None:
        self.count, self.failures, self.quiet = 0, [], quiet

    def __call__(self, name: str, ok: bool) -> None:
        self.count += 1
        if not ok:
            self.failures.append(name)
        if not ok or not self.quiet:
            print(f"{'ok  ' if ok else 'FAIL'} {name}", file=sys.stderr if self.quiet else sys.stdout)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--json", action="store_true",
                        help="print this release's goldens as JSON ({section: numbers}); failed checks go to stderr")
    parser.add_argument("--checkout", action="append", default=[], metavar="DIR",
                        help="an Open-Sora checkout to check in its own process (repeatable); without it, the "
                             "Open-Sora importable here")
    parser.add_argument("--write-goldens", nargs="?", const=str(GOLDENS), metavar="PATH",
                        help=f"with a --checkout of each of Open-Sora {', '.join(RELEASES)}: rewrite the goldens "
                             f"file (default {GOLDENS.relative_to(ROOT)}) from their numbers, if every check passed")
    args = parser.parse_args()
    if args.checkout:
        return check_checkouts(args.checkout, args.write_goldens)
    if args.write_goldens:
        parser.error(f"--write-goldens needs --checkout for each of Open-Sora {', '.join(RELEASES)}: the file "
                     "holds all three, and is rewritten whole")

    check = Checker(quiet=args.json)
    if importlib.util.find_spec("opensora.utils.config") is not None:  # 2.0 only (1.x has config_utils)
        version, goldens = "2.0", check_opensora2(check)
    else:
        version, goldens = check_opensora1(check)
    goldens = {"version": version, "torch": torch.__version__, "checks": check.count, **goldens}
    if args.json:
        print(json.dumps({f"opensora_{version}": goldens}, indent=1))
    else:
        print(f"\nOpen-Sora {version}, torch {torch.__version__}: {check.count} checks, "
              f"{len(check.failures)} failed")
    return 1 if check.failures else 0


def check_checkouts(checkouts, write_to) -> int:
    """This script on each checkout in its own process; with ``write_to``, the goldens file rewritten from all of
    them once every check passed."""
    sections, failed = {}, False
    for checkout in checkouts:
        path = Path(checkout).resolve()
        if not (path / "opensora").is_dir():
            print(f"--checkout {checkout}: no opensora package in it (a clone of hpcaitech/Open-Sora holds one)",
                  file=sys.stderr)
            return 2
        env = dict(os.environ, PYTHONPATH=os.pathsep.join(filter(None, [str(path), str(ROOT),
                                                                        os.environ.get("PYTHONPATH")])))
        done = subprocess.run([sys.executable, str(Path(__file__).resolve()), "--json"], env=env, cwd=str(ROOT),
                              stdout=subprocess.PIPE, text=True)
        try:
            (name, goldens), = json.loads(done.stdout).items()
        except ValueError:
            print(f"{checkout}: the check did not finish (exit status {done.returncode})", file=sys.stderr)
            return 1
        failed |= done.returncode != 0
        print(f"Open-Sora {goldens['version']} ({checkout}): {goldens['checks']} checks, "
              f"{'some failed (above)' if done.returncode else 'all passed'}")
        if name in sections:
            print(f"{checkout}: a second checkout of Open-Sora {goldens['version']}", file=sys.stderr)
            return 2
        sections[name] = goldens
    if failed or not write_to:
        return 1 if failed else 0
    missing = [v for v in RELEASES if f"opensora_{v}" not in sections]
    if missing:
        print(f"--write-goldens: no checkout of Open-Sora {', '.join(missing)}; the file holds every release, so "
              "it is left as it is", file=sys.stderr)
        return 2
    Path(write_to).write_text(json.dumps({f"opensora_{v}": sections[f"opensora_{v}"] for v in RELEASES}, indent=1)
                              + "\n")
    print(f"wrote {write_to}")
    return 0


def check_opensora1(check):
    """Open-Sora 1.2 or 1.3, whichever is importable: its version and stock's numbers."""
    from opensora.registry import SCHEDULERS
    from opensora.schedulers import rf

    v13 = hasattr(sys.modules.get("opensora.schedulers.rf.time_sampler"), "timestep_transform")
    version, mode = ("1.3", "v13") if v13 else ("1.2", "latent")

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
    goldens = {"training": [], "sampling": []}
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

    if not check.quiet:
        print(f"stock on 16 frames: training t = {t16.tolist()}, sampling t = {goldens['sixteen_frames']['stock_sampling_t']}")
        print(f"frames16 on 16 frames: training t = {t_fixed.tolist()}")
    return version, goldens


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


GPU_ONLY_STANDINS = """
import importlib.abc, importlib.machinery, importlib.util, sys, types
_MISSING = [m for m in ("flash_attn", "liger_kernel", "tensornvme") if importlib.util.find_spec(m) is None]
class _StandIn(types.ModuleType):
    def __getattr__(self, name):
        if name.startswith("__"):
            raise AttributeError(name)
        return type(name, (), {"__init__": lambda self, *a, **k: None})
class _Finder(importlib.abc.MetaPathFinder, importlib.abc.Loader):
    def find_spec(self, name, path, target=None):
        if name.split(".")[0] in _MISSING:
            return importlib.machinery.ModuleSpec(name, self, is_package=True)
    def create_module(self, spec):
        module = _StandIn(spec.name)
        module.__path__ = []
        return module
    def exec_module(self, module):
        pass
sys.meta_path.insert(0, _Finder())
"""

# Buckets as 2.0 trains them: latent (T, H, W) of its causal VAE (8x spatial) at 256px and 768px, images to 129
# frames; and inference calls (steps, tokens, latent frames).
LATENTS_2 = [(1, 32, 32), (5, 32, 32), (33, 32, 32), (1, 96, 96), (9, 96, 96), (1, 24, 40), (17, 30, 54), (3, 8, 8)]
SCHEDULES_2 = [(10, 256, 1), (10, 1024, 33), (50, 2304, 1), (5, 64, 9), (4, 16, 5)]


def check_opensora2(check):
    """Open-Sora 2.0: the formulas in-process, then the test-suite's 2.0-shaped train.py on the real package;
    returns stock's numbers."""
    exec(GPU_ONLY_STANDINS, {})
    from opensora.utils import config as os_config
    from opensora.utils import sampling

    check("importing the package wrapped 2.0's merge_args", getattr(os_config.merge_args, "__opensora_timeshift__",
                                                                    False))
    stock_merge_args = ots.opensora2._original(os_config, "merge_args")
    ours = ots.Opensora2Timesteps()
    goldens = {"alpha": [], "time_shift": [], "schedules": []}
    t = torch.linspace(0, 1, 21)
    for frames, h, w in LATENTS_2:
        alpha = sampling.get_res_lin_function()((h * w) // 4) * math.sqrt(frames)  # train.py's lines
        mine = ours.factor(frames, (h * w) // 4)
        check(f"training alpha T={frames} {h}x{w}: {alpha!r}", mine == alpha)
        stock_t = sampling.time_shift(alpha, t)
        check(f"training time_shift T={frames} {h}x{w}", torch.equal(stock_t, ours.training_timesteps(t, (frames, h, w))))
        goldens["alpha"].append(dict(latent=[frames, h, w], alpha=alpha))
        goldens["time_shift"].append(dict(latent=[frames, h, w], t=stock_t.tolist()))
    for steps, tokens, frames in SCHEDULES_2:
        stock = sampling.get_schedule(steps, tokens, frames)
        check(f"get_schedule({steps}, {tokens}, {frames})", stock == ours.schedule(steps, tokens, frames))
        goldens["schedules"].append(dict(num_steps=steps, image_seq_len=tokens, num_frames=frames, timesteps=stock))

    # The hooks on the real modules: get_schedule follows the settings; flow_shift and shift=False stay stock.
    stock_schedule = sampling.get_schedule
    ots.opensora2.install(dict(scheduler=dict(type="rflow-timeshift", shift_mode="spatial")))
    check("inference hook: shift_mode='spatial' drops sqrt(T)",
          sampling.get_schedule(10, 1024, 33) == stock_schedule(10, 1024, 1))
    check("inference hook: flow_shift keeps stock's meaning",
          sampling.get_schedule(10, 1024, 33, shift_alpha=5.0) == stock_schedule(10, 1024, 33, shift_alpha=5.0))
    check("inference hook: shift=False keeps stock's meaning",
          sampling.get_schedule(10, 1024, 33, shift=False) == stock_schedule(10, 1024, 33, shift=False))
    ots.unpatch()
    check("unpatch restores get_schedule and merge_args",
          sampling.get_schedule is stock_schedule and os_config.merge_args is stock_merge_args)

    check_opensora2_script(check, goldens)
    return goldens


def check_opensora2_script(check, goldens) -> None:
    """The test-suite's train.py shaped like 2.0's, on the real opensora package, one and two ranks."""
    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
    from fake_opensora import TRAIN_2

    buckets = [(4, 1, 256, 256), (2, 33, 256, 256), (3, 17, 768, 768), (2, 129, 256, 256)]
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        (root / "train.py").write_text(TRAIN_2)
        (root / "run.py").write_text(GPU_ONLY_STANDINS + "import runpy\nsys.argv.pop(0)\n"
                                     f"runpy.run_path({str(root / 'train.py')!r}, run_name='__main__')\n")
        imports = 'custom_imports = dict(imports=["opensora_timeshift_patch"], allow_failed_imports=False)\n'

        def run(name, lines, ranks=1, epochs=1, **extra):
            cfg = root / f"{name}.py"
            cfg.write_text(f"buckets = {buckets!r}\nepochs = {epochs}\nout = {str(root / name)!r} + '_{{rank}}.json'\n"
                           + "".join(f"{k} = {v!r}\n" for k, v in extra.items()) + lines)
            runner = [sys.executable, str(root / "run.py")] if ranks == 1 else [
                sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", str(ranks), str(root / "run.py")]
            done = subprocess.run(runner + ["train.py", str(cfg)], capture_output=True, text=True, cwd=root,
                                  env={**os.environ, "PYTHONWARNINGS": "ignore"})
            if done.returncode != 0:
                raise RuntimeError(f"{name} failed:\n{done.stderr[-3000:]}")
            return [json.loads((root / f"{name}_{r}.json").read_text()) for r in range(ranks)], done.stderr

        stock, _ = run("stock", "")
        imported, _ = run("imported", imports)
        check("2.0 train.py: importing the package without a scheduler key changes nothing", imported == stock)
        plain, log = run("plain", imports + 'scheduler = dict(type="rflow-timeshift")\n')
        check("2.0 train.py: scheduler = dict(type='rflow-timeshift') gives stock's bits", plain == stock)
        check("2.0 train.py: rank 0 says once what was replaced", log.count("train.py's time_shift replaced") == 1)
        legacy, _ = run("legacy", imports + 'scheduler = dict(type="rflow-timeshift", shift_mode="legacy", '
                                            'on_degenerate="clamp")\n')
        expected = []  # stock's draws, shifted by hand: T_eff = n // 17 * 5 (1 when 0), alpha lin(tokens) sqrt(T_eff)
        for (bs, n, h, w), s, l in zip(buckets, stock[0], legacy[0]):
            tokens = (h // 8) * (w // 8) // 4
            a = (2 / 3840 * tokens + (1 - 2 / 3840 * 256)) * math.sqrt(max(n // 17 * 5, 1) if n > 1 else 1)
            t_stock = torch.tensor(s["t"])  # shifted by stock: recover its draw by inverting the shift
            a_stock = (2 / 3840 * tokens + (1 - 2 / 3840 * 256)) * math.sqrt(1 + (n - 1) // 4)
            u = t_stock / (a_stock - (a_stock - 1) * t_stock)
            expected.append(a * u / (1 + (a - 1) * u))
        check("2.0 train.py: shift_mode='legacy' shifts stock's draws by n // 17 * 5",
              all(torch.allclose(torch.tensor(l["t"]), e, atol=1e-6) for l, e in zip(legacy[0], expected)))
        two_stock, _ = run("two_stock", "", ranks=2)
        check("2.0 train.py, 2 ranks: stock draws the same t on both", two_stock[0] == two_stock[1])
        two, _ = run("two", imports + 'scheduler = dict(type="rflow-timeshift", timestep_rng="per_sample", '
                                      'stratified=True)\n', ranks=2, epochs=2)
        check("2.0 train.py, 2 ranks: per_sample draws different t on each",
              all(a["t"] != b["t"] for a, b in zip(two[0], two[1])))
        resumed, _ = run("resumed", imports + 'scheduler = dict(type="rflow-timeshift", timestep_rng="per_sample", '
                                              'stratified=True)\n', ranks=2, epochs=2, start_epoch=1, start_step=2)
        check("2.0 train.py, 2 ranks: a resumed run draws what the uninterrupted one drew",
              all(resumed[r] == two[r][-len(resumed[r]):] for r in range(2)))
        goldens["train_script_buckets"] = buckets
        goldens["train_script_stock_t"] = stock[0]


if __name__ == "__main__":
    sys.exit(main())
