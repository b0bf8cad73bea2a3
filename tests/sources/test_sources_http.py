"""jaeger:URL and tempo:URL sources against a real HTTP server on 127.0.0.1 replaying the
upstream fixtures and answers built in the same shapes; plus down and misbehaving backends."""

from __future__ import annotations

import base64
import copy
import json
import re
import socket
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest
from opentelemetry.proto.trace.v1.trace_pb2 import TracesData
from sources_helpers import FakeBackend, Route, encode, make_spans, trace_id_of

from vauban_trace._exceptions import SourceError, TraceNotFoundError
from vauban_trace.rebuild import rebuild_from_json, rebuild_traces, traces_data_to_json
from vauban_trace.sources import JaegerSource, TempoSource, open_source

FIXTURES = Path("/work/shared/fixtures/backends")
RFC3339_NANO = re.compile(r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{9}Z$")
NO_TRACES = {"error": {"httpCode": 404, "message": "No traces found"}}


def _fixture(name: str) -> Any:
    return json.loads((FIXTURES / name).read_text())


def _otlp_doc(spans: list[Any]) -> dict[str, Any]:
    td = TracesData()
    td.resource_spans.extend(encode(spans).resource_spans)
    return traces_data_to_json(td)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


# --- Jaeger --------------------------------------------------------------------------------
def test_jaeger_v3_get_trace_fixture(backend: FakeBackend) -> None:
    tid = "00000000000000000000000000000001"
    backend.json(f"/api/v3/traces/{tid}", _fixture("jaeger_apiv3_GetTrace.json"))
    src = open_source(f"jaeger:{backend.url}/")
    assert isinstance(src, JaegerSource)
    trace = src.get_trace("1")
    assert trace == rebuild_from_json(_fixture("jaeger_apiv3_GetTrace.json"))[0]
    assert backend.requests == [(f"/api/v3/traces/{tid}", {})]


def test_jaeger_vauban_trace_and_streamed_answer(backend: FakeBackend) -> None:
    spans = make_spans("svc-a", n_stages=2)
    tid = trace_id_of(spans)
    half = len(spans) // 2
    body = json.dumps({"result": _otlp_doc(spans[:half])}) + "\n" + json.dumps({"result": _otlp_doc(spans[half:])})
    backend.routes[f"/api/v3/traces/{tid}"] = Route(200, body.encode())
    trace = open_source(f"jaeger:{backend.url}").get_trace(tid)
    assert trace == rebuild_traces(encode(spans))[0] and trace.complete and len(trace.artifacts) == 2


def test_jaeger_falls_back_to_legacy_api(backend: FakeBackend) -> None:
    ui = _fixture("jaeger_v1_ui_trace_01.json")
    tid = "00000000000000000000000000000001"
    backend.json(f"/api/v3/traces/{tid}", {"error": {"httpCode": 404, "message": "trace not found"}}, status=404)
    backend.json(f"/api/traces/{tid}", {"data": [ui], "total": 0, "limit": 0, "offset": 0, "errors": None})
    trace = JaegerSource(backend.url).get_trace(tid)
    assert trace.id == tid and len(trace.spans) == 4 and trace.metadata["services"] == ("service-x", "service-y")
    assert [p for p, _ in backend.requests] == [f"/api/v3/traces/{tid}", f"/api/traces/{tid}"]
    with pytest.raises(TraceNotFoundError, match=r"^jaeger:http://127.0.0.1:\d+: no trace 0+2$"):
        JaegerSource(backend.url).get_trace("2")


def test_jaeger_search_one_service(backend: FakeBackend) -> None:
    a, b = make_spans("svc-a"), make_spans("svc-a", n_stages=1)
    seen: list[dict[str, list[str]]] = []

    def search(query: dict[str, list[str]]) -> Route:
        seen.append(query)
        doc = {"result": {"resourceSpans": _otlp_doc(a)["resourceSpans"] + _otlp_doc(b)["resourceSpans"]}}
        return Route(200, json.dumps(doc).encode())

    backend.routes["/api/v3/traces"] = search
    summaries = open_source(f"jaeger:{backend.url}").list_traces(service="svc-a", since=timedelta(minutes=15), limit=5)
    assert [s.trace_id for s in summaries] == [trace_id_of(b), trace_id_of(a)]  # newest first
    assert summaries[1].span_count == 3 and summaries[1].complete and summaries[1].service == "svc-a"
    (q,) = seen
    assert q["query.service_name"] == ["svc-a"] and q["query.num_traces"] == ["5"]
    lo, hi = q["query.start_time_min"][0], q["query.start_time_max"][0]
    assert RFC3339_NANO.match(lo) and RFC3339_NANO.match(hi) and lo < hi


def test_jaeger_search_without_service_searches_each(backend: FakeBackend) -> None:
    a = make_spans("svc-a")
    backend.json("/api/v3/services", {"services": ["svc-b", "svc-a"]})

    def search(query: dict[str, list[str]]) -> Route:
        if query["query.service_name"] == ["svc-a"]:
            return Route(200, json.dumps({"result": _otlp_doc(a)}).encode())
        return Route(404, json.dumps(NO_TRACES).encode())

    backend.routes["/api/v3/traces"] = search
    (summary,) = JaegerSource(backend.url).list_traces()
    assert summary.trace_id == trace_id_of(a)
    searched = [q["query.service_name"][0] for p, q in backend.requests if p == "/api/v3/traces"]
    assert searched == ["svc-a", "svc-b"]
    assert JaegerSource(backend.url).last_trace().id == trace_id_of(a)


def test_jaeger_search_misbehaving(backend: FakeBackend) -> None:
    # a trace-summaries answer where traces were expected: a clear error, not a crash
    backend.json("/api/v3/traces", _fixture("jaeger_apiv3_FindTraceSummaries.json"))
    with pytest.raises(SourceError, match=r"unexpected answer from .*/api/v3/traces\?.*no 'resourceSpans'"):
        JaegerSource(backend.url).list_traces(service="frontend")
    backend.routes.pop("/api/v3/traces")
    with pytest.raises(SourceError, match=r"answered 404 \(no such endpoint\)"):
        JaegerSource(backend.url).list_traces(service="frontend")
    with pytest.raises(SourceError, match="neither /api/v3/services nor /api/services exists"):
        JaegerSource(backend.url).list_traces()


# --- Tempo ---------------------------------------------------------------------------------
def test_tempo_v2_and_v1_fallback_with_base64_ids(backend: FakeBackend) -> None:
    doc = _fixture("tempo_v1_batches_trace.json")
    tid = "5b8efff798038103d269b633813fc60c"
    expected = rebuild_from_json(doc)[0]
    backend.json(f"/api/v2/traces/{tid}", {"trace": {"resourceSpans": doc["batches"]}, "status": "COMPLETE"})
    src = open_source(f"tempo:{backend.url}")
    assert isinstance(src, TempoSource) and src.get_trace(tid.upper()) == expected
    v1 = copy.deepcopy(doc)
    span = v1["batches"][0]["scopeSpans"][0]["spans"][0]
    for key in ("traceId", "spanId", "parentSpanId"):
        span[key] = base64.b64encode(bytes.fromhex(span[key])).decode()
    backend.routes.pop(f"/api/v2/traces/{tid}")
    backend.json(f"/api/traces/{tid}", v1)
    assert TempoSource(backend.url).get_trace(tid) == expected
    with pytest.raises(TraceNotFoundError, match="no trace"):
        TempoSource(backend.url).get_trace("ab")


def test_tempo_search_pads_ids_and_fetches_each(backend: FakeBackend) -> None:
    a = make_spans("svc-t", n_stages=1)
    tid = trace_id_of(a)
    stripped = tid.lstrip("0") or "0"
    backend.json("/api/search", {"traces": [
        {"traceID": stripped, "rootServiceName": "svc-t", "rootTraceName": "x", "startTimeUnixNano": "1", "durationMs": 1},
        {"traceID": "abc"},  # listed but not retrievable any more: skipped
    ], "metrics": {"inspectedTraces": 2}})
    backend.json(f"/api/v2/traces/{tid}", {"trace": _otlp_doc(a)})
    (summary,) = TempoSource(backend.url).list_traces(service='svc "t"', since=timedelta(hours=2), limit=3)
    assert summary.trace_id == tid and summary.span_count == 2 and summary.complete
    path, q = backend.requests[0]
    assert path == "/api/search" and q["q"] == ['{ resource.service.name = "svc \\"t\\"" }'] and q["limit"] == ["3"]
    assert int(q["end"][0]) - int(q["start"][0]) == 7201
    TempoSource(backend.url).list_traces()
    last_search = [q for p, q in backend.requests if p == "/api/search"][-1]
    assert last_search["q"] == ["{}"] and "start" not in last_search
    backend.json("/api/search", {"traces": [{"traceID": "zz-top"}]})
    with pytest.raises(SourceError, match=r"traces\[0\].traceID 'zz-top'"):
        TempoSource(backend.url).list_traces()


# --- broken backends -----------------------------------------------------------------------
def test_backend_down_is_one_clear_line() -> None:
    url = f"http://127.0.0.1:{_free_port()}"
    for scheme in ("jaeger", "tempo"):
        with pytest.raises(SourceError) as info:
            open_source(f"{scheme}:{url}").get_trace("1")
        assert str(info.value) == f"{scheme}:{url}: connection refused"
    with pytest.raises(SourceError, match=r"^jaeger:http://127.0.0.1:1: connection refused$"):
        open_source("jaeger:http://127.0.0.1:1").list_traces(service="x")


def test_backend_answers_html_garbage_errors_and_slowly(backend: FakeBackend) -> None:
    tid = "0" * 31 + "1"
    html = b"<!doctype html><html><body>Grafana login</body></html>"
    backend.routes[f"/api/v3/traces/{tid}"] = Route(200, html, "text/html; charset=utf-8")
    with pytest.raises(SourceError, match=r"answered text/html instead of JSON \(.*\): <!doctype html>"):
        JaegerSource(backend.url).get_trace(tid)
    backend.routes[f"/api/v3/traces/{tid}"] = Route(200, b"\x89PNG\x00\x00", "image/png")
    with pytest.raises(SourceError, match="answered image/png instead of JSON"):
        JaegerSource(backend.url).get_trace(tid)
    backend.routes[f"/api/v2/traces/{tid}"] = Route(500, b"internal error: disk full", "text/plain")
    with pytest.raises(SourceError, match=r"HTTP 500 from http://.*/api/v2/traces/0+1: internal error: disk full"):
        TempoSource(backend.url).get_trace(tid)
    backend.json(f"/api/v2/traces/{tid}", {"trace": {"resourceSpans": [{"scopeSpans": [{"spans": [{"traceId": 5}]}]}]}})
    with pytest.raises(SourceError, match=r"unexpected answer .*traceId: expected a string id, got int"):
        TempoSource(backend.url).get_trace(tid)
    backend.routes[f"/api/v2/traces/{tid}"] = Route(200, b"{}", delay_s=1.0)
    with pytest.raises(SourceError, match=r"^tempo:http://127.0.0.1:\d+: timed out after 0.3s"):
        TempoSource(backend.url, timeout_s=0.3).get_trace(tid)
