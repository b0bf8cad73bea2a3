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
then returns a :class:`Deferred` as the value. At stage exit the stage sets its other attributes
and tries the deferred values without waiting; if one is not ready, the span is left open and
handed to :func:`settle`: a daemon thread polls the readings (non-blocking queries, so the
workload's thread gains no synchronisation), then sets the attributes and ends the span with its
original end timestamp. :func:`flush_deferred` waits for all of them (tests, benchmarks, exit);
a reading still not ready after 60 s is recorded ``unavailable``.

Static attributes. A probe may expose ``attributes`` (a mapping of attribute name to value, e.g.
the memory method), which every stage it measures records as they are.

Instrumentation's own work. Code of the instrumentation that touches tensors (moving an activation
to the host to hash it) runs inside :func:`instrumentation_work`; probes that see individual
operations (the torch deep counters) count such copies apart, as ``instrumentation_d2h_*``, and
leave them out of the workload's copy and sync counts.
"""

from __future__ import annotations

import atexit
import contextlib
import contextvars
import threading
import time
from collections.abc import Callable, Iterator, Mapping
from typing import Any, Protocol, runtime_checkable


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


# -- deferred readings ----------------------------------------------------------------------
class PendingSpan:
    """A stage span whose deferred readings are not read yet; ended once they are."""

    __slots__ = ("span", "end_time", "readings", "attr_names")

    def __init__(
        self,
        span: Any,
        end_time: int,
        readings: dict[str, tuple[Deferred, str]],
        attr_names: Mapping[str, tuple[str, str]],
    ) -> None:
        self.span = span
        self.end_time = end_time
        self.readings = readings  # counter -> (deferred, provenance)
        self.attr_names = attr_names  # counter -> (value attribute, provenance attribute)

    def try_finish(self, wait: bool) -> bool:
        """Read every deferred value; when all are ready (or ``wait``), set them and end the span."""
        values: dict[str, int | float | None] = {}
        for counter, (deferred, _prov) in self.readings.items():
            value = deferred.read(False)
            if value is None and not wait:
                return False
            values[counter] = value
        attrs: dict[str, Any] = {}
        for counter, value in values.items():
            value_attr, prov_attr = self.attr_names[counter]
            if value is None:
                attrs[prov_attr] = "unavailable"
            else:
                attrs[value_attr] = value
                attrs[prov_attr] = self.readings[counter][1]
        try:
            self.span.set_attributes(attrs)
        finally:
            self.span.end(end_time=self.end_time)
        return True


class _Resolver:
    """One daemon thread that polls pending spans (non-blocking queries, no host sync)."""

    def __init__(self) -> None:
        self._pending: list[tuple[PendingSpan, float]] = []
        self._cond = threading.Condition()
        self._thread: threading.Thread | None = None

    def submit(self, pending: PendingSpan, timeout_s: float = 60.0) -> None:
        with self._cond:
            self._pending.append((pending, time.monotonic() + timeout_s))
            if self._thread is None or not self._thread.is_alive():
                self._thread = threading.Thread(target=self._run, name="vauban-deferred", daemon=True)
                self._thread.start()
            self._cond.notify_all()

    def _run(self) -> None:
        delay = 0.0005
        while True:
            with self._cond:
                while not self._pending:
                    self._cond.wait()
                batch = list(self._pending)
            done: list[tuple[PendingSpan, float]] = []
            now = time.monotonic()
            for item in batch:
                try:
                    if item[0].try_finish(wait=now > item[1]):  # past its deadline: unavailable
                        done.append(item)
                except Exception:
                    done.append(item)
            with self._cond:
                for item in done:
                    self._pending.remove(item)
                if not self._pending:
                    self._cond.notify_all()
            delay = 0.0005 if done else min(delay * 2, 0.01)
            time.sleep(delay)

    def flush(self, timeout_s: float | None = None) -> bool:
        """Wait until every pending span is ended; False on timeout."""
        deadline = None if timeout_s is None else time.monotonic() + timeout_s
        with self._cond:
            while self._pending:
                left = None if deadline is None else deadline - time.monotonic()
                if left is not None and left <= 0:
                    return False
                self._cond.wait(left if left is not None else 0.05)
        return True


_RESOLVER = _Resolver()


def settle(pending: PendingSpan) -> None:
    """End ``pending`` now if its readings are ready, else hand it to the background resolver.

    Never waits on the device: readings are polled (``Event.query``-style) from a daemon thread,
    so the workload's thread gains no synchronisation.
    """
    try:
        if pending.try_finish(wait=False):
            return
    except Exception:
        return
    _RESOLVER.submit(pending)


def flush_deferred(timeout_s: float | None = 10.0) -> bool:
    """Wait until every stage span with deferred readings has ended (call before reading spans)."""
    return _RESOLVER.flush(timeout_s)


atexit.register(flush_deferred, 5.0)
