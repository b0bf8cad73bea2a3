"""Counter probes on CPU: nesting, deep copy/sync accounting, deferred readings, never raising."""

from __future__ import annotations

import threading
import time

import numpy as np
import pytest
import torch
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

from vauban_trace import semconv as sc
from vauban_trace.executors.torch._counters import HostDeviceProbe, MemoryProbe, _PeakFrames, make_probes
from vauban_trace.executors.torch._deep import DeepCounterProbe
from vauban_trace.instrument import probes, stage
from vauban_trace.instrument._probes import Deferred, flush_deferred, instrumentation_work


@pytest.fixture()
def provider() -> tuple[TracerProvider, InMemorySpanExporter]:
    exporter = InMemorySpanExporter()
    tp = TracerProvider()
    tp.add_span_processor(SimpleSpanProcessor(exporter))
    return tp, exporter


class _FakePeakSource:
    """A 'peak since reset' source driven by the test: alloc/free move current; peak follows."""

    def __init__(self) -> None:
        self.current = 0
        self.peak = 0

    def alloc(self, n: int) -> None:
        self.current += n
        self.peak = max(self.peak, self.current)

    def free(self, n: int) -> None:
        self.current -= n

    def reset(self) -> bool:
        self.peak = self.current
        return True


def test_peak_frames_keep_the_outer_peak_across_an_inner_reset() -> None:
    src = _FakePeakSource()
    frames = _PeakFrames(lambda: src.peak, src.reset)
    outer = frames.start()
    src.alloc(1000)
    src.free(1000)  # outer peak 1000, then the inner stage resets the source
    inner = frames.start()
    src.alloc(300)
    assert inner is not None and outer is not None
    assert frames.stop(inner) == 300
    src.free(300)
    src.alloc(50)
    assert frames.stop(outer) == 1000


def test_peak_frames_propagate_an_inner_peak_to_the_outer_stage() -> None:
    src = _FakePeakSource()
    frames = _PeakFrames(lambda: src.peak, src.reset)
    outer = frames.start()
    inner = frames.start()
    src.alloc(700)
    assert inner is not None and outer is not None
    assert frames.stop(inner) == 700
    src.free(700)
    second = frames.start()  # a sibling resets again: the 700 must survive in the outer frame
    src.alloc(10)
    assert second is not None
    assert frames.stop(second) == 10
    assert frames.stop(outer) == 700


