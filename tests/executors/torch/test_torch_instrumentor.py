"""TransformersInstrumentor: in process, and through ``opentelemetry-instrument`` on an unmodified
script exporting with the real OTLP/HTTP exporter to a real receiver on 127.0.0.1."""

from __future__ import annotations

import gzip
import os
import shutil
import subprocess
import sys
import textwrap
import threading
import zlib
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import (
    ExportTraceServiceRequest,
    ExportTraceServiceResponse,
)
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

from vauban_trace import semconv as sc
from vauban_trace.executors.torch.instrumentor import TransformersInstrumentor
from vauban_trace.executors.torch.tiny import cached_tiny_model


class _Receiver:
    """A minimal OTLP/HTTP traces receiver: decodes each ExportTraceServiceRequest it gets."""

    def __init__(self) -> None:
        self.requests: list[ExportTraceServiceRequest] = []
        self.got = threading.Event()
        outer = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:  # noqa: N802 - http.server API
                body = self.rfile.read(int(self.headers.get("Content-Length", "0")))
                encoding = self.headers.get("Content-Encoding", "")
                if encoding == "gzip":
                    body = gzip.decompress(body)
                elif encoding == "deflate":
                    body = zlib.decompress(body)
                if self.path != "/v1/traces" or "protobuf" not in self.headers.get("Content-Type", ""):
                    self.send_response(404)
                    self.end_headers()
                    return
                req = ExportTraceServiceRequest()
                req.ParseFromString(body)
                outer.requests.append(req)
                outer.got.set()
                payload = ExportTraceServiceResponse().SerializeToString()
                self.send_response(200)
                self.send_header("Content-Type", "application/x-protobuf")
                self.send_header("Content-Length", str(len(payload)))
                self.end_headers()
                self.wfile.write(payload)

            def log_message(self, *args: Any) -> None:
                return None

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.port = self.server.server_address[1]
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    def spans(self) -> list[Any]:
        return [s for r in self.requests for rs in r.resource_spans for ss in rs.scope_spans for s in ss.spans]

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture()
def receiver() -> Iterator[_Receiver]:
    r = _Receiver()
    yield r
    r.close()


def _attrs(span: Any) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for kv in span.attributes:
        which = kv.value.WhichOneof("value")
        value = getattr(kv.value, which)
        if which == "array_value":
            value = [getattr(v, v.WhichOneof("value")) for v in value.values]
        out[kv.key] = value
    return out


SCRIPT = textwrap.dedent(
    """
    import sys
    from transformers import AutoModelForCausalLM, AutoTokenizer

    model = AutoModelForCausalLM.from_pretrained(sys.argv[1])
    tok = AutoTokenizer.from_pretrained(sys.argv[1])
    inputs = tok("Hello world", return_tensors="pt")
    out = model.generate(**inputs, max_new_tokens=5, do_sample=False)
    print("generated", out.shape[1] - inputs["input_ids"].shape[1])
    """
)


