"""scripts/train_tiny.py under torchrun (2 gloo ranks): trains, checkpoints, resumes exactly, evaluates; and the
policy comparison in its quick form."""

import json
import os
import subprocess
import sys
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
SMALL = ["model.width=16", "model.depth=2", "evaluation.clips=20", "evaluation.loss_timesteps=2",
         "scheduler.num_sampling_steps=4", "train.ckpt_every=5", "train.batch_size=4"]


def torchrun(work_dir, steps, *extra):
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2",
           str(ROOT / "scripts" / "train_tiny.py"), str(ROOT / "configs" / "tiny" / "latent.py"),
           "--work-dir", str(work_dir), *extra, "--cfg-options", f"train.steps={steps}", *SMALL]
    env = dict(os.environ, OMP_NUM_THREADS="1")
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=600, cwd=ROOT)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    return json.loads(proc.stdout.strip().splitlines()[-1])


def test_trains_checkpoints_resumes_exactly_and_evaluates(tmp_path):
    straight = torchrun(tmp_path / "straight", 10)
    assert straight["world"] == 2 and straight["steps"] == 10 and straight["resumed_from"] == 0
    assert straight["t_zero_fraction"] == 0 and not straight["nonfinite"]
    assert {"heldout_loss", "fd", "nonfinite", "t_mean"} <= set(straight)
    assert sorted(p.name for p in (tmp_path / "straight").glob("ckpt_step*.pt")) == ["ckpt_step10.pt", "ckpt_step5.pt"]

    torchrun(tmp_path / "resumed", 5)
    resumed = torchrun(tmp_path / "resumed", 10, "--resume", "auto")
    assert resumed["resumed_from"] == 5
    a = torch.load(tmp_path / "straight" / "ckpt_step10.pt", weights_only=True)
    b = torch.load(tmp_path / "resumed" / "ckpt_step10.pt", weights_only=True)
    assert a["scheduler"] == b["scheduler"] == {"step": 10, "timestep_seed": 0}
    for key, value in a["model"].items():  # the resumed run continued bit for bit
        assert torch.equal(value, b["model"][key]), key
    assert json.loads((tmp_path / "resumed" / "eval.json").read_text())["heldout_loss"] == straight["heldout_loss"]


def test_compare_policies_quick_shows_the_collapse_and_the_fix(tmp_path):
    proc = subprocess.run([sys.executable, str(ROOT / "scripts" / "compare_policies.py"), "--out", str(tmp_path),
                           "--quick", "--seeds", "1", "--policies", "legacy", "latent"],
                          capture_output=True, text=True, timeout=600, cwd=ROOT)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    results = json.loads((tmp_path / "results.json").read_text())
    legacy, latent = results["summary"]["16f/legacy"], results["summary"]["16f/latent"]
    assert legacy["t_zero_fraction"]["mean"] == 1.0 and all(legacy["nonfinite_runs"])
    assert legacy["fd"]["mean"] is None  # non-finite samples: no FD
    assert latent["t_zero_fraction"]["mean"] == 0.0 and not any(latent["nonfinite_runs"])
    assert latent["heldout_loss"]["mean"] < legacy["heldout_loss"]["mean"]
    mixed = results["summary"]["mixed/legacy"]["t_zero_fraction"]["mean"]
    assert 0 < mixed < 1  # 8- and 16-frame batches collapse, 17, 32 and 51 do not
    assert (tmp_path / "results.png").read_bytes()[:4] == b"\x89PNG"
    assert "| 16f | `legacy` |" in (tmp_path / "results.md").read_text()
