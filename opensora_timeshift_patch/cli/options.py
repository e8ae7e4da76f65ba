"""The options of the commands, generated from the settings declaration: each option's type, allowed values, default
and help come from its :class:`~opensora_timeshift_patch.settings.Setting`; ``--set KEY=VALUE`` takes the rest."""

from __future__ import annotations

import argparse
import ast
import keyword
import math
import re
from typing import Any, Callable, Dict, List, Optional, Sequence, Tuple

from ..buckets import (BUCKET_RESOLUTIONS, MAX_FRAMES, OPENSORA2_NAME, OPENSORA2_NAME_HELP, RESOLUTION_NAMES,
                       BucketConfigError, Opensora2Geometry, opensora2_base_size)
from ..policies import SHIFT_MODES
from ..settings import DISTRIBUTIONS, SETTINGS, WEIGHTINGS, FunctionRegistry, Setting, SettingError
from .common import UsageError, short

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

MAX_SIDE = 100_000
MAX_SAMPLES = 10_000_000
MAX_DPI = 1000
# Bare words that look like a literal in another language: taking them as strings would silently invert a flag.
AMBIGUOUS_WORDS = {"true", "false", "none", "null", "nan", "inf", "infinity"}
BARE_WORD = re.compile(r"[A-Za-z_][A-Za-z0-9_.\-]*", re.ASCII)


def given_options(namespace: argparse.Namespace) -> set:
    """The options already seen on this command line (argparse itself does not say)."""
    if not hasattr(namespace, "_given_options"):
        setattr(namespace, "_given_options", set())
    return getattr(namespace, "_given_options")


class Once(argparse.Action):
    """Store an option's value, refusing the option a second time: argparse would silently keep only the last."""

    def __call__(self, parser: argparse.ArgumentParser, namespace: argparse.Namespace, values: Any,
                 option_string: Optional[str] = None) -> None:
        given = given_options(namespace)
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
        given = given_options(namespace)
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


def pixel_size(text: str) -> Optional[Tuple[int, int]]:
    """``"720x1280"`` (height x width) as a pair; None for text that is not ``HxW``; an argparse error for sides
    outside 1 to MAX_SIDE. The one reading of a pixel size on every command line."""
    match = re.fullmatch(r"(\d+)[xX](\d+)", text, re.ASCII)
    if not match:
        return None
    h, w = int(match[1]), int(match[2])
    if not (1 <= h <= MAX_SIDE and 1 <= w <= MAX_SIDE):
        raise argparse.ArgumentTypeError(f"resolution {text!r} must have a height and width from 1 to {MAX_SIDE}")
    return h, w


def parse_resolution(text: str) -> Any:
    """``"720x1280"`` (height x width) as a pair, or an Open-Sora bucket name such as ``"720p"`` or ``"256px"``, kept
    as the name: its size depends on the Open-Sora version (see :func:`resolutions_of`)."""
    if text in RESOLUTION_NAMES or OPENSORA2_NAME.fullmatch(text):
        return text
    size = pixel_size(text)
    if size is None:
        raise argparse.ArgumentTypeError(
            f"resolution {text!r} is not HxW (e.g. 720x1280) or one of {', '.join(BUCKET_RESOLUTIONS)} "
            f"(or Open-Sora 1.3's NAME_16d, or for 2.0 {OPENSORA2_NAME_HELP})")
    return size


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
    elif setting.type in ("any", "components"):  # a Python literal, as --set takes it
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
    return list(named_resolutions(args, geometry))


def named_resolutions(args: argparse.Namespace, geometry: Optional[Opensora2Geometry]
                      ) -> Dict[Tuple[int, int], Optional[str]]:
    """The --resolution values as {(H, W): the bucket name it was given as, None for HxW}, in order, each size once
    (the first name giving it kept)."""
    given = "resolution" in given_options(args)
    values = args.resolution if given else (DEFAULT_RESOLUTIONS if geometry is None else DEFAULT_RESOLUTIONS_2)
    out: Dict[Tuple[int, int], Optional[str]] = {}
    for value in values:
        if isinstance(value, str) and re.fullmatch(r"\d+[xX]\d+", value, re.ASCII):
            value = parse_resolution(value)
        if isinstance(value, tuple):
            out.setdefault(value, None)
        elif geometry is None:
            if value not in RESOLUTION_NAMES:
                raise UsageError(f"--resolution {value!r} is an Open-Sora 2.0 name: pass --opensora-version 2.0, or "
                                 f"give HxW or one of {', '.join(BUCKET_RESOLUTIONS)}")
            out.setdefault(RESOLUTION_NAMES[value], value)
        else:
            if not OPENSORA2_NAME.fullmatch(value):
                raise UsageError(f"--resolution {value!r} is not an Open-Sora 2.0 name: give HxW or "
                                 f"{OPENSORA2_NAME_HELP}")
            try:
                out.setdefault(opensora2_base_size(value, geometry.token_pixels), value)
            except BucketConfigError as err:
                raise UsageError(f"--{err}") from None
    return out


def frames_of(args: argparse.Namespace, v2: bool) -> List[int]:
    """The --frames values; without --frames, 2.0's default differs from 1.x's."""
    return args.frames if not v2 or "frames" in given_options(args) else list(DEFAULT_FRAMES_2)


def chosen_settings(args: argparse.Namespace, v2: bool) -> Dict[str, Any]:
    """The rflow-timeshift settings chosen on an inspect or plot command line: --sample-method (1.x: always, the
    command's default being logit-normal, but for a --set recipe=...; 2.0: when given) and its parameters, --loss-weighting, --max-loss-weight
    and the weighting's parameters, then --set. Validated where they are built, not here."""
    given = given_options(args)
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
    if not v2 and "recipe" not in settings:  # a recipe's own distribution is what its training draws
        settings.setdefault("sample_method", args.sample_method)
    return settings



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
    found = placeholder_in(value)
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


def placeholder_in(value: Any) -> Optional[str]:
    """The first string in ``value`` (keys included) holding ``{{`` or ``}}``, which mmengine would substitute."""
    if isinstance(value, str):
        return value if "{{" in value or "}}" in value else None
    if isinstance(value, dict):
        value = [*value.keys(), *value.values()]
    if isinstance(value, (list, tuple)):
        for item in value:
            found = placeholder_in(item)
            if found is not None:
                return found
    return None

