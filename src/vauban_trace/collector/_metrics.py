"""Prometheus metrics of the collector, in a private registry served on ``--metrics``.

The names are a contract (the Grafana dashboard is written against them):

======================================================  =========  ==================================
name                                                    type       labels
======================================================  =========  ==================================
``vauban_collector_spans_received_total``               counter    transport (http, grpc)
``vauban_collector_spans_rejected_total``               counter    reason (invalid_id, invalid_time,
                                                                   store_error)
``vauban_collector_spans_duplicated_total``             counter
``vauban_collector_requests_total``                     counter    transport, code (HTTP status
                                                                   number or gRPC code name)
``vauban_collector_traces_rebuilt_total``               counter    state (complete, incomplete)
``vauban_collector_queue_depth``                        gauge      (export requests in flight)
``vauban_collector_pending_traces``                     gauge      (traces waiting for assembly)
``vauban_collector_store_write_seconds``                histogram
``vauban_stage_duration_seconds``                       histogram  stage, model, sweep_axis,
                                                                   sweep_value
``vauban_stage_bytes``                                  histogram  stage, model, direction (in,
                                                                   out), sweep_axis, sweep_value
``vauban_stage_sync_points``                            histogram  stage, model, sweep_axis,
                                                                   sweep_value
``vauban_sweep_fit_status``                             gauge      sweep_id, axis, stage, model,
                                                                   status (fitted, refused), reason,
                                                                   caveat
``vauban_sweep_usl_parameter``                          gauge      sweep_id, axis, stage, model,
                                                                   parameter (lambda, sigma, kappa),
                                                                   bound (estimate, low, high)
``vauban_sweep_usl_peak``                               gauge      sweep_id, axis, stage, model
``vauban_sweep_usl_r_squared``                          gauge      sweep_id, axis, stage, model
``vauban_sweep_usl_predicted``                          gauge      sweep_id, axis, stage, model,
                                                                   sweep_value
``vauban_sweep_observed``                               gauge      sweep_id, axis, stage, model,
                                                                   sweep_value, quantity
                                                                   (median_duration_s, throughput)
``vauban_sweep_points``                                 gauge      sweep_id, axis, stage, model,
                                                                   quantity (values, traces,
                                                                   min_repeats)
======================================================  =========  ==================================

Stage histograms are observed from rebuilt traces, once per span (a trace rebuilt again after a
late span only adds the spans not seen before). ``model`` is the root span's
``gen_ai.request.model``; ``sweep_axis`` / ``sweep_value`` come from the root's
``vauban.sweep.axis`` / ``vauban.sweep.axis_value`` ("" when absent). Byte counters are observed
when the stage carries a value; ``sync_points`` only when its provenance is ``measured`` or
``derived``. An unavailable counter is never observed (not as 0, not at all).

The ``vauban_sweep_*`` gauges are not owned by this class: the sweep profiler
(:class:`~vauban_trace.collector._sweeps.SweepProfiler`, registered in this registry by the
service unless ``--sweep-profile-interval 0``) exports the USL fits of the sweeps the collector
stores; a refused fit exports its status and reason and no parameter, peak, R² or prediction.
"""

from __future__ import annotations

import threading
from bisect import bisect_left
from collections import OrderedDict
from collections.abc import Iterable, Iterator, Sequence
from typing import TYPE_CHECKING, Any

import numpy as np
from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, start_http_server
from prometheus_client.metrics_core import Metric

from vauban_trace.contract import Provenance
from vauban_trace.rebuild import group_stage_values

if TYPE_CHECKING:
    from vauban_trace.rebuild import StageObservation, StageValues, TraceDocument

_DURATION_BUCKETS = (
    0.0001, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0,
)
_BYTES_BUCKETS = tuple(float(4**i) for i in range(3, 17))  # 64 B .. 4 GiB
_SYNC_BUCKETS = (0.0, 1.0, 2.0, 4.0, 8.0, 16.0, 32.0, 64.0, 128.0, 256.0, 512.0, 1024.0, 4096.0)
_WRITE_BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0)
_VECTOR_MIN = 32  # values per series from which numpy sorts them into buckets
_OBSERVABLE = (Provenance.MEASURED.value, Provenance.DERIVED.value)
_STAGE_LABELS = ("stage", "model", "sweep_axis", "sweep_value")


