"""A minimal serving loop for concurrency sweeps: a bounded queue, K workers, optional dynamic batching.

::

    from vauban_trace.sweep import ServingLoop

    with ServingLoop(serve=lambda text: executor.run(executor.make_request(text)),
                     model="tiny-llama", workers=1) as loop:
        result = loop.call("Hello")                 # blocks; one traced request per call

    with ServingLoop(serve_batch=lambda texts: [run_batch(texts)] * len(texts),
                     model="tiny-llama", max_batch=8, max_wait_s=0.002) as loop:
        ...

The loop is executor-agnostic: it takes a callable that serves one payload (``serve``) or a list
of payloads (``serve_batch``, returning one result per payload, in order); framework code stays
with the caller (e.g. ``executors/``).

**Traces.** Every :meth:`ServingLoop.call` is its own traced request, opened in the *caller's*
thread, so the root span is the latency the client sees and carries the caller's sweep
coordinates (:func:`vauban_trace.sweep_point`) and, under the concurrency driver, its run and
client (``Trace.metadata["closed_loop"]``). Two stage spans follow, in the same trace:

- ``queue``: from the moment the call enqueues its payload until a worker takes it into a batch.
  ``queue_depth`` (measured) is the number of payloads waiting ahead of it when it was enqueued;
  ``duration_s`` (measured) is the worker's clock from enqueue to batch start (the span's own
  timestamps also include the caller thread's wake-up).
- ``batch``: the service of the batch this request was part of. ``batch_size`` (measured) is the
  size of the formed batch, ``queue_depth`` (measured) the payloads still waiting when the batch
  was formed, ``duration_s`` (measured) the worker's clock around the served callable. Span
  metadata (``vauban.span.metadata``) relates the members of one batch: ``batch_id`` (``w<k>-<n>``,
  the same in every member's trace), ``worker``, ``batch_members`` (the member requests' trace
  ids) and ``served_trace_ids`` (the ``trace_id`` of each result that has one, e.g. an
  executor's ``RunResult``: the trace the executor made for the batch).

So a batch of B requests appears as B ``batch`` spans, one per member trace, with the same
``batch_id`` and counters: each request's trace shows the time it spent being served and by
which batch. OpenTelemetry span links were considered and not used: the rebuild (the one road to
a :class:`~vauban_trace.contract.Trace`) does not keep links, so a relation carried only in links
would vanish from every Trace; span metadata survives the rebuild from every source.

**The served callable** runs on a worker thread, outside the requests' contexts: whatever it traces
(an executor's ``run`` opens its own traced request) forms its own traces, of the usual shape,
without sweep coordinates (they describe batches, not client requests, and are not profiled with
the sweep); ``served_trace_ids`` points at them.

**Errors.** An exception raised by the served callable is recorded on the ``batch`` span and the
root span of every member request and re-raised unchanged (the same object) in each caller's
thread. A ``serve_batch`` that returns another number of results than payloads raises
:class:`~vauban_trace._exceptions.ConfigurationError` in the callers.

**Queue.** ``queue_size`` bounds the queue; a call that finds it full blocks (back-pressure), and
that wait counts as queue time. :meth:`close` lets the workers drain the queue, then stops and
joins them; a call that reaches the queue once ``close`` has begun is refused with
:class:`~vauban_trace._exceptions.ConfigurationError` (never queued behind the stop, where no
worker would serve it). A worker that cannot start (the process is out of threads) stops the ones
started and :meth:`start` raises ``ConfigurationError``.
"""

from __future__ import annotations

import itertools
import math
import queue
import threading
import time
from collections.abc import Callable, Sequence
from typing import Any, Generic, TypeVar

from vauban_trace._exceptions import ConfigurationError
from vauban_trace.contract import Trace, TraceRequest
from vauban_trace.instrument import stage, traced_request
from vauban_trace.sweep._labels import load_metadata

P = TypeVar("P")
R = TypeVar("R")

QUEUE_STAGE = "queue"
BATCH_STAGE = "batch"


class _Ticket:
    """One call in flight: its payload, the worker's clock readings, the outcome."""

    __slots__ = ("batch_id", "batch_size", "depth_after", "depth_at_enqueue", "done", "error", "members",
                 "payload", "result", "served", "started", "t_done", "t_enqueue", "t_start", "trace_id", "worker")

    def __init__(self, payload: Any, trace_id: str | None) -> None:
        self.payload = payload
        self.trace_id = trace_id
        self.started = threading.Event()
        self.done = threading.Event()
        self.t_enqueue = self.t_start = self.t_done = 0.0
        self.depth_at_enqueue = self.depth_after = self.batch_size = self.worker = 0
        self.batch_id = ""
        self.members: list[str] = []
        self.served: list[str] = []
        self.result: Any = None
        self.error: BaseException | None = None


