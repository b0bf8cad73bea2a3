"""Span segments under faults: full disks, failed syncs, threads racing a failed ingest, kill -9."""

from __future__ import annotations

import errno
import os
import subprocess
import sys
import threading
from pathlib import Path

import pytest
from store_testlib import CHILD, ROOT, TRACE_A, TRACE_B, make_request, make_span

from vauban_trace.store import TraceStore, TraceStoreError
from vauban_trace.store._ingest import store_rows as _ingest_store_rows
from vauban_trace.store._segments import SPANS, segment_path


def _seg_of(ts: TraceStore, tid: str) -> int:
    (seg,) = ts._conn().execute("SELECT seg FROM span_batches WHERE trace_id = ? ORDER BY id DESC LIMIT 1",
                                (tid,)).fetchone()
    return int(seg)


def _fail_once(monkeypatch: pytest.MonkeyPatch, name: str, err: int, *, when: object = None) -> list[int]:
    """Make ``os.<name>`` raise ``OSError(err)`` once (for calls ``when(args)`` accepts)."""
    real = getattr(os, name)
    calls: list[int] = []

    def failing(*args: object) -> object:
        if not calls and (when is None or when(*args)):  # type: ignore[operator]
            calls.append(1)
            raise OSError(err, os.strerror(err))
        return real(*args)

    monkeypatch.setattr(os, name, failing)
    return calls


@pytest.mark.parametrize(("call", "err"), [("writev", errno.ENOSPC), ("fdatasync", errno.EIO),
                                           ("fdatasync", errno.ENOSPC)])
def test_a_failed_write_or_sync_rolls_back_and_abandons_the_segment(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                                     call: str, err: int) -> None:
    ts = TraceStore(tmp_path)
    assert ts.add_spans(make_request(make_span(TRACE_A, ROOT, "root"))) == (1, 0)
    first = _seg_of(ts, TRACE_A)
    calls = _fail_once(monkeypatch, call, err)
    with pytest.raises(TraceStoreError, match=os.strerror(err)):
        ts.add_spans(make_request(make_span(TRACE_B, ROOT, "b"), make_span(TRACE_A, CHILD, "c", parent=ROOT)))
    assert calls == [1]
    assert ts._conn().execute("SELECT COUNT(*) FROM span_batches WHERE trace_id = ?", (TRACE_B,)).fetchone() == (0,)
    assert ts.raw_span_count(TRACE_A) == 1  # nothing of the failed call was committed
    # the store goes on, never appending after the bytes whose fate is unknown
    assert ts.add_spans(make_request(make_span(TRACE_B, ROOT, "b"), make_span(TRACE_A, CHILD, "c", parent=ROOT))) \
        == (2, 0)
    assert _seg_of(ts, TRACE_B) != first
    (end,) = ts._conn().execute("SELECT bytes FROM span_segments WHERE id = ?", (first,)).fetchone()
    assert os.path.getsize(segment_path(tmp_path / "spans", first, SPANS)) >= end
    assert ts.verify_store().ok
    ts.close()
    with TraceStore(tmp_path) as again:
        assert again.raw_span_count(TRACE_A) == 2 and again.raw_span_count(TRACE_B) == 1
        assert again.verify_store().ok


def test_a_failed_directory_sync_of_a_new_span_segment_fails_the_write(tmp_path: Path,
                                                                      monkeypatch: pytest.MonkeyPatch) -> None:
    """The new segment file's name must be durable before a row names it: an fsync of the span
    folder that fails is an error of the write, not something to ignore."""
    ts = TraceStore(tmp_path)
    (tmp_path / "spans").mkdir()
    spans_dir = os.stat(tmp_path / "spans")

    def is_span_folder(fd: int) -> bool:
        st = os.fstat(fd)
        return (st.st_dev, st.st_ino) == (spans_dir.st_dev, spans_dir.st_ino)

    calls = _fail_once(monkeypatch, "fsync", errno.EIO, when=is_span_folder)
    with pytest.raises(TraceStoreError, match="Input/output error"):
        ts.add_spans(make_request(make_span(TRACE_A, ROOT, "root")))
    assert calls == [1]
    assert ts._conn().execute("SELECT COUNT(*) FROM span_batches").fetchone() == (0,)
    assert ts.add_spans(make_request(make_span(TRACE_A, ROOT, "root"))) == (1, 0)
    assert ts.verify_store().ok
    ts.close()


