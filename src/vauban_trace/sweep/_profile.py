"""Sweep profiles: rebuilt traces grouped by a controlled axis, summarised per stage, fitted.

::

    profile = profile_traces(traces)                  # Trace records of one sweep (any source)
    profile.points                                    # per (stage, axis value): duration and counters
    profile.fits["prefill"]                           # USL fit of the stage's throughput, or a refusal
    print(profile.render_markdown())

What goes in: :class:`~vauban_trace.contract.Trace` records carrying sweep coordinates
(``Trace.metadata["sweep"]``: ``axis``, ``axis_value`` and optionally ``id``, stamped on the root
span by :func:`vauban_trace.sweep_point`). Traces without them, or of another axis or sweep id
than the one profiled, are left out and listed in ``problems``; so are incomplete traces.

Per trace and stage (spans with ``stage`` set; several spans of one stage in a trace add up, e.g.
``decode`` steps, except the level counters batch size, queue depth and memory, which take the
maximum): the stage's duration (``profile.duration_s``, the span's own when the profile
has none), its device duration, and every counter that is set. Per axis value and stage these
become :class:`~vauban_trace.sweep.Summary` records (median, quartiles, bootstrap interval), with
the provenance words the counters carried, so a derived or declared counter is never presented as
measured. The whole request (the root span) is profiled as the stage ``"request"``.

Artifact coverage: each trace's produced artifact kinds and missing kinds, with their layers (not
their shapes, which follow the axis), must be the same across the sweep, otherwise the points are not comparable (a value that also captured activations is
slower for a reason the axis does not explain). Unstable coverage narrows the claim: summaries are
still reported, but every fit is refused with the differing values named, unless
``allow_unstable_coverage=True``.

Fits, per stage, on one point per trace: with a numeric axis, throughput ``X = N / duration``
(items per second, N the axis value) is fitted with the Universal Scalability Law
(:func:`~vauban_trace.sweep.fit_usl`, which refuses when the data cannot support three parameters
and labels token axes honestly); the byte and sync counters, which USL does not model, get a
linear fit against N (:func:`~vauban_trace.sweep.fit_linear`) when they vary. A non-numeric axis
(e.g. a model name) gets summaries only.

The ``concurrency`` axis (N closed-loop clients, zero think time; see ``_throughput``) is fitted
differently: per run, ``X = N / mean response time`` (Little's law, ``throughput="littles_law"``)
and completed requests / the clients' common window (``throughput="window"``, needs client
labels; ``"auto"``, the default, fits it when every run has it), listed in ``profile.throughput``
with ``profile.throughput_method`` naming the one fitted; the USL is fitted to the ``request`` stage only, the other stages' fits are refusals
(their durations are residence times), and there are no linear fits. ``closed_loop`` maps trace
ids to (run, client) when the traces do not carry those labels themselves.

The ``arrival_rate`` axis (open loop: the value is an offered rate in requests per second; see
``_arrival``) gets ``profile.open_loop`` (per run: achieved throughput, response-time and queue-wait
percentiles, generator lateness, Little's-law L, saturation; the highest rate sustained) and no fits
but refusals (the USL needs N). ``open_loop`` maps trace ids to the driver's labels when the traces do
not carry them; ``tolerance`` is the saturation and lateness tolerance.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from vauban_trace.contract import COUNTER_NAMES, Trace
from vauban_trace.sweep._arrival import (
    ARRIVAL_RATE,
    OPEN_LOOP_REFUSAL,
    TOLERANCE,
    OpenLoopSummary,
    arrival_points,
)
from vauban_trace.sweep._stats import Summary, summarize
from vauban_trace.sweep._throughput import (
    CONCURRENCY,
    THROUGHPUT_METHODS,
    ThroughputPoint,
    choose_method,
    concurrency_points,
    fit_concurrency,
)
from vauban_trace.sweep._usl import LinearFit, UslFit, fit_linear, fit_usl

AxisValue = int | float | str
REQUEST = "request"
#: counters given a linear fit against N (USL does not model bytes or sync counts)
LINEAR_COUNTERS = ("input_bytes", "output_bytes", "h2d_bytes", "d2h_bytes", "host_device_copies", "sync_points")
#: counters that are levels (several spans of one stage: the maximum); the others add up
_PEAK_COUNTERS = frozenset({"batch_size", "queue_depth", "memory_bytes"})


@dataclass(frozen=True)
class StagePoint:
    """One stage at one axis value: summaries over the traces of that value."""

    stage: str
    value: AxisValue
    traces: int
    duration_s: Summary
    device_duration_s: Summary | None
    counters: Mapping[str, Summary]
    provenance: Mapping[str, tuple[str, ...]]  # counter -> provenance words seen

    def to_dict(self) -> dict[str, Any]:
        return {
            "stage": self.stage,
            "value": self.value,
            "traces": self.traces,
            "duration_s": self.duration_s.to_dict(),
            "device_duration_s": None if self.device_duration_s is None else self.device_duration_s.to_dict(),
            "counters": {k: v.to_dict() for k, v in self.counters.items()},
            "provenance": {k: list(v) for k, v in self.provenance.items()},
        }


@dataclass(frozen=True)
class SweepProfile:
    """A sweep's traces, grouped by axis value and summarised per stage (see the module doc)."""

    axis: str
    sweep_id: str | None
    values: tuple[AxisValue, ...]
    trace_ids: Mapping[AxisValue, tuple[str, ...]]
    stages: tuple[str, ...]
    points: tuple[StagePoint, ...]
    coverage: Mapping[AxisValue, tuple[str, ...]]  # value -> sorted "kind" / "missing:kind" words
    coverage_stable: bool
    fits: Mapping[str, UslFit]
    linear_fits: Mapping[str, Mapping[str, LinearFit]]
    problems: tuple[str, ...] = field(default_factory=tuple)
    throughput: tuple[ThroughputPoint, ...] = ()  # concurrency axis only: one point per run
    throughput_method: str | None = None  # the throughput fitted on the concurrency axis
    open_loop: OpenLoopSummary | None = None  # arrival_rate axis only

    def point(self, stage: str, value: AxisValue) -> StagePoint:
        for p in self.points:
            if p.stage == stage and p.value == value:
                return p
        raise KeyError((stage, value))

    def to_dict(self) -> dict[str, Any]:
        return {
            "axis": self.axis,
            "sweep_id": self.sweep_id,
            "values": list(self.values),
            "trace_ids": [{"value": v, "trace_ids": list(ids)} for v, ids in self.trace_ids.items()],
            "stages": list(self.stages),
            "points": [p.to_dict() for p in self.points],
            "coverage": [{"value": v, "kinds": list(k)} for v, k in self.coverage.items()],
            "coverage_stable": self.coverage_stable,
            "fits": {k: v.to_dict() for k, v in self.fits.items()},
            "linear_fits": {s: {c: f.to_dict() for c, f in m.items()} for s, m in self.linear_fits.items()},
            "problems": list(self.problems),
            "throughput": [p.to_dict() for p in self.throughput],
            "throughput_method": self.throughput_method,
            "open_loop": None if self.open_loop is None else self.open_loop.to_dict(),
        }

    def render_markdown(self) -> str:
        """Tables: median stage durations per axis value, then the fits."""
        lines = [f"Sweep {self.sweep_id or '(no id)'} over `{self.axis}`: "
                 f"{sum(len(v) for v in self.trace_ids.values())} traces, values {', '.join(map(str, self.values))}.",
                 ""]
        lines += ["| stage | " + " | ".join(f"{self.axis}={v}" for v in self.values) + " |",
                  "|---|" + "---|" * len(self.values)]
        for stage in self.stages:
            cells = []
            for v in self.values:
                try:
                    s = self.point(stage, v).duration_s
                except KeyError:
                    cells.append("")
                    continue
                cells.append("" if s.median is None else f"{s.median * 1e3:.3f} ms (n={s.n})")
            lines.append(f"| {stage} | " + " | ".join(cells) + " |")
        lines.append("")
        if self.throughput:
            lines += [f"Throughput per run (fitted: {self.throughput_method}):", "",
                      "| N | run | requests | mean response | X Little (N / R) | X window (completed / window) |",
                      "|---|---|---|---|---|---|"]
            for tp in self.throughput:
                win = (f"{tp.window:.4g}/s ({tp.window_requests} in {tp.window_s * 1e3:.1f} ms)"
                       if tp.window is not None and tp.window_s is not None else f"({tp.window_reason})")
                lines.append(f"| {tp.value} | {'' if tp.run is None else tp.run} | {tp.traces} | "
                             f"{tp.mean_response_s * 1e3:.3f} ms ({tp.littles_law_scope}) | {tp.littles_law:.4g}/s | "
                             f"{win} |")
            lines.append("")
        if self.open_loop is not None:
            lines += self.open_loop.render_markdown()
        if self.fits and self.open_loop is None:
            lines += ["| stage | USL | lambda | sigma | kappa | peak N | R² | note |", "|---|---|---|---|---|---|---|---|"]
            for stage, fit in self.fits.items():
                if fit.status == "fitted":
                    peak = _num(fit.peak_n)
                    if fit.peak_interval is not None:
                        peak += f" [{_num(fit.peak_interval[0])}, {_num(fit.peak_interval[1])}]"
                    extra = ["inverse-variance weights"] if fit.weighting == "inverse_variance" else []
                    if fit.lack_of_fit is not None and fit.lack_of_fit.p is not None:
                        extra.append(f"lack of fit p = {fit.lack_of_fit.p:.3g}")
                    note = "; ".join(x for x in (fit.caveat or fit.reason, *extra) if x)
                    lines.append(
                        f"| {stage} | fitted | {_num(fit.lambda_)} | {_num(fit.sigma)} | {_num(fit.kappa)} | "
                        f"{peak} | {_num(fit.r2)} | {note} |")
                else:
                    lines.append(f"| {stage} | not applicable | | | | | | {fit.reason} |")
            lines.append("")
        if not self.coverage_stable:
            lines += ["Artifact coverage differs across the sweep: " + "; ".join(
                f"{v}: {', '.join(k) or 'none'}" for v, k in self.coverage.items()), ""]
        if self.problems:
            lines += ["Problems:", *(f"- {p}" for p in self.problems), ""]
        return "\n".join(lines)


