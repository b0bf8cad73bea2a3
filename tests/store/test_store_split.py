"""The C span splitter gives exactly extract_rows' rows, or None (fall back), never a wrong row."""

from __future__ import annotations

import os
import random
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from opentelemetry.exporter.otlp.proto.common.trace_encoder import encode_spans
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest
from opentelemetry.proto.common.v1.common_pb2 import (
    AnyValue,
    ArrayValue,
    EntityRef,
    InstrumentationScope,
    KeyValue,
    KeyValueList,
)
from opentelemetry.proto.resource.v1.resource_pb2 import Resource
from opentelemetry.proto.trace.v1.trace_pb2 import ResourceSpans, ScopeSpans, Span, Status
from opentelemetry.sdk.resources import Resource as SdkResource
from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import Link, SpanContext, SpanKind, StatusCode, TraceFlags
from opentelemetry.trace.status import Status as SdkStatus

from vauban_trace.store import _split
from vauban_trace.store._ingest import SpanRow, extract_rows
from vauban_trace.store._split import native_available, split_rows
from vauban_trace.store._wire import ld

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "bench"))
from bench_collector import make_batch  # noqa: E402

native = pytest.mark.skipif(not native_available(), reason="C extension _cwire not built")
_T = 1_700_000_000_000_000_000


def _py(data: bytes) -> tuple[list[SpanRow], list[str]]:
    return extract_rows(ExportTraceServiceRequest.FromString(data).resource_spans)


def _same(data: bytes) -> list[SpanRow]:
    rows = split_rows(data)
    assert rows is not None
    expected, problems = _py(data)
    assert not problems
    assert rows == expected
    assert all(type(r) is SpanRow for r in rows)
    return rows


# --- canonical inputs: bench payloads, the real SDK exporter, hypothesis ---------------------------------


@native
def test_bench_payloads_match() -> None:
    for i in range(3):
        rows = _same(make_batch(i))
        assert len(rows) == 512
        assert rows[0].service == "bench" and rows[1].parent_span_id == rows[0].span_id


def _sdk_request() -> bytes:
    mem = InMemorySpanExporter()
    resources = [
        SdkResource({"service.name": "svc-a", "n": 3, "f": 1.5, "b": False, "l": ["x", "ü"]}, "https://schema/1"),
        SdkResource({}),  # empty resource: the field is written, with nothing inside
        SdkResource({"host.name": "h", "service.name": "svc-b"}),  # service.name not first
        SdkResource({"service.name": 7}),  # not a string: no service
    ]
    spans: list[ReadableSpan] = []
    for ri, res in enumerate(resources):
        provider = TracerProvider(resource=res)
        provider.add_span_processor(SimpleSpanProcessor(mem))
        tracers = [
            provider.get_tracer("lib.a"),
            provider.get_tracer("lib.b", "2.0", schema_url="https://scope/schema", attributes={"scope.attr": 1}),
            provider.get_tracer("lib.c", "", attributes={"nested": ["a", "b"]}),
        ]
        for ti, tracer in enumerate(tracers):
            with tracer.start_as_current_span(f"root-{ri}-{ti}", kind=SpanKind.SERVER, attributes={
                "s": "text", "empty": "", "i": 0, "neg": -5, "big": 2**62, "f": 0.0, "g": -1.25,
                "t": True, "no": False, "ss": ["a", "", "é"], "is": [0, 1, -2], "fs": [0.5], "bs": [True, False],
                "unicode": "日本語 🚀",
            }) as root:
                root.add_event("ev", {"k": "v", "z": 0})
                root.add_event("")
                other = SpanContext(0x1234, 0x5678, is_remote=True, trace_flags=TraceFlags(1))
                with tracer.start_as_current_span("child", links=[Link(other, {"la": [1, 2]}), Link(other)]) as ch:
                    ch.set_status(SdkStatus(StatusCode.ERROR, "boom"))
                with tracer.start_as_current_span("ok", kind=SpanKind.CLIENT) as ok:
                    ok.set_status(SdkStatus(StatusCode.OK))
    spans.extend(mem.get_finished_spans())
    ctx = SpanContext(0xABC, 0xDEF, is_remote=False)
    spans.append(ReadableSpan(  # no instrumentation scope at all, zero times, remote parent
        name="bare", context=ctx, parent=SpanContext(0xABC, 0x1, is_remote=True), resource=resources[0],
        start_time=0, end_time=0, instrumentation_scope=None))
    data: bytes = encode_spans(spans).SerializeToString()
    return data


@native
def test_sdk_exporter_requests_match() -> None:
    data = _sdk_request()
    rows = _same(data)
    assert len(rows) == 4 * 3 * 3 + 1
    assert {r.service for r in rows} == {"svc-a", None, "svc-b"}
    assert any(r.env[1] for r in rows) and any(r.env[3] for r in rows)


