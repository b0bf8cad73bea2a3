"""SQLite schema and connection settings of the trace database.

``traces.sqlite`` is opened in WAL mode with ``synchronous=FULL`` (a committed transaction is on
disk when the call returns) and a busy timeout (several processes may write). A new database gets
16 KiB pages (SQLite's default is 4 KiB): fewer pages and WAL frames per transaction, which cut the
collector's CPU per span by about a tenth in ``bench/bench_collector.py`` when the span batches
were blobs in rows (64 KiB pages measured slower); the WAL is checkpointed every
:data:`CHECKPOINT_BYTES` whatever the page size. An existing database keeps its page size.
``user_version`` records the schema version; a newer file is refused instead of being misread, an
older one is migrated on open in one transaction (:data:`MIGRATIONS`: 1 -> 2 in SQL, 2 -> 3,
3 -> 4 and 4 -> 5 by ``_migrate``).

Schema 5: ``span_batches`` (one row per trace and write; ``id`` orders the writes, and a later
batch's copy of a span id wins; index on ``trace_id``; the ``_batch`` blob itself lies in a span
segment file: ``seg``/``off``/``len``/``digest``, see ``_rawspans``), ``span_segments`` (those
files: committed end and live bytes), ``traces`` (bookkeeping kept by ``_ingest``; rebuilt trace
kept by ``_rebuilt``: summary columns and ``doc_segment``/``doc_offset``/``doc_length``/
``doc_digest``, where its Trace JSON lies) and ``segments`` (the Trace JSON segment files of
``_segments``). Schema 4 held each batch's blob in ``span_batches.spans``; schema 3 held the Trace
JSON in ``traces.trace_json``; schema 2 had one ``spans`` row per span with a UNIQUE (trace_id,
span_id) index.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Callable
from pathlib import Path

from vauban_trace._exceptions import TraceStoreError
from vauban_trace.store._migrate import (
    migrate_batches_to_segments,
    migrate_documents_to_segments,
    migrate_spans_to_batches,
)

SCHEMA_VERSION = 5
PAGE_SIZE = 16384
#: automatic WAL checkpoint interval (SQLite's default: 1000 pages of 4 KiB)
CHECKPOINT_BYTES = 4 * 1024 * 1024

#: the raw-span table of schema version 2 (one row per span), kept for the 1 -> 2 migration
_SPANS_V2 = """
CREATE TABLE IF NOT EXISTS spans (
    trace_id            TEXT    NOT NULL,
    span_id             TEXT    NOT NULL,
    parent_span_id      TEXT,               -- NULL for a root span
    name                TEXT    NOT NULL,
    service             TEXT,
    start_unix_nano     INTEGER NOT NULL,
    end_unix_nano       INTEGER NOT NULL,
    received_unix_nano  INTEGER NOT NULL,
    payload             BLOB    NOT NULL,   -- serialized one-span ResourceSpans
    UNIQUE (trace_id, span_id)
)"""

#: the raw-span table of schema versions 3 and 4, blobs in rows (created by the 2 -> 3 migration)
_SPAN_BATCHES_V3 = """
CREATE TABLE IF NOT EXISTS span_batches (
    id                  INTEGER PRIMARY KEY,   -- write order: a later batch's copy of a span wins
    trace_id            TEXT    NOT NULL,
    received_unix_nano  INTEGER NOT NULL,
    span_count          INTEGER NOT NULL,
    spans               BLOB    NOT NULL       -- store._batch encoding of the trace's spans
);

