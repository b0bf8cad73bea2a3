"""OTLP JSON with backend quirks, the upstream backend fixtures, and Jaeger's legacy UI model."""

from __future__ import annotations

import base64
import copy
import json
from pathlib import Path
from typing import Any

import pytest
from opentelemetry.proto.trace.v1.trace_pb2 import TracesData

from vauban_trace import semconv as sc
from vauban_trace._exceptions import RebuildError
from vauban_trace.contract import Trace, validate_trace
from vauban_trace.rebuild import (
    normalize_trace_id,
    rebuild_from_json,
    rebuild_traces,
    traces_data_from_jaeger_ui,
    traces_data_from_json,
    traces_data_to_json,
)

FIXTURES = Path("/work/shared/fixtures/backends")
TID = "5b8efff798038103d269b633813fc60c"


def _fixture(name: str) -> Any:
    return json.loads((FIXTURES / name).read_text())


def _b64(hex_id: str) -> str:
    return base64.b64encode(bytes.fromhex(hex_id)).decode()


def test_jaeger_v3_get_trace_fixture() -> None:
    (t,) = rebuild_from_json((FIXTURES / "jaeger_apiv3_GetTrace.json").read_bytes())
    assert t.id == "00000000000000000000000000000001" and t.complete
    (span,) = t.spans
    assert (span.id, span.name, span.status, span.parent_id) == ("0000000000000002", "foobar", "error", None)
    assert span.profile is not None and span.profile.duration_s is None  # never ended: no duration
    validate_trace(t)
    assert Trace.from_json(t.to_json()) == t


def test_jaeger_find_trace_summaries_is_not_trace_data() -> None:
    with pytest.raises(RebuildError, match="no 'resourceSpans' or 'batches' key \\(found: summaries\\)"):
        traces_data_from_json(_fixture("jaeger_apiv3_FindTraceSummaries.json"))


def test_tempo_v1_batches_fixture_upper_case_hex() -> None:
    (t,) = rebuild_from_json(_fixture("tempo_v1_batches_trace.json"))
    assert t.id == TID and not t.complete
    (span,) = t.spans
    assert span.id == "eee19b7ec3c1b174" and span.parent_id == "eee19b7ec3c1b173"
    assert span.metadata == {"my.span.attr": "some value"} and span.profile is not None
    assert span.profile.duration_s == 1.0
    assert t.resource == {sc.SERVICE_NAME: "my.service"} and t.metadata["service_name"] == "my.service"
    assert "no root span received" in t.problems
    assert Trace.from_json(t.to_json()) == t


def test_tempo_base64_ids_and_v2_wrapper_give_the_same_trace() -> None:
    doc = _fixture("tempo_v1_batches_trace.json")
    expected = rebuild_from_json(doc)
    b64 = copy.deepcopy(doc)
    span = b64["batches"][0]["scopeSpans"][0]["spans"][0]
    for key in ("traceId", "spanId", "parentSpanId"):
        span[key] = _b64(span[key])
    assert len(span["traceId"]) == 24 and len(span["spanId"]) == 12
    assert rebuild_from_json(b64) == expected
    unpadded = copy.deepcopy(b64)
    uspan = unpadded["batches"][0]["scopeSpans"][0]["spans"][0]
    for key in ("traceId", "spanId", "parentSpanId"):
        uspan[key] = uspan[key].rstrip("=")
    assert rebuild_from_json(unpadded) == expected
    v2 = {"trace": {"resourceSpans": doc["batches"]}, "status": "PARTIAL", "metrics": {}}
    assert rebuild_from_json(json.dumps(v2)) == expected
    camel = copy.deepcopy(doc)  # numbers instead of strings, snake_case keys
    cspan = camel["batches"][0]["scopeSpans"][0]["spans"][0]
    cspan["start_time_unix_nano"] = int(cspan.pop("startTimeUnixNano"))
    cspan["endTimeUnixNano"] = int(cspan["endTimeUnixNano"])
    cspan["kind"] = "SPAN_KIND_SERVER"
    cspan["someFutureField"] = {"x": 1}
    assert rebuild_from_json(camel) == expected


