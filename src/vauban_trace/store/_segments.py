"""Append-only segment files: the writer, checked reads, compaction (Trace JSON and raw spans).

Two kinds of segment (:class:`SegmentKind`) share this machinery: :data:`DOCUMENTS`, the rebuilt
Trace JSON (``documents/seg-<id>.jsonl``, table ``segments``; schema 4 on), and :data:`SPANS`, the
raw span batches (``spans/seg-<id>.spans``, table ``span_segments``; schema 5 on; their SQL side is
``_rawspans``). A kind names its folder, file suffix, table and whether a newline follows each
record; everything below holds for both unless said otherwise. The differences are in who syncs
and what a bad extent means: span batches are always ``fdatasync``-ed before the commit that names
them (they are the durable truth, acknowledged to clients), and a span extent that fails its
check is data loss, reported and never dropped; a Trace JSON text that fails costs a rebuild.
A span segment is the plain concatenation of ``_batch`` blobs (no separator); compaction of span
segments (which must never drop a record) is ``TraceStore.compact_spans`` over ``_rawspans``'
``hold_segment`` / ``read_live`` / ``move_batches``, the :func:`compact_segment` below is the
Trace JSON one. :meth:`SegmentWriter.append` writes many
records with one ``writev`` (the span writer's hot path: one call per ingest transaction).

Layout of the documents: ``<dir>/documents/seg-<id>.jsonl`` (``<id>`` six digits or more). A segment is the
concatenation of UTF-8 ``Trace.to_json()`` texts, one after the other (a newline after each, so
``jq``/``grep`` work on it); the ``traces`` row of a trace names where its text is
(``doc_segment``, ``doc_offset``, ``doc_length``) and its BLAKE3 digest (``doc_digest``, 16
bytes). The ``segments`` table lists the segment files: ``bytes`` (the committed end: every row
of the segment lies below it) and ``live_bytes`` (the sum of the lengths its rows still point
to, kept by ``_documents.account`` in the transactions that move rows; SQL triggers cost the
raw-span ingest a microsecond per span in ``bench/collector_steps.py``, so there are none).

Writing (:class:`SegmentWriter`, one per ``TraceStore`` object, used under its write lock and
inside its write transaction): a segment is allocated in the transaction that first writes to
it (``INSERT INTO segments`` / ``span_segments``, file created with ``O_TRUNC`` and ``flock``-ed exclusively, so a
file left by a transaction that never committed is reused; the folder is ``fsync``-ed so the
file's name is durable, and a failure of that sync fails the write), the records are appended with
``writev`` before the rows are committed (and ``fdatasync``-ed first when the commit is durable),
and a segment is rolled once it holds :data:`SEGMENT_BYTES`. A failed write or sync closes the writer
(the segment's tail is of unknown fate: never appended to again), and so does every failed write
transaction that used the writer (``TraceStore._write_tx``, under the store's write lock, before
the rollback: a segment allocated in it has no row any more). Only the process holding a segment's lock appends
to it; a segment nobody holds is sealed.

Reading (:func:`read_document`): ``pread`` of the extent, then length and digest are checked;
anything else raises :class:`DocumentError` (the store then treats the trace as not rebuilt,
see ``_db``). Raw spans stay the durable truth: a lost or torn text costs a rebuild, never a
corrupt trace.

Compaction (:func:`compact_segment`): a late span rebuilds a trace, so its earlier text becomes
dead bytes. A sealed segment whose live share falls under :data:`COMPACT_BELOW` has its live
texts copied (and verified) into the writer's segment, synced, the rows moved in one durable
transaction together with the deletion of the segment's row, and only then the file is unlinked.
A crash at any point leaves either the old rows and file or the new rows and a stale file
(:func:`remove_orphans` deletes it at the next open).
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import os
import re
import sqlite3
import time
from dataclasses import dataclass
from pathlib import Path

from blake3 import blake3

from vauban_trace._exceptions import TraceStoreError

#: roll to a new segment once the current one holds this many bytes
SEGMENT_BYTES = 64 * 1024 * 1024
#: compact a sealed segment whose live share is below this
COMPACT_BELOW = 0.5
DIGEST_SIZE = 16
FOLDER = "documents"
_OPEN_NEW = os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_APPEND | getattr(os, "O_NOFOLLOW", 0) | getattr(
    os, "O_CLOEXEC", 0)
_OPEN_READ = os.O_RDONLY | getattr(os, "O_CLOEXEC", 0)


def _iov_max() -> int:
    """Buffers one ``writev`` may take: the system's limit, at most 1024; 16 (POSIX's minimum)
    when the system cannot tell (``sysconf`` answers -1 for an indeterminate limit)."""
    try:
        limit = int(os.sysconf("SC_IOV_MAX"))
    except (AttributeError, ValueError, OSError):
        limit = -1
    return min(limit, 1024) if limit > 0 else 16


_IOV_MAX = _iov_max()


@dataclass(frozen=True, slots=True)
class SegmentKind:
    """What differs between the segment files of Trace JSON and those of raw span batches."""

    folder: str  # under the store directory
    suffix: str  # file name: seg-<id><suffix>
    table: str  # SQL table of the segments: id, created_unix_nano, bytes, live_bytes
    newline: bool  # a newline after each record (the JSON texts: jq/grep work on the file)

    @property
    def name_re(self) -> re.Pattern[str]:
        return re.compile(r"^seg-(\d{6,})" + re.escape(self.suffix) + "$")


#: rebuilt Trace JSON (schema 4 on)
DOCUMENTS = SegmentKind(FOLDER, ".jsonl", "segments", True)
#: raw span batches, ``_batch`` encoding (schema 5 on; ``_rawspans``)
SPANS = SegmentKind("spans", ".spans", "span_segments", False)


class DocumentError(Exception):
    """A stored record (a Trace JSON text, a span batch) that cannot be read back intact (the
    message says why)."""


def digest(data: bytes) -> bytes:
    """The 16-byte BLAKE3 digest stored with each text."""
    return blake3(data).digest(length=DIGEST_SIZE)


def segment_path(folder: Path, segment: int, kind: SegmentKind = DOCUMENTS) -> Path:
    return folder / f"seg-{segment:06d}{kind.suffix}"


def read_document(folder: Path, segment: int, offset: int, length: int, expected: bytes,
                  kind: SegmentKind = DOCUMENTS) -> bytes:
    """The record stored at (``segment``, ``offset``, ``length``), checked against ``expected``
    (its digest)."""
    path = segment_path(folder, segment, kind)
    try:
        fd = os.open(path, _OPEN_READ)
    except FileNotFoundError:
        raise DocumentError(f"segment {path.name} is missing") from None
    except OSError as exc:
        raise DocumentError(f"cannot open segment {path.name}: {exc}") from None
    try:
        data = os.pread(fd, length, offset)
    except OSError as exc:
        raise DocumentError(f"cannot read segment {path.name}: {exc}") from None
    finally:
        os.close(fd)
    check_extent(data, path.name, offset, length, expected)
    return data


def check_extent(data: bytes, name: str, offset: int, length: int, expected: bytes, what: str = "text") -> None:
    """Raise :class:`DocumentError` unless ``data`` (read at ``offset`` of segment file ``name``)
    is ``length`` bytes whose digest is ``expected``; ``what`` names the record in the message."""
    if len(data) != length:
        raise DocumentError(f"segment {name} ends {len(data)} bytes into the {what} of {length} at offset {offset}")
    if digest(data) != bytes(expected):
        raise DocumentError(f"the {what} of {length} bytes at offset {offset} of segment {name} fails its digest")


#: ``fsync`` of a directory failing with these means the file system cannot sync directories
_NO_DIR_SYNC = {errno.EINVAL, errno.ENOTSUP, errno.EOPNOTSUPP}


def _fsync_dir(folder: Path, *, strict: bool = False) -> None:
    """Make the names in ``folder`` durable. ``strict``: raise the ``OSError`` of a failed sync
    (a new segment's name must be on disk before a committed row names it), unless the file
    system cannot sync directories at all; otherwise errors are ignored (an unlink's sync)."""
    try:
        fd = os.open(folder, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)
    except OSError as exc:
        if strict and exc.errno not in _NO_DIR_SYNC:
            raise


def _lock(fd: int, path: Path) -> bool:
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        return False
    except OSError as exc:
        raise TraceStoreError(f"cannot lock segment {str(path)!r}: {exc}") from exc
    return True


class SegmentWriter:
    """The segment this store object appends to (see the module docstring). Not thread-safe:
    the store calls it under its write lock, inside a write transaction."""

    def __init__(self, folder: Path, roll_bytes: int = SEGMENT_BYTES, kind: SegmentKind = DOCUMENTS) -> None:
        self.folder = folder
        self.roll_bytes = roll_bytes
        self.kind = kind
        self.segment: int | None = None
        self.pos = 0
        self._fd = -1
        self._pid = os.getpid()
        self.rolled = False  # a segment was sealed since the caller last looked (compaction hint)
        self.used = False  # appended to (or allocated) since the caller last cleared it (``_write_tx``)
        self._end_sql = f"UPDATE {kind.table} SET bytes = ? WHERE id = ?"
        self._end_live_sql = f"UPDATE {kind.table} SET bytes = ?, live_bytes = live_bytes + ? WHERE id = ?"

    def _open(self, conn: sqlite3.Connection) -> None:
        self.close()
        cur = conn.execute(f"INSERT INTO {self.kind.table} (created_unix_nano) VALUES (?)", (time.time_ns(),))
        segment = int(cur.lastrowid or 0)
        path = segment_path(self.folder, segment, self.kind)
        try:
            try:
                fd = os.open(path, _OPEN_NEW, 0o644)
            except FileNotFoundError:
                self.folder.mkdir(parents=True, exist_ok=True)
                _fsync_dir(self.folder.parent, strict=True)  # the folder's own name is durable too
                fd = os.open(path, _OPEN_NEW, 0o644)
        except OSError as exc:
            raise TraceStoreError(f"cannot create segment {str(path)!r}: {exc}") from exc
        try:
            locked = _lock(fd, path)
            if locked:
                _fsync_dir(self.folder, strict=True)  # the file's name is durable before any row names it
        except OSError as exc:
            os.close(fd)
            raise TraceStoreError(f"cannot sync the folder of new segment {str(path)!r}: {exc}") from exc
        except BaseException:
            os.close(fd)
            raise
        if not locked:
            os.close(fd)
            raise TraceStoreError(f"segment {str(path)!r} is locked by another writer")
        self._fd, self.segment, self.pos = fd, segment, 0

    def _ready(self, conn: sqlite3.Connection) -> int:
        self.used = True
        if os.getpid() != self._pid:  # forked: the parent keeps its segment (and its lock)
            if self._fd >= 0:  # the child's copy of the descriptor: closing it keeps the parent's flock
                with contextlib.suppress(OSError):
                    os.close(self._fd)
            self._pid, self._fd, self.segment = os.getpid(), -1, None
        if self.segment is None or self.pos >= self.roll_bytes:
            self.rolled = self.rolled or self.segment is not None
            self._open(conn)
        assert self.segment is not None
        return self.segment

    def _write(self, parts: list[bytes]) -> None:
        total = sum(map(len, parts))
        try:
            written = os.writev(self._fd, parts)
            if written < total:  # short write (a signal, a full disk): finish it piecewise
                rest = memoryview(b"".join(parts))[written:]
                while rest:
                    rest = rest[os.write(self._fd, rest):]
        except OSError as exc:
            path = segment_path(self.folder, self.segment or 0, self.kind)
            self.close()  # the segment's tail is unknown now: start a new one next time
            raise TraceStoreError(f"cannot append to {str(path)!r}: {exc}") from exc
        self.pos += total

    def append_texts(self, conn: sqlite3.Connection, texts: list[str], *,
                     sync: bool) -> tuple[int, list[tuple[int, int, bytes]]]:
        """Append each text (UTF-8, then a newline); return (segment, [(offset, length, digest)]).
        One text at a time: its bytes are encoded, hashed and written while they are hot in the
        cache and freed before the next (a batch joined first costs more in page faults than the
        copy). ``sync``: ``fdatasync`` before returning. Records the segment's new end in
        ``segments`` (the caller's transaction)."""
        segment = self._ready(conn)
        out = []
        for text in texts:
            data = text.encode("utf-8")
            out.append((self.pos, len(data), digest(data)))
            self._write([data, b"\n"])
        self._finish(conn, sync)
        return segment, out

    def append(self, conn: sqlite3.Connection, chunks: list[bytes], *, sync: bool,
               live: int = 0) -> tuple[int, list[int]]:
        """Append ``chunks`` (each followed by a newline when the kind says so; already hashed by
        the caller) with as few ``writev`` calls as the system allows; return (segment, the offset
        of each chunk). ``live``: bytes to add to the segment's ``live_bytes`` (in the same
        statement as its new end). As :meth:`append_texts` otherwise."""
        segment = self._ready(conn)
        offsets = []
        pos = self.pos
        parts: list[bytes] = []
        if self.kind.newline:
            for chunk in chunks:
                offsets.append(pos)
                pos += len(chunk) + 1
                parts += (chunk, b"\n")
        else:
            for chunk in chunks:
                offsets.append(pos)
                pos += len(chunk)
            parts = chunks
        for k in range(0, len(parts), _IOV_MAX):
            self._write(parts[k:k + _IOV_MAX])
        self._finish(conn, sync, live)
        return segment, offsets

    def _finish(self, conn: sqlite3.Connection, sync: bool, live: int = 0) -> None:
        if sync:
            try:
                os.fdatasync(self._fd)
            except OSError as exc:
                path = segment_path(self.folder, self.segment or 0, self.kind)
                self.close()
                raise TraceStoreError(f"cannot sync {str(path)!r}: {exc}") from exc
        if live:
            conn.execute(self._end_live_sql, (self.pos, live, self.segment))
        else:
            conn.execute(self._end_sql, (self.pos, self.segment))

    def close(self) -> None:
        if self._fd >= 0 and os.getpid() == self._pid:
            with contextlib.suppress(OSError):
                os.close(self._fd)
        self._fd, self.segment, self.pos = -1, None, 0


def compact_segment(conn: sqlite3.Connection, writer: SegmentWriter, segment: int,
                    invalidate: str) -> tuple[int, int] | None:
    """Move the live texts of sealed ``segment`` into ``writer``'s segment (inside the caller's
    write transaction, which must commit durably before :func:`unlink_segment`); None when
    another writer holds it. Returns (texts moved, texts found corrupt and invalidated with the
    ``invalidate`` statement, whose parameters are trace id, segment, offset)."""
    folder = writer.folder
    path = segment_path(folder, segment)
    try:
        fd = os.open(path, _OPEN_READ)
    except FileNotFoundError:
        fd = -1
    except OSError as exc:
        raise TraceStoreError(f"cannot open segment {str(path)!r}: {exc}") from exc
    try:
        if fd >= 0 and not _lock(fd, path):
            return None
        rows = conn.execute(
            "SELECT trace_id, doc_offset, doc_length, doc_digest FROM traces WHERE doc_segment = ? ORDER BY doc_offset",
            (segment,)).fetchall()
        # invalidated rows need no live-bytes accounting: the segment's row is deleted below
        good, bad = [], []
        for tid, offset, length, expected in rows:
            try:
                if fd < 0:
                    raise DocumentError("missing")
                data = os.pread(fd, int(length), int(offset))
                if len(data) != length or digest(data) != bytes(expected):
                    raise DocumentError("torn")
                good.append((tid, int(offset), data, bytes(expected)))
            except (DocumentError, OSError):
                bad.append((tid, segment, int(offset)))
        if good:
            new_segment, offsets = writer.append(conn, [g[2] for g in good], sync=True)
            conn.execute("UPDATE segments SET live_bytes = live_bytes + ? WHERE id = ?",
                         (sum(len(g[2]) for g in good), new_segment))
            conn.executemany(
                "UPDATE traces SET doc_segment = ?, doc_offset = ? WHERE trace_id = ? AND doc_segment = ? "
                "AND doc_offset = ?",
                [(new_segment, off, tid, segment, old) for (tid, old, _d, _e), off in zip(good, offsets, strict=True)])
        if bad:
            conn.executemany(invalidate, bad)
        conn.execute("DELETE FROM segments WHERE id = ?", (segment,))
        return len(good), len(bad)
    finally:
        if fd >= 0:
            os.close(fd)


def unlink_segment(folder: Path, segment: int, kind: SegmentKind = DOCUMENTS) -> None:
    with contextlib.suppress(FileNotFoundError):
        os.unlink(segment_path(folder, segment, kind))
    _fsync_dir(folder)


def remove_orphans(conn: sqlite3.Connection, folder: Path, kind: SegmentKind = DOCUMENTS) -> int:
    """Delete segment files no ``segments`` row names (a compaction's old file after a crash, a
    segment whose allocating transaction never committed) and that nobody holds. Inside a write
    transaction (no allocation can be in flight)."""
    try:
        names = os.listdir(folder)
    except FileNotFoundError:
        return 0
    known = {int(r[0]) for r in conn.execute(f"SELECT id FROM {kind.table}")}
    removed = 0
    name_re = kind.name_re
    for name in names:
        m = name_re.match(name)
        if m is None or int(m.group(1)) in known:
            continue
        path = folder / name
        try:
            fd = os.open(path, _OPEN_READ)
        except OSError:
            continue
        try:
            if _lock(fd, path):
                os.unlink(path)
                removed += 1
        finally:
            os.close(fd)
    return removed


__all__ = [
    "COMPACT_BELOW",
    "DOCUMENTS",
    "FOLDER",
    "SPANS",
    "SegmentKind",
    "check_extent",
    "SEGMENT_BYTES",
    "DocumentError",
    "SegmentWriter",
    "compact_segment",
    "digest",
    "read_document",
    "remove_orphans",
    "segment_path",
    "unlink_segment",
]
