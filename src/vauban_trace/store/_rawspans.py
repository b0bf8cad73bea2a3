"""Raw span batches in span segment files (schema 5): the SQL side of :data:`_segments.SPANS`.

A ``span_batches`` row (one per trace and write, see ``_ingest``) names where its ``_batch``
blob lies: ``seg`` (a ``span_segments`` row and the file ``spans/seg-<id>.spans``), ``off``,
``len`` and ``digest`` (BLAKE3, 16 bytes, like the Trace JSON's; chosen by measurement: on
``bench/collector_steps.py``'s payloads the durable ingest costs 3.16 CPU µs per span with it,
3.04 with zlib's CRC-32, 3.11 with Adler-32 and 2.62 with no check at all, so a weaker check
would save under 4% of the step, under 1% of the collector's pipeline). :class:`SpanSegments` holds the
store object's span segment writer.

Writing (:meth:`SpanSegments.append`, inside the write transaction of ``TraceStore.ingest_parts``):
the blobs of one call are appended with one ``writev`` and ``fdatasync``-ed BEFORE the rows that
name them are committed (with ``synchronous=FULL``): when ``add_spans`` returns, both the bytes
and the rows are on disk, and a crash before the commit leaves bytes no row names (dead, past the
committed end of the segment or in a segment no row lists; see below). ``span_segments.bytes`` is
the committed end, ``live_bytes`` the lengths rows point to, kept in the same transactions
(:meth:`SpanSegments.append` adds, :func:`release` subtracts when ``_ingest`` merges a trace's
batches into one and deletes the old rows). A failed ``writev``, ``fdatasync`` or sync of a new
segment's folder raises :class:`TraceStoreError`: the transaction rolls back and the segment is
sealed (never appended to again, its tail of unknown fate named by no row; ``_segments``).

Reading (:meth:`SpanSegments.read`): ``pread`` of each extent, length and digest checked, through
read descriptors kept open per segment (up to 32 per store object: opening the file for each read
cost more than the read). That is safe because a segment id is never reused once a row names it
(``AUTOINCREMENT``) and a segment's bytes below its committed end never change: a descriptor of a
file another process compacted and deleted still reads the bytes its old rows named (the disk
space comes back when the descriptor is closed: at the 33rd segment, :meth:`SpanSegments.close`,
or this process's own compaction of it). A failure raises :class:`RawSpanError` (a :class:`TraceStoreError`) naming the trace, the batch and
the segment file: raw spans are the truth, so this is data loss, never silently dropped.
``TraceStore.spans_for`` raises it (after looking the rows up once more, since a compaction in
another process may have moved the batch); ``_ingest`` compares the incoming spans of such a trace
with its intact batches only and stores the others as a new batch (so the collector keeps
accepting spans, and a retry is still a duplicate); ``verify_store`` reports it. A read that fails
because this process is out of a resource (``EMFILE``, ``ENOMEM``...: ``RawSpanError.transient``)
is not damage: it fails the write (the client re-sends), never skips the duplicate check.

Compaction (``TraceStore.compact_spans``: :func:`hold_segment`, :func:`read_live`,
:func:`move_batches`): merges make batches dead. A sealed span segment whose live share is under
the threshold is locked (its ``flock``), its rows are read OUTSIDE any write transaction (a full
scan of ``span_batches``: there is no index on ``seg``, which would cost the ingest 0.1 µs per
span, so the scan must not hold the write lock) and its live batches read and checked, then
appended to the writer's segment and synced, the rows moved and the segment's row deleted in one
short durable transaction; the file is unlinked after the commit. A segment holding a batch that fails its
check is left as it is (the damaged bytes stay where ``verify`` finds them). At open,
:func:`orphans_present` / ``_segments.remove_orphans`` delete span segment files no row names; a
span segment shorter than its committed end is logged as data loss (:func:`short_segments`),
never "recovered" by dropping rows.
"""

from __future__ import annotations

import contextlib
import errno
import os
import sqlite3
import threading
from pathlib import Path

from blake3 import blake3

from vauban_trace._exceptions import TraceStoreError
from vauban_trace.store._segments import (
    DIGEST_SIZE,
    SPANS,
    DocumentError,
    SegmentWriter,
    _lock,
    check_extent,
    digest,
    segment_path,
)

_OPEN_READ = os.O_RDONLY | getattr(os, "O_CLOEXEC", 0)
_READ_FDS = 32  # read descriptors kept open per store object (all closed when one more is needed)

