"""Open-loop (arrival-rate) sweeps: a single-worker fake service saturating at 1 / S, achieved = offered
below it, seeded schedules, a late generator, the in-flight cap, the error policy, traces read back."""

from __future__ import annotations

import json
import sys
import threading
import time
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from opentelemetry import trace as otel_trace

from vauban_trace._exceptions import ConfigurationError
from vauban_trace.contract import Trace, TraceSpan
from vauban_trace.sources import open_source
from vauban_trace.sweep import (
    ARRIVAL_RATE,
    OPEN_LOOP_KEY,
    OPEN_LOOP_REFUSAL,
    REQUEST,
    OpenLoopSpec,
    ServingLoop,
    arrival_schedule,
    profile_traces,
    run_open_loop,
    tail,
    traced_call,
)

SERVICE_S = 0.010  # one worker: capacity 1 / S = 100 requests/s


@pytest.fixture(scope="module")
def saturating(session: Any) -> Any:
    """Constant arrivals at 25, 50, 200 and 400/s against one worker with a 10 ms service time."""
    with ServingLoop(serve=lambda _: time.sleep(SERVICE_S), model="fake-service", workers=1) as loop:
        spec = OpenLoopSpec(rates=(25, 50, 200, 400), duration_s=0.8, warmup_s=0.2, arrivals="constant",
                            max_in_flight=24, sweep_id="open-sat")
        return run_open_loop(lambda seq: loop.call(None), spec, session=session)


def _points(result: Any) -> dict[float, Any]:
    return {p.value: p for p in result.profile.open_loop.points}


def test_a_single_worker_saturates_at_one_over_the_service_time(saturating: Any) -> None:
    profile = saturating.profile
    assert profile.axis == ARRIVAL_RATE and profile.values == (25, 50, 200, 400)
    pts = _points(saturating)
    for rate in (25, 50):  # below capacity: achieved = offered, no queue to speak of
        p = pts[rate]
        assert p.sustained and not p.saturated and not p.late, p.reasons
        assert p.achieved is not None and p.achieved == pytest.approx(rate, rel=0.12)
        assert p.queue_wait is not None and p.queue_wait.p50.median is not None and p.queue_wait.p50.median < SERVICE_S
    for rate in (200, 400):  # beyond it: the throughput plateaus at 1 / S, the queue grows, the cap refuses
        p = pts[rate]
        assert p.saturated and not p.sustained, p.reasons  # (late too on a busy machine: both are said)
        assert p.achieved is not None and 0.7 / SERVICE_S < p.achieved <= 1.05 / SERVICE_S
        assert p.queue_wait is not None and p.queue_wait.p50.median is not None
        assert p.queue_wait.p50.median > 5 * SERVICE_S
        assert p.dropped > 0 and any("in-flight cap refused" in r for r in p.reasons)
    assert pts[400].achieved == pytest.approx(pts[200].achieved, rel=0.15)  # a plateau
    summary = profile.open_loop
    assert summary.highest_sustained == 50 and summary.lowest_saturated == 200
    # no USL on this axis: a refusal that says why, for every stage
    assert set(profile.fits) == {REQUEST, "queue", "batch"}
    assert all(f.status == "not_applicable" and f.reason == OPEN_LOOP_REFUSAL for f in profile.fits.values())
    assert "USL: not applicable" in profile.render_markdown()
    # Little's law: L = X R, derived from the traces
    for p in pts.values():
        assert p.littles_law_n == pytest.approx(p.achieved * p.response.mean)
        assert p.to_dict()["littles_law_n"]["provenance"] == "derived"


def test_the_collector_gauges_carry_the_achieved_throughput_and_the_refusal(saturating: Any) -> None:
    from vauban_trace.collector._sweeps import samples_of

    samples = samples_of(saturating.profile, "fake-service")
    observed = {(labels[2], labels[4]): v for name, labels, v in samples
                if name == "vauban_sweep_observed" and labels[5] == "throughput"}
    pts = _points(saturating)
    assert {stage for stage, _ in observed} == {REQUEST}  # never rate / duration, never the queue's
    assert {value: x for (_, value), x in observed.items()} == {str(r): pts[r].achieved for r in (25, 50, 200, 400)}
    status = [labels for name, labels, _ in samples if name == "vauban_sweep_fit_status"]
    assert status and all(labels[4] == "refused" and labels[5] == OPEN_LOOP_REFUSAL for labels in status)


