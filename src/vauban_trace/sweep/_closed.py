"""Closed-loop concurrency sweeps: N clients, zero think time, every request its own trace.

::

    import vauban_trace as vt
    from vauban_trace.sweep import ConcurrencySpec, ServingLoop, run_concurrency

    session = vt.configure(store_dir=".vauban")
    with ServingLoop(serve=lambda text: executor.run(executor.make_request(text)), model="tiny") as loop:
        spec = ConcurrencySpec(values=(1, 2, 4, 8, 16), requests_per_client=20, warmup_requests=2, repeats=3)
        result = run_concurrency(lambda client, seq: loop.call("Hello"), spec, session=session)
    print(result.profile.render_markdown())        # X(N) per run and the USL fit of the request stage

For each value N (the runs interleaved and rotated across ``repeats`` like
:func:`~vauban_trace.sweep.schedule`), :func:`run_concurrency` starts N client threads. Each
client calls ``request(client, seq)`` back to back, with no think time:

1. **warm-up**: ``warmup_requests`` calls per client outside any sweep point (no sweep
   coordinates: never profiled), and a client that is done keeps issuing warm-up calls until
   every client is, so the load never drops between warm-up and measurement;
2. **measured phase**, from the moment ``t0`` the last client finished its warm-up: every call runs
   inside :func:`vauban_trace.sweep_point` (axis ``"concurrency"``, value N, the sweep id) opened in
   the client's own thread, and under the run/client/seq labels (``_labels``), either
   ``requests_per_client`` calls per client or, with ``window_s``, calls started before
   ``t0 + window_s`` (the in-flight ones finish and are kept).

``request`` must open exactly one traced request per call: :meth:`ServingLoop.call`, a
:func:`traced_call` wrapper, or an executor's own ``run``. The trace ids come from each client's
sweep point. Traces are read back through the session's store (the one rebuild road) and profiled
with :func:`~vauban_trace.sweep.profile_traces` on the concurrency axis, the driver handing over
which run and client issued each trace (``closed_loop=``), so the cycle throughput works even when
an executor opened the root.

A trace that never reached the store (the SDK's export queue, ``OTEL_BSP_MAX_QUEUE_SIZE``, 2048
spans by default, drops spans when the exporter falls behind) is named in ``notes`` and left out;
an incomplete one is left out by the profile, which lists it in ``problems``.

Per request the result keeps what the traces show: the response time (root span), the queue wait
(the ``queue`` stage, when a serving loop queued it), and the driver's own clock around the call.
Per run it keeps the direct throughput over the driver's clock: of the requests completed
(warm-up ones included) between ``t0`` and the window's end (``t0 + window_s``, or with a request
count the moment the first client finished, so that all N clients were active throughout), the
``k - 1`` after the first, divided by the time from the first to the last completion (the
estimator of the traces' ``window`` throughput); ``None`` with a reason when fewer than two
completed.

An exception raised by ``request`` stops every client after its current call; once all have
stopped, the session is flushed (the traces made so far are stored) and the first exception is
re-raised unchanged.
"""

from __future__ import annotations

import math
import threading
import time
import uuid
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from vauban_trace._exceptions import ConfigurationError
from vauban_trace.contract import Trace
from vauban_trace.instrument import sweep_point
from vauban_trace.sweep._labels import load_labels
from vauban_trace.sweep._profile import SweepProfile, profile_traces
from vauban_trace.sweep._readback import read_back
from vauban_trace.sweep._run import schedule
from vauban_trace.sweep._serve import queue_wait_s
from vauban_trace.sweep._throughput import CONCURRENCY, THROUGHPUT_METHODS

if TYPE_CHECKING:
    from vauban_trace.instrument import Session


