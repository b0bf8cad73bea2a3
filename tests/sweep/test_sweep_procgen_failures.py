"""The process arrival generator's failure paths (``_procgen`` / ``_genchild``): a child that stops reading
while a large schedule is sent, a child that writes records out of order or out of range, a parent killed
while another process still holds its end of the socket. Each must end in a clear
:class:`LoadGeneratorError` (or the child's own exit), never a hang or an orphan."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest
from sweep_testlib import fake_child

from vauban_trace._exceptions import LoadGeneratorError
from vauban_trace.sweep import _procgen
from vauban_trace.sweep._procgen import Arrival, ProcessGenerator, RunEnd, Start

pytestmark = pytest.mark.skipif(sys.platform == "win32", reason="the generator's channel is an AF_UNIX socket pair")


def test_a_child_that_stops_reading_cannot_hang_the_send_of_a_large_schedule(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """60,000 arrivals (480 kB of offsets) do not fit the socket's buffer: the send itself must time out."""
    monkeypatch.setattr(_procgen, "CHILD_SCRIPT", fake_child(tmp_path, "time.sleep(600)\n"))
    t0 = time.monotonic()
    with ProcessGenerator(startup_s=1.0, silence_s=1.0) as gen, pytest.raises(
            LoadGeneratorError, match=r"did not take a run within 1(\.0)? s.*killed"):
        list(gen.run([i * 1e-4 for i in range(60_000)]))
    assert time.monotonic() - t0 < 8 and not _procgen.live_generators()


@pytest.mark.parametrize(("records", "why"), [
    ("[10**6]", r"arrival 1000000 .*expected arrival 0 of 3"),
    ("[0, 0]", r"arrival 0 .*expected arrival 1 of 3"),
    ("[1]", r"arrival 1 .*expected arrival 0 of 3"),
    ("[0, 1, 2, -4]", r"end of a run that sent 5 arrivals.*3 were received"),
])
def test_records_out_of_order_or_range_are_a_clear_error(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                       records: str, why: str) -> None:
    monkeypatch.setattr(_procgen, "CHILD_SCRIPT", fake_child(tmp_path, f"""\
        cmd, n, lead = REC.unpack(sock.recv(24, socket.MSG_WAITALL))
        sock.recv(8 * n, socket.MSG_WAITALL)
        now = time.monotonic_ns()
        out = REC.pack(-3, now, now)
        for seq in {records}:
            out += REC.pack(seq, now, now) if seq >= 0 else REC.pack(seq, 5, 0)
        sock.sendall(out)
        time.sleep(600)
        """))
    seen: list[object] = []
    with ProcessGenerator(startup_s=5.0, silence_s=5.0) as gen, pytest.raises(LoadGeneratorError, match=why):
        for rec in gen.run([0.0, 0.001, 0.002]):
            seen.append(rec)
    assert all(isinstance(r, (Start, Arrival)) for r in seen)
    assert not any(isinstance(r, RunEnd) for r in seen) and not _procgen.live_generators()


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads /proc")
def test_the_child_exits_when_its_parent_dies_even_if_a_forked_process_keeps_the_socket() -> None:
    """A serving process that forked (a multiprocessing worker) shares its end of the socket pair: the
    child never sees end of file when the serving process is killed, and must notice the death itself."""
    code = textwrap.dedent("""\
        import multiprocessing, time
        from vauban_trace.sweep._procgen import ProcessGenerator
        gen = ProcessGenerator().start()
        worker = multiprocessing.get_context("fork").Process(target=time.sleep, args=(60,), daemon=True)
        worker.start()
        print(gen.pid, worker.pid, flush=True)
        for _ in gen.run([i * 0.05 for i in range(2000)]):
            pass
        """)
    proc = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, text=True)
    assert proc.stdout is not None
    child, worker = map(int, proc.stdout.readline().split())
    try:
        time.sleep(0.3)
        proc.kill()
        proc.wait()
        deadline = time.monotonic() + 5.0
        state = "?"
        while time.monotonic() < deadline:
            try:
                state = Path(f"/proc/{child}/stat").read_text().split()[2]
            except FileNotFoundError:
                state = "gone"
            if state in ("Z", "gone"):  # exited (a zombie until its new parent reaps it)
                break
            time.sleep(0.05)
        assert state in ("Z", "gone"), f"the generator child outlived its parent (state {state})"
    finally:
        for pid in (child, worker):
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass


def test_a_stop_counts_the_arrivals_read_in_the_same_batch_as_not_handed_over(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Five arrivals reach the receiver in one read; it stops after the first: the other four were
    read but never handed over, so the run's end must count one sent and nine not sent (of ten)."""
    monkeypatch.setattr(_procgen, "CHILD_SCRIPT", fake_child(tmp_path, """\
        cmd, n, lead = REC.unpack(sock.recv(24, socket.MSG_WAITALL))
        sock.recv(8 * n, socket.MSG_WAITALL)
        now = time.monotonic_ns()
        sock.sendall(REC.pack(-3, now, now) + b"".join(REC.pack(seq, now, now) for seq in range(5)))
        cmd, _, _ = REC.unpack(sock.recv(24, socket.MSG_WAITALL))
        assert cmd == 2, cmd  # STOP
        sock.sendall(REC.pack(-5, 5, n - 5))  # STOPPED after 5 sent
        time.sleep(600)
        """))
    handed: list[int] = []
    with ProcessGenerator(startup_s=5.0, silence_s=5.0) as gen:
        end = _procgen.drive(gen, [0.0] * 5 + [5.0] * 5, lambda base: None,
                             lambda seq, *_: handed.append(seq), lambda: True)
    assert handed == [0]
    assert (end.sent, end.not_sent) == (1, 9)