def _num(x: float | None) -> str:
    return "" if x is None else f"{x:.4g}"


def _sweep_of(trace: Trace) -> Mapping[str, Any] | None:
    sweep = trace.metadata.get("sweep")
    return sweep if isinstance(sweep, Mapping) and "axis" in sweep and "axis_value" in sweep else None


def _coverage(trace: Trace) -> tuple[str, ...]:
    """Kinds produced and kinds missing, with their layers (``activation@3``, ``missing:logits``):
    shapes are left out since they follow the axis (more prompt tokens, longer activations)."""
    words = {a.kind if a.layer is None else f"{a.kind}@{a.layer}" for a in trace.artifacts}
    words |= {f"missing:{m.kind}" if m.layer is None else f"missing:{m.kind}@{m.layer}" for m in trace.missing}
    return tuple(sorted(words))


def _numeric(values: Sequence[AxisValue]) -> bool:
    return all(isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v) and v > 0
               for v in values)


def profile_traces(
    traces: Iterable[Trace],
    *,
    axis: str | None = None,
    sweep_id: str | None = None,
    allow_unstable_coverage: bool = False,
    fit: bool = True,
    seed: int = 0,
    throughput: str = "auto",
    closed_loop: Mapping[str, tuple[int, int]] | None = None,
    open_loop: Mapping[str, Mapping[str, int]] | None = None,
    tolerance: float = TOLERANCE,
) -> SweepProfile:
    """Group ``traces`` by their sweep axis value and summarise them (see the module docstring).

    ``axis`` / ``sweep_id`` select the traces (default: the axis and id of the first trace with
    sweep coordinates). Raises ``ValueError`` when no trace carries sweep coordinates.
    ``throughput`` and ``closed_loop`` matter on the ``concurrency`` axis only, ``open_loop`` and
    ``tolerance`` on the ``arrival_rate`` axis only (module docstring).
    """
    if throughput not in THROUGHPUT_METHODS:
        raise ValueError(f"profile_traces: throughput must be one of {', '.join(THROUGHPUT_METHODS)}, got {throughput!r}")
    problems: list[str] = []
    chosen: list[tuple[Trace, AxisValue]] = []
    for trace in traces:
        sweep = _sweep_of(trace)
        if sweep is None:
            problems.append(f"trace {trace.id}: no sweep coordinates; left out")
            continue
        if axis is None:
            axis = str(sweep["axis"])
            sweep_id = sweep_id if sweep_id is not None else sweep.get("id")
        if sweep["axis"] != axis or (sweep_id is not None and sweep.get("id") != sweep_id):
            problems.append(f"trace {trace.id}: sweep {sweep.get('id')!r} axis {sweep['axis']!r}; left out")
            continue
        if not trace.complete:
            problems.append(f"trace {trace.id}: incomplete ({'; '.join(trace.problems) or 'no reason'}); left out")
            continue
        chosen.append((trace, sweep["axis_value"]))
    if axis is None or not chosen:
        raise ValueError("profile_traces: no complete trace carries sweep coordinates (use sweep_point)")
    by_value: dict[AxisValue, list[Trace]] = {}
    for trace, value in chosen:
        by_value.setdefault(value, []).append(trace)
    values = tuple(sorted(by_value, key=lambda v: (isinstance(v, str), v if not isinstance(v, str) else 0, str(v))))
    coverage = {v: _coverage(by_value[v][0]) for v in values}
    differing = [f"{t.id} at {v}" for v in values for t in by_value[v] if _coverage(t) != coverage[values[0]]]
    stable = not differing
    if not stable:
        problems.append(f"artifact coverage differs across the sweep ({', '.join(differing[:5])}"
                        f"{' ...' if len(differing) > 5 else ''})")

    per_trace: dict[AxisValue, list[dict[str, dict[str, Any]]]] = {v: [_stage_values(t) for t in by_value[v]]
                                                                     for v in values}
    stages = _stage_order(chosen)
    points: list[StagePoint] = []
    for stage in stages:
        for v in values:
            rows = [r[stage] for r in per_trace[v] if stage in r]
            if not rows:
                continue
            counters = {c: summarize([r["counters"][c] for r in rows if c in r["counters"]], seed=seed)
                        for c in COUNTER_NAMES if c != "duration_s" and any(c in r["counters"] for r in rows)}
            provenance = {c: tuple(sorted({w for r in rows for w in r["provenance"].get(c, ())})) for c in counters}
            device = [r["device_duration_s"] for r in rows if r["device_duration_s"] is not None]
            points.append(StagePoint(
                stage=stage, value=v, traces=len(rows),
                duration_s=summarize([r["duration_s"] for r in rows if r["duration_s"] is not None], seed=seed),
                device_duration_s=summarize(device, seed=seed) if device else None,
                counters=counters, provenance=provenance,
            ))
    fits: dict[str, UslFit] = {}
    linear: dict[str, dict[str, LinearFit]] = {}
    tput: tuple[ThroughputPoint, ...] = ()
    method: str | None = None
    arrivals: OpenLoopSummary | None = None
    if axis == ARRIVAL_RATE:
        if _numeric(values):
            arrivals = arrival_points({v: by_value[v] for v in values}, open_loop, tolerance=tolerance, seed=seed)
            problems.extend(arrivals.problems)
        else:
            problems.append(f"axis {axis!r} needs positive arrival rates, got {list(values)}: summaries only")
        if fit:
            fits = {s: UslFit("not_applicable", OPEN_LOOP_REFUSAL, ARRIVAL_RATE) for s in stages}
    elif axis == CONCURRENCY and _numeric(values) and all(isinstance(v, int) for v in values):
        tput, more = concurrency_points({v: by_value[v] for v in values}, closed_loop)
        problems.extend(more)
        method, fallback = choose_method(tput, throughput)
        if fallback is not None:
            problems.append(fallback)
        if fit:
            fits = fit_concurrency(tput, stages, REQUEST, method=method, stable=stable or allow_unstable_coverage,
                                   differing=differing, seed=seed)
    elif axis == CONCURRENCY:
        problems.append(f"axis {axis!r} needs positive whole numbers of clients, got {list(values)}: summaries only, "
                        "no fits")
    elif fit and _numeric(values):
        for stage in stages:
            fits[stage], linear[stage] = _fit_stage(stage, axis, values, per_trace,
                                                    stable or allow_unstable_coverage, differing, seed)
    elif fit:
        problems.append(f"axis {axis!r} has non-numeric or non-positive values: summaries only, no fits")
    return SweepProfile(
        axis=axis, sweep_id=sweep_id, values=values,
        trace_ids={v: tuple(t.id for t in by_value[v]) for v in values}, stages=stages, points=tuple(points),
        coverage=coverage, coverage_stable=stable, fits=fits, linear_fits=linear, problems=tuple(problems),
        throughput=tput, throughput_method=method if tput else None, open_loop=arrivals,
    )


