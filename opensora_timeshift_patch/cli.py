"""``opensora-timeshift``: see, audit and configure the timestep shift before spending GPU time.

Exit status is a contract a launch script may read: 0 done; 1 only for ``audit`` finding clips that would
collapse to t = 0 or be refused by the guard; 2 for bad input or usage (one line on stderr); 3 for an internal
error (its traceback on stderr).
"""

from __future__ import annotations

import argparse
import ast
import atexit
import contextlib
import csv
import json
import keyword
import logging
import math
import os
import re
import reprlib
import shutil
import sys
import tempfile
import traceback
import warnings
from collections import Counter
from pathlib import Path
from typing import Any, Callable, Dict, Iterator, List, Mapping, NamedTuple, Optional, Sequence, Tuple

import numpy as np
import torch

from .buckets import (BUCKET_RESOLUTIONS, MAX_FRAMES, OPENSORA2_NAME, OPENSORA2_NAME_HELP, RESOLUTION_NAMES,
                      BucketConfigError, Opensora2Geometry, bucket_rule_of, closest_size, config_buckets,
                      opensora2_base_size, opensora2_fps_max, opensora2_geometry, opensora2_sizes, sampling_interval)
from .opensora2 import SCHEDULER_TYPE, Opensora2Timesteps
from .per_bucket import BucketRule, rule_for
from .policies import SHIFT_MODES, temporal_size
from .settings import (DISTRIBUTIONS, MAX_SHIFT_FACTOR, OPENSORA_ONLY, POLICIES, SETTINGS, WEIGHTINGS, FunctionRegistry,
                       Setting, SettingError)
from .shift import META_KEYS, SHIFT_SETTINGS, TimestepShift
from .weighting import LossWeighting, effective_emphasis

DEFAULT_FRAMES = [1, 8, 16, 17, 32, 51, 102]
DEFAULT_RESOLUTIONS = ["256x256", "512x512", "720x1280"]
OPENSORA_VERSIONS = ["1.2", "1.3", "2.0"]
# Open-Sora 2.0 trains on 4k + 1 frames (configs/diffusion/train/stage1.py: 1, 5, ..., 129) at 256px and 768px
DEFAULT_FRAMES_2 = [1, 16, 33, 129]
DEFAULT_RESOLUTIONS_2 = ["256px", "768px"]
# Open-Sora 2.0's two autoencoders as its configs set them up: the HunyuanVideo VAE of configs/diffusion/train/image.py
# (causal, 8x, model patch_size 2, ae_spatial_compression unset: 16) and the DC-AE of high_compression.py (non-causal,
# 32x, patch_size 1, ae_spatial_compression 32).
VAES = {"hunyuan": Opensora2Geometry(16, 2, True), "dc-ae": Opensora2Geometry(32, 1, False)}
QUANTILES = (0.05, 0.5, 0.95)
CSV_COLUMNS = ("num_frames", "height", "width")
CONFIG_SUFFIXES = (".py", ".json", ".yaml", ".yml")  # what mmengine's Config.fromfile reads
# Bounds far beyond any real video, so that a typo fails fast instead of allocating or plotting for minutes.
MAX_SIDE = 100_000
MAX_SAMPLES = 10_000_000
MAX_DPI = 1000
# Bare words that look like a literal in another language: taking them as strings would silently invert a flag.
AMBIGUOUS_WORDS = {"true", "false", "none", "null", "nan", "inf", "infinity"}
BARE_WORD = re.compile(r"[A-Za-z_][A-Za-z0-9_.\-]*", re.ASCII)
# A number as pandas parses it; Python's float() also takes "1_000", "nan" and non-ASCII digits, pandas does not.
CSV_NUMBER = re.compile(r"\s*[+-]?(\d+\.?\d*|\.\d+)([eE][+-]?\d+)?\s*", re.ASCII)

_BAD_INPUT = "  2  bad input or usage: one line on stderr, no traceback\n"
_BUG = "  3  internal error: a traceback on stderr (a bug: please report it)"
_COLLAPSE = "some clip would train with every timestep at t = 0, or be refused by the guard"
EXIT_STATUS = ("exit status:\n  0  done (audit: no clip would train at t = 0)\n"
               f"  1  audit only: {_COLLAPSE}\n{_BAD_INPUT}{_BUG}")
AUDIT_EXIT_STATUS = f"exit status:\n  0  no clip would train at t = 0\n  1  {_COLLAPSE}\n{_BAD_INPUT}{_BUG}"
PLAIN_EXIT_STATUS = f"exit status:\n  0  done\n{_BAD_INPUT}{_BUG}"


class UsageError(Exception):
    """Bad input from the command line or a file: reported in one line, exit status 2."""


class Parser(argparse.ArgumentParser):
    """argparse whose own errors are one line on stderr, exit status 2, like every other input error here."""

    def error(self, message: str) -> Any:
        self.exit(2, f"{self.prog}: error: {one_line(message)} (see {self.prog} --help)\n")


def one_line(text: Any) -> str:
    return " ".join(part.strip() for part in str(text).splitlines() if part.strip())


def short(value: Any) -> str:
    """repr of a user's value, cut to a readable length for an error message."""
    return reprlib.repr(value)


# --- shared helpers ----------------------------------------------------------------------------------------

def _given_options(namespace: argparse.Namespace) -> set:
    """The options already seen on this command line (argparse itself does not say)."""
    if not hasattr(namespace, "_given_options"):
        setattr(namespace, "_given_options", set())
    return getattr(namespace, "_given_options")


class Once(argparse.Action):
    """Store an option's value, refusing the option a second time: argparse would silently keep only the last."""

    def __call__(self, parser: argparse.ArgumentParser, namespace: argparse.Namespace, values: Any,
                 option_string: Optional[str] = None) -> None:
        given = _given_options(namespace)
        if self.dest in given:
            raise argparse.ArgumentError(self, "given more than once: give it once"
                                         + (", with all its values" if self.nargs in ("+", "*") else ""))
        given.add(self.dest)
        setattr(namespace, self.dest, values)


class Accumulate(argparse.Action):
    """A list option that may be repeated: ``--frames 16 --frames 17`` is ``--frames 16 17`` (argparse would keep only
    the last); the first use replaces the default, and a value given twice is kept once."""

    def __call__(self, parser: argparse.ArgumentParser, namespace: argparse.Namespace, values: Any,
                 option_string: Optional[str] = None) -> None:
        given = _given_options(namespace)
        before = list(getattr(namespace, self.dest)) if self.dest in given else []
        given.add(self.dest)
        setattr(namespace, self.dest, list(dict.fromkeys([*before, *values])))


WHOLE_NUMBER = re.compile(r"\s*[+-]?[0-9]+\s*", re.ASCII)


def int_in(low: int, high: int) -> Callable[[str], int]:
    """argparse type: a whole number in [low, high], in ASCII digits (int() would also take '\u0663' or '1_0')."""

    def parse(text: str) -> int:
        if not WHOLE_NUMBER.fullmatch(text):
            raise argparse.ArgumentTypeError(f"{text!r} is not a whole number in ASCII digits")
        value = int(text)
        if not low <= value <= high:
            raise argparse.ArgumentTypeError(f"{text!r} must be from {low} to {high}")
        return value

    return parse


def parse_resolution(text: str) -> Any:
    """``"720x1280"`` (height x width) as a pair, or an Open-Sora bucket name such as ``"720p"`` or ``"256px"``, kept
    as the name: its size depends on the Open-Sora version (see :func:`resolutions_of`)."""
    if text in RESOLUTION_NAMES or OPENSORA2_NAME.fullmatch(text):
        return text
    match = re.fullmatch(r"(\d+)[xX](\d+)", text, re.ASCII)
    if not match:
        raise argparse.ArgumentTypeError(
            f"resolution {text!r} is not HxW (e.g. 720x1280) or one of {', '.join(BUCKET_RESOLUTIONS)} "
            f"(or Open-Sora 1.3's NAME_16d, or for 2.0 {OPENSORA2_NAME_HELP})")
    h, w = int(match[1]), int(match[2])
    if not (1 <= h <= MAX_SIDE and 1 <= w <= MAX_SIDE):
        raise argparse.ArgumentTypeError(f"resolution {text!r} must have a height and width from 1 to {MAX_SIDE}")
    return h, w


def setting_option(p: argparse.ArgumentParser, setting: Setting, *also: Setting, **kwargs: Any) -> None:
    """An option for a declared setting: its type, allowed values, default and doc come from the one declaration.

    ``also``: the same name declared by other owners (``loc`` of logit-normal and of logsnr) for one shared option,
    which takes what any of the declarations allows; the owner selected then decides, when the setting is built.
    A ``list`` setting takes one or more values (``nargs="+"``), each checked as an item of the list.
    """
    declared = (setting, *also)
    if setting.type == "choice":
        kwargs.setdefault("choices", list(dict.fromkeys(c for s in declared for c in (s.choices or ()))))
    elif setting.type in ("int", "float", "list"):
        kwargs["type"] = _number_parser(declared)
        if setting.type == "list":
            kwargs.setdefault("nargs", "+")
            kwargs.setdefault("metavar", "T")
    elif setting.type == "bool":
        kwargs["type"] = _bool_parser(setting)
    elif setting.type == "any":
        kwargs["type"] = lambda text: parse_set_item(f"{setting.name}={text}")[1]
    default = kwargs.get("default", setting.default)
    kwargs.setdefault("help", f"{setting.doc} ({setting.allowed()}; default "
                              f"{setting.default if default is None else default!r})".replace("%", "%%"))
    kwargs.setdefault("action", Once)
    p.add_argument("--" + setting.name.replace("_", "-"), **kwargs)


def _number_parser(declared: Sequence[Setting]) -> Callable[[str], Any]:
    """argparse type for a numeric setting (or one item of a list setting): ASCII digits, then what one of the
    declarations allows (each declaration's own message when none does)."""
    setting = declared[0]

    def parse(text: str) -> Any:
        try:
            if not text.isascii() or "_" in text:  # int() and float() also read '\u0663' and '1_0'
                raise ValueError(text)
            value = int(text) if setting.type == "int" else float(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{setting.name}={text!r} is not allowed: use {setting.allowed()}, "
                                             "in ASCII digits") from None
        errors = []
        for s in declared:
            try:
                return s.check([value])[0] if s.type == "list" else s.check(value)
            except SettingError as err:
                errors.append(err)
        raise argparse.ArgumentTypeError(str(errors[0]))

    return parse


def _bool_parser(setting: Setting) -> Callable[[str], bool]:
    def parse(text: str) -> bool:
        if text not in ("True", "False"):
            raise argparse.ArgumentTypeError(f"{setting.name}={text!r} is not allowed: use True or False")
        return text == "True"

    return parse


PARAM = "param:"  # the dest prefix of the options generated for registered functions' parameters


def registry_options(p: argparse.ArgumentParser, registry: FunctionRegistry, selector: str) -> None:
    """One option per parameter name declared by any function of ``registry`` (``--loc`` for logit-normal and
    logsnr, ``--mode-scale``, ``--timesteps``, ...), generated from the declarations; ``selector`` is the option
    choosing the function (``sample-method``). A parameter named like one of the command's own options is left to
    ``--set``."""
    by_name: Dict[str, List[Tuple[str, Setting]]] = {}
    for owner in registry:
        for name, setting in registry.params(owner).items():
            by_name.setdefault(name, []).append((owner, setting))
    for name, declared in by_name.items():
        uses = [f"{s.doc or name} ({s.allowed()}; default {s.default!r})" for _, s in declared]
        if len(declared) > 1:
            uses = [f"{owner}: {use}" for (owner, _), use in zip(declared, uses)]
        text = f"--{selector} {' or '.join(owner for owner, _ in declared)} only: {'; '.join(uses)}"
        extra = {} if declared[0][1].type in ("choice", "list") else {"metavar": name.upper()}
        try:
            setting_option(p, *(s for _, s in declared), default=None, dest=PARAM + name,
                           help=text.replace("%", "%%"), **extra)
        except argparse.ArgumentError:
            pass


def registry_params(args: argparse.Namespace, registry: FunctionRegistry, selected: str, selector: str
                    ) -> Dict[str, Any]:
    """The parameters of ``registry``'s functions given on the command line; one the ``selected`` function does not
    take (it would not apply) is refused, naming its option and who takes it."""
    given = {}
    for name in dict.fromkeys(n for owner in registry for n in registry.params(owner)):
        value = getattr(args, PARAM + name, None)
        if value is None:
            continue
        if name not in registry.params(selected):
            raise UsageError(f"--{name.replace('_', '-')} applies to --{selector} "
                             f"{' or '.join(registry.owners(name))} only, not {selected!r}: remove it")
        given[name] = value
    return given


