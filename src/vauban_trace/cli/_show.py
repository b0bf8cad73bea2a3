"""``vauban-trace show``: print one rebuilt trace.

::

    vauban-trace show TRACE_ID [--source SRC] [--json]
    vauban-trace show --last   [--source SRC] [--json]

``--source`` is any :func:`vauban_trace.sources.open_source` spec (default ``store:.vauban``).
``--json`` prints the Trace document exactly as ``Trace.to_json(indent=2)``; otherwise a readable
summary (``vauban_trace.cli._render.render_trace_summary`` when present, else the compact
rendering below). Unknown trace, unreachable source, malformed id: one line on stderr, exit 2.
"""

from __future__ import annotations

import argparse
import importlib
import importlib.util
from pathlib import Path
from typing import Any

from vauban_trace._exceptions import ConfigurationError
from vauban_trace.contract import COUNTER_NAMES, Trace, TraceSpan

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
            candidate = src.trace_json_path(trace.id)
            json_path = candidate if candidate.is_file() else None
    if args.json:
        print(trace.to_json(indent=2))
    else:
        print(render(trace, trace_json_path=json_path))
    return 0


def render(trace: Trace, *, trace_json_path: Path | None = None) -> str:
    """The shared renderer when it exists, else :func:`render_minimal`."""
    name = "vauban_trace.cli._render"
    if importlib.util.find_spec(name) is not None:
        module = importlib.import_module(name)
        text: str = module.render_trace_summary(trace, trace_json_path=trace_json_path)
        return text.rstrip("\n")
    return render_minimal(trace, trace_json_path=trace_json_path)


def _counters(span: TraceSpan) -> str:
    prof = span.profile
    if prof is None:
        return ""
    parts = []
    for name in COUNTER_NAMES:
        value = getattr(prof, name)
        if value is None or name == "duration_s":
            continue
        parts.append(f"{name}={value:g}" if isinstance(value, float) else f"{name}={value}")
    return " ".join(parts)


def render_minimal(trace: Trace, *, trace_json_path: Path | None = None) -> str:
    meta = trace.metadata
    lines = [f"trace {trace.id}  service={meta.get('service_name') or '-'}  spans={len(trace.spans)}  "
             f"{'complete' if trace.complete else 'INCOMPLETE'}"]
    if trace.request is not None:
        req = trace.request
        lines.append(f"request: artifacts={','.join(req.requested_artifacts) or '-'} "
                     f"layers={','.join(map(str, req.collect_layers)) or '-'} interventions={len(req.interventions)}")
    if trace.capabilities is not None:
        lines.append(f"executor: {trace.capabilities.executor}")
    depth: dict[str, int] = {}
    for span in trace.spans:
        d = depth.get(span.parent_id, -1) + 1 if span.parent_id is not None else 0
        depth[span.id] = d
        dur = span.profile.duration_s if span.profile is not None and span.profile.duration_s is not None else None
        shown = f"{dur * 1000:.3f} ms" if dur is not None else "-"
        status = "" if span.status != "error" else f"  ERROR {span.error or ''}".rstrip()
        stage = f" [{span.stage}]" if span.stage else ""
        extra = _counters(span)
        outs = f" -> {len(span.output_artifact_ids)} artifact(s)" if span.output_artifact_ids else ""
        lines.append(f"{'  ' * (d + 1)}{span.name}{stage}  {shown}{('  ' + extra) if extra else ''}{outs}{status}")
    for miss in trace.missing:
        lines.append(f"missing {miss.kind}: {miss.reason}{(' (' + miss.detail + ')') if miss.detail else ''}")
    for problem in trace.problems:
        lines.append(f"problem: {problem}")
    if trace_json_path is not None:
        lines.append(f"trace JSON: {trace_json_path}")
    return "\n".join(lines)
