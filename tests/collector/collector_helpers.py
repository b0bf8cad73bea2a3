"""Helpers for the collector tests: realistic vauban OTLP payloads, raw HTTP posting, a
subprocess collector (kill -9 / SIGTERM), a self-signed certificate, polling."""

from __future__ import annotations

import hashlib
import http.client
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest
from opentelemetry.proto.common.v1.common_pb2 import AnyValue, KeyValue
from opentelemetry.proto.trace.v1.trace_pb2 import Span

from vauban_trace import semconv as sc

STAGES = ("tokenize", "prefill", "forward", "decode", "emit")


def kv(key: str, value: Any) -> KeyValue:
    if isinstance(value, bool):
        return KeyValue(key=key, value=AnyValue(bool_value=value))
    if isinstance(value, int):
        return KeyValue(key=key, value=AnyValue(int_value=value))
    if isinstance(value, float):
        return KeyValue(key=key, value=AnyValue(double_value=value))
    return KeyValue(key=key, value=AnyValue(string_value=str(value)))


def trace_id_of(n: int, salt: int = 0) -> bytes:
    return hashlib.blake2b(f"t{salt}:{n}".encode(), digest_size=16).digest()


def span_id_of(trace: bytes, i: int) -> bytes:
    return hashlib.blake2b(trace + i.to_bytes(4, "big"), digest_size=8).digest()


def add_vauban_trace(
    request: ExportTraceServiceRequest,
    trace_id: bytes,
    *,
    stages: int = 4,
    root: bool = True,
    model: str = "tiny-llama",
    sweep: tuple[str, Any] | None = ("token_count", 64),
    service: str = "vauban-test",
    t0: int = 1_700_000_000_000_000_000,
    sync_points: bool = True,
) -> list[bytes]:
    """Append one vauban trace (a root + ``stages`` stage spans with counters and an artifact
    event each) to ``request``; returns the span ids (root first)."""
    rs = request.resource_spans.add()
    rs.resource.attributes.append(kv("service.name", service))
    ss = rs.scope_spans.add()
    ss.scope.name = "vauban_trace"
    root_id = span_id_of(trace_id, 0)
    ids = [root_id]
    if root:
        sp = ss.spans.add(trace_id=trace_id, span_id=root_id, name=f"text_completion {model}",
                          kind=Span.SPAN_KIND_INTERNAL, start_time_unix_nano=t0,
                          end_time_unix_nano=t0 + (stages + 1) * 1_000_000)
        sp.attributes.extend([kv(sc.TRACE_ROOT, True), kv(sc.GEN_AI_OPERATION_NAME, "text_completion"),
                              kv(sc.GEN_AI_REQUEST_MODEL, model), kv(sc.REQUEST_INPUT_TEXT, "hello world")])
        if sweep is not None:
            sp.attributes.extend([kv(sc.SWEEP_AXIS, sweep[0]), kv(sc.SWEEP_AXIS_VALUE, sweep[1])])
    for i in range(stages):
        sid = span_id_of(trace_id, i + 1)
        ids.append(sid)
        stage = STAGES[i % len(STAGES)]
        start = t0 + i * 1_000_000 + 1000
        sp = ss.spans.add(trace_id=trace_id, span_id=sid, parent_span_id=root_id, name=stage,
                          start_time_unix_nano=start, end_time_unix_nano=start + 900_000)
        sp.attributes.extend([
            kv(sc.STAGE, stage),
            kv(sc.usl("token_count"), 64), kv(sc.usl_provenance("token_count"), "derived"),
            kv(sc.usl("input_bytes"), 4096 * (i + 1)), kv(sc.usl_provenance("input_bytes"), "derived"),
            kv(sc.usl("output_bytes"), 8192 * (i + 1)), kv(sc.usl_provenance("output_bytes"), "derived"),
        ])
        if sync_points:
            sp.attributes.extend([kv(sc.usl("sync_points"), i + 1), kv(sc.usl_provenance("sync_points"), "measured")])
        else:
            sp.attributes.append(kv(sc.usl_provenance("sync_points"), "unavailable"))
        ev = sp.events.add(time_unix_nano=start + 500_000, name=sc.EVENT_ARTIFACT)
        digest = "sha256:" + hashlib.sha256(sid).hexdigest()
        ev.attributes.extend([
            kv(sc.ARTIFACT_ID, f"{stage}-{sid.hex()}"), kv(sc.ARTIFACT_KIND, "activation"),
            kv(sc.ARTIFACT_DIGEST, digest), kv(sc.ARTIFACT_DTYPE, "float32"),
            kv(sc.ARTIFACT_BYTE_SIZE, 4096), kv(sc.ARTIFACT_STAT_MEAN, 0.125),
        ])
    return ids if root else ids[1:]


