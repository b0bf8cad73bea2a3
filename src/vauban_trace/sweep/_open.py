"""Open-loop (arrival-rate) load sweeps: requests sent on a schedule, whatever the service does.

::

    import vauban_trace as vt
    from vauban_trace.sweep import OpenLoopSpec, ServingLoop, run_open_loop

    session = vt.configure(store_dir=".vauban")
    with ServingLoop(serve=lambda text: executor.run(executor.make_request(text)), model="tiny") as loop:
        spec = OpenLoopSpec(rates=(20, 50, 100, 150, 200), duration_s=3.0, warmup_s=0.5, repeats=2)
        result = run_open_loop(lambda seq: loop.call("Hello"), spec, session=session)
    print(result.profile.render_markdown())   # achieved X, p50/p95/p99, lateness, saturation per rate
    result.profile.open_loop.highest_sustained

For each offered rate (the runs interleaved and rotated across ``repeats`` like
:func:`~vauban_trace.sweep.schedule`), :func:`run_open_loop` draws an arrival schedule over
``warmup_s + duration_s`` (:func:`arrival_schedule`: Poisson, exponential gaps from a
``numpy.random.Generator`` seeded with ``(seed, position of the rate in the spec, run)``, or
``constant`` gaps ``1 / rate``) and a generator thread (the caller's) sleeps until each scheduled
time and hands the arrival to a sender thread, *without waiting for earlier requests*:

1. **senders**: a pool of ``max_in_flight`` threads, started once per sweep; each arrival is served
   by an idle sender calling ``request(seq)`` (``loop.call(payload)`` of a
   :class:`~vauban_trace.sweep.ServingLoop`, which queues it, or a
   :func:`~vauban_trace.sweep.traced_call` wrapper, served in the sender's thread: the targets
   :func:`~vauban_trace.sweep.run_concurrency` takes). An arrival that finds ``max_in_flight``
   requests in flight is **refused** (counted, never queued behind the generator, no thread
   spawned): the run's ``dropped`` count, and saturation in the profile.
2. **warm-up**: the arrivals scheduled before ``warmup_s`` run outside any sweep point (never
   profiled) but load the service, so the measured window starts on a warm, loaded system.
3. **measured window** ``[t0, t0 + duration_s)``: every arrival scheduled in it runs inside
   :func:`vauban_trace.sweep_point` (axis ``"arrival_rate"``, value the offered rate, the sweep id)
   opened in its sender's thread, and under the driver's labels (run, seq, scheduled time, the
   window, the arrivals refused so far, in unix nanoseconds: ``Trace.metadata["open_loop"]`` when a
   serving loop or ``traced_call`` opened the root; the driver hands them to the profile anyway).
4. after the last arrival, the generator waits until every request of the run has finished.

The traces are read back through the session's store and profiled
(:func:`~vauban_trace.sweep.profile_traces`, ``_arrival``): achieved throughput, response-time and
queue-wait percentiles, the generator's lateness, Little's-law L, saturation, the highest rate
sustained; and no USL fit (a refusal with the reason: the USL needs N).

The driver keeps its own clock as well (:class:`LoadRun`): the exact number of refused arrivals,
the generator's dispatch lateness (scheduled time to hand-off), the number of requests in the
system seen by each arrival (under Poisson arrivals its mean is the time-average number in the
system, PASTA: a check on Little's L from the traces) and the completions of every request
(warm-up included) in the window over its length (a cross-check of the achieved throughput).

**Errors** (``on_error``): ``"raise"`` (default) stops the generator at the first exception raised
by ``request`` (no further arrival is sent), lets the requests in flight finish, flushes the
session (the traces made so far are stored) and re-raises that first exception unchanged.
``"record"`` keeps the schedule going (an open loop does not slow down because the service fails):
failed requests are counted per run (``failed``, the root span's error status), left out of the
achieved throughput and the percentiles, named in ``problems`` with the first error, and the
exceptions are kept in ``result.errors``; a rate with a failure is never "sustained". Nothing is
swallowed: a failure is either raised or reported.

**Generator** (``generator``): ``"thread"`` (default) is the generator thread above, in this
process; ``"process"`` keeps the schedule and the clock in a child process (``_procgen``: a
standard-library script, no torch) that sends each arrival (sequence number, scheduled time, send
time) over a socket pair to one receiver here (the calling thread), which stamps the receive time
and hands it to a sender as above. Its labels add ``sent_unix_nano`` and ``received_unix_nano``;
the profile then judges lateness on the generator's own clock (send minus scheduled, in the
child) and reports the hand-off (receive minus send) apart: a serving process too busy to take
arrivals in delays the hand-off, which belongs to the service's response, not to the load
offered. Times are ``time.monotonic`` in both processes (system-wide; checked at start). A child
that exits or goes silent raises :class:`~vauban_trace._exceptions.LoadGeneratorError` (never a
hang); the sweep's end, an error or ``KeyboardInterrupt`` stops it.

**Limits.** One process: the generator, senders, serving loop and span processing share the GIL,
so a service that holds it (pure-Python work) delays the generator; the lateness test then says the
load was not offered. ``time.sleep`` overshoots by tens of microseconds to a millisecond; rates
whose gaps approach that are checked by the lateness test, not assumed. ``switch_interval_s``
(e.g. ``0.0005``) sets :func:`sys.setswitchinterval` for the sweep and restores it afterwards: a
thread waiting for the GIL (the generator, waking up) then waits at most that long instead of the
default 5 ms per runnable thread ahead of it; on a 2-core VM serving the tiny torch model it cut the
generator's p95 lateness at 100 requests/s from 17 ms to 5 ms. It is process-wide, hence off unless asked.
"""

