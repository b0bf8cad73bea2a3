"""kill -9 durability with the real Python OTLP exporters (HTTP and gRPC).

A sender thread pushes batches of SDK spans through the official exporter while the collector
subprocess is SIGKILLed twice mid-stream and restarted on the same port and store. Checks:

- right after each kill (collector dead), every batch the exporter reported as exported is
  already in the store: a 200 / OK is only sent once the spans are durable;
- at the end every span sent is stored exactly once (client retries are idempotent).
"""

from __future__ import annotations

import threading
import time

import pytest
from collector_helpers import wait_for
from opentelemetry.exporter.otlp.proto.grpc.trace_exporter import OTLPSpanExporter as GrpcExporter
from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter as HttpExporter
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor, SpanExportResult
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

from vauban_trace import semconv as sc
from vauban_trace.store import TraceStore

BATCHES = 36
TRACES_PER_BATCH = 4
STAGES = 15  # 16 spans per trace, 64 per batch


def _batches() -> list[list[ReadableSpan]]:
    mem = InMemorySpanExporter()
    provider = TracerProvider(resource=Resource.create({"service.name": "durability"}))
    provider.add_span_processor(SimpleSpanProcessor(mem))
    tracer = provider.get_tracer("durability")
    out = []
    for b in range(BATCHES):
        mem.clear()
        for t in range(TRACES_PER_BATCH):
            with tracer.start_as_current_span(f"text_completion m{b}.{t}",
                                              attributes={sc.TRACE_ROOT: True, sc.GEN_AI_REQUEST_MODEL: "m"}):
                for i in range(STAGES):
                    with tracer.start_as_current_span("forward", attributes={sc.STAGE: "forward",
                                                                             sc.usl("token_count"): i}):
                        pass
        out.append(list(mem.get_finished_spans()))
    return out


def _keys(spans: list[ReadableSpan]) -> set[tuple[str, str]]:
    return {(format(s.context.trace_id, "032x"), format(s.context.span_id, "016x")) for s in spans}


def _stored(store: TraceStore, trace_ids: set[str]) -> list[tuple[str, str]]:
    out = []
    for tid in trace_ids:
        data = store.spans_for(tid)
        out += [(tid, sp.span_id.hex()) for rs in data.resource_spans for ss in rs.scope_spans for sp in ss.spans]
    return out


@pytest.mark.parametrize("transport", ["http", "grpc"])
def test_kill9_loses_nothing_acknowledged(collector_process, tmp_path, transport):
    proc = collector_process().start()
    if transport == "http":
        exporter = HttpExporter(endpoint=f"http://127.0.0.1:{proc.http_port}/v1/traces", timeout=30)
    else:
        exporter = GrpcExporter(endpoint=f"127.0.0.1:{proc.grpc_port}", insecure=True, timeout=30)
    batches = _batches()
    acked: list[int] = []
    attempts = [0]
    lock = threading.Lock()
    done = threading.Event()

    def sender() -> None:
        for i, batch in enumerate(batches):
            while exporter.export(batch) != SpanExportResult.SUCCESS:  # a client that never gives up
                attempts[0] += 1
                time.sleep(0.1)
            with lock:
                acked.append(i)
            time.sleep(0.01)
        done.set()

    thread = threading.Thread(target=sender, daemon=True)
    thread.start()
    kills = 0
    for threshold in (BATCHES // 4, BATCHES // 2):
        wait_for(lambda t=threshold: len(acked) >= t, timeout=60)
        proc.kill9()
        kills += 1
        with lock:
            acknowledged = list(acked)
        with TraceStore(tmp_path / "store") as store:  # the collector is dead: read what is on disk
            expected = set().union(*(_keys(batches[i]) for i in acknowledged))
            present = set(_stored(store, {k[0] for k in expected}))
            assert expected <= present, f"{len(expected - present)} acknowledged spans lost after kill {kills}"
        time.sleep(0.2)
        proc.start()
    assert done.wait(120), "sender did not finish"
    print(f"{transport}: {attempts[0]} failed export calls retried by the client")
    exporter.shutdown()
    proc.terminate()
    all_keys = set().union(*(_keys(b) for b in batches))
    with TraceStore(tmp_path / "store") as store:
        stored = _stored(store, {k[0] for k in all_keys})
        assert len(stored) == len(set(stored)) == len(all_keys) == BATCHES * TRACES_PER_BATCH * (STAGES + 1)
        assert set(stored) == all_keys
        # the final assembly pass on SIGTERM rebuilt every trace, each complete
        assert store.trace_count() == BATCHES * TRACES_PER_BATCH
        assert all(s.complete and s.span_count == STAGES + 1 for s in store.list_traces(limit=None))
