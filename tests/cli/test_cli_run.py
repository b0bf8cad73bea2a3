"""``vauban-trace run``: a real traced run through the CLI, and one-line errors with exit code 2."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from vauban_trace.cli import main
from vauban_trace.contract import Trace, validate_trace
from vauban_trace.executors.torch.tiny import cached_tiny_model


@pytest.fixture(scope="module")
def model_dir() -> Path:
    return cached_tiny_model("llama", hidden_size=64, num_layers=2)


def test_run_json_prints_the_rebuilt_trace(model_dir: Path, tmp_path: Path) -> None:
    store = tmp_path / "store"
    proc = subprocess.run(
        [sys.executable, "-c", "import sys; from vauban_trace.cli import main; sys.exit(main())",
         "run", "--model", str(model_dir), "--prompt", "Hello world", "--prompt", "The quick brown fox",
         "--max-new-tokens", "5", "--layers", "0,1", "--logprobs", "--store", str(store),
         "--intervene", "steer:layer=1,vector=random:2,alpha=2", "--sample", "--seed", "7", "--json"],
        capture_output=True, text=True, timeout=240,
    )
    assert proc.returncode == 0, proc.stderr
    trace = Trace.from_dict(json.loads(proc.stdout))
    validate_trace(trace)
    assert trace.complete
    # the same trace is in the store, rebuilt from the stored spans
    assert (store / "traces" / f"{trace.id}.json").is_file()
    assert Trace.from_json((store / "traces" / f"{trace.id}.json").read_text()) == trace
    assert trace.request is not None and trace.request.metadata["batch_size"] == 2
    assert trace.request.interventions[0].name == "steer"
    kinds = sorted({a.kind for a in trace.artifacts})
    assert kinds == ["activation", "intervention_result", "logits", "logprobs", "text", "tokens"]
    dec = trace.spans_for_stage("decode")[0]
    assert dec.profile is not None and dec.profile.batch_size == 2 and dec.profile.metadata["decode.steps"] == 5
    assert trace.root is not None and trace.root.metadata["gen_ai.request.seed"] == 7


def test_run_prints_a_summary_with_the_trace_id(model_dir: Path, tmp_path: Path, capsys: Any) -> None:
    code = main(["run", "--model", str(model_dir), "--prompt", "Paris is", "--max-new-tokens", "3",
                 "--store", str(tmp_path / "s"), "--score", " the capital", "--stop", "zzzz"])
    out = capsys.readouterr().out
    assert code == 0
    first = out.splitlines()[0]
    assert first.startswith("trace ") and len(first.split()[1]) == 32
    trace_id = first.split()[1]
    assert (tmp_path / "s" / "traces" / f"{trace_id}.json").is_file()
    for word in ("tokenize", "prefill", "decode", "score", "emit", "metric", "output", "score: sum logprob"):
        assert word in out


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--model", "/nonexistent/model-dir"], "model directory '/nonexistent/model-dir' does not exist"),
        (["--layers", "0,7"], "layer 7 is out of range: the model has 2 layers (0-1)"),
        (["--layers", "zero"], "--layers: 'zero' is not a layer index"),
        (["--sites", "residual,head"], "--sites"),
        (["--intervene", "ablate:layer=1"], "missing parameter(s) direction"),
        (["--intervene", "steer:layer=9,vector=random:1"], "layer 9 is out of range"),
        (["--max-new-tokens", "-3"], "--max-new-tokens must be >= 0"),
        (["--device", "cuda:3"], "device 'cuda:3'"),
        (["--dtype", "int3"], "unknown dtype 'int3'"),
        (["--temperature", "0"], "temperature must be a number > 0"),
        (["--max-new-tokens", "many"], "invalid int value"),
        (["--no-such-flag"], "unrecognized arguments"),
    ],
)
def test_errors_are_one_line_with_exit_code_2(args: list[str], message: str, model_dir: Path,
                                               tmp_path: Path, capsys: Any) -> None:
    argv = ["run", "--model", str(model_dir), "--prompt", "Hi", "--store", str(tmp_path / "s"), *args]
    try:
        code = main(argv)
    except SystemExit as exc:  # argparse errors
        code = exc.code  # type: ignore[assignment]
    captured = capsys.readouterr()
    assert code == 2
    lines = [line for line in captured.err.splitlines() if line.strip()]
    assert len(lines) == 1, captured.err
    assert lines[0].startswith("vauban-trace: error: ") and message in lines[0]
    assert "Traceback" not in captured.err and captured.out == ""
