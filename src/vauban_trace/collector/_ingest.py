"""Admission control and the durable write shared by the HTTP and gRPC receivers.

:class:`Admission` bounds the work in flight: at most ``max_requests`` export requests and
``max_bytes`` of request bodies at once, both transports together, and no new request while
the assembly backlog is over ``max_backlog`` traces. :meth:`Admission.try_enter`
never blocks: a request over either bound is refused at once (HTTP 503 + ``Retry-After``, gRPC
UNAVAILABLE + RetryInfo), so memory stays bounded however many clients push, and clients retry.

:class:`Ingestor` drops spans with malformed ids (reported as ``partial_success``), writes the
rest with :meth:`TraceStore.add_spans` (durable when it returns: only then does the receiver
answer 200), counts everything in :class:`CollectorMetrics`, and wakes the assembler.
Duplicates (a client re-sending after a lost reply) are absorbed by the store's idempotent
insert and only counted. All writes go through one writer thread with group commit (see
:class:`Ingestor`), so the number of SQLite connections does not grow with client connections.
The hand-off to that thread and back costs two thread wake-ups per request, each through an
eventfd (written and read without the GIL, so no thread wakes up only to wait for it).
"""

from __future__ import annotations

import os
import threading
import time
from _thread import LockType
from _thread import allocate_lock as _allocate_lock
from collections import deque
from collections.abc import Callable, Mapping
from contextlib import AbstractContextManager, nullcontext
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest

from vauban_trace.collector._codec import PROTOBUF, decode_request, drop_invalid_spans
from vauban_trace.collector._metrics import CollectorMetrics
from vauban_trace.store import CutRequest, cut_request

if TYPE_CHECKING:
    from vauban_trace.store import SpanSnapshot, TraceStore


def read_protobuf(body: bytes | bytearray | memoryview) -> ExportTraceServiceRequest | CutRequest:
    """A protobuf request body, ready for :meth:`Ingestor.ingest`: cut into the store's rows by the
    C splitter (:func:`~vauban_trace.store.cut_request`) when every span is valid and the bytes
    are in the canonical form upb writes (what SDK exporters send), so that no protobuf decode is
    needed; otherwise (a span to reject, unusual encoding, no extension) decoded with upb. Raises
    :class:`~vauban_trace.collector._codec.BadRequest` when it does not decode. Either way the
    caller can drop the body before the (slow) durable write. The splitter reads ``body`` in
    place (its rows hold copies), so the body is copied only on the decode road."""
    cut = cut_request(body)  # type: ignore[arg-type]  # any contiguous buffer: the rows are copies
    return decode_request(bytes(body), PROTOBUF) if cut is None else cut


class StoreUnavailable(Exception):
    """The durable write failed; nothing was acknowledged (retryable: 503 / UNAVAILABLE)."""


class Admission:
    """Non-blocking bounds on concurrent export requests and their bytes."""

    def __init__(self, max_requests: int, max_bytes: int, metrics: CollectorMetrics | None = None,
                 *, max_backlog: int | None = None) -> None:
        self.max_requests = max_requests
        self.max_bytes = max_bytes
        self.max_backlog = max_backlog
        self.backlog = 0  # traces waiting for assembly, set by the assembler after each pass
        self._requests = 0
        self._bytes = 0
        self._lock = threading.Lock()
        self._cond = threading.Condition(self._lock)  # drain() waits on it
        self._metrics = metrics
        self.draining = False

    def try_enter(self, nbytes: int) -> bool:
        """Reserve room for one request of ``nbytes``; False (at once) when there is none."""
        with self._lock:
            if self.draining or self._requests >= self.max_requests:
                return False
            if self.max_backlog is not None and self.backlog > self.max_backlog:
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
        with self._lock:
            self._requests -= 1
            self._bytes -= nbytes
            depth = self._requests
            if self.draining:  # set under the lock before drain() waits: no wake-up is lost
                self._cond.notify_all()
        if self._metrics is not None:
            self._metrics.queue_depth.set(depth)

    @property
    def in_flight(self) -> int:
        with self._lock:
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


_EVENTFD = hasattr(os, "eventfd")
_CLOSED = "the collector is shutting down: the spans were not stored (retry)"


