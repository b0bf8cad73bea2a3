"""put_documents (serialised traces), the on-read trace files, and ingest_parts with request bytes."""

from __future__ import annotations

from pathlib import Path

import pytest
from store_testlib import CHILD, ROOT, TRACE_A, TRACE_B, doc_of, doc_trace, make_request, make_span, raw_doc

from vauban_trace.contract import Trace
from vauban_trace.store import TraceStore, TraceStoreError
from vauban_trace.store._ingest import extract_rows


def test_put_documents_stores_the_text_and_the_index(tmp_path: Path) -> None:
    ts = TraceStore(tmp_path)
    trace = doc_trace(TRACE_A)
    assert ts.put_documents([(doc_of(trace), None)]) == 1
    assert ts.trace_json_path(TRACE_A).read_text() == trace.to_json()
    assert ts.get_trace(TRACE_A) == trace
    [summary] = ts.list_traces()
    assert (summary.trace_id, summary.service, summary.root_name, summary.duration_s, summary.span_count) == (
        TRACE_A, "svc", "root", 2.0, 1)
    with pytest.raises(TraceStoreError, match="trace.id"):
        ts.put_documents([(raw_doc("nope", "{}"), None)])


def test_put_documents_without_waiting_for_the_disk(tmp_path: Path) -> None:
    """durable=False: committed and readable at once, by another connection too; the connection
    goes back to synchronous=FULL for the next write (the raw spans' durable commits), even after
    a failed put."""
    ts = TraceStore(tmp_path, trace_files="on_read")
    ts.add_spans(make_request(make_span(TRACE_A, ROOT, "root")))
    (pending,) = ts.pending_traces()
    trace = doc_trace(TRACE_A)
    assert ts.put_documents([(doc_of(trace), pending.version)], durable=False) == 1
    assert ts._conn().execute("PRAGMA synchronous").fetchone()[0] == 2  # FULL
    with TraceStore(tmp_path) as other:
        assert other.get_trace(TRACE_A) == trace and other.pending_traces() == []
    unbindable = raw_doc(TRACE_B, object())
    with pytest.raises(TraceStoreError, match="put_trace"):  # fails inside the transaction
        ts.put_documents([(unbindable, None)], durable=False)
    assert ts._conn().execute("PRAGMA synchronous").fetchone()[0] == 2
    ts.close()


def test_store_sql_raises_no_deprecation_warning(tmp_path: Path) -> None:
    """Python 3.12 deprecates numbered placeholders (?1) bound from a sequence and 3.14 refuses
    them: ingest, put (with and without a version, new and known trace) and reads run clean."""
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("error", DeprecationWarning)
        ts = TraceStore(tmp_path, trace_files="on_read")
        ts.add_spans(make_request(make_span(TRACE_A, ROOT, "root")))
        ts.add_spans(make_request(make_span(TRACE_A, CHILD, "late", parent=ROOT)))
        (pending,) = ts.pending_traces()
        ts.put_documents([(doc_of(doc_trace(TRACE_A)), pending.version)])
        ts.put_documents([(doc_of(doc_trace(TRACE_A)), None), (doc_of(doc_trace(TRACE_B)), None)], durable=False)
        assert ts.get_trace(TRACE_B) == doc_trace(TRACE_B)
        assert ts.spans_for_bytes(TRACE_A) and ts.list_traces() and ts.pending_traces() == []
        ts.close()


def test_on_read_files_are_written_when_asked_and_never_stale(tmp_path: Path) -> None:
    ts = TraceStore(tmp_path, trace_files="on_read")
    first = doc_trace(TRACE_A)
    ts.put_traces([(first, None)])
    path = ts.trace_json_path(TRACE_A)
    assert not path.exists()  # not written by the put
    assert ts.trace_json_file(TRACE_A) == path and Trace.from_json(path.read_text()) == first
    second = Trace(id=TRACE_A, spans=first.spans, resource={"service.name": "svc"}, metadata={"v": 2})
    ts.put_documents([(doc_of(second), None)])
    assert not path.exists()  # the stale mirror is gone at once
    assert Trace.from_json(ts.trace_json_file(TRACE_A).read_text()) == second  # type: ignore[union-attr]
    assert ts.trace_json_file(TRACE_B) is None  # never rebuilt
    with pytest.raises(TraceStoreError, match="trace_files"):
        TraceStore(tmp_path, trace_files="sometimes")  # type: ignore[arg-type]


def test_ingest_parts_takes_messages_and_bytes_in_one_transaction(tmp_path: Path) -> None:
    ts = TraceStore(tmp_path)
    a = make_request(make_span(TRACE_A, ROOT, "root"), make_span(TRACE_A, CHILD, "child", parent=ROOT))
    b = make_request(make_span(TRACE_B, ROOT, "other-root"))
    result = ts.ingest_parts([a.SerializeToString(), b], snapshots=True)
    assert (result.accepted, result.duplicates, set(result.snapshots)) == (3, 0, {TRACE_A, TRACE_B})
    again = ts.ingest_parts([a.SerializeToString(), b.SerializeToString()])
    assert (again.accepted, again.duplicates) == (0, 3)
    rows = extract_rows(a.resource_spans)[0]
    assert ts.spans_for_bytes(TRACE_A) == result.snapshots[TRACE_A].data()
    assert sorted(r.span_id for r in rows) == sorted(s.span_id.hex() for s in ts.spans_for(TRACE_A)
                                                     .resource_spans[0].scope_spans[0].spans)
    with pytest.raises(TraceStoreError, match="could not be decoded"):
        ts.ingest_parts([b"\xff\xff\xff"])
    with pytest.raises(TraceStoreError, match="raw data"):
        ts.ingest(a.SerializeToString())  # type: ignore[arg-type]