def test_jaeger_v1_ui_fixture() -> None:
    doc = _fixture("jaeger_v1_ui_trace_01.json")
    td = traces_data_from_jaeger_ui(doc)
    assert traces_data_from_json({"data": [doc], "total": 0, "errors": None}) == td
    (t,) = rebuild_traces(td)
    assert t.id == "00000000000000000000000000000001" and t.complete
    assert [s.id for s in t.spans] == ["0000000000000002", "0000000000000003", "0000000000000004", "0000000000000005"]
    s2, s3, s4, s5 = t.spans
    assert s2.name == "some-operation" and s2.status == "error"  # the richer duplicate, error=true tag
    assert s2.metadata["peer.ipv4"] == 23456 and s2.metadata["temperature"] == 72.5
    assert s2.metadata["javascript_limit"] == 9223372036854775222
    assert s2.metadata["blob"] == "AAAwOQ==" and "error" not in s2.metadata
    assert s2.end_unix_nano - s2.start_unix_nano == 5000
    assert s3.parent_id == s2.id and s4.parent_id == s2.id and s5.parent_id == s4.id
    assert s3.metadata["resource"] == {sc.SERVICE_NAME: "service-y"}
    assert t.resource == {sc.SERVICE_NAME: "service-x"}
    assert t.metadata["services"] == ("service-x", "service-y")
    assert any("arrived 2 times" in p for p in t.problems)
    # the cross-trace CHILD_OF and the FOLLOWS_FROM references became links
    span4 = next(s for rs in td.resource_spans for ss in rs.scope_spans for s in ss.spans if s.name == "reference-test")
    assert [ln.span_id.hex() for ln in span4.links] == ["00000000000000ff", "0000000000000002"]
    first = next(s for rs in td.resource_spans for ss in rs.scope_spans for s in ss.spans)
    assert [e.name for e in first.events] == ["some-event", "log"]
    assert Trace.from_json(t.to_json()) == t


def test_jaeger_ui_status_kind_and_scope_tags() -> None:
    trace: dict[str, Any] = {
        "traceID": "1" * 32,
        "spans": [{
            "traceID": "1" * 32, "spanID": "2" * 16, "operationName": "op", "startTime": 10, "duration": 2,
            "processID": "p1",
            "tags": [
                {"key": sc.JAEGER_SPAN_KIND, "type": "string", "value": "client"},
                {"key": sc.JAEGER_STATUS_CODE, "type": "string", "value": "ERROR"},
                {"key": sc.JAEGER_STATUS_DESCRIPTION, "type": "string", "value": "bad thing"},
                {"key": sc.JAEGER_SCOPE_NAME, "type": "string", "value": "lib"},
            ],
        }],
        "processes": {"p1": {"serviceName": "svc", "tags": [{"key": "host", "type": "string", "value": "h"}]}},
    }
    td = traces_data_from_jaeger_ui(json.dumps({"data": [trace]}))
    span = td.resource_spans[0].scope_spans[0].spans[0]
    assert span.kind == 3 and span.status.code == 2 and td.resource_spans[0].scope_spans[0].scope.name == "lib"
    (t,) = rebuild_traces(td)
    assert t.spans[0].error == "bad thing" and t.resource == {sc.SERVICE_NAME: "svc", "host": "h"}
    with pytest.raises(RebuildError, match=r"data\[0\].spans\[0\].tags\[0\].value: 'x' is not a valid int64"):
        bad = copy.deepcopy(trace)
        bad["spans"][0]["tags"][0] = {"key": "n", "type": "int64", "value": "x"}
        traces_data_from_jaeger_ui({"data": [bad]})


def test_every_value_type_and_json_round_trip() -> None:
    value_cases = [
        {"stringValue": "s"}, {"boolValue": True}, {"intValue": "-42"}, {"intValue": 7}, {"doubleValue": 1.5},
        {"doubleValue": "NaN"}, {"bytesValue": "AAEC"},
        {"arrayValue": {"values": [{"intValue": "1"}, {"stringValue": "a"}]}},
        {"kvlistValue": {"values": [{"key": "k", "value": {"boolValue": False}}]}}, {},
    ]
    doc = {"resourceSpans": [{"resource": {"attributes": [{"key": sc.SERVICE_NAME, "value": {"stringValue": "svc"}}]},
        "scopeSpans": [{"scope": {"name": "x"}, "spans": [{
            "traceId": TID.upper(), "spanId": "00000000000000AB", "parentSpanId": "", "name": "n",
            "startTimeUnixNano": 1000, "endTimeUnixNano": "3000", "kind": 1, "status": {"code": "STATUS_CODE_OK"},
            "attributes": [{"key": f"a{i}", "value": v} for i, v in enumerate(value_cases)],
            "events": [{"timeUnixNano": "2000", "name": "e", "attributes": []}],
            "links": [{"traceId": TID, "spanId": "00000000000000cd"}],
        }]}]}]}
    td = traces_data_from_json(doc)
    out = traces_data_to_json(td)
    assert out["resourceSpans"][0]["scopeSpans"][0]["spans"][0]["traceId"] == TID
    assert out["resourceSpans"][0]["scopeSpans"][0]["spans"][0]["links"][0]["spanId"] == "00000000000000cd"
    assert traces_data_from_json(out) == td
    assert traces_data_from_json(json.dumps(out).encode()) == td
    (t,) = rebuild_traces(td)
    meta = t.spans[0].metadata
    assert [meta[f"a{i}"] for i in range(len(value_cases))] == [
        "s", True, -42, 7, 1.5, "NaN", "AAEC", (1, "a"), {"k": False}, None]
    assert t.spans[0].status == "ok" and meta["events"] == ({"name": "e", "time_unix_nano": 2000, "attributes": {}},)
    assert Trace.from_json(t.to_json()) == t
    assert traces_data_from_json({}) == TracesData()


