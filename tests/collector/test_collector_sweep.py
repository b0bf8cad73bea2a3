"""A sweep end to end: sweep_point-stamped requests exported by the real OTLP/HTTP exporter, the
collector's stage histograms labelled by the sweep, and the sweep profiled from its store."""

from __future__ import annotations

import time
from typing import Any

from collector_helpers import wait_for
from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import BatchSpanProcessor

import vauban_trace as vt
from vauban_trace.sources import open_source
from vauban_trace.sweep import profile_traces

VALUES = (1, 2, 4, 8, 16, 32)


def test_sweep_through_the_collector(make_collector: Any) -> None:
    c = make_collector(quiet_period_s=0.0)
    provider = TracerProvider(resource=Resource.create({"service.name": "sweep-worker"}))
    provider.add_span_processor(BatchSpanProcessor(OTLPSpanExporter(
        endpoint=f"http://127.0.0.1:{c.http_address[1]}/v1/traces")))
    for _ in range(2):
        for n in VALUES:
            with vt.sweep_point("batch_size", n, sweep_id="otlp-sweep"):
                with vt.traced_request(model="sweep-model", tracer_provider=provider):
                    with vt.stage("forward", batch_size=n, tracer_provider=provider):
                        time.sleep(0.0005 * n)
    provider.shutdown()  # flushes the batch processor
    wait_for(lambda: c.store.trace_count() == 2 * len(VALUES) and not c.store.pending_traces(), timeout=30)

    with open_source(f"store:{c.config.store_dir}") as src:
        traces = [src.get_trace(s.trace_id) for s in src.list_traces(limit=1000)]
    profile = profile_traces(traces, sweep_id="otlp-sweep")
    assert profile.values == VALUES and {len(ids) for ids in profile.trace_ids.values()} == {2}
    assert profile.coverage_stable and profile.stages == ("request", "forward")
    slow, fast = profile.point("forward", 32).duration_s.median, profile.point("forward", 1).duration_s.median
    assert slow is not None and fast is not None and slow > fast
    assert profile.point("forward", 4).counters["batch_size"].median == 4

    # the collector's stage histograms carry the sweep labels (what the Grafana sweep panel reads)
    series = {
        (s.labels["stage"], s.labels["sweep_axis"], s.labels["sweep_value"]): s.value
        for m in c.metrics.registry.collect() if m.name == "vauban_stage_duration_seconds"
        for s in m.samples if s.name.endswith("_count")
    }
    assert {series[("forward", "batch_size", str(n))] for n in VALUES} == {2.0}
