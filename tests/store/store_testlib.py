"""Builders of OTLP requests and of stored documents for the trace store tests."""

from __future__ import annotations

import dataclasses

from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest
from opentelemetry.proto.common.v1.common_pb2 import AnyValue, KeyValue
from opentelemetry.proto.trace.v1.trace_pb2 import Span

from vauban_trace.contract import Trace, TraceSpan
from vauban_trace.rebuild import TraceDocument, document_of

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


#: the ``traces`` table of schema versions 2 and 3 (Trace JSON in the row), frozen here for the
#: migration tests: the store's own DDL describes version 4
V3_TRACES = """
CREATE TABLE IF NOT EXISTS traces (
    trace_id TEXT PRIMARY KEY, service TEXT, root_span_id TEXT, root_name TEXT, root_start_unix_nano INTEGER,
    start_unix_nano INTEGER, end_unix_nano INTEGER, raw_span_count INTEGER NOT NULL DEFAULT 0,
    has_root INTEGER NOT NULL DEFAULT 0, first_received_unix_nano INTEGER, last_received_unix_nano INTEGER,
    version INTEGER NOT NULL DEFAULT 0, rebuilt_version INTEGER, rebuilt_at_unix_nano INTEGER, trace_json TEXT,
    complete INTEGER, rb_service TEXT, rb_root_name TEXT, rb_start_unix_nano INTEGER, rb_duration_s REAL,
    rb_span_count INTEGER
);
CREATE INDEX IF NOT EXISTS traces_by_start ON traces (rb_start_unix_nano) WHERE trace_json IS NOT NULL;
CREATE INDEX IF NOT EXISTS traces_pending ON traces (last_received_unix_nano)
    WHERE version > 0 AND (rebuilt_version IS NULL OR rebuilt_version < version);
CREATE INDEX IF NOT EXISTS traces_by_received ON traces (last_received_unix_nano)
"""

#: the bookkeeping and summary columns every schema version has (migrations keep them as they are)
TRACE_COLUMNS = (
    "trace_id, service, root_span_id, root_name, root_start_unix_nano, start_unix_nano, end_unix_nano, "
    "raw_span_count, has_root, first_received_unix_nano, last_received_unix_nano, version, rebuilt_version, "
    "rebuilt_at_unix_nano, complete, rb_service, rb_root_name, rb_start_unix_nano, rb_duration_s, rb_span_count"
)


def batch_rows(ts: object) -> list[tuple[int, str, int, int, bytes]]:
    """(id, trace id, received, span count, blob) of every span batch of a schema-5 store, in id
    order, the blobs read back (checked) from its span segments."""
    conn = ts._conn()  # type: ignore[attr-defined]
    out = []
    for bid, tid, rcv, count, seg, off, length, dig in conn.execute(
            "SELECT id, trace_id, received_unix_nano, span_count, seg, off, len, digest FROM span_batches ORDER BY id"):
        ((_b, _c, blob),) = ts._spans.read(tid, [(bid, count, seg, off, length, dig)])  # type: ignore[attr-defined]
        out.append((int(bid), str(tid), int(rcv), int(count), blob))
    return out


def rewrite_batch(ts: object, trace_id: str, blob: bytes) -> None:
    """Point every span batch row of ``trace_id`` at ``blob``, appended to its span segment file
    with a matching digest (a blob that passes the disk check but not the codec's: what a
    writer's bug, not a disk, would leave)."""
    from vauban_trace.store._segments import digest

    conn = ts._conn()  # type: ignore[attr-defined]
    for bid, seg in conn.execute("SELECT id, seg FROM span_batches WHERE trace_id = ?", (trace_id,)).fetchall():
        path = ts._spans.path(seg)  # type: ignore[attr-defined]
        with open(path, "ab") as f:
            off = f.tell()
            f.write(blob)
        conn.execute("UPDATE span_batches SET off = ?, len = ?, digest = ? WHERE id = ?", (off, len(blob), digest(blob), bid))
        conn.execute("UPDATE span_segments SET bytes = ? WHERE id = ?", (off + len(blob), seg))
        conn.execute("UPDATE span_segments SET live_bytes = (SELECT SUM(len) FROM span_batches WHERE seg = ?) "
                     "WHERE id = ?", (seg, seg))


def doc_trace(tid: str, note: int | None = None) -> Trace:
    """A one-span rebuilt trace (root 10 ns -> 2 s later, service ``svc``); ``note`` goes into
    its metadata, so that two texts of one trace differ."""
    return Trace(id=tid, spans=(TraceSpan(id=ROOT, name="root", start_unix_nano=10, end_unix_nano=2_000_000_010),),
                 resource={"service.name": "svc"}, metadata={} if note is None else {"note": note})


def doc_of(trace: Trace, tid: str | None = None) -> TraceDocument:
    """The stored document of ``trace`` (the rebuild's own ``document_of``), under id ``tid`` if
    given."""
    doc = document_of(trace, None)
    return doc if tid is None else dataclasses.replace(doc, trace_id=tid)


def raw_doc(trace_id: str, json: object) -> TraceDocument:
    """A document with any id and text, for the checks ``put_documents`` makes."""
    return TraceDocument(trace_id, json, True, None, None, 0, 0, 0, (), None, False)  # type: ignore[arg-type]
