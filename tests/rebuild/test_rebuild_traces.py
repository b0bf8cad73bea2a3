"""rebuild_traces on spans produced by the real OpenTelemetry SDK and its OTLP encoder."""

from __future__ import annotations

import random
from typing import Any

import pytest
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest
from opentelemetry.proto.trace.v1.trace_pb2 import ResourceSpans, TracesData
from rebuild_helpers import DIGEST, SdkHarness, emit_vauban_request

from vauban_trace import semconv as sc
from vauban_trace._exceptions import RebuildError
from vauban_trace.contract import Trace, trace_problems
from vauban_trace.rebuild import rebuild_from_json, rebuild_traces, traces_data_to_json


def _only(traces: list[Trace]) -> Trace:
    assert len(traces) == 1
    return traces[0]


def _spans_with(req: ExportTraceServiceRequest, keep: Any) -> ExportTraceServiceRequest:
    out = ExportTraceServiceRequest()
    out.CopyFrom(req)
    for rs in out.resource_spans:
        for ss in rs.scope_spans:
            kept = [s for s in ss.spans if keep(s)]
            del ss.spans[:]
            ss.spans.extend(kept)
    return out


def test_full_request_rebuilds_every_record(vauban_request: Any) -> None:
    tid, req = vauban_request()
    t = _only(rebuild_traces(req))
    assert t.id == tid and t.complete and t.problems == ()
    assert trace_problems(t) == []
    assert [s.stage for s in t.spans] == [None, "tokenize", "forward", "decode"]
    root = t.spans[0]
    assert root.parent_id is None and t.root == root
    assert all(s.parent_id == root.id for s in t.spans[1:])
    # request / capabilities / device from the root
    assert t.request is not None and t.request.trace_id == tid and t.request.input_ref == DIGEST
    assert t.request.requested_artifacts == ("tokens", "activation", "logits", "weight_snapshot")
    assert t.request.collect_layers == (1,) and t.request.return_logits and not t.request.return_logprobs
    assert t.request.interventions[0].name == "ablate" and t.request.interventions[0].params == {"alpha": 0.5}
    assert t.request.metadata == {"user": "tests"}
    assert t.capabilities is not None and t.capabilities.executor == "torch"
    assert t.capabilities.level("can_emit_logits") == "full"
    assert t.capabilities.level("can_emit_text") == "unsupported"
    assert t.capabilities.notes == {"can_inspect_weights": "not built"}
    assert t.capabilities.device_kinds == ("cpu",)
    assert t.device is not None and t.device.kind == "cpu"
    # root metadata keeps gen_ai and custom attributes, not the consumed vauban ones
    assert root.metadata[sc.GEN_AI_REQUEST_MODEL] == "tiny-llama" and root.metadata["app.custom"] == "kept"
    assert not any(k.startswith("vauban.") for k in root.metadata)
    # profiles
    tok, fwd, dec = t.spans[1:]
    assert tok.profile is not None and tok.profile.token_count == 5
    assert tok.profile.provenance_of("token_count") == "derived"
    assert tok.profile.duration_s == 0.001 and tok.profile.provenance_of("duration_s") == "measured"
    assert tok.profile.memory_bytes is None and tok.profile.provenance_of("memory_bytes") == "unavailable"
    assert fwd.profile is not None and fwd.profile.memory_bytes == 4096
    assert fwd.profile.memory_method == "cpu.rss_peak_delta" and fwd.profile.metadata == {"usl.mode": "cheap"}
    assert fwd.profile.device is not None and fwd.profile.device.label == "cpu"
    assert fwd.profile.duration_s == pytest.approx((fwd.end_unix_nano - fwd.start_unix_nano) / 1e9)
    assert fwd.metadata == {"layers": 2}
    assert dec.profile is not None and dec.profile.metadata["decode.steps"] == 3
    assert dec.profile.metadata["decode.stop_reason"] == "max_tokens"
    # artifacts, outputs, inputs, missing
    assert [a.id for a in t.artifacts] == ["tok-0", "act-1", "logits-0"]
    assert tok.output_artifact_ids == ("tok-0",) and fwd.input_artifact_ids == ("tok-0",)
    act = t.artifact("act-1")
    assert act.producer_span_id == fwd.id and act.shape == (1, 4, 8) and act.layer == 1
    assert act.summary == {"mean": 0.25, "l2_norm": 3.5, "topk_ids": (3, 1), "topk_values": (0.9, 0.1)}
    assert act.metadata == {"module": "model.layers.1"} and act.digest == DIGEST and act.byte_size == 128
    assert [(m.kind, m.reason, m.span_id) for m in t.missing] == [("weight_snapshot", "unsupported", fwd.id)]
    # trace-level
    assert t.resource[sc.SERVICE_NAME] == "rebuild-tests"
    assert t.metadata["service_name"] == "rebuild-tests" and t.metadata["span_count"] == 4
    assert t.metadata["gen_ai"]["usage.input_tokens"] == 5 and t.metadata["experiment"] == "e1"
    assert t.metadata["executor"] == {"name": "torch", "version": "2.13.0"}
    assert t.metadata["root_span_id"] == root.id and t.metadata["artifact_count"] == 3
    assert Trace.from_json(t.to_json()) == t


