"""OTLP ``AnyValue`` -> JSON-compatible Python values.

Strings, booleans and integers map to themselves; doubles to floats, except NaN and the
infinities, which JSON cannot hold and become the strings ``"NaN"``, ``"Infinity"``,
``"-Infinity"``; arrays to lists; key-value lists to dicts; bytes to their base64 text. An unset
value is ``None``. The results can go straight into ``metadata`` fields of trace records and
survive ``Trace.from_json(t.to_json()) == t``.
"""

from __future__ import annotations

import base64
import json
import math
from collections.abc import Iterable
from typing import Any

from opentelemetry.proto.common.v1.common_pb2 import AnyValue, KeyValue


def any_value(value: AnyValue) -> Any:
    """The JSON-compatible Python value of an OTLP ``AnyValue``."""
    which = value.WhichOneof("value")
    if which == "string_value":
        return value.string_value
    if which == "bool_value":
        return value.bool_value
    if which == "int_value":
        return value.int_value
    if which == "double_value":
        x = value.double_value
        return x if -math.inf < x < math.inf else json_safe_float(x)
    if which == "array_value":
        return [any_value(v) for v in value.array_value.values]
    if which == "kvlist_value":
        return attributes(value.kvlist_value.values)
    if which == "bytes_value":
        return base64.b64encode(value.bytes_value).decode("ascii")
    return None


def attributes(kvs: Iterable[KeyValue]) -> dict[str, Any]:
    """Key-value list -> dict (a repeated key keeps its last value, as the SDK does)."""
    return {kv.key: any_value(kv.value) for kv in kvs}


def json_safe_float(x: float) -> float | str:
    if math.isfinite(x):
        return x
    return "NaN" if math.isnan(x) else ("Infinity" if x > 0 else "-Infinity")


def json_safe(value: Any) -> Any:
    """Make a decoded JSON value strictly JSON-compatible (no NaN/inf, string keys)."""
    if isinstance(value, float):
        return json_safe_float(value)
    if isinstance(value, (list, tuple)):
        return [json_safe(v) for v in value]
    if isinstance(value, dict):
        return {str(k): json_safe(v) for k, v in value.items()}
    return value


def parse_json_attr(value: Any) -> tuple[Any, str | None]:
    """Decode an attribute documented as JSON text. Returns (value, error message or None).

    A value that is already structured (a list or dict, as a kvlist/array attribute) is taken as
    is; text that is not valid JSON returns the raw text and an error message.
    """
    if not isinstance(value, str):
        return json_safe(value), None
    try:
        return json_safe(json.loads(value)), None
    except ValueError as exc:
        return value, f"not valid JSON ({exc})"
