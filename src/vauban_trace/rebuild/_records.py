"""Attribute dicts -> contract records (profile, artifact, missing, request, capabilities).

Every builder takes the decoded attributes of one span or event (see ``_values``), *pops* the
attributes it consumes (what is left becomes metadata), and appends a message to ``problems`` for
each value it has to refuse instead of raising: one malformed attribute costs that value (and is
reported in ``Trace.problems``), never the whole trace. Refusals keep honesty: a counter whose
value is refused becomes ``unavailable``; an artifact event without a valid id or kind is
dropped and reported, never given an invented id.
"""

from __future__ import annotations

import math
from typing import Any

from vauban_trace import semconv as sc
from vauban_trace.contract import (
    COUNTER_NAMES,
    Capabilities,
    ContractError,
    Device,
    Intervention,
    MissingArtifact,
    Provenance,
    StageProfile,
    TraceArtifact,
    TraceRequest,
)
from vauban_trace.contract._base import _new_record  # cls(**fields) minus the per-field setattr calls
from vauban_trace.contract._kinds import CAPABILITY_NAMES
from vauban_trace.rebuild._values import parse_json_attr

_FLOAT_COUNTERS = frozenset({"duration_s", "device_duration_s"})
_PROVENANCE_WORDS = frozenset(p.value for p in Provenance)
_DECODE_NAMES = (
    sc.DECODE_STEPS,
    sc.DECODE_STEP_P50_S,
    sc.DECODE_STEP_P95_S,
    sc.DECODE_STEP_MAX_S,
    sc.DECODE_STEP_MEAN_S,
    sc.DECODE_STOP_REASON,
)


#: Per counter, in display order: (counter, value attribute, provenance attribute, is a float).
_USL_KEYS: tuple[tuple[str, str, str, bool], ...] = tuple(
    (c, sc.usl(c), sc.usl_provenance(c), c in _FLOAT_COUNTERS) for c in COUNTER_NAMES
)
_USL_NAMES = frozenset(name for _, vkey, pkey, _ in _USL_KEYS for name in (vkey, pkey))
#: Attributes that go to ``profile.metadata`` under their short name.
_PROFILE_META_KEYS: tuple[tuple[str, str], ...] = tuple(
    (key, key.removeprefix("vauban.")) for key in (sc.COUNTER_MODE, *_DECODE_NAMES)
)
_ARTIFACT_TEXT_FIELDS = ((sc.ARTIFACT_DIGEST, "digest"), (sc.ARTIFACT_URI, "uri"),
                         (sc.ARTIFACT_MEDIA_TYPE, "media_type"), (sc.ARTIFACT_DTYPE, "dtype"))
_SUMMARY_ITEMS: tuple[tuple[str, str], ...] = tuple(sc.SUMMARY_KEYS.items())
_MEASURED = Provenance.MEASURED.value
_UNAVAILABLE = Provenance.UNAVAILABLE.value


class _Bad(ValueError):
    pass


def _short(name: str) -> str:
    """Metadata key for a consumed-but-unstructured vauban attribute: the name without ``vauban.``."""
    return name.removeprefix("vauban.")


def _as_int(value: Any, what: str) -> int:
    if isinstance(value, bool):
        raise _Bad(f"{what}: expected an integer, got a boolean")
    if isinstance(value, float) and math.isfinite(value) and value.is_integer():
        return int(value)
    if isinstance(value, int):
        return value
    raise _Bad(f"{what}: expected an integer, got {value!r}")


def _as_float(value: Any, what: str) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        raise _Bad(f"{what}: expected a finite number, got {value!r}")
    return float(value)


def _int_list(value: Any, what: str) -> tuple[int, ...]:
    if not isinstance(value, list):
        raise _Bad(f"{what}: expected an integer array, got {value!r}")
    return tuple([v if type(v) is int else _as_int(v, what) for v in value])


def _str_list(value: Any, what: str) -> tuple[str, ...]:
    if isinstance(value, str):
        value = [value]
    if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
        raise _Bad(f"{what}: expected a string array, got {value!r}")
    return tuple(value)


def _json_object(attrs: dict[str, Any], name: str, where: str, problems: list[str]) -> dict[str, Any]:
    if name not in attrs:
        return {}
    raw = attrs.pop(name)
    value, err = parse_json_attr(raw)
    if err is None and isinstance(value, dict):
        return value
    problems.append(f"{where}: {name} is {err or 'not a JSON object'}; kept as text")
    return {name: raw if isinstance(raw, str) else str(raw)}


def device_of(attrs: dict[str, Any]) -> Device | None:
    kind = attrs.pop(sc.DEVICE_KIND, None)
    label = attrs.pop(sc.DEVICE_LABEL, None)
    if kind is None and label is None:
        return None
    return Device(kind=str(kind if kind is not None else "unknown"), label="" if label is None else str(label))


