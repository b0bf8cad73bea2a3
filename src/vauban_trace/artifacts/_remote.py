"""Blob stores behind fsspec URLs, and picking a store from a path, URL or blob URI.

:class:`FsspecArtifactStore` keeps the local layout (``<url>/<algorithm>/<hex[:2]>/<hex>``) on
any fsspec filesystem (``memory://``, ``s3://``, ``gs://``, ``file://``...). Object stores write
a key in one PUT, so readers never see half a blob; on a local filesystem the store writes a
temporary key and moves it into place. Reads are verified like the local store's.

:func:`open_store` returns a :class:`LocalArtifactStore` for plain paths and ``file://`` URLs,
an :class:`FsspecArtifactStore` otherwise. :func:`open_store_for_uri` and :func:`get_uri` let a
reader that only has an artifact's URI (from a span event) open its store and fetch the verified
bytes; a URI that is not ``<root>/<algorithm>/<hex[:2]>/<hex>`` is refused.
"""

from __future__ import annotations

import os
import uuid
from pathlib import Path
from typing import Any, Protocol, runtime_checkable

import fsspec

from vauban_trace._exceptions import (
    ArtifactStoreError,
    BlobNotFoundError,
    IntegrityError,
    UnsafeLocationError,
)
from vauban_trace.artifacts._digests import DEFAULT_ALGORITHM, BlobRef, check_algorithm, compute_digest
from vauban_trace.artifacts._local import LocalArtifactStore, file_uri_to_path
from vauban_trace.contract import DIGEST_ALGORITHMS, parse_digest


@runtime_checkable
class ArtifactStore(Protocol):
    """What every blob store offers (local directory or fsspec URL)."""

    algorithm: str

    @property
    def root_uri(self) -> str: ...

    def put(self, data: bytes | bytearray | memoryview, media_type: str) -> BlobRef: ...

    def write_blob(self, digest: str, data: bytes) -> bool: ...

    def ref_for(self, data_len: int, digest: str, media_type: str) -> BlobRef: ...

    def get(self, digest: str) -> bytes: ...

    def get_uri(self, uri: str) -> bytes: ...

    def exists(self, digest: str) -> bool: ...

    def uri_for(self, digest: str) -> str: ...

    def verify(self, digest: str) -> bool: ...


def _has_scheme(text: str) -> bool:
    head, sep, _ = text.partition("://")
    return bool(sep) and head.replace("+", "").replace("-", "").replace(".", "").isalnum()


class FsspecArtifactStore:
    """Content-addressed blobs under an fsspec URL (same layout and checks as the local store).

    ``storage_options`` are passed to fsspec (credentials, endpoints...).
    """

    def __init__(self, url: str, algorithm: str = DEFAULT_ALGORITHM, **storage_options: Any) -> None:
        if not isinstance(url, str) or not _has_scheme(url):
            raise ArtifactStoreError(f"FsspecArtifactStore needs a URL with a scheme, got {url!r}")
        self.algorithm = check_algorithm(algorithm)
        try:
            fs, root = fsspec.core.url_to_fs(url, **storage_options)
        except (ImportError, ValueError) as exc:
            raise ArtifactStoreError(f"cannot open blob store {url!r}: {exc}") from exc
        self.fs = fs
        self._root = root.rstrip("/") or "/"
        self._url = url.rstrip("/")
        self._local = "file" in (fs.protocol if isinstance(fs.protocol, tuple) else (fs.protocol,))

    def __repr__(self) -> str:
        return f"FsspecArtifactStore({self._url!r}, algorithm={self.algorithm!r})"

    @property
    def root_uri(self) -> str:
        """The URL this store was opened with (without a trailing slash)."""
        return self._url

    def key_for(self, digest: str) -> str:
        """The filesystem key of blob ``digest`` (validated digest: cannot leave the root)."""
        alg, hexpart = parse_digest(digest)
        return f"{self._root.rstrip('/')}/{alg}/{hexpart[:2]}/{hexpart}"

    def uri_for(self, digest: str) -> str:
        """``<url>/<algorithm>/<hex[:2]>/<hex>``."""
        alg, hexpart = parse_digest(digest)
        return f"{self._url}/{alg}/{hexpart[:2]}/{hexpart}"

    def digest_for_uri(self, uri: str) -> str:
        """The digest named by a blob URI of this store; refuses anything else."""
        prefix = self._url + "/"
        if not isinstance(uri, str) or not uri.startswith(prefix):
            raise UnsafeLocationError(f"{str(uri)[:200]!r} is not inside blob store {self._url!r}")
        parts = uri[len(prefix) :].split("/")
        if len(parts) != 3 or parts[0] not in DIGEST_ALGORITHMS or parts[2][:2] != parts[1]:
            raise UnsafeLocationError(f"{uri[:200]!r} is not a blob location (<root>/<algorithm>/<hex[:2]>/<hex>)")
        digest = f"{parts[0]}:{parts[2]}"
        parse_digest(digest, where=f"blob URI {uri[:200]!r}")
        return digest

    def ref_for(self, data_len: int, digest: str, media_type: str) -> BlobRef:
        return BlobRef(digest=digest, uri=self.uri_for(digest), byte_size=data_len, media_type=media_type)

    def put(self, data: bytes | bytearray | memoryview, media_type: str) -> BlobRef:
        """Store ``data``; return its :class:`BlobRef`. Idempotent."""
        blob = bytes(data) if not isinstance(data, bytes) else data
        digest = compute_digest(blob, self.algorithm)
        self.write_blob(digest, blob)
        return self.ref_for(len(blob), digest, media_type)

    def write_blob(self, digest: str, data: bytes) -> bool:
        """Write ``data`` under ``digest`` unless a blob of that size is there; True if written."""
        key = self.key_for(digest)
        try:
            if self.fs.exists(key) and self.fs.size(key) == len(data):
                return False
            parent = key.rsplit("/", 1)[0]
            self.fs.makedirs(parent, exist_ok=True)
            if self._local:
                tmp = f"{parent}/.tmp-{uuid.uuid4().hex}"
                self.fs.pipe_file(tmp, data)
                try:
                    self.fs.mv(tmp, key)
                except Exception:
                    if self.fs.exists(tmp):
                        self.fs.rm(tmp)
                    raise
            else:
                self.fs.pipe_file(key, data)
        except (OSError, ValueError) as exc:
            raise ArtifactStoreError(f"cannot write blob {digest} to {self.uri_for(digest)!r}: {exc}") from exc
        return True

    def exists(self, digest: str) -> bool:
        key = self.key_for(digest)
        try:
            return bool(self.fs.isfile(key))
        except OSError as exc:
            raise ArtifactStoreError(f"cannot check blob {digest} in {self._url!r}: {exc}") from exc

    def _read(self, digest: str) -> bytes:
        key = self.key_for(digest)
        try:
            data = self.fs.cat_file(key)
        except FileNotFoundError:
            raise BlobNotFoundError(f"no blob {digest} in {self._url!r}") from None
        except (OSError, ValueError) as exc:
            raise ArtifactStoreError(f"cannot read blob {digest} from {self._url!r}: {exc}") from exc
        return bytes(data)

    def get(self, digest: str) -> bytes:
        """The bytes of blob ``digest``, verified against the digest."""
        data = self._read(digest)
        alg, _ = parse_digest(digest)
        actual = compute_digest(data, alg)
        if actual != digest:
            raise IntegrityError(
                f"blob {digest} is corrupted: {self.uri_for(digest)!r} ({len(data)} bytes) hashes to {actual}"
            )
        return data

    def get_uri(self, uri: str) -> bytes:
        """Read and verify the blob named by ``uri`` (must be inside this store)."""
        return self.get(self.digest_for_uri(uri))

    def verify(self, digest: str) -> bool:
        """True when blob ``digest`` is intact, False when corrupted; BlobNotFoundError if absent."""
        data = self._read(digest)
        alg, _ = parse_digest(digest)
        return compute_digest(data, alg) == digest


