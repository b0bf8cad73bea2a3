"""LocalArtifactStore: round trips, digests reproducible by external tools, integrity, safety."""

from __future__ import annotations

import hashlib
import multiprocessing
import os
import subprocess
import threading
from pathlib import Path

import blake3
import pytest

from system_tools import require_tool
from vauban_trace.artifacts import (
    MEDIA_TYPE_JSON,
    BlobNotFoundError,
    IntegrityError,
    InvalidDigestError,
    LocalArtifactStore,
    UnsafeLocationError,
    compute_digest,
    get_uri,
    open_store,
    verify_bytes,
)


def test_put_get_round_trip_and_layout(tmp_path: Path) -> None:
    store = LocalArtifactStore(tmp_path / "blobs")
    ref = store.put(b"hello world", MEDIA_TYPE_JSON)
    alg, hexpart = ref.digest.split(":")
    assert alg == "blake3"
    assert ref.byte_size == 11 and ref.media_type == MEDIA_TYPE_JSON
    path = store.path_for(ref.digest)
    assert path == (tmp_path / "blobs").resolve() / "blake3" / hexpart[:2] / hexpart
    assert path.read_bytes() == b"hello world"
    assert ref.uri == path.as_uri() and ref.uri.startswith("file:///")
    assert store.get(ref.digest) == b"hello world"
    assert store.exists(ref.digest) and store.verify(ref.digest)
    assert list(store.digests()) == [ref.digest]
    assert not [p for p in path.parent.iterdir() if p.name.startswith(".tmp")]


@pytest.mark.parametrize("algorithm", ["sha256", "blake3"])
def test_stored_file_hash_reproduces_digest(tmp_path: Path, algorithm: str) -> None:
    store = LocalArtifactStore(tmp_path, algorithm=algorithm)
    data = os.urandom(3 << 20) + b"tail"
    ref = store.put(data, "application/octet-stream")
    raw = store.path_for(ref.digest).read_bytes()
    expected = hashlib.sha256(raw).hexdigest() if algorithm == "sha256" else blake3.blake3(raw).hexdigest()
    assert ref.digest == f"{algorithm}:{expected}"
    assert compute_digest(data, algorithm) == ref.digest and verify_bytes(data, ref.digest)


def test_sha256sum_tool_agrees(tmp_path: Path) -> None:
    store = LocalArtifactStore(tmp_path, algorithm="sha256")
    ref = store.put(b'{"a":1}', MEDIA_TYPE_JSON)
    out = subprocess.run(["sha256sum", str(store.path_for(ref.digest))], capture_output=True, text=True, check=True)
    assert ref.digest == "sha256:" + out.stdout.split()[0]


def test_b3sum_tool_agrees(tmp_path: Path) -> None:
    b3sum = require_tool("b3sum", "b3sum")
    store = LocalArtifactStore(tmp_path)
    ref = store.put(b'{"a":1}', MEDIA_TYPE_JSON)
    out = subprocess.run([b3sum, str(store.path_for(ref.digest))], capture_output=True, text=True, check=True)
    assert ref.digest == "blake3:" + out.stdout.split()[0]


def test_both_algorithms_readable_from_one_store(tmp_path: Path) -> None:
    sha = LocalArtifactStore(tmp_path, algorithm="sha256").put(b"x", "t")
    b3 = LocalArtifactStore(tmp_path).put(b"x", "t")
    reader = LocalArtifactStore(tmp_path)
    assert reader.get(sha.digest) == reader.get(b3.digest) == b"x"


def test_put_is_idempotent_and_does_not_rewrite(tmp_path: Path) -> None:
    store = LocalArtifactStore(tmp_path)
    ref = store.put(b"same", "t")
    path = store.path_for(ref.digest)
    before = path.stat()
    assert store.put(bytearray(b"same"), "t") == ref
    after = path.stat()
    assert (before.st_ino, before.st_mtime_ns) == (after.st_ino, after.st_mtime_ns)
    assert store.write_blob(ref.digest, b"same") is False


