"""Builders of OTLP requests for the trace store tests."""

from __future__ import annotations

from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest
from opentelemetry.proto.common.v1.common_pb2 import AnyValue, KeyValue
from opentelemetry.proto.trace.v1.trace_pb2 import Span

TRACE_A = "4bf92f3577b34da6a3ce929d0e0e4736"
TRACE_B = "0af7651916cd43dd8448eb211c80319c"
ROOT = "00f067aa0ba902b7"
CHILD = "00f067aa0ba902b8"
CHILD2 = "00f067aa0ba902b9"


def make_span(trace_id: str, span_id: str, name: str, *, parent: str | None = None,
              start: int = 1_000, end: int = 2_000, attrs: dict[str, str] | None = None) -> Span:
    span = Span(
        trace_id=bytes.fromhex(trace_id), span_id=bytes.fromhex(span_id), name=name,
        start_time_unix_nano=start, end_time_unix_nano=end,
    )
    if parent:
        span.parent_span_id = bytes.fromhex(parent)
    for key, value in (attrs or {}).items():
        span.attributes.append(KeyValue(key=key, value=AnyValue(string_value=value)))
    return span


def make_request(*spans: Span, service: str = "demo", scope: str = "vauban") -> ExportTraceServiceRequest:
    req = ExportTraceServiceRequest()
    rs = req.resource_spans.add()
    rs.resource.attributes.append(KeyValue(key="service.name", value=AnyValue(string_value=service)))
    ss = rs.scope_spans.add()
    ss.scope.name = scope
    ss.scope.version = "1.0"
    ss.spans.extend(spans)
    return req