from __future__ import annotations

import math
import queue
import sys
import threading
import time
import uuid
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import numpy as np

from vauban_trace._exceptions import ConfigurationError
from vauban_trace.instrument import sweep_point
from vauban_trace.sweep._arrival import ARRIVAL_RATE, TOLERANCE
from vauban_trace.sweep._labels import RECEIVED_LABEL, SENT_LABEL, arrival_labels
from vauban_trace.sweep._openresult import ArrivalRecord, LoadRun, OpenLoopResult
from vauban_trace.sweep._procgen import ProcessGenerator, drive
from vauban_trace.sweep._profile import profile_traces
from vauban_trace.sweep._readback import read_back
from vauban_trace.sweep._run import schedule
from vauban_trace.sweep._serve import queue_wait_s

if TYPE_CHECKING:
    from vauban_trace.instrument import Session

PROCESSES = ("poisson", "constant")
ON_ERROR = ("raise", "record")
GENERATORS = ("thread", "process")
#: most arrivals one run may schedule (a typo in a rate should not allocate gigabytes)
MAX_ARRIVALS = 1_000_000


def _real(x: object) -> bool:
    return not isinstance(x, bool) and isinstance(x, (int, float)) and math.isfinite(x)


def arrival_schedule(rate: float, span_s: float, *, process: str = "poisson",
                     seed: int | Sequence[int] = 0) -> tuple[float, ...]:
    """Arrival offsets in seconds in ``[0, span_s)`` at ``rate`` per second: Poisson (exponential gaps,
    ``numpy.random.default_rng(seed)``; equal arguments give equal schedules) or constant (``i / rate``)."""
    if not _real(rate) or rate <= 0:
        raise ConfigurationError(f"arrival_schedule: rate must be a finite number > 0, got {rate!r}")
    if not _real(span_s) or span_s <= 0:
        raise ConfigurationError(f"arrival_schedule: span_s must be a finite number > 0, got {span_s!r}")
    if process not in PROCESSES:
        raise ConfigurationError(f"arrival_schedule: process must be one of {', '.join(PROCESSES)}, got {process!r}")
    expected = float(rate) * float(span_s)
    if expected > MAX_ARRIVALS:
        raise ConfigurationError(f"arrival_schedule: {rate} /s over {span_s} s is {expected:.3g} arrivals "
                                 f"(at most {MAX_ARRIVALS} per run)")
    if process == "constant":
        n = math.ceil(expected)
        return tuple(t for i in range(n) if (t := i / rate) < span_s)
    rng = np.random.default_rng(seed)
    out: list[float] = []
    t = 0.0
    chunk = max(16, int(expected * 1.2) + 16)
    while True:
        for gap in rng.exponential(1.0 / rate, size=chunk):
            t += float(gap)
            if t >= span_s:
                return tuple(out)
            out.append(t)


