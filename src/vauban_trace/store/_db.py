"""The trace database: raw OTLP spans (durable, idempotent) and rebuilt traces.

Layout of a store directory::

    <dir>/traces.sqlite               span batch rows + per-trace bookkeeping + rebuilt-trace rows (WAL)
    <dir>/spans/seg-<id>.spans        raw span batches (``_batch`` blobs), appended and synced (schema 5)
    <dir>/documents/seg-<id>.jsonl    rebuilt Trace JSON, appended (``_segments``; schema 4)
    <dir>/blobs/                      LocalArtifactStore of artifact blobs
    <dir>/traces/<trace_id>.json      rebuilt traces as files (written atomically)

The raw spans (their batches in the span segments, the rows naming them in the database) are the
durable truth. A rebuilt trace is a ``traces`` row (its
summary, and where its Trace JSON lies in a segment file, with the text's BLAKE3 digest) plus the
text itself; every read checks length and digest, and a text lost or torn by a crash makes its
trace pending again, to be rebuilt from its raw spans (``_rebuilt``). At open, rows pointing past
the end of their segment (or into a missing one) are made pending the same way, and segment
files no row names are deleted. The ``traces/<id>.json`` file mirrors the text. With
``trace_files="eager"`` (the default) every put writes the file; with ``"on_read"`` (the
collector's default: creating one file per trace costs more than rebuilding the trace) a put only
removes a stale file, and :meth:`TraceStore.trace_json_file` writes it from the segment the first
time somebody asks for it.

Raw spans are keyed by (trace_id, span_id). Each is the serialized protobuf of a one-span
``ResourceSpans`` (its resource, its scope, the span), so :meth:`TraceStore.spans_for` can regroup
a trace's spans into an OTLP ``TracesData``. They are stored per trace and write: one
``span_batches`` row names the batch holding every span of one trace that one call stored
(``_batch`` encodes them, the envelope once per batch), so a write of ~16 spans per trace costs
SQLite one small row and one index entry instead of ~16; a later batch's copy of a span id
replaces an earlier one (see ``_ingest``). Since schema 5 the batch blobs live in span segment
files (``_rawspans``): the row holds segment, offset, length and BLAKE3 digest, and the blobs of
a call are appended with one ``writev`` and ``fdatasync``-ed BEFORE the transaction that inserts
their rows commits; SQLite then writes ~60 bytes per batch instead of the blob (no overflow pages,
WAL frames or checkpoint copies of the spans: ``TraceStore.ingest_parts`` went from about 4.7 to
3.3 CPU µs per span in ``bench/collector_steps.py``, read-back from 1.4 to 2.1 for the digest check). Every read checks length and digest; a batch
that fails raises :class:`TraceStoreError` naming the trace, batch and segment (the spans are
lost: raw spans have no other copy). Span segments whose batches were mostly merged away
(``_ingest``'s ``COMPACT_AT``) are compacted when the writer rolls a segment, or by
:meth:`TraceStore.compact_spans`. :meth:`TraceStore.add_spans` runs one
transaction per call and returns once it is committed with ``synchronous=FULL`` (and the batches
synced before it): a process killed right after the call loses nothing. A re-sent identical span counts as a duplicate and changes
nothing; a span with the same ids and different content (an updated end time, more events)
replaces the stored one.

Per trace the store keeps what an assembler needs to decide completeness: first and last
received times, whether a root span (no parent) was seen, the service (resource
``service.name``), root span name and start, and a ``version`` bumped on every change of the
trace's raw spans. :meth:`TraceStore.pending_traces` lists traces changed since their last
:meth:`TraceStore.put_trace`.

Threads share a store object (one SQLite connection per thread); processes share the directory
(SQLite locking with a busy timeout).
"""

from __future__ import annotations

import contextlib
import logging
import os
import sqlite3
import threading
import time
import weakref
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any

from google.protobuf.message import DecodeError
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest
from opentelemetry.proto.trace.v1.trace_pb2 import ResourceSpans, TracesData