class CollectorMetrics:
    """Every metric of one collector instance, registered in its own :class:`CollectorRegistry`."""

    def __init__(self, registry: CollectorRegistry | None = None, *, remember_traces: int = 10_000,
                 pending_values: int = 1 << 16) -> None:
        self.registry = registry if registry is not None else CollectorRegistry(auto_describe=True)
        r = self.registry
        self.spans_received = Counter(
            "vauban_collector_spans_received", "Spans received in export requests.", ["transport"], registry=r
        )
        self.spans_rejected = Counter(
            "vauban_collector_spans_rejected", "Spans refused (partial success or store failure).",
            ["reason"], registry=r,
        )
        self.spans_duplicated = Counter(
            "vauban_collector_spans_duplicated", "Spans already stored (client retries).", registry=r
        )
        self.requests = Counter(
            "vauban_collector_requests", "Export requests answered.", ["transport", "code"], registry=r
        )
        self.traces_rebuilt = Counter(
            "vauban_collector_traces_rebuilt", "Traces rebuilt by the assembler.", ["state"], registry=r
        )
        self.queue_depth = Gauge(
            "vauban_collector_queue_depth", "Export requests being processed.", registry=r
        )
        self.pending_traces = Gauge(
            "vauban_collector_pending_traces", "Traces whose spans changed since their last rebuild.",
            registry=r,
        )
        self.store_write = Histogram(
            "vauban_collector_store_write_seconds", "Durable span writes (TraceStore.add_spans).",
            buckets=_WRITE_BUCKETS, registry=r,
        )
        # the stage histograms are registered through _StageHistograms, which folds the values
        # still pending into them before every collection (see observe_documents)
        self.stage_duration = Histogram(
            "vauban_stage_duration_seconds", "Stage span durations from rebuilt traces.",
            list(_STAGE_LABELS), buckets=_DURATION_BUCKETS, registry=None,
        )
        self.stage_bytes = Histogram(
            "vauban_stage_bytes", "Stage input/output bytes from rebuilt traces.",
            ["stage", "model", "direction", "sweep_axis", "sweep_value"], buckets=_BYTES_BUCKETS, registry=None,
        )
        self.stage_sync_points = Histogram(
            "vauban_stage_sync_points", "Host-device sync points per stage (measured or derived only).",
            list(_STAGE_LABELS), buckets=_SYNC_BUCKETS, registry=None,
        )
        self._seen: OrderedDict[str, tuple[str, ...]] = OrderedDict()
        self._child_cache: dict[tuple[str, tuple[str, ...]], tuple[Any, np.ndarray | None]] = {}
        self._counters: dict[tuple[str, tuple[str, ...]], Any] = {}  # count()'s children
        self._seen_cap = remember_traces
        self._lock = threading.Lock()  # the seen sets, the pending values and their folding
        # per label set and stage, the values waiting to be folded in (packed doubles), and how many
        self._pending: dict[tuple[str, str, str], dict[str, StageValues]] = {}
        self._pending_n = 0
        self._pending_cap = pending_values
        self._labels: dict[tuple[Any, ...], tuple[str, str, str]] = {}  # root labels (and types) -> label values
        r.register(_StageHistograms(self))
        self._server: Any = None
        self._thread: threading.Thread | None = None

    def count(self, metric: Counter, labels: tuple[str, ...], amount: float = 1.0) -> None:
        """``metric.labels(*labels).inc(amount)`` with the child cached (the per-request counters:
        ``labels`` builds a tuple of str and takes a lock on every call)."""
        key = (metric._name, labels)
        child = self._counters.get(key)
        if child is None:
            child = self._counters[key] = metric.labels(*labels)
        child.inc(amount)

    # -- stage histograms -----------------------------------------------------------------
    def observe_documents(self, docs: Iterable[TraceDocument]) -> int:
        """Observe the stage histograms for the stage spans of ``docs`` not observed before
        (:attr:`TraceDocument.stages`), labelled with each trace's ``root_labels`` (the root span's
        model, sweep axis and sweep axis value). Returns how many spans were observed.

        The values of a call (an assembly pass) are grouped per label set and stage as packed
        doubles (:func:`~vauban_trace.rebuild.group_stage_values`, in C when built) and folded
        into the histograms in bulk: before every collection of the registry (a scrape,
        ``get_sample_value``; the registered :class:`_StageHistograms` does it first, so a
        collection always shows every value observed before it) and whenever ``pending_values``
        values are waiting (memory stays bounded without scrapes: 8 bytes a value). Folding costs a
        fixed amount per series, so folding many passes at once is what keeps the histograms
        cheap per span. While a trace has no root yet
        (``root_labels`` None: rebuilt incomplete before its root arrived) nothing is observed and
        nothing is marked seen: its labels are unknown, and observing under an empty model label
        would count those spans under the wrong series for good. They are observed once the root
        has arrived; a trace whose root never arrives is not counted in the stage histograms.
        """
        done = 0
        by_labels: dict[tuple[str, str, str], list[Sequence[StageObservation]]] = {}
        with self._lock:
            known_labels = self._labels
            seen = self._seen
            for doc in docs:
                root = doc.root_labels
                if root is None:
                    continue
                # keyed with the values' types too: True == 1 == 1.0 are one dict key, but
                # "True" and "1" are two label values
                key = (root, type(root[0]), type(root[1]), type(root[2]))
                labels = known_labels.get(key)
                if labels is None:
                    labels = self._label_values(key, root)
                tid = doc.trace_id
                fresh: Sequence[StageObservation] = doc.stages
                before = seen.pop(tid, None)
                if before is None:  # the common case: a trace observed for the first time (see _fresh)
                    seen[tid] = tuple([s.span_id for s in doc.stages])
                    if len(seen) > self._seen_cap:
                        seen.popitem(last=False)
                else:
                    fresh = self._fresh(tid, before, doc.stages)
                queued = by_labels.get(labels)
                if queued is None:
                    by_labels[labels] = [fresh]
                else:
                    queued.append(fresh)
                done += len(fresh)
            for labels, seqs in by_labels.items():
                per_stage = self._pending.get(labels)
                if per_stage is None:
                    per_stage = self._pending[labels] = {}
                self._pending_n += group_stage_values(per_stage, seqs, _OBSERVABLE)
            if self._pending_n >= self._pending_cap:
                self._fold()
        return done

    def flush(self) -> None:
        """Fold the values still pending into the histograms (done before every collection)."""
        with self._lock:
            self._fold()

    def _label_values(self, key: tuple[Any, ...], root_labels: tuple[Any, Any, Any]) -> tuple[str, str, str]:
        """The label values of a root's (model, sweep axis, axis value), remembered under ``key``."""
        if len(self._labels) >= 4096:  # bounded: label sets are few, but their values come from clients
            self._labels.clear()
        labels = self._labels[key] = (_label(root_labels[0]), _label(root_labels[1]), _label(root_labels[2]))
        return labels

    def _fresh(self, trace_id: str, seen: tuple[str, ...],
               stages: tuple[StageObservation, ...]) -> list[StageObservation]:
        """The stage spans of a trace rebuilt again (after a late span) not observed before (its
        span ids ``seen``, just taken out of ``_seen``), now marked observed. Holds ``_lock``.
        A trace's observed span ids are kept as a tuple (of str: the garbage collector stops
        tracking it, so 10,000 remembered traces cost it nothing); a trace observed for the first
        time is marked by :meth:`observe_documents` itself."""
        known = set(seen)
        fresh = [s for s in stages if s.span_id not in known]
        self._seen[trace_id] = seen + tuple([s.span_id for s in fresh])
        return fresh

    def _fold(self) -> None:
        """One bulk update per series of the pending values (one lock round per bucket hit, not one
        bisect + two locked increments per value). Holds ``_lock``."""
        pending, self._pending, self._pending_n = self._pending, {}, 0
        duration, nbytes, syncs = self.stage_duration, self.stage_bytes, self.stage_sync_points
        for (model, axis, value), per_stage in pending.items():
            for stage, (durations, inputs, outputs, sync_points) in per_stage.items():
                for histogram, labels, amounts in (
                    (duration, (stage, model, axis, value), durations),
                    (nbytes, (stage, model, "in", axis, value), inputs),
                    (nbytes, (stage, model, "out", axis, value), outputs),
                    (syncs, (stage, model, axis, value), sync_points),
                ):
                    if amounts:
                        child, edges = self._child(histogram, labels)
                        _observe_many(child, amounts, edges)

    def _child(self, histogram: Histogram, labels: tuple[str, ...]) -> tuple[Any, np.ndarray | None]:
        """``histogram.labels(*labels)`` and its bucket bounds as an array, cached; created only
        when first observed, so a series never appears without an observation."""
        key = (histogram._name, labels)
        found = self._child_cache.get(key)
        if found is None:
            child = histogram.labels(*labels)
            bounds = getattr(child, "_upper_bounds", None)
            edges = np.asarray(bounds, dtype=np.float64) if isinstance(bounds, list) else None
            found = self._child_cache[key] = (child, edges)
        return found

    # -- exposition -----------------------------------------------------------------------
    def serve(self, host: str, port: int) -> tuple[str, int]:
        """Serve ``/metrics`` on ``host:port`` (0 picks a port) in a daemon thread; returns the address."""
        server, thread = start_http_server(port, addr=host, registry=self.registry)
        self._server, self._thread = server, thread
        return host, int(server.server_port)

    def close(self) -> None:
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
            self._server = None


