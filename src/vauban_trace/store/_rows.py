"""The store's row of one raw span (:class:`SpanRow`), shared by the ingest, splitter and batch modules."""

from __future__ import annotations

from typing import NamedTuple


class SpanRow(NamedTuple):
    """One raw span as the store handles it: ids (hex), name, service, times and its payload.

    ``payload`` is the serialized one-span ``ResourceSpans`` (``_wire.wrap_span(env, span)``);
    ``env`` the pre-encoded (resource prefix, resource suffix, scope prefix, scope suffix) around
    the span in it. The C splitter builds these tuples positionally: keep the field order.
    """

    trace_id: str
    span_id: str
    parent_span_id: str | None
    name: str
    service: str | None
    start: int
    end: int
    payload: bytes
    env: tuple[bytes, ...] = ()  # the ``envelope`` (resource and scope) around the span in ``payload``


__all__ = ["SpanRow"]
