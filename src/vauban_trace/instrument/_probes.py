"""Counter probes: how executors add measured counters to every stage span.

A probe measures something over an interval (copies, syncs, peak memory, device time). While a
probe is active (``with probes(p1, p2): ...``), every stage span opened in that context calls
``token = probe.start()`` on entry and ``probe.stop(token)`` on exit, and records the readings as
``vauban.usl.<counter>`` attributes with their provenance.

Probes MUST nest: a stage inside a stage calls ``start``/``stop`` again, so a probe should keep
cumulative totals and return differences between the snapshots it hands out as tokens. A probe
MUST NOT raise: telemetry never breaks inference (the stage catches and drops a failing probe's
readings, recording nothing rather than a guess).

Deferred readings. Some values can only be read after the device has caught up (CUDA event
timings): reading them at stage exit would add a host synchronisation on the hot path. A probe
then returns a :class:`Deferred` as the value. The stage keeps its span open; the enclosing
traced request resolves every deferred reading once, at request end (after the executor's own
final synchronisation, when the events are complete and reading them costs nothing), sets the
attributes and ends each span with its original end timestamp. A stage outside any request
resolves its deferred readings at its own exit without waiting: a value that is not ready yet is
recorded as ``unavailable``.

Static attributes. A probe may expose ``attributes`` (a mapping of attribute name to value, e.g.
the memory method), which every stage it measures records as they are.

Instrumentation's own work. Code of the instrumentation that touches tensors (moving an activation
to the host to hash it) runs inside :func:`instrumentation_work`; probes that see individual
operations (the torch deep counters) count such copies apart, as ``instrumentation_d2h_*``, and
leave them out of the workload's copy and sync counts.
"""

from __future__ import annotations

import contextlib
import contextvars
from collections.abc import Callable, Iterator, Mapping
from typing import Protocol, runtime_checkable


class Deferred:
    """A counter value that can be read only later, e.g. the elapsed time between two CUDA events.

    ``read(wait)`` returns the value, or ``None`` when it is not available: with ``wait=False``
    when the device has not reached the point yet, with ``wait=True`` only on failure. It never
    raises.
    """

    __slots__ = ("_read",)

    def __init__(self, read: Callable[[bool], int | float | None]) -> None:
        self._read = read

    def read(self, wait: bool) -> int | float | None:
        try:
            value = self._read(wait)
        except Exception:
            return None
        if value is None or isinstance(value, bool) or not isinstance(value, (int, float)) or value < 0:
            return None
        return value


#: counter name (one of contract.COUNTER_NAMES) -> (value, Deferred or None, provenance word)
Readings = Mapping[str, tuple[int | float | Deferred | None, str]]


@runtime_checkable
class CounterProbe(Protocol):
    """Measures counters over the lifetime of a stage span."""

    name: str

    def start(self) -> object:
        """Snapshot state at stage entry; the return value is handed back to :meth:`stop`."""
        ...

    def stop(self, token: object) -> Readings:
        """Readings for the interval since ``start`` returned ``token``."""
        ...


_ACTIVE: contextvars.ContextVar[tuple[CounterProbe, ...]] = contextvars.ContextVar(
    "vauban_trace_probes", default=()
)


def active_probes() -> tuple[CounterProbe, ...]:
    """Probes active in the current context (innermost last)."""
    return _ACTIVE.get()


@contextlib.contextmanager
def probes(*new: CounterProbe) -> Iterator[None]:
    """Activate ``new`` probes (in addition to those already active) for the enclosed block."""
    token = _ACTIVE.set(_ACTIVE.get() + tuple(new))
    try:
        yield
    finally:
        _ACTIVE.reset(token)


_INSTRUMENTATION: contextvars.ContextVar[bool] = contextvars.ContextVar("vauban_trace_instr_work", default=False)


def in_instrumentation_work() -> bool:
    """Whether the current code runs on behalf of the instrumentation (see :func:`instrumentation_work`)."""
    return _INSTRUMENTATION.get()


@contextlib.contextmanager
def instrumentation_work() -> Iterator[None]:
    """Mark the enclosed block as the instrumentation's own work (copies for hashing, summaries)."""
    token = _INSTRUMENTATION.set(True)
    try:
        yield
    finally:
        _INSTRUMENTATION.reset(token)