@dataclass(frozen=True)
class OpenLoopSpec:
    """Offered rates (requests/s), the measured duration and warm-up per run (s), the arrival process,
    runs per rate, the in-flight cap, the schedule's seed, the saturation tolerance, the sweep id."""

    rates: Sequence[float]
    duration_s: float
    warmup_s: float = 0.0
    arrivals: str = "poisson"
    repeats: int = 1
    max_in_flight: int = 64
    seed: int = 0
    tolerance: float = TOLERANCE
    sweep_id: str | None = None
    switch_interval_s: float | None = None
    generator: str = "thread"

    def __post_init__(self) -> None:
        if isinstance(self.rates, (str, bytes)) or not isinstance(self.rates, Sequence) or not self.rates:
            raise ConfigurationError(f"OpenLoopSpec: rates must be a non-empty sequence of requests per second, "
                                     f"got {self.rates!r}")
        bad = [r for r in self.rates if not _real(r) or r <= 0]
        if bad:
            raise ConfigurationError(f"OpenLoopSpec: rates are finite numbers of requests per second > 0, got {bad[0]!r}")
        if len(set(self.rates)) != len(self.rates):
            raise ConfigurationError(f"OpenLoopSpec: rates repeat: {list(self.rates)}")
        if not _real(self.duration_s) or self.duration_s <= 0:
            raise ConfigurationError(f"OpenLoopSpec: duration_s must be a finite number > 0, got {self.duration_s!r}")
        if not _real(self.warmup_s) or self.warmup_s < 0:
            raise ConfigurationError(f"OpenLoopSpec: warmup_s must be a finite number >= 0, got {self.warmup_s!r}")
        if self.arrivals not in PROCESSES:
            raise ConfigurationError(f"OpenLoopSpec: arrivals must be one of {', '.join(PROCESSES)}, "
                                     f"got {self.arrivals!r}")
        if self.generator not in GENERATORS:
            raise ConfigurationError(f"OpenLoopSpec: generator must be one of {', '.join(GENERATORS)}, "
                                     f"got {self.generator!r}")
        for name, value in (("repeats", self.repeats), ("max_in_flight", self.max_in_flight)):
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ConfigurationError(f"OpenLoopSpec: {name} must be an integer >= 1, got {value!r}")
        if isinstance(self.seed, bool) or not isinstance(self.seed, int) or self.seed < 0:
            raise ConfigurationError(f"OpenLoopSpec: seed must be an integer >= 0, got {self.seed!r}")
        if not _real(self.tolerance) or not 0 < self.tolerance < 1:
            raise ConfigurationError(f"OpenLoopSpec: tolerance must lie strictly between 0 and 1, got {self.tolerance!r}")
        if self.sweep_id is not None and (not isinstance(self.sweep_id, str) or not self.sweep_id):
            raise ConfigurationError("OpenLoopSpec: sweep_id must be a non-empty string or None")
        if self.switch_interval_s is not None and (not _real(self.switch_interval_s) or self.switch_interval_s <= 0):
            raise ConfigurationError(f"OpenLoopSpec: switch_interval_s must be a finite number > 0 or None, "
                                     f"got {self.switch_interval_s!r}")
        for r in self.rates:
            if r * (self.warmup_s + self.duration_s) > MAX_ARRIVALS:
                raise ConfigurationError(f"OpenLoopSpec: rate {r} /s over {self.warmup_s + self.duration_s} s "
                                         f"schedules more than {MAX_ARRIVALS} arrivals per run")
        object.__setattr__(self, "rates", tuple(self.rates))


@dataclass
class _Arrival:
    seq: int
    measured: bool
    t_sched: float
    t_dispatch: float
    in_system: int  # requests in flight when this one arrived (itself excluded)
    dropped_before: int
    t_start: float = math.nan
    t_end: float = math.nan
    error: BaseException | None = None
    trace_ids: list[str] = field(default_factory=list)
    t_sent: float = math.nan  # the generator process's send time (process generator only)


