"""The hand-written wire encoding agrees with protobuf's own, for arbitrary resources and scopes."""

from __future__ import annotations

from hypothesis import given, settings
from hypothesis import strategies as st
from opentelemetry.proto.common.v1.common_pb2 import AnyValue, InstrumentationScope, KeyValue
from opentelemetry.proto.resource.v1.resource_pb2 import Resource
from opentelemetry.proto.trace.v1.trace_pb2 import ResourceSpans, ScopeSpans, Span, TracesData

from vauban_trace.store._wire import one_span_payload, traces_data_bytes

_text = st.text(max_size=300)
_resources = st.one_of(st.none(), st.lists(st.tuples(st.sampled_from(["service.name", "host", "k"]), _text),
                                            max_size=3))
_scopes = st.one_of(st.none(), st.tuples(st.sampled_from(["a", "b", ""]), st.sampled_from(["", "1.0"])))


def _resource(attrs: list[tuple[str, str]]) -> Resource:
    return Resource(attributes=[KeyValue(key=k, value=AnyValue(string_value=v)) for k, v in attrs])


@settings(max_examples=60, deadline=None)
@given(st.lists(
    st.tuples(_resources, st.sampled_from(["", "https://s/1"]), _scopes, st.sampled_from(["", "x"]),
              st.text(max_size=200), st.integers(min_value=0, max_value=2**63)),
    min_size=1, max_size=12,
))
def test_payloads_and_regrouping_match_protobuf(items: list[tuple]) -> None:  # type: ignore[type-arg]
    payloads = []
    expected = TracesData()
    groups: dict[tuple[bytes | None, str], ResourceSpans] = {}
    scope_groups: dict[tuple[bytes | None, str, bytes | None, str], ScopeSpans] = {}
    for i, (res_attrs, rs_schema, scope_t, ss_schema, name, start) in enumerate(items):
        span = Span(trace_id=b"\x01" * 16, span_id=(i + 1).to_bytes(8, "big"), name=name,
                    start_time_unix_nano=start)
        resource = _resource(res_attrs) if res_attrs is not None else None
        scope = InstrumentationScope(name=scope_t[0], version=scope_t[1]) if scope_t is not None else None
        # protobuf's own one-span message
        msg = ResourceSpans(schema_url=rs_schema)
        if resource is not None:
            msg.resource.CopyFrom(resource)
        ss = msg.scope_spans.add(schema_url=ss_schema)
        if scope is not None:
            ss.scope.CopyFrom(scope)
        ss.spans.append(span)
        rbytes = resource.SerializeToString(deterministic=True) if resource is not None else None
        sbytes = scope.SerializeToString(deterministic=True) if scope is not None else None
        payload = one_span_payload(rbytes, rs_schema, sbytes, ss_schema, span.SerializeToString(deterministic=True))
        assert payload == msg.SerializeToString(deterministic=True)
        payloads.append(payload)
        # reference regrouping with messages
        rkey = (rbytes, rs_schema)
        if rkey not in groups:
            target = expected.resource_spans.add(schema_url=rs_schema)
            if resource is not None:
                target.resource.CopyFrom(resource)
            groups[rkey] = target
        skey = (*rkey, sbytes, ss_schema)
        if skey not in scope_groups:
            sgroup = groups[rkey].scope_spans.add(schema_url=ss_schema)
            if scope is not None:
                sgroup.scope.CopyFrom(scope)
            scope_groups[skey] = sgroup
        scope_groups[skey].spans.append(span)
    got = TracesData.FromString(traces_data_bytes(payloads))
    assert got == expected
