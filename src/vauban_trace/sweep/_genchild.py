"""The out-of-process arrival generator: a script the open-loop driver starts (standard library only).

Run by :class:`vauban_trace.sweep._procgen.ProcessGenerator` as ``python -I -S _genchild.py FD PID``:
no site-packages, no ``vauban_trace`` import, hence no torch and no numpy in this process (the
schedule comes from the parent, which draws it with :func:`~vauban_trace.sweep.arrival_schedule`
as the thread generator does). ``FD`` is this end of an ``AF_UNIX`` stream socket pair; the other
end stays in the serving process, whose pid is ``PID``.

Wire format: little-endian records of three signed 64-bit integers (``<qqq``, 24 bytes).

Parent to child (commands)::

    (1, n, lead_ns) + n float64 offsets   RUN: send arrival i at base + offsets[i], base = now + lead
    (2, 0, 0)                             STOP: abort the run in progress (answered with STOPPED)
    (3, token, 0)                         PING: answered with CLOCK (the shared-clock check)
    (4, 0, 0) or end of file              QUIT: exit (the parent closed or died)

Child to parent (records)::

    (seq >= 0, scheduled_ns, sent_ns)     one arrival, stamped just before it is written
    (-1, pid, flags)                      HELLO; flags bit 0: torch was imported (it never should be)
    (-2, token, now_ns)                   CLOCK: this process's time.monotonic_ns() when it answered
    (-3, base_ns, now_ns)                 START of a run: the schedule's origin
    (-4, sent, max_block_ns)              END of a run: arrivals sent; the longest write (a full channel)
    (-5, sent, not_sent)                  STOPPED: the run was aborted after ``sent`` arrivals

Every time is ``time.monotonic_ns()``: CLOCK_MONOTONIC on Linux, one clock for every process of
the machine (the parent checks it with PING brackets before the first run). The child owns the
clock of the schedule: it waits for each arrival with ``select`` on the command socket (so a STOP
or the parent's death ends the wait at once), stamps the send time and writes the record. When it
wakes up late, the overdue arrivals are written at once, each with its own (late) send time:
its lateness is measured, never hidden. A write that blocks (the serving process is not reading:
the socket buffer is full) delays every later arrival, which their send times show; the longest
block is reported in END. SIGINT is ignored here: the serving process decides when to stop
(Ctrl-C reaches the whole process group) and ends this one by closing its end or sending QUIT.

**Parent death.** End of file on the socket is not enough: a serving process that forked (a
``multiprocessing`` worker, a data loader) shares its end of the socket with its children, so
when it is killed the socket stays open. The socket is non-blocking and every wait (for a
command, for the next arrival, for room to write) lasts at most ``PARENT_CHECK_S``, after which
the parent's pid is checked: a child whose parent is gone (re-parented) exits.
"""

from __future__ import annotations

import os
import select
import signal
import socket
import struct
import sys
import time

REC = struct.Struct("<qqq")
RUN, STOP, PING, QUIT = 1, 2, 3, 4
HELLO, CLOCK, START, END, STOPPED = -1, -2, -3, -4, -5
PARENT_CHECK_S = 0.25  # the longest wait between two checks that the parent is alive
_PARENT = [os.getppid()]  # the serving process's pid (main() sets the one it was given)


class _Quit(Exception):
    pass


def _check_parent() -> None:
    if os.getppid() != _PARENT[0]:  # re-parented: the serving process is gone
        raise _Quit


def _wait(sock: socket.socket, write: bool, timeout: float) -> bool:
    """Whether ``sock`` became readable (writable) within ``timeout`` s (at most PARENT_CHECK_S)."""
    r, w, _ = select.select([] if write else [sock], [sock] if write else [], [], min(timeout, PARENT_CHECK_S))
    _check_parent()
    return bool(r or w)


def _read_exact(sock: socket.socket, n: int) -> bytes:
    buf = bytearray()
    while len(buf) < n:
        try:
            chunk = sock.recv(min(n - len(buf), 1 << 20))
        except BlockingIOError:
            _wait(sock, False, PARENT_CHECK_S)
            continue
        if not chunk:
            raise _Quit
        buf += chunk
    return bytes(buf)


def _write(sock: socket.socket, data: bytes) -> None:
    """All of ``data`` (the socket is non-blocking: a full channel is waited for, the parent checked)."""
    view = memoryview(data)
    while view:
        try:
            view = view[sock.send(view):]
        except BlockingIOError:
            _wait(sock, True, PARENT_CHECK_S)


def _command(sock: socket.socket) -> tuple[int, int, int]:
    cmd, a, b = REC.unpack(_read_exact(sock, REC.size))
    if cmd == QUIT:
        raise _Quit
    return cmd, a, b


def _run(sock: socket.socket, n: int, lead_ns: int) -> None:
    offsets = struct.unpack(f"<{n}d", _read_exact(sock, 8 * n)) if n else ()
    base = time.monotonic_ns() + lead_ns
    _write(sock, REC.pack(START, base, time.monotonic_ns()))
    sent = 0
    max_block = 0
    for seq, off in enumerate(offsets):
        due = base + round(off * 1e9)
        while True:
            wait = due - time.monotonic_ns()
            if wait <= 0:
                break
            if _wait(sock, False, wait / 1e9):
                cmd, token, _ = _command(sock)
                if cmd == STOP:
                    _write(sock, REC.pack(STOPPED, sent, n - sent))
                    return
                if cmd == PING:
                    _write(sock, REC.pack(CLOCK, token, time.monotonic_ns()))
        t_sent = time.monotonic_ns()
        _write(sock, REC.pack(seq, due, t_sent))
        max_block = max(max_block, time.monotonic_ns() - t_sent)
        sent += 1
    _write(sock, REC.pack(END, sent, max_block))


def _tight_timers() -> None:
    """Linux: a timer slack of 1 us instead of 50 us for this process's waits (prctl PR_SET_TIMERSLACK)."""
    if not sys.platform.startswith("linux"):
        return
    try:
        import ctypes

        ctypes.CDLL(None, use_errno=True).prctl(29, 1000, 0, 0, 0)  # PR_SET_TIMERSLACK, in ns
    except (OSError, AttributeError):  # no libc symbol: the default slack stays (measured either way)
        pass


def main(argv: list[str]) -> int:
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    if len(argv) > 2:  # the parent's own pid: it may have died before this line
        _PARENT[0] = int(argv[2])
    _tight_timers()
    sock = socket.socket(fileno=int(argv[1]))
    sock.setblocking(False)
    try:
        _write(sock, REC.pack(HELLO, os.getpid(), int("torch" in sys.modules)))
        while True:
            cmd, a, b = _command(sock)
            if cmd == RUN:
                _run(sock, a, b)
            elif cmd == PING:
                _write(sock, REC.pack(CLOCK, a, time.monotonic_ns()))
            elif cmd == STOP:  # a stop that crossed the END of its run: nothing left to abort
                _write(sock, REC.pack(STOPPED, 0, 0))
            else:
                sys.stderr.write(f"vauban arrival generator: unknown command {cmd}\n")
                return 2
    except (_Quit, BrokenPipeError, ConnectionResetError):
        return 0
    finally:
        sock.close()


if __name__ == "__main__":
    sys.exit(main(sys.argv))
