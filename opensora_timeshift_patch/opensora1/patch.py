"""Swap Open-Sora's stock ``timestep_transform`` for a policy-aware one, so plain ``type="rflow"`` gets it.

Python binds ``from .x import timestep_transform`` per module, so the name is replaced in every Open-Sora
module that holds it: ``opensora.schedulers.rf`` (sampling, 1.2 and 1.3), ``...rf.rectified_flow``
(training, 1.2) and ``...rf.time_sampler`` (training, 1.3).
"""

from __future__ import annotations

import contextlib
import importlib
import sys
from types import ModuleType
from typing import Any, Callable, Dict, Iterator, List

from .. import opensora2
from ..settings import SETTINGS
from ..shift import TimestepShift, timestep_transform

TRANSFORM_MODULES = (
    "opensora.schedulers.rf",
    "opensora.schedulers.rf.rectified_flow",
    "opensora.schedulers.rf.time_sampler",
)
_ORIGINALS: Dict[str, Callable[..., Any]] = {}
_MARK = "__opensora_timeshift__"


def _stock_modules() -> List[ModuleType]:
    """The imported Open-Sora modules that bind ``timestep_transform``."""
    try:
        importlib.import_module(TRANSFORM_MODULES[0])
    except ImportError as err:
        raise ImportError(
            f"patching needs Open-Sora 1.2 or 1.3 importable (opensora.schedulers.rf failed: {err}). Install Open-Sora "
            "from its checkout, or select the policy with scheduler type 'rflow-timeshift', which works without it."
        ) from err
    found = [sys.modules[m] for m in TRANSFORM_MODULES if hasattr(sys.modules.get(m), "timestep_transform")]
    if not found:
        raise ImportError("opensora.schedulers.rf binds no timestep_transform: only Open-Sora 1.2 and 1.3 can be patched")
    return found


def is_patched() -> bool:
    """Whether :func:`patch` is in effect."""
    return bool(_ORIGINALS)


def patch(shift_mode: str = "latent", on_degenerate: str = "error", **policy_params: Any) -> None:
    """Make Open-Sora's own ``timestep_transform`` follow ``shift_mode``; idempotent, undone by :func:`unpatch`.

    Open-Sora's call sites keep passing their own ``scale``, ``num_timesteps`` and 1.3 keywords. On 1.3 the
    scale applies to videos only, as 1.3 does.
    """
    # Bad settings fail here, not at the first step, and as the scheduler refuses them (None is no shift_mode).
    shift_mode, on_degenerate = SETTINGS["shift_mode"].check(shift_mode), SETTINGS["on_degenerate"].check(on_degenerate)
    TimestepShift(shift_mode, on_degenerate, **policy_params)
    modules = _stock_modules()
    scale_images = not any(m.__name__.endswith("time_sampler") for m in modules)

    def transform(t: Any, model_kwargs: Any, *args: Any, **kwargs: Any) -> Any:
        kwargs.setdefault("scale_images", scale_images)
        return timestep_transform(t, model_kwargs, *args, shift_mode=shift_mode, on_degenerate=on_degenerate,
                                  **policy_params, **kwargs)

    setattr(transform, _MARK, dict(shift_mode=shift_mode, on_degenerate=on_degenerate, **policy_params))
    for module in modules:
        current = module.timestep_transform
        if not hasattr(current, _MARK):
            _ORIGINALS[module.__name__] = current
        module.timestep_transform = transform


def unpatch() -> None:
    """Restore the objects :func:`patch` replaced, and Open-Sora 2.0's hooks (:mod:`.opensora2`); a no-op when
    nothing is patched."""
    opensora2.unpatch()
    for name, original in _ORIGINALS.items():
        sys.modules[name].timestep_transform = original
    _ORIGINALS.clear()


@contextlib.contextmanager
def _restoring() -> Iterator[List[ModuleType]]:
    """Yield the stock modules; on exit put back whatever they bound, and the patch bookkeeping."""
    modules = _stock_modules()
    saved = [(m, m.timestep_transform) for m in modules]
    saved_originals = dict(_ORIGINALS)
    try:
        yield modules
    finally:
        for module, fn in saved:
            module.timestep_transform = fn
        _ORIGINALS.clear()
        _ORIGINALS.update(saved_originals)


@contextlib.contextmanager
def patched(shift_mode: str = "latent", on_degenerate: str = "error", **policy_params: Any) -> Iterator[None]:
    """``with patched("frames16"): ...``: :func:`patch` inside the block, the previous state after it."""
    with _restoring():
        patch(shift_mode, on_degenerate, **policy_params)
        yield


@contextlib.contextmanager
def swapped_transform(fn: Callable[..., Any]) -> Iterator[None]:
    """Bind ``fn`` as Open-Sora's ``timestep_transform`` for the block (how ``rflow-timeshift`` samples)."""
    with _restoring() as modules:
        for module in modules:
            module.timestep_transform = fn
        yield
