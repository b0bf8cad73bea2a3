"""Digest syntax shared by the contract and the artifact store.

A digest is self-describing: ``<algorithm>:<lowercase hex>``. Supported algorithms and their hex
lengths are fixed here; anything else is refused, so a digest can always be used as a file name.
"""

from __future__ import annotations

import re

from vauban_trace._exceptions import InvalidDigestError

#: Supported digest algorithms and the length of their hex encoding.
DIGEST_ALGORITHMS: dict[str, int] = {"sha256": 64, "blake3": 64}

_DIGEST_RE = re.compile(r"^(?P<alg>[a-z0-9]+):(?P<hex>[0-9a-f]+)$")


def parse_digest(digest: str, *, where: str = "digest") -> tuple[str, str]:
    """Split ``digest`` into (algorithm, hex), refusing anything malformed."""
    if not isinstance(digest, str):
        raise InvalidDigestError(f"{where}: expected a string, got {type(digest).__name__}")
    m = _DIGEST_RE.match(digest)
    if m is None:
        raise InvalidDigestError(f"{where}: {digest[:80]!r} is not '<algorithm>:<lowercase hex>'")
    alg, hexpart = m.group("alg"), m.group("hex")
    expected = DIGEST_ALGORITHMS.get(alg)
    if expected is None:
        allowed = ", ".join(sorted(DIGEST_ALGORITHMS))
        raise InvalidDigestError(f"{where}: unknown algorithm {alg!r} (expected one of: {allowed})")
    if len(hexpart) != expected:
        raise InvalidDigestError(f"{where}: {alg} digest must have {expected} hex digits, got {len(hexpart)}")
    return alg, hexpart


def check_digest(digest: str, *, where: str = "digest") -> str:
    """Return ``digest`` unchanged if valid; raise :class:`InvalidDigestError` otherwise."""
    parse_digest(digest, where=where)
    return digest