def test_input_forms_agree(vauban_request: Any) -> None:
    _, req = vauban_request()
    expected = rebuild_traces(req)
    td = TracesData()
    td.resource_spans.extend(req.resource_spans)
    assert rebuild_traces(td) == expected
    assert rebuild_traces(req.SerializeToString()) == expected
    assert rebuild_traces(td.SerializeToString()) == expected
    assert rebuild_traces(iter(list(req.resource_spans))) == expected


def test_protobuf_json_rebuild_equals_protobuf_rebuild(vauban_request: Any) -> None:
    _, req = vauban_request(spill_events=3, fail_decode=True)
    td = TracesData()
    td.resource_spans.extend(req.resource_spans)
    doc = traces_data_to_json(td)
    span0 = doc["resourceSpans"][0]["scopeSpans"][0]["spans"][0]
    assert len(span0["traceId"]) == 32 and len(span0["spanId"]) == 16
    assert rebuild_from_json(doc) == rebuild_traces(req)


@pytest.mark.parametrize("chain", [False, True])
def test_spill_span_folded_into_original(vauban_request: Any, chain: bool) -> None:
    _, req = vauban_request(spill_events=140, chain=chain)
    t = _only(rebuild_traces(req))
    fwd = t.spans_for_stage("forward")[0]
    assert len(t.spans) == 4 and t.complete
    assert all(s.name != "forward" or s.id == fwd.id for s in t.spans)
    spilled = [a for a in t.artifacts if a.id.startswith("spill-")]
    assert len(spilled) == 140 and all(a.producer_span_id == fwd.id for a in spilled)
    assert fwd.output_artifact_ids == ("act-1", *[f"spill-{i}" for i in range(140)])
    assert len(fwd.metadata["spill_span_ids"]) == 2
    assert [a.id for a in t.artifacts][:2] == ["tok-0", "act-1"] and t.artifacts[-1].id == "logits-0"


def test_spill_without_original_is_kept_and_reported(vauban_request: Any) -> None:
    _, req = vauban_request(spill_events=2)
    t_full = _only(rebuild_traces(req))
    fwd_id = t_full.spans_for_stage("forward")[0].id
    part = _spans_with(req, lambda s: s.span_id.hex() != fwd_id)
    t = _only(rebuild_traces(part))
    assert not t.complete
    spill = [s for s in t.spans if s.output_artifact_ids and s.output_artifact_ids[0] == "spill-0"]
    assert len(spill) == 1 and spill[0].parent_id == fwd_id
    assert any("original span" in p for p in t.problems) and any("orphan" in p for p in t.problems)
    assert trace_problems(t) == []


def test_fragment_without_root_is_incomplete(vauban_request: Any) -> None:
    tid, req = vauban_request()
    root_id = _only(rebuild_traces(req)).spans[0].id
    part = _spans_with(req, lambda s: s.span_id.hex() != root_id)
    t = _only(rebuild_traces(part))
    assert t.id == tid and not t.complete and t.request is None and t.capabilities is None
    assert "no root span received" in t.problems
    assert sum("orphan" in p for p in t.problems) == 3
    assert all(s.parent_id == root_id for s in t.spans)
    assert Trace.from_json(t.to_json()) == t


