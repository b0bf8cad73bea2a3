"""rebuild_documents: the native accelerator gives byte-identical documents to the Python rebuild.

Differential tests: every document of the C road is compared with ``rebuild_traces`` +
``to_json()`` (JSON text byte for byte, and every summary field), on benchmark batches, real SDK
traces (the project's own instrumentation and the torch executor), hand-built edge cases, and
thousands of seeded mutations and byte corruptions (where the C road must either bail or agree).
"""

from __future__ import annotations

import json
import os
import random
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest
from rebuild_documents_helpers import (
    T0,
    TraceBuilder,
    artifact,
    check,
    event,
    kv,
    native_result,
    python_result,
    rich_trace,
    rng_value,
    sid,
    split_per_trace,
    tid,
)
from rebuild_helpers import SdkHarness, emit_vauban_request

from vauban_trace import semconv as sc
from vauban_trace._exceptions import RebuildError
from vauban_trace.contract import ArtifactKind, MissingReason, Provenance, SupportLevel, Trace
from vauban_trace.rebuild import _documents as documents
from vauban_trace.rebuild import native_available, rebuild_documents, rebuild_traces

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT / "bench"))
from bench_collector import make_batch  # noqa: E402

needs_native = pytest.mark.skipif(not native_available(), reason="the _crebuild extension is not built")


# --- 1. differential ------------------------------------------------------------------------


@needs_native
def test_bench_batches_take_the_native_road_and_match() -> None:
    for index in range(3):
        parts = split_per_trace(make_batch(index))
        assert len(parts) == 32
        for data in parts:
            doc = check(data, must_be_native=True)
            assert doc is not None and doc.span_count == 16 and len(doc.stages) == 15
            assert rebuild_documents(data)[0].native


@needs_native
@pytest.mark.parametrize("kwargs", [{}, {"fail_decode": True}])
def test_sdk_traces_take_the_native_road_and_match(kwargs: dict[str, Any]) -> None:
    h = SdkHarness()
    try:
        emit_vauban_request(h, **kwargs)
        data = h.request().SerializeToString()
    finally:
        h.provider.shutdown()
    doc = check(data, must_be_native=True)
    assert doc is not None and doc.service == "rebuild-tests" and doc.root_labels == ("tiny-llama", None, None)
    trace = doc.trace()
    assert trace.to_json() == doc.json and trace.complete
    if kwargs:
        assert trace.spans_for_stage("decode")[0].error == "RuntimeError: boom"


@needs_native
def test_sdk_spill_trace_falls_back_with_the_same_result() -> None:
    h = SdkHarness()
    try:
        emit_vauban_request(h, spill_events=3)
        data = h.request().SerializeToString()
    finally:
        h.provider.shutdown()
    assert native_result(data) is None  # spill spans are the Python road's job
    docs = rebuild_documents(data)
    assert [d.native for d in docs] == [False]
    assert docs[0].json == rebuild_traces(data)[0].to_json()


@needs_native
def test_torch_executor_traces_take_the_native_road(tmp_path: Path) -> None:
    pytest.importorskip("torch")
    from opentelemetry.exporter.otlp.proto.common.trace_encoder import encode_spans
    from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

    import vauban_trace as vt
    from vauban_trace.executors.torch import TorchExecutor
    from vauban_trace.executors.torch.tiny import cached_tiny_model

    memory = InMemorySpanExporter()
    session = vt.configure(store_dir=tmp_path / "store", exporter=[memory])
    try:
        ex = TorchExecutor.from_pretrained(cached_tiny_model("llama", hidden_size=32, num_layers=2))
        ex.run(ex.make_request(["Hello world"], layers=(0, 1)), max_new_tokens=3)
    finally:
        session.shutdown()
    spans = memory.get_finished_spans()
    parts = split_per_trace(encode_spans(spans).SerializeToString())
    assert parts
    for data in parts:
        doc = check(data, must_be_native=True)
        assert doc is not None and doc.stages


@needs_native
@pytest.mark.parametrize("stages,per_stage", [(1, 0), (4, 1), (9, 3)])
def test_hand_built_rich_traces_match(stages: int, per_stage: int) -> None:
    doc = check(rich_trace(f"r{stages}", n_stages=stages, artifacts_per_stage=per_stage).data(), must_be_native=True)
    assert doc is not None
    trace = Trace.from_json(doc.json)
    assert len(trace.artifacts) == stages * per_stage and trace.request is not None
    assert trace.capabilities is not None and trace.capabilities.notes["can_inspect_weights"] == "3"
    assert doc.root_labels == ("tiny-llama", "token_count", 64)


