"""Trace JSON in segment files (schema v4): checked reads, crash leftovers, compaction, v3 -> v4."""

from __future__ import annotations

import os
import sqlite3
from pathlib import Path
from typing import Any

import pytest
from store_testlib import CHILD, ROOT, TRACE_COLUMNS, V3_TRACES, batch_rows, make_request, make_span

from vauban_trace.contract import Trace
from vauban_trace.rebuild import rebuild_traces
from vauban_trace.store import TraceNotFoundError, TraceStore, TraceStoreError
from vauban_trace.store._segments import compact_segment, segment_path
from vauban_trace.store._sql import _SPAN_BATCHES_V3


def _tid(n: int) -> str:
    return f"{n + 1:032x}"


def _stored(ts: TraceStore, n: int, *, late: bool = False) -> dict[str, Trace]:
    """``n`` traces (root + child, + a late child with ``late``) ingested, rebuilt and put."""
    out = {}
    for i in range(n):
        tid = _tid(i)
        spans = [make_span(tid, ROOT, f"root {i}", attrs={"pad": "x" * 300}),
                 make_span(tid, CHILD, "child", parent=ROOT)]
        if late:
            spans.append(make_span(tid, f"{i + 100:016x}", "late", parent=ROOT, attrs={"pad": "y" * 200}))
        ts.add_spans(make_request(*spans))
    for p in ts.pending_traces():
        (trace,) = rebuild_traces(ts.spans_for(p.trace_id))
        ts.put_trace(trace, version=p.version)
        out[p.trace_id] = trace
    return out


def _rows(ts: TraceStore) -> dict[str, tuple[int, int, int]]:
    return {str(r[0]): (int(r[1]), int(r[2]), int(r[3])) for r in ts._conn().execute(
        "SELECT trace_id, doc_segment, doc_offset, doc_length FROM traces WHERE doc_segment IS NOT NULL")}


def _live_ok(ts: TraceStore) -> None:
    """segments.live_bytes = the bytes the rows point to, for every segment."""
    conn = ts._conn()
    for seg, live in conn.execute("SELECT id, live_bytes FROM segments"):
        total = conn.execute("SELECT COALESCE(SUM(doc_length), 0) FROM traces WHERE doc_segment = ?", (seg,)).fetchone()
        assert live == total[0], f"segment {seg}"


def test_texts_live_in_a_segment_and_read_back_checked(tmp_path: Path) -> None:
    ts = TraceStore(tmp_path)
    traces = _stored(ts, 3)
    rows = _rows(ts)
    (seg,) = {r[0] for r in rows.values()}
    path = segment_path(tmp_path / "documents", seg)
    data = path.read_bytes()
    for tid, trace in traces.items():
        _seg, off, length = rows[tid]
        assert data[off:off + length].decode() == trace.to_json() and data[off + length:off + length + 1] == b"\n"
        assert ts.get_trace(tid) == trace
    assert ts.trace_count() == 3 and len(ts.list_traces()) == 3
    columns = [r[1] for r in ts._conn().execute("PRAGMA table_info(traces)")]
    assert "trace_json" not in columns
    _live_ok(ts)
    ts.close()


