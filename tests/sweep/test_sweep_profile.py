"""profile_traces and run_sweep: grouping by sweep coordinates, summaries with provenance,
coverage stability, fits or refusals, warm-up outside the sweep, traces read back through the session."""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from typing import Any

import pytest

import vauban_trace as vt
from vauban_trace._exceptions import ConfigurationError
from vauban_trace.contract import StageProfile, Trace, TraceArtifact, TraceSpan
from vauban_trace.sweep import REQUEST, SweepSpec, profile_traces, run_sweep, schedule

ROOT = "a" * 16


def _usl_x(n: float, lam: float = 100.0, sigma: float = 0.05, kappa: float = 0.002) -> float:
    return lam * n / (1 + sigma * (n - 1) + kappa * n * (n - 1))


def _trace(i: int, n: float, *, sweep_id: str = "s1", axis: str = "batch_size", kinds: tuple[str, ...] = ("logits",),
           noise: float = 0.0, complete: bool = True) -> Trace:
    duration = n / _usl_x(n) * (1 + noise)  # seconds for the stage at N = n
    start = 1_000_000_000 + i * 10_000_000_000
    end = start + int(duration * 1e9) + 2_000
    stage_id = f"{i + 1:016x}"
    prof = StageProfile(name="forward", duration_s=duration, batch_size=int(n), input_bytes=int(64 * n),
                        sync_points=3, provenance={"duration_s": "measured", "batch_size": "declared",
                                                   "input_bytes": "derived", "sync_points": "measured"})
    spans = (
        TraceSpan(id=ROOT, name="root", start_unix_nano=start, end_unix_nano=end),
        TraceSpan(id=stage_id, name="forward", stage="forward", parent_id=ROOT, start_unix_nano=start + 1_000,
                  end_unix_nano=end - 1_000, profile=prof,
                  output_artifact_ids=tuple(f"{k}-{i}" for k in kinds)),
    )
    artifacts = tuple(TraceArtifact(id=f"{k}-{i}", kind=k, producer_span_id=stage_id) for k in kinds)
    return Trace(id=f"{i + 1:032x}", spans=spans, artifacts=artifacts, complete=complete,
                 problems=() if complete else ("no root span received",),
                 metadata={"sweep": {"id": sweep_id, "axis": axis, "axis_value": n}})


NS = (1, 2, 4, 8, 16, 32, 64)


def test_profile_groups_summarises_and_fits_a_usl_shaped_sweep() -> None:
    noise = (0.01, -0.01, 0.0)
    traces = [_trace(i * 10 + r, n, noise=noise[r]) for i, n in enumerate(NS) for r in range(3)]
    profile = profile_traces(traces)
    assert (profile.axis, profile.sweep_id, profile.values) == ("batch_size", "s1", NS)
    assert profile.stages == (REQUEST, "forward") and profile.coverage_stable
    point = profile.point("forward", 8)
    assert point.traces == 3 and point.duration_s.n == 3
    assert point.duration_s.median == pytest.approx(8 / _usl_x(8))
    assert point.counters["batch_size"].median == 8 and point.provenance["batch_size"] == ("declared",)
    assert point.provenance["input_bytes"] == ("derived",)
    fit = profile.fits["forward"]
    assert fit.status == "fitted", fit.reason
    assert fit.sigma == pytest.approx(0.05, abs=0.02) and fit.kappa == pytest.approx(0.002, abs=0.001)
    assert profile.linear_fits["forward"]["input_bytes"].slope == pytest.approx(64, rel=1e-6)
    assert "sync_points" not in profile.linear_fits["forward"]  # constant: no fit to make
    json.dumps(profile.to_dict(), allow_nan=False)
    text = profile.render_markdown()
    assert "| forward |" in text and "batch_size=64" in text
    assert fit.lack_of_fit is not None and fit.lack_of_fit.result == "passed"  # 3 repeats per value
    assert fit.peak_interval is not None and f"{fit.peak_n:.4g} [" in text and "lack of fit p =" in text


def test_other_sweeps_incomplete_and_unmarked_traces_are_left_out_and_reported() -> None:
    traces = [_trace(i, n) for i, n in enumerate(NS)]
    traces.append(_trace(50, 4, sweep_id="other"))
    traces.append(_trace(51, 4, complete=False))
    traces.append(Trace(id="f" * 32))
    profile = profile_traces(traces, sweep_id="s1")
    assert sum(len(v) for v in profile.trace_ids.values()) == len(NS)
    assert any("other" in p for p in profile.problems)
    assert any("incomplete" in p for p in profile.problems)
    assert any("no sweep coordinates" in p for p in profile.problems)
    with pytest.raises(ValueError, match="sweep coordinates"):
        profile_traces([Trace(id="e" * 32)])