def test_an_overload_without_a_cap_shows_a_growing_backlog(session: Any) -> None:
    with ServingLoop(serve=lambda _: time.sleep(SERVICE_S), model="fake-service", workers=1) as loop:
        spec = OpenLoopSpec(rates=(150,), duration_s=0.8, arrivals="constant", max_in_flight=500,
                            sweep_id="open-backlog")
        result = run_open_loop(lambda seq: loop.call(None), spec, session=session)
    (p,) = result.profile.open_loop.points
    assert p.saturated and p.dropped == 0
    assert any("a growing backlog" in r for r in p.reasons), p.reasons
    waits = sorted((r.scheduled_unix_nano, r.queue_wait_s) for r in result.requests)
    assert waits[-1][1] is not None and waits[0][1] is not None and waits[-1][1] > waits[0][1] + 0.2


def test_the_driver_counts_what_it_refused_and_its_clock_agrees(saturating: Any) -> None:
    runs = {r.value: r for r in saturating.runs}
    pts = _points(saturating)
    for rate, run in runs.items():
        assert run.scheduled == run.sent + run.dropped and run.not_sent == 0 and run.failed == 0
        assert pts[rate].dropped == run.dropped  # the driver's exact count reached the profile
        assert run.scheduled == round(rate * 0.8) or abs(run.scheduled - rate * 0.8) <= 1
    assert runs[25].dropped == runs[50].dropped == 0 and runs[400].dropped > runs[200].dropped > 0
    assert 0.7 / SERVICE_S < runs[400].driver_throughput <= 1.1 / SERVICE_S
    assert runs[50].driver_throughput == pytest.approx(50, rel=0.15)
    assert any("in-flight cap (24) refused" in n for n in saturating.notes)
    as_json = json.loads(json.dumps(saturating.to_dict(), allow_nan=False))
    assert as_json["axis"] == ARRIVAL_RATE and as_json["arrivals"] == "constant" and len(as_json["runs"]) == 4
    assert as_json["profile"]["open_loop"]["highest_sustained"] == 50


def test_the_traces_come_back_through_the_store_with_their_coordinates(saturating: Any, store_dir: Path) -> None:
    by_id = {r.trace_id: r for r in saturating.requests}
    assert len(by_id) == len(saturating.traces) == sum(r.sent for r in saturating.runs)
    with open_source(f"store:{store_dir}") as src:
        stored = [src.get_trace(tid) for tid in by_id]
    for trace in stored:
        rec = by_id[trace.id]
        assert trace.metadata["sweep"] == {"id": "open-sat", "axis": ARRIVAL_RATE, "axis_value": rec.value}
        labels = trace.metadata[OPEN_LOOP_KEY]
        assert labels["run"] == rec.run and labels["seq"] == rec.seq
        assert labels["scheduled_unix_nano"] == rec.scheduled_unix_nano
        assert labels["window_start_unix_nano"] <= labels["scheduled_unix_nano"] < labels["window_end_unix_nano"]
        assert rec.lateness_s >= 0 and rec.response_s is not None and rec.queue_wait_s is not None
    # profiled again from the store alone (what a collector-fed store would give): the same verdicts
    again = profile_traces(stored, sweep_id="open-sat")
    assert again.axis == ARRIVAL_RATE and again.open_loop is not None
    assert again.open_loop.highest_sustained == 50 and again.open_loop.lowest_saturated == 200
    first = _points(saturating)
    for p in again.open_loop.points:
        assert p.achieved == pytest.approx(first[p.value].achieved)
        assert p.dropped <= first[p.value].dropped  # the labels say "refused so far": a lower bound


def test_poisson_below_saturation_offers_what_it_says_and_littles_law_holds(session: Any) -> None:
    call = traced_call(lambda _: time.sleep(0.02), model="fake-service")  # each request on its own sender
    spec = OpenLoopSpec(rates=(100,), duration_s=1.0, warmup_s=0.1, seed=7, sweep_id="open-poisson",
                        tolerance=0.1)  # about 100 arrivals: the edges of the window weigh a few percent
    result = run_open_loop(lambda seq: call(None), spec, session=session)
    (p,) = result.profile.open_loop.points
    (run,) = result.runs
    assert p.sustained, p.reasons
    assert p.achieved is not None and p.achieved == pytest.approx(p.offered_realised, rel=0.15)
    assert p.queue_wait is None  # no serving loop: nothing queued
    assert p.response.p50.ci_low is not None and p.response.p95 is not None and p.response.p99 is not None
    if p.response.n >= 100:  # at least 5 samples beyond p95: an interval
        assert p.response.p95_interval is not None and p.response.p95_interval[0] <= p.response.p95
    else:
        assert p.response.p95_interval is None
    # L = X R = 100/s * 20 ms = 2; Poisson arrivals see time averages (PASTA): the driver's count agrees
    assert p.littles_law_n is not None and 1.5 < p.littles_law_n < 2.6
    assert run.mean_in_system_at_arrival is not None
    assert run.mean_in_system_at_arrival == pytest.approx(p.littles_law_n, rel=0.35)
    assert result.profile.open_loop.highest_sustained == 100


