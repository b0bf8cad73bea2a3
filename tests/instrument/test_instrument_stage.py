"""stage(): span attributes, counters and provenance, decorator measurement, errors, async."""

from __future__ import annotations

import asyncio
import traceback
from typing import Any

import numpy as np
import pytest
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import StatusCode

import vauban_trace as vt
from vauban_trace import semconv as sc
from vauban_trace.contract import COUNTER_NAMES


def _only(spans: InMemorySpanExporter, name: str) -> Any:
    found = [s for s in spans.get_finished_spans() if s.name == name]
    assert len(found) == 1, [s.name for s in spans.get_finished_spans()]
    return found[0]


def test_context_manager_records_declared_measured_and_unavailable(spans: InMemorySpanExporter) -> None:
    with vt.stage("decode", token_count=7, batch_size=2, device="cpu") as st:
        st.set_counter("sync_points", 3, provenance="measured")
        st.set_counter("h2d_bytes", 128, provenance="derived")
    span = _only(spans, "decode")
    a = span.attributes
    assert a[sc.STAGE] == "decode"
    assert a[sc.usl("token_count")] == 7 and a[sc.usl_provenance("token_count")] == "declared"
    assert a[sc.usl("batch_size")] == 2 and a[sc.usl_provenance("batch_size")] == "declared"
    assert a[sc.usl("sync_points")] == 3 and a[sc.usl_provenance("sync_points")] == "measured"
    assert a[sc.usl("h2d_bytes")] == 128 and a[sc.usl_provenance("h2d_bytes")] == "derived"
    assert a[sc.usl_provenance("duration_s")] == "measured"
    assert 0 <= a[sc.usl("duration_s")] <= (span.end_time - span.start_time) / 1e9 + 1e-3
    assert a[sc.DEVICE_KIND] == "cpu" and a[sc.DEVICE_LABEL] == "cpu"
    obtained = {"token_count", "batch_size", "sync_points", "h2d_bytes", "duration_s"}
    for counter in COUNTER_NAMES:
        if counter in obtained:
            continue
        assert a[sc.usl_provenance(counter)] == "unavailable", counter
        assert sc.usl(counter) not in a, f"{counter} must not hold a placeholder value"


def test_nested_stages_are_parent_and_child(spans: InMemorySpanExporter) -> None:
    with vt.stage("forward"):
        with vt.stage("observe"):
            pass
    outer, inner = _only(spans, "forward"), _only(spans, "observe")
    assert inner.parent is not None and inner.parent.span_id == outer.context.span_id


def test_decorator_derives_bytes_and_device_from_numpy(spans: InMemorySpanExporter) -> None:
    @vt.stage("forward")
    def forward(x: np.ndarray, *, mask: np.ndarray, scale: float = 2.0) -> dict[str, Any]:
        return {"logits": (x * scale).astype(np.float64), "n": 3}

    x = np.ones((4, 8), dtype=np.float32)
    mask = np.ones((4, 8), dtype=np.int64)
    out = forward(x, mask=mask)
    assert out["logits"].shape == (4, 8)
    a = _only(spans, "forward").attributes
    assert a[sc.usl("input_bytes")] == x.nbytes + mask.nbytes
    assert a[sc.usl_provenance("input_bytes")] == "derived"
    assert a[sc.usl("output_bytes")] == out["logits"].nbytes
    assert a[sc.usl_provenance("output_bytes")] == "derived"
    assert a[sc.DEVICE_KIND] == "cpu"
    assert forward.__name__ == "forward"


def test_decorator_measure_false_and_non_tensor_args(spans: InMemorySpanExporter) -> None:
    @vt.stage("score", measure=False)
    def score(x: np.ndarray) -> np.ndarray:
        return x

    @vt.stage("emit")
    def emit(text: str) -> str:
        return text.upper()

    score(np.zeros(3))
    assert emit("a") == "A"
    for name in ("score", "emit"):
        a = _only(spans, name).attributes
        assert a[sc.usl_provenance("input_bytes")] == "unavailable"
        assert sc.usl("input_bytes") not in a


class Boom(RuntimeError):
    pass


def _raise_boom() -> None:
    raise Boom("exploded")


def test_exception_propagates_unchanged_from_with_block(spans: InMemorySpanExporter) -> None:
    original = Boom("exploded")
    with pytest.raises(Boom) as info:
        with vt.stage("forward"):
            raise original
    assert info.value is original
    span = _only(spans, "forward")
    assert span.status.status_code is StatusCode.ERROR
    assert span.attributes[sc.ERROR_TYPE] == "Boom"
    assert any(e.name == "exception" for e in span.events)


def test_exception_propagates_unchanged_from_decorated_function(spans: InMemorySpanExporter) -> None:
    @vt.stage("forward")
    def forward() -> None:
        _raise_boom()

    with pytest.raises(Boom) as info:
        forward()
    frames = [f.name for f in traceback.extract_tb(info.value.__traceback__)]
    assert "_raise_boom" in frames  # the original traceback is intact
    assert _only(spans, "forward").attributes[sc.ERROR_TYPE] == "Boom"


