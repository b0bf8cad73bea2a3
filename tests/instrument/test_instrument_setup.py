"""configure(): embedded exporter end to end, OTLP export to real local receivers, idempotency."""

from __future__ import annotations

import gzip
import threading
from collections.abc import Iterator
from concurrent import futures
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import grpc
import numpy as np
import pytest
from opentelemetry.proto.collector.trace.v1 import trace_service_pb2, trace_service_pb2_grpc
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

import vauban_trace as vt
from vauban_trace import semconv as sc
from vauban_trace.artifacts import LocalArtifactStore, compute_digest, decode_array
from vauban_trace.contract import Trace

_OTEL_VARS = (
    "OTEL_TRACES_EXPORTER", "OTEL_EXPORTER_OTLP_ENDPOINT", "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT",
    "OTEL_EXPORTER_OTLP_PROTOCOL", "OTEL_EXPORTER_OTLP_TRACES_PROTOCOL", "OTEL_EXPORTER_OTLP_HEADERS",
)


@pytest.fixture(autouse=True)
def _clean_env(monkeypatch: pytest.MonkeyPatch, spans: InMemorySpanExporter) -> Iterator[None]:
    for var in _OTEL_VARS:
        monkeypatch.delenv(var, raising=False)
    yield
    session = vt.current_session()
    if session is not None:
        session.shutdown()


def _one_request(n_logits: int = 1) -> str:
    request = vt.TraceRequest(
        input_text="the quick brown fox", requested_artifacts=("tokens", "logits", "activation")
    )
    with vt.traced_request(request, model="tiny") as req:
        with vt.stage("tokenize", batch_size=1):
            vt.record_artifact("tokens", [1, 2, 3, 4])
        with vt.stage("forward", token_count=4):
            for _ in range(n_logits):
                vt.record_artifact("logits", np.arange(24, dtype=np.float32).reshape(1, 4, 6), topk=2)
    assert req.trace_id is not None
    return req.trace_id


def test_embedded_end_to_end(tmp_path: Path) -> None:
    session = vt.configure(store_dir=tmp_path / "vb")
    assert session.exporters == [f"embedded: {tmp_path / 'vb'}"]
    trace_id = _one_request()
    assert session.force_flush()
    trace = session.store.get_trace(trace_id)
    assert trace.complete, trace.problems
    assert [s.name for s in trace.spans if s.parent_id is not None] == ["tokenize", "forward"]
    assert {a.kind for a in trace.artifacts} == {"tokens", "logits"}
    assert [(m.kind, m.reason) for m in trace.missing] == [("activation", "failed")]
    assert trace.request is not None and trace.request.input_ref is not None
    blobs = LocalArtifactStore(tmp_path / "vb" / "blobs")
    for art in trace.artifacts:
        assert art.digest is not None
        data = blobs.get(art.digest)  # verifies the digest itself
        assert compute_digest(data, art.digest.split(":")[0]) == art.digest
    logits = next(a for a in trace.artifacts if a.kind == "logits")
    np.testing.assert_array_equal(decode_array(blobs.get(logits.digest)).reshape(-1), np.arange(24))
    assert tuple(logits.summary["topk_ids"]) == (5, 4)
    # the request's input text is stored by digest, content not on the span
    assert blobs.exists(trace.request.input_ref)
    assert not session.store.trace_json_path(trace_id).exists()  # trace_files="on_read": written when asked for
    assert session.store.trace_json_file(trace_id) == session.store.trace_json_path(trace_id)
    assert Trace.from_json(session.store.trace_json_path(trace_id).read_text()) == trace
    assert session.store.last_trace().id == trace_id


def test_configure_twice(tmp_path: Path) -> None:
    first = vt.configure(store_dir=tmp_path / "a")
    assert vt.configure(store_dir=tmp_path / "a") is first
    with pytest.raises(vt.ConfigurationError, match="already configured"):
        vt.configure(store_dir=tmp_path / "b")
    first.shutdown()
    first.shutdown()  # idempotent
    second = vt.configure(store_dir=tmp_path / "b")
    assert second is not first
    trace_id = _one_request()
    second.force_flush()
    assert second.store.get_trace(trace_id).id == trace_id


