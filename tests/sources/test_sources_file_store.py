"""otlp-json:FILE and store:DIR sources, and open_source."""

from __future__ import annotations

import json
import os
from datetime import timedelta
from pathlib import Path

import pytest
from opentelemetry.proto.trace.v1.trace_pb2 import TracesData
from sources_helpers import encode, make_spans, trace_id_of

from vauban_trace._exceptions import ConfigurationError, SourceError, TraceNotFoundError
from vauban_trace.rebuild import rebuild_traces, traces_data_to_json
from vauban_trace.sources import OtlpJsonFileSource, StoreSource, open_source, summary_of
from vauban_trace.store import TraceStore

FIXTURES = Path("/work/shared/fixtures/backends")


def _line(req: object) -> str:
    td = TracesData()
    td.resource_spans.extend(req.resource_spans)  # type: ignore[attr-defined]
    return json.dumps(traces_data_to_json(td))


def test_file_exporter_lines_with_a_trace_split_across_lines(tmp_path: Path) -> None:
    a = make_spans("svc-a", n_stages=3)
    b = make_spans("svc-b", n_stages=1)
    path = tmp_path / "traces.jsonl"
    # one line per batch, batches not aligned with traces, blank lines in between
    lines = [_line(encode(a[:2])), "", _line(encode(a[2:] + b[:1])), "   ", _line(encode(b[1:]))]
    path.write_text("\n".join(lines) + "\n")
    src = open_source(f"otlp-json:{path}")
    assert isinstance(src, OtlpJsonFileSource)
    expected = {t.id: t for t in rebuild_traces(encode(a + b))}
    ta = src.get_trace(trace_id_of(a))
    assert ta == expected[trace_id_of(a)] and ta.complete and len(ta.spans) == 4
    assert src.get_trace(trace_id_of(b).upper()) == expected[trace_id_of(b)]
    listed = src.list_traces()
    assert {s.trace_id for s in listed} == set(expected)
    assert listed == sorted(listed, key=lambda s: -s.start_unix_nano)
    assert [s.trace_id for s in src.list_traces(service="svc-b")] == [trace_id_of(b)]
    assert len(src.list_traces(limit=1)) == 1
    assert src.list_traces(since=timedelta(hours=1))  # just made
    assert src.last_trace().id == listed[0].trace_id
    summary = summary_of(ta)
    assert summary.span_count == 4 and summary.service == "svc-a" and summary.root_name == "text_completion tiny"
    with pytest.raises(TraceNotFoundError, match="no trace 0+1$"):
        src.get_trace("1")
    # the file is re-read when it changes
    c = make_spans("svc-c", n_stages=1)
    with path.open("a") as f:
        f.write(_line(encode(c)) + "\n")
    os.utime(path, ns=(1, os.stat(path).st_mtime_ns + 10_000_000))
    assert src.get_trace(trace_id_of(c)).complete


def test_file_single_documents(tmp_path: Path) -> None:
    src = open_source(f"otlp-json:{FIXTURES / 'tempo_v1_batches_trace.json'}")
    (summary,) = src.list_traces()
    assert summary.trace_id == "5b8efff798038103d269b633813fc60c" and not summary.complete
    assert summary.service == "my.service" and summary.duration_s == 1.0
    jaeger = open_source(f"otlp-json:{FIXTURES / 'jaeger_apiv3_GetTrace.json'}")
    assert jaeger.get_trace("00000000000000000000000000000001").spans[0].name == "foobar"
    empty = tmp_path / "empty.json"
    empty.write_text("\n\n")
    assert open_source(f"otlp-json:{empty}").list_traces() == []


def test_file_errors(tmp_path: Path) -> None:
    good = _line(encode(make_spans()))
    path = tmp_path / "bad.jsonl"
    path.write_text(good + "\n\n" + "{not json\n")
    with pytest.raises(SourceError, match=r"^otlp-json:.*bad.jsonl: line 3: OTLP JSON is not valid JSON"):
        open_source(f"otlp-json:{path}").list_traces()
    path.write_text(good + "\n" + json.dumps({"resourceSpans": [{"scopeSpans": [{"spans": [{"traceId": "xyz"}]}]}]}))
    with pytest.raises(SourceError, match=r"line 2: resourceSpans\[0\].scopeSpans\[0\].spans\[0\].traceId: 'xyz'"):
        open_source(f"otlp-json:{path}").list_traces()
    summaries = tmp_path / "summ.json"
    summaries.write_text((FIXTURES / "jaeger_apiv3_FindTraceSummaries.json").read_text())
    with pytest.raises(SourceError, match="no 'resourceSpans' or 'batches' key"):
        open_source(f"otlp-json:{summaries}").list_traces()
    binary = tmp_path / "proto.bin"
    binary.write_bytes(b"\x00\x00\x00\x05\xff\xfe\x01")
    with pytest.raises(SourceError, match="format: proto"):
        open_source(f"otlp-json:{binary}").list_traces()
    with pytest.raises(SourceError, match="no such file"):
        open_source(f"otlp-json:{tmp_path / 'absent.json'}")


def test_store_source(tmp_path: Path) -> None:
    spans = make_spans("svc-store", n_stages=2)
    store = TraceStore(tmp_path / "st")
    store.add_spans(encode(spans))
    (trace,) = rebuild_traces(store.spans_for(trace_id_of(spans)))
    store.put_trace(trace)
    pending = make_spans("svc-store", n_stages=1, with_root=False)  # raw spans, never rebuilt
    store.add_spans(encode(pending))
    store.close()
    with open_source(f"store:{tmp_path / 'st'}") as src:
        assert isinstance(src, StoreSource)
        assert src.get_trace(trace.id) == trace and src.last_trace() == trace
        assert [s.trace_id for s in src.list_traces(service="svc-store")] == [trace.id]
        assert src.list_traces(service="other") == []
        assert src.trace_json_path(trace.id).is_file()
        partial = src.get_trace(trace_id_of(pending))  # rebuilt on the fly from raw spans
        assert not partial.complete and "no root span received" in partial.problems
        with pytest.raises(TraceNotFoundError, match="no trace 0+2$"):
            src.get_trace("2")
    with pytest.raises(SourceError, match="no trace store here"):
        open_source(f"store:{tmp_path / 'nothing'}")
    assert not (tmp_path / "nothing").exists()  # reading never creates a store


def test_open_source_errors() -> None:
    for spec, message in [
        ("zipkin:http://x", "unknown trace source scheme 'zipkin'"),
        (".vauban", "has no scheme"),
        ("store:", "nothing after 'store:'"),
        ("jaeger:localhost:16686", "expected an http:// or https:// URL"),
        ("tempo:http://h:99999", "bad URL"),
    ]:
        with pytest.raises(ConfigurationError, match=message):
            open_source(spec)
    with pytest.raises(ConfigurationError, match="limit must be a positive integer"):
        open_source(f"otlp-json:{FIXTURES / 'tempo_v1_batches_trace.json'}").list_traces(limit=0)
    with pytest.raises(ConfigurationError, match="trace id: 'not-hex'"):
        open_source(f"otlp-json:{FIXTURES / 'tempo_v1_batches_trace.json'}").get_trace("not-hex")
