"""Raw span batches in span segment files (schema v5): checked reads, damage, compaction, v4 -> v5."""

from __future__ import annotations

import json
import os
import shutil
import sqlite3
import subprocess
import sys
from pathlib import Path

import pytest
from store_testlib import CHILD, ROOT, TRACE_A, TRACE_B, batch_rows, make_request, make_span

from vauban_trace.rebuild import rebuild_traces
from vauban_trace.store import TraceStore, TraceStoreError
from vauban_trace.store._ingest import COMPACT_AT
from vauban_trace.store._segments import SPANS, segment_path

FIXTURE = Path(__file__).parent / "fixtures" / "store_v4"


def _tid(n: int) -> str:
    return f"{n + 1:032x}"


def _span_live_ok(ts: TraceStore) -> None:
    conn = ts._conn()
    for seg, live in conn.execute("SELECT id, live_bytes FROM span_segments"):
        (total,) = conn.execute("SELECT COALESCE(SUM(len), 0) FROM span_batches WHERE seg = ?", (seg,)).fetchone()
        assert live == total, f"span segment {seg}"


def _where(ts: TraceStore, tid: str) -> tuple[int, int, int]:
    row = ts._conn().execute("SELECT seg, off, len FROM span_batches WHERE trace_id = ? ORDER BY id LIMIT 1",
                             (tid,)).fetchone()
    return int(row[0]), int(row[1]), int(row[2])


def test_batches_live_in_span_segments_synced_and_checked(tmp_path: Path) -> None:
    ts = TraceStore(tmp_path)
    assert ts.add_spans(make_request(make_span(TRACE_A, ROOT, "root"), make_span(TRACE_B, ROOT, "b"))) == (2, 0)
    cols = [r[1] for r in ts._conn().execute("PRAGMA table_info(span_batches)")]
    assert "spans" not in cols and {"seg", "off", "len", "digest"} <= set(cols)
    rows = batch_rows(ts)  # read back through the checked path
    seg, off, length = _where(ts, TRACE_A)
    path = segment_path(tmp_path / "spans", seg, SPANS)
    assert path.read_bytes()[off:off + length] == rows[0][4]
    (end,) = ts._conn().execute("SELECT bytes FROM span_segments WHERE id = ?", (seg,)).fetchone()
    assert end == path.stat().st_size == sum(len(r[4]) for r in rows)  # no separator, nothing else
    _span_live_ok(ts)
    ts.close()


