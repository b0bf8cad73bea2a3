"""``vauban-trace sweep``: a real sweep over a tiny offline model through the CLI, and one-line errors."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from vauban_trace.cli import main
from vauban_trace.executors.torch.tiny import cached_tiny_model
from vauban_trace.sources import open_source


@pytest.fixture(scope="module")
def model_dir() -> Path:
    return cached_tiny_model("llama", hidden_size=64, num_layers=2)


def _sweep(model_dir: Path, store: Path, *extra: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-c", "import sys; from vauban_trace.cli import main; sys.exit(main())",
         "sweep", "--model", str(model_dir), "--store", str(store), "--repeats", "2", "--warmup", "1", *extra],
        capture_output=True, text=True, timeout=300,
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
    if axis == "prompt_tokens":
        tokens = {t.metadata["sweep"]["axis_value"]: t.spans_for_stage("tokenize")[0].profile.token_count
                  for t in traces}
        assert tokens == {4: 4, 8: 8, 16: 16}  # the axis value is the real prompt length
    if axis == "new_tokens":
        steps = {t.metadata["sweep"]["axis_value"]: t.spans_for_stage("decode")[0].profile.metadata["decode.steps"]
                 for t in traces}
        assert steps == {1: 1, 3: 3}
    stages = {p["stage"] for p in profile["points"]}
    assert {"request", "prefill"} <= stages
    assert all(f["status"] == "not_applicable" for f in profile["fits"].values())  # too few values for USL


def test_sweep_prints_a_table(model_dir: Path, tmp_path: Path) -> None:
    proc = _sweep(model_dir, tmp_path / "s", "--axis", "prompt_tokens", "--values", "4,8")
    assert proc.returncode == 0, proc.stderr
    assert "| prefill |" in proc.stdout and "prompt_tokens=8" in proc.stdout


@pytest.mark.parametrize(("argv", "message"), [
    (["sweep", "--axis", "prompt_tokens", "--values", "4,x"], "--values: 'x' is not a positive integer"),
    (["sweep", "--axis", "prompt_tokens", "--values", "4,0"], "--values: '0' is not a positive integer"),
    (["sweep", "--axis", "prompt_tokens", "--values", "4,4"], "values repeat"),
    (["sweep", "--axis", "prompt_tokens", "--values", "4", "--repeats", "0"], "--repeats >= 1"),
    (["sweep", "--axis", "prompt_tokens", "--values", "4", "--model", "/nonexistent"], "/nonexistent"),
])
def test_bad_flags_exit_2_with_one_line(argv: list[str], message: str, capsys: pytest.CaptureFixture[str],
                                        tmp_path: Path) -> None:
    assert main([*argv, "--store", str(tmp_path / "s")]) == 2
    err = capsys.readouterr().err.strip()
    assert message in err and len(err.splitlines()) == 1
