"""Train the stand-in model under each timestep policy, on mixed-length and 16-frame data, and compare.

    python scripts/compare_policies.py --out results/            # about 10 minutes on 2 CPU cores
    python scripts/compare_policies.py --out results/ --quick    # under 2 minutes: a smoke test, not evidence
    python scripts/compare_policies.py --out results/weightings --weightings none sigma_sqrt cosmap min_snr debiased

Policies: ``legacy`` with ``on_degenerate="ignore"`` (stock Open-Sora 1.2), ``spatial``, ``frames16``, ``v13``,
``latent`` and ``continuous`` (configs/tiny/<policy>.py). Datasets: ``mixed`` (8, 16, 17, 32 and 51 frames) and
``16f`` (16 frames only). Every (policy, dataset) is trained from the same initial weights for each seed, with
scripts/train_tiny.py's loop in this process, and evaluated with its held-out loss (lower is better), the
Fréchet distance of sampled clips to held-out clips in random-conv features (lower is better; for scale, real vs
real and real vs pure noise are reported too) and whether sampling produced non-finite values.

Writes ``results.json`` (every run, and per policy and dataset the mean and standard deviation over seeds; strict
JSON, with ``null`` where a number is not finite, e.g. the FD of a run whose samples blew up), ``results.md`` (the
table) and ``results.png`` (the figure) into ``--out``.

``--weightings`` compares loss weightings instead (``loss_weighting``, on the ``latent`` policy and the ``mixed``
data; the held-out loss stays the unweighted one, so the runs are comparable).
"""

from __future__ import annotations

import argparse
import json
import math
import statistics
import sys
import time
from pathlib import Path
from typing import Any, Dict, List, Optional

import torch
from mmengine.config import Config

from train_tiny import EVAL_SEED_OFFSET, train

from opensora_timeshift_patch.settings import WEIGHTINGS

ROOT = Path(__file__).resolve().parents[1]
sys.path.append(str(ROOT))  # standin/, the stand-in model and data, is not installed with the plugin
from standin.tiny import BouncingBlobs, RandomFeatures, features_by_length, frechet_distance  # noqa: E402

POLICIES = ["legacy", "spatial", "frames16", "v13", "latent", "continuous"]
DATASETS = {"mixed": [8, 16, 17, 32, 51], "16f": [16]}
QUICK = {"train.steps": 40, "train.ckpt_every": 40, "evaluation.clips": 40, "model.width": 32,
         "scheduler.num_sampling_steps": 8, "evaluation.loss_timesteps": 4}
METRICS = ["heldout_loss", "fd", "t_zero_fraction", "nonfinite"]


def reference_fd(frames: List[int], clips: int) -> Dict[str, float]:
    """FD of held-out clips against other real clips and against noise: the scale of the metric."""
    heldout = BouncingBlobs(frames, seed=EVAL_SEED_OFFSET)
    other = BouncingBlobs(frames, seed=EVAL_SEED_OFFSET + 1)
    real = [heldout.batch(range(clips), n)[0] for n in frames]
    real2 = [other.batch(range(clips), n)[0] for n in frames]
    noise = [torch.randn(x.shape, generator=torch.Generator().manual_seed(7)) for x in real]
    net = RandomFeatures()
    f_real = features_by_length(real, net)
    return {"real_vs_real": frechet_distance(f_real, features_by_length(real2, net)),
            "real_vs_noise": frechet_distance(f_real, features_by_length(noise, net))}


def summarise(values: List[Optional[float]]) -> Dict[str, Any]:
    finite = [v for v in values if v is not None and math.isfinite(v)]  # None: a non-finite value read back
    if len(finite) < len(values):  # a non-finite run makes the mean meaningless: say so instead
        return {"mean": None, "std": None, "nonfinite_runs": len(values) - len(finite)}
    return {"mean": statistics.fmean(values), "std": statistics.pstdev(values) if len(values) > 1 else 0.0}


