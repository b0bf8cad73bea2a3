"""What :func:`~vauban_trace.sweep.run_open_loop` returns: per-run and per-request records, the result.

:class:`LoadRun` is one run on the driver's clock (the exact refusals, the generator's dispatch
lateness, with the process generator the hand-off and its longest write, the completions in the
window); :class:`ArrivalRecord` one measured request (its trace, schedule and the driver's clock);
:class:`OpenLoopResult` the whole sweep (profile, traces, records, errors, notes). The meaning of
each number: ``_open`` (the driver) and ``_arrival`` (the profile).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from vauban_trace.contract import Trace
from vauban_trace.sweep._arrival import ARRIVAL_RATE
from vauban_trace.sweep._profile import SweepProfile

if TYPE_CHECKING:
    from vauban_trace.sweep._open import OpenLoopSpec


@dataclass(frozen=True)
class LoadRun:
    """One run on the driver's clock (see the module docstring)."""

    value: float
    run: int
    scheduled: int  # arrivals scheduled in the measured window
    sent: int
    dropped: int  # refused by the in-flight cap (measured window); exact
    dropped_warmup: int
    not_sent: int  # arrivals left when an error stopped the generator
    failed: int  # measured requests that raised
    dispatch_lateness_p50_s: float | None  # the generator's own (process: send - scheduled, in the child)
    dispatch_lateness_p95_s: float | None
    dispatch_lateness_max_s: float | None
    mean_in_system_at_arrival: float | None
    completed_in_window: int  # every request (warm-up included) that succeeded in the window
    driver_throughput: float  # completed_in_window / duration_s
    generator: str = "thread"
    handoff_p50_s: float | None = None  # process generator: receive - send
    handoff_p95_s: float | None = None
    handoff_max_s: float | None = None
    generator_max_block_s: float | None = None  # process generator: its longest blocked write

    def to_dict(self) -> dict[str, Any]:
        return dict(self.__dict__)


@dataclass(frozen=True)
class ArrivalRecord:
    """One measured request: its trace, schedule and the driver's clock."""

    trace_id: str
    value: float
    run: int
    seq: int
    scheduled_unix_nano: int
    lateness_s: float  # the sender's start minus the scheduled time
    in_system_at_arrival: int
    response_s: float | None  # root span
    queue_wait_s: float | None  # the queue stage, when a serving loop queued it
    error: str | None  # the exception's repr, when the request raised
    generator_lateness_s: float | None = None  # thread: the generator's hand-off - scheduled; process: send - scheduled
    handoff_s: float | None = None  # thread: sender start - hand-off; process: receive - send

    def to_dict(self) -> dict[str, Any]:
        return dict(self.__dict__)


@dataclass(frozen=True)
class OpenLoopResult:
    """What :func:`run_open_loop` did: the profile, traces, per-request and per-run records."""

    spec: OpenLoopSpec
    sweep_id: str
    profile: SweepProfile
    traces: tuple[Trace, ...]
    requests: tuple[ArrivalRecord, ...]
    runs: tuple[LoadRun, ...]
    wall_s: float
    errors: tuple[BaseException, ...] = ()
    notes: tuple[str, ...] = field(default_factory=tuple)

    def to_dict(self) -> dict[str, Any]:
        s = self.spec
        return {
            "sweep_id": self.sweep_id, "axis": ARRIVAL_RATE, "values": list(s.rates), "duration_s": s.duration_s,
            "warmup_s": s.warmup_s, "arrivals": s.arrivals, "repeats": s.repeats, "max_in_flight": s.max_in_flight,
            "seed": s.seed, "tolerance": s.tolerance, "switch_interval_s": s.switch_interval_s,
            "generator": s.generator, "wall_s": self.wall_s, "notes": list(self.notes),
            "errors": [repr(e) for e in self.errors], "runs": [r.to_dict() for r in self.runs],
            "requests": [r.to_dict() for r in self.requests], "profile": self.profile.to_dict(),
        }


__all__ = ["ArrivalRecord", "LoadRun", "OpenLoopResult"]
