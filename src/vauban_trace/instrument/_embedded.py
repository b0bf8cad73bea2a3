"""The embedded exporter: traces land in the local trace database, rebuilt, with no collector.

:class:`EmbeddedExporter` is a real ``SpanExporter`` (put it behind a ``BatchSpanProcessor``).
Each batch is encoded with the official OTLP encoder
(``opentelemetry.exporter.otlp.proto.common.trace_encoder.encode_spans``), so what is stored is
byte-for-byte what an OTLP exporter would send, then:

1. written to the :class:`~vauban_trace.store.TraceStore` (``add_spans``: durable, idempotent);
2. every trace touched by the batch whose root span has arrived (now or in an earlier batch) is
   rebuilt from everything stored for it (``rebuild_traces(store.spans_for(id))``) and saved with
   ``put_trace``. Late spans therefore refresh the rebuilt trace instead of being lost.

There is one road from telemetry to a Trace, and this exporter takes it like any other source.
Errors are logged and reported as ``SpanExportResult.FAILURE``; they never reach the application.
"""

from __future__ import annotations

import logging
import threading
from collections import OrderedDict
from collections.abc import Sequence
from typing import Any

from opentelemetry.exporter.otlp.proto.common.trace_encoder import encode_spans
from opentelemetry.sdk.trace import ReadableSpan
from opentelemetry.sdk.trace.export import SpanExporter, SpanExportResult

from vauban_trace import semconv as sc

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
        try:
            from vauban_trace.rebuild import rebuild_traces

            request = encode_spans(spans)
            with self._lock:
                self.store.add_spans(request)
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
                for trace_id in touched:
                    if trace_id not in self._rooted:
                        continue
                    hex_id = format(trace_id, "032x")
                    for trace in rebuild_traces(self.store.spans_for(hex_id)):
                        self.store.put_trace(trace)
                    self.rebuilt.append(hex_id)
                del self.rebuilt[:-_ROOTS_REMEMBERED]
        except Exception as exc:  # never into the application
            _log.warning("vauban-trace: embedded export failed: %s", exc, exc_info=True)
            self.errors.append(f"{type(exc).__name__}: {exc}")
            return SpanExportResult.FAILURE
        return SpanExportResult.SUCCESS

    def shutdown(self) -> None:
        self._shutdown = True

    def force_flush(self, timeout_millis: int = 30000) -> bool:
        return True
