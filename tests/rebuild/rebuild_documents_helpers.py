"""Helpers for the rebuild_documents tests: hand-built OTLP traces (protobuf messages spelled
through semconv), per-trace splitting, and the C-vs-Python comparison."""

from __future__ import annotations

import dataclasses
import hashlib
import json
import random
from typing import Any

from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest
from opentelemetry.proto.common.v1.common_pb2 import AnyValue, ArrayValue, KeyValue, KeyValueList
from opentelemetry.proto.trace.v1.trace_pb2 import Span, Status

from vauban_trace import semconv as sc
from vauban_trace._exceptions import RebuildError
from vauban_trace.rebuild._documents import _NATIVE, TraceDocument, python_documents
from vauban_trace.store._ingest import SpanRow, extract_rows, snapshot_bytes

DIGEST = "blake3:" + "0f" * 32
T0 = 1_700_000_000_000_000_000


def any_value(value: object) -> AnyValue:
    if value is None:
        return AnyValue()
    if isinstance(value, bool):
        return AnyValue(bool_value=value)
    if isinstance(value, int):
        return AnyValue(int_value=value)
    if isinstance(value, float):
        return AnyValue(double_value=value)
    if isinstance(value, bytes):
        return AnyValue(bytes_value=value)
    if isinstance(value, (list, tuple)):
        return AnyValue(array_value=ArrayValue(values=[any_value(v) for v in value]))
    if isinstance(value, dict):
        return AnyValue(kvlist_value=KeyValueList(values=[kv(k, v) for k, v in value.items()]))
    return AnyValue(string_value=str(value))


def kv(key: str, value: object) -> KeyValue:
    return KeyValue(key=key, value=any_value(value))


def sid(tag: str) -> bytes:
    return hashlib.blake2b(tag.encode(), digest_size=8).digest()


def tid(tag: str) -> bytes:
    return hashlib.blake2b(tag.encode(), digest_size=16).digest()


class TraceBuilder:
    """One trace in one ResourceSpans; spans added with attributes as dicts."""

    def __init__(self, tag: str = "t", resource: dict[str, Any] | None = None) -> None:
        self.req = ExportTraceServiceRequest()
        rs = self.req.resource_spans.add()
        res = {sc.SERVICE_NAME: "svc", "host.name": "h1"} if resource is None else resource
        rs.resource.attributes.extend([kv(k, v) for k, v in res.items()])
        self.scope = rs.scope_spans.add()
        self.scope.scope.name = "vauban_trace"
        self.trace_id = tid(tag)

    def span(self, name: str, span_id: bytes, parent: bytes = b"", *, start: int = T0, end: int = T0 + 1000,
             attrs: dict[str, Any] | None = None, status: int = 0, message: str = "") -> Span:
        sp = self.scope.spans.add(trace_id=self.trace_id, span_id=span_id, parent_span_id=parent, name=name,
                                  kind=1, start_time_unix_nano=start, end_time_unix_nano=end)
        sp.attributes.extend([kv(k, v) for k, v in (attrs or {}).items()])
        if status or message:
            sp.status.CopyFrom(Status(code=status, message=message))  # type: ignore[arg-type]
        return sp

    def data(self) -> bytes:
        out: bytes = self.req.SerializeToString()
        return out


def event(sp: Span, name: str, time: int, attrs: dict[str, Any]) -> None:
    ev = sp.events.add(time_unix_nano=time, name=name)
    ev.attributes.extend([kv(k, v) for k, v in attrs.items()])


def artifact(art_id: str, kind: str = "activation", **extra: Any) -> dict[str, Any]:
    attrs: dict[str, Any] = {
        sc.ARTIFACT_ID: art_id, sc.ARTIFACT_KIND: kind, sc.ARTIFACT_DIGEST: DIGEST,
        sc.ARTIFACT_URI: "file:///blobs/" + art_id, sc.ARTIFACT_MEDIA_TYPE: "application/vnd.safetensors",
        sc.ARTIFACT_SHAPE: [1, 8, 64], sc.ARTIFACT_DTYPE: "float32", sc.ARTIFACT_BYTE_SIZE: 2048,
        sc.ARTIFACT_LAYER: 3, sc.ARTIFACT_STAT_MEAN: 0.1, sc.ARTIFACT_STAT_STD: 1e-07,
        sc.ARTIFACT_STAT_MIN: -3.5, sc.ARTIFACT_STAT_MAX: 1e16, sc.ARTIFACT_STAT_L2_NORM: 12.0,
        sc.ARTIFACT_TOPK_IDS: [5, 9, 2], sc.ARTIFACT_TOPK_VALUES: [0.5, 0.25, 0.125],
        sc.ARTIFACT_METADATA: json.dumps({"module": "model.layers.3", "hook": "output", "n": [1, 2.5, None]}),
        "app.extra": "kept",
    }
    attrs.update(extra)
    return attrs


