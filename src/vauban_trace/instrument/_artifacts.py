"""``record_artifact`` and ``record_missing``: typed evidence attached to the current span.

An artifact is stored as a blob in the content-addressed store and described on the current
span by one ``vauban.artifact`` event (id, kind, digest, uri, media type, shape, dtype, byte size,
summary statistics, layer, metadata JSON). A tensor never goes into an attribute.

Values and how they are stored:

=============================  =====================================  ==========================
value                          blob                                   shape / dtype
=============================  =====================================  ==========================
``str``                        JSON string (``application/json``)     ``()`` / ``str``
list/tuple of ints             JSON array of ints                     ``(n,)`` / ``int64``
dict, float, int, bool         canonical JSON                         ``()`` / ``json``
numpy array                    safetensors, one tensor ``data``       the array's
torch / mlx tensor             via the adapter (host copy), then      the host array's
                               safetensors; device-to-host copies     (metadata keeps
                               are counted on the stage as            ``source_dtype`` when
                               ``instrumentation_d2h_*``              widened, e.g. bfloat16,
                                                                      and ``source_device``)
``bytes``                      as is (``application/octet-stream``)   ``(n,)`` / ``uint8``
=============================  =====================================  ==========================

The digest is computed in the caller's thread (the event needs it); the write itself goes through
the session's :class:`~vauban_trace.artifacts.BackgroundWriter`, off the critical path. With an
explicit ``store=`` the write is synchronous.

Without an SDK the call is a no-op returning ``None`` (the kind is still validated). With an SDK
but no blob store (``configure()`` not called and no ``store=``), nothing can be stored: the
artifact is recorded as missing (reason ``failed``) rather than silently dropped. A store failure
does the same; a value of an unsupported type raises :class:`ContractError`.
"""

from __future__ import annotations

import json
import logging
import os
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np
from opentelemetry import trace as _trace
from opentelemetry.util.types import AttributeValue

from vauban_trace import semconv as sc
from vauban_trace._exceptions import ContractError
from vauban_trace.contract import ArtifactKind, MissingReason
from vauban_trace.instrument import _spans, _state, _values
from vauban_trace.instrument._probes import instrumentation_work

_log = logging.getLogger("vauban_trace.instrument")

MEDIA_JSON = "application/json"
MEDIA_SAFETENSORS = "application/vnd.safetensors"
MEDIA_BYTES = "application/octet-stream"
_KINDS = frozenset(k.value for k in ArtifactKind)
_REASONS = frozenset(r.value for r in MissingReason)
_TOPK_KINDS = frozenset({"logits", "logprobs"})


@dataclass(frozen=True)
class ArtifactRef:
    """What ``record_artifact`` returns: the artifact's id and where its bytes are."""

    id: str
    kind: str
    digest: str
    uri: str
    media_type: str
    byte_size: int
    shape: tuple[int, ...]
    dtype: str | None
    span_id: str


def check_kind(kind: str | ArtifactKind) -> str:
    """The kind as a plain string; :class:`ContractError` naming it when unknown."""
    word = str(kind.value if isinstance(kind, ArtifactKind) else kind)
    if word not in _KINDS:
        raise ContractError(f"unknown artifact kind {word!r} (expected one of: {', '.join(sorted(_KINDS))})")
    return word


def _check_layer(layer: int | None) -> None:
    if layer is not None and (isinstance(layer, bool) or not isinstance(layer, int) or layer < 0):
        raise ContractError(f"artifact layer must be an int >= 0, got {layer!r}")


def _encode(value: Any) -> tuple[bytes, str, tuple[int, ...], str | None, np.ndarray | None, int, int]:
    """-> (blob, media_type, shape, dtype, host array or None, d2h copies, d2h bytes)."""
    from vauban_trace.artifacts import encode_array, encode_json

    if isinstance(value, str):
        return encode_json(value), MEDIA_JSON, (), "str", None, 0, 0
    if isinstance(value, (bytes, bytearray, memoryview)):
        blob = bytes(value)
        return blob, MEDIA_BYTES, (len(blob),), "uint8", None, 0, 0
    if isinstance(value, (list, tuple)) and all(
        isinstance(v, (int, np.integer)) and not isinstance(v, bool) for v in value
    ):
        ids = [int(v) for v in value]
        return encode_json(ids), MEDIA_JSON, (len(ids),), "int64", None, 0, 0
    with instrumentation_work():  # copies made to hash/store are the instrumentation's, not the workload's
        host = _values.to_host(value)
    if host is not None:
        array = host.array
        try:
            blob = encode_array(array)
        except TypeError as exc:
            raise ContractError(f"record_artifact: {exc}") from exc
        return (
            blob, MEDIA_SAFETENSORS, tuple(int(d) for d in array.shape), str(array.dtype), array,
            host.d2h_copies, host.d2h_bytes,
        )
    if isinstance(value, (dict, int, float, bool, list, tuple)) or value is None:
        try:
            return encode_json(value), MEDIA_JSON, (), "json", None, 0, 0
        except (TypeError, ValueError) as exc:
            raise ContractError(f"record_artifact: value is not JSON-serialisable: {exc}") from exc
    raise ContractError(
        f"record_artifact: cannot store a value of type {type(value).__module__}.{type(value).__qualname__} "
        "(expected str, list of ints, JSON value, numpy array or a framework tensor)"
    )


