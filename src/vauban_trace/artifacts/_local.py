"""The local-directory blob store.

Layout: ``<root>/<algorithm>/<hex[:2]>/<hex>``, one file per blob, holding exactly the bytes
that were put, so ``sha256sum``/``b3sum`` of the file prints the digest's hex.

Writes are atomic and idempotent: the bytes go to a temporary file in the destination shard
directory, are fsynced, then ``os.replace``-d into place (and the directory is fsynced). A blob
that already exists with the right size is not rewritten. Several threads or processes writing
the same digest at once all succeed and leave one correct file, because every writer replaces
the name with a complete file of identical content.

Reads verify: :meth:`LocalArtifactStore.get` hashes what it read and raises
:class:`IntegrityError` when the bytes do not match. Every location is checked to stay inside
the root (after resolving symlinks); digests, URIs and paths that would escape raise
:class:`UnsafeLocationError`, malformed digests :class:`InvalidDigestError`.
"""

from __future__ import annotations

import contextlib
import os
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from urllib.parse import unquote, urlsplit

from vauban_trace._exceptions import (
    ArtifactStoreError,
    BlobNotFoundError,
    IntegrityError,
    UnsafeLocationError,
)
from vauban_trace.artifacts._digests import (
    DEFAULT_ALGORITHM,
    BlobRef,
    check_algorithm,
    compute_digest,
    new_hasher,
)
from vauban_trace.contract import DIGEST_ALGORITHMS, parse_digest

_CHUNK = 4 << 20


def _fsync_dir(path: Path) -> None:
    """Make a rename inside ``path`` durable (no-op where directories cannot be opened)."""
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def file_uri_to_path(uri: str) -> Path:
    """The local path named by a ``file://`` URI (only empty or ``localhost`` hosts)."""
    parts = urlsplit(uri)
    if parts.scheme != "file":
        raise UnsafeLocationError(f"{uri[:200]!r} is not a file:// URI")
    if parts.netloc not in ("", "localhost"):
        raise UnsafeLocationError(f"{uri[:200]!r} names a remote host {parts.netloc!r}; only local files")
    if parts.query or parts.fragment:
        raise UnsafeLocationError(f"{uri[:200]!r}: blob URIs carry no query or fragment")
    return Path(unquote(parts.path))


