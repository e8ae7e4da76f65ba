"""``config``: write an mmengine config deriving from an Open-Sora config, with rflow-timeshift as its scheduler;
written to a temporary file, loaded and built, and only then moved into place."""

from __future__ import annotations

import argparse
import contextlib
import os
import sys
import tempfile
import warnings
from pathlib import Path
from typing import Any, Callable, Dict, Iterable, Iterator, List, NamedTuple, Optional, Set, Tuple

from ..opensora2 import SCHEDULER_TYPE, Opensora2Timesteps
from ..policies import SHIFT_MODES
from ..settings import DISTRIBUTIONS, SETTINGS, SHIFTING, applies
from .common import UsageError, build_timeshift, load_config, short
from .options import OPENSORA_VERSIONS, Once, given_options, parse_set_item, placeholder_in, setting_option


_RECORDING: Optional[List[str]] = None  # where the audit hook puts the paths opened, while one records
_HOOKED = False


def _on_audit_event(event: str, args: Tuple[Any, ...]) -> None:
    # Python raises "open" for every file opened (open(), io.open, os.open, and the imports' io.open_code).
    if event == "open" and _RECORDING is not None:
        try:
            if isinstance(args[0], (str, bytes, os.PathLike)):  # a file descriptor names no path
                _RECORDING.append(os.path.abspath(os.fsdecode(args[0])))
        except Exception:  # an audit hook must never raise: that would fail the open itself
            pass


@contextlib.contextmanager
def recording_reads() -> Iterator[List[str]]:
    """Record what loading a config reads: every file opened meanwhile (by mmengine for the ``_base_`` chain, or by
    the config itself, by any means), and the source file of every module imported meanwhile (a module loaded from
    its cached bytecode opens only the .pyc).

    Python's audit hooks (``sys.addaudithook``) see every open; ours is added once and records only in here.
    """
    global _RECORDING, _HOOKED
    if not _HOOKED:
        sys.addaudithook(_on_audit_event)
        _HOOKED = True
    read: List[str] = []
    before = set(sys.modules)
    _RECORDING = read
    try:
        yield read
    finally:
        _RECORDING = None
        read.extend(_module_file(name) for name in set(sys.modules) - before)


def load_base(path: str) -> Tuple[Any, Set[str]]:
    """The base config, and the real paths of everything loading it read."""
    with recording_reads() as read:
        cfg = load_config(path, "base config")
    return cfg, _real(read)


def _module_file(name: str) -> str:
    module = sys.modules.get(name)
    return os.path.abspath(getattr(module, "__file__", None) or "")


def _real(paths: Iterable[str]) -> Set[str]:
    return {os.path.realpath(p) for p in paths if p}


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



class Effective(NamedTuple):
    """A scheduler as it trains: in words, and its resolved settings (None where it is no rflow we can build)."""

    words: str
    values: Optional[Dict[str, Any]]
    distribution: str = ""
    given: Tuple[str, ...] = ()  # the settings its dict names (the rest are defaults)


def base_effective(base_cfg: Any, version: str) -> Effective:
    """What the base's scheduler does, in rflow-timeshift's settings: stock ``rflow`` as the settings that reproduce
    it (RFLOW's ``use_timestep_transform=False`` default, the release's stock rule, no guard, and 1.3's
    ``transform_scale`` on videos only), or a 2.0 config's stock rule."""
    from .views import stock_opensora2

    sched = base_cfg.get("scheduler")
    if version == "2.0":
        if sched is None:
            stock = stock_opensora2()
            return Effective("no scheduler key: stock Open-Sora 2.0's rule", stock.recipe.values,
                             repr(stock.distribution), tuple(stock.recipe.given))
        if not isinstance(sched, dict) or sched.get("type") != SCHEDULER_TYPE:
            return Effective(f"scheduler {short(sched)}", None)
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                built2 = Opensora2Timesteps(**{k: v for k, v in sched.items() if k != "type"})
        except (ValueError, TypeError):
            return Effective(f"{SCHEDULER_TYPE} (Open-Sora 2.0)", None)
        return Effective(f"{SCHEDULER_TYPE} (Open-Sora 2.0)", built2.recipe.values, repr(built2.distribution),
                         tuple(built2.recipe.given))
    if sched is None:
        return Effective("no scheduler", None)
    if not isinstance(sched, dict) or sched.get("type") not in ("rflow", "rflow-timeshift"):
        kind = sched.get("type") if isinstance(sched, dict) else sched
        return Effective(f"scheduler type {short(kind)}, not a rectified flow", None)
    settings = {k: v for k, v in sched.items() if k != "type"}
    words = sched["type"]
    if sched["type"] == "rflow":
        words = f"stock Open-Sora {version} rflow"
        settings.setdefault("use_timestep_transform", False)  # RFLOW's own default
        if settings["use_timestep_transform"] is True:
            settings.update(shift_mode="legacy" if version == "1.2" else "v13", on_degenerate="ignore")
            if version == "1.3":
                settings["scale_images"] = False
    try:
        built = build_timeshift(settings)
    except (ValueError, TypeError, ImportError):
        return Effective(words, None)  # the derived config, which merges these keys, is refused with the reason
    return Effective(words, built.recipe.values, repr(built.distribution), tuple(built.recipe.given))


