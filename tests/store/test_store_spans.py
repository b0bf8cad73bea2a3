"""TraceStore raw spans: idempotency, replacement, regrouping, bookkeeping, concurrency."""

from __future__ import annotations

import multiprocessing
import threading
from pathlib import Path

import pytest
from opentelemetry import trace as otel_trace
from opentelemetry.exporter.otlp.proto.common.trace_encoder import encode_spans
from opentelemetry.proto.trace.v1.trace_pb2 import ResourceSpans, TracesData
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from store_testlib import CHILD, CHILD2, ROOT, TRACE_A, TRACE_B, batch_rows, make_request, make_span

from vauban_trace.store import TraceStore, TraceStoreError


def _span_names(data: TracesData) -> list[str]:
    return [s.name for rs in data.resource_spans for ss in rs.scope_spans for s in ss.spans]


def test_add_spans_is_idempotent(tmp_path: Path) -> None:
    ts = TraceStore(tmp_path)
    req = make_request(make_span(TRACE_A, ROOT, "root"), make_span(TRACE_A, CHILD, "tokenize", parent=ROOT))
    assert ts.add_spans(req) == (2, 0)
    version = ts.pending_traces()[0].version
    assert ts.add_spans(req) == (0, 2)
    assert ts.add_spans(TracesData(resource_spans=req.resource_spans)) == (0, 2)
    assert ts.pending_traces()[0].version == version  # duplicates change nothing
    assert ts.raw_span_count(TRACE_A) == 2


def test_changed_span_replaces_stored_one(tmp_path: Path) -> None:
    ts = TraceStore(tmp_path)
    ts.add_spans(make_request(make_span(TRACE_A, ROOT, "root", end=2_000)))
    v1 = ts.pending_traces()[0].version
    assert ts.add_spans(make_request(make_span(TRACE_A, ROOT, "root", end=9_000))) == (1, 0)
    spans = [s for rs in ts.spans_for(TRACE_A).resource_spans for ss in rs.scope_spans for s in ss.spans]
    assert len(spans) == 1 and spans[0].end_time_unix_nano == 9_000
    assert ts.pending_traces()[0].version == v1 + 1


def test_same_span_twice_in_one_request(tmp_path: Path) -> None:
    ts = TraceStore(tmp_path)
    span = make_span(TRACE_A, ROOT, "root")
    assert ts.add_spans(make_request(span, span)) == (1, 1)


def test_spans_for_regroups_by_resource_and_scope(tmp_path: Path) -> None:
    ts = TraceStore(tmp_path)
    ts.add_spans(make_request(make_span(TRACE_A, ROOT, "root", start=1), service="api", scope="s1"))
    ts.add_spans(make_request(
        make_span(TRACE_A, CHILD, "tokenize", parent=ROOT, start=2),
        make_span(TRACE_B, ROOT, "other-root", start=3),
        service="worker", scope="s1",
    ))
    ts.add_spans(make_request(make_span(TRACE_A, CHILD2, "forward", parent=ROOT, start=4), service="worker", scope="s2"))
    data = ts.spans_for(TRACE_A)
    assert isinstance(data, TracesData)
    assert _span_names(data) == ["root", "tokenize", "forward"]
    groups = {
        rs.resource.attributes[0].value.string_value: [(ss.scope.name, [s.name for s in ss.spans]) for ss in rs.scope_spans]
        for rs in data.resource_spans
    }
    assert groups == {"api": [("s1", ["root"])], "worker": [("s1", ["tokenize"]), ("s2", ["forward"])]}
    assert data.resource_spans[0].scope_spans[0].scope.version == "1.0"
    assert _span_names(ts.spans_for(TRACE_B)) == ["other-root"]
    assert _span_names(ts.spans_for("ffffffffffffffffffffffffffffffff")) == []


def test_iterable_of_resource_spans_and_wrong_types(tmp_path: Path) -> None:
    ts = TraceStore(tmp_path)
    req = make_request(make_span(TRACE_A, ROOT, "root"))
    assert ts.add_spans(list(req.resource_spans)) == (1, 0)
    with pytest.raises(TraceStoreError, match="raw data"):
        ts.add_spans(req.SerializeToString())  # type: ignore[arg-type]
    with pytest.raises(TraceStoreError, match="expected ResourceSpans"):
        ts.add_spans([object()])  # type: ignore[list-item]


def test_bad_ids_are_rejected_with_reasons(tmp_path: Path) -> None:
    ts = TraceStore(tmp_path)
    good = make_span(TRACE_A, ROOT, "good")
    zero = make_span("0" * 32, ROOT, "zero-trace")
    short = make_span(TRACE_A, ROOT, "short")
    short.span_id = b"\x01\x02"
    result = ts.ingest(make_request(good, zero, short))
    assert (result.accepted, result.duplicates, result.rejected) == (1, 0, 2)
    assert any("zero-trace" in p and "trace_id" in p for p in result.problems)
    assert any("short" in p and "span_id" in p for p in result.problems)
    assert result.trace_ids == (TRACE_A,)
    assert ts.add_spans(make_request(zero)) == (0, 0)