#: (batch id, span count, segment, offset, length, digest) of a ``span_batches`` row
BatchRef = tuple[int, int, int, int, int, bytes]


#: errors of opening or reading a span segment that say this process lacks a resource, not that
#: the data is bad: such a read fails (the write, the client re-sends) instead of counting as damage
_TRANSIENT = frozenset({errno.EMFILE, errno.ENFILE, errno.ENOMEM, errno.ENOBUFS, errno.EAGAIN, errno.EINTR})


class RawSpanError(TraceStoreError):
    """A span batch that cannot be read back intact: raw spans lost (the message names the
    trace, the batch and the segment file), or, when ``transient``, not readable right now (this
    process is out of descriptors or memory: nothing is known to be lost)."""

    def __init__(self, message: str, *, missing_file: bool = False, transient: bool = False) -> None:
        super().__init__(message)
        self.missing_file = missing_file
        self.transient = transient


class SpanSegments:
    """The span segment files of one store object: its writer and checked reads."""

    def __init__(self, folder: Path) -> None:
        self.folder = folder
        self._folder_str = str(folder)
        self.writer = SegmentWriter(folder, kind=SPANS)
        self._read_fds: dict[int, int] = {}
        self._fds_lock = threading.Lock()
        self._pid = os.getpid()

    def path(self, segment: int) -> Path:
        return segment_path(self.folder, segment, SPANS)

    def append(self, conn: sqlite3.Connection, blobs: list[bytes]) -> tuple[int, list[tuple[int, int, bytes]]]:
        """Append ``blobs`` to the writer's segment and ``fdatasync`` it (inside the caller's write
        transaction, which must commit durably); return (segment, [(offset, length, digest)])."""
        digests = [blake3(b).digest(length=DIGEST_SIZE) for b in blobs]  # ``_segments.digest``, inlined
        lengths = [len(b) for b in blobs]
        segment, offsets = self.writer.append(conn, blobs, sync=True, live=sum(lengths))
        return segment, list(zip(offsets, lengths, digests, strict=True))

    def read(self, trace_id: str, batches: list[BatchRef],
             damaged: list[RawSpanError] | None = None) -> list[tuple[int, int, bytes]]:
        """The blobs of ``batches`` (rows of ``trace_id``) as (batch id, span count, blob), each
        checked; :class:`RawSpanError` for the first that fails, or, with ``damaged``, the
        errors are appended there and the intact batches returned (a ``transient`` error is
        raised all the same: the batch is not known to be damaged)."""
        out = []
        for batch_id, count, seg, off, length, expected in batches:
            try:
                data = self._pread(trace_id, batch_id, seg, off, length)
                if len(data) != length or digest(data) != expected:
                    try:
                        check_extent(data, self.path(seg).name, off, length, bytes(expected), "batch")
                    except DocumentError as exc:
                        raise self._error(trace_id, batch_id, seg, str(exc)) from None
            except RawSpanError as exc:
                if damaged is None or exc.transient:
                    raise
                damaged.append(exc)
                continue
            out.append((batch_id, count, data))
        return out

    def _pread(self, trace_id: str, batch_id: int, seg: int, off: int, length: int) -> bytes:
        """``length`` bytes at ``off`` of span segment ``seg``, through a kept read descriptor
        (see the module docstring); under the lock, so no thread closes a descriptor another is
        reading from (its number could meanwhile name another file)."""
        with self._fds_lock:
            if self._pid != os.getpid():  # forked: the parent's descriptors are the child's copies
                self._read_fds, self._pid = {}, os.getpid()
            fd = self._read_fds.get(seg)
            if fd is None:
                if len(self._read_fds) >= _READ_FDS:
                    self._drop_fds()
                try:
                    fd = os.open(f"{self._folder_str}/seg-{seg:06d}{SPANS.suffix}", _OPEN_READ)
                except FileNotFoundError:
                    raise self._error(trace_id, batch_id, seg, "the file is missing", missing=True) from None
                except OSError as exc:
                    raise self._error(trace_id, batch_id, seg, f"cannot open it: {exc}",
                                      transient=exc.errno in _TRANSIENT) from None
                self._read_fds[seg] = fd
            try:
                return os.pread(fd, length, off)
            except OSError as exc:
                raise self._error(trace_id, batch_id, seg, f"cannot read it: {exc}",
                                  transient=exc.errno in _TRANSIENT) from None

    def after_fork(self) -> None:
        """In a forked child: a fresh descriptor lock (another thread of the parent may have held
        it); the parent's kept descriptors are forgotten at the next read (``_pread``)."""
        self._fds_lock = threading.Lock()

    def _drop_fds(self) -> None:
        fds, self._read_fds = self._read_fds, {}
        for fd in fds.values():
            with contextlib.suppress(OSError):
                os.close(fd)

    def forget(self, segment: int) -> None:
        """Close the read descriptor of ``segment`` (compacted: its file is being deleted)."""
        with self._fds_lock:
            fd = self._read_fds.pop(segment, None)
            if fd is not None:
                with contextlib.suppress(OSError):
                    os.close(fd)

    def _error(self, tid: str, batch_id: int, seg: int, what: str, *, missing: bool = False,
               transient: bool = False) -> RawSpanError:
        where = f"span batch {batch_id} in span segment {SPANS.folder}/{self.path(seg).name}: {what}"
        if transient:
            return RawSpanError(f"raw spans of trace {tid} cannot be read now: {where} (this process is out of a "
                                "resource; the data is not known to be damaged: try again)", transient=True)
        return RawSpanError(
            f"raw spans of trace {tid} are damaged: {where} (raw spans are the durable copy: these spans are "
            "lost; `vauban-trace store verify` lists every damaged batch)", missing_file=missing)

    def close(self) -> None:
        self.writer.close()
        with self._fds_lock:
            if self._pid == os.getpid():
                self._drop_fds()
            self._read_fds = {}