def test_corrupted_blob_is_detected(tmp_path: Path) -> None:
    store = LocalArtifactStore(tmp_path)
    ref = store.put(b"precious bytes", "t")
    path = store.path_for(ref.digest)
    path.write_bytes(b"precious bytez")
    with pytest.raises(IntegrityError, match="corrupted") as info:
        store.get(ref.digest)
    assert ref.digest in str(info.value)
    assert store.verify(ref.digest) is False
    with pytest.raises(IntegrityError):
        get_uri(ref.uri)


def test_truncated_blob_is_repaired_by_put(tmp_path: Path) -> None:
    store = LocalArtifactStore(tmp_path)
    ref = store.put(b"0123456789", "t")
    store.path_for(ref.digest).write_bytes(b"01234")
    assert store.put(b"0123456789", "t") == ref
    assert store.get(ref.digest) == b"0123456789"


def test_missing_blob(tmp_path: Path) -> None:
    store = LocalArtifactStore(tmp_path)
    digest = compute_digest(b"never stored")
    assert not store.exists(digest)
    with pytest.raises(BlobNotFoundError, match="no blob blake3:"):
        store.get(digest)
    with pytest.raises(BlobNotFoundError):
        store.verify(digest)
    with pytest.raises(KeyError):  # BlobNotFoundError is also a KeyError
        store.get(digest)


@pytest.mark.parametrize(
    "digest",
    ["sha256:../../etc", "sha256:" + "../" * 21 + "x", "md5:" + "0" * 32, "blake3:" + "A" * 64, "blake3:abc", "", "nope"],
)
def test_bad_digests_are_refused(tmp_path: Path, digest: str) -> None:
    store = LocalArtifactStore(tmp_path)
    for call in (store.get, store.exists, store.path_for, store.uri_for, store.verify):
        with pytest.raises(InvalidDigestError):
            call(digest)


def test_non_string_digest_refused(tmp_path: Path) -> None:
    with pytest.raises(InvalidDigestError, match="expected a string"):
        LocalArtifactStore(tmp_path).get(b"sha256:00")  # type: ignore[arg-type]


def test_uri_traversal_refused(tmp_path: Path) -> None:
    store = LocalArtifactStore(tmp_path / "blobs")
    ref = store.put(b"x", "t")
    hexpart = ref.digest.split(":")[1]
    outside = tmp_path / "outside" / "blake3" / hexpart[:2]
    outside.mkdir(parents=True)
    (outside / hexpart).write_bytes(b"x")
    bad_uris = [
        "file:///etc/passwd",
        (tmp_path / "outside" / "blake3" / hexpart[:2] / hexpart).as_uri(),  # valid layout, other root
        store.root.as_uri() + f"/blake3/{hexpart[:2]}/../../../outside/blake3/{hexpart[:2]}/{hexpart}",
        store.root.as_uri() + f"/blake3/zz/{hexpart}",
        "file://evil.example.com" + str(store.path_for(ref.digest)),
        "http://example.com/blake3/aa/" + "a" * 64,
    ]
    for uri in bad_uris:
        with pytest.raises(UnsafeLocationError):
            store.get_uri(uri)
    with pytest.raises(UnsafeLocationError):
        get_uri("file:///etc/passwd")
    with pytest.raises(UnsafeLocationError):
        get_uri(store.root.as_uri() + f"/blake3/{hexpart[:2]}/../../../etc/passwd")
    with pytest.raises(UnsafeLocationError):
        store.digest_for_path("/etc/passwd")
    assert store.get_uri(ref.uri) == b"x"


def test_symlinked_shard_dir_refused(tmp_path: Path) -> None:
    store = LocalArtifactStore(tmp_path / "blobs")
    data = b"escape attempt"
    digest = compute_digest(data)
    hexpart = digest.split(":")[1]
    outside = tmp_path / "elsewhere"
    outside.mkdir()
    (outside / hexpart).write_bytes(data)
    (store.root / "blake3").mkdir()
    os.symlink(outside, store.root / "blake3" / hexpart[:2])
    with pytest.raises(UnsafeLocationError, match="outside the store root"):
        store.get(digest)
    with pytest.raises(UnsafeLocationError):
        store.put(data, "t")
    with pytest.raises(UnsafeLocationError):
        store.get_uri((store.root / "blake3" / hexpart[:2] / hexpart).as_uri())
    assert list(store.digests()) == []


