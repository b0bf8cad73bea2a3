"""Sweep profiles in the collector: USL fits of the sweeps it stores, exported as Prometheus gauges.

The stage histograms already put a stage's duration against ``sweep_value``; this module adds
what ``vauban-trace sweep --profile SWEEP_ID --source store:DIR`` prints (the USL fit of each
stage, with its intervals and peak, or the reason it was refused), so a dashboard can show it.

How it works
------------
1. The assembler hands every pass of rebuilt documents to :meth:`SweepProfiler.note` (a cheap
   call on the assembler's thread: it keeps the ids of the traces whose root carries a sweep axis,
   ``TraceDocument.root_labels``, and the root's model; nothing is parsed there).
2. The profiler's own daemon thread wakes every ``interval_s`` seconds. It reads each noted trace's
   stored text back (:meth:`TraceStore.get_trace_json`); a text without a ``"sweep"`` object
   holding a non-empty string ``id`` (:func:`may_have_sweep_id`: a substring search, then only
   those small objects decoded) cannot carry a sweep id and is dropped there, unparsed (about 70
   µs per trace of 16 spans, where reading it as a Trace took about 620); the others become a
   :class:`~vauban_trace.contract.Trace` (``Trace.from_json``, the one road: store -> Trace),
   whose sweep id ``Trace.metadata["sweep"]["id"]`` marks that sweep changed. Traces without a sweep id are not profiled (the histograms still
   carry their axis and value): without an id, traces of different runs cannot be told apart.
3. Each changed sweep is profiled again from the store: its remembered traces, in trace-id order,
   go through :func:`vauban_trace.sweep.profile_traces` (``sweep_id`` set, ``seed`` fixed), exactly
   what the CLI does, so the gauges equal what ``profile_traces`` gives on the same traces.
4. The results replace that sweep's series in one step (the profiler is a custom collector of the
   metrics registry: a scrape sees a sweep's series from one profile, never half of two).

Nothing here can stop ingest or assembly: :meth:`note` only appends ids under a lock, the reads,
fits and bootstraps run on the profiler's thread, and every exception is logged (the failing sweep
keeps its previous series; a sweep whose traces are all gone or incomplete loses its series).

Bounds (label cardinality and work stay bounded whatever clients send):

- at most ``max_sweeps`` sweeps (default 16) are tracked; a new one evicts the sweep updated
  least recently, whose series are removed from the exposition at once;
- at most ``max_traces`` traces per sweep (default 1000) are remembered and read back per
  profile: the most recently noted ones (older traces fall out of the profile);
- at most ``max_waiting`` noted trace ids (default 10000) wait between two passes; past that the
  oldest are dropped (logged);
- a series carries one ``sweep_value`` label per measured axis value, so per sweep the series
  count is ``stages x values x 3`` plus a few per stage, and on the load axes at most about 30
  ``vauban_sweep_load*`` / ``vauban_sweep_verdict`` series per value (fixed quantity names; no
  run label: several runs at one value are summarised by their median, their counts summed).

Exported gauges (labels ``sweep_id``, ``axis``, ``stage``, ``model`` on all of them; ``model`` is
the root spans' ``gen_ai.request.model``, several joined with ``,``):

======================================  =============================================================
``vauban_sweep_fit_status``             1, with ``status`` = fitted | refused, ``reason`` (the fit's
                                        notes when fitted, the refusal when refused) and ``caveat``
``vauban_sweep_usl_parameter``          ``parameter`` = lambda | sigma | kappa, ``bound`` = estimate |
                                        low | high (the bootstrap interval's ends, when it exists);
                                        fitted stages only: a refused fit exports no number
``vauban_sweep_usl_peak``               ``N* = sqrt((1 - sigma) / kappa)``; only when kappa > 0
``vauban_sweep_usl_r_squared``          R² of the fit; fitted stages only
``vauban_sweep_usl_peak_interval``      ``bound`` = low | high: the bootstrap interval of ``N*``; only
                                        when the fit gives one (kappa > 0 and few refits without peak)
``vauban_sweep_usl_weighting``          1, with ``weighting`` = none | inverse_variance; fitted stages
``vauban_sweep_usl_lack_of_fit``        ``quantity`` = f | p_value | df_lack | df_pure: the lack-of-fit
                                        F test from the repeats; fitted stages where it was testable
``vauban_sweep_usl_predicted``          the fitted throughput ``X(N)`` at each measured ``sweep_value``
``vauban_sweep_observed``               ``quantity`` = median_duration_s (the profile's median stage
                                        duration at ``sweep_value``) | throughput (``N`` / that median,
                                        positive numeric values only; on the ``concurrency`` axis the
                                        ``request`` stage only, the median over runs of the throughput
                                        the USL was fitted to, ``profile.throughput_method``; on the
                                        ``arrival_rate`` axis the ``request`` stage only, the median
                                        over runs of the achieved throughput, ``profile.open_loop``)
``vauban_sweep_points``                 ``quantity`` = values (axis values with data), traces (traces
                                        with the stage), min_repeats (fewest traces at one value)
``vauban_sweep_load``                   ``stage`` = request, ``sweep_value``, ``quantity``: on the
                                        ``arrival_rate`` axis (``profile.open_loop``, per offered rate,
                                        the median over its runs) offered_realised, offered_sent,
                                        achieved (requests/s), response_p50_s / _p95_s / _p99_s,
                                        queue_wait_p50_s / _p95_s / _p99_s (when a queue stage was
                                        traced), lateness_p95_s (the generator's), littles_law_n
                                        (``L = X R``, derived), and the counts runs, traces, dropped,
                                        failed (sums over runs; dropped, and offered_realised with
                                        it, as the traces' labels tell: a lower bound, arrivals
                                        refused after a run's last sent request are not seen, which
                                        the driver's own result counts); on the ``concurrency`` axis
                                        (per N) response_p50_s (``request`` stage median), queue_wait_p50_s
                                        (``queue`` stage median, when traced), mean_response_s,
                                        throughput_window, throughput_littles_law (medians over runs,
                                        each when available), runs, traces. Absent when unmeasured
``vauban_sweep_load_interval``          ``bound`` = low | high of a ``vauban_sweep_load`` percentile
                                        (the ``_p50_s`` / ``_p95_s`` / ``_p99_s`` quantities): the
                                        bootstrap interval, only where one exists (open loop: a rate
                                        measured in one run, a tail with 5 samples beyond it; a median
                                        over several runs has none)
``vauban_sweep_verdict``                ``arrival_rate`` axis, 1 per offered rate: ``verdict`` =
                                        sustained, or the words late / saturated / failures that hold
                                        for some run, joined by ``, `` (at most 7 values); ``reason``
                                        = the runs' reasons (empty when sustained)
``vauban_sweep_load_limit``             ``arrival_rate`` axis, per sweep: ``quantity`` =
                                        highest_sustained | lowest_saturated (requests/s); absent
                                        when no rate was sustained / none saturated
======================================  =============================================================

``sweep_value`` is written like the stage histograms' label (``8``, not ``8.0``). A non-numeric
axis gets summaries only: its stages are exported ``refused`` with the profile's own reason.
Cost: one profile runs ``fit_usl`` (200 bootstrap refits) per stage and ``fit_linear`` for the
varying byte and sync counters, about 0.1 s per stage for a few dozen traces on one core; it
holds the GIL like any Python work, so a large interval suits busy collectors.
"""

