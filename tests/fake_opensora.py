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