class ServingLoop(Generic[P, R]):
    """Bounded request queue served by ``workers`` threads (see the module docstring).

    Give exactly one of ``serve`` (one payload -> one result) or ``serve_batch`` (list of payloads
    -> list of results, same length and order). ``max_batch`` > 1 needs ``serve_batch``; a worker
    that takes a payload waits up to ``max_wait_s`` for more, up to ``max_batch``. ``model``,
    ``operation``, ``provider``, ``executor`` and ``device`` go on every request's root span.
    """

    def __init__(
        self,
        *,
        model: str,
        serve: Callable[[P], R] | None = None,
        serve_batch: Callable[[list[P]], Sequence[R]] | None = None,
        workers: int = 1,
        max_batch: int = 1,
        max_wait_s: float = 0.0,
        queue_size: int = 1024,
        operation: str = "text_completion",
        provider: str = "vauban-trace.serving",
        executor: str | None = None,
        device: str | None = None,
    ) -> None:
        if (serve is None) == (serve_batch is None):
            raise ConfigurationError("ServingLoop: give exactly one of serve= (one payload) or serve_batch= (a list)")
        if not isinstance(model, str) or not model:
            raise ConfigurationError("ServingLoop: model must be a non-empty string (it names the root spans)")
        for name, value, low in (("workers", workers, 1), ("max_batch", max_batch, 1), ("queue_size", queue_size, 1)):
            if isinstance(value, bool) or not isinstance(value, int) or value < low:
                raise ConfigurationError(f"ServingLoop: {name} must be an integer >= {low}, got {value!r}")
        if max_batch > 1 and serve_batch is None:
            raise ConfigurationError(f"ServingLoop: max_batch={max_batch} needs serve_batch= (serve= takes one payload)")
        if isinstance(max_wait_s, bool) or not isinstance(max_wait_s, (int, float)) or not (
                math.isfinite(max_wait_s) and max_wait_s >= 0):
            raise ConfigurationError(f"ServingLoop: max_wait_s must be a finite number >= 0, got {max_wait_s!r}")
        self.model = model
        self.workers = workers
        self.max_batch = max_batch
        self.max_wait_s = float(max_wait_s)
        self.queue_size = queue_size
        self._serve = serve
        self._serve_batch = serve_batch
        self._root = {"operation": operation, "provider": provider, "executor": executor, "device": device}
        self._queue: queue.Queue[_Ticket | None] = queue.Queue(maxsize=queue_size)
        self._threads: list[threading.Thread] = []
        self._state = "new"
        self._lock = threading.Lock()
        self._batches = itertools.count()

    # -- lifecycle ------------------------------------------------------------------------
    def start(self) -> ServingLoop[P, R]:
        with self._lock:
            if self._state != "new":
                raise ConfigurationError(f"ServingLoop: cannot start a loop that is {self._state}")
            self._state = "running"
            for k in range(self.workers):
                t = threading.Thread(target=self._work, args=(k,), name=f"vauban-serving-{k}", daemon=True)
                try:
                    t.start()
                except RuntimeError as exc:  # out of threads: stop the workers started, refuse the loop
                    self._state = "closed"
                    for _ in self._threads:
                        self._queue.put(None)
                    for started in self._threads:
                        started.join()
                    raise ConfigurationError(f"ServingLoop: could not start worker {k + 1} of workers={self.workers} "
                                             f"({exc}); lower workers") from exc
                self._threads.append(t)
        return self

    def close(self) -> None:
        """Serve what is queued, then stop the workers (idempotent)."""
        with self._lock:
            if self._state != "running":
                self._state = "closed"
                return
            self._state = "closed"
        for _ in self._threads:
            self._queue.put(None)
        for t in self._threads:
            t.join()

    def __enter__(self) -> ServingLoop[P, R]:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.close()

    @property
    def running(self) -> bool:
        return self._state == "running"

    # -- client side ------------------------------------------------------------------------
    def call(self, payload: P, *, request: TraceRequest | None = None) -> R:
        """Serve ``payload`` as one traced request (blocks until served); returns its result or
        re-raises the served callable's exception unchanged."""
        if self._state != "running":
            raise ConfigurationError(f"ServingLoop: call() on a loop that is {self._state} (use start() or with)")
        root = self._root
        with traced_request(request, model=self.model, operation=str(root["operation"]),
                            provider=str(root["provider"]), executor=root["executor"], device=root["device"],
                            metadata=load_metadata()) as req:
            ticket = _Ticket(payload, req.trace_id)
            with stage(QUEUE_STAGE) as q:
                self._enqueue(ticket)
                ticket.started.wait()
                q.set_counter("queue_depth", ticket.depth_at_enqueue, provenance="measured")
                q.set_counter("duration_s", max(0.0, ticket.t_start - ticket.t_enqueue), provenance="measured")
            with stage(BATCH_STAGE) as b:
                ticket.done.wait()
                b.set_counter("batch_size", ticket.batch_size, provenance="measured")
                b.set_counter("queue_depth", ticket.depth_after, provenance="measured")
                b.set_counter("duration_s", max(0.0, ticket.t_done - ticket.t_start), provenance="measured")
                b.set_metadata({"batch_id": ticket.batch_id, "worker": ticket.worker,
                                "batch_members": ticket.members, "served_trace_ids": ticket.served})
                if ticket.error is not None:
                    raise ticket.error
            result: R = ticket.result
            return result

    def _enqueue(self, ticket: _Ticket) -> None:
        # Under the lock: close() cannot queue its stop markers between the state check and the
        # put, so no ticket lands behind them (it would never be served and its caller would wait
        # for ever). A full queue blocks here with the lock held; the workers drain it without it.
        with self._lock:
            if self._state != "running":
                raise ConfigurationError(f"ServingLoop: call() on a loop that is {self._state}")
            ticket.depth_at_enqueue = self._queue.qsize()
            ticket.t_enqueue = time.perf_counter()
            self._queue.put(ticket)

    # -- worker side ------------------------------------------------------------------------
    def _take(self) -> tuple[list[_Ticket], bool]:
        """Block for one ticket, then gather up to max_batch within max_wait_s; (batch, stop)."""
        first = self._queue.get()
        if first is None:
            return [], True
        items = [first]
        deadline = time.perf_counter() + self.max_wait_s
        while len(items) < self.max_batch:
            remaining = deadline - time.perf_counter()
            try:
                nxt = self._queue.get(timeout=remaining) if remaining > 0 else self._queue.get_nowait()
            except queue.Empty:
                break
            if nxt is None:
                return items, True
            items.append(nxt)
        return items, False

    def _work(self, k: int) -> None:
        while True:
            items, stop = self._take()
            if items:
                self._serve_items(k, items)
            if stop:
                return

    def _serve_items(self, k: int, items: list[_Ticket]) -> None:
        batch_id = f"w{k}-{next(self._batches)}"
        members = [t.trace_id for t in items if t.trace_id is not None]
        t_start = time.perf_counter()
        depth = self._queue.qsize()
        for t in items:
            t.t_start, t.batch_id, t.batch_size, t.depth_after, t.worker, t.members = (
                t_start, batch_id, len(items), depth, k, members)
            t.started.set()
        results: list[Any] = []
        served: list[str] = []
        error: BaseException | None = None
        try:
            if self._serve_batch is not None:
                results = list(self._serve_batch([t.payload for t in items]))
                if len(results) != len(items):
                    error = ConfigurationError(
                        f"ServingLoop: serve_batch returned {len(results)} results for a batch of {len(items)} payloads")
            else:
                assert self._serve is not None
                results = [self._serve(items[0].payload)]
            served = sorted({tid for r in results if isinstance(tid := getattr(r, "trace_id", None), str)})
        except BaseException as exc:  # handed to every caller, re-raised there unchanged
            error = exc
        finally:  # every caller is released, whatever happened: a worker never leaves one waiting
            t_done = time.perf_counter()
            for i, t in enumerate(items):
                t.t_done, t.served, t.error = t_done, served, error
                if error is None:
                    t.result = results[i]
                t.done.set()


