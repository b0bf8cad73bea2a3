"""``vauban-trace traces``: list recent traces, one line each.

::

    vauban-trace traces [--source SRC] [--service NAME] [--since 15m|2h|1d] [--limit N] [--json]

Columns: trace id, start (UTC), duration, span count, service, root span name, and
``INCOMPLETE`` for traces rebuilt from partial telemetry. ``--json`` prints one JSON object per
line (the fields of :class:`~vauban_trace.store.TraceSummary`). Durations: a number followed by
``ms``, ``s``, ``m``, ``h``, ``d`` or ``w``. For ``jaeger:`` sources without ``--service`` every
service Jaeger knows is searched; without ``--since`` Jaeger is searched over the last day.
"""

from __future__ import annotations

import argparse
import json
import re
from datetime import UTC, datetime, timedelta
from typing import Any

from vauban_trace._exceptions import ConfigurationError
from vauban_trace.cli._args import positive_int

_DURATION_RE = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*(ms|s|m|h|d|w)\s*$")
_UNITS = {"ms": 0.001, "s": 1, "m": 60, "h": 3600, "d": 86400, "w": 604800}


def parse_duration(text: str, flag: str = "--since") -> timedelta:
    """``15m`` -> 15 minutes; ConfigurationError naming ``flag`` otherwise."""
    m = _DURATION_RE.match(text)
    if m is None:
        raise ConfigurationError(f"{flag}: {text!r} is not a duration like 30s, 15m, 2h or 1d")
    value = float(m.group(1)) * _UNITS[m.group(2)]
    if value <= 0:
        raise ConfigurationError(f"{flag}: {text!r} must be longer than zero")
    return timedelta(seconds=value)


def register(subparsers: Any) -> None:
    p = subparsers.add_parser(
        "traces",
        help="list recent traces from a trace source",
        description="List recent traces, newest first, one line each.",
    )
    p.add_argument("--source", default="store:.vauban", metavar="SRC",
                   help="store:DIR | otlp-json:FILE | jaeger:URL | tempo:URL (default store:.vauban)")
    p.add_argument("--service", default=None, metavar="NAME", help="only traces of this service")
    p.add_argument("--since", default=None, metavar="DURATION", help="only traces started within, e.g. 15m, 2h, 1d")
    p.add_argument("--limit", type=positive_int, default=20, metavar="N", help="at most N traces (default 20)")
    p.add_argument("--json", action="store_true", help="one JSON object per line")
    p.set_defaults(func=run)


def _start(ns: int) -> str:
    if ns <= 0:
        return "-"
    return datetime.fromtimestamp(ns / 1e9, UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")[:-4] + "Z"


def _duration(seconds: float) -> str:
    if seconds < 1:
        return f"{seconds * 1000:.1f}ms"
    return f"{seconds:.2f}s"


def run(args: argparse.Namespace) -> int:
    from vauban_trace.sources import open_source

    since = parse_duration(args.since) if args.since is not None else None
    with open_source(args.source) as src:
        summaries = src.list_traces(service=args.service, since=since, limit=args.limit)
    for s in summaries:
        if args.json:
            print(json.dumps(s.to_dict(), sort_keys=False))
            continue
        flag = "" if s.complete else "  INCOMPLETE"
        print(f"{s.trace_id}  {_start(s.start_unix_nano)}  {_duration(s.duration_s):>9}  {s.span_count:>4} spans  "
              f"{s.service or '-'}  {s.root_name or '-'}{flag}")
    return 0
