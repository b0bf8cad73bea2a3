"""Writing raw spans: payload extraction, idempotent upserts, per-trace bookkeeping.

One call of :func:`store_rows` runs inside the caller's write transaction. Per trace of the
batch it (1) finds which span ids already exist (index-only lookup), (2) upserts every span with
``ON CONFLICT ... DO UPDATE ... WHERE payload differs`` so an identical re-sent span changes
nothing, and (3) updates the trace's bookkeeping row: incrementally when only new spans arrived,
recomputed from the stored spans when a span was replaced (its times may have moved).

Bookkeeping semantics: ``start``/``end`` are the min start / max end over the raw spans; the root
is the earliest-starting span without a parent (ties: lowest span id); the service is the root's
resource ``service.name``, else that of the first span received that had one.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Iterable
from typing import Any, NamedTuple, cast

from opentelemetry.proto.resource.v1.resource_pb2 import Resource
from opentelemetry.proto.trace.v1.trace_pb2 import ResourceSpans, Span
from opentelemetry.semconv.attributes.service_attributes import SERVICE_NAME

from vauban_trace._exceptions import TraceStoreError
from vauban_trace.store._native import cwire
from vauban_trace.store._wire import envelope, ld, wrap_span

_ZERO_TRACE = bytes(16)
_ZERO_SPAN = bytes(8)
_IN_CHUNK = 500  # span ids per IN (...) lookup


class SpanRow(NamedTuple):
    trace_id: str
    span_id: str
    parent_span_id: str | None
    name: str
    service: str | None
    start: int
    end: int
    payload: bytes
    env: tuple[bytes, ...] = ()  # the ``envelope`` (resource and scope) around the span in ``payload``


def service_of(resource: Resource) -> str | None:
    """The resource's ``service.name`` string, if any."""
    for kv in resource.attributes:
        if kv.key == SERVICE_NAME and kv.value.WhichOneof("value") == "string_value":
            return str(kv.value.string_value)
    return None


def id_problem(span: Span) -> str | None:
    """Why a span's ids are unusable, or None."""
    if len(span.trace_id) != 16 or span.trace_id == _ZERO_TRACE:
        return f"span {span.name!r}: trace_id must be 16 non-zero bytes, got {span.trace_id.hex() or 'empty'}"
    if len(span.span_id) != 8 or span.span_id == _ZERO_SPAN:
        return f"span {span.name!r}: span_id must be 8 non-zero bytes, got {span.span_id.hex() or 'empty'}"
    if span.parent_span_id and len(span.parent_span_id) != 8:
        return f"span {span.name!r}: parent_span_id must be 8 bytes, got {span.parent_span_id.hex()}"
    return None


def extract_rows(resource_spans: Iterable[ResourceSpans]) -> tuple[list[SpanRow], list[str]]:
    """One :class:`SpanRow` per usable span (payload = one-span ResourceSpans), and problems."""
    rows: list[SpanRow] = []
    problems: list[str] = []
    for rs in resource_spans:
        if not isinstance(rs, ResourceSpans):
            raise TraceStoreError(f"add_spans: expected ResourceSpans, got {type(rs).__name__}")
        service = service_of(rs.resource)
        resource = rs.resource.SerializeToString(deterministic=True) if rs.HasField("resource") else None
        for ss in rs.scope_spans:
            scope = ss.scope.SerializeToString(deterministic=True) if ss.HasField("scope") else None
            env = envelope(resource, rs.schema_url, scope, ss.schema_url)
            for span in ss.spans:
                problem = id_problem(span)
                if problem:
                    problems.append(problem)
                    continue
                parent = span.parent_span_id
                rows.append(SpanRow(
                    span.trace_id.hex(),
                    span.span_id.hex(),
                    parent.hex() if parent and parent != _ZERO_SPAN else None,
                    span.name,
                    service,
                    span.start_time_unix_nano,
                    span.end_time_unix_nano,
                    wrap_span(env, span.SerializeToString(deterministic=True)),
                    env,
                ))
    return rows, problems


_UPSERT = (
    "INSERT INTO spans (trace_id, span_id, parent_span_id, name, service, start_unix_nano, end_unix_nano, "
    "received_unix_nano, payload) VALUES (?,?,?,?,?,?,?,?,?) "
    "ON CONFLICT (trace_id, span_id) DO UPDATE SET parent_span_id = excluded.parent_span_id, "
    "name = excluded.name, service = excluded.service, start_unix_nano = excluded.start_unix_nano, "
    "end_unix_nano = excluded.end_unix_nano, received_unix_nano = excluded.received_unix_nano, "
    "payload = excluded.payload WHERE spans.payload IS NOT excluded.payload"
)