class _Job:
    """One request's part on its way to the writer. ``done`` is what the receiver thread waits on
    until the writer signals the end of the job's transaction: an eventfd (see :class:`_Wakeup`:
    signalled and waited on without the GIL), else a lock taken when the job is made."""

    __slots__ = ("part", "valid", "done", "result", "error")

    def __init__(self, part: ExportTraceServiceRequest | CutRequest, valid: int) -> None:
        self.part = part  # the decoded request, or its rows as cut by the C splitter
        self.valid = valid
        self.done: int | LockType = 0
        self.result: tuple[int, int] = (0, 0)
        self.error: BaseException | None = None

    def finish(self) -> None:
        """Wake the receiver waiting for this job (the writer calls it once per job)."""
        if isinstance(self.done, int):
            os.eventfd_write(self.done, 1)
        else:
            self.done.release()


class _Wakeup:
    """Wakes the writer thread: an ``eventfd`` (a pipe where there is none). Both ends are
    system calls made without the GIL, so the receiver thread has let go of the interpreter
    when the writer wakes up, and the writer goes to sleep without holding it: no thread wakes
    only to wait for the GIL (with a queue's lock, the woken writer would, and the hand-off would
    cost twice the context switches)."""

    def __init__(self) -> None:
        if hasattr(os, "eventfd"):
            self._read = self._write = os.eventfd(0, os.EFD_CLOEXEC)
        else:  # pragma: no cover - platforms without eventfd
            self._read, self._write = os.pipe()

    def set(self) -> None:
        if self._read == self._write:
            os.eventfd_write(self._write, 1)
        else:  # pragma: no cover
            os.write(self._write, b"\0")

    def wait(self) -> None:
        """Block until :meth:`set` was called since the last return (several calls: one return)."""
        if self._read == self._write:
            os.eventfd_read(self._read)
        else:  # pragma: no cover
            os.read(self._read, 4096)

    def close(self) -> None:
        os.close(self._read)
        if self._write != self._read:  # pragma: no cover
            os.close(self._write)


