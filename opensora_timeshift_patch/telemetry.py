"""Per-noise-level loss telemetry, and the drawn timesteps checked against the configured distribution.

Each sample's loss (before the batch mean) is counted in the bin of its *shifted* timestep on a fixed grid of
``bins`` over [0, N] (count, sum, sum of squares), per bucket: (bucket_settings rule, height, width, num_frames).
The scheduler's draws are histogrammed on the same bins and compared with the probabilities the configured
distribution and shift give each bin (:func:`bin_probabilities`, exact: the CDF of the shifted distribution at the
edges, found by bisection on its quantile function, the very code training draws with).

No host sync per step. A training step adds into preallocated device tensors indexed by a slot per bucket, the slot
found on the device by comparing each sample's meta code with the codes already known. The host learns new meta
only on the *first sight of a latent shape* (``x_start.shape[2:]``, known on the host for free), with one host copy
of the meta then; every later batch of that shape is looked up on the device. A sample whose meta was not seen with
its latent shape lands in an "unmatched" row, which the next report (a sync anyway) finds: it is reported, said
loudly, and from then on every step reads its meta on the host, so no sample is ever dropped or mis-binned.

Every ``every`` steps the data-parallel ranks all_reduce (SUM) what they added since the last report, over the
data-parallel group (the sequence-parallel ranks of one sample are in different data-parallel groups, so each
sample is counted once), and global rank 0 appends one JSON line per bucket to ``dir/timeshift_telemetry.jsonl``
(the format: the README's "Telemetry" section). Statistics are cumulative; :meth:`Telemetry.state_dict` carries them,
with this rank's part not yet reduced, so a resumed run continues them exactly.

**Drawn versus configured.** Each report runs a G-test of every bucket's cumulative drawn histogram against its
expected probabilities (bins whose expected count is below 5 pooled into one cell, the usual validity condition of the
chi-square approximation; a draw in a bin of probability 0 is an alarm by itself) at p < 1e-6 divided by the number of
buckets in the report (Bonferroni). The family-wise false-alarm probability is at most 1e-6 per report, so at most
K * 1e-6 over a run of K reports (1e-3 over 1000 reports). An alarm is logged as a warning naming the bucket and both
distributions.
"""

from __future__ import annotations

import json
import logging
import math
import os
import warnings
from typing import Any, Callable, Dict, List, Mapping, Optional, Sequence, Tuple

import numpy as np
import torch
import torch.distributed as dist
from torch import Tensor

from .settings import SettingError, describe

logger = logging.getLogger("opensora_timeshift_patch")

FILE_NAME = "timeshift_telemetry.jsonl"
FORMAT = "timeshift-telemetry/1"
ALPHA = 1e-6  # family-wise per report, split over its buckets
MIN_EXPECTED = 5.0  # cells with fewer expected draws are pooled
_STATS = 4  # count, sum, sumsq, drawn
_KEYED = 2  # pending rows: 0 the unmatched samples past the spill, 1 the spilled ones (dropped), then one per key
_SPILL = 4096  # samples of not yet known meta kept per report interval, each recovered exactly at the report
_CODE = float(1 << 20)  # meta packed as (h * 2^20 + w) * 2^20 + f: exact in float64 for whole h < 2^13, w and f < 2^20

Key = Tuple[float, float, float]  # (height, width, num_frames)


def bin_probabilities(quantile: Callable[[Tensor], Tensor], edges: Sequence[float],
                      redraw_above: Optional[float] = None, iterations: int = 64) -> np.ndarray:
    """P(edges[i] <= T < edges[i+1]) (the last bin closed) for T = quantile(U), U uniform on (0, 1), ``quantile``
    non-decreasing: P(T < e) = sup{u : quantile(u) < e}, found by bisection in float64 for all edges at once.

    ``redraw_above``: Open-Sora 1.3's redraw, a fraction of N above which a shifted video timestep is redrawn
    uniformly in [threshold N, N]: its mass above moves there uniformly.
    """
    e = torch.tensor(list(edges), dtype=torch.float64)
    lo, hi = torch.zeros_like(e), torch.ones_like(e)
    for _ in range(iterations):
        mid = (lo + hi) / 2
        below = quantile(mid.clamp(1e-300, 1 - 2 ** -53)).to(torch.float64) < e
        lo, hi = torch.where(below, mid, lo), torch.where(below, hi, mid)
    cdf = lo
    if redraw_above is not None:
        top = float(e[-1])
        at = float(bin_cdf(quantile, redraw_above * top, iterations))
        tail = ((e - redraw_above * top) / (top * (1 - redraw_above))).clamp(0, 1)
        cdf = torch.where(e <= redraw_above * top, cdf, at + (1 - at) * tail)
    cdf[0], cdf[-1] = 0.0, 1.0
    return np.diff(cdf.numpy()).clip(0, 1)


