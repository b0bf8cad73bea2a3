"""Reading a load driver's traces back from the session's store (shared by ``_closed`` and ``_open``).

::

    stored, note = read_back(session.store, trace_ids, "run_concurrency")

Each id is looked up with ``TraceStore.get_trace`` (the one road back to a
:class:`~vauban_trace.contract.Trace`). A trace the store never received (the SDK's export queue,
``OTEL_BSP_MAX_QUEUE_SIZE``, drops spans when the exporter falls behind) is left out and named in
the returned note (the first three ids); when none was stored, :class:`ConfigurationError` says so.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING

from vauban_trace._exceptions import ConfigurationError, TraceNotFoundError
from vauban_trace.contract import Trace

if TYPE_CHECKING:
    from vauban_trace.store import TraceStore


def read_back(store: TraceStore, trace_ids: Sequence[str], who: str) -> tuple[dict[str, Trace], str | None]:
    """The stored traces of ``trace_ids`` by id, and a note naming those not stored (None when all were)."""
    stored: dict[str, Trace] = {}
    lost: list[str] = []
    for tid in trace_ids:
        try:
            stored[tid] = store.get_trace(tid)
        except TraceNotFoundError:
            lost.append(tid)
    if not stored:
        raise ConfigurationError(f"{who}: none of the {len(trace_ids)} traced requests reached the store")
    note = None
    if lost:
        note = (f"{len(lost)} of {len(trace_ids)} traces were not stored (spans dropped by a full export queue? "
                f"raise OTEL_BSP_MAX_QUEUE_SIZE): {', '.join(lost[:3])}{' ...' if len(lost) > 3 else ''}")
    return stored, note


__all__ = ["read_back"]
