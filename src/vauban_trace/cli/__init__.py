"""The ``vauban-trace`` command line.

Subcommands live one per module (``_demo``, ``_show``, ``_traces``, ``_run``, ``_collector``, ``_sweep``,
``_report``, ``_store``);
each exposes ``register(subparsers)`` and sets ``func`` on its parser. Errors the user can fix
(bad flags, missing files, unreachable sources) print one line to stderr and exit with code 2;
no traceback.
"""

from __future__ import annotations

import argparse
import importlib
import importlib.util
import sys
from collections.abc import Sequence
from typing import NoReturn

from vauban_trace._exceptions import VaubanTraceError

_COMMANDS = ("_demo", "_run", "_show", "_traces", "_collector", "_sweep", "_report", "_store")


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> NoReturn:  # one line, exit 2 (argparse prints usage too)
        self.exit(2, f"vauban-trace: error: {message}\n")


def build_parser() -> argparse.ArgumentParser:
    from vauban_trace import __version__

    parser = _Parser(prog="vauban-trace", description="Trace-first instrumentation for ML inference.")
    parser.add_argument("--version", action="version", version=f"vauban-trace {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", parser_class=_Parser)
    for name in _COMMANDS:
        qualified = f"{__name__}.{name}"
        if importlib.util.find_spec(qualified) is None:
            continue
        importlib.import_module(qualified).register(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    func = getattr(args, "func", None)
    if func is None:
        parser.print_help(sys.stderr)
        return 2
    try:
        return int(func(args) or 0)
    except VaubanTraceError as exc:
        print(f"vauban-trace: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 130
    except BrokenPipeError:  # e.g. `vauban-trace show ... | head`: the reader left, not an error
        import os

        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        return 0


if __name__ == "__main__":  # pragma: no cover
    raise SystemExit(main())
