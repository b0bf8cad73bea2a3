"""Hashing of stored bytes, blob references and media types.

A digest is ``<algorithm>:<lowercase hex>`` (syntax owned by :mod:`vauban_trace.contract`),
computed over exactly the bytes that are stored, so ``sha256sum``/``b3sum`` of the stored file
print the same hex. :data:`DEFAULT_ALGORITHM` is ``blake3``: single-threaded it hashes 2x (2-core
EPYC) to 3.6x (16-core Xeon) faster than ``hashlib.sha256`` with SHA-NI, and its multi-threaded
mode, used for large buffers, scales with cores (figures in docs/benchmarks.md).
"""

from __future__ import annotations

import hashlib
import os
from dataclasses import dataclass
from typing import Protocol

import blake3

from vauban_trace._exceptions import InvalidDigestError
from vauban_trace.contract import DIGEST_ALGORITHMS, parse_digest

#: Media type of JSON blobs (text, token ids, metadata), encoded by :func:`encode_json`.
MEDIA_TYPE_JSON = "application/json"
#: Media type of tensor blobs: a safetensors file holding one tensor (named ``data`` by default).
MEDIA_TYPE_SAFETENSORS = "application/vnd.safetensors"
#: Algorithm used when a store is created without one.
DEFAULT_ALGORITHM = "blake3"

#: Buffers of at least this size are hashed with blake3's multi-threaded mode: 1 MiB with 4 or
#: more cores (16-core Xeon: 23 GB/s at 1 MiB against 6 single-threaded), 8 MiB on smaller
#: machines (`bench_hashing.py --sizes 1,4 --repeat 15` on the busy 2-vCPU EPYC, load 2.7:
#: 1 thread 4.16/3.97 GB/s, AUTO 3.83/3.37 GB/s at 1/4 MiB).
_BLAKE3_THREADS_ABOVE = (1 << 20) if (os.cpu_count() or 1) >= 4 else (8 << 20)


class _Hasher(Protocol):
    def update(self, data: bytes | memoryview, /) -> object: ...

    def hexdigest(self) -> str: ...


def check_algorithm(algorithm: str) -> str:
    """Return ``algorithm`` if it is a supported digest algorithm, else raise."""
    if algorithm not in DIGEST_ALGORITHMS:
        allowed = ", ".join(sorted(DIGEST_ALGORITHMS))
        raise InvalidDigestError(f"unknown digest algorithm {algorithm!r} (expected one of: {allowed})")
    return algorithm


def new_hasher(algorithm: str, *, size_hint: int = 0) -> _Hasher:
    """A streaming hasher for ``algorithm`` (``update``/``hexdigest``)."""
    check_algorithm(algorithm)
    if algorithm == "sha256":
        return hashlib.sha256()
    if size_hint >= _BLAKE3_THREADS_ABOVE:
        return blake3.blake3(max_threads=blake3.blake3.AUTO)
    return blake3.blake3()


def compute_digest(data: bytes | bytearray | memoryview, algorithm: str = DEFAULT_ALGORITHM) -> str:
    """The self-describing digest ``<algorithm>:<hex>`` of ``data``."""
    view = memoryview(data)
    hasher = new_hasher(algorithm, size_hint=view.nbytes)
    hasher.update(view)
    return f"{algorithm}:{hasher.hexdigest()}"


def verify_bytes(data: bytes | bytearray | memoryview, digest: str) -> bool:
    """True when ``data`` hashes to ``digest`` (whose algorithm is taken from the digest)."""
    algorithm, _ = parse_digest(digest)
    return compute_digest(data, algorithm) == digest


@dataclass(frozen=True)
class BlobRef:
    """Where a stored blob is and what it is: returned by every ``put``/``submit``.

    ``digest`` identifies the bytes; ``uri`` locates them (``file://`` for local stores, the
    store's URL scheme otherwise); ``byte_size`` is the stored length; ``media_type`` tells the
    codec (:data:`MEDIA_TYPE_JSON` or :data:`MEDIA_TYPE_SAFETENSORS`).
    """

    digest: str
    uri: str
    byte_size: int
    media_type: str

    def __post_init__(self) -> None:
        parse_digest(self.digest, where="BlobRef digest")
        if self.byte_size < 0:
            raise ValueError(f"BlobRef byte_size must be >= 0, got {self.byte_size}")


__all__ = [
    "DEFAULT_ALGORITHM",
    "MEDIA_TYPE_JSON",
    "MEDIA_TYPE_SAFETENSORS",
    "BlobRef",
    "check_algorithm",
    "compute_digest",
    "new_hasher",
    "verify_bytes",
]