def _fit_stage(
    stage: str, axis: str, values: Sequence[AxisValue], per_trace: Mapping[AxisValue, list[dict[str, dict[str, Any]]]],
    stable: bool, differing: list[str], seed: int,
) -> tuple[UslFit, dict[str, LinearFit]]:
    ns: list[float] = []
    xs: list[float] = []
    for v in values:
        for row in per_trace[v]:
            d = row.get(stage, {}).get("duration_s")
            if d is not None and d > 0:
                ns.append(float(v))
                xs.append(float(v) / d)
    if not stable:
        reason = f"artifact coverage differs across the sweep ({', '.join(differing[:3])}): points not comparable"
        return UslFit("not_applicable", reason, axis, points=tuple(zip(ns, xs, strict=True))), {}
    usl = fit_usl(ns, xs, axis=axis, seed=seed) if ns else UslFit(
        "not_applicable", f"stage {stage!r} has no positive durations", axis)
    linear: dict[str, LinearFit] = {}
    for counter in LINEAR_COUNTERS:
        pts = [(float(v), float(row[stage]["counters"][counter]))
               for v in values for row in per_trace[v] if counter in row.get(stage, {}).get("counters", {})]
        if len({y for _, y in pts}) > 1:
            linear[counter] = fit_linear([n for n, _ in pts], [y for _, y in pts], axis=axis, seed=seed)
    return usl, linear