CREATE INDEX IF NOT EXISTS span_batches_by_trace ON span_batches (trace_id)
"""

#: the raw-span table of schema version 5 (``{name}``: the 4 -> 5 migration builds it under another
#: name first; its index is created by :data:`SCHEMA` once it has its name)
SPAN_BATCHES_TABLE = """
CREATE TABLE IF NOT EXISTS {name} (
    id                  INTEGER PRIMARY KEY,   -- write order: a later batch's copy of a span wins
    trace_id            TEXT    NOT NULL,
    received_unix_nano  INTEGER NOT NULL,
    span_count          INTEGER NOT NULL,
    seg                 INTEGER NOT NULL,      -- span_segments.id: spans/seg-<id>.spans
    off                 INTEGER NOT NULL,
    len                 INTEGER NOT NULL,
    digest              BLOB    NOT NULL       -- BLAKE3, 16 bytes, of the store._batch blob
)"""

#: the traces table (``{name}``: the 3 -> 4 migration builds it under another name first)
TRACES_TABLE = """
CREATE TABLE IF NOT EXISTS {name} (
    trace_id                  TEXT PRIMARY KEY,
    -- raw-span bookkeeping (kept by add_spans)
    service                   TEXT,
    root_span_id              TEXT,
    root_name                 TEXT,
    root_start_unix_nano      INTEGER,
    start_unix_nano           INTEGER,   -- min start over raw spans
    end_unix_nano             INTEGER,   -- max end over raw spans
    raw_span_count            INTEGER NOT NULL DEFAULT 0,
    has_root                  INTEGER NOT NULL DEFAULT 0,
    first_received_unix_nano  INTEGER,
    last_received_unix_nano   INTEGER,
    version                   INTEGER NOT NULL DEFAULT 0,
    -- rebuilt trace (kept by put_trace): its Trace JSON lies in a segment file (_segments)
    rebuilt_version           INTEGER,
    rebuilt_at_unix_nano      INTEGER,
    doc_segment               INTEGER,   -- segments.id (NULL: not rebuilt)
    doc_offset                INTEGER,
    doc_length                INTEGER,
    doc_digest                BLOB,      -- BLAKE3, 16 bytes
    complete                  INTEGER,
    rb_service                TEXT,
    rb_root_name              TEXT,
    rb_start_unix_nano        INTEGER,
    rb_duration_s             REAL,
    rb_span_count             INTEGER
)"""

#: segment files of Trace JSON (``bytes``: committed end; ``live_bytes``: see ``_documents.account``)
SEGMENTS_TABLE = """
CREATE TABLE IF NOT EXISTS segments (
    id                  INTEGER PRIMARY KEY AUTOINCREMENT,   -- a compacted segment's id is never reused
    created_unix_nano   INTEGER NOT NULL,
    bytes               INTEGER NOT NULL DEFAULT 0,
    live_bytes          INTEGER NOT NULL DEFAULT 0
)"""

#: segment files of raw span batches (``_rawspans``; same columns)
SPAN_SEGMENTS_TABLE = SEGMENTS_TABLE.replace("segments (", "span_segments (", 1)

SCHEMA = SPAN_BATCHES_TABLE.format(name="span_batches") + """;
CREATE INDEX IF NOT EXISTS span_batches_by_trace ON span_batches (trace_id);
""" + TRACES_TABLE.format(name="traces") + ";" + SEGMENTS_TABLE + ";" + SPAN_SEGMENTS_TABLE + """;
CREATE INDEX IF NOT EXISTS traces_by_start ON traces (rb_start_unix_nano)
    WHERE doc_segment IS NOT NULL;
CREATE INDEX IF NOT EXISTS traces_pending ON traces (last_received_unix_nano)
    WHERE version > 0 AND (rebuilt_version IS NULL OR rebuilt_version < version);
CREATE INDEX IF NOT EXISTS traces_by_received ON traces (last_received_unix_nano);
CREATE INDEX IF NOT EXISTS traces_by_segment ON traces (doc_segment) WHERE doc_segment IS NOT NULL
"""


#: Statements upgrading a database of version N to N + 1 (a function where SQL is not enough).
MIGRATIONS: dict[int, tuple[str, ...] | Callable[[sqlite3.Connection, Path], None]] = {
    # 1 -> 2: spans becomes a rowid table (large payloads make WITHOUT ROWID slow); the trace row
    # keeps the root's start separately and start/end become the raw spans' min/max.
    1: (
        "ALTER TABLE spans RENAME TO spans_v1",
        _SPANS_V2,
        "INSERT INTO spans (trace_id, span_id, parent_span_id, name, service, start_unix_nano, "
        "end_unix_nano, received_unix_nano, payload) SELECT trace_id, span_id, parent_span_id, name, "
        "service, start_unix_nano, end_unix_nano, received_unix_nano, payload FROM spans_v1",
        "DROP TABLE spans_v1",
        "ALTER TABLE traces ADD COLUMN root_start_unix_nano INTEGER",
        "UPDATE traces SET root_start_unix_nano = (SELECT s.start_unix_nano FROM spans s "
        "WHERE s.trace_id = traces.trace_id AND s.span_id = traces.root_span_id), "
        "start_unix_nano = (SELECT MIN(s.start_unix_nano) FROM spans s WHERE s.trace_id = traces.trace_id), "
        "end_unix_nano = (SELECT MAX(s.end_unix_nano) FROM spans s WHERE s.trace_id = traces.trace_id) "
        "WHERE version > 0",
    ),
    # 2 -> 3: one span_batches row per trace replaces the one-row-per-span table
    2: lambda conn, _path: migrate_spans_to_batches(conn, _SPAN_BATCHES_V3),
    # 3 -> 4: the Trace JSON moves from traces.trace_json into segment files
    3: lambda conn, path: migrate_documents_to_segments(conn, path.parent, TRACES_TABLE, SEGMENTS_TABLE),
    # 4 -> 5: the span batches' blobs move from span_batches.spans into span segment files
    4: lambda conn, path: migrate_batches_to_segments(conn, path.parent, SPAN_BATCHES_TABLE, SPAN_SEGMENTS_TABLE),
}


def connect(path: Path, *, busy_timeout_s: float) -> sqlite3.Connection:
    """A connection with the store's settings (autocommit mode: transactions are explicit)."""
    try:
        conn = sqlite3.connect(
            str(path), timeout=busy_timeout_s, isolation_level=None, check_same_thread=False
        )
        conn.execute(f"PRAGMA busy_timeout = {int(busy_timeout_s * 1000)}")
        conn.execute("PRAGMA synchronous = FULL")
        _set_checkpoint(conn)
    except sqlite3.Error as exc:
        raise TraceStoreError(f"cannot open trace database {str(path)!r}: {exc}") from exc
    return conn


