"""vauban_trace.report on hand-built Trace records: the access-level table, every claim-check rule,
limitations for missing evidence, the diff's arithmetic, and JSON-readiness."""

from __future__ import annotations

import hashlib
import json
import math
from typing import Any

import pytest

from vauban_trace._exceptions import ReportError
from vauban_trace.contract import (
    MissingArtifact,
    StageProfile,
    Trace,
    TraceArtifact,
    TraceRequest,
    TraceSpan,
)
from vauban_trace.report import (
    CAN_CLAIM,
    CANNOT_CLAIM,
    CLAIM_CAP,
    AccessLevel,
    Claim,
    ClaimStrength,
    access_rank,
    build_report,
    check_claims,
    claim_problems,
    diff_traces,
    evidence_of,
    strength_rank,
)


def digest(text: str, alg: str = "sha256") -> str:
    return f"{alg}:" + hashlib.sha256(text.encode()).hexdigest()


def art(aid: str, kind: str, layer: int | None = None, content: str | None = None, *, span: str = "s1",
        summary: dict[str, Any] | None = None, shape: tuple[int, ...] = (), dtype: str | None = None,
        alg: str = "sha256", metadata: dict[str, Any] | None = None) -> TraceArtifact:
    return TraceArtifact(id=aid, kind=kind, producer_span_id=span, layer=layer,
                         digest=digest(content if content is not None else aid, alg), summary=summary or {},
                         shape=shape, dtype=dtype, metadata=metadata or {})


def trace(tid: str, arts: list[TraceArtifact], *, missing: tuple[MissingArtifact, ...] = (),
          requested: tuple[str, ...] | None = None, profile: StageProfile | None = None,
          layers: tuple[int, ...] = ()) -> Trace:
    kinds = requested if requested is not None else tuple(dict.fromkeys(a.kind for a in arts))
    spans = (
        TraceSpan(id="root", name="text_completion model-" + tid),
        TraceSpan(id="s1", name="prefill", stage="prefill", parent_id="root", profile=profile),
    )
    return Trace(id=tid, request=TraceRequest(input_text="hi", requested_artifacts=kinds, collect_layers=layers),
                 spans=spans, artifacts=tuple(arts), missing=missing)


def pair_of(kinds: list[str], cand_kinds: list[str] | None = None, **kw: Any) -> tuple[Trace, Trace]:
    base = [art(f"b-{k}", k, 0 if k in ("activation", "weight_snapshot") else None, k, **kw) for k in kinds]
    cand = [art(f"c-{k}", k, 0 if k in ("activation", "weight_snapshot") else None, k)
            for k in (cand_kinds if cand_kinds is not None else kinds)]
    return trace("base", base), trace("cand", cand)


# -- the policy tables ------------------------------------------------------------------------------
def test_vocabularies_are_ordered_as_in_the_reference() -> None:
    assert [str(a) for a in AccessLevel] == [
        "single_snapshot", "black_box", "paired_outputs", "logprobs", "weights", "activations",
        "base_and_modified", "base_and_transformed"]
    assert [str(s) for s in ClaimStrength] == [
        "behavioral_profile", "black_box_behavioral_diff", "distributional_diff", "weight_diff",
        "activation_diagnostic", "model_change_audit"]
    ranks = [access_rank(a) for a in AccessLevel]
    assert ranks == sorted(ranks) and ranks == [0, 1, 1, 2, 3, 4, 5, 5]
    assert [strength_rank(s) for s in ClaimStrength] == list(range(6))


def test_cap_table_and_wording() -> None:
    assert {str(k): str(v) for k, v in CLAIM_CAP.items()} == {
        "single_snapshot": "behavioral_profile",
        "black_box": "black_box_behavioral_diff",
        "paired_outputs": "black_box_behavioral_diff",
        "logprobs": "distributional_diff",
        "weights": "weight_diff",
        "activations": "activation_diagnostic",
        "base_and_modified": "model_change_audit",
        "base_and_transformed": "model_change_audit",
    }
    # a stronger level never caps lower
    levels = list(AccessLevel)
    for weak, strong in zip(levels, levels[1:], strict=False):
        assert strength_rank(CLAIM_CAP[weak]) <= strength_rank(CLAIM_CAP[strong])
    for level in AccessLevel:
        assert CAN_CLAIM[level].strip() and CANNOT_CLAIM[level].strip()
    assert len(set(CAN_CLAIM.values())) == len(AccessLevel) == len(set(CANNOT_CLAIM.values()))


