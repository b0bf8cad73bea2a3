"""The load-test gauges (``vauban_sweep_load*``, ``vauban_sweep_verdict``) from synthetic sweeps.

Open loop: constant arrivals at 20, 50, 80 and 200 requests/s against one FIFO server with a 10 ms
service time (capacity 100/s), simulated exactly, every request its own trace with the open-loop
driver's labels and a ``queue`` stage span. Below capacity the rate is sustained, at 200/s the
backlog grows and the throughput plateaus at 100/s; a late generator (one rate sent 30 ms behind
schedule) and a failed request give the other verdicts. Every gauge is compared with what
``profile_traces`` says on the same traces. Closed loop: the concurrency example of
``test_collector_sweeps_concurrency`` gives the response and queue medians per N.
"""

from __future__ import annotations

import statistics
from typing import Any

import pytest
from test_collector_sweeps_concurrency import _closed_loop

from vauban_trace.collector._sweeps import FAMILIES, Sample, samples_of
from vauban_trace.contract import Trace, TraceSpan
from vauban_trace.sweep import OPEN_LOOP_KEY, QUEUE_STAGE, REQUEST, SweepProfile, profile_traces

SERVICE_NS = 10_000_000  # capacity 100/s
WINDOW_NS = 1_000_000_000
ROOT = "a" * 16


def _run(rate: int, run: int, *, late_ns: int = 0, fail_seq: int | None = None, sweep: str = "ol") -> list[Trace]:
    """One run at ``rate``: arrivals every 1 / rate over a 1 s window, one FIFO server."""
    w0 = 10**12 * (run + 1) + 10**10 * rate
    w1 = w0 + WINDOW_NS
    gap = 10**9 // rate
    free = w0
    out = []
    for seq in range(rate):  # rate arrivals in the 1 s window
        scheduled = w0 + seq * gap
        sent = scheduled + late_ns + 50_000  # the generator's small overshoot
        begin = max(sent, free)
        free = end = begin + SERVICE_NS
        labels = {"run": run, "seq": seq, "scheduled_unix_nano": scheduled, "window_start_unix_nano": w0,
                  "window_end_unix_nano": w1, "dropped": 0}
        meta: dict[str, Any] = {"sweep": {"id": sweep, "axis": "arrival_rate", "axis_value": rate},
                                OPEN_LOOP_KEY: labels}
        status = "error" if seq == fail_seq else "unset"
        spans = (TraceSpan(id=ROOT, name="root", start_unix_nano=sent, end_unix_nano=end, status=status),
                 TraceSpan(id="c" * 16, name="queue", stage=QUEUE_STAGE, parent_id=ROOT, start_unix_nano=sent,
                           end_unix_nano=begin + 1000))
        out.append(Trace(id=f"{run:04x}{rate:04x}{seq:04x}".ljust(32, "0"), spans=spans, metadata=meta))
    return out


def _by(samples: list[Sample], family: str) -> dict[tuple[str, ...], float]:
    """Extra label values (after sweep_id, axis, stage, model) -> value, for one family."""
    rows = {labels[4:]: value for name, labels, value in samples if name == family}
    assert len(rows) == sum(1 for name, *_ in samples if name == family), "duplicate series"
    return rows


@pytest.fixture(scope="module")
def open_loop() -> tuple[SweepProfile, list[Sample]]:
    traces = [t for rate in (20, 50, 200) for t in _run(rate, 0)]
    traces += _run(80, 0, late_ns=30_000_000)  # 30 ms behind: more than the 12.5 ms gap
    profile = profile_traces(traces, sweep_id="ol")
    return profile, samples_of(profile, "m")


