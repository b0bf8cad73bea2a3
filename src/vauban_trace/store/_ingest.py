"""Writing raw spans: payload extraction, span batches, per-trace bookkeeping.

Every batch a call writes is encoded first, then all of them are appended to the store's span
segment with one ``writev`` and ``fdatasync``-ed (``_rawspans``) before their ``span_batches``
rows (segment, offset, length, digest) are inserted in the caller's transaction, which commits
with ``synchronous=FULL``. A stored batch of a known trace that fails its check (damaged on disk)
is logged and left out of the comparison (a read that fails for want of descriptors or memory is
not damage: it fails the write, ``_rawspans``): incoming spans equal to a copy in an intact batch are
duplicates, the others are written as a new batch with incremental bookkeeping, and that trace's
batches are never merged (the damaged one stays for ``verify`` to report).

One call of :func:`store_rows` runs inside the caller's write transaction. It groups the rows by
trace (a span id sent twice in one request: an equal copy is a duplicate, another one replaces
it), then looks up the bookkeeping row of every trace of the request at once. A trace without one (new to the store:
the hot path) gets ONE ``span_batches`` row holding all its spans (``_batch`` encoding) and an
incremental bookkeeping row, with no per-span lookup. A trace already stored (late spans, client
retries) has its batches scanned for the incoming span ids (``_batch.match_batch``, no rows built;
the latest copy of each span id wins); a span whose payload equals the stored copy is a
duplicate, the others (new ids, or the same ids with other content) go into one new batch, and the
bookkeeping is updated incrementally when only new ids arrived, recomputed from every current span
(:func:`stored_rows`) when one was replaced (its times may have moved). Identical re-sent spans thus
change nothing (no batch, no version bump). A write that would leave a trace with
:data:`COMPACT_AT` batches writes all its current spans as one batch instead (and deletes the
others), so a trace whose spans trickle in one request at a time costs a bounded number of rows
to read per write.

Bookkeeping semantics: ``start``/``end`` are the min start / max end over the raw spans; the root
is the earliest-starting span without a parent (ties: lowest span id); the service is the root's
resource ``service.name``, else that of the first span received that had one.

The hot path (new traces) runs in C when the ``_cwire`` extension is built
(``_cwire_src/ingest.c``): ``group_rows`` (the grouping, :func:`_group_rows_py`), ``new_traces``
(each new trace's batch blob and payload bytes; it can also build the :class:`SpanSnapshot`
bytes, which the writer leaves to the assembler, see there) and ``bookkeeping``
(:func:`_bookkeeping_py` of a new trace). Each returns None for anything unusual and the Python reference then runs (and
raises where a row is bad); ``tests/store/test_store_ingest_native.py`` checks them against it,
down to the bytes and rows of a whole store. Measured on ``bench/collector_steps.py``'s requests
(512 spans in 32 traces; docs/benchmarks.md, "Durable write and snapshot"): the durable write
3.09 -> 2.54 CPU µs per span; the whole collector 8.91 -> 8.30. What is left is mostly the
kernel's ``writev``/``fdatasync``, the BLAKE3 digests and SQLite's rows and commit.
"""

from __future__ import annotations

import logging
import sqlite3
from collections.abc import Iterable
from typing import Any, cast

from opentelemetry.proto.resource.v1.resource_pb2 import Resource
from opentelemetry.proto.trace.v1.trace_pb2 import ResourceSpans, Span
from opentelemetry.semconv.attributes.service_attributes import SERVICE_NAME

from vauban_trace._exceptions import TraceStoreError
from vauban_trace.store._batch import decode_batch, encode_batch, match_batch
from vauban_trace.store._native import cwire
from vauban_trace.store._rawspans import BatchRef, RawSpanError, SpanSegments, release
from vauban_trace.store._rows import SpanRow
from vauban_trace.store._wire import envelope, ld, wrap_span

_ZERO_TRACE = bytes(16)
_ZERO_SPAN = bytes(8)
_IN_CHUNK = 500  # trace ids per IN (...) lookup
_log = logging.getLogger("vauban_trace.store")


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


