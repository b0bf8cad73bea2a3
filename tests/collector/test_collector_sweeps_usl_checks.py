"""The sweep gauges for the repeat-based USL checks: peak interval, weighting, lack-of-fit test."""

from __future__ import annotations

import math

from vauban_trace.collector._sweeps import FAMILIES, samples_of
from vauban_trace.contract import StageProfile, Trace, TraceSpan
from vauban_trace.sweep import profile_traces

ROOT = "b" * 16
VALUES = (1, 2, 4, 8, 16, 32, 64)


def _trace(i: int, n: int, seconds: float) -> Trace:
    start = 1_000_000_000 + i * 10_000_000_000
    end = start + int(seconds * 1e9) + 2_000
    prof = StageProfile(name="forward", duration_s=seconds, provenance={"duration_s": "declared"})
    spans = (
        TraceSpan(id=ROOT, name="root", start_unix_nano=start, end_unix_nano=end),
        TraceSpan(id=f"{i + 1:016x}", name="forward", stage="forward", parent_id=ROOT,
                  start_unix_nano=start + 1_000, end_unix_nano=end - 1_000, profile=prof),
    )
    return Trace(id=f"{i + 1:032x}", spans=spans, metadata={"sweep": {"id": "g1", "axis": "batch_size", "axis_value": n}})


def _profile(curve: object) -> list[tuple[str, tuple[str, ...], float]]:
    noise = (0.01, -0.01, 0.0, 0.005)
    traces = [_trace(i * 10 + r, n, n / curve(n) * (1 + noise[r]))  # type: ignore[operator]
              for i, n in enumerate(VALUES) for r in range(4)]
    return samples_of(profile_traces(traces, sweep_id="g1"), "m")


def _rows(samples: list[tuple[str, tuple[str, ...], float]], family: str) -> dict[tuple[str, ...], float]:
    return {labels[4:]: value for name, labels, value in samples if name == family and labels[2] == "forward"}


def test_fitted_stage_exports_peak_interval_weighting_and_lack_of_fit() -> None:
    samples = _profile(lambda n: 100.0 * n / (1 + 0.05 * (n - 1) + 0.002 * n * (n - 1)))
    status = _rows(samples, "vauban_sweep_fit_status")
    assert [k[0] for k in status] == ["fitted"]
    peak = _rows(samples, "vauban_sweep_usl_peak")[()]
    interval = _rows(samples, "vauban_sweep_usl_peak_interval")
    assert interval[("low",)] <= peak <= interval[("high",)]
    assert abs(peak - math.sqrt(0.95 / 0.002)) < 1.0
    weighting = _rows(samples, "vauban_sweep_usl_weighting")
    assert len(weighting) == 1 and next(iter(weighting)) in (("none",), ("inverse_variance",))
    lof = _rows(samples, "vauban_sweep_usl_lack_of_fit")
    assert lof[("df_pure",)] == 3 * len(VALUES) and lof[("df_lack",)] in (4.0, 5.0, 6.0)
    assert lof[("p_value",)] >= 0.01 and lof[("f",)] >= 0.0
    for name, labels, _ in samples:
        assert len(labels) == 4 + len(FAMILIES[name][1])


def test_lack_of_fit_refusal_exports_no_number() -> None:
    samples = _profile(lambda n: 100.0 if n < 16 else 150.0)  # a step: throughput no USL follows
    (status,) = _rows(samples, "vauban_sweep_fit_status")
    assert status[0] == "refused" and status[1].startswith("lack of fit")
    for family in ("vauban_sweep_usl_peak_interval", "vauban_sweep_usl_weighting", "vauban_sweep_usl_lack_of_fit",
                   "vauban_sweep_usl_parameter"):
        assert _rows(samples, family) == {}