def changes(base: Effective, derived: Effective) -> List[str]:
    """How the derived scheduler trains differently from the base's: ``key: before -> after`` per setting that
    means something on either side (a shift setting only where that side shifts)."""
    if base.values is None or derived.values is None:
        return []

    def meaning(values: Dict[str, Any], key: str) -> Any:
        setting = SETTINGS.get(key)
        if setting is None or (key in SHIFTING and not values["use_timestep_transform"]) or not applies(setting,
                                                                                                          values):
            return "-"
        return values[key]

    def differs(key: str) -> bool:
        before, after = meaning(base.values, key), meaning(derived.values, key)  # type: ignore[arg-type]
        if "-" in (before, after):  # the setting means something on one side only: name it where it was given
            return key in (derived.given if after != "-" else base.given)
        return before != after

    out = [f"{key}: {meaning(base.values, key)!r} -> {meaning(derived.values, key)!r}"
           for key in derived.values if differs(key)]
    if base.distribution != derived.distribution and not any(line.startswith("sample_method") for line in out):
        out.append(f"distribution: {base.distribution} -> {derived.distribution}")
    return [line.replace("'-'", "-") for line in out]


def cmd_config(args: argparse.Namespace) -> int:
    v2 = args.opensora_version == "2.0"
    base = os.path.abspath(args.base_config)
    base_cfg, read = load_base(args.base_config)
    if not args.out:
        raise UsageError("--out is empty: give the path of the .py file to write")
    out = Path(os.path.abspath(args.out))
    if os.path.isdir(out):
        raise UsageError(f"--out {args.out!r} is a directory: give the path of the .py file to write")
    if out.suffix != ".py":
        raise UsageError(f"--out {args.out!r} must end in .py: the derived config is Python")

    custom_imports = base_cfg.get("custom_imports") or {}
    imports = custom_imports.get("imports", []) if isinstance(custom_imports, dict) else None
    imports = [imports] if isinstance(imports, str) else imports  # mmengine takes one module name bare
    if not isinstance(imports, (list, tuple)) or not all(isinstance(name, str) for name in imports):
        raise UsageError(f"base config custom_imports={short(custom_imports)} is not dict(imports=[module names])")
    imports = [*imports, "opensora_timeshift_patch"] if "opensora_timeshift_patch" not in imports else list(imports)
    # Nothing loading the base read may be replaced: its _base_ chain, a file it opens or executes, a module it
    # imports (also one imported before it ran, which loading did not open again).
    if os.path.realpath(out) in read | _real(_module_file(name) for name in imports):
        raise UsageError(f"--out {args.out!r} is the base config or one of its _base_ files, or another file it reads "
                         "(one it opens or executes, or a module it imports): writing it would change what the new "
                         "config derives from; choose another path")
    if os.path.lexists(out) and not args.force:
        raise UsageError(f"--out {args.out!r} exists; pass --force to replace it")

    before = base_effective(base_cfg, args.opensora_version)
    options, carried = scheduler_options(args, before, v2)
    rel = base_reference(base, out.parent)
    # The file's text goes through mmengine's {{...}} substitution when it loads: only the base's path is not ours.
    for what, text in (("path", rel), ("file name", os.path.basename(base))):
        if "{{" in text or "}}" in text or not text.isprintable():
            raise UsageError(f"the base config's {what} {short(text)} holds '{{{{', '}}}}' or a control character, "
                             "which mmengine would substitute or misread in the derived config: rename or move it")
    found = placeholder_in(imports)
    if found is not None:
        raise UsageError(f"base config custom_imports holds {short(found)}: '{{{{' and '}}}}' would be substituted "
                         "by mmengine in the derived config")
    after = derived_effective(base_cfg, options, v2, out)
    diff = changes(before, after)
    summary = [f"the base's scheduler: {before.words}"]
    summary += [f"carried over from it, to keep what it does: {', '.join(carried)}"] if carried else []
    if before.values is None:
        summary.append("how this one differs cannot be computed: the base's scheduler is not one rflow-timeshift "
                       "can reproduce")
    else:
        summary += ["what this one changes:", *(f"  {line}" for line in diff)] if diff else [
            "what this one changes: nothing in how it trains"]
    body = "".join(f"    {k}={v!r},\n" for k, v in options.items())
    if v2:
        intro = (f"# Derived from {os.path.basename(base)!r} by `opensora-timeshift config`: Open-Sora 2.0's training "
                 f"timesteps and inference schedule from rflow-timeshift.\n# Importing the package hooks 2.0's config "
                 f"parsing, which then reads the scheduler key below; the rest of the base is unchanged.\n")
    else:
        intro = (f"# Derived from {os.path.basename(base)!r} by `opensora-timeshift config`: its scheduler switched to "
                 f"rflow-timeshift.\n# Keys below merge into the base's scheduler dict; the rest of the base is "
                 f"unchanged.\n")
    intro += "".join(f"# {line}\n" for line in summary)
    text = (f"{intro}"
            f"_base_ = [{rel!r}]\n\n"
            f"custom_imports = dict(imports={imports!r}, allow_failed_imports=False)\n\n"
            f"scheduler = dict(\n{body})\n")
    if "{{" in text:  # every piece was checked above; a literal's repr cannot make one
        raise UsageError("the derived config would hold '{{', which mmengine substitutes when it loads")
    cfg, scheduler = write_verified(out, text, verify_opensora2 if v2 else verify_scheduler)
    if scheduler.recipe.values != after.values:  # what the file says of itself must be what it builds
        raise AssertionError(f"{out} builds {scheduler!r}, not the scheduler its header describes")
    print(f"wrote {out}")
    for line in summary:
        print(line)
    if v2:
        print(f"loaded it with mmengine and built its Open-Sora 2.0 timesteps as the hook will: {scheduler!r}")
    else:
        print(f"loaded it with mmengine and built the scheduler (standalone backend; Open-Sora 1.3's own RFLOW "
              f"keywords type-checked): {scheduler!r}")
    print(f"merged scheduler config: {dict(cfg.scheduler)}")
    return 0


