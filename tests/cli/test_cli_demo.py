"""``vauban-trace demo`` end to end in a subprocess, then ``show --last --json`` on its store."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from vauban_trace.artifacts import LocalArtifactStore, decode_array, decode_json
from vauban_trace.contract import Trace, validate_trace

_SCRIPT = Path(sys.executable).parent / "vauban-trace"
_CLI = [str(_SCRIPT)] if _SCRIPT.exists() else [sys.executable, "-c", "from vauban_trace.cli import main; raise SystemExit(main())"]


def _env() -> dict[str, str]:
    return {k: v for k, v in os.environ.items() if not k.startswith("OTEL_")}


@pytest.fixture(scope="module")
def demo(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, str]:
    root = tmp_path_factory.mktemp("demo")
    store, cache = root / "store", root / "cache"
    proc = subprocess.run(
        [*_CLI, "demo", "--store", str(store), "--cache", str(cache)],
        capture_output=True, text=True, env=_env(), timeout=300,
    )
    assert proc.returncode == 0, proc.stderr
    return store, proc.stdout


def test_demo_prints_a_readable_summary(demo: tuple[Path, str]) -> None:
    store, out = demo
    match = re.search(r"^trace ([0-9a-f]{32})  complete", out, re.M)
    assert match, out
    for stage in ("load", "tokenize", "forward", "score", "decode"):
        assert re.search(rf"^\s+{stage}\s+[\d.]+ (ms|s|µs)", out, re.M), stage
    for kind in ("tokens", "logits", "activation", "logprobs", "text"):
        assert re.search(rf"^  {kind}\s.*blake3:[0-9a-f]{{16}}", out, re.M), kind
    assert re.search(r"weight_snapshot\s+unsupported", out)
    assert "token_count=" in out and "measured" in out
    assert f"trace JSON: {store.resolve()}" in out
    assert f"embedded: {store.resolve()}" in out
    assert "vauban-trace show --last --json" in out


def test_show_last_json_matches_and_digests_verify(demo: tuple[Path, str]) -> None:
    store, out = demo
    trace_id = re.search(r"^trace ([0-9a-f]{32})", out, re.M).group(1)  # type: ignore[union-attr]
    proc = subprocess.run(
        [*_CLI, "show", "--last", "--json", "--source", f"store:{store}"],
        capture_output=True, text=True, env=_env(), timeout=120,
    )
    assert proc.returncode == 0, proc.stderr
    trace = Trace.from_dict(json.loads(proc.stdout))
    validate_trace(trace)
    assert trace.id == trace_id and trace.complete
    assert [s.stage for s in trace.spans if s.stage] == ["load", "tokenize", "forward", "score", "decode"]
    assert [(m.kind, m.reason) for m in trace.missing] == [("weight_snapshot", "unsupported")]
    blobs = LocalArtifactStore(store / "blobs")
    by_kind = {a.kind: a for a in trace.artifacts}
    assert set(by_kind) == {"tokens", "logits", "activation", "logprobs", "text"}
    for art in trace.artifacts:
        assert art.digest is not None
        assert blobs.verify(art.digest)
        assert len(blobs.get(art.digest)) == art.byte_size
    tokens = decode_json(blobs.get(by_kind["tokens"].digest))
    logits = decode_array(blobs.get(by_kind["logits"].digest))
    assert logits.shape == (1, len(tokens), logits.shape[-1])
    assert list(by_kind["logits"].summary["topk_ids"]) == list(np.argsort(-logits[0, -1], kind="stable")[:5])
    assert by_kind["activation"].layer == 1
    forward = next(s for s in trace.spans if s.stage == "forward")
    assert forward.profile is not None
    assert forward.profile.provenance_of("input_bytes") == "derived"
    assert forward.profile.input_bytes == 2 * 8 * len(tokens)  # input_ids + attention_mask, int64
    assert forward.profile.provenance_of("sync_points") == "unavailable"
    assert trace.request is not None and trace.request.input_text is None  # content capture off
    assert blobs.verify(trace.request.input_ref)  # type: ignore[arg-type]
