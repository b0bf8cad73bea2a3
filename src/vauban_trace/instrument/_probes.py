"""Counter probes: how executors add measured counters to every stage span.

A probe measures something over an interval (copies, syncs, peak memory, device time). While a
probe is active (``with probes(p1, p2): ...``), every stage span opened in that context calls
``token = probe.start()`` on entry and ``probe.stop(token)`` on exit, and records the readings as
``vauban.usl.<counter>`` attributes with their provenance.

Probes MUST nest: a stage inside a stage calls ``start``/``stop`` again, so a probe should keep
cumulative totals and return differences between the snapshots it hands out as tokens. A probe
MUST NOT raise: telemetry never breaks inference (the stage catches and drops a failing probe's
readings, recording nothing rather than a guess).
"""

from __future__ import annotations

import contextlib
import contextvars
from collections.abc import Iterator, Mapping
from typing import Protocol, runtime_checkable

#: counter name (one of contract.COUNTER_NAMES) -> (value or None, provenance word)
Readings = Mapping[str, tuple[int | float | None, str]]


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
