"""OTLP telemetry -> :class:`~vauban_trace.contract.Trace`: the one road from spans to Traces.

Everything that turns telemetry into Trace records (the embedded exporter, the collector, the
store, every source) goes through this package::

    from vauban_trace.rebuild import rebuild_traces, rebuild_from_json, traces_data_from_json

    traces = rebuild_traces(export_request)          # ExportTraceServiceRequest | TracesData |
                                                     # protobuf bytes | Iterable[ResourceSpans]
    traces = rebuild_from_json(open("otlp.json").read())   # OTLP JSON with backend quirks
    data = traces_data_from_json({"result": {...}})        # -> TracesData (Jaeger v3 wrapper)
    data = traces_data_from_jaeger_ui({"data": [...]})     # Jaeger legacy UI model -> TracesData
    doc = traces_data_to_json(data)                        # canonical OTLP JSON (hex ids)
    docs = rebuild_documents(protobuf_bytes)               # [TraceDocument]: Trace JSON + summary,
                                                           # native accelerator for clean traces
    n = group_stage_values(per_stage, [doc.stages], ("measured", "derived"))  # histogram values per stage

How spans become records (stage spans, counters with provenance, artifact events, spill spans
folded into the span they overflowed from, root request/capabilities, completeness) is described
in ``_rebuild``'s docstring; the JSON quirks accepted in ``_otlp_json``'s; the Jaeger UI mapping in
``_jaeger_ui``'s. Errors: :class:`~vauban_trace.RebuildError`, always naming the bad field.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from vauban_trace.contract import Trace
from vauban_trace.rebuild._documents import (
    StageObservation,
    StageValues,
    TraceDocument,
    document_of,
    group_stage_values,
    native_available,
    rebuild_documents,
)
from vauban_trace.rebuild._ids import normalize_trace_id, parse_trace_id
from vauban_trace.rebuild._jaeger_ui import traces_data_from_jaeger_ui
from vauban_trace.rebuild._otlp_json import traces_data_from_json, traces_data_to_json
from vauban_trace.rebuild._rebuild import OtlpInput, rebuild_traces, resource_spans_of


def rebuild_from_json(obj: Mapping[str, Any] | str | bytes) -> list[Trace]:
    """``rebuild_traces(traces_data_from_json(obj))``: OTLP JSON (or Jaeger UI JSON) to Traces."""
    return rebuild_traces(traces_data_from_json(obj))


__all__ = [
    "OtlpInput",
    "StageObservation",
    "StageValues",
    "TraceDocument",
    "document_of",
    "group_stage_values",
    "native_available",
    "normalize_trace_id",
    "parse_trace_id",
    "rebuild_documents",
    "rebuild_from_json",
    "rebuild_traces",
    "resource_spans_of",
    "traces_data_from_jaeger_ui",
    "traces_data_from_json",
    "traces_data_to_json",
]