@pytest.mark.parametrize(
    ("kinds", "cand_kinds", "level", "strongest"),
    [
        (["text"], None, "single_snapshot", "behavioral_profile"),
        (["tokens", "logits"], None, "logprobs", "behavioral_profile"),  # a diff needs two traces
        (["tokens", "activation"], None, "activations", "activation_diagnostic"),
        (["weight_snapshot"], None, "weights", None),
        ([], None, "single_snapshot", None),
        (["text"], ["text"], "paired_outputs", "black_box_behavioral_diff"),
        (["text", "logits"], ["text", "logits"], "logprobs", "distributional_diff"),
        (["text", "logprobs", "activation"], ["text", "logprobs", "activation"], "activations",
         "activation_diagnostic"),
        (["text", "logits"], ["text"], "paired_outputs", "black_box_behavioral_diff"),
        (["text", "activation"], ["text", "logits"], "paired_outputs", "black_box_behavioral_diff"),
        (["weight_snapshot", "text"], ["weight_snapshot", "text"], "base_and_modified", "model_change_audit"),
    ],
)
def test_access_level_follows_what_both_traces_hold(
    kinds: list[str], cand_kinds: list[str] | None, level: str, strongest: str | None
) -> None:
    base, cand = pair_of(kinds, cand_kinds or [])
    ev = evidence_of(base, cand if cand_kinds is not None else None)
    assert ev.access_level == level
    assert (None if ev.strongest_claim is None else str(ev.strongest_claim)) == strongest
    assert ev.cap == CLAIM_CAP[AccessLevel(level)]


def test_weights_of_another_dtype_make_a_transformed_pair() -> None:
    base = trace("b", [art("w1", "weight_snapshot", 0, "w", dtype="float32", shape=(4, 4),
                           metadata={"name": "embed"})])
    cand = trace("c", [art("w2", "weight_snapshot", 0, "q", dtype="int8", shape=(4, 4),
                           metadata={"name": "embed"})])
    assert evidence_of(base, cand).access_level == AccessLevel.BASE_AND_TRANSFORMED
    same = trace("c", [art("w3", "weight_snapshot", 0, "w", dtype="float32", shape=(4, 4),
                           metadata={"name": "embed"})])
    assert evidence_of(base, same).access_level == AccessLevel.BASE_AND_MODIFIED


# -- limitations ------------------------------------------------------------------------------------
def test_candidate_without_logits_narrows_the_claim() -> None:
    base = trace("base", [art("bt", "tokens", content="t"), art("bl", "logits", content="l1"),
                          art("bp", "logprobs", content="p1")])
    cand = trace("cand", [art("ct", "tokens", content="t")], requested=("tokens", "logits"),
                 missing=(MissingArtifact("logits", "unsupported", "the endpoint returns text only"),))
    ev = evidence_of(base, cand)
    assert ev.access_level == AccessLevel.PAIRED_OUTPUTS
    assert {i.ref for i in ev.items} == {"bt", "ct"}  # one-sided logits are not citable
    by_kind = {lim.kind: lim for lim in ev.limitations}
    assert by_kind["logits"].side == "candidate" and by_kind["logits"].reason == "unsupported"
    assert "the endpoint returns text only" in by_kind["logits"].detail
    assert by_kind["logprobs"].reason == "not_requested" and "not requested" in by_kind["logprobs"].detail
    report = build_report(base, cand, [
        Claim("the distribution shifted", "distributional_diff", ("bl",)),
        Claim("the outputs agree token for token", "black_box_behavioral_diff", ("bt", "ct")),
    ])
    assert [c.statement for c in report.claims] == ["the outputs agree token for token"]
    assert [c.statement for c in report.rejected] == ["the distribution shifted"]
    text = " | ".join(report.problems)
    assert "exceeds the cap black_box_behavioral_diff of access level paired_outputs" in text
    assert "cites 'bl', which is not in the evidence" in text
    md = report.render_markdown()
    assert "logits (candidate): unsupported: the endpoint returns text only" in md
    assert CANNOT_CLAIM[AccessLevel.PAIRED_OUTPUTS] in md