def open_store(
    path_or_url: str | os.PathLike[str], algorithm: str = DEFAULT_ALGORITHM, **storage_options: Any
) -> LocalArtifactStore | FsspecArtifactStore:
    """A blob store for a directory path, a ``file://`` URL, or any fsspec URL."""
    if isinstance(path_or_url, os.PathLike):
        return LocalArtifactStore(path_or_url, algorithm)
    if not isinstance(path_or_url, str) or not path_or_url:
        raise ArtifactStoreError(f"open_store: expected a path or URL, got {path_or_url!r}")
    if path_or_url.startswith("file://"):
        return LocalArtifactStore(file_uri_to_path(path_or_url), algorithm)
    if _has_scheme(path_or_url):
        return FsspecArtifactStore(path_or_url, algorithm, **storage_options)
    return LocalArtifactStore(path_or_url, algorithm)


def split_blob_uri(uri: str) -> tuple[str, str]:
    """Split a blob URI into (store root URI, digest); refuse non-blob URIs."""
    if not isinstance(uri, str) or not _has_scheme(uri):
        raise UnsafeLocationError(f"{str(uri)[:200]!r} is not a blob URI (expected <scheme>://...)")
    head, _, path = uri.partition("://")
    if head == "file":
        local = file_uri_to_path(uri)
        if not local.is_absolute() or any(p in ("..", ".") for p in local.parts):
            raise UnsafeLocationError(f"{uri[:200]!r}: a blob URI must be an absolute path without '..'")
    segments = path.split("/")
    if len(segments) < 4 or any(s in ("..", ".") for s in segments[:-3]):
        raise UnsafeLocationError(f"{uri[:200]!r} is not a blob URI (<root>/<algorithm>/<hex[:2]>/<hex>)")
    alg, shard, hexpart = segments[-3:]
    if alg not in DIGEST_ALGORITHMS or hexpart[:2] != shard:
        raise UnsafeLocationError(f"{uri[:200]!r} is not a blob URI (<root>/<algorithm>/<hex[:2]>/<hex>)")
    digest = f"{alg}:{hexpart}"
    parse_digest(digest, where=f"blob URI {uri[:200]!r}")
    root = f"{head}://{'/'.join(segments[:-3])}"
    return root, digest


def open_store_for_uri(uri: str, **storage_options: Any) -> LocalArtifactStore | FsspecArtifactStore:
    """Open the store that holds the blob named by ``uri`` (without creating anything local)."""
    root, digest = split_blob_uri(uri)
    alg, _ = parse_digest(digest)
    if root.startswith("file://"):
        local_root = file_uri_to_path(root)
        if not Path(local_root).is_dir():
            raise BlobNotFoundError(f"no blob store at {str(local_root)!r} (from URI {uri[:200]!r})")
        return LocalArtifactStore(local_root, alg)
    return FsspecArtifactStore(root, alg, **storage_options)


def get_uri(uri: str, **storage_options: Any) -> bytes:
    """Fetch the blob named by ``uri`` from wherever it lives, verified against its digest."""
    store = open_store_for_uri(uri, **storage_options)
    return store.get_uri(uri)


__all__ = [
    "ArtifactStore",
    "FsspecArtifactStore",
    "get_uri",
    "open_store",
    "open_store_for_uri",
    "split_blob_uri",
]