def _plain_otel(tag: str, *, status: int = 0, message: str = "", remote: bool = False) -> bytes:
    b = TraceBuilder(tag, resource={sc.SERVICE_NAME: "plain", "n": 1.5})
    root_parent = sid("caller") if remote else b""
    root_attrs: dict[str, Any] = {"http.method": "GET", sc.ERROR_TYPE: "Timeout"}
    if remote:
        root_attrs[sc.TRACE_ROOT] = True
    root = b.span("GET /", sid(tag + "r"), root_parent, start=T0, end=T0 + 5000, attrs=root_attrs,
                  status=status, message=message)
    event(root, sc.EXCEPTION_EVENT, T0 + 10, {sc.EXCEPTION_TYPE: "ValueError", sc.EXCEPTION_MESSAGE: ""})
    event(root, "log", T0 + 11, {"msg": "\u2603", "n": [1, 2], "kv": {"x": None}})
    b.span("db", sid(tag + "c"), sid(tag + "r"), start=T0 + 100, end=T0 + 50, attrs={"db.system": "sqlite"})
    b.span("zero", sid(tag + "z"), sid(tag + "r"), start=0, end=0)
    return b.data()


@needs_native
@pytest.mark.parametrize("status,message", [(0, ""), (1, ""), (2, ""), (2, "went wrong \u00e9")])
@pytest.mark.parametrize("remote", [False, True])
def test_plain_otel_traces_status_errors_and_remote_parents(status: int, message: str, remote: bool) -> None:
    doc = check(_plain_otel(f"p{status}{remote}", status=status, message=message, remote=remote),
                must_be_native=True)
    assert doc is not None
    trace = doc.trace()
    root = trace.root
    assert root is not None and root.parent_id is None
    if remote:
        assert root.metadata["remote_parent_id"] == sid("caller").hex()
    if status == 2:
        assert root.error == (message or "ValueError")


@needs_native
def test_summary_fields() -> None:
    b = TraceBuilder("summary", resource={"service.name": "s", "x": [1]})
    root = sid("summary-root")
    b.span("root", root, start=T0, end=T0 + 10**9, attrs={sc.TRACE_ROOT: True, sc.SWEEP_AXIS: ["list"],
                                                         sc.GEN_AI_REQUEST_MODEL: 3.5, sc.SWEEP_AXIS_VALUE: True})
    b.span("s1", sid("s1"), root, start=T0 + 5, end=T0 + 4, attrs={sc.STAGE: "forward"})  # end < start
    b.span("s2", sid("s2"), root, start=T0 + 6, end=T0 + 9, attrs={
        sc.STAGE: "decode", sc.usl_provenance("duration_s"): "unavailable",
        sc.usl("sync_points"): 4, sc.usl_provenance("sync_points"): "derived", sc.usl("input_bytes"): 2.0})
    doc = check(b.data(), must_be_native=True)
    assert doc is not None
    assert (doc.start_unix_nano, doc.end_unix_nano, doc.span_count, doc.root_name) == (T0, T0 + 10**9, 3, "root")
    assert doc.root_labels == (3.5, None, True)
    assert [(s.stage, s.duration_s, s.input_bytes, s.sync_points, s.sync_provenance) for s in doc.stages] == [
        ("forward", None, None, None, None), ("decode", 3e-09, 2, 4, "derived")]


@needs_native
@pytest.mark.parametrize("case", ["multi_root", "orphan", "dup_span", "two_traces", "bytes_value", "nan",
                                  "repeated_key", "bad_kind", "bad_provenance", "second_resource", "bad_digest",
                                  "unknown_input", "dup_artifact", "schema_major", "no_root"])
