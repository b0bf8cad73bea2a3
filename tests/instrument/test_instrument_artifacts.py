"""record_artifact / record_missing: events, stored blobs, spill spans past the event limit."""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest
import torch
from opentelemetry.exporter.otlp.proto.common.trace_encoder import encode_spans
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

import vauban_trace as vt
from vauban_trace import semconv as sc
from vauban_trace.artifacts import LocalArtifactStore, compute_digest, decode_array, decode_json
from vauban_trace.rebuild import rebuild_traces


def _events(spans: InMemorySpanExporter, name: str) -> list[dict[str, Any]]:
    return [dict(e.attributes or {}) for s in spans.get_finished_spans() for e in s.events if e.name == name]


def test_artifacts_are_stored_and_described(spans: InMemorySpanExporter, blob_store: LocalArtifactStore) -> None:
    logits = np.random.default_rng(0).standard_normal((1, 4, 32)).astype(np.float32)
    with vt.stage("tokenize"):
        text_ref = vt.record_artifact("text", "hello world", store=blob_store)
        tok_ref = vt.record_artifact("tokens", [1, 17, 42], store=blob_store, name="prompt")
    with vt.stage("forward") as st:
        log_ref = vt.record_artifact("logits", logits, topk=3, store=blob_store, metadata={"position": "all"})
        act_ref = vt.record_artifact("activation", torch.ones(2, 3), layer=1, store=blob_store)
    assert text_ref and tok_ref and log_ref and act_ref
    assert log_ref.span_id == st.span_id
    assert decode_json(blob_store.get(text_ref.digest)) == "hello world"
    assert decode_json(blob_store.get(tok_ref.digest)) == [1, 17, 42]
    np.testing.assert_array_equal(decode_array(blob_store.get(log_ref.digest)), logits)
    np.testing.assert_array_equal(decode_array(blob_store.get(act_ref.digest)), np.ones((2, 3), np.float32))
    for ref in (text_ref, tok_ref, log_ref, act_ref):
        assert compute_digest(blob_store.get(ref.digest), ref.digest.split(":")[0]) == ref.digest

    events = {e[sc.ARTIFACT_ID]: e for e in _events(spans, sc.EVENT_ARTIFACT)}
    ev = events[log_ref.id]
    assert ev[sc.ARTIFACT_KIND] == "logits"
    assert tuple(ev[sc.ARTIFACT_SHAPE]) == (1, 4, 32)
    assert ev[sc.ARTIFACT_DTYPE] == "float32"
    assert ev[sc.ARTIFACT_MEDIA_TYPE] == "application/vnd.safetensors"
    assert ev[sc.ARTIFACT_BYTE_SIZE] == log_ref.byte_size
    last = logits[0, -1].astype(np.float64)
    assert list(ev[sc.ARTIFACT_TOPK_IDS]) == list(np.argsort(-last)[:3])
    assert ev[sc.ARTIFACT_STAT_MAX] == pytest.approx(float(logits.max()))
    assert '"position": "all"' in ev[sc.ARTIFACT_METADATA]
    assert events[act_ref.id][sc.ARTIFACT_LAYER] == 1
    assert '"source_device": "cpu"' in events[act_ref.id][sc.ARTIFACT_METADATA]
    assert tuple(events[tok_ref.id][sc.ARTIFACT_SHAPE]) == (3,)
    # never a tensor in an attribute: every value is a scalar or a short list
    for e in events.values():
        for value in e.values():
            assert not isinstance(value, (list, tuple)) or len(value) <= 8
    # forward recorded an artifact: instrumentation copies are counted (CPU: none)
    fwd = next(s for s in spans.get_finished_spans() if s.name == "forward")
    assert fwd.attributes[sc.usl("instrumentation_d2h_copies")] == 0
    assert fwd.attributes[sc.usl_provenance("instrumentation_d2h_copies")] == "measured"


def test_bfloat16_tensor_is_widened_and_says_so(spans: InMemorySpanExporter, blob_store: LocalArtifactStore) -> None:
    with vt.stage("observe"):
        ref = vt.record_artifact("activation", torch.ones(2, 2, dtype=torch.bfloat16), store=blob_store)
    assert ref is not None and ref.dtype == "float32"
    (ev,) = _events(spans, sc.EVENT_ARTIFACT)
    assert '"source_dtype": "bfloat16"' in ev[sc.ARTIFACT_METADATA]


