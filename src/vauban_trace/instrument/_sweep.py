"""``sweep_point``: mark the requests made inside a block as one point of a controlled sweep.

::

    with sweep_point("batch_size", 8, sweep_id="bs-2026-11-26"):
        executor.run(request)          # its root span carries vauban.sweep.{id,axis,axis_value}

Every :func:`~vauban_trace.instrument.traced_request` opened inside the block (this thread or
task: a context variable) gets ``vauban.sweep.id``, ``vauban.sweep.axis`` and
``vauban.sweep.axis_value`` on its root span. The rebuild puts them in
``Trace.metadata["sweep"]``, the collector labels its stage histograms with the axis and value,
and :mod:`vauban_trace.sweep` groups traces by them. Blocks nest; the innermost wins. Outside an
SDK the block costs a context-variable set and reset.
"""

from __future__ import annotations

import contextlib
import contextvars
import math
from collections.abc import Iterator
from dataclasses import dataclass, field

from vauban_trace._exceptions import ContractError


@dataclass(frozen=True)
class SweepPoint:
    """The sweep coordinates stamped on root spans: axis name, axis value, sweep id.

    ``trace_ids`` lists, in order, the trace ids of the recorded requests opened in the block
    (what :func:`vauban_trace.sweep.run_sweep` reads back)."""

    axis: str
    value: int | float | str
    sweep_id: str | None = None
    trace_ids: list[str] = field(default_factory=list, compare=False, repr=False)


_POINT: contextvars.ContextVar[SweepPoint | None] = contextvars.ContextVar("vauban_trace_sweep", default=None)


def current_sweep_point() -> SweepPoint | None:
    """The innermost :func:`sweep_point` block's coordinates, or None."""
    return _POINT.get()


@contextlib.contextmanager
def sweep_point(axis: str, value: int | float | str, *, sweep_id: str | None = None) -> Iterator[SweepPoint]:
    """Stamp ``axis`` = ``value`` (and ``sweep_id``) on the root span of every request in the block."""
    if not isinstance(axis, str) or not axis.strip():
        raise ContractError(f"sweep_point: axis must be a non-empty string, got {axis!r}")
    if isinstance(value, bool) or not isinstance(value, (int, float, str)):
        raise ContractError(f"sweep_point: value must be an int, float or str, got {value!r}")
    if isinstance(value, float) and not math.isfinite(value):
        raise ContractError(f"sweep_point: value must be finite, got {value!r}")
    if sweep_id is not None and (not isinstance(sweep_id, str) or not sweep_id):
        raise ContractError(f"sweep_point: sweep_id must be a non-empty string or None, got {sweep_id!r}")
    point = SweepPoint(axis.strip(), value, sweep_id)
    token = _POINT.set(point)
    try:
        yield point
    finally:
        _POINT.reset(token)


__all__ = ["SweepPoint", "current_sweep_point", "sweep_point"]
