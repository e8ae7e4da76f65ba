"""Frame-aware timestep-shift policies for Open-Sora's rectified-flow scheduler.

Importing the package registers the ``rflow-timeshift`` scheduler into Open-Sora's ``SCHEDULERS`` registry
when Open-Sora 1.x is importable, otherwise into the package's own, so an mmengine config selects it with
``custom_imports = dict(imports=["opensora_timeshift_patch"])`` and
``scheduler = dict(type="rflow-timeshift", shift_mode="latent")``. Imported while Open-Sora 2.0 parses a config
(which has no scheduler registry), it hooks 2.0's training script and inference schedule instead (:mod:`.opensora2`).

The core (:class:`Recipe`, the guard's :func:`judge`, the declaration :data:`SETTINGS` and the registries) works
without Open-Sora; :mod:`.opensora1`, :mod:`.opensora2` and :mod:`.cli` consume it.
"""

from . import opensora2
from .core import Recipe
from .guard import Verdict, judge
from .opensora1.patch import is_patched, patch, patched, unpatch
from .opensora1.registry import SCHEDULERS, build_module
from .opensora1.scheduler import RFlowTimeShift
from .opensora2 import Opensora2Timesteps
from .policies import SHIFT_MODES, degenerate_frame_counts, register_policy, temporal_size
from .sampling import SAMPLE_METHODS, TimestepDistribution, register_distribution
from .settings import SETTINGS, Setting, SettingError
from .shift import (ON_DEGENERATE, RESOLUTION_SHIFTS, SHIFT_FAMILIES, MetaError, TimestepShift, exponential_shift,
                    rational_shift, timestep_transform)
from .weighting import WEIGHTING_NAMES, LossWeighting, register_weighting

__version__ = "0.1.0"

opensora2.hook_config_parsing()

__all__ = [
    # the core
    "Recipe", "Verdict", "judge", "SETTINGS", "Setting", "SettingError", "MetaError",
    "SHIFT_MODES", "SAMPLE_METHODS", "WEIGHTING_NAMES", "ON_DEGENERATE", "SHIFT_FAMILIES", "RESOLUTION_SHIFTS",
    "register_policy", "register_distribution", "register_weighting", "temporal_size", "degenerate_frame_counts",
    "TimestepDistribution", "TimestepShift", "LossWeighting", "rational_shift", "exponential_shift",
    "timestep_transform",
    # Open-Sora 1.x
    "RFlowTimeShift", "SCHEDULERS", "build_module", "patch", "patched", "unpatch", "is_patched",
    # Open-Sora 2.0
    "Opensora2Timesteps",
]
