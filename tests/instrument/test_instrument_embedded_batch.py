"""The embedded exporter saves a batch's rebuilt traces in one transaction, late spans refresh a
trace, and a trace that fails to rebuild costs neither the batch's other traces nor the caller."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import pytest
from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor, SpanExportResult
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

import vauban_trace as vt
from vauban_trace.instrument import EmbeddedExporter
from vauban_trace.rebuild import rebuild_traces
from vauban_trace.store import TraceStore


def _requests(n: int) -> tuple[list[ReadableSpan], list[str]]:
    """Spans of ``n`` traced requests (root + two stages each), from a private provider."""
    memory = InMemorySpanExporter()
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(memory))
    ids: list[str] = []
    for i in range(n):
        with vt.traced_request(model="tiny", tracer_provider=provider, metadata={"i": i}) as req:
            with vt.stage("tokenize", tracer_provider=provider):
                pass
            with vt.stage("forward", tracer_provider=provider):
                pass
        assert req.trace_id is not None
        ids.append(req.trace_id)
    return list(memory.get_finished_spans()), ids


def _counting(store: TraceStore, monkeypatch: pytest.MonkeyPatch) -> list[int]:
    calls: list[int] = []
    original = store.put_documents

    def put_documents(items: Any, **kw: Any) -> int:
        items = list(items)
        calls.append(len(items))
        return original(items, **kw)

    monkeypatch.setattr(store, "put_documents", put_documents)
    return calls


def test_batch_is_one_transaction_and_matches_the_reference(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    spans, ids = _requests(5)
    store = TraceStore(tmp_path)
    calls = _counting(store, monkeypatch)
    exporter = EmbeddedExporter(store)
    assert exporter.export(spans) is SpanExportResult.SUCCESS
    assert calls == [5]
    assert sorted(exporter.rebuilt) == sorted(ids)
    for tid in ids:
        (reference,) = rebuild_traces(store.spans_for(tid))
        assert store.trace_json_path(tid).read_text() == reference.to_json()
        assert store.get_trace(tid) == reference
        assert len(reference.spans) == 3
    assert store.pending_count() == 0


def test_late_spans_refresh_the_trace(tmp_path: Path) -> None:
    spans, (tid,) = _requests(1)
    root = [s for s in spans if s.parent is None]
    children = [s for s in spans if s.parent is not None]
    store = TraceStore(tmp_path)
    exporter = EmbeddedExporter(store)
    assert exporter.export(root) is SpanExportResult.SUCCESS
    assert len(store.get_trace(tid).spans) == 1
    assert exporter.export(children) is SpanExportResult.SUCCESS
    (reference,) = rebuild_traces(store.spans_for(tid))
    assert store.get_trace(tid) == reference and len(reference.spans) == 3
    assert store.pending_count() == 0


def test_one_bad_trace_keeps_the_others(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import vauban_trace.rebuild as rebuild

    spans, ids = _requests(3)
    store = TraceStore(tmp_path)
    exporter = EmbeddedExporter(store)
    real = rebuild.rebuild_documents
    seen: list[int] = []

    def flaky(data: Sequence[int]) -> Any:
        seen.append(1)
        if len(seen) == 2:
            raise ValueError("boom")
        return real(data)  # type: ignore[arg-type]

    monkeypatch.setattr(rebuild, "rebuild_documents", flaky)
    assert exporter.export(spans) is SpanExportResult.FAILURE
    assert len(exporter.rebuilt) == 2 and len(exporter.errors) == 1
    assert "ValueError: boom" in exporter.errors[0]
    bad = next(t for t in ids if t not in exporter.rebuilt)
    assert bad in exporter.errors[0]
    for tid in exporter.rebuilt:
        assert len(store.get_trace(tid).spans) == 3
    # the raw spans of the bad trace are stored: the next batch touching it rebuilds it
    assert store.raw_span_count(bad) == 3
