"""CUDA cases of the torch counters and of instrument_model (skipped without a CUDA device).

Run on a GPU machine: ``python -m pytest -q tests/executors/torch/test_torch_cuda.py``.
"""

from __future__ import annotations

import warnings
from collections.abc import Callable, Iterator
from typing import Any

import pytest
import torch
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

from vauban_trace import semconv as sc
from vauban_trace.executors.torch._counters import CudaSyncProbe, MemoryProbe, make_probes
from vauban_trace.executors.torch._deep import DeepCounterProbe
from vauban_trace.instrument import probes, stage
from vauban_trace.instrument._probes import flush_deferred, instrumentation_work

pytestmark = [
    pytest.mark.cuda,
    pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device (none visible to torch)"),
]


@pytest.fixture()
def traced() -> Iterator[tuple[TracerProvider, InMemorySpanExporter]]:
    exporter = InMemorySpanExporter()
    tp = TracerProvider()
    tp.add_span_processor(SimpleSpanProcessor(exporter))
    yield tp, exporter
    tp.shutdown()


def count_syncs(fn: Callable[[], Any]) -> tuple[Any, int]:
    """Synchronisations during ``fn()``: sync debug mode warnings (a CudaSyncProbe passes them on)."""
    saved = torch.cuda.get_sync_debug_mode()
    with warnings.catch_warnings(record=True) as log:
        warnings.simplefilter("always")
        torch.cuda.set_sync_debug_mode("warn")
        try:
            result = fn()
        finally:
            torch.cuda.set_sync_debug_mode(saved)
    # the sync probe passes warnings on when the debug mode was set by someone else (here: us)
    return result, sum(1 for w in log if "synchronizing CUDA operation" in str(w.message))


def test_cuda_sync_probe_counts_item_calls_exactly_and_nests() -> None:
    probe = CudaSyncProbe()
    x = torch.arange(8.0, device="cuda")
    outer = probe.start()
    x.sum().item()
    inner = probe.start()
    x[0].item()
    x[1].item()
    assert probe.stop(inner) == {"sync_points": (2, "measured")}
    with instrumentation_work():
        x[2].item()  # the instrumentation's own: not counted
    _ = x * 2  # no sync
    assert probe.stop(outer) == {"sync_points": (3, "measured")}
    assert torch.cuda.get_sync_debug_mode() == 0


def test_cuda_memory_probe_peak_survives_an_inner_reset() -> None:
    probe = MemoryProbe("cuda")
    assert probe.attributes[sc.MEMORY_METHOD] == "cuda.max_memory_allocated"
    outer = probe.start()
    big = torch.empty(64 * 1024 * 1024, dtype=torch.uint8, device="cuda")
    del big
    inner = probe.start()
    small = torch.empty(1024 * 1024, dtype=torch.uint8, device="cuda")
    inner_peak = probe.stop(inner)["memory_bytes"][0]
    del small
    outer_peak = probe.stop(outer)["memory_bytes"][0]
    assert isinstance(inner_peak, int) and isinstance(outer_peak, int)
    assert outer_peak >= 64 * 1024 * 1024
    assert inner_peak < outer_peak


def test_cuda_device_time_is_deferred_and_then_recorded(traced: tuple[TracerProvider, InMemorySpanExporter]) -> None:
    tp, exporter = traced
    a = torch.randn(2048, 2048, device="cuda")
    with probes(*make_probes("cuda")):
        with stage("forward", tracer_provider=tp):
            for _ in range(20):
                a = a @ a
                a = a / a.norm()
    assert flush_deferred(30.0)
    (span,) = exporter.get_finished_spans()
    assert span.attributes[sc.usl_provenance("device_duration_s")] == "measured"
    assert 0 < span.attributes[sc.usl("device_duration_s")] < 30
    assert span.attributes[sc.usl_provenance("sync_points")] == "measured"
    assert span.attributes[sc.usl("sync_points")] == 0