def test_duplicates_identical_are_silent_differing_are_reported(vauban_request: Any) -> None:
    _, req = vauban_request()
    doubled = ExportTraceServiceRequest()
    doubled.resource_spans.extend(list(req.resource_spans) * 2)
    assert rebuild_traces(doubled) == rebuild_traces(req)
    changed = ExportTraceServiceRequest()
    changed.CopyFrom(req)
    span = changed.resource_spans[0].scope_spans[0].spans[0]
    span.attributes.add(key="extra").value.string_value = "x"
    both = ExportTraceServiceRequest()
    both.resource_spans.extend([*req.resource_spans, *changed.resource_spans])
    t = _only(rebuild_traces(both))
    assert len(t.spans) == 4 and any("arrived 2 times" in p for p in t.problems)
    assert t.span(span.span_id.hex()).metadata["extra"] == "x"  # the richer copy wins


def test_deterministic_under_shuffling(vauban_request: Any) -> None:
    _, req = vauban_request(spill_events=5)
    expected = rebuild_traces(req)
    spans = [(rs.resource, ss.scope, s) for rs in req.resource_spans for ss in rs.scope_spans for s in ss.spans]
    rng = random.Random(7)
    for _ in range(5):
        rng.shuffle(spans)
        out = ExportTraceServiceRequest()
        for resource, scope, s in spans:  # one ResourceSpans per span, like separate batches
            rs = out.resource_spans.add()
            rs.resource.CopyFrom(resource)
            ss = rs.scope_spans.add()
            ss.scope.CopyFrom(scope)
            ss.spans.append(s)
        assert rebuild_traces(out) == expected


def test_error_status_uses_exception_event(vauban_request: Any) -> None:
    _, req = vauban_request(fail_decode=True)
    t = _only(rebuild_traces(req))
    dec = t.spans_for_stage("decode")[0]
    assert dec.status == "error" and dec.error == "RuntimeError: boom"
    assert dec.metadata["events"][0]["name"] == sc.EXCEPTION_EVENT
    assert t.metadata["error_count"] == 1


def test_several_traces_and_plain_spans(sdk: SdkHarness) -> None:
    with sdk.tracer.start_as_current_span("GET /"):
        with sdk.tracer.start_as_current_span("db") as db:
            db.set_attribute("db.system", "sqlite")
    first = emit_vauban_request(sdk)
    traces = rebuild_traces(sdk.request())
    assert len(traces) == 2
    plain = next(t for t in traces if t.id != first)
    assert plain.complete and [s.name for s in plain.spans] == ["GET /", "db"]
    db_span = plain.spans[1]
    assert db_span.stage is None and db_span.metadata == {"db.system": "sqlite"}
    assert db_span.profile is not None and db_span.profile.duration_s is not None
    assert db_span.profile.provenance == {"duration_s": "measured"}
    assert plain.request is None and plain.capabilities is None


