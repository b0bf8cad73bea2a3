"""The serving process's side of the out-of-process arrival generator (``OpenLoopSpec(generator="process")``).

::

    with ProcessGenerator() as gen:               # starts the child, checks the shared clock
        for rec in gen.run(offsets, lead_s=0.005):   # one run of an open-loop sweep
            ...                                   # Start(base), Arrival(seq, scheduled, sent, received)

Why: with the thread generator the schedule is kept by a thread of the serving process, which
shares the interpreter lock with the service; a service that holds it (pure-Python work) or a
process busy with many threads makes the generator wake up late, and the run is then reported
late (its load was not offered). The child (``_genchild.py``, a standard-library script started
with ``python -I -S``: no torch, no numpy, no ``vauban_trace``) keeps the schedule in a process
of its own and writes each arrival (sequence number, scheduled time, send time) to an ``AF_UNIX``
stream socket; here **one receiver** (the thread that called :func:`~vauban_trace.sweep.run_open_loop`)
reads them, stamps the receive time and hands each one to a sender thread, as the thread
generator does. So two delays are measured apart:

- the **generator's lateness**: send minus scheduled time, both read in the child: what the load
  generator itself failed to keep (its wake-ups, a write that blocked on a full channel);
- the **hand-off**: receive minus send time: how long the serving process took to take the
  arrival in (the receiver waits for the interpreter lock like every thread of the service, so a
  busy service delays it: part of the service's response, not of the offered load).

**Clock.** Every time is ``time.monotonic`` (``CLOCK_MONOTONIC`` on Linux: one clock for every
process of the machine, not per process; on macOS and Windows the monotonic clock is system-wide
too). :meth:`ProcessGenerator.start` checks it: the child's reading in answer to each of a few
pings must lie between the parent's readings before the ping and after the answer; otherwise
:class:`~vauban_trace._exceptions.LoadGeneratorError` says the clocks are not shared.

**Channel** (measured, docs/benchmarks.md "Open-loop generator: thread vs process"): a socket pair
and a pipe deliver a 24-byte record in tens of microseconds to a receiver blocked in a read
(which holds no interpreter lock while it waits); shared memory would need the receiver to poll,
holding the lock the service needs. A socket pair carries both directions (commands: run, stop,
ping, quit) in one descriptor.

**Failures never hang.** The receiver waits with a timeout and checks the child: a child that
exits (crash, kill) or closes its end raises ``LoadGeneratorError`` with its exit code and the
end of its stderr; a child alive but silent for ``silence_s`` past the end of its schedule is
killed and reported the same way, as is one that does not take a command (a schedule is 8 bytes an
arrival, more than the socket buffer holds past ~27,000) within ``startup_s``; an arrival out of
schedule order or range, or an END whose count differs from the arrivals received, is a corrupt
record and raises the same error. :meth:`ProcessGenerator.close` (also on ``KeyboardInterrupt``,
through ``with`` or ``run_open_loop``'s ``finally``) sends QUIT, closes the socket (the child
exits at end of file, or when it sees it was re-parented: this process died) and kills a child that has not exited within
two seconds. The child ignores SIGINT: Ctrl-C stops the sweep here, which then stops the child.
"""

from __future__ import annotations

import os
import select
import socket
import struct
import subprocess
import sys
import tempfile
import time
import weakref
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import IO

from vauban_trace._exceptions import LoadGeneratorError

REC = struct.Struct("<qqq")
RUN, STOP, PING, QUIT = 1, 2, 3, 4
HELLO, CLOCK, START, END, STOPPED = -1, -2, -3, -4, -5
#: the child script (standard library only); tests point it elsewhere to make a child misbehave
CHILD_SCRIPT = Path(__file__).with_name("_genchild.py")
_LIVE: weakref.WeakSet[ProcessGenerator] = weakref.WeakSet()


@dataclass(frozen=True)
class Start:
    """A run began: the schedule's origin on the shared monotonic clock (s)."""

    base: float


@dataclass(frozen=True)
class Arrival:
    """One arrival: its index in the schedule, when it was due, sent (child) and received (here), in s."""

    seq: int
    scheduled: float
    sent: float
    received: float


@dataclass(frozen=True)
class RunEnd:
    """The run's end: arrivals the child sent, those it did not send (stopped), its longest blocked write (s)."""

    sent: int
    not_sent: int
    max_block_s: float


def live_generators() -> list[ProcessGenerator]:
    """The generators started and not yet closed in this process (to find a child's pid)."""
    return list(_LIVE)


