"""Writes a miniature ``opensora`` package with the module layout of Open-Sora 1.2 or 1.3.

Only the shape matters here: which modules bind ``timestep_transform``, a registry named SCHEDULERS, an
``RFLOW`` whose training and sampling call the module-level name, and ``acceleration.parallel_states``. The transform is the 1.x rule written from
its formula (temporal size from element 0 of the batch, as stock does); real-code parity is covered by the
golden numbers in test_opensora_golden.py.
"""

import textwrap

TRANSFORM = '''
import torch


def timestep_transform(t, model_kwargs, base_resolution=512 * 512, base_num_frames=1, scale=1.0, num_timesteps=1,
                       **v13_keywords):
    t = t / num_timesteps
    ratio_space = (model_kwargs["height"] * model_kwargs["width"] / base_resolution).sqrt()
    n = model_kwargs["num_frames"]
    temporal = torch.ones_like(n) if n[0] == 1 else {RULE}
    ratio = ratio_space * (temporal / base_num_frames).sqrt() * scale
    return ratio * t / (1 + (ratio - 1) * t) * num_timesteps
'''

RF_INIT = '''
import torch

from opensora.registry import SCHEDULERS
from .{TRAIN_MODULE} import timestep_transform
from . import {TRAIN_MODULE} as _train


@SCHEDULERS.register_module("rflow")
class RFLOW:
    def __init__(self, num_sampling_steps=10, num_timesteps=1000, cfg_scale=4.0, use_discrete_timesteps=False,
                 use_timestep_transform=False, **kwargs):
        self.num_sampling_steps, self.num_timesteps = num_sampling_steps, num_timesteps
        self.use_timestep_transform = use_timestep_transform
        self.kwargs = kwargs

    def training_losses(self, model, x_start, model_kwargs=None, noise=None, mask=None, weights=None, t=None,
                        **kwargs):
        if t is None:
            t = torch.rand(x_start.shape[0]) * self.num_timesteps
            if self.use_timestep_transform:
                t = _train.timestep_transform(t, model_kwargs, num_timesteps=self.num_timesteps)
        return {{"loss": model(x_start, t, **model_kwargs).mean(dim=(1, 2, 3, 4)), "t": t, "kwargs": kwargs}}

    def sample(self, model, text_encoder, z, prompts, device, additional_args=None, mask=None, guidance_scale=None,
               progress=True, **kwargs):
        ts = [torch.full((z.shape[0],), (1.0 - i / self.num_sampling_steps) * self.num_timesteps)
              for i in range(self.num_sampling_steps)]
        if self.use_timestep_transform:
            ts = [timestep_transform(t, additional_args, num_timesteps=self.num_timesteps) for t in ts]
        return ts
'''


# As Open-Sora 1.x's: the registry imports opensora.schedulers on its first lookup.
REGISTRY = '''
from mmengine.registry import Registry

SCHEDULERS = Registry("scheduler", locations=["opensora.schedulers"])
'''


PARALLEL_STATES = '''
import torch.distributed as dist

_GROUPS = {}


def set_data_parallel_group(group):
    _GROUPS["data"] = group


def get_data_parallel_group():
    return _GROUPS.get("data", dist.group.WORLD)


def set_sequence_parallel_group(group):
    _GROUPS["sequence"] = group


def get_sequence_parallel_group():
    return _GROUPS.get("sequence", None)
'''


def write_fake_opensora(root, version="1.2"):
    """Create ``root/opensora`` shaped like Open-Sora ``version`` ("1.2" or "1.3")."""
    train_module, rule = ("rectified_flow", "n // 17 * 5") if version == "1.2" else ("time_sampler", "(n - 1) // 4")
    pkg = root / "opensora"
    rf = pkg / "schedulers" / "rf"
    rf.mkdir(parents=True)
    (pkg / "__init__.py").write_text("")
    (pkg / "registry.py").write_text(REGISTRY)
    (pkg / "schedulers" / "__init__.py").write_text("from .rf import RFLOW\n")
    (rf / f"{train_module}.py").write_text(textwrap.dedent(TRANSFORM).replace("{RULE}", rule))
    (rf / "__init__.py").write_text(RF_INIT.format(TRAIN_MODULE=train_module))
    (pkg / "acceleration").mkdir()
    (pkg / "acceleration" / "__init__.py").write_text("")
    (pkg / "acceleration" / "parallel_states.py").write_text(PARALLEL_STATES)
    return root