def test_cpu_memory_probe_sees_a_transient_peak() -> None:
    probe = MemoryProbe("cpu")
    method = probe.attributes[sc.MEMORY_METHOD]
    assert method in ("cpu.rss_peak", "cpu.rss_endpoints")
    token = probe.start()
    before = probe._point() or 0
    block = np.ones(64 * 1024 * 1024 // 8)  # 64 MiB, touched
    del block
    value, provenance = probe.stop(token)["memory_bytes"]
    assert provenance == "measured"
    assert isinstance(value, int) and value > 0
    if method == "cpu.rss_peak":  # the freed block still shows in the peak
        assert value >= before + 60 * 1024 * 1024


def test_cpu_cheap_probes_say_copies_are_zero_because_the_device_is_the_host() -> None:
    readings = HostDeviceProbe("cpu").stop(None)
    for counter in ("h2d_copies", "h2d_bytes", "d2h_copies", "d2h_bytes", "host_device_copies"):
        assert readings[counter] == (0, "derived")
    assert readings["sync_points"] == (None, "unavailable")
    names = [p.name for p in make_probes("cpu")]
    assert names == ["torch.memory", "torch.host"]
    assert [p.name for p in make_probes("cpu", deep=True)] == ["torch.memory", "torch.deep"]


def test_make_probes_rejects_a_bad_device() -> None:
    with pytest.raises(ValueError, match="device"):
        make_probes("")
    with pytest.raises(RuntimeError):
        make_probes("not-a-device")


def test_deep_counts_a_scripted_set_of_syncs_exactly() -> None:
    probe = DeepCounterProbe()
    t = torch.arange(10.0)
    token = probe.start()
    t[0].item()  # 1
    t.tolist()  # 2
    bool(t[1])  # 3
    int(t[2])  # 4
    t.nonzero()  # 5
    _ = t[t > 3]  # 6: boolean mask
    if (t > 8).any():  # 7
        pass
    _ = t[torch.tensor([1, 2])]  # integer index: no sync
    _ = t * 2 + 1  # arithmetic: no sync
    readings = probe.stop(token)
    assert readings["sync_points"] == (7, "measured")
    assert readings["h2d_copies"] == (0, "measured")
    assert readings["d2h_copies"] == (0, "measured")


def test_deep_probes_nest_and_modes_leave_with_the_outer_stage() -> None:
    probe = DeepCounterProbe()
    t = torch.ones(4)
    outer = probe.start()
    t.sum().item()
    inner = probe.start()
    t.tolist()
    t.tolist()
    assert probe.stop(inner)["sync_points"] == (2, "measured")
    t[0].item()
    assert probe.stop(outer)["sync_points"] == (4, "measured")
    from torch.overrides import _get_current_function_mode_stack
    from torch.utils._python_dispatch import _get_current_dispatch_mode_stack

    assert _get_current_function_mode_stack() == []
    assert _get_current_dispatch_mode_stack() == []


def test_deep_counts_host_to_device_copies_and_bytes_meta_device() -> None:
    # The meta device stands in for an accelerator: the accounting is the same code path.
    probe = DeepCounterProbe()
    t = torch.zeros(10, dtype=torch.float32)
    token = probe.start()
    m = t.to("meta")  # _to_copy cpu -> meta: 40 bytes
    torch.tensor([1.0, 2.0], device="meta")  # built from host data: 8 bytes (no dispatcher copy)
    torch.as_tensor(m, device="meta")  # already there: no copy
    torch.empty(3, device="meta").copy_(torch.ones(3, dtype=torch.float64))  # copy_ cpu -> meta: 24 bytes
    torch.empty(0).to("meta")  # empty: nothing moves, not counted
    readings = probe.stop(token)
    assert readings["h2d_copies"] == (3, "measured")
    assert readings["h2d_bytes"] == (72, "measured")
    assert readings["host_device_copies"] == (3, "measured")
    assert readings["d2h_copies"] == (0, "measured")


def test_deep_leaves_the_instrumentation_work_out() -> None:
    probe = DeepCounterProbe()
    t = torch.arange(5.0)
    token = probe.start()
    with instrumentation_work():
        t[0].item()
        t.tolist()
    t[1].item()
    readings = probe.stop(token)
    assert readings["sync_points"] == (1, "measured")


def test_probes_never_raise_on_bad_tokens() -> None:
    for probe in make_probes("cpu", deep=True) + make_probes("cpu"):
        probe.stop(object())
        probe.stop(None)


def test_stage_records_probe_counters_and_memory_method(provider: tuple[TracerProvider, InMemorySpanExporter]) -> None:
    tp, exporter = provider
    with probes(*make_probes("cpu", deep=True)):
        with stage("decode", tracer_provider=tp):
            t = torch.arange(6.0)
            t[0].item()
            with stage("forward", tracer_provider=tp):
                t.tolist()
    spans = {s.name: s for s in exporter.get_finished_spans()}
    outer, inner = spans["decode"].attributes, spans["forward"].attributes
    assert outer[sc.usl("sync_points")] == 2 and inner[sc.usl("sync_points")] == 1
    assert outer[sc.usl_provenance("sync_points")] == "measured"
    assert outer[sc.COUNTER_MODE] == "deep"
    assert outer[sc.MEMORY_METHOD] in ("cpu.rss_peak", "cpu.rss_endpoints")
    assert outer[sc.usl("memory_bytes")] >= inner[sc.usl("memory_bytes")] > 0


class _LateProbe:
    """A probe whose value is ready only when the test says so (stands in for CUDA events)."""

    name = "late"

    def __init__(self) -> None:
        self.ready = threading.Event()

    def start(self) -> object:
        return None

    def stop(self, token: object) -> dict[str, tuple[object, str]]:
        return {"device_duration_s": (Deferred(lambda wait: 0.25 if self.ready.is_set() else None), "measured")}


def test_deferred_reading_ends_the_span_later_with_its_original_end_time(
    provider: tuple[TracerProvider, InMemorySpanExporter],
) -> None:
    tp, exporter = provider
    late = _LateProbe()
    with probes(late):
        with stage("decode", tracer_provider=tp):
            pass
    stopped_ns = time.time_ns()
    assert [s.name for s in exporter.get_finished_spans()] == []  # still waiting for the value
    time.sleep(0.02)
    late.ready.set()
    assert flush_deferred(5.0)
    (span,) = exporter.get_finished_spans()
    assert span.attributes[sc.usl("device_duration_s")] == 0.25
    assert span.attributes[sc.usl_provenance("device_duration_s")] == "measured"
    assert span.end_time is not None and span.end_time <= stopped_ns


def test_deferred_reading_ready_at_exit_ends_the_span_at_once(
    provider: tuple[TracerProvider, InMemorySpanExporter],
) -> None:
    tp, exporter = provider
    late = _LateProbe()
    late.ready.set()
    with probes(late), stage("prefill", tracer_provider=tp):
        pass
    (span,) = exporter.get_finished_spans()
    assert span.attributes[sc.usl("device_duration_s")] == 0.25