def add_selection(p: argparse.ArgumentParser) -> None:
    p.add_argument("--opensora-version", choices=OPENSORA_VERSIONS, default="1.2", action=Once,
                   help="1.2 or 1.3 (default 1.2; the same table: every mode, 1.2's rule is 'legacy', 1.3's 'v13'), "
                        "or 2.0: latent frames, tokens and alpha under 2.0's stock rule and under your settings "
                        "(--mode, --sample-method and its parameters, --set)")
    p.add_argument("--frames", type=int_in(1, MAX_FRAMES), nargs="+", default=DEFAULT_FRAMES, metavar="N",
                   action=Accumulate,
                   help=f"pixel frame counts, 1 to {MAX_FRAMES} (repeatable; default: "
                        f"{' '.join(map(str, DEFAULT_FRAMES))}; 2.0: {' '.join(map(str, DEFAULT_FRAMES_2))})")
    p.add_argument("--resolution", type=parse_resolution, nargs="+", metavar="HxW", action=Accumulate,
                   default=list(DEFAULT_RESOLUTIONS),
                   help=f"resolutions as HxW (sides 1 to {MAX_SIDE}) or Open-Sora bucket names (1.x: 720p, ...; "
                        f"2.0: 256px, 768px, 720p, ..., at the name's square or 16:9 size) (default: "
                        f"{' '.join(DEFAULT_RESOLUTIONS)}; 2.0: {' '.join(DEFAULT_RESOLUTIONS_2)})")
    p.add_argument("--mode", choices=SHIFT_MODES, nargs="+", default=list(SHIFT_MODES), action=Accumulate,
                   help="shift modes (default: all; 2.0: the settings' own, 'latent' unless --set says otherwise)")
    p.add_argument("--sample-method", choices=list(DISTRIBUTIONS), default="logit-normal", action=Once,
                   help="base distribution of t (default: logit-normal, as Open-Sora's training configs); its "
                        "parameters are the options below, each for the methods it names")
    registry_options(p, DISTRIBUTIONS, "sample-method")
    setting_option(p, SETTINGS["loss_weighting"], default=None,
                   help="1.x only: the loss weighting w(t) of the shifted timestep, to show its effective emphasis "
                        "(where the gradient budget goes: the density of the shifted t times w(t), normalised); "
                        f"one of {', '.join(WEIGHTINGS)} (default: none shown)")
    setting_option(p, SETTINGS["max_loss_weight"], default=None)
    registry_options(p, WEIGHTINGS, "loss-weighting")
    p.add_argument("--vae", choices=list(VAES), action=Once,
                   help="2.0 only: the autoencoder, as 2.0's configs set it up: hunyuan (default; causal, 8x, model "
                        "patch_size 2) or dc-ae (high_compression.py: non-causal, 32x, patch_size 1)")
    p.add_argument("--set", nargs="+", action="extend", type=parse_set_item, metavar="KEY=VALUE",
                   help="any other rflow-timeshift setting, as a Python literal or a bare word: on 1.x those of the "
                        "shift, the distribution and the weighting (e.g. --set temporal_exponent=0.3, --set "
                        "resolution_shift=linear token_count=video, --set t_range=(0.1,1.0)); on 2.0 any setting 2.0 "
                        "reads, for the settings rows (e.g. --set patch_size=1 timestep_rng=per_sample)")


def resolutions_of(args: argparse.Namespace, geometry: Optional[Opensora2Geometry]) -> List[Tuple[int, int]]:
    """The --resolution values as (H, W): names sized as Open-Sora 1.x (``geometry`` None) or 2.0 sizes them."""
    given = "resolution" in _given_options(args)
    values = args.resolution if given else (DEFAULT_RESOLUTIONS if geometry is None else DEFAULT_RESOLUTIONS_2)
    out = []
    for value in values:
        if isinstance(value, str) and re.fullmatch(r"\d+[xX]\d+", value, re.ASCII):
            value = parse_resolution(value)
        if isinstance(value, tuple):
            out.append(value)
        elif geometry is None:
            if value not in RESOLUTION_NAMES:
                raise UsageError(f"--resolution {value!r} is an Open-Sora 2.0 name: pass --opensora-version 2.0, or "
                                 f"give HxW or one of {', '.join(BUCKET_RESOLUTIONS)}")
            out.append(RESOLUTION_NAMES[value])
        else:
            if not OPENSORA2_NAME.fullmatch(value):
                raise UsageError(f"--resolution {value!r} is not an Open-Sora 2.0 name: give HxW or "
                                 f"{OPENSORA2_NAME_HELP}")
            try:
                out.append(opensora2_base_size(value, geometry.token_pixels))
            except BucketConfigError as err:
                raise UsageError(f"--{err}") from None
    return list(dict.fromkeys(out))


def chosen_settings(args: argparse.Namespace, v2: bool) -> Dict[str, Any]:
    """The rflow-timeshift settings chosen on an inspect or plot command line: --sample-method (1.x: always, the
    command's default being logit-normal; 2.0: when given) and its parameters, --loss-weighting, --max-loss-weight
    and the weighting's parameters, then --set. Validated where they are built, not here."""
    given = _given_options(args)
    settings: Dict[str, Any] = {}
    if "sample_method" in given:
        settings["sample_method"] = args.sample_method
    settings.update(registry_params(args, DISTRIBUTIONS, args.sample_method, "sample-method"))
    for key in ("loss_weighting", "max_loss_weight"):
        if getattr(args, key) is not None:
            settings[key] = getattr(args, key)
    settings.update(registry_params(args, WEIGHTINGS, args.loss_weighting or "none", "loss-weighting"))
    for key, value in args.set or []:
        if key in settings or (key == "shift_mode" and "mode" in given):
            raise UsageError(f"--set {key}=...: {key} is already set (by its own option, or an earlier --set)")
        settings[key] = value
    if not v2:
        settings.setdefault("sample_method", args.sample_method)
    return settings


# What inspect and plot show on Open-Sora 1.x: the shift (each --mode, guarded as on_degenerate='error' guards it,
# with stock's numbers beside), the timestep distribution and the loss weighting. The stream settings are taken too
# (they decide which sample draws which t, not the distribution shown; fixed_order='cycle' needs timestep_rng=
# 'per_sample'). Other scheduler settings would be accepted and silently change nothing shown, so --set refuses them.
SHOWN_ON_1X = (set(SHIFT_SETTINGS) - {"shift_mode", "on_degenerate"}) | {
    "sample_method", "t_range", "t_range_mode", "loss_weighting", "max_loss_weight", "timestep_rng", "timestep_seed",
    "stratified", "timestep_start_step", "bucket_settings"}
NOT_SHOWN_ON_1X = {
    "shift_mode": "use --mode (every mode given is shown)",
    "on_degenerate": "inspect and plot show stock's numbers and mark what on_degenerate='error' refuses",
    "use_timestep_transform": "inspect and plot show the shift",
}


class Mode1(NamedTuple):
    """One Open-Sora 1.x --mode under the chosen settings."""

    mode: str
    scheduler: Any  # the RFlowTimeShift training would build: its distribution, weighting, and guarded shift
    stock: TimestepShift  # the same shift under on_degenerate='ignore': stock's numbers, a collapse included
    children: Tuple["Mode1", ...] = ()  # per bucket_settings rule, the mode under that rule's settings
    rule: Optional[int] = None  # for a child, the index of its rule