def test_opentelemetry_instrument_traces_an_unmodified_script(receiver: _Receiver, tmp_path: Path) -> None:
    model_dir = cached_tiny_model("llama", hidden_size=64, num_layers=2)
    script = tmp_path / "my_script.py"
    script.write_text(SCRIPT)
    launcher = shutil.which("opentelemetry-instrument", path=str(Path(sys.executable).parent))
    assert launcher is not None, "opentelemetry-instrument is installed with opentelemetry-instrumentation"
    env = {k: v for k, v in os.environ.items() if not k.startswith("OTEL_")}
    env.update({"OTEL_SERVICE_NAME": "unmodified-script", "OTEL_METRICS_EXPORTER": "none", "OTEL_LOGS_EXPORTER": "none",
                "OTEL_BSP_SCHEDULE_DELAY": "100", "HF_HUB_OFFLINE": "1"})
    proc = subprocess.run(
        [
            launcher, "--traces_exporter", "otlp", "--exporter_otlp_protocol", "http/protobuf",
            "--exporter_otlp_traces_endpoint", f"http://127.0.0.1:{receiver.port}/v1/traces",
            sys.executable, str(script), str(model_dir),
        ],
        env=env, capture_output=True, text=True, timeout=240,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "generated" in proc.stdout
    assert receiver.got.wait(10)
    spans = {s.name.split(" ")[0]: s for s in receiver.spans()}
    assert {"text_completion", "prefill", "decode"} <= set(spans), sorted(spans)
    root = _attrs(spans["text_completion"])
    assert root[sc.GEN_AI_OPERATION_NAME] == "text_completion"
    assert root[sc.GEN_AI_PROVIDER_NAME] == "huggingface.transformers"
    assert str(root[sc.GEN_AI_REQUEST_MODEL]).startswith("tiny-llama-")
    assert root[sc.GEN_AI_REQUEST_MAX_TOKENS] == 5
    assert root[sc.GEN_AI_USAGE_INPUT_TOKENS] > 0
    generated = int(proc.stdout.split("generated")[1].split()[0])
    assert 1 <= root[sc.GEN_AI_USAGE_OUTPUT_TOKENS] <= generated
    assert root[sc.GEN_AI_RESPONSE_FINISH_REASONS][0] in ("stop", "length")
    assert spans["prefill"].parent_span_id == spans["text_completion"].span_id
    res = {kv.key: kv.value.string_value for kv in receiver.requests[0].resource_spans[0].resource.attributes}
    assert res["service.name"] == "unmodified-script"


def test_instrument_and_uninstrument_in_process() -> None:
    from transformers import AutoModelForCausalLM, AutoTokenizer
    from transformers.generation.utils import GenerationMixin

    original = GenerationMixin.__dict__["generate"]
    model_dir = cached_tiny_model("llama", hidden_size=64, num_layers=2)
    model = AutoModelForCausalLM.from_pretrained(model_dir)
    tok = AutoTokenizer.from_pretrained(model_dir)
    exporter = InMemorySpanExporter()
    tp = TracerProvider()
    tp.add_span_processor(SimpleSpanProcessor(exporter))
    inst = TransformersInstrumentor()
    assert "transformers" in inst.instrumentation_dependencies()[0]
    inst.instrument(tracer_provider=tp)
    try:
        inputs = tok("Hello", return_tensors="pt")
        model.generate(**inputs, max_new_tokens=3, do_sample=False)
        assert "forward" not in model.__dict__  # the per-call forward wrapper is gone again
    finally:
        inst.uninstrument()
    names = sorted(s.name.split(" ")[0] for s in exporter.get_finished_spans())
    assert names == ["decode", "prefill", "text_completion"]
    assert GenerationMixin.__dict__["generate"] is original
    exporter.clear()
    model.generate(**tok("Hello", return_tensors="pt"), max_new_tokens=2, do_sample=False)
    assert exporter.get_finished_spans() == ()


def test_concurrent_generate_calls_share_the_temporary_forward_wrapper() -> None:
    from transformers import AutoModelForCausalLM, AutoTokenizer

    model_dir = cached_tiny_model("llama", hidden_size=64, num_layers=2)
    model = AutoModelForCausalLM.from_pretrained(model_dir)
    tok = AutoTokenizer.from_pretrained(model_dir)
    exporter = InMemorySpanExporter()
    tp = TracerProvider()
    tp.add_span_processor(SimpleSpanProcessor(exporter))
    inst = TransformersInstrumentor()
    inst.instrument(tracer_provider=tp)
    errors: list[BaseException] = []

    def work() -> None:
        try:
            for _ in range(3):
                model.generate(**tok("Hello world", return_tensors="pt"), max_new_tokens=4, min_new_tokens=4,
                               do_sample=False)
        except BaseException as exc:  # pragma: no cover - reported below
            errors.append(exc)

    try:
        threads = [threading.Thread(target=work) for _ in range(2)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(120)
    finally:
        inst.uninstrument()
    assert not errors
    assert "forward" not in model.__dict__
    spans = exporter.get_finished_spans()
    roots = [s for s in spans if s.name.startswith("text_completion")]
    decodes = [s for s in spans if s.name == "decode"]
    assert len(roots) == 6 and len(decodes) == 6
    assert all(d.attributes[sc.DECODE_STEPS] == 3 for d in decodes)
