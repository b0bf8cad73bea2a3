"""traced_request(): root span attributes, content capture, automatic missing artifacts, errors."""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest
from opentelemetry.exporter.otlp.proto.common.trace_encoder import encode_spans
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import SpanKind, StatusCode

import vauban_trace as vt
from vauban_trace import semconv as sc
from vauban_trace.artifacts import LocalArtifactStore, compute_digest, encode_json
from vauban_trace.contract import CAPABILITY_NAMES
from vauban_trace.rebuild import rebuild_traces

CAPS = vt.Capabilities(
    executor="test-executor",
    device_kinds=("cpu",),
    levels={"can_emit_logits": "full", "can_emit_tokens": "full", "can_emit_activations": "partial"},
    notes={"can_emit_activations": "residual stream only"},
)


def _root(spans: InMemorySpanExporter) -> Any:
    roots = [s for s in spans.get_finished_spans() if s.attributes.get(sc.TRACE_ROOT)]
    assert len(roots) == 1
    return roots[0]


def test_root_span_attributes(spans: InMemorySpanExporter, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("OTEL_INSTRUMENTATION_GENAI_CAPTURE_MESSAGE_CONTENT", raising=False)
    request = vt.TraceRequest(
        input_text="secret prompt", requested_artifacts=("logits",), collect_layers=(0, 1),
        return_logits=True, metadata={"suite": "unit"},
    )
    with vt.traced_request(request, model="tiny-llama", capabilities=CAPS, device="cpu", seed=7,
                           max_tokens=4) as req:
        req.set_usage(input_tokens=3, output_tokens=4)
        req.set_finish_reasons("length")
    root = _root(spans)
    a = root.attributes
    assert root.name == "text_completion tiny-llama"
    assert root.kind is SpanKind.INTERNAL
    assert format(root.context.trace_id, "032x") == req.trace_id
    assert a[sc.TRACE_SCHEMA_VERSION] == "1.0"
    assert a[sc.GEN_AI_OPERATION_NAME] == "text_completion"
    assert a[sc.GEN_AI_PROVIDER_NAME] == "huggingface.transformers"
    assert a[sc.GEN_AI_REQUEST_MODEL] == "tiny-llama"
    assert a[sc.GEN_AI_REQUEST_SEED] == 7 and a[sc.GEN_AI_REQUEST_MAX_TOKENS] == 4
    assert a[sc.GEN_AI_USAGE_INPUT_TOKENS] == 3 and a[sc.GEN_AI_USAGE_OUTPUT_TOKENS] == 4
    assert tuple(a[sc.GEN_AI_RESPONSE_FINISH_REASONS]) == ("length",)
    assert tuple(a[sc.REQUEST_REQUESTED_ARTIFACTS]) == ("logits",)
    assert tuple(a[sc.REQUEST_LAYERS]) == (0, 1)
    assert a[sc.REQUEST_RETURN_LOGITS] is True
    assert a[sc.EXECUTOR_NAME] == "test-executor"
    assert a[sc.capability("can_emit_logits")] == "full"
    assert a[sc.capability("can_inspect_weights")] == "unsupported"
    assert all(sc.capability(n) in a for n in CAPABILITY_NAMES)
    assert a[sc.DEVICE_KIND] == "cpu"
    # content capture off by default: only a digest of the stored text
    assert sc.REQUEST_INPUT_TEXT not in a
    assert "secret prompt" not in str(dict(a))
    assert a[sc.REQUEST_INPUT_REF] == compute_digest(encode_json("secret prompt"))
    (trace,) = rebuild_traces(encode_spans(spans.get_finished_spans()))
    assert trace.request is not None and trace.request.input_ref == a[sc.REQUEST_INPUT_REF]
    assert trace.capabilities is not None and trace.capabilities.level("can_emit_activations") == "partial"


@pytest.mark.parametrize("seed", [2**63, 2**64 - 1, -(2**63) - 1])
def test_a_seed_outside_int64_is_kept_exactly_as_text(spans: InMemorySpanExporter, seed: int) -> None:
    # OTLP int attributes are signed 64-bit: the exporter would drop gen_ai.request.seed (logging
    # "Value out of range"), while torch accepts seeds up to 2**64 - 1
    with vt.traced_request(vt.TraceRequest(input_text="x"), model="m", seed=seed):
        pass
    a = _root(spans).attributes
    assert sc.GEN_AI_REQUEST_SEED not in a and a[sc.REQUEST_SEED_TEXT] == str(seed)
    encoded = encode_spans(spans.get_finished_spans())  # encodes without losing the attribute
    values = [kv.value for rs in encoded.resource_spans for ss in rs.scope_spans for sp in ss.spans
              for kv in sp.attributes if kv.key == sc.REQUEST_SEED_TEXT]
    assert [v.string_value for v in values] == [str(seed)]


def test_an_int64_seed_stays_an_int(spans: InMemorySpanExporter) -> None:
    with vt.traced_request(vt.TraceRequest(input_text="x"), model="m", seed=2**63 - 1):
        pass
    a = _root(spans).attributes
    assert a[sc.GEN_AI_REQUEST_SEED] == 2**63 - 1 and sc.REQUEST_SEED_TEXT not in a


@pytest.mark.parametrize("how", ["env", "argument"])
def test_content_capture_opt_in(spans: InMemorySpanExporter, monkeypatch: pytest.MonkeyPatch, how: str) -> None:
    if how == "env":
        monkeypatch.setenv("OTEL_INSTRUMENTATION_GENAI_CAPTURE_MESSAGE_CONTENT", "SPAN_ONLY")
        capture = None
    else:
        monkeypatch.setenv("OTEL_INSTRUMENTATION_GENAI_CAPTURE_MESSAGE_CONTENT", "NO_CONTENT")
        capture = True
    request = vt.TraceRequest(input_text="hello", prompt_ids=(1, 5, 9))
    with vt.traced_request(request, model="m", capture_content=capture):
        pass
    a = _root(spans).attributes
    assert a[sc.REQUEST_INPUT_TEXT] == "hello"
    assert tuple(a[sc.REQUEST_PROMPT_IDS]) == (1, 5, 9)


def test_event_only_does_not_put_content_on_span(spans: InMemorySpanExporter, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("OTEL_INSTRUMENTATION_GENAI_CAPTURE_MESSAGE_CONTENT", "EVENT_ONLY")
    with vt.traced_request(vt.TraceRequest(input_text="hello"), model="m"):
        pass
    assert sc.REQUEST_INPUT_TEXT not in _root(spans).attributes


def test_unproduced_requested_kinds_are_recorded_missing(
    spans: InMemorySpanExporter, blob_store: LocalArtifactStore
) -> None:
    request = vt.TraceRequest(
        prompt_ids=(1, 2), requested_artifacts=("tokens", "logits", "activation", "weight_snapshot")
    )
    with vt.traced_request(request, model="m"):
        with vt.stage("tokenize"):
            vt.record_artifact("tokens", [1, 2], store=blob_store)
        with vt.stage("forward"):
            vt.record_artifact("logits", np.zeros((1, 2, 4), np.float32), store=blob_store)
            vt.record_missing("weight_snapshot", "unsupported", detail="no weight access")
    root = _root(spans)
    missing = [dict(e.attributes) for e in root.events if e.name == sc.EVENT_ARTIFACT_MISSING]
    assert missing == [{
        sc.ARTIFACT_KIND: "activation",
        sc.MISSING_REASON: "failed",
        sc.MISSING_DETAIL: "requested but not produced",
    }]
    (trace,) = rebuild_traces(encode_spans(spans.get_finished_spans()))
    assert sorted((m.kind, m.reason) for m in trace.missing) == [
        ("activation", "failed"), ("weight_snapshot", "unsupported"),
    ]
    assert {a.kind for a in trace.artifacts} == {"tokens", "logits"}


def test_exception_in_request_is_recorded_and_reraised(spans: InMemorySpanExporter) -> None:
    original = KeyError("boom")
    with pytest.raises(KeyError) as info:
        with vt.traced_request(vt.TraceRequest(prompt_ids=(1,), requested_artifacts=("logits",)), model="m"):
            raise original
    assert info.value is original
    root = _root(spans)
    assert root.status.status_code is StatusCode.ERROR
    assert root.attributes[sc.ERROR_TYPE] == "KeyError"
    kinds = [e.attributes[sc.ARTIFACT_KIND] for e in root.events if e.name == sc.EVENT_ARTIFACT_MISSING]
    assert kinds == ["logits"]


def test_model_is_required(spans: InMemorySpanExporter) -> None:
    with pytest.raises(vt.ContractError, match="model"):
        with vt.traced_request(None, model=""):
            pass