def bin_cdf(quantile: Callable[[Tensor], Tensor], at: float, iterations: int = 64) -> float:
    """P(T <= at), by the same bisection as :func:`bin_probabilities`."""
    lo, hi = 0.0, 1.0
    for _ in range(iterations):
        mid = (lo + hi) / 2
        if float(quantile(torch.tensor([max(mid, 1e-300)], dtype=torch.float64))[0]) <= at:
            lo = mid
        else:
            hi = mid
    return lo


def g_test(drawn: Sequence[float], expected: Sequence[float], alpha: float) -> Dict[str, Any]:
    """The G-test (likelihood-ratio chi-square) of a histogram against probabilities; cells whose expected count
    is below :data:`MIN_EXPECTED` are pooled into one. A draw in a cell of probability 0 gives p = 0."""
    observed, p = np.asarray(drawn, dtype=np.float64), np.asarray(expected, dtype=np.float64)
    n = float(observed.sum())
    out: Dict[str, Any] = {"test": "G", "statistic": None, "dof": 0, "p": None, "alpha": alpha, "alarm": False}
    if n == 0:
        return out
    if (observed[p <= 0] > 0).any():
        return {**out, "statistic": None, "p": 0.0, "alarm": True}
    small = n * p < MIN_EXPECTED
    obs = list(observed[~small]) + ([float(observed[small].sum())] if small.any() else [])
    exp = list(n * p[~small]) + ([float(n * p[small].sum())] if small.any() else [])
    obs_a, exp_a = np.asarray(obs), np.asarray(exp)
    keep = exp_a > 0
    obs_a, exp_a = obs_a[keep], exp_a[keep]
    dof = len(obs_a) - 1
    if dof < 1:
        return {**out, "statistic": 0.0, "p": 1.0}
    with np.errstate(divide="ignore", invalid="ignore"):
        g = float(2 * np.sum(np.where(obs_a > 0, obs_a * np.log(obs_a / exp_a), 0.0)))
    pval = float(torch.special.gammaincc(torch.tensor(dof / 2, dtype=torch.float64),
                                         torch.tensor(max(g, 0.0) / 2, dtype=torch.float64)))
    return {**out, "statistic": g, "dof": dof, "p": pval, "alarm": pval < alpha}


def _number(x: float) -> Any:
    return int(x) if float(x).is_integer() else float(x)


def _finite(values: np.ndarray) -> List[Any]:
    return [float(v) if math.isfinite(v) else None for v in values]


