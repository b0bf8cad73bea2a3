"""TraceStore.ingest(snapshots=True): spans of traces new to the store, as spans_for_bytes gives them."""

from __future__ import annotations

from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest
from store_testlib import CHILD, CHILD2, ROOT, TRACE_A, TRACE_B, make_request, make_span

from vauban_trace.contract import Trace
from vauban_trace.store import TraceStore


def _two_resources() -> ExportTraceServiceRequest:
    """TRACE_A over two services and two scopes, spans out of start order; TRACE_B alone."""
    req = make_request(
        make_span(TRACE_A, CHILD, "late child", parent=ROOT, start=5_000, end=6_000),
        make_span(TRACE_A, ROOT, "root", start=1_000, end=9_000),
        make_span(TRACE_B, ROOT, "other root", start=2_000, end=3_000),
    )
    other = make_request(make_span(TRACE_A, CHILD2, "remote", parent=ROOT, start=3_000, end=4_000),
                         service="remote", scope="other-scope")
    req.resource_spans.extend(other.resource_spans)
    return req


def test_snapshots_are_what_spans_for_bytes_reads_back(tmp_path):
    with TraceStore(tmp_path) as ts:
        result = ts.ingest(_two_resources(), snapshots=True)
        assert set(result.snapshots) == {TRACE_A, TRACE_B}
        for tid, snapshot in result.snapshots.items():
            assert snapshot.nbytes > 0
            assert snapshot.data() == ts.spans_for_bytes(tid)
            assert snapshot.data() is snapshot.data()  # built once
        assert {p.trace_id: p.version for p in ts.pending_traces()} == {TRACE_A: 1, TRACE_B: 1}
        # without the flag there are none, and a trace already stored gets none either
        assert ts.ingest(make_request(make_span(TRACE_A, "00f067aa0ba902ba", "x", parent=ROOT))).snapshots == {}
        again = ts.ingest(make_request(make_span(TRACE_A, "00f067aa0ba902bb", "y", parent=ROOT)), snapshots=True)
        assert again.accepted == 1 and again.snapshots == {}


def test_duplicates_and_put_trace_first_still_give_version_one_snapshots(tmp_path):
    with TraceStore(tmp_path) as ts:
        req = make_request(make_span(TRACE_A, ROOT, "root"), make_span(TRACE_A, ROOT, "root"))
        result = ts.ingest(req, snapshots=True)
        assert (result.accepted, result.duplicates) == (1, 1)
        assert result.snapshots[TRACE_A].data() == ts.spans_for_bytes(TRACE_A)
        assert ts.ingest(req, snapshots=True).snapshots == {}  # a resend changes nothing
        # a trace row stored before any raw span (put_trace) does not count as stored spans
        ts.put_trace(Trace(id=TRACE_B, complete=False, problems=("placeholder",)))
        late = ts.ingest(make_request(make_span(TRACE_B, ROOT, "root")), snapshots=True)
        assert late.snapshots[TRACE_B].data() == ts.spans_for_bytes(TRACE_B)
        assert [p.version for p in ts.pending_traces() if p.trace_id == TRACE_B] == [1]