def _summary_attrs(array: np.ndarray, kind: str, topk: int | None) -> dict[str, AttributeValue]:
    from vauban_trace.artifacts import summarize_array

    if array.dtype.kind not in "biuf":
        return {}
    k = topk if (topk and kind in _TOPK_KINDS) else None
    summary = summarize_array(array, topk=k)
    out: dict[str, AttributeValue] = {}
    for attr, key in sc.SUMMARY_KEYS.items():
        value = summary.get(key)
        if value is None:
            continue
        if isinstance(value, list):
            if key == "topk_values":
                out[attr] = [float("nan") if v is None else float(v) for v in value]
            else:
                out[attr] = [int(v) for v in value]
        else:
            out[attr] = float(value)
    return out


def _new_id() -> str:
    return "art-" + os.urandom(8).hex()


def _session_target() -> Any:
    session = _state.get_session()
    if session is None:
        return None
    return session.blob_writer


def record_artifact(
    kind: str | ArtifactKind,
    value: Any,
    *,
    layer: int | None = None,
    name: str | None = None,
    metadata: Mapping[str, Any] | None = None,
    topk: int | None = None,
    store: Any = None,
) -> ArtifactRef | None:
    """Store ``value`` as an artifact of ``kind`` and describe it on the current span.

    ``layer`` is the layer index for activations; ``name`` and ``metadata`` go into the event's
    metadata JSON; ``topk`` adds the top-k ids and values of the last row (logits/logprobs only).
    Returns the :class:`ArtifactRef`, or ``None`` when nothing is recording.
    """
    word = check_kind(kind)
    _check_layer(layer)
    if topk is not None and (isinstance(topk, bool) or not isinstance(topk, int) or topk < 1):
        raise ContractError(f"record_artifact: topk must be a positive int, got {topk!r}")
    span = _trace.get_current_span()
    if not span.is_recording():
        return None
    target = store if store is not None else _session_target()
    if target is None:
        record_missing(word, "failed", "no artifact store configured (call vauban_trace.configure() or pass store=)", layer)
        return None
    blob, media_type, shape, dtype, array, copies, copied = _encode(value)
    source = _values.describe(value) if array is not None and not isinstance(value, np.ndarray) else None
    owned = _spans.owner_of(span)
    if owned is not None:
        owned.instr_copies += copies
        owned.instr_bytes += copied
        owned.artifacts += 1
    try:
        ref = target.submit(blob, media_type) if hasattr(target, "submit") else target.put(blob, media_type)
    except Exception as exc:  # a store failure must not break inference
        _log.warning("vauban-trace: could not store %s artifact: %s", word, exc)
        record_missing(word, "failed", f"artifact store failed: {type(exc).__name__}: {exc}", layer)
        return None
    art_id = _new_id()
    attrs: dict[str, AttributeValue] = {
        sc.ARTIFACT_ID: art_id,
        sc.ARTIFACT_KIND: word,
        sc.ARTIFACT_DIGEST: ref.digest,
        sc.ARTIFACT_URI: ref.uri,
        sc.ARTIFACT_MEDIA_TYPE: media_type,
        sc.ARTIFACT_SHAPE: list(shape),
        sc.ARTIFACT_BYTE_SIZE: int(ref.byte_size),
    }
    if dtype is not None:
        attrs[sc.ARTIFACT_DTYPE] = dtype
    if layer is not None:
        attrs[sc.ARTIFACT_LAYER] = layer
    meta: dict[str, Any] = dict(metadata or {})
    if name is not None:
        meta["name"] = name
    if source is not None and source.dtype != dtype:
        meta["source_dtype"] = source.dtype
    if source is not None:
        meta.setdefault("source_device", source.device_label)
    if meta:
        attrs[sc.ARTIFACT_METADATA] = json.dumps(meta, sort_keys=True, default=str)
    if array is not None:
        try:
            attrs.update(_summary_attrs(array, word, topk))
        except Exception:
            _log.debug("summary of %s artifact failed", word, exc_info=True)
    target_span = _spans.add_event(span, sc.EVENT_ARTIFACT, attrs)
    _note_produced(word)
    return ArtifactRef(
        id=art_id, kind=word, digest=ref.digest, uri=ref.uri, media_type=media_type,
        byte_size=int(ref.byte_size), shape=shape, dtype=dtype,
        span_id=format(target_span.get_span_context().span_id, "016x"),
    )


def record_missing(
    kind: str | ArtifactKind, reason: str | MissingReason, detail: str = "", layer: int | None = None
) -> None:
    """Record on the current span that a requested artifact is absent, and why.

    ``reason`` is ``unsupported`` (the executor cannot produce it), ``not_requested`` or ``failed``.
    """
    word = check_kind(kind)
    why = str(reason.value if isinstance(reason, MissingReason) else reason)
    if why not in _REASONS:
        raise ContractError(f"unknown missing-artifact reason {why!r} (expected one of: {', '.join(sorted(_REASONS))})")
    _check_layer(layer)
    span = _trace.get_current_span()
    if not span.is_recording():
        return
    _add_missing(span, word, why, detail, layer)


def _add_missing(span: Any, kind: str, reason: str, detail: str, layer: int | None) -> None:
    attrs: dict[str, AttributeValue] = {sc.ARTIFACT_KIND: kind, sc.MISSING_REASON: reason}
    if detail:
        attrs[sc.MISSING_DETAIL] = detail
    if layer is not None:
        attrs[sc.ARTIFACT_LAYER] = layer
    _spans.add_event(span, sc.EVENT_ARTIFACT_MISSING, attrs)
    _note_missing(kind)


# -- request bookkeeping (which requested kinds were produced or declared missing) ------------
def _note_produced(kind: str) -> None:
    from vauban_trace.instrument._request import current_request_state

    state = current_request_state()
    if state is not None:
        state.produced.add(kind)


def _note_missing(kind: str) -> None:
    from vauban_trace.instrument._request import current_request_state

    state = current_request_state()
    if state is not None:
        state.missing.add(kind)