def test_unknown_kind_and_bad_values_are_clear_errors(spans: InMemorySpanExporter, blob_store: LocalArtifactStore) -> None:
    with pytest.raises(vt.ContractError, match="'bogus_kind'"):
        vt.record_artifact("bogus_kind", [1])
    with pytest.raises(vt.ContractError, match="'nope'"):
        vt.record_missing("nope", "failed")
    with pytest.raises(vt.ContractError, match="reason 'lazy'"):
        vt.record_missing("logits", "lazy")
    with vt.stage("forward"):
        with pytest.raises(vt.ContractError, match="object"):
            vt.record_artifact("other", object(), store=blob_store)


def test_record_missing_event(spans: InMemorySpanExporter) -> None:
    with vt.stage("observe"):
        vt.record_missing("weight_snapshot", "unsupported", detail="no weight access", layer=3)
    (ev,) = _events(spans, sc.EVENT_ARTIFACT_MISSING)
    assert ev == {
        sc.ARTIFACT_KIND: "weight_snapshot",
        sc.MISSING_REASON: "unsupported",
        sc.MISSING_DETAIL: "no weight access",
        sc.ARTIFACT_LAYER: 3,
    }


def test_without_store_the_artifact_is_recorded_missing(spans: InMemorySpanExporter) -> None:
    assert vt.current_session() is None
    with vt.stage("forward"):
        assert vt.record_artifact("logits", np.zeros(3)) is None
    (ev,) = _events(spans, sc.EVENT_ARTIFACT_MISSING)
    assert ev[sc.MISSING_REASON] == "failed" and "no artifact store" in ev[sc.MISSING_DETAIL]


def test_outside_any_span_record_is_a_noop(spans: InMemorySpanExporter, blob_store: LocalArtifactStore) -> None:
    assert vt.record_artifact("text", "x", store=blob_store) is None
    assert spans.get_finished_spans() == ()


def test_thousand_artifacts_spill_and_all_rebuild(spans: InMemorySpanExporter, tmp_path: Any) -> None:
    store = LocalArtifactStore(tmp_path / "blobs", fsync=False)
    request = vt.TraceRequest(prompt_ids=(1, 2, 3), requested_artifacts=("metric",))
    with vt.traced_request(request, model="tiny") as req:
        with vt.stage("score") as st:
            refs = [vt.record_artifact("metric", {"i": i}, store=store) for i in range(1000)]
    assert all(r is not None for r in refs)
    finished = spans.get_finished_spans()
    stage_spans = [s for s in finished if s.name == "score"]
    original = next(s for s in stage_spans if sc.SPILL_OF not in s.attributes)
    spills = [s for s in stage_spans if sc.SPILL_OF in s.attributes]
    assert len(spills) >= (1000 - 128) // 128
    for s in spills:
        assert s.attributes[sc.SPILL_OF] == st.span_id
        assert s.attributes[sc.STAGE] == "score"
        assert s.parent is not None and s.parent.span_id == original.context.span_id
        assert s.dropped_events == 0
    assert original.dropped_events == 0
    total = sum(len(s.events) for s in stage_spans)
    assert total == 1000
    (trace,) = rebuild_traces(encode_spans(finished))
    assert trace.id == req.trace_id
    assert len(trace.artifacts) == 1000
    assert {a.id for a in trace.artifacts} == {r.id for r in refs if r}
    assert {a.producer_span_id for a in trace.artifacts} == {st.span_id}
    assert trace.missing == ()


def test_exception_on_a_full_span_does_not_push_out_an_artifact(
    spans: InMemorySpanExporter, tmp_path: Any
) -> None:
    store = LocalArtifactStore(tmp_path / "blobs", fsync=False)
    with pytest.raises(ZeroDivisionError):
        with vt.stage("forward"):
            for i in range(128):
                vt.record_artifact("metric", i, store=store)
            1 / 0  # noqa: B018
    stage_spans = [s for s in spans.get_finished_spans() if s.name == "forward"]
    assert all(s.dropped_events == 0 for s in stage_spans)
    artifacts = [e for s in stage_spans for e in s.events if e.name == sc.EVENT_ARTIFACT]
    exceptions = [e for s in stage_spans for e in s.events if e.name == "exception"]
    assert len(artifacts) == 128 and len(exceptions) == 1
    (trace,) = rebuild_traces(encode_spans(spans.get_finished_spans()))
    assert len(trace.artifacts) == 128
    (span,) = trace.spans
    assert span.status == "error"
