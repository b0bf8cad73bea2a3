"""Rebuilt traces as stored: the document protocol, the trace-file policy, atomic file writes.

:class:`TraceDocumentLike` is what :meth:`TraceStore.put_documents` stores: a trace already
serialised (its ``Trace.to_json()`` text) with the few facts the ``traces`` table indexes;
``vauban_trace.rebuild.TraceDocument`` is one (``rebuild.document_of`` makes one from a ``Trace``).
:data:`TraceFiles` names the policy for the ``traces/<id>.json`` mirrors (see ``_db``), and
:func:`_write_atomic` writes a mirror (temporary file + rename, optionally fsync'd).
"""

from __future__ import annotations

import contextlib
import os
import threading
from pathlib import Path
from typing import Literal, Protocol


def _fsync_dir(path: Path) -> None:
    with contextlib.suppress(OSError):
        fd = os.open(path, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


_OPEN_TMP = os.O_WRONLY | os.O_CREAT | os.O_TRUNC | getattr(os, "O_NOFOLLOW", 0) | getattr(os, "O_CLOEXEC", 0)


def _write_atomic(path: Path, text: str, *, sync: bool = True) -> None:
    """Write ``text`` to a temporary file next to ``path`` and rename it over ``path``.

    The temporary name is unique per process and thread (``.tmp-<name>.<pid>.<thread>``), so no
    random name has to be drawn; a leftover of a crashed process is truncated and reused, and a
    symlink in its place is refused (``O_NOFOLLOW``).
    """
    tmp = path.parent / f".tmp-{path.name}.{os.getpid()}.{threading.get_ident()}"
    try:
        fd = os.open(tmp, _OPEN_TMP, 0o644)
    except FileNotFoundError:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(tmp, _OPEN_TMP, 0o644)
    try:
        try:
            data = text.encode("utf-8")
            view = memoryview(data)
            while view:
                view = view[os.write(fd, view):]
            os.fchmod(fd, 0o644)  # whatever the umask, like the files written before
            if sync:
                os.fsync(fd)
        finally:
            os.close(fd)
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise
    if sync:
        _fsync_dir(path.parent)


TraceFiles = Literal["eager", "on_read"]


class TraceDocumentLike(Protocol):
    """A rebuilt trace already serialised (``vauban_trace.rebuild.TraceDocument`` is one)."""

    @property
    def trace_id(self) -> str: ...
    @property
    def json(self) -> str: ...
    @property
    def complete(self) -> bool: ...
    @property
    def service(self) -> str | None: ...
    @property
    def root_name(self) -> str | None: ...
    @property
    def start_unix_nano(self) -> int: ...
    @property
    def end_unix_nano(self) -> int: ...
    @property
    def span_count(self) -> int: ...


#: parameters, in order: trace id, version, now, JSON, complete, service, root name, start,
#: duration, span count, version again (plain ``?`` only: numbered placeholders bound from a
#: sequence are deprecated since Python 3.12 and an error from 3.14)
_PUT_TRACE = (
    "INSERT INTO traces (trace_id, rebuilt_version, rebuilt_at_unix_nano, trace_json, complete, rb_service, "
    "rb_root_name, rb_start_unix_nano, rb_duration_s, rb_span_count) VALUES (?, COALESCE(?, 0), ?, ?, ?, "
    "?, ?, ?, ?, ?) ON CONFLICT (trace_id) DO UPDATE SET "
    "rebuilt_version = COALESCE(?, traces.version), rebuilt_at_unix_nano = excluded.rebuilt_at_unix_nano, "
    "trace_json = excluded.trace_json, complete = excluded.complete, "
    "rb_service = COALESCE(excluded.rb_service, traces.service), rb_root_name = excluded.rb_root_name, "
    "rb_start_unix_nano = excluded.rb_start_unix_nano, rb_duration_s = excluded.rb_duration_s, "
    "rb_span_count = excluded.rb_span_count"
)


__all__ = ["TraceDocumentLike", "TraceFiles"]