# --- Open-Sora 2.0 (branch main): no scheduler registry; the timestep code lives in the training script ------------

SAMPLING_2 = '''
import math
from dataclasses import dataclass

import torch


def time_shift(alpha, t):
    return alpha * t / (1 + (alpha - 1) * t)


def get_res_lin_function(x1=256, y1=1, x2=4096, y2=3):
    m = (y2 - y1) / (x2 - x1)
    b = y1 - m * x1
    return lambda x: m * x + b


def get_schedule(num_steps, image_seq_len, num_frames, shift_alpha=None, base_shift=1, max_shift=3, shift=True):
    timesteps = torch.linspace(1, 0, num_steps + 1)
    if shift:
        if shift_alpha is None:
            shift_alpha = get_res_lin_function(y1=base_shift, y2=max_shift)(image_seq_len)
            shift_alpha *= math.sqrt(num_frames)
        timesteps = time_shift(shift_alpha, timesteps)
    return timesteps.tolist()


@dataclass
class SamplingOption:
    height: int = 256
    width: int = 256
    num_frames: int = 1
    num_steps: int = 50
    shift: bool = True
    temporal_reduction: int = 4
    is_causal_vae: bool = True
    flow_shift: float = None


def prepare_api():
    @torch.inference_mode()
    def api_fn(opt, seed=None, patch_size=2, channel=64, spatial_compression=16):
        if opt.is_causal_vae:
            num_frames = 1 if opt.num_frames == 1 else (opt.num_frames - 1) // opt.temporal_reduction + 1
        else:
            num_frames = 1 if opt.num_frames == 1 else opt.num_frames // opt.temporal_reduction
        D = spatial_compression
        z = torch.zeros(1, channel // patch_size**2, num_frames, patch_size * math.ceil(opt.height / D),
                        patch_size * math.ceil(opt.width / D))
        return get_schedule(opt.num_steps, (z.shape[-1] * z.shape[-2]) // patch_size**2, num_frames,
                            shift=opt.shift, shift_alpha=opt.flow_shift)

    return api_fn
'''

CONFIG_2 = '''
import ast
import sys

from mmengine.config import Config


def read_config(config_path):
    return Config.fromfile(config_path)


def parse_configs():
    config, args = sys.argv[1], sys.argv[2:]
    cfg = read_config(config)
    cfg = merge_args(cfg, args)
    cfg.config_path = config
    return cfg


def merge_args(cfg, args):
    for k, v in zip(args[::2], args[1::2]):
        keys = k[2:].replace("-", "_").split(".")
        target = cfg
        for key in keys[:-1]:
            target = target[key]
        try:
            v = ast.literal_eval(v)
        except (ValueError, SyntaxError):
            pass
        target[keys[-1]] = v
    return cfg
'''

REGISTRY_2 = '''
from mmengine.registry import Registry

MODELS = Registry("model")
DATASETS = Registry("dataset")
'''

PARALLEL_STATES_2 = '''
import torch.distributed as dist

_GLOBAL_PARALLEL_GROUPS = dict()


def set_data_parallel_group(group):
    _GLOBAL_PARALLEL_GROUPS["data"] = group


def get_data_parallel_group(get_mixed_dp_pg=False):
    return _GLOBAL_PARALLEL_GROUPS.get("data", dist.group.WORLD)


def set_sequence_parallel_group(group):
    _GLOBAL_PARALLEL_GROUPS["sequence"] = group


def get_sequence_parallel_group():
    return _GLOBAL_PARALLEL_GROUPS.get("sequence", None)
'''

