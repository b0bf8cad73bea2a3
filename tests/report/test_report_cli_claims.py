"""``vauban-trace report`` over many pairs and with ``--claims``, in a subprocess against a real store: tiny
llama baselines recorded in this process, steered candidates recorded by a second process under another
service name (so ``--baseline-query``/``--candidate-query`` select them by service)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest

import vauban_trace as vt
from vauban_trace.executors.torch import TorchExecutor
from vauban_trace.executors.torch.tiny import cached_tiny_model
from vauban_trace.report import content_diff, diff_traces
from vauban_trace.sources import open_source

_SCRIPT = Path(sys.executable).parent / "vauban-trace"
_CLI = [str(_SCRIPT)] if _SCRIPT.exists() else [sys.executable, "-c", "from vauban_trace.cli import main; raise SystemExit(main())"]
PROMPTS = ("The quick brown fox jumps over", "hello world", "a cat sat on the mat")
SERVICE = "steered-llama-audit"
_CANDIDATES = f"""
import json, sys
import vauban_trace as vt
from vauban_trace.executors.torch import TorchExecutor
from vauban_trace.executors.torch.tiny import cached_tiny_model
session = vt.configure(store_dir=sys.argv[1], service_name={SERVICE!r})
ex = TorchExecutor.from_pretrained(cached_tiny_model("llama", hidden_size=64, num_layers=2))
ex.load()
ids = [ex.trace(ex.make_request(p, layers=(0, 1), logprobs=True, metadata={{"prompt_id": f"p{{i}}"}},
                                interventions=["steer:layer=1,vector=random:7,alpha=4"]), max_new_tokens=0).id
       for i, p in enumerate({PROMPTS!r})]
