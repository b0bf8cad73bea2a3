"""Controlled sweeps: run one request per axis value, repeatedly, and read the traces back.

::

    import vauban_trace as vt
    from vauban_trace.sweep import SweepSpec, run_sweep

    session = vt.configure(store_dir=".vauban")
    spec = SweepSpec(axis="prompt_tokens", values=(16, 32, 64, 128, 256, 512), repeats=5, warmup=1)
    result = run_sweep(lambda n: executor.run(request_with(n)), spec, session=session)
    print(result.profile.render_markdown())

:func:`run_sweep` calls ``run_one(value)`` for every value of the spec, ``repeats`` times, inside
:func:`vauban_trace.sweep_point` (so each request's root span carries the sweep id, axis and
value), in an order that interleaves the values and rotates them from one repeat to the next
(drift of the machine then spreads over every value instead of biasing the last ones). Before
that, ``warmup`` calls per value run outside any sweep point: their traces carry no sweep
coordinates and are not profiled (compilation, caches and allocator growth stay out of the
numbers). ``run_one`` may do anything that opens traced requests (an executor's ``run``, a
user function under ``traced_request``); the trace ids come from the sweep point, not from
``run_one``'s return value. An exception from ``run_one`` propagates unchanged after the
traces made so far are flushed.

Traces come back through ``session.read_trace`` (the embedded store: the same rebuild as every
other source) and go to :func:`~vauban_trace.sweep.profile_traces`. A session that exports over
OTLP without a local store cannot read back in-process: profile the traces later from a source
(``vauban_trace.sources``) with ``profile_traces``.
"""

from __future__ import annotations

import time
import uuid
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from vauban_trace._exceptions import ConfigurationError
from vauban_trace.contract import Trace
from vauban_trace.instrument import sweep_point
from vauban_trace.sweep._profile import AxisValue, SweepProfile, profile_traces

if TYPE_CHECKING:
    from vauban_trace.instrument import Session


@dataclass(frozen=True)
class SweepSpec:
    """What to sweep: ``axis`` over ``values``, ``repeats`` measured calls per value after
    ``warmup`` unmeasured ones; ``sweep_id`` defaults to a fresh ``<axis>-<random>`` id."""

    axis: str
    values: Sequence[AxisValue]
    repeats: int = 5
    warmup: int = 1
    sweep_id: str | None = None

    def __post_init__(self) -> None:
        if not self.axis:
            raise ConfigurationError("SweepSpec: axis must be a non-empty string")
        if not self.values:
            raise ConfigurationError("SweepSpec: give at least one value")
        if len(set(self.values)) != len(self.values):
            raise ConfigurationError(f"SweepSpec: values repeat: {list(self.values)}")
        if self.repeats < 1 or self.warmup < 0:
            raise ConfigurationError("SweepSpec: repeats must be >= 1 and warmup >= 0")
        object.__setattr__(self, "values", tuple(self.values))


@dataclass(frozen=True)
class SweepResult:
    """What :func:`run_sweep` did: the profile, the traces, and the order the calls ran in."""

    spec: SweepSpec
    sweep_id: str
    profile: SweepProfile
    traces: tuple[Trace, ...]
    order: tuple[AxisValue, ...]  # the measured calls, in execution order
    wall_s: float
    notes: tuple[str, ...] = field(default_factory=tuple)

    def to_dict(self) -> dict[str, Any]:
        return {
            "sweep_id": self.sweep_id,
            "axis": self.spec.axis,
            "values": list(self.spec.values),
            "repeats": self.spec.repeats,
            "warmup": self.spec.warmup,
            "order": list(self.order),
            "wall_s": self.wall_s,
            "notes": list(self.notes),
            "profile": self.profile.to_dict(),
        }


def schedule(values: Sequence[AxisValue], repeats: int) -> list[AxisValue]:
    """Every value ``repeats`` times: one pass per repeat, each pass rotated by one."""
    n = len(values)
    return [values[(i + r) % n] for r in range(repeats) for i in range(n)]


def run_sweep(
    run_one: Callable[[AxisValue], object],
    spec: SweepSpec,
    *,
    session: Session,
    allow_unstable_coverage: bool = False,
    seed: int = 0,
) -> SweepResult:
    """Run ``spec`` (see the module docstring) and profile the traces it made."""
    if session.store is None:
        raise ConfigurationError("run_sweep: the session keeps no local store to read traces back "
                                 "(profile them from a source with profile_traces instead)")
    sweep_id = spec.sweep_id or f"{spec.axis}-{uuid.uuid4().hex[:12]}"
    for value in spec.values:
        for _ in range(spec.warmup):
            run_one(value)
    order = schedule(spec.values, spec.repeats)
    trace_ids: list[str] = []
    started = time.perf_counter()
    try:
        for value in order:
            with sweep_point(spec.axis, value, sweep_id=sweep_id) as point:
                run_one(value)
            trace_ids.extend(point.trace_ids)
    finally:
        session.force_flush()
    wall = time.perf_counter() - started
    notes: list[str] = []
    if not trace_ids:
        raise ConfigurationError("run_sweep: run_one opened no recorded traced request "
                                 "(is an OpenTelemetry SDK configured?)")
    if len(trace_ids) != len(order):
        notes.append(f"{len(order)} calls opened {len(trace_ids)} traced requests")
    traces = tuple(session.read_trace(tid) for tid in trace_ids)
    profile = profile_traces(traces, axis=spec.axis, sweep_id=sweep_id,
                             allow_unstable_coverage=allow_unstable_coverage, seed=seed)
    return SweepResult(spec=spec, sweep_id=sweep_id, profile=profile, traces=traces, order=tuple(order),
                       wall_s=wall, notes=tuple(notes))


__all__ = ["SweepResult", "SweepSpec", "run_sweep", "schedule"]