_keys = st.sampled_from(["service.name", "k", "", "é", "x" * 200])
_scalars = st.one_of(
    st.builds(lambda v: AnyValue(string_value=v), st.text(max_size=20)),
    st.builds(lambda v: AnyValue(bool_value=v), st.booleans()),
    st.builds(lambda v: AnyValue(int_value=v), st.integers(-(2**63), 2**63 - 1)),
    st.builds(lambda v: AnyValue(double_value=v), st.floats()),  # NaN and -0.0 included
    st.builds(lambda v: AnyValue(bytes_value=v), st.binary(max_size=20)),
    st.builds(lambda v: AnyValue(string_value_strindex=v), st.integers(-(2**31), 2**31 - 1)),
    st.just(AnyValue()),
)
_values = st.recursive(_scalars, lambda inner: st.one_of(
    st.builds(lambda vs: AnyValue(array_value=ArrayValue(values=vs)), st.lists(inner, max_size=3)),
    st.builds(lambda kvs: AnyValue(kvlist_value=KeyValueList(values=[KeyValue(key=k, value=v) for k, v in kvs])),
              st.lists(st.tuples(_keys, inner), max_size=3)),
), max_leaves=8)
_kv = st.one_of(
    st.builds(lambda k, v: KeyValue(key=k, value=v), _keys, _values),
    st.builds(lambda k: KeyValue(key=k), _keys),
    st.builds(lambda i: KeyValue(key_strindex=i), st.integers(-(2**31), 2**31 - 1)),
)
_attrs = st.lists(_kv, max_size=4)
_u32 = st.sampled_from([0, 1, 300, 2**32 - 1])
_times = st.one_of(st.integers(0, 2**63 - 1), st.just(0))
_trace_ids = st.sampled_from([bytes(range(1, 17)), b"\x00" * 15 + b"\x01", b"\xff" * 16])
_span_ids = st.sampled_from([b"\x01" * 8, b"\x00" * 7 + b"\x09", b"\xab" * 8])
# one span of some requests gets a value the store rejects
_spoilers = st.sampled_from([("trace_id", b""), ("trace_id", bytes(16)), ("trace_id", b"\x01" * 8),
                             ("span_id", b""), ("span_id", bytes(8)), ("span_id", b"\x01" * 16),
                             ("parent_span_id", b"\x03"), ("start_time_unix_nano", 2**63),
                             ("end_time_unix_nano", 2**64 - 1)])
_parents = st.sampled_from([b"", b"", bytes(8), b"\x02" * 8, b"\x03"])


@st.composite
def _spans(draw: Any) -> Span:
    s = Span(trace_id=draw(_trace_ids), span_id=draw(_span_ids), parent_span_id=draw(_parents),
             trace_state=draw(st.sampled_from(["", "a=b"])), name=draw(st.text(max_size=10)),
             kind=draw(st.integers(-(2**31), 2**31 - 1)), start_time_unix_nano=draw(_times),
             end_time_unix_nano=draw(_times), attributes=draw(_attrs), dropped_attributes_count=draw(_u32),
             dropped_events_count=draw(_u32), dropped_links_count=draw(_u32), flags=draw(_u32))
    for _ in range(draw(st.integers(0, 2))):
        s.events.add(time_unix_nano=draw(_times), name=draw(st.text(max_size=5)), attributes=draw(_attrs),
                     dropped_attributes_count=draw(_u32))
    for _ in range(draw(st.integers(0, 2))):
        s.links.add(trace_id=draw(st.sampled_from([b"", b"\x05" * 16])), span_id=draw(st.sampled_from([b"", b"\x06" * 8])),
                    trace_state=draw(st.sampled_from(["", "x=y"])), attributes=draw(_attrs),
                    dropped_attributes_count=draw(_u32), flags=draw(_u32))
    status = draw(st.one_of(st.none(), st.builds(Status, message=st.text(max_size=5),
                                                   code=st.integers(-(2**31), 2**31 - 1))))
    if status is not None:
        s.status.CopyFrom(status)
    return s


_resources = st.one_of(st.none(), st.builds(
    lambda a, d, e: Resource(attributes=a, dropped_attributes_count=d, entity_refs=e), _attrs, _u32,
    st.lists(st.builds(EntityRef, schema_url=st.sampled_from(["", "u"]), type=st.sampled_from(["", "t"]),
                       id_keys=st.lists(st.sampled_from(["", "a"]), max_size=2),
                       description_keys=st.lists(st.sampled_from(["", "d"]), max_size=2)), max_size=2)))
_scopes = st.one_of(st.none(), st.builds(InstrumentationScope, name=st.sampled_from(["", "lib"]),
                                         version=st.sampled_from(["", "1"]), attributes=_attrs,
                                         dropped_attributes_count=_u32))