class _RunState:
    """One run: its schedule, its arrivals, the in-flight count, its errors."""

    def __init__(self, request: Callable[[int], object], value: float, run: int, sweep_id: str, on_error: str,
                 stop: threading.Event) -> None:
        self.request, self.value, self.run, self.sweep_id, self.on_error, self.stop = (
            request, value, run, sweep_id, on_error, stop)
        self.lock = threading.Lock()
        self.in_flight = 0
        self.generator_done = False
        self.drained = threading.Event()
        self.arrivals: list[_Arrival] = []
        self.dropped = 0
        self.dropped_warmup = 0
        self.not_sent = 0
        self.scheduled = 0
        self.errors: list[BaseException] = []
        self.ends: list[tuple[float, bool]] = []  # (completion time, succeeded), warm-up included
        self.t0 = self.t1 = 0.0
        self.anchor = (0.0, 0)  # (clock, time_ns) read together
        self.clock: Callable[[], float] = time.perf_counter  # time.monotonic with a process generator
        self.max_block_s: float | None = None  # the generator process's longest blocked write

    def unix_ns(self, t: float) -> int:
        return self.anchor[1] + round((t - self.anchor[0]) * 1e9)

    def finished(self, a: _Arrival) -> None:
        with self.lock:
            self.in_flight -= 1
            self.ends.append((a.t_end, a.error is None))
            if self.in_flight == 0 and self.generator_done:
                self.drained.set()


def _send(st: _RunState, a: _Arrival) -> None:
    a.t_start = st.clock()
    try:
        if a.measured:
            labels = _labels(st, a, a.dropped_before)
            with sweep_point(ARRIVAL_RATE, st.value, sweep_id=st.sweep_id) as point, arrival_labels(labels):
                try:
                    st.request(a.seq)
                finally:
                    a.trace_ids = list(point.trace_ids)
        else:
            st.request(a.seq)
    except BaseException as exc:  # recorded or re-raised by run_open_loop (the on_error policy)
        a.error = exc
        with st.lock:
            st.errors.append(exc)
        if st.on_error == "raise":
            st.stop.set()
    finally:
        a.t_end = st.clock()
        st.finished(a)


def _labels(st: _RunState, a: _Arrival, dropped: int) -> dict[str, int]:
    out = {"run": st.run, "seq": a.seq, "scheduled_unix_nano": st.unix_ns(a.t_sched),
           "window_start_unix_nano": st.unix_ns(st.t0), "window_end_unix_nano": st.unix_ns(st.t1), "dropped": dropped}
    if not math.isnan(a.t_sent):
        out[SENT_LABEL], out[RECEIVED_LABEL] = st.unix_ns(a.t_sent), st.unix_ns(a.t_dispatch)
    return out


class _Senders:
    """``size`` sender threads taking (run, arrival) jobs from one queue."""

    def __init__(self, size: int) -> None:
        self.jobs: queue.SimpleQueue[tuple[_RunState, _Arrival] | None] = queue.SimpleQueue()
        self.threads: list[threading.Thread] = []
        for k in range(size):
            t = threading.Thread(target=self._loop, name=f"vauban-sender-{k}", daemon=True)
            try:
                t.start()
            except RuntimeError as exc:  # the process ran out of threads: stop the ones started
                self.close()
                raise ConfigurationError(f"run_open_loop: could not start sender thread {k + 1} of max_in_flight="
                                         f"{size} ({exc}); lower max_in_flight") from exc
            self.threads.append(t)

    def _loop(self) -> None:
        while (job := self.jobs.get()) is not None:
            _send(*job)

    def close(self) -> None:
        for _ in self.threads:
            self.jobs.put(None)
        for t in self.threads:
            t.join()


def _run_once(st: _RunState, offsets: Sequence[float], spec: OpenLoopSpec, senders: _Senders) -> None:
    st.anchor = (time.perf_counter(), time.time_ns())
    base = time.perf_counter() + 0.002
    st.t0 = base + spec.warmup_s
    st.t1 = st.t0 + spec.duration_s
    for i, off in enumerate(offsets):
        if st.stop.is_set():
            st.not_sent = len(offsets) - i
            break
        t_sched = base + off
        now = time.perf_counter()
        if t_sched > now:
            time.sleep(t_sched - now)
            now = time.perf_counter()
        _admit(st, spec, senders, i, off >= spec.warmup_s, t_sched, now)
    _drain(st)