def _stage_order(chosen: Sequence[tuple[Trace, AxisValue]]) -> tuple[str, ...]:
    order: dict[str, None] = {REQUEST: None}
    for trace, _ in chosen:
        for span in sorted(trace.spans, key=lambda s: s.start_unix_nano):
            if span.stage:
                order.setdefault(span.stage, None)
    return tuple(order)


def _stage_values(trace: Trace) -> dict[str, dict[str, Any]]:
    """Per stage of one trace: summed duration, device duration and counters, provenance words."""
    out: dict[str, dict[str, Any]] = {}
    root = trace.root
    if root is not None and root.stage_duration_s is not None:
        out[REQUEST] = {"duration_s": root.stage_duration_s, "device_duration_s": None, "counters": {},
                        "provenance": {}}
    for span in trace.spans:
        if not span.stage:
            continue
        row = out.setdefault(span.stage, {"duration_s": None, "device_duration_s": None, "counters": {},
                                          "provenance": {}})
        prof = span.profile
        duration = span.stage_duration_s
        if duration is not None:
            row["duration_s"] = (row["duration_s"] or 0.0) + duration
        if prof is None:
            continue
        if prof.device_duration_s is not None:
            row["device_duration_s"] = (row["device_duration_s"] or 0.0) + prof.device_duration_s
        for counter in COUNTER_NAMES:
            if counter in ("duration_s", "device_duration_s"):
                continue
            value = getattr(prof, counter)
            if value is None:
                continue
            earlier = row["counters"].get(counter)
            if earlier is None:
                row["counters"][counter] = value
            elif counter in _PEAK_COUNTERS:  # a level, not an amount: the stage's peak
                row["counters"][counter] = max(earlier, value)
            else:
                row["counters"][counter] = earlier + value
            row["provenance"].setdefault(counter, set()).add(prof.provenance_of(counter).value)
    return out


__all__ = ["LINEAR_COUNTERS", "REQUEST", "StagePoint", "SweepProfile", "profile_traces"]
