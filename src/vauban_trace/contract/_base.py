"""Shared machinery of the contract records: value checks, freezing, dict conversion, and the
internal constructor ``_new_record`` used by ``from_dict`` and :mod:`vauban_trace.rebuild`.

Speed: records are built once per span by the rebuild and read back by ``from_dict``, so the
checks avoid building enum members (membership in frozensets of the vocabulary words), the
freezing copies only containers, and ``to_dict`` walks cached field-name tuples. ``_new_record``
fills the instance dict in one go and then runs the very same ``__post_init__`` (freeze +
validation) as public construction: behaviour, messages and the JSON text are unchanged.
"""

from __future__ import annotations

import dataclasses
import math
import re
from collections.abc import Mapping
from typing import Any, TypeVar

from vauban_trace.contract._digest import DIGEST_ALGORITHMS
from vauban_trace.contract._errors import ContractError
from vauban_trace.contract._kinds import (
    COUNTER_NAMES,
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
#: Record types, which ``_plain`` turns into their ``to_dict()`` (filled in by ``_trace``).
_RECORDS: set[type] = set()


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