def test_a_failed_ingest_abandons_its_segment_before_another_thread_writes(tmp_path: Path,
                                                                          monkeypatch: pytest.MonkeyPatch) -> None:
    """Thread A's write allocates a span segment, appends, then fails: its transaction rolls back,
    so the segment has no row. Thread B, waiting for the write lock, must not append to that
    segment (its rows would name a segment the next open deletes as an orphan)."""
    from vauban_trace.store import _db, _segments

    ts = TraceStore(tmp_path)
    a_appended, b_done = threading.Event(), threading.Event()
    real_store_rows = _ingest_store_rows
    real_close = _segments.SegmentWriter.close

    class Boom(Exception):
        pass

    def store_rows_then_fail(*args: object, **kwargs: object) -> object:
        out = real_store_rows(*args, **kwargs)  # type: ignore[arg-type]
        if threading.current_thread().name == "A":
            a_appended.set()
            raise Boom()
        return out

    def slow_close(self: _segments.SegmentWriter) -> None:
        if threading.current_thread().name == "A" and self.kind is SPANS and self.segment is not None:
            b_done.wait(1.0)  # let B in if the lock allows it
        real_close(self)

    monkeypatch.setattr(_db, "store_rows", store_rows_then_fail)
    monkeypatch.setattr(_segments.SegmentWriter, "close", slow_close)
    errors: list[BaseException] = []

    def a() -> None:
        try:
            ts.add_spans(make_request(make_span(TRACE_A, ROOT, "a")))
        except Boom:
            pass
        except BaseException as exc:  # pragma: no cover - reported below
            errors.append(exc)

    def b() -> None:
        try:
            a_appended.wait(5)
            assert ts.add_spans(make_request(make_span(TRACE_B, ROOT, "b"))) == (1, 0)
        except BaseException as exc:  # pragma: no cover - reported below
            errors.append(exc)
        finally:
            b_done.set()

    threads = [threading.Thread(target=a, name="A"), threading.Thread(target=b, name="B")]
    for t in threads:
        t.start()
    for t in threads:
        t.join(10)
    assert not errors, errors
    seg = _seg_of(ts, TRACE_B)
    assert ts._conn().execute("SELECT COUNT(*) FROM span_segments WHERE id = ?", (seg,)).fetchone() == (1,)
    assert ts.verify_store().ok
    ts.close()
    with TraceStore(tmp_path) as again:  # the open's orphan removal keeps B's segment
        assert again.raw_span_count(TRACE_B) == 1 and again.verify_store().ok


_KILL_AFTER_SYNC = """
import os, sys
from vauban_trace.store import TraceStore
sys.path.insert(0, sys.argv[2])
from store_testlib import make_request, make_span
ts = TraceStore(sys.argv[1])
ts.add_spans(make_request(make_span("4bf92f3577b34da6a3ce929d0e0e4736", "00f067aa0ba902b7", "root",
                                    attrs={"pad": "p" * 300})))
real = os.fdatasync
def synced_then_killed(fd):
    real(fd)
    os.kill(os.getpid(), 9)  # the batch is on disk, its rows are not committed
os.fdatasync = synced_then_killed
ts.add_spans(make_request(make_span("0af7651916cd43dd8448eb211c80319c", "00f067aa0ba902b7", "lost",
                                    attrs={"pad": "q" * 300})))
"""


def test_kill9_between_the_segment_sync_and_the_commit(tmp_path: Path) -> None:
    proc = subprocess.run([sys.executable, "-c", _KILL_AFTER_SYNC, str(tmp_path), str(Path(__file__).parent)],
                          capture_output=True, text=True, timeout=60)
    assert proc.returncode == -9, proc.stderr
    with TraceStore(tmp_path) as ts:
        assert ts.raw_span_count(TRACE_A) == 1 and ts.raw_span_count(TRACE_B) == 0
        first = _seg_of(ts, TRACE_A)
        (end,) = ts._conn().execute("SELECT bytes FROM span_segments WHERE id = ?", (first,)).fetchone()
        assert os.path.getsize(segment_path(tmp_path / "spans", first, SPANS)) > end  # the uncommitted tail
        assert ts.verify_store().ok
        assert ts.add_spans(make_request(make_span(TRACE_B, ROOT, "b"))) == (1, 0)
        assert _seg_of(ts, TRACE_B) != first  # never appended after the garbage
        assert ts.verify_store().ok
    with TraceStore(tmp_path) as ts:
        assert ts.raw_span_count(TRACE_A) == 1 and ts.raw_span_count(TRACE_B) == 1


