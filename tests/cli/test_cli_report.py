"""``vauban-trace report`` in a subprocess against a real store: a tiny llama baseline and a steered run."""

from __future__ import annotations

import json
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

import vauban_trace as vt
from vauban_trace.contract import Trace
from vauban_trace.executors.torch import TorchExecutor
from vauban_trace.executors.torch.tiny import cached_tiny_model

_SCRIPT = Path(sys.executable).parent / "vauban-trace"
_CLI = [str(_SCRIPT)] if _SCRIPT.exists() else [sys.executable, "-c", "from vauban_trace.cli import main; raise SystemExit(main())"]
PROMPT = "The quick brown fox jumps over"


@pytest.fixture(scope="module")
def store(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Trace, Trace, Path]]:
    store_dir = tmp_path_factory.mktemp("cli-report") / ".vauban"
    session: Any = vt.configure(store_dir=store_dir)
    try:
        ex = TorchExecutor.from_pretrained(cached_tiny_model("llama", hidden_size=64, num_layers=2))
        ex.load()
        base = ex.trace(ex.make_request(PROMPT, layers=(0, 1), logprobs=True), max_new_tokens=0)
        steer = ex.trace(ex.make_request(PROMPT, layers=(0, 1), logprobs=True, interventions=["steer:layer=1,vector=random:7,alpha=4"]),
                         max_new_tokens=0)
    finally:
        session.shutdown()
    yield base, steer, store_dir


def _cli(*args: str, cwd: Path | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run([*_CLI, "report", *args], capture_output=True, text=True, cwd=cwd, timeout=120)


def test_report_text(store: tuple[Trace, Trace, Path]) -> None:
    base, steer, store_dir = store
    proc = _cli(base.id, steer.id, cwd=store_dir.parent)  # default source store:.vauban, its blobs
    assert proc.returncode == 0, proc.stderr
    out = proc.stdout
    assert f"baseline  {base.id}" in out and f"candidate {steer.id}" in out
    assert "access level     activations" in out and "strongest claim  activation_diagnostic" in out
    assert "can claim " in out and "cannot claim " in out and "intervention bound" in out
    lines = {line.split()[0]: line for line in out.splitlines() if line.startswith("  ") and "[" in line.split()[0]}
    assert "identical" in lines["activation[0]"] and "cosine mean 1 min 1" in lines["activation[0]"]
    assert "relative L2 0;" in lines["activation[0]"]
    assert "changed" in lines["activation[1]"] and "cosine mean 1 " not in lines["activation[1]"]
    (logits,) = [line for line in out.splitlines() if line.strip().startswith("logits")]
    assert "changed" in logits and "KL max " in logits and "top-1 agreement" in logits
    assert "only in the candidate" in out and "prefill#0" in out and "duration_s" in out
    assert f"blobs from {Path('.vauban') / 'blobs'}" in out


def test_report_json(store: tuple[Trace, Trace, Path]) -> None:
    base, steer, store_dir = store
    proc = _cli(base.id, steer.id, "--source", f"store:{store_dir}", "--json")
    assert proc.returncode == 0, proc.stderr
    doc = json.loads(proc.stdout)
    assert doc["evidence"]["access_level"] == "activations" and doc["evidence"]["limitations"]
    assert doc["diff"]["baseline_trace_id"] == base.id
    pairs = {(p["kind"], p["layer"]): p for p in doc["content"]["pairs"]}
    assert pairs[("activation", 0)]["relative_l2"] == 0.0 and pairs[("activation", 0)]["identical"] is True
    assert pairs[("activation", 1)]["cosine_mean"] < 1.0
    assert pairs[("logits", None)]["kl_max"] > 0 and pairs[("tokens", None)]["equal"] is True
    # one trace: evidence only
    one = json.loads(_cli(base.id, "--source", f"store:{store_dir}", "--json").stdout)
    assert one["diff"] is None and one["content"] is None and one["evidence"]["candidate_trace_id"] is None
    # an empty --blobs directory: every pair says why it was not measured
    empty = store_dir.parent / "empty-blobs"
    empty.mkdir(exist_ok=True)
    doc = json.loads(_cli(base.id, steer.id, "--source", f"store:{store_dir}", "--blobs", str(empty), "--json").stdout)
    assert all(not p["measured"] and "no blob" in p["reason"] for p in doc["content"]["pairs"])


@pytest.mark.parametrize("args, words", [
    (["BASE", "ab" * 16], "no trace"),
    (["0" * 32], "invalid"),
    (["nothex"], "trace"),
    (["SOURCE"], "no trace store"),
    (["BASE", "--blobs", "/nonexistent/blobs"], "--blobs"),
    (["BASE", "--bogus"], "unrecognized arguments"),
])
def test_report_errors_exit_2_with_one_line(store: tuple[Trace, Trace, Path], tmp_path: Path,
                                            args: list[str], words: str) -> None:
    base, _, store_dir = store
    if args == ["SOURCE"]:
        args = [base.id, "--source", f"store:{tmp_path}"]
    args = [base.id if a == "BASE" else a for a in args]
    if "--source" not in args:
        args += ["--source", f"store:{store_dir}"]
    proc = _cli(*args)
    assert proc.returncode == 2 and proc.stdout == ""
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("vauban-trace: error:") and words in lines[0], proc.stderr