def test_a_seeded_poisson_schedule_is_reproducible() -> None:
    a = arrival_schedule(50, 10.0, seed=3)
    assert a == arrival_schedule(50, 10.0, seed=3) and a != arrival_schedule(50, 10.0, seed=4)
    assert all(0 <= t < 10.0 for t in a) and list(a) == sorted(a)
    assert abs(len(a) - 500) < 5 * 500 ** 0.5  # Poisson count: mean 500, sd 22
    gaps = np.diff(a)
    assert gaps.mean() == pytest.approx(1 / 50, rel=0.15) and gaps.std() == pytest.approx(1 / 50, rel=0.2)
    const = arrival_schedule(4, 1.0, process="constant")
    assert const == (0.0, 0.25, 0.5, 0.75)
    for bad in ({"rate": 0}, {"rate": float("inf")}, {"span_s": -1.0}, {"process": "bursty"}):
        kwargs: dict[str, Any] = {"rate": 5.0, "span_s": 1.0, **bad}
        with pytest.raises(ConfigurationError):
            arrival_schedule(kwargs.pop("rate"), kwargs.pop("span_s"), **kwargs)


def test_the_driver_follows_the_seeded_schedule(session: Any) -> None:
    call = traced_call(lambda _: None, model="fake-service")
    spec = OpenLoopSpec(rates=(60,), duration_s=0.3, warmup_s=0.1, seed=11, sweep_id="open-seeded")
    result = run_open_loop(lambda seq: call(None), spec, session=session)
    expected = [t for t in arrival_schedule(60, 0.4, seed=[11, 0, 0]) if t >= 0.1]
    trace = {t.id: t for t in result.traces}
    got = sorted(rec.scheduled_unix_nano - trace[rec.trace_id].metadata[OPEN_LOOP_KEY]["window_start_unix_nano"]
                 for rec in result.requests)
    assert len(got) == len(expected)
    assert np.allclose(np.array(got) / 1e9, np.array(expected) - 0.1, atol=1e-6)


def test_a_generator_held_up_by_the_service_says_the_load_was_not_offered(session: Any) -> None:
    def spin(_: object) -> None:  # pure Python: holds the GIL until the interpreter switches threads
        end = time.perf_counter() + 0.008
        while time.perf_counter() < end:
            pass

    call = traced_call(spin, model="fake-service")
    old = sys.getswitchinterval()
    sys.setswitchinterval(0.05)  # a thread waiting for the GIL waits up to 50 ms
    try:
        spec = OpenLoopSpec(rates=(200,), duration_s=0.3, arrivals="constant", sweep_id="open-late")
        result = run_open_loop(lambda seq: call(None), spec, session=session)
    finally:
        sys.setswitchinterval(old)
    (p,) = result.profile.open_loop.points
    assert p.late and not p.sustained  # (and saturated or not: the spinning service holds the GIL)
    assert p.lateness.p95 is not None and p.lateness.p95 > 1 / 200
    assert any("the generator fell behind its schedule" in r for r in p.reasons)
    assert any("the load offered was not 200/s" in pr for pr in result.profile.problems)
    assert result.profile.open_loop.highest_sustained is None