def test_async_decorator_and_async_with(spans: InMemorySpanExporter) -> None:
    @vt.stage("decode", token_count=1)
    async def step(x: np.ndarray) -> np.ndarray:
        await asyncio.sleep(0)
        return x + 1

    async def main() -> np.ndarray:
        async with vt.stage("prefill") as st:
            st.set_counter("token_count", 5)
            return await step(np.zeros(4, dtype=np.float32))

    out = asyncio.run(main())
    assert out.tolist() == [1, 1, 1, 1]
    prefill, decode = _only(spans, "prefill"), _only(spans, "decode")
    assert decode.parent is not None and decode.parent.span_id == prefill.context.span_id
    assert decode.attributes[sc.usl("input_bytes")] == 16
    assert prefill.attributes[sc.usl("token_count")] == 5


def test_async_exception_identity(spans: InMemorySpanExporter) -> None:
    original = Boom("async")

    @vt.stage("decode")
    async def step() -> None:
        raise original

    with pytest.raises(Boom) as info:
        asyncio.run(step())
    assert info.value is original
    assert _only(spans, "decode").status.status_code is StatusCode.ERROR


def test_generator_span_covers_iteration(spans: InMemorySpanExporter) -> None:
    @vt.stage("decode")
    def tokens(n: int) -> Any:
        for i in range(n):
            yield np.full(2, i, dtype=np.int64)

    got = [int(t[0]) for t in tokens(3)]
    assert got == [0, 1, 2]
    a = _only(spans, "decode").attributes
    assert a[sc.usl("output_bytes")] == 3 * 16


def test_bad_counters_are_clear_errors(spans: InMemorySpanExporter) -> None:
    with pytest.raises(vt.ContractError, match="bogus"):
        vt.stage("forward", bogus=1)
    with vt.stage("forward") as st:
        with pytest.raises(vt.ContractError, match="sync_points"):
            st.set_counter("sync_points", -1)
        with pytest.raises(vt.ContractError, match="provenance"):
            st.set_counter("sync_points", 1, provenance="guessed")


class _CountingProbe:
    name = "counting"
    attributes = {sc.MEMORY_METHOD: "test.counter"}

    def __init__(self) -> None:
        self.total = 0

    def start(self) -> object:
        return self.total

    def stop(self, token: object) -> Any:
        assert isinstance(token, int)
        self.total += 5
        return {"sync_points": (self.total - token, "measured"), "memory_bytes": (None, "unavailable")}


class _BrokenProbe:
    name = "broken"

    def start(self) -> object:
        raise RuntimeError("probe down")

    def stop(self, token: object) -> Any:
        raise RuntimeError("probe down")


def test_probes_readings_recorded_and_broken_probe_ignored(spans: InMemorySpanExporter) -> None:
    probe = _CountingProbe()
    with vt.probes(probe, _BrokenProbe()):
        with vt.stage("forward"):
            with vt.stage("observe") as st:
                st.set_counter("sync_points", 1, provenance="declared")  # caller wins over probe
    fwd, obs = _only(spans, "forward"), _only(spans, "observe")
    assert fwd.attributes[sc.usl("sync_points")] == 10  # nested: inner 5 + its own 5
    assert fwd.attributes[sc.usl_provenance("sync_points")] == "measured"
    assert fwd.attributes[sc.MEMORY_METHOD] == "test.counter"
    assert fwd.attributes[sc.usl_provenance("memory_bytes")] == "unavailable"
    assert obs.attributes[sc.usl("sync_points")] == 1
    assert obs.attributes[sc.usl_provenance("sync_points")] == "declared"


def test_stage_object_reused_as_context_manager(spans: InMemorySpanExporter) -> None:
    st = vt.stage("decode")
    for _ in range(3):
        with st:
            pass
    assert len([s for s in spans.get_finished_spans() if s.name == "decode"]) == 3


def test_decorator_derives_bytes_from_torch_tensors(spans: InMemorySpanExporter) -> None:
    import torch

    @vt.stage("forward")
    def forward(ids: torch.Tensor, mask: torch.Tensor) -> Any:
        return {"logits": torch.zeros(1, ids.shape[1], 16, dtype=torch.bfloat16)}

    forward(torch.ones(1, 5, dtype=torch.int64), mask=torch.ones(1, 5, dtype=torch.int64))
    a = _only(spans, "forward").attributes
    assert a[sc.usl("input_bytes")] == 2 * 5 * 8
    assert a[sc.usl("output_bytes")] == 5 * 16 * 2
    assert a[sc.DEVICE_LABEL] == "cpu"


def test_inputs_link_consumed_artifacts(spans: InMemorySpanExporter, blob_store: Any) -> None:
    from opentelemetry.exporter.otlp.proto.common.trace_encoder import encode_spans

    from vauban_trace.rebuild import rebuild_traces

    with vt.traced_request(vt.TraceRequest(prompt_ids=(1,)), model="m"):
        with vt.stage("tokenize"):
            ref = vt.record_artifact("tokens", [1, 2], store=blob_store)
        with vt.stage("forward", inputs=[ref]) as st:
            st.set_metadata({"kernel": "eager"})
    (trace,) = rebuild_traces(encode_spans(spans.get_finished_spans()))
    fwd = trace.spans_for_stage("forward")[0]
    assert ref is not None and fwd.input_artifact_ids == (ref.id,)
    assert fwd.metadata["kernel"] == "eager"