def _admit(st: _RunState, spec: OpenLoopSpec, senders: _Senders, seq: int, measured: bool, t_sched: float,
           now: float, t_sent: float = math.nan) -> None:
    """One arrival at ``now``: refused by the cap (counted) or handed to a sender."""
    st.scheduled += measured
    with st.lock:
        if st.in_flight >= spec.max_in_flight:
            if measured:
                st.dropped += 1
            else:
                st.dropped_warmup += 1
            return
        a = _Arrival(seq, measured, t_sched, now, st.in_flight, st.dropped, t_sent=t_sent)
        st.in_flight += 1
    st.arrivals.append(a)
    senders.jobs.put((st, a))


def _drain(st: _RunState) -> None:
    with st.lock:
        st.generator_done = True
        if st.in_flight == 0:
            st.drained.set()
    st.drained.wait()


def _run_process(st: _RunState, offsets: Sequence[float], spec: OpenLoopSpec, senders: _Senders,
                 gen: ProcessGenerator) -> None:
    """One run whose arrivals come from the generator process (``_procgen.drive``: the receiver)."""
    st.clock = time.monotonic
    st.anchor = (time.monotonic(), time.time_ns())

    def on_start(base: float) -> None:
        st.t0 = base + spec.warmup_s
        st.t1 = st.t0 + spec.duration_s

    def on_arrival(seq: int, scheduled: float, sent: float, received: float) -> None:
        _admit(st, spec, senders, seq, offsets[seq] >= spec.warmup_s, scheduled, received, sent)

    try:
        end = drive(gen, offsets, on_start, on_arrival, st.stop.is_set)
        st.not_sent, st.max_block_s = end.not_sent, end.max_block_s
    finally:
        _drain(st)


def run_open_loop(
    request: Callable[[int], object],
    spec: OpenLoopSpec,
    *,
    session: Session,
    on_error: str = "raise",
    seed: int = 0,
) -> OpenLoopResult:
    """Run the open-loop sweep ``spec`` (see the module docstring) and profile its traces.
    ``seed`` seeds the bootstrap intervals; the schedule's seed is ``spec.seed``."""
    if session.store is None:
        raise ConfigurationError("run_open_loop: the session keeps no local store to read traces back "
                                 "(profile them from a source with profile_traces instead)")
    if not callable(request):
        raise ConfigurationError(f"run_open_loop: request must be callable as request(seq), got {request!r}")
    if on_error not in ON_ERROR:
        raise ConfigurationError(f"run_open_loop: on_error must be one of {', '.join(ON_ERROR)}, got {on_error!r}")
    sweep_id = spec.sweep_id or f"{ARRIVAL_RATE}-{uuid.uuid4().hex[:12]}"
    stop = threading.Event()
    runs_seen: dict[float, int] = {}
    done: list[_RunState] = []
    started = time.perf_counter()
    switch = sys.getswitchinterval()
    senders: _Senders | None = None
    gen: ProcessGenerator | None = None
    try:
        if spec.generator == "process":  # first: a child that cannot start fails before any load
            gen = ProcessGenerator().start()
        if spec.switch_interval_s is not None:
            sys.setswitchinterval(spec.switch_interval_s)
        senders = _Senders(spec.max_in_flight)  # inside the try: a failed start restores the interval
        for scheduled in schedule(spec.rates, spec.repeats):
            value = float(scheduled) if isinstance(scheduled, float) else int(scheduled)
            run = runs_seen.get(value, 0)
            runs_seen[value] = run + 1
            offsets = arrival_schedule(value, spec.warmup_s + spec.duration_s, process=spec.arrivals,
                                       seed=[spec.seed, spec.rates.index(value), run])
            st = _RunState(request, value, run, sweep_id, on_error, stop)
            if gen is None:
                _run_once(st, offsets, spec, senders)
            else:
                _run_process(st, offsets, spec, senders, gen)
            done.append(st)
            if on_error == "raise" and st.errors:
                raise st.errors[0]
    finally:
        if gen is not None:
            gen.close()
        if senders is not None:
            senders.close()
        sys.setswitchinterval(switch)
        session.force_flush()
    wall = time.perf_counter() - started
    return _collect(spec, sweep_id, done, session, wall, seed)


def _q(values: Sequence[float], q: float) -> float | None:
    return float(np.percentile(values, q)) if values else None