def finite_or_none(value: Any) -> Any:
    """``value`` with every non-finite float (NaN, inf) replaced by None, through dicts, lists and tuples."""
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, dict):
        return {key: finite_or_none(v) for key, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [finite_or_none(v) for v in value]
    return value


def results_json(results: Dict[str, Any]) -> str:
    """Strict JSON for ``results``: non-finite floats become ``null``.

    ``allow_nan=False`` and no ``default`` hook: anything left that JSON cannot represent raises instead of
    being written as a bare ``NaN`` or silently as ``null``.
    """
    return json.dumps(finite_or_none(results), indent=1, allow_nan=False)


def number(value: Optional[float], digits: int) -> str:
    """A table number; None (a non-finite value, or one read back from results.json as null) says so."""
    return "non-finite" if value is None or not math.isfinite(value) else f"{value:.{digits}f}"


def markdown(summary: Dict[str, Dict[str, Any]], reference: Dict[str, Dict[str, float]], seeds: int) -> str:
    lines = [f"Mean ± standard deviation over {seeds} seeds. Held-out loss: flow-matching loss at uniformly spaced t "
             "(lower is better). FD: Fréchet distance of sampled to held-out clips in random-conv features (lower is "
             "better). t = 0: the fraction of training timesteps that were exactly 0.", ""]
    lines.append("| dataset | policy | held-out loss | FD | t = 0 | non-finite samples |")
    lines.append("|---|---|---|---|---|---|")
    for key, s in summary.items():
        dataset, policy = key.split("/")
        cell = lambda m, d=3: ("non-finite" if s[m]["mean"] is None  # noqa: E731
                               else f"{s[m]['mean']:.{d}f} ± {s[m]['std']:.{d}f}")
        nonfinite = sum(s["nonfinite_runs"])
        lines.append(f"| {dataset} | `{policy}` | {cell('heldout_loss')} | {cell('fd', 4)} | "
                     f"{number(s['t_zero_fraction']['mean'], 2)} | {nonfinite}/{len(s['nonfinite_runs'])} runs |")
    lines.append("")
    for dataset, ref in reference.items():
        lines.append(f"FD scale on `{dataset}`: real vs real {number(ref['real_vs_real'], 4)}, real vs noise "
                     f"{number(ref['real_vs_noise'], 4)}.")
    return "\n".join(lines) + "\n"


def figure(summary: Dict[str, Dict[str, Any]], reference: Dict[str, Dict[str, float]], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(12, 4.2))
    width = 0.38
    for ax, metric, title in ((axes[0], "heldout_loss", "held-out loss (uniform t)"),
                              (axes[1], "fd", "FD of sampled clips (random features)")):
        labels = list(dict.fromkeys(key.split("/")[1] for key in summary))
        for j, dataset in enumerate(dict.fromkeys(key.split("/")[0] for key in summary)):
            xs, heights, errs, bad = [], [], [], []
            for i, policy in enumerate(labels):
                s = summary.get(f"{dataset}/{policy}")
                if s is None:
                    continue
                x = i + (j - 0.5) * width
                if s[metric]["mean"] is None:
                    bad.append(x)
                    continue
                xs.append(x)
                heights.append(s[metric]["mean"])
                errs.append(s[metric]["std"])
            ax.bar(xs, heights, width, yerr=errs, capsize=3, label=dataset)
            for x in bad:  # no bar: the samples blew up, so there is no distance to draw
                ax.text(x, 0, f"non-finite ({dataset})", rotation=90, ha="center", va="bottom", fontsize=8,
                        color="crimson")
        if metric == "fd":
            for dataset, ref in reference.items():
                if ref["real_vs_noise"] is None:  # non-finite, written as null: no line to draw
                    continue
                ax.axhline(ref["real_vs_noise"], ls=":", lw=1, color="grey")
                ax.text(len(labels) - 0.5, ref["real_vs_noise"], f"pure noise ({dataset})", ha="right",
                        va="bottom", fontsize=8, color="grey")
        ax.set_xlim(-0.7, len(labels) - 0.3)
        ax.set_xticks(range(len(labels)))
        long_labels = max(map(len, labels)) > 10
        ax.set_xticklabels(labels, rotation=20 if long_labels else 0, ha="right" if long_labels else "center")
        ax.set_title(title)
        ax.legend(title="dataset")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def redraw(out: Path) -> None:
    """Rewrite results.md and results.png from an existing results.json."""
    results = json.loads((out / "results.json").read_text())
    (out / "results.md").write_text(markdown(results["summary"], results["reference_fd"], results["seeds"]))
    figure(results["summary"], results["reference_fd"], out / "results.png")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", required=True, help="directory for results.json, results.md, results.png")
    parser.add_argument("--seeds", type=int, default=2, help="training seeds per policy and dataset (default 2)")
    parser.add_argument("--quick", action="store_true", help="a short smoke run (under 2 minutes), for CI")
    parser.add_argument("--policies", nargs="+", choices=POLICIES, default=POLICIES)
    parser.add_argument("--weightings", nargs="+", choices=list(WEIGHTINGS), default=None,
                        help="compare these loss weightings (latent policy, mixed data) instead of the policies")
    parser.add_argument("--redraw", action="store_true", help="only rewrite the table and figure from results.json")
    args = parser.parse_args()
    out = Path(args.out)
    if args.redraw:
        redraw(out)
        return 0
    out.mkdir(parents=True, exist_ok=True)
    torch.set_num_threads(min(2, torch.get_num_threads()))

    # (label, policy config, overrides): the policies, or one policy under each loss weighting.
    if args.weightings:
        variants = [(f"latent+{w}", "latent", {"scheduler.loss_weighting": w}) for w in args.weightings]
        datasets = {"mixed": DATASETS["mixed"]}
    else:
        variants = [(policy, policy, {}) for policy in args.policies]
        datasets = DATASETS
    runs, started = [], time.time()
    total = len(datasets) * len(variants) * args.seeds
    for dataset, frames in datasets.items():
        for label, policy, overrides in variants:
            for seed in range(args.seeds):
                cfg = Config.fromfile(str(ROOT / "configs" / "tiny" / f"{policy}.py"))
                cfg.merge_from_dict({"seed": seed, "dataset.frames": frames, "dataset.seed": seed, **overrides,
                                     **(QUICK if args.quick else {})})
                work_dir = out / "runs" / f"{dataset}_{label}_seed{seed}"
                result = train(cfg, str(work_dir), progress=False)
                runs.append(dict(dataset=dataset, policy=label, seed=seed, **result))
                print(f"[{len(runs)}/{total}, {time.time() - started:.0f}s] {dataset:<5} {label:<10} seed {seed}: "
                      f"held-out loss {result['heldout_loss']:.4f}, FD {result['fd']:.4f}, "
                      f"t = 0 for {result['t_zero_fraction']:.0%}, non-finite samples: {result['nonfinite']}",
                      flush=True)

    summary = {}
    for dataset in datasets:
        for label, _, _ in variants:
            mine = [r for r in runs if r["dataset"] == dataset and r["policy"] == label]
            summary[f"{dataset}/{label}"] = {
                "heldout_loss": summarise([r["heldout_loss"] for r in mine]),
                "fd": summarise([r["fd"] for r in mine]),
                "t_zero_fraction": summarise([r["t_zero_fraction"] for r in mine]),
                "nonfinite_runs": [r["nonfinite"] for r in mine],
            }
    clips = (QUICK if args.quick else {}).get("evaluation.clips", Config.fromfile(str(ROOT / "configs" / "tiny" / "base.py")).evaluation.clips)
    reference = {dataset: reference_fd(frames, max(1, clips // len(frames))) for dataset, frames in datasets.items()}
    (out / "results.json").write_text(results_json(
        dict(quick=args.quick, seeds=args.seeds, seconds=time.time() - started, reference_fd=reference,
             summary=summary, runs=runs)))
    (out / "results.md").write_text(markdown(summary, reference, args.seeds))
    figure(summary, reference, out / "results.png")
    print((out / "results.md").read_text())
    print(f"wrote {out / 'results.json'}, {out / 'results.md'}, {out / 'results.png'} in {time.time() - started:.0f}s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
