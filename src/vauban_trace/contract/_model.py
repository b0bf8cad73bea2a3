"""The trace records: TraceRequest, StageProfile, TraceSpan, TraceArtifact, MissingArtifact,
Capabilities (Trace itself is in ``_trace``).

All records are frozen dataclasses holding only JSON-compatible values (str, int, float, bool,
None, tuples and string-keyed dicts). ``to_dict()`` gives the JSON document form and
``from_dict()`` reads it back exactly: ``Trace.from_dict(t.to_dict()) == t`` for every valid trace.
Construction validates the record's own fields; :func:`vauban_trace.contract.validate_trace`
checks the graph rules that span several records. The shared checks and the internal constructor
are in ``_base``.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, ClassVar

from vauban_trace._exceptions import InvalidDigestError
from vauban_trace.contract._base import (
    _ARTIFACT_KINDS,
    _COUNTER_SET,
    _PROVENANCE_WORDS,
    _SPAN_STATUSES,
    _VALID_DIGEST,
    JSONValue,
    _check_keys,
    _check_word,
    _enum,
    _freeze,
    _new_record,
    _non_negative,
    _plain,
    _record_dict,
)
from vauban_trace.contract._digest import check_digest
from vauban_trace.contract._errors import ContractError
from vauban_trace.contract._kinds import (
    CAPABILITY_FOR_KIND,
    CAPABILITY_NAMES,
    COUNTER_NAMES,
    ArtifactKind,
    MissingReason,
    Provenance,
    SpanStatus,
    SupportLevel,
)


@dataclass(frozen=True)
class Device:
    """Where a stage ran: ``kind`` is cpu, cuda, mps, gpu or another executor-defined word;
    ``label`` is the concrete device (``cuda:0``, ``NVIDIA H100 80GB HBM3``)."""

    kind: str
    label: str = ""

    def to_dict(self) -> dict[str, Any]:
        return {"kind": self.kind, "label": self.label}

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> Device:
        _check_keys(cls, data, "device")
        return cls(kind=str(data["kind"]), label=str(data.get("label", "")))


@dataclass(frozen=True)
class StageProfile:
    """Scaling (USL) counters of one stage.

    A counter is ``None`` when it was not obtained; ``provenance`` maps each counter name to a
    :class:`Provenance` word so a declared or derived value is never mistaken for a measurement.
    A counter that is set MUST have a provenance other than ``unavailable``.
    ``memory_method`` says which allocator statistic ``memory_bytes`` is (e.g.
    ``cuda.max_memory_allocated``, ``cpu.rss_peak_delta``).
    """

    COUNTERS: ClassVar[tuple[str, ...]] = COUNTER_NAMES

    name: str
    duration_s: float | None = None
    device_duration_s: float | None = None
    device: Device | None = None
    memory_bytes: int | None = None
    memory_method: str | None = None
    batch_size: int | None = None
    token_count: int | None = None
    queue_depth: int | None = None
    input_bytes: int | None = None
    output_bytes: int | None = None
    h2d_copies: int | None = None
    h2d_bytes: int | None = None
    d2h_copies: int | None = None
    d2h_bytes: int | None = None
    host_device_copies: int | None = None
    sync_points: int | None = None
    instrumentation_d2h_copies: int | None = None
    instrumentation_d2h_bytes: int | None = None
    provenance: Mapping[str, str] = field(default_factory=dict)
    metadata: Mapping[str, JSONValue] = field(default_factory=dict)

    def __post_init__(self) -> None:
        _freeze(self, "provenance", "metadata")
        values = self.__dict__
        for name in COUNTER_NAMES:
            value = values[name]
            if value is None:
                continue
            cls = type(value)
            if (cls is int or cls is float) and 0 <= value < math.inf:
                continue
            _non_negative(value, f"profile {self.name!r} {name}")
        for key, word in self.provenance.items():
            if key not in _COUNTER_SET:
                raise ContractError(f"profile {self.name!r}: provenance names unknown counter {key!r}")
            if type(word) is not str or word not in _PROVENANCE_WORDS:
                _check_word(Provenance, word, f"profile {self.name!r} provenance of {key}")
            if word == "unavailable" and values[key] is not None:
                raise ContractError(
                    f"profile {self.name!r}: counter {key} has a value but provenance 'unavailable'"
                )

    def provenance_of(self, counter: str) -> Provenance:
        """The provenance of ``counter``; ``unavailable`` when unset and undeclared."""
        if counter not in COUNTER_NAMES:
            raise ContractError(f"unknown counter {counter!r}")
        word = self.provenance.get(counter)
        if word is not None:
            return Provenance(word)
        return Provenance.UNAVAILABLE if getattr(self, counter) is None else Provenance.DECLARED

    def to_dict(self) -> dict[str, Any]:
        return _record_dict(self)

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> StageProfile:
        _check_keys(cls, data, "profile")
        kwargs = dict(data)
        if kwargs.get("device") is not None:
            kwargs["device"] = Device.from_dict(kwargs["device"])
        kwargs["provenance"] = dict(kwargs.get("provenance") or {})
        kwargs["metadata"] = dict(kwargs.get("metadata") or {})
        return _new_record(cls, kwargs)


@dataclass(frozen=True)
class Intervention:
    """A requested intervention: ``name`` (e.g. ``ablate``, ``steer``, ``patch``) at a layer,
    with free-form JSON parameters (direction digest, alpha, source artifact digest...)."""

    name: str
    layer_index: int
    params: Mapping[str, JSONValue] = field(default_factory=dict)

    def __post_init__(self) -> None:
        _freeze(self, "params")
        if not self.name:
            raise ContractError("intervention: name must not be empty")
        _non_negative(self.layer_index, f"intervention {self.name!r} layer_index")

    def to_dict(self) -> dict[str, Any]:
        return {"name": self.name, "layer_index": self.layer_index, "params": _plain(self.params)}

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> Intervention:
        _check_keys(cls, data, "intervention")
        return cls(
            name=data["name"],
            layer_index=data["layer_index"],
            params=dict(data.get("params") or {}),
        )


@dataclass(frozen=True)
class TraceRequest:
    """What was asked of the executor.

    Exactly what the caller requested, independent of what was produced. ``input_text`` is only
    present when content capture was allowed; ``input_ref`` then names the digest of the stored
    text artifact instead. At least one of ``input_text``, ``prompt_ids`` or ``input_ref`` MUST be
    set. ``return_logprobs`` requires ``return_logits``.
    """

    trace_id: str | None = None
    input_text: str | None = None
    prompt_ids: tuple[int, ...] | None = None
    input_ref: str | None = None
    requested_artifacts: tuple[str, ...] = ()
    collect_layers: tuple[int, ...] = ()
    interventions: tuple[Intervention, ...] = ()
    apply_chat_template: bool = False
    return_logits: bool = False
    return_logprobs: bool = False
    metadata: Mapping[str, JSONValue] = field(default_factory=dict)

    def __post_init__(self) -> None:
        _freeze(self, "prompt_ids", "requested_artifacts", "collect_layers", "interventions", "metadata")
        if self.input_text is None and self.prompt_ids is None and self.input_ref is None:
            raise ContractError("request: one of input_text, prompt_ids or input_ref is required")
        seen: set[str] = set()
        for kind in self.requested_artifacts:
            _check_word(ArtifactKind, kind, "request requested_artifacts")
            if kind in seen:
                raise ContractError(f"request: requested_artifacts repeats {kind!r}")
            seen.add(kind)
        for layer in self.collect_layers:
            if isinstance(layer, bool) or not isinstance(layer, int) or layer < 0:
                raise ContractError(f"request collect_layers: {layer!r} is not a layer index >= 0")
        if self.prompt_ids is not None:
            for tok in self.prompt_ids:
                if isinstance(tok, bool) or not isinstance(tok, int) or tok < 0:
                    raise ContractError(f"request prompt_ids: {tok!r} is not a token id")
        if self.return_logprobs and not self.return_logits:
            raise ContractError("request: return_logprobs requires return_logits")

    def to_dict(self) -> dict[str, Any]:
        return _record_dict(self)

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> TraceRequest:
        _check_keys(cls, data, "request")
        kwargs = dict(data)
        if kwargs.get("prompt_ids") is not None:
            kwargs["prompt_ids"] = tuple(kwargs["prompt_ids"])
        for key in ("requested_artifacts", "collect_layers"):
            kwargs[key] = tuple(kwargs.get(key) or ())
        kwargs["interventions"] = tuple(
            Intervention.from_dict(i) for i in kwargs.get("interventions") or ()
        )
        kwargs["metadata"] = dict(kwargs.get("metadata") or {})
        return _new_record(cls, kwargs)


@dataclass(frozen=True)
class TraceArtifact:
    """Typed evidence produced by one span: a pointer into the blob store plus metadata.

    ``digest`` is ``sha256:<hex>`` or ``blake3:<hex>`` over the stored bytes; ``uri`` says where
    the blob is. ``summary`` holds a few statistics (mean, std, min, max, l2_norm, topk_ids,
    topk_values); never the tensor itself.
    """

    id: str
    kind: str
    producer_span_id: str
    shape: tuple[int, ...] = ()
    dtype: str | None = None
    digest: str | None = None
    uri: str | None = None
    media_type: str | None = None
    byte_size: int | None = None
    layer: int | None = None
    summary: Mapping[str, JSONValue] = field(default_factory=dict)
    metadata: Mapping[str, JSONValue] = field(default_factory=dict)

    def __post_init__(self) -> None:
        _freeze(self, "shape", "summary", "metadata")
        if not self.id:
            raise ContractError("artifact: id must not be empty")
        kind = self.kind
        if type(kind) is not str or kind not in _ARTIFACT_KINDS:
            _check_word(ArtifactKind, kind, f"artifact {self.id!r} kind")
        for dim in self.shape:
            if type(dim) is not int or dim < 0:
                if isinstance(dim, bool) or not isinstance(dim, int) or dim < 0:
                    raise ContractError(f"artifact {self.id!r} shape: {dim!r} is not a dimension")
        if self.byte_size is not None:
            _non_negative(self.byte_size, f"artifact {self.id!r} byte_size")
        if self.layer is not None:
            _non_negative(self.layer, f"artifact {self.id!r} layer")
        digest = self.digest
        if digest is not None and (type(digest) is not str or _VALID_DIGEST.match(digest) is None):
            try:
                check_digest(digest, where=f"artifact {self.id!r} digest")
            except InvalidDigestError as exc:
                raise ContractError(str(exc)) from exc

    def to_dict(self) -> dict[str, Any]:
        return _record_dict(self)

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> TraceArtifact:
        _check_keys(cls, data, "artifact")
        kwargs = dict(data)
        kwargs["shape"] = tuple(kwargs.get("shape") or ())
        kwargs["summary"] = dict(kwargs.get("summary") or {})
        kwargs["metadata"] = dict(kwargs.get("metadata") or {})
        return _new_record(cls, kwargs)


@dataclass(frozen=True)
class MissingArtifact:
    """A requested artifact that the trace does not contain, and why."""

    kind: str
    reason: str
    detail: str = ""
    span_id: str | None = None
    layer: int | None = None

    def __post_init__(self) -> None:
        _check_word(ArtifactKind, self.kind, "missing artifact kind")
        _check_word(MissingReason, self.reason, f"missing {self.kind!r} reason")
        if self.layer is not None:
            _non_negative(self.layer, f"missing {self.kind!r} layer")

    def to_dict(self) -> dict[str, Any]:
        return _record_dict(self)

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> MissingArtifact:
        _check_keys(cls, data, "missing artifact")
        return _new_record(cls, dict(data))


@dataclass(frozen=True)
class Capabilities:
    """What an executor can honestly produce, per artifact-oriented capability.

    ``levels`` maps every name of :data:`CAPABILITY_NAMES` to a :class:`SupportLevel`; names not
    given are ``unsupported``. ``notes`` explains partial or unsupported levels.
    """

    executor: str
    device_kinds: tuple[str, ...] = ()
    levels: Mapping[str, str] = field(default_factory=dict)
    notes: Mapping[str, str] = field(default_factory=dict)

    def __post_init__(self) -> None:
        _freeze(self, "device_kinds", "levels", "notes")
        for name, level in self.levels.items():
            if name not in CAPABILITY_NAMES:
                raise ContractError(f"capabilities: unknown capability {name!r}")
            _check_word(SupportLevel, level, f"capabilities {name}")
        for name in self.notes:
            if name not in CAPABILITY_NAMES:
                raise ContractError(f"capabilities notes: unknown capability {name!r}")
        # every capability is always present: an undeclared one is explicitly unsupported
        object.__setattr__(
            self,
            "levels",
            {n: str(SupportLevel(self.levels.get(n, SupportLevel.UNSUPPORTED))) for n in CAPABILITY_NAMES},
        )

    def level(self, name: str) -> SupportLevel:
        if name not in CAPABILITY_NAMES:
            raise ContractError(f"unknown capability {name!r}")
        return SupportLevel(self.levels.get(name, SupportLevel.UNSUPPORTED))

    def support_for(self, kind: str | ArtifactKind) -> SupportLevel:
        """Support level for producing an artifact of ``kind``."""
        art = _enum(ArtifactKind, kind, "artifact kind")
        cap = CAPABILITY_FOR_KIND.get(art)
        return SupportLevel.FULL if cap is None else self.level(cap)

    def to_dict(self) -> dict[str, Any]:
        return {
            "executor": self.executor,
            "device_kinds": list(self.device_kinds),
            "levels": {n: str(self.level(n)) for n in CAPABILITY_NAMES},
            "notes": dict(self.notes),
        }

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> Capabilities:
        _check_keys(cls, data, "capabilities")
        return cls(
            executor=data["executor"],
            device_kinds=tuple(data.get("device_kinds") or ()),
            levels=dict(data.get("levels") or {}),
            notes=dict(data.get("notes") or {}),
        )


@dataclass(frozen=True)
class TraceSpan:
    """One stage (or any instrumented operation) inside a trace."""

    id: str
    name: str
    stage: str | None = None
    parent_id: str | None = None
    start_unix_nano: int = 0
    end_unix_nano: int = 0
    status: str = "unset"
    error: str | None = None
    profile: StageProfile | None = None
    input_artifact_ids: tuple[str, ...] = ()
    output_artifact_ids: tuple[str, ...] = ()
    metadata: Mapping[str, JSONValue] = field(default_factory=dict)

    def __post_init__(self) -> None:
        _freeze(self, "input_artifact_ids", "output_artifact_ids", "metadata")
        if not self.id:
            raise ContractError("span: id must not be empty")
        status = self.status
        if type(status) is not str or status not in _SPAN_STATUSES:
            _check_word(SpanStatus, status, f"span {self.id!r} status")
        start, end = self.start_unix_nano, self.end_unix_nano
        if type(start) is not int or start < 0:
            _non_negative(start, f"span {self.id!r} start_unix_nano")
        if type(end) is not int or end < 0:
            _non_negative(end, f"span {self.id!r} end_unix_nano")

    @property
    def duration_s(self) -> float:
        return max(0, self.end_unix_nano - self.start_unix_nano) / 1e9

    @property
    def stage_duration_s(self) -> float | None:
        """How long the stage took: the profile's ``duration_s`` when it has one, else the span's
        own duration when both of its times are set (end >= start > 0), else None."""
        profile = self.profile
        if profile is not None and profile.duration_s is not None:
            return profile.duration_s
        if self.end_unix_nano >= self.start_unix_nano > 0:
            return self.duration_s
        return None

    def to_dict(self) -> dict[str, Any]:
        return _record_dict(self)

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> TraceSpan:
        _check_keys(cls, data, "span")
        kwargs = dict(data)
        if kwargs.get("profile") is not None:
            kwargs["profile"] = StageProfile.from_dict(kwargs["profile"])
        for key in ("input_artifact_ids", "output_artifact_ids"):
            kwargs[key] = tuple(kwargs.get(key) or ())
        kwargs["metadata"] = dict(kwargs.get("metadata") or {})
        return _new_record(cls, kwargs)


__all__ = [
    "Capabilities",
    "Device",
    "Intervention",
    "MissingArtifact",
    "StageProfile",
    "TraceArtifact",
    "TraceRequest",
    "TraceSpan",
]