_schemas = st.sampled_from(["", "https://s/1"])


@st.composite
def _requests(draw: Any) -> ExportTraceServiceRequest:
    req = ExportTraceServiceRequest()
    for _ in range(draw(st.integers(0, 3))):
        rs: ResourceSpans = req.resource_spans.add(schema_url=draw(_schemas))
        res = draw(_resources)
        if res is not None:
            rs.resource.CopyFrom(res)
        for _ in range(draw(st.integers(0, 3))):
            ss: ScopeSpans = rs.scope_spans.add(schema_url=draw(_schemas))
            scope = draw(_scopes)
            if scope is not None:
                ss.scope.CopyFrom(scope)
            ss.spans.extend(draw(st.lists(_spans(), max_size=3)))
    spans = [s for rs in req.resource_spans for ss in rs.scope_spans for s in ss.spans]
    spoil = draw(st.one_of(st.none(), st.none(), st.none(), _spoilers))
    if spans and spoil is not None:
        setattr(spans[draw(st.integers(0, len(spans) - 1))], *spoil)
    return req


_handled = [0]


@native
@settings(max_examples=250, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(_requests())
def test_random_requests_match_or_bail_on_rejected_spans(req: ExportTraceServiceRequest) -> None:
    for data in (req.SerializeToString(), req.SerializeToString(deterministic=True)):
        rows = split_rows(data)
        expected, problems = _py(data)
        spans = [s for rs in req.resource_spans for ss in rs.scope_spans for s in ss.spans]
        late = any(s.start_time_unix_nano >= 2**63 or s.end_time_unix_nano >= 2**63 for s in spans)
        if problems or late:
            assert rows is None
        else:
            assert rows == expected  # canonical upb output is always handled natively
            _handled[0] += len(rows)


# --- non-canonical inputs: upb accepts them, the splitter declines --------------------------------------

_TID, _SID = bytes(range(1, 17)), b"\x07" * 8
_SPAN = b"\x0a\x10" + _TID + b"\x12\x08" + _SID + b"\x2a\x01a"  # trace_id, span_id, name "a"


def _req(span: bytes, resource: bytes | None = None, scope: bytes | None = None) -> bytes:
    ss = (ld(1, scope) if scope is not None else b"") + ld(2, span)
    return ld(1, (ld(1, resource) if resource is not None else b"") + ld(2, ss))


@native
def test_hand_built_canonical_span_matches() -> None:
    assert Span(trace_id=_TID, span_id=_SID, name="a").SerializeToString() == _SPAN
    _same(_req(_SPAN, b"", b""))
    _same(_req(_SPAN + b"\x85\x01\x01\x00\x00\x00"))  # flags (16) after everything else


_KV = b"\x0a\x01k\x12\x02\x18\x05"  # key "k", value int 5


@native
@pytest.mark.parametrize("data", [
    _req(b"\x12\x08" + _SID + b"\x0a\x10" + _TID + b"\x2a\x01a"),  # span fields reordered
    _req(_SPAN + b"\x2a\x01b"),  # duplicated singular field
    _req(_SPAN + b"\x30\x00"),  # explicit zero enum
    _req(_SPAN + b"\x50\x00"),  # explicit zero uint32
    _req(_SPAN + b"\x41" + bytes(8)),  # explicit zero fixed64 (end time)
    _req(_SPAN + b"\x88\x01\x01"),  # unknown field 17
    _req(_SPAN + b"\xf8\x07\x01"),  # unknown field 127
    _req(_SPAN + b"\x30\x81\x00"),  # overlong varint (kind 1)
    _req(_SPAN[:-3] + b"\x2a\x81\x00a"),  # overlong length
    _req(_SPAN + b"\x30\xff\xff\xff\xff\x0f"),  # int32 -1 in 5 bytes (upb writes 10)
    _req(_SPAN + b"\x50\x80\x80\x80\x80\x10"),  # uint32 field past 2^32 (upb truncates)
    _req(_SPAN + b"\x4a\x00\x50\x01\x4a\x00"),  # repeated field not contiguous
    _req(_SPAN + b"\x7a\x02\x18\x00"),  # status with explicit zero code
    _req(_SPAN + b"\x4a\x05\x12\x00\x0a\x01k"),  # KeyValue: value before key
    _req(_SPAN + b"\x4a\x07\x0a\x01k\x12\x02\x10\x02"),  # bool_value 2 (upb writes 1)
    _req(_SPAN + b"\x4a\x09\x0a\x01k\x12\x04\x10\x01\x18\x05"),  # two oneof members
    _req(_SPAN + b"\x4a\x05\x0a\x01k\x1a\x00"),  # AnyValue wire type mismatch (string where message)
    _req(_SPAN, resource=b"\x10\x00"),  # resource: explicit zero dropped count
    _req(_SPAN, resource=b"\x0a" + bytes([len(_KV)]) + _KV + b"\x0a\x00\x0a\x00\x10\x01\x0a\x00"),
    _req(_SPAN, scope=b"\x12\x01v\x0a\x01n"),  # scope: version before name
    _req(_SPAN, scope=b"\x0a\x00"),  # scope: explicit empty name
    ld(1, ld(2, ld(2, _SPAN)) + ld(1, b"")),  # ResourceSpans: resource after scope_spans
    ld(1, ld(2, ld(3, b"u") + ld(2, _SPAN))),  # ScopeSpans: schema_url before spans
    ld(1, ld(2, ld(2, _SPAN)) + b"\x1a\x00"),  # ResourceSpans: explicit empty schema_url
    _req(_SPAN) + b"\x10\x01",  # request: unknown field
])
def test_non_canonical_inputs_fall_back(data: bytes) -> None:
    ExportTraceServiceRequest.FromString(data)  # upb accepts it ...
    assert split_rows(data) is None  # ... but the bytes are not what upb would write


@native
def test_bad_span_anywhere_falls_back() -> None:
    base = ExportTraceServiceRequest.FromString(make_batch(0))
    spans = base.resource_spans[0].scope_spans[0].spans
    for field, value in [("trace_id", b""), ("trace_id", bytes(16)), ("span_id", b"\x01" * 7),
                         ("span_id", bytes(8)), ("parent_span_id", b"\x01\x02\x03"),
                         ("start_time_unix_nano", 2**63), ("end_time_unix_nano", 2**64 - 1)]:
        for index in (0, 255, 511):
            req = ExportTraceServiceRequest()
            req.CopyFrom(base)
            setattr(req.resource_spans[0].scope_spans[0].spans[index], field, value)
            assert split_rows(req.SerializeToString()) is None, (field, index)
    assert len(spans) == 512


@native
def test_truncations_and_bit_flips_never_crash() -> None:
    rng = random.Random(1234)
    sources = [_sdk_request(), make_batch(7)[:6000], _req(_SPAN, b"\x0a" + bytes([len(_KV)]) + _KV, b"\x0a\x01n")]
    accepted = 0
    for _ in range(1500):
        src = rng.choice(sources)
        buf = bytearray(src)
        what = rng.random()
        if what < 0.3:
            buf = buf[: rng.randrange(len(buf))]
        elif what < 0.9:
            for _ in range(rng.randint(1, 3)):
                buf[rng.randrange(len(buf))] ^= 1 << rng.randrange(8)
        else:
            buf[rng.randrange(len(buf))] = rng.randrange(256)
        data = bytes(buf)
        rows = split_rows(data)
        if rows is None:
            continue
        accepted += 1
        expected, problems = _py(data)  # raises if upb rejects bytes the splitter took: it must not
        assert not problems and rows == expected
    assert split_rows(b"\xff" * 11) is None and split_rows(b"") == []
    assert accepted > 0


def _nested_span(levels: int) -> bytes:
    value = b"\x18\x01"  # AnyValue int 1, in ``levels`` arrays
    for _ in range(levels):
        value = ld(5, ld(1, value))
    return _SPAN + ld(9, ld(1, b"deep") + ld(2, value))


@native
def test_deep_nesting() -> None:
    _same(_req(_nested_span(40)))  # within upb's depth limit: handled
    deep = _req(_nested_span(70))
    assert split_rows(deep) is None  # past the splitter's limit: no recursion without bound ...
    with pytest.raises(Exception, match="Depth"):
        ExportTraceServiceRequest.FromString(deep)  # ... and upb refuses it anyway


@native
def test_no_leak_over_many_calls() -> None:
    def rss() -> int:
        with open("/proc/self/statm") as f:
            return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")

    good, bad = _sdk_request(), _req(_SPAN + b"\x2a\x01b")
    for _ in range(2000):
        split_rows(good)
        split_rows(bad)
    before = rss()
    for _ in range(20000):
        split_rows(good)
        split_rows(bad)
    assert rss() - before < 4 << 20


def test_disabled_by_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(_split, "_native", None)
    assert split_rows(make_batch(0)) is None and not native_available()
    out = subprocess.run(
        [sys.executable, "-c", "from vauban_trace.store._split import split_rows, native_available as n\n"
         "print(split_rows(b''), n())"],
        env={**os.environ, "VAUBAN_TRACE_NO_NATIVE": "1"}, capture_output=True, text=True, check=True,
    )
    assert out.stdout.split() == ["None", "False"]


@native
def test_random_requests_were_mostly_handled() -> None:
    if _handled[0] == 0:  # the property test did not run first (e.g. -k selection)
        pytest.skip("runs after test_random_requests_match_or_bail_on_rejected_spans")
    assert _handled[0] > 100