def scheduler_options(args: argparse.Namespace, base: Effective, v2: bool) -> Tuple[Dict[str, Any], List[str]]:
    """The keys the derived config writes into the scheduler dict, and those of them carried over from the base.

    A base that does not shift timesteps (stock rflow's default) keeps not shifting: its
    ``use_timestep_transform=False`` is written out, since rflow-timeshift's default is True; shifting it is a
    choice the user makes with ``--set use_timestep_transform=True``, not a side effect of ``--shift-mode``.
    """
    given = dict(args.set or [])
    unshifted = (not v2 and base.values is not None and not base.values["use_timestep_transform"]
                 and "use_timestep_transform" not in given)
    carried: List[str] = []
    if v2:  # only what was asked for: no setting means 2.0's own rule
        options: Dict[str, Any] = dict(type=SCHEDULER_TYPE)
        if args.shift_mode is not None:
            options["shift_mode"] = args.shift_mode
        if "on_degenerate" in given_options(args):
            options["on_degenerate"] = args.on_degenerate
    elif unshifted:
        if args.shift_mode is not None:
            raise UsageError(
                f"the base's scheduler ({base.words}) does not shift timesteps (use_timestep_transform=False, "
                f"stock rflow's default), and --shift-mode {args.shift_mode} would start shifting them: a change of "
                "what the base trains or evaluates. Leave out --shift-mode to keep its timesteps unshifted, or add "
                "--set use_timestep_transform=True to shift them on purpose")
        options = dict(type="rflow-timeshift", use_timestep_transform=False)
        carried.append("use_timestep_transform=False")
        if "on_degenerate" in given_options(args):
            options["on_degenerate"] = args.on_degenerate
    else:
        if args.shift_mode is None and given.get("use_timestep_transform") is not False:
            raise UsageError(f"--shift-mode is required for an Open-Sora {args.opensora_version} config that shifts "
                             f"timesteps (choose from {', '.join(SHIFT_MODES)}); only --opensora-version 2.0 has a "
                             "default")
        options = dict(type="rflow-timeshift")
        if args.shift_mode is not None:
            options["shift_mode"] = args.shift_mode
        options["on_degenerate"] = args.on_degenerate
        stock_1_3 = (args.opensora_version == "1.3" and base.values is not None
                     and base.words.startswith("stock") and base.values["use_timestep_transform"])
        if stock_1_3 and "scale_images" not in given:  # stock 1.3 applies transform_scale to videos only
            options["scale_images"] = False
            carried.append("scale_images=False")
    for key in ("sample_method", "timestep_rng"):
        if getattr(args, key) is not None:
            options[key] = getattr(args, key)
    if args.stratified:
        options["stratified"] = True
    for key, value in args.set or []:
        if key in options:
            raise UsageError(f"--set {key}=...: {key} is already set (by its own option, or an earlier --set)")
        options[key] = value
    return options, carried