def test_symlinked_blob_file_refused(tmp_path: Path) -> None:
    store = LocalArtifactStore(tmp_path / "blobs")
    secret = tmp_path / "secret"
    secret.write_bytes(b"secret")
    digest = compute_digest(b"secret")
    hexpart = digest.split(":")[1]
    shard = store.root / "blake3" / hexpart[:2]
    shard.mkdir(parents=True)
    os.symlink(secret, shard / hexpart)
    with pytest.raises(UnsafeLocationError):
        store.get(digest)


def test_concurrent_threads_write_one_digest(tmp_path: Path) -> None:
    store = LocalArtifactStore(tmp_path)
    data = os.urandom(1 << 20)
    barrier = threading.Barrier(8)
    refs: list[object] = []
    errors: list[BaseException] = []

    def worker() -> None:
        try:
            barrier.wait()
            refs.append(LocalArtifactStore(tmp_path).put(data, "t"))
        except BaseException as exc:  # pragma: no cover - reported below
            errors.append(exc)

    threads = [threading.Thread(target=worker) for _ in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors and len(refs) == 8 and len(set(refs)) == 1
    digest = compute_digest(data)
    assert store.get(digest) == data
    assert [p.name for p in store.path_for(digest).parent.iterdir()] == [digest.split(":")[1]]


def _mp_put(root: str, start: object) -> str:
    start.wait()  # type: ignore[attr-defined]
    data = bytes(range(256)) * 4096
    return LocalArtifactStore(root).put(data, "t").digest


def test_concurrent_processes_write_one_digest(tmp_path: Path) -> None:
    ctx = multiprocessing.get_context("spawn")
    with ctx.Manager() as manager:
        start = manager.Event()
        with ctx.Pool(4) as pool:
            results = [pool.apply_async(_mp_put, (str(tmp_path), start)) for _ in range(4)]
            start.set()
            digests = {r.get(timeout=60) for r in results}
    assert len(digests) == 1
    digest = digests.pop()
    store = LocalArtifactStore(tmp_path)
    assert store.get(digest) == bytes(range(256)) * 4096
    assert [p.name for p in store.path_for(digest).parent.iterdir()] == [digest.split(":")[1]]


def test_open_store_picks_local(tmp_path: Path) -> None:
    assert isinstance(open_store(tmp_path), LocalArtifactStore)
    assert isinstance(open_store(str(tmp_path / "a")), LocalArtifactStore)
    via_uri = open_store((tmp_path / "b").as_uri())
    assert isinstance(via_uri, LocalArtifactStore) and via_uri.root == (tmp_path / "b").resolve()


def test_root_that_is_a_file_is_refused(tmp_path: Path) -> None:
    (tmp_path / "f").write_text("x")
    with pytest.raises(Exception, match="blob store root"):
        LocalArtifactStore(tmp_path / "f")


def test_stale_temporaries_are_swept(tmp_path: Path) -> None:
    store = LocalArtifactStore(tmp_path)
    ref = store.put(b"kept", "t")
    shard = store.path_for(ref.digest).parent
    old = shard / ".tmp-killedwriter"
    old.write_bytes(b"partial")
    os.utime(old, (1, 1))
    young = shard / ".tmp-inprogress"
    young.write_bytes(b"partial")
    assert store.remove_stale_temporaries(max_age_s=60) == 1
    assert not old.exists() and young.exists() and store.get(ref.digest) == b"kept"
    assert list(store.digests()) == [ref.digest]


def test_uri_round_trip_with_spaces_and_unicode(tmp_path: Path) -> None:
    store = LocalArtifactStore(tmp_path / "my blobs é#%")
    ref = store.put(b"odd path", "t")
    assert "%20" in ref.uri and "#" not in ref.uri
    assert get_uri(ref.uri) == b"odd path" and store.get_uri(ref.uri) == b"odd path"