def _positive_int(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and value >= 1


@dataclass(frozen=True)
class ConcurrencySpec:
    """N values (client counts), how long each run measures (``requests_per_client`` *or*
    ``window_s``), warm-up calls per client, runs per N, optional sweep id."""

    values: Sequence[int]
    requests_per_client: int | None = None
    window_s: float | None = None
    warmup_requests: int = 1
    repeats: int = 1
    sweep_id: str | None = None

    def __post_init__(self) -> None:
        if isinstance(self.values, (str, bytes)) or not isinstance(self.values, Sequence) or not self.values:
            raise ConfigurationError(f"ConcurrencySpec: values must be a non-empty sequence of client counts, "
                                     f"got {self.values!r}")
        bad = [v for v in self.values if not _positive_int(v)]
        if bad:
            raise ConfigurationError(f"ConcurrencySpec: concurrency values are whole numbers of clients >= 1, "
                                     f"got {bad[0]!r}")
        if len(set(self.values)) != len(self.values):
            raise ConfigurationError(f"ConcurrencySpec: values repeat: {list(self.values)}")
        if (self.requests_per_client is None) == (self.window_s is None):
            raise ConfigurationError("ConcurrencySpec: give exactly one of requests_per_client or window_s")
        if self.requests_per_client is not None and not _positive_int(self.requests_per_client):
            raise ConfigurationError(f"ConcurrencySpec: requests_per_client must be an integer >= 1, "
                                     f"got {self.requests_per_client!r}")
        if self.window_s is not None and (isinstance(self.window_s, bool) or not isinstance(self.window_s, (int, float))
                                          or not math.isfinite(self.window_s) or self.window_s <= 0):
            raise ConfigurationError(f"ConcurrencySpec: window_s must be a finite number > 0, got {self.window_s!r}")
        if isinstance(self.warmup_requests, bool) or not isinstance(self.warmup_requests, int) or self.warmup_requests < 0:
            raise ConfigurationError(f"ConcurrencySpec: warmup_requests must be an integer >= 0, "
                                     f"got {self.warmup_requests!r}")
        if not _positive_int(self.repeats):
            raise ConfigurationError(f"ConcurrencySpec: repeats must be an integer >= 1, got {self.repeats!r}")
        if self.sweep_id is not None and (not isinstance(self.sweep_id, str) or not self.sweep_id):
            raise ConfigurationError("ConcurrencySpec: sweep_id must be a non-empty string or None")
        object.__setattr__(self, "values", tuple(self.values))


@dataclass(frozen=True)
class RequestRecord:
    """One measured request: what its trace shows, and the driver's clock around the call."""

    trace_id: str
    value: int
    run: int
    client: int
    seq: int
    response_s: float | None  # root span duration
    queue_wait_s: float | None  # the queue stage's duration, None when nothing queued the request
    call_s: float | None  # the driver's perf_counter around the call (None when a call opened != 1 trace)

    def to_dict(self) -> dict[str, Any]:
        return {"trace_id": self.trace_id, "value": self.value, "run": self.run, "client": self.client,
                "seq": self.seq, "response_s": self.response_s, "queue_wait_s": self.queue_wait_s, "call_s": self.call_s}


@dataclass(frozen=True)
class RunRecord:
    """One run (value N, run index): the driver's direct throughput over its own window."""

    value: int
    run: int
    measured_requests: int
    window_s: float | None  # from the first to the last completion in the window
    completed_in_window: int
    window_throughput: float | None  # (completed_in_window - 1) / window_s
    note: str | None = None

    def to_dict(self) -> dict[str, Any]:
        return {"value": self.value, "run": self.run, "measured_requests": self.measured_requests,
                "window_s": self.window_s, "completed_in_window": self.completed_in_window,
                "window_throughput": self.window_throughput, "note": self.note}


@dataclass(frozen=True)
class ConcurrencyResult:
    """What :func:`run_concurrency` did: the profile, traces, per-request and per-run records."""

    spec: ConcurrencySpec
    sweep_id: str
    profile: SweepProfile
    traces: tuple[Trace, ...]
    requests: tuple[RequestRecord, ...]
    runs: tuple[RunRecord, ...]
    wall_s: float
    notes: tuple[str, ...] = field(default_factory=tuple)

    def to_dict(self) -> dict[str, Any]:
        return {
            "sweep_id": self.sweep_id, "axis": CONCURRENCY, "values": list(self.spec.values),
            "requests_per_client": self.spec.requests_per_client, "window_s": self.spec.window_s,
            "warmup_requests": self.spec.warmup_requests, "repeats": self.spec.repeats,
            "wall_s": self.wall_s, "notes": list(self.notes), "runs": [r.to_dict() for r in self.runs],
            "requests": [r.to_dict() for r in self.requests], "profile": self.profile.to_dict(),
        }


class _Run:
    """Shared state of the N clients of one run."""

    def __init__(self, n: int, spec: ConcurrencySpec, failed: threading.Event) -> None:
        self.n = n
        self.spec = spec
        self.failed = failed
        self.lock = threading.Lock()
        self.warm = 0
        self.all_warm = threading.Event()
        self.t0 = 0.0
        self.stop_at = math.inf
        self.ends: list[float] = []  # completion times of every call (warm-up included)
        self.last_end: list[float] = [math.inf] * n  # per client, its last measured completion
        self.calls: list[list[tuple[float, float, int]]] = [[] for _ in range(n)]  # (start, end, traces opened)
        self.trace_ids: list[list[str]] = [[] for _ in range(n)]
        self.errors: list[BaseException] = []

    def mark_warm(self) -> None:
        with self.lock:
            self.warm += 1
            if self.warm == self.n:
                self.t0 = time.perf_counter()
                if self.spec.window_s is not None:
                    self.stop_at = self.t0 + self.spec.window_s
                self.all_warm.set()


def _client(request: Callable[[int, int], object], r: _Run, c: int, run: int, sweep_id: str) -> None:
    seq = 0
    try:
        for _ in range(r.spec.warmup_requests):
            if r.failed.is_set():
                return
            request(c, seq)
            seq += 1
            r.ends.append(time.perf_counter())
        r.mark_warm()
        while not r.all_warm.is_set() and not r.failed.is_set():  # keep the load on until all are warm
            request(c, seq)
            seq += 1
            r.ends.append(time.perf_counter())
        with sweep_point(CONCURRENCY, r.n, sweep_id=sweep_id) as point:
            i = 0
            while not r.failed.is_set():
                if r.spec.requests_per_client is not None and i >= r.spec.requests_per_client:
                    break
                start = time.perf_counter()
                if r.spec.window_s is not None and start >= r.stop_at:
                    break
                before = len(point.trace_ids)
                with load_labels(run=run, client=c, seq=i):
                    request(c, seq)
                end = time.perf_counter()
                r.ends.append(end)
                r.calls[c].append((start, end, len(point.trace_ids) - before))
                r.last_end[c] = end
                seq += 1
                i += 1
            r.trace_ids[c] = list(point.trace_ids)
    except BaseException as exc:  # re-raised unchanged by run_concurrency once every client stopped
        with r.lock:
            r.errors.append(exc)
        r.failed.set()
        r.all_warm.set()


def _run_once(request: Callable[[int, int], object], n: int, run: int, spec: ConcurrencySpec, sweep_id: str,
              failed: threading.Event) -> _Run:
    r = _Run(n, spec, failed)
    threads: list[threading.Thread] = []
    for c in range(n):
        t = threading.Thread(target=_client, args=(request, r, c, run, sweep_id), name=f"vauban-client-{n}-{c}",
                             daemon=True)
        try:
            t.start()
        except RuntimeError as exc:  # out of threads: the started clients would wait for ever for the rest
            failed.set()
            r.all_warm.set()
            for started in threads:
                started.join()
            raise ConfigurationError(f"run_concurrency: could not start client thread {c + 1} of concurrency {n} "
                                     f"({exc}); lower the concurrency values") from exc
        threads.append(t)
    for t in threads:
        t.join()
    return r


def _window(r: _Run, value: int, run: int) -> RunRecord:
    measured = sum(len(calls) for calls in r.calls)
    t1 = r.stop_at if r.spec.window_s is not None else min(r.last_end)
    ends = sorted(e for e in r.ends if r.t0 < e <= t1)
    if len(ends) < 2 or ends[-1] <= ends[0]:
        return RunRecord(value, run, measured, None, len(ends), None,
                         note=f"{len(ends)} requests completed while every client was measuring (need 2: raise "
                              "requests_per_client or window_s)")
    return RunRecord(value, run, measured, ends[-1] - ends[0], len(ends), (len(ends) - 1) / (ends[-1] - ends[0]))


def run_concurrency(
    request: Callable[[int, int], object],
    spec: ConcurrencySpec,
    *,
    session: Session,
    throughput: str = "auto",
    allow_unstable_coverage: bool = False,
    seed: int = 0,
) -> ConcurrencyResult:
    """Run the closed-loop sweep ``spec`` (see the module docstring) and profile its traces."""
    if session.store is None:
        raise ConfigurationError("run_concurrency: the session keeps no local store to read traces back "
                                 "(profile them from a source with profile_traces instead)")
    if not callable(request):
        raise ConfigurationError(f"run_concurrency: request must be callable as request(client, seq), got {request!r}")
    if throughput not in THROUGHPUT_METHODS:
        raise ConfigurationError(f"run_concurrency: throughput must be one of {', '.join(THROUGHPUT_METHODS)}, "
                                 f"got {throughput!r}")
    sweep_id = spec.sweep_id or f"{CONCURRENCY}-{uuid.uuid4().hex[:12]}"
    failed = threading.Event()
    order = schedule(spec.values, spec.repeats)
    runs_seen: dict[int, int] = {}
    done: list[tuple[int, int, _Run]] = []
    started = time.perf_counter()
    try:
        for value in order:
            n = int(value)
            run = runs_seen.get(n, 0)
            runs_seen[n] = run + 1
            r = _run_once(request, n, run, spec, sweep_id, failed)
            done.append((n, run, r))
            if r.errors:
                raise r.errors[0]
    finally:
        session.force_flush()
    wall = time.perf_counter() - started
    return _collect(spec, sweep_id, done, session, wall, throughput, allow_unstable_coverage, seed)


def _collect(spec: ConcurrencySpec, sweep_id: str, done: Sequence[tuple[int, int, _Run]], session: Session,
             wall: float, throughput: str, allow_unstable_coverage: bool, seed: int) -> ConcurrencyResult:
    assert session.store is not None
    notes: list[str] = []
    labels: dict[str, tuple[int, int]] = {}
    plan: list[tuple[str, int, int, int, int, float | None]] = []
    runs: list[RunRecord] = []
    for n, run, r in done:
        runs.append(_window(r, n, run))
        for c in range(n):
            calls, ids = r.calls[c], r.trace_ids[c]
            one_each = all(k == 1 for _, _, k in calls) and len(ids) == len(calls)
            if not one_each:
                notes.append(f"concurrency {n} run {run} client {c}: {len(calls)} calls opened {len(ids)} traced "
                             "requests (expected one each)")
            for i, tid in enumerate(ids):
                labels[tid] = (run, c)
                call_s = calls[i][1] - calls[i][0] if one_each else None
                plan.append((tid, n, run, c, i if one_each else -1, call_s))
    if not plan:
        raise ConfigurationError("run_concurrency: the requests opened no recorded traced request (does request() "
                                 "open one, e.g. ServingLoop.call or traced_call, and is an SDK configured?)")
    stored, note = read_back(session.store, [entry[0] for entry in plan], "run_concurrency")
    if note is not None:
        notes.append(note)
    found = [(stored[entry[0]], entry) for entry in plan if entry[0] in stored]
    traces = tuple(t for t, _ in found)
    records: list[RequestRecord] = []
    for trace, (tid, n, run, c, i, call_s) in found:
        root = trace.root
        records.append(RequestRecord(tid, n, run, c, i, None if root is None else root.stage_duration_s,
                                     queue_wait_s(trace), call_s))
    profile = profile_traces(traces, axis=CONCURRENCY, sweep_id=sweep_id, throughput=throughput, closed_loop=labels,
                             allow_unstable_coverage=allow_unstable_coverage, seed=seed)
    return ConcurrencyResult(spec=spec, sweep_id=sweep_id, profile=profile, traces=traces, requests=tuple(records),
                             runs=tuple(runs), wall_s=wall, notes=tuple(notes))


__all__ = ["ConcurrencyResult", "ConcurrencySpec", "RequestRecord", "RunRecord", "run_concurrency"]
