"""Closed-loop labels: which run and which client of a concurrency sweep issued a request.

The concurrency driver (``_closed``) sets them around every request it issues (a context
variable, per thread); root spans opened by :class:`~vauban_trace.sweep.ServingLoop` and
:func:`~vauban_trace.sweep.traced_call` copy them into ``vauban.trace.metadata`` under
:data:`LOAD_KEY`, so the rebuilt trace has ``Trace.metadata["closed_loop"] == {"run": r,
"client": c, "seq": i}``. A request whose root is opened by someone else (an executor's own
``run``) carries no labels in its trace; the driver still knows them and hands them to
:func:`~vauban_trace.sweep.profile_traces` (``closed_loop=``).

The open-loop driver (``_open``) sets its own labels the same way (:func:`arrival_labels`): they
land under :data:`OPEN_LOOP_KEY` (run, seq, scheduled arrival time and the measured window, in
unix nanoseconds, and the arrivals the in-flight cap refused so far); one request carries one kind.
With the process generator (``OpenLoopSpec(generator="process")``) two more: :data:`SENT_LABEL`
(when the generator process sent the arrival) and :data:`RECEIVED_LABEL` (when the serving
process received it); their names live in ``vauban_trace.semconv`` (docs/semconv.md).
"""

from __future__ import annotations

import contextlib
import contextvars
from collections.abc import Iterator, Mapping
from typing import Any

from vauban_trace.semconv import OPEN_LOOP_RECEIVED_UNIX_NANO as RECEIVED_LABEL
from vauban_trace.semconv import OPEN_LOOP_SENT_UNIX_NANO as SENT_LABEL

#: key of the labels in ``Trace.metadata`` (from the root's ``vauban.trace.metadata`` object)
LOAD_KEY = "closed_loop"
#: key of the open-loop driver's labels in ``Trace.metadata``
OPEN_LOOP_KEY = "open_loop"

_LABELS: contextvars.ContextVar[tuple[str, dict[str, int]] | None] = contextvars.ContextVar(
    "vauban_trace_load", default=None)


@contextlib.contextmanager
def load_labels(*, run: int, client: int, seq: int) -> Iterator[None]:
    token = _LABELS.set((LOAD_KEY, {"run": run, "client": client, "seq": seq}))
    try:
        yield
    finally:
        _LABELS.reset(token)


@contextlib.contextmanager
def arrival_labels(labels: dict[str, int]) -> Iterator[None]:
    """The open-loop driver's labels (whole numbers) for the requests opened in the block."""
    token = _LABELS.set((OPEN_LOOP_KEY, dict(labels)))
    try:
        yield
    finally:
        _LABELS.reset(token)


def load_metadata() -> dict[str, Any] | None:
    """The ``metadata=`` argument for a root span opened under :func:`load_labels` or
    :func:`arrival_labels`, else None."""
    labels = _LABELS.get()
    return None if labels is None else {labels[0]: dict(labels[1])}


def labels_of(metadata: Mapping[str, Any]) -> tuple[int, int] | None:
    """(run, client) from a trace's metadata, or None when absent or malformed."""
    raw = metadata.get(LOAD_KEY)
    if not isinstance(raw, Mapping):
        return None
    run, client = raw.get("run"), raw.get("client")
    if type(run) is int and type(client) is int and run >= 0 and client >= 0:
        return run, client
    return None


__all__ = ["LOAD_KEY", "OPEN_LOOP_KEY", "RECEIVED_LABEL", "SENT_LABEL", "arrival_labels", "labels_of", "load_labels", "load_metadata"]