def test_bookkeeping_for_the_assembler(tmp_path: Path) -> None:
    ts = TraceStore(tmp_path)
    ts.add_spans(make_request(make_span(TRACE_A, CHILD, "tokenize", parent=ROOT, start=50, end=60), service="svc"))
    (p,) = ts.pending_traces()
    assert (p.trace_id, p.has_root, p.root_name, p.span_count, p.service) == (TRACE_A, False, None, 1, "svc")
    assert p.first_received_unix_nano == p.last_received_unix_nano and p.rebuilt_version is None
    ts.add_spans(make_request(make_span(TRACE_A, ROOT, "text_completion tiny", start=10, end=100), service="svc"))
    (q,) = ts.pending_traces()
    assert (q.has_root, q.root_name, q.span_count) == (True, "text_completion tiny", 2)
    assert q.first_received_unix_nano == p.first_received_unix_nano
    assert q.last_received_unix_nano >= p.last_received_unix_nano and q.version > p.version
    assert ts.trace_ids_touched_since(q.last_received_unix_nano) == [TRACE_A]
    assert ts.trace_ids_touched_since(q.last_received_unix_nano + 1) == []


def test_real_sdk_spans_round_trip(tmp_path: Path) -> None:
    exporter = InMemorySpanExporter()
    provider = TracerProvider(resource=Resource.create({"service.name": "sdk-svc"}))
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    tracer = provider.get_tracer("vauban.test", "0.1")
    with tracer.start_as_current_span("request") as root:
        root.set_attribute("k", "v")
        with tracer.start_as_current_span("forward") as child:
            child.add_event("vauban.artifact", {"x": 1})
    provider.shutdown()
    finished = exporter.get_finished_spans()
    request = encode_spans(finished)
    ts = TraceStore(tmp_path)
    assert ts.add_spans(request) == (2, 0)
    trace_id = otel_trace.format_trace_id(finished[0].context.trace_id)
    data = ts.spans_for(trace_id)
    assert sorted(_span_names(data)) == ["forward", "request"]
    (p,) = ts.pending_traces()
    assert p.service == "sdk-svc" and p.has_root and p.root_name == "request"
    original = {s.span_id: s for rs in request.resource_spans for ss in rs.scope_spans for s in ss.spans}
    for rs in data.resource_spans:
        for ss in rs.scope_spans:
            assert ss.scope.name == "vauban.test"
            for s in ss.spans:
                assert s == original[s.span_id]
    assert ts.add_spans(encode_spans(finished)) == (0, 2)