def test_unclean_traces_fall_back_with_identical_results(case: str) -> None:
    b = TraceBuilder("unclean-" + case)
    root = sid("u-root")
    rattrs: dict[str, Any] = {sc.TRACE_ROOT: True, sc.REQUEST_INPUT_TEXT: "x"}
    if case == "schema_major":
        rattrs[sc.TRACE_SCHEMA_VERSION] = "2.0"
    if case == "no_root":
        root_sp = b.span("root", root, sid("elsewhere"), attrs={})
    else:
        root_sp = b.span("root", root, attrs=rattrs)
    del root_sp
    attrs: dict[str, Any] = {sc.STAGE: "forward"}
    if case == "bytes_value":
        attrs["b"] = b"\x01"
    if case == "nan":
        attrs["f"] = float("nan")
    if case == "bad_provenance":
        attrs[sc.usl_provenance("token_count")] = "guessed"
    if case == "unknown_input":
        attrs[sc.SPAN_INPUT_ARTIFACT_IDS] = ["nope"]
    sp = b.span("forward", sid("u-f"), root, attrs=attrs)
    if case == "repeated_key":
        sp.attributes.append(kv(sc.STAGE, "decode"))
    art = artifact("a1", kind="bogus" if case == "bad_kind" else "activation")
    if case == "bad_digest":
        art[sc.ARTIFACT_DIGEST] = "sha256:XYZ"
    event(sp, sc.EVENT_ARTIFACT, T0 + 1, art)
    if case == "dup_artifact":
        event(sp, sc.EVENT_ARTIFACT, T0 + 2, artifact("a1"))
    if case == "multi_root":
        b.span("other", sid("u-o"), attrs={sc.TRACE_ROOT: True})
    if case == "orphan":
        b.span("orphan", sid("u-x"), sid("missing"))
    if case == "dup_span":
        b.span("forward", sid("u-f"), root, attrs={sc.STAGE: "forward", "more": 1})
    if case == "two_traces":
        b.scope.spans.add(trace_id=tid("other"), span_id=sid("o"), name="o", start_time_unix_nano=T0)
    if case == "second_resource":
        rs = b.req.resource_spans.add()
        rs.resource.attributes.append(kv(sc.SERVICE_NAME, "other"))
        rs.scope_spans.add().spans.add(trace_id=b.trace_id, span_id=sid("u-2"), parent_span_id=root, name="x")
    data = b.data()
    assert native_result(data) is None
    ref = python_result(data)
    if ref is None:
        with pytest.raises(RebuildError):
            rebuild_documents(data)
        return
    docs = rebuild_documents(data)
    assert docs == ref and not any(d.native for d in docs)
    assert [d.json for d in docs] == [t.to_json() for t in rebuild_traces(data)]


# --- 2. mutation fuzz -----------------------------------------------------------------------

_WORDS = sorted({*(m.value for m in ArtifactKind), *(m.value for m in MissingReason),
                 *(m.value for m in Provenance), *(m.value for m in SupportLevel), "forward", "decode", "1.0",
                 "cpu", "a1", "forward-2-0", "tokenize-0-0"})
_KEYS = [*sc.all_attribute_names(), sc.SERVICE_NAME, sc.ERROR_TYPE, "events", "remote_parent_id", "app.x", ""]


def _mutate(req: ExportTraceServiceRequest, rng: random.Random) -> None:
    spans = [s for rs in req.resource_spans for ss in rs.scope_spans for s in ss.spans]
    sp = rng.choice(spans)
    op = rng.randrange(14)
    if op <= 3:  # set or add an attribute
        key = rng.choice(_KEYS) if rng.random() < 0.9 else rng.choice([kv.key for kv in sp.attributes] or ["k"])
        for i, a in enumerate(sp.attributes):
            if a.key == key and rng.random() < 0.8:
                sp.attributes[i].CopyFrom(kv(key, rng_value(rng, _WORDS)))
                return
        sp.attributes.append(kv(key, rng_value(rng, _WORDS)))
    elif op == 4 and len(sp.attributes):
        del sp.attributes[rng.randrange(len(sp.attributes))]
    elif op == 5 and sp.events:  # event attribute
        ev = rng.choice(sp.events)
        key = rng.choice(_KEYS)
        ev.attributes.append(kv(key, rng_value(rng, _WORDS)))
        if rng.random() < 0.5 and len(ev.attributes) > 1:
            del ev.attributes[rng.randrange(len(ev.attributes))]
    elif op == 6:  # times
        t = rng.choice([0, 1, T0, T0 + 7, 2**63, 2**64 - 1, max(0, sp.start_time_unix_nano - 1)])
        if rng.random() < 0.5:
            sp.start_time_unix_nano = t
        else:
            sp.end_time_unix_nano = t
    elif op == 7:  # parent
        other = rng.choice(spans)
        sp.parent_span_id = rng.choice([b"", b"\x00" * 8, other.span_id, sid("nowhere"), b"\x01\x02"])
    elif op == 8:  # ids
        other = rng.choice(spans)
        if rng.random() < 0.5:
            sp.span_id = rng.choice([other.span_id, b"\x00" * 8, b"short"])
        else:
            sp.trace_id = rng.choice([tid("x"), b"\x00" * 16, b"bad"])
    elif op == 9:  # events
        name = rng.choice([sc.EVENT_ARTIFACT, sc.EVENT_ARTIFACT_MISSING, sc.EXCEPTION_EVENT, "other"])
        attrs = artifact(rng.choice(_WORDS)) if name == sc.EVENT_ARTIFACT else {
            rng.choice(_KEYS): rng_value(rng, _WORDS) for _ in range(rng.randrange(4))}
        event(sp, name, rng.choice([0, T0, T0 + 3, 2**64 - 1]), attrs)
    elif op == 10 and sp.events:
        rng.choice(sp.events).name = rng.choice([sc.EVENT_ARTIFACT, sc.EVENT_ARTIFACT_MISSING, "x",
                                                 sc.EXCEPTION_EVENT])
    elif op == 11:  # status
        sp.status.code = rng.choice([0, 1, 2])  # type: ignore[assignment]
        sp.status.message = rng.choice(["", "boom", "\U0001F4A5"])
    elif op == 12:  # name
        sp.name = rng.choice(["", "n", "\u00e9", "x" * 300])
    else:  # resource
        rs = req.resource_spans[0]
        rs.resource.attributes.append(kv(rng.choice([sc.SERVICE_NAME, "r"]), rng_value(rng, _WORDS)))


