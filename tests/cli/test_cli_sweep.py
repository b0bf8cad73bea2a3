"""``vauban-trace sweep``: a real sweep over a tiny offline model through the CLI, and one-line errors."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from vauban_trace.cli import main
from vauban_trace.contract import StageProfile, Trace
from vauban_trace.executors.torch.tiny import cached_tiny_model
from vauban_trace.sources import open_source


@pytest.fixture(scope="module")
def model_dir() -> Path:
    return cached_tiny_model("llama", hidden_size=64, num_layers=2)


def _profile(trace: Trace, stage: str) -> StageProfile:
    profile = trace.spans_for_stage(stage)[0].profile
    assert profile is not None
    return profile


def _sweep(model_dir: Path, store: Path, *extra: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-c", "import sys; from vauban_trace.cli import main; sys.exit(main())",
         "sweep", "--model", str(model_dir), "--store", str(store), "--repeats", "2", "--warmup", "1", *extra],
        capture_output=True, text=True, timeout=300,
        # one torch thread: with two on a busy 2-core machine one forward pass took 190-460 ms instead of 3-4 ms
        env={**os.environ, "OMP_NUM_THREADS": "1"},
    )


@pytest.mark.parametrize(("axis", "values"), [("prompt_tokens", "4,8,16"), ("batch_size", "1,2"),
                                              ("new_tokens", "1,3")])
def test_sweep_json_groups_the_stored_traces(model_dir: Path, tmp_path: Path, axis: str, values: str) -> None:
    store = tmp_path / "store"
    proc = _sweep(model_dir, store, "--axis", axis, "--values", values, "--sweep-id", f"cli-{axis}", "--json")
    assert proc.returncode == 0, proc.stderr
    result = json.loads(proc.stdout)
    wanted = [int(v) for v in values.split(",")]
    assert result["sweep_id"] == f"cli-{axis}" and result["values"] == wanted
    profile = result["profile"]
    assert profile["axis"] == axis and profile["values"] == wanted and profile["coverage_stable"]
    ids = [i for entry in profile["trace_ids"] for i in entry["trace_ids"]]
    assert len(ids) == 2 * len(wanted)
    with open_source(f"store:{store}") as src:  # the same traces, read back from the store
        traces = [src.get_trace(i) for i in ids]
    assert {t.metadata["sweep"]["id"] for t in traces} == {f"cli-{axis}"}
    # the loaded model's objects were frozen out of the garbage collector's reach, and it says so
    frozen = [line for line in proc.stderr.splitlines() if line.startswith("sweep: gc.freeze() after loading")]
    assert len(frozen) == 1 and int(frozen[0].split("model (")[1].split()[0]) > 10_000
    if axis == "prompt_tokens":
        tokens = {t.metadata["sweep"]["axis_value"]: _profile(t, "tokenize").token_count for t in traces}
        assert tokens == {4: 4, 8: 8, 16: 16}  # the axis value is the real prompt length
    if axis == "new_tokens":
        steps = {t.metadata["sweep"]["axis_value"]: _profile(t, "decode").metadata["decode.steps"] for t in traces}
        assert steps == {1: 1, 3: 3}
    stages = {p["stage"] for p in profile["points"]}
    assert {"request", "prefill"} <= stages
    assert all(f["status"] == "not_applicable" for f in profile["fits"].values())  # too few values for USL


def test_sweep_prints_a_table_and_profiles_it_again_from_the_store(model_dir: Path, tmp_path: Path,
                                                                   capsys: pytest.CaptureFixture[str]) -> None:
    proc = _sweep(model_dir, tmp_path / "s", "--axis", "prompt_tokens", "--values", "4,8", "--sweep-id", "again")
    assert proc.returncode == 0, proc.stderr
    assert "| prefill |" in proc.stdout and "prompt_tokens=8" in proc.stdout
    # read back from the store alone (what a collector-fed store or Tempo would give)
    assert main(["sweep", "--profile", "again", "--source", f"store:{tmp_path / 's'}", "--json"]) == 0
    profile = json.loads(capsys.readouterr().out)
    assert profile["sweep_id"] == "again" and profile["values"] == [4, 8]
    assert sum(len(e["trace_ids"]) for e in profile["trace_ids"]) == 4  # the warm-up traces are not in it
    assert main(["sweep", "--profile", "nope", "--source", f"store:{tmp_path / 's'}"]) == 2
    assert "no trace of sweep 'nope'" in capsys.readouterr().err


@pytest.mark.parametrize(("argv", "message"), [
    (["sweep", "--axis", "prompt_tokens", "--values", "4,x"], "--values: 'x' is not a positive integer"),
    (["sweep", "--axis", "prompt_tokens", "--values", "4,0"], "--values: '0' is not a positive integer"),
    (["sweep", "--axis", "prompt_tokens", "--values", "4,4"], "values repeat"),
    (["sweep", "--axis", "prompt_tokens", "--values", "4", "--repeats", "0"], "--repeats >= 1"),
    (["sweep", "--axis", "prompt_tokens", "--values", "4", "--model", "/nonexistent"], "/nonexistent"),
    (["sweep", "--values", "4"], "give --axis and --values"),
    (["sweep", "--profile", "x", "--since", "soon"], "--since: 'soon' is not a duration"),
])
def test_bad_flags_exit_2_with_one_line(argv: list[str], message: str, capsys: pytest.CaptureFixture[str],
                                        tmp_path: Path) -> None:
    assert main([*argv, "--store", str(tmp_path / "s")]) == 2
    err = capsys.readouterr().err.strip()
    assert message in err and len(err.splitlines()) == 1


def test_concurrency_sweep_runs_clients_against_a_serving_loop(model_dir: Path, tmp_path: Path) -> None:
    store = tmp_path / "store"
    proc = _sweep(model_dir, store, "--axis", "concurrency", "--values", "1,2", "--requests-per-client", "2",
                  "--max-batch", "2", "--max-wait-ms", "1", "--sweep-id", "cli-conc", "--json")
    assert proc.returncode == 0, proc.stderr
    result = json.loads(proc.stdout)
    assert result["axis"] == "concurrency" and result["values"] == [1, 2] and result["repeats"] == 2
    assert len(result["requests"]) == (1 + 2) * 2 * 2 and len(result["runs"]) == 4
    profile = result["profile"]
    assert profile["stages"] == ["request", "queue", "batch"] and len(profile["throughput"]) == 4
    assert profile["throughput_method"] in ("window", "littles_law")
    with open_source(f"store:{store}") as src:
        trace = src.get_trace(result["requests"][0]["trace_id"])
    assert trace.metadata["sweep"]["axis"] == "concurrency" and trace.metadata["closed_loop"]["client"] == 0
    (batch,) = trace.spans_for_stage("batch")
    assert batch.metadata["served_trace_ids"]  # the executor's trace of the batch


@pytest.mark.parametrize(("argv", "message"), [
    (["sweep", "--axis", "prompt_tokens", "--values", "4", "--window", "1"],
     "apply to --axis concurrency or arrival_rate only"),
    (["sweep", "--axis", "concurrency", "--values", "1", "--window", "1", "--requests-per-client", "2"],
     "not both"),
    (["sweep", "--axis", "concurrency", "--values", "1", "--window", "0"], "window_s must be a finite number > 0"),
    (["sweep", "--axis", "concurrency", "--values", "1", "--workers", "0"], "workers must be an integer >= 1"),
    (["sweep", "--axis", "concurrency", "--values", "1", "--max-wait-ms", "-1"], "max_wait_s must be"),
])
def test_bad_concurrency_flags_exit_2_with_one_line(argv: list[str], message: str,
                                                    capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    assert main([*argv, "--store", str(tmp_path / "s")]) == 2
    err = capsys.readouterr().err.strip()
    assert message in err and len(err.splitlines()) == 1


def test_arrival_rate_sweep_offers_open_loop_load_and_profiles_it_again(model_dir: Path, tmp_path: Path,
                                                                        capsys: pytest.CaptureFixture[str]) -> None:
    store = tmp_path / "store"
    proc = _sweep(model_dir, store, "--axis", "arrival_rate", "--values", "10,25.5", "--window", "0.4",
                  "--warmup-s", "0.1", "--arrivals", "constant", "--max-in-flight", "32", "--sweep-id", "cli-open")
    assert proc.returncode == 0, proc.stderr
    out = proc.stdout
    assert "constant arrivals, window 0.4 s after 0.1 s of warm-up, at most 32 in flight" in out
    assert "| offered | run | realised | sent | achieved |" in out and "| 25.5/s | 1 |" in out
    assert "Highest offered rate sustained:" in out and "USL: not applicable" in out
    assert "X over the driver's clock" in out
    # read back from the store alone: the open-loop numbers come from the traces
    assert main(["sweep", "--profile", "cli-open", "--source", f"store:{store}", "--json"]) == 0
    profile = json.loads(capsys.readouterr().out)
    assert profile["axis"] == "arrival_rate" and profile["values"] == [10, 25.5]
    assert profile["stages"] == ["request", "queue", "batch"]
    assert all(f["status"] == "not_applicable" and "no USL fit" in f["reason"] for f in profile["fits"].values())
    points = profile["open_loop"]["points"]
    assert len(points) == 4 and {p["traces"] for p in points} == {4, 10}  # constant arrivals: 0.4 s x rate
    assert all(p["littles_law_n"] is None or p["littles_law_n"]["provenance"] == "derived" for p in points)
    with open_source(f"store:{store}") as src:
        trace = src.get_trace(profile["trace_ids"][0]["trace_ids"][0])
    assert trace.metadata["open_loop"]["run"] in (0, 1) and "scheduled_unix_nano" in trace.metadata["open_loop"]


@pytest.mark.parametrize(("argv", "message"), [
    (["sweep", "--axis", "arrival_rate", "--values", "10,x"], "--values: 'x' is not a positive rate"),
    (["sweep", "--axis", "arrival_rate", "--values", "0"], "--values: '0' is not a positive rate"),
    (["sweep", "--axis", "arrival_rate", "--values", "10", "--max-in-flight", "0"], "max_in_flight must be"),
    (["sweep", "--axis", "arrival_rate", "--values", "10", "--window", "0"], "duration_s must be"),
    (["sweep", "--axis", "arrival_rate", "--values", "10", "--tolerance", "2"], "tolerance must lie"),
    (["sweep", "--axis", "arrival_rate", "--values", "10", "--requests-per-client", "2"],
     "--requests-per-client applies to --axis concurrency only"),
    (["sweep", "--axis", "concurrency", "--values", "1", "--arrivals", "constant"], "apply to --axis arrival_rate only"),
])
def test_bad_arrival_rate_flags_exit_2_with_one_line(argv: list[str], message: str,
                                                     capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    assert main([*argv, "--store", str(tmp_path / "s")]) == 2
    err = capsys.readouterr().err.strip()
    assert message in err and len(err.splitlines()) == 1


def test_no_gc_freeze_leaves_the_collector_alone(model_dir: Path, tmp_path: Path) -> None:
    proc = _sweep(model_dir, tmp_path / "store", "--axis", "batch_size", "--values", "1,2", "--repeats", "1",
                  "--no-gc-freeze", "--json")
    assert proc.returncode == 0, proc.stderr
    assert "gc.freeze()" not in proc.stderr and json.loads(proc.stdout)["values"] == [1, 2]
