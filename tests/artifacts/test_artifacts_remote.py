"""FsspecArtifactStore (memory:// and file://), open_store, open_store_for_uri, get_uri."""

from __future__ import annotations

import uuid
from pathlib import Path

import fsspec
import pytest

from vauban_trace.artifacts import (
    MEDIA_TYPE_SAFETENSORS,
    ArtifactStore,
    ArtifactStoreError,
    BlobNotFoundError,
    FsspecArtifactStore,
    IntegrityError,
    InvalidDigestError,
    LocalArtifactStore,
    UnsafeLocationError,
    compute_digest,
    get_uri,
    open_store,
    open_store_for_uri,
    split_blob_uri,
)


@pytest.fixture
def memory_url() -> str:
    return f"memory://vauban-test-{uuid.uuid4().hex}/blobs"


def test_memory_round_trip_layout_and_uri(memory_url: str) -> None:
    store = open_store(memory_url)
    assert isinstance(store, FsspecArtifactStore) and isinstance(store, ArtifactStore)
    ref = store.put(b"tensor bytes", MEDIA_TYPE_SAFETENSORS)
    hexpart = ref.digest.split(":")[1]
    assert ref.uri == f"{memory_url}/blake3/{hexpart[:2]}/{hexpart}"
    assert store.get(ref.digest) == b"tensor bytes"
    assert store.exists(ref.digest) and store.verify(ref.digest)
    fs = fsspec.filesystem("memory")
    assert fs.cat_file(store.key_for(ref.digest)) == b"tensor bytes"
    assert get_uri(ref.uri) == b"tensor bytes"
    assert isinstance(open_store_for_uri(ref.uri), FsspecArtifactStore)
    assert store.put(b"tensor bytes", MEDIA_TYPE_SAFETENSORS) == ref  # idempotent
    assert store.write_blob(ref.digest, b"tensor bytes") is False


def test_memory_corruption_and_missing(memory_url: str) -> None:
    store = FsspecArtifactStore(memory_url, algorithm="sha256")
    ref = store.put(b"abc", "t")
    store.fs.pipe_file(store.key_for(ref.digest), b"abd")
    with pytest.raises(IntegrityError, match="corrupted"):
        store.get(ref.digest)
    assert store.verify(ref.digest) is False
    missing = compute_digest(b"zzz", "sha256")
    assert not store.exists(missing)
    with pytest.raises(BlobNotFoundError):
        store.get(missing)


def test_memory_refuses_bad_digests_and_foreign_uris(memory_url: str) -> None:
    store = FsspecArtifactStore(memory_url)
    with pytest.raises(InvalidDigestError):
        store.get("sha256:../../etc")
    ref = store.put(b"q", "t")
    hexpart = ref.digest.split(":")[1]
    for uri in (
        "memory://other/blake3/aa/" + "a" * 64,
        f"{memory_url}/blake3/{hexpart[:2]}/../../x/{hexpart}",
        f"{memory_url}/blake3/{hexpart[:2]}/{hexpart}/extra",
        "file:///etc/passwd",
    ):
        with pytest.raises(UnsafeLocationError):
            store.get_uri(uri)


def test_fsspec_file_url_store(tmp_path: Path) -> None:
    store = FsspecArtifactStore((tmp_path / "fs").as_uri(), algorithm="sha256")
    ref = store.put(b"on disk", "t")
    hexpart = ref.digest.split(":")[1]
    on_disk = tmp_path / "fs" / "sha256" / hexpart[:2] / hexpart
    assert on_disk.read_bytes() == b"on disk"
    assert not [p for p in on_disk.parent.iterdir() if p.name.startswith(".tmp")]
    assert store.get(ref.digest) == b"on disk"
    # the same directory read through the local store, and through the URI alone
    assert LocalArtifactStore(tmp_path / "fs").get(ref.digest) == b"on disk"
    assert get_uri(ref.uri) == b"on disk"


def test_split_blob_uri() -> None:
    hexpart = "ab" + "0" * 62
    assert split_blob_uri(f"s3://bucket/pre/fix/sha256/ab/{hexpart}") == ("s3://bucket/pre/fix", f"sha256:{hexpart}")
    assert split_blob_uri(f"file:///var/blobs/blake3/ab/{hexpart}") == ("file:///var/blobs", f"blake3:{hexpart}")
    for bad in (
        "/no/scheme/sha256/ab/" + hexpart,
        "file:///etc/passwd",
        f"s3://bucket/sha256/cd/{hexpart}",
        f"s3://bucket/md5/ab/{hexpart}",
        f"file:///var/../etc/sha256/ab/{hexpart}",
        f"file://host/var/sha256/ab/{hexpart}",
    ):
        with pytest.raises((UnsafeLocationError, InvalidDigestError)):
            split_blob_uri(bad)


def test_get_uri_missing_local_store(tmp_path: Path) -> None:
    hexpart = "ab" + "0" * 62
    with pytest.raises(BlobNotFoundError):
        get_uri((tmp_path / "nowhere").as_uri() + f"/blake3/ab/{hexpart}")


def test_open_store_errors() -> None:
    with pytest.raises(ArtifactStoreError):
        open_store("")
    with pytest.raises(ArtifactStoreError):
        FsspecArtifactStore("no-scheme/path")
    with pytest.raises(InvalidDigestError, match="unknown digest algorithm"):
        open_store("memory://x", algorithm="md5")