def _seeds() -> list[bytes]:
    h = SdkHarness()
    try:
        emit_vauban_request(h, fail_decode=True)
        sdk = h.request().SerializeToString()
    finally:
        h.provider.shutdown()
    return [rich_trace("f", n_stages=3).data(), split_per_trace(make_batch(7))[0], sdk,
            _plain_otel("fz", status=2, remote=True)]


@needs_native
def test_mutations_bail_or_match() -> None:
    rng = random.Random(20261126)
    seeds = _seeds()
    native = 0
    total = 2400
    for i in range(total):
        req = ExportTraceServiceRequest.FromString(seeds[i % len(seeds)])
        for _ in range(rng.randrange(1, 4)):
            _mutate(req, rng)
        if check(req.SerializeToString(), must_be_native=False) is not None:
            native += 1
    assert native > total // 10  # the fuzz exercises the native road, not only its bail-outs


@needs_native
def test_byte_corruption_never_crashes_and_bails_or_matches() -> None:
    rng = random.Random(7)
    seeds = _seeds()
    for i in range(2400):
        data = bytearray(seeds[i % len(seeds)])
        for _ in range(rng.randrange(1, 4)):
            op = rng.randrange(3)
            pos = rng.randrange(len(data))
            if op == 0:
                data[pos] = rng.randrange(256)
            elif op == 1:
                del data[pos:pos + rng.randrange(1, 8)]
            else:
                data[pos:pos] = bytes(rng.randrange(256) for _ in range(rng.randrange(1, 4)))
        if rng.random() < 0.1:
            data = data[: rng.randrange(len(data))]
        check(bytes(data), must_be_native=False)


# --- 3. fallback and build ------------------------------------------------------------------


def test_switching_the_accelerator_off_gives_identical_documents() -> None:
    inputs = [*split_per_trace(make_batch(3))[:4], rich_trace("off").data(), make_batch(4)]
    on = [rebuild_documents(d) for d in inputs]
    previous = documents.set_native(False)
    try:
        off = [rebuild_documents(d) for d in inputs]
    finally:
        documents.set_native(previous)
    assert not native_available() or previous
    assert all(not d.native for docs in off for d in docs)
    assert [[(d.json, d.stages, d.root_labels) for d in docs] for docs in on] == [
        [(d.json, d.stages, d.root_labels) for d in docs] for docs in off]


def test_environment_switch_turns_the_accelerator_off() -> None:
    code = ("import sys; sys.path.insert(0, 'tests/rebuild'); from rebuild_documents_helpers import rich_trace; "
            "from vauban_trace.rebuild import native_available, rebuild_documents; "
            "d = rebuild_documents(rich_trace('env').data())[0]; print(native_available(), d.native, len(d.json))")
    env = {**os.environ, "VAUBAN_TRACE_NO_NATIVE": "1"}
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, env=env, capture_output=True, text=True, check=True)
    assert out.stdout.split()[:2] == ["False", "False"]
    assert int(out.stdout.split()[2]) == len(rebuild_documents(rich_trace("env").data())[0].json)