def _dead_sealed_segment(ts: TraceStore) -> int:
    """Three traces in one span segment, one of them merged away (COMPACT_AT) into the next
    segment: the first is sealed and mostly dead. Returns the sealed segment."""
    from vauban_trace.store._ingest import COMPACT_AT

    for i in range(3):
        ts.add_spans(make_request(make_span(f"{i + 1:032x}", ROOT, f"r{i}", attrs={"pad": "p" * 50})))
    sealed = _seg_of(ts, f"{1:032x}")
    for k in range(COMPACT_AT):  # the trace's batches merge into one in the writer's segment
        if k == 1:
            ts._spans.writer.close()  # seal the first segment after the first late span
        ts.add_spans(make_request(make_span(f"{1:032x}", f"{k + 2:016x}", f"s{k}", parent=ROOT,
                                            attrs={"pad": "q" * 400})))
    assert _seg_of(ts, f"{1:032x}") != sealed
    return sealed


_KILL_BEFORE_UNLINK = """
import os, sys
from vauban_trace.store import TraceStore, _db
def killed(*args):
    os.kill(os.getpid(), 9)  # the rows are moved and committed, the old file is still there
_db.unlink_segment = killed
ts = TraceStore(sys.argv[1])
ts.compact_spans(threshold=1.01)
"""


def test_kill9_between_the_compaction_commit_and_the_unlink(tmp_path: Path) -> None:
    with TraceStore(tmp_path) as ts:
        sealed = _dead_sealed_segment(ts)
        before = {f"{i + 1:032x}": ts.spans_for_bytes(f"{i + 1:032x}") for i in range(3)}
    old = segment_path(tmp_path / "spans", sealed, SPANS)
    proc = subprocess.run([sys.executable, "-c", _KILL_BEFORE_UNLINK, str(tmp_path)], capture_output=True,
                          text=True, timeout=60)
    assert proc.returncode == -9, proc.stderr
    assert old.exists()  # no row names it any more
    with TraceStore(tmp_path) as ts:  # the open deletes the orphan
        assert not old.exists()
        assert {t: ts.spans_for_bytes(t) for t in before} == before
        assert ts.verify_store().ok


