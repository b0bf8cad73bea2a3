"""Span batches in the database (schema v3 on): several writes, replacement, corruption, v2 -> v3 (-> v4) migration."""

from __future__ import annotations

import sqlite3
from pathlib import Path

import pytest
from opentelemetry.proto.trace.v1.trace_pb2 import ResourceSpans
from store_testlib import (
    CHILD,
    CHILD2,
    ROOT,
    TRACE_A,
    TRACE_B,
    TRACE_COLUMNS,
    V3_TRACES,
    batch_rows,
    make_request,
    make_span,
    rewrite_batch,
)

from vauban_trace.store import TraceStore, TraceStoreError
from vauban_trace.store._ingest import _UPSERT_TRACE, COMPACT_AT, _bookkeeping, extract_rows, snapshot_bytes
from vauban_trace.store._sql import _SPANS_V2
from vauban_trace.store._wire import traces_data_bytes


def _batches(path: Path) -> list[tuple[str, int]]:
    conn = sqlite3.connect(path / "traces.sqlite")
    try:
        return [(str(r[0]), int(r[1])) for r in conn.execute("SELECT trace_id, span_count FROM span_batches ORDER BY id")]
    finally:
        conn.close()


def test_late_spans_and_replacements_read_back_as_one_set(tmp_path: Path) -> None:
    ts = TraceStore(tmp_path)
    root = make_span(TRACE_A, ROOT, "root", start=10, end=100)
    child = make_span(TRACE_A, CHILD, "c", parent=ROOT, start=20, end=30)
    assert ts.add_spans(make_request(root, child, make_span(TRACE_B, ROOT, "b"))) == (3, 0)
    assert _batches(tmp_path) == [(TRACE_A, 2), (TRACE_B, 1)]  # one batch per trace of the request
    late = make_span(TRACE_A, CHILD2, "late", parent=ROOT, start=5, end=300)
    assert ts.add_spans(make_request(late, child)) == (1, 1)  # the re-sent child is a duplicate
    assert _batches(tmp_path)[-1] == (TRACE_A, 1)  # only the new span is written
    (p,) = [p for p in ts.pending_traces() if p.trace_id == TRACE_A]
    assert (p.version, p.span_count) == (2, 3)
    longer = make_span(TRACE_A, CHILD, "c", parent=ROOT, start=1, end=500)  # same ids, new content
    assert ts.add_spans(make_request(longer)) == (1, 0)
    assert ts.raw_span_count(TRACE_A) == 3
    rows, _ = extract_rows(make_request(root, late, longer).resource_spans)
    assert ts.spans_for_bytes(TRACE_A) == snapshot_bytes(rows)  # the latest copy of each span wins
    conn = sqlite3.connect(tmp_path / "traces.sqlite")
    assert conn.execute("SELECT version, start_unix_nano, end_unix_nano, raw_span_count FROM traces "
                        "WHERE trace_id = ?", (TRACE_A,)).fetchone() == (3, 1, 500, 3)
    conn.close()
    assert ts.add_spans(make_request(longer)) == (0, 1)  # equal to the latest copy: duplicate
    assert ts.add_spans(make_request(child)) == (1, 0)  # the older content again: a replacement
    assert [p.version for p in ts.pending_traces() if p.trace_id == TRACE_A] == [4]
    rows, _ = extract_rows(make_request(root, late, child).resource_spans)
    assert ts.spans_for_bytes(TRACE_A) == snapshot_bytes(rows)


