"""BackgroundWriter: digest now, write later; flush, backpressure, no drops, errors contained."""

from __future__ import annotations

import os
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from vauban_trace.artifacts import (
    ArtifactStoreError,
    BackgroundWriter,
    BlobRef,
    LocalArtifactStore,
    compute_digest,
)


class _GatedStore(LocalArtifactStore):
    """A real local store whose writes wait for a gate (to observe the queue)."""

    def __init__(self, root: Path) -> None:
        super().__init__(root)
        self.gate = threading.Event()
        self.started = threading.Event()

    def write_blob(self, digest: str, data: bytes) -> bool:
        self.started.set()
        self.gate.wait(30)
        return super().write_blob(digest, data)


def test_submit_returns_ref_and_flush_writes(tmp_path: Path) -> None:
    store = LocalArtifactStore(tmp_path)
    with BackgroundWriter(store) as writer:
        refs = [writer.submit(os.urandom(1000) + bytes([i]), "t") for i in range(50)]
        assert writer.flush(timeout=30)
        assert writer.pending_items == 0 and writer.pending_bytes == 0
    for ref in refs:
        assert isinstance(ref, BlobRef) and ref.uri == store.uri_for(ref.digest)
        assert store.verify(ref.digest)
    assert writer.errors == [] and writer.written == 50


def test_digest_matches_put(tmp_path: Path) -> None:
    store = LocalArtifactStore(tmp_path / "a")
    writer = BackgroundWriter(LocalArtifactStore(tmp_path / "b"))
    data = b"same bytes"
    ref = writer.submit(data, "application/json")
    writer.close()
    put_ref = store.put(data, "application/json")
    assert ref.digest == put_ref.digest == compute_digest(data) and ref.byte_size == put_ref.byte_size


def test_mutable_buffer_is_copied(tmp_path: Path) -> None:
    store = _GatedStore(tmp_path)
    writer = BackgroundWriter(store)
    buf = bytearray(b"original")
    ref = writer.submit(buf, "t")
    buf[:] = b"mutated!"
    store.gate.set()
    writer.close()
    assert store.get(ref.digest) == b"original"


def test_backpressure_blocks_and_never_drops(tmp_path: Path) -> None:
    store = _GatedStore(tmp_path)
    writer = BackgroundWriter(store, max_pending_bytes=3000, max_pending_items=100)
    writer.submit(b"a" * 1000, "t")
    assert store.started.wait(10)  # the worker holds item 1
    writer.submit(b"b" * 1000, "t")
    writer.submit(b"c" * 1000, "t")  # 3000 bytes pending: full
    done = threading.Event()
    refs: list[BlobRef] = []

    def producer() -> None:
        refs.append(writer.submit(b"d" * 1000, "t"))
        done.set()

    thread = threading.Thread(target=producer)
    thread.start()
    assert not done.wait(0.3), "submit should block while the queue is full"
    assert writer.pending_bytes == 3000
    store.gate.set()
    assert done.wait(10)
    thread.join()
    assert writer.flush(timeout=10)
    for fill in b"abcd":
        assert store.get(compute_digest(bytes([fill]) * 1000)) == bytes([fill]) * 1000
    writer.close()


def test_item_bound_and_oversized_item(tmp_path: Path) -> None:
    store = _GatedStore(tmp_path)
    writer = BackgroundWriter(store, max_pending_bytes=10, max_pending_items=2)
    big = writer.submit(b"x" * 100, "t")  # larger than the byte bound: accepted when queue empty
    assert store.started.wait(10)
    blocked = threading.Event()

    def producer() -> None:
        writer.submit(b"y", "t")
        blocked.set()

    t = threading.Thread(target=producer)
    t.start()
    assert not blocked.wait(0.2)
    store.gate.set()
    assert blocked.wait(10)
    t.join()
    writer.close()
    assert store.get(big.digest) == b"x" * 100


def test_flush_timeout_reports_false(tmp_path: Path) -> None:
    store = _GatedStore(tmp_path)
    writer = BackgroundWriter(store)
    writer.submit(b"slow", "t")
    assert writer.flush(timeout=0.1) is False
    store.gate.set()
    assert writer.flush(timeout=10) is True
    writer.close()


class _FailingStore(LocalArtifactStore):
    def write_blob(self, digest: str, data: bytes) -> bool:
        raise ArtifactStoreError(f"disk full while writing {digest}")


def test_write_errors_are_recorded_not_raised(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    writer = BackgroundWriter(_FailingStore(tmp_path))
    ref = writer.submit(b"doomed", "t")
    assert writer.flush(timeout=10)
    writer.close()
    assert len(writer.errors) == 1
    assert writer.errors[0].digest == ref.digest and "disk full" in writer.errors[0].error
    assert any("failed to write blob" in r.getMessage() for r in caplog.records)
    # after close, submit writes synchronously, still without raising
    writer.submit(b"doomed again", "t")
    assert len(writer.errors) == 2


def test_submit_after_close_writes_synchronously(tmp_path: Path) -> None:
    store = LocalArtifactStore(tmp_path)
    writer = BackgroundWriter(store)
    writer.close()
    ref = writer.submit(b"late", "t")
    assert store.get(ref.digest) == b"late"


def test_atexit_flushes_pending_writes(tmp_path: Path) -> None:
    script = f"""
import time
from vauban_trace.artifacts import BackgroundWriter, LocalArtifactStore
class Slow(LocalArtifactStore):
    def write_blob(self, digest, data):
        time.sleep(0.05)
        return super().write_blob(digest, data)
w = BackgroundWriter(Slow({str(tmp_path)!r}))
for i in range(10):
    print(w.submit(bytes([i]) * 100, "t").digest)
"""
    out = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=60, check=True)
    digests = out.stdout.split()
    assert len(digests) == 10
    store = LocalArtifactStore(tmp_path)
    for digest in digests:
        assert store.verify(digest)


def test_many_threads_submit(tmp_path: Path) -> None:
    store = LocalArtifactStore(tmp_path)
    writer = BackgroundWriter(store, max_pending_bytes=4096, max_pending_items=4)
    refs: list[BlobRef] = []
    lock = threading.Lock()

    def producer(k: int) -> None:
        for i in range(20):
            ref = writer.submit(f"{k}-{i}".encode() * 50, "t")
            with lock:
                refs.append(ref)

    threads = [threading.Thread(target=producer, args=(k,)) for k in range(4)]
    t0 = time.monotonic()
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    writer.close()
    assert time.monotonic() - t0 < 60
    assert len({r.digest for r in refs}) == 80
    assert all(store.verify(r.digest) for r in refs)
