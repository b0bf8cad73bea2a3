"""Schema migrations 2 -> 3 (``spans`` becomes ``span_batches``), 3 -> 4 (Trace JSON into
segments) and 4 -> 5 (span batch blobs into span segments).

:func:`migrate_spans_to_batches` runs inside ``_sql.initialise``'s transaction. It reads the v2
``spans`` rows trace by trace in rowid order (insertion order), turns each payload (a one-span
``ResourceSpans``) back into its envelope and span field, writes ONE batch per trace (received
time: the latest of its spans) and drops ``spans``. Payloads are parsed at the wire level
(:func:`_wire.fields`) and re-wrapped in the canonical field order, which is exactly how
``spans_for_bytes`` regrouped them before, so it returns the same bytes after the migration. A
payload that does not hold exactly one span in exactly one ``ScopeSpans`` (no vauban-trace
version wrote one) stops the migration with a :class:`TraceStoreError` naming the trace and span;
the transaction is rolled back and the file keeps its version-2 contents.

:func:`migrate_documents_to_segments` (3 -> 4) builds the version-4 ``traces`` table beside the old
one, copies every row in rowid order, appends each stored ``trace_json`` text to a new segment
file (``_segments``; rolled at its size) and points the row at it, ``fdatasync``s the segments
before the transaction commits, then drops the old table and renames the new one. A crash before
the commit leaves the version-3 file as it was (segment files no row names are deleted at the
next open).

:func:`migrate_batches_to_segments` (4 -> 5) builds the version-5 ``span_batches`` table beside the
old one, appends every batch's blob (in id order) to new span segment files (``_rawspans``; rolled
at their size), ``fdatasync``s each append, inserts the row with the same id, segment, offset,
length and BLAKE3 digest, then drops the old table and renames the new one, all in the open's one
transaction: the segments are on disk before the commit that names them, and a crash before it
leaves the version-4 file as it was (the segment files, which no row names, are deleted at the
next open; the migration then runs again).
"""

from __future__ import annotations

import sqlite3
from pathlib import Path

from vauban_trace._exceptions import TraceStoreError
from vauban_trace.store._batch import encode_batch
from vauban_trace.store._rows import SpanRow
from vauban_trace.store._segments import FOLDER, SPANS, SegmentWriter, digest
from vauban_trace.store._wire import envelope, split_resource_spans, wrap_span

_INSERT = "INSERT INTO span_batches (trace_id, received_unix_nano, span_count, spans) VALUES (?,?,?,?)"


def _split_payload(tid: str, sid: str, payload: bytes) -> tuple[tuple[bytes, ...], bytes]:
    """(envelope, serialized span) of a stored one-span ResourceSpans."""
    resource, rs_schema, groups = split_resource_spans(payload)
    spans = [span for _scope, _schema, group in groups for span in group]
    if len(groups) != 1 or len(spans) != 1:
        raise TraceStoreError(
            f"migrating to schema 3: span {sid} of trace {tid}: the stored payload holds {len(spans)} span(s) in "
            f"{len(groups)} ScopeSpans (expected one span in one ScopeSpans)"
        )
    scope, ss_schema, _group = groups[0]
    return envelope(resource, rs_schema, scope, ss_schema), spans[0]


def migrate_spans_to_batches(conn: sqlite3.Connection, schema: str) -> None:
    """Create the v3 tables (``schema``), move every v2 span into per-trace batches, drop ``spans``."""
    for statement in schema.split(";"):
        if statement.strip():
            conn.execute(statement)
    current: str | None = None
    rows: list[SpanRow] = []
    received = 0
    envs: dict[tuple[bytes, ...], tuple[bytes, ...]] = {}

    def flush() -> None:
        if current is not None and rows:
            conn.execute(_INSERT, (current, received, len(rows), encode_batch(rows)))

    cursor = conn.execute(
        "SELECT trace_id, span_id, parent_span_id, name, service, start_unix_nano, end_unix_nano, "
        "received_unix_nano, payload FROM spans ORDER BY trace_id, rowid"
    )
    for tid, sid, parent, name, service, start, end, rcv, payload in cursor:
        if tid != current:
            flush()
            current, rows, received, envs = tid, [], 0, {}
        env, span = _split_payload(tid, sid, bytes(payload))
        env = envs.setdefault(env, env)
        rows.append(SpanRow(tid, sid, parent, name, service, int(start), int(end), wrap_span(env, span), env))
        received = max(received, int(rcv))
    flush()
    conn.execute("DROP TABLE spans")