def derived_effective(base_cfg: Any, options: Dict[str, Any], v2: bool, out: Path) -> Effective:
    """The derived scheduler, built from the base's scheduler dict with ``options`` merged in, as mmengine merges
    them (the file written is loaded and checked to build the same)."""
    sched = base_cfg.get("scheduler")
    merged = {**(sched if isinstance(sched, dict) and sched.get("type") in ("rflow", SCHEDULER_TYPE) else {}),
              **options}
    settings = {k: v for k, v in merged.items() if k != "type"}
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            built = Opensora2Timesteps(**settings) if v2 else build_timeshift(settings)
    except (ValueError, TypeError, KeyError, ImportError) as err:
        raise UsageError(f"the derived config did not build, so {out} was not written: {err}") from err
    return Effective(SCHEDULER_TYPE, built.recipe.values, repr(built.distribution), tuple(built.recipe.given))


def verify_scheduler(cfg: Any) -> Any:
    """Build the derived config's scheduler as ``audit`` validates one: the registered class, standalone."""
    from ..opensora1.registry import SCHEDULERS
    from ..opensora1.scheduler import RFlowTimeShift

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
            from mmengine.config import Config

            with recording_reads() as read:  # imports custom_imports, which the base may list without installing
                cfg = Config.fromfile(tmp)
        except (Exception, SystemExit) as err:  # the base chain is the user's program: whatever it raises
            raise UsageError(f"the derived config does not load, so {out} was not written: "
                             f"{type(err).__name__}: {err}") from err
        if os.path.realpath(out) in _real(read):
            raise UsageError(f"--out {str(out)!r} is a file the derived config reads (its _base_ chain, a file it "
                             "opens or executes, or a module it imports): writing it would change what the new "
                             "config derives from; choose another path")
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


def add_parser(sub: Any, formatter: Any, epilog: str) -> None:
    p = sub.add_parser("config", help="write a config deriving from an Open-Sora config, with rflow-timeshift",
                       formatter_class=formatter, epilog=epilog,
                       description="Writes an mmengine config whose _base_ is BASE_CONFIG and whose scheduler is\n"
                                   "rflow-timeshift with the chosen options. It is written to a temporary file\n"
                                   "beside --out, loaded with mmengine and its scheduler built through the registry,\n"
                                   "and only then moved into place; on any failure nothing is written. --out may not\n"
                                   "be anything loading BASE_CONFIG reads (its _base_ chain, files it opens, modules\n"
                                   "it imports), and an existing --out is replaced only with --force. The new config\n"
                                   "says at its top how its scheduler trains differently from the base's; a base that\n"
                                   "does not shift timesteps keeps not shifting unless --set\n"
                                   "use_timestep_transform=True asks for it.")
    p.add_argument("base_config", metavar="BASE_CONFIG", help="the Open-Sora config to derive from")
    p.add_argument("--opensora-version", choices=OPENSORA_VERSIONS, default="1.2", action=Once,
                   help="the base config's Open-Sora (default 1.2; 1.2 and 1.3 switch its scheduler to "
                        "rflow-timeshift; 2.0 adds scheduler = dict(type='rflow-timeshift', ...), which the package's "
                        "hook reads when 2.0 parses the config, and validates it as 2.0 reads it)")
    p.add_argument("--shift-mode", choices=SHIFT_MODES, action=Once,
                   help="temporal-size policy (required for a 1.x base that shifts, refused for one that does not; "
                        "2.0: optional, default 'latent', the latent's own length)")
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