def store_rows(
    conn: sqlite3.Connection, rows: list[SpanRow], now: int, fresh_out: dict[str, list[SpanRow]] | None = None
) -> tuple[int, int, list[str]]:
    """Upsert ``rows``; return (accepted, duplicates, trace ids whose raw spans changed).

    With ``fresh_out``, the spans of every trace that had no stored span before (its version is
    1 after this call, and these rows are all its raw spans) are put there by trace id.
    """
    by_trace: dict[str, dict[str, SpanRow]] = {}
    accepted = duplicates = 0
    for row in rows:
        spans = by_trace.setdefault(row.trace_id, {})
        earlier = spans.get(row.span_id)
        if earlier is not None and earlier.payload == row.payload:
            duplicates += 1  # the same span twice in one request
            continue
        if earlier is not None:
            accepted += 1  # superseded inside the request: counts, the later copy is stored
        spans[row.span_id] = row
    # one lookup for the bookkeeping of every trace in the request: a trace without it has no
    # stored span, so its spans are all new and need no per-trace existence check
    known = _known_traces(conn, list(by_trace))
    fresh_rows: list[tuple[object, ...]] = []
    fresh_traces: list[tuple[object, ...]] = []
    for tid, spans in by_trace.items():
        if tid not in known:
            fresh_rows.extend((*r[:7], now, r[7]) for r in spans.values())
            fresh_traces.append(_bookkeeping(tid, None, list(spans.values()), now))
            if fresh_out is not None:
                fresh_out[tid] = list(spans.values())
    if fresh_rows:
        before = conn.total_changes
        conn.executemany(_UPSERT, fresh_rows)
        changed = conn.total_changes - before  # all of them, unless spans outlived their trace row
        accepted += changed
        duplicates += len(fresh_rows) - changed
        conn.executemany(_UPSERT_TRACE, fresh_traces)
    touched: list[str] = []
    for tid, spans in by_trace.items():
        if tid not in known:
            touched.append(tid)
            continue
        ids = list(spans)
        existing: set[str] = set()
        for i in range(0, len(ids), _IN_CHUNK):
            chunk = ids[i : i + _IN_CHUNK]
            marks = ",".join("?" * len(chunk))
            existing.update(
                r[0] for r in conn.execute(
                    f"SELECT span_id FROM spans WHERE trace_id = ? AND span_id IN ({marks})", (tid, *chunk)
                )
            )
        before = conn.total_changes
        conn.executemany(
            _UPSERT,
            [(*r[:7], now, r[7]) for r in spans.values()],
        )
        changed = conn.total_changes - before
        new = [r for sid, r in spans.items() if sid not in existing]
        replaced = changed - len(new)
        accepted += changed
        duplicates += len(spans) - changed
        if changed == 0:
            continue
        touched.append(tid)
        if replaced > 0:
            _recompute(conn, tid, now)
        else:
            conn.execute(_UPSERT_TRACE, _bookkeeping(tid, known[tid], new, now))
    return accepted, duplicates, touched


def _known_traces(conn: sqlite3.Connection, tids: list[str]) -> dict[str, tuple[object, ...]]:
    """Bookkeeping columns of the traces among ``tids`` that have stored spans."""
    known: dict[str, tuple[object, ...]] = {}
    for i in range(0, len(tids), _IN_CHUNK):
        chunk = tids[i : i + _IN_CHUNK]
        marks = ",".join("?" * len(chunk))
        for r in conn.execute(
            f"SELECT trace_id, {_TRACE_COLUMNS} FROM traces WHERE version > 0 AND trace_id IN ({marks})", chunk
        ):
            known[str(r[0])] = tuple(r[1:])
    return known


_TRACE_COLUMNS = (
    "service, root_span_id, root_name, root_start_unix_nano, start_unix_nano, end_unix_nano, "
    "raw_span_count, has_root"
)
_UPSERT_TRACE = (
    f"INSERT INTO traces (trace_id, {_TRACE_COLUMNS}, first_received_unix_nano, last_received_unix_nano, "
    "version) VALUES (?,?,?,?,?,?,?,?,?,?,?,1) ON CONFLICT (trace_id) DO UPDATE SET "
    "service = excluded.service, root_span_id = excluded.root_span_id, root_name = excluded.root_name, "
    "root_start_unix_nano = excluded.root_start_unix_nano, start_unix_nano = excluded.start_unix_nano, "
    "end_unix_nano = excluded.end_unix_nano, raw_span_count = excluded.raw_span_count, "
    "has_root = excluded.has_root, "
    "first_received_unix_nano = COALESCE(traces.first_received_unix_nano, excluded.first_received_unix_nano), "
    "last_received_unix_nano = excluded.last_received_unix_nano, version = traces.version + 1"
)


def _bookkeeping(tid: str, row: tuple[object, ...] | None, new: list[SpanRow], now: int) -> tuple[object, ...]:
    """Parameters of ``_UPSERT_TRACE`` after inserting only new spans (no stored span changed);
    ``row`` is the trace's stored bookkeeping (``_TRACE_COLUMNS``), None for a trace without spans."""
    service: Any
    root_id: Any
    root_name: Any
    root_start: Any
    start: Any
    end: Any
    if row is None:
        service = root_id = root_name = root_start = start = end = None
        count = 0
    else:
        service, root_id, root_name, root_start, start, end, count_any, _has_root = row
        count = int(count_any)  # type: ignore[call-overload]
    root_service: str | None = None
    root_changed = False
    for r in new:
        start = r.start if start is None else min(start, r.start)
        end = r.end if end is None else max(end, r.end)
        if r.parent_span_id is None and (root_id is None or (r.start, r.span_id) < (root_start, root_id)):
            root_id, root_name, root_start, root_service = r.span_id, r.name, r.start, r.service
            root_changed = True
    if service is None:
        service = next((r.service for r in new if r.service is not None), None)
    if root_changed and root_service is not None:
        service = root_service
    return (tid, service, root_id, root_name, root_start, start, end, count + len(new), int(root_id is not None),
            now, now)


