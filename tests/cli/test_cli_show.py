"""``vauban-trace show`` through the real dispatcher (exit codes, stdout/stderr)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
from opentelemetry.exporter.otlp.proto.common.trace_encoder import encode_spans
from opentelemetry.proto.trace.v1.trace_pb2 import TracesData
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

from vauban_trace import semconv as sc
from vauban_trace.cli import main
from vauban_trace.contract import Trace
from vauban_trace.rebuild import rebuild_traces, traces_data_to_json
from vauban_trace.store import TraceStore

FIXTURES = Path("/work/shared/fixtures/backends")


def _request_spans() -> tuple[str, TracesData]:
    exporter = InMemorySpanExporter()
    provider = TracerProvider(resource=Resource.create({sc.SERVICE_NAME: "cli-show"}))
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    tracer = provider.get_tracer("cli-tests")
    with tracer.start_as_current_span("text_completion tiny") as root:
        root.set_attributes({sc.TRACE_ROOT: True, sc.REQUEST_INPUT_REF: "sha256:" + "ef" * 32,
                             sc.REQUEST_REQUESTED_ARTIFACTS: ["tokens", "logits"], sc.EXECUTOR_NAME: "torch"})
        with tracer.start_as_current_span("tokenize") as st:
            st.set_attributes({sc.STAGE: "tokenize", sc.usl("token_count"): 4, sc.usl_provenance("token_count"): "derived"})
            st.add_event(sc.EVENT_ARTIFACT, {sc.ARTIFACT_ID: "t0", sc.ARTIFACT_KIND: "tokens"})
            st.add_event(sc.EVENT_ARTIFACT_MISSING, {sc.ARTIFACT_KIND: "logits", sc.MISSING_REASON: "unsupported",
                                                     sc.MISSING_DETAIL: "no lm head"})
    provider.shutdown()
    td = TracesData()
    td.resource_spans.extend(encode_spans(exporter.get_finished_spans()).resource_spans)
    return format(exporter.get_finished_spans()[0].context.trace_id, "032x"), td


@pytest.fixture
def otlp_file(tmp_path: Path) -> tuple[str, Path, Trace]:
    tid, td = _request_spans()
    path = tmp_path / "t.jsonl"
    path.write_text(json.dumps(traces_data_to_json(td)) + "\n")
    return tid, path, rebuild_traces(td)[0]


def test_show_json_is_exactly_the_trace_document(otlp_file: tuple[str, Path, Trace], capsys: pytest.CaptureFixture[str]) -> None:
    tid, path, trace = otlp_file
    assert main(["show", tid, "--source", f"otlp-json:{path}", "--json"]) == 0
    out = capsys.readouterr().out
    assert out == trace.to_json(indent=2) + "\n"
    assert Trace.from_json(out) == trace


def test_show_summary_and_last(otlp_file: tuple[str, Path, Trace], capsys: pytest.CaptureFixture[str]) -> None:
    tid, path, trace = otlp_file
    assert main(["show", "--last", "--source", f"otlp-json:{path}"]) == 0
    out = capsys.readouterr().out
    assert tid in out and "tokenize" in out and "logits" in out


def test_show_from_store_default_source(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                        capsys: pytest.CaptureFixture[str]) -> None:
    tid, td = _request_spans()
    store = TraceStore(tmp_path / ".vauban")
    store.add_spans(td)
    store.put_trace(rebuild_traces(td)[0])
    store.close()
    monkeypatch.chdir(tmp_path)
    assert main(["show", tid.upper()]) == 0
    out = capsys.readouterr().out
    assert tid in out and f"trace JSON: .vauban/traces/{tid}.json" in out
    assert main(["show", "--last", "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["id"] == tid


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["show"], "give a TRACE_ID or --last"),
        (["show", "abc", "--last"], "give a TRACE_ID or --last"),
        (["show", "xyz!", "--source", f"otlp-json:{FIXTURES / 'tempo_v1_batches_trace.json'}"],
         "trace id: 'xyz!' is neither 32 hex digits"),
        (["show", "1", "--source", f"otlp-json:{FIXTURES / 'tempo_v1_batches_trace.json'}"], "no trace 0000"),
        (["show", "1", "--source", "nope:x"], "unknown trace source scheme 'nope'"),
        (["show", "1", "--source", "store:/nonexistent/dir"], "no trace store here"),
        (["show", "1", "--source", "jaeger:http://127.0.0.1:1"], "jaeger:http://127.0.0.1:1: connection refused"),
    ],
)
def test_show_bad_input_one_line_exit_2(argv: list[str], message: str, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert message in err and err.count("\n") == 1 and "Traceback" not in err


def test_show_console_script(otlp_file: tuple[str, Path, Trace]) -> None:
    tid, path, trace = otlp_file
    script = Path(sys.executable).parent / "vauban-trace"
    done = subprocess.run(
        [str(script), "show", tid, "--json", "--source", f"otlp-json:{path}"],
        capture_output=True, text=True, timeout=60,
    )
    assert done.returncode == 0, done.stderr
    assert Trace.from_json(done.stdout) == trace
