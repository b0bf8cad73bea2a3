"""The assembler: turns stored raw spans into rebuilt :class:`~vauban_trace.contract.Trace` records.

A background thread wakes every ``interval_s`` and asks the store which traces changed since
their last rebuild (:meth:`TraceStore.pending_versions`, the ids and versions of
:meth:`TraceStore.pending_traces`; the bookkeeping is durable, so after a
restart pending work is found on disk, never in memory); the collector's writer also wakes it
when spans are stored, and a pass then waits 5 ms for more (20 ms while passes keep finding
traces to rebuild: fewer, larger passes under load). A pending trace is rebuilt when

- its root span (no parent) has arrived, which means it has ended since OTel exports a span when
  it ends, and ``quiet_period_s`` passed since its last span arrived: the trace is complete; or
- ``incomplete_after_s`` passed since its last span arrived without a root: it is rebuilt anyway,
  and :func:`~vauban_trace.rebuild.rebuild_traces` marks it incomplete and lists what is missing
  (no root, parents that never arrived).

Rebuilding is ``rebuild_documents(store.spans_for_bytes(id))`` (the rebuild's serialised form of
``rebuild_traces``: Trace JSON plus what the metrics and the store's index need, made by the C
accelerator for clean traces), where the spans of a trace whose version
is still 1 (all its spans came in one durable write) come from the snapshot the collector's
writer handed over (:meth:`Assembler.remember`, bytes identical to ``spans_for_bytes``) instead
of being read back from SQLite; any later change bumps the version and the snapshot is ignored,
and after a restart there are none: the store stays the source of truth. The writer holds
:attr:`Assembler.handoff` from its commit until the snapshots are remembered, and a pass holds
it while it asks for the ready traces, so a new trace is never rebuilt before its snapshot
arrived (which would read its spans back and leave the snapshot behind). Snapshots are bounded
(``snapshot_bytes``, 16 MiB by default: while full, new traces are not kept and are read back
like any other, so memory stays bounded under overload). Then the traces of one pass (up to
``batch``) are stored with ``store.put_documents([(doc, v), ...])`` in one transaction, where
``v`` is the version read with the pending entry: a span arriving during the rebuild bumps
the version, so the trace stays pending and is rebuilt again (a late span reopens its trace the
same way). Data that cannot be rebuilt still yields a stored, incomplete trace whose
``problems`` say why, so a bad trace is not retried forever.

:meth:`Assembler.run_once` with ``force=True`` rebuilds everything pending regardless of timing
(the collector's final pass on shutdown).
"""

from __future__ import annotations

import functools
import logging
import threading
import time
from collections.abc import Callable, Mapping
from typing import TYPE_CHECKING, Any

from vauban_trace.collector._metrics import CollectorMetrics
from vauban_trace.store import rebuild_document

if TYPE_CHECKING:
    from vauban_trace.rebuild import TraceDocument
    from vauban_trace.store import PendingTrace, SpanSnapshot, TraceStore

log = logging.getLogger("vauban_trace.collector")
#: after a wake-up, a pass waits this long for more (a burst of requests wakes it once) ...
_COALESCE_S = 0.005
#: ... and this long when the previous pass rebuilt traces (under load): a pass has a fixed cost
#: (its queries, its transaction and the pages its commit writes), so fewer, larger passes cost
#: less per span: about 0.5 CPU µs per span in bench_collector's run at quiet period 0, where a
#: 5 ms wait gave one pass per request (32 traces) and 20 ms gives about three
_COALESCE_BUSY_S = 0.02


