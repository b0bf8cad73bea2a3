"""The C span encoder (``vauban_trace.instrument._cencode``) writes exactly the bytes of the
official OTLP encoder: on hypothesis-made spans (every attribute value type, nesting, events,
links, status, trace state, remote parents, dropped counts, resource and scope grouping with equal
but distinct objects, schema urls) and on real spans of the torch executor. What it declines goes
to the official encoder (counted), so ``encode_request`` is always byte-equal."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from opentelemetry.attributes import BoundedAttributes
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import Event, ReadableSpan
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.sdk.util.instrumentation import InstrumentationScope
from opentelemetry.trace import Link, SpanContext, SpanKind, Status, StatusCode, TraceFlags, TraceState

from vauban_trace.instrument import _encode
from vauban_trace.instrument._encode import ENCODE_STATS, encode_request, encode_request_official

needs_native = pytest.mark.skipif(_encode.native is None, reason="the _cencode extension is not built")


@pytest.mark.skipif(os.environ.get("VAUBAN_TRACE_REQUIRE_NATIVE") != "1", reason="VAUBAN_TRACE_REQUIRE_NATIVE unset")
def test_extension_is_built_when_required() -> None:
    # CI requires the accelerators: the tests marked needs_native must never skip there
    assert _encode.native is not None

INT64 = st.integers(min_value=-(2**63), max_value=2**63 - 1)
SCALARS = st.one_of(st.none(), st.booleans(), st.text(max_size=12), INT64, st.floats(), st.binary(max_size=8))
VALUES = st.recursive(
    SCALARS,
    lambda kids: st.one_of(
        st.lists(kids, max_size=3),
        st.lists(kids, max_size=3).map(tuple),
        st.dictionaries(st.text(max_size=6), kids, max_size=3),
    ),
    max_leaves=8,
)
KEYS = st.text(max_size=10)
ATTRS = st.dictionaries(KEYS, VALUES, max_size=5)

RESOURCES = [Resource({"service.name": "a", "n": 1}), Resource({"service.name": "a", "n": 1}),
             Resource({"service.name": "b"}, schema_url="https://opentelemetry.io/schemas/1.21.0"), Resource({})]
SCOPES = [None, InstrumentationScope("x", "1.0", "https://s/1", {"k": "v"}), InstrumentationScope("x", "1.0", "https://s/1", {"k": "v"}),
          InstrumentationScope("y"), InstrumentationScope("", None, None, None)]
TRACE_STATES = [TraceState(), TraceState([("a", "1")]), TraceState([("vendor", "x=y"), ("b", "2")])]


def _ctx(draw: Any, remote: bool | None = None) -> SpanContext:
    return SpanContext(
        trace_id=draw(st.integers(0, 2**128 - 1)), span_id=draw(st.integers(0, 2**64 - 1)),
        is_remote=draw(st.booleans()) if remote is None else remote,
        trace_flags=TraceFlags(draw(st.sampled_from([0, 1]))), trace_state=draw(st.sampled_from(TRACE_STATES)),
    )


def _attrs(draw: Any, strategy: Any = ATTRS) -> Any:
    items = draw(strategy)
    kind = draw(st.sampled_from(["dict", "bounded", "bounded2", "none"]))
    if kind == "none":
        return None
    if kind == "dict":
        return items
    return BoundedAttributes(maxlen=None if kind == "bounded" else 2, attributes=items, immutable=False)


@st.composite
def spans(draw: Any, values: Any = ATTRS) -> ReadableSpan:
    events = [Event(draw(st.text(max_size=6)), _attrs(draw, values), timestamp=draw(st.one_of(st.none(), st.integers(0, 2**64 - 1))))
              for _ in range(draw(st.integers(0, 2)))]
    links = [Link(_ctx(draw), _attrs(draw, values)) for _ in range(draw(st.integers(0, 2)))]
    code = draw(st.sampled_from(list(StatusCode)))
    return ReadableSpan(
        name=draw(st.text(max_size=10)),
        context=_ctx(draw, remote=False),
        parent=draw(st.one_of(st.none(), st.builds(lambda: None).flatmap(lambda _: st.just(_ctx(draw))))),
        resource=draw(st.sampled_from(RESOURCES)),
        attributes=_attrs(draw, values),
        events=events,
        links=links,
        kind=draw(st.sampled_from(list(SpanKind))),
        instrumentation_scope=draw(st.sampled_from(SCOPES)),
        status=Status(code, draw(st.one_of(st.none(), st.text(max_size=8))) if code is StatusCode.ERROR else None),
        start_time=draw(st.one_of(st.none(), st.integers(0, 2**64 - 1))),
        end_time=draw(st.one_of(st.none(), st.integers(0, 2**64 - 1))),
    )


@needs_native
@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.lists(spans(), max_size=6))
def test_native_bytes_equal_the_official_encoder(batch: list[ReadableSpan]) -> None:
    expected = encode_request_official(batch)
    assert _encode.native is not None
    got = _encode.native.encode_spans(batch)
    assert got == expected  # the supported domain: never declined


ODD = st.one_of(st.integers(min_value=2**63), st.integers(max_value=-(2**63) - 1), st.text(max_size=3).map(lambda s: s + "\ud800"),
                st.sets(st.integers(0, 3), max_size=2), st.just(bytearray(b"ab")), st.just(range(2)), st.just(object()))


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.lists(spans(st.dictionaries(KEYS, st.one_of(VALUES, ODD), max_size=4)), min_size=1, max_size=4))
def test_encode_request_is_byte_equal_even_when_declined(batch: list[ReadableSpan]) -> None:
    try:
        expected = encode_request_official(batch)
    except Exception as exc:  # the official encoder refuses it: so does encode_request
        with pytest.raises(type(exc)):
            encode_request(batch)
        return
    assert encode_request(batch) == expected


@needs_native
def test_declines_are_counted_and_fall_back() -> None:
    span = ReadableSpan("s", context=SpanContext(1, 2, False), resource=Resource({}), attributes={"big": 2**70, "ok": 1})
    before = (ENCODE_STATS.declined, ENCODE_STATS.official)
    assert encode_request([span]) == encode_request_official([span])  # the official drops "big" (logged)
    assert (ENCODE_STATS.declined, ENCODE_STATS.official) == (before[0] + 1, before[1] + 1)
    assert _encode.native is not None and _encode.native.encode_spans([span]) is None
    assert _encode.native.encode_spans([]) == encode_request_official([]) == b""


def test_real_torch_executor_spans_are_byte_equal(tmp_path: Path) -> None:
    pytest.importorskip("torch")
    import vauban_trace as vt
    from vauban_trace.executors.torch import TorchExecutor
    from vauban_trace.executors.torch.tiny import cached_tiny_model

    memory = InMemorySpanExporter()
    session = vt.configure(store_dir=tmp_path / "store", exporter=["embedded", memory])
    try:
        ex = TorchExecutor.from_pretrained(cached_tiny_model("llama", hidden_size=64, num_layers=2))
        prompts = ["the quick brown fox", "a tiny model"]
        ex.run(ex.make_request(prompts, logprobs=True), prompts=prompts, max_new_tokens=3)
        ex.run(ex.make_request(prompts[:1]), prompts=prompts[:1], max_new_tokens=2, ignore_eos=True)
        session.force_flush()
        got = list(memory.get_finished_spans())
    finally:
        session.shutdown()
    assert len(got) >= 6
    expected = encode_request_official(got)
    if _encode.native is not None:
        assert _encode.native.encode_spans(got) == expected
    assert encode_request(got) == expected
    for i in range(len(got)):  # every span alone too
        assert encode_request(got[i:i + 1]) == encode_request_official(got[i:i + 1])


def _stored(store: Any, trace_ids: set[str]) -> dict[str, tuple[bytes, str]]:
    return {tid: (store.spans_for_bytes(tid), store.get_trace(tid).to_json()) for tid in sorted(trace_ids)}


@pytest.mark.parametrize("native", [True, False], ids=["c-encoder", "official-encoder"])
def test_exporter_stores_what_the_official_road_stores(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, native: bool) -> None:
    """The embedded exporter (encoder bytes -> cut_request -> ingest_parts) stores the same raw span
    bytes and the same rebuilt traces as ingesting the official encoder's decoded request."""
    from opentelemetry.exporter.otlp.proto.common.trace_encoder import encode_spans
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.sdk.trace.export import SimpleSpanProcessor, SpanExportResult

    import vauban_trace as vt
    from vauban_trace.instrument import EmbeddedExporter
    from vauban_trace.rebuild import rebuild_documents
    from vauban_trace.store import TraceStore

    if not native:
        monkeypatch.setattr(_encode, "native", None)
    memory = InMemorySpanExporter()
    provider = TracerProvider(resource=Resource({"service.name": "enc"}))
    provider.add_span_processor(SimpleSpanProcessor(memory))
    for i in range(4):
        with vt.traced_request(model="tiny", tracer_provider=provider, metadata={"i": i, "tags": ["a", "b"]}):
            with vt.stage("tokenize", tracer_provider=provider, batch_size=2):
                vt.record_artifact("tokens", [1, 2, 3])
            with vt.stage("forward", tracer_provider=provider):
                pass
    got = list(memory.get_finished_spans())
    ids = {format(s.context.trace_id, "032x") for s in got}
    official = TraceStore(tmp_path / "official")
    ingested = official.ingest(encode_spans(got), snapshots=True)
    official.put_documents([(doc, 1) for snap in ingested.snapshots.values() for doc in rebuild_documents(snap.data())])
    embedded = TraceStore(tmp_path / "embedded", trace_files="on_read")
    before = ENCODE_STATS.native
    assert EmbeddedExporter(embedded).export(got) is SpanExportResult.SUCCESS
    assert ENCODE_STATS.native == before + (1 if native else 0)
    assert _stored(embedded, ids) == _stored(official, ids)
    assert not any(embedded.trace_json_path(tid).exists() for tid in ids)  # on_read: written when asked
    for tid in ids:
        path = embedded.trace_json_file(tid)
        assert path is not None and path.read_text() == official.trace_json_path(tid).read_text()
