"""The trace records: TraceRequest, StageProfile, TraceSpan, TraceArtifact, MissingArtifact,
Capabilities and Trace.

All records are frozen dataclasses holding only JSON-compatible values (str, int, float, bool,
None, tuples and string-keyed dicts). ``to_dict()`` gives the JSON document form and
``from_dict()`` reads it back exactly: ``Trace.from_dict(t.to_dict()) == t`` for every valid trace.
Construction validates the record's own fields; :func:`vauban_trace.contract.validate_trace`
checks the graph rules that span several records.

Speed: records are built once per span by the rebuild and read back by ``from_dict``, so the
checks avoid building enum members (membership in frozensets of the vocabulary words), the
freezing copies only containers, and ``to_dict`` walks cached field-name tuples. Internal callers
(``from_dict``, :mod:`vauban_trace.rebuild`) construct through ``_new_record``, which fills the
instance dict in one go and then runs the very same ``__post_init__`` (freeze + validation) as
public construction: behaviour, messages and the JSON text are unchanged.
"""

from __future__ import annotations

import dataclasses
import math
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, ClassVar, TypeVar

from vauban_trace._exceptions import InvalidDigestError
from vauban_trace.contract._digest import DIGEST_ALGORITHMS, check_digest
from vauban_trace.contract._errors import ContractError
from vauban_trace.contract._kinds import (
    CAPABILITY_FOR_KIND,
    CAPABILITY_NAMES,
    COUNTER_NAMES,
    SCHEMA_VERSION,
    ArtifactKind,
    MissingReason,
    Provenance,
    SpanStatus,
    SupportLevel,
)

JSONValue = Any  # str | int | float | bool | None | list[JSONValue] | dict[str, JSONValue]

_T = TypeVar("_T")
_COUNTER_SET = frozenset(COUNTER_NAMES)
_ARTIFACT_KINDS = frozenset(m.value for m in ArtifactKind)
_SPAN_STATUSES = frozenset(m.value for m in SpanStatus)
_PROVENANCE_WORDS = frozenset(m.value for m in Provenance)
#: Exactly the digests ``check_digest`` accepts, for a one-call check of the common case.
_VALID_DIGEST = re.compile(
    "(?:" + "|".join(f"{re.escape(alg)}:[0-9a-f]{{{n}}}" for alg, n in DIGEST_ALGORITHMS.items()) + r")\Z"
)


def _enum(cls: type[_T], value: object, where: str) -> _T:
    try:
        return cls(value)  # type: ignore[call-arg]
    except ValueError:
        allowed = ", ".join(m.value for m in cls)  # type: ignore[attr-defined]
        raise ContractError(f"{where}: unknown value {value!r} (expected one of: {allowed})") from None


#: The words of each closed vocabulary, for membership checks that build no enum member.
_WORDS: dict[type, frozenset[str]] = {
    cls: frozenset(m.value for m in cls)
    for cls in (ArtifactKind, MissingReason, Provenance, SpanStatus, SupportLevel)
}


def _check_word(cls: type, value: object, where: str) -> None:
    """Refuse ``value`` unless it is a word of ``cls`` (same check and message as :func:`_enum`)."""
    try:
        if value in _WORDS[cls]:
            return
    except TypeError:  # unhashable: certainly not a word
        pass
    _enum(cls, value, where)


def _non_negative(value: float | int | None, where: str) -> None:
    if value is None:
        return
    cls = type(value)
    if cls is int:
        if value < 0:
            raise ContractError(f"{where}: must be >= 0, got {value!r}")
        return
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise ContractError(f"{where}: expected a number, got {type(value).__name__}")
    if isinstance(value, float) and not math.isfinite(value):
        raise ContractError(f"{where}: must be finite, got {value!r}")
    if value < 0:
        raise ContractError(f"{where}: must be >= 0, got {value!r}")


_FIELD_NAMES: dict[type, tuple[str, ...]] = {}
_KNOWN_KEYS: dict[type, frozenset[str]] = {}


def _field_names(cls: type) -> tuple[str, ...]:
    """The dataclass field names of ``cls`` in declaration order (cached)."""
    names = _FIELD_NAMES.get(cls)
    if names is None:
        names = _FIELD_NAMES[cls] = tuple(f.name for f in dataclasses.fields(cls))
        _KNOWN_KEYS[cls] = frozenset(names)
    return names


def _check_keys(cls: type, data: Mapping[str, Any], where: str) -> None:
    if not isinstance(data, Mapping):
        raise ContractError(f"{where}: expected an object, got {type(data).__name__}")
    known = _KNOWN_KEYS.get(cls)
    if known is None:
        _field_names(cls)
        known = _KNOWN_KEYS[cls]
    if known.issuperset(data):
        return
    unknown = sorted(set(data) - known)
    if unknown:
        raise ContractError(f"{where}: unknown field(s) {', '.join(unknown)}")


#: Exact types that are JSON scalars as they are (subclasses such as enums take the slow road).
_SCALARS: frozenset[type] = frozenset({str, int, float, bool, type(None)})
#: Types ``_freeze`` leaves as they are: the scalars, and records (completed below, once defined).
_LEAVES: set[type] = set(_SCALARS)