def _recompute(conn: sqlite3.Connection, tid: str, now: int) -> None:
    """Bookkeeping recomputed from every stored span of the trace."""
    count, start, end = conn.execute(
        "SELECT COUNT(*), MIN(start_unix_nano), MAX(end_unix_nano) FROM spans WHERE trace_id = ?", (tid,)
    ).fetchone()
    root = conn.execute(
        "SELECT span_id, name, service, start_unix_nano FROM spans "
        "WHERE trace_id = ? AND parent_span_id IS NULL ORDER BY start_unix_nano, span_id LIMIT 1",
        (tid,),
    ).fetchone()
    first = conn.execute(
        "SELECT service FROM spans WHERE trace_id = ? AND service IS NOT NULL "
        "ORDER BY received_unix_nano, rowid LIMIT 1",
        (tid,),
    ).fetchone()
    service = first[0] if first is not None else None
    if root is not None:
        root_id, root_name, root_service, root_start = root
        service = root_service if root_service is not None else service
    else:
        root_id = root_name = root_start = None
    conn.execute(
        _UPSERT_TRACE,
        (tid, service, root_id, root_name, root_start, start, end, count, int(root is not None), now, now),
    )


class SpanSnapshot:
    """The spans of one trace as just stored, turned into :meth:`TraceStore.spans_for_bytes`'s
    bytes only when asked (:meth:`data`), so the writer that produced it pays nothing for it."""

    __slots__ = ("_rows", "_data", "nbytes")

    def __init__(self, rows: list[SpanRow]) -> None:
        self._rows: list[SpanRow] | None = rows
        self._data: bytes | None = None
        #: bytes of the stored payloads it holds (what it costs in memory, roughly)
        self.nbytes: int = sum(len(r.payload) for r in rows)

    def data(self) -> bytes:
        """Serialized ``TracesData``, exactly what ``spans_for_bytes`` returns for these spans."""
        if self._data is None:
            assert self._rows is not None
            self._data, self._rows = snapshot_bytes(self._rows), None
        return self._data


_native_snapshot = None if cwire is None else cwire.snapshot


def snapshot_bytes(rows: list[SpanRow]) -> bytes:
    """Serialized ``TracesData`` of ``rows`` (one trace's spans), exactly as
    :meth:`TraceStore.spans_for_bytes` would return them had they been read back: start-time
    order (ties: span id, then input order), regrouped by resource and scope in order of first
    appearance. The C extension computes it when built (``_cwire_src/snapshot.c``, checked byte
    for byte against :func:`snapshot_bytes_py`, the reference, which runs whenever it declines)."""
    if _native_snapshot is not None:
        out = _native_snapshot(rows)
        if out is not None:
            return cast(bytes, out)
    return snapshot_bytes_py(rows)


def snapshot_bytes_py(rows: list[SpanRow]) -> bytes:
    """:func:`snapshot_bytes` in Python (the reference)."""
    groups: dict[tuple[bytes, bytes], dict[tuple[bytes, bytes], list[memoryview]]] = {}
    ordered = sorted(rows, key=lambda r: (r.start, r.span_id))
    last_env: tuple[bytes, ...] | None = None
    spans: list[memoryview] = []
    for r in ordered:
        env = r.env
        if env is not last_env:  # rows cut from one request share their envelope tuple
            res_prefix, res_suffix, scope_prefix, scope_suffix = env
            spans = groups.setdefault((res_prefix, res_suffix), {}).setdefault((scope_prefix, scope_suffix), [])
            skip, tail, last_env = len(res_prefix) + 1, len(res_suffix) + len(scope_suffix), env
            head = len(scope_prefix) + 1
        # payload = res_prefix + LD(2, scope_prefix + LD(2, span) + scope_suffix) + res_suffix:
        # cut the LD(2, span) field out of it (a view: the bytes are copied once, by the join)
        payload = r.payload
        i = skip
        while payload[i] & 0x80:
            i += 1
        spans.append(memoryview(payload)[i + head:len(payload) - tail])
    out = []
    for (res_prefix, res_suffix), by_scope in groups.items():
        parts = [res_prefix]
        for (scope_prefix, scope_suffix), views in by_scope.items():
            parts.append(ld(2, b"".join((scope_prefix, *views, scope_suffix))))
        parts.append(res_suffix)
        out.append(ld(1, b"".join(parts)))
    return b"".join(out)


__all__ = ["SpanRow", "SpanSnapshot", "snapshot_bytes", "snapshot_bytes_py", "extract_rows", "id_problem", "service_of", "store_rows"]