_TRACE_COLUMNS = (
    "trace_id, service, root_span_id, root_name, root_start_unix_nano, start_unix_nano, end_unix_nano, "
    "raw_span_count, has_root, first_received_unix_nano, last_received_unix_nano, version, rebuilt_version, "
    "rebuilt_at_unix_nano, complete, rb_service, rb_root_name, rb_start_unix_nano, rb_duration_s, rb_span_count"
)


def migrate_documents_to_segments(conn: sqlite3.Connection, directory: Path, traces_table: str,
                                  segments_table: str) -> None:
    """3 -> 4 (see the module docstring): ``traces_table`` is the version-4 DDL with a ``{name}``
    placeholder, ``segments_table`` the ``segments`` DDL; ``directory`` holds the database."""
    conn.execute(segments_table)
    conn.execute("DROP TABLE IF EXISTS traces_v4")
    conn.execute(traces_table.format(name="traces_v4"))
    conn.execute(f"INSERT INTO traces_v4 ({_TRACE_COLUMNS}) SELECT {_TRACE_COLUMNS} FROM traces ORDER BY rowid")
    writer = SegmentWriter(directory / FOLDER)
    try:
        pending: list[tuple[str, bytes]] = []

        def flush() -> None:
            if not pending:
                return
            segment, offsets = writer.append(conn, [data for _tid, data in pending], sync=True)
            conn.executemany(
                "UPDATE traces_v4 SET doc_segment = ?, doc_offset = ?, doc_length = ?, doc_digest = ? "
                "WHERE trace_id = ?",
                [(segment, off, len(data), digest(data), tid) for (tid, data), off in zip(pending, offsets, strict=True)])
            pending.clear()

        cursor = conn.execute("SELECT trace_id, trace_json FROM traces WHERE trace_json IS NOT NULL ORDER BY rowid")
        for tid, text in cursor:
            pending.append((str(tid), str(text).encode("utf-8")))
            if len(pending) >= 256:
                flush()
        flush()
    finally:
        writer.close()
    conn.execute("DROP TABLE traces")
    conn.execute("ALTER TABLE traces_v4 RENAME TO traces")
    conn.execute("UPDATE segments SET live_bytes = (SELECT COALESCE(SUM(doc_length), 0) FROM traces "
                 "WHERE doc_segment = segments.id)")


def migrate_batches_to_segments(conn: sqlite3.Connection, directory: Path, batches_table: str,
                                span_segments_table: str) -> None:
    """4 -> 5 (see the module docstring): ``batches_table`` is the version-5 ``span_batches`` DDL
    with a ``{name}`` placeholder, ``span_segments_table`` the ``span_segments`` DDL."""
    conn.execute(span_segments_table)
    conn.execute("DROP TABLE IF EXISTS span_batches_v5")
    conn.execute(batches_table.format(name="span_batches_v5"))
    writer = SegmentWriter(directory / SPANS.folder, kind=SPANS)
    try:
        pending: list[tuple[int, str, int, int, bytes]] = []

        def flush() -> None:
            if not pending:
                return
            blobs = [p[4] for p in pending]
            segment, offsets = writer.append(conn, blobs, sync=True)
            conn.executemany(
                "INSERT INTO span_batches_v5 (id, trace_id, received_unix_nano, span_count, seg, off, len, digest) "
                "VALUES (?,?,?,?,?,?,?,?)",
                [(bid, tid, rcv, count, segment, off, len(blob), digest(blob))
                 for (bid, tid, rcv, count, blob), off in zip(pending, offsets, strict=True)])
            pending.clear()

        size = 0
        cursor = conn.execute("SELECT id, trace_id, received_unix_nano, span_count, spans FROM span_batches ORDER BY id")
        for bid, tid, rcv, count, blob in cursor:
            data = bytes(blob)
            pending.append((int(bid), str(tid), int(rcv), int(count), data))
            size += len(data)
            if len(pending) >= 1024 or size >= 8 * 1024 * 1024:
                flush()
                size = 0
        flush()
    finally:
        writer.close()
    conn.execute("DROP TABLE span_batches")
    conn.execute("ALTER TABLE span_batches_v5 RENAME TO span_batches")
    conn.execute("UPDATE span_segments SET live_bytes = (SELECT COALESCE(SUM(len), 0) FROM span_batches "
                 "WHERE seg = span_segments.id)")


__all__ = ["migrate_batches_to_segments", "migrate_documents_to_segments", "migrate_spans_to_batches"]
