"""Operating a store: verify_store (texts, segment bookkeeping, span batches; repair), store_stats,
rebuild_stored (the collector's rebuild, offline) on real stores filled through the ingest path."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
from store_testlib import CHILD, ROOT, make_request, make_span, rewrite_batch

from vauban_trace.contract import Trace
from vauban_trace.rebuild import rebuild_traces
from vauban_trace.store import TraceNotFoundError, TraceStore, rebuild_document
from vauban_trace.store import _maintenance as maintenance
from vauban_trace.store._segments import read_document, segment_path


def _tid(n: int) -> str:
    return f"{n + 1:032x}"


def _ingest(ts: TraceStore, n: int, *, late: bool = False, first: int = 0) -> list[str]:
    tids = []
    for i in range(first, first + n):
        tid = _tid(i)
        spans = [make_span(tid, ROOT, f"root {i}", attrs={"pad": "x" * 300}),
                 make_span(tid, CHILD, "child", parent=ROOT)]
        if late:
            spans.append(make_span(tid, f"{i + 100:016x}", "late", parent=ROOT))
        ts.add_spans(make_request(*spans))
        tids.append(tid)
    return tids


def _assemble(ts: TraceStore) -> dict[str, Trace]:
    """What the collector's assembler does with the pending traces."""
    out = {}
    for p in ts.pending_traces():
        (trace,) = rebuild_traces(ts.spans_for(p.trace_id))
        ts.put_trace(trace, version=p.version)
        out[p.trace_id] = trace
    return out


def _where(ts: TraceStore, tid: str) -> tuple[int, int, int]:
    row = ts._conn().execute("SELECT doc_segment, doc_offset, doc_length FROM traces WHERE trace_id = ?",
                             (tid,)).fetchone()
    return int(row[0]), int(row[1]), int(row[2])


def _flip(path: Path, at: int) -> None:
    with open(path, "r+b") as f:
        f.seek(at)
        byte = f.read(1)
        f.seek(at)
        f.write(bytes([byte[0] ^ 0x20]))


def test_a_healthy_store_verifies_and_counts_everything(tmp_path: Path) -> None:
    ts = TraceStore(tmp_path)
    _ingest(ts, 5)
    _assemble(ts)
    _ingest(ts, 2, first=10)  # pending: raw spans only
    report = ts.verify_store()
    assert report.ok and report.problems == [] and report.problem_count == 0
    assert report.texts_checked == 5 and report.segments_checked == 1
    assert report.span_batches_checked == 7 and report.spans_decoded == 14 and report.span_segments_checked == 1
    stats = ts.store_stats()
    assert (stats.schema_version, stats.traces, stats.rebuilt, stats.complete, stats.pending) == (5, 7, 5, 5, 2)
    (span_seg,) = stats.span_segments
    assert span_seg.bytes == stats.span_segment_bytes == span_seg.file_bytes == stats.span_live_bytes > 0
    assert stats.raw_spans == 14 and stats.span_batches == 7 and stats.sqlite_bytes > 0
    (seg,) = stats.segments
    assert seg.bytes == stats.segment_bytes == seg.file_bytes and seg.live_share == pytest.approx(
        seg.live_bytes / seg.bytes) and 0.99 < seg.live_share < 1  # the newlines are not live
    ts.close()


