"""``vauban-trace traces``: one line per trace, filters, JSON lines, bad input."""

from __future__ import annotations

import json
from datetime import timedelta
from pathlib import Path

import pytest
from opentelemetry.exporter.otlp.proto.common.trace_encoder import encode_spans
from opentelemetry.proto.trace.v1.trace_pb2 import TracesData
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

from vauban_trace import semconv as sc
from vauban_trace._exceptions import ConfigurationError
from vauban_trace.cli import main
from vauban_trace.cli._traces import parse_duration
from vauban_trace.rebuild import traces_data_to_json

FIXTURES = Path("/work/shared/fixtures/backends")


@pytest.fixture
def three_traces(tmp_path: Path) -> tuple[Path, list[str]]:
    ids = []
    lines = []
    for service in ("svc-a", "svc-b", "svc-a"):
        exporter = InMemorySpanExporter()
        provider = TracerProvider(resource=Resource.create({sc.SERVICE_NAME: service}))
        provider.add_span_processor(SimpleSpanProcessor(exporter))
        with provider.get_tracer("t").start_as_current_span(f"req {service}") as root:
            root.set_attribute(sc.TRACE_ROOT, True)
            ids.append(format(root.get_span_context().trace_id, "032x"))
        provider.shutdown()
        td = TracesData()
        td.resource_spans.extend(encode_spans(exporter.get_finished_spans()).resource_spans)
        lines.append(json.dumps(traces_data_to_json(td)))
    path = tmp_path / "t.jsonl"
    path.write_text("\n".join(lines) + "\n")
    return path, ids


def test_traces_lines_newest_first(three_traces: tuple[Path, list[str]], capsys: pytest.CaptureFixture[str]) -> None:
    path, ids = three_traces
    assert main(["traces", "--source", f"otlp-json:{path}"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert [ln.split()[0] for ln in lines] == ids[::-1]
    assert "svc-b" in lines[1] and "req svc-b" in lines[1] and "1 spans" in lines[1]
    assert main(["traces", "--source", f"otlp-json:{path}", "--service", "svc-a", "--limit", "1"]) == 0
    assert [ln.split()[0] for ln in capsys.readouterr().out.splitlines()] == [ids[2]]
    assert main(["traces", "--source", f"otlp-json:{path}", "--since", "15m", "--json"]) == 0
    docs = [json.loads(ln) for ln in capsys.readouterr().out.splitlines()]
    assert [d["trace_id"] for d in docs] == ids[::-1] and docs[0]["complete"] is True


def test_traces_incomplete_flag_and_old_traces(capsys: pytest.CaptureFixture[str]) -> None:
    src = f"otlp-json:{FIXTURES / 'tempo_v1_batches_trace.json'}"
    assert main(["traces", "--source", src]) == 0
    out = capsys.readouterr().out
    assert out.startswith("5b8efff798038103d269b633813fc60c  2018-12-13T14:51:00.000Z") and "INCOMPLETE" in out
    assert main(["traces", "--source", src, "--since", "1d"]) == 0
    assert capsys.readouterr().out == ""


def test_parse_duration() -> None:
    assert parse_duration("15m") == timedelta(minutes=15)
    assert parse_duration("2h") == timedelta(hours=2)
    assert parse_duration("1d") == timedelta(days=1)
    assert parse_duration("250ms") == timedelta(milliseconds=250)
    assert parse_duration("1.5s") == timedelta(seconds=1.5)
    for bad in ("15", "m", "-1h", "0s", "1y"):
        with pytest.raises(ConfigurationError, match="--since"):
            parse_duration(bad)


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["traces", "--since", "soon"], "--since: 'soon' is not a duration"),
        (["traces", "--limit", "0"], "must be at least 1"),
        (["traces", "--limit", "x"], "is not an integer"),
        (["traces", "--source", "tempo:ftp://x"], "expected an http:// or https:// URL"),
        (["traces", "--source", "tempo:http://127.0.0.1:1"], "tempo:http://127.0.0.1:1: connection refused"),
        (["traces", "--source", "store:/nonexistent"], "no trace store here"),
    ],
)
def test_traces_bad_input(argv: list[str], message: str, capsys: pytest.CaptureFixture[str]) -> None:
    code: int | str | None
    try:
        code = main(argv)
    except SystemExit as exc:  # argparse type errors exit through the parser
        code = exc.code
    assert code == 2
    err = capsys.readouterr().err
    assert message in err and err.count("\n") == 1 and "Traceback" not in err
