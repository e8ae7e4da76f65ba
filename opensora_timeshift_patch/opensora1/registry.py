"""Where ``rflow-timeshift`` is registered: Open-Sora's own scheduler registry, or ours without Open-Sora."""

from __future__ import annotations

import copy
from typing import Any

from mmengine.registry import Registry

from .scheduler import RFlowTimeShift, warn_partial_install


def _scheduler_registry() -> Registry:
    """Open-Sora 1.x's ``SCHEDULERS`` (registering there lets its unchanged train.py build us), else our own."""
    try:
        from opensora.registry import SCHEDULERS as registry
    # Standalone, or Open-Sora 2.0, which has no scheduler registry (and whose registry.py does not even import on
    # Python 3.9: its `dict | nn.Module` annotations raise TypeError).
    except Exception:
        return Registry("scheduler")
    try:
        # What its first build would do: import opensora.schedulers. With a dependency of Open-Sora's missing, that
        # fails on every build, so a registry that cannot build anything is not used.
        registry.import_from_location()
    except ImportError as err:
        warn_partial_install(f"opensora.schedulers failed to import ({err})")
        return Registry("scheduler")
    return registry


SCHEDULERS = _scheduler_registry()

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
