"""Spans this package opened, and the event-limit spill mechanism.

An SDK span keeps at most ``max_events`` events (128 by default, ``OTEL_SPAN_EVENT_COUNT_LIMIT``)
and silently drops the oldest past that. Artifact events must never vanish, so every vauban event
goes through :func:`add_event`: when the target span is full, a child *spill span* is opened
(same name, same ``vauban.stage``, ``vauban.spill.of = <hex id of the original span>``) and the
event lands there; when that one fills, another spill span follows. Spill spans of a span this
package owns (stages, request roots) are ended when the owner ends; for a foreign span (opened by
the application) each spill span is ended as soon as it is full or the event has been added, since
nobody would end it otherwise.

The rebuild path attributes events on a spill span to the original span, so a trace reads the
same whether or not spilling happened.
"""

from __future__ import annotations

import threading
from collections.abc import Mapping
from typing import Any

from opentelemetry import trace as _trace
from opentelemetry.trace import Span, Tracer
from opentelemetry.util.types import AttributeValue

from vauban_trace import semconv as sc
from vauban_trace.instrument import _state


class Owned:
    """Book-keeping for a span opened by a stage or a request."""

    __slots__ = (
        "span", "name", "stage", "tracer", "spill", "spill_events", "own_events",
        "instr_copies", "instr_bytes", "artifacts", "request", "lock",
    )

    def __init__(self, span: Span, name: str, stage: str | None, tracer: Tracer) -> None:
        self.span = span
        self.name = name
        self.stage = stage
        self.tracer = tracer
        self.spill: Span | None = None
        self.spill_events = 0
        self.own_events = 0
        self.instr_copies = 0
        self.instr_bytes = 0
        self.artifacts = 0
        self.request: Any = None  # the request state when this is a root span
        self.lock = threading.Lock()

    def close_spill(self) -> None:
        if self.spill is not None:
            self.spill.end()
            self.spill = None


_OWNED: dict[int, Owned] = {}


def register(owned: Owned) -> None:
    _OWNED[owned.span.get_span_context().span_id] = owned


def unregister(owned: Owned) -> None:
    _OWNED.pop(owned.span.get_span_context().span_id, None)
    owned.close_spill()


def owner_of(span: Span) -> Owned | None:
    return _OWNED.get(span.get_span_context().span_id)


def _open_spill(original: Span, name: str, stage: str | None, tracer: Tracer) -> Span:
    attrs: dict[str, AttributeValue] = {sc.SPILL_OF: format(original.get_span_context().span_id, "016x")}
    if stage is not None:
        attrs[sc.STAGE] = stage
    ctx = _trace.set_span_in_context(original)
    return tracer.start_span(name, context=ctx, attributes=attrs)


def _span_name(span: Span) -> str:
    return str(getattr(span, "name", "") or "spill")


def _span_stage(span: Span) -> str | None:
    attrs: Mapping[str, Any] | None = getattr(span, "attributes", None)
    if attrs is None:
        return None
    value = attrs.get(sc.STAGE)
    return str(value) if value is not None else None


def add_event(span: Span, name: str, attributes: Mapping[str, AttributeValue]) -> Span:
    """Add an event to ``span`` or, past its event limit, to a spill span; returns where it went."""
    target, close_after = _target(span)
    target.add_event(name, attributes)
    _after_add(span, target, close_after)
    return target


def record_exception(span: Span, exc: BaseException) -> None:
    """``span.record_exception(exc)``, on a spill span when ``span`` has no room for the event."""
    if not isinstance(exc, Exception):
        return
    target, close_after = _target(span)
    target.record_exception(exc)
    _after_add(span, target, close_after)


def _target(span: Span) -> tuple[Span, bool]:
    """The span that should take the next event, and whether to end it right after (foreign)."""
    owned = owner_of(span)
    limit = _state.event_limit(span)
    if owned is None:
        if _state.event_count(span, 0) < limit:
            return span, False
        tracer = _state.current_tracer()
        if tracer is None:  # pragma: no cover - a recording span implies a tracer
            return span, False
        return _open_spill(span, _span_name(span), _span_stage(span), tracer), True
    with owned.lock:
        if owned.spill is None and _state.event_count(span, owned.own_events) < limit:
            owned.own_events += 1
            return span, False
        if owned.spill is not None and _state.event_count(owned.spill, owned.spill_events) >= _state.event_limit(
            owned.spill
        ):
            owned.close_spill()
        if owned.spill is None:
            owned.spill = _open_spill(span, owned.name, owned.stage, owned.tracer)
            owned.spill_events = 0
        owned.spill_events += 1
        return owned.spill, False


def _after_add(span: Span, target: Span, close_after: bool) -> None:
    if close_after:
        target.end()