from __future__ import annotations

import json
import logging
import statistics
import threading
from collections import OrderedDict
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from prometheus_client.core import GaugeMetricFamily
from prometheus_client.registry import Collector as RegistryCollector

from vauban_trace._exceptions import TraceStoreError
from vauban_trace.collector._metrics import _label
from vauban_trace.contract import Trace

if TYPE_CHECKING:
    from vauban_trace.rebuild import TraceDocument
    from vauban_trace.store import TraceStore
    from vauban_trace.sweep import RatePoint, SweepProfile

log = logging.getLogger("vauban_trace.collector")

_BASE = ("sweep_id", "axis", "stage", "model")
#: name -> (help, extra labels); the exposition order
FAMILIES: Mapping[str, tuple[str, tuple[str, ...]]] = {
    "vauban_sweep_fit_status": ("USL fit of a sweep's stage: 1 per stage, fitted or refused with the reason.",
                                ("status", "reason", "caveat")),
    "vauban_sweep_usl_parameter": ("USL parameters of a fitted stage (estimate and bootstrap interval).",
                                   ("parameter", "bound")),
    "vauban_sweep_usl_peak": ("USL peak N* of a fitted stage (only when kappa > 0).", ()),
    "vauban_sweep_usl_r_squared": ("R squared of a fitted stage's USL fit.", ()),
    "vauban_sweep_usl_peak_interval": ("Bootstrap interval of the USL peak N* of a fitted stage.", ("bound",)),
    "vauban_sweep_usl_weighting": ("Weighting of a fitted stage's USL fit: 1 with the mode.", ("weighting",)),
    "vauban_sweep_usl_lack_of_fit": ("Lack-of-fit F test of a fitted stage's USL fit (repeats needed).",
                                     ("quantity",)),
    "vauban_sweep_usl_predicted": ("USL-predicted stage throughput at each measured sweep value.",
                                   ("sweep_value",)),
    "vauban_sweep_observed": ("Measured stage median duration and throughput at each sweep value.",
                              ("sweep_value", "quantity")),
    "vauban_sweep_points": ("Sweep values, traces and fewest repeats behind a stage's profile.", ("quantity",)),
    "vauban_sweep_load": ("Load-test numbers per sweep value (open loop: offered, achieved, percentiles, lateness, "
                          "Little's L; closed loop: response and queue medians, throughputs).", ("sweep_value", "quantity")),
    "vauban_sweep_load_interval": ("Bootstrap interval of a load-test percentile at a sweep value.",
                                   ("sweep_value", "quantity", "bound")),
    "vauban_sweep_verdict": ("Open-loop verdict per offered rate: 1 with sustained, late, saturated or failures "
                             "and the reason.", ("sweep_value", "verdict", "reason")),
    "vauban_sweep_load_limit": ("Open-loop sweep: highest offered rate sustained, lowest rate saturated (req/s).",
                                ("quantity",)),
}
Sample = tuple[str, tuple[str, ...], float]  # family, label values (base + extra), value


