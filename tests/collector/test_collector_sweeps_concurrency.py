"""The sweep gauges on the concurrency axis: observed throughput is the fitted request throughput."""

from __future__ import annotations

import statistics
from typing import Any

import pytest

from vauban_trace.collector._sweeps import samples_of
from vauban_trace.contract import Trace, TraceSpan
from vauban_trace.sweep import LOAD_KEY, REQUEST, profile_traces

ROOT = "b" * 16


def _x(n: int) -> float:
    return 100.0 * n / (1 + 0.08 * (n - 1) + 0.004 * n * (n - 1))


def _closed_loop(n: int, run: int, slow: float) -> list[Trace]:
    """N clients issuing back-to-back requests (response time N / X(N)); each waits in a queue stage."""
    r_ns = int(n / _x(n) * slow * 1e9)
    base = 10**12 * (run + 1) + 10**10 * n
    out = []
    for c in range(n):
        for i in range(4):
            start = base + c * 1000 + i * r_ns
            meta: dict[str, Any] = {"sweep": {"id": "cc", "axis": "concurrency", "axis_value": n},
                                    LOAD_KEY: {"run": run, "client": c, "seq": i}}
            spans = (TraceSpan(id=ROOT, name="root", start_unix_nano=start, end_unix_nano=start + r_ns),
                     TraceSpan(id="c" * 16, name="queue", stage="queue", parent_id=ROOT,
                               start_unix_nano=start + 10, end_unix_nano=start + r_ns // 2))
            out.append(Trace(id=f"{run:04x}{n:04x}{c:04x}{i:04x}".ljust(32, "0"), spans=spans, metadata=meta))
    return out


def test_concurrency_gauges_observe_the_fitted_request_throughput_only() -> None:
    slow = (1.0, 1.02, 0.99)
    traces = [t for n in (1, 2, 4, 8, 16, 32) for run in range(3) for t in _closed_loop(n, run, slow[run])]
    profile = profile_traces(traces, sweep_id="cc")
    assert profile.throughput_method is not None
    samples = samples_of(profile, "m")
    observed = {(labels[2], labels[4]): value for name, labels, value in samples
                if name == "vauban_sweep_observed" and labels[5] == "throughput"}
    # only the request stage has a throughput, one per N, the median over runs of what the USL was fitted to
    assert {stage for stage, _ in observed} == {REQUEST}
    for n in (1, 2, 4, 8, 16, 32):
        runs = [tp.throughput(profile.throughput_method) for tp in profile.throughput if tp.value == n]
        assert len(runs) == 3 and None not in runs
        assert observed[(REQUEST, str(n))] == pytest.approx(statistics.median(runs))  # type: ignore[type-var]
        assert observed[(REQUEST, str(n))] == pytest.approx(_x(n), rel=0.03)
    # the queue stage still exports its median duration
    assert any(name == "vauban_sweep_observed" and labels[2] == "queue" and labels[5] == "median_duration_s"
               for name, labels, _ in samples)
