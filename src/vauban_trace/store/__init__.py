"""The trace database: raw OTLP spans, durable and idempotent, plus rebuilt traces.

::

    from vauban_trace.store import TraceStore
    ts = TraceStore(".vauban")        # .vauban/traces.sqlite, spans/, documents/, blobs/, traces/<id>.json
    accepted, duplicates = ts.add_spans(export_request)   # committed (fsync'd) when it returns
    for p in ts.pending_traces():     # changed since last rebuild: p.has_root, p.last_received_unix_nano
        data = ts.spans_for(p.trace_id)                   # OTLP TracesData
        for trace in rebuild_traces(data):
            ts.put_trace(trace, version=p.version)        # JSON in a segment + its row + traces/<id>.json
    ts.get_trace("4bf92f3577b34da6a3ce929d0e0e4736")      # -> Trace
    ts.last_trace(); ts.list_traces(service="demo", limit=20)   # -> list[TraceSummary]

- :class:`TraceStore` SQLite (WAL, ``synchronous=FULL``, busy timeout) at ``<dir>/traces.sqlite``.
  Raw spans are keyed by (trace_id, span_id); each is a one-span ``ResourceSpans`` protobuf, kept
  in per-trace span batches (one SQLite row per trace and write, ``_batch`` encoding: schema 3 on),
  whose blobs are appended to span segment files ``spans/seg-<id>.spans`` and ``fdatasync``-ed
  before the commit of their rows (segment, offset, length, BLAKE3 digest) (schema 5,
  ``_rawspans``): every read checks them, and a damaged batch raises :class:`TraceStoreError`
  naming the trace and segment (raw spans lost; ``compact_spans`` compacts span segments whose
  batches were mostly merged away); rebuilt Trace JSON is appended to segment files ``documents/seg-<id>.jsonl`` and its row holds
  (segment, offset, length, BLAKE3 digest) (schema 4): reads verify the text, and a text lost or
  torn in a crash puts its trace back to pending (rebuilt from the raw spans), never served corrupt;
  ``compact_documents`` rewrites segments mostly made of replaced texts (``put_documents`` runs it
  when it rolls a segment);
  an identical re-sent span is a duplicate, a changed one replaces the stored copy. One
  transaction per :meth:`~TraceStore.add_spans` call. Safe from several threads (one connection
  each) and processes. :meth:`~TraceStore.ingest` also reports rejected spans (bad ids).
  Other verbs: ``spans_for_bytes`` (serialized ``TracesData``), ``raw_span_count``,
  ``pending_count``, ``trace_ids_touched_since``, ``put_traces`` (many rebuilt traces in one
  transaction), ``put_documents`` (the same for traces already serialised, e.g. by
  ``vauban_trace.rebuild.rebuild_documents``), ``trace_json_path`` (where the file goes),
  ``trace_json_file`` (the file, written from the segment first when ``trace_files="on_read"``
  left it out), ``trace_count``, ``blobs`` (the ``LocalArtifactStore``).
  Older databases are migrated on open; newer ones are refused.
- Operating a store (``_maintenance``; ``vauban-trace store verify|stats|compact|rebuild``):
  ``verify_store(repair=False)`` -> :class:`VerifyReport` reads back every text (length + digest),
  every segment's bookkeeping (live bytes, committed end, overlaps, file length; Trace JSON and span
  segments) and every raw span batch (length + digest, then the batch codec's decode); ``repair=True`` makes broken traces pending with the store's
  own invalidation (and recovery / live-bytes recount for segments); ``store_stats()`` ->
  :class:`StoreStats`; ``rebuild_stored(ids | None, pending=False)`` -> :class:`RebuildReport`
  rebuilds from the raw spans with this version's rebuild (:func:`rebuild_document`, the
  collector's road) and stores the traces whose text changed; ``compact_documents(threshold)``,
  ``compact_spans(threshold)``.
  All safe beside a running collector; ``recovered_at_open`` counts what the open's crash
  recovery made pending.
- :class:`TraceSummary` a listed trace: id, service, root name, start, duration, span count,
  complete.
- :class:`PendingTrace` per-trace bookkeeping for assemblers: version, has_root, first/last
  received times.
- :func:`check_trace_id` canonical 32-hex-digit trace ids (clear :class:`TraceStoreError`
  otherwise). Missing traces raise :class:`TraceNotFoundError`, which says whether the trace is
  unknown or only not rebuilt yet.
- :func:`cut_request` / :class:`CutRequest` a serialized export request cut into rows by the C
  splitter (None when the Python path must decode it): a receiver that gets one skips the
  protobuf decode, and ``ingest_parts`` stores it as is.
- :class:`SpanSnapshot` the spans of a trace new to the store, as ``ingest(..., snapshots=True)``
  hands them back (``data()`` = ``spans_for_bytes``): the collector's assembler rebuilds from it
  instead of reading the trace back.
"""

from vauban_trace._exceptions import TraceNotFoundError, TraceStoreError
from vauban_trace.store._db import TraceStore
from vauban_trace.store._documents import TraceDocumentLike, TraceFiles
from vauban_trace.store._ingest import SpanSnapshot
from vauban_trace.store._maintenance import (
    RebuildReport,
    SegmentStats,
    StoreProblem,
    StoreStats,
    VerifyReport,
    rebuild_document,
)
from vauban_trace.store._records import IngestResult, PendingTrace, TraceSummary, check_trace_id
from vauban_trace.store._split import CutRequest, cut_request

__all__ = [
    "CutRequest",
    "IngestResult",
    "PendingTrace",
    "RebuildReport",
    "SegmentStats",
    "SpanSnapshot",
    "StoreProblem",
    "StoreStats",
    "TraceDocumentLike",
    "TraceFiles",
    "TraceNotFoundError",
    "TraceStore",
    "TraceStoreError",
    "TraceSummary",
    "VerifyReport",
    "check_trace_id",
    "cut_request",
    "rebuild_document",
]
