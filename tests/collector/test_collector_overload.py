"""Overload: many concurrent senders against a small in-flight limit.

Sixteen senders push 4 MiB export requests at once at a collector subprocess that
processes two at a time. Half are raw HTTP clients that honour ``Retry-After`` themselves (so the 503s are seen),
half are the official Python HTTP exporter (which honours it internally). Checks: refusals are
503 + ``Retry-After``, the collector's peak RSS stays far below what the offered load would
need, and once the clients have retried every span is stored exactly once.
"""

from __future__ import annotations

import http.client
import threading
import time
import urllib.request

from collector_helpers import free_port, vauban_request
from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest
from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor, SpanExportResult
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

from vauban_trace import semconv as sc
from vauban_trace.store import TraceStore

SENDERS = 16
REQUESTS_EACH = 1
PAD = 4 * 1024 * 1024


def _rss_kib(pid: int, field: str) -> int:
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith(field + ":"):
                return int(line.split()[1])
    raise AssertionError(f"{field} not in /proc/{pid}/status")


def _request(sender: int, n: int) -> tuple[ExportTraceServiceRequest, list[str]]:
    req, tids = vauban_request(4, salt=1000 + sender * 10 + n, stages=15)
    req.resource_spans[0].scope_spans[0].spans[1].attributes.add(key="padding").value.string_value = "p" * PAD
    return req, tids


def _sdk_spans(sender: int, n: int) -> list[ReadableSpan]:
    mem = InMemorySpanExporter()
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(mem))
    tracer = provider.get_tracer("overload")
    for t in range(4):
        with tracer.start_as_current_span(f"root {sender}.{n}.{t}", attributes={sc.TRACE_ROOT: True}):
            for i in range(15):
                attrs = {sc.STAGE: "forward", "padding": "p" * PAD} if (t, i) == (0, 0) else {sc.STAGE: "forward"}
                with tracer.start_as_current_span("forward", attributes=attrs):
                    pass
    return list(mem.get_finished_spans())


def test_overload_refuses_fast_stays_bounded_and_loses_nothing(collector_process, tmp_path, monkeypatch):
    metrics_port = free_port()
    proc = collector_process(extra=["--max-inflight", "2", "--max-inflight-bytes", "8MiB", "--quiet-period", "60s",
                                    "--metrics", f"127.0.0.1:{metrics_port}"]).start()
    address = ("127.0.0.1", proc.http_port)
    warm, _ = _request(99, 0)
    conn = http.client.HTTPConnection(*address, timeout=30)
    conn.request("POST", "/v1/traces", body=warm.SerializeToString(), headers={"Content-Type": "application/x-protobuf"})
    assert conn.getresponse().status == 200
    conn.close()
    baseline = _rss_kib(proc.pid, "VmRSS")

    bodies: dict[tuple[int, int], bytes] = {}
    spans: dict[tuple[int, int], list[ReadableSpan]] = {}
    expected: set[tuple[str, bytes]] = set()
    for s in range(SENDERS):
        for n in range(REQUESTS_EACH):
            if s % 2 == 0:
                req, _ = _request(s, n)
                bodies[(s, n)] = req.SerializeToString()
                expected |= {(sp.trace_id.hex(), sp.span_id) for rs in req.resource_spans
                             for ss in rs.scope_spans for sp in ss.spans}
            else:
                spans[(s, n)] = _sdk_spans(s, n)
                expected |= {(format(x.context.trace_id, "032x"), x.context.span_id.to_bytes(8, "big"))
                             for x in spans[(s, n)]}
    refusals: list[tuple[int, str | None]] = []
    errors: list[BaseException] = []
    lock = threading.Lock()
    start = threading.Barrier(SENDERS)

    def raw_sender(s: int) -> None:
        c = http.client.HTTPConnection(*address, timeout=60)
        start.wait()
        for n in range(REQUESTS_EACH):
            while True:
                c.request("POST", "/v1/traces", body=bodies[(s, n)], headers={"Content-Type": "application/x-protobuf"})
                resp = c.getresponse()
                resp.read()
                if resp.status == 200:
                    break
                with lock:
                    refusals.append((resp.status, resp.getheader("Retry-After")))
                time.sleep(float(resp.getheader("Retry-After") or 1))  # honour it
        c.close()

    def exporter_sender(s: int) -> None:
        exporter = OTLPSpanExporter(endpoint=f"http://{address[0]}:{address[1]}/v1/traces", timeout=120)
        start.wait()
        for n in range(REQUESTS_EACH):
            # the exporter retries 503s itself (honouring Retry-After) up to 6 times; a client
            # that must not drop data then tries again
            while exporter.export(spans[(s, n)]) != SpanExportResult.SUCCESS:
                pass
        exporter.shutdown()

    def guard(fn, s):  # noqa: ANN001
        try:
            fn(s)
        except BaseException as exc:  # surfaced below
            with lock:
                errors.append(exc)

    threads = [threading.Thread(target=guard, args=(raw_sender if s % 2 == 0 else exporter_sender, s))
               for s in range(SENDERS)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(180)
    assert not errors, errors
    peak = _rss_kib(proc.pid, "VmHWM")
    scrape = urllib.request.urlopen(f"http://127.0.0.1:{metrics_port}/metrics", timeout=10).read().decode()
    proc.kill9()

    assert refusals, "no request was refused: the in-flight limit did not bite"
    assert all(status == 503 and retry == "1" for status, retry in refusals)
    assert 'vauban_collector_requests_total{code="503",transport="http"}' in scrape
    offered_mib = SENDERS * PAD / 2**20
    grown_mib = (peak - baseline) / 1024
    # measured on the dev box: ~23 MiB here; unbounded (--max-inflight 64) the same load: ~130 MiB
    assert grown_mib < 64, f"peak RSS grew by {grown_mib:.0f} MiB under {offered_mib:.0f} MiB of concurrent bodies"

    with TraceStore(tmp_path / "store") as store:
        stored = [(t, sp.span_id) for t in {k[0] for k in expected} for rs in store.spans_for(t).resource_spans
                  for ss in rs.scope_spans for sp in ss.spans]
    assert len(stored) == len(set(stored)) == len(expected) == SENDERS * REQUESTS_EACH * 64
    assert set(stored) == expected
