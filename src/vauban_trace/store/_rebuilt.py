"""The rebuilt-trace half of :class:`~vauban_trace.store.TraceStore` (a mixin of ``_db``).

A rebuilt trace is a ``traces`` row (the summary columns ``list_traces`` serves) that points at its
Trace JSON in a segment file (``_segments``). :meth:`put_documents` appends the texts before the
row commit; :meth:`_document` reads a text back and checks its length and digest, and a text that
does not check out (lost or torn by a crash: ``put_documents`` commits without waiting for the disk
in the collector) makes its trace pending again, so the assembler rebuilds it from its raw spans,
which are durable; it is never served corrupt. ``traces/<id>.json`` files mirror the texts (see
``_db``'s ``trace_files``).

A mirror never contradicts the database, across processes too: with ``trace_files="on_read"``,
:meth:`RebuiltTraces.trace_json_file` writes a missing mirror inside a write transaction, once it
has seen that the row still names the text it read, and a put removes the mirrors of the traces
it stores inside its own write transaction, before the commit. Both hold the store's write lock
(SQLite's, which other processes share), so a put either finds the file and removes it or
commits before the file is written from its own text. Since no mirror appears while a put holds
the lock, the put lists ``traces/`` once (usually empty: nobody asked for a file) instead of
calling ``unlink`` for each trace, which cost the collector about half a CPU microsecond per
span; a folder holding many files is not listed, each mirror is unlinked as before.
"""

from __future__ import annotations

import contextlib
import logging
import os
import re
import sqlite3
import time
from collections.abc import Iterable
from pathlib import Path
from typing import TYPE_CHECKING, Any, cast

from vauban_trace._exceptions import TraceNotFoundError, TraceStoreError
from vauban_trace.contract import Trace
from vauban_trace.store._documents import (
    _INVALIDATE,
    _PUT_TRACE,
    TraceDocumentLike,
    TraceFiles,
    _write_atomic,
    account,
    compaction_candidates,
    invalidate,
)
from vauban_trace.store._records import TraceSummary, check_trace_id
from vauban_trace.store._segments import (
    COMPACT_BELOW,
    DocumentError,
    SegmentWriter,
    compact_segment,
    read_document,
    unlink_segment,
)
from vauban_trace.store._sql import pending_query

_log = logging.getLogger("vauban_trace.store")
#: :func:`_remove_mirrors` lists ``traces/`` up to this many entries (plus two per trace put) before
#: it falls back to one ``unlink`` per trace
_LIST_MIRRORS = 64


_CANONICAL_IDS = re.compile(r"(?:[0-9a-f]{32}\n)*")
_ZERO_ID = "0" * 32 + "\n"


def _trace_ids(docs: list[TraceDocumentLike]) -> list[str]:
    """The canonical trace id of each document (:func:`check_trace_id`, which raises for a bad
    one). Ids already canonical, as the rebuild makes them, are checked all at once: one match
    over the ids joined by newlines, which can only match at each id's place (33 characters per id,
    so no id holds a newline)."""
    ids = [doc.trace_id for doc in docs]
    try:
        joined = "\n".join(ids) + "\n"
    except TypeError:  # not all text: the check below names the culprit
        joined = ""
    # the length check: an id holding a newline would match as two lines, one line too many
    if (joined and len(joined) == 33 * len(ids) and _CANONICAL_IDS.fullmatch(joined) is not None
            and _ZERO_ID not in joined):
        return ids
    return [check_trace_id(tid, where="put_trace: trace.id") for tid in ids]


def _remove_mirrors(folder: str, tids: list[str]) -> None:
    """Remove ``traces/<id>.json`` of each of ``tids`` (an on-read put: the file would be stale).

    Called inside the put's write transaction, under the write lock that
    :meth:`RebuiltTraces.trace_json_file` also writes mirrors under (in any process), so one
    listing of the folder tells exactly which of them exist: usually none (nobody asked for a
    file), which costs one listing instead of an ``unlink`` per trace. A folder holding more files
    than is worth listing falls back to unlinking each."""
    limit = _LIST_MIRRORS + 2 * len(tids)
    present: set[str] = set()
    listed = True
    try:
        with os.scandir(folder) as entries:
            for entry in entries:
                present.add(entry.name)
                if len(present) > limit:
                    listed = False
                    break
    except FileNotFoundError:
        return
    except OSError:
        listed = False  # the unlinks below report the problem
    for tid in tids:
        name = tid + ".json"
        if listed and name not in present:
            continue
        path = os.path.join(folder, name)
        try:
            os.unlink(path)
        except FileNotFoundError:
            pass
        except OSError as exc:
            raise TraceStoreError(f"put_trace: cannot write {path!r}: {exc}") from exc