def rich_trace(tag: str = "rich", *, n_stages: int = 4, artifacts_per_stage: int = 1) -> TraceBuilder:
    """A vauban trace using nearly every field the rebuild reads."""
    b = TraceBuilder(tag)
    root_id = sid(tag + "root")
    root = b.span("text_completion tiny-llama", root_id, start=T0, end=T0 + 90_000_000, attrs={
        sc.TRACE_ROOT: True, sc.TRACE_SCHEMA_VERSION: "1.0",
        sc.GEN_AI_OPERATION_NAME: "text_completion", sc.GEN_AI_REQUEST_MODEL: "tiny-llama",
        sc.GEN_AI_PROVIDER_NAME: "huggingface.transformers", sc.GEN_AI_REQUEST_TEMPERATURE: 0.7,
        sc.GEN_AI_REQUEST_MAX_TOKENS: 16, sc.GEN_AI_RESPONSE_FINISH_REASONS: ["length"],
        sc.REQUEST_INPUT_TEXT: "Héllo \U0001F600 \"quoted\" \\ tab\t nl\n \x01 \x7f", sc.REQUEST_PROMPT_IDS: [1, 2, 3],
        sc.REQUEST_REQUESTED_ARTIFACTS: ["tokens", "activation", "logits"], sc.REQUEST_LAYERS: [0, 3],
        sc.REQUEST_INTERVENTIONS: json.dumps([{"name": "steer", "layer_index": 3, "params": {"alpha": 0.5}},
                                              {"name": "ablate", "layer_index": 0}]),
        sc.REQUEST_APPLY_CHAT_TEMPLATE: True, sc.REQUEST_RETURN_LOGITS: True, sc.REQUEST_RETURN_LOGPROBS: True,
        sc.REQUEST_METADATA: json.dumps({"user": "tests", "nested": {"a": [1, {"b": None}]}}),
        sc.EXECUTOR_NAME: "torch", sc.EXECUTOR_VERSION: "2.13.0",
        sc.capability("can_emit_logits"): "full", sc.capability("can_emit_activations"): "partial",
        sc.CAPABILITY_DEVICE_KINDS: ["cpu", "cuda"],
        sc.CAPABILITY_NOTES: json.dumps({"can_emit_activations": "hooks only", "can_inspect_weights": 3,
                                         "not_a_capability": "dropped"}),
        sc.DEVICE_KIND: "cpu", sc.DEVICE_LABEL: "cpu",
        sc.TRACE_METADATA: json.dumps({"experiment": "e1", "seed": 12345678901234567890}),
        sc.SWEEP_ID: "sw-1", sc.SWEEP_AXIS: "token_count", sc.SWEEP_AXIS_VALUE: 64,
        "app.kv": {"a": 1, "b": [True, None, 2.5], "c": {"d": "\u00e9"}}, "app.big": -(2**63),
        "app.float": 1e16, "app.small": 1e-07, "app.tenth": 0.1, "app.negzero": -0.0, "app.none": None,
    })
    stages = ("tokenize", "prefill", "forward", "decode", "emit")
    prev_art: str | None = None
    for i in range(n_stages):
        stage = stages[i % len(stages)]
        start = T0 + 1000 + i * 10_000_000
        attrs: dict[str, Any] = {
            sc.STAGE: stage, sc.DEVICE_KIND: "cpu", sc.DEVICE_LABEL: "cpu:0",
            sc.usl("token_count"): 8 + i, sc.usl_provenance("token_count"): "derived",
            sc.usl("input_bytes"): 4096, sc.usl_provenance("input_bytes"): "derived",
            sc.usl("output_bytes"): 8192.0, sc.usl_provenance("output_bytes"): "derived",
            sc.usl("memory_bytes"): 1 << 20, sc.usl_provenance("memory_bytes"): "measured",
            sc.MEMORY_METHOD: "cpu.rss_peak_delta", sc.usl_provenance("sync_points"): "unavailable",
            sc.COUNTER_MODE: "cheap", "app.stage_note": "n" * (i + 1),
        }
        if i % 2:
            attrs[sc.usl("duration_s")] = 0.0025
            attrs[sc.usl_provenance("duration_s")] = "measured"
            attrs[sc.usl("device_duration_s")] = 3
            attrs[sc.usl("sync_points")] = 2
            attrs[sc.usl_provenance("sync_points")] = "measured"
        if stage == "decode":
            attrs.update({sc.DECODE_STEPS: 4, sc.DECODE_STEP_P50_S: 0.001, sc.DECODE_STOP_REASON: "max_tokens"})
        if prev_art is not None:
            attrs[sc.SPAN_INPUT_ARTIFACT_IDS] = [prev_art]
        if i == 2:
            attrs[sc.SPAN_METADATA] = json.dumps({"layers": 2, "app.stage_note": "overridden", "z": [1]})
        sp = b.span(stage, sid(f"{tag}s{i}"), root_id, start=start, end=start + 2_500_000, attrs=attrs)
        for j in range(artifacts_per_stage):
            art_id = f"{stage}-{i}-{j}"
            # events out of time order: the rebuild sorts them by time
            event(sp, sc.EVENT_ARTIFACT, start + 2_000_000 - j * 10, artifact(art_id, layer=j))
            prev_art = art_id
        event(sp, sc.EVENT_ARTIFACT_MISSING, start + 5, {
            sc.ARTIFACT_KIND: "weight_snapshot", sc.MISSING_REASON: "unsupported", sc.MISSING_DETAIL: "not built",
            sc.ARTIFACT_LAYER: 1, "ignored": "x"})
        event(sp, "app.checkpoint", start + 7, {"step": i, "label": "\U00010348"})
    del root
    return b