def test_cuda_deep_counts_scripted_copies_and_syncs_exactly() -> None:
    probe = DeepCounterProbe()
    host = torch.ones(1000)  # 4000 bytes
    token = probe.start()
    dev = host.to("cuda")  # h2d 4000, blocking
    torch.tensor([1.0, 2.0, 3.0], device="cuda")  # h2d 12, from host data, blocking
    back = (dev * 2).cpu()  # d2h 4000, blocking
    dev.sum().item()  # d2h 4, blocking
    dev[:10].tolist()  # d2h 40, blocking
    dev.nonzero()  # d2h 4 (the element count), blocking
    torch.empty(0).to("cuda")  # empty: nothing moves, not counted
    pinned = torch.ones(10).pin_memory()
    dev[:10].copy_(pinned, non_blocking=True)  # h2d 40, asynchronous: no sync
    with instrumentation_work():
        dev[:5].cpu()  # instrumentation's own: 20 bytes apart
    readings = probe.stop(token)
    assert back.device.type == "cpu"
    assert readings["h2d_copies"] == (3, "measured") and readings["h2d_bytes"] == (4052, "measured")
    assert readings["d2h_copies"] == (4, "measured") and readings["d2h_bytes"] == (4048, "measured")
    assert readings["host_device_copies"] == (7, "measured")
    assert readings["sync_points"] == (6, "measured")  # every one of the six is a blocking copy
    assert readings["instrumentation_d2h_copies"] == (1, "measured")
    assert readings["instrumentation_d2h_bytes"] == (20, "measured")


def _tiny_cuda() -> tuple[Any, Any]:
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from vauban_trace.executors.torch.tiny import cached_tiny_model

    directory = cached_tiny_model("llama", hidden_size=64, num_layers=2)
    model = AutoModelForCausalLM.from_pretrained(directory).to("cuda").eval()
    return model, AutoTokenizer.from_pretrained(directory)


def test_cuda_instrument_model_adds_no_synchronisation(traced: tuple[TracerProvider, InMemorySpanExporter]) -> None:
    from vauban_trace.executors.torch._patch import instrument_model

    tp, exporter = traced
    model, tok = _tiny_cuda()
    inputs = {k: v.to("cuda") for k, v in tok("Hello world", return_tensors="pt").items()}
    kw = {"max_new_tokens": 8, "min_new_tokens": 8, "do_sample": False}
    model.generate(**inputs, **kw)  # warm-up
    plain, plain_syncs = count_syncs(lambda: model.generate(**inputs, **kw))
    with instrument_model(model, tok, tracer_provider=tp):
        traced_out, traced_syncs = count_syncs(lambda: model.generate(**inputs, **kw))
    assert torch.equal(plain, traced_out)
    assert plain_syncs > 0
    assert traced_syncs == plain_syncs
    assert flush_deferred(30.0)
    spans = {s.name.split(" ")[0]: s for s in exporter.get_finished_spans()}
    assert {"text_completion", "prefill", "decode"} <= set(spans)
    for name in ("prefill", "decode"):
        attrs = spans[name].attributes
        assert attrs[sc.usl_provenance("device_duration_s")] == "measured"
        assert attrs[sc.usl_provenance("sync_points")] == "measured"
        assert attrs[sc.MEMORY_METHOD] == "cuda.max_memory_allocated"
        assert attrs[sc.usl_provenance("h2d_copies")] == "unavailable"
    stage_syncs = sum(spans[n].attributes[sc.usl("sync_points")] for n in ("prefill", "decode"))
    assert stage_syncs <= plain_syncs
    root = spans["text_completion"].attributes
    assert root[sc.GEN_AI_USAGE_OUTPUT_TOKENS] == 8
    assert root[sc.DEVICE_KIND] == "cuda"


def test_cuda_sync_probe_passes_the_applications_own_warnings_on() -> None:
    probe = CudaSyncProbe()
    x = torch.arange(4.0, device="cuda")
    with warnings.catch_warnings(record=True) as log:
        warnings.simplefilter("always")
        torch.cuda.set_sync_debug_mode("warn")  # the application's own choice
        try:
            token = probe.start()
            x[0].item()
            readings = probe.stop(token)
            assert torch.cuda.get_sync_debug_mode() == 1  # left as the application set it
        finally:
            torch.cuda.set_sync_debug_mode(0)
    assert readings == {"sync_points": (1, "measured")}
    assert sum("synchronizing CUDA operation" in str(w.message) for w in log) == 1
