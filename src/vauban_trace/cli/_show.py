"""``vauban-trace show``: print one rebuilt trace.

::

    vauban-trace show TRACE_ID [--source SRC] [--json]
    vauban-trace show --last   [--source SRC] [--json]

``--source`` is any :func:`vauban_trace.sources.open_source` spec (default ``store:.vauban``).
``--json`` prints the Trace document exactly as ``Trace.to_json(indent=2)``; otherwise the
readable summary of ``vauban_trace.cli._render.render_trace_summary`` (with the path of the trace
JSON file when the source is a store). Unknown trace, unreachable source, malformed id: one line on stderr, exit 2.
"""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

from vauban_trace._exceptions import ConfigurationError
from vauban_trace.contract import Trace

DEFAULT_SOURCE = "store:.vauban"


def register(subparsers: Any) -> None:
    p = subparsers.add_parser(
        "show",
        help="print one trace (by id, or the last one)",
        description="Print a rebuilt trace from a trace source.",
    )
    p.add_argument("trace_id", nargs="?", metavar="TRACE_ID", help="trace id (32 hex digits; base64 accepted)")
    p.add_argument("--last", action="store_true", help="show the trace that started last")
    p.add_argument("--source", default=DEFAULT_SOURCE, metavar="SRC",
                   help="store:DIR | otlp-json:FILE | jaeger:URL | tempo:URL (default store:.vauban)")
    p.add_argument("--json", action="store_true", help="print the Trace JSON document")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from vauban_trace.sources import StoreSource, open_source

    if args.last == (args.trace_id is not None):
        raise ConfigurationError("show: give a TRACE_ID or --last (not both)")
    with open_source(args.source) as src:
        trace = src.last_trace() if args.last else src.get_trace(args.trace_id)
        json_path: Path | None = None
        if isinstance(src, StoreSource):
            json_path = src.trace_json_file(trace.id)
    if args.json:
        print(trace.to_json(indent=2))
    else:
        print(render(trace, trace_json_path=json_path))
    return 0


def render(trace: Trace, *, trace_json_path: Path | None = None) -> str:
    """The readable summary (the renderer shared with ``vauban-trace demo``)."""
    from vauban_trace.cli._render import render_trace_summary

    return render_trace_summary(trace, trace_json_path=trace_json_path).rstrip("\n")
