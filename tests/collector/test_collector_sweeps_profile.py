"""Sweep profiles in the collector: USL fits exported as ``vauban_sweep_*`` gauges.

Sweeps are sent through the real instrumentation API (``sweep_point`` + ``traced_request`` +
``stage``) and the real OTLP/HTTP exporter to a real collector. The ``forward`` stage's duration
is set with ``set_counter("duration_s", ..., provenance="declared")`` from a known USL curve
(lambda 2000/s, sigma 0.05, kappa 0.002, so N* = 21.8) with 2 % seeded noise, so the fit must
recover the parameters; the ``request`` stage keeps its real (tiny) duration and is only compared
with what ``profile_traces`` says. Every gauge is compared with ``profile_traces`` run on the
same store's traces (trace-id order, seed 0: what the profiler documents).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import numpy as np
import pytest
from collector_helpers import wait_for
from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import BatchSpanProcessor
from test_collector_prometheus import _query, prometheus  # noqa: F401 - the real-Prometheus fixture

import vauban_trace as vt
from vauban_trace._exceptions import ConfigurationError
from vauban_trace.cli import build_parser, main
from vauban_trace.cli._collector import build_config
from vauban_trace.collector import Collector, CollectorConfig
from vauban_trace.collector._sweeps import SweepProfiler
from vauban_trace.contract import Trace
from vauban_trace.rebuild import document_of
from vauban_trace.sweep import SweepProfile, profile_traces

LAMBDA, SIGMA, KAPPA = 2000.0, 0.05, 0.002
PEAK = math.sqrt((1 - SIGMA) / KAPPA)
VALUES = (1, 2, 4, 8, 16, 32, 64)
SHORT = (1, 2, 4)
MODEL = "usl-model"


def _usl(n: float) -> float:
    return LAMBDA * n / (1 + SIGMA * (n - 1) + KAPPA * n * (n - 1))


def _send(c: Collector, sweep_id: str, values: Sequence[int], repeats: int, seed: int) -> None:
    rng = np.random.default_rng(seed)
    assert c.http_address is not None
    provider = TracerProvider(resource=Resource.create({"service.name": "usl-worker"}))
    provider.add_span_processor(BatchSpanProcessor(OTLPSpanExporter(
        endpoint=f"http://127.0.0.1:{c.http_address[1]}/v1/traces")))
    for _ in range(repeats):
        for n in values:
            with vt.sweep_point("batch_size", n, sweep_id=sweep_id):
                with vt.traced_request(model=MODEL, tracer_provider=provider):
                    with vt.stage("forward", batch_size=n, tracer_provider=provider) as st:
                        seconds = n / _usl(n) * (1 + float(rng.normal(0, 0.02)))
                        st.set_counter("duration_s", seconds, provenance="declared")
    provider.shutdown()  # flushes the batch processor


def _store_traces(c: Collector, sweep_id: str) -> list[Trace]:
    traces = [c.store.get_trace(s.trace_id) for s in c.store.list_traces(limit=None)]
    mine = [t for t in traces if isinstance(t.metadata.get("sweep"), dict) and t.metadata["sweep"].get("id") == sweep_id]
    return sorted(mine, key=lambda t: t.id)


def _profiled(c: Collector, sweep_id: str, traces: int) -> bool:
    assert c.sweeps is not None
    profile = c.sweeps.profiles().get(sweep_id)
    return profile is not None and sum(len(ids) for ids in profile.trace_ids.values()) == traces


def _gauges(c: Collector, sweep_id: str) -> dict[str, list[tuple[dict[str, str], float]]]:
    out: dict[str, list[tuple[dict[str, str], float]]] = {}
    for family in c.metrics.registry.collect():
        for s in family.samples:
            if s.name.startswith("vauban_sweep_") and s.labels["sweep_id"] == sweep_id:
                out.setdefault(s.name, []).append((dict(s.labels), s.value))
    return out


def _one(rows: list[tuple[dict[str, str], float]], **labels: str) -> float:
    found = [v for lbl, v in rows if all(lbl[k] == want for k, want in labels.items())]
    assert len(found) == 1, (labels, rows)
    return found[0]


def _sent_and_profiled(c: Collector) -> tuple[SweepProfile, SweepProfile]:
    _send(c, "usl-sweep", VALUES, repeats=3, seed=7)
    _send(c, "short-sweep", SHORT, repeats=2, seed=8)
    total = 3 * len(VALUES) + 2 * len(SHORT)
    wait_for(lambda: c.store.trace_count() == total and not c.store.pending_traces(), timeout=20)
    wait_for(lambda: _profiled(c, "usl-sweep", 3 * len(VALUES)) and _profiled(c, "short-sweep", 2 * len(SHORT)),
             timeout=20)
    full = profile_traces(_store_traces(c, "usl-sweep"), sweep_id="usl-sweep", seed=0)
    short = profile_traces(_store_traces(c, "short-sweep"), sweep_id="short-sweep", seed=0)
    return full, short


def test_usl_fit_gauges_equal_profile_traces_and_recover_the_curve(make_collector: Any) -> None:
    c = make_collector(quiet_period_s=0.0, sweep_profile_interval_s=0.2)
    full, _ = _sent_and_profiled(c)
    g = _gauges(c, "usl-sweep")
    assert full.stages == ("request", "forward")
    for stage in full.stages:
        fit = full.fits[stage]
        base = {"axis": "batch_size", "stage": stage, "model": MODEL}
        status = "fitted" if fit.status == "fitted" else "refused"
        assert _one(g["vauban_sweep_fit_status"], **base, status=status, reason=fit.reason,
                    caveat=fit.caveat or "") == 1.0
        for point in (p for p in full.points if p.stage == stage):
            value = str(point.value)
            assert isinstance(point.value, int)
            assert _one(g["vauban_sweep_observed"], **base, sweep_value=value,
                        quantity="median_duration_s") == point.duration_s.median
            assert point.duration_s.median is not None
            assert _one(g["vauban_sweep_observed"], **base, sweep_value=value,
                        quantity="throughput") == point.value / point.duration_s.median
            if fit.status == "fitted":
                assert _one(g["vauban_sweep_usl_predicted"], **base, sweep_value=value) == fit.predict(point.value)
        assert _one(g["vauban_sweep_points"], **base, quantity="values") == len(VALUES)
        assert _one(g["vauban_sweep_points"], **base, quantity="traces") == 3 * len(VALUES)
        assert _one(g["vauban_sweep_points"], **base, quantity="min_repeats") == 3

    fit = full.fits["forward"]
    assert fit.status == "fitted", fit.reason
    base = {"stage": "forward", "model": MODEL}
    params = {name: _one(g["vauban_sweep_usl_parameter"], **base, parameter=name, bound="estimate")
              for name in ("lambda", "sigma", "kappa")}
    assert params == {"lambda": fit.lambda_, "sigma": fit.sigma, "kappa": fit.kappa}
    for name, (low, high) in fit.intervals.items():
        assert _one(g["vauban_sweep_usl_parameter"], **base, parameter=name, bound="low") == low
        assert _one(g["vauban_sweep_usl_parameter"], **base, parameter=name, bound="high") == high
    assert set(fit.intervals) == {"lambda", "sigma", "kappa"}
    assert _one(g["vauban_sweep_usl_peak"], **base) == fit.peak_n
    assert _one(g["vauban_sweep_usl_r_squared"], **base) == fit.r2
    # the fit recovers the curve the durations were drawn from
    assert abs(params["lambda"] / LAMBDA - 1) < 0.05
    assert abs(params["sigma"] - SIGMA) < 0.015
    assert abs(params["kappa"] / KAPPA - 1) < 0.15
    assert fit.peak_n is not None and abs(fit.peak_n / PEAK - 1) < 0.1
    low, high = fit.intervals["kappa"]
    assert low < KAPPA < high
    for n in VALUES:
        predicted = _one(g["vauban_sweep_usl_predicted"], **base, sweep_value=str(n))
        assert abs(predicted / _usl(n) - 1) < 0.05


def test_a_sweep_with_too_few_values_exports_its_refusal_and_no_numbers(make_collector: Any) -> None:
    c = make_collector(quiet_period_s=0.0, sweep_profile_interval_s=0.2)
    _, short = _sent_and_profiled(c)
    g = _gauges(c, "short-sweep")
    fit = short.fits["forward"]
    assert fit.status == "not_applicable" and fit.reason.startswith("only 3 distinct N (need 6)")
    (row,) = [lbl for lbl, _ in g["vauban_sweep_fit_status"] if lbl["stage"] == "forward"]
    assert row["status"] == "refused" and row["reason"] == fit.reason
    for name in ("vauban_sweep_usl_parameter", "vauban_sweep_usl_peak", "vauban_sweep_usl_r_squared",
                 "vauban_sweep_usl_predicted"):
        assert name not in g, f"{name} exported for a refused fit: {g.get(name)}"
    # what was measured is still there
    observed = {lbl["sweep_value"] for lbl, _ in g["vauban_sweep_observed"] if lbl["stage"] == "forward"}
    assert observed == {"1", "2", "4"}
    assert _one(g["vauban_sweep_points"], stage="forward", quantity="values") == 3


def test_sweeps_tracked_are_capped_and_evicted_series_removed(make_collector: Any) -> None:
    c = make_collector(quiet_period_s=0.0, sweep_profile_interval_s=0)
    assert c.sweeps is None  # 0 turns the profiler off: no vauban_sweep_* series at all
    for i in range(3):
        _send(c, f"s{i}", SHORT, repeats=1, seed=i)
    wait_for(lambda: c.store.trace_count() == 3 * len(SHORT) and not c.store.pending_traces(), timeout=20)
    assert not [f for f in c.metrics.registry.collect() if f.name.startswith("vauban_sweep_")]

    profiler = SweepProfiler(c.store, interval_s=60, max_sweeps=2, max_traces=2)
    c.metrics.registry.register(profiler)
    for i in range(3):
        traces = _store_traces(c, f"s{i}")
        profiler.note([document_of(t, (MODEL, "batch_size", t.metadata["sweep"]["axis_value"])) for t in traces])
        assert profiler.run_once() == 1
    assert set(profiler.profiles()) == {"s1", "s2"}
    ids = {s.labels["sweep_id"] for f in c.metrics.registry.collect() for s in f.samples
           if s.name.startswith("vauban_sweep_")}
    assert ids == {"s1", "s2"}
    # at most max_traces traces per sweep: the two noted last (here, the two highest trace ids)
    assert sum(len(v) for v in profiler.profiles()["s2"].trace_ids.values()) == 2
    # a noted trace the store does not hold is skipped, not raised; documents without a sweep
    # axis (or without a root yet) are not even noted
    profiler.note([document_of(Trace(id="ab" * 16), (MODEL, "batch_size", 1)),
                   document_of(Trace(id="cd" * 16), (MODEL, None, None)),
                   document_of(Trace(id="ef" * 16, complete=False), None)])
    assert list(profiler._waiting) == ["ab" * 16]
    assert profiler.run_once() == 0 and set(profiler.profiles()) == {"s1", "s2"}


def test_a_trace_without_sweep_id_is_read_back_but_never_parsed(tmp_path: Any, monkeypatch: Any) -> None:
    from vauban_trace.collector import _sweeps
    from vauban_trace.store import TraceStore

    store = TraceStore(tmp_path / "store")
    swept = Trace(id="ab" * 16, metadata={"sweep": {"id": "s1", "axis": "batch_size", "axis_value": 1}})
    axis_only = Trace(id="cd" * 16, metadata={"sweep": {"axis": "batch_size", "axis_value": 1}})
    store.put_traces([(swept, None), (axis_only, None)])
    parsed: list[str] = []
    real = Trace.from_json

    def from_json(text: str) -> Trace:
        trace = real(text)
        parsed.append(trace.id)
        return trace

    monkeypatch.setattr(_sweeps.Trace, "from_json", from_json)
    profiler = SweepProfiler(store, interval_s=60)
    profiler.note([document_of(t, (MODEL, "batch_size", 1)) for t in (swept, axis_only)])
    profiler.run_once()
    assert parsed[0] == swept.id and axis_only.id not in parsed
    assert set(profiler.profiles()) == {"s1"}
    store.close()


def test_only_documents_that_may_carry_a_sweep_id_are_read_back() -> None:
    from vauban_trace.collector._sweeps import may_have_sweep_id

    # the key as to_json writes it; a string holding the same characters is escaped, not a key
    assert may_have_sweep_id(Trace(id="ab" * 16, metadata={"sweep": {"id": "s"}}).to_json())
    assert not may_have_sweep_id(Trace(id="ab" * 16, metadata={"note": '"sweep": {"id": "s"}'}).to_json())
    assert not may_have_sweep_id(Trace(id="ab" * 16, metadata={"sweep": "s"}).to_json())
    assert not may_have_sweep_id(Trace(id="ab" * 16, metadata={"sweep": {"axis": "n", "id": ""}}).to_json())
    # user metadata may order the keys otherwise; any object under a sweep key is looked at
    assert may_have_sweep_id(Trace(id="ab" * 16, metadata={"x": {"sweep": {"axis": "n", "id": "s"}}}).to_json())
    # both roads write the same text: the collector's C rebuild of a swept trace says maybe
    traces = []
    provider = TracerProvider(resource=Resource.create({"service.name": "svc"}))
    from opentelemetry.sdk.trace.export import SimpleSpanProcessor
    from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

    exporter = InMemorySpanExporter()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    tracer = provider.get_tracer("t")
    for attrs in ({"vauban.sweep.id": "s1", "vauban.sweep.axis": "batch_size", "vauban.sweep.axis_value": 2},
                  {"vauban.sweep.axis": "batch_size", "vauban.sweep.axis_value": 2}):
        with tracer.start_as_current_span("request", attributes={"vauban.trace.root": True, **attrs}):
            pass
    from opentelemetry.exporter.otlp.proto.common.trace_encoder import encode_spans

    from vauban_trace.rebuild import rebuild_documents

    for span in exporter.get_finished_spans():
        (doc,) = rebuild_documents(encode_spans([span]).SerializeToString())
        traces.append((doc.trace().metadata.get("sweep", {}).get("id"), may_have_sweep_id(doc.json)))
    assert traces == [("s1", True), (None, False)]


def test_fit_series_through_a_real_prometheus(make_collector: Any, prometheus: Any) -> None:  # noqa: F811
    c = make_collector(quiet_period_s=0.0, sweep_profile_interval_s=0.2, metrics=("127.0.0.1", 0))
    url = prometheus(c.metrics_address[1])
    full, short = _sent_and_profiled(c)
    fit = full.fits["forward"]
    sel = 'sweep_id="usl-sweep", stage="forward", model="usl-model", axis="batch_size"'
    wait_for(lambda: len(_query(url, f'vauban_sweep_usl_parameter{{{sel}, bound="estimate"}}')) == 3, timeout=20)
    rows = _query(url, f'vauban_sweep_usl_parameter{{{sel}, bound="estimate"}}')
    got = {r["metric"]["parameter"]: float(r["value"][1]) for r in rows}
    assert got == {"lambda": fit.lambda_, "sigma": fit.sigma, "kappa": fit.kappa}
    curve = _query(url, f"vauban_sweep_usl_predicted{{{sel}}} / on (sweep_value) "
                        f'vauban_sweep_observed{{{sel}, quantity="throughput"}}')
    assert {r["metric"]["sweep_value"] for r in curve} == {str(n) for n in VALUES}
    assert all(abs(float(r["value"][1]) - 1) < 0.1 for r in curve)
    refused = _query(url, 'vauban_sweep_fit_status{sweep_id="short-sweep", stage="forward"}')
    assert [r["metric"]["status"] for r in refused] == ["refused"]
    assert refused[0]["metric"]["reason"] == short.fits["forward"].reason
    assert _query(url, 'vauban_sweep_usl_parameter{sweep_id="short-sweep"}') == []


def test_sweep_profile_interval_flag(tmp_path: Any, capsys: Any) -> None:
    assert build_config(build_parser().parse_args(["collector"])).sweep_profile_interval_s == 10.0
    args = build_parser().parse_args(["collector", "--sweep-profile-interval", "0"])
    assert build_config(args).sweep_profile_interval_s == 0.0
    args = build_parser().parse_args(["collector", "--sweep-profile-interval", "500ms"])
    assert build_config(args).sweep_profile_interval_s == 0.5
    with pytest.raises(ConfigurationError, match="sweep profile interval"):
        CollectorConfig(sweep_profile_interval_s=-1.0)
    assert main(["collector", "--store", str(tmp_path), "--sweep-profile-interval", "often"]) == 2
    assert "invalid duration 'often'" in capsys.readouterr().err
