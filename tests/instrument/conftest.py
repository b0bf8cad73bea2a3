"""Fixtures for the instrumentation tests: one global SDK provider with an in-memory exporter.

OpenTelemetry allows one global TracerProvider per process. If another test module already
installed an SDK provider, the in-memory exporter is added to it instead.
"""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from opentelemetry import trace
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

_EXPORTER = InMemorySpanExporter()
_INSTALLED = False


def _install() -> None:
    global _INSTALLED
    if _INSTALLED:
        return
    current = trace.get_tracer_provider()
    if not isinstance(current, TracerProvider):
        current = TracerProvider()
        trace.set_tracer_provider(current)
    current.add_span_processor(SimpleSpanProcessor(_EXPORTER))
    _INSTALLED = True


@pytest.fixture()
def spans() -> Iterator[InMemorySpanExporter]:
    """The in-memory exporter behind the global provider, emptied for this test."""
    _install()
    _EXPORTER.clear()
    yield _EXPORTER
    _EXPORTER.clear()


@pytest.fixture()
def blob_store(tmp_path):  # type: ignore[no-untyped-def]
    from vauban_trace.artifacts import open_store

    return open_store(tmp_path / "blobs")