def _plain(value: Any) -> Any:
    """Recursively turn tuples and enums into JSON-native values."""
    cls = type(value)
    if cls in _SCALARS:
        return value
    if cls is dict:
        return {
            (k if type(k) is str else str(k)): (v if type(v) in _SCALARS else _plain(v)) for k, v in value.items()
        }
    if cls is tuple or cls is list:
        return [v if type(v) in _SCALARS else _plain(v) for v in value]
    if cls in _RECORDS:
        return value.to_dict()
    if isinstance(value, (str, int, float, bool)) or value is None:
        return value.value if hasattr(value, "value") and isinstance(value, str) else value
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    if isinstance(value, Mapping):
        return {str(k): _plain(v) for k, v in value.items()}
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return value.to_dict()  # type: ignore[attr-defined]
    raise ContractError(f"value of type {type(value).__name__} is not JSON-compatible")


def _record_dict(obj: Any) -> dict[str, Any]:
    """``{field: _plain(value)}`` in declaration order: the generic ``to_dict``."""
    values = obj.__dict__
    return {
        name: (value if type(value := values[name]) in _SCALARS else _plain(value))
        for name in _FIELD_NAMES.get(type(obj)) or _field_names(type(obj))
    }


def _freeze(obj: object, *names: str) -> None:
    """Normalise container fields of a frozen record in place (lists -> tuples, dict copies).

    Writes go straight to the instance ``__dict__`` (what ``object.__setattr__`` does for these
    slot-less records, minus the attribute machinery).
    """
    values = obj.__dict__
    for name in names:
        value = values[name]
        cls = type(value)
        if cls is dict:
            values[name] = {k: (v if type(v) in _LEAVES else _frozen_json(v)) for k, v in value.items()}
        elif cls is tuple or cls is list:
            values[name] = tuple([v if type(v) in _LEAVES else _frozen_json(v) for v in value])
        elif value is None:
            continue
        elif isinstance(value, Mapping):
            values[name] = _frozen_dict(value)
        elif isinstance(value, (list, tuple)):
            values[name] = tuple([v if type(v) in _LEAVES else _frozen_json(v) for v in value])


def _frozen_dict(value: Mapping[str, Any]) -> dict[str, Any]:
    """A fresh dict of ``value`` with nested lists as tuples (see :func:`_frozen_json`)."""
    return {k: (v if type(v) in _LEAVES else _frozen_json(v)) for k, v in value.items()}


def _frozen_json(value: Any) -> Any:
    """Lists become tuples so records stay hashable-ish and round trips compare equal."""
    if type(value) in _LEAVES:
        return value
    if isinstance(value, list):
        return tuple([v if type(v) in _LEAVES else _frozen_json(v) for v in value])
    if isinstance(value, dict):
        return {k: (v if type(v) in _LEAVES else _frozen_json(v)) for k, v in value.items()}
    return value


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


_INIT_SPECS: dict[type, tuple[dict[str, Any], tuple[str, ...], frozenset[str], frozenset[str]]] = {}


def _init_spec(cls: type) -> tuple[dict[str, Any], tuple[str, ...], frozenset[str], frozenset[str]]:
    """(plain defaults, default-factory field names, required names, all names) of a record."""
    spec = _INIT_SPECS.get(cls)
    if spec is None:
        defaults: dict[str, Any] = {}
        factories: list[str] = []
        required: set[str] = set()
        for f in dataclasses.fields(cls):
            if f.default is not dataclasses.MISSING:
                defaults[f.name] = f.default
            elif f.default_factory is not dataclasses.MISSING:
                if f.default_factory is not dict:
                    raise TypeError(f"{cls.__name__}.{f.name}: only dict factories are supported here")
                defaults[f.name] = None
                factories.append(f.name)
            else:
                defaults[f.name] = None
                required.add(f.name)
        spec = _INIT_SPECS[cls] = (defaults, tuple(factories), frozenset(required), frozenset(defaults))
    return spec


def _new_record(cls: type[_T], values: dict[str, Any]) -> _T:
    """``cls(**values)`` for internal callers (rebuild, ``from_dict``), without the generated
    ``__init__``'s one ``object.__setattr__`` call per field: the instance dict is filled in one
    go, then ``__post_init__`` freezes and validates exactly as public construction does. Any
    missing or unknown field goes through ``cls(**values)`` itself, for its usual TypeError."""
    defaults, factories, required, known = _INIT_SPECS.get(cls) or _init_spec(cls)
    if not (required <= values.keys() and known.issuperset(values)):
        return cls(**values)
    obj = object.__new__(cls)
    attrs = obj.__dict__
    attrs.update(defaults)
    attrs.update(values)
    for name in factories:
        if name not in values:
            attrs[name] = {}
    post_init = getattr(cls, "__post_init__", None)
    if post_init is not None:
        post_init(obj)
    return obj


#: Record types, which ``_plain`` turns into their ``to_dict()``.
_RECORDS: frozenset[type] = frozenset(
    {Capabilities, Device, Intervention, MissingArtifact, StageProfile, Trace, TraceArtifact, TraceRequest, TraceSpan}
)

_LEAVES.update(_RECORDS)

__all__ = [
    "Capabilities",
    "Device",
    "Intervention",
    "MissingArtifact",
    "MissingReason",
    "StageProfile",
    "Trace",
    "TraceArtifact",
    "TraceRequest",
    "TraceSpan",
]
