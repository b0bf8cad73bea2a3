"""Malformed OTLP JSON and Jaeger JSON fail only with RebuildError (never another exception)."""

from __future__ import annotations

import copy
import json
from pathlib import Path
from typing import Any

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from opentelemetry.proto.trace.v1.trace_pb2 import TracesData
from rebuild_helpers import SdkHarness, emit_vauban_request

from vauban_trace import semconv as sc
from vauban_trace._exceptions import RebuildError
from vauban_trace.contract import Trace, validate_trace
from vauban_trace.rebuild import rebuild_from_json, traces_data_to_json

FIXTURES = Path("/work/shared/fixtures/backends")
DOCS = [json.loads((FIXTURES / n).read_text()) for n in (
    "jaeger_apiv3_GetTrace.json", "jaeger_v1_ui_trace_01.json", "tempo_v1_batches_trace.json")]


def _vauban_doc() -> dict[str, Any]:
    h = SdkHarness()
    emit_vauban_request(h, spill_events=2, fail_decode=True)
    td = TracesData()
    td.resource_spans.extend(h.request().resource_spans)
    h.provider.shutdown()
    return traces_data_to_json(td)


DOCS.append(_vauban_doc())

_junk = st.one_of(
    st.none(), st.booleans(), st.integers(min_value=-(2**70), max_value=2**70), st.floats(allow_nan=True),
    st.text(max_size=40), st.lists(st.integers(), max_size=3), st.dictionaries(st.text(max_size=5), st.integers(), max_size=2),
)


def _paths(doc: Any, prefix: tuple[Any, ...] = ()) -> list[tuple[Any, ...]]:
    out = [prefix]
    if isinstance(doc, dict):
        for k, v in doc.items():
            out += _paths(v, (*prefix, k))
    elif isinstance(doc, list):
        for i, v in enumerate(doc):
            out += _paths(v, (*prefix, i))
    return out


@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.sampled_from(range(len(DOCS))), st.integers(min_value=0), _junk)
def test_mutated_documents_fail_cleanly(which: int, pick: int, junk: Any) -> None:
    doc = copy.deepcopy(DOCS[which])
    paths = [p for p in _paths(doc) if p]
    path = paths[pick % len(paths)]
    target = doc
    for key in path[:-1]:
        target = target[key]
    target[path[-1]] = junk
    try:
        traces = rebuild_from_json(doc)
    except RebuildError as exc:
        assert str(exc)
        return
    for t in traces:
        validate_trace(t)
        assert Trace.from_json(t.to_json()) == t


_TYPED = [
    {"stringValue": "x"}, {"boolValue": True}, {"doubleValue": -1.5}, {"intValue": "-3"}, {"doubleValue": "NaN"},
    {"arrayValue": {"values": [{"stringValue": "a"}, {"intValue": "2"}]}},
    {"kvlistValue": {"values": [{"key": "k", "value": {"intValue": "1"}}]}}, {},
]


def test_any_typed_value_in_any_attribute_never_breaks_rebuild() -> None:
    """Well-formed OTLP with wrong-typed vauban attributes rebuilds: refusals go to problems.
    The one exception is the schema version: an unreadable one refuses the trace."""
    base = DOCS[-1]
    slots = []
    for i, rs in enumerate(base["resourceSpans"]):
        for j, ss in enumerate(rs["scopeSpans"]):
            for k, span in enumerate(ss["spans"]):
                for a in range(len(span.get("attributes", []))):
                    slots.append((i, j, k, None, a))
                for e, ev in enumerate(span.get("events", [])):
                    for a in range(len(ev.get("attributes", []))):
                        slots.append((i, j, k, e, a))
    assert len(slots) > 80
    for i, j, k, e, a in slots:
        for typed in _TYPED:
            doc = copy.deepcopy(base)
            span = doc["resourceSpans"][i]["scopeSpans"][j]["spans"][k]
            holder = span if e is None else span["events"][e]
            holder["attributes"][a]["value"] = typed
            try:
                traces = rebuild_from_json(doc)
            except RebuildError as exc:
                assert holder["attributes"][a]["key"] == sc.TRACE_SCHEMA_VERSION and typed, exc
                assert "schema_version" in str(exc) and "is not readable" in str(exc)
                continue
            for t in traces:
                validate_trace(t)
                assert Trace.from_json(t.to_json()) == t
