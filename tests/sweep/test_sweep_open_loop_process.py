"""The out-of-process arrival generator (``OpenLoopSpec(generator="process")``): the shared clock, the
labels and verdicts (the generator's lateness vs the hand-off), a GIL-holding service, a child that
crashes, exits early or goes silent (a clear error, never a hang), SIGINT and close stopping it."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path
from typing import Any

import pytest
from sweep_testlib import fake_child

from vauban_trace import semconv
from vauban_trace._exceptions import ConfigurationError, LoadGeneratorError
from vauban_trace.cli import main
from vauban_trace.executors.torch.tiny import cached_tiny_model
from vauban_trace.sources import open_source
from vauban_trace.sweep import (
    OPEN_LOOP_KEY,
    OpenLoopSpec,
    ServingLoop,
    _procgen,
    arrival_schedule,
    profile_traces,
    run_open_loop,
    traced_call,
)
from vauban_trace.sweep._procgen import Arrival, ProcessGenerator, RunEnd, Start

SENT, RECEIVED = semconv.OPEN_LOOP_SENT_UNIX_NANO, semconv.OPEN_LOOP_RECEIVED_UNIX_NANO
pytestmark = pytest.mark.skipif(sys.platform == "win32", reason="the generator's channel is an AF_UNIX socket pair")


@pytest.fixture(scope="module")
def sleeping(session: Any) -> Any:
    """Poisson arrivals at 40/s from a child process against one worker with a 5 ms (GIL-free) service."""
    def serve(_: None) -> None:
        time.sleep(0.005)

    with ServingLoop(serve=serve, model="fake-service", workers=1) as loop:
        spec = OpenLoopSpec(rates=(40,), duration_s=1.0, warmup_s=0.2, seed=3, tolerance=0.3, generator="process",
                            sweep_id="open-proc")
        return run_open_loop(lambda seq: loop.call(None), spec, session=session)


def _no_children_left() -> bool:
    """No arrival generator process of this test process is alive (zombies included: they were waited for)."""
    return not _procgen.live_generators()


def test_the_monotonic_clock_is_shared_by_both_processes() -> None:
    if sys.platform.startswith("linux"):
        info = time.get_clock_info("monotonic")
        assert "CLOCK_MONOTONIC" in info.implementation and not info.adjustable
    with ProcessGenerator() as gen:
        assert len(gen.clock_checks) == 3
        for before, child, after in gen.clock_checks:  # the child's reading lies between two of ours
            assert before <= child <= after
        records = list(gen.run([0.0, 0.001, 0.002]))
    assert _no_children_left() and gen.returncode is None  # closed: nothing left to poll
    assert isinstance(records[0], Start) and isinstance(records[-1], RunEnd) and records[-1].sent == 3
    arrivals = [r for r in records if isinstance(r, Arrival)]
    assert [a.seq for a in arrivals] == [0, 1, 2]
    for a in arrivals:  # causality across the processes: scheduled <= sent (child) <= received (here)
        assert a.scheduled <= a.sent <= a.received


def test_the_child_runs_without_torch_or_site_packages() -> None:
    import torch  # noqa: F401  (loaded here: the child must not inherit or import it)

    with ProcessGenerator() as gen:
        assert gen.pid is not None
        cmdline = Path(f"/proc/{gen.pid}/cmdline").read_bytes().split(b"\0") if sys.platform.startswith(
            "linux") else []
        maps = Path(f"/proc/{gen.pid}/maps").read_text() if sys.platform.startswith("linux") else ""
    if cmdline:
        assert b"-S" in cmdline and b"-I" in cmdline and cmdline[3].endswith(b"_genchild.py")
        assert "torch" not in maps and "numpy" not in maps


def test_a_receiver_that_stops_reading_makes_the_generator_late_visibly() -> None:
    """The serving side cannot keep up (here: does not read for 0.5 s): once the channel is full the
    child's writes block, and the later arrivals' send times (its lateness) and its longest write say so."""
    with ProcessGenerator() as gen:
        records = gen.run([i / 10_000 for i in range(2_000)])
        assert isinstance(next(records), Start)
        time.sleep(0.5)
        rest = list(records)
    end = rest[-1]
    assert isinstance(end, RunEnd) and end.sent == 2_000 and end.max_block_s > 0.2
    lateness = [r.sent - r.scheduled for r in rest if isinstance(r, Arrival)]
    assert max(lateness) > 0.2


def test_process_arrivals_are_labelled_and_judged_on_the_generators_clock(sleeping: Any) -> None:
    (point,) = sleeping.profile.open_loop.points
    assert point.lateness_from == "generator" and point.handoff is not None and point.handoff.n == point.traces
    assert point.sustained, point.reasons
    (run,) = sleeping.runs
    assert run.generator == "process" and run.handoff_p95_s is not None and run.generator_max_block_s is not None
    assert run.not_sent == 0 and run.sent == run.scheduled == point.traces
    for rec in sleeping.requests:
        assert rec.generator_lateness_s is not None and rec.generator_lateness_s >= 0
        assert rec.handoff_s is not None and rec.handoff_s >= 0
    for trace in sleeping.traces:  # the labels travel in the trace
        labels = trace.metadata[OPEN_LOOP_KEY]
        assert labels["scheduled_unix_nano"] <= labels[SENT] <= labels[RECEIVED]
        assert trace.root is not None and labels[RECEIVED] <= trace.root.start_unix_nano + 1_000_000  # 1 ms: clocks
    assert "hand-off p95" in "\n".join(sleeping.profile.open_loop.render_markdown())
    d = point.to_dict()
    assert d["lateness_from"] == "generator" and d["handoff_s"]["n"] == point.traces
    assert sleeping.to_dict()["generator"] == "process"


def test_the_child_keeps_the_same_seeded_schedule(sleeping: Any) -> None:
    offsets = arrival_schedule(40, 1.2, seed=[3, 0, 0])
    for trace in sleeping.traces:
        labels = trace.metadata[OPEN_LOOP_KEY]
        origin = labels["window_start_unix_nano"] - 200_000_000  # the window starts after the 0.2 s warm-up
        assert abs(labels["scheduled_unix_nano"] - origin - offsets[labels["seq"]] * 1e9) < 1_000


def test_the_profile_read_back_from_the_store_alone_says_the_same(sleeping: Any, store_dir: Path) -> None:
    with open_source(f"store:{store_dir}") as src:
        traces = [src.get_trace(t.id) for t in sleeping.traces]
    summary = profile_traces(traces).open_loop  # no driver mapping: the traces' own labels
    assert summary is not None
    (again,) = summary.points
    (point,) = sleeping.profile.open_loop.points
    assert again.lateness_from == "generator" and again.handoff is not None
    assert again.lateness.p95 == pytest.approx(point.lateness.p95, abs=1e-6)
    assert again.handoff.p95 == pytest.approx(point.handoff.p95, abs=1e-6)


def _busy(_: object) -> None:
    """A service that holds the interpreter lock: 8 ms of pure Python."""
    end = time.perf_counter() + 0.008
    x = 0
    while time.perf_counter() < end:
        x += 1


def test_a_gil_holding_service_delays_the_hand_off_not_the_generator(session: Any) -> None:
    """A 50 ms switch interval and a pure-Python service run in the senders' threads (several at once):
    the thread generator wakes up tens of ms late (the run is late); the child keeps its schedule and
    the delay shows in the hand-off to the serving process instead."""
    late: dict[str, Any] = {}
    call = traced_call(_busy, model="busy")
    for generator in ("thread", "process"):
        spec = OpenLoopSpec(rates=(200,), duration_s=0.4, arrivals="constant", switch_interval_s=0.05,
                            generator=generator)
        late[generator] = run_open_loop(lambda seq: call(None), spec, session=session).profile.open_loop
    (thread,) = late["thread"].points
    (proc,) = late["process"].points
    assert thread.lateness_from == "root" and thread.handoff is None
    assert thread.late and any("the generator fell behind" in r for r in thread.reasons)
    assert proc.lateness_from == "generator" and proc.handoff is not None and proc.handoff.p95 is not None
    assert proc.lateness.p95 is not None and thread.lateness.p95 is not None
    assert proc.handoff.p95 > proc.lateness.p95  # the serving process took the arrivals in late
    assert proc.lateness.p95 < thread.lateness.p95
    if proc.late:  # a loaded machine can starve the child too: then it says so, on its own clock
        assert any("generator process fell behind" in r for r in proc.reasons)


def test_a_child_killed_mid_run_raises_a_clear_error_and_nothing_hangs(session: Any) -> None:
    def request(seq: int) -> None:
        if seq == 5:
            (gen,) = _procgen.live_generators()
            assert gen.pid is not None
            os.kill(gen.pid, signal.SIGKILL)

    spec = OpenLoopSpec(rates=(50,), duration_s=2.0, arrivals="constant", generator="process")
    t0 = time.monotonic()
    with pytest.raises(LoadGeneratorError, match=r"exit code -9"):
        run_open_loop(request, spec, session=session)
    assert time.monotonic() - t0 < 10 and _no_children_left()


def test_a_child_that_exits_early_says_so_with_its_stderr(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                           session: Any) -> None:
    monkeypatch.setattr(_procgen, "CHILD_SCRIPT", fake_child(tmp_path, """\
        sock.recv(24, socket.MSG_WAITALL)
        sys.stderr.write("generator gave up: disk on fire")
        sys.exit(3)
        """))
    spec = OpenLoopSpec(rates=(20,), duration_s=0.5, generator="process")
    with pytest.raises(LoadGeneratorError, match=r"exit code 3.*disk on fire"):
        run_open_loop(lambda seq: None, spec, session=session)
    assert _no_children_left()


def test_a_child_that_cannot_start_fails_before_any_load(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    script = tmp_path / "broken.py"
    script.write_text("raise SystemExit('no generator today')\n")
    monkeypatch.setattr(_procgen, "CHILD_SCRIPT", script)
    with pytest.raises(LoadGeneratorError, match=r"exit code 1.*no generator today"):
        ProcessGenerator(startup_s=5).start()
    assert _no_children_left()


def test_a_silent_child_is_killed_and_reported(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(_procgen, "CHILD_SCRIPT", fake_child(tmp_path, """\
        time.sleep(600)
        """))
    t0 = time.monotonic()
    with ProcessGenerator(startup_s=1.0, silence_s=1.0) as gen, pytest.raises(
            LoadGeneratorError, match=r"no answer while waiting for the start of a run.*killed"):
        list(gen.run([0.0, 0.01]))
    assert time.monotonic() - t0 < 8 and _no_children_left()


def test_a_child_whose_clock_is_not_ours_is_refused(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    script = fake_child(tmp_path, "")
    script.write_text(script.read_text().replace("time.monotonic_ns()", "time.monotonic_ns() + 10**12"))
    monkeypatch.setattr(_procgen, "CHILD_SCRIPT", script)
    with pytest.raises(LoadGeneratorError, match="clock is not this process's"):
        ProcessGenerator(startup_s=5).start()
    assert _no_children_left()


def test_the_first_error_stops_the_child_and_counts_what_it_did_not_send(session: Any) -> None:
    boom = RuntimeError("service down")

    def request(seq: int) -> None:
        if seq >= 3:
            raise boom

    spec = OpenLoopSpec(rates=(100,), duration_s=3.0, arrivals="constant", generator="process")
    t0 = time.monotonic()
    with pytest.raises(RuntimeError) as info:
        run_open_loop(request, spec, session=session)
    assert info.value is boom and time.monotonic() - t0 < 2.5  # stopped, not run to the end of its 3 s
    assert _no_children_left()


def test_sigint_stops_the_sweep_and_its_child(tmp_path: Path) -> None:
    """Ctrl-C (SIGINT to the process group): the child ignores it, the sweep's process stops it and exits."""
    # the handler an interactive Python has: a test run started in the background by a shell
    # without job control inherits SIGINT ignored, and Python then installs none (a 20 s hang)
    code = textwrap.dedent(f"""\
        import signal, sys, time
        signal.signal(signal.SIGINT, signal.default_int_handler)
        import vauban_trace as vt
        from vauban_trace.sweep import OpenLoopSpec, run_open_loop, traced_call
        from vauban_trace.sweep import _procgen
        session = vt.configure(store_dir={str(tmp_path / 'store')!r})
        def request(seq):
            if seq == 2:
                print("child", _procgen.live_generators()[0].pid, flush=True)
            traced_call(lambda _: None, model="m")(None)
        try:
            run_open_loop(request, OpenLoopSpec(rates=(20,), duration_s=60.0, generator="process"), session=session)
        except KeyboardInterrupt:
            print("interrupted", flush=True)
            sys.exit(130)
        """)
    proc = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, text=True, start_new_session=True)
    try:
        assert proc.stdout is not None
        line = proc.stdout.readline()
        assert line.startswith("child "), line
        child = int(line.split()[1])
        os.killpg(proc.pid, signal.SIGINT)
        out, _ = proc.communicate(timeout=20)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
    assert proc.returncode == 130 and "interrupted" in out
    with pytest.raises(ProcessLookupError):  # the child is gone (and was waited for: no zombie either)
        os.kill(child, 0)


