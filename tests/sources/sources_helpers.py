"""Helpers for source tests (imported by name; conftest.py only holds fixtures): real SDK spans encoded by the official OTLP encoder, and a real
HTTP server on 127.0.0.1 that replays backend answers (Jaeger/Tempo cannot run here)."""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from opentelemetry.exporter.otlp.proto.common.trace_encoder import encode_spans
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

from vauban_trace import semconv as sc

DIGEST = "sha256:" + "cd" * 32


def make_spans(service: str = "svc-a", n_stages: int = 2, with_root: bool = True) -> list[ReadableSpan]:
    """Spans of one vauban-style request, made by the real SDK."""
    exporter = InMemorySpanExporter()
    provider = TracerProvider(resource=Resource.create({sc.SERVICE_NAME: service}))
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    tracer = provider.get_tracer("source-tests")
    with tracer.start_as_current_span("text_completion tiny") as root:
        root.set_attributes({sc.TRACE_ROOT: True, sc.REQUEST_INPUT_REF: DIGEST, sc.GEN_AI_REQUEST_MODEL: "tiny"})
        for i in range(n_stages):
            with tracer.start_as_current_span(f"stage-{i}") as st:
                st.set_attribute(sc.STAGE, "forward")
                st.set_attribute(sc.usl("token_count"), 3 + i)
                st.set_attribute(sc.usl_provenance("token_count"), "derived")
                st.add_event(sc.EVENT_ARTIFACT, {sc.ARTIFACT_ID: f"a{i}", sc.ARTIFACT_KIND: "tokens"})
    provider.shutdown()
    spans = list(exporter.get_finished_spans())
    return spans if with_root else [s for s in spans if s.parent is not None]


def encode(spans: list[ReadableSpan]) -> ExportTraceServiceRequest:
    return encode_spans(spans)


def trace_id_of(spans: list[ReadableSpan]) -> str:
    return format(spans[0].context.trace_id, "032x")


@dataclass
class Route:
    status: int
    body: bytes
    content_type: str = "application/json"
    delay_s: float = 0.0


@dataclass
class FakeBackend:
    """Routes: exact path -> Route or a callable(query) -> Route. Unknown paths answer 404 text."""

    url: str = ""
    routes: dict[str, Route | Callable[[dict[str, list[str]]], Route]] = field(default_factory=dict)
    requests: list[tuple[str, dict[str, list[str]]]] = field(default_factory=list)

    def json(self, path: str, doc: Any, status: int = 200) -> None:
        self.routes[path] = Route(status, json.dumps(doc).encode())


