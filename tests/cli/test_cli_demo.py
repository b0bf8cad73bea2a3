"""``vauban-trace demo`` end to end in a subprocess, then ``show --last --json`` on its store."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from vauban_trace.artifacts import LocalArtifactStore, decode_array, decode_json
from vauban_trace.contract import Trace, validate_trace

_SCRIPT = Path(sys.executable).parent / "vauban-trace"
_CLI = [str(_SCRIPT)] if _SCRIPT.exists() else [sys.executable, "-c", "from vauban_trace.cli import main; raise SystemExit(main())"]


def _env() -> dict[str, str]:
    return {k: v for k, v in os.environ.items() if not k.startswith("OTEL_")}


@pytest.fixture(scope="module")
def cache(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """One model cache for the module: the tiny model is built once."""
    return tmp_path_factory.mktemp("model-cache")


@pytest.fixture(scope="module")
def demo(tmp_path_factory: pytest.TempPathFactory, cache: Path) -> tuple[Path, str]:
    root = tmp_path_factory.mktemp("demo")
    store = root / "store"
    proc = subprocess.run(
        [*_CLI, "demo", "--store", str(store), "--cache", str(cache)],
        capture_output=True, text=True, env=_env(), timeout=300,
    )
    assert proc.returncode == 0, proc.stderr
    return store, proc.stdout


def test_demo_prints_a_readable_summary(demo: tuple[Path, str]) -> None:
    store, out = demo
    match = re.search(r"^trace ([0-9a-f]{32})  complete", out, re.M)
    assert match, out
    for stage in ("load", "tokenize", "forward", "score", "decode"):
        assert re.search(rf"^\s+{stage}\s+[\d.]+ (ms|s|µs)", out, re.M), stage
    for kind in ("tokens", "logits", "activation", "logprobs", "text"):
        assert re.search(rf"^  {kind}\s.*blake3:[0-9a-f]{{16}}", out, re.M), kind
    assert re.search(r"weight_snapshot\s+unsupported", out)
    assert "token_count=" in out and "measured" in out
    assert f"trace JSON: {store.resolve()}" in out
    assert f"embedded: {store.resolve()}" in out
    assert "vauban-trace show --last --json" in out


def test_show_last_json_matches_and_digests_verify(demo: tuple[Path, str]) -> None:
    store, out = demo
    trace_id = re.search(r"^trace ([0-9a-f]{32})", out, re.M).group(1)  # type: ignore[union-attr]
    proc = subprocess.run(
        [*_CLI, "show", "--last", "--json", "--source", f"store:{store}"],
        capture_output=True, text=True, env=_env(), timeout=120,
    )
    assert proc.returncode == 0, proc.stderr
    trace = Trace.from_dict(json.loads(proc.stdout))
    validate_trace(trace)
    assert trace.id == trace_id and trace.complete
    assert [s.stage for s in trace.spans if s.stage] == ["load", "tokenize", "forward", "score", "decode"]
    assert [(m.kind, m.reason) for m in trace.missing] == [("weight_snapshot", "unsupported")]
    blobs = LocalArtifactStore(store / "blobs")
    by_kind = {a.kind: a for a in trace.artifacts}
    assert set(by_kind) == {"tokens", "logits", "activation", "logprobs", "text"}
    for art in trace.artifacts:
        assert art.digest is not None
        assert blobs.verify(art.digest)
        assert len(blobs.get(art.digest)) == art.byte_size
    tokens = decode_json(blobs.get(by_kind["tokens"].digest))
    logits = decode_array(blobs.get(by_kind["logits"].digest))
    assert logits.shape == (1, len(tokens), logits.shape[-1])
    assert list(by_kind["logits"].summary["topk_ids"]) == list(np.argsort(-logits[0, -1], kind="stable")[:5])
    assert by_kind["activation"].layer == 1
    forward = next(s for s in trace.spans if s.stage == "forward")
    assert forward.profile is not None
    assert forward.profile.provenance_of("input_bytes") == "derived"
    assert forward.profile.input_bytes == 2 * 8 * len(tokens)  # input_ids + attention_mask, int64
    assert forward.profile.provenance_of("sync_points") == "unavailable"
    assert trace.request is not None and trace.request.input_text is None  # content capture off
    assert blobs.verify(trace.request.input_ref)  # type: ignore[arg-type]


def test_demo_exports_over_otlp_when_the_standard_variables_are_set(tmp_path: Path, cache: Path) -> None:
    import threading
    from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

    from opentelemetry.proto.collector.trace.v1 import trace_service_pb2

    received: list[trace_service_pb2.ExportTraceServiceRequest] = []

    class Receiver(BaseHTTPRequestHandler):
        def do_POST(self) -> None:  # noqa: N802
            body = self.rfile.read(int(self.headers.get("Content-Length", "0")))
            req = trace_service_pb2.ExportTraceServiceRequest()
            req.ParseFromString(body)
            received.append(req)
            reply = trace_service_pb2.ExportTraceServiceResponse().SerializeToString()
            self.send_response(200)
            self.send_header("Content-Type", "application/x-protobuf")
            self.send_header("Content-Length", str(len(reply)))
            self.end_headers()
            self.wfile.write(reply)

        def log_message(self, *args: object) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Receiver)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        env = _env()
        env["OTEL_EXPORTER_OTLP_ENDPOINT"] = f"http://127.0.0.1:{server.server_port}"
        env["OTEL_EXPORTER_OTLP_PROTOCOL"] = "http/protobuf"
        args = [*_CLI, "demo", "--store", str(tmp_path / "store"), "--cache", str(cache)]
        proc = subprocess.run(args, capture_output=True, text=True, env=env, timeout=300)
        assert proc.returncode == 0, proc.stderr
    finally:
        server.shutdown()
        server.server_close()
    assert f"otlp/http: http://127.0.0.1:{server.server_port}/v1/traces" in proc.stdout
    trace_id = re.search(r"^trace ([0-9a-f]{32})", proc.stdout, re.M).group(1)  # type: ignore[union-attr]
    spans = [s for r in received for rs in r.resource_spans for ss in rs.scope_spans for s in ss.spans]
    assert {s.trace_id.hex() for s in spans} == {trace_id}
    assert {"load", "tokenize", "forward", "score", "decode"} <= {s.name for s in spans}
