"""Rebuilt traces as stored: the document protocol, the trace-file policy, atomic file writes,
and the SQL side of the segment files (upsert, invalidation, recovery at open, compaction picks).

:class:`TraceDocumentLike` is what :meth:`TraceStore.put_documents` stores: a trace already
serialised (its ``Trace.to_json()`` text) with the few facts the ``traces`` table indexes;
``vauban_trace.rebuild.TraceDocument`` is one (``rebuild.document_of`` makes one from a ``Trace``).
:data:`TraceFiles` names the policy for the ``traces/<id>.json`` mirrors (see ``_db``), and
:func:`_write_atomic` writes a mirror (temporary file + rename, optionally fsync'd).
"""

from __future__ import annotations

import contextlib
import os
import sqlite3
import threading
from pathlib import Path
from typing import Literal, Protocol

from vauban_trace.store._segments import _fsync_dir, remove_orphans, segment_path

_OPEN_TMP = os.O_WRONLY | os.O_CREAT | os.O_TRUNC | getattr(os, "O_NOFOLLOW", 0) | getattr(os, "O_CLOEXEC", 0)


def _write_atomic(path: Path, text: str, *, sync: bool = True) -> None:
    """Write ``text`` to a temporary file next to ``path`` and rename it over ``path``.

    The temporary name is unique per process and thread (``.tmp-<name>.<pid>.<thread>``), so no
    random name has to be drawn; a leftover of a crashed process is truncated and reused, and a
    symlink in its place is refused (``O_NOFOLLOW``).
    """
    tmp = path.parent / f".tmp-{path.name}.{os.getpid()}.{threading.get_ident()}"
    try:
        fd = os.open(tmp, _OPEN_TMP, 0o644)
    except FileNotFoundError:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(tmp, _OPEN_TMP, 0o644)
    try:
        try:
            data = text.encode("utf-8")
            view = memoryview(data)
            while view:
                view = view[os.write(fd, view):]
            os.fchmod(fd, 0o644)  # whatever the umask, like the files written before
            if sync:
                os.fsync(fd)
        finally:
            os.close(fd)
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise
    if sync:
        _fsync_dir(path.parent)


TraceFiles = Literal["eager", "on_read"]


class TraceDocumentLike(Protocol):
    """A rebuilt trace already serialised (``vauban_trace.rebuild.TraceDocument`` is one)."""

    @property
    def trace_id(self) -> str: ...
    @property
    def json(self) -> str: ...
    @property
    def complete(self) -> bool: ...
    @property
    def service(self) -> str | None: ...
    @property
    def root_name(self) -> str | None: ...
    @property
    def start_unix_nano(self) -> int: ...
    @property
    def end_unix_nano(self) -> int: ...
    @property
    def span_count(self) -> int: ...


#: parameters, in order: trace id, version, now, segment, offset, length, digest, complete, service,
#: root name, start, duration, span count, version again (plain ``?`` only: numbered placeholders
#: bound from a sequence are deprecated since Python 3.12 and an error from 3.14)
_PUT_TRACE = (
    "INSERT INTO traces (trace_id, rebuilt_version, rebuilt_at_unix_nano, doc_segment, doc_offset, doc_length, "
    "doc_digest, complete, rb_service, rb_root_name, rb_start_unix_nano, rb_duration_s, rb_span_count) "
    "VALUES (?, COALESCE(?, 0), ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?) ON CONFLICT (trace_id) DO UPDATE SET "
    "rebuilt_version = COALESCE(?, traces.version), rebuilt_at_unix_nano = excluded.rebuilt_at_unix_nano, "
    "doc_segment = excluded.doc_segment, doc_offset = excluded.doc_offset, doc_length = excluded.doc_length, "
    "doc_digest = excluded.doc_digest, complete = excluded.complete, "
    "rb_service = COALESCE(excluded.rb_service, traces.service), rb_root_name = excluded.rb_root_name, "
    "rb_start_unix_nano = excluded.rb_start_unix_nano, rb_duration_s = excluded.rb_duration_s, "
    "rb_span_count = excluded.rb_span_count"
)

#: forget a rebuilt trace whose text is lost (parameters: trace id, segment, offset): it is pending
#: again (when it has raw spans) and no longer listed; the condition skips a row moved meanwhile
_INVALIDATE = (
    "UPDATE traces SET doc_segment = NULL, doc_offset = NULL, doc_length = NULL, doc_digest = NULL, "
    "rebuilt_version = NULL, rebuilt_at_unix_nano = NULL WHERE trace_id = ? AND doc_segment = ? AND doc_offset = ?"
)