class Ingestor:
    """Validate, durably store and count the spans of export requests.

    Every store write happens on ONE writer thread (one SQLite connection, whatever the number
    of client connections), and requests queued while a write is running are committed together
    in the next transaction (group commit): each caller still gets its answer only after the
    transaction holding its spans committed. A receiver thread appends its job to a deque, wakes
    the writer (:class:`_Wakeup`) and waits on the job's ``done`` (an idle eventfd of a small
    pool, one per request in flight at most).
    """

    def __init__(
        self,
        store: TraceStore,
        metrics: CollectorMetrics,
        on_stored: Callable[[], None] | None = None,
        *,
        max_group: int = 64,
        on_snapshots: Callable[[Mapping[str, SpanSnapshot]], None] | None = None,
        handoff: AbstractContextManager[Any] | None = None,
    ) -> None:
        self._store = store
        self._on_snapshots = on_snapshots
        self._handoff = handoff if handoff is not None else nullcontext()  # held from write to snapshots
        self._metrics = metrics
        self._on_stored = on_stored
        self._max_group = max_group
        self._pending: deque[_Job | None] = deque()  # appended by receivers, popped by the writer
        self._wakeup = _Wakeup()
        self._fds: list[int] = []  # idle eventfds for the receivers' waits (one per request in flight)
        # guards _closed, _fds and the hand-off (append + wake-up): no job is queued after close()'s
        # end marker, and no descriptor is signalled or pooled once close() has closed them
        self._lock = threading.Lock()
        self._closed = False
        self._thread = threading.Thread(target=self._write_loop, name="vauban-store-writer", daemon=True)
        self._thread.start()

    def close(self) -> None:
        """Stop the writer thread after the queued writes. A request reaching :meth:`ingest`
        later (one still in flight when a drain timed out) gets :class:`StoreUnavailable`."""
        with self._lock:
            if self._closed:
                return
            self._closed = True
            self._pending.append(None)
            self._wakeup.set()
        self._thread.join()
        with self._lock:
            self._wakeup.close()
            fds, self._fds = self._fds, []
        for fd in fds:
            os.close(fd)

    def ingest(self, request: ExportTraceServiceRequest | CutRequest, transport: str) -> Outcome:
        """Store the valid spans of ``request`` (see :func:`read_protobuf`); spans with malformed
        ids or times are dropped and reported. Raises :class:`StoreUnavailable` if the write failed."""
        if isinstance(request, CutRequest):  # every span valid, rows ready
            received = len(request)
            if not received:
                return Outcome(0, 0, 0, "")
            self._metrics.count(self._metrics.spans_received, (transport,), received)
            return self._store_job(_Job(request, received), 0, "")
        check = drop_invalid_spans(request)
        received = check.valid + check.rejected
        if received:
            self._metrics.count(self._metrics.spans_received, (transport,), received)
        if check.rejected - check.bad_time:
            self._metrics.spans_rejected.labels("invalid_id").inc(check.rejected - check.bad_time)
        if check.bad_time:
            self._metrics.spans_rejected.labels("invalid_time").inc(check.bad_time)
        if check.valid:
            return self._store_job(_Job(request, check.valid), check.rejected, check.message())
        return Outcome(0, 0, check.rejected, check.message())

    def _store_job(self, job: _Job, rejected: int, message: str) -> Outcome:
        """Queue ``job`` for the writer and wait until its transaction committed."""
        if _EVENTFD:
            with self._lock:
                if self._closed:
                    raise StoreUnavailable(_CLOSED)
                fds = self._fds
                try:
                    fd = job.done = fds.pop() if fds else os.eventfd(0, os.EFD_CLOEXEC)
                except OSError as exc:  # EMFILE / ENFILE: the client gets a 503 to retry, not a hang-up
                    raise StoreUnavailable(f"cannot wait for the write: {exc}") from exc
                self._pending.append(job)
                self._wakeup.set()
            os.eventfd_read(fd)  # the writer signals it once, after every job queued before close()
            with self._lock:  # read back to 0: reusable (an interrupted wait leaves it out for good)
                if self._closed:
                    os.close(fd)
                else:
                    self._fds.append(fd)
        else:  # pragma: no cover - platforms without eventfd
            lock = job.done = _allocate_lock()
            lock.acquire()
            with self._lock:
                if self._closed:
                    raise StoreUnavailable(_CLOSED)
                self._pending.append(job)
                self._wakeup.set()
            lock.acquire()
        if job.error is not None:
            raise StoreUnavailable(f"the trace store could not write the spans: {job.error}") from job.error
        accepted, duplicates = job.result
        return Outcome(accepted, duplicates, rejected, message)

    def _write_loop(self) -> None:
        pending, wait, max_group = self._pending, self._wakeup.wait, self._max_group
        while True:
            wait()
            while pending:  # jobs appended during a write make the next group
                jobs: list[_Job] = []
                while pending and len(jobs) < max_group:
                    job = pending.popleft()
                    if job is None:  # close(): after the jobs queued before it
                        if jobs:
                            self._write(jobs)
                        return
                    jobs.append(job)
                self._write(jobs)

    def _write(self, jobs: list[_Job]) -> None:
        started = time.perf_counter()
        try:
            with self._handoff:  # the assembler's query of ready traces waits for the snapshots
                result = self._store.ingest_parts([job.part for job in jobs], snapshots=self._on_snapshots is not None)
                if result.snapshots and self._on_snapshots is not None:
                    self._on_snapshots(result.snapshots)
            accepted, duplicates = result.accepted, result.duplicates
        except BaseException as exc:
            self._metrics.spans_rejected.labels("store_error").inc(sum(job.valid for job in jobs))
            for job in jobs:
                job.error = exc
                job.finish()
            return
        finally:
            self._metrics.store_write.observe(time.perf_counter() - started)
        if duplicates:
            self._metrics.spans_duplicated.inc(duplicates)
        if len(jobs) == 1:
            jobs[0].result = (accepted, duplicates)
        else:  # per-request split is unknown inside one transaction; report the group's share
            for job in jobs:
                job.result = (job.valid, 0)
        for job in jobs:
            job.finish()
        if accepted and self._on_stored is not None:
            self._on_stored()