class Assembler:
    """Background rebuild loop over the store's pending traces."""

    def __init__(
        self,
        store: TraceStore,
        metrics: CollectorMetrics,
        *,
        quiet_period_s: float = 2.0,
        incomplete_after_s: float = 30.0,
        interval_s: float = 0.25,
        batch: int = 256,
        on_backlog: Callable[[int], None] | None = None,
        snapshot_bytes: int = 16 << 20,
        on_stored: Callable[[list[TraceDocument]], None] | None = None,
    ) -> None:
        self._store = store
        self._metrics = metrics
        self._quiet_ns = int(quiet_period_s * 1e9)
        self._incomplete_ns = int(incomplete_after_s * 1e9)
        self._interval = interval_s
        self._batch = batch
        self._on_backlog = on_backlog
        self._on_stored = on_stored  # told each committed pass (the sweep profiler's note)
        self._stop = threading.Event()
        self._wake = threading.Event()
        self._thread: threading.Thread | None = None
        self._lock = threading.Lock()  # one pass at a time (loop vs. final pass)
        self.rebuilt = 0
        self._snapshots: dict[str, SpanSnapshot] = {}  # trace id -> its spans at version 1
        self._snapshot_size = 0
        self._snapshot_cap = snapshot_bytes
        self._snapshot_lock = threading.Lock()
        self.snapshot_hits = 0
        # held by the collector's writer from a durable write until its snapshots are remembered,
        # and by a pass around its query of the ready traces: a pass never finds a trace whose
        # spans were committed while their snapshot is still on its way (it would read them back)
        self.handoff = threading.Lock()
        self._counted: dict[bool, Any] = {}  # traces_rebuilt's children, made when first counted

    def remember(self, snapshots: Mapping[str, SpanSnapshot]) -> None:
        """Keep the spans of traces just stored for the first time (version 1), see the module doc."""
        with self._snapshot_lock:
            for tid, data in snapshots.items():
                old = self._snapshots.pop(tid, None)
                if old is not None:
                    self._snapshot_size -= old.nbytes
                if self._snapshot_size + data.nbytes <= self._snapshot_cap:  # full: read back later
                    self._snapshots[tid] = data
                    self._snapshot_size += data.nbytes

    def _drop_snapshots(self) -> None:
        with self._snapshot_lock:
            self._snapshots.clear()
            self._snapshot_size = 0

    def _take_snapshots(self, entries: list[tuple[str, int]]) -> list[SpanSnapshot | None]:
        """The snapshot of each ``(trace id, version)`` (None when there is none, or when the trace
        changed since: version past 1), all taken out of the store in one lock round."""
        taken: list[SpanSnapshot | None] = []
        with self._snapshot_lock:
            if not self._snapshots:
                return [None] * len(entries)
            pop = self._snapshots.pop
            size = self._snapshot_size
            for tid, version in entries:
                snapshot = pop(tid, None)
                if snapshot is not None:
                    size -= snapshot.nbytes
                    if version != 1:
                        snapshot = None
                taken.append(snapshot)
            self._snapshot_size = size
        return taken

    # -- lifecycle ------------------------------------------------------------------------
    def start(self) -> None:
        self._thread = threading.Thread(target=self._loop, name="vauban-assembler", daemon=True)
        self._thread.start()

    def wake(self) -> None:
        """Hint that spans were stored (the loop also polls; this only shortens the wait)."""
        self._wake.set()

    def stop(self, *, final_pass: bool = True) -> int:
        """Stop the loop; with ``final_pass`` rebuild everything still pending. Returns rebuilt count."""
        self._stop.set()
        self._wake.set()
        if self._thread is not None:
            self._thread.join()
            self._thread = None
        return self.run_once(force=True) if final_pass else 0

    def _loop(self) -> None:
        done = 0
        while not self._stop.is_set():
            try:
                done = self.run_once()
            except Exception:  # keep assembling; the error is logged and retried next tick
                log.exception("assembly pass failed")
                done = 0
            self._wake.wait(self._interval)
            self._wake.clear()
            if not self._stop.is_set():  # coalesce the wake-ups: longer while traces keep coming
                self._stop.wait(min(self._interval, _COALESCE_BUSY_S if done else _COALESCE_S))

    # -- one pass -------------------------------------------------------------------------
    def ready(self, pending: PendingTrace, now_ns: int) -> bool:
        """Whether ``pending`` may be rebuilt at ``now_ns`` (the rule ``run_once`` asks the store for)."""
        quiet = now_ns - pending.last_received_unix_nano
        if pending.has_root and quiet >= self._quiet_ns:
            return True
        return quiet >= self._incomplete_ns

    def run_once(self, *, force: bool = False) -> int:
        """Rebuild the pending traces that are ready (all of them with ``force``); returns how many.

        The store is asked for the ready traces only (``pending_versions`` with the quiet-period and
        incomplete-after cut-offs: a range scan of its pending index), up to ``batch`` at a time,
        so the cost of a pass follows the work done, not the number of traces still in their
        quiet period. The backlog (the pending-traces gauge and the backpressure signal) is
        counted once at the end of a pass, and kept current by subtraction while a backlog of
        more than one batch drains.
        """
        done = 0
        with self._lock:
            backlog: int | None = None
            for _ in range(10_000):  # bounded even if a store never cleared its pending entries
                with self.handoff:
                    if force:
                        ready = self._store.pending_versions(limit=self._batch)
                    else:
                        now = time.time_ns()
                        ready = self._store.pending_versions(
                            limit=self._batch, received_by=now - self._quiet_ns,
                            rootless_received_by=now - self._incomplete_ns,
                        )
                if ready:
                    self._rebuild_batch(ready)
                done += len(ready)
                self.rebuilt += len(ready)
                if len(ready) < self._batch:
                    break
                backlog = self._store.pending_count() if backlog is None else max(0, backlog - len(ready))
                self._report_backlog(backlog)
            backlog = self._store.pending_count()
            self._report_backlog(backlog)
            if not backlog and self._snapshots:  # left by a trace rebuilt before its snapshot came
                with self.handoff:  # recounted: a trace committed since the count keeps its snapshot
                    if not self._store.pending_count():
                        self._drop_snapshots()
        return done

    def _report_backlog(self, backlog: int) -> None:
        self._metrics.pending_traces.set(backlog)
        if self._on_backlog is not None:
            self._on_backlog(backlog)

    def _rebuild_batch(self, entries: list[tuple[str, int]]) -> None:
        """Rebuild ``entries`` (``(trace id, version)``, as ``pending_versions`` lists them) and
        store them in one transaction (one commit for the batch)."""
        built = []
        for (tid, _version), snapshot in zip(entries, self._take_snapshots(entries), strict=True):
            # the one road, shared with `vauban-trace store rebuild`: bad stored data still gives a
            # stored, incomplete trace whose problems say why, instead of being retried forever
            if snapshot is not None:
                self.snapshot_hits += 1
                data = snapshot.data()  # outside the rebuild's net: a failure here fails the pass (retried)
                built.append(rebuild_document(tid, _given(data)))
            else:
                built.append(rebuild_document(tid, functools.partial(self._store.spans_for_bytes, tid)))
        # stage histograms first, so a trace readable from the store has been observed (a retry
        # after a failed put observes nothing twice: spans already seen are skipped)
        try:
            self._metrics.observe_documents(built)
        except Exception:  # metrics never block assembly
            log.exception("observing stage metrics of %d trace(s) failed", len(built))
        # the commit does not wait for the disk (durable=False): the raw spans are durable and
        # these traces stay pending until it lands, so a commit a power cut undoes is simply
        # rebuilt after the restart, while a synced commit would hold the store's write lock (and
        # the receivers' durable writes behind it) for an fsync per pass. traces/<id>.json
        # mirrors (trace_files="eager") are not fsync'd either and are rewritten on the next put
        self._store.put_documents([(doc, entry[1]) for entry, doc in zip(entries, built, strict=True)],
                                  sync_files=False, durable=False)
        complete = sum(1 for doc in built if doc.complete)
        for state, n in ((True, complete), (False, len(built) - complete)):
            if n:
                child = self._counted.get(state)
                if child is None:
                    child = self._counted[state] = self._metrics.traces_rebuilt.labels(
                        "complete" if state else "incomplete")
                child.inc(n)
        if self._on_stored is not None:
            try:
                self._on_stored(built)
            except Exception:  # a listener never blocks assembly
                log.exception("on_stored listener failed for %d trace(s)", len(built))


def _given(data: bytes) -> Callable[[], bytes]:
    """A loader of bytes already in hand (``rebuild_document`` takes a loader)."""
    return lambda: data