class Telemetry:
    """The statistics of one training run (see the module docstring).

    Args:
        bins, every, dir: the ``telemetry`` setting's keys (validated by :func:`~.settings.check_telemetry`).
        num_timesteps: N, the grid covers [0, N].
        bucket: ``bucket(height, width, num_frames, latent_thw) -> (rule index or None, quantile, redraw)``:
            which rule the clip falls under, the quantile function of its shifted timestep and Open-Sora 1.3's
            redraw threshold where it applies (None else).
        release: ``"1.x"`` (losses and draws) or ``"2.0"`` (draws only).
        reduce: all_reduce over the data-parallel group at each report (False: this rank's draws only).
    """

    def __init__(self, bins: int, every: int, dir: str, num_timesteps: float,
                 bucket: Callable[[float, float, float, Tuple[int, ...]], Tuple[Optional[int], Any, Optional[float]]],
                 release: str = "1.x", reduce: bool = True, capacity: int = 16) -> None:
        self.bins, self.every, self.dir = bins, every, dir
        self.num_timesteps, self.bucket, self.release, self.reduce = num_timesteps, bucket, release, reduce
        self.groups: Tuple[Any, Any] = (None, None)
        self.edges = [num_timesteps * i / bins for i in range(bins + 1)]
        self.steps = 0  # steps observed, reported or not
        self.keys: List[Key] = []  # slot i + _KEYED holds keys[i]
        self.info: Dict[Key, Tuple[Optional[int], Tuple[int, ...]]] = {}  # rule, latent (T, H, W) of first sight
        self.expected: Dict[Key, np.ndarray] = {}
        self.totals: Dict[Any, np.ndarray] = {}  # key (or "unmatched") -> (4, bins), reduced
        self.seen_shapes: set = set()
        self.read_every_step = False
        self._pending: Optional[Tensor] = None  # (4, _KEYED + capacity, bins) float64 on the device: since the report
        self._codes: Optional[Tensor] = None  # (capacity,) float64 on the device; NaN matches nothing
        # (_SPILL + 1, 11): height, width, num_frames, latent T, H, W, bin, the 4 stats; the last row a sink
        self._spill: Optional[Tensor] = None
        self._spill_used: Optional[Tensor] = None  # samples sent to the spill since the last report (device int64)
        self._capacity = capacity
        self._writer: Any = None
        self._shape_rows: Dict[Tuple[int, ...], Tensor] = {}  # latent shape -> its (3,) row on the device

    # --- a training step: device work only, except on a first sight --------------------------------------

    def observe(self, t: Tensor, loss: Optional[Tensor], height: Tensor, width: Tensor, num_frames: Tensor,
                latent_thw: Tuple[int, ...], drawn: bool) -> None:
        """Add one step's samples: ``t`` the shifted timesteps in [0, N], ``loss`` the per-sample losses (None: draws
        only), the meta as batch-length tensors on ``t``'s device; ``drawn``: ``t`` was drawn by the scheduler (an
        explicit ``t=`` is not a draw)."""
        device = t.device
        if self._pending is None or self._pending.device != device:
            self._allocate(device)
        shape = tuple(int(s) for s in latent_thw)
        if self.read_every_step or shape not in self.seen_shapes:
            self._register(height, width, num_frames, shape)  # one host copy of the meta: first sight only
        code = (height.to(torch.float64) * _CODE + width.to(torch.float64)) * _CODE + num_frames.to(torch.float64)
        assert self._codes is not None and self._pending is not None and self._spill is not None
        matches = code[:, None] == self._codes[None, :]
        slot = (matches.to(torch.int64) * torch.arange(_KEYED, self._codes.shape[0] + _KEYED, device=device)).sum(1)
        bin_ = self._bin(t)
        ones = torch.ones_like(code)
        if loss is None:
            zeros = torch.zeros_like(code)
            values = torch.stack([zeros, zeros, zeros, ones])
        else:
            value = loss.detach().to(torch.float64).reshape(-1)
            values = torch.stack([ones, value, value * value, ones if drawn else torch.zeros_like(code)])
        # A sample of meta not known yet (slot 0) goes to the spill, read at the next report; past its end, to the
        # "unmatched" row. All on the device: positions from a cumulative sum, no look at the values.
        unknown = slot == 0
        position = self._spill_used + unknown.to(torch.int64).cumsum(0) - 1
        spilled = unknown & (position < _SPILL)
        where = torch.where(spilled, position, torch.full_like(position, _SPILL))
        shape_row = self._shape_row(shape, device).expand(len(code), 3)
        meta = torch.stack([height, width, num_frames], dim=1).to(torch.float64)
        self._spill.index_copy_(0, where, torch.cat([meta, shape_row, bin_[:, None], values.T], dim=1))
        self._spill_used += unknown.sum()
        slot = torch.where(spilled, torch.ones_like(slot), slot)  # row 1: recovered from the spill instead
        index = slot * self.bins + bin_.to(torch.int64)
        self._pending.view(_STATS, -1).index_add_(1, index, values)
        self.steps += 1

    def due(self) -> bool:
        return self.steps % self.every == 0

    def _allocate(self, device: Any) -> None:
        pending = torch.zeros(_STATS, _KEYED + self._capacity, self.bins, dtype=torch.float64, device=device)
        codes = torch.full((self._capacity,), float("nan"), dtype=torch.float64, device=device)
        spill = torch.zeros(_SPILL + 1, 7 + _STATS, dtype=torch.float64, device=device)
        used = torch.zeros((), dtype=torch.int64, device=device)
        if self._pending is not None and self._codes is not None:
            rows = self._pending.shape[1]
            pending[:, :rows] = self._pending.to(device)
            codes[: self._codes.shape[0]] = self._codes.to(device)
            spill, used = self._spill.to(device), self._spill_used.to(device)
        self._pending, self._codes, self._spill, self._spill_used = pending, codes, spill, used

    def _shape_row(self, shape: Tuple[int, ...], device: Any) -> Tensor:
        """The latent shape as a device row, copied there once per shape (and again only after a move or a resume)."""
        row = self._shape_rows.get(shape)
        if row is None or row.device != device:
            row = self._shape_rows[shape] = torch.tensor(shape[:3], dtype=torch.float64).to(device)
        return row

    def _register(self, height: Tensor, width: Tensor, num_frames: Tensor, shape: Tuple[int, ...]) -> None:
        self.seen_shapes.add(shape)
        meta = torch.stack([height, width, num_frames]).to(torch.float64).cpu().numpy()
        for h, w, f in {tuple(float(v) for v in col) for col in meta.T}:
            self._add_key((h, w, f), shape)

    def _add_key(self, key: Key, shape: Tuple[int, ...]) -> int:
        if key in self.info and key in self.keys:
            return self.keys.index(key) + _KEYED
        if key not in self.info:
            rule, _, _ = self.bucket(key[0], key[1], key[2], shape)
            self.info[key] = (rule, shape)
        self.keys.append(key)
        if len(self.keys) > self._capacity:
            self._capacity *= 2
            assert self._pending is not None
            self._allocate(self._pending.device)
        assert self._codes is not None
        self._codes[len(self.keys) - 1] = (key[0] * _CODE + key[1]) * _CODE + key[2]
        return len(self.keys) - 1 + _KEYED

    def slot_of(self, key: Key, shape: Tuple[int, ...], device: Any) -> int:
        """The slot of a bucket known on the host (Open-Sora 2.0's caller has its shapes), registered if new."""
        if self._pending is None:
            self._allocate(device)
        self.seen_shapes.add(shape)
        return self._add_key(key, shape)

    def _bin(self, t: Tensor) -> Tensor:
        """Each timestep's bin on the fixed grid over [0, N] (float64, the last bin closed)."""
        return (t.detach().to(torch.float64) * (self.bins / self.num_timesteps)).floor().clamp(0, self.bins - 1)

    def observe_drawn(self, t: Tensor, key: Key, shape: Tuple[int, ...]) -> None:
        """Add one batch of draws of a bucket known on the host (Open-Sora 2.0: one bucket per batch)."""
        slot = self.slot_of(key, shape, t.device)
        assert self._pending is not None
        bin_ = self._bin(t)
        self._pending[3, slot].index_add_(0, bin_.to(torch.int64), torch.ones_like(bin_))
        self.steps += 1

    # --- a report: every `every` steps ----------------------------------------------------------------------

    def report(self, step: int) -> List[Dict[str, Any]]:
        """Reduce what was added since the last report into the totals, check the draws and (global rank 0) append
        the records; returns them (on every rank)."""
        if self._pending is None:
            return []
        self._recover_spill()
        local = {key: self._pending[:, i + _KEYED] for i, key in enumerate(self.keys)}
        local["unmatched"] = self._pending[:, 0]
        keys = list(local)
        infos = {k: self.info[k] for k in self.keys}
        distributed = self.reduce and dist.is_available() and dist.is_initialized()
        group = None
        if distributed:
            from .sampling import _opensora_groups

            group = self.groups[0] if self.groups[0] is not None else _opensora_groups()[0]
            everyone: List[Any] = [None] * dist.get_world_size(group)
            dist.all_gather_object(everyone, (keys, infos), group=group)
            keys = sorted({k for ks, _ in everyone for k in ks}, key=_order)
            for _, theirs in everyone:
                for k, v in theirs.items():
                    self.info.setdefault(k, v)
        device = self._pending.device
        empty = torch.zeros(_STATS, self.bins, dtype=torch.float64, device=device)
        block = torch.stack([local.get(k, empty) for k in keys])
        if distributed:
            dist.all_reduce(block, op=dist.ReduceOp.SUM, group=group)
        host = block.cpu().numpy()
        for key, stats in zip(keys, host):
            self.totals[key] = self.totals.get(key, np.zeros((_STATS, self.bins))) + stats
        self._pending.zero_()
        records = self._records(step)
        if global_rank() == 0:
            self._write(records)
        return records

    def _recover_spill(self) -> None:
        """Register the meta of the samples spilled since the last report and add them to their keys' rows (this
        reads the spill on the host: the report syncs anyway)."""
        assert self._spill is not None and self._spill_used is not None and self._pending is not None
        used = int(self._spill_used)
        if used == 0:
            return
        rows = self._spill[: min(used, _SPILL)].cpu().numpy()
        for h, w, f, t_, h_, w_, bin_, *stats in rows:
            slot = self._add_key((float(h), float(w), float(f)), (int(t_), int(h_), int(w_)))
            self._pending[:, slot, int(bin_)] += torch.tensor(stats, dtype=torch.float64, device=self._pending.device)
        self._pending[:, 1] = 0
        self._spill_used.zero_()
        if used > _SPILL and not self.read_every_step:
            self.read_every_step = True
            _loud(f"telemetry: {used} samples of meta not seen with their latent shape came in one report interval, "
                  f"more than the {_SPILL} kept: the rest are reported as the 'unmatched' bucket, and from now on "
                  "every step reads its meta on the host (one sync per step)")

    def _records(self, step: int) -> List[Dict[str, Any]]:
        keys = [k for k in sorted(self.totals, key=_order) if k != "unmatched" or self.totals[k].any()]
        alpha = ALPHA / max(1, len(keys))
        records = []
        for key in keys:
            stats = self.totals[key]
            if key == "unmatched":
                rule, h, w, f, expected = None, None, None, None, None
            else:
                rule, shape = self.info[key]
                if key not in self.expected:
                    self.expected[key] = self._expected(key, shape)
                h, w, f = (_number(v) for v in key)
                expected = self.expected[key]
            drawn = stats[3]
            losses = self.release == "1.x"
            check = g_test(drawn, expected, alpha) if expected is not None else None
            if check is not None and check["alarm"]:
                _loud(f"telemetry: the drawn timesteps of bucket rule={rule}, {h}x{w}, {f} frames disagree with the "
                      f"configured distribution at step {step} (G-test p={check['p']!r} < {alpha:.3g}): drawn "
                      f"{[int(x) for x in drawn]}, expected probabilities {[round(float(p), 6) for p in expected]}")
            records.append({
                "format": FORMAT, "release": self.release, "step": int(step), "rule": rule, "height": h, "width": w,
                "num_frames": f, "num_timesteps": _number(self.num_timesteps), "edges": [float(e) for e in self.edges],
                "count": [int(x) for x in stats[0]] if losses else None,
                "sum": _finite(stats[1]) if losses else None, "sumsq": _finite(stats[2]) if losses else None,
                "drawn": [int(x) for x in drawn],
                "expected": None if expected is None else [float(p) for p in expected],
                "samples": int(drawn.sum()), "check": check})
        return records

    def _expected(self, key: Key, shape: Tuple[int, ...]) -> np.ndarray:
        _, quantile, redraw = self.bucket(key[0], key[1], key[2], shape)
        return bin_probabilities(quantile, self.edges, redraw)

    def _write(self, records: List[Dict[str, Any]]) -> None:
        if not records:
            return
        os.makedirs(self.dir, exist_ok=True)
        text = "".join(json.dumps(r, sort_keys=True, allow_nan=False) + "\n" for r in records)
        with open(os.path.join(self.dir, FILE_NAME), "a", encoding="utf-8") as f:
            f.write(text)  # complete lines in one write; a crash leaves at most a partial last line
            f.flush()
        self._scalars(records)

    def _scalars(self, records: List[Dict[str, Any]]) -> None:
        if self._writer is None:
            try:
                from torch.utils.tensorboard import SummaryWriter
            except ImportError:  # tensorboard is optional
                self._writer = False
                return
            self._writer = SummaryWriter(self.dir)
        if self._writer is False:
            return
        for r in records:
            name = f"timeshift/r{'base' if r['rule'] is None else r['rule']}_{r['height']}x{r['width']}x{r['num_frames']}"
            if r["count"] is not None:
                for i, (c, s) in enumerate(zip(r["count"], r["sum"])):
                    if c and s is not None:
                        self._writer.add_scalar(f"{name}/loss_bin{i}", s / c, r["step"])
            if r["check"] is not None and r["check"]["p"] is not None:
                self._writer.add_scalar(f"{name}/drawn_p", r["check"]["p"], r["step"])
        self._writer.flush()

    # --- checkpoints ----------------------------------------------------------------------------------------

    def state_dict(self) -> Dict[str, Any]:
        """Everything a resumed run needs to continue these statistics exactly: the reduced totals and this rank's
        part not reduced yet (so each rank saves and loads its own: another rank's part is not loaded, and said so;
        a checkpoint at a multiple of ``every`` has none, and any rank's state resumes every rank exactly), the
        slots, the step count."""
        if self._pending is not None:
            self._recover_spill()  # one host look, at a checkpoint: the spill is folded into its keys' rows
        pending = {} if self._pending is None else {
            _key_text(k): self._pending[:, i + _KEYED].cpu().tolist() for i, k in enumerate(self.keys)}
        if self._pending is not None:
            pending["unmatched"] = self._pending[:, 0].cpu().tolist()
        return {"bins": self.bins, "steps": self.steps, "rank": global_rank(), "read_every_step": self.read_every_step,
                "keys": [list(k) for k in self.keys],
                "info": [[list(k), rule, list(shape)] for k, (rule, shape) in self.info.items()],
                "shapes": [list(s) for s in sorted(self.seen_shapes)],
                "totals": {_key_text(k): v.tolist() for k, v in self.totals.items()}, "pending": pending}

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        """Resume from :meth:`state_dict` (of this rank)."""
        try:
            if int(state["bins"]) != self.bins:
                raise SettingError(f"the checkpoint's telemetry has bins={state['bins']!r}, this run {self.bins}: "
                                   "resume with the same bins, or start new statistics by not loading them")
            self.steps = int(state["steps"])
            self.read_every_step = bool(state["read_every_step"])
            self.info = {tuple(k): (rule, tuple(shape)) for k, rule, shape in state["info"]}
            self.seen_shapes = {tuple(s) for s in state["shapes"]}
            self.totals = {_text_key(k): np.asarray(v, dtype=np.float64) for k, v in state["totals"].items()}
            keys = [tuple(k) for k in state["keys"]]
            pending = {_text_key(k): v for k, v in state["pending"].items()}
            saved_by = int(state["rank"])
        except SettingError:
            raise
        except (KeyError, TypeError, ValueError) as err:
            raise SettingError(f"telemetry state={describe(state)} is not allowed: load the dict that "
                               f"state_dict() returned ({err})") from None
        self.keys, self._pending, self._codes, self.expected = [], None, None, {}
        device = torch.device("cpu")
        self._capacity = max(self._capacity, len(keys))
        self._allocate(device)
        for key in keys:
            self._add_key(key, self.info[key][1])
        assert self._pending is not None
        if saved_by != global_rank():
            if any(any(any(row) for row in stats) for stats in pending.values()):
                _loud(f"telemetry: rank {global_rank()} loads the state rank {saved_by} saved: its samples since the last "
                      "report are that rank's, not this one's, and are left out (this rank's are lost). Save each "
                      "rank's state_dict, or checkpoint at a multiple of telemetry every, to resume exactly")
            pending = {}
        for key, stats in pending.items():
            row = 0 if key == "unmatched" else self.keys.index(key) + _KEYED
            self._pending[:, row] = torch.tensor(stats, dtype=torch.float64)


def global_rank() -> int:
    """This process's rank in the default group; 0 without torch.distributed."""
    return dist.get_rank() if dist.is_available() and dist.is_initialized() else 0


def _order(key: Any) -> Tuple[int, Any]:
    return (1, ()) if key == "unmatched" else (0, key)


def _key_text(key: Any) -> str:
    return key if key == "unmatched" else json.dumps(list(key))


def _text_key(text: str) -> Any:
    return text if text == "unmatched" else tuple(float(v) for v in json.loads(text))


def _loud(text: str) -> None:
    logger.warning(text)
    warnings.warn(text, stacklevel=3)
