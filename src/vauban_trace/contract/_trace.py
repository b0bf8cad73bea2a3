"""The Trace record: the evidence-bearing record of one inference request."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from vauban_trace.contract._base import (
    _LEAVES,
    _RECORDS,
    JSONValue,
    _check_keys,
    _freeze,
    _new_record,
    _record_dict,
)
from vauban_trace.contract._errors import ContractError
from vauban_trace.contract._kinds import (
    SCHEMA_VERSION,
)
from vauban_trace.contract._model import (
    Capabilities,
    Device,
    Intervention,
    MissingArtifact,
    StageProfile,
    TraceArtifact,
    TraceRequest,
    TraceSpan,
)


@dataclass(frozen=True)
class Trace:
    """The evidence-bearing record of one inference request.

    ``complete`` is false when the trace was rebuilt from partial telemetry (no root span, spans
    whose parent never arrived); ``problems`` then says what is missing. ``resource`` holds the
    OpenTelemetry resource attributes (``service.name``...).
    """

    id: str
    schema_version: str = SCHEMA_VERSION
    request: TraceRequest | None = None
    device: Device | None = None
    capabilities: Capabilities | None = None
    spans: tuple[TraceSpan, ...] = ()
    artifacts: tuple[TraceArtifact, ...] = ()
    missing: tuple[MissingArtifact, ...] = ()
    complete: bool = True
    problems: tuple[str, ...] = ()
    resource: Mapping[str, JSONValue] = field(default_factory=dict)
    metadata: Mapping[str, JSONValue] = field(default_factory=dict)

    def __post_init__(self) -> None:
        _freeze(self, "spans", "artifacts", "missing", "problems", "resource", "metadata")
        if not self.id:
            raise ContractError("trace: id must not be empty")
        major = str(self.schema_version).split(".")[0]
        if major != SCHEMA_VERSION.split(".")[0]:
            raise ContractError(
                f"trace {self.id!r}: schema_version {self.schema_version!r} is not readable "
                f"(this library reads {SCHEMA_VERSION.split('.')[0]}.x)"
            )

    # -- lookups ---------------------------------------------------------------------------
    def span(self, span_id: str) -> TraceSpan:
        for s in self.spans:
            if s.id == span_id:
                return s
        raise KeyError(span_id)

    def artifact(self, artifact_id: str) -> TraceArtifact:
        for a in self.artifacts:
            if a.id == artifact_id:
                return a
        raise KeyError(artifact_id)

    def spans_for_stage(self, stage: str) -> tuple[TraceSpan, ...]:
        return tuple(s for s in self.spans if s.stage == stage)

    def artifacts_of_kind(self, kind: str) -> tuple[TraceArtifact, ...]:
        return tuple(a for a in self.artifacts if a.kind == kind)

    @property
    def root(self) -> TraceSpan | None:
        roots = [s for s in self.spans if s.parent_id is None]
        return roots[0] if len(roots) == 1 else None

    # -- serialisation ---------------------------------------------------------------------
    def to_dict(self) -> dict[str, Any]:
        return _record_dict(self)

    def to_json(self, *, indent: int | None = None) -> str:
        import json

        data = self.to_dict()
        try:
            # Without the circular-reference markers the encoder takes about half the time; the
            # text is the same. A cycle (only possible through a raw non-JSON value in a str field,
            # such as Device.kind) then overflows the stack: encode again with the markers so that
            # it is reported as before, as json's ValueError.
            return json.dumps(data, indent=indent, sort_keys=False, allow_nan=False, check_circular=False)
        except RecursionError:
            return json.dumps(data, indent=indent, sort_keys=False, allow_nan=False)

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> Trace:
        _check_keys(cls, data, "trace")
        kwargs = dict(data)
        if kwargs.get("request") is not None:
            kwargs["request"] = TraceRequest.from_dict(kwargs["request"])
        if kwargs.get("device") is not None:
            kwargs["device"] = Device.from_dict(kwargs["device"])
        if kwargs.get("capabilities") is not None:
            kwargs["capabilities"] = Capabilities.from_dict(kwargs["capabilities"])
        kwargs["spans"] = tuple(TraceSpan.from_dict(s) for s in kwargs.get("spans") or ())
        kwargs["artifacts"] = tuple(TraceArtifact.from_dict(a) for a in kwargs.get("artifacts") or ())
        kwargs["missing"] = tuple(MissingArtifact.from_dict(m) for m in kwargs.get("missing") or ())
        kwargs["problems"] = tuple(kwargs.get("problems") or ())
        kwargs["resource"] = dict(kwargs.get("resource") or {})
        kwargs["metadata"] = dict(kwargs.get("metadata") or {})
        return _new_record(cls, kwargs)

    @classmethod
    def from_json(cls, text: str | bytes) -> Trace:
        import json

        try:
            data = json.loads(text)
        except ValueError as exc:
            raise ContractError(f"trace JSON is not valid JSON: {exc}") from exc
        return cls.from_dict(data)


#: Record types, which ``_plain`` turns into their ``to_dict()``.
_RECORDS.update(
    {Capabilities, Device, Intervention, MissingArtifact, StageProfile, Trace, TraceArtifact, TraceRequest, TraceSpan}
)
_LEAVES.update(_RECORDS)

__all__ = ["Trace"]