def test_threads_share_a_store(tmp_path: Path) -> None:
    ts = TraceStore(tmp_path)
    errors: list[BaseException] = []

    def worker(k: int) -> None:
        try:
            for i in range(25):
                sid = f"{k:02x}{i:02x}000000000001"
                ts.add_spans(make_request(make_span(TRACE_A, sid, f"s{k}-{i}", parent=ROOT)))
        except BaseException as exc:  # pragma: no cover
            errors.append(exc)

    threads = [threading.Thread(target=worker, args=(k,)) for k in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors
    assert ts.raw_span_count(TRACE_A) == 100
    assert ts.pending_traces()[0].span_count == 100
    ts.close()


def _proc_add(directory: str, k: int) -> int:
    ts = TraceStore(directory)
    total = 0
    for i in range(20):
        sid = f"{k:02x}{i:02x}000000000001"
        total += ts.add_spans(make_request(make_span(TRACE_B, sid, f"p{k}-{i}", parent=ROOT)))[0]
    ts.close()
    return total


def test_processes_share_a_directory(tmp_path: Path) -> None:
    TraceStore(tmp_path).close()
    ctx = multiprocessing.get_context("spawn")
    with ctx.Pool(3) as pool:
        totals = pool.starmap(_proc_add, [(str(tmp_path), k) for k in range(3)])
    assert totals == [20, 20, 20]
    ts = TraceStore(tmp_path)
    assert ts.raw_span_count(TRACE_B) == 60
    assert ts.pending_traces()[0].span_count == 60


def test_closed_store_refuses(tmp_path: Path) -> None:
    ts = TraceStore(tmp_path)
    ts.close()
    with pytest.raises(TraceStoreError, match="closed"):
        ts.spans_for(TRACE_A)


def test_one_span_resource_spans_payload(tmp_path: Path) -> None:
    ts = TraceStore(tmp_path)
    ts.add_spans(make_request(make_span(TRACE_A, ROOT, "root"), make_span(TRACE_A, CHILD, "c", parent=ROOT)))
    from vauban_trace.store._batch import decode_batch

    ((_id, tid, _received, count, blob),) = batch_rows(ts)
    payloads = [r.payload for r in decode_batch(tid, bytes(blob))]  # the stored one-span payloads
    assert count == len(payloads) == 2
    for payload in payloads:
        rs = ResourceSpans.FromString(payload)
        assert len(rs.scope_spans) == 1 and len(rs.scope_spans[0].spans) == 1
        assert rs.resource.attributes[0].key == "service.name"


def test_payload_bytes_match_protobuf_serialization(tmp_path: Path) -> None:
    from opentelemetry.proto.trace.v1.trace_pb2 import ScopeSpans

    req = make_request(make_span(TRACE_A, ROOT, "root", attrs={"k": "v" * 300}))
    req.resource_spans[0].schema_url = "https://opentelemetry.io/schemas/1.26.0"
    req.resource_spans[0].scope_spans[0].schema_url = "https://example.com/scope"
    ts = TraceStore(tmp_path)
    ts.add_spans(req)
    from vauban_trace.store._batch import decode_batch

    ((_id, _tid, _received, _count, blob),) = batch_rows(ts)
    (row,) = decode_batch(TRACE_A, bytes(blob))
    payload = row.payload
    rs, ss = req.resource_spans[0], req.resource_spans[0].scope_spans[0]
    expected = ResourceSpans(resource=rs.resource, schema_url=rs.schema_url)
    expected.scope_spans.append(ScopeSpans(scope=ss.scope, schema_url=ss.schema_url, spans=[ss.spans[0]]))
    assert bytes(payload) == expected.SerializeToString(deterministic=True)
    data = ts.spans_for(TRACE_A)
    assert data.resource_spans[0].schema_url == rs.schema_url
    assert data.resource_spans[0].scope_spans[0].schema_url == ss.schema_url
    assert ts.spans_for_bytes(TRACE_A) == data.SerializeToString()


def test_resource_and_scope_absent_round_trip(tmp_path: Path) -> None:
    req = make_request(make_span(TRACE_A, ROOT, "bare"))
    req.resource_spans[0].ClearField("resource")
    req.resource_spans[0].scope_spans[0].ClearField("scope")
    ts = TraceStore(tmp_path)
    assert ts.add_spans(req) == (1, 0)
    data = ts.spans_for(TRACE_A)
    assert not data.resource_spans[0].HasField("resource")
    assert not data.resource_spans[0].scope_spans[0].HasField("scope")
    assert _span_names(data) == ["bare"]
    assert ts.pending_traces()[0].service is None


def test_superseded_inside_one_request(tmp_path: Path) -> None:
    ts = TraceStore(tmp_path)
    first = make_span(TRACE_A, ROOT, "root", end=100)
    second = make_span(TRACE_A, ROOT, "root", end=200)
    assert ts.add_spans(make_request(first, second)) == (2, 0)
    spans = [s for rs in ts.spans_for(TRACE_A).resource_spans for ss in rs.scope_spans for s in ss.spans]
    assert [s.end_time_unix_nano for s in spans] == [200]
    assert ts.raw_span_count(TRACE_A) == 1


def test_bookkeeping_incremental_matches_recompute(tmp_path: Path) -> None:
    """Spans arriving in pieces (incremental path) and a replacement (recompute path) agree."""
    ts = TraceStore(tmp_path)
    late_root = make_span(TRACE_A, ROOT, "late-root", start=5, end=50)
    early_root = make_span(TRACE_A, "00000000000000aa", "early-root", start=1, end=40)
    child = make_span(TRACE_A, CHILD, "child", parent=ROOT, start=10, end=90)
    ts.add_spans(make_request(child, service="worker"))
    assert (ts.pending_traces()[0].service, ts.pending_traces()[0].has_root) == ("worker", False)
    ts.add_spans(make_request(late_root, service="api"))
    p = ts.pending_traces()[0]
    assert (p.root_name, p.service, p.span_count) == ("late-root", "api", 2)
    ts.add_spans(make_request(early_root, service="api"))
    incremental = ts.pending_traces()[0]
    assert incremental.root_name == "early-root" and incremental.span_count == 3
    # replacing a span forces a recompute from stored spans: same answers
    ts.add_spans(make_request(make_span(TRACE_A, CHILD, "child", parent=ROOT, start=10, end=95), service="worker"))
    recomputed = ts.pending_traces()[0]
    assert (recomputed.root_name, recomputed.service, recomputed.span_count, recomputed.has_root) == (
        incremental.root_name, incremental.service, incremental.span_count, incremental.has_root)
    assert recomputed.version == incremental.version + 1
