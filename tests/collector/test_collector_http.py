"""OTLP/HTTP receiver: protocol behaviour against the OTLP specification."""

from __future__ import annotations

import gzip
import http.client
import json
import zlib

from collector_helpers import gzip_bomb, post, span_count, span_id_of, trace_id_of, vauban_request, wait_for
from google.rpc import error_details_pb2, status_pb2
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceResponse

from vauban_trace.rebuild import traces_data_to_json

PB = "application/x-protobuf"
JS = "application/json"


def _stored(collector, tid: str) -> int:
    return sum(len(ss.spans) for rs in collector.store.spans_for(tid).resource_spans for ss in rs.scope_spans)


def test_protobuf_export_is_durable_and_rebuilt(make_collector):
    c = make_collector()
    req, tids = vauban_request(3)
    status, headers, body = post(c.http_address, req.SerializeToString())
    assert status == 200 and headers["content-type"] == PB
    resp = ExportTraceServiceResponse.FromString(body)
    assert not resp.HasField("partial_success")
    for tid in tids:  # durable on the 200: readable right away from a fresh store handle
        assert _stored(c, tid) == 5
    trace = wait_for(lambda: c.store.trace_count() == 3 and c.store.get_trace(tids[0]))
    assert trace.complete and len(trace.spans) == 5 and len(trace.artifacts) == 4


def test_json_export_replies_json(make_collector):
    c = make_collector()
    req, tids = vauban_request(1, salt=1)
    doc = traces_data_to_json(req)
    status, headers, body = post(c.http_address, json.dumps(doc).encode(), "application/json; charset=utf-8")
    assert status == 200 and headers["content-type"] == JS
    assert json.loads(body) == {}
    assert _stored(c, tids[0]) == 5


def test_gzip_and_deflate_bodies(make_collector):
    c = make_collector()
    req, tids = vauban_request(2, salt=2)
    raw = req.SerializeToString()
    assert post(c.http_address, gzip.compress(raw), encoding="gzip")[0] == 200
    assert post(c.http_address, zlib.compress(raw), encoding="deflate")[0] == 200  # same spans: duplicates
    assert all(_stored(c, t) == 5 for t in tids)
    doc = json.dumps(traces_data_to_json(vauban_request(1, salt=3)[0])).encode()
    status, headers, _ = post(c.http_address, gzip.compress(doc), JS, encoding="gzip")
    assert status == 200 and headers["content-type"] == JS


def test_duplicates_are_idempotent(make_collector):
    c = make_collector()
    req, tids = vauban_request(2, salt=4)
    for _ in range(3):
        assert post(c.http_address, req.SerializeToString())[0] == 200
    assert [_stored(c, t) for t in tids] == [5, 5]
    assert c.metrics.spans_duplicated._value.get() == 20


def test_partial_success_for_bad_ids(make_collector):
    c = make_collector()
    req, tids = vauban_request(1, salt=5)
    spans = req.resource_spans[0].scope_spans[0].spans
    spans.add(trace_id=b"\x01" * 15, span_id=b"\x02" * 8, name="short trace id")
    spans.add(trace_id=bytes(16), span_id=b"\x02" * 8, name="zero trace id")
    spans.add(trace_id=trace_id_of(0, 5), span_id=bytes(8), name="zero span id")
    spans.add(trace_id=trace_id_of(0, 5), span_id=b"\x03" * 8, parent_span_id=b"\x04" * 3, name="bad parent")
    spans.add(trace_id=trace_id_of(0, 5), span_id=b"\x05" * 8, start_time_unix_nano=2**64 - 1, name="year 2554")
    status, _, out = post(c.http_address, req.SerializeToString())
    assert status == 200
    partial = ExportTraceServiceResponse.FromString(out).partial_success
    assert partial.rejected_spans == 5
    for why in ("not 16 bytes", "all-zero trace id", "all-zero span id", "parent span id", "2262"):
        assert why in partial.error_message
    assert _stored(c, tids[0]) == 5  # the good spans of the same request were kept
    assert c.metrics.spans_rejected.labels("invalid_id")._value.get() == 4
    assert c.metrics.spans_rejected.labels("invalid_time")._value.get() == 1


def test_partial_success_in_json(make_collector):
    c = make_collector()
    req, tids = vauban_request(1, salt=6)
    doc = traces_data_to_json(req)
    doc["resourceSpans"][0]["scopeSpans"][0]["spans"].append(
        {"traceId": "0" * 32, "spanId": "1" * 16, "name": "zero trace id"}
    )
    status, headers, out = post(c.http_address, json.dumps(doc).encode(), JS)
    assert status == 200 and headers["content-type"] == JS
    partial = json.loads(out)["partialSuccess"]
    assert partial["rejectedSpans"] == "1" and "all-zero trace id" in partial["errorMessage"]
    assert _stored(c, tids[0]) == 5


def _status(body: bytes, media: str = PB) -> status_pb2.Status:
    if media == JS:
        from google.protobuf import json_format

        return json_format.Parse(body, status_pb2.Status())
    return status_pb2.Status.FromString(body)


