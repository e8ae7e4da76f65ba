"""Where ``rflow-timeshift`` is registered: Open-Sora's own scheduler registry, or ours without Open-Sora."""

from __future__ import annotations

import copy
from typing import Any

from mmengine.registry import Registry

from .scheduler import RFlowTimeShift

try:  # Open-Sora 1.x: registering here lets its unchanged train.py build us from a config.
    from opensora.registry import SCHEDULERS
except ImportError:  # standalone, or Open-Sora 2.0, which has no scheduler registry
    SCHEDULERS = Registry("scheduler")

SCHEDULER_NAME = "rflow-timeshift"

if SCHEDULERS.get(SCHEDULER_NAME) is not RFlowTimeShift:
    SCHEDULERS.register_module(name=SCHEDULER_NAME, module=RFlowTimeShift)


def build_module(module: Any, builder: Registry, **overrides: Any) -> Any:
    """Open-Sora's ``build_module``: build a config dict (copied, then overridden) through ``builder``."""
    if module is None or not isinstance(module, dict):
        return module
    cfg = copy.deepcopy(module)
    cfg.update(overrides)
    return builder.build(cfg)