def test_bad_values_are_refused_one_by_one(sdk: SdkHarness) -> None:
    with sdk.tracer.start_as_current_span("root") as root:
        root.set_attribute(sc.TRACE_ROOT, True)
        root.set_attribute(sc.REQUEST_REQUESTED_ARTIFACTS, ["not-a-kind"])
        root.set_attribute(sc.REQUEST_INPUT_REF, DIGEST)
        with sdk.tracer.start_as_current_span("s") as s:
            s.set_attribute(sc.STAGE, "forward")
            s.set_attribute(sc.usl("memory_bytes"), -5)
            s.set_attribute(sc.usl_provenance("memory_bytes"), "measured")
            s.set_attribute(sc.usl("batch_size"), 2)
            s.set_attribute(sc.usl_provenance("batch_size"), "guessed")
            s.set_attribute(sc.SPAN_INPUT_ARTIFACT_IDS, ["nope"])
            s.add_event(sc.EVENT_ARTIFACT, {sc.ARTIFACT_KIND: "tokens"})
            s.add_event(sc.EVENT_ARTIFACT, {sc.ARTIFACT_ID: "a", sc.ARTIFACT_KIND: "bogus"})
            s.add_event(sc.EVENT_ARTIFACT, {sc.ARTIFACT_ID: "b", sc.ARTIFACT_KIND: "tokens", sc.ARTIFACT_DIGEST: "md5:x"})
            s.add_event(sc.EVENT_ARTIFACT, {sc.ARTIFACT_ID: "c", sc.ARTIFACT_KIND: "tokens"})
            s.add_event(sc.EVENT_ARTIFACT, {sc.ARTIFACT_ID: "c", sc.ARTIFACT_KIND: "tokens"})
            s.add_event(sc.EVENT_ARTIFACT_MISSING, {sc.ARTIFACT_KIND: "logits", sc.MISSING_REASON: "lazy"})
    t = _only(rebuild_traces(sdk.request()))
    assert t.complete and t.request is None
    stage = t.spans[1]
    assert stage.profile is not None and stage.profile.memory_bytes is None
    assert stage.profile.provenance_of("memory_bytes") == "unavailable"
    assert stage.profile.batch_size == 2 and "batch_size" not in stage.profile.provenance
    assert [a.id for a in t.artifacts] == ["c"] and stage.input_artifact_ids == () and t.missing == ()
    text = "\n".join(t.problems)
    for needle in ("request refused", "must be >= 0", "'guessed'", "without vauban.artifact.id",
                   "artifact 'a' refused", "artifact 'b' refused", "'c' recorded more than once",
                   "'nope'", "missing-artifact event refused"):
        assert needle in text, needle
    assert trace_problems(t) == []
    assert Trace.from_json(t.to_json()) == t


def test_non_finite_and_bytes_attributes_stay_json(sdk: SdkHarness) -> None:
    with sdk.tracer.start_as_current_span("x") as x:
        x.set_attribute("ratio", float("nan"))
        x.set_attribute("big", float("inf"))
        x.set_attribute(sc.usl("duration_s"), float("inf"))
        x.set_attribute(sc.usl_provenance("duration_s"), "measured")
    t = _only(rebuild_traces(sdk.request()))
    s = t.spans[0]
    assert s.metadata == {"ratio": "NaN", "big": "Infinity"}
    assert s.profile is not None and s.profile.duration_s is None
    assert s.profile.provenance_of("duration_s") == "unavailable"
    assert Trace.from_json(t.to_json()) == t


def test_remote_parent_of_vauban_root(vauban_request: Any) -> None:
    _, req = vauban_request()
    t0 = _only(rebuild_traces(req))
    root_id = t0.spans[0].id
    changed = ExportTraceServiceRequest()
    changed.CopyFrom(req)
    for s in changed.resource_spans[0].scope_spans[0].spans:
        if s.span_id.hex() == root_id:
            s.parent_span_id = bytes.fromhex("00000000000000aa")
    t = _only(rebuild_traces(changed))
    assert t.complete and t.spans[0].parent_id is None
    assert t.spans[0].metadata["remote_parent_id"] == "00000000000000aa"


def test_refuses_other_major_schema_and_bad_input(sdk: SdkHarness) -> None:
    with sdk.tracer.start_as_current_span("r") as r:
        r.set_attribute(sc.TRACE_ROOT, True)
        r.set_attribute(sc.TRACE_SCHEMA_VERSION, "2.0")
    with pytest.raises(RebuildError, match="schema_version '2.0'"):
        rebuild_traces(sdk.request())
    with pytest.raises(RebuildError, match="could not be decoded"):
        rebuild_traces(b"\xff\xff\xff")
    with pytest.raises(RebuildError, match="rebuild_from_json"):
        rebuild_traces("{}")  # type: ignore[arg-type]
    with pytest.raises(RebuildError, match="expected ResourceSpans"):
        rebuild_traces([ResourceSpans(), 3])  # type: ignore[list-item]
    bad = ExportTraceServiceRequest()
    bad.resource_spans.add().scope_spans.add().spans.add(trace_id=b"\x01" * 3, span_id=b"\x02" * 8, name="x")
    with pytest.raises(RebuildError, match="trace id must be 16 bytes"):
        rebuild_traces(bad)