class LocalArtifactStore:
    """Content-addressed blobs in a local directory.

    ``root`` is created if missing. ``algorithm`` (``blake3`` by default, or ``sha256``) is used
    by :meth:`put`; blobs of either algorithm can be read. ``fsync=False`` skips the fsyncs (for
    scratch stores whose durability does not matter).
    """

    def __init__(
        self, root: str | os.PathLike[str], algorithm: str = DEFAULT_ALGORITHM, *, fsync: bool = True
    ) -> None:
        self.algorithm = check_algorithm(algorithm)
        self.fsync = fsync
        root_path = Path(root).expanduser()
        try:
            root_path.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise ArtifactStoreError(f"cannot create blob store root {str(root_path)!r}: {exc}") from exc
        if not root_path.is_dir():
            raise ArtifactStoreError(f"blob store root {str(root_path)!r} is not a directory")
        self.root = root_path.resolve()

    def __repr__(self) -> str:
        return f"LocalArtifactStore({str(self.root)!r}, algorithm={self.algorithm!r})"

    @property
    def root_uri(self) -> str:
        """``file://`` URI of the root directory."""
        return self.root.as_uri()

    # -- locations -------------------------------------------------------------------------
    def path_for(self, digest: str) -> Path:
        """Where the blob ``digest`` lives (whether or not it exists).

        Raises :class:`InvalidDigestError` for a malformed digest and :class:`UnsafeLocationError`
        when a symlink inside the store would lead outside the root.
        """
        alg, hexpart = parse_digest(digest)
        path = self.root / alg / hexpart[:2] / hexpart
        self._check_inside(path, what=f"blob {digest}")
        return path

    def _check_inside(self, path: Path, *, what: str) -> None:
        resolved = path.resolve(strict=False)
        if not resolved.is_relative_to(self.root):
            raise UnsafeLocationError(
                f"{what}: {str(path)!r} resolves to {str(resolved)!r}, outside the store root "
                f"{str(self.root)!r} (symlink?)"
            )

    def uri_for(self, digest: str) -> str:
        """``file://`` URI of the blob ``digest``."""
        return self.path_for(digest).as_uri()

    def digest_for_uri(self, uri: str) -> str:
        """The digest named by a blob URI of this store; refuses anything else."""
        path = file_uri_to_path(uri)
        if not path.is_absolute():
            raise UnsafeLocationError(f"{uri[:200]!r}: a blob URI must hold an absolute path")
        return self.digest_for_path(path)

    def digest_for_path(self, path: str | os.PathLike[str]) -> str:
        """The digest of the blob stored at ``path`` (which must be a blob location in this store)."""
        given = Path(os.path.normpath(Path(path).absolute()))
        # resolve the directories (so a symlinked path to the root still matches), not the file
        p = given.parent.resolve(strict=False) / given.name
        try:
            rel = p.relative_to(self.root)
        except ValueError:
            raise UnsafeLocationError(
                f"{str(path)!r} is outside the blob store root {str(self.root)!r}"
            ) from None
        parts = rel.parts
        if len(parts) != 3 or parts[0] not in DIGEST_ALGORITHMS or parts[2][:2] != parts[1]:
            raise UnsafeLocationError(
                f"{str(path)!r} is not a blob location (<root>/<algorithm>/<hex[:2]>/<hex>)"
            )
        digest = f"{parts[0]}:{parts[2]}"
        parse_digest(digest, where=f"blob path {str(path)!r}")
        self._check_inside(p, what=f"blob {digest}")
        return digest

    # -- writing ---------------------------------------------------------------------------
    def put(self, data: bytes | bytearray | memoryview, media_type: str) -> BlobRef:
        """Store ``data``; return its :class:`BlobRef`. Idempotent, atomic."""
        blob = bytes(data) if not isinstance(data, bytes) else data
        digest = compute_digest(blob, self.algorithm)
        self.write_blob(digest, blob)
        return BlobRef(digest=digest, uri=self.uri_for(digest), byte_size=len(blob), media_type=media_type)

    def ref_for(self, data_len: int, digest: str, media_type: str) -> BlobRef:
        """A :class:`BlobRef` for a digest computed by the caller (see :class:`BackgroundWriter`)."""
        return BlobRef(digest=digest, uri=self.uri_for(digest), byte_size=data_len, media_type=media_type)

    def write_blob(self, digest: str, data: bytes) -> bool:
        """Write ``data`` under ``digest`` unless an intact-sized blob is already there.

        The caller vouches that ``digest`` is the digest of ``data`` (:meth:`put` computes it;
        :class:`BackgroundWriter` hashes in the caller's thread). Returns True when bytes were
        written, False when the blob already existed.
        """
        path = self.path_for(digest)
        try:
            if path.stat().st_size == len(data):
                return False
        except FileNotFoundError:
            pass
        except OSError as exc:
            raise ArtifactStoreError(f"cannot stat blob {digest} at {str(path)!r}: {exc}") from exc
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            self._check_inside(path.parent, what=f"blob {digest}")
            fd, tmp_name = tempfile.mkstemp(prefix=".tmp-", dir=path.parent)
        except UnsafeLocationError:
            raise
        except OSError as exc:
            raise ArtifactStoreError(f"cannot write blob {digest} under {str(path.parent)!r}: {exc}") from exc
        try:
            with os.fdopen(fd, "wb") as fh:
                fh.write(data)
                fh.flush()
                if self.fsync:
                    os.fsync(fh.fileno())
            os.chmod(tmp_name, 0o644)
            os.replace(tmp_name, path)
        except BaseException as exc:
            with contextlib.suppress(OSError):
                os.unlink(tmp_name)
            if isinstance(exc, OSError):
                raise ArtifactStoreError(f"cannot write blob {digest} to {str(path)!r}: {exc}") from exc
            raise
        if self.fsync:
            _fsync_dir(path.parent)
        return True

    # -- reading ---------------------------------------------------------------------------
    def exists(self, digest: str) -> bool:
        """True when a blob file for ``digest`` is present (not verified; see :meth:`verify`)."""
        return self.path_for(digest).is_file()

    def get(self, digest: str) -> bytes:
        """The bytes of blob ``digest``, verified against the digest."""
        path = self.path_for(digest)
        try:
            data = path.read_bytes()
        except (FileNotFoundError, NotADirectoryError):
            raise BlobNotFoundError(f"no blob {digest} in {str(self.root)!r}") from None
        except IsADirectoryError:
            raise IntegrityError(f"blob {digest}: {str(path)!r} is a directory, not a blob") from None
        except OSError as exc:
            raise ArtifactStoreError(f"cannot read blob {digest} at {str(path)!r}: {exc}") from exc
        alg, _ = parse_digest(digest)
        actual = compute_digest(data, alg)
        if actual != digest:
            raise IntegrityError(
                f"blob {digest} is corrupted: {str(path)!r} ({len(data)} bytes) hashes to {actual}"
            )
        return data

    def get_uri(self, uri: str) -> bytes:
        """Read and verify the blob named by ``uri`` (a ``file://`` URI inside this store)."""
        return self.get(self.digest_for_uri(uri))

    def verify(self, digest: str) -> bool:
        """True when blob ``digest`` is intact, False when its bytes do not match.

        Hashes the file in chunks (no full read into memory). Raises :class:`BlobNotFoundError`
        when absent.
        """
        path = self.path_for(digest)
        alg, _ = parse_digest(digest)
        try:
            size = path.stat().st_size
            hasher = new_hasher(alg, size_hint=size)
            with path.open("rb") as fh:
                while chunk := fh.read(_CHUNK):
                    hasher.update(chunk)
        except (FileNotFoundError, NotADirectoryError):
            raise BlobNotFoundError(f"no blob {digest} in {str(self.root)!r}") from None
        except IsADirectoryError:
            return False
        except OSError as exc:
            raise ArtifactStoreError(f"cannot read blob {digest} at {str(path)!r}: {exc}") from exc
        return f"{alg}:{hasher.hexdigest()}" == digest

    def remove_stale_temporaries(self, max_age_s: float = 3600.0) -> int:
        """Delete ``.tmp-*`` files older than ``max_age_s`` left by writers that were killed.

        Returns how many were removed. Younger temporaries may belong to a write in progress.
        """
        cutoff = time.time() - max_age_s
        removed = 0
        for alg in DIGEST_ALGORITHMS:
            base = self.root / alg
            if not base.is_dir():
                continue
            for tmp in base.glob("*/.tmp-*"):
                with contextlib.suppress(OSError):
                    if tmp.is_file() and not tmp.is_symlink() and tmp.stat().st_mtime < cutoff:
                        tmp.unlink()
                        removed += 1
        return removed

    def digests(self) -> Iterator[str]:
        """Every digest stored (by file name; not verified), in no particular order."""
        for alg in DIGEST_ALGORITHMS:
            base = self.root / alg
            if not base.is_dir():
                continue
            for shard in base.iterdir():
                if not shard.is_dir() or shard.is_symlink():
                    continue
                for blob in shard.iterdir():
                    name = blob.name
                    if name.startswith(".") or name[:2] != shard.name:
                        continue
                    digest = f"{alg}:{name}"
                    try:
                        parse_digest(digest)
                    except ValueError:
                        continue
                    yield digest


__all__ = ["LocalArtifactStore", "file_uri_to_path"]
