"""Frame-aware timestep-shift policies for Open-Sora's rectified-flow scheduler.

Importing the package registers the ``rflow-timeshift`` scheduler into Open-Sora's ``SCHEDULERS`` registry
when Open-Sora 1.x is importable, otherwise into the package's own, so an mmengine config selects it with
``custom_imports = dict(imports=["opensora_timeshift_patch"])`` and
``scheduler = dict(type="rflow-timeshift", shift_mode="latent")``. Imported while Open-Sora 2.0 parses a config
(which has no scheduler registry), it hooks 2.0's training script and inference schedule instead (:mod:`.opensora2`).
"""

from . import opensora2
from .opensora2 import Opensora2Timesteps
from .opensora1.patch import is_patched, patch, patched, unpatch
from .policies import SHIFT_MODES, degenerate_frame_counts, register_policy, temporal_size
from .opensora1.registry import SCHEDULERS, build_module
from .sampling import SAMPLE_METHODS, TimestepDistribution, register_distribution
from .opensora1.scheduler import RFlowTimeShift
from .settings import SETTINGS, Setting, SettingError
from .weighting import WEIGHTING_NAMES, LossWeighting, register_weighting
from .shift import (ON_DEGENERATE, RESOLUTION_SHIFTS, SHIFT_FAMILIES, MetaError, TimestepShift, exponential_shift,
                    rational_shift, timestep_transform)

__version__ = "0.1.0"

opensora2.hook_config_parsing()

__all__ = [
    "SHIFT_MODES", "ON_DEGENERATE", "SAMPLE_METHODS", "SHIFT_FAMILIES", "RESOLUTION_SHIFTS", "SCHEDULERS", "SETTINGS",
    "WEIGHTING_NAMES", "LossWeighting", "register_weighting", "MetaError", "Opensora2Timesteps", "RFlowTimeShift", "Setting", "SettingError", "TimestepShift", "TimestepDistribution", "build_module", "degenerate_frame_counts",
    "exponential_shift", "is_patched", "patch", "patched", "rational_shift", "register_distribution",
    "register_policy", "temporal_size", "timestep_transform", "unpatch",
]
