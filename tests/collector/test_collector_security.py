"""Bearer token and TLS on both transports, with the real Python OTLP exporters."""

from __future__ import annotations

import http.client
import json
import re

import grpc
import pytest
from collector_helpers import post, vauban_request, wait_for
from opentelemetry.exporter.otlp.proto.grpc.trace_exporter import OTLPSpanExporter as GrpcExporter
from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter as HttpExporter
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SpanExporter, SpanExportResult

from vauban_trace._exceptions import ConfigurationError
from vauban_trace.collector import CollectorConfig, read_token

TOKEN = "s3cr3t-token-for-tests"


def _spans(name: str = "op"):  # finished SDK spans to hand to an exporter directly
    from opentelemetry.sdk.trace.export import SimpleSpanProcessor
    from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

    mem = InMemorySpanExporter()
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(mem))
    with provider.get_tracer("t").start_as_current_span(name):
        pass
    return mem.get_finished_spans()


def _export(exporter: SpanExporter, spans) -> SpanExportResult:
    try:
        return exporter.export(spans)
    finally:
        exporter.shutdown()


def test_bearer_token_on_both_transports(make_collector):
    c = make_collector(token=TOKEN)
    http_url = f"http://127.0.0.1:{c.http_address[1]}/v1/traces"
    grpc_target = f"127.0.0.1:{c.grpc_address[1]}"
    good = {"authorization": f"Bearer {TOKEN}"}
    bad = {"authorization": "Bearer wrong"}
    assert _export(HttpExporter(endpoint=http_url, headers=good, timeout=5), _spans()) == SpanExportResult.SUCCESS
    assert _export(HttpExporter(endpoint=http_url, headers=bad, timeout=5), _spans()) == SpanExportResult.FAILURE
    assert _export(HttpExporter(endpoint=http_url, timeout=5), _spans()) == SpanExportResult.FAILURE
    assert _export(GrpcExporter(endpoint=grpc_target, insecure=True, headers=good, timeout=5),
                   _spans()) == SpanExportResult.SUCCESS
    assert _export(GrpcExporter(endpoint=grpc_target, insecure=True, headers=bad, timeout=5),
                   _spans()) == SpanExportResult.FAILURE
    m = c.metrics.requests
    assert m.labels("http", "200")._value.get() == 1 and m.labels("http", "401")._value.get() == 2
    assert m.labels("grpc", "OK")._value.get() == 1 and m.labels("grpc", "UNAUTHENTICATED")._value.get() == 1
    status, headers, _ = post(c.http_address, b"", headers={"Authorization": f"Basic {TOKEN}"})
    assert status == 401 and headers["www-authenticate"].startswith("Bearer")
    assert c.metrics.spans_received.labels("http")._value.get() == 1  # refused spans were never decoded


def test_tls_on_both_transports(make_collector, tls_files, monkeypatch):
    # requests lets REQUESTS_CA_BUNDLE / CURL_CA_BUNDLE override a session's own CA file
    monkeypatch.delenv("REQUESTS_CA_BUNDLE", raising=False)
    monkeypatch.delenv("CURL_CA_BUNDLE", raising=False)
    cert, key = tls_files
    c = make_collector(tls_cert=cert, tls_key=key)
    url = f"https://127.0.0.1:{c.http_address[1]}/v1/traces"
    assert _export(HttpExporter(endpoint=url, certificate_file=str(cert), timeout=5),
                   _spans("tls-http")) == SpanExportResult.SUCCESS
    creds = grpc.ssl_channel_credentials(cert.read_bytes())
    assert _export(GrpcExporter(endpoint=f"localhost:{c.grpc_address[1]}", credentials=creds, timeout=5),
                   _spans("tls-grpc")) == SpanExportResult.SUCCESS
    # a plaintext client cannot talk to the TLS listener, and the server survives it
    with pytest.raises((OSError, http.client.HTTPException)):
        post(c.http_address, b"", timeout=1)
    assert _export(HttpExporter(endpoint=url, certificate_file=str(cert), timeout=5),
                   _spans("again")) == SpanExportResult.SUCCESS
    assert c.metrics.spans_received.labels("http")._value.get() == 2
    assert c.metrics.spans_received.labels("grpc")._value.get() == 1
    assert "https://" in c.describe()[0]


def test_ids_never_reach_the_filesystem(make_collector, tmp_path):
    c = make_collector()
    hostile = {"resourceSpans": [{"scopeSpans": [{"spans": [
        {"traceId": "../../../../../../tmp/evil", "spanId": "1" * 16, "name": "x"}]}]}]}
    status, _, _ = post(c.http_address, json.dumps(hostile).encode(), "application/json")
    assert status == 400
    req, tids = vauban_request(2, salt=30)
    assert post(c.http_address, req.SerializeToString())[0] == 200
    wait_for(lambda: c.store.trace_count() == 2)
    for tid in tids:  # trace files are written on read by default
        assert c.store.trace_json_file(tid) is not None
    names = [p.name for p in (c.config.store_dir / "traces").iterdir()]
    assert names and all(re.fullmatch(r"[0-9a-f]{32}\.json", n) for n in names)


def test_token_sources_and_config_checks(tmp_path, monkeypatch):
    f = tmp_path / "tok"
    f.write_text(TOKEN + "\n")
    assert read_token(f) == TOKEN
    monkeypatch.setenv("VAUBAN_COLLECTOR_TOKEN", "from-env")
    assert read_token(None) == "from-env"
    (tmp_path / "empty").write_text("\n")
    with pytest.raises(ConfigurationError, match="empty"):
        read_token(tmp_path / "empty")
    with pytest.raises(ConfigurationError, match="cannot read"):
        read_token(tmp_path / "missing")
    with pytest.raises(ConfigurationError, match="together"):
        CollectorConfig(tls_cert=f)
    with pytest.raises(ConfigurationError, match="whitespace"):
        CollectorConfig(token="a b")