def test_the_in_flight_cap_refuses_arrivals_instead_of_spawning_threads(session: Any) -> None:
    release = threading.Event()
    senders: list[int] = []
    # the four calls are released well after the 0.3 s schedule, counted from the first call (the
    # schedule's start): a timer started before run_open_loop fired before the last arrivals when
    # the sweep's set-up took over 50 ms on a loaded machine, and a freed sender took a fifth one
    timer = threading.Timer(0.3 + 0.25, release.set)
    lock = threading.Lock()

    def blocked(_: object) -> None:
        with lock:
            senders.append(sum(1 for t in threading.enumerate() if t.name.startswith("vauban-sender-")))
            if len(senders) == 1:
                timer.start()
        release.wait(5)

    call = traced_call(blocked, model="fake-service")
    spec = OpenLoopSpec(rates=(100,), duration_s=0.3, arrivals="constant", max_in_flight=4, sweep_id="open-cap")
    result = run_open_loop(lambda seq: call(None), spec, session=session)
    timer.join()
    (run,) = result.runs
    assert run.scheduled == 30 and run.sent == 4 and run.dropped == 26
    assert set(senders) == {4}  # the pool is the cap: no thread per arrival
    assert not any(t.name.startswith("vauban-sender-") for t in threading.enumerate())  # closed afterwards
    (p,) = result.profile.open_loop.points
    assert p.dropped == 26 and p.saturated and any("refused 26 arrivals" in r for r in p.reasons)


def test_the_first_error_is_re_raised_after_the_traces_are_flushed(session: Any) -> None:
    raised: list[BaseException] = []
    failed_trace: list[str] = []

    def flaky(seq: int) -> None:
        if seq == 5:
            failed_trace.append(format(otel_trace.get_current_span().get_span_context().trace_id, "032x"))
            exc = ValueError("boom at 5")
            raised.append(exc)
            raise exc

    call = traced_call(flaky, model="fake-service")
    calls: list[int] = []

    def request(seq: int) -> None:
        calls.append(seq)
        call(seq)

    spec = OpenLoopSpec(rates=(100, 50), duration_s=0.5, arrivals="constant", sweep_id="open-raise")
    with pytest.raises(ValueError, match="boom at 5") as info:
        run_open_loop(request, spec, session=session)
    assert info.value is raised[0]  # the same object, unchanged
    assert len(calls) < 20 and max(calls) < 20  # the generator stopped; the second rate never ran
    trace = session.read_trace(failed_trace[0])  # flushed before the re-raise
    assert trace.root is not None and trace.root.status == "error"
    assert trace.metadata[OPEN_LOOP_KEY]["seq"] == 5 and trace.metadata["sweep"]["id"] == "open-raise"


def test_errors_are_recorded_and_reported_with_the_record_policy(session: Any) -> None:
    def flaky(seq: int) -> None:
        time.sleep(0.002)
        if seq % 3 == 0:
            raise RuntimeError(f"failed {seq}")

    call = traced_call(flaky, model="fake-service")
    spec = OpenLoopSpec(rates=(50,), duration_s=0.4, arrivals="constant", sweep_id="open-record")
    result = run_open_loop(lambda seq: call(seq), spec, session=session, on_error="record")
    (p,) = result.profile.open_loop.points
    assert p.failed == 7 and p.traces == 20 and not p.sustained  # seq 0, 3, ..., 18
    assert p.response.n == 13  # failures are not response times
    assert all(isinstance(e, RuntimeError) for e in result.errors) and len(result.errors) == 7
    assert any("7 of 20 requests failed" in pr for pr in result.profile.problems)
    assert any("requests raised" in n and "failed 0" in n for n in result.notes)
    assert sum(1 for r in result.requests if r.error is not None) == 7
    assert result.profile.open_loop.highest_sustained is None


@pytest.mark.parametrize(("kwargs", "message"), [
    ({"rates": ()}, "rates must be a non-empty sequence"),
    ({"rates": (0,)}, "rates are finite numbers"),
    ({"rates": (5, 5)}, "rates repeat"),
    ({"duration_s": 0}, "duration_s must be"),
    ({"warmup_s": -1}, "warmup_s must be"),
    ({"arrivals": "bursty"}, "arrivals must be one of poisson, constant"),
    ({"max_in_flight": 0}, "max_in_flight must be an integer >= 1"),
    ({"tolerance": 1.0}, "tolerance must lie strictly between 0 and 1"),
    ({"rates": (1e9,)}, "more than 1000000 arrivals"),
])
def test_bad_specs_are_refused_with_a_reason(kwargs: dict[str, Any], message: str) -> None:
    args: dict[str, Any] = {"rates": (10,), "duration_s": 1.0, **kwargs}
    with pytest.raises(ConfigurationError, match=message):
        OpenLoopSpec(**args)


