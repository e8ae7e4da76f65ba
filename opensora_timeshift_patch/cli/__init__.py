"""``opensora-timeshift``: see, audit and configure the timestep shift before spending GPU time.

Exit status is a contract a launch script may read: 0 done; 1 only for ``audit`` finding clips that would
collapse to t = 0 or be refused by the guard; 2 for bad input or usage (one line on stderr); 3 for an internal
error (its traceback on stderr).

One module per command (:mod:`.inspect`, :mod:`.plot`, :mod:`.audit`, :mod:`.config`, :mod:`.sigmas`, :mod:`.report`), the options generated from
the settings declaration in :mod:`.options`, and in :mod:`.views` one view per Open-Sora generation, the numbers
``inspect`` and ``plot`` show.
"""

from __future__ import annotations

import argparse
import os
import sys
import traceback
from typing import Optional, Sequence

from ..buckets import BucketConfigError
from . import audit, config, inspect, plot, report, sigmas
from .common import Parser, UsageError, one_line

__all__ = ["main", "build_parser", "UsageError"]

_BAD_INPUT = "  2  bad input or usage: one line on stderr, no traceback\n"
_BUG = "  3  internal error: a traceback on stderr (a bug: please report it)"
_COLLAPSE = "some clip would train with every timestep at t = 0, or be refused by the guard"
EXIT_STATUS = ("exit status:\n  0  done (audit: no clip would train at t = 0)\n"
               f"  1  audit only: {_COLLAPSE}\n{_BAD_INPUT}{_BUG}")
AUDIT_EXIT_STATUS = f"exit status:\n  0  no clip would train at t = 0\n  1  {_COLLAPSE}\n{_BAD_INPUT}{_BUG}"
PLAIN_EXIT_STATUS = f"exit status:\n  0  done\n{_BAD_INPUT}{_BUG}"


def build_parser() -> argparse.ArgumentParser:
    formatter = argparse.RawDescriptionHelpFormatter
    parser = Parser(
        prog="opensora-timeshift", formatter_class=formatter, epilog=EXIT_STATUS,
        description="See, audit and configure Open-Sora's timestep shift before spending GPU time.")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    inspect.add_parser(sub, formatter, PLAIN_EXIT_STATUS)
    plot.add_parser(sub, formatter, PLAIN_EXIT_STATUS)
    audit.add_parser(sub, formatter, AUDIT_EXIT_STATUS)
    config.add_parser(sub, formatter, PLAIN_EXIT_STATUS)
    sigmas.add_parser(sub, formatter, PLAIN_EXIT_STATUS)
    report.add_parser(sub, formatter, PLAIN_EXIT_STATUS)
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