def test_open_loop_load_gauges_equal_the_profile(open_loop: tuple[SweepProfile, list[Sample]]) -> None:
    profile, samples = open_loop
    assert profile.open_loop is not None
    load = _by(samples, "vauban_sweep_load")
    for p in profile.open_loop.points:
        v = str(int(p.value))
        assert load[(v, "offered_realised")] == pytest.approx(p.offered_realised)
        assert load[(v, "offered_sent")] == pytest.approx(p.offered_sent)
        assert p.achieved is not None and load[(v, "achieved")] == pytest.approx(p.achieved)
        assert load[(v, "response_p50_s")] == p.response.p50.median
        assert load[(v, "response_p95_s")] == p.response.p95 and load[(v, "response_p99_s")] == p.response.p99
        assert p.queue_wait is not None and load[(v, "queue_wait_p95_s")] == p.queue_wait.p95
        assert load[(v, "lateness_p95_s")] == p.lateness.p95
        assert p.littles_law_n is not None and load[(v, "littles_law_n")] == pytest.approx(p.littles_law_n)
        assert (load[(v, "runs")], load[(v, "traces")], load[(v, "failed")], load[(v, "dropped")]) == (
            1.0, float(p.traces), 0.0, 0.0)
    # the numbers themselves: offered = achieved below capacity, the 100/s plateau above it
    assert load[("20", "achieved")] == pytest.approx(20, rel=0.01)
    assert load[("50", "achieved")] == pytest.approx(50, rel=0.01)
    assert load[("200", "achieved")] == pytest.approx(100, rel=0.01)
    assert load[("200", "offered_realised")] == pytest.approx(200)
    assert load[("20", "response_p50_s")] == pytest.approx(0.010, rel=0.01)  # no queue below capacity
    assert load[("200", "response_p99_s")] > 0.4  # half the window's arrivals still queued at its end
    assert load[("20", "littles_law_n")] == pytest.approx(20 * 0.010, rel=0.02)  # L = X R
    assert load[("80", "lateness_p95_s")] == pytest.approx(0.030, rel=0.01)


def test_open_loop_intervals_exist_only_where_the_profile_has_them(
    open_loop: tuple[SweepProfile, list[Sample]],
) -> None:
    profile, samples = open_loop
    assert profile.open_loop is not None
    intervals = _by(samples, "vauban_sweep_load_interval")
    for p in profile.open_loop.points:
        v = str(int(p.value))
        assert intervals[(v, "response_p50_s", "low")] == p.response.p50.ci_low
        assert intervals[(v, "response_p50_s", "high")] == p.response.p50.ci_high
        for q, bounds in (("response_p95_s", p.response.p95_interval), ("response_p99_s", p.response.p99_interval)):
            if bounds is None:
                assert (v, q, "low") not in intervals and (v, q, "high") not in intervals
            else:
                assert (intervals[(v, q, "low")], intervals[(v, q, "high")]) == bounds
    # 20 arrivals: 1 beyond the p95, too few for its interval; 200 arrivals: 10 beyond it
    assert ("20", "response_p95_s", "low") not in intervals
    assert ("200", "response_p95_s", "low") in intervals and ("200", "response_p99_s", "low") not in intervals
    assert {q for (_, q, _) in intervals} <= {f"{k}_{p}_s" for k in ("response", "queue_wait")
                                               for p in ("p50", "p95", "p99")}


def test_open_loop_verdicts_and_limits(open_loop: tuple[SweepProfile, list[Sample]]) -> None:
    profile, samples = open_loop
    assert profile.open_loop is not None
    verdicts = _by(samples, "vauban_sweep_verdict")
    by_value = {v: (verdict, reason) for (v, verdict, reason) in verdicts}
    assert len(by_value) == len(verdicts) == 4 and set(verdicts.values()) == {1.0}
    assert by_value["20"] == ("sustained", "") and by_value["50"] == ("sustained", "")
    verdict, reason = by_value["200"]
    assert verdict == "saturated" and "achieved" in reason and "growing backlog" in reason
    verdict, reason = by_value["80"]
    assert verdict.split(", ")[0] == "late" and "fell behind its schedule" in reason
    (late,) = [p for p in profile.open_loop.points if p.value == 80]
    assert reason == "; ".join(late.reasons)
    limits = _by(samples, "vauban_sweep_load_limit")
    assert limits == {("highest_sustained",): 50.0, ("lowest_saturated",): 200.0}
    assert profile.open_loop.highest_sustained == 50 and profile.open_loop.lowest_saturated == 200
    # every load sample is the request stage's, on the sweep's base labels
    for name, labels, _ in samples:
        if name.startswith(("vauban_sweep_load", "vauban_sweep_verdict")):
            assert labels[:4] == ("ol", "arrival_rate", REQUEST, "m")
            assert len(labels) == 4 + len(FAMILIES[name][1])