class RebuiltTraces:
    """Rebuilt traces: stored, read back, listed (see the module docstring)."""

    dir: Path
    db_path: Path
    trace_files: TraceFiles
    _folder: Path
    _segments: SegmentWriter

    if TYPE_CHECKING:  # given by TraceStore
        def _conn(self) -> sqlite3.Connection: ...
        def _write_tx(self, what: str, *, durable: bool = True) -> contextlib.AbstractContextManager[
            sqlite3.Connection]: ...
        def _read(self, sql: str, params: tuple[object, ...] = ()) -> list[tuple[Any, ...]]: ...

    def trace_json_path(self, trace_id: str) -> Path:
        """``<dir>/traces/<trace_id>.json`` (whether or not it exists)."""
        return self.dir / "traces" / f"{check_trace_id(trace_id)}.json"

    def put_trace(self, trace: Trace, *, version: int | None = None) -> Path:
        """Store a rebuilt trace (JSON in a segment, its row in the database, and as a file with
        ``trace_files="eager"``); return the file's path.

        ``version`` is the :attr:`PendingTrace.version` the trace was rebuilt from; spans that
        arrived after it keep the trace pending. Without it, the trace counts as rebuilt from
        everything stored now.
        """
        return self.put_traces([(trace, version)])[0]

    def trace_json_file(self, trace_id: str) -> Path | None:
        """The path of ``traces/<id>.json``, written from the database first if it is missing;
        None when the trace has not been rebuilt (see ``trace_files`` in the module docstring).

        The file is written under the store's write lock (a write transaction, so across processes
        too), once the trace's row is seen to still name the text read: :meth:`put_documents`
        removes mirrors under that lock, so a put either finds this file or commits after it is
        written, and a mirror never outlives the text it copies."""
        path = self.trace_json_path(trace_id)
        if path.is_file():
            return path
        tid = check_trace_id(trace_id)
        for _attempt in range(8):  # the text changed between the read and the lock: read it again
            try:
                data, _raw, expected = self._checked_document(tid)
            except TraceNotFoundError:
                return None
            if data is None:
                return None
            try:
                with self._write_tx("trace_json_file") as conn:
                    row = conn.execute("SELECT doc_digest FROM traces WHERE trace_id = ?", (tid,)).fetchone()
                    if row is None or row[0] is None:
                        return None  # forgotten meanwhile (its text was found broken)
                    if bytes(row[0]) != expected:
                        continue  # rebuilt again meanwhile
                    _write_atomic(path, data.decode("utf-8"), sync=False)
            except OSError as exc:
                raise TraceStoreError(f"cannot write {str(path)!r}: {exc}") from exc
            return path
        raise TraceStoreError(f"trace {tid}: its Trace JSON kept changing while {str(path)!r} was written")

    def put_traces(self, items: Iterable[tuple[Trace, int | None]], *, sync_files: bool = True) -> list[Path]:
        """Store several rebuilt traces in ONE database transaction (one segment append and sync,
        one commit and fsync).

        Each item is ``(trace, version)`` as for :meth:`put_trace`. Files (``trace_files="eager"``)
        are written atomically first; with ``sync_files=False`` they are not fsync'd (the segment
        copy, which :meth:`get_trace` reads, is still durable when this returns; after a power cut a
        file may be missing until the trace is stored again).
        """
        from vauban_trace.rebuild import document_of  # the same summary fields as the collector's documents

        docs = []
        for trace, version in items:
            if not isinstance(trace, Trace):
                raise TraceStoreError(f"put_trace: expected a Trace, got {type(trace).__name__}")
            docs.append((document_of(trace, None), version))
        self.put_documents(docs, sync_files=sync_files)
        return [self.trace_json_path(doc.trace_id) for doc, _version in docs]

    def put_documents(
        self, items: Iterable[tuple[TraceDocumentLike, int | None]], *, sync_files: bool = True, durable: bool = True
    ) -> int:
        """:meth:`put_traces` for traces already serialised (``rebuild_documents`` gives them):
        the JSON text is stored as is, so it MUST be the trace's ``Trace.to_json()``. Returns how
        many traces were stored (:meth:`trace_json_path` / :meth:`trace_json_file` give the files).

        ``durable=False`` commits without waiting for the disk (see ``_write_tx``): for a caller
        that can redo the work, like the collector's assembler, whose traces stay pending until
        this commit lands, so a commit undone by a power cut is rebuilt from the raw spans (which
        are durable) after the restart. Nothing acknowledged to a client depends on it."""
        pairs = items if isinstance(items, list) else list(items)
        if not pairs:
            return 0
        docs = [doc for doc, _version in pairs]
        tids = _trace_ids(docs)
        eager = self.trace_files == "eager"
        folder = os.path.join(self.dir, "traces")
        if eager:
            for doc, tid in zip(docs, tids, strict=True):
                path = os.path.join(folder, tid + ".json")
                try:
                    _write_atomic(Path(path), doc.json, sync=sync_files)
                except OSError as exc:
                    raise TraceStoreError(f"put_trace: cannot write {path!r}: {exc}") from exc
        texts = [doc.json for doc in docs]
        versions = [None if version is None else int(version) for _doc, version in pairs]
        for tid, text in zip(tids, texts, strict=True):
            if not isinstance(text, str):
                raise TraceStoreError(f"put_trace: trace {tid}: the Trace JSON must be text, got {type(text).__name__}")
        now = time.time_ns()
        # a failure rolls back and seals the segment (``_write_tx``): the bytes written are dead
        with self._write_tx("put_trace", durable=durable) as conn:
            if not eager:  # a stale mirror would contradict the database; trace_json_file rewrites it
                _remove_mirrors(folder, tids)
            segment, refs = self._segments.append_texts(conn, texts, sync=durable)
            params = [
                (tid, v, now, segment, off, length, dig, int(doc.complete), doc.service, doc.root_name,
                 doc.start_unix_nano, max(0, doc.end_unix_nano - doc.start_unix_nano) / 1e9, doc.span_count, v)
                for doc, v, tid, (off, length, dig) in zip(docs, versions, tids, refs, strict=True)
            ]
            account(conn, tids, segment, sum([ref[1] for ref in refs]))
            conn.executemany(_PUT_TRACE, params)
        if self._segments.rolled:
            self._segments.rolled = False
            self.compact_documents()
        return len(docs)

    def compact_documents(self, threshold: float = COMPACT_BELOW) -> int:
        """Compact every sealed segment whose live share is under ``threshold`` (see ``_segments``):
        its live texts are copied into this object's segment, the rows moved in one durable commit,
        then the file is deleted. Segments another writer holds are skipped. Returns how many
        segments were removed. :meth:`put_documents` runs it whenever it rolls a segment."""
        removed = 0
        try:
            candidates = compaction_candidates(self._conn(), threshold, self._segments.segment)
        except sqlite3.Error as exc:
            raise TraceStoreError(f"reading {str(self.db_path)!r}: {exc}") from exc
        for segment in candidates:
            with self._write_tx("compact_documents") as conn:  # a failure seals the writer's segment
                moved = compact_segment(conn, self._segments, segment, _INVALIDATE)
            if moved is None:
                continue
            unlink_segment(self._folder, segment)
            removed += 1
            if moved[1]:
                _log.warning("vauban-trace store: compacting segment %d found %d broken text(s); those traces "
                             "are pending again", segment, moved[1])
        return removed

    def _document(self, trace_id: str) -> tuple[bytes | None, int]:
        """(the stored Trace JSON of ``trace_id`` checked against its digest, or None when it is
        not rebuilt; its raw span count). A text that cannot be read back intact (lost or torn in
        a crash) makes the trace pending again (:func:`_documents.invalidate`): it is rebuilt from
        its raw spans, never served corrupt. Raises :class:`TraceNotFoundError` for an unknown id."""
        data, raw, _digest = self._checked_document(trace_id)
        return data, raw

    def _checked_document(self, trace_id: str) -> tuple[bytes | None, int, bytes]:
        """:meth:`_document` and the digest the text was checked against (b"" without a text)."""
        tid = check_trace_id(trace_id)
        for attempt in (0, 1):
            rows = self._read("SELECT doc_segment, doc_offset, doc_length, doc_digest, raw_span_count FROM traces "
                              "WHERE trace_id = ?", (tid,))
            if not rows:
                raise TraceNotFoundError(f"no trace {tid} in {str(self.dir)!r}")
            segment, offset, length, expected, raw = rows[0]
            if segment is None:
                return None, int(raw), b""
            try:
                return (read_document(self._folder, int(segment), int(offset), int(length), bytes(expected)), int(raw),
                        bytes(expected))
            except DocumentError as exc:
                if attempt == 0:
                    continue  # a compaction may have moved the text since the row was read
                try:
                    with self._write_tx("get_trace") as conn:
                        invalidate(conn, tid, int(segment), int(offset), int(length))
                except TraceStoreError as write_exc:  # a read-only store: still never serve the text
                    _log.warning("vauban-trace store: trace %s: %s; cannot mark it pending: %s", tid, exc, write_exc)
                else:
                    _log.warning("vauban-trace store: trace %s: %s; it is pending again (rebuilt from its raw "
                                 "spans)", tid, exc)
        return None, int(raw), b""

    def get_trace(self, trace_id: str) -> Trace:
        """The rebuilt trace ``trace_id``; :class:`TraceNotFoundError` says why it is absent."""
        return Trace.from_json(self.get_trace_json(trace_id))

    def get_trace_json(self, trace_id: str) -> str:
        """The stored ``Trace.to_json()`` text of ``trace_id``, digest-checked, without parsing it
        (:meth:`get_trace` parses it); :class:`TraceNotFoundError` says why it is absent."""
        data, raw = self._document(trace_id)
        if data is None:
            raise TraceNotFoundError(
                f"trace {check_trace_id(trace_id)} has {raw} raw span(s) in {str(self.dir)!r} but has not been "
                "rebuilt yet (it is rebuilt once complete)"
            )
        return data.decode("utf-8")

    def last_trace(self) -> Trace:
        """The rebuilt trace that started last."""
        for _ in range(8):  # a text found broken makes its trace pending: take the next one
            rows = self._read(
                "SELECT trace_id FROM traces WHERE doc_segment IS NOT NULL "
                "ORDER BY rb_start_unix_nano DESC, rebuilt_at_unix_nano DESC LIMIT 1"
            )
            if not rows:
                break
            data, _raw = self._document(str(rows[0][0]))
            if data is not None:
                return Trace.from_json(data.decode("utf-8"))
        raise TraceNotFoundError(f"no rebuilt traces in {str(self.dir)!r} yet")

    def list_traces(
        self, service: str | None = None, since_unix_nano: int | None = None, limit: int | None = 20
    ) -> list[TraceSummary]:
        """Rebuilt traces, newest start first, optionally of one service / started since a time."""
        sql = (
            "SELECT trace_id, rb_service, rb_root_name, rb_start_unix_nano, rb_duration_s, rb_span_count, "
            "complete FROM traces WHERE doc_segment IS NOT NULL"
        )
        params: list[object] = []
        if service is not None:
            sql += " AND rb_service = ?"
            params.append(service)
        if since_unix_nano is not None:
            sql += " AND rb_start_unix_nano >= ?"
            params.append(int(since_unix_nano))
        sql += " ORDER BY rb_start_unix_nano DESC, rebuilt_at_unix_nano DESC"
        if limit is not None:
            if limit < 0:
                raise TraceStoreError(f"list_traces: limit must be >= 0 or None, got {limit}")
            sql += " LIMIT ?"
            params.append(int(limit))
        return [
            TraceSummary(
                trace_id=str(r[0]), service=r[1], root_name=r[2], start_unix_nano=int(r[3] or 0),
                duration_s=float(r[4] or 0.0), span_count=int(r[5] or 0), complete=bool(r[6]),
            )
            for r in self._read(sql, tuple(params))
        ]

    def pending_versions(
        self,
        *,
        limit: int | None = None,
        received_by: int | None = None,
        rootless_received_by: int | None = None,
    ) -> list[tuple[str, int]]:
        """``(trace id, version)`` of each trace :meth:`TraceStore.pending_traces` lists with the
        same arguments, in the same order, without making a :class:`PendingTrace` of each (the
        collector's assembler needs no more: a record costs more than the query's row)."""
        sql, params = pending_query("trace_id, version", limit=limit, received_by=received_by,
                                    rootless_received_by=rootless_received_by)
        return cast("list[tuple[str, int]]", self._read(sql, params))  # rows of (TEXT PRIMARY KEY, INTEGER NOT NULL)

    def trace_count(self) -> int:
        """Number of rebuilt traces stored."""
        return int(self._read("SELECT COUNT(*) FROM traces WHERE doc_segment IS NOT NULL")[0][0])

__all__ = ["RebuiltTraces"]