def test_a_torn_text_is_found_and_repair_sends_its_trace_to_pending(tmp_path: Path) -> None:
    ts = TraceStore(tmp_path, trace_files="on_read")
    traces = _assemble(ts) if _ingest(ts, 4) else {}
    victim = sorted(traces)[1]
    seg, off, length = _where(ts, victim)
    _flip(segment_path(tmp_path / "documents", seg), off + length // 2)  # inside the file's length
    report = ts.verify_store()
    assert not report.ok and report.texts_broken == 1 and report.repaired == 0
    (problem,) = report.problems
    assert (problem.kind, problem.subject, problem.repaired) == ("text", f"trace {victim}", False)
    assert "fails its digest" in problem.detail
    assert ts.pending_traces() == [] and ts.trace_count() == 4  # a plain verify changes nothing
    report = ts.verify_store(repair=True)
    assert report.texts_broken == 1 and report.repaired == 1 and report.problems[0].repaired
    assert [p.trace_id for p in ts.pending_traces()] == [victim] and ts.trace_count() == 3
    assert ts.verify_store().ok  # bookkeeping kept: live bytes follow the invalidation
    assert _assemble(ts) == {victim: traces[victim]} and ts.get_trace(victim) == traces[victim]
    ts.close()


def test_segment_bookkeeping_problems_and_their_repair(tmp_path: Path) -> None:
    ts = TraceStore(tmp_path)
    _ingest(ts, 4)
    traces = _assemble(ts)
    conn = ts._conn()
    (seg,) = {r[0] for r in conn.execute("SELECT doc_segment FROM traces")}
    conn.execute("UPDATE segments SET live_bytes = live_bytes + 7 WHERE id = ?", (seg,))
    report = ts.verify_store(max_problems=1)
    assert report.segments_bad == 1 and report.problems[0].kind == "segment" and "live_bytes says" in \
        report.problems[0].detail
    assert ts.verify_store(repair=True).repaired == 1 and ts.verify_store().ok
    # the file lost its tail while the store was open (an open would recover it itself)
    ordered = sorted(traces, key=lambda t: _where(ts, t)[1])
    _s, cut, _l = _where(ts, ordered[2])
    os.truncate(segment_path(tmp_path / "documents", seg), cut + 5)
    report = ts.verify_store(max_problems=50)
    kinds = sorted(p.kind for p in report.problems)
    assert kinds == ["segment", "text", "text"] and report.texts_broken == 2 and report.problem_count == 3
    assert any("holds" in p.detail and "committed end" in p.detail for p in report.problems)
    report = ts.verify_store(repair=True)
    assert report.repaired == report.problem_count
    assert sorted(p.trace_id for p in ts.pending_traces()) == sorted(ordered[2:])
    assert ts.verify_store().ok
    # a row naming a segment the table does not list: reported, and repair makes its trace pending
    conn.execute("UPDATE traces SET doc_segment = 999 WHERE trace_id = ?", (ordered[0],))
    report = ts.verify_store()
    assert report.rows_bad == 1 and {p.kind for p in report.problems} >= {"row", "text"}
    ts.verify_store(repair=True)
    assert ordered[0] in {p.trace_id for p in ts.pending_traces()} and ts.verify_store().ok
    ts.close()


def test_undecodable_span_batches_are_reported_never_repaired(tmp_path: Path) -> None:
    ts = TraceStore(tmp_path)
    a, b = _ingest(ts, 2)
    _assemble(ts)
    conn = ts._conn()
    rewrite_batch(ts, a, b"\x01\xff")
    conn.execute("UPDATE span_batches SET span_count = 5 WHERE trace_id = ?", (b,))
    report = ts.verify_store(repair=True)
    assert report.span_batches_bad == 2 and report.repaired == 0
    details = {p.subject.split("(trace ")[1][:-1]: p.detail for p in report.problems}
    assert "span_count says 5, the blob holds 2" in details[b] and details[a]
    assert all(p.kind == "span_batch" and not p.repaired for p in report.problems)
    ts.close()


def test_a_text_moved_by_a_compaction_during_verify_is_not_reported(tmp_path: Path,
                                                                   monkeypatch: pytest.MonkeyPatch) -> None:
    writer = TraceStore(tmp_path)
    _ingest(writer, 3)
    _assemble(writer)
    _ingest(writer, 3, late=True)
    traces = _assemble(writer)  # the first texts are dead now
    writer.close()  # sealed
    verifier, compactor = TraceStore(tmp_path), TraceStore(tmp_path)  # as two processes would
    real = read_document
    calls: list[tuple[object, ...]] = []

    def racing(*args: object) -> bytes:
        if not calls:  # another process compacts between the verifier's row read and its file read
            assert compactor.compact_documents(threshold=1.0) == 1
        calls.append(args)
        return real(*args)  # type: ignore[arg-type]

    monkeypatch.setattr(maintenance, "read_document", racing)
    report = verifier.verify_store()
    # the page of rows was read before the compaction: each text failed at its old place, was looked
    # up again and checked where the compaction moved it
    assert report.ok and report.texts_checked == 3 and len(calls) == 6
    assert [c[1] for c in calls] == [1, 2, 1, 2, 1, 2]
    for tid, trace in traces.items():
        assert verifier.get_trace(tid) == trace
    verifier.close()
    compactor.close()


def test_rebuild_stored_rewrites_what_the_rebuild_changed(tmp_path: Path) -> None:
    ts = TraceStore(tmp_path)
    tids = _ingest(ts, 4)
    traces = _assemble(ts)
    # an older vauban-trace rebuilt one trace differently: its stored text is not today's rebuild
    stale = Trace.from_dict({**traces[tids[0]].to_dict(), "problems": ["an older rebuild's note"]})
    ts.put_trace(stale)
    assert ts.get_trace(tids[0]) == stale
    orphan = _tid(50)  # a trace put without raw spans: nothing to rebuild from
    ts.put_trace(Trace(id=orphan, complete=False))
    pending = _ingest(ts, 1, first=20)[0]
    report = ts.rebuild_stored()
    assert (report.examined, report.changed, report.unchanged, report.failed) == (4, 1, 3, 0)
    assert report.changed_ids == [tids[0]] and report.skipped_no_spans == 1 and report.left_pending == 1
    assert ts.get_trace(tids[0]) == traces[tids[0]]  # today's rebuild, byte for byte
    assert ts.get_trace(orphan) == Trace(id=orphan, complete=False)
    assert ts.rebuild_stored().changed == 0  # idempotent
    report = ts.rebuild_stored(pending=True)
    assert report.changed_ids == [pending] and ts.pending_traces() == []
    (expected,) = rebuild_traces(ts.spans_for(pending))
    assert ts.get_trace(pending) == expected
    with pytest.raises(TraceNotFoundError, match=_tid(77)):
        ts.rebuild_stored([tids[1], _tid(77)])
    assert ts.rebuild_stored([tids[1].upper()]).unchanged == 1
    assert ts.verify_store().ok
    ts.close()


def test_rebuild_of_undecodable_spans_stores_an_incomplete_trace_saying_why(tmp_path: Path) -> None:
    ts = TraceStore(tmp_path)
    (tid,) = _ingest(ts, 1)
    _assemble(ts)
    rewrite_batch(ts, tid, b"\x01\xff")
    report = ts.rebuild_stored([tid])
    assert report.failed == 1 and report.changed == 1
    trace = ts.get_trace(tid)
    assert not trace.complete and trace.problems[0].startswith("rebuild failed: ")
    doc = rebuild_document(tid, lambda: b"\xff\xff")  # the same road the assembler takes
    assert doc.trace_id == tid and not doc.complete and "rebuild failed" in doc.json
    ts.close()
