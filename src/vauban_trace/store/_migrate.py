"""Schema migration 2 -> 3: the one-row-per-span ``spans`` table becomes ``span_batches``.

:func:`migrate_spans_to_batches` runs inside ``_sql.initialise``'s transaction. It reads the v2
``spans`` rows trace by trace in rowid order (insertion order), turns each payload (a one-span
``ResourceSpans``) back into its envelope and span field, writes ONE batch per trace (received
time: the latest of its spans) and drops ``spans``. Payloads are parsed at the wire level
(:func:`_wire.fields`) and re-wrapped in the canonical field order, which is exactly how
``spans_for_bytes`` regrouped them before, so it returns the same bytes after the migration. A
payload that does not hold exactly one span in exactly one ``ScopeSpans`` (no vauban-trace
version wrote one) stops the migration with a :class:`TraceStoreError` naming the trace and span;
the transaction is rolled back and the file keeps its version-2 contents.
"""

from __future__ import annotations

import sqlite3

from vauban_trace._exceptions import TraceStoreError
from vauban_trace.store._batch import encode_batch
from vauban_trace.store._rows import SpanRow
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


__all__ = ["migrate_spans_to_batches"]
