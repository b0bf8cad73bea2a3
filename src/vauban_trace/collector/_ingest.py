"""Admission control and the durable write shared by the HTTP and gRPC receivers.

:class:`Admission` bounds the work in flight: at most ``max_requests`` export requests and
``max_bytes`` of request bodies at once, both transports together. :meth:`Admission.try_enter`
never blocks: a request over either bound is refused at once (HTTP 503 + ``Retry-After``, gRPC
UNAVAILABLE + RetryInfo), so memory stays bounded however many clients push, and clients retry.

:class:`Ingestor` drops spans with malformed ids (reported as ``partial_success``), writes the
rest with :meth:`TraceStore.add_spans` (durable when it returns: only then does the receiver
answer 200), counts everything in :class:`CollectorMetrics`, and wakes the assembler.
Duplicates (a client re-sending after a lost reply) are absorbed by the store's idempotent
insert and only counted.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING

from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest

from vauban_trace.collector._codec import drop_invalid_spans
from vauban_trace.collector._metrics import CollectorMetrics

if TYPE_CHECKING:
    from vauban_trace.store import TraceStore


class StoreUnavailable(Exception):
    """The durable write failed; nothing was acknowledged (retryable: 503 / UNAVAILABLE)."""


class Admission:
    """Non-blocking bounds on concurrent export requests and their bytes."""

    def __init__(self, max_requests: int, max_bytes: int, metrics: CollectorMetrics | None = None) -> None:
        self.max_requests = max_requests
        self.max_bytes = max_bytes
        self._requests = 0
        self._bytes = 0
        self._cond = threading.Condition()
        self._metrics = metrics
        self.draining = False

    def try_enter(self, nbytes: int) -> bool:
        """Reserve room for one request of ``nbytes``; False (at once) when there is none."""
        with self._cond:
            if self.draining or self._requests >= self.max_requests:
                return False
            if self._requests and self._bytes + nbytes > self.max_bytes:
                return False  # a lone request always fits (max_bytes >= max_body)
            self._requests += 1
            self._bytes += nbytes
            depth = self._requests
        if self._metrics is not None:
            self._metrics.queue_depth.set(depth)
        return True

    def leave(self, nbytes: int) -> None:
        with self._cond:
            self._requests -= 1
            self._bytes -= nbytes
            depth = self._requests
            self._cond.notify_all()
        if self._metrics is not None:
            self._metrics.queue_depth.set(depth)

    @property
    def in_flight(self) -> int:
        with self._cond:
            return self._requests

    def drain(self, timeout: float) -> bool:
        """Refuse new requests and wait until those in flight are done; False on timeout."""
        deadline = time.monotonic() + timeout
        with self._cond:
            self.draining = True
            while self._requests:
                left = deadline - time.monotonic()
                if left <= 0:
                    return False
                self._cond.wait(left)
        return True


@dataclass(frozen=True)
class Outcome:
    """What became of one export request's spans."""

    accepted: int
    duplicates: int
    rejected: int
    message: str


class Ingestor:
    """Validate, durably store and count the spans of one export request."""

    def __init__(
        self,
        store: TraceStore,
        metrics: CollectorMetrics,
        on_stored: Callable[[], None] | None = None,
    ) -> None:
        self._store = store
        self._metrics = metrics
        self._on_stored = on_stored
        self._write_lock = threading.Lock()

    def ingest(self, request: ExportTraceServiceRequest, transport: str) -> Outcome:
        """Store the valid spans of ``request``; raises :class:`StoreUnavailable` if the write failed."""
        check = drop_invalid_spans(request)
        received = check.valid + check.rejected
        if received:
            self._metrics.spans_received.labels(transport).inc(received)
        if check.rejected:
            self._metrics.spans_rejected.labels("invalid_id").inc(check.rejected)
        accepted = duplicates = 0
        if check.valid:
            started = time.perf_counter()
            try:
                with self._write_lock:
                    accepted, duplicates = self._store.add_spans(request)
            except Exception as exc:
                self._metrics.spans_rejected.labels("store_error").inc(check.valid)
                raise StoreUnavailable(f"the trace store could not write the spans: {exc}") from exc
            finally:
                self._metrics.store_write.observe(time.perf_counter() - started)
            if duplicates:
                self._metrics.spans_duplicated.inc(duplicates)
            if accepted and self._on_stored is not None:
                self._on_stored()
        return Outcome(accepted, duplicates, check.rejected, check.message())