def release(conn: sqlite3.Connection, batches: list[BatchRef]) -> None:
    """The rows of ``batches`` are being deleted: their bytes stop being live."""
    gone: dict[int, int] = {}
    for _id, _count, seg, _off, length, _digest in batches:
        gone[int(seg)] = gone.get(int(seg), 0) + int(length)
    conn.executemany("UPDATE span_segments SET live_bytes = live_bytes - ? WHERE id = ?",
                     [(n, seg) for seg, n in gone.items()])


def recount_live(conn: sqlite3.Connection, segment: int) -> None:
    """Set ``span_segments.live_bytes`` of ``segment`` to the bytes its rows point to."""
    conn.execute("UPDATE span_segments SET live_bytes = (SELECT COALESCE(SUM(len), 0) FROM span_batches WHERE "
                 "seg = span_segments.id) WHERE id = ?", (segment,))


def compaction_candidates(conn: sqlite3.Connection, threshold: float, skip: int | None) -> list[int]:
    """Span segments (not ``skip``, the caller's own) whose live share is under ``threshold``."""
    return [int(r[0]) for r in conn.execute(
        "SELECT id FROM span_segments WHERE id IS NOT ? AND (live_bytes < ? * bytes OR live_bytes <= 0) ORDER BY id",
        (skip, float(threshold)))]


def hold_segment(spans: SpanSegments, segment: int) -> int | None:
    """A read descriptor of sealed span ``segment`` holding its writer lock (``flock``: no writer
    appends to it while held, and no other compaction takes it), -1 when the file is missing, None
    when a writer (or another compaction) holds it."""
    path = spans.path(segment)
    try:
        fd = os.open(path, _OPEN_READ)
    except FileNotFoundError:
        return -1
    except OSError as exc:
        raise TraceStoreError(f"cannot open span segment {str(path)!r}: {exc}") from exc
    try:
        if _lock(fd, path):
            return fd
    except BaseException:
        os.close(fd)
        raise
    os.close(fd)
    return None


def read_live(spans: SpanSegments, segment: int, fd: int,
              rows: list[tuple[int, int, int, bytes]]) -> tuple[list[tuple[int, bytes]], int]:
    """The batches ``rows`` (id, offset, length, digest) of held ``segment`` read and checked:
    ([(batch id, blob)], how many are damaged or unreadable)."""
    name = spans.path(segment).name
    good: list[tuple[int, bytes]] = []
    bad = 0
    for batch_id, off, length, expected in rows:
        try:
            if fd < 0:
                raise DocumentError("missing")
            data = os.pread(fd, int(length), int(off))
            check_extent(data, name, int(off), int(length), bytes(expected), "batch")
        except (OSError, DocumentError):
            bad += 1
            continue
        good.append((int(batch_id), data))
    return good, bad