from vauban_trace._exceptions import TraceStoreError
from vauban_trace.artifacts import LocalArtifactStore
from vauban_trace.store._documents import TraceFiles, needs_recovery, recover
from vauban_trace.store._ingest import (
    SpanRow,
    SpanSnapshot,
    extract_rows,
    snapshot_bytes,
    store_rows,
    stored_rows,
)
from vauban_trace.store._maintenance import StoreMaintenance
from vauban_trace.store._rawspans import (
    RawSpanError,
    SpanSegments,
    compaction_candidates,
    hold_segment,
    move_batches,
    orphans_present,
    read_live,
    short_segments,
)
from vauban_trace.store._rebuilt import RebuiltTraces
from vauban_trace.store._records import IngestResult, PendingTrace, check_trace_id
from vauban_trace.store._segments import (
    COMPACT_BELOW,
    FOLDER,
    SPANS,
    SegmentWriter,
    remove_orphans,
    unlink_segment,
)
from vauban_trace.store._split import CutRequest, split_rows
from vauban_trace.store._sql import connect, initialise, pending_query

_log = logging.getLogger("vauban_trace.store")
#: every open store object of this process: a forked child gets fresh locks for each (below)
_OPEN_STORES: weakref.WeakSet[TraceStore] = weakref.WeakSet()


def _fresh_locks_in_child() -> None:
    """After ``fork``, in the child: a lock another thread of the parent held (an exporter thread
    inside a write, a reader inside a ``pread``) stays held forever in the child's copy, so every
    store object gets new ones (the child starts its own connections and segments anyway)."""
    for store in list(_OPEN_STORES):
        store._write_lock = threading.Lock()
        store._conns_lock = threading.Lock()
        store._spans.after_fork()


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_fresh_locks_in_child)