def test_repeated_runs_are_summarised_by_their_median_without_intervals() -> None:
    traces = [t for run in range(3) for t in _run(50, run, fail_seq=7 if run == 1 else None)]
    traces += [t for run in range(3) for t in _run(200, run)]
    profile = profile_traces(traces, sweep_id="ol")
    assert profile.open_loop is not None
    samples = samples_of(profile, "m")
    load = _by(samples, "vauban_sweep_load")
    runs50 = [p for p in profile.open_loop.points if p.value == 50]
    assert len(runs50) == 3
    assert load[("50", "runs")] == 3.0 and load[("50", "traces")] == 150.0 and load[("50", "failed")] == 1.0
    assert load[("50", "response_p95_s")] == statistics.median(p.response.p95 for p in runs50 if p.response.p95)
    assert not _by(samples, "vauban_sweep_load_interval")  # a median over runs has no bootstrap interval
    verdicts = _by(samples, "vauban_sweep_verdict")
    ((verdict, reason),) = [(vd, r) for (v, vd, r) in verdicts if v == "50"]
    assert verdict == "failures" and reason == "run 1: 1 of 50 requests failed"
    # one run failed: 50/s is not sustained, and neither is anything else
    assert ("highest_sustained",) not in _by(samples, "vauban_sweep_load_limit")


def test_concurrency_axis_exports_response_and_queue_medians_per_n() -> None:
    slow = (1.0, 1.02, 0.99)
    traces = [t for n in (1, 2, 4, 8) for run in range(3) for t in _closed_loop(n, run, slow[run])]
    profile = profile_traces(traces, sweep_id="cc")
    samples = samples_of(profile, "m")
    load = _by(samples, "vauban_sweep_load")
    intervals = _by(samples, "vauban_sweep_load_interval")
    for n in (1, 2, 4, 8):
        v = str(n)
        request, queue = profile.point(REQUEST, n).duration_s, profile.point(QUEUE_STAGE, n).duration_s
        assert load[(v, "response_p50_s")] == request.median
        assert load[(v, "queue_wait_p50_s")] == queue.median
        assert (intervals[(v, "response_p50_s", "low")], intervals[(v, "response_p50_s", "high")]) == (
            request.ci_low, request.ci_high)
        runs = [tp for tp in profile.throughput if tp.value == n]
        assert load[(v, "mean_response_s")] == statistics.median(tp.mean_response_s for tp in runs)
        assert load[(v, "throughput_window")] == statistics.median(tp.window for tp in runs if tp.window)
        assert load[(v, "throughput_littles_law")] == statistics.median(tp.littles_law for tp in runs)
        assert load[(v, "runs")] == 3.0 and load[(v, "traces")] == 3.0 * 4 * n
    # no open-loop families on a closed loop
    assert not _by(samples, "vauban_sweep_verdict") and not _by(samples, "vauban_sweep_load_limit")


def test_batch_axis_exports_no_load_series() -> None:
    traces = []
    for n in (1, 2, 4):
        start = 10**12 * n
        spans = (TraceSpan(id=ROOT, name="root", start_unix_nano=start, end_unix_nano=start + n * 10**6),)
        traces.append(Trace(id=f"{n:04x}".ljust(32, "0"), spans=spans,
                            metadata={"sweep": {"id": "bs", "axis": "batch_size", "axis_value": n}}))
    samples = samples_of(profile_traces(traces, sweep_id="bs"), "m")
    assert samples and not [s for s in samples if s[0].startswith(("vauban_sweep_load", "vauban_sweep_verdict"))]


