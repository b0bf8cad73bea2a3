"""JSON Schema of the Trace document, generated from the dataclasses (never hand-written).

``trace_json_schema()`` walks the type hints of :class:`Trace` and the records it holds;
closed vocabularies (artifact kinds, support levels, provenance words, ...) become ``enum``
constraints. The checked-in copy ``trace.schema.json`` is regenerated with
``python -m vauban_trace.contract._schema > src/vauban_trace/contract/trace.schema.json``
and a test asserts the copy equals the generated schema.
"""

from __future__ import annotations

import dataclasses
import inspect
import json
import sys
import types
import typing
from collections.abc import Mapping
from enum import StrEnum
from typing import Any

from vauban_trace.contract import _model, _trace
from vauban_trace.contract._kinds import (
    CAPABILITY_NAMES,
    COUNTER_NAMES,
    SCHEMA_VERSION,
    ArtifactKind,
    MissingReason,
    Provenance,
    SpanStatus,
    SupportLevel,
)

#: (record, field) -> closed vocabulary for that string field (or for a mapping's values).
_ENUMS: dict[tuple[str, str], type[StrEnum]] = {
    ("TraceArtifact", "kind"): ArtifactKind,
    ("MissingArtifact", "kind"): ArtifactKind,
    ("MissingArtifact", "reason"): MissingReason,
    ("TraceSpan", "status"): SpanStatus,
    ("Capabilities", "levels"): SupportLevel,
    ("StageProfile", "provenance"): Provenance,
}
#: (record, field) -> allowed keys of a mapping field.
_KEYS: dict[tuple[str, str], tuple[str, ...]] = {
    ("Capabilities", "levels"): CAPABILITY_NAMES,
    ("Capabilities", "notes"): CAPABILITY_NAMES,
    ("StageProfile", "provenance"): COUNTER_NAMES,
}
_ITEM_ENUMS: dict[tuple[str, str], type[StrEnum]] = {
    ("TraceRequest", "requested_artifacts"): ArtifactKind,
}
_NON_NEGATIVE = {"int", "float"}


def _type_schema(tp: Any, owner: str, name: str, defs: dict[str, Any]) -> dict[str, Any]:
    origin = typing.get_origin(tp)
    args = typing.get_args(tp)
    if origin in (typing.Union, types.UnionType):
        members = [a for a in args if a is not type(None)]
        inner = [_type_schema(a, owner, name, defs) for a in members]
        if type(None) in args:
            inner.append({"type": "null"})
        return inner[0] if len(inner) == 1 else {"anyOf": inner}
    if tp is str:
        enum = _ENUMS.get((owner, name))
        return {"type": "string", "enum": [m.value for m in enum]} if enum else {"type": "string"}
    if tp is bool:
        return {"type": "boolean"}
    if tp is int:
        schema: dict[str, Any] = {"type": "integer"}
        if name in COUNTER_NAMES or name in {"layer", "layer_index", "byte_size", "start_unix_nano", "end_unix_nano"}:
            schema["minimum"] = 0
        return schema
    if tp is float:
        schema = {"type": "number"}
        if name in COUNTER_NAMES:
            schema["minimum"] = 0
        return schema
    if origin is tuple:
        item = args[0] if args else Any
        items = _type_schema(item, owner, name, defs)
        enum = _ITEM_ENUMS.get((owner, name))
        if enum:
            items = {"type": "string", "enum": [m.value for m in enum]}
        out: dict[str, Any] = {"type": "array", "items": items}
        if enum:
            out["uniqueItems"] = True
        if name in {"shape", "collect_layers", "prompt_ids"}:
            out["items"] = {"type": "integer", "minimum": 0}
        return out
    if origin in (Mapping, dict, typing.Mapping) or tp is Mapping:
        value_tp = args[1] if len(args) == 2 else Any
        values = _type_schema(value_tp, owner, name, defs)
        out = {"type": "object", "additionalProperties": values}
        keys = _KEYS.get((owner, name))
        if keys:
            out["propertyNames"] = {"enum": list(keys)}
        return out
    if isinstance(tp, type) and dataclasses.is_dataclass(tp):
        _record_schema(tp, defs)
        return {"$ref": f"#/$defs/{tp.__name__}"}
    if tp is Any:
        return {}
    raise TypeError(f"no JSON Schema mapping for {owner}.{name}: {tp!r}")


def _record_schema(cls: type, defs: dict[str, Any]) -> None:
    if cls.__name__ in defs:
        return
    defs[cls.__name__] = {}  # reserve (recursion guard)
    hints = typing.get_type_hints(cls, {**vars(_model), **vars(sys.modules[cls.__module__])})
    props: dict[str, Any] = {}
    required: list[str] = []
    for f in dataclasses.fields(cls):
        if f.name not in hints or typing.get_origin(hints[f.name]) is typing.ClassVar:
            continue
        props[f.name] = _type_schema(hints[f.name], cls.__name__, f.name, defs)
        if f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING:
            required.append(f.name)
    # the first paragraph, one line: inspect.cleandoc and the whitespace join make it the same on
    # every Python (3.13 dedents docstrings at compile time, 3.11 and 3.12 keep the indentation)
    paragraph = inspect.cleandoc(cls.__doc__ or "").split("\n\n")[0]
    doc = " ".join(line.strip() for line in paragraph.splitlines() if line.strip())
    defs[cls.__name__] = {
        "type": "object",
        "description": doc,
        "properties": props,
        "required": required,
        "additionalProperties": False,
    }


def trace_json_schema() -> dict[str, Any]:
    """The JSON Schema (draft 2020-12) of a Trace document."""
    defs: dict[str, Any] = {}
    _record_schema(_trace.Trace, defs)
    root = defs.pop("Trace")
    root["properties"]["schema_version"] = {"type": "string", "pattern": r"^" + SCHEMA_VERSION.split(".")[0] + r"\.[0-9]+$"}
    return {
        "$schema": "https://json-schema.org/draft/2020-12/schema",
        "$id": f"https://vauban-trace.dev/schema/trace-{SCHEMA_VERSION}.json",
        "title": "Vauban Trace",
        **root,
        "$defs": dict(sorted(defs.items())),
    }


def schema_text() -> str:
    return json.dumps(trace_json_schema(), indent=2, sort_keys=False) + "\n"


if __name__ == "__main__":  # pragma: no cover - regeneration entry point
    print(schema_text(), end="")