@dataclass
class _Sweep:
    traces: OrderedDict[str, str] = field(default_factory=OrderedDict)  # trace id -> root model


class SweepProfiler(RegistryCollector):
    """Re-profiles the sweeps the collector stores and exposes their fits (see the module doc)."""

    def __init__(
        self,
        store: TraceStore,
        *,
        interval_s: float = 10.0,
        max_sweeps: int = 16,
        max_traces: int = 1000,
        max_waiting: int = 10_000,
        seed: int = 0,
    ) -> None:
        if interval_s <= 0 or max_sweeps < 1 or max_traces < 1 or max_waiting < 1:
            raise ValueError("SweepProfiler: interval_s must be > 0 and every bound >= 1")
        self._store = store
        self._interval = interval_s
        self._max_sweeps = max_sweeps
        self._max_traces = max_traces
        self._max_waiting = max_waiting
        self._seed = seed
        self._waiting: OrderedDict[str, str] = OrderedDict()  # trace id -> model, noted since the last pass
        self._sweeps: OrderedDict[str, _Sweep] = OrderedDict()  # least recently updated first
        self._series: dict[str, list[Sample]] = {}
        self._profiles: dict[str, SweepProfile] = {}
        self._lock = threading.Lock()  # _waiting, _series, _profiles
        self._pass_lock = threading.Lock()  # one pass at a time
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self.dropped = 0  # noted ids dropped because too many waited

    # -- feeding (assembler thread) ---------------------------------------------------------
    def note(self, docs: Iterable[TraceDocument]) -> None:
        """Remember the rebuilt documents whose root carries a sweep axis (cheap; never raises
        for a document without root labels)."""
        with self._lock:
            for doc in docs:
                labels = doc.root_labels
                if labels is None or labels[1] in (None, ""):
                    continue
                self._waiting.pop(doc.trace_id, None)
                self._waiting[doc.trace_id] = _label(labels[0])
                if len(self._waiting) > self._max_waiting:
                    self._waiting.popitem(last=False)
                    self.dropped += 1
                    if self.dropped == 1 or self.dropped % 1000 == 0:
                        log.warning("sweep profiler: %d noted trace(s) dropped (more than %d waiting)",
                                    self.dropped, self._max_waiting)

    # -- lifecycle --------------------------------------------------------------------------
    def start(self) -> None:
        self._thread = threading.Thread(target=self._loop, name="vauban-sweep-profiler", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join()
            self._thread = None

    def _loop(self) -> None:
        while not self._stop.wait(self._interval):
            try:
                self.run_once()
            except Exception:  # never let the thread die: the next tick retries
                log.exception("sweep profiling pass failed")

    # -- one pass ---------------------------------------------------------------------------
    def run_once(self) -> int:
        """Read back the noted traces, re-profile the sweeps they changed; returns how many."""
        with self._pass_lock:
            with self._lock:
                waiting, self._waiting = self._waiting, OrderedDict()
            fresh: dict[str, Trace] = {}
            changed: dict[str, None] = {}
            for trace_id, model in waiting.items():
                trace = self._read(trace_id)
                if trace is None:
                    continue
                sweep = trace.metadata.get("sweep")
                sweep_id = sweep.get("id") if isinstance(sweep, Mapping) else None
                if not isinstance(sweep_id, str) or not sweep_id:
                    continue
                fresh[trace_id] = trace
                self._track(sweep_id, trace_id, model)
                changed[sweep_id] = None
            done = 0
            for sweep_id in changed:
                entry = self._sweeps.get(sweep_id)
                if entry is None:  # evicted by a newer sweep during this pass
                    continue
                try:
                    self._profile(sweep_id, entry, fresh)
                    done += 1
                except Exception:  # the sweep keeps its previous series
                    log.exception("profiling sweep %r failed", sweep_id)
            return done

    def _read(self, trace_id: str) -> Trace | None:
        try:
            text = self._store.get_trace_json(trace_id)
            return Trace.from_json(text) if may_have_sweep_id(text) else None
        except TraceStoreError as exc:  # gone, or not rebuilt any more: nothing to profile
            log.debug("sweep profiler: trace %s not readable: %s", trace_id, exc)
            return None

    def _track(self, sweep_id: str, trace_id: str, model: str) -> None:
        entry = self._sweeps.pop(sweep_id, None) or _Sweep()
        self._sweeps[sweep_id] = entry  # most recently updated last
        entry.traces.pop(trace_id, None)
        entry.traces[trace_id] = model
        while len(entry.traces) > self._max_traces:
            entry.traces.popitem(last=False)
        while len(self._sweeps) > self._max_sweeps:
            evicted, _ = self._sweeps.popitem(last=False)
            with self._lock:
                self._series.pop(evicted, None)
                self._profiles.pop(evicted, None)
            log.info("sweep profiler: sweep %r evicted (more than %d sweeps tracked)", evicted, self._max_sweeps)

    def _profile(self, sweep_id: str, entry: _Sweep, fresh: Mapping[str, Trace]) -> None:
        from vauban_trace.sweep import profile_traces

        traces = []
        for trace_id in sorted(entry.traces):
            trace = fresh.get(trace_id) or self._read(trace_id)
            if trace is not None:
                traces.append(trace)
        model = ",".join(sorted({m for m in entry.traces.values()}))
        try:
            profile = profile_traces(traces, sweep_id=sweep_id, seed=self._seed)
        except ValueError as exc:  # no complete trace of this sweep (left): nothing to show
            log.info("sweep profiler: sweep %r not profiled: %s", sweep_id, exc)
            with self._lock:
                self._series.pop(sweep_id, None)
                self._profiles.pop(sweep_id, None)
            return
        samples = samples_of(profile, model)
        with self._lock:
            if sweep_id in self._sweeps:  # not evicted meanwhile
                self._series[sweep_id] = samples
                self._profiles[sweep_id] = profile

    # -- reading ----------------------------------------------------------------------------
    def profiles(self) -> dict[str, SweepProfile]:
        """The latest profile of every tracked sweep (what the gauges show)."""
        with self._lock:
            return dict(self._profiles)

    def describe(self) -> Iterable[Any]:
        return [GaugeMetricFamily(name, doc, labels=[*_BASE, *extra]) for name, (doc, extra) in FAMILIES.items()]

    def collect(self) -> Iterator[Any]:
        with self._lock:
            rows = [s for samples in self._series.values() for s in samples]
        families = {name: GaugeMetricFamily(name, doc, labels=[*_BASE, *extra])
                    for name, (doc, extra) in FAMILIES.items()}
        for name, labels, value in rows:
            families[name].add_metric(list(labels), value)
        yield from families.values()


_SWEEP_KEY = '"sweep": {'
_DECODER = json.JSONDecoder()


def may_have_sweep_id(trace_json: str) -> bool:
    """False when ``trace_json`` (a ``Trace.to_json()`` text) cannot hold a sweep id in
    ``metadata.sweep.id``; True is only a maybe, settled by reading the trace back.

    ``to_json`` writes an object key as ``"sweep": `` followed by its value, and a quote inside a
    string is escaped, so an unescaped ``"sweep": {`` is always a ``sweep`` key whose value is an
    object: each such object is decoded alone (``raw_decode`` from its brace) and a non-empty
    string ``id`` in any of them is a maybe."""
    start = 0
    while (at := trace_json.find(_SWEEP_KEY, start)) >= 0:
        try:
            value, start = _DECODER.raw_decode(trace_json, at + len(_SWEEP_KEY) - 1)
        except ValueError:  # not the text to_json writes: let the read-back decide
            return True
        sweep_id = value.get("id") if isinstance(value, dict) else None
        if isinstance(sweep_id, str) and sweep_id:
            return True
    return False


def _run_throughput(profile: SweepProfile) -> dict[Any, float]:
    """Concurrency axis: the median over runs of the fitted throughput estimate, per N; arrival-rate
    axis: the median over runs of the achieved throughput, per offered rate."""
    per_value: dict[Any, list[float]] = {}
    if profile.open_loop is not None:
        for rp in profile.open_loop.points:
            if rp.achieved is not None:
                per_value.setdefault(rp.value, []).append(rp.achieved)
        return {value: statistics.median(xs) for value, xs in per_value.items()}
    method = profile.throughput_method
    if method is None:
        return {}
    for tp in profile.throughput:
        x = tp.throughput(method)
        if x is not None:
            per_value.setdefault(tp.value, []).append(x)
    return {value: statistics.median(xs) for value, xs in per_value.items()}


def samples_of(profile: SweepProfile, model: str) -> list[Sample]:
    """The gauge samples of one profile (see the module docstring's table)."""
    from vauban_trace.sweep import ARRIVAL_RATE, CONCURRENCY, REQUEST  # loads with the first profile

    sweep_id, axis = profile.sweep_id or "", profile.axis
    no_fit = next((p for p in profile.problems if p.startswith(f"axis {axis!r} has non-numeric")),
                  "no fit for this stage")
    out: list[Sample] = []
    for stage in profile.stages:
        base = (sweep_id, axis, stage, model)
        points = [p for p in profile.points if p.stage == stage]
        fit = profile.fits.get(stage)
        if fit is None:
            out.append(("vauban_sweep_fit_status", (*base, "refused", no_fit, ""), 1.0))
        else:
            status = "fitted" if fit.status == "fitted" else "refused"
            out.append(("vauban_sweep_fit_status", (*base, status, fit.reason, fit.caveat or ""), 1.0))
        fitted = fit is not None and fit.status == "fitted"
        if fit is not None and fitted:
            for name, estimate in (("lambda", fit.lambda_), ("sigma", fit.sigma), ("kappa", fit.kappa)):
                if estimate is not None:
                    out.append(("vauban_sweep_usl_parameter", (*base, name, "estimate"), estimate))
                if name in fit.intervals:
                    low, high = fit.intervals[name]
                    out.append(("vauban_sweep_usl_parameter", (*base, name, "low"), low))
                    out.append(("vauban_sweep_usl_parameter", (*base, name, "high"), high))
            if fit.peak_n is not None:
                out.append(("vauban_sweep_usl_peak", base, fit.peak_n))
            if fit.r2 is not None:
                out.append(("vauban_sweep_usl_r_squared", base, fit.r2))
            if fit.peak_interval is not None:
                out.append(("vauban_sweep_usl_peak_interval", (*base, "low"), fit.peak_interval[0]))
                out.append(("vauban_sweep_usl_peak_interval", (*base, "high"), fit.peak_interval[1]))
            out.append(("vauban_sweep_usl_weighting", (*base, fit.weighting), 1.0))
            lof = fit.lack_of_fit
            if lof is not None and lof.f is not None and lof.p is not None and lof.df_lack and lof.df_pure:
                for quantity, number in (("f", lof.f), ("p_value", lof.p), ("df_lack", float(lof.df_lack)),
                                         ("df_pure", float(lof.df_pure))):
                    out.append(("vauban_sweep_usl_lack_of_fit", (*base, quantity), number))
        run_throughput = _run_throughput(profile) if stage == REQUEST else {}
        for point in points:
            value = _label(point.value)
            median = point.duration_s.median
            if median is not None:
                out.append(("vauban_sweep_observed", (*base, value, "median_duration_s"), median))
            if profile.axis in (CONCURRENCY, ARRIVAL_RATE):
                if point.value in run_throughput:  # request stage: the throughput the USL was fitted to
                    out.append(("vauban_sweep_observed", (*base, value, "throughput"), run_throughput[point.value]))
            elif median is not None:
                n = point.value
                if isinstance(n, int | float) and not isinstance(n, bool) and n > 0 and median > 0:
                    out.append(("vauban_sweep_observed", (*base, value, "throughput"), float(n) / median))
            if fit is not None and fitted:
                out.append(("vauban_sweep_usl_predicted", (*base, value), fit.predict(float(point.value))))
        if points:
            out.append(("vauban_sweep_points", (*base, "values"), float(len(points))))
            out.append(("vauban_sweep_points", (*base, "traces"), float(sum(p.traces for p in points))))
            out.append(("vauban_sweep_points", (*base, "min_repeats"), float(min(p.traces for p in points))))
    if REQUEST in profile.stages:
        out.extend(_load_samples(profile, (sweep_id, axis, REQUEST, model)))
    return out


def _median(xs: Iterable[float | None]) -> float | None:
    kept = [x for x in xs if x is not None]
    return statistics.median(kept) if kept else None


def _verdict(points: Sequence[RatePoint]) -> tuple[str, str]:
    """(verdict, reason) of one offered rate from its runs (the module docstring's words)."""
    if all(p.sustained for p in points):
        return "sustained", ""
    words = [w for w, on in (("late", any(p.late for p in points)), ("saturated", any(p.saturated for p in points)),
                             ("failures", any(p.failed for p in points))) if on]
    several = len(points) > 1
    reason = "; ".join(f"run {p.run}: {r}" if several else r for p in points for r in p.reasons)
    return ", ".join(words), reason


def _load_samples(profile: SweepProfile, base: tuple[str, ...]) -> list[Sample]:
    """``vauban_sweep_load*`` and ``vauban_sweep_verdict``: the open-loop numbers per offered rate and the
    sweep's limits (``arrival_rate``), or the response and queue medians per N (``concurrency``)."""
    from vauban_trace.sweep import QUEUE_STAGE, REQUEST  # loads with the first profile

    out: list[Sample] = []

    def load(value: str, quantity: str, number: float | None) -> None:
        if number is not None:
            out.append(("vauban_sweep_load", (*base, value, quantity), float(number)))

    def interval(value: str, quantity: str, bounds: tuple[float | None, float | None] | None) -> None:
        if bounds is not None and bounds[0] is not None and bounds[1] is not None:
            out.append(("vauban_sweep_load_interval", (*base, value, quantity, "low"), float(bounds[0])))
            out.append(("vauban_sweep_load_interval", (*base, value, quantity, "high"), float(bounds[1])))

    summary = profile.open_loop
    if summary is not None:
        by_rate: dict[float, list[RatePoint]] = {}
        for rp in summary.points:
            by_rate.setdefault(rp.value, []).append(rp)
        for rate, runs in sorted(by_rate.items()):
            value = _label(rate)
            tails = {"response": [p.response for p in runs],
                     "queue_wait": [p.queue_wait for p in runs if p.queue_wait is not None]}
            for name, number in (("offered_realised", _median(p.offered_realised for p in runs)),
                                 ("offered_sent", _median(p.offered_sent for p in runs)),
                                 ("achieved", _median(p.achieved for p in runs)),
                                 ("lateness_p95_s", _median(p.lateness.p95 for p in runs)),
                                 ("littles_law_n", _median(p.littles_law_n for p in runs)),
                                 ("runs", float(len(runs))), ("traces", float(sum(p.traces for p in runs))),
                                 ("dropped", float(sum(p.dropped for p in runs))),
                                 ("failed", float(sum(p.failed for p in runs)))):
                load(value, name, number)
            for kind, ts in tails.items():
                if not ts:
                    continue
                load(value, f"{kind}_p50_s", _median(t.p50.median for t in ts))
                load(value, f"{kind}_p95_s", _median(t.p95 for t in ts))
                load(value, f"{kind}_p99_s", _median(t.p99 for t in ts))
                if len(ts) == 1:  # one run: its bootstrap intervals (a median over runs has none)
                    interval(value, f"{kind}_p50_s", (ts[0].p50.ci_low, ts[0].p50.ci_high))
                    interval(value, f"{kind}_p95_s", ts[0].p95_interval)
                    interval(value, f"{kind}_p99_s", ts[0].p99_interval)
            verdict, reason = _verdict(runs)
            out.append(("vauban_sweep_verdict", (*base, value, verdict, reason), 1.0))
        for name, limit in (("highest_sustained", summary.highest_sustained),
                            ("lowest_saturated", summary.lowest_saturated)):
            if limit is not None:
                out.append(("vauban_sweep_load_limit", (*base, name), float(limit)))
        return out
    if not profile.throughput:  # only the concurrency axis has per-run throughput points
        return out
    for n in profile.values:
        value = _label(n)
        runs_at = [tp for tp in profile.throughput if tp.value == n]
        for stage, quantity in ((REQUEST, "response_p50_s"), (QUEUE_STAGE, "queue_wait_p50_s")):
            try:
                s = profile.point(stage, n).duration_s
            except KeyError:
                continue
            load(value, quantity, s.median)
            interval(value, quantity, (s.ci_low, s.ci_high))
        load(value, "mean_response_s", _median(tp.mean_response_s for tp in runs_at))
        load(value, "throughput_window", _median(tp.window for tp in runs_at))
        load(value, "throughput_littles_law", _median(tp.littles_law for tp in runs_at))
        load(value, "runs", float(len(runs_at)))
        load(value, "traces", float(sum(tp.traces for tp in runs_at)))
    return out


__all__ = ["FAMILIES", "SweepProfiler", "samples_of"]
