"""``config``: write an mmengine config deriving from an Open-Sora config, with rflow-timeshift as its scheduler;
written to a temporary file, loaded and built, and only then moved into place."""

from __future__ import annotations

import argparse
import contextlib
import logging
import os
import tempfile
import warnings
from pathlib import Path
from typing import Any, Callable, Dict, Iterator, List, Tuple

from ..opensora2 import SCHEDULER_TYPE, Opensora2Timesteps
from ..policies import SHIFT_MODES
from ..settings import DISTRIBUTIONS, SETTINGS
from .common import UsageError, build_timeshift, load_config, short
from .options import OPENSORA_VERSIONS, Once, given_options, parse_set_item, placeholder_in, setting_option


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
        if "on_degenerate" in given_options(args):
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
    found = placeholder_in(imports)
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


def add_parser(sub: Any, formatter: Any, epilog: str) -> None:
    p = sub.add_parser("config", help="write a config deriving from an Open-Sora config, with rflow-timeshift",
                       formatter_class=formatter, epilog=epilog,
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