#: a write to a known trace that would leave this many batches merges them into one
COMPACT_AT = 16
_BATCHES_OF = "SELECT id, span_count, seg, off, len, digest FROM span_batches WHERE trace_id = ? ORDER BY id"
_INSERT_BATCH = ("INSERT INTO span_batches (trace_id, received_unix_nano, span_count, seg, off, len, digest) "
                 "VALUES (?,?,?,?,?,?,?)")


def store_rows(
    conn: sqlite3.Connection, rows: list[SpanRow], now: int, spans: SpanSegments,
    fresh_out: dict[str, SpanSnapshot] | None = None,
) -> tuple[int, int, list[str]]:
    """Store ``rows`` as span batches; return (accepted, duplicates, trace ids whose raw spans changed).

    The batches' blobs go to ``spans`` (appended and synced before the caller commits).
    With ``fresh_out``, a :class:`SpanSnapshot` of the spans of every trace that had no stored
    span before (its version is 1 after this call, and these rows are all its raw spans) is put
    there by trace id.
    """
    grouped = _native_group(rows) if _native_group is not None else None
    if grouped is None:
        grouped = _group_rows_py(rows)
    by_trace, accepted, duplicates = grouped
    # one lookup for the bookkeeping of every trace in the request: a trace without it has no
    # stored span (the trace row is written in the same transaction as its first batch), so its
    # spans are all new: one batch, no per-span lookup
    known = _known_traces(conn, list(by_trace))
    batches_out: list[tuple[str, int, bytes]] = []  # (trace id, span count, blob)
    upserts: list[tuple[object, ...]] = []
    touched: list[str] = []
    new = by_trace if not known else {tid: trace_rows for tid, trace_rows in by_trace.items() if tid not in known}
    # the new traces' blobs and snapshot sizes at once, in C (None: the Python reference). Its
    # snapshot bytes are not asked for: see SpanSnapshot (the assembler builds them, cheaper)
    made = _native_new(new, False) if _native_new is not None and new else None
    if made is not None and not known:  # the hot path: every trace of the request is new
        blobs, sizes, datas = made
        touched = list(new)
        batches_out = [(tid, len(trace_rows), blob) for (tid, trace_rows), blob in zip(new.items(), blobs, strict=True)]
        upserts = [_bookkeeping(tid, None, trace_rows, now) for tid, trace_rows in new.items()]
        accepted += sum(map(len, new.values()))
        if fresh_out is not None:
            for (tid, trace_rows), nbytes, snapshot in zip(new.items(), sizes, datas, strict=True):
                fresh_out[tid] = SpanSnapshot(trace_rows, nbytes, snapshot)
    else:
        made_of = iter(zip(*made, strict=True)) if made is not None else None
        for tid, trace_rows in by_trace.items():
            if tid in known:
                spans_of = {r[1]: r for r in trace_rows}  # r[1]: span id (one row per id: grouped)
                write = _known_trace(conn, tid, spans_of, known[tid], now, spans, batches_out, upserts)
                duplicates += len(spans_of) - write
                if write:
                    accepted += write
                    touched.append(tid)
                continue
            size: int | None = None
            data: bytes | None = None
            if made_of is not None:
                blob, size, data = next(made_of)
            else:
                blob = encode_batch(trace_rows)
            batches_out.append((tid, len(trace_rows), blob))
            upserts.append(_bookkeeping(tid, None, trace_rows, now))
            accepted += len(trace_rows)
            touched.append(tid)
            if fresh_out is not None:
                fresh_out[tid] = SpanSnapshot(trace_rows, size, data)
    if batches_out:
        segment, refs = spans.append(conn, [b[2] for b in batches_out])  # on disk before the commit
        conn.executemany(_INSERT_BATCH, [(tid, now, count, segment, off, length, dig)
                                         for (tid, count, _b), (off, length, dig) in zip(batches_out, refs, strict=True)])
        conn.executemany(_UPSERT_TRACE, upserts)
    return accepted, duplicates, touched