class ProcessGenerator:
    """One child process for a whole sweep; :meth:`run` once per run (see the module docstring)."""

    def __init__(self, *, startup_s: float = 10.0, silence_s: float = 10.0) -> None:
        self.startup_s = startup_s
        self.silence_s = silence_s
        self.pid: int | None = None
        self._proc: subprocess.Popen[bytes] | None = None
        self._sock: socket.socket | None = None
        self._stderr: IO[bytes] | None = None
        self._buf = bytearray()
        # records of a run read from the socket but not yet handed out by run() (last first: popped from
        # the end): a receiver that stops between two of one read leaves them here, and stop() counts
        # them as not handed over
        self._held: list[tuple[int, int, int]] = []
        self.clock_checks: list[tuple[int, int, int]] = []  # (before, child, after) in ns

    # -- lifecycle --------------------------------------------------------------------------
    def start(self) -> ProcessGenerator:
        if sys.platform == "win32":  # no descriptor passing to a child (pass_fds): declared, not emulated
            raise LoadGeneratorError("the process arrival generator is not supported on Windows "
                                     "(use generator='thread')")
        mine, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
        # a send (a large schedule: 8 bytes an arrival) waits at most startup_s for a child that stopped
        # reading; reads are select()ed first, so the timeout never cuts one short
        mine.settimeout(self.startup_s)
        self._sock = mine
        self._stderr = tempfile.TemporaryFile()  # noqa: SIM115  (closed in close())
        try:
            self._proc = subprocess.Popen(
                [sys.executable, "-I", "-S", str(CHILD_SCRIPT), str(theirs.fileno()), str(os.getpid())],
                pass_fds=(theirs.fileno(),), stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                stderr=self._stderr)
        except OSError as exc:
            theirs.close()
            self.close()
            raise LoadGeneratorError(f"could not start the arrival generator process ({exc})") from exc
        theirs.close()
        _LIVE.add(self)
        self.pid = self._proc.pid
        try:
            _, _, flags = self._expect((HELLO,), time.monotonic() + self.startup_s, "its hello")
            if flags & 1:
                raise LoadGeneratorError("the arrival generator process imported torch (it must not)")
            self._check_clock()
        except BaseException:
            self.close()
            raise
        return self

    def __enter__(self) -> ProcessGenerator:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        """Stop the child (QUIT, end of file, then kill after 2 s) and release everything (idempotent)."""
        sock, proc, self._sock, self._proc = self._sock, self._proc, None, None
        if sock is not None:
            try:  # never waits: a child that stopped reading gets end of file, then the kill
                sock.setblocking(False)
                sock.send(REC.pack(QUIT, 0, 0))
            except OSError:
                pass
            sock.close()
        if proc is not None:
            try:
                proc.wait(timeout=2.0)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
        if self._stderr is not None:
            self._stderr.close()
            self._stderr = None
        _LIVE.discard(self)

    @property
    def returncode(self) -> int | None:
        return None if self._proc is None else self._proc.poll()

    # -- one run ----------------------------------------------------------------------------
    def run(self, offsets: Sequence[float], *, lead_s: float = 0.005) -> Iterator[Start | Arrival | RunEnd]:
        """Send the schedule, then yield Start, every Arrival as it is received, and RunEnd.
        Closing the iterator early (``stop()`` first) leaves the child ready for the next run."""
        sock = self._require()
        n = len(offsets)
        self._held = []
        self._send(sock, REC.pack(RUN, n, round(lead_s * 1e9)) + struct.pack(f"<{n}d", *offsets), "a run")
        span = offsets[-1] if n else 0.0
        deadline = time.monotonic() + self.startup_s
        _, base_ns, _ = self._expect((START,), deadline, "the start of a run")
        base = base_ns / 1e9
        yield Start(base)
        expected = 0  # the child sends the arrivals in schedule order, each once
        while True:
            recs, received = self._read(max(time.monotonic(), base + span) + self.silence_s, "arrivals")
            self._held = recs[::-1]
            while self._held:
                kind, a, b = self._held.pop()
                if kind >= 0:
                    if kind != expected or kind >= n:
                        raise self._failure(f"it sent arrival {kind} where the schedule expected arrival "
                                            f"{expected} of {n} (a corrupt or foreign record)")
                    expected += 1
                    yield Arrival(kind, a / 1e9, b / 1e9, received)
                elif kind == END:
                    if a != expected:
                        raise self._failure(f"it sent the end of a run that sent {a} arrivals, but {expected} were "
                                            "received (a corrupt or foreign record)")
                    yield RunEnd(a, 0, b / 1e9)
                    return
                else:
                    raise self._failure(f"an unexpected record ({kind}) during a run")

    def stop(self) -> RunEnd:
        """Abort the run in progress; the arrivals still in the channel are discarded (counted as not sent)."""
        sock = self._require()
        self._send(sock, REC.pack(STOP, 0, 0), "a stop")
        received = 0
        end: RunEnd | None = None
        deadline = time.monotonic() + self.silence_s
        held, self._held = self._held[::-1], []  # read with the last arrival handed out, never handed out
        while True:
            recs = held or self._read(deadline, "the answer to a stop")[0]
            held = []
            for kind, a, b in recs:
                if kind >= 0:
                    received += 1
                elif kind == END:  # the run ended before the stop reached it; STOPPED (0, 0) follows
                    end = RunEnd(a - received, received, b / 1e9)
                elif kind == STOPPED:
                    if end is None:
                        end = RunEnd(a - received, b + received, 0.0)
                    return end

    # -- plumbing ---------------------------------------------------------------------------
    def _require(self) -> socket.socket:
        if self._sock is None:
            raise LoadGeneratorError("the arrival generator process is not running (start() it, or it was closed)")
        return self._sock

    def _send(self, sock: socket.socket, data: bytes, what: str) -> None:
        try:
            sock.sendall(data)
        except TimeoutError as exc:  # alive but not reading: the same as silence
            self._kill()
            raise self._failure(f"it did not take {what} within {self.startup_s:g} s (not reading; killed)") from exc
        except OSError as exc:  # the child is gone (broken pipe, reset)
            self._wait_exit()
            raise self._failure(f"it could not be sent {what} ({exc})") from exc

    def _check_clock(self) -> None:
        for token in range(3):
            before = time.monotonic_ns()
            self._send(self._require(), REC.pack(PING, token, 0), "a clock check")
            _, got, child = self._expect((CLOCK,), time.monotonic() + self.startup_s, "a clock reading")
            after = time.monotonic_ns()
            self.clock_checks.append((before, child, after))
            if got != token or not before <= child <= after:
                raise LoadGeneratorError(
                    f"the arrival generator process's monotonic clock is not this process's: it read {child} ns "
                    f"between {before} and {after} ns here (the lateness and hand-off would be meaningless)")

    def _expect(self, kinds: tuple[int, ...], deadline: float, what: str) -> tuple[int, int, int]:
        recs, _ = self._read(deadline, what, limit=1)
        rec = recs[0]
        if rec[0] not in kinds:
            raise self._failure(f"an unexpected record ({rec[0]}) while waiting for {what}")
        return rec

    def _read(self, deadline: float, what: str, limit: int | None = None) -> tuple[list[tuple[int, int, int]], float]:
        """Records available (at least one), and the time they were received; raises on exit or silence."""
        sock = self._require()
        while len(self._buf) < REC.size:
            wait = deadline - time.monotonic()
            if wait <= 0:
                self._kill()
                raise self._failure(f"no answer while waiting for {what} (silent past its deadline; killed)")
            ready, _, _ = select.select([sock], [], [], min(wait, 0.5))
            if not ready:
                if self.returncode is not None:
                    raise self._failure(f"it exited while the sweep waited for {what}")
                continue
            try:
                chunk = sock.recv(1 << 16)
            except OSError:  # reset: the child exited with commands unread
                chunk = b""
            if not chunk:
                self._wait_exit()
                raise self._failure(f"it closed its end while the sweep waited for {what}")
            self._buf += chunk
        received = time.monotonic()
        whole = len(self._buf) // REC.size
        take = whole if limit is None else min(whole, limit)
        recs = [REC.unpack_from(self._buf, i * REC.size) for i in range(take)]
        del self._buf[:take * REC.size]
        return recs, received

    def _kill(self) -> None:
        proc = self._proc
        if proc is not None and proc.poll() is None:
            proc.kill()
            proc.wait()

    def _wait_exit(self) -> None:
        if self._proc is not None:
            try:
                self._proc.wait(timeout=1.0)
            except subprocess.TimeoutExpired:
                pass

    def _failure(self, what: str) -> LoadGeneratorError:
        code = self.returncode
        err = b""
        if self._stderr is not None:
            self._stderr.flush()
            self._stderr.seek(0)
            err = self._stderr.read()[-2000:]
        status = "still running" if code is None else f"exit code {code}"
        tail = err.decode("utf-8", "replace").strip()
        return LoadGeneratorError(f"the arrival generator process (pid {self.pid}, {status}) failed: {what}"
                                  + (f"; its stderr ends: {tail}" if tail else ""))


def drive(gen: ProcessGenerator, offsets: Sequence[float], on_start: Callable[[float], None],
          on_arrival: Callable[[int, float, float, float], None], stopped: Callable[[], bool]) -> RunEnd:
    """The receiver of one run: ``on_start(base)``, then ``on_arrival(seq, scheduled, sent, received)`` for
    every arrival until the schedule ends or ``stopped()`` (checked after each one: the child is stopped,
    what it still had is counted in ``RunEnd.not_sent``)."""
    for rec in gen.run(offsets):
        if isinstance(rec, Start):
            on_start(rec.base)
        elif isinstance(rec, Arrival):
            on_arrival(rec.seq, rec.scheduled, rec.sent, rec.received)
            if stopped():
                return gen.stop()
        else:
            return rec
    raise LoadGeneratorError("the arrival generator's run ended without its end record")  # pragma: no cover


__all__ = ["CHILD_SCRIPT", "Arrival", "ProcessGenerator", "RunEnd", "Start", "drive", "live_generators"]