def build_profile(
    name: str, attrs: dict[str, Any], device: Device | None, span_duration_s: float | None, where: str, problems: list[str]
) -> StageProfile:
    """StageProfile from ``vauban.usl.*``; with no duration counter, the span's own duration
    (measured by the emitting SDK's clock) fills ``duration_s``."""
    values: dict[str, Any] = {}
    provenance: dict[str, str] = {}
    if not _USL_NAMES.isdisjoint(attrs):
        for counter, vkey, pkey, is_float in _USL_KEYS:
            if vkey not in attrs and pkey not in attrs:
                continue
            raw, word = attrs.pop(vkey, None), attrs.pop(pkey, None)
            if word is not None:
                if isinstance(word, str) and word in _PROVENANCE_WORDS:
                    provenance[counter] = str(word)
                else:
                    problems.append(f"{where}: {pkey} {word!r} is not a provenance word; ignored")
            if raw is None:
                continue
            value: float | int
            try:
                if type(raw) is int and not is_float:
                    value = raw
                else:
                    value = _as_float(raw, vkey) if is_float else _as_int(raw, vkey)
                if value < 0:
                    raise _Bad(f"{vkey}: must be >= 0, got {value!r}")
            except _Bad as exc:
                problems.append(f"{where}: {exc}; counter marked unavailable")
                provenance[counter] = _UNAVAILABLE
                continue
            if provenance.get(counter) == _UNAVAILABLE:
                problems.append(f"{where}: {vkey} has a value but provenance 'unavailable'; value dropped")
                continue
            values[counter] = value
    if "duration_s" not in values and "duration_s" not in provenance and span_duration_s is not None:
        values["duration_s"] = span_duration_s
        provenance["duration_s"] = _MEASURED
    metadata: dict[str, Any] = {}
    method = attrs.pop(sc.MEMORY_METHOD, None)
    for key, short in _PROFILE_META_KEYS:
        if key in attrs:
            metadata[short] = attrs.pop(key)
    values["name"] = name
    values["device"] = device
    values["memory_method"] = None if method is None else str(method)
    values["provenance"] = provenance
    values["metadata"] = metadata
    return _new_record(StageProfile, values)


def build_artifact(attrs: dict[str, Any], producer: str, where: str, problems: list[str]) -> TraceArtifact | None:
    art_id = attrs.pop(sc.ARTIFACT_ID, None)
    if not isinstance(art_id, str) or not art_id:
        problems.append(f"{where}: artifact event without {sc.ARTIFACT_ID}; dropped")
        return None
    kwargs: dict[str, Any] = {"id": art_id, "kind": attrs.pop(sc.ARTIFACT_KIND, None), "producer_span_id": producer}
    try:
        for key, field in _ARTIFACT_TEXT_FIELDS:
            if key in attrs:
                kwargs[field] = str(attrs.pop(key))
        if sc.ARTIFACT_SHAPE in attrs:
            kwargs["shape"] = _int_list(attrs.pop(sc.ARTIFACT_SHAPE), sc.ARTIFACT_SHAPE)
        if sc.ARTIFACT_BYTE_SIZE in attrs:
            kwargs["byte_size"] = _as_int(attrs.pop(sc.ARTIFACT_BYTE_SIZE), sc.ARTIFACT_BYTE_SIZE)
        if sc.ARTIFACT_LAYER in attrs:
            kwargs["layer"] = _as_int(attrs.pop(sc.ARTIFACT_LAYER), sc.ARTIFACT_LAYER)
        kwargs["summary"] = {key: attrs.pop(name) for name, key in _SUMMARY_ITEMS if name in attrs}
        if sc.ARTIFACT_METADATA in attrs:
            metadata = _json_object(attrs, sc.ARTIFACT_METADATA, f"{where} artifact {art_id!r}", problems)
            metadata.update(attrs)
        else:
            metadata = attrs  # unknown event attributes are kept, never lost
        kwargs["metadata"] = metadata
        return _new_record(TraceArtifact, kwargs)
    except (_Bad, ContractError) as exc:
        problems.append(f"{where}: artifact {art_id!r} refused: {exc}")
        return None


def build_missing(attrs: dict[str, Any], span_id: str, where: str, problems: list[str]) -> MissingArtifact | None:
    try:
        layer = attrs.pop(sc.ARTIFACT_LAYER, None)
        return MissingArtifact(
            kind=attrs.pop(sc.ARTIFACT_KIND, None),
            reason=attrs.pop(sc.MISSING_REASON, None),
            detail=str(attrs.pop(sc.MISSING_DETAIL, "")),
            span_id=span_id,
            layer=None if layer is None else _as_int(layer, sc.ARTIFACT_LAYER),
        )
    except (_Bad, ContractError) as exc:
        problems.append(f"{where}: missing-artifact event refused: {exc}")
        return None