class TraceStore(RebuiltTraces, StoreMaintenance):
    """A trace database in a directory (created if missing). See the module docstring."""

    def __init__(
        self,
        directory: str | os.PathLike[str],
        *,
        busy_timeout_s: float = 30.0,
        trace_files: TraceFiles = "eager",
    ) -> None:
        if trace_files not in ("eager", "on_read"):
            raise TraceStoreError(f"trace_files must be 'eager' or 'on_read', got {trace_files!r}")
        self.trace_files: TraceFiles = trace_files
        self.dir = Path(directory).expanduser()
        try:
            self.dir.mkdir(parents=True, exist_ok=True)
            (self.dir / "traces").mkdir(exist_ok=True)
        except OSError as exc:
            raise TraceStoreError(f"cannot create trace store directory {str(self.dir)!r}: {exc}") from exc
        self.db_path = self.dir / "traces.sqlite"
        self.busy_timeout_s = busy_timeout_s
        self._local = threading.local()
        self._conns: list[sqlite3.Connection] = []
        self._conns_lock = threading.Lock()
        # write transactions of this object's threads queue here, not in SQLite's busy handler,
        # which sleeps 1-100 ms between retries (other processes still meet that handler)
        self._write_lock = threading.Lock()
        self._pid = os.getpid()
        self._closed = False
        self._blobs: LocalArtifactStore | None = None
        self._folder = self.dir / FOLDER
        self._segments = SegmentWriter(self._folder)
        self._span_folder = self.dir / SPANS.folder
        self._spans = SpanSegments(self._span_folder)
        _OPEN_STORES.add(self)
        #: rebuilt traces this open found lost in a crash and made pending (``_documents.recover``)
        self.recovered_at_open = 0
        initialise(self._conn(), self.db_path)
        if needs_recovery(self._conn(), self._folder) or orphans_present(self._conn(), self._span_folder):
            with self._write_tx("opening the store") as conn:
                lost = recover(conn, self._folder)
                remove_orphans(conn, self._span_folder, SPANS)
            self.recovered_at_open = lost
            if lost:
                _log.warning("vauban-trace store: %d rebuilt trace(s) lost their Trace JSON in a crash; they are "
                             "pending again (rebuilt from their raw spans)", lost)
        for seg, end, size in short_segments(self._conn(), self._span_folder):
            _log.error("vauban-trace store: span segment %s %s, its committed end is %d: raw spans are lost "
                       "(`vauban-trace store verify` lists the traces)", self._spans.path(seg).name,
                       "is missing" if size is None else f"holds {size} bytes", end)

    def __repr__(self) -> str:
        return f"TraceStore({str(self.dir)!r})"

    # -- connections -----------------------------------------------------------------------
    def _conn(self) -> sqlite3.Connection:
        if self._closed:
            raise TraceStoreError(f"trace store {str(self.dir)!r} is closed")
        if os.getpid() != self._pid:  # forked: never reuse the parent's connections
            self._pid = os.getpid()
            self._local = threading.local()
            with self._conns_lock:
                self._conns = []
        conn: sqlite3.Connection | None = getattr(self._local, "conn", None)
        if conn is None:
            conn = connect(self.db_path, busy_timeout_s=self.busy_timeout_s)
            self._local.conn = conn
            with self._conns_lock:
                self._conns.append(conn)
        return conn

    @contextlib.contextmanager
    def _write_tx(self, what: str, *, durable: bool = True) -> Iterator[sqlite3.Connection]:
        """One write transaction under the in-process write lock. ``durable=False`` commits
        without syncing the WAL (``synchronous=NORMAL`` for this commit only): the commit survives
        a crash of the process, but a power cut before the next synced commit or checkpoint may
        undo it, whole (the database stays consistent: SQLite's WAL guarantee)."""
        conn = self._conn()
        with self._write_lock:
            if not durable:
                conn.execute("PRAGMA synchronous = NORMAL")
            try:
                conn.execute("BEGIN IMMEDIATE")
            except sqlite3.Error as exc:
                raise TraceStoreError(f"{what}: cannot start a transaction on {str(self.db_path)!r}: {exc}") from exc
            writers = (self._segments, self._spans.writer)
            for writer in writers:
                writer.used = False
            try:
                yield conn
                conn.execute("COMMIT")
            except BaseException as exc:
                # rolled back: a segment allocated in this transaction has no row any more (its id may
                # be handed out again) and what was appended is dead or of unknown fate (a failed
                # write or sync), so a writer used in it never appends to its segment again. Sealed
                # HERE, under the write lock and before the rollback frees the id: a thread waiting
                # for the lock must never write to it, and a close after the lock is released could
                # close another thread's new segment mid-write. A writer the transaction did not use
                # keeps its segment (a write failing every retry must not leave a file per retry)
                for writer in writers:
                    if writer.used:
                        writer.close()
                if conn.in_transaction:
                    try:
                        conn.execute("ROLLBACK")
                    except sqlite3.Error as failed:  # the first error stays the one raised
                        exc.add_note(f"{what}: the rollback failed too: {failed}")
                if isinstance(exc, sqlite3.Error):
                    raise TraceStoreError(f"{what}: {str(self.db_path)!r}: {exc}") from exc
                raise
            finally:
                if not durable:
                    conn.execute("PRAGMA synchronous = FULL")

    def _read(self, sql: str, params: tuple[object, ...] = ()) -> list[tuple[Any, ...]]:
        try:
            return list(self._conn().execute(sql, params).fetchall())
        except sqlite3.Error as exc:
            raise TraceStoreError(f"reading {str(self.db_path)!r}: {exc}") from exc

    def close(self) -> None:
        """Close every connection this object opened (the store can no longer be used)."""
        with self._write_lock:
            self._segments.close()  # seals the segment (its lock goes with the file descriptor)
            self._spans.close()
        self._closed = True
        with self._conns_lock:
            conns, self._conns = self._conns, []
        for conn in conns:
            with contextlib.suppress(sqlite3.Error):
                conn.close()

    def __enter__(self) -> TraceStore:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    @property
    def blobs(self) -> LocalArtifactStore:
        """The artifact blob store at ``<dir>/blobs``."""
        if self._blobs is None:
            self._blobs = LocalArtifactStore(self.dir / "blobs")
        return self._blobs

    # -- raw spans -------------------------------------------------------------------------
    def add_spans(self, request: ExportTraceServiceRequest | TracesData | Iterable[ResourceSpans]) -> tuple[int, int]:
        """Store every span of ``request``; return (accepted, duplicates). Durable on return.

        Spans with malformed ids are skipped (logged; :meth:`ingest` reports them).
        """
        result = self.ingest(request)
        return result.accepted, result.duplicates

    def ingest(
        self, request: ExportTraceServiceRequest | TracesData | Iterable[ResourceSpans], *, snapshots: bool = False
    ) -> IngestResult:
        """Like :meth:`add_spans`, also reporting rejected spans and the trace ids touched.

        With ``snapshots``, :attr:`IngestResult.snapshots` maps every trace that had no stored span
        before this call to a :class:`SpanSnapshot` whose ``data()`` is :meth:`spans_for_bytes` of it
        as committed (its version is then 1), built from the spans in hand instead of read back: a caller that rebuilds soon (the collector's
        assembler) can skip the read-back while the trace's version is still 1.
        """
        if isinstance(request, (bytes, bytearray, memoryview, str)):
            raise TraceStoreError("add_spans: expected an ExportTraceServiceRequest or TracesData message, got raw data"
                                  " (ingest_parts takes serialized requests)")
        return self.ingest_parts([request], snapshots=snapshots)

    def ingest_parts(
        self,
        parts: Iterable[CutRequest | bytes | ExportTraceServiceRequest | TracesData | Iterable[ResourceSpans]],
        *,
        snapshots: bool = False,
    ) -> IngestResult:
        """:meth:`ingest` of several requests in ONE transaction (group commit).

        A part may also be a serialized ``ExportTraceServiceRequest`` / ``TracesData`` that the
        caller already decoded successfully (the collector passes request bodies): its rows are
        then cut straight from the bytes by the C splitter when it is built and the bytes are in
        canonical form, which gives the same rows as decoding them (see ``_split``); a
        :class:`CutRequest` (from :func:`cut_request`) brings its rows already cut.
        """
        rows: list[SpanRow] = []
        problems: list[str] = []
        for part in parts:
            if isinstance(part, CutRequest):
                rows.extend(part.rows)
                continue
            if isinstance(part, (bytes, bytearray, memoryview)):
                data = bytes(part)
                cut = split_rows(data)
                if cut is not None:
                    rows.extend(cut)
                    continue
                try:
                    part = ExportTraceServiceRequest.FromString(data)
                except DecodeError as exc:
                    raise TraceStoreError(f"add_spans: the request could not be decoded: {exc}") from None
            elif isinstance(part, str):
                raise TraceStoreError("add_spans: expected an ExportTraceServiceRequest or TracesData message, got text")
            if isinstance(part, (ExportTraceServiceRequest, TracesData)):
                resource_spans: Iterable[ResourceSpans] = part.resource_spans
            else:
                resource_spans = part
            part_rows, part_problems = extract_rows(resource_spans)
            rows.extend(part_rows)
            problems.extend(part_problems)
        return self._ingest_rows(rows, problems, snapshots)

    def _ingest_rows(self, rows: list[SpanRow], problems: list[str], snapshots: bool) -> IngestResult:
        if problems:
            _log.warning("vauban-trace store: rejected %d span(s): %s", len(problems), "; ".join(problems[:5]))
        accepted = duplicates = 0
        touched: list[str] = []
        fresh: dict[str, SpanSnapshot] | None = {} if snapshots else None
        if rows:
            now = time.time_ns()
            # a failure rolls back and seals the span segment (``_write_tx``): what was written is dead
            with self._write_tx("add_spans") as conn:
                accepted, duplicates, touched = store_rows(conn, rows, now, self._spans, fresh)
            if self._spans.writer.rolled:
                self._spans.writer.rolled = False
                try:
                    self.compact_spans()
                except TraceStoreError as exc:  # the spans are committed: report, never fail the write
                    _log.warning("vauban-trace store: compacting span segments failed: %s", exc)
        return IngestResult(
            snapshots=fresh or {},
            accepted=accepted,
            duplicates=duplicates,
            rejected=len(problems),
            problems=tuple(problems),
            trace_ids=tuple(touched),
        )

    def spans_for(self, trace_id: str) -> TracesData:
        """Every raw span stored for ``trace_id``, regrouped by resource and scope (empty if none).

        Spans come in start-time order (ties: span id) inside their resource/scope group.
        """
        data: TracesData = TracesData.FromString(self.spans_for_bytes(trace_id))
        return data

    def spans_for_bytes(self, trace_id: str) -> bytes:
        """:meth:`spans_for` as a serialized ``TracesData`` (what ``rebuild_traces`` also accepts)."""
        return snapshot_bytes(list(self._stored_rows(trace_id).values()))

    def _stored_rows(self, trace_id: str) -> dict[str, SpanRow]:
        """Raises :class:`TraceStoreError` (a ``RawSpanError``) when a batch is damaged."""
        tid = check_trace_id(trace_id)
        try:
            try:
                return stored_rows(self._conn(), tid, self._spans)
            except RawSpanError:  # a compaction in another process may have moved a batch: look again
                return stored_rows(self._conn(), tid, self._spans)
        except sqlite3.Error as exc:
            raise TraceStoreError(f"reading {str(self.db_path)!r}: {exc}") from exc

    def compact_spans(self, threshold: float = COMPACT_BELOW) -> int:
        """Compact every sealed span segment whose live share is under ``threshold`` (batches
        merged away by ``_ingest``): its rows are read without the write lock, its live batches
        checked, copied into this object's span segment and synced, the rows moved in one short
        durable commit, then the file is deleted (``_rawspans``).
        Segments another writer holds, and segments holding a damaged batch (logged; ``verify``
        reports them), are skipped. Returns how many segments were removed. Run whenever the
        span writer rolls a segment."""
        removed = 0
        try:
            candidates = compaction_candidates(self._conn(), threshold, self._spans.writer.segment)
        except sqlite3.Error as exc:
            raise TraceStoreError(f"reading {str(self.db_path)!r}: {exc}") from exc
        for segment in candidates:
            fd = hold_segment(self._spans, segment)
            if fd is None:
                continue  # a writer (or another compaction) holds it
            try:
                # a read snapshot, no write lock: the writers go on during the scan and the reads
                rows = [(int(a), int(b), int(c), bytes(d)) for a, b, c, d in self._read(
                    "SELECT id, off, len, digest FROM span_batches WHERE seg = ? ORDER BY off", (segment,))]
                good, bad = read_live(self._spans, segment, fd, rows)
                if bad:
                    _log.error("vauban-trace store: span segment %s holds %d damaged span batch(es); it is not "
                               "compacted (`vauban-trace store verify` lists them)", self._spans.path(segment).name,
                               bad)
                    continue
                with self._write_tx("compact_spans") as conn:  # a failure seals the writer's segment
                    move_batches(conn, self._spans, segment, good)
            finally:
                if fd >= 0:
                    os.close(fd)
            self._spans.forget(segment)
            unlink_segment(self._span_folder, segment, SPANS)
            removed += 1
        return removed

    def raw_span_count(self, trace_id: str) -> int:
        """How many raw spans are stored for ``trace_id``."""
        return len(self._stored_rows(trace_id))

    def pending_count(self) -> int:
        """How many traces :meth:`pending_traces` would list (without building them)."""
        return int(self._read(
            "SELECT COUNT(*) FROM traces WHERE version > 0 AND (rebuilt_version IS NULL OR rebuilt_version < version)"
        )[0][0])

    def pending_traces(
        self,
        *,
        limit: int | None = None,
        received_by: int | None = None,
        rootless_received_by: int | None = None,
    ) -> list[PendingTrace]:
        """Traces whose raw spans changed after their last rebuild, oldest activity first.

        ``received_by`` (unix ns): only traces whose last span arrived at or before it;
        ``rootless_received_by``: a trace without a root span only if its last span arrived at
        or before this one. An assembler passes ``now - quiet period`` and ``now - incomplete
        after`` and gets exactly the traces it may rebuild, found by a range scan of the pending
        index instead of a listing of everything pending (which, under a long quiet period,
        holds many traces not due yet).
        """
        sql, params = pending_query(
            "trace_id, version, rebuilt_version, raw_span_count, has_root, service, root_name, "
            "first_received_unix_nano, last_received_unix_nano",
            limit=limit, received_by=received_by, rootless_received_by=rootless_received_by,
        )
        return [
            PendingTrace(
                trace_id=str(r[0]), version=int(r[1]), rebuilt_version=None if r[2] is None else int(r[2]),
                span_count=int(r[3]), has_root=bool(r[4]), service=r[5], root_name=r[6],
                first_received_unix_nano=int(r[7]), last_received_unix_nano=int(r[8]),
            )
            for r in self._read(sql, params)
        ]

    def trace_ids_touched_since(self, since_unix_nano: int) -> list[str]:
        """Ids of traces that received raw spans at or after ``since_unix_nano`` (wall clock)."""
        rows = self._read(
            "SELECT trace_id FROM traces WHERE last_received_unix_nano >= ? ORDER BY last_received_unix_nano",
            (int(since_unix_nano),),
        )
        return [str(r[0]) for r in rows]



__all__ = ["TraceStore"]