def _group_rows_py(rows: list[SpanRow]) -> tuple[dict[str, list[SpanRow]], int, int]:
    """(trace id -> its rows, superseded, duplicates): traces in order of first appearance, a
    trace's rows in order of the first appearance of each span id, each the LAST copy of that id
    in ``rows``; a copy equal (payload) to the one it would replace is a duplicate and dropped,
    one with another payload supersedes it (counted: it is accepted). ``_cwire``'s
    ``group_rows`` (``_cwire_src/ingest.c``) gives the same when built."""
    by_trace: dict[str, dict[str, SpanRow]] = {}
    superseded = duplicates = 0
    last_tid: str | None = None
    spans_of: dict[str, SpanRow] = {}
    for row in rows:  # (indexing: row[0] trace id, row[1] span id, row[7] payload; faster than names)
        tid = row[0]
        if tid != last_tid:  # the rows of a trace mostly come together
            spans_of = by_trace.setdefault(tid, {})
            last_tid = tid
        sid = row[1]
        earlier = spans_of.get(sid)
        if earlier is not None:
            if earlier[7] == row[7]:
                duplicates += 1  # the same span twice in one request
                continue
            superseded += 1  # superseded inside the request: counts, the later copy is stored
        spans_of[sid] = row
    return {tid: list(spans.values()) for tid, spans in by_trace.items()}, superseded, duplicates


def _known_trace(conn: sqlite3.Connection, tid: str, spans_of: dict[str, SpanRow], known: tuple[object, ...],
                 now: int, spans: SpanSegments, batches_out: list[tuple[str, int, bytes]],
                 upserts: list[tuple[object, ...]]) -> int:
    """Incoming spans of a trace with stored spans: queue what to write; return how many spans
    are written (the others are duplicates)."""
    batches: list[BatchRef] = conn.execute(_BATCHES_OF, (tid,)).fetchall()
    damaged: list[RawSpanError] = []
    blobs = spans.read(tid, batches, damaged)
    if damaged:  # keep accepting spans: compare with the intact batches only, never merge
        _log.error("vauban-trace store: %s; the incoming spans of the trace are compared with its %d intact "
                   "batch(es) only", damaged[0], len(blobs))
    found: dict[str, bool] = {}  # span id -> the latest stored copy equals the incoming one
    for batch_id, count, blob in blobs:
        n, hits = match_batch(tid, blob, spans_of)
        _check_count(tid, batch_id, count, n)
        found.update(hits)
    write = []
    replaced = False
    for sid, r in spans_of.items():
        same = found.get(sid)
        if same:
            continue
        replaced = replaced or same is not None
        write.append(r)
    if not write:
        return 0
    if damaged:  # bookkeeping from the stored counts plus the new ones (the damaged spans stay counted)
        batches_out.append((tid, len(write), encode_batch(write)))
        upserts.append(_bookkeeping(tid, known, write, now))
        return len(write)
    compact = len(batches) + 1 >= COMPACT_AT
    stored: dict[str, SpanRow] = {}
    if replaced or compact:
        stored = _current_rows(tid, blobs)
        for r in write:  # a replaced span now counts as received last
            stored.pop(r.span_id, None)
            stored[r.span_id] = r
    if compact:  # every current span in one batch, in received order
        merged = list(stored.values())
        conn.execute("DELETE FROM span_batches WHERE trace_id = ?", (tid,))
        release(conn, batches)
        batches_out.append((tid, len(merged), encode_batch(merged)))
    else:
        batches_out.append((tid, len(write), encode_batch(write)))
    if replaced:
        upserts.append(_recomputed(tid, list(stored.values()), now))
    else:
        upserts.append(_bookkeeping(tid, known, write, now))
    return len(write)


def stored_rows(conn: sqlite3.Connection, tid: str, spans: SpanSegments) -> dict[str, SpanRow]:
    """The trace's current raw spans by span id, in received order (batch order; a span stored
    again in a later batch is the later copy, at its later place). :class:`RawSpanError` when a
    batch cannot be read back intact."""
    return _current_rows(tid, spans.read(tid, conn.execute(_BATCHES_OF, (tid,)).fetchall()))


def _current_rows(tid: str, batches: list[tuple[int, int, bytes]]) -> dict[str, SpanRow]:
    out: dict[str, SpanRow] = {}
    for batch_id, count, blob in batches:
        rows = decode_batch(tid, blob)
        _check_count(tid, batch_id, count, len(rows))
        for r in rows:
            if r.span_id in out:
                del out[r.span_id]
            out[r.span_id] = r
    return out