def test_a_trickling_trace_is_compacted(tmp_path: Path) -> None:
    """Spans arriving a few per request: the batches of the trace are merged before COMPACT_AT."""
    ts = TraceStore(tmp_path)
    spans = [make_span(TRACE_A, f"{i + 1:016x}", f"s{i}", parent=None if i == 0 else f"{1:016x}", start=1_000 - i)
             for i in range(3 * COMPACT_AT)]
    for i in range(0, len(spans), 2):
        assert ts.add_spans(make_request(*spans[i : i + 2])) == (2, 0)
        assert ts.add_spans(make_request(spans[i])) == (0, 1)  # a retry: still a duplicate
        assert len(_batches(tmp_path)) < COMPACT_AT
    assert sum(n for _, n in _batches(tmp_path)) == len(spans)  # merged batches hold each span once
    changed = make_span(TRACE_A, f"{3:016x}", "moved", parent=f"{1:016x}", start=1, end=10**6)
    assert ts.add_spans(make_request(changed)) == (1, 0)
    expected = [*spans[:2], changed, *spans[3:]]
    rows, _ = extract_rows(make_request(*expected).resource_spans)
    assert ts.spans_for_bytes(TRACE_A) == snapshot_bytes(rows)
    assert ts.raw_span_count(TRACE_A) == len(spans)
    (p,) = ts.pending_traces()
    assert (p.version, p.span_count, p.root_name) == (len(spans) // 2 + 1, len(spans), "s0")
    conn = sqlite3.connect(tmp_path / "traces.sqlite")
    assert conn.execute("SELECT start_unix_nano, end_unix_nano FROM traces").fetchone() == (1, 10**6)
    conn.close()


def test_a_corrupt_batch_is_reported(tmp_path: Path) -> None:
    ts = TraceStore(tmp_path)
    ts.add_spans(make_request(make_span(TRACE_A, ROOT, "root")))
    conn = sqlite3.connect(tmp_path / "traces.sqlite")
    conn.execute("UPDATE span_batches SET span_count = 7")
    conn.commit()
    with pytest.raises(TraceStoreError, match="span_count says 7, the blob holds 1"):
        ts.raw_span_count(TRACE_A)
    conn.execute("UPDATE span_batches SET span_count = 1")
    conn.commit()
    conn.close()
    ((_id, _t, _r, _c, blob),) = batch_rows(ts)
    rewrite_batch(ts, TRACE_A, blob[:20])
    with pytest.raises(TraceStoreError, match="span batch: truncated"):
        ts.spans_for(TRACE_A)
    with pytest.raises(TraceStoreError, match="span batch"):  # the write is refused, nothing stored
        ts.add_spans(make_request(make_span(TRACE_A, CHILD, "c", parent=ROOT)))
    assert [p.version for p in ts.pending_traces()] == [1]


def _v2_database(path: Path, requests: list[tuple[int, object]]) -> None:
    """A schema-2 file as vauban-trace 0.x wrote it: one ``spans`` row per span, bookkeeping rows."""
    conn = sqlite3.connect(path / "traces.sqlite")
    conn.executescript(_SPANS_V2 + ";" + V3_TRACES)
    known: dict[str, tuple[object, ...]] = {}
    for received, req in requests:
        rows, _ = extract_rows(req.resource_spans)  # type: ignore[attr-defined]
        for r in rows:
            conn.execute("INSERT INTO spans VALUES (?,?,?,?,?,?,?,?,?)", (*r[:7], received, r.payload))
        for tid in dict.fromkeys(r.trace_id for r in rows):
            params = _bookkeeping(tid, known.get(tid), [r for r in rows if r.trace_id == tid], received)
            conn.execute(_UPSERT_TRACE, params)
            known[tid] = params[1:9]
    conn.execute("PRAGMA user_version = 2")
    conn.commit()
    conn.close()


def _v2_read_back(path: Path, tid: str) -> bytes:
    """What schema-2 ``spans_for_bytes`` returned (its query and regrouping)."""
    conn = sqlite3.connect(path / "traces.sqlite")
    try:
        return traces_data_bytes(bytes(r[0]) for r in conn.execute(
            "SELECT payload FROM spans WHERE trace_id = ? ORDER BY start_unix_nano, span_id", (tid,)))
    finally:
        conn.close()


def test_version_2_database_is_migrated(tmp_path: Path) -> None:
    first = make_request(make_span(TRACE_A, ROOT, "root", start=10, end=100),
                         make_span(TRACE_B, ROOT, "b-root", start=7, attrs={"k": "v" * 200}))
    first.resource_spans[0].schema_url = "https://opentelemetry.io/schemas/1.26.0"
    second = make_request(make_span(TRACE_A, CHILD, "c", parent=ROOT, start=5, end=120), service="remote",
                          scope="other")
    second.resource_spans[0].scope_spans[0].schema_url = "scope-schema"
    bare = ResourceSpans()
    bare.scope_spans.add().spans.append(make_span(TRACE_A, CHILD2, "bare", parent=ROOT, start=5, end=6))
    second.resource_spans.append(bare)
    _v2_database(tmp_path, [(1_000, first), (2_000, second)])
    before = {tid: _v2_read_back(tmp_path, tid) for tid in (TRACE_A, TRACE_B)}
    conn = sqlite3.connect(tmp_path / "traces.sqlite")
    pending_cols = f"SELECT {TRACE_COLUMNS} FROM traces ORDER BY trace_id"
    traces_before = conn.execute(pending_cols).fetchall()
    conn.close()

    ts = TraceStore(tmp_path)
    assert {tid: ts.spans_for_bytes(tid) for tid in before} == before
    assert (ts.raw_span_count(TRACE_A), ts.raw_span_count(TRACE_B)) == (3, 1)
    conn = sqlite3.connect(tmp_path / "traces.sqlite")
    assert conn.execute("PRAGMA user_version").fetchone()[0] == 5  # 2 -> 3 -> 4 -> 5
    assert conn.execute("SELECT name FROM sqlite_master WHERE name = 'spans'").fetchall() == []
    assert conn.execute(pending_cols).fetchall() == traces_before  # bookkeeping untouched
    assert conn.execute("SELECT trace_id, received_unix_nano, span_count FROM span_batches ORDER BY trace_id"
                        ).fetchall() == sorted([(TRACE_A, 2_000, 3), (TRACE_B, 1_000, 1)])
    conn.close()
    assert ts.add_spans(second) == (0, 2)  # migrated spans are still recognised as duplicates
    assert ts.add_spans(make_request(make_span(TRACE_B, CHILD, "new", parent=ROOT))) == (1, 0)
    assert ts.raw_span_count(TRACE_B) == 2


def test_a_v2_payload_it_cannot_split_stops_the_migration(tmp_path: Path) -> None:
    _v2_database(tmp_path, [(1, make_request(make_span(TRACE_A, ROOT, "root")))])
    two = make_request(make_span(TRACE_A, ROOT, "root"), make_span(TRACE_A, CHILD, "c")).resource_spans[0]
    conn = sqlite3.connect(tmp_path / "traces.sqlite")
    conn.execute("UPDATE spans SET payload = ?", (two.SerializeToString(),))
    conn.commit()
    conn.close()
    with pytest.raises(TraceStoreError, match=f"span {ROOT} of trace {TRACE_A}.*2 span"):
        TraceStore(tmp_path)
    conn = sqlite3.connect(tmp_path / "traces.sqlite")
    assert conn.execute("PRAGMA user_version").fetchone()[0] == 2  # rolled back
    assert conn.execute("SELECT COUNT(*) FROM spans").fetchone()[0] == 1
    conn.close()
