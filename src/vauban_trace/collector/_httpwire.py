"""Wire-level pieces of the OTLP/HTTP receiver (:mod:`._http`), each there to spare per-request work.

- :func:`parse_fields` reads a request's header block into lower-case name -> first value,
  exactly what ``http.client.parse_headers(...).get(name)`` answers (the stdlib's reading, which
  :class:`~http.server.BaseHTTPRequestHandler` uses): plain ``Name: value`` lines directly, any
  other block (folded lines, a line without a colon, a bare CR, ``From`` lines) through the same
  email parser. :func:`version_number` checks an ``HTTP/x.y`` version as the stdlib does.
- :class:`BufferPool` holds a few body buffers for reuse: a Content-Length body is read into one
  instead of a fresh zero-filled allocation (a memset of the whole body per request).
- :func:`set_kernel_timeouts` with :class:`SocketReader` / :class:`SocketWriter`: on Linux a
  plaintext connection is a blocking socket whose timeouts the kernel enforces (``SO_RCVTIMEO`` /
  ``SO_SNDTIMEO``), instead of Python's socket timeout, which makes a ``poll()`` call before every
  ``recv`` and ``send``. A kernel timeout (EAGAIN) is raised as :class:`TimeoutError`, as a
  Python socket timeout would be.
"""

from __future__ import annotations

import email.parser
import io
import re
import socket
import struct
import sys
import threading
from http.client import HTTPMessage
from typing import Any

# request head limits: those of the stdlib parser (http.client._MAXLINE / _MAXHEADERS)
MAX_LINE = 65536
MAX_HEADERS = 100
HEAD_ENDS = (b"\r\n", b"\n", b"")
# a header line in the plain form `Name: value` CRLF; anything else (folded lines, a line with no
# colon, a bare CR, "From " lines) goes to the email parser the stdlib uses, for its exact reading
_FIELD = re.compile(r"([!-9;-~]+):[ \t]*([^\r\n]*)\r?\n")
# request bodies up to this size are read into a reused buffer (no fresh zeroed allocation per
# request); at most POOL_SIZE buffers are kept, so the pool holds at most 8 MiB when idle
POOL_MAX = 2 * 1024 * 1024
POOL_SIZE = 4


def version_number(version: str) -> tuple[int, int] | None:
    """``HTTP/1.0`` -> (1, 0); None where the stdlib parser answers 400 (not ``HTTP/<d>.<d>``,
    a part that is not digits or longer than 10 digits, or digits ``int`` refuses, such as the
    superscripts ``str.isdigit`` accepts)."""
    if not version.startswith("HTTP/"):
        return None
    parts = version.split("/", 1)[1].split(".")
    if len(parts) != 2 or any(not p.isdigit() or len(p) > 10 for p in parts):
        return None
    try:
        return int(parts[0]), int(parts[1])
    except ValueError:
        return None


def parse_fields(lines: list[bytes]) -> dict[str, str]:
    """The header block ``lines`` (as read, the blank or empty line that ends it last) as
    lower-case name -> first value, exactly what ``http.client.parse_headers(...).get(name)``
    answers: plain ``Name: value`` lines are read here, any other block by the email parser."""
    fields: dict[str, str] = {}
    match = _FIELD.fullmatch
    for line in lines[:-1]:
        m = match(line.decode("iso-8859-1"))
        if m is None:
            return _email_fields(lines)
        name = m.group(1).lower()
        if name not in fields:
            fields[name] = m.group(2)
    return fields


def _email_fields(lines: list[bytes]) -> dict[str, str]:
    """A header block that is not all plain ``Name: value`` lines, read by the email parser the
    stdlib uses (folded lines, lines with no colon ending the block, ...): first value per name."""
    message = email.parser.Parser(_class=HTTPMessage).parsestr(b"".join(lines).decode("iso-8859-1"))
    fields: dict[str, str] = {}
    for name, value in message.items():
        fields.setdefault(name.lower(), str(value))
    return fields


class BufferPool:
    """At most :data:`POOL_SIZE` reusable body buffers of up to :data:`POOL_MAX` bytes each (so at
    most 8 MiB held while idle), shared by the connection threads."""

    def __init__(self) -> None:
        self._buffers: list[bytearray] = []
        self._lock = threading.Lock()

    def take(self, length: int) -> bytearray:
        """A buffer of at least ``length`` bytes (``length <= POOL_MAX``): a pooled one that is
        large enough, else a new one (rounded up to 64 KiB), handed back with :meth:`give`
        once nothing reads it any more."""
        with self._lock:
            pool = self._buffers
            for i in range(len(pool)):
                if len(pool[i]) >= length:
                    return pool.pop(i)
        return bytearray(-(-length // 65536) * 65536)

    def give(self, buf: bytearray) -> None:
        with self._lock:
            pool = self._buffers
            if len(pool) < POOL_SIZE:
                pool.append(buf)
                return
            smallest = min(range(len(pool)), key=lambda i: len(pool[i]))
            if len(pool[smallest]) < len(buf):
                pool[smallest] = buf


# Plaintext connections on Linux: a blocking socket whose timeouts the kernel enforces
# (SO_RCVTIMEO / SO_SNDTIMEO), instead of Python's socket timeout, which polls the socket before
# every recv and send (one more system call each). A kernel timeout surfaces as EAGAIN, raised
# here as TimeoutError, the exception a Python socket timeout raises.
KERNEL_TIMEOUTS = sys.platform.startswith("linux")


def set_kernel_timeouts(sock: socket.socket, seconds: float) -> None:
    sock.settimeout(None)
    micros = max(1, round(seconds * 1e6))  # 0 would mean "no timeout"
    value = struct.pack("@ll", micros // 1_000_000, micros % 1_000_000)  # struct timeval
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVTIMEO, value)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDTIMEO, value)


class SocketReader(io.RawIOBase):
    """The raw stream under a kernel-timeout connection's ``rfile``."""

    def __init__(self, sock: socket.socket) -> None:
        super().__init__()
        self._recv_into = sock.recv_into

    def readable(self) -> bool:
        return True

    def readinto(self, buffer: Any) -> int:
        try:
            return self._recv_into(buffer)
        except BlockingIOError:
            raise TimeoutError("timed out") from None


class SocketWriter(io.BufferedIOBase):
    """The unbuffered ``wfile`` of a kernel-timeout connection: every write is one ``sendall``."""

    def __init__(self, sock: socket.socket) -> None:
        super().__init__()
        self._sendall = sock.sendall

    def writable(self) -> bool:
        return True

    def write(self, data: Any) -> int:
        try:
            self._sendall(data)
        except BlockingIOError:
            raise TimeoutError("timed out") from None
        return len(data)
