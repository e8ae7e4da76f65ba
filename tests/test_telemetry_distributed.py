"""Telemetry under torchrun: DP x SP = 2 x 2 on gloo, uneven per-rank batches of mixed buckets.

The records equal those of one process fed the same samples (counts and histograms exactly; sums up to float
addition order), and a copy resumed mid-run from each rank's state_dict writes the same lines bit for bit.
"""

import json
import os
import subprocess
import sys
from pathlib import Path

import torch

from opensora_timeshift_patch import SCHEDULERS, build_module
from opensora_timeshift_patch.telemetry import FILE_NAME

WORKER = Path(__file__).with_name("dist_worker.py")


def run(tmp_path):
    out, tel = tmp_path / "result.json", tmp_path / "tel"
    env = dict(os.environ, OMP_NUM_THREADS="1")
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=4", str(WORKER),
           "--sp", "2", "--telemetry", str(tel), "--out", str(out)]
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=600)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    lines = lambda p: (p / FILE_NAME).read_text().splitlines()  # noqa: E731
    return json.loads(out.read_text()), lines(tel), lines(tel / "resumed")


def by_step(lines):
    out = {}
    for line in lines:
        r = json.loads(line)
        out.setdefault(r["step"], []).append(r)
    return out


def test_dp2_sp2_uneven_equals_one_process_and_resume_is_exact(tmp_path):
    result, original, resumed = run(tmp_path)
    records = by_step(original)
    assert sorted(records) == [2, 4, 6, 8]

    # One process fed the same data-parallel samples (each once), reported at the end.
    ref = build_module({**result["cfg"], "telemetry": dict(bins=8, every=10**6, dir=str(tmp_path / "ref"))},
                       SCHEDULERS).telemetry
    for rank_samples in result["samples"]:
        rows = torch.tensor(rank_samples, dtype=torch.float64)
        for latent_t in rows[:, 5].unique():
            part = rows[rows[:, 5] == latent_t]
            t, loss, h, w, f = (part[:, i] for i in range(5))
            ref.observe(t.float(), loss.float(), h, w, f, (int(latent_t), 4, 4), True)
    expected = {(r["rule"], r["height"], r["width"], r["num_frames"]): r for r in ref.report(8)}
    got = {(r["rule"], r["height"], r["width"], r["num_frames"]): r for r in records[8]}
    assert set(got) == set(expected) and len(got) >= 4, (sorted(got), sorted(expected))
    assert any(k[0] == 0 for k in got) and any(k[0] is None for k in got)  # both the rule and the base
    total = sum(len(s) for s in result["samples"])
    assert sum(r["samples"] for r in got.values()) == total
    for key, r in got.items():
        e = expected[key]
        assert r["count"] == e["count"] and r["drawn"] == e["drawn"], key
        assert r["expected"] == e["expected"], key
        for field in ("sum", "sumsq"):  # float addition is not associative: ranks add, then all_reduce adds
            assert torch.allclose(torch.tensor(r[field]), torch.tensor(e[field]), rtol=1e-12, atol=1e-12), key

    # The resumed copy (each rank its own state at step 3) writes exactly the original's lines from then on.
    assert resumed == [line for line in original if json.loads(line)["step"] > 3]