def test_absent_without_record_and_layers_on_one_side() -> None:
    base = trace("b", [art("b0", "activation", 0, "a0"), art("b1", "activation", 1, "a1")], layers=(0, 1))
    cand = trace("c", [art("c0", "activation", 0, "a0")], requested=("activation", "logits"), layers=(0, 1))
    ev = evidence_of(base, cand)
    assert {i.ref for i in ev.items} == {"b0", "c0"}
    (layer_lim,) = [lim for lim in ev.limitations if lim.kind == "activation"]
    assert layer_lim.side == "candidate" and layer_lim.reason == "absent"
    assert "layer 1" in layer_lim.detail and "recorded only in the baseline" in layer_lim.detail
    single = evidence_of(trace("s", [], requested=("logits",),
                               missing=(MissingArtifact("logits", "failed", "OOM"),)))
    assert [(lim.kind, lim.reason, lim.detail) for lim in single.limitations] == [("logits", "failed", "OOM")]


def test_incomplete_trace_and_shared_artifact_ids() -> None:
    base = Trace(id="b", artifacts=(art("x", "text", span="s"),),
                 spans=(TraceSpan(id="s", name="decode"),), complete=False, problems=("no root span",))
    cand = Trace(id="c", artifacts=(art("x", "text", span="s"),), spans=(TraceSpan(id="s", name="decode"),))
    ev = evidence_of(base, cand)
    assert {i.ref for i in ev.items} == {"b/x", "c/x"}
    assert any(lim.reason == "incomplete" and "no root span" in lim.detail for lim in ev.limitations)
    assert claim_problems(Claim("same words", "black_box_behavioral_diff", ("b/x", "c/x")), ev) == []


def test_non_traces_are_refused() -> None:
    with pytest.raises(ReportError, match="baseline must be a vauban_trace.contract.Trace, got dict"):
        evidence_of({"id": "x"})  # type: ignore[arg-type]
    with pytest.raises(ReportError, match="candidate"):
        diff_traces(trace("a", []), "b")  # type: ignore[arg-type]


# -- claim rules ------------------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("claim", "problem"),
    [
        (Claim("ok", "distributional_diff", ("b-logits", "c-logits")), None),
        (Claim("ok", "activation_diagnostic", ("b-activation",)), None),
        (Claim("x", "distributional_diff", ("nope",)), "cites 'nope', which is not in the evidence"),
        (Claim("x", "model_change_audit", ("b-text",)), "exceeds the cap activation_diagnostic"),
        (Claim("x", "distributional_diff", ("b-text", "c-text")),
         "needs evidence of kind logits or logprobs; it cites only text"),
        (Claim("x", "activation_diagnostic", ("b-logits",)), "needs evidence of kind activation or"),
        (Claim("x", "behavioral_profile", ()), "cites no evidence"),
        (Claim("x", "proof", ("b-text",)), "strength 'proof' is not a claim strength"),
        (Claim("  ", "behavioral_profile", ("b-text",)), "the statement is empty"),
        (Claim(None, "behavioral_profile", ("b-text",)), "the statement is not text: NoneType"),  # type: ignore[arg-type]
    ],
)
def test_each_claim_rule(claim: Claim, problem: str | None) -> None:
    base, cand = pair_of(["text", "logits", "activation"])
    ev = evidence_of(base, cand)
    found = claim_problems(claim, ev)
    if problem is None:
        assert found == []
    else:
        assert any(problem in p for p in found), found


def test_comparative_claims_need_two_traces() -> None:
    base, _ = pair_of(["tokens", "logits"])
    ev = evidence_of(base)
    found = claim_problems(Claim("shifted", "distributional_diff", ("b-logits",)), ev)
    assert found == ["strength distributional_diff compares two models, but the evidence has one trace"]
    assert claim_problems(Claim("says hi", "behavioral_profile", "b-tokens"), ev) == []  # a str is one ref