def build_request(attrs: dict[str, Any], trace_id: str, where: str, problems: list[str]) -> TraceRequest | None:
    """TraceRequest from the root's ``vauban.request.*``; None when the root carries none."""
    names = (sc.REQUEST_INPUT_TEXT, sc.REQUEST_INPUT_REF, sc.REQUEST_PROMPT_IDS, sc.REQUEST_REQUESTED_ARTIFACTS,
             sc.REQUEST_LAYERS, sc.REQUEST_INTERVENTIONS, sc.REQUEST_APPLY_CHAT_TEMPLATE,
             sc.REQUEST_RETURN_LOGITS, sc.REQUEST_RETURN_LOGPROBS, sc.REQUEST_METADATA)
    if not any(n in attrs for n in names):
        return None
    raw = {n: attrs.pop(n) for n in names if n in attrs}
    try:
        kwargs: dict[str, Any] = {"trace_id": trace_id}
        if sc.REQUEST_INPUT_TEXT in raw:
            kwargs["input_text"] = str(raw[sc.REQUEST_INPUT_TEXT])
        if sc.REQUEST_INPUT_REF in raw:
            kwargs["input_ref"] = str(raw[sc.REQUEST_INPUT_REF])
        if sc.REQUEST_PROMPT_IDS in raw:
            kwargs["prompt_ids"] = _int_list(raw[sc.REQUEST_PROMPT_IDS], sc.REQUEST_PROMPT_IDS)
        if sc.REQUEST_REQUESTED_ARTIFACTS in raw:
            kwargs["requested_artifacts"] = _str_list(raw[sc.REQUEST_REQUESTED_ARTIFACTS], sc.REQUEST_REQUESTED_ARTIFACTS)
        if sc.REQUEST_LAYERS in raw:
            kwargs["collect_layers"] = _int_list(raw[sc.REQUEST_LAYERS], sc.REQUEST_LAYERS)
        for key, field in ((sc.REQUEST_APPLY_CHAT_TEMPLATE, "apply_chat_template"),
                           (sc.REQUEST_RETURN_LOGITS, "return_logits"), (sc.REQUEST_RETURN_LOGPROBS, "return_logprobs")):
            if key in raw:
                if not isinstance(raw[key], bool):
                    raise _Bad(f"{key}: expected a boolean, got {raw[key]!r}")
                kwargs[field] = raw[key]
        if sc.REQUEST_INTERVENTIONS in raw:
            value, err = parse_json_attr(raw[sc.REQUEST_INTERVENTIONS])
            if err is not None or not isinstance(value, list):
                raise _Bad(f"{sc.REQUEST_INTERVENTIONS}: {err or 'not a JSON array'}")
            kwargs["interventions"] = tuple(Intervention.from_dict(v) for v in value)
        if sc.REQUEST_METADATA in raw:
            kwargs["metadata"] = _json_object(dict(raw), sc.REQUEST_METADATA, where, problems)
        return TraceRequest(**kwargs)
    except (_Bad, ContractError, TypeError, KeyError) as exc:
        problems.append(f"{where}: request refused: {exc}")
        return None


def build_capabilities(attrs: dict[str, Any], where: str, problems: list[str]) -> tuple[Capabilities | None, str | None]:
    """(Capabilities, executor version) from the root span; (None, None) when it declares none."""
    executor = attrs.pop(sc.EXECUTOR_NAME, None)
    version = attrs.pop(sc.EXECUTOR_VERSION, None)
    levels = {n: attrs.pop(sc.capability(n)) for n in CAPABILITY_NAMES if sc.capability(n) in attrs}
    kinds = attrs.pop(sc.CAPABILITY_DEVICE_KINDS, None)
    has_notes = sc.CAPABILITY_NOTES in attrs
    if executor is None and not levels and kinds is None and not has_notes:
        return None, None if version is None else str(version)
    notes = _json_object(attrs, sc.CAPABILITY_NOTES, where, problems) if has_notes else {}
    try:
        caps = Capabilities(
            executor=str(executor) if executor is not None else "unknown",
            device_kinds=() if kinds is None else _str_list(kinds, sc.CAPABILITY_DEVICE_KINDS),
            levels=levels,
            notes={k: v if isinstance(v, str) else str(v) for k, v in notes.items() if k in CAPABILITY_NAMES},
        )
    except (_Bad, ContractError) as exc:
        problems.append(f"{where}: capabilities refused: {exc}")
        caps = None
    return caps, None if version is None else str(version)