def test_a_reader_racing_a_compaction_in_another_process_reads_the_moved_batches(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    writer = TraceStore(tmp_path)
    sealed = _dead_sealed_segment(writer)
    tid = f"{2:032x}"
    expected = writer.spans_for_bytes(tid)
    reader = TraceStore(tmp_path)  # another process's store object (its own descriptors)
    real_read = reader._spans.read
    raced: list[int] = []

    def read_after_compaction(*args: object, **kwargs: object) -> object:
        if not raced:  # the rows are read; the batch moves and its file goes before the pread
            raced.append(writer.compact_spans(threshold=1.01))
        return real_read(*args, **kwargs)  # type: ignore[arg-type]

    monkeypatch.setattr(reader._spans, "read", read_after_compaction)
    assert reader.spans_for_bytes(tid) == expected
    assert raced == [1] and not segment_path(tmp_path / "spans", sealed, SPANS).exists()
    assert reader.verify_store().ok
    reader.close()
    writer.close()


def test_a_failed_sync_during_span_compaction_keeps_the_old_segment(tmp_path: Path,
                                                                    monkeypatch: pytest.MonkeyPatch) -> None:
    ts = TraceStore(tmp_path)
    sealed = _dead_sealed_segment(ts)
    before = {f"{i + 1:032x}": ts.spans_for_bytes(f"{i + 1:032x}") for i in range(3)}
    calls = _fail_once(monkeypatch, "fdatasync", errno.EIO)
    with pytest.raises(TraceStoreError, match="Input/output error"):
        ts.compact_spans(threshold=1.01)
    assert calls == [1]
    assert segment_path(tmp_path / "spans", sealed, SPANS).exists()  # rows not moved, file kept
    assert {t: ts.spans_for_bytes(t) for t in before} == before and ts.verify_store().ok
    assert ts.compact_spans(threshold=1.01) >= 1  # the next try moves them
    assert not segment_path(tmp_path / "spans", sealed, SPANS).exists()
    assert {t: ts.spans_for_bytes(t) for t in before} == before and ts.verify_store().ok
    ts.close()


def test_a_transient_open_failure_is_not_damage_a_retry_stays_a_duplicate(tmp_path: Path,
                                                                          monkeypatch: pytest.MonkeyPatch) -> None:
    """Out of descriptors (EMFILE) while the stored batches of a known trace are read is no
    damage: the write fails (the client re-sends), instead of skipping the duplicate check,
    storing the span again and counting it twice."""
    ts = TraceStore(tmp_path)
    request = make_request(make_span(TRACE_A, ROOT, "root"))
    assert ts.add_spans(request) == (1, 0)
    ts._spans._drop_fds()  # no kept read descriptor: the next read opens the file
    real_open = os.open

    def no_fds(path: object, flags: int, *args: object) -> int:
        if str(path).endswith(".spans") and flags & os.O_ACCMODE == os.O_RDONLY:
            raise OSError(errno.EMFILE, os.strerror(errno.EMFILE))
        return real_open(path, flags, *args)  # type: ignore[arg-type]

    monkeypatch.setattr(os, "open", no_fds)
    with pytest.raises(TraceStoreError, match="Too many open files"):
        ts.add_spans(request)
    monkeypatch.setattr(os, "open", real_open)
    assert ts.add_spans(request) == (0, 1)  # the client's retry: a duplicate
    (count, version) = ts._conn().execute("SELECT raw_span_count, version FROM traces WHERE trace_id = ?",
                                          (TRACE_A,)).fetchone()
    assert (count, version) == (1, 1)
    assert ts.verify_store().ok
    ts.close()


def test_verify_checks_a_batch_read_again_against_its_new_row(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """verify reads a batch, fails (a compaction in another process moved it and deleted the
    file), reads its row again: the batch may meanwhile hold other spans under the same id (a
    merge re-used the highest id), so the count it checks is the new row's, not the old one."""
    import sqlite3

    from vauban_trace.store._batch import encode_batch
    from vauban_trace.store._ingest import extract_rows
    from vauban_trace.store._rawspans import RawSpanError
    from vauban_trace.store._segments import digest

    ts = TraceStore(tmp_path)
    ts.add_spans(make_request(make_span(TRACE_A, ROOT, "root")))
    rows, _ = extract_rows(make_request(make_span(TRACE_A, ROOT, "root"),
                                        make_span(TRACE_A, CHILD, "c", parent=ROOT)).resource_spans)
    merged = encode_batch(rows)
    real_read = ts._spans.read

    def moved_meanwhile(tid: str, batches: list[tuple[int, int, int, int, int, bytes]], *args: object) -> object:
        if batches and batches[0][1] == 1:
            (bid, _count, seg, _off, _len, _dig) = batches[0]
            path = segment_path(tmp_path / "spans", seg, SPANS)
            with open(path, "ab") as f:
                off = f.tell()
                f.write(merged)
                f.flush()
                os.fsync(f.fileno())
            other = sqlite3.connect(tmp_path / "traces.sqlite", isolation_level=None)
            other.execute("UPDATE span_batches SET off = ?, len = ?, digest = ?, span_count = 2 WHERE id = ?",
                          (off, len(merged), digest(merged), bid))
            other.execute("UPDATE span_segments SET bytes = ?, live_bytes = ? WHERE id = ?",
                          (off + len(merged), len(merged), seg))
            other.execute("UPDATE traces SET raw_span_count = 2 WHERE trace_id = ?", (tid,))
            other.close()
            raise RawSpanError("moved")
        return real_read(tid, batches, *args)  # type: ignore[arg-type]

    monkeypatch.setattr(ts._spans, "read", moved_meanwhile)
    report = ts.verify_store()
    assert report.ok, report.problems
    assert report.span_batches_checked == 1 and report.spans_decoded == 2
    ts.close()


@pytest.mark.skipif(not hasattr(os, "fork"), reason="needs fork")
def test_a_child_forked_while_a_thread_holds_the_write_lock_can_write_and_read(tmp_path: Path) -> None:
    """A process forks (a DataLoader worker, a pool) while another of its threads is inside the
    store's write path (its write lock held, e.g. waiting for another process's SQLite write
    lock): that thread does not exist in the child, so the child's copy of the lock would stay
    held forever and every write of the child (its exporter's, its exit flush) would hang."""
    import signal

    ts = TraceStore(tmp_path)
    ts.add_spans(make_request(make_span(TRACE_A, ROOT, "root")))
    ts.spans_for_bytes(TRACE_A)  # a kept read descriptor
    held, release = threading.Event(), threading.Event()

    def hold() -> None:
        with ts._write_lock:
            held.set()
            release.wait(10)

    holder = threading.Thread(target=hold)
    holder.start()
    assert held.wait(10)
    pid = os.fork()
    if pid == 0:  # the child: no pytest from here on, only an exit status
        code = 3
        try:
            signal.alarm(5)  # a hang ends here
            ok = ts.add_spans(make_request(make_span(TRACE_A, CHILD, "child", parent=ROOT))) == (1, 0)
            ok = ok and ts.raw_span_count(TRACE_A) == 2 and ts._spans.writer.segment != 1
            code = 0 if ok else 1
        finally:
            os._exit(code)
    release.set()
    holder.join(10)
    _, status = os.waitpid(pid, 0)
    assert os.WIFEXITED(status) and os.WEXITSTATUS(status) == 0, f"child status {status}"
    assert ts.raw_span_count(TRACE_A) == 2  # the child's span, in the child's own segment
    assert ts.add_spans(make_request(make_span(TRACE_B, ROOT, "b"))) == (1, 0)
    assert ts.verify_store().ok
    ts.close()


_TRICKLE_WRITER = """
import sys
sys.path.insert(0, sys.argv[2])
from store_testlib import make_request, make_span
from vauban_trace.store import TraceStore
ts = TraceStore(sys.argv[1])
ts._spans.writer.roll_bytes = 3000  # rolls (and compacts) often
for i in range(int(sys.argv[3])):
    tid = f"{i % 6 + 1:032x}"
    parent = None if i < 6 else f"{i % 6 + 1:016x}"
    ts.add_spans(make_request(make_span(tid, f"{i + 1:016x}", f"s{i}", parent=parent, attrs={"pad": "z" * 120})))
ts.close()
"""


def test_compaction_and_reads_in_one_process_beside_a_trickling_writer_in_another(tmp_path: Path) -> None:
    """One process writes six traces one span per request (merges every 16 batches, a roll every
    3 KB, its own compactions); this one compacts, reads and verifies meanwhile. Every span
    is there at the end, no read fails on the way, and no file is left behind."""
    n = 600
    writer = subprocess.Popen([sys.executable, "-c", _TRICKLE_WRITER, str(tmp_path), str(Path(__file__).parent),
                               str(n)], stderr=subprocess.PIPE, text=True)
    ts = TraceStore(tmp_path)
    rounds = compacted = 0
    while writer.poll() is None or rounds == 0:
        compacted += ts.compact_spans(threshold=0.9)
        for k in range(6):
            tid = f"{k + 1:032x}"
            try:
                ts.spans_for_bytes(tid)
            except TraceStoreError as exc:
                if "no trace" not in str(exc):
                    raise
        report = ts.verify_store()
        assert report.span_batches_bad == 0 and report.span_segments_bad == 0, report.problems
        rounds += 1
    assert writer.wait(60) == 0, writer.stderr.read() if writer.stderr else ""
    assert rounds > 1
    for k in range(6):
        assert ts.raw_span_count(f"{k + 1:032x}") == n // 6
    assert ts.verify_store().ok
    ts.close()
    with TraceStore(tmp_path) as again:
        assert again.verify_store().ok
        assert sorted(os.listdir(tmp_path / "spans")) == [segment_path(tmp_path, s.id, SPANS).name
                                                          for s in again.store_stats().span_segments]


_ACK_WRITER = """
import sys
sys.path.insert(0, sys.argv[2])
from store_testlib import make_request, make_span
from vauban_trace.store import TraceStore
ts = TraceStore(sys.argv[1])
ts._spans.writer.roll_bytes = 2500  # rolls, merges and compactions all the time
start = int(sys.argv[3])
for i in range(start, start + 100000):
    tid = f"{i % 5 + 1:032x}"
    ts.add_spans(make_request(make_span(tid, f"{i + 1:016x}", f"s{i}", attrs={"pad": "k" * 100})))
    print(i, flush=True)  # acknowledged: durable from here on
"""


def test_kill9_at_random_moments_loses_no_acknowledged_span(tmp_path: Path) -> None:
    import random
    import time

    rng = random.Random(7)
    acked: set[int] = set()
    start = 0
    for _round in range(3):
        proc = subprocess.Popen([sys.executable, "-c", _ACK_WRITER, str(tmp_path), str(Path(__file__).parent),
                                 str(start)], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        assert proc.stdout is not None
        first = proc.stdout.readline()  # the random moment counts from the first acknowledgement:
        time.sleep(0.2 + rng.random() * 0.6)  # a loaded machine may take a second to start a writer
        proc.kill()
        out, err = proc.communicate(timeout=30)
        assert proc.returncode == -9, err
        got = [int(line) for line in (first + out).split()]
        assert got, err
        acked.update(got)
        start = max(got) + 2  # the one in flight may or may not be there
        with TraceStore(tmp_path) as ts:
            stored: set[int] = set()
            for k in range(5):
                for rs in ts.spans_for(f"{k + 1:032x}").resource_spans:
                    for ss in rs.scope_spans:
                        stored.update(int.from_bytes(s.span_id, "big") - 1 for s in ss.spans)
            assert acked <= stored, sorted(acked - stored)[:10]
            report = ts.verify_store()
            assert report.ok, report.problems


def test_a_full_disk_during_the_v4_migration_leaves_the_v4_store(tmp_path: Path,
                                                                  monkeypatch: pytest.MonkeyPatch) -> None:
    import json
    import shutil
    import sqlite3

    store = tmp_path / "v4"
    shutil.copytree(Path(__file__).parent / "fixtures" / "store_v4", store)
    expected = json.loads((store / "expected.json").read_text())
    calls = _fail_once(monkeypatch, "writev", errno.ENOSPC)
    with pytest.raises(TraceStoreError, match="No space left on device"):
        TraceStore(store)
    assert calls == [1]
    conn = sqlite3.connect(store / "traces.sqlite")
    assert conn.execute("PRAGMA user_version").fetchone()[0] == 4
    conn.close()
    with TraceStore(store) as ts:  # space again: the migration runs again
        for tid, data in expected["spans_for_bytes"].items():
            assert ts.spans_for_bytes(tid) == bytes.fromhex(data)
        assert ts.verify_store().ok


def test_iov_max_is_positive_whatever_sysconf_says(monkeypatch: pytest.MonkeyPatch) -> None:
    """sysconf answers -1 for a limit it cannot tell: ``range(0, n, -1)`` would write nothing
    while the rows still named the bytes."""
    from vauban_trace.store import _segments

    for answer in (-1, 0, 4, 1 << 20):
        monkeypatch.setattr(os, "sysconf", lambda name, a=answer: a)
        assert 1 <= _segments._iov_max() <= 1024

    def unknown(name: str) -> int:
        raise ValueError("unrecognized configuration name")

    monkeypatch.setattr(os, "sysconf", unknown)
    assert _segments._iov_max() >= 1


def test_a_call_with_more_batches_than_one_writev_takes(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from vauban_trace.store import _segments

    monkeypatch.setattr(_segments, "_IOV_MAX", 2)
    ts = TraceStore(tmp_path)
    spans = [make_span(f"{k + 1:032x}", ROOT, f"r{k}", attrs={"pad": "v" * (10 + k)}) for k in range(5)]
    assert ts.add_spans(make_request(*spans)) == (5, 0)  # five batches, three writev calls
    for k in range(5):
        assert ts.raw_span_count(f"{k + 1:032x}") == 1
    assert ts.verify_store().ok
    ts.close()


def test_a_write_failing_before_it_appends_keeps_the_segments(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A write that fails before appending anything (a stored batch whose count is wrong, which
    fails every write of its trace while the client re-sends it) leaves both writers on their
    segments: sealing them each time made one more small segment file per retry."""
    from vauban_trace.store import _db

    ts = TraceStore(tmp_path)
    ts.add_spans(make_request(make_span(TRACE_A, ROOT, "root")))
    ts.put_documents([])  # no-op
    seg = ts._spans.writer.segment
    real = _ingest_store_rows

    def corrupt(*args: object, **kwargs: object) -> object:
        raise TraceStoreError("span batch 1 of trace ...: span_count says 2, the blob holds 1")

    monkeypatch.setattr(_db, "store_rows", corrupt)
    for _ in range(3):
        with pytest.raises(TraceStoreError, match="span_count says"):
            ts.add_spans(make_request(make_span(TRACE_B, ROOT, "b")))
    monkeypatch.setattr(_db, "store_rows", real)
    assert ts._spans.writer.segment == seg
    ts.add_spans(make_request(make_span(TRACE_B, ROOT, "b")))
    assert _seg_of(ts, TRACE_B) == seg and len(os.listdir(tmp_path / "spans")) == 1
    assert ts.verify_store().ok
    ts.close()