def test_the_cli_runs_an_arrival_rate_sweep_from_a_generator_process(tmp_path: Path,
                                                                   capsys: pytest.CaptureFixture[str]) -> None:
    model = cached_tiny_model("llama", hidden_size=64, num_layers=2)
    store = tmp_path / "store"
    proc = subprocess.run(
        [sys.executable, "-c", "import sys; from vauban_trace.cli import main; sys.exit(main())", "sweep",
         "--model", str(model), "--store", str(store), "--axis", "arrival_rate", "--values", "20", "--window", "0.5",
         "--warmup-s", "0.1", "--repeats", "1", "--arrivals", "constant", "--generator", "process",
         "--sweep-id", "cli-proc"],
        capture_output=True, text=True, timeout=300, env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert proc.returncode == 0, proc.stderr
    assert "arrivals from a generator process" in proc.stdout and "hand-off p95" in proc.stdout
    assert main(["sweep", "--profile", "cli-proc", "--source", f"store:{store}", "--json"]) == 0
    (point,) = json.loads(capsys.readouterr().out)["open_loop"]["points"]
    assert point["lateness_from"] == "generator" and point["handoff_s"]["n"] == point["traces"] == 10


def test_the_generator_option_is_checked() -> None:
    with pytest.raises(ConfigurationError, match="generator must be one of thread, process"):
        OpenLoopSpec(rates=(10,), duration_s=1.0, generator="fork")


def test_the_cli_flag_belongs_to_the_arrival_rate_axis(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    assert main(["sweep", "--axis", "concurrency", "--values", "1", "--generator", "process",
                 "--store", str(tmp_path / "s")]) == 2
    err = capsys.readouterr().err.strip()
    assert "--generator apply to --axis arrival_rate only" in err and len(err.splitlines()) == 1