def _check_count(tid: str, batch_id: int, count: int, found: int) -> None:
    if found != count:
        raise TraceStoreError(f"span batch {batch_id} of trace {tid}: span_count says {count}, the blob holds {found}")


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
    ``row`` is the trace's stored bookkeeping (``_TRACE_COLUMNS``), None for a trace without spans
    (then C when built: ``_cwire_src/ingest.c``)."""
    if row is None and _native_bookkeeping is not None:
        out = _native_bookkeeping(tid, new, now)
        if out is not None:
            return cast("tuple[object, ...]", out)
    return _bookkeeping_py(tid, row, new, now)


def _bookkeeping_py(tid: str, row: tuple[object, ...] | None, new: list[SpanRow], now: int) -> tuple[object, ...]:
    """:func:`_bookkeeping` in Python (the reference)."""
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
    if new:
        lo, hi = min([r[5] for r in new]), max([r[6] for r in new])  # r[5], r[6]: start, end
        start = lo if start is None else min(start, lo)
        end = hi if end is None else max(end, hi)
    for r in new:
        if r[2] is None and (root_id is None or (r.start, r.span_id) < (root_start, root_id)):  # r[2]: parent
            root_id, root_name, root_start, root_service = r.span_id, r.name, r.start, r.service
            root_changed = True
    if service is None:
        service = next((r.service for r in new if r.service is not None), None)
    if root_changed and root_service is not None:
        service = root_service
    return (tid, service, root_id, root_name, root_start, start, end, count + len(new), int(root_id is not None),
            now, now)


def _recomputed(tid: str, rows: list[SpanRow], now: int) -> tuple[object, ...]:
    """Parameters of ``_UPSERT_TRACE`` recomputed from every current raw span of the trace
    (``rows`` in received order)."""
    root: SpanRow | None = None
    for r in rows:
        if r.parent_span_id is None and (root is None or (r.start, r.span_id) < (root.start, root.span_id)):
            root = r
    service = next((r.service for r in rows if r.service is not None), None)
    if root is not None and root.service is not None:
        service = root.service
    return (
        tid, service, None if root is None else root.span_id, None if root is None else root.name,
        None if root is None else root.start, min((r.start for r in rows), default=None),
        max((r.end for r in rows), default=None), len(rows), int(root is not None), now, now,
    )


class SpanSnapshot:
    """The spans of one trace as just stored, turned into :meth:`TraceStore.spans_for_bytes`'s
    bytes only when asked (:meth:`data`), so the writer that produced it pays nothing for it.

    ``data`` (bytes already built) is accepted: ``_cwire``'s ``new_traces`` can build them right
    after encoding the trace's batch, while the payloads are in the CPU cache. The writer does not
    ask for that: in the collector (one core, 160 requests of 512 spans, 8 interleaved runs, twice)
    it cost 8.55 and 8.67 CPU µs per span end to end against 8.30 and 8.42 with the bytes built
    by the assembler, although the step script (every snapshot kept alive) showed the two equal."""

    __slots__ = ("_rows", "_data", "nbytes")

    def __init__(self, rows: list[SpanRow], nbytes: int | None = None, data: bytes | None = None) -> None:
        self._rows: list[SpanRow] | None = None if data is not None else rows
        self._data: bytes | None = data
        #: bytes of the stored payloads of its spans (what it costs in memory, roughly, and what
        #: the assembler's cap counts); ``nbytes`` when the caller already summed them
        self.nbytes: int = sum(map(len, [r[7] for r in rows])) if nbytes is None else nbytes  # r[7]: payload

    def data(self) -> bytes:
        """Serialized ``TracesData``, exactly what ``spans_for_bytes`` returns for these spans."""
        if self._data is None:
            assert self._rows is not None
            self._data, self._rows = snapshot_bytes(self._rows), None
        return self._data


_native_snapshot = None if cwire is None else cwire.snapshot
_native_group = None if cwire is None else getattr(cwire, "group_rows", None)
_native_new = None if cwire is None else getattr(cwire, "new_traces", None)
_native_bookkeeping = None if cwire is None else getattr(cwire, "bookkeeping", None)


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


__all__ = [
    "SpanRow", "SpanSnapshot", "snapshot_bytes", "snapshot_bytes_py", "extract_rows", "id_problem", "service_of",
    "stored_rows", "store_rows",
]
