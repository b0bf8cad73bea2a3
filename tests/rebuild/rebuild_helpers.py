"""Helpers for rebuild tests (imported by name; conftest.py only holds fixtures). Real OTel SDK spans: TracerProvider + InMemorySpanExporter + the official
OTLP protobuf encoder, with vauban attributes and events spelled through ``semconv``."""

from __future__ import annotations

import json
from typing import Any

from opentelemetry.exporter.otlp.proto.common.trace_encoder import encode_spans
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import SpanLimits, TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import Status, StatusCode, Tracer

from vauban_trace import semconv as sc

DIGEST = "sha256:" + "ab" * 32


class SdkHarness:
    def __init__(self) -> None:
        self.exporter = InMemorySpanExporter()
        self.provider = TracerProvider(
            resource=Resource.create({sc.SERVICE_NAME: "rebuild-tests", "deployment.environment": "test"}),
            span_limits=SpanLimits(max_events=128),
        )
        self.provider.add_span_processor(SimpleSpanProcessor(self.exporter))
        self.tracer: Tracer = self.provider.get_tracer("vauban-tests", "0.1")

    def request(self) -> ExportTraceServiceRequest:
        return encode_spans(self.exporter.get_finished_spans())


def artifact_attrs(art_id: str, kind: str = "activation", layer: int | None = 1) -> dict[str, Any]:
    attrs: dict[str, Any] = {
        sc.ARTIFACT_ID: art_id,
        sc.ARTIFACT_KIND: kind,
        sc.ARTIFACT_DIGEST: DIGEST,
        sc.ARTIFACT_URI: "file:///blobs/" + art_id,
        sc.ARTIFACT_MEDIA_TYPE: "application/vnd.safetensors",
        sc.ARTIFACT_SHAPE: [1, 4, 8],
        sc.ARTIFACT_DTYPE: "float32",
        sc.ARTIFACT_BYTE_SIZE: 128,
        sc.ARTIFACT_METADATA: json.dumps({"module": "model.layers.1"}),
        sc.ARTIFACT_STAT_MEAN: 0.25,
        sc.ARTIFACT_STAT_L2_NORM: 3.5,
        sc.ARTIFACT_TOPK_IDS: [3, 1],
        sc.ARTIFACT_TOPK_VALUES: [0.9, 0.1],
    }
    if layer is not None:
        attrs[sc.ARTIFACT_LAYER] = layer
    return attrs


def emit_vauban_request(
    h: SdkHarness, *, spill_events: int = 0, fail_decode: bool = False, chain: bool = False
) -> str:
    """One traced request as the instrument side emits it; returns the trace id (hex)."""
    t = h.tracer
    with t.start_as_current_span("text_completion tiny-llama") as root:
        root.set_attributes({
            sc.TRACE_ROOT: True,
            sc.TRACE_SCHEMA_VERSION: "1.0",
            sc.GEN_AI_OPERATION_NAME: "text_completion",
            sc.GEN_AI_PROVIDER_NAME: "huggingface.transformers",
            sc.GEN_AI_REQUEST_MODEL: "tiny-llama",
            sc.GEN_AI_USAGE_INPUT_TOKENS: 5,
            sc.GEN_AI_USAGE_OUTPUT_TOKENS: 3,
            sc.REQUEST_INPUT_REF: DIGEST,
            sc.REQUEST_REQUESTED_ARTIFACTS: ["tokens", "activation", "logits", "weight_snapshot"],
            sc.REQUEST_LAYERS: [1],
            sc.REQUEST_INTERVENTIONS: json.dumps([{"name": "ablate", "layer_index": 1, "params": {"alpha": 0.5}}]),
            sc.REQUEST_RETURN_LOGITS: True,
            sc.REQUEST_METADATA: json.dumps({"user": "tests"}),
            sc.EXECUTOR_NAME: "torch",
            sc.EXECUTOR_VERSION: "2.13.0",
            sc.capability("can_emit_logits"): "full",
            sc.capability("can_inspect_weights"): "unsupported",
            sc.CAPABILITY_DEVICE_KINDS: ["cpu"],
            sc.CAPABILITY_NOTES: json.dumps({"can_inspect_weights": "not built"}),
            sc.DEVICE_KIND: "cpu",
            sc.DEVICE_LABEL: "cpu",
            sc.TRACE_METADATA: json.dumps({"experiment": "e1"}),
            "app.custom": "kept",
        })
        with t.start_as_current_span("tokenize") as st:
            st.set_attributes({
                sc.STAGE: "tokenize",
                sc.usl("token_count"): 5,
                sc.usl_provenance("token_count"): "derived",
                sc.usl("duration_s"): 0.001,
                sc.usl_provenance("duration_s"): "measured",
                sc.usl_provenance("memory_bytes"): "unavailable",
            })
            st.add_event(sc.EVENT_ARTIFACT, artifact_attrs("tok-0", "tokens", layer=None))
        with t.start_as_current_span("forward") as fw:
            fw.set_attributes({
                sc.STAGE: "forward",
                sc.DEVICE_KIND: "cpu",
                sc.DEVICE_LABEL: "cpu",
                sc.usl("memory_bytes"): 4096,
                sc.usl_provenance("memory_bytes"): "measured",
                sc.MEMORY_METHOD: "cpu.rss_peak_delta",
                sc.COUNTER_MODE: "cheap",
                sc.SPAN_INPUT_ARTIFACT_IDS: ["tok-0"],
                sc.SPAN_METADATA: json.dumps({"layers": 2}),
            })
            fw.add_event(sc.EVENT_ARTIFACT, artifact_attrs("act-1"))
            fw.add_event(sc.EVENT_ARTIFACT_MISSING, {
                sc.ARTIFACT_KIND: "weight_snapshot",
                sc.MISSING_REASON: "unsupported",
                sc.MISSING_DETAIL: "not built",
            })
            if spill_events:
                # what the instrument side does past the per-span event limit
                # (at most 100 events per spill span here; with chain=True each spill span
                # names the previous spill span, otherwise the original)
                target = format(fw.get_span_context().span_id, "016x")
                for chunk in range(0, spill_events, 100):
                    with t.start_as_current_span("forward") as spill:
                        spill.set_attribute(sc.SPILL_OF, target)
                        for i in range(chunk, min(spill_events, chunk + 100)):
                            spill.add_event(sc.EVENT_ARTIFACT, artifact_attrs(f"spill-{i}", layer=i))
                    if chain:
                        target = format(spill.get_span_context().span_id, "016x")
        with t.start_as_current_span("decode") as dec:
            dec.set_attributes({
                sc.STAGE: "decode",
                sc.DECODE_STEPS: 3,
                sc.DECODE_STEP_P50_S: 0.002,
                sc.DECODE_STOP_REASON: "max_tokens",
                sc.usl("token_count"): 3,
                sc.usl_provenance("token_count"): "measured",
            })
            dec.add_event(sc.EVENT_ARTIFACT, artifact_attrs("logits-0", "logits", layer=None))
            if fail_decode:
                dec.add_event(sc.EXCEPTION_EVENT, {sc.EXCEPTION_TYPE: "RuntimeError", sc.EXCEPTION_MESSAGE: "boom"})
                dec.set_status(Status(StatusCode.ERROR))
        return format(root.get_span_context().trace_id, "032x")


