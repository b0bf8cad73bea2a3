"""OTLP/gRPC receiver: real Python exporter, status codes, size limit, backpressure."""

from __future__ import annotations

import grpc
import pytest
from collector_helpers import gzip_bomb, post, span_count, trace_id_of, vauban_request, wait_for
from google.rpc import error_details_pb2
from opentelemetry.exporter.otlp.proto.grpc.trace_exporter import OTLPSpanExporter
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceResponse
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor

from vauban_trace import semconv as sc

METHOD = "/opentelemetry.proto.collector.trace.v1.TraceService/Export"


def _call(address: tuple[str, int], body: bytes, **kwargs: object) -> tuple[ExportTraceServiceResponse, grpc.Call]:
    with grpc.insecure_channel(f"{address[0]}:{address[1]}", options=[("grpc.max_send_message_length", -1)]) as ch:
        fn = ch.unary_unary(METHOD, request_serializer=None, response_deserializer=ExportTraceServiceResponse.FromString)
        return fn.with_call(body, timeout=10, **kwargs)


def test_python_grpc_exporter_round_trip(make_collector):
    c = make_collector()
    provider = TracerProvider(resource=Resource.create({"service.name": "grpc-client"}))
    exporter = OTLPSpanExporter(endpoint=f"127.0.0.1:{c.grpc_address[1]}", insecure=True)
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    tracer = provider.get_tracer("test")
    with tracer.start_as_current_span("text_completion m", attributes={sc.TRACE_ROOT: True}) as root:
        for stage in ("tokenize", "forward", "decode"):
            with tracer.start_as_current_span(stage, attributes={sc.STAGE: stage}):
                pass
    provider.shutdown()
    tid = format(root.get_span_context().trace_id, "032x")
    trace = wait_for(lambda: c.store.trace_count() and c.store.get_trace(tid))
    assert trace.complete and [s.stage for s in trace.spans if s.stage] == ["tokenize", "forward", "decode"]
    assert c.metrics.requests.labels("grpc", "OK")._value.get() == 4
    assert c.metrics.spans_received.labels("grpc")._value.get() == 4


def test_undecodable_message_is_invalid_argument(make_collector):
    c = make_collector()
    with pytest.raises(grpc.RpcError) as info:
        _call(c.grpc_address, b"\xff\xff\xff\xff not protobuf")
    assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "not a valid protobuf" in info.value.details()


def test_partial_success_over_grpc(make_collector):
    c = make_collector()
    req, tids = vauban_request(1, salt=20)
    req.resource_spans[0].scope_spans[0].spans.add(trace_id=b"\x01" * 3, span_id=b"\x02" * 8, name="bad")
    resp, _ = _call(c.grpc_address, req.SerializeToString())
    assert resp.partial_success.rejected_spans == 1
    assert "not 16 bytes" in resp.partial_success.error_message
    assert c.store.raw_span_count(tids[0]) == 5


def test_too_large_is_resource_exhausted_even_when_compressed(make_collector):
    c = make_collector(max_body=256 * 1024)
    req, _ = vauban_request(1, salt=21)
    req.resource_spans[0].scope_spans[0].spans[0].name = "x" * (300 * 1024)
    with pytest.raises(grpc.RpcError) as info:
        _call(c.grpc_address, req.SerializeToString())
    assert info.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
    # gzip on the wire: the limit applies to the inflated message
    with pytest.raises(grpc.RpcError) as info:
        _call(c.grpc_address, req.SerializeToString(), compression=grpc.Compression.Gzip)
    assert info.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
    assert c.store.trace_count() == 0
    # a gzip bomb sent as an already-compressed body is just bad protobuf bytes, not inflated
    with pytest.raises(grpc.RpcError) as info:
        _call(c.grpc_address, gzip_bomb(8 * 1024 * 1024)[: 200 * 1024])
    assert info.value.code() in (grpc.StatusCode.INVALID_ARGUMENT,)


def test_backpressure_unavailable_with_retry_info_and_http_503(make_collector):
    c = make_collector(max_inflight=1)
    assert c.admission.try_enter(1)  # occupy the only slot, as a long request would
    try:
        req, tids = vauban_request(1, salt=22)
        with pytest.raises(grpc.RpcError) as info:
            _call(c.grpc_address, req.SerializeToString())
        assert info.value.code() == grpc.StatusCode.UNAVAILABLE
        trailers = dict(info.value.trailing_metadata())
        retry = error_details_pb2.RetryInfo.FromString(trailers["google.rpc.retryinfo-bin"])
        assert retry.retry_delay.seconds == 1
        status, headers, _ = post(c.http_address, req.SerializeToString())
        assert status == 503 and headers["retry-after"] == "1"
        assert c.metrics.requests.labels("grpc", "UNAVAILABLE")._value.get() == 1
        assert c.metrics.requests.labels("http", "503")._value.get() == 1
    finally:
        c.admission.leave(1)
    resp, _ = _call(c.grpc_address, req.SerializeToString())
    assert not resp.HasField("partial_success")
    assert c.store.raw_span_count(tids[0]) == span_count(req)
    assert trace_id_of(0, 22).hex() == tids[0]