def test_a_corrupt_text_is_never_served_and_its_trace_is_rebuilt(tmp_path: Path) -> None:
    ts = TraceStore(tmp_path, trace_files="on_read")
    traces = _stored(ts, 3)
    victim, other = sorted(traces)[:2]
    seg, off, length = _rows(ts)[victim]
    path = segment_path(tmp_path / "documents", seg)
    with open(path, "r+b") as f:  # one flipped byte inside the text: same length, wrong digest
        f.seek(off + length // 2)
        byte = f.read(1)
        f.seek(off + length // 2)
        f.write(bytes([byte[0] ^ 0x20]))
    with pytest.raises(TraceNotFoundError, match="not been rebuilt yet"):
        ts.get_trace(victim)
    assert ts.trace_json_file(victim) is None
    assert [p.trace_id for p in ts.pending_traces()] == [victim]  # back to pending: raw spans are the truth
    assert victim not in {s.trace_id for s in ts.list_traces()} and ts.trace_count() == 2
    assert ts.get_trace(other) == traces[other]
    _live_ok(ts)
    (p,) = ts.pending_traces()  # what the assembler does next
    (rebuilt,) = rebuild_traces(ts.spans_for(victim))
    ts.put_trace(rebuilt, version=p.version)
    assert ts.get_trace(victim) == traces[victim] and ts.pending_traces() == []
    ts.close()


def test_a_truncated_or_missing_segment_makes_its_traces_pending_at_open(tmp_path: Path) -> None:
    ts = TraceStore(tmp_path)
    traces = _stored(ts, 4)
    rows = _rows(ts)
    ts.close()
    by_offset = sorted(rows, key=lambda t: rows[t][1])
    seg, cut, _length = rows[by_offset[2]]
    path = segment_path(tmp_path / "documents", seg)
    os.truncate(path, cut + 10)  # a crash lost the tail: the last two texts are gone or torn
    ts = TraceStore(tmp_path)
    assert sorted(p.trace_id for p in ts.pending_traces()) == sorted(by_offset[2:])
    for tid in by_offset[:2]:
        assert ts.get_trace(tid) == traces[tid]
    assert ts.trace_count() == 2
    _live_ok(ts)
    ts.close()
    path.unlink()
    ts = TraceStore(tmp_path)
    assert sorted(p.trace_id for p in ts.pending_traces()) == sorted(traces)
    assert ts.trace_count() == 0
    with pytest.raises(TraceNotFoundError, match="no rebuilt traces"):
        ts.last_trace()
    ts.close()


def test_late_spans_leave_dead_bytes_that_compaction_reclaims(tmp_path: Path) -> None:
    ts = TraceStore(tmp_path)
    ts._segments.roll_bytes = 4096  # several segments from a few traces
    _stored(ts, 6)
    first = {r[0] for r in _rows(ts).values()}
    traces = _stored(ts, 6, late=True)  # every trace rebuilt again: the first texts are dead
    _live_ok(ts)
    folder = tmp_path / "documents"
    assert all(not segment_path(folder, s).exists() for s in first)  # rolled, then compacted away
    assert ts.compact_documents(threshold=1.01) >= 1  # everything sealed is copied into the live segment
    for tid, trace in traces.items():
        assert ts.get_trace(tid) == trace
    _live_ok(ts)
    segs = [int(r[0]) for r in ts._conn().execute("SELECT id FROM segments")]
    assert sorted(int(p.name[4:-6]) for p in folder.iterdir()) == sorted(segs)
    ts.close()


def test_compaction_interrupted_before_or_after_its_commit(tmp_path: Path) -> None:
    ts = TraceStore(tmp_path)
    traces = _stored(ts, 3)
    (old,) = {r[0] for r in _rows(ts).values()}
    ts._segments.close()  # seal it, as a roll would
    folder = tmp_path / "documents"
    conn = ts._conn()
    conn.execute("BEGIN IMMEDIATE")  # killed before the commit: nothing moved, the copies are dead bytes
    assert compact_segment(conn, ts._segments, old, "") == (3, 0)
    conn.execute("ROLLBACK")
    ts._segments.close()
    assert {r[0] for r in _rows(ts).values()} == {old}
    assert all(ts.get_trace(t) == tr for t, tr in traces.items())
    conn.execute("BEGIN IMMEDIATE")  # killed after the commit, before the unlink: a stale file
    assert compact_segment(conn, ts._segments, old, "") == (3, 0)
    conn.execute("COMMIT")
    ts.close()
    assert segment_path(folder, old).exists()
    ts = TraceStore(tmp_path)  # the next open deletes the file no row names (and the dead copy)
    assert not segment_path(folder, old).exists()
    assert all(ts.get_trace(t) == tr for t, tr in traces.items())
    _live_ok(ts)
    ts.close()


def test_two_writers_keep_their_own_segments(tmp_path: Path) -> None:
    a, b = TraceStore(tmp_path), TraceStore(tmp_path)
    ta = _stored(a, 2)
    tb = {}
    for i in (10, 11):
        tid = _tid(i)
        b.add_spans(make_request(make_span(tid, ROOT, "r")))
        (tr,) = rebuild_traces(b.spans_for(tid))
        b.put_trace(tr)
        tb[tid] = tr
    sa, sb = {r[0] for t, r in _rows(a).items() if t in ta}, {r[0] for t, r in _rows(a).items() if t in tb}
    assert len(sa) == len(sb) == 1 and sa != sb
    assert b.compact_documents(threshold=1.01) == 0  # a still holds its segment: skipped
    for tid, tr in {**ta, **tb}.items():
        assert a.get_trace(tid) == tr and b.get_trace(tid) == tr
    a.close()
    b.close()


def _v3_database(path: Path, source: TraceStore, traces: dict[str, Trace], pending: str) -> None:
    """A schema-3 file as the previous vauban-trace wrote it: the Trace JSON in traces.trace_json."""
    conn = sqlite3.connect(path / "traces.sqlite")
    conn.executescript(_SPAN_BATCHES_V3 + ";" + V3_TRACES)
    src = source._conn()
    conn.executemany("INSERT INTO span_batches VALUES (?,?,?,?,?)", batch_rows(source))
    for row in src.execute(f"SELECT {TRACE_COLUMNS} FROM traces"):
        text = traces[row[0]].to_json() if row[0] != pending else None
        if row[0] == pending:
            row = row[:12] + (None, None) + (None,) * 6
        conn.execute(f"INSERT INTO traces ({TRACE_COLUMNS}, trace_json) VALUES ({','.join('?' * 21)})", (*row, text))
    conn.execute("PRAGMA user_version = 3")
    conn.commit()
    conn.close()


def test_version_3_database_is_migrated(tmp_path: Path) -> None:
    source = TraceStore(tmp_path / "source")
    traces = _stored(source, 5)
    pending = sorted(traces)[0]
    _v3_database(tmp_path, source, traces, pending)
    spans_before = {tid: source.spans_for_bytes(tid) for tid in traces}
    source.close()
    conn = sqlite3.connect(tmp_path / "traces.sqlite")
    before = conn.execute(f"SELECT {TRACE_COLUMNS} FROM traces ORDER BY trace_id").fetchall()
    conn.close()
    ts = TraceStore(tmp_path)
    for tid, trace in traces.items():
        assert ts.spans_for_bytes(tid) == spans_before[tid]
        if tid != pending:
            assert ts.get_trace(tid) == trace
    assert [p.trace_id for p in ts.pending_traces()] == [pending]
    assert ts.trace_count() == 4 and {s.trace_id for s in ts.list_traces()} == set(traces) - {pending}
    assert ts._conn().execute(f"SELECT {TRACE_COLUMNS} FROM traces ORDER BY trace_id").fetchall() == before
    assert ts._conn().execute("PRAGMA user_version").fetchone()[0] == 5  # 3 -> 4 -> 5
    assert "trace_json" not in [r[1] for r in ts._conn().execute("PRAGMA table_info(traces)")]
    _live_ok(ts)
    (trace,) = rebuild_traces(ts.spans_for(pending))  # the store goes on as a v5 one
    ts.put_trace(trace, version=ts.pending_traces()[0].version)
    assert ts.get_trace(pending) == traces[pending]
    ts.close()


def test_a_failed_put_never_appends_to_a_segment_it_rolled_back(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The transaction that allocated a segment failed: its id is free again, so the writer starts
    a new segment instead of appending to a file no row names."""
    ts = TraceStore(tmp_path)
    ts.add_spans(make_request(make_span(_tid(0), ROOT, "r")))
    (trace,) = rebuild_traces(ts.spans_for(_tid(0)))

    class Boom(Exception):
        pass

    real = ts._segments.append_texts

    def failing(*args: object, **kwargs: object) -> object:
        real(*args, **kwargs)  # type: ignore[arg-type]
        raise Boom

    monkeypatch.setattr(ts._segments, "append_texts", failing)
    with pytest.raises(Boom):
        ts.put_trace(trace)
    assert ts._segments.segment is None
    monkeypatch.undo()
    assert ts._conn().execute("SELECT COUNT(*) FROM segments").fetchone()[0] == 0
    ts.put_trace(trace)
    assert ts.get_trace(_tid(0)) == trace
    _live_ok(ts)
    ts.close()
    ts = TraceStore(tmp_path)  # the id was handed out again: the failed put's file was truncated and reused
    assert len(list((tmp_path / "documents").iterdir())) == 1
    assert ts.get_trace(_tid(0)) == trace
    ts.close()


def test_compaction_does_not_copy_a_broken_text(tmp_path: Path) -> None:
    ts = TraceStore(tmp_path)
    traces = _stored(ts, 3)
    rows = _rows(ts)
    victim = sorted(traces)[1]
    seg, off, _length = rows[victim]
    ts._segments.close()  # sealed
    with open(segment_path(tmp_path / "documents", seg), "r+b") as f:
        f.seek(off)
        f.write(b"#")
    assert ts.compact_documents(threshold=1.01) == 1
    assert not segment_path(tmp_path / "documents", seg).exists()
    assert [p.trace_id for p in ts.pending_traces()] == [victim]
    for tid in set(traces) - {victim}:
        assert ts.get_trace(tid) == traces[tid]
    _live_ok(ts)
    ts.close()


def test_a_read_racing_a_compaction_finds_the_moved_text(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The row was read, then a compaction moved the text and deleted the file: the read retries
    with the new row instead of calling the trace broken."""
    import vauban_trace.store._rebuilt as rebuilt_module

    ts = TraceStore(tmp_path)
    traces = _stored(ts, 2)
    ts._segments.close()
    tid = sorted(traces)[0]
    real = rebuilt_module.read_document  # type: ignore[attr-defined]
    calls: list[int] = []

    def racing(*args: object) -> bytes:
        if not calls:
            calls.append(1)
            assert ts.compact_documents(threshold=1.01) == 1  # runs between the row read and the file read
        return real(*args)  # type: ignore[arg-type]

    monkeypatch.setattr(rebuilt_module, "read_document", racing)
    assert ts.get_trace(tid) == traces[tid]
    assert ts.pending_traces() == [] and ts.trace_count() == 2
    ts.close()


def test_a_failed_v3_migration_leaves_the_file_as_it_was(tmp_path: Path) -> None:
    source = TraceStore(tmp_path / "source")
    traces = _stored(source, 2)
    _v3_database(tmp_path, source, traces, pending="")
    source.close()
    (tmp_path / "documents").write_text("not a folder")  # the segments cannot be created
    with pytest.raises(TraceStoreError, match="cannot create segment"):
        TraceStore(tmp_path)
    conn = sqlite3.connect(tmp_path / "traces.sqlite")
    assert conn.execute("PRAGMA user_version").fetchone()[0] == 3
    assert conn.execute("SELECT COUNT(*) FROM traces WHERE trace_json IS NOT NULL").fetchone()[0] == 2
    conn.close()
    (tmp_path / "documents").unlink()
    ts = TraceStore(tmp_path)
    assert all(ts.get_trace(t) == tr for t, tr in traces.items())
    ts.close()


def test_a_segment_that_cannot_be_locked_leaves_no_descriptor_open(tmp_path: Path,
                                                                   monkeypatch: pytest.MonkeyPatch) -> None:
    import errno
    import fcntl

    def no_locks(fd: int, op: int) -> None:
        raise OSError(errno.ENOLCK, "no locks available")

    def open_segments() -> list[str]:
        out = []
        for fd in os.listdir("/proc/self/fd"):
            try:
                target = os.readlink(f"/proc/self/fd/{fd}")
            except OSError:
                continue
            if target.startswith(str(tmp_path / "documents")):
                out.append(target)
        return out

    ts = TraceStore(tmp_path)
    monkeypatch.setattr(fcntl, "flock", no_locks)
    for _ in range(3):
        with pytest.raises(TraceStoreError, match="cannot lock segment"):
            _stored(ts, 1)
    assert open_segments() == []
    monkeypatch.undo()
    ts.close()


def test_a_failed_rollback_does_not_hide_the_error_that_caused_it(tmp_path: Path) -> None:
    class NoRollback:
        """A connection whose ROLLBACK fails (a disk error at the worst moment)."""

        def __init__(self, conn: sqlite3.Connection) -> None:
            self.conn = conn

        @property
        def in_transaction(self) -> bool:
            return self.conn.in_transaction

        def execute(self, sql: str, *args: Any) -> sqlite3.Cursor:
            if sql == "ROLLBACK":
                self.conn.execute("ROLLBACK")
                raise sqlite3.OperationalError("disk I/O error")
            return self.conn.execute(sql, *args)

    ts = TraceStore(tmp_path)
    ts._local.conn = NoRollback(ts._conn())
    with pytest.raises(KeyError, match="the caller's own error") as info, ts._write_tx("test write"):
        raise KeyError("the caller's own error")
    assert any("test write: the rollback failed too: disk I/O error" in n for n in info.value.__notes__)
    ts.close()