# Shaped as 2.0's scripts/diffusion/train.py: the sampling names bound at import, the config parsed inside main(),
# the shift computed in a no_grad closure from the latent x_0, the loop's epoch / step / num_steps_per_epoch.
# Each batch is one bucket (config `buckets`: (batch size, frames, height, width) per step, or a dict by rank).
TRAIN_2 = '''
import json
import logging
import math
import os
import random

import numpy as np
import torch
import torch.distributed as dist

from opensora.utils.config import parse_configs
from opensora.utils.sampling import get_res_lin_function, time_shift


def set_seed(seed):  # colossalai.utils.set_seed: the same seed on every rank
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def main():
    cfg = parse_configs()
    if "WORLD_SIZE" in os.environ:
        dist.init_process_group("gloo")
    rank = dist.get_rank() if dist.is_initialized() else 0
    if rank == 0:
        logging.basicConfig(level=logging.INFO, format="%(message)s")
    dtype = torch.bfloat16 if cfg.get("dtype", "fp32") == "bf16" else torch.float32
    set_seed(cfg.get("seed", 1024))
    compression = cfg.get("ae_spatial_compression", 8)

    def encode(x):  # a causal video VAE's geometry: 1 + (n - 1) // 4 latent frames
        b, _, n, h, w = x.shape
        return torch.zeros(b, 16, 1 + (n - 1) // 4, h // compression, w // compression)

    @torch.no_grad()
    def prepare_inputs(batch):
        x = batch.pop("video")
        bs = x.shape[0]
        x_0 = encode(x)
        shift_alpha = get_res_lin_function()((x_0.shape[-1] * x_0.shape[-2]) // 4)
        shift_alpha *= math.sqrt(x_0.shape[-3])
        t = torch.sigmoid(torch.randn((bs), device=x.device))
        t = time_shift(shift_alpha, t).to(dtype)
        return t

    buckets = cfg.buckets
    if isinstance(buckets, dict):
        buckets = buckets[rank]
    num_steps_per_epoch = len(buckets)
    start_epoch, start_step = cfg.get("start_epoch", 0), cfg.get("start_step", 0)
    records = []
    for epoch in range(start_epoch, cfg.get("epochs", 1)):
        for step, (bs, n, h, w) in enumerate(buckets[start_step:], start=start_step):
            t = prepare_inputs({"video": torch.zeros(bs, 3, n, h, w)})
            records.append(dict(epoch=epoch, step=step, t=t.float().tolist()))
        start_step = 0
    with open(cfg.out.format(rank=rank), "w") as f:
        json.dump(records, f)


if __name__ == "__main__":
    main()
'''

INFERENCE_2 = '''
import json
import logging

from opensora.utils.config import parse_configs
from opensora.utils.sampling import SamplingOption, prepare_api


def main():
    cfg = parse_configs()
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    api_fn = prepare_api()
    opt = SamplingOption(**cfg.sampling_option)
    timesteps = api_fn(opt, patch_size=cfg.get("patch_size", 2),
                       spatial_compression=cfg.get("ae_spatial_compression", 16))
    with open(cfg.out.format(rank=0), "w") as f:
        json.dump(timesteps, f)


if __name__ == "__main__":
    main()
'''


def write_fake_opensora2(root):
    """Create ``root/opensora`` shaped like Open-Sora 2.0, and ``root/train.py`` / ``root/inference.py`` shaped like
    its scripts; returns ``root``."""
    pkg = root / "opensora"
    for sub in ("", "utils", "acceleration"):
        (pkg / sub).mkdir(parents=True, exist_ok=True)
        (pkg / sub / "__init__.py").write_text("")
    (pkg / "registry.py").write_text(REGISTRY_2)
    (pkg / "utils" / "sampling.py").write_text(SAMPLING_2)
    (pkg / "utils" / "config.py").write_text(CONFIG_2)
    (pkg / "acceleration" / "parallel_states.py").write_text(PARALLEL_STATES_2)
    (root / "train.py").write_text(TRAIN_2)
    (root / "inference.py").write_text(INFERENCE_2)
    return root