def _load_run(st: _RunState, spec: OpenLoopSpec) -> LoadRun:
    measured = [a for a in st.arrivals if a.measured]
    process = any(not math.isnan(a.t_sent) for a in measured)
    lateness = [(a.t_sent if process else a.t_dispatch) - a.t_sched for a in measured]
    handoff = [a.t_dispatch - a.t_sent for a in measured] if process else []
    done = sum(1 for t, ok in st.ends if ok and st.t0 < t <= st.t1)
    return LoadRun(
        value=st.value, run=st.run, scheduled=st.scheduled, sent=len(measured), dropped=st.dropped,
        dropped_warmup=st.dropped_warmup, not_sent=st.not_sent, failed=sum(1 for a in measured if a.error is not None),
        dispatch_lateness_p50_s=_q(lateness, 50), dispatch_lateness_p95_s=_q(lateness, 95),
        dispatch_lateness_max_s=max(lateness) if lateness else None,
        mean_in_system_at_arrival=float(np.mean([a.in_system for a in measured])) if measured else None,
        completed_in_window=done, driver_throughput=done / spec.duration_s,
        generator=spec.generator,
        handoff_p50_s=_q(handoff, 50), handoff_p95_s=_q(handoff, 95), handoff_max_s=max(handoff) if handoff else None,
        generator_max_block_s=st.max_block_s)


def _collect(spec: OpenLoopSpec, sweep_id: str, done: Sequence[_RunState], session: Session, wall: float,
             seed: int) -> OpenLoopResult:
    assert session.store is not None
    notes: list[str] = []
    labels: dict[str, dict[str, int]] = {}
    plan: list[tuple[str, _RunState, _Arrival]] = []
    runs = [_load_run(st, spec) for st in done]
    for st, lr in zip(done, runs, strict=True):
        odd = [a for a in st.arrivals if a.measured and len(a.trace_ids) != 1]
        if odd:
            notes.append(f"arrival rate {st.value:g}/s run {st.run}: {len(odd)} requests opened other than one traced "
                         "request each (expected one)")
        if lr.dropped:
            notes.append(f"arrival rate {st.value:g}/s run {st.run}: the in-flight cap ({spec.max_in_flight}) refused "
                         f"{lr.dropped} of {lr.scheduled} measured arrivals")
        for a in st.arrivals:
            for tid in a.trace_ids:
                labels[tid] = _labels(st, a, st.dropped)  # the run's exact count (a trace's own label: so far)
                plan.append((tid, st, a))
    if not plan:
        raise ConfigurationError("run_open_loop: the requests opened no recorded traced request (does request() open "
                                 "one, e.g. ServingLoop.call or traced_call, is an SDK configured, and did any "
                                 "arrival fall in the measured window?)")
    stored, note = read_back(session.store, [tid for tid, _, _ in plan], "run_open_loop")
    if note is not None:
        notes.append(note)
    found = [(stored[tid], st, a) for tid, st, a in plan if tid in stored]
    traces = tuple(t for t, _, _ in found)
    records: list[ArrivalRecord] = []
    for trace, st, a in found:
        root = trace.root
        records.append(ArrivalRecord(
            trace.id, st.value, st.run, a.seq, st.unix_ns(a.t_sched), a.t_start - a.t_sched, a.in_system,
            None if root is None else root.stage_duration_s, queue_wait_s(trace),
            None if a.error is None else repr(a.error),
            (a.t_dispatch if math.isnan(a.t_sent) else a.t_sent) - a.t_sched,
            (a.t_start - a.t_dispatch) if math.isnan(a.t_sent) else a.t_dispatch - a.t_sent))
    errors = tuple(e for st in done for e in st.errors)
    if errors:
        notes.append(f"{len(errors)} requests raised (on_error='record'); first: {errors[0]!r}")
    profile = profile_traces(traces, axis=ARRIVAL_RATE, sweep_id=sweep_id, open_loop=labels,
                             tolerance=spec.tolerance, seed=seed)
    return OpenLoopResult(spec=spec, sweep_id=sweep_id, profile=profile, traces=traces, requests=tuple(records),
                          runs=tuple(runs), wall_s=wall, errors=errors, notes=tuple(notes))


__all__ = ["GENERATORS", "ON_ERROR", "PROCESSES", "ArrivalRecord", "LoadRun", "OpenLoopResult", "OpenLoopSpec", "arrival_schedule",
           "run_open_loop"]
