"""Stage handles: what ``with stage(...) as st`` yields, and the counter checks they share.

:class:`StageHandle` is the live handle of a recording stage: ``set_counter`` (with provenance),
``set_device``, ``set_attribute``, ``set_metadata`` and ``span_id``; its end attributes are
written by :class:`~vauban_trace.instrument._stage.Stage` when the stage closes. Without an SDK
every stage yields the one shared :data:`NOOP_HANDLE`, whose methods do nothing.
"""

from __future__ import annotations

import json
from typing import Any

from opentelemetry import trace as _trace
from opentelemetry.trace import Span
from opentelemetry.util.types import AttributeValue

from vauban_trace import semconv as sc
from vauban_trace._exceptions import ContractError
from vauban_trace.contract import COUNTER_NAMES, Provenance
from vauban_trace.instrument import _spans

_PROVENANCE_WORDS = frozenset(p.value for p in Provenance)
_USL = {c: sc.usl(c) for c in COUNTER_NAMES}
_USL_PROV = {c: sc.usl_provenance(c) for c in COUNTER_NAMES}
#: the attribute set of a stage about which nothing is known yet
_ALL_UNAVAILABLE: dict[str, AttributeValue] = {_USL_PROV[c]: "unavailable" for c in COUNTER_NAMES}


def _check_counter(name: str, value: object) -> None:
    if name not in _USL:
        raise ContractError(f"unknown counter {name!r} (expected one of: {', '.join(COUNTER_NAMES)})")
    if isinstance(value, bool) or not isinstance(value, (int, float)) or value < 0:
        raise ContractError(f"counter {name}: expected a number >= 0, got {value!r}")


def _device_attrs(device: str) -> dict[str, AttributeValue]:
    return {sc.DEVICE_KIND: device.split(":", 1)[0], sc.DEVICE_LABEL: device}


class StageHandle:
    """What ``with stage(...) as st`` yields while a span is recording."""

    __slots__ = ("_owned", "_end", "_probes", "_t0", "_token", "span")

    def __init__(self, owned: _spans.Owned, token: object) -> None:
        self._owned = owned
        self.span: Span = owned.span
        self._end: dict[str, AttributeValue] = {}
        self._probes: list[tuple[Any, object]] = []
        self._token = token
        self._t0 = 0.0

    @property
    def recording(self) -> bool:
        return True

    def set_counter(self, name: str, value: int | float, *, provenance: str = "declared") -> None:
        """Set a scaling counter with its provenance (``measured``/``derived``/``declared``)."""
        _check_counter(name, value)
        if provenance not in _PROVENANCE_WORDS or provenance == "unavailable":
            raise ContractError(f"counter {name}: provenance {provenance!r} is not measured/derived/declared")
        self._end[_USL[name]] = value
        self._end[_USL_PROV[name]] = provenance

    def set_device(self, device: str) -> None:
        self._end.update(_device_attrs(device))

    def set_attribute(self, key: str, value: AttributeValue) -> None:
        self.span.set_attribute(key, value)

    def set_metadata(self, metadata: dict[str, Any]) -> None:
        self._end[sc.SPAN_METADATA] = json.dumps(metadata, sort_keys=True, default=str)

    @property
    def span_id(self) -> str:
        return format(self.span.get_span_context().span_id, "016x")


class _NoopHandle:
    """Shared handle of stages entered without an SDK: every method does nothing."""

    __slots__ = ()
    span: Span = _trace.INVALID_SPAN
    recording = False
    span_id = None

    def set_counter(self, name: str, value: int | float, *, provenance: str = "declared") -> None:
        return None

    def set_device(self, device: str) -> None:
        return None

    def set_attribute(self, key: str, value: AttributeValue) -> None:
        return None

    def set_metadata(self, metadata: dict[str, Any]) -> None:
        return None


NOOP_HANDLE = _NoopHandle()


__all__ = ["NOOP_HANDLE", "StageHandle"]
