"""One rank of a distributed check of the per-sample timestep stream; launched by test_distributed.py with torchrun.

Every rank is seeded alike, as Open-Sora's ``set_seed`` does. The world is split into sequence-parallel groups of
``--sp`` consecutive ranks and data-parallel groups across them, given to the scheduler explicitly
(``--groups explicit``) or through Open-Sora's ``parallel_states`` (``--groups opensora``). Each rank runs a few
``training_losses`` steps on a tiny model (through ColossalAI's Booster with ``--colossalai``), then draws one more
step from a scheduler resumed from a checkpoint of the step count. Rank 0 gathers every rank's timesteps and writes
them to ``--out`` as JSON; test_distributed.py makes the assertions.
"""

import argparse
import json
import os
import sys

import torch
import torch.distributed as dist

from opensora_timeshift_patch import SCHEDULERS, build_module
sys.path.append(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))  # standin/ is not installed
from standin.stubs import batch_meta  # noqa: E402

STEPS, BATCH = 3, 4


class TinyModel(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.conv = torch.nn.Conv3d(5, 8, 1)
        self.seen = []

    def forward(self, x, t, **kwargs):
        self.seen.append(t.detach().clone())
        tt = (t.float() / 1000).view(-1, 1, 1, 1, 1).expand(-1, 1, *x.shape[2:])
        return self.conv(torch.cat([x, tt], dim=1))


def make_groups(sp):
    world, rank = dist.get_world_size(), dist.get_rank()
    sp_group = dp_group = None
    for start in range(0, world, sp):  # every rank creates every group, in the same order
        group = dist.new_group(list(range(start, start + sp)))
        if rank in range(start, start + sp):
            sp_group = group
    for offset in range(sp):
        group = dist.new_group(list(range(offset, world, sp)))
        if rank % sp == offset:
            dp_group = group
    return dp_group, sp_group


def batch_size(step, dp_rank, uneven):
    """BATCH everywhere, or a size that differs between data-parallel ranks and between steps (1 to BATCH)."""
    return 1 + (step + 3 * dp_rank) % BATCH if uneven else BATCH


def gather_uneven(t):
    """Every rank's vector, whatever its length: padded with NaN to the longest for all_gather, then trimmed."""
    sizes = [torch.zeros(1, dtype=torch.int64) for _ in range(dist.get_world_size())]
    dist.all_gather(sizes, torch.tensor([len(t)]))
    longest = max(int(s) for s in sizes)
    padded = torch.cat([t.float(), torch.full((longest - len(t),), float("nan"))])
    return [row[: int(n)] for row, n in zip(gather(padded), sizes)]


def gather(t):
    out = [torch.zeros_like(t) for _ in range(dist.get_world_size())]
    dist.all_gather(out, t)
    return [x.tolist() for x in out]


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--sp", type=int, default=1)
    parser.add_argument("--groups", choices=["explicit", "opensora"], default="explicit")
    parser.add_argument("--stratified", action="store_true")
    parser.add_argument("--colossalai", action="store_true")
    parser.add_argument("--uneven", action="store_true",
                        help="per-rank batch sizes that differ from rank to rank and step to step, as Open-Sora's "
                             "bucket sampler gives them")
    parser.add_argument("--telemetry", help="run the telemetry check instead, writing its records under this dir")
    parser.add_argument("--out", required=True)
    args = parser.parse_args()
    if args.telemetry:
        return telemetry_main(args)

    if args.colossalai:
        import colossalai
        from colossalai.booster import Booster
        from colossalai.booster.plugin import TorchDDPPlugin

        colossalai.launch_from_torch(backend="gloo", seed=1024, verbose=False)
    else:
        dist.init_process_group("gloo")
    torch.manual_seed(1024)  # the same seed on every rank, as Open-Sora's set_seed
    global_rng = torch.rand(BATCH)  # what stock draws from it: the same on every rank
    dp_group, sp_group = make_groups(args.sp)

    cfg = dict(type="rflow-timeshift", backend="standalone", timestep_rng="per_sample", timestep_seed=7,
               stratified=args.stratified, sample_method="uniform")
    if args.stratified:
        cfg["use_timestep_transform"] = False  # so t / N is the stratified uniform itself
    scheduler = build_module(cfg, SCHEDULERS)
    if args.groups == "explicit":
        scheduler.set_process_groups(dp_group, sp_group)
    else:
        from opensora.acceleration import parallel_states

        parallel_states.set_data_parallel_group(dp_group)
        parallel_states.set_sequence_parallel_group(sp_group)

    model = raw_model = TinyModel()
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    if args.colossalai:
        model, optimizer, *_ = Booster(plugin=TorchDDPPlugin()).boost(model, optimizer)
    dp_rank = dist.get_rank() // args.sp
    sizes = [batch_size(step, dp_rank, args.uneven) for step in range(STEPS)]
    for size in sizes:
        x = torch.randn(size, 4, 5, 4, 4)
        loss = scheduler.training_losses(model, x, batch_meta(size, 256, 256, 17))["loss"].mean()
        loss.backward()
        optimizer.step()
        optimizer.zero_grad()
    steps = [gather_uneven(t) for t in raw_model.seen]

    checkpoint = scheduler.state_dict()
    meta = batch_meta(BATCH, 256, 256, 17)
    uninterrupted = scheduler.sample_timesteps(torch.randn(BATCH, 4, 5, 4, 4), meta)
    resumed_scheduler = build_module(cfg, SCHEDULERS)
    if args.groups == "explicit":
        resumed_scheduler.set_process_groups(dp_group, sp_group)
    resumed_scheduler.load_state_dict(checkpoint)
    resumed = resumed_scheduler.sample_timesteps(torch.randn(BATCH, 4, 5, 4, 4), meta)
    result = dict(world=dist.get_world_size(), sp=args.sp, steps=steps, sizes=gather(torch.tensor(sizes)), checkpoint=checkpoint,
                  uninterrupted=gather(uninterrupted), resumed=gather(resumed), global_rng=gather(global_rng))
    if dist.get_rank() == 0:
        with open(args.out, "w") as f:
            json.dump(result, f)
    dist.barrier()
    # Leave without running gloo's destructors: tearing down process groups while peers exit can abort a
    # rank ("terminate called without an active exception") after all the work is done and written.
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(0)


TELEMETRY_STEPS, RESUME_AT = 8, 3


def telemetry_sample(step, dp_rank):
    """A step's batch on a data-parallel rank: uneven sizes, latent shapes that change with the step, and per-sample
    meta that mixes buckets (so the device lookup, the first sights and the spill all see work). Seeded by
    (step, dp_rank), so the sequence-parallel ranks of a sample hold the same batch."""
    g = torch.Generator().manual_seed(1000 * step + dp_rank)
    size = 1 + (step + 3 * dp_rank) % BATCH
    frames = 5 if (step + dp_rank) % 3 else 3
    x = torch.randn(size, 4, frames, 4, 4, generator=g)
    height = torch.tensor([(256.0, 512.0, 384.0)[(i + step * dp_rank) % 3] for i in range(size)])
    num_frames = torch.tensor([17.0 if frames == 5 else 9.0 for _ in range(size)])
    return x, {"height": height, "width": height.clone(), "num_frames": num_frames}


def telemetry_main(args):
    """DP x SP = 2 x 2 with telemetry on, every=2: rank 0 writes the per-sample (t, loss, meta) of every data-parallel
    sample, for the test to feed one process; every rank checkpoints its scheduler at RESUME_AT and a resumed copy
    runs beside the original on the same batches, writing under <dir>/resumed."""
    dist.init_process_group("gloo")
    torch.manual_seed(1024)
    dp_group, sp_group = make_groups(args.sp)
    dp_rank = dist.get_rank() // args.sp
    cfg = dict(type="rflow-timeshift", backend="standalone", timestep_rng="per_sample", timestep_seed=3,
               bucket_settings=[dict(resolution=(300 * 300, None), sample_method="logit-normal")],
               telemetry=dict(bins=8, every=2, dir=args.telemetry))
    scheduler = build_module(cfg, SCHEDULERS)
    scheduler.set_process_groups(dp_group, sp_group)
    model = TinyModel()
    rows, resumed = [], None
    for step in range(TELEMETRY_STEPS):
        if step == RESUME_AT:
            state = scheduler.state_dict()
            resumed = build_module({**cfg, "telemetry": dict(bins=8, every=2, dir=os.path.join(args.telemetry,
                                                                                             "resumed"))}, SCHEDULERS)
            resumed.set_process_groups(dp_group, sp_group)
            resumed.load_state_dict(json.loads(json.dumps(state)))  # as a checkpoint file holds it
        x, meta = telemetry_sample(step, dp_rank)
        torch.manual_seed(step)  # the noise: the same for the original and the resumed copy
        loss = scheduler.training_losses(model, x, meta)["loss"]
        t = model.seen[-1]
        if resumed is not None:
            torch.manual_seed(step)
            again = resumed.training_losses(model, x, meta)["loss"]
            assert torch.equal(again, loss)
        rows.append(torch.stack([t.double(), loss.detach().double(), meta["height"].double(),
                                 meta["width"].double(), meta["num_frames"].double(),
                                 torch.full_like(loss, float(x.shape[2])).double()], dim=1))
    mine = torch.cat(rows)
    everyone = gather_uneven(mine.reshape(-1))
    if dist.get_rank() == 0:
        samples = [torch.tensor(r).reshape(-1, 6).tolist() for r in everyone[::args.sp]]  # one rank per sample
        with open(args.out, "w") as f:
            json.dump(dict(samples=samples, every=2, bins=8, cfg={k: v for k, v in cfg.items() if k != "telemetry"}),
                      f)
    dist.barrier()
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(0)


if __name__ == "__main__":
    main()