def account(conn: sqlite3.Connection, trace_ids: list[str], segment: int | None, added: int) -> None:
    """Keep ``segments.live_bytes``: before the rows of ``trace_ids`` are pointed at new texts (or
    at none), the texts they point to now stop being live; ``added`` bytes become live in
    ``segment``. One grouped query per call (most traces of a collector pass are new)."""
    gone: dict[int, int] = {}
    for k in range(0, len(trace_ids), 500):
        chunk = trace_ids[k:k + 500]
        for seg, total in conn.execute(
                f"SELECT doc_segment, SUM(doc_length) FROM traces WHERE trace_id IN ({','.join('?' * len(chunk))}) "
                "AND doc_segment IS NOT NULL GROUP BY doc_segment", chunk):
            gone[int(seg)] = gone.get(int(seg), 0) + int(total)
    if segment is not None:
        gone[segment] = gone.get(segment, 0) - added
    conn.executemany("UPDATE segments SET live_bytes = live_bytes - ? WHERE id = ?",
                     [(n, seg) for seg, n in gone.items() if n])


def invalidate(conn: sqlite3.Connection, trace_id: str, segment: int, offset: int, length: int) -> bool:
    """Forget the text of ``trace_id`` at (``segment``, ``offset``) if its row still points there
    (the trace is pending again); whether it did."""
    if conn.execute(_INVALIDATE, (trace_id, segment, offset)).rowcount:
        conn.execute("UPDATE segments SET live_bytes = live_bytes - ? WHERE id = ?", (length, segment))
        return True
    return False


def recover(conn: sqlite3.Connection, folder: Path) -> int:
    """At open, inside a write transaction: rows pointing past the end of their segment file (or
    into a missing one: texts lost in a crash before they reached the disk) are invalidated, and
    segment files no row names are deleted. Returns the rows invalidated. Cheap: one ``stat`` per
    segment; a torn text inside a file's length is caught by the digest when it is read (or by
    ``TraceStore.verify_store``)."""
    lost = 0
    for segment, end in conn.execute("SELECT id, bytes FROM segments").fetchall():
        try:
            size = os.stat(segment_path(folder, int(segment))).st_size
        except FileNotFoundError:
            size = 0
        if size < int(end):
            lost += conn.execute(
                "UPDATE traces SET doc_segment = NULL, doc_offset = NULL, doc_length = NULL, doc_digest = NULL, "
                "rebuilt_version = NULL, rebuilt_at_unix_nano = NULL WHERE doc_segment = ? AND doc_offset + "
                "doc_length > ?", (int(segment), size)).rowcount
            conn.execute("UPDATE segments SET bytes = ? WHERE id = ?", (size, int(segment)))
            recount_live(conn, int(segment))
    remove_orphans(conn, folder)
    return lost


def recount_live(conn: sqlite3.Connection, segment: int) -> None:
    """Set ``segments.live_bytes`` of ``segment`` to the bytes its rows point to (inside a write
    transaction): after :func:`recover` invalidated rows, or a count found wrong by a verify."""
    conn.execute("UPDATE segments SET live_bytes = (SELECT COALESCE(SUM(doc_length), 0) FROM traces WHERE "
                 "doc_segment = segments.id) WHERE id = ?", (segment,))


def needs_recovery(conn: sqlite3.Connection, folder: Path) -> bool:
    """Whether :func:`recover` has anything to do (read-only check, so opening a healthy store
    takes no write lock)."""
    known = set()
    for segment, end in conn.execute("SELECT id, bytes FROM segments").fetchall():
        known.add(segment_path(folder, int(segment)).name)
        try:
            if os.stat(segment_path(folder, int(segment))).st_size < int(end):
                return True
        except FileNotFoundError:
            return True
    try:
        names = os.listdir(folder)
    except FileNotFoundError:
        return False
    return any(name.startswith("seg-") and name not in known for name in names)


def compaction_candidates(conn: sqlite3.Connection, threshold: float, skip: int | None) -> list[int]:
    """Segments (not ``skip``, the caller's own) whose live share is below ``threshold``, or that
    hold nothing live (also one a crash left empty)."""
    return [int(r[0]) for r in conn.execute(
        "SELECT id FROM segments WHERE id IS NOT ? AND (live_bytes < ? * bytes OR live_bytes <= 0) ORDER BY id",
        (skip, float(threshold)))]


__all__ = ["TraceDocumentLike", "TraceFiles", "account", "compaction_candidates", "invalidate", "needs_recovery", "recount_live",
           "recover"]
