"""Record Open-Sora 1.x eval_loss.py's numbers on the stand-in, for tests/test_probe.py.

Given an Open-Sora 1.2 or 1.3 checkout (``--checkout``, one per release), this imports its real ``RFLOW``
(``opensora.schedulers.rf``) and runs eval_loss.py's loop (``eval/loss/eval_loss.py``: ``set_random_seed(seed)``
once; for each bucket, for each ``t`` in ``torch.linspace(0, scheduler.num_timesteps, num_eval_timesteps + 2)[1:-1]``,
``scheduler.training_losses(model, x, model_args, mask=None, t=timestep)`` on every batch, loss = sum / samples)
with the stand-in's stub model and fixed latents in place of the VAE and data, configured as
``configs/opensora-v1-*/misc/eval_loss.py`` (``seed = 42``, ``num_eval_timesteps = 10``, ``scheduler =
dict(type="rflow")``, fp32 here). ``--write`` rewrites ``tests/data/eval_loss_goldens.json``::

    python scripts/record_eval_loss_goldens.py --checkout /path/to/os-1.2 --checkout /path/to/os-1.3 --write

Only RFLOW's modules are imported: the ``opensora.schedulers`` and ``.iddpm`` package initialisers (DPMS, IDDPM's
respacing: colossalai) are skipped, and ``einops``, imported by ``gaussian_diffusion`` but not on RFLOW's path, gets
a stand-in whose functions raise where it is not installed.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import types
from pathlib import Path
from typing import Any, Dict, List, Tuple

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.append(str(ROOT))

from standin.stubs import StubModel, batch_meta, latent_shape  # noqa: E402

GOLDENS = ROOT / "tests" / "data" / "eval_loss_goldens.json"
SEED = 42  # configs/opensora-v1-*/misc/eval_loss.py
NUM_EVAL_TIMESTEPS = 10
# (height, width, num_frames, batch size, batches): the held-out buckets
BUCKETS = [(256, 256, 16, 2, 2), (720, 1280, 51, 3, 1)]


def held_out_batches(height: int, width: int, frames: int, batch: int, count: int) -> List[Tuple[torch.Tensor, Dict]]:
    """Fixed latents (a pure function of the bucket) and Open-Sora's meta: the VAE's and loader's place."""
    out = []
    for k in range(count):
        g = torch.Generator().manual_seed(height * 7 + width * 13 + frames * 17 + k)
        x = torch.randn(latent_shape(batch, frames), generator=g)
        out.append((x, batch_meta(batch, height, width, frames)))
    return out


def stock_loop(scheduler: Any, model: Any, batches: List[Tuple[torch.Tensor, Dict]]) -> List[float]:
    """eval_loss.py's per-bucket loop (v1.2 lines 120-147, v1.3 lines 138-167), data and VAE replaced."""
    evaluation_t_losses = []
    for t in torch.linspace(0, scheduler.num_timesteps, NUM_EVAL_TIMESTEPS + 2)[1:-1]:
        loss_t = 0.0
        num_samples = 0
        for x, meta in batches:
            model_args = {"y": torch.zeros(x.shape[0], 1, 2, 4)}
            for k, v in meta.items():
                model_args[k] = v.to(x.device, x.dtype)
            timestep = torch.tensor([t] * x.shape[0], device=x.device, dtype=x.dtype)
            losses = scheduler.training_losses(model, x, model_args, mask=None, t=timestep)["loss"]
            num_samples += x.shape[0]
            loss_t += losses.sum().item()
        loss_t /= num_samples
        evaluation_t_losses.append(loss_t)
    return evaluation_t_losses


def record() -> Dict[str, Any]:
    """This process's release (Open-Sora importable on sys.path): the losses per bucket of the real loop."""
    import importlib.util

    import opensora
    for name in ("opensora.schedulers", "opensora.schedulers.iddpm"):
        # their __init__s import DPMS and IDDPM's respacing (colossalai), which RFLOW never uses
        package = types.ModuleType(name)
        package.__path__ = [str(Path(opensora.__path__[0], *name.split(".")[1:]))]
        sys.modules[name] = package
    if importlib.util.find_spec("einops") is None:
        stand_in = types.ModuleType("einops")

        def unused(*args: Any, **kwargs: Any) -> None:
            raise RuntimeError("einops stand-in: RFLOW's path never calls it")

        stand_in.rearrange = stand_in.repeat = stand_in.reduce = unused
        sys.modules["einops"] = stand_in
    from mmengine.runner import set_random_seed
    from opensora.schedulers.rf import RFLOW
    import opensora.schedulers.rf.rectified_flow as rf_module
    release = "1.3" if hasattr(sys.modules.get("opensora.schedulers.rf.time_sampler"), "timestep_transform") else "1.2"
    scheduler = RFLOW()  # eval_loss.py's dict(type="rflow")
    model = StubModel()
    set_random_seed(seed=SEED)
    buckets = []
    for height, width, frames, batch, count in BUCKETS:
        batches = held_out_batches(height, width, frames, batch, count)
        buckets.append({"height": height, "width": width, "num_frames": frames, "batch_size": batch,
                        "batches": count, "loss": stock_loop(scheduler, model, batches)})
    return {"release": release, "torch": torch.__version__, "seed": SEED, "num_eval_timesteps": NUM_EVAL_TIMESTEPS,
            "num_timesteps": scheduler.num_timesteps, "rflow_file": Path(rf_module.__file__).name,
            "buckets": buckets}


def main(argv: Any = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--checkout", action="append", default=[], help="an Open-Sora 1.2 or 1.3 checkout")
    parser.add_argument("--write", action="store_true", help=f"rewrite {GOLDENS.relative_to(ROOT)}")
    parser.add_argument("--json", action="store_true", help=argparse.SUPPRESS)  # one release, in this process
    args = parser.parse_args(argv)
    if args.json:
        print(json.dumps(record()))
        return 0
    if not args.checkout:
        parser.error("give --checkout PATH (one per release)")
    sections = {}
    for path in args.checkout:
        env_path = str(Path(path).resolve())
        done = subprocess.run([sys.executable, __file__, "--json"], capture_output=True, text=True,
                              env={**os.environ, "PYTHONPATH": env_path})
        if done.returncode != 0:
            print(done.stderr, file=sys.stderr)
            return 1
        section = json.loads(done.stdout)
        sections[section.pop("release")] = section
        print(f"{path}: Open-Sora {list(sections)[-1]} recorded", file=sys.stderr)
    text = json.dumps(sections, indent=1, sort_keys=True) + "\n"
    if args.write:
        GOLDENS.write_text(text)
    else:
        print(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