@pytest.mark.skipif(os.environ.get("VAUBAN_TRACE_REQUIRE_NATIVE") != "1", reason="VAUBAN_TRACE_REQUIRE_NATIVE unset")
def test_extension_is_built_when_required() -> None:
    assert native_available()


# --- 4. multi-trace and undecodable input ---------------------------------------------------


def test_multi_trace_input_matches_rebuild_traces() -> None:
    data = make_batch(11)
    docs = rebuild_documents(data)
    traces = rebuild_traces(data)
    assert [d.trace_id for d in docs] == [t.id for t in traces]
    assert [d.json for d in docs] == [t.to_json() for t in traces]
    assert all(d.root_labels is not None and d.root_labels[0] == "tiny-llama" for d in docs)
    assert not any(d.native for d in docs)


@pytest.mark.parametrize("data", [b"\x0a\xff", b"\xff\xff\xff", b"\x0a\x05\x0a\x03\x0a\x01"])
def test_undecodable_input_raises_like_rebuild_traces(data: bytes) -> None:
    with pytest.raises(RebuildError) as expected:
        rebuild_traces(data)
    with pytest.raises(RebuildError) as got:
        rebuild_documents(data)
    assert str(got.value) == str(expected.value)


def test_empty_input_gives_no_documents() -> None:
    assert rebuild_documents(b"") == []


def test_document_round_trips_to_the_trace() -> None:
    doc = rebuild_documents(rich_trace("rt").data())[0]
    trace = doc.trace()
    assert trace == rebuild_traces(rich_trace("rt").data())[0]
    assert json.loads(doc.json)["id"] == doc.trace_id


def test_buffer_inputs_and_wrong_types() -> None:
    data = rich_trace("buffers").data()
    expected = rebuild_documents(data)
    assert rebuild_documents(bytearray(data)) == expected == rebuild_documents(memoryview(data))
    spread = bytearray(2 * len(data))
    spread[::2] = data
    strided = rebuild_documents(memoryview(spread)[::2])  # not contiguous: the Python road
    assert [(d.json, d.stages, d.native) for d in strided] == [(d.json, d.stages, False) for d in expected]
    with pytest.raises(RebuildError):
        rebuild_documents("not protobuf")  # type: ignore[arg-type]


@needs_native
def test_wire_layout_variants() -> None:
    base = ExportTraceServiceRequest.FromString(rich_trace("layout", n_stages=3).data())
    spans = list(base.resource_spans[0].scope_spans[0].spans)
    # the same resource in several ResourceSpans and ScopeSpans, scopes with attributes
    split = ExportTraceServiceRequest()
    for i, span in enumerate(spans):
        rs = split.resource_spans.add()
        rs.resource.CopyFrom(base.resource_spans[0].resource)
        rs.schema_url = "https://opentelemetry.io/schemas/1.26.0"
        ss = rs.scope_spans.add()
        ss.scope.name = f"scope-{i % 2}"
        ss.scope.attributes.append(kv("scope.attr", [1, "x"]))
        ss.spans.append(span)
    one = check(split.SerializeToString(), must_be_native=True)
    # unknown fields (top level and inside a span) are skipped, as protobuf does
    unknown = base.SerializeToString() + b"\x98\x06\x01"
    assert one is not None and check(unknown, must_be_native=True) == one
    # links: the rebuild ignores them, the accelerator leaves them to the Python road
    linked = ExportTraceServiceRequest()
    linked.CopyFrom(base)
    linked.resource_spans[0].scope_spans[0].spans[1].links.add(trace_id=tid("l"), span_id=sid("l"))
    data = linked.SerializeToString()
    assert native_result(data) is None
    assert rebuild_documents(data)[0].json == rebuild_traces(data)[0].to_json()


@needs_native
def test_string_escaping_matches_json_dumps() -> None:
    rng = random.Random(3)
    alphabet = [chr(c) for c in range(0x90)] + ["\u00e9", "\u2028", "\u2603", "\uffff", "\U0001F600", "\U0010FFFF"]
    for i in range(1000):
        text = "".join(rng.choice(alphabet) for _ in range(rng.randrange(40)))
        b = TraceBuilder(f"esc{i}")
        b.span(text, sid(f"esc{i}"), attrs={sc.TRACE_ROOT: True, "k" + text: text, "list": [text, text[:3]]})
        check(b.data(), must_be_native=True)