def test_build_report_never_raises_and_is_json_ready() -> None:
    base, cand = pair_of(["text", "logits"])
    claims: list[Any] = [Claim("moved", ClaimStrength.DISTRIBUTIONAL_DIFF, ["b-logits", "c-logits"]),
                         Claim("audit", "model_change_audit", ("b-logits", "ghost")), "not a claim"]
    report = build_report(base, cand, claims)
    assert [c.statement for c in report.claims] == ["moved"]
    assert [c.statement for c in report.rejected] == ["audit"]
    assert any(p.startswith("claim 2: not a Claim: str") for p in report.problems)
    assert check_claims(claims, report.evidence) == list(report.problems)
    data = json.loads(json.dumps(report.to_dict(), allow_nan=False))
    assert data["evidence"]["access_level"] == "logprobs"
    assert data["evidence"]["strongest_claim"] == "distributional_diff"
    assert data["claims"][0]["cites"] == ["b-logits", "c-logits"]
    md = report.render_markdown()
    assert "| `b-logits` | baseline | logits |" in md and "## Rejected claims" in md


# -- diff -------------------------------------------------------------------------------------------
def test_diff_arithmetic_on_summaries_topk_shape_and_dtype() -> None:
    sb = {"mean": 1.0, "std": 2.0, "max": 3.0, "l2_norm": math.nan, "topk_ids": [1, 2, 3, 4]}
    sc = {"mean": 1.5, "std": 2.0, "min": 0.0, "l2_norm": 1.0, "topk_ids": [3, 4, 5, 6]}
    base = trace("b", [art("bl", "logits", content="L", summary=sb, shape=(1, 8), dtype="float32"),
                       art("bx", "text", content="same"), art("bo", "metric", content="m")])
    cand = trace("c", [art("cl", "logits", content="L2", summary=sc, shape=(1, 9), dtype="bfloat16"),
                       art("cx", "text", content="same", alg="blake3")])
    diff = diff_traces(base, cand)
    (logits,) = diff.pairs_of_kind("logits")
    assert logits.identical is False and logits.stage == "prefill" and logits.position == 0
    assert logits.delta("mean").delta == pytest.approx(0.5) and logits.delta("std").delta == 0.0
    assert {d.name for d in logits.summary_deltas} == {"mean", "std"}
    assert logits.topk_jaccard == pytest.approx(2 / 6)
    assert logits.shape_changed and logits.dtype_changed
    assert "summary min recorded on one side only" in logits.notes
    assert "summary l2_norm is not a finite number on both sides" in logits.notes
    (text,) = diff.pairs_of_kind("text")
    assert text.identical is None and "different hash algorithms" in text.notes[0]
    assert [(u.side, u.artifact_id) for u in diff.unpaired] == [("baseline", "bo")]
    json.dumps(diff.to_dict(), allow_nan=False)


def test_stage_counters_keep_provenance() -> None:
    pb = StageProfile(name="prefill", duration_s=0.5, memory_bytes=100, sync_points=2,
                      provenance={"duration_s": "measured", "memory_bytes": "measured", "sync_points": "declared"})
    pc = StageProfile(name="prefill", duration_s=0.25, memory_bytes=150, token_count=9,
                      sync_points=5, provenance={"duration_s": "measured", "memory_bytes": "measured",
                                                 "sync_points": "measured", "token_count": "derived"})
    diff = diff_traces(trace("b", [], profile=pb), trace("c", [], profile=pc))
    st = diff.stage("prefill")
    assert st.counter("duration_s").delta == pytest.approx(-0.25) and st.counter("duration_s").like_for_like
    assert st.counter("memory_bytes").delta == 50
    sync = st.counter("sync_points")
    assert not sync.like_for_like and "declared baseline value against a measured candidate" in sync.note
    assert "token_count recorded only in the candidate" in st.notes
    with pytest.raises(KeyError):
        st.counter("token_count")
    diff2 = diff_traces(trace("b", [], profile=pb), trace("c", []))
    assert diff2.stages == () and diff2.unpaired_stages == ("prefill#0 profiled only in the baseline",)
    json.dumps(diff.to_dict(), allow_nan=False)