def test_bad_data_is_400_with_status_body(make_collector):
    c = make_collector()
    status, headers, body = post(c.http_address, b"\xff\xff\xff\xff garbage")
    assert status == 400 and headers["content-type"] == PB
    st = _status(body)
    assert "not a valid protobuf" in st.message
    detail = error_details_pb2.BadRequest()
    assert st.details[0].Unpack(detail) and detail.field_violations[0].field == "body"
    status, headers, body = post(c.http_address, b"{not json", JS)
    assert status == 400 and headers["content-type"] == JS
    assert "not valid" in _status(body, JS).message
    status, _, body = post(c.http_address, b"", JS)
    assert status == 400 and "empty JSON body" in _status(body, JS).message
    bad_hex = {"resourceSpans": [{"scopeSpans": [{"spans": [{"traceId": "zz" * 16, "spanId": "1" * 16}]}]}]}
    status, _, body = post(c.http_address, json.dumps(bad_hex).encode(), JS)
    assert status == 400 and "traceId" in _status(body, JS).message
    status, _, body = post(c.http_address, gzip.compress(b"x" * 100)[:-9], encoding="gzip")
    assert status == 400 and "truncated gzip" in _status(body).message


def test_empty_protobuf_request_is_success(make_collector):
    c = make_collector()
    status, _, body = post(c.http_address, b"")
    assert status == 200 and not ExportTraceServiceResponse.FromString(body).HasField("partial_success")


def test_unsupported_media_is_415(make_collector):
    c = make_collector()
    req, _ = vauban_request(1, salt=7)
    for ctype in ("text/plain", None, "application/grpc"):
        status, headers, body = post(c.http_address, req.SerializeToString(), ctype)
        assert status == 415, ctype
        assert "unsupported Content-Type" in _status(body).message
    status, _, body = post(c.http_address, req.SerializeToString(), encoding="br")
    assert status == 415 and "Content-Encoding" in _status(body).message


def test_size_limit_is_checked_after_decompression(make_collector):
    c = make_collector(max_body=64 * 1024)
    # a valid request that is small on the wire but inflates past the limit
    req, _ = vauban_request(1, salt=8)
    req.resource_spans[0].scope_spans[0].spans[0].name = "x" * (200 * 1024)
    wire = gzip.compress(req.SerializeToString())
    assert len(wire) < 64 * 1024
    status, _, body = post(c.http_address, wire, encoding="gzip")
    assert status == 413 and "limit" in _status(body).message
    # a gzip bomb: 64 MiB of zeros in ~64 KiB on the wire is refused without inflating it all
    bomb = gzip_bomb()
    assert len(bomb) < 64 * 1024 * 1.1
    status, _, _ = post(c.http_address, bomb, encoding="gzip")
    assert status == 413
    # declared Content-Length over the limit: refused before reading
    status, headers, _ = post(c.http_address, b"\0" * (80 * 1024))
    assert status == 413 and headers.get("connection") == "close"


def test_routes_and_methods(make_collector):
    c = make_collector()
    assert post(c.http_address, b"", path="/v1/metrics")[0] == 404
    status, headers, _ = post(c.http_address, b"", method="GET")
    assert status == 405 and headers["allow"] == "POST"
    assert post(c.http_address, b"", path="/v1/traces?x=1")[0] == 200


def test_keep_alive_and_chunked_body(make_collector):
    c = make_collector()
    conn = http.client.HTTPConnection(*c.http_address, timeout=10)
    try:
        for salt in (9, 10, 11):
            req, tids = vauban_request(1, salt=salt)
            conn.request("POST", "/v1/traces", body=req.SerializeToString(), headers={"Content-Type": PB})
            resp = conn.getresponse()
            resp.read()
            assert resp.status == 200 and resp.getheader("Connection") is None
        req, tids = vauban_request(1, salt=12)
        data = req.SerializeToString()
        conn.request("POST", "/v1/traces", body=iter([data[:100], data[100:]]),
                     headers={"Content-Type": PB}, encode_chunked=True)
        resp = conn.getresponse()
        resp.read()
        assert resp.status == 200
        assert _stored(c, tids[0]) == span_count(req)
    finally:
        conn.close()


def test_root_span_ids_survive_exactly(make_collector):
    """Ids are bytes on the wire and hex in the store: no base64 confusion on the JSON path."""
    c = make_collector()
    req, tids = vauban_request(1, salt=13)
    doc = traces_data_to_json(req)
    post(c.http_address, json.dumps(doc).encode(), JS)
    data = c.store.spans_for(tids[0])
    got = {sp.span_id for rs in data.resource_spans for ss in rs.scope_spans for sp in ss.spans}
    assert span_id_of(trace_id_of(0, 13), 0) in got and len(got) == 5


def test_trickling_body_gets_408_and_frees_its_slot(make_collector):
    import socket
    import time

    c = make_collector(max_inflight=1, socket_timeout_s=0.5)
    with socket.create_connection(c.http_address, timeout=10) as s:
        s.sendall(b"POST /v1/traces HTTP/1.1\r\nHost: x\r\nContent-Type: application/x-protobuf\r\n"
                  b"Content-Length: 1000\r\n\r\n")
        reply = b""
        for _ in range(40):  # one byte every 0.1 s: each recv succeeds, the body never completes in time
            try:
                s.sendall(b"\x00")
            except OSError:
                break
            time.sleep(0.1)
            s.setblocking(False)
            try:
                reply += s.recv(65536)
            except BlockingIOError:
                pass
            s.setblocking(True)
            if reply:
                break
    assert reply.startswith(b"HTTP/1.1 408"), reply[:60]
    req, _ = vauban_request(1, salt=14)
    assert post(c.http_address, req.SerializeToString())[0] == 200  # the only slot is free again