def test_unstable_artifact_coverage_refuses_the_fits_unless_allowed() -> None:
    traces = [_trace(i, n, kinds=("logits", "activation") if n == 16 else ("logits",)) for i, n in enumerate(NS)]
    profile = profile_traces(traces)
    assert not profile.coverage_stable
    assert profile.fits["forward"].status == "not_applicable"
    assert "coverage differs" in profile.fits["forward"].reason
    assert profile.point("forward", 16).duration_s.n == 1  # summaries are still reported
    allowed = profile_traces(traces, allow_unstable_coverage=True)
    assert not allowed.coverage_stable and "coverage differs" not in allowed.fits["forward"].reason


def test_coverage_compares_layers_too() -> None:
    traces = [_trace(i, n) for i, n in enumerate(NS)]
    moved = traces[3]
    art = moved.artifacts[0]
    layered = TraceArtifact(id=art.id, kind="activation", producer_span_id=art.producer_span_id, layer=2)
    traces[3] = Trace(id=moved.id, spans=moved.spans, artifacts=(layered,), metadata=moved.metadata)
    base = [Trace(id=t.id, spans=t.spans, metadata=t.metadata,
                  artifacts=(TraceArtifact(id=t.artifacts[0].id, kind="activation",
                                           producer_span_id=t.artifacts[0].producer_span_id, layer=1),))
            for t in traces if t is not traces[3]]
    profile = profile_traces([*base, traces[3]])
    assert not profile.coverage_stable
    assert profile.coverage[NS[0]] == ("activation@1",) and profile.coverage[8] == ("activation@2",)


def test_short_or_non_numeric_axes_give_summaries_and_honest_refusals() -> None:
    short = profile_traces([_trace(i, n) for i, n in enumerate((1, 2, 4))])
    assert short.fits["forward"].status == "not_applicable"
    one = profile_traces([_trace(i, 1) for i in range(2)])
    assert {f.status for f in one.fits.values()} == {"not_applicable"}
    words = [_trace(0, 1, axis="model"), _trace(1, 1, axis="model")]
    words = [Trace(id=t.id, spans=t.spans, artifacts=t.artifacts, metadata={"sweep": {"axis": "model",
             "axis_value": name}}) for t, name in zip(words, ("llama", "qwen"), strict=True)]
    by_name = profile_traces(words)
    assert by_name.values == ("llama", "qwen") and by_name.fits == {}
    assert any("non-numeric" in p for p in by_name.problems)


def test_schedule_interleaves_and_rotates() -> None:
    assert schedule((1, 2, 3), 3) == [1, 2, 3, 2, 3, 1, 3, 1, 2]
    with pytest.raises(ConfigurationError, match="values repeat"):
        SweepSpec(axis="n", values=(1, 1))
    with pytest.raises(ConfigurationError, match="repeats"):
        SweepSpec(axis="n", values=(1,), repeats=0)


@pytest.fixture(scope="module")
def session(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Any]:
    s = vt.configure(store_dir=tmp_path_factory.mktemp("sweep-store"))
    yield s
    s.shutdown()


def test_run_sweep_end_to_end_through_the_session(session: Any) -> None:
    calls: list[tuple[int, bool]] = []

    def run_one(n: Any) -> None:
        from vauban_trace.instrument import current_sweep_point

        calls.append((n, current_sweep_point() is not None))
        with vt.traced_request(model="sleeper"):
            with vt.stage("forward", batch_size=int(n)):
                time.sleep(0.001 * n)

    spec = SweepSpec(axis="batch_size", values=(1, 2, 4), repeats=2, warmup=1, sweep_id="e2e")
    result = run_sweep(run_one, spec, session=session)
    assert calls[:3] == [(1, False), (2, False), (4, False)]  # warm-up: outside the sweep
    assert [n for n, marked in calls[3:] if marked] == list(result.order) == [1, 2, 4, 2, 4, 1]
    assert len(result.traces) == 6 and all(t.metadata["sweep"]["id"] == "e2e" for t in result.traces)
    profile = result.profile
    assert profile.values == (1, 2, 4) and {len(v) for v in profile.trace_ids.values()} == {2}
    slow, fast = profile.point("forward", 4).duration_s.median, profile.point("forward", 1).duration_s.median
    assert slow is not None and fast is not None and slow > fast  # 4 ms of sleep against 1 ms
    assert profile.fits["forward"].status == "not_applicable"  # three values cannot support USL
    json.dumps(result.to_dict(), allow_nan=False)


def test_run_sweep_needs_traced_requests(session: Any) -> None:
    with pytest.raises(ConfigurationError, match="no recorded traced request"):
        run_sweep(lambda n: None, SweepSpec(axis="n", values=(1,), repeats=1, warmup=0), session=session)


def test_user_exceptions_propagate_unchanged(session: Any) -> None:
    class Boom(Exception):
        pass

    def run_one(n: Any) -> None:
        with vt.traced_request(model="boom"):
            raise Boom(n)

    with pytest.raises(Boom):
        run_sweep(run_one, SweepSpec(axis="n", values=(1, 2), repeats=1, warmup=0), session=session)