def move_batches(conn: sqlite3.Connection, spans: SpanSegments, segment: int, good: list[tuple[int, bytes]]) -> int:
    """Inside a write transaction that must commit durably before the file is unlinked: append the
    blobs of ``good`` (read from held ``segment`` by :func:`read_live`) to the writer's segment
    (synced), point their rows there and delete the segment's row. A row deleted meanwhile (a
    merge committed after the rows were read) is not moved and its copy counts as dead; rows
    never come INTO a sealed segment, so none is missed. Returns the batches moved."""
    moved = 0
    if good:
        new_segment, refs = spans.append(conn, [blob for _id, blob in good])
        dead = 0
        for (batch_id, _blob), (off, length, _digest) in zip(good, refs, strict=True):
            if conn.execute("UPDATE span_batches SET seg = ?, off = ? WHERE id = ? AND seg = ?",
                            (new_segment, off, batch_id, segment)).rowcount:
                moved += 1
            else:
                dead += length
        if dead:
            conn.execute("UPDATE span_segments SET live_bytes = live_bytes - ? WHERE id = ?", (dead, new_segment))
    conn.execute("DELETE FROM span_segments WHERE id = ?", (segment,))
    return moved


def short_segments(conn: sqlite3.Connection, folder: Path) -> list[tuple[int, int, int | None]]:
    """(segment, committed end, file size or None) of every span segment file shorter than its
    committed end (bytes acknowledged to clients are gone: data loss; one ``stat`` each)."""
    out = []
    for segment, end in conn.execute("SELECT id, bytes FROM span_segments").fetchall():
        try:
            size: int | None = os.stat(segment_path(folder, int(segment), SPANS)).st_size
        except FileNotFoundError:
            size = None
        if (size or 0) < int(end):
            out.append((int(segment), int(end), size))
    return out


def orphans_present(conn: sqlite3.Connection, folder: Path) -> bool:
    """Whether the span folder holds segment files no ``span_segments`` row names (read only)."""
    try:
        names = os.listdir(folder)
    except FileNotFoundError:
        return False
    known = {segment_path(folder, int(r[0]), SPANS).name for r in conn.execute("SELECT id FROM span_segments")}
    name_re = SPANS.name_re
    return any(name_re.match(n) is not None and n not in known for n in names)


def segment_issues(folder: Path, segs: list[tuple[int, int, int]],
                   extents: dict[int, list[tuple[int, int, int, str]]]) -> list[tuple[int, str, bool]]:
    """Bookkeeping problems of the span segments: (segment, what, whether ``recount_live``
    repairs it). ``segs``: (id, committed end, live bytes); ``extents``: by segment, (offset,
    length, batch id, trace id) of its rows (a segment id not in ``segs`` is reported as such)."""
    issues: list[tuple[int, str, bool]] = []
    known = {s[0] for s in segs}
    for seg in sorted(set(extents) - known):
        ids = ", ".join(str(e[2]) for e in extents[seg][:5])
        issues.append((seg, f"span batch(es) {ids} are said to lie in span segment {seg}, which span_segments "
                            "does not list", False))
    for seg, end, live in segs:
        rows = sorted(extents.get(seg, ()))
        total = sum(r[1] for r in rows)
        if total != live:
            issues.append((seg, f"live_bytes says {live}, its span batches point to {total} bytes", True))
        far = max((off + length for off, length, _b, _t in rows), default=0)
        if far > end:
            issues.append((seg, f"a span batch ends at byte {far}, past the committed end {end}", False))
        for (o1, l1, b1, _t1), (o2, _l2, b2, _t2) in zip(rows, rows[1:], strict=False):
            if o1 + l1 > o2:
                issues.append((seg, f"span batches {b1} and {b2} overlap at byte {o2}", False))
                break
        with contextlib.suppress(FileNotFoundError):
            size: int | None = None
            size = os.stat(segment_path(folder, seg, SPANS)).st_size
        if (size or 0) < end:
            what = "is missing" if size is None else f"holds {size} bytes"
            issues.append((seg, f"file {SPANS.folder}/{segment_path(folder, seg, SPANS).name} {what}, committed end "
                                f"{end} (raw spans lost)", False))
    return issues


__all__ = ["BatchRef", "RawSpanError", "SpanSegments", "compaction_candidates", "hold_segment", "move_batches",
           "orphans_present", "read_live", "recount_live", "release", "segment_issues", "short_segments"]