def test_a_damaged_batch_is_a_clear_error_verify_reports_it_and_ingest_goes_on(tmp_path: Path) -> None:
    ts = TraceStore(tmp_path)
    ts.add_spans(make_request(make_span(TRACE_A, ROOT, "root", attrs={"pad": "p" * 200}),
                              make_span(TRACE_B, ROOT, "b")))
    seg, off, length = _where(ts, TRACE_A)
    path = segment_path(tmp_path / "spans", seg, SPANS)
    with open(path, "r+b") as f:
        f.seek(off + length // 2)
        byte = f.read(1)
        f.seek(off + length // 2)
        f.write(bytes([byte[0] ^ 0x04]))
    with pytest.raises(TraceStoreError, match=f"raw spans of trace {TRACE_A} .*seg-{seg:06d}.spans.*fails its digest"):
        ts.spans_for(TRACE_A)
    assert ts.raw_span_count(TRACE_B) == 1  # the other trace's batch is intact
    # a late span of the damaged trace is still accepted and stored (not compared with the lost batch)
    assert ts.add_spans(make_request(make_span(TRACE_A, CHILD, "late", parent=ROOT))) == (1, 0)
    report = ts.verify_store(repair=True)
    assert not report.ok and report.span_batches_bad == 1 and report.repaired == 0
    (problem,) = report.problems
    assert problem.kind == "span_batch" and TRACE_A in problem.subject and f"seg-{seg:06d}.spans" in problem.detail
    assert not problem.repaired
    assert ts.compact_spans(threshold=1.01) == 0  # a segment holding a damaged batch is never compacted
    assert path.exists()
    ts.close()


def test_a_span_segment_shorter_than_its_committed_end_is_reported_as_loss(tmp_path: Path) -> None:
    ts = TraceStore(tmp_path)
    ts.add_spans(make_request(make_span(TRACE_A, ROOT, "root")))
    ts.add_spans(make_request(make_span(TRACE_B, ROOT, "b")))
    seg, off, _length = _where(ts, TRACE_B)
    ts.close()
    os.truncate(segment_path(tmp_path / "spans", seg, SPANS), off + 3)
    ts = TraceStore(tmp_path)  # opening logs it, never drops a row
    assert ts.raw_span_count(TRACE_A) == 1
    with pytest.raises(TraceStoreError, match=f"trace {TRACE_B}.*ends 3 bytes into the batch"):
        ts.spans_for(TRACE_B)
    report = ts.verify_store(repair=True)
    kinds = sorted(p.kind for p in report.problems)
    assert kinds == ["span_batch", "span_segment"] and report.repaired == 0
    assert any("raw spans lost" in p.detail for p in report.problems)
    ts.close()


def test_merged_batches_are_dead_bytes_and_span_segments_compact(tmp_path: Path) -> None:
    ts = TraceStore(tmp_path)
    ts._spans.writer.roll_bytes = 2048  # several span segments from a few writes
    tid = _tid(0)
    ts.add_spans(make_request(make_span(tid, ROOT, "root", attrs={"pad": "r" * 300})))
    for i in range(3 * COMPACT_AT):  # one span per write: merged every COMPACT_AT batches
        ts.add_spans(make_request(make_span(tid, f"{i + 16:016x}", f"s{i}", parent=ROOT, attrs={"pad": "s" * 80})))
        if i == COMPACT_AT:
            before = ts.spans_for_bytes(tid)
    _span_live_ok(ts)
    assert ts.raw_span_count(tid) == 3 * COMPACT_AT + 1
    stats = ts.store_stats()
    assert len(stats.span_segments) >= 2 and stats.span_live_bytes < stats.span_segment_bytes
    files = sorted(os.listdir(tmp_path / "spans"))
    assert len(files) == len(stats.span_segments)  # the roll compacted the mostly dead ones already
    expected = ts.spans_for_bytes(tid)
    assert ts.spans_for_bytes(tid) != before
    ts.compact_spans(threshold=1.01)  # every sealed span segment
    after = ts.store_stats()
    assert [s.id for s in after.span_segments] == [ts._spans.writer.segment]
    assert ts.spans_for_bytes(tid) == expected
    assert ts.verify_store().ok
    _span_live_ok(ts)
    ts.close()
    with TraceStore(tmp_path) as again:  # nothing orphaned, nothing lost
        assert again.spans_for_bytes(tid) == expected and again.verify_store().ok
        assert sorted(os.listdir(tmp_path / "spans")) == [segment_path(tmp_path, s.id, SPANS).name
                                                          for s in again.store_stats().span_segments]


def test_a_failed_ingest_never_appends_to_a_span_segment_it_rolled_back(tmp_path: Path,
                                                                        monkeypatch: pytest.MonkeyPatch) -> None:
    ts = TraceStore(tmp_path)

    class Boom(Exception):
        pass

    from vauban_trace.store import _ingest

    real = _ingest._bookkeeping

    def failing(*args: object, **kwargs: object) -> object:
        raise Boom()

    monkeypatch.setattr(_ingest, "_bookkeeping", failing)
    with pytest.raises(Boom):
        ts.add_spans(make_request(make_span(TRACE_A, ROOT, "root")))
    assert ts._spans.writer.segment is None
    monkeypatch.setattr(_ingest, "_bookkeeping", real)
    assert ts.add_spans(make_request(make_span(TRACE_A, ROOT, "root"))) == (1, 0)
    assert ts.raw_span_count(TRACE_A) == 1 and ts.verify_store().ok
    ts.close()


def _copy_fixture(tmp_path: Path) -> Path:
    store = tmp_path / "v4"
    shutil.copytree(FIXTURE, store)
    return store


def test_a_real_v4_store_is_migrated_in_place(tmp_path: Path) -> None:
    store = _copy_fixture(tmp_path)
    expected = json.loads((store / "expected.json").read_text())
    conn = sqlite3.connect(store / "traces.sqlite")
    assert conn.execute("PRAGMA user_version").fetchone()[0] == 4
    v4 = conn.execute("SELECT id, trace_id, received_unix_nano, span_count, spans FROM span_batches ORDER BY id"
                      ).fetchall()
    traces_before = conn.execute("SELECT * FROM traces ORDER BY trace_id").fetchall()
    conn.close()
    ts = TraceStore(store)
    conn = ts._conn()
    assert conn.execute("PRAGMA user_version").fetchone()[0] == 5
    assert batch_rows(ts) == [(i, t, r, c, bytes(b)) for i, t, r, c, b in v4]  # same ids, same bytes
    assert conn.execute("SELECT * FROM traces ORDER BY trace_id").fetchall() == traces_before
    for tid, data in expected["spans_for_bytes"].items():
        assert ts.spans_for_bytes(tid) == bytes.fromhex(data)
    assert sorted(p.trace_id for p in ts.pending_traces()) == expected["pending"]
    (rebuilt,) = expected["rebuilt"]
    assert ts.get_trace(rebuilt) == rebuild_traces(ts.spans_for(rebuilt))[0]
    _span_live_ok(ts)
    assert ts.verify_store().ok
    # the migrated store goes on: a re-sent span is a duplicate, a new one is stored
    assert ts.add_spans(make_request(make_span(TRACE_B, ROOT, "b", start=5, end=50))) == (0, 1)
    assert ts.add_spans(make_request(make_span(TRACE_B, CHILD, "new", parent=ROOT))) == (1, 0)
    assert ts.raw_span_count(TRACE_B) == 2
    ts.close()


_CRASH = """
import os, sys
from vauban_trace.store import _segments
real = _segments.SegmentWriter.close
def crash(self):
    if self.kind is _segments.SPANS and self.segment is not None:
        os._exit(9)  # every batch appended and synced, the transaction not committed
    real(self)
_segments.SegmentWriter.close = crash
from vauban_trace.store import TraceStore
TraceStore(sys.argv[1])
"""


def test_a_v4_migration_killed_before_its_commit_leaves_the_v4_store(tmp_path: Path) -> None:
    store = _copy_fixture(tmp_path)
    expected = json.loads((store / "expected.json").read_text())
    proc = subprocess.run([sys.executable, "-c", _CRASH, str(store)], capture_output=True, text=True, timeout=60)
    assert proc.returncode == 9, proc.stderr
    assert os.listdir(store / "spans")  # the segments it wrote, which no row names
    conn = sqlite3.connect(store / "traces.sqlite")
    assert conn.execute("PRAGMA user_version").fetchone()[0] == 4
    assert "spans" in [r[1] for r in conn.execute("PRAGMA table_info(span_batches)")]
    conn.close()
    with TraceStore(store) as ts:  # migrates again, over the leftovers
        for tid, data in expected["spans_for_bytes"].items():
            assert ts.spans_for_bytes(tid) == bytes.fromhex(data)
        assert ts.verify_store().ok
        assert sorted(os.listdir(store / "spans")) == [segment_path(store, s.id, SPANS).name
                                                       for s in ts.store_stats().span_segments]


@pytest.mark.parametrize("seed", range(4))
def test_random_writes_merges_rolls_and_compactions_keep_the_latest_copy_of_every_span(tmp_path: Path,
                                                                                       seed: int) -> None:
    """A model (the latest copy of each span id wins) against the store, through duplicates,
    replacements, merges at COMPACT_AT, tiny span segments and compactions at random times."""
    import random

    from vauban_trace.store._ingest import extract_rows, snapshot_bytes

    rng = random.Random(seed)
    ts = TraceStore(tmp_path)
    ts._spans.writer.roll_bytes = 1500
    model: dict[str, dict[str, object]] = {}
    tids = [_tid(100 + k) for k in range(3)]
    for _step in range(120):
        tid = rng.choice(tids)
        spans = []
        for n in rng.sample(range(1, 31), rng.randint(1, 4)):  # distinct ids in one request
            sid = f"{n:016x}"
            parent = None if sid == f"{1:016x}" else f"{1:016x}"
            spans.append(make_span(tid, sid, f"s{sid[-2:]}", parent=parent, start=int(sid, 16) * 10,
                                   end=int(sid, 16) * 10 + rng.choice((5, 7)), attrs={"v": "x" * rng.choice((40, 90))}))
        request = make_request(*spans)
        rows, problems = extract_rows(request.resource_spans)
        assert not problems
        ts.add_spans(request)
        for r in rows:
            model.setdefault(tid, {}).pop(r.span_id, None)
            model[tid][r.span_id] = r
        if rng.random() < 0.2:
            assert ts.add_spans(request)[0] == 0  # the same request again: all duplicates
        if rng.random() < 0.1:
            ts.compact_spans(threshold=rng.choice((0.5, 0.9, 1.01)))
    for tid, spans_by_id in model.items():
        assert ts.spans_for_bytes(tid) == snapshot_bytes(list(spans_by_id.values()))  # type: ignore[arg-type]
        assert ts.raw_span_count(tid) == len(spans_by_id)
    _span_live_ok(ts)
    report = ts.verify_store()
    assert report.ok, report.problems
    ts.close()
    with TraceStore(tmp_path) as again:
        for tid, spans_by_id in model.items():
            assert again.spans_for_bytes(tid) == snapshot_bytes(list(spans_by_id.values()))  # type: ignore[arg-type]
        assert sorted(os.listdir(tmp_path / "spans")) == [segment_path(tmp_path, s.id, SPANS).name
                                                          for s in again.store_stats().span_segments]


def test_a_batch_merged_away_while_compaction_reads_is_not_moved(tmp_path: Path,
                                                                  monkeypatch: pytest.MonkeyPatch) -> None:
    """Compaction reads a sealed segment's rows without the write lock; a row deleted before its
    move transaction (a merge in another process) stays deleted and its copy counts as dead."""
    from vauban_trace.store import _db

    ts = TraceStore(tmp_path)
    for i in range(3):
        ts.add_spans(make_request(make_span(_tid(i), ROOT, f"r{i}", attrs={"pad": "p" * 100})))
    ts._spans.close()  # seal the segment
    (gone_id, gone_seg, gone_len) = ts._conn().execute(
        "SELECT id, seg, len FROM span_batches WHERE trace_id = ?", (_tid(1),)).fetchone()
    real = _db.read_live  # type: ignore[attr-defined]

    def read_then_merge(*args: object) -> object:
        out = real(*args)  # type: ignore[arg-type]
        other = TraceStore(tmp_path)  # another writer deletes a batch meanwhile
        with other._write_tx("merge") as conn:
            conn.execute("DELETE FROM span_batches WHERE id = ?", (gone_id,))
            conn.execute("UPDATE span_segments SET live_bytes = live_bytes - ? WHERE id = ?", (gone_len, gone_seg))
        other.close()
        return out

    monkeypatch.setattr(_db, "read_live", read_then_merge)
    assert ts.compact_spans(threshold=1.01) == 1
    assert ts._conn().execute("SELECT COUNT(*) FROM span_batches WHERE id = ?", (gone_id,)).fetchone() == (0,)
    _span_live_ok(ts)
    assert ts.raw_span_count(_tid(0)) == ts.raw_span_count(_tid(2)) == 1 and ts.verify_store().ok
    stats = ts.store_stats()
    (seg,) = stats.span_segments
    assert seg.bytes - seg.live_bytes == gone_len  # the copy of the deleted batch is dead
    ts.close()


def test_wrong_span_segment_bookkeeping_is_reported_and_live_bytes_repaired(tmp_path: Path) -> None:
    ts = TraceStore(tmp_path)
    ts.add_spans(make_request(make_span(TRACE_A, ROOT, "root"), make_span(TRACE_B, ROOT, "b")))
    conn = ts._conn()
    conn.execute("UPDATE span_segments SET live_bytes = live_bytes + 7")
    report = ts.verify_store()
    (problem,) = report.problems
    assert problem.kind == "span_segment" and "live_bytes says" in problem.detail and report.span_segments_bad == 1
    report = ts.verify_store(repair=True)
    assert report.repaired == 1 and ts.verify_store().ok
    _span_live_ok(ts)
    conn.execute("UPDATE span_batches SET seg = 99 WHERE trace_id = ?", (TRACE_B,))
    report = ts.verify_store(repair=True)
    details = [p.detail for p in report.problems]
    assert any("span segment 99, which span_segments does not list" in d for d in details)
    assert any("file is missing" in d for d in details) and not report.ok  # the batch cannot be read either
    ts.close()