session.shutdown()
print(json.dumps(ids))
"""
CLAIMS = {"claims": [
    {"statement": "steering at layer 1 moves the next-token distribution", "strength": "distributional_diff",
     "cites": ["logits", "logprobs"]},
    {"statement": "steering moves the residual stream at layer 1", "strength": "activation_diagnostic",
     "cites": ["activation[1]", "intervention_result[1]"]},
    {"statement": "the steered model is another model", "strength": "model_change_audit", "cites": ["logits"]},
]}


@pytest.fixture(scope="module")
def store(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, Any]]:
    root = tmp_path_factory.mktemp("cli-aggregate")
    store_dir = root / ".vauban"
    session: Any = vt.configure(store_dir=store_dir)
    try:
        ex = TorchExecutor.from_pretrained(cached_tiny_model("llama", hidden_size=64, num_layers=2))
        ex.load()
        # the fourth baseline reuses prompt id p0: by metadata, p0 is ambiguous
        base = [ex.trace(ex.make_request(p, layers=(0, 1), logprobs=True, metadata={"prompt_id": f"p{i % 3}"}),
                         max_new_tokens=0) for i, p in enumerate((*PROMPTS, "left without a partner"))]
    finally:
        session.shutdown()
    env = {k: v for k, v in os.environ.items() if k not in ("OTEL_SERVICE_NAME", "OTEL_TRACES_EXPORTER")}
    proc = subprocess.run([sys.executable, "-c", _CANDIDATES, str(store_dir)], capture_output=True, text=True,
                          timeout=300, env=env, cwd=root)
    assert proc.returncode == 0, proc.stderr[-3000:]
    cand_ids = json.loads(proc.stdout.strip().splitlines()[-1])
    with open_source(f"store:{store_dir}") as src:
        candidates = [src.get_trace(t) for t in cand_ids]
        base_service = src.list_traces(limit=100)[-1].service
    claims = root / "claims.json"
    claims.write_text(json.dumps(CLAIMS))
    yield {"dir": store_dir, "base": base, "cand": candidates, "claims": claims, "service": base_service}


def _cli(*args: str, cwd: Path | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run([*_CLI, "report", *args], capture_output=True, text=True, cwd=cwd, timeout=120)


def test_many_pairs_by_ids_json_holds_the_numbers(store: dict[str, Any]) -> None:
    base, cand = store["base"], store["cand"]
    proc = _cli("--baseline-ids", *(t.id for t in base), "--candidate-ids", *(t.id for t in cand[::-1]),
                "--source", f"store:{store['dir']}", "--seed", "5", "--resamples", "300", "--json")
    assert proc.returncode == 0, proc.stderr
    doc = json.loads(proc.stdout)
    assert [(p["baseline_trace_id"], p["candidate_trace_id"]) for p in doc["pairing"]["pairs"]] == [
        (b.id, c.id) for b, c in zip(base, cand, strict=False)]
    assert doc["pairing"]["unpaired"] == [{"side": "baseline", "trace_id": base[3].id, "key": base[3].request.input_ref,
                                           "reason": "no candidate trace has this input"}]
    assert doc["evidence"]["access_level"] == "activations" and doc["evidence"]["pairs"] == 3
    assert doc["bootstrap"]["seed"] == 5 and doc["blobs"] == f"blobs from {store['dir'] / 'blobs'}"
    measures = {(m["kind"], m["layer"], m["measure"]): m for m in doc["measures"]}
    for kind, layer, name in (("logits", None, "kl_max"), ("activation", 1, "relative_l2"), ("logprobs", None, "top1_agreement")):
        expected = [getattr(content_diff(diff_traces(b, c), store["dir"] / "blobs").pair(kind, layer), name)
                    for b, c in zip(base, cand, strict=False)]
        m = measures[(kind, layer, name)]
        assert [v["value"] for v in m["values"]] == expected and m["n"] == 3 and m["not_computed"] == []
        d = m["distribution"]
        assert d["mean"] == float(np.mean(expected)) and d["min"] == min(expected) and d["max"] == max(expected)
        assert d["median"] == float(np.median(expected)) and d["min"] <= d["ci_low"] <= d["ci_high"] <= d["max"]
    (prefill,) = [c for c in doc["counters"] if (c["stage"], c["counter"]) == ("prefill", "duration_s")]
    assert [(g["baseline_provenance"], g["candidate_provenance"], g["delta"]["n"]) for g in prefill["groups"]] == [
        ("measured", "measured", 3)]
    assert "claims" in doc and doc["claims"] == []


def test_many_pairs_by_service_query_with_claims(store: dict[str, Any]) -> None:
    args = ("--baseline-query", store["service"], "--candidate-query", SERVICE, "--claims", str(store["claims"]))
    proc = _cli(*args, cwd=store["dir"].parent)  # default source store:.vauban and its blobs
    assert proc.returncode == 1, proc.stderr  # a claim is rejected
    out = proc.stdout
    assert "aggregate over 3 pair(s), 1 unpaired trace(s)" in out
    assert f"selection: baseline: 4 trace(s) of service {store['service']!r}" in out
    assert f"selection: candidate: 3 trace(s) of service {SERVICE!r}" in out
    assert f"unpaired baseline {store['base'][3].id}: no candidate trace has this input" in out
    assert "access level     activations (cap activation_diagnostic)" in out
    assert "claims (2 accepted, 1 rejected)" in out
    assert "  accepted  [distributional_diff] steering at layer 1 moves" in out
    assert "  REJECTED  [model_change_audit] the steered model is another model (cites logits)" in out
    assert "      - strength model_change_audit exceeds the cap activation_diagnostic" in out
    assert "    kl_max          n=3  mean " in out and "intervene#0 profiled only in the candidate [pairs 0, 1, 2]" in out
    doc = json.loads(_cli(*args, "--json", cwd=store["dir"].parent).stdout)
    assert [c["accepted"] for c in doc["claims"]] == [True, True, False]
    assert doc["selection"][1] == f"candidate: 3 trace(s) of service {SERVICE!r}"
    limited = _cli(*args, "--limit", "2", "--json", cwd=store["dir"].parent)
    assert "older traces may be left out" in json.loads(limited.stdout)["selection"][0]


def test_single_pair_claims_accept_refs_and_slots(store: dict[str, Any]) -> None:
    base, cand = store["base"][0], store["cand"][0]
    proc = _cli(base.id, cand.id, "--source", f"store:{store['dir']}", "--claims", str(store["claims"]), "--json")
    assert proc.returncode == 1, proc.stderr
    doc = json.loads(proc.stdout)
    assert set(doc) == {"evidence", "diff", "content", "blobs", "claims"}
    assert [(c["accepted"], c["strength"]) for c in doc["claims"]] == [
        (True, "distributional_diff"), (True, "activation_diagnostic"), (False, "model_change_audit")]
    ref = base.artifacts_of_kind("logits")[0].id
    one = store["dir"].parent / "one.json"
    one.write_text(json.dumps([{"statement": "s", "strength": "distributional_diff", "cites": [ref, "logits"]}]))
    proc = _cli(base.id, cand.id, "--source", f"store:{store['dir']}", "--claims", str(one))
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.rstrip().endswith(f"  accepted  [distributional_diff] s (cites {ref}, logits)")
    plain = json.loads(_cli(base.id, cand.id, "--source", f"store:{store['dir']}", "--json").stdout)
    assert set(plain) == {"evidence", "diff", "content", "blobs"}  # the single-pair document is unchanged


def test_pair_by_metadata_markdown_and_tests(store: dict[str, Any]) -> None:
    base, cand = store["base"], store["cand"]
    ids = ("--baseline-ids", *(t.id for t in base), "--candidate-ids", *(t.id for t in cand),
           "--source", f"store:{store['dir']}", "--pair-by", "metadata.prompt_id")
    proc = _cli(*ids, "--json", "--test", "signed_rank", "--correction", "bh", "--alpha", "0.2")
    assert proc.returncode == 0, proc.stderr
    doc = json.loads(proc.stdout)
    assert doc["pairing"]["by"] == ["metadata.prompt_id"]
    assert [(p["baseline_trace_id"], p["candidate_trace_id"]) for p in doc["pairing"]["pairs"]] == [
        (base[1].id, cand[1].id), (base[2].id, cand[2].id)]
    why = "ambiguous: 2 baseline and 1 candidate trace(s) carry this metadata"
    assert {(u["trace_id"], u["reason"]) for u in doc["pairing"]["unpaired"]} == {
        (base[0].id, why), (base[3].id, why), (cand[0].id, why)}
    tests = doc["tests"]
    assert (tests["test"], tests["correction"], tests["alpha"], tests["m"]) == ("signed_rank", "bh", 0.2, 0)
    (norm,) = [t for t in tests["measures"] if t["ref"] == "activation[1]@observe#0:l2_norm"]
    assert norm["n"] == 2 and norm["p"] is None and norm["reason"].startswith("2 pairs measured: the smallest")
    md = _cli(*ids, "--markdown")
    assert md.returncode == 0, md.stderr
    assert md.stdout.startswith("# Aggregate evidence report\n\n2 pair(s); pairs by request metadata metadata.prompt_id")
    assert f"- baseline `{base[0].id}`: {why}" in md.stdout and "## Paired tests (candidate − baseline)" in md.stdout
    text = _cli(*ids)
    assert "paired tests (delta = candidate - baseline): two-sided sign-flip permutation test" in text.stdout
    assert "  not tested  content measures (kl_max, kl_mean, top1_agreement" in text.stdout
    # the baselines as their own reruns: a noise floor of 0 the content measures are tested against
    ref = json.loads(_cli(*ids, "--reference-ids", *(t.id for t in base), "--json").stdout)["tests"]
    assert ref["untested"][0].startswith("content measures are tested against the reference pairs")
    (kl,) = [t for t in ref["measures"] if t["ref"] == "logits@prefill#0:kl_max"]
    assert kl["source"] == "content" and kl["n"] == 2 and kl["reason"].startswith("2 pairs measured")
    assert kl["effect"]["min"] > 0  # KL(baseline, steered) - KL(baseline, itself)
    assert "  not tested (2 pairs measured: the smallest attainable p is 2^(1-n) = 0.5 > alpha 0.05" in text.stdout


@pytest.mark.parametrize("args, words", [
    (["--baseline-ids", "BASE", "--candidate-ids", "CAND", "--pair-by", "prompt_id"],
     "pair by: 'prompt_id' is not 'input' or 'metadata.KEY'"),
    (["BASE", "CAND", "--pair-by", "metadata.prompt_id"], "--pair-by applies to many pairs"),
    (["--baseline-ids", "BASE", "--candidate-ids", "CAND", "--family", "logits:kl_max"], "matches no measure"),
    (["--baseline-ids", "BASE", "--candidate-ids", "CAND", "--json", "--markdown"], "not both"),
    (["--baseline-ids", "BASE", "--candidate-ids", "CAND", "--alpha", "1"], "--alpha"),
    (["BASE", "CAND", "--reference-ids", "BASE"], "--reference-ids applies to many pairs"),
    (["BAD_CLAIMS", "BASE", "CAND"], "claims[1] ('t'): key 'strength'"),
    (["BASE", "--baseline-ids", "BASE", "--candidate-ids", "CAND"], "not both"),
    (["--baseline-ids", "BASE"], "the candidate side has no traces"),
    (["--baseline-query", "no-such-service", "--candidate-ids", "CAND"], "no traces of service 'no-such-service'"),
    (["BASE", "CAND", "--since", "1h"], "--since applies to"),
    (["--baseline-ids", "BASE", "--candidate-ids", "CAND", "--ci-level", "2"], "--ci-level"),
    ([], "give BASELINE_ID"),
])
def test_errors_exit_2_with_one_line(store: dict[str, Any], tmp_path: Path, args: list[str], words: str) -> None:
    base, cand = store["base"][0], store["cand"][0]
    bad = tmp_path / "bad.json"
    bad.write_text(json.dumps({"claims": [CLAIMS["claims"][0], {"statement": "t", "strength": "strong", "cites": []}]}))
    swap = {"BASE": base.id, "CAND": cand.id}
    args = [x for a in args for x in (["--claims", str(bad)] if a == "BAD_CLAIMS" else [swap.get(a, a)])]
    proc = _cli(*args, "--source", f"store:{store['dir']}")
    assert proc.returncode == 2 and proc.stdout == ""
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("vauban-trace: error:") and words in lines[0], proc.stderr


def test_equivalent_claims_and_exit_status(store: dict[str, Any]) -> None:
    args = ("--baseline-query", store["service"], "--candidate-query", SERVICE)
    claim = {"statement": "layer 0 is untouched by steering at layer 1", "strength": "activation_diagnostic",
             "cites": ["activation[0]"], "test": {"measure": "activation[0]:l2_norm", "outcome": "equivalent",
                                                  "margin": 1e-3}}
    path = store["dir"].parent / "equivalent.json"
    path.write_text(json.dumps({"claims": [claim]}))
    # 3 pairs: the smallest TOST p is 1/8; at alpha 0.2 the identical layer-0 norms are shown equivalent
    ok = _cli(*args, "--claims", str(path), "--alpha", "0.2", cwd=store["dir"].parent)
    assert ok.returncode == 0, ok.stderr + ok.stdout
    assert "claims (1 accepted, 0 rejected)" in ok.stdout and "within +-0.001" in ok.stdout
    assert "EQUIVALENT" in ok.stdout
    # at alpha 0.05, 3 pairs can never show equivalence: rejected with that reason, exit 1
    few = _cli(*args, "--claims", str(path), cwd=store["dir"].parent)
    assert few.returncode == 1, few.stderr
    assert "too few pairs to ever show equivalence" in few.stdout
    # the steered layer moves: not equivalent within a tiny margin
    moved = {**claim, "cites": ["activation[1]"], "test": {**claim["test"], "measure": "activation[1]:l2_norm"}}
    path.write_text(json.dumps({"claims": [moved]}))
    bad = _cli(*args, "--claims", str(path), "--alpha", "0.2", "--json", cwd=store["dir"].parent)
    assert bad.returncode == 1, bad.stderr
    doc = json.loads(bad.stdout)
    assert doc["claims"][0]["accepted"] is False and "not shown equivalent" in doc["claims"][0]["problems"][0]
    assert doc["tests"]["equivalence"]["claims"][0]["equivalent"] is False
