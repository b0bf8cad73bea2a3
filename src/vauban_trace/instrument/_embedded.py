"""The embedded exporter: traces land in the local trace database, rebuilt, with no collector.

:class:`EmbeddedExporter` is a real ``SpanExporter`` (put it behind a ``BatchSpanProcessor``).
Each batch is serialised to the bytes of an OTLP ``ExportTraceServiceRequest`` by
:func:`~vauban_trace.instrument._encode.encode_request`: the C encoder ``_cencode`` when it is
built, which writes byte for byte what the official OTLP encoder
(``opentelemetry.exporter.otlp.proto.common.trace_encoder.encode_spans(...).SerializeToString()``)
writes, and that official encoder itself for anything the C declines or when it is not built. So
what is stored is byte-for-byte what an OTLP exporter would send. Then the bytes take the
collector's road:

1. cut into the store's rows by the store's C splitter (:func:`~vauban_trace.store.cut_request`,
   no protobuf decode; the store decodes them itself when the splitter declines) and written with
   :meth:`~vauban_trace.store.TraceStore.ingest_parts` (durable, idempotent, one transaction);
2. every trace touched by the batch whose root span has arrived (now or in an earlier batch) is
   rebuilt from everything stored for it (``rebuild_documents``: the Trace JSON of
   ``rebuild_traces``, through the C accelerator when it is built) and the batch's traces are saved
   with ONE ``put_documents`` (one segment append and sync, one commit). A trace new to the store
   is rebuilt from the snapshot ``ingest_parts`` hands back (the bytes ``spans_for_bytes`` would
   read, stored with version 1); a trace that already had spans (late spans) is read back, so late
   spans refresh the rebuilt trace instead of being lost.

Cost: this runs on the ``BatchSpanProcessor``'s thread of the serving process, holding the GIL
for most of it, so every microsecond is taken from inference threads. With the official encoder
(about 165 us/span for the torch executor's spans, 1.7 kB each) and a decoded-request ingest, the
exporter cost about 275 CPU us per span; see docs/benchmarks.md, "Embedded exporter cost", for
the figures with the C encoder and the ``trace_files`` policy of the store ``configure`` opens
(``"on_read"``: ``traces/<id>.json`` is written when first asked for, with
``TraceStore.trace_json_file``, instead of one fsync'd file per trace in the exporter).

Why one ``put_documents`` per batch and not one ``put_trace`` per trace: each ``put_trace`` is its
own durable transaction (file fsync, segment sync, commit: about 3-5 ms on a VM disk), which held
the exporter to about 115-160 traces/s, below what an open-loop sweep of the tiny torch model
produces (about 250 traces/s at 125 requests/s). The backlog then grew without bound in the
``BatchSpanProcessor`` queue (spans dropped at the SDK's default 2048, or, with a large
``OTEL_BSP_MAX_QUEUE_SIZE``, tens of thousands of spans kept alive, every one of them scanned by
each full garbage collection, which stalls every thread of the process; see docs/sweep.md's
open-loop caveats and ``bench/bench_exporter_stalls.py``).

There is one road from telemetry to a Trace, and this exporter takes it like any other source.
Errors are logged and reported as ``SpanExportResult.FAILURE``; they never reach the application.
A trace that fails to rebuild is logged and left out; the batch's other traces are still saved.
"""

from __future__ import annotations

import logging
import threading
from collections import OrderedDict
from collections.abc import Sequence
from typing import Any

from opentelemetry.sdk.trace import ReadableSpan
from opentelemetry.sdk.trace.export import SpanExporter, SpanExportResult

from vauban_trace import semconv as sc
from vauban_trace.instrument._encode import encode_request

_log = logging.getLogger("vauban_trace.instrument")

_ROOTS_REMEMBERED = 4096


class EmbeddedExporter(SpanExporter):
    """Writes spans to a :class:`~vauban_trace.store.TraceStore` and keeps rebuilt traces fresh."""

    def __init__(self, store: Any) -> None:
        self.store = store
        self.rebuilt: list[str] = []  # trace ids rebuilt, most recent last (bounded)
        self.errors: list[str] = []
        self._rooted: OrderedDict[int, None] = OrderedDict()
        self._lock = threading.Lock()
        self._shutdown = False

    def _is_root(self, span: ReadableSpan) -> bool:
        attrs = span.attributes or {}
        return bool(attrs.get(sc.TRACE_ROOT)) or span.parent is None

    def export(self, spans: Sequence[ReadableSpan]) -> SpanExportResult:
        if self._shutdown:
            return SpanExportResult.FAILURE
        if not spans:
            return SpanExportResult.SUCCESS
        failed: list[str] = []
        try:
            from vauban_trace.rebuild import rebuild_documents
            from vauban_trace.store import cut_request

            data = encode_request(spans)  # the OTLP bytes an exporter would send
            cut = cut_request(data)  # the store's rows, cut from the bytes (None: the store decodes them)
            with self._lock:
                ingested = self.store.ingest_parts([data if cut is None else cut], snapshots=True)
                touched: list[int] = []
                for span in spans:
                    ctx = span.context
                    if ctx is None:
                        continue
                    if self._is_root(span):
                        self._rooted[ctx.trace_id] = None
                        self._rooted.move_to_end(ctx.trace_id)
                    if ctx.trace_id not in touched:
                        touched.append(ctx.trace_id)
                while len(self._rooted) > _ROOTS_REMEMBERED:
                    self._rooted.popitem(last=False)
                docs: list[tuple[Any, int | None]] = []
                done: list[str] = []
                for trace_id in touched:
                    if trace_id not in self._rooted:
                        continue
                    hex_id = format(trace_id, "032x")
                    snapshot = ingested.snapshots.get(hex_id)
                    try:
                        if snapshot is not None:  # new to the store: its spans as committed (version 1)
                            docs.extend((doc, 1) for doc in rebuild_documents(snapshot.data()))
                        else:  # late spans: everything stored for it now
                            docs.extend((doc, None) for doc in rebuild_documents(self.store.spans_for_bytes(hex_id)))
                    except Exception as exc:  # one bad trace does not cost the batch's others
                        _log.warning("vauban-trace: rebuilding trace %s failed: %s", hex_id, exc, exc_info=True)
                        failed.append(f"trace {hex_id}: {type(exc).__name__}: {exc}")
                        continue
                    done.append(hex_id)
                if docs:
                    self.store.put_documents(docs)  # one durable transaction for the whole batch
                self.rebuilt.extend(done)
                del self.rebuilt[:-_ROOTS_REMEMBERED]
        except Exception as exc:  # never into the application
            _log.warning("vauban-trace: embedded export failed: %s", exc, exc_info=True)
            self.errors.append(f"{type(exc).__name__}: {exc}")
            self.errors.extend(failed)
            return SpanExportResult.FAILURE
        if failed:
            self.errors.extend(failed)
            return SpanExportResult.FAILURE
        return SpanExportResult.SUCCESS

    def shutdown(self) -> None:
        self._shutdown = True

    def force_flush(self, timeout_millis: int = 30000) -> bool:
        return True