def _set_checkpoint(conn: sqlite3.Connection) -> None:
    page = int(conn.execute("PRAGMA page_size").fetchone()[0]) or 4096
    conn.execute(f"PRAGMA wal_autocheckpoint = {max(1, CHECKPOINT_BYTES // page)}")


def initialise(conn: sqlite3.Connection, path: Path) -> None:
    """Switch to WAL and create (or check) the schema."""
    try:
        if conn.execute("PRAGMA user_version").fetchone()[0] == SCHEMA_VERSION:
            mode = conn.execute("PRAGMA journal_mode").fetchone()[0]
            if str(mode).lower() == "wal":
                return  # already initialised: opening takes no write lock
        conn.execute(f"PRAGMA page_size = {PAGE_SIZE}")  # only a database not yet created takes it
        mode = conn.execute("PRAGMA journal_mode = WAL").fetchone()[0]
        if str(mode).lower() != "wal":
            raise TraceStoreError(f"trace database {str(path)!r}: cannot enable WAL (journal_mode={mode})")
        conn.execute("BEGIN IMMEDIATE")
        try:
            version = conn.execute("PRAGMA user_version").fetchone()[0]
            if version > SCHEMA_VERSION:
                raise TraceStoreError(
                    f"trace database {str(path)!r} has schema version {version}; this vauban-trace "
                    f"reads up to {SCHEMA_VERSION} (upgrade vauban-trace)"
                )
            if version == 0:
                for statement in SCHEMA.split(";"):
                    if statement.strip():
                        conn.execute(statement)
            else:
                while version < SCHEMA_VERSION:
                    step = MIGRATIONS[version]
                    if callable(step):
                        step(conn, path)
                    else:
                        for statement in step:
                            conn.execute(statement)
                    version += 1
                for statement in SCHEMA.split(";"):  # indexes added since
                    if statement.strip():
                        conn.execute(statement)
            conn.execute(f"PRAGMA user_version = {SCHEMA_VERSION}")
            conn.execute("COMMIT")
            _set_checkpoint(conn)  # the page size is known now
        except BaseException:
            if conn.in_transaction:
                conn.execute("ROLLBACK")
            raise
    except sqlite3.DatabaseError as exc:
        if conn.in_transaction:
            conn.execute("ROLLBACK")
        raise TraceStoreError(f"trace database {str(path)!r} is unusable: {exc}") from exc


def pending_query(columns: str, *, limit: int | None, received_by: int | None,
                  rootless_received_by: int | None) -> tuple[str, tuple[object, ...]]:
    """The SELECT of ``columns`` over the traces whose raw spans changed after their last
    rebuild, oldest activity first (the condition of the ``traces_pending`` index), with the
    filters of :meth:`TraceStore.pending_traces`; returns (sql, params)."""
    sql = (f"SELECT {columns} FROM traces "
           "WHERE version > 0 AND (rebuilt_version IS NULL OR rebuilt_version < version)")
    params: tuple[object, ...] = ()
    if received_by is not None:
        sql += " AND last_received_unix_nano <= ?"
        params += (int(received_by),)
    if rootless_received_by is not None:
        sql += " AND (has_root OR last_received_unix_nano <= ?)"
        params += (int(rootless_received_by),)
    sql += " ORDER BY last_received_unix_nano"
    if limit is not None:
        sql += " LIMIT ?"
        params += (int(limit),)
    return sql, params


__all__ = ["SCHEMA", "SCHEMA_VERSION", "connect", "initialise", "pending_query"]
