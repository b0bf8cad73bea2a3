"""vauban_trace.report on real traces: a tiny llama run through the torch executor, baseline against
a steered run (steer at layer 1), and a baseline that recorded no activations."""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any

import pytest

import vauban_trace as vt
from vauban_trace.contract import Trace
from vauban_trace.executors.torch import TorchExecutor
from vauban_trace.executors.torch.tiny import cached_tiny_model
from vauban_trace.report import AccessLevel, Claim, ClaimStrength, build_report, diff_traces, evidence_of

PROMPT = "The quick brown fox jumps over"
STEER = "steer:layer=1,vector=random:7,alpha=4"


@pytest.fixture(scope="module")
def traces(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, Trace]]:
    session: Any = vt.configure(store_dir=tmp_path_factory.mktemp("report-store"))
    try:
        ex = TorchExecutor.from_pretrained(cached_tiny_model("llama", hidden_size=64, num_layers=2))
        ex.load()
        yield {
            "base": ex.trace(ex.make_request(PROMPT, layers=(0, 1), logprobs=True), max_new_tokens=0),
            "steer": ex.trace(ex.make_request(PROMPT, layers=(0, 1), logprobs=True, interventions=[STEER]),
                              max_new_tokens=0),
            "plain": ex.trace(ex.make_request(PROMPT, logits=True), max_new_tokens=0),
        }
    finally:
        session.shutdown()


def test_diff_finds_the_steering_layer(traces: dict[str, Trace]) -> None:
    diff = diff_traces(traces["base"], traces["steer"])
    (tokens,) = diff.pairs_of_kind("tokens")
    assert tokens.identical is True and not tokens.shape_changed
    acts = {p.layer: p for p in diff.pairs_of_kind("activation")}
    assert acts[0].identical is True  # upstream of the intervention: the same bytes
    assert all(d.delta == 0.0 for d in acts[0].summary_deltas)
    assert acts[1].identical is False
    assert acts[1].delta("l2_norm").delta > 1.0  # alpha=4 along a unit vector at every position
    for kind in ("logits", "logprobs"):
        (p,) = diff.pairs_of_kind(kind)
        assert p.identical is False and p.topk_jaccard is not None and p.topk_jaccard < 1.0
        assert p.stage == "prefill" and not p.shape_changed and not p.dtype_changed
    assert [(u.side, u.kind, u.layer) for u in diff.unpaired] == [("candidate", "intervention_result", 1)]
    prefill = diff.stage("prefill")
    duration = prefill.counter("duration_s")
    assert duration.baseline_provenance == duration.candidate_provenance == "measured"
    assert duration.baseline > 0 and duration.candidate > 0 and duration.like_for_like
    assert all(c.baseline_provenance != "unavailable" for s in diff.stages for c in s.counters)
    assert diff.unpaired_stages == ("intervene#0 profiled only in the candidate",)
    json.dumps(diff.to_dict(), allow_nan=False)


def test_evidence_of_the_steered_pair(traces: dict[str, Trace]) -> None:
    base, steer = traces["base"], traces["steer"]
    ev = evidence_of(base, steer)
    assert ev.access_level == AccessLevel.ACTIVATIONS
    assert ev.strongest_claim == ClaimStrength.ACTIVATION_DIAGNOSTIC
    assert ClaimStrength.DISTRIBUTIONAL_DIFF in ev.allowed and ClaimStrength.WEIGHT_DIFF not in ev.allowed
    assert {i.kind for i in ev.items} == {"tokens", "logits", "logprobs", "activation", "intervention_result"}
    text = [lim for lim in ev.limitations if lim.kind == "text"]
    assert text and all(lim.reason == "not_requested" and "max_new_tokens is 0" in lim.detail for lim in text)
    (bound,) = [lim for lim in ev.limitations if lim.reason == "intervention_bound"]
    assert bound.side == "candidate" and "steer at layer 1" in bound.detail and "alpha=4" in bound.detail

    act1 = {i.side: i.ref for i in ev.items if i.kind == "activation" and i.layer == 1}
    logits = {i.side: i.ref for i in ev.items if i.kind == "logits"}
    (result,) = [i.ref for i in ev.items if i.kind == "intervention_result"]
    report = build_report(base, steer, [
        Claim("steering at layer 1 moves the residual stream there", "activation_diagnostic",
              (act1["baseline"], act1["candidate"], result)),
        Claim("steering changes the next-token distribution", "distributional_diff",
              (logits["baseline"], logits["candidate"])),
        Claim("the steered model is a different model", "model_change_audit", (logits["candidate"],)),
    ])
    assert len(report.claims) == 2 and [c.strength for c in report.rejected] == ["model_change_audit"]
    assert "exceeds the cap activation_diagnostic of access level activations" in report.problems[0]
    json.dumps(report.to_dict(), allow_nan=False)
    assert f"`{result}` | candidate | intervention_result | 1 |" in report.render_markdown()


def test_baseline_without_activations_limits_the_pair(traces: dict[str, Trace]) -> None:
    ev = evidence_of(traces["plain"], traces["steer"])
    acts = [lim for lim in ev.limitations if lim.kind == "activation"]
    assert [(lim.side, lim.reason) for lim in acts] == [("baseline", "not_requested")]
    assert "recorded only in the candidate" in acts[0].detail
    logprobs = [lim for lim in ev.limitations if lim.kind == "logprobs"]
    assert [(lim.side, lim.reason) for lim in logprobs] == [("baseline", "not_requested")]
    assert not any(i.kind == "activation" for i in ev.items)
    # the intervention result still reaches the activation level, bounded by the steer that ran
    assert ev.access_level == AccessLevel.ACTIVATIONS
    refs = [i.ref for i in ev.items if i.kind == "intervention_result"]
    assert refs and build_report(traces["plain"], traces["steer"], [
        Claim("the steer raised the projection at layer 1", "activation_diagnostic", tuple(refs))]).problems == ()
