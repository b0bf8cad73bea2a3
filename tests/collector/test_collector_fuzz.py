"""Fuzzing both receivers: bad input never crashes the collector and never gets a 500."""

from __future__ import annotations

import gzip
import json
import socket
import zlib

import grpc
from collector_helpers import gzip_bomb, post, vauban_request
from google.protobuf import json_format
from google.rpc import status_pb2
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceResponse

from vauban_trace.rebuild import traces_data_to_json

METHOD = "/opentelemetry.proto.collector.trace.v1.TraceService/Export"
_VALID = vauban_request(2, salt=40)[0].SerializeToString()
_VALID_JSON = json.dumps(traces_data_to_json(vauban_request(1, salt=41)[0])).encode()
_HUGE = vauban_request(1, salt=42)[0]
_HUGE.resource_spans[0].scope_spans[0].spans[1].attributes.add(key="huge").value.string_value = "v" * 300_000
_HUGE_BYTES = _HUGE.SerializeToString()


@st.composite
def _mutated(draw: st.DrawFn, base: bytes) -> bytes:
    data = bytearray(base)
    for _ in range(draw(st.integers(1, 8))):
        op = draw(st.sampled_from(["flip", "cut", "insert", "dup"]))
        if not data:
            break
        i = draw(st.integers(0, len(data) - 1))
        if op == "flip":
            data[i] ^= 1 << draw(st.integers(0, 7))
        elif op == "cut":
            del data[i:]
        elif op == "insert":
            data[i:i] = draw(st.binary(min_size=1, max_size=16))
        else:
            data[i:i] = data[i:i + draw(st.integers(1, 64))]
    return bytes(data)


_bodies = st.one_of(
    st.binary(max_size=2048),
    _mutated(_VALID),
    _mutated(_VALID_JSON),
    st.just(b""),
    st.just(_HUGE_BYTES),
    st.sampled_from([b"{}", b"[]", b"null", b'{"resourceSpans": 3}', b'{"resourceSpans": [{"scopeSpans": [{}]}]}',
                     b"[" * 5000 + b"]" * 5000, b'{"resourceSpans": [{"scopeSpans": [{"spans": [{"traceId": 5}]}]}]}']),
)
_ctypes = st.sampled_from(["application/x-protobuf", "application/json", "application/json; charset=utf-8",
                           "text/plain", "", "application/x-protobuf; garbage", "multipart/form-data"])
_encodings = st.sampled_from([None, "gzip", "deflate", "identity", "gzip-truncated", "gzip-lie", "br"])


def _encode(body: bytes, encoding: str | None) -> tuple[bytes, str | None]:
    if encoding == "gzip":
        return gzip.compress(body), "gzip"
    if encoding == "deflate":
        return zlib.compress(body), "deflate"
    if encoding == "gzip-truncated":
        return gzip.compress(body)[: max(1, len(body) // 3)], "gzip"
    if encoding == "gzip-lie":  # says gzip, is not
        return body, "gzip"
    return body, encoding


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture,
                                                                    HealthCheck.too_slow])
@given(body=_bodies, ctype=_ctypes, encoding=_encodings)
def test_http_receiver_fuzz(make_collector, body, ctype, encoding):
    c = _shared(make_collector)
    wire, enc = _encode(body, encoding)
    status, headers, out = post(c.http_address, wire, ctype or None, encoding=enc)
    assert status in (200, 400, 413, 415), (status, out[:200])
    media = "application/json" if headers.get("content-type") == "application/json" else "application/x-protobuf"
    if status == 200:
        if media == "application/json":
            json_format.Parse(out, ExportTraceServiceResponse())
        else:
            ExportTraceServiceResponse.FromString(out)
    else:
        st_msg = json_format.Parse(out, status_pb2.Status()) if media == "application/json" \
            else status_pb2.Status.FromString(out)
        assert st_msg.message


@settings(max_examples=100, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(body=st.one_of(st.binary(max_size=2048), _mutated(_VALID), st.just(_HUGE_BYTES)))
def test_grpc_receiver_fuzz(make_collector, body):
    c = _shared(make_collector)
    channel = _channel(c)
    fn = channel.unary_unary(METHOD, request_serializer=None, response_deserializer=ExportTraceServiceResponse.FromString)
    try:
        fn(body, timeout=10)
    except grpc.RpcError as exc:
        assert exc.code() in (grpc.StatusCode.INVALID_ARGUMENT, grpc.StatusCode.RESOURCE_EXHAUSTED), exc


_STATE: dict[str, object] = {}


def _shared(make_collector):  # one collector for all examples of a test (hypothesis reuses the fixture)
    key = f"c{id(make_collector)}"
    if key not in _STATE:
        _STATE.clear()
        _STATE[key] = make_collector(max_body=256 * 1024)
    return _STATE[key]


def _channel(c) -> grpc.Channel:
    key = f"ch{id(c)}"
    if key not in _STATE:
        _STATE[key] = grpc.insecure_channel(f"127.0.0.1:{c.grpc_address[1]}",
                                            options=[("grpc.max_send_message_length", -1)])
    return _STATE[key]  # type: ignore[return-value]


def test_malformed_http_framing_and_bombs(make_collector):
    c = make_collector(max_body=1024 * 1024)
    raw_requests = [
        b"GARBAGE\r\n\r\n",
        b"POST /v1/traces HTTP/1.1\r\nContent-Length: -5\r\n\r\n",
        b"POST /v1/traces HTTP/1.1\r\nContent-Length: abc\r\n\r\n",
        b"POST /v1/traces HTTP/1.1\r\nTransfer-Encoding: chunked\r\nContent-Type: application/x-protobuf\r\n\r\nzz\r\n",
        b"POST /v1/traces HTTP/1.1\r\nTransfer-Encoding: gzip\r\n\r\n",
        b"POST /v1/traces HTTP/1.1\r\nContent-Length: 100\r\nContent-Type: application/x-protobuf\r\n\r\nshort",
        b"POST /" + b"a" * 70000 + b" HTTP/1.1\r\n\r\n",
        b"POST /v1/traces HTTP/1.1\r\n" + b"X: y\r\n" * 200 + b"\r\n",
        b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03" + bytes(64),  # a TLS hello to a plaintext port
    ]
    for raw in raw_requests:
        with socket.create_connection(c.http_address, timeout=5) as s:
            s.sendall(raw)
            s.shutdown(socket.SHUT_WR)
            reply = b""
            while chunk := s.recv(65536):
                reply += chunk
        if reply:
            line = reply.split(b"\r\n", 1)[0]
            assert not line.startswith(b"HTTP/1.1 5") or line.startswith((b"HTTP/1.1 501", b"HTTP/1.1 503")), (raw[:40], line)
    for bomb_size in (8 * 1024 * 1024, 64 * 1024 * 1024):
        assert post(c.http_address, gzip_bomb(bomb_size), encoding="gzip")[0] == 413
    req, tids = vauban_request(1, salt=43)
    assert post(c.http_address, req.SerializeToString())[0] == 200  # still serving
    assert c.metrics.requests.labels("http", "500")._value.get() == 0