def split_per_trace(data: bytes) -> list[bytes]:
    """One serialized TracesData per trace id, exactly as the collector hands a new trace to the
    rebuild (the store's rows of the request, regrouped by ``snapshot_bytes``)."""
    rows = extract_rows(ExportTraceServiceRequest.FromString(data).resource_spans)[0]
    by_trace: dict[str, list[SpanRow]] = {}
    for row in rows:
        by_trace.setdefault(row.trace_id, []).append(row)
    return [snapshot_bytes(group) for group in by_trace.values()]


def native_result(data: bytes) -> TraceDocument | None:
    """The C road alone (None when it bails)."""
    assert _NATIVE is not None
    got = _NATIVE.rebuild_one(data)
    if got is None:
        return None
    t, text, complete, service, root_name, start, end, count, stages, labels = got
    return TraceDocument(t, text, complete, service, root_name, start, end, count, stages, labels, True)


def python_result(data: bytes) -> list[TraceDocument] | None:
    """The Python road (None when it raises RebuildError)."""
    try:
        return python_documents(data)
    except RebuildError:
        return None


def same(native: TraceDocument, reference: TraceDocument) -> bool:
    return dataclasses.replace(native, native=False) == reference


def check(data: bytes, *, must_be_native: bool) -> TraceDocument | None:
    """Assert the C road bails or equals the Python road; return the native document."""
    doc = native_result(data)
    if must_be_native:
        assert doc is not None, "the C road bailed on a clean trace"
    if doc is None:
        return None
    ref = python_result(data)
    assert ref is not None and len(ref) == 1, "C produced a document where Python raises or finds several traces"
    if doc.json != ref[0].json:
        i = next(i for i, (x, y) in enumerate(zip(doc.json, ref[0].json, strict=False)) if x != y) if any(
            x != y for x, y in zip(doc.json, ref[0].json, strict=False)) else min(len(doc.json), len(ref[0].json))
        raise AssertionError(f"JSON differs at {i}:\nC:  {doc.json[max(0, i - 200):i + 80]}\n"
                             f"Py: {ref[0].json[max(0, i - 200):i + 80]}")
    assert same(doc, ref[0]), (doc, ref[0])
    return doc


def rng_value(rng: random.Random, words: list[str]) -> Any:
    """A random attribute value, biased to the edges the rebuild cares about."""
    r = rng.random()
    if r < 0.2:
        return rng.choice(words)
    if r < 0.3:
        return rng.choice([0, 1, -1, 2**63 - 1, -(2**63), 7, 2**53 + 1])
    if r < 0.4:
        return rng.choice([0.0, -0.0, 0.1, 1e-07, 1e16, 2.5, -1.5, float("nan"), float("inf"), 3.0, 1e300])
    if r < 0.47:
        return rng.choice([True, False])
    if r < 0.57:
        return [rng_value(rng, words) for _ in range(rng.randrange(4))]
    if r < 0.62:
        return {rng.choice(["a", "b", "events"]): rng_value(rng, words) for _ in range(rng.randrange(3))}
    if r < 0.65:
        return b"\x00\x01"
    if r < 0.68:
        return None
    if r < 0.85:
        return json.dumps(rng.choice([
            {"a": 1}, {"events": 2}, {"remote_parent_id": "x"}, {"span_count": 1}, [1, 2], "s", 3,
            {"can_emit_logits": {"x": 1}}, {"can_emit_text": "t", "zz": 1.5},
            [{"name": "n", "layer_index": 1}], [{"name": "", "layer_index": 1}], [{"name": "n", "layer_index": -1}],
            [{"name": "n", "layer_index": 1, "params": None}], [{"name": "n"}], {"app.stage_note": 5},
            {"nan": float("nan")}, {"s": "\ud800"},
        ]))
    return rng.choice(["", "x", "\u00e9\U0001F600", "not json {", "1.0", "2.0", "sha256:" + "a" * 64, "NaN"])
