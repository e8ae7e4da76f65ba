"""What every command shares: the input error, one-line messages, input files, tables, and the one status-to-text
table."""

from __future__ import annotations

import argparse
import math
import os
import reprlib
import warnings
from typing import Any, Dict, NamedTuple, Optional, Sequence, Tuple

from ..per_bucket import BucketRule
from ..settings import OPENSORA_ONLY, SETTINGS

CONFIG_SUFFIXES = (".py", ".json", ".yaml", ".yml")  # what mmengine's Config.fromfile reads


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


class StatusText(NamedTuple):
    """A bucket's verdict in words: in a row of inspect's table, and in a cell of audit's."""

    row: str
    cell: str


# The one table from a verdict's kind to its words. "extreme": not refused, but the factor is outside [0.01, 100]
# (audit says so in a note); "off": a bucket of bucket_config that keeps no clips.
STATUS_TEXT: Dict[str, StatusText] = {
    "ok": StatusText("ok", "ok"),
    "collapsed": StatusText("DEGENERATE (t = 0)", "t = 0 !"),
    "clamped": StatusText("clamped", "clamped"),
    "refused": StatusText("refused by the guard", "refused"),
    "no shift": StatusText("no shift", "no shift"),
    "extreme": StatusText("alpha outside [0.01, 100]", "ok"),
    "off": StatusText("off", "off"),
}


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


def build_timeshift(sched: Dict[str, Any]) -> Any:
    """The ``RFlowTimeShift`` a config's ``scheduler = dict(type="rflow-timeshift", ...)`` builds, without Open-Sora.

    One validation for ``inspect``, ``audit`` and ``config``: Open-Sora 1.3's own RFLOW keywords (``OPENSORA_ONLY``:
    ``use_oscillation_guidance``, ``drop_condition``, ...) are type-checked and set aside (its RFLOW implements them;
    the written config keeps them), ``backend`` is type-checked, and the rest builds on the standalone backend.
    Raises ``ValueError``, ``TypeError`` or ``ImportError`` naming the setting.
    """
    from ..opensora1.scheduler import RFlowTimeShift

    settings = {k: v for k, v in sched.items() if k != "type"}
    if "backend" in settings:
        SETTINGS["backend"].check(settings["backend"])
    settings["backend"] = "standalone"  # validation must not need (or import) Open-Sora
    for key in [k for k in settings if k in OPENSORA_ONLY]:
        OPENSORA_ONLY[key].check(settings.pop(key))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return RFlowTimeShift(**settings)


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


def fmt(x: Optional[float], digits: int = 1) -> str:
    if x is None:
        return "-"
    return "nan" if math.isnan(x) else f"{x:.{digits}f}"


def rule_cell(rule: Optional[int]) -> str:
    return "-" if rule is None else f"[{rule}]"


def rule_text(rule: BucketRule) -> str:
    """A rule in words: where it applies, and its settings."""
    return f"{rule}: " + ", ".join(f"{k}={v!r}" for k, v in rule.settings.items())


def buckets_text(keys: Sequence[Tuple[int, int, int, Optional[str]]], limit: int = 4) -> str:
    """Buckets in words: "720x1280 x 16 frames, ..." (the first few)."""
    parts = [f"{h}x{w} x {n} frames" + (f" ({name})" if name else "") for h, w, n, name in keys[:limit]]
    return ", ".join(parts) + (f" and {len(keys) - limit} more" if len(keys) > limit else "")


def strict(value: Any) -> Any:
    """``value`` with every float that is not finite as None, for strict JSON (a bare NaN is not JSON)."""
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {k: strict(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [strict(v) for v in value]
    return value