def vauban_request(n_traces: int = 1, salt: int = 0, **kwargs: Any) -> tuple[ExportTraceServiceRequest, list[str]]:
    request = ExportTraceServiceRequest()
    tids = []
    for n in range(n_traces):
        tid = trace_id_of(n, salt)
        add_vauban_trace(request, tid, **kwargs)
        tids.append(tid.hex())
    return request, tids


def span_count(request: ExportTraceServiceRequest) -> int:
    return sum(len(ss.spans) for rs in request.resource_spans for ss in rs.scope_spans)


def post(address: tuple[str, int], body: bytes, content_type: str | None = "application/x-protobuf",
         *, encoding: str | None = None, headers: dict[str, str] | None = None, path: str = "/v1/traces",
         method: str = "POST", timeout: float = 10.0) -> tuple[int, dict[str, str], bytes]:
    """One HTTP request on a fresh connection; returns (status, lower-cased headers, body)."""
    conn = http.client.HTTPConnection(address[0], address[1], timeout=timeout)
    hdrs = dict(headers or {})
    if content_type is not None:
        hdrs["Content-Type"] = content_type
    if encoding is not None:
        hdrs["Content-Encoding"] = encoding
    try:
        conn.request(method, path, body=body, headers=hdrs)
        resp = conn.getresponse()
        data = resp.read()
        return resp.status, {k.lower(): v for k, v in resp.getheaders()}, data
    finally:
        conn.close()


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class CollectorProcess:
    """``vauban-trace collector`` in a subprocess, on fixed ports so it can be restarted in place."""

    def __init__(self, store: Path, *, http_port: int, grpc_port: int, extra: list[str] | None = None,
                 env: dict[str, str] | None = None) -> None:
        self.store = store
        self.http_port = http_port
        self.grpc_port = grpc_port
        self.extra = extra or []
        self.env = env
        self.proc: subprocess.Popen[str] | None = None
        self.lines: list[str] = []

    def start(self, timeout: float = 30.0) -> CollectorProcess:
        cmd = [sys.executable, "-c", "from vauban_trace.cli import main; raise SystemExit(main())",
               "collector", "--store", str(self.store), "--http", f"127.0.0.1:{self.http_port}",
               "--grpc", f"127.0.0.1:{self.grpc_port}", "--metrics", "off", *self.extra]
        env = dict(os.environ)
        env.update(self.env or {})
        deadline = time.monotonic() + timeout
        while True:  # the port of a killed predecessor can take a moment to free up
            self.proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env)
            self.lines = []
            assert self.proc.stdout is not None
            for line in self.proc.stdout:
                self.lines.append(line)
                if " store " in line:
                    return self
            self.proc.wait()
            if time.monotonic() > deadline or "cannot" not in "".join(self.lines):
                raise AssertionError("collector did not start:\n" + "".join(self.lines))
            time.sleep(0.2)

    @property
    def pid(self) -> int:
        assert self.proc is not None
        return self.proc.pid

    def kill9(self) -> None:
        assert self.proc is not None
        os.kill(self.proc.pid, signal.SIGKILL)
        self.proc.wait()

    def terminate(self, timeout: float = 30.0) -> tuple[int, str]:
        assert self.proc is not None and self.proc.stdout is not None
        self.proc.send_signal(signal.SIGTERM)
        rest = self.proc.stdout.read()
        code = self.proc.wait(timeout)
        self.lines.append(rest)
        return code, "".join(self.lines)

    def stop_quietly(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()


def cert_with_cryptography(cert: Path, key: Path) -> None:
    import datetime
    import ipaddress

    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    private = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "localhost")])
    now = datetime.datetime.now(datetime.UTC)
    certificate = (
        x509.CertificateBuilder().subject_name(name).issuer_name(name).public_key(private.public_key())
        .serial_number(x509.random_serial_number()).not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=2))
        .add_extension(x509.SubjectAlternativeName(
            [x509.DNSName("localhost"), x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]), critical=False)
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .sign(private, hashes.SHA256())
    )
    key.write_bytes(private.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                          serialization.NoEncryption()))
    cert.write_bytes(certificate.public_bytes(serialization.Encoding.PEM))


_BOMBS: dict[int, bytes] = {}


def gzip_bomb(inflated: int = 64 * 1024 * 1024) -> bytes:
    """A gzip body of ``inflated`` zero bytes (about 1000x smaller on the wire); cached."""
    if inflated not in _BOMBS:
        import zlib

        comp = zlib.compressobj(9, zlib.DEFLATED, 16 + zlib.MAX_WBITS)
        block = bytes(1024 * 1024)
        parts = [comp.compress(block) for _ in range(inflated // len(block))]
        parts.append(comp.flush())
        _BOMBS[inflated] = b"".join(parts)
    return _BOMBS[inflated]


def wait_for(predicate: Callable[[], Any], timeout: float = 30.0, interval: float = 0.05) -> Any:
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"condition not met within {timeout}s")
        time.sleep(interval)