@pytest.mark.parametrize(
    ("mutate", "message"),
    [
        (lambda s: s.update(traceId="xyz"),
         "resourceSpans[0].scopeSpans[0].spans[0].traceId: 'xyz' is neither 32 hex digits nor base64 of 16 bytes"),
        (lambda s: s.update(spanId="abc"), "spans[0].spanId: 'abc' is neither 16 hex digits nor base64 of 8 bytes"),
        (lambda s: s.pop("traceId"), "spans[0].traceId: missing"),
        (lambda s: s.update(startTimeUnixNano="soon"), "spans[0].startTimeUnixNano: 'soon' is not an integer"),
        (lambda s: s.update(startTimeUnixNano=-1), "spans[0].startTimeUnixNano: -1 is outside the uint64 range"),
        (lambda s: s.update(kind=9), "spans[0].kind: unknown value 9"),
        (lambda s: s.update(attributes=[{"key": "a", "value": {"intValue": "1.5"}}]),
         "spans[0].attributes[0].value.intValue: '1.5' is not an integer"),
        (lambda s: s.update(attributes=[{"key": "a", "value": {"bytesValue": "!!"}}]),
         "spans[0].attributes[0].value.bytesValue: '!!' is not base64"),
        (lambda s: s.update(attributes={"a": 1}), "spans[0].attributes: expected an array, got dict"),
        (lambda s: s.update(events=[{"name": 3}]), "spans[0].events[0].name: expected a string, got int"),
    ],
)
def test_errors_name_the_bad_field(mutate: Any, message: str) -> None:
    span = {"traceId": TID, "spanId": "00000000000000ab", "name": "n"}
    mutate(span)
    doc = {"resourceSpans": [{"scopeSpans": [{"spans": [span]}]}]}
    with pytest.raises(RebuildError) as info:
        traces_data_from_json(doc)
    assert message in str(info.value)


def test_document_level_errors() -> None:
    with pytest.raises(RebuildError, match="OTLP JSON is not valid JSON"):
        traces_data_from_json("{nope")
    with pytest.raises(RebuildError, match="OTLP JSON: expected an object, got list"):
        traces_data_from_json("[]")
    with pytest.raises(RebuildError, match=r"result: no 'resourceSpans' or 'batches' key \(found: error\)"):
        traces_data_from_json({"result": {"error": {"httpCode": 404}}})
    with pytest.raises(RebuildError, match="not UTF-8"):
        traces_data_from_json(b"\xff\xfe")
    with pytest.raises(RebuildError, match="batches: expected an array"):
        traces_data_from_json({"batches": {}})


def test_normalize_trace_id() -> None:
    assert normalize_trace_id("ABC") == "0" * 29 + "abc"
    assert normalize_trace_id(_b64(TID)) == TID
    with pytest.raises(RebuildError, match="trace id: 'zz' is neither 32 hex digits"):
        normalize_trace_id("zz")


def test_pre_1_0_and_snake_case_keys() -> None:
    legacy = {"resource_spans": [{"instrumentationLibrarySpans": [{
        "instrumentationLibrary": {"name": "old-lib", "version": "0.9"},
        "spans": [{"trace_id": TID, "span_id": "00000000000000ab", "name": "n",
                   "start_time_unix_nano": "5", "end_time_unix_nano": 9,
                   "status": {"code": "STATUS_CODE_ERROR", "message": "bad"}}],
    }]}]}
    td = traces_data_from_json(legacy)
    ss = td.resource_spans[0].scope_spans[0]
    assert ss.scope.name == "old-lib" and ss.spans[0].end_time_unix_nano == 9
    (t,) = rebuild_traces(td)
    assert t.spans[0].status == "error" and t.spans[0].error == "bad"
