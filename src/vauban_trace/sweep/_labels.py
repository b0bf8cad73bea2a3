"""Closed-loop labels: which run and which client of a concurrency sweep issued a request.

The concurrency driver (``_closed``) sets them around every request it issues (a context
variable, per thread); root spans opened by :class:`~vauban_trace.sweep.ServingLoop` and
:func:`~vauban_trace.sweep.traced_call` copy them into ``vauban.trace.metadata`` under
:data:`LOAD_KEY`, so the rebuilt trace has ``Trace.metadata["closed_loop"] == {"run": r,
"client": c, "seq": i}``. A request whose root is opened by someone else (an executor's own
``run``) carries no labels in its trace; the driver still knows them and hands them to
:func:`~vauban_trace.sweep.profile_traces` (``closed_loop=``).
"""

from __future__ import annotations

import contextlib
import contextvars
from collections.abc import Iterator, Mapping
from typing import Any

#: key of the labels in ``Trace.metadata`` (from the root's ``vauban.trace.metadata`` object)
LOAD_KEY = "closed_loop"

_LABELS: contextvars.ContextVar[dict[str, int] | None] = contextvars.ContextVar("vauban_trace_load", default=None)


@contextlib.contextmanager
def load_labels(*, run: int, client: int, seq: int) -> Iterator[None]:
    token = _LABELS.set({"run": run, "client": client, "seq": seq})
    try:
        yield
    finally:
        _LABELS.reset(token)


def load_metadata() -> dict[str, Any] | None:
    """The ``metadata=`` argument for a root span opened under :func:`load_labels`, else None."""
    labels = _LABELS.get()
    return None if labels is None else {LOAD_KEY: dict(labels)}


def labels_of(metadata: Mapping[str, Any]) -> tuple[int, int] | None:
    """(run, client) from a trace's metadata, or None when absent or malformed."""
    raw = metadata.get(LOAD_KEY)
    if not isinstance(raw, Mapping):
        return None
    run, client = raw.get("run"), raw.get("client")
    if type(run) is int and type(client) is int and run >= 0 and client >= 0:
        return run, client
    return None


__all__ = ["LOAD_KEY", "labels_of", "load_labels", "load_metadata"]
