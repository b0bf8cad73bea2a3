"""Write blobs off the inference thread.

:class:`BackgroundWriter` splits :meth:`put` in two: :meth:`BackgroundWriter.submit` hashes the
bytes in the caller's thread (the caller needs the digest now, for the span event) and queues
them; one worker thread writes them to the store. The queue is bounded by bytes and by items:
when full, ``submit`` blocks until the worker catches up (backpressure; nothing is ever dropped).
A single item larger than the byte bound is accepted when the queue is empty.

Write errors never reach the inference thread: they are logged and appended to
:attr:`BackgroundWriter.errors` as :class:`WriteError` records. :meth:`flush` waits for the
queue to drain; :meth:`close` flushes and stops the worker; an ``atexit`` hook flushes writers
still open at interpreter exit (waiting at most :data:`ATEXIT_TIMEOUT_S`, then logging what is
lost rather than hanging the exit). After ``close``, ``submit`` writes synchronously (still never
raising write errors).
"""

from __future__ import annotations

import atexit
import logging
import threading
import time
import weakref
from collections import deque
from dataclasses import dataclass

from vauban_trace.artifacts._digests import BlobRef, compute_digest
from vauban_trace.artifacts._remote import ArtifactStore

_log = logging.getLogger("vauban_trace.artifacts")

#: Default bound on bytes queued but not yet written.
DEFAULT_MAX_PENDING_BYTES = 256 << 20
#: Default bound on blobs queued but not yet written.
DEFAULT_MAX_PENDING_ITEMS = 4096
#: How long the interpreter-exit flush waits for the worker before giving up (and logging).
ATEXIT_TIMEOUT_S = 120.0


@dataclass(frozen=True)
class WriteError:
    """A blob the worker failed to write."""

    digest: str
    error: str
    exception: BaseException


class BackgroundWriter:
    """Asynchronous, bounded, lossless writer in front of an artifact store."""

    def __init__(
        self,
        store: ArtifactStore,
        *,
        max_pending_bytes: int = DEFAULT_MAX_PENDING_BYTES,
        max_pending_items: int = DEFAULT_MAX_PENDING_ITEMS,
        name: str = "vauban-blob-writer",
    ) -> None:
        if max_pending_bytes < 1 or max_pending_items < 1:
            raise ValueError("BackgroundWriter: max_pending_bytes and max_pending_items must be >= 1")
        self.store = store
        self.max_pending_bytes = max_pending_bytes
        self.max_pending_items = max_pending_items
        self.errors: list[WriteError] = []
        self.written = 0  # blobs written by the worker (existing blobs excluded)
        self._queue: deque[tuple[str, bytes]] = deque()
        self._pending_bytes = 0
        self._pending_items = 0  # queued + being written
        self._cond = threading.Condition()
        self._closed = False
        self._thread = threading.Thread(target=self._run, name=name, daemon=True)
        self._thread.start()
        ref = weakref.ref(self)

        def _flush_at_exit() -> None:
            writer = ref()
            if writer is not None and not writer.close(timeout=ATEXIT_TIMEOUT_S):
                _log.error(
                    "vauban-trace: %d blob(s) still unwritten after %.0f s at exit; giving up on them",
                    writer.pending_items, ATEXIT_TIMEOUT_S,
                )

        self._atexit = _flush_at_exit
        atexit.register(_flush_at_exit)

    # -- caller side -----------------------------------------------------------------------
    @property
    def pending_bytes(self) -> int:
        with self._cond:
            return self._pending_bytes

    @property
    def pending_items(self) -> int:
        with self._cond:
            return self._pending_items

    def submit(self, data: bytes | bytearray | memoryview, media_type: str) -> BlobRef:
        """Hash ``data`` now, queue the write, return the :class:`BlobRef` (blocks when full).

        Mutable buffers are copied first, so later changes by the caller cannot corrupt the blob.
        """
        blob = data if isinstance(data, bytes) else bytes(data)
        digest = compute_digest(blob, self.store.algorithm)
        ref = self.store.ref_for(len(blob), digest, media_type)
        size = len(blob)
        with self._cond:
            if self._closed:
                closed = True
            else:
                closed = False
                while not self._closed and self._pending_items > 0 and (
                    self._pending_bytes + size > self.max_pending_bytes
                    or self._pending_items >= self.max_pending_items
                ):
                    self._cond.wait()
                if self._closed:
                    closed = True
                else:
                    self._queue.append((digest, blob))
                    self._pending_bytes += size
                    self._pending_items += 1
                    self._cond.notify_all()
        if closed:
            self._write(digest, blob)
        return ref

    def flush(self, timeout: float | None = None) -> bool:
        """Wait until every submitted blob is written; False if ``timeout`` ran out first."""
        deadline = None if timeout is None else time.monotonic() + timeout
        with self._cond:
            while self._pending_items > 0:
                if deadline is None:
                    self._cond.wait()
                else:
                    left = deadline - time.monotonic()
                    if left <= 0:
                        return False
                    self._cond.wait(left)
        return True

    def close(self, timeout: float | None = None) -> bool:
        """Flush, then stop the worker. Returns False if the flush timed out."""
        drained = self.flush(timeout)
        with self._cond:
            self._closed = True
            self._cond.notify_all()
        if drained:
            self._thread.join(timeout)
        atexit.unregister(self._atexit)
        return drained

    def __enter__(self) -> BackgroundWriter:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- worker side -----------------------------------------------------------------------
    def _write(self, digest: str, blob: bytes) -> None:
        try:
            if self.store.write_blob(digest, blob):
                self.written += 1
        except Exception as exc:  # never into the inference thread
            _log.warning("vauban-trace: failed to write blob %s: %s", digest, exc)
            self.errors.append(WriteError(digest=digest, error=f"{type(exc).__name__}: {exc}", exception=exc))

    def _run(self) -> None:
        while True:
            with self._cond:
                while not self._queue and not self._closed:
                    self._cond.wait()
                if not self._queue:
                    return  # closed and drained
                digest, blob = self._queue.popleft()
            try:
                self._write(digest, blob)
            finally:
                with self._cond:
                    self._pending_bytes -= len(blob)
                    self._pending_items -= 1
                    self._cond.notify_all()


__all__ = ["DEFAULT_MAX_PENDING_BYTES", "DEFAULT_MAX_PENDING_ITEMS", "BackgroundWriter", "WriteError"]