def test_unknown_exporter_and_protocol_are_clear(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    with pytest.raises(vt.ConfigurationError, match="zipkin"):
        vt.configure(store_dir=tmp_path, exporter="zipkin")
    monkeypatch.setenv("OTEL_TRACES_EXPORTER", "otlp")
    monkeypatch.setenv("OTEL_EXPORTER_OTLP_PROTOCOL", "http/json")
    with pytest.raises(vt.ConfigurationError, match="http/json"):
        vt.configure(store_dir=tmp_path)


class _Receiver(BaseHTTPRequestHandler):
    received: list[trace_service_pb2.ExportTraceServiceRequest] = []
    headers_seen: list[dict[str, str]] = []

    def do_POST(self) -> None:  # noqa: N802
        body = self.rfile.read(int(self.headers.get("Content-Length", "0")))
        if self.headers.get("Content-Encoding") == "gzip":
            body = gzip.decompress(body)
        if self.path != "/v1/traces" or self.headers.get("Content-Type") != "application/x-protobuf":
            self.send_response(400)
            self.end_headers()
            return
        req = trace_service_pb2.ExportTraceServiceRequest()
        req.ParseFromString(body)
        type(self).received.append(req)
        type(self).headers_seen.append(dict(self.headers))
        reply = trace_service_pb2.ExportTraceServiceResponse().SerializeToString()
        self.send_response(200)
        self.send_header("Content-Type", "application/x-protobuf")
        self.send_header("Content-Length", str(len(reply)))
        self.end_headers()
        self.wfile.write(reply)

    def log_message(self, *args: Any) -> None:
        pass


def _span_names(requests: list[trace_service_pb2.ExportTraceServiceRequest]) -> list[str]:
    return [s.name for r in requests for rs in r.resource_spans for ss in rs.scope_spans for s in ss.spans]


@pytest.mark.parametrize("keep_local", [True, False])
def test_otlp_http_env_exports_to_local_receiver(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, keep_local: bool
) -> None:
    _Receiver.received = []
    _Receiver.headers_seen = []
    server = ThreadingHTTPServer(("127.0.0.1", 0), _Receiver)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        monkeypatch.setenv("OTEL_EXPORTER_OTLP_ENDPOINT", f"http://127.0.0.1:{server.server_port}")
        monkeypatch.setenv("OTEL_EXPORTER_OTLP_PROTOCOL", "http/protobuf")
        monkeypatch.setenv("OTEL_EXPORTER_OTLP_HEADERS", "x-tenant=vauban")
        session = vt.configure(store_dir=tmp_path / "vb", keep_local=keep_local)
        endpoint = f"otlp/http: http://127.0.0.1:{server.server_port}/v1/traces"
        assert endpoint in session.exporters
        assert (f"embedded: {tmp_path / 'vb'}" in session.exporters) is keep_local
        trace_id = _one_request()
        assert session.force_flush()
        names = _span_names(_Receiver.received)
        assert sorted(names) == sorted(["text_completion tiny", "tokenize", "forward"])
        assert _Receiver.headers_seen[0].get("x-tenant") == "vauban"
        root = next(
            s for r in _Receiver.received for rs in r.resource_spans for ss in rs.scope_spans for s in ss.spans
            if s.name == "text_completion tiny"
        )
        assert root.trace_id.hex() == trace_id
        assert any(kv.key == sc.TRACE_ROOT and kv.value.bool_value for kv in root.attributes)
        if keep_local:
            assert session.store.get_trace(trace_id).id == trace_id
        else:
            assert session.store is None
    finally:
        server.shutdown()
        server.server_close()


class _GrpcService(trace_service_pb2_grpc.TraceServiceServicer):
    def __init__(self) -> None:
        self.received: list[trace_service_pb2.ExportTraceServiceRequest] = []

    def Export(self, request: Any, context: Any) -> Any:  # noqa: N802
        self.received.append(request)
        return trace_service_pb2.ExportTraceServiceResponse()


def test_otlp_grpc_env_exports_to_local_receiver(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    service = _GrpcService()
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=2))
    trace_service_pb2_grpc.add_TraceServiceServicer_to_server(service, server)
    port = server.add_insecure_port("127.0.0.1:0")
    server.start()
    try:
        monkeypatch.setenv("OTEL_TRACES_EXPORTER", "otlp")
        monkeypatch.setenv("OTEL_EXPORTER_OTLP_PROTOCOL", "grpc")
        monkeypatch.setenv("OTEL_EXPORTER_OTLP_ENDPOINT", f"http://127.0.0.1:{port}")
        session = vt.configure(store_dir=tmp_path / "vb")
        assert f"otlp/grpc: http://127.0.0.1:{port}" in session.exporters
        trace_id = _one_request()
        assert session.force_flush()
        assert sorted(_span_names(service.received)) == sorted(["text_completion tiny", "tokenize", "forward"])
        assert session.store.get_trace(trace_id).complete
    finally:
        server.stop(None)


def test_spans_and_blobs_are_flushed_at_exit(tmp_path: Path) -> None:
    import os
    import subprocess
    import sys

    script = (
        "import numpy as np, vauban_trace as vt\n"
        f"vt.configure(store_dir={str(tmp_path / 'vb')!r})\n"
        "with vt.traced_request(vt.TraceRequest(prompt_ids=(1, 2)), model='m') as req:\n"
        "    with vt.stage('forward'):\n"
        "        vt.record_artifact('logits', np.ones((1, 2, 8), np.float32))\n"
        "print(req.trace_id)\n"  # no flush, no shutdown: the exit hook must do it
    )
    env = {k: v for k, v in os.environ.items() if not k.startswith("OTEL_")}
    proc = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, env=env, timeout=120)
    assert proc.returncode == 0, proc.stderr
    trace_id = proc.stdout.strip()
    from vauban_trace.store import TraceStore

    with TraceStore(tmp_path / "vb") as store:
        trace = store.get_trace(trace_id)
        (art,) = trace.artifacts
        assert art.digest is not None and store.blobs.verify(art.digest)