def test_a_real_open_loop_sweep_through_the_collector(make_collector: Any, tmp_path: Any) -> None:
    """run_open_loop + ServingLoop export over OTLP/HTTP to a collector: its gauges are the profile of
    the traces it stored, equal to the driver's own profile (same spans, read back locally)."""
    import time

    from collector_helpers import wait_for
    from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter

    import vauban_trace as vt
    from vauban_trace.sweep import OpenLoopSpec, ServingLoop, run_open_loop

    c = make_collector(quiet_period_s=0.0, sweep_profile_interval_s=0.2)
    assert c.http_address is not None
    exporter = OTLPSpanExporter(endpoint=f"http://127.0.0.1:{c.http_address[1]}/v1/traces")
    session = vt.configure(store_dir=tmp_path / "local", exporter=["embedded", exporter])
    try:
        serving: ServingLoop[None, None] = ServingLoop(serve=lambda _: time.sleep(0.010), model="fake-service",
                                                        workers=1)
        with serving as loop:
            spec = OpenLoopSpec(rates=(20, 400), duration_s=0.6, warmup_s=0.1, arrivals="constant",
                                max_in_flight=16, sweep_id="ol-e2e")
            result = run_open_loop(lambda seq: loop.call(None), spec, session=session)
    finally:
        session.shutdown()  # flushes the OTLP exporter
    assert result.profile.open_loop is not None
    measured = sum(p.traces for p in result.profile.open_loop.points)
    assert c.sweeps is not None

    def profiled() -> bool:
        assert c.sweeps is not None
        p = c.sweeps.profiles().get("ol-e2e")
        return p is not None and p.open_loop is not None and sum(x.traces for x in p.open_loop.points) == measured

    wait_for(profiled, timeout=30)
    rows = [(s.name, tuple(s.labels[k] for k in ("sweep_id", "axis", "stage", "model",
                                                  *FAMILIES[s.name][1])), s.value)
            for family in c.metrics.registry.collect() for s in family.samples
            if s.name in FAMILIES and s.labels["sweep_id"] == "ol-e2e"]
    mine = [r for r in rows if r[0].startswith(("vauban_sweep_load", "vauban_sweep_verdict"))]
    stored = sorted((c.store.get_trace(t.trace_id) for t in c.store.list_traces(limit=None)), key=lambda t: t.id)
    again = profile_traces(stored, sweep_id="ol-e2e", seed=0)  # what the profiler documents
    expected = [s for s in samples_of(again, "fake-service")
                if s[0].startswith(("vauban_sweep_load", "vauban_sweep_verdict"))]
    assert sorted(mine) == sorted(expected)
    # and the driver's own profile (its traces in its order): the same numbers up to rounding, except
    # the bootstrap intervals (they depend on the order) and what the driver knows beyond the traces:
    # it hands profile_traces the final count of refused arrivals, the traces carry the count so far
    # when each was sent (arrivals refused after the last one are not seen: dropped and offered are
    # lower bounds in the collector, and so are the verdict's reasons' counts)
    driver = {(n, lbl): v for n, lbl, v in samples_of(result.profile, "fake-service") if n == "vauban_sweep_load"}
    same = {"achieved", "lateness_p95_s", "littles_law_n", "runs", "traces", "failed", *(
        f"{k}_{q}_s" for k in ("response", "queue_wait") for q in ("p50", "p95", "p99"))}
    compared = [(name, labels, value) for name, labels, value in mine
                if name == "vauban_sweep_load" and labels[-1] in same]
    assert {lbl[-1] for _, lbl, _ in compared} >= {"achieved", "response_p99_s", "queue_wait_p95_s"}
    for name, labels, value in compared:
        assert value == pytest.approx(driver[(name, labels)], rel=1e-9), (name, labels)
    for (value, verdict, _), v2 in zip(sorted(_by(mine, "vauban_sweep_verdict")), sorted(
            _by([s for s in samples_of(result.profile, "x") if s[0] == "vauban_sweep_verdict"],
                "vauban_sweep_verdict")), strict=True):
        assert (value, verdict) == v2[:2]
    load = _by(mine, "vauban_sweep_load")
    assert load[("400", "achieved")] < 0.6 * load[("400", "offered_realised")]  # capacity 100/s
    verdicts = {v: verdict for (v, verdict, _) in _by(mine, "vauban_sweep_verdict")}
    assert "saturated" in verdicts["400"].split(", ")