def test_bad_driver_arguments_are_refused(session: Any) -> None:
    spec = OpenLoopSpec(rates=(10,), duration_s=0.1)
    with pytest.raises(ConfigurationError, match="on_error must be one of raise, record"):
        run_open_loop(lambda seq: None, spec, session=session, on_error="ignore")
    with pytest.raises(ConfigurationError, match="opened no recorded traced request"):
        run_open_loop(lambda seq: None, OpenLoopSpec(rates=(50,), duration_s=0.1), session=session)


def test_tail_percentiles_and_their_intervals() -> None:
    values = list(np.random.default_rng(0).exponential(1.0, size=400))
    t = tail(values, seed=1)
    assert t.n == 400 and t.p50.median == pytest.approx(np.percentile(values, 50))
    assert t.p95 == pytest.approx(np.percentile(values, 95)) and t.p99 == pytest.approx(np.percentile(values, 99))
    assert t.p95_interval is not None and t.p95_interval[0] < t.p95 < t.p95_interval[1]
    assert t.p99_interval is None or t.p99_interval[0] <= t.p99 <= t.p99_interval[1]
    assert tail(values[:50]).p99_interval is None  # fewer than 5 samples beyond p99: no interval
    assert tail([]).p95 is None


def test_a_trace_without_a_root_adds_no_lateness() -> None:
    # two requests on schedule (1 ms late) and one whose trace has two parentless spans (no root):
    # the rootless one has no start to compare with its schedule and must not count as lateness
    w0, w1 = 10**12, 10**12 + 10**9
    traces = []
    for i, sched in enumerate((w0 + 10**8, w0 + 3 * 10**8, w0 + 5 * 10**8)):
        labels = {"run": 0, "seq": i, "scheduled_unix_nano": sched, "window_start_unix_nano": w0,
                  "window_end_unix_nano": w1, "dropped": 0}
        meta: dict[str, Any] = {"sweep": {"id": "syn", "axis": ARRIVAL_RATE, "axis_value": 3.0}, OPEN_LOOP_KEY: labels}
        start = sched + 10**6
        spans = [TraceSpan(id=f"{i:016x}", name="root", start_unix_nano=start, end_unix_nano=start + 10**7)]
        if i == 2:
            spans.append(TraceSpan(id="f" * 16, name="other", start_unix_nano=start, end_unix_nano=start + 10**7))
        traces.append(Trace(id=f"{i:032x}", spans=tuple(spans), metadata=meta))
    summary = profile_traces(traces).open_loop
    assert summary is not None
    (point,) = summary.points
    assert point.lateness.n == 2 and point.lateness.p95 == pytest.approx(1e-3)
    assert not point.late



def test_senders_that_cannot_start_are_stopped_and_the_interval_restored(session: Any,
                                                                        monkeypatch: pytest.MonkeyPatch) -> None:
    real_start = threading.Thread.start
    started: list[threading.Thread] = []

    def start(self: threading.Thread) -> None:
        if self.name.startswith("vauban-sender-") and len(started) >= 3:
            raise RuntimeError("can't start new thread")
        real_start(self)
        if self.name.startswith("vauban-sender-"):
            started.append(self)

    before = sys.getswitchinterval()
    monkeypatch.setattr(threading.Thread, "start", start)
    spec = OpenLoopSpec(rates=(50,), duration_s=0.1, max_in_flight=10, switch_interval_s=0.0005)
    with pytest.raises(ConfigurationError, match="sender thread 4 of max_in_flight=10"):
        run_open_loop(lambda seq: None, spec, session=session)
    monkeypatch.undo()
    assert sys.getswitchinterval() == before
    for t in started:
        t.join(timeout=5)
    assert len(started) == 3 and not any(t.is_alive() for t in started)


def test_a_run_whose_labels_give_an_empty_window_is_named() -> None:
    labels = {"run": 0, "seq": 0, "scheduled_unix_nano": 10**12, "window_start_unix_nano": 10**12,
              "window_end_unix_nano": 10**12, "dropped": 0}
    meta: dict[str, Any] = {"sweep": {"id": "syn", "axis": ARRIVAL_RATE, "axis_value": 5.0}, OPEN_LOOP_KEY: labels}
    trace = Trace(id="a" * 32, spans=(TraceSpan(id="b" * 16, name="root", start_unix_nano=10**12,
                                                end_unix_nano=10**12 + 10**6),), metadata=meta)
    profile = profile_traces([trace])
    assert profile.open_loop is not None and profile.open_loop.points == ()
    assert any("empty measured window" in p for p in profile.problems)

