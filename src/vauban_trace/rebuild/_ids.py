"""Trace and span identifiers: bytes <-> text, accepting every spelling backends use.

OTLP/JSON spells ids as hex (case-insensitive); Tempo's v1 API spells them as base64 (the
protobuf JSON mapping of ``bytes``); Jaeger's legacy UI model prints 64-bit trace ids as 16 hex
digits; Tempo's search strips leading zeros. :func:`parse_id` accepts all of these and always
returns raw bytes of the right length; :func:`hex_id` gives the canonical lowercase hex.

Lengths decide between hex and base64 without ambiguity: 16 bytes are 32 hex digits or 24 base64
characters (22 unpadded), 8 bytes are 16 hex digits or 12 base64 characters (11 unpadded).
"""

from __future__ import annotations

import base64
import binascii
import re

from vauban_trace._exceptions import RebuildError

TRACE_ID_BYTES = 16
SPAN_ID_BYTES = 8

_HEX_RE = re.compile(r"^[0-9a-fA-F]+$")
_B64_RE = re.compile(r"^[A-Za-z0-9+/_-]+={0,2}$")


def hex_id(raw: bytes) -> str:
    """Canonical lowercase hex of an id."""
    return raw.hex()


def parse_id(text: object, size: int, where: str, *, pad_short_hex: bool = False) -> bytes:
    """Decode an id spelled as hex or base64 into ``size`` bytes.

    ``pad_short_hex`` left-pads shorter hex (Jaeger 64-bit trace ids, Tempo search results with
    leading zeros stripped). Raises :class:`RebuildError` naming ``where`` otherwise.
    """
    kind = "32 hex digits" if size == TRACE_ID_BYTES else "16 hex digits"
    if not isinstance(text, str):
        raise RebuildError(f"{where}: expected a string id, got {type(text).__name__}")
    s = text.strip()
    if _HEX_RE.match(s):
        if len(s) == 2 * size:
            return bytes.fromhex(s)
        if pad_short_hex and len(s) < 2 * size:
            return bytes.fromhex(s.rjust(2 * size, "0"))
    if _B64_RE.match(s) and len(s) in _b64_lengths(size):
        try:
            raw = base64.b64decode(_pad_b64(s).replace("-", "+").replace("_", "/"), validate=True)
        except (binascii.Error, ValueError):
            raw = b""
        if len(raw) == size:
            return raw
    raise RebuildError(f"{where}: {text[:80]!r} is neither {kind} nor base64 of {size} bytes")


def parse_trace_id(text: object, where: str = "trace id", *, pad_short_hex: bool = False) -> str:
    """Canonical 32-digit lowercase hex of a trace id given in any accepted spelling."""
    return hex_id(parse_id(text, TRACE_ID_BYTES, where, pad_short_hex=pad_short_hex))


def normalize_trace_id(text: str) -> str:
    """Canonical trace id for look-ups typed by a user: hex (any case, leading zeros may be
    dropped, up to 32 digits) or base64 of 16 bytes."""
    return parse_trace_id(text, "trace id", pad_short_hex=True)


def _b64_lengths(size: int) -> tuple[int, ...]:
    padded = 4 * ((size + 2) // 3)
    unpadded = (size * 8 + 5) // 6
    return (padded, unpadded)


def _pad_b64(s: str) -> str:
    return s + "=" * (-len(s) % 4)