class _StageHistograms:
    """The three stage histograms as one registry collector: folds the pending values into them
    (:meth:`CollectorMetrics.flush`), then yields them exactly as the histograms themselves would."""

    def __init__(self, metrics: CollectorMetrics) -> None:
        self._metrics = metrics

    def _histograms(self) -> tuple[Histogram, Histogram, Histogram]:
        m = self._metrics
        return m.stage_duration, m.stage_bytes, m.stage_sync_points

    def describe(self) -> list[Metric]:
        return [family for h in self._histograms() for family in h.describe()]

    def collect(self) -> Iterator[Metric]:
        self._metrics.flush()
        for h in self._histograms():
            yield from h.collect()


def _observe_many(child: Any, amounts: Sequence[float] | bytearray, edges: np.ndarray | None = None) -> None:
    """``child.observe(a)`` for every amount, in bulk: the same buckets and sum as one
    ``observe`` per value (``le`` buckets are inclusive: a value lands in the first bucket whose
    bound is >= it), with one increment per bucket hit. ``amounts``: a list of numbers, or a
    buffer of native doubles (:data:`~vauban_trace.rebuild.StageValues`); ``edges``: the child's
    bounds as a float64 array, when the caller keeps it. The sum of many values is numpy's
    (pairwise: equal to adding one by one up to float rounding). Falls back to ``observe`` when
    the prometheus_client internals are not the expected ones."""
    bounds = getattr(child, "_upper_bounds", None)
    buckets = getattr(child, "_buckets", None)
    total = getattr(child, "_sum", None)
    packed = np.frombuffer(amounts, dtype=np.float64) if isinstance(amounts, bytearray) else None
    if not isinstance(bounds, list) or not isinstance(buckets, list) or len(buckets) != len(bounds) or total is None:
        for amount in (packed.tolist() if packed is not None else amounts):
            child.observe(amount)
        return
    counts: dict[int, int] = {}
    if packed is not None or len(amounts) >= _VECTOR_MIN:
        # float64 is exact up to 2**53, past every finite bound, so no value changes bucket
        values = packed if packed is not None else np.asarray(amounts, dtype=np.float64)
        if edges is None or len(edges) != len(bounds):
            edges = np.asarray(bounds, dtype=np.float64)
        hits = np.bincount(np.searchsorted(edges, values[values == values]), minlength=len(bounds))
        counts = {int(i): int(hits[i]) for i in np.flatnonzero(hits)}
        amount_sum = float(values.sum()) if packed is not None else sum(amounts)
    else:
        for amount in amounts:
            if amount == amount:  # NaN matches no bucket in observe() either (it only adds to the sum)
                i = bisect_left(bounds, amount)
                counts[i] = counts.get(i, 0) + 1
        amount_sum = sum(amounts)
    total.inc(amount_sum)
    for i, n in counts.items():
        buckets[i].inc(n)


def _label(value: Any) -> str:
    if value is None:
        return ""
    if isinstance(value, float) and value.is_integer():
        return str(int(value))
    return str(value)