def queue_wait_s(trace: Trace) -> float | None:
    """The time ``trace``'s request waited in a serving loop's queue: the sum of its ``queue``
    stage durations, None when nothing queued it (no such stage with a duration)."""
    waits = [s.stage_duration_s for s in trace.spans if s.stage == QUEUE_STAGE and s.stage_duration_s is not None]
    return sum(waits) if waits else None


def traced_call(
    fn: Callable[[P], R],
    *,
    model: str,
    operation: str = "text_completion",
    provider: str = "vauban-trace.serving",
    executor: str | None = None,
    device: str | None = None,
) -> Callable[[P], R]:
    """Wrap a plain callable (one that opens no traced request of its own) so that each call is
    one traced request in the calling thread: the direct target of the concurrency driver, when
    no serving loop sits between the clients and the service. Stages the callable opens become
    children of that root."""
    if not isinstance(model, str) or not model:
        raise ConfigurationError("traced_call: model must be a non-empty string")

    def call(payload: P) -> R:
        with traced_request(model=model, operation=operation, provider=provider, executor=executor, device=device,
                            metadata=load_metadata()):
            return fn(payload)

    return call


__all__ = ["BATCH_STAGE", "QUEUE_STAGE", "ServingLoop", "queue_wait_s", "traced_call"]