def unguarded(shift: TimestepShift) -> TimestepShift:
    """``shift`` under on_degenerate='ignore': stock's numbers, a collapse included."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        given = {k: v for k, v in shift.settings.items() if v != SETTINGS[k].default}  # as the shift was given
        return TimestepShift(**{**given, **shift.policy_params, "on_degenerate": "ignore"})


def with_rules(mode: str, scheduler: Any, stock: TimestepShift) -> Mode1:
    """The Mode1 of a scheduler, with one child per bucket_settings rule (the rule's own scheduler, built by the
    scheduler itself from the rule's merged settings)."""
    children = tuple(Mode1(mode, child, unguarded(child.shift), (), rule.index)
                     for rule, child in zip(scheduler.rules, scheduler._per_bucket))
    return Mode1(mode, scheduler, stock, children)


def for_bucket(mode: Mode1, hw: Tuple[int, int], frames: int) -> Mode1:
    """The mode under the settings a clip of this size gets: its bucket_settings rule's, else the scheduler's."""
    applies = rule_for(mode.scheduler.rules, frames, *hw)
    return mode if applies is None else mode.children[applies.index]


def mode_label(mode: Mode1) -> str:
    """A mode's name in a plot legend, with the rule whose settings it is under."""
    return mode.mode + ("" if mode.rule is None else f" under bucket_settings[{mode.rule}]")


def rule_cell(rule: Optional[int]) -> str:
    return "-" if rule is None else f"[{rule}]"


def rule_text(rule: BucketRule) -> str:
    """A rule in words: where it applies, and its settings."""
    return f"{rule}: " + ", ".join(f"{k}={v!r}" for k, v in rule.settings.items())


def opensora1_modes(args: argparse.Namespace) -> Tuple[List[Mode1], Dict[str, Any]]:
    """The scheduler for each --mode, built from the chosen settings as training builds it (standalone backend), so
    it accepts and refuses what training would, and the chosen settings. A policy's parameter goes to the selected
    modes that take it."""
    settings = chosen_settings(args, v2=False)
    for key, value in settings.items():
        if key in NOT_SHOWN_ON_1X or (key in SETTINGS and key not in SHOWN_ON_1X):
            why = NOT_SHOWN_ON_1X.get(key, "inspect and plot show the shift, the timestep distribution and the loss "
                                           "weighting, which it does not change (config --set takes it)")
            raise UsageError(f"--set {key}={short(value)}: not for inspect and plot on Open-Sora 1.x: {why}")
    out = []
    for mode in args.mode:
        mine = {k: v for k, v in settings.items() if not _other_modes_param(k, mode, args.mode)}
        mine["shift_mode"] = mode
        shift = {k: v for k, v in mine.items() if k in SHIFT_SETTINGS or POLICIES.owners(k)}
        try:
            scheduler = build_timeshift(mine)
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                stock = TimestepShift(**{**shift, "on_degenerate": "ignore"})
        except (ValueError, TypeError) as err:
            raise UsageError(str(err)) from err
        out.append(with_rules(mode, scheduler, stock))
    return out, settings


def _other_modes_param(key: str, mode: str, modes: Sequence[str]) -> bool:
    """Whether ``key`` is a parameter of other selected modes' policies, not of ``mode``'s (then ``mode`` skips it;
    a parameter no selected mode takes goes to all, to be refused)."""
    owners = POLICIES.owners(key)
    return bool(owners) and mode not in owners and any(m in owners for m in modes)


def input_file(path: str, what: str) -> str:
    """``path`` if it names a regular file; a named error for a missing path, a directory, a FIFO or a device."""
    if not os.path.exists(path):
        raise UsageError(f"{what} {path!r} does not exist")
    if os.path.isdir(path):
        raise UsageError(f"{what} {path!r} is a directory, not a file")
    if not os.path.isfile(path):
        raise UsageError(f"{what} {path!r} is not a regular file")
    return path


def load_config(path: str, what: str) -> Any:
    """The mmengine ``Config`` of ``path``, or a UsageError saying why it does not load."""
    input_file(path, what)
    if os.path.splitext(path)[1] not in CONFIG_SUFFIXES:
        raise UsageError(f"{what} {path!r}: mmengine reads only {', '.join(CONFIG_SUFFIXES)} configs")
    from mmengine.config import Config

    try:
        return Config.fromfile(path)
    # A config is a program: whatever it raises (even SystemExit, which would pass for a verdict) is its fault.
    except (Exception, SystemExit) as err:
        raise UsageError(f"{what} {path!r} does not load: {type(err).__name__}: {err}") from err


def bucket_row(rule: Mode1, hw: Tuple[int, int], frames: int, emphasis_t: Optional[torch.Tensor] = None
               ) -> Dict[str, Any]:
    """T_eff, shift factor and quantiles of the shifted t for one (mode, resolution, frames) bucket, and with
    ``emphasis_t`` (base timesteps standing for the distribution, see :func:`emphasis_of`) the median of the
    effective emphasis.

    The shift is increasing in t and t = F^-1(u), so the q-quantile of the shifted timestep is exactly the shift
    of F^-1(q): no sampling needed.
    """
    meta = {k: torch.tensor([float(v)], dtype=torch.float64) for k, v in zip(META_KEYS, (*hw, frames))}
    t_eff = rule.stock.temporal_size(meta["num_frames"]).item()
    q = rule.scheduler.distribution(torch.tensor(QUANTILES, dtype=torch.float64))
    batch = {k: v.expand(len(QUANTILES)) for k, v in meta.items()}
    shifted, ratio = rule.stock(q * 1000, batch, num_timesteps=1000, ret_ratio=True)
    row = dict(mode=rule.mode, rule=rule.rule, height=hw[0], width=hw[1], frames=frames, t_eff=t_eff,
               shift_factor=ratio[0].item(),
               p5=shifted[0].item(), median=shifted[1].item(), p95=shifted[2].item(), degenerate=False, message=None,
               status="ok")
    try:
        rule.scheduler.shift(q, batch)
    except ValueError as err:
        row.update(degenerate=True, message=str(err), status="collapsed" if t_eff <= 0 else "refused")
    if emphasis_t is not None:
        try:
            density = emphasis_of(rule, ratio[0], emphasis_t, EMPHASIS_EDGES)
            median: Optional[float] = 1000 * density_quantile(EMPHASIS_EDGES, density, 0.5)
        except ValueError:  # every weight 0 (a collapse to t = 0 under min_snr): no budget to share out
            median = None
        row["emphasis_median"] = median
    return row


# The effective emphasis is computed, not sampled: the shifted inverse CDF at the midpoints of EMPHASIS_POINTS equal
# cells of (0, 1), histogrammed on EMPHASIS_EDGES (inspect's median: to 0.1 on the 0..1000 scale) or PLOT_EDGES.
EMPHASIS_POINTS = 100_000
EMPHASIS_EDGES = np.linspace(0.0, 1.0, 10_001)
PLOT_EDGES = np.linspace(0.0, 1.0, 101)
STATUS_TEXT = {"ok": "ok", "collapsed": "DEGENERATE (t = 0)", "refused": "refused by the guard"}


class EmphasisPoints:
    """Per distribution, the base timesteps standing for it in the effective emphasis (computed once each); None
    when no weighting is shown."""

    def __init__(self, weighted: bool) -> None:
        self.weighted = weighted
        self._done: Dict[int, Tuple[Any, torch.Tensor]] = {}

    def __call__(self, distribution: Any) -> Optional[torch.Tensor]:
        if not self.weighted:
            return None
        if id(distribution) not in self._done:  # the distribution is kept too, so its id is not reused
            self._done[id(distribution)] = (distribution, distribution(midpoint_uniforms()))
        return self._done[id(distribution)][1]


def midpoint_uniforms(n: int = EMPHASIS_POINTS) -> torch.Tensor:
    """``(i + 1/2) / n`` for i < n: equally likely points of (0, 1), whose image under an inverse CDF stands for the
    distribution without sampling noise."""
    return (torch.arange(n, dtype=torch.float64) + 0.5) / n


def stock_factor(rule: Mode1, hw: Tuple[int, int], frames: int) -> float:
    """The shift factor stock's numbers use for a bucket under a mode (0 for a collapse)."""
    meta = {k: torch.tensor([float(v)], dtype=torch.float64) for k, v in zip(META_KEYS, (*hw, frames))}
    _, ratio = rule.stock(torch.tensor([0.5], dtype=torch.float64), meta, ret_ratio=True)
    return ratio[0].item()


def emphasis_of(rule: Mode1, factor: Any, base_t: torch.Tensor, edges: Any,
                weighting: Optional[LossWeighting] = None) -> np.ndarray:
    """The effective emphasis of a bucket under a mode: ``base_t`` (timesteps in [0, 1] before the shift) shifted
    by the bucket's stock shift ``factor`` (0 for a collapse), then :func:`~.weighting.effective_emphasis` with the
    scheduler's weighting (or ``weighting``: 'none' gives the sampling density)."""
    shifted = rule.stock.curve(base_t, torch.as_tensor(factor, dtype=torch.float64)).clamp(0, 1)
    return effective_emphasis(shifted, rule.scheduler.weighting if weighting is None else weighting, edges)


def density_quantile(edges: Any, density: Any, q: float) -> float:
    """The q-quantile of a density given on bins: the smallest t at which its integral from 0 reaches q, linear
    within a bin (so exact to a bin's width; for mass at one point, the right edge of its bin)."""
    edges = np.asarray(edges, dtype=np.float64)
    cumulative = np.concatenate([[0.0], np.cumsum(np.asarray(density) * np.diff(edges))])
    i = min(max(int(np.searchsorted(cumulative, q - 1e-9)), 1), len(edges) - 1)
    lo, hi = cumulative[i - 1], cumulative[i]
    part = 1.0 if hi <= lo else min(max((q - lo) / (hi - lo), 0.0), 1.0)
    return float(edges[i - 1] + part * (edges[i] - edges[i - 1]))


def format_table(headers: Sequence[str], rows: Sequence[Sequence[Any]]) -> str:
    cells = [[str(c) for c in r] for r in rows]
    widths = [max(len(h), *(len(r[i]) for r in cells)) if cells else len(h) for i, h in enumerate(headers)]
    numeric = [all(_is_number(r[i]) for r in cells) for i in range(len(headers))]
    line = lambda r: "  ".join(c.rjust(w) if num else c.ljust(w)  # noqa: E731
                               for c, w, num in zip(r, widths, numeric)).rstrip()
    return "\n".join([line(headers), line(["-" * w for w in widths])] + [line(r) for r in cells])


def _is_number(text: str) -> bool:
    if text == "-":  # a number that does not exist for this row
        return True
    try:
        float(text.rstrip("!"))
        return True
    except ValueError:
        return False


def fmt(x: float, digits: int = 1) -> str:
    return "nan" if math.isnan(x) else f"{x:.{digits}f}"


# --- inspect -----------------------------------------------------------------------------------------------


def cmd_inspect(args: argparse.Namespace) -> int:
    if args.opensora_version == "2.0":
        return inspect_opensora2(args)
    only_opensora2(args)
    modes, settings = opensora1_modes(args)
    distribution, weighting = modes[0].scheduler.distribution, modes[0].scheduler.weighting
    weighted = "loss_weighting" in settings
    points = EmphasisPoints(weighted)
    rows = []
    for hw in resolutions_of(args, None):
        for n in args.frames:
            for m in modes:
                mode = for_bucket(m, hw, n)
                rows.append(bucket_row(mode, hw, n, points(mode.scheduler.distribution)))
    shift_settings = {k: v for k, v in settings.items() if k in SHIFT_SETTINGS or POLICIES.owners(k)}
    rules = modes[0].scheduler.rules
    rule_distributions = [child.scheduler.distribution for child in modes[0].children]
    if args.json:
        print(json.dumps(dict(sample_method=distribution.sample_method, distribution=repr(distribution),
                              loss_weighting=repr(weighting) if weighted else None, shift_settings=shift_settings,
                              bucket_settings=[dict(rule=r.index, applies=str(r), settings=dict(r.settings),
                                                    distribution=repr(d))
                                               for r, d in zip(rules, rule_distributions)],
                              num_timesteps=1000, rows=rows), indent=1))
        return 0
    print(f"t ~ {distribution!r}, shifted, on the 0..1000 scale (1000 = pure noise)")
    if shift_settings:
        print("shift settings: " + ", ".join(f"{k}={v!r}" for k, v in shift_settings.items()))
    if rules:
        print("bucket_settings: a row takes the settings of the rule it falls under (column rule; '-': the settings "
              "above):")
        for r, d in zip(rules, rule_distributions):
            print(f"  {rule_text(r)}" + ("" if repr(d) == repr(distribution) else f"; t ~ {d!r}"))
    headers = ["resolution", "frames", "mode"] + (["rule"] if rules else []) + ["T_eff", "shift", "p5", "median",
                                                                               "p95"]
    if weighted:
        print(f"loss weight {weighting!r}; w_median: the shifted t below which half the gradient budget lies (the "
              "density of the shifted t times w(t), normalised)")
        headers.append("w_median")
    table = [(f"{r['height']}x{r['width']}", r["frames"], r["mode"], *([rule_cell(r["rule"])] if rules else []),
              fmt(r["t_eff"], 2), fmt(r["shift_factor"], 3),
              fmt(r["p5"]), fmt(r["median"]), fmt(r["p95"]),
              *([] if not weighted else ["-" if r["emphasis_median"] is None else fmt(r["emphasis_median"])]),
              STATUS_TEXT[r["status"]]) for r in rows]
    print(format_table([*headers, "status"], table))
    messages = {r["message"] for r in rows if r["degenerate"]}
    for message in sorted(messages):
        print(f"\nguard (on_degenerate='error'): {message}")
    return 0


# --- Open-Sora 2.0: inspect's and plot's rules ---------------------------------------------------------------

class Rule(NamedTuple):
    """A row label and the 2.0 timesteps it stands for: stock 2.0's rule, or the user's settings."""

    label: str
    timesteps: Opensora2Timesteps


def only_opensora2(args: argparse.Namespace) -> None:
    """Refuse the 2.0-only options under Open-Sora 1.x, where nothing would read them."""
    for option in ("vae",):
        if getattr(args, option, None):
            raise UsageError(f"--{option} applies to --opensora-version 2.0 only, not {args.opensora_version}: remove "
                             "it or pass --opensora-version 2.0")


def build_opensora2(settings: Dict[str, Any], what: str = "") -> Opensora2Timesteps:
    """``Opensora2Timesteps(**settings)``, its refusal (which names the setting) as bad input."""
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            return Opensora2Timesteps(**settings)
    except (ValueError, TypeError) as err:
        raise UsageError(f"{what}{err}") from err


def stock_opensora2() -> Opensora2Timesteps:
    """Stock 2.0's rule, which has no guard: a factor of 0 or beyond [0.01, 100] is shown, not refused."""
    return build_opensora2(dict(on_degenerate="ignore"))


def opensora2_rules(args: argparse.Namespace) -> List[Rule]:
    """Stock 2.0's rule, then the user's settings (one rule per --mode when --mode is given)."""
    given = _given_options(args)
    settings = chosen_settings(args, v2=True)
    rules = [Rule("stock", stock_opensora2())]
    for mode in (args.mode if "mode" in given else [None]):
        chosen = dict(settings) if mode is None else {**settings, "shift_mode": mode}
        rules.append(Rule("settings" if mode is None else f"settings:{mode}", build_opensora2(chosen)))
    return rules


def training_tokens(ts: Opensora2Timesteps, latent_hw: Tuple[int, int]) -> int:
    """Tokens as 2.0's train.py counts them, (h w) // 4, or (h w) // patch_size**2 with the setting patch_size."""
    return (latent_hw[0] * latent_hw[1]) // (2 if ts.patch_size is None else ts.patch_size) ** 2


def inference_tokens(ts: Opensora2Timesteps, latent_hw: Tuple[int, int], geometry: Opensora2Geometry) -> int:
    """Tokens as 2.0's inference counts them: (h w) // the model's patch_size**2, or the setting's."""
    return (latent_hw[0] * latent_hw[1]) // (geometry.patch_size if ts.patch_size is None else ts.patch_size) ** 2


class Alpha(NamedTuple):
    """What a 2.0 rule does with one bucket: its training and inference alpha (None: refused or no shift)."""

    latent: Tuple[int, int, int]
    tokens: int
    infer_tokens: int
    alpha: Optional[float]
    infer_alpha: Optional[float]
    kind: str  # "ok", "collapsed", "clamped", "refused", "no shift", "extreme" (beyond [0.01, 100], no guard)
    message: Optional[str]


def opensora2_alpha(ts: Opensora2Timesteps, geometry: Opensora2Geometry, height: int, width: int,
                    frames: int) -> Alpha:
    """The alpha a 2.0 rule gives a bucket in training and at inference, judged as the guard judges it."""
    latent = geometry.latent(frames, height, width)
    tokens, infer = training_tokens(ts, latent[1:]), inference_tokens(ts, latent[1:], geometry)
    if not ts.use_timestep_transform:
        return Alpha(latent, tokens, infer, None, None, "no shift", None)
    pixels = (frames, height, width)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            alpha, infer_alpha = ts.factor(latent[0], tokens, pixels), ts.factor(latent[0], infer, pixels)
    except (ValueError, RuntimeError) as err:  # the guard's refusal (or a device-side assert on the CPU)
        return Alpha(latent, tokens, infer, None, None, "refused", one_line(err))
    t_eff = ts.shift.temporal_size(torch.tensor([float(frames)], dtype=torch.float64), latent[0]).item()
    clamp = ts.shift.on_degenerate == "clamp"
    if t_eff <= 0:
        kind = "clamped" if clamp else "collapsed"
    elif not 1 / MAX_SHIFT_FACTOR < alpha < MAX_SHIFT_FACTOR:
        kind = "clamped" if clamp else "extreme"  # under 'error' the guard has refused it above
    else:
        kind = "ok"
    return Alpha(latent, tokens, infer, alpha, infer_alpha, kind, None)


def opensora2_header(geometry: Opensora2Geometry, rules: Sequence[Rule]) -> List[str]:
    lines = [f"Open-Sora 2.0: {geometry.describe()}; latent T x h x w, h = {geometry.patch_size} * ceil(H / "
             f"{geometry.token_pixels})",
             "stock: t = sigmoid(randn), alpha = lin(tokens; 256 -> 1, 4096 -> 3) * sqrt(T), tokens (h w) // 4 in "
             f"training and (h w) // {geometry.patch_size ** 2} at inference, no guard"]
    lines += [f"{r.label}: {r.timesteps!r}" for r in rules[1:]]
    return lines


def mismatch_note(rule: Rule, rows: Sequence[Tuple[Tuple[int, int, int], Alpha]], geometry: Opensora2Geometry
                  ) -> Optional[str]:
    """A note when the rule's training alpha differs from its inference alpha (tokens counted differently)."""
    differ = [(key, a) for key, a in rows if a.alpha is not None and a.infer_alpha != a.alpha]
    if not differ:
        return None
    (h, w, n), a = differ[0]
    return (f"{rule.label}: training counts (h w) // 4 = {a.tokens} tokens where inference counts (h w) // "
            f"{geometry.patch_size}**2 = {a.infer_tokens} (the model's patch_size {geometry.patch_size}), so "
            f"{len(differ)} bucket(s) train at another alpha than they sample at ({h}x{w} x {n} frames: "
            f"{a.alpha:.3f} in training, {a.infer_alpha:.3f} at inference). "
            f"scheduler = dict(type='rflow-timeshift', patch_size={geometry.patch_size}) counts both alike")


def quantiles_of(ts: Opensora2Timesteps, alpha: Optional[float]) -> List[float]:
    """The 5th, 50th and 95th percentiles of a rule's training t in [0, 1], shifted by alpha (exact: the shift is
    increasing, so it maps quantiles to quantiles)."""
    q = ts.distribution(torch.tensor(QUANTILES, dtype=torch.float64))
    if alpha is not None:
        q = ts.shift.curve(q, alpha)
    return q.tolist()


KIND_TEXT = {"ok": "ok", "collapsed": "DEGENERATE (t = 0)", "clamped": "clamped", "refused": "refused by the guard",
             "no shift": "no shift", "extreme": "alpha outside [0.01, 100]"}


def inspect_opensora2(args: argparse.Namespace) -> int:
    geometry = VAES[args.vae or "hunyuan"]
    rules = opensora2_rules(args)
    resolutions = resolutions_of(args, geometry)
    frames = args.frames if "frames" in _given_options(args) else DEFAULT_FRAMES_2
    rows = []
    per_rule: Dict[str, List[Tuple[Tuple[int, int, int], Alpha]]] = {r.label: [] for r in rules}
    for hw in resolutions:
        for n in frames:
            for rule in rules:
                a = opensora2_alpha(rule.timesteps, geometry, hw[0], hw[1], n)
                per_rule[rule.label].append(((hw[0], hw[1], n), a))
                p5, median, p95 = quantiles_of(rule.timesteps, a.alpha) if a.kind != "refused" else [math.nan] * 3
                rows.append(dict(rule=rule.label, height=hw[0], width=hw[1], frames=n, latent_frames=a.latent[0],
                                 latent_height=a.latent[1], latent_width=a.latent[2], tokens=a.tokens,
                                 inference_tokens=a.infer_tokens, alpha=a.alpha, inference_alpha=a.infer_alpha,
                                 p5=p5, median=median, p95=p95, status=a.kind, message=a.message))
    notes = [mismatch_note(rule, per_rule[rule.label], geometry) for rule in rules]
    notes = [note for note in notes if note]
    if args.json:
        strict = [{k: None if isinstance(v, float) and not math.isfinite(v) else v for k, v in r.items()} for r in rows]
        print(json.dumps(dict(opensora_version="2.0", vae=args.vae or "hunyuan", geometry=geometry._asdict(),
                              rules={r.label: repr(r.timesteps) for r in rules}, rows=strict, notes=notes), indent=1,
                         allow_nan=False))
        return 0
    for line in opensora2_header(geometry, rules):
        print(line)
    print("shifted training t in [0, 1] (1 = pure noise), exact quantiles")
    table = [(f"{r['height']}x{r['width']}", r["frames"],
              f"{r['latent_frames']}x{r['latent_height']}x{r['latent_width']}", r["rule"], r["tokens"],
              "-" if r["alpha"] is None else f"{r['alpha']:.3f}", fmt(r["p5"], 3), fmt(r["median"], 3),
              fmt(r["p95"], 3), KIND_TEXT[r["status"]]) for r in rows]
    print(format_table(["resolution", "frames", "latent", "rule", "tokens", "alpha", "p5", "median", "p95", "status"],
                       table))
    for note in notes:
        print(f"\nnote: {note}")
    for message in sorted({r["message"] for r in rows if r["message"]}):
        print(f"\nguard (on_degenerate='error'): {message}")
    return 0


# --- plot --------------------------------------------------------------------------------------------------

@contextlib.contextmanager
def quiet_matplotlib() -> Iterator[None]:
    """Use matplotlib with nothing of its own on stderr, so that an error stays one line.

    Where its default config or cache directory cannot be written (HOME unwritable or not a directory), it would
    say so on stderr and make a temporary one: give it one (removed at exit) instead. Its log messages (e.g. a font
    cache being built) and warnings are held back while it runs.
    """
    if "MPLCONFIGDIR" not in os.environ and "matplotlib" not in sys.modules:
        home = os.path.expanduser("~")
        defaults = [os.path.join(os.environ.get(var) or os.path.join(home, sub), "matplotlib")
                    for var, sub in (("XDG_CONFIG_HOME", ".config"), ("XDG_CACHE_HOME", ".cache"))]
        if not all(map(_writable_dir, defaults)):
            made = tempfile.mkdtemp(prefix="opensora-timeshift-mpl-")
            atexit.register(shutil.rmtree, made, True)
            os.environ["MPLCONFIGDIR"] = made
    logger = logging.getLogger("matplotlib")
    level = logger.level
    logger.setLevel(logging.ERROR)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            yield
    finally:
        logger.setLevel(level)


def _writable_dir(path: str) -> bool:
    try:
        os.makedirs(path, exist_ok=True)
    except OSError:
        return False
    return os.path.isdir(path) and os.access(path, os.W_OK | os.X_OK)


def cmd_plot(args: argparse.Namespace) -> int:
    if not args.out:
        raise UsageError("--out is empty: give a directory for the PNG files")
    with quiet_matplotlib():
        return _plot(args)


def _plot(args: argparse.Namespace) -> int:
    out = Path(args.out)
    if os.path.lexists(out) and not out.is_dir():
        raise UsageError(f"--out {args.out!r} exists and is not a directory: give a directory for the PNG files")
    v2 = args.opensora_version == "2.0"
    if v2:
        geometry = VAES[args.vae or "hunyuan"]
        rules = opensora2_rules(args)
        resolutions = resolutions_of(args, geometry)
        frame_counts = args.frames if "frames" in _given_options(args) else DEFAULT_FRAMES_2
    else:
        only_opensora2(args)
        modes, settings = opensora1_modes(args)
        points = EmphasisPoints("loss_weighting" in settings)
        resolutions, frame_counts = resolutions_of(args, None), args.frames
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as err:
        raise UsageError(f"cannot create the --out directory {args.out!r}: {err.strerror}") from err

    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    t_grid = torch.linspace(0, 1, 201, dtype=torch.float64)
    uniforms = torch.rand(args.samples, dtype=torch.float64, generator=torch.Generator().manual_seed(0))
    method = "per rule" if v2 else args.sample_method + (" or a rule's" if not v2 and modes[0].scheduler.rules else "")
    written = []
    for hw in resolutions:
        for frames in frame_counts:
            fig, (ax_curve, ax_hist) = plt.subplots(1, 2, figsize=(12, 4.5))
            peak = 0.0
            title = f"{hw[0]}x{hw[1]}, {frames} frames"
            if v2:
                curves = list(opensora2_curves(rules, geometry, hw, frames, t_grid, uniforms))
                t, h, w = geometry.latent(frames, *hw)
                title += f" (Open-Sora 2.0, latent {t}x{h}x{w}, {args.vae or 'hunyuan'} VAE)"
            else:
                bucket_modes = [for_bucket(m, hw, frames) for m in modes]
                curves = list(opensora1_curves(bucket_modes, uniforms, hw, frames, t_grid))
            for label, curve, shifted, collapsed in curves:
                if curve is None:  # refused by the guard: named in the legend, nothing drawn
                    ax_curve.plot([], [], ls="none", label=label)
                    continue
                ax_curve.plot(t_grid, curve, label=label)
                if collapsed:  # all mass at t = 0: a bar at 0, so the other histograms keep their scale
                    ax_hist.axvline(0.0, lw=3, color=ax_curve.lines[-1].get_color(), label=label)
                    continue
                density, *_ = ax_hist.hist(shifted.numpy(), bins=50, range=(0, 1), histtype="step", density=True,
                                           label=label, color=ax_curve.lines[-1].get_color())
                peak = max(peak, float(density.max()))
            ax_curve.plot([0, 1], [0, 1], color="grey", lw=0.8, ls=":", label="no shift")
            ax_curve.set(xlabel="t (1 = noise)", ylabel="shifted t'", title="transform t -> t'")
            ax_hist.set(xlabel="shifted t'", ylabel="density",
                        title=f"training timesteps, {method}, {args.samples} draws")
            ax_hist.set_ylim(0, 1.15 * peak if peak else None)
            ax_curve.legend(fontsize=8, loc="lower right")
            ax_hist.legend(fontsize=8, loc="upper left")
            fig.suptitle(title)
            fig.tight_layout()
            path = out / f"timeshift_{hw[0]}x{hw[1]}_{frames}f.png"
            try:
                fig.savefig(path, dpi=args.dpi)
            except OSError as err:
                raise UsageError(f"cannot write {path}: {err.strerror or err}") from err
            finally:
                plt.close(fig)
            written.append(path)
            if not v2 and points.weighted:
                written.append(plot_emphasis(plt, bucket_modes, hw, frames, points, out, args.dpi))
    for path in written:
        print(path)
    return 0


def plot_emphasis(plt: Any, modes: Sequence[Mode1], hw: Tuple[int, int], frames: int, points: EmphasisPoints,
                  out: Path, dpi: int) -> Path:
    """One PNG for a bucket: per mode (under the bucket's rule, if any), the density of the shifted training
    timestep (dashed) and the effective emphasis (solid: that density times the loss weight, normalised), with w(t')
    on the right axis."""
    weighting = modes[0].scheduler.weighting
    fig, ax = plt.subplots(figsize=(8, 4.8))
    colors = plt.rcParams["axes.prop_cycle"].by_key()["color"]
    for i, rule in enumerate(modes):
        color = colors[i % len(colors)]
        t_eff = rule.stock.temporal_size(torch.tensor([float(frames)], dtype=torch.float64)).item()
        label = f"{mode_label(rule)} (T_eff {t_eff:.3g})"
        factor = stock_factor(rule, hw, frames)
        base_t = points(rule.scheduler.distribution)
        sampled = emphasis_of(rule, factor, base_t, PLOT_EDGES, LossWeighting("none"))
        if sampled[0] * (PLOT_EDGES[1] - PLOT_EDGES[0]) > 0.999:  # every draw at t' = 0: a line at 0 keeps the scale
            ax.axvline(0.0, lw=3, color=color, label=f"{label}: t = 0, degenerate")
            continue
        ax.stairs(sampled, PLOT_EDGES, ls="--", lw=1, color=color, label=f"{label}: sampling density")
        try:
            emphasis = emphasis_of(rule, factor, base_t, PLOT_EDGES)
        except ValueError:  # every weight 0
            ax.plot([], [], ls="none", label=f"{label}: every loss weight is 0")
            continue
        median = density_quantile(PLOT_EDGES, emphasis, 0.5)
        ax.stairs(emphasis, PLOT_EDGES, lw=1.8, color=color,
                  label=f"{label}: effective emphasis (half below t' = {median:.2f})")
    grid = torch.linspace(0, 1, 401, dtype=torch.float64)
    weights = weighting(grid)
    right = ax.twinx()
    right.plot(grid, weights, color="grey", lw=0.9, ls=":", label=f"loss weight w(t') ({weighting.name})")
    if bool((weights > 0).all()) and float(weights.max() / weights.min()) >= 100:
        right.set_yscale("log")
    right.set_ylabel("loss weight w(t'), clipped at max_loss_weight")
    ax.set(xlabel="shifted t' (1 = noise)", ylabel="density (each curve integrates to 1)", xlim=(0, 1),
           title=f"{hw[0]}x{hw[1]}, {frames} frames: where the gradient budget goes\n{weighting!r}")
    ax.set_ylim(bottom=0)
    handles, labels = ax.get_legend_handles_labels()
    more, more_labels = right.get_legend_handles_labels()
    ax.legend(handles + more, labels + more_labels, fontsize=7, loc="upper left")
    fig.tight_layout()
    path = out / f"emphasis_{hw[0]}x{hw[1]}_{frames}f.png"
    try:
        fig.savefig(path, dpi=dpi)
    except OSError as err:
        raise UsageError(f"cannot write {path}: {err.strerror or err}") from err
    finally:
        plt.close(fig)
    return path


def opensora1_curves(modes: Sequence[Mode1], uniforms: torch.Tensor, hw: Tuple[int, int], frames: int,
                     t_grid: torch.Tensor) -> Iterator[Tuple[str, Any, Any, bool]]:
    """(label, transform on t_grid, shifted draws, collapsed) per Open-Sora 1.x mode (under the bucket's rule, if
    any), shifted as stock does; the draws are ``uniforms`` through the mode's distribution (the chosen one, or
    the rule's)."""
    kw = lambda n: {k: torch.full((n,), float(v), dtype=torch.float64)  # noqa: E731
                    for k, v in zip(META_KEYS, (*hw, frames))}
    drawn: Dict[Optional[int], torch.Tensor] = {}  # every mode draws alike under the same rule (or none)
    for rule in modes:
        if rule.rule not in drawn:
            drawn[rule.rule] = rule.scheduler.distribution(uniforms)
        draws = drawn[rule.rule]
        t_eff = rule.stock.temporal_size(torch.tensor([float(frames)], dtype=torch.float64)).item()
        label = f"{mode_label(rule)} (T_eff {t_eff:.3g})" + (": t = 0, degenerate" if t_eff <= 0 else "")
        yield label, rule.stock(t_grid, kw(len(t_grid))), rule.stock(draws, kw(len(draws))), t_eff <= 0


def opensora2_curves(rules: Sequence[Rule], geometry: Opensora2Geometry, hw: Tuple[int, int], frames: int,
                     t_grid: torch.Tensor, uniforms: torch.Tensor) -> Iterator[Tuple[str, Any, Any, bool]]:
    """(label, transform on t_grid, shifted draws, collapsed) per 2.0 rule; no curve where the guard refuses."""
    for rule in rules:
        ts = rule.timesteps
        a = opensora2_alpha(ts, geometry, hw[0], hw[1], frames)
        if a.kind == "refused":
            yield f"{rule.label}: refused by the guard", None, None, False
            continue
        draws = ts.distribution(uniforms)
        if a.alpha is None:
            yield f"{rule.label} (no shift)", t_grid, draws, False
            continue
        label = f"{rule.label} ({a.tokens} tokens, alpha {a.alpha:.3g})" + (
            ": t = 0, degenerate" if a.kind == "collapsed" else "")
        yield label, ts.shift.curve(t_grid, a.alpha), ts.shift.curve(draws, a.alpha), a.alpha == 0


# --- audit -------------------------------------------------------------------------------------------------

class RowError(UsageError):
    pass


def read_csv_buckets(path: str, progress: bool, skip_bad_rows: bool, fps: bool = False
                     ) -> Tuple[Counter, Counter, List[str]]:
    """Stream an Open-Sora dataset CSV into counts per (height, width, num_frames): bounded memory for any size.

    With ``fps`` (Open-Sora 2.0's bucket rule strides frames by it) the key also holds the row's fps, None where the
    column or the value is missing (2.0 reads a missing value as NaN: no stride).

    Reads as pandas (Open-Sora's reader) does where the two could differ: a byte-order mark is dropped, fields are
    quoted alike, long fields are fine. Returns the bucket counts, the skipped rows by reason, and the first few
    skipped rows' descriptions.
    """
    from tqdm.auto import tqdm

    input_file(path, "--csv")
    csv.field_size_limit(min(sys.maxsize, 2 ** 31 - 1))  # pandas has no field limit: a long caption is not an error
    buckets: Counter = Counter()
    skipped: Counter = Counter()
    examples: List[str] = []
    size = os.path.getsize(path)
    reader: Any = None
    try:
        with open(path, newline="", encoding="utf-8-sig") as f, \
                tqdm(total=size, unit="B", unit_scale=True, desc="audit", leave=False,
                     disable=None if progress else True) as bar:
            reader = csv.DictReader(_counting_lines(f, bar))
            _check_header(path, reader.fieldnames)
            for row_number, row in enumerate(reader, start=2):  # row 1 is the header
                try:
                    buckets[_bucket_of(row, fps)] += 1
                except RowError as err:
                    if not skip_bad_rows:
                        raise UsageError(f"{path}, row {row_number}: {err} "
                                         "(pass --skip-bad-rows to count and skip such rows)") from None
                    skipped[str(err).split(":")[0]] += 1
                    if len(examples) < 5:
                        examples.append(f"row {row_number}: {err}")
    except UnicodeDecodeError as err:
        line = reader.line_num + 1 if reader is not None else 1
        raise UsageError(f"{path} is not UTF-8 text ({err.reason} near line {line}); save it as UTF-8") from None
    except csv.Error as err:
        raise UsageError(f"{path}, line {reader.line_num}: not readable as CSV: {err}") from None
    except OSError as err:
        raise UsageError(f"cannot read {path}: {err.strerror or err}") from None
    return buckets, skipped, examples


def _check_header(path: str, header: Optional[Sequence[str]]) -> None:
    if not header:
        raise UsageError(f"{path} is empty: no header row (Open-Sora's data tools write path, text, num_frames, "
                         "height, width, fps, ...)")
    missing = [c for c in CSV_COLUMNS if c not in header]
    if missing:
        raise UsageError(f"{path}: missing column(s) {', '.join(missing)} (has: {', '.join(header)});"
                         " Open-Sora's data tools write path, text, num_frames, height, width, fps, ...")
    # pandas would rename the second one 'num_frames.1' and use the first; the csv module keeps the last: refuse.
    repeated = [c for c in CSV_COLUMNS if list(header).count(c) > 1]
    if repeated:
        raise UsageError(f"{path}: column {repeated[0]!r} appears {list(header).count(repeated[0])} times in the "
                         f"header (pandas would read the second as '{repeated[0]}.1'); keep one")


def _counting_lines(f: Any, bar: Any) -> Iterator[str]:
    for line in f:
        bar.update(len(line.encode("utf-8", "replace")))
        yield line


def _bucket_of(row: Dict[Optional[str], Any], fps: bool = False) -> Tuple[Any, ...]:
    if None in row:  # csv.DictReader files surplus fields under None; pandas refuses such a row
        raise RowError(f"extra fields: the row has {len(row[None])} more field(s) than the header")
    values = []
    for column in ("height", "width", "num_frames"):
        text = row.get(column)
        if text is None or text.strip() == "":
            raise RowError(f"missing {column}: the row has fewer fields than the header")
        if not CSV_NUMBER.fullmatch(text):
            raise RowError(f"non-numeric {column}: {short(text)}")
        value = float(text)
        if not (math.isfinite(value) and value > 0 and value.is_integer()):
            raise RowError(f"invalid {column}: {short(text)} is not a positive whole number")
        values.append(int(value))
    if not fps:
        return values[0], values[1], values[2]
    text = row.get("fps")
    if text is None or text.strip() == "" or text.strip().lower() == "nan":  # pandas reads both as NaN
        return values[0], values[1], values[2], None
    if not CSV_NUMBER.fullmatch(text) or float(text) < 0:
        raise RowError(f"invalid fps: {short(text)} is not a number >= 0")
    return values[0], values[1], values[2], float(text)


class Current(NamedTuple):
    """The config's scheduler as the audit sees it: the shift it applies (None: no shift), and in words."""

    shift: Optional[TimestepShift]
    description: str
    rules: Tuple[BucketRule, ...] = ()  # rflow-timeshift's bucket_settings
    per_rule: Tuple[TimestepShift, ...] = ()  # the shift of each rule's samples: its child scheduler's

    def shift_for(self, height: int, width: int, frames: int) -> Tuple[Optional[TimestepShift], Optional[int]]:
        """The shift a clip of this size trains under, and the index of the rule that gives it (None: the
        scheduler's own)."""
        applies = rule_for(self.rules, frames, height, width)
        return (self.shift, None) if applies is None else (self.per_rule[applies.index], applies.index)


def current_scheduler(cfg: Optional[Any], version: str) -> Current:
    """The shift of a config's ``scheduler``, validated as training would validate it."""
    stock_mode = "legacy" if version == "1.2" else "v13"
    if cfg is None or "scheduler" not in cfg:
        return Current(TimestepShift(stock_mode, "ignore"),
                       f"no config: stock Open-Sora {version} rflow with use_timestep_transform=True")
    if not isinstance(cfg["scheduler"], dict):
        raise UsageError(f"scheduler must be a dict such as dict(type='rflow', ...), got {short(cfg['scheduler'])}")
    sched = dict(cfg["scheduler"])
    for key in ("use_timestep_transform", "scale_temporal"):  # truthiness would read "False" as on
        if key in sched and not isinstance(sched[key], bool):
            raise UsageError(f"scheduler {key}={short(sched[key])} must be True or False")
    kind = sched.get("type")
    if kind == "rflow":
        if not sched.get("use_timestep_transform", False):
            return Current(None, "stock rflow with use_timestep_transform=False: no shift")
        try:
            scale = SETTINGS["transform_scale"].check(sched.get("transform_scale", 1.0))
        except SettingError as err:
            raise UsageError(f"scheduler rflow: {err}") from err
        # scale_temporal=False (1.3): every sample is shifted as an image, transform_scale unused
        shift = (TimestepShift(stock_mode, "ignore", transform_scale=scale) if sched.get("scale_temporal", True)
                 else TimestepShift("spatial", "ignore"))
        return Current(shift, f"stock Open-Sora {version} rflow, shift on: shift_mode {shift.shift_mode!r} without a "
                              "guard")
    if kind == "rflow-timeshift":
        try:
            built = build_timeshift(sched)
        except (ValueError, TypeError, ImportError) as err:
            raise UsageError(f"scheduler rflow-timeshift: {err}") from err
        if not built.use_timestep_transform:
            return Current(None, "rflow-timeshift with use_timestep_transform=False: no shift")
        shift = built.shift
        rules = built.rules
        return Current(shift, f"rflow-timeshift, shift_mode {shift.shift_mode!r}, on_degenerate "
                              f"{shift.on_degenerate!r}"
                              + (f", {len(rules)} bucket_settings rule{'s' * (len(rules) > 1)}" if rules else ""),
                       rules, tuple(child.shift for child in built._per_bucket))
    raise UsageError(f"scheduler type {short(kind)} is not audited: only 'rflow' and 'rflow-timeshift' shift timesteps")


class Verdict(NamedTuple):
    kind: str  # "ok", "clamped", "collapsed", "refused", "no shift", "off"
    factor: float  # the shift factor the scheduler uses (nan: none, or refused)
    message: Optional[str]  # the guard's, when it refuses


def judge(shift: Optional[TimestepShift], height: int, width: int, frames: int) -> Verdict:
    """What the scheduler's shift does with a batch of this bucket: call it, as a training step would."""
    if shift is None:
        return Verdict("no shift", math.nan, None)
    meta = {k: torch.tensor([float(v)]) for k, v in zip(("height", "width", "num_frames"), (height, width, frames))}
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            _, ratio = shift(torch.tensor([0.5]), meta, ret_ratio=True)
    except (ValueError, RuntimeError) as err:  # the guard's refusal, or a device-side assert stopping the run
        return Verdict("refused", math.nan, one_line(err))
    factor = float(ratio[0])
    if shift.temporal_size(meta["num_frames"]).item() <= 0:
        return Verdict("clamped" if shift.on_degenerate == "clamp" else "collapsed", factor, None)
    if shift.on_degenerate == "clamp" and not 1 / MAX_SHIFT_FACTOR < factor < MAX_SHIFT_FACTOR:
        return Verdict("clamped", factor, None)
    return Verdict("ok", factor, None)


STATUS = {"ok": "ok", "clamped": "clamped", "collapsed": "t = 0 !", "refused": "refused", "no shift": "no shift",
          "off": "off"}


def print_bucket_report(csv: Optional[str], groups: Mapping[Any, Any], legend: str, headers: Sequence[str],
                        rows: Sequence[Sequence[Any]], dropped: Mapping[str, int], why_dropped: str,
                        skipped: Counter, examples: Sequence[str]) -> None:
    """The part of an audit report both releases share: the clip count, the table, dropped clips, malformed rows."""
    if csv is not None:
        print(f"{sum(c for c in groups.values() if c)} clips in {len(groups)} buckets from {csv}")
    print(legend)
    print(format_table(headers, rows))
    if dropped:
        print(f"\n{sum(dropped.values())} clips fit no bucket, so Open-Sora drops them ("
              + ", ".join(f"{c} {what}" for what, c in sorted(dropped.items())) + f"): {why_dropped}")
    if skipped:
        print(f"\nskipped {sum(skipped.values())} malformed rows: "
              + ", ".join(f"{c} {r}" for r, c in skipped.most_common()))
        for example in examples:
            print(f"  {example}")


def cmd_audit(args: argparse.Namespace) -> int:
    if args.csv is None and args.config is None:
        raise UsageError("give --csv PATH, --config PATH or both")
    cfg = None if args.config is None else load_config(args.config, "--config")
    if args.opensora_version == "2.0":
        return audit_opensora2(args, cfg)
    current = current_scheduler(cfg, args.opensora_version)
    has_buckets = cfg is not None and cfg.get("bucket_config") is not None
    config_bucket_list = config_buckets(cfg["bucket_config"], args.opensora_version) if has_buckets else []
    rule = bucket_rule_of(cfg, config_bucket_list, args.opensora_version) if has_buckets else None

    skipped: Counter = Counter()
    examples: List[str] = []
    dropped: Counter = Counter()
    # (height, width, frames, bucket name or None) -> clips (None without a CSV); the bucket's own size with a config
    groups: Dict[Tuple[int, int, int, Optional[str]], Optional[int]] = {}
    off: set = set()
    if args.csv is not None:
        clips, skipped, examples = read_csv_buckets(args.csv, not args.no_progress, args.skip_bad_rows)
        if not clips:  # an audit that saw nothing must not pass a launch gate as "OK"
            raise UsageError(f"{args.csv} has no clips to audit"
                             + (f": all {sum(skipped.values())} rows are malformed ({examples[0]})" if skipped else ""))
        for (h, w, n), count in clips.items():
            if rule is None:
                groups[(h, w, n, None)] = count
                continue
            bucket = rule.assign(h, w, n)
            if bucket is None:
                dropped["images" if n == 1 else "videos"] += count
                continue
            key = (*RESOLUTION_NAMES[bucket.name], bucket.frames, bucket.name)
            groups[key] = (groups.get(key) or 0) + count
        if not groups:
            raise UsageError(f"none of the {sum(dropped.values())} clips in {args.csv} fits a bucket of bucket_config: "
                             "Open-Sora would drop them all")
    else:
        if not has_buckets:
            raise UsageError(f"{args.config} has no bucket_config: give --csv too")
        for b in config_bucket_list:
            key = (*RESOLUTION_NAMES[b.name], b.frames, b.name)
            groups[key] = None
            if not b.on:
                off.add(key)

    ruled = bool(current.rules)
    headers = (["resolution", "frames", "clips", "current", "factor"] + (["rule"] if ruled else []) + [*SHIFT_MODES]
               + (["bucket"] if has_buckets else []))
    rows: List[List[Any]] = []
    counted: Dict[str, List[Tuple[Tuple[int, int, int, Optional[str]], int]]] = {k: [] for k in STATUS}
    extreme: List[Tuple[int, int, int, Optional[str]]] = []  # not refused, but timesteps pile up at one end
    messages: List[str] = []
    rule_of: Dict[Tuple[int, int, int, Optional[str]], Optional[int]] = {}  # the bucket_settings rule of a bucket
    for key in sorted(groups, key=lambda k: (k[0], k[1], k[2], k[3] or "")):
        h, w, n, name = key
        count = groups[key]
        shift, applies = current.shift_for(h, w, n)
        rule_of[key] = applies
        verdict = Verdict("off", math.nan, None) if key in off else judge(shift, h, w, n)
        counted[verdict.kind].append((key, 1 if count is None else count))
        if verdict.kind == "ok" and not 1 / MAX_SHIFT_FACTOR < verdict.factor < MAX_SHIFT_FACTOR:
            extreme.append(key)
        if verdict.message and verdict.message not in messages:
            messages.append(verdict.message)
        n_t = torch.tensor([float(n)])
        cells = []
        for m in SHIFT_MODES:
            t = temporal_size(n_t, m).item()
            cells.append(f"{t:.2f}" if m == "continuous" else f"{int(t)}" + ("!" if t <= 0 else ""))
        rows.append([f"{h}x{w}", n, "-" if count is None else count, STATUS[verdict.kind],
                     "-" if math.isnan(verdict.factor) else f"{verdict.factor:.3f}",
                     *([rule_cell(applies)] if ruled else []), *cells]
                    + ([name] if has_buckets else []))
    collapsed, refused = counted["collapsed"], counted["refused"]
    code = 1 if collapsed or refused else 0
    args.verdict = code  # what a broken stdout pipe still exits with

    print(f"current scheduler: {current.description}")
    if ruled:
        print("bucket_settings: a bucket trains under the settings of the rule it falls under (column rule; '-': "
              "the scheduler's own), and current and factor are that rule's:")
        for r in current.rules:
            print(f"  {rule_text(r)}")
    if rule is not None:
        print(f"buckets: Open-Sora's Bucket rule, every keep probability above 0 taken as kept (frame_interval "
              f"{rule.frame_interval}); sizes are each resolution's base aspect ratio")
    print_bucket_report(
        args.csv, groups, "T_eff per mode ('!' marks T_eff <= 0: every timestep of such a clip collapses to t = 0); "
        "factor: the current scheduler's shift factor", headers, rows, dropped,
        "a video needs more frames than a frame count other than 1 (T > t), at a resolution whose pixel count it "
        "reaches to 0.8; an image needs a kept 1-frame bucket", skipped, examples)
    if extreme:
        print(f"\nnote: the shift factor is outside [0.01, 100] for {_buckets_text(extreme)}: timesteps pile up at "
              "one end (on_degenerate='error' would refuse such batches)")

    def frames_of(items: List[Tuple[Tuple[int, int, int, Optional[str]], int]]) -> List[int]:
        return sorted({k[2] for k, _ in items})

    if collapsed:
        what = (f"{sum(c for _, c in collapsed)} clips" if args.csv is not None
                else f"buckets with {frames_of(collapsed)} frames")
        by_rule = sorted({rule_of[k] for k, _ in collapsed if rule_of[k] is not None})
        own = any(rule_of[k] is None for k, _ in collapsed)
        where = " and ".join((["scheduler = dict(type='rflow-timeshift', shift_mode='latent')"] if own else [])
                             + [f"shift_mode='latent' in bucket_settings[{i}]" for i in by_rule])
        print(f"\nFAIL: {what} would train with every timestep at t = 0 under the current scheduler. "
              f"Recommendation: {where}, which matches the VAE's latent length and equals the stock rule on "
              "17k-frame clips.")
    if refused:
        what = (f"{sum(c for _, c in refused)} clips in {_buckets_text([k for k, _ in refused])}"
                if args.csv is not None else _buckets_text([k for k, _ in refused]))
        print(f"\nFAIL: the guard would stop training at the first batch from {what}: {messages[0]}"
              + (f" ({len(messages) - 1} more such messages)" if len(messages) > 1 else ""))
    if code:
        return code
    clamped = counted["clamped"]
    print("\nOK: no clip would train at t = 0 or be refused by the guard."
          + (f" Clamped clips ({_buckets_text([k for k, _ in clamped])}) train as T_eff = 1 where T_eff <= 0, with "
             "factors held to [0.01, 100]; shift_mode='latent' needs no clamping." if clamped else ""))
    return 0


def current_opensora2(cfg: Optional[Any]) -> Tuple[Opensora2Timesteps, str]:
    """The timesteps a 2.0 config trains with: stock 2.0's rule without a scheduler key, else rflow-timeshift's, built
    as the package's hook builds them when 2.0 parses the config."""
    sched = None if cfg is None else cfg.get("scheduler")
    if sched is None:
        return stock_opensora2(), (f"{'no config' if cfg is None else 'no scheduler key'}: stock Open-Sora 2.0's "
                                   "rule (alpha = lin((h w) // 4) * sqrt(T)), without a guard")
    if not isinstance(sched, dict) or sched.get("type") != SCHEDULER_TYPE:
        got = sched.get("type") if isinstance(sched, dict) else sched
        raise UsageError(f"scheduler type={short(got)} is not allowed on Open-Sora 2.0, which builds no scheduler: "
                         f"use dict(type={SCHEDULER_TYPE!r}, ...) or remove the scheduler key")
    ts = build_opensora2({k: v for k, v in sched.items() if k != "type"}, "scheduler rflow-timeshift (Open-Sora 2.0): ")
    return ts, f"{ts!r}, on_degenerate {ts.shift.on_degenerate!r}"


STATUS_2 = {"ok": "ok", "extreme": "ok", "collapsed": "t = 0 !", "refused": "refused", "clamped": "clamped",
            "no shift": "no shift", "off": "off"}


def audit_opensora2(args: argparse.Namespace, cfg: Optional[Any]) -> int:
    """audit --opensora-version 2.0: per bucket, the latent, the tokens and alpha in training and at inference."""
    geometry = opensora2_geometry(cfg) if cfg is not None else VAES["hunyuan"]
    ts, description = current_opensora2(cfg)
    has_buckets = cfg is not None and cfg.get("bucket_config") is not None
    bucket_list = config_buckets(cfg["bucket_config"], "2.0") if has_buckets else []
    rule = bucket_rule_of(cfg, bucket_list, "2.0") if has_buckets else None
    fps_max = opensora2_fps_max(cfg) if has_buckets else None
    sizes = {b.name: opensora2_sizes(b.name, geometry.token_pixels) for b in bucket_list}

    skipped: Counter = Counter()
    examples: List[str] = []
    dropped: Counter = Counter()
    groups: Dict[Tuple[int, int, int, Optional[str]], Optional[int]] = {}
    off: set = set()
    if args.csv is not None:
        clips, skipped, examples = read_csv_buckets(args.csv, not args.no_progress, args.skip_bad_rows,
                                                    fps=rule is not None)
        if not clips:
            raise UsageError(f"{args.csv} has no clips to audit"
                             + (f": all {sum(skipped.values())} rows are malformed ({examples[0]})" if skipped else ""))
        for key, count in clips.items():
            if rule is None:
                groups[(*key, None)] = count
                continue
            h, w, n, fps = key
            bucket = rule.assign(h, w, n // sampling_interval(fps, fps_max))
            if bucket is None:
                dropped["images" if n == 1 else "videos"] += count
                continue
            group = (*closest_size(h, w, sizes[bucket.name]), bucket.frames, bucket.name)
            groups[group] = (groups.get(group) or 0) + count
        if not groups:
            raise UsageError(f"none of the {sum(dropped.values())} clips in {args.csv} fits a bucket of bucket_config: "
                             "Open-Sora would drop them all")
    else:
        if not has_buckets:
            raise UsageError(f"{args.config} has no bucket_config: give --csv too")
        for b in bucket_list:
            key = (*opensora2_base_size(b.name, geometry.token_pixels), b.frames, b.name)
            groups[key] = None
            if not b.on:
                off.add(key)

    headers = ["resolution", "frames", "clips", "latent", "tokens", "alpha", "inf.tokens", "inf.alpha", "current"]
    headers += ["bucket"] if has_buckets else []
    rows: List[List[Any]] = []
    counted: Dict[str, List[Tuple[Tuple[int, int, int, Optional[str]], int]]] = {k: [] for k in STATUS_2}
    mismatched: List[Tuple[Tuple[int, int, int, Optional[str]], Alpha]] = []
    messages: List[str] = []
    for key in sorted(groups, key=lambda k: (k[0], k[1], k[2], k[3] or "")):
        h, w, n, name = key
        count = groups[key]
        a = opensora2_alpha(ts, geometry, h, w, n)
        kind = "off" if key in off else a.kind
        counted[kind].append((key, 1 if count is None else count))
        if a.message and kind != "off" and a.message not in messages:
            messages.append(a.message)
        status = STATUS_2[kind]
        if kind in ("ok", "extreme", "clamped") and a.alpha != a.infer_alpha:
            mismatched.append((key, a))
            status = "mismatch" if kind != "clamped" else status
        shown = lambda x: "-" if x is None or kind in ("off", "refused") else f"{x:.3f}"  # noqa: E731
        rows.append([f"{h}x{w}", n, "-" if count is None else count, "x".join(map(str, a.latent)), a.tokens,
                     shown(a.alpha), a.infer_tokens, shown(a.infer_alpha), status] + ([name] if has_buckets else []))
    collapsed, refused = counted["collapsed"], counted["refused"]
    code = 1 if collapsed or refused else 0
    args.verdict = code

    print(f"current scheduler: {description}")
    print(f"geometry: {geometry.describe()}" + ("" if cfg is not None else " (no config: 2.0's default)"))
    if rule is not None:
        print("buckets: Open-Sora 2.0's Bucket rule (a video fits frame count t when its frames // stride >= t, the "
              f"stride ceil(fps / fps_max) at fps >= fps_max {fps_max}, 1 without an fps), every keep probability above "
              "0 taken as kept; sizes are "
              + ("each clip's closest aspect ratio" if args.csv is not None else "each name's square or 16:9 size"))
    print_bucket_report(
        args.csv, groups, "latent: T x h x w; tokens and alpha: what training counts and shifts by; inf.tokens and "
        "inf.alpha: what inference does for the same size", headers, rows, dropped,
        "a video needs at least as many frames (after the fps stride) as a frame count other than 1, at a resolution "
        "whose pixel count it reaches to 0.8; an image needs a kept 1-frame bucket and an fps below fps_max, or none "
        "(2.0 divides its one frame by the stride too)", skipped, examples)
    extreme = [k for k, _ in counted["extreme"]]
    if extreme:
        print(f"\nnote: alpha is outside [0.01, 100] for {_buckets_text(extreme)}: timesteps pile up at one end "
              "(rflow-timeshift's default on_degenerate='error' would refuse such batches)")
    if mismatched:
        (h, w, n, name), a = mismatched[0]
        print(f"\nWARNING: training and inference count tokens differently in {len(mismatched)} buckets: training "
              f"counts (h w) // 4 (stock 2.0's train.py, whatever the model's patch_size) and inference (h w) // "
              f"{geometry.patch_size}**2 (the model's patch_size {geometry.patch_size}), so a bucket trains at "
              f"another alpha than it samples at ({h}x{w} x {n} frames: {a.tokens} tokens, alpha {a.alpha:.3f} in "
              f"training; {a.infer_tokens} tokens, alpha {a.infer_alpha:.3f} at inference). Fix: scheduler = "
              f"dict(type='rflow-timeshift', patch_size={geometry.patch_size}), which counts both as the model does.")
    if collapsed:
        what = (f"{sum(c for _, c in collapsed)} clips in " if args.csv is not None else "") +             _buckets_text([k for k, _ in collapsed])
        print(f"\nFAIL: {what} would train with every timestep at t = 0 under the current scheduler: alpha is 0. "
              "A non-causal VAE gives n // 4 latent frames, none below 4 frames: give such buckets 4 frames or more "
              "(or rflow-timeshift's on_degenerate='clamp', which shifts them as one frame).")
    if refused:
        what = (f"{sum(c for _, c in refused)} clips in " if args.csv is not None else "") +             _buckets_text([k for k, _ in refused])
        print(f"\nFAIL: the guard would stop training at the first batch from {what}: {messages[0]}"
              + (f" ({len(messages) - 1} more such messages)" if len(messages) > 1 else ""))
    if code:
        return code
    print("\nOK: no clip would train at t = 0 or be refused by the guard."
          + (" (Training and inference shift differently: see the warning above.)" if mismatched else ""))
    return 0


def _buckets_text(keys: Sequence[Tuple[int, int, int, Optional[str]]], limit: int = 4) -> str:
    """Buckets in words: "720x1280 x 16 frames, ..." (the first few)."""
    parts = [f"{h}x{w} x {n} frames" + (f" ({name})" if name else "") for h, w, n, name in keys[:limit]]
    return ", ".join(parts) + (f" and {len(keys) - limit} more" if len(keys) > limit else "")


# --- config ------------------------------------------------------------------------------------------------

def parse_set_item(text: str) -> Tuple[str, Any]:
    """argparse type for ``--set KEY=VALUE``: KEY a plain identifier, VALUE a Python literal (or a bare word).

    The generated config is Python that Open-Sora executes, so only a repr of a parsed literal may reach it.
    """
    key, sep, raw = text.partition("=")
    if not sep:
        raise argparse.ArgumentTypeError(f"{short(text)} is not KEY=VALUE")
    if not (key.isascii() and key.isidentifier()) or keyword.iskeyword(key):
        raise argparse.ArgumentTypeError(f"key {short(key)} is not a plain Python identifier")
    if key.startswith("_"):  # mmengine reads _delete_, _scope_ and __* keys as directives, not settings
        raise argparse.ArgumentTypeError(f"key {key!r}: keys starting with '_' are reserved by mmengine")
    try:
        value = ast.literal_eval(raw)
    except (ValueError, TypeError, SyntaxError, MemoryError, RecursionError):
        if not BARE_WORD.fullmatch(raw):
            raise argparse.ArgumentTypeError(
                f"{key}={short(raw)}: the value is not a Python literal (quote strings with spaces or symbols, "
                f"e.g. {key}=\"'a b'\")") from None
        value = raw
    if isinstance(value, str) and value == raw and raw.lower() in AMBIGUOUS_WORDS:
        raise argparse.ArgumentTypeError(f"{key}={raw}: write True, False or None, a finite number, or a quoted "
                                         f"string such as {key}=\"'{raw}'\"")
    if not _plain_literal(value):
        raise argparse.ArgumentTypeError(f"{key}={short(raw)}: use None, True/False, ints, finite floats, strings, "
                                         "and lists, tuples or dicts of them")
    found = _placeholder_in(value)
    if found is not None:  # mmengine substitutes {{$VAR:...}} and {{ fileDirname }} in the file's text as it loads
        raise argparse.ArgumentTypeError(f"{key}={short(raw)}: the string {short(found)} holds '{{{{' or '}}}}', "
                                         "which mmengine would substitute when the config loads; remove them")
    return key, value


def _plain_literal(value: Any) -> bool:
    """Whether repr(value) is a literal that reads back equal: no inf/nan (repr 'inf' is a name), no set()."""
    if type(value) is float:
        return math.isfinite(value)
    if value is None or type(value) in (bool, int, str):
        return True
    if type(value) in (list, tuple):
        return all(map(_plain_literal, value))
    if type(value) is dict:
        return all(_plain_literal(k) and _plain_literal(v) for k, v in value.items())
    return False


def _placeholder_in(value: Any) -> Optional[str]:
    """The first string in ``value`` (keys included) holding ``{{`` or ``}}``, which mmengine would substitute."""
    if isinstance(value, str):
        return value if "{{" in value or "}}" in value else None
    if isinstance(value, dict):
        value = [*value.keys(), *value.values()]
    if isinstance(value, (list, tuple)):
        for item in value:
            found = _placeholder_in(item)
            if found is not None:
                return found
    return None


def base_chain(path: str) -> List[str]:
    """Real paths of ``path`` and every file it inherits from through ``_base_``, recursively.

    Resolved as mmengine 0.10's ``Config._file2dict`` resolves them, with its own static helpers: each file's
    ``{{ fileDirname }}``-style and ``{{$VAR:default}}`` placeholders are substituted (on a temporary copy) before
    its ``_base_`` is read, and each entry is taken relative to the file naming it.
    """
    from mmengine.config import Config

    chain: List[str] = []
    todo = [path]
    while todo:
        current = os.path.abspath(os.path.expanduser(todo.pop()))
        real = os.path.realpath(current)
        if real in chain:
            continue
        chain.append(real)
        if not os.path.isfile(current):
            continue
        with tempfile.TemporaryDirectory(prefix="opensora-timeshift-") as scratch, _quiet_mmengine():
            copy = os.path.join(scratch, "config" + os.path.splitext(current)[1])
            Config._substitute_predefined_vars(current, copy)
            Config._substitute_env_variables(copy, copy)  # logs each variable it uses: loading the base did already
            Config._pre_substitute_base_vars(copy, copy)
            entries = Config._get_base_files(copy)
        todo.extend(Config._get_cfg_path(entry, current)[0] for entry in entries)
    return chain


@contextlib.contextmanager
def _quiet_mmengine() -> Iterator[None]:
    """Hold back mmengine's INFO log lines (one per environment variable substituted) for a while."""
    from mmengine.logging import MMLogger

    logger = MMLogger.get_current_instance()
    level = logger.level
    logger.setLevel(logging.WARNING)
    try:
        yield
    finally:
        logger.setLevel(level)


def base_reference(base: str, out_dir: Path) -> str:
    """How the derived config names its base: relative to ``out_dir`` where that reaches the base, else absolute.

    Computed from real paths, so a symlinked directory in ``--out`` does not send ``..`` to the wrong parent.
    mmengine opens the joined path both as it is (the kernel follows symlinks before ``..``) and after
    ``os.path.abspath`` (which drops ``dir/..`` by spelling): the relative form is kept only where both reach the
    base, otherwise its absolute real path is written.
    """
    real_base = os.path.realpath(base)
    try:
        rel = os.path.relpath(real_base, os.path.realpath(out_dir))
    except ValueError:  # another drive on Windows
        return real_base
    joined = os.path.join(str(out_dir), rel)
    if os.path.realpath(joined) == os.path.realpath(os.path.normpath(joined)) == real_base:
        return rel
    return real_base


def build_timeshift(sched: Dict[str, Any]) -> Any:
    """The ``RFlowTimeShift`` a config's ``scheduler = dict(type="rflow-timeshift", ...)`` builds, without Open-Sora.

    One validation for ``audit`` and ``config``: Open-Sora 1.3's own RFLOW keywords (``OPENSORA_ONLY``:
    ``use_oscillation_guidance``, ``drop_condition``, ...) are type-checked and set aside (its RFLOW implements them;
    the written config keeps them), ``backend`` is type-checked, and the rest builds on the standalone backend.
    Raises ``ValueError``, ``TypeError`` or ``ImportError`` naming the setting.
    """
    from .scheduler import RFlowTimeShift

    settings = {k: v for k, v in sched.items() if k != "type"}
    if "backend" in settings:
        SETTINGS["backend"].check(settings["backend"])
    settings["backend"] = "standalone"  # validation must not need (or import) Open-Sora
    for key in [k for k in settings if k in OPENSORA_ONLY]:
        OPENSORA_ONLY[key].check(settings.pop(key))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return RFlowTimeShift(**settings)


def cmd_config(args: argparse.Namespace) -> int:
    v2 = args.opensora_version == "2.0"
    if args.shift_mode is None and not v2:
        raise UsageError(f"--shift-mode is required for an Open-Sora {args.opensora_version} config (choose from "
                         f"{', '.join(SHIFT_MODES)}); only --opensora-version 2.0 has a default")
    base = os.path.abspath(args.base_config)
    base_cfg = load_config(args.base_config, "base config")
    if not args.out:
        raise UsageError("--out is empty: give the path of the .py file to write")
    out = Path(os.path.abspath(args.out))
    if os.path.isdir(out):
        raise UsageError(f"--out {args.out!r} is a directory: give the path of the .py file to write")
    if out.suffix != ".py":
        raise UsageError(f"--out {args.out!r} must end in .py: the derived config is Python")
    try:
        chain = base_chain(base)
    except (Exception, SystemExit) as err:
        raise UsageError(f"cannot follow the _base_ chain of {args.base_config!r}: {err}") from err
    if os.path.realpath(out) in chain:
        raise UsageError(f"--out {args.out!r} is the base config or one of its _base_ files: writing it would "
                         "destroy what the new config derives from; choose another path")
    if os.path.lexists(out) and not args.force:
        raise UsageError(f"--out {args.out!r} exists; pass --force to replace it")

    custom_imports = base_cfg.get("custom_imports") or {}
    imports = custom_imports.get("imports", []) if isinstance(custom_imports, dict) else None
    imports = [imports] if isinstance(imports, str) else imports  # mmengine takes one module name bare
    if not isinstance(imports, (list, tuple)) or not all(isinstance(name, str) for name in imports):
        raise UsageError(f"base config custom_imports={short(custom_imports)} is not dict(imports=[module names])")
    imports = [*imports, "opensora_timeshift_patch"] if "opensora_timeshift_patch" not in imports else list(imports)
    if v2:  # only what was asked for: no setting means 2.0's own rule
        options: Dict[str, Any] = dict(type=SCHEDULER_TYPE)
        if args.shift_mode is not None:
            options["shift_mode"] = args.shift_mode
        if "on_degenerate" in _given_options(args):
            options["on_degenerate"] = args.on_degenerate
    else:
        options = dict(type="rflow-timeshift", shift_mode=args.shift_mode, on_degenerate=args.on_degenerate)
    for key in ("sample_method", "timestep_rng"):
        if getattr(args, key) is not None:
            options[key] = getattr(args, key)
    if args.stratified:
        options["stratified"] = True
    for key, value in args.set or []:
        if key in options:
            raise UsageError(f"--set {key}=...: {key} is already set (by its own option, or an earlier --set)")
        options[key] = value

    rel = base_reference(base, out.parent)
    # The file's text goes through mmengine's {{...}} substitution when it loads: only the base's path is not ours.
    for what, text in (("path", rel), ("file name", os.path.basename(base))):
        if "{{" in text or "}}" in text or not text.isprintable():
            raise UsageError(f"the base config's {what} {short(text)} holds '{{{{', '}}}}' or a control character, "
                             "which mmengine would substitute or misread in the derived config: rename or move it")
    found = _placeholder_in(imports)
    if found is not None:
        raise UsageError(f"base config custom_imports holds {short(found)}: '{{{{' and '}}}}' would be substituted "
                         "by mmengine in the derived config")
    body = "".join(f"    {k}={v!r},\n" for k, v in options.items())
    if v2:
        intro = (f"# Derived from {os.path.basename(base)!r} by `opensora-timeshift config`: Open-Sora 2.0's training "
                 f"timesteps and inference schedule from rflow-timeshift.\n# Importing the package hooks 2.0's config "
                 f"parsing, which then reads the scheduler key below; the rest of the base is unchanged.\n")
    else:
        intro = (f"# Derived from {os.path.basename(base)!r} by `opensora-timeshift config`: its scheduler switched to "
                 f"rflow-timeshift.\n# Keys below merge into the base's scheduler dict; the rest of the base is "
                 f"unchanged.\n")
    text = (f"{intro}"
            f"_base_ = [{rel!r}]\n\n"
            f"custom_imports = dict(imports={imports!r}, allow_failed_imports=False)\n\n"
            f"scheduler = dict(\n{body})\n")
    if "{{" in text:  # every piece was checked above; a literal's repr cannot make one
        raise UsageError("the derived config would hold '{{', which mmengine substitutes when it loads")
    cfg, scheduler = write_verified(out, text, verify_opensora2 if v2 else verify_scheduler)
    print(f"wrote {out}")
    if v2:
        print(f"loaded it with mmengine and built its Open-Sora 2.0 timesteps as the hook will: {scheduler!r}")
    else:
        print(f"loaded it with mmengine and built the scheduler (standalone backend; Open-Sora 1.3's own RFLOW "
              f"keywords type-checked): {scheduler!r}")
    print(f"merged scheduler config: {dict(cfg.scheduler)}")
    return 0


def verify_scheduler(cfg: Any) -> Any:
    """Build the derived config's scheduler as ``audit`` validates one: the registered class, standalone."""
    from .registry import SCHEDULERS
    from .scheduler import RFlowTimeShift

    sched = cfg.get("scheduler")
    if not isinstance(sched, dict) or sched.get("type") != "rflow-timeshift":
        raise ValueError(f"its scheduler is {short(sched)}, not dict(type='rflow-timeshift', ...)")
    if SCHEDULERS.get("rflow-timeshift") is not RFlowTimeShift:
        raise ImportError("custom_imports did not register rflow-timeshift in the scheduler registry")
    return build_timeshift(dict(sched))


def verify_opensora2(cfg: Any) -> Opensora2Timesteps:
    """Build a derived 2.0 config's timesteps as the package's hook builds them when 2.0 parses the config."""
    sched = cfg.get("scheduler")
    if not isinstance(sched, dict) or sched.get("type") != SCHEDULER_TYPE:
        raise ValueError(f"its scheduler is {short(sched)}, not dict(type={SCHEDULER_TYPE!r}, ...)")
    imports = (cfg.get("custom_imports") or {}).get("imports", [])
    if "opensora_timeshift_patch" not in ([imports] if isinstance(imports, str) else list(imports)):
        raise ImportError("its custom_imports do not import opensora_timeshift_patch, which hooks 2.0's config parsing")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return Opensora2Timesteps(**{k: v for k, v in sched.items() if k != "type"})


def _load_recording(path: str) -> Tuple[Any, List[str]]:
    """``Config.fromfile(path)``, and the real path of every file mmengine read for it (the file and its bases)."""
    from mmengine.config import Config

    original = Config.__dict__["_file2dict"]
    read: List[str] = []

    def recording(filename: str, *args: Any, **kwargs: Any) -> Any:
        read.append(os.path.realpath(os.path.abspath(os.path.expanduser(filename))))
        return original.__func__(filename, *args, **kwargs)

    Config._file2dict = staticmethod(recording)  # type: ignore[assignment]
    try:
        return Config.fromfile(path), read
    finally:
        Config._file2dict = original  # type: ignore[assignment]


def write_verified(out: Path, text: str, build: Callable[[Any], Any]) -> Tuple[Any, Any]:
    """Write ``text`` to ``out`` only once it loads with mmengine and ``build(cfg)`` succeeds.

    The text goes to a temporary file beside ``out`` (so its relative ``_base_`` resolves as it will), is loaded and
    built there, and then atomically replaces ``out``, unless mmengine read ``out`` itself while loading it (then
    ``out`` is part of what the new config derives from). On any failure only the temporary file (and directories
    made for it) is removed: ``out`` is never left half-written or deleted.
    """
    new_dirs = [d for d in out.parents if not d.exists()]
    try:
        out.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=".opensora-timeshift-", suffix=".py", dir=out.parent)
    except OSError as err:
        raise UsageError(f"cannot write in {str(out.parent)!r}: {err.strerror or err}") from err
    try:
        try:
            with os.fdopen(fd, "w", encoding="utf-8") as f:
                f.write(text)
            umask = os.umask(0)
            os.umask(umask)
            os.chmod(tmp, 0o666 & ~umask)  # mkstemp makes 0600; a config is a file like any other
        except OSError as err:
            raise UsageError(f"cannot write in {str(out.parent)!r}: {err.strerror or err}") from err
        try:
            cfg, read = _load_recording(tmp)  # imports custom_imports, which the base may list without installing
        except (Exception, SystemExit) as err:  # the base chain is the user's program: whatever it raises
            raise UsageError(f"the derived config does not load, so {out} was not written: "
                             f"{type(err).__name__}: {err}") from err
        if os.path.realpath(out) in read:
            raise UsageError(f"--out {str(out)!r} is a file the derived config reads (its base or one of its _base_ "
                             "files): writing it would destroy what the new config derives from; choose another path")
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                built = build(cfg)
        except (ValueError, TypeError, KeyError, ImportError) as err:
            raise UsageError(f"the derived config did not build, so {out} was not written: {err}") from err
        try:
            os.replace(tmp, out)
        except OSError as err:
            raise UsageError(f"cannot write {str(out)!r}: {err.strerror or err}") from err
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        for d in new_dirs:
            try:
                d.rmdir()
            except OSError:
                break
        raise
    return cfg, built


# --- entry point -------------------------------------------------------------------------------------------

def build_parser() -> argparse.ArgumentParser:
    formatter = argparse.RawDescriptionHelpFormatter
    parser = Parser(
        prog="opensora-timeshift", formatter_class=formatter, epilog=EXIT_STATUS,
        description="See, audit and configure Open-Sora's timestep shift before spending GPU time.")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    p = sub.add_parser("inspect", help="table of T_eff, shift factor and shifted-timestep quantiles",
                       formatter_class=formatter, epilog=PLAIN_EXIT_STATUS,
                       description="For each resolution x frame count x mode: T_eff, the shift factor and the 5th,\n"
                                   "50th and 95th percentiles of the shifted training timestep (exact quantiles of\n"
                                   "the base distribution, shifted). Degenerate rows are marked with the guard's\n"
                                   "message. With --loss-weighting, w_median: the shifted t below which half the\n"
                                   "gradient budget lies (the effective emphasis: the density of the shifted t times\n"
                                   "the loss weight w(t), normalised). --set tries shift settings (spatial_exponent,\n"
                                   "temporal_exponent, token_count, ...) before a run, validated as training\n"
                                   "validates them. --opensora-version 2.0: per resolution x frame count, the latent, the\n"
                                   "tokens, alpha and the shifted-t quantiles under stock 2.0's rule and under your\n"
                                   "settings, built as rflow-timeshift builds them on 2.0.")
    add_selection(p)
    p.add_argument("--json", action="store_true", help="machine-readable output")
    p.set_defaults(func=cmd_inspect)

    p = sub.add_parser("plot", help="PNG figures of the transform and the timestep histogram per bucket",
                       formatter_class=formatter, epilog=PLAIN_EXIT_STATUS,
                       description="One PNG per resolution x frame count: the transform t -> t' and the histogram\n"
                                   "of sampled training timesteps, for every selected mode side by side. --out is a\n"
                                   "directory (created if missing); its timeshift_*.png files of the same name are\n"
                                   "replaced. With --loss-weighting, also one emphasis_*.png per resolution x frame\n"
                                   "count: per mode, the density of the shifted training timestep and the effective\n"
                                   "emphasis (that density times the loss weight w(t), normalised), with w(t); both\n"
                                   "computed at 100000 equally likely points, not sampled.")
    p.add_argument("--out", required=True, action=Once, help="directory for the PNG files (not an existing file)")
    add_selection(p)
    p.add_argument("--samples", type=int_in(1, MAX_SAMPLES), default=20000, action=Once,
                   help=f"draws per histogram, 1 to {MAX_SAMPLES} (default 20000)")
    p.add_argument("--dpi", type=int_in(10, MAX_DPI), default=110, action=Once,
                   help=f"figure resolution, 10 to {MAX_DPI} (default 110)")
    p.set_defaults(func=cmd_plot)

    p = sub.add_parser("audit", help="check a dataset CSV and/or training config for collapsed timesteps",
                       formatter_class=formatter, epilog=AUDIT_EXIT_STATUS,
                       description="Counts clips per bucket (resolution x frames) in an Open-Sora dataset CSV and/or\n"
                                   "the bucket_config of a training config, shows T_eff under every mode and what\n"
                                   "the config's current scheduler does with each bucket. Exits 1 when some clip\n"
                                   "would train with every timestep at t = 0 (or be refused by the guard), so it can\n"
                                   "gate a launch script. Reads its inputs only. The config is executed by mmengine,\n"
                                   "as training would: audit only configs you would train with. With\n"
                                   "--opensora-version 2.0: per bucket of a 2.0 config, the latent, tokens and alpha\n"
                                   "in training and at inference, with a warning where they differ.")
    p.add_argument("--csv", action=Once,
                   help="dataset CSV (UTF-8) with num_frames, height, width columns (others are ignored)")
    p.add_argument("--config", action=Once, help="Open-Sora training config (its bucket_config and scheduler are read)")
    p.add_argument("--opensora-version", choices=OPENSORA_VERSIONS, default="1.2", action=Once,
                   help="which stock rule type='rflow' means (default 1.2: num_frames // 17 * 5; 1.3: "
                        "(num_frames - 1) // 4), and which bucket_config resolution names exist (1.3 adds *_16d); "
                        "2.0: a 2.0 training config (bucket_config with 256px, 768px, ..., patch_size, "
                        "ae_spatial_compression, is_causal_vae, and scheduler = dict(type='rflow-timeshift', ...) or "
                        "none for stock 2.0's rule), reported per bucket with alpha in training and at inference")
    p.add_argument("--skip-bad-rows", action="store_true", help="count and skip malformed rows instead of stopping")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    p.set_defaults(func=cmd_audit)

    p = sub.add_parser("config", help="write a config deriving from an Open-Sora config, with rflow-timeshift",
                       formatter_class=formatter, epilog=PLAIN_EXIT_STATUS,
                       description="Writes an mmengine config whose _base_ is BASE_CONFIG and whose scheduler is\n"
                                   "rflow-timeshift with the chosen options. It is written to a temporary file\n"
                                   "beside --out, loaded with mmengine and its scheduler built through the registry,\n"
                                   "and only then moved into place; on any failure nothing is written. --out may not\n"
                                   "be BASE_CONFIG or any file in its _base_ chain, and an existing --out is replaced\n"
                                   "only with --force.")
    p.add_argument("base_config", metavar="BASE_CONFIG", help="the Open-Sora config to derive from")
    p.add_argument("--opensora-version", choices=OPENSORA_VERSIONS, default="1.2", action=Once,
                   help="the base config's Open-Sora (default 1.2; 1.2 and 1.3 switch its scheduler to "
                        "rflow-timeshift; 2.0 adds scheduler = dict(type='rflow-timeshift', ...), which the package's "
                        "hook reads when 2.0 parses the config, and validates it as 2.0 reads it)")
    p.add_argument("--shift-mode", choices=SHIFT_MODES, action=Once,
                   help="temporal-size policy (required for 1.x; 2.0: optional, default 'latent', the latent's own "
                        "length)")
    p.add_argument("--out", required=True, action=Once, help="path of the .py config to write")
    p.add_argument("--force", action="store_true", help="replace --out if it exists")
    setting_option(p, SETTINGS["on_degenerate"], default="error")
    p.add_argument("--sample-method", choices=list(DISTRIBUTIONS), action=Once,
                   help="base distribution (default: the base config's)")
    setting_option(p, SETTINGS["timestep_rng"], default=None, help="timestep stream (default: the base config's)")
    p.add_argument("--stratified", action="store_true", help="stratify the global batch (needs per_sample)")
    p.add_argument("--set", nargs="+", action="extend", type=parse_set_item, metavar="KEY=VALUE",
                   help="any other scheduler keyword; VALUE is a Python literal (7, 0.5, True, None, (0.1, 0.9), "
                        "'text'), or a bare word taken as a string (linear, per_sample), e.g. --set "
                        "timestep_seed=7 resolution_shift=linear")
    p.set_defaults(func=cmd_config)
    return parser


def main(argv: Optional[Sequence[str]] = None) -> int:
    """Run the command line; returns the exit status (argparse's own errors exit 2 through SystemExit)."""
    args = None
    try:
        args = build_parser().parse_args(argv)
        code = args.func(args)
        sys.stdout.flush()  # here, not at exit, so that a closed pipe is caught below
        return code
    except BrokenPipeError:  # stdout closed early (`| head`): stop writing, quietly, as other tools do
        _stdout_to_devnull()
        return getattr(args, "verdict", 0)  # audit's verdict, once it has one
    except (UsageError, BucketConfigError) as err:
        print(f"opensora-timeshift {args.command}: error: {one_line(err)}", file=sys.stderr)
        return 2
    except Exception:  # a bug, not bad input: keep the traceback, and never exit 1 (an audit verdict) or 2
        traceback.print_exc()
        print(f"opensora-timeshift {getattr(args, 'command', '')}: internal error (exit status 3); please report the "
              "traceback above", file=sys.stderr)
        return 3


def _stdout_to_devnull() -> None:
    """Point stdout at the null device, so that what is still buffered is dropped instead of failing at exit."""
    try:
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        os.close(devnull)
    except (OSError, ValueError, AttributeError):  # no real file behind stdout (a test's capture)
        pass


if __name__ == "__main__":
    sys.exit(main())
