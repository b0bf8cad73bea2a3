"""Paired tests in aggregate reports, on hand-built Trace records: which measures are tested and which are
not (and why), the family and its Holm/BH adjustment, test claims (differs / does_not_differ), claims
files with a test, pairing by request metadata, and the markdown/JSON output."""

from __future__ import annotations

import hashlib
import json
import re
from pathlib import Path

import numpy as np
import pytest

from vauban_trace._exceptions import ClaimsFileError, ReportError
from vauban_trace.contract import StageProfile, Trace, TraceArtifact, TraceRequest, TraceSpan
from vauban_trace.report import (
    CONTENT_UNTESTED,
    Claim,
    ClaimTest,
    aggregate_report,
    benjamini_hochberg,
    check_claim_list,
    claims_from_json,
    claims_to_json,
    evidence_of,
    holm,
    load_claims,
    pair_traces,
    paired_test,
)

RNG_DELTA = [0.9, 1.3, 1.1, 0.7, 1.6, 1.2, 0.8, 1.4]          # the candidate's layer-1 norm rises in every pair
DURATION_DELTA = [0.2, -0.1, 0.05, -0.3, 0.15, -0.05, 0.1, -0.2]  # timing noise, both signs


def _trace(tid: str, text: str, *, norm1: float, norm0: float = 2.0, duration: float = 1.0,
           provenance: str = "measured", meta: dict[str, object] | None = None) -> Trace:
    profile = StageProfile(name="prefill", duration_s=duration, provenance={"duration_s": provenance})
    spans = (TraceSpan(id="root", name="text_completion m"),
             TraceSpan(id="s1", name="prefill", stage="prefill", parent_id="root", profile=profile),
             TraceSpan(id="s2", name="observe", stage="observe", parent_id="root"))
    arts = tuple(TraceArtifact(id=f"{tid[:6]}-act{layer}", kind="activation", producer_span_id="s2", layer=layer,
                               digest="sha256:" + hashlib.sha256(f"{tid}{layer}".encode()).hexdigest(),
                               summary={"l2_norm": norm, "mean": 0.5})
                 for layer, norm in ((0, norm0), (1, norm1)))
    req = TraceRequest(input_text=text, requested_artifacts=("activation",), collect_layers=(0, 1),
                       metadata=meta or {})
    return Trace(id=tid, request=req, spans=spans, artifacts=arts)


def _set(n: int = 8, provenance: str = "measured") -> list[tuple[Trace, Trace]]:
    out = []
    for i in range(n):
        base = _trace(f"{i:032x}", f"prompt {i}", norm1=5.0 + i, duration=1.0 + i / 10)
        cand = _trace(f"{i + 100:032x}", f"prompt {i}", norm1=5.0 + i + RNG_DELTA[i],
                      duration=1.0 + i / 10 + DURATION_DELTA[i], provenance=provenance if i == 0 else "measured")
        out.append((base, cand))
    return out


def test_tested_measures_their_p_values_and_the_family() -> None:
    agg = aggregate_report(_set(), seed=2)
    fam = agg.tests
    assert fam is not None and (fam.test, fam.correction, fam.alpha) == ("sign_flip", "holm", 0.05)
    refs = [t.ref for t in fam.measures]
    assert refs == ["activation[0]@observe#0:mean", "activation[0]@observe#0:l2_norm",
                    "activation[1]@observe#0:mean", "activation[1]@observe#0:l2_norm",
                    "stage:prefill#0:duration_s/measured"]
    assert fam.m == 5 and fam.untested == (CONTENT_UNTESTED,)
    norm = agg.test("activation[1]:l2_norm")
    deltas = [round(d, 12) for d in RNG_DELTA]
    assert norm.n == 8 and [round(v[3], 12) for v in agg.summary("activation", "l2_norm", 1).values] == deltas
    assert norm.test is not None and norm.test.p == paired_test(RNG_DELTA).p == 2 / 256
    assert norm.effect is not None and norm.effect.mean == pytest.approx(np.mean(RNG_DELTA))
    assert norm.effect.ci_low is not None and norm.effect.ci_low > 0  # effect size and its CI, kept together
    dur = agg.test("stage:prefill:duration_s")
    assert dur.test is not None and dur.test.p == pytest.approx(paired_test(DURATION_DELTA).p) and dur.test.p > 0.5
    same = agg.test("activation[0]:l2_norm")  # identical on both sides: every delta 0, p = 1
    assert same.test is not None and same.test.p == 1.0 and same.test.n_nonzero == 0
    ps = np.array([t.test.p for t in fam.measures if t.test is not None])
    assert [t.p_holm for t in fam.measures] == pytest.approx(holm(ps).tolist())
    assert [t.p_bh for t in fam.measures] == pytest.approx(benjamini_hochberg(ps).tolist())
    assert [t.ref for t in fam.differing] == ["activation[1]@observe#0:l2_norm"]  # 5 * 2/256 = 0.039
    assert norm.p_holm == pytest.approx(5 * 2 / 256) and norm.differs is True
    with pytest.raises(KeyError, match="names 2 measures"):
        agg.test("activation:l2_norm")
    # the content measures are never tested (divergences within a pair): the report says so
    doc = json.loads(json.dumps(agg.to_dict(), allow_nan=False))
    assert doc["tests"]["m"] == 5 and doc["tests"]["untested"] == [CONTENT_UNTESTED]
    (row,) = [t for t in doc["tests"]["measures"] if t["ref"] == norm.ref]
    assert row["p"] == 2 / 256 and row["test"]["exact"] is True and row["p_holm"] == norm.p_holm
    assert row["effect"]["ci_method"] == "percentile bootstrap of the mean" and row["differs"] is True


def test_bh_signed_rank_and_a_family_given() -> None:
    bh = aggregate_report(_set(), test="signed_rank", correction="bh")
    assert bh.tests is not None and bh.tests.test == "signed_rank"
    norm = bh.test("activation[1]:l2_norm")
    assert norm.differs is True and norm.p_bh is not None and norm.differs == (norm.p_bh <= 0.05)
    one = aggregate_report(_set(), family=["activation[1]:l2_norm", "stage:prefill:duration_s"])
    assert one.tests is not None and one.tests.m == 2 and one.tests.family == (
        "activation[1]:l2_norm", "stage:prefill:duration_s")
    assert one.test("activation[1]:l2_norm").p_holm == pytest.approx(2 * 2 / 256)
    outside = one.test("activation[0]:l2_norm")
    assert outside.test is None and outside.reason == "outside the family given: not tested"
    assert outside.effect is not None and outside.n == 8  # still described, never tested
    with pytest.raises(ReportError, match="matches no measure"):
        aggregate_report(_set(), family=["logits:kl_max"])
    with pytest.raises(ReportError, match="is not a measure ref"):
        aggregate_report(_set(), family=["l2 norm please"])
    for bad, words in (({"test": "t"}, "test must be one of"), ({"correction": "bonf"}, "correction"),
                       ({"alpha": 0}, "alpha"), ({"permutations": -1}, "permutations")):
        with pytest.raises(ReportError, match=words):
            aggregate_report(_set(), **bad)


def test_too_few_pairs_and_unlike_provenances_are_not_tested() -> None:
    small = aggregate_report(_set(4))
    assert small.tests is not None and small.tests.m == 0
    for t in small.tests.measures:
        assert t.test is None and t.p_holm is None and t.differs is None
        assert t.reason == ("4 pairs measured: the smallest attainable p is 2^(1-n) = 0.125 > alpha 0.05: "
                            "too few pairs for a test")
    assert small.test("activation[1]:l2_norm").effect is not None  # the effect is still given
    mixed = aggregate_report(_set(8, provenance="declared"))
    unlike = mixed.test("stage:prefill:duration_s/measured+declared")
    assert unlike.test is None and unlike.n == 1 and unlike.reason is not None
    assert unlike.reason.startswith("provenances differ (measured baseline, declared candidate)")
    like = mixed.test("stage:prefill:duration_s/measured")
    assert like.n == 7 and like.test is not None


def _claim(measure: str, outcome: str, margin: float | None = None) -> Claim:
    return Claim(f"{measure} {outcome}", "activation_diagnostic", ("activation[1]",), ClaimTest(measure, outcome, margin))


def test_test_claims_are_checked_against_the_adjusted_results() -> None:
    agg = aggregate_report(_set(), [
        _claim("activation[1]:l2_norm", "differs"),
        _claim("stage:prefill:duration_s", "differs"),
        _claim("stage:prefill:duration_s", "does_not_differ"),
        _claim("stage:prefill:duration_s", "does_not_differ", margin=0.01),
        _claim("stage:prefill:duration_s", "does_not_differ", margin=5.0),
        _claim("activation[1]:l2_norm", "does_not_differ"),
        _claim("activation:l2_norm", "differs"),
        _claim("logits:kl_max", "differs"),
        _claim("activation[1]:l2_norm", "maybe"),
    ])
    verdicts = [(c.accepted, c.problems) for c in agg.claims]
    assert verdicts[0] == (True, ())
    assert verdicts[1][1][0].startswith("test: stage:prefill#0:duration_s/measured does not differ at alpha 0.05: "
                                        "holm-adjusted p ")
    assert verdicts[2] == (True, ())
    assert len(verdicts[3][1]) == 1 and "is not within the margin ±0.01" in verdicts[3][1][0]
    assert verdicts[4] == (True, ())
    assert verdicts[5][1] == (f"test: activation[1]@observe#0:l2_norm differs at alpha 0.05: holm-adjusted p "
                              f"{5 * 2 / 256:.4g} (raw p {2 / 256:.4g}, m=5) <= alpha",)
    assert "is ambiguous: it names activation[0]@observe#0:l2_norm, activation[1]@observe#0:l2_norm" in verdicts[6][1][0]
    assert "'logits:kl_max' names no measure of this report" in verdicts[7][1][0]
    assert verdicts[8][1] == ("test outcome 'maybe' is not one of differs, does_not_differ, equivalent",)
    small = aggregate_report(_set(4), [_claim("activation[1]:l2_norm", "differs"),
                                       _claim("activation[1]:l2_norm", "does_not_differ")])
    for chk in small.claims:
        assert chk.problems[0].startswith("test: activation[1]@observe#0:l2_norm was not tested: 4 pairs measured")
    # one pair: a test claim is not checkable there
    base, cand = _set(1)[0]
    (chk,) = check_claim_list([_claim("activation[1]:l2_norm", "differs")], evidence_of(base, cand))
    assert chk.problems == ("a test claim (differs / does_not_differ / equivalent) is checked over a set of pairs "
                            "(an aggregate report), not over one trace or one pair",)


def test_claims_file_with_a_test(tmp_path: Path) -> None:
    doc = {"claims": [
        {"statement": "s", "strength": "activation_diagnostic", "cites": ["activation[1]"],
         "test": {"measure": "activation[1]:l2_norm", "outcome": "differs"}},
        {"statement": "t", "strength": "activation_diagnostic", "cites": ["activation[1]"],
         "test": {"measure": "stage:prefill:duration_s", "outcome": "does_not_differ", "margin": 0.5}},
        {"statement": "plain", "strength": "activation_diagnostic", "cites": ["activation[1]"]},
    ]}
    path = tmp_path / "claims.json"
    path.write_text(json.dumps(doc))
    claims = load_claims(path)
    assert claims[0].test == ClaimTest("activation[1]:l2_norm", "differs")
    assert claims[1].test == ClaimTest("stage:prefill:duration_s", "does_not_differ", 0.5) and claims[2].test is None
    assert claims_to_json(claims) == doc and claims_from_json(claims_to_json(claims)) == claims
    agg = aggregate_report(_set(), claims)
    assert [c.accepted for c in agg.claims] == [True, True, True]
    base = {"statement": "s", "strength": "activation_diagnostic", "cites": ["activation[1]"]}
    for test, words in (
        ("x", "key 'test' must be an object"),
        ({"measure": "a:b"}, "key 'test': missing key 'outcome'"),
        ({"measure": "a:b", "outcome": "differs", "why": 1}, "key 'test': unknown key 'why'"),
        ({"measure": "", "outcome": "differs"}, "'measure' must be a non-empty measure ref"),
        ({"measure": "a:b", "outcome": "same"}, "'outcome' must be one of differs, does_not_differ"),
        ({"measure": "a:b", "outcome": "does_not_differ", "margin": -1}, "'margin' must be a finite number > 0"),
        ({"measure": "a:b", "outcome": "differs", "margin": 1}, "'margin' applies to the outcomes does_not_differ and equivalent"),
        ({"measure": "a:b", "outcome": "equivalent"}, "the outcome equivalent needs a 'margin'"),
    ):
        with pytest.raises(ClaimsFileError, match=re.escape(words)):
            claims_from_json([{**base, "test": test}])


def _meta_trace(tid: str, text: str, meta: dict[str, object] | None, request: bool = True) -> Trace:
    t = _trace(tid, text, norm1=1.0, meta=meta)
    return t if request else Trace(id=tid, request=None, spans=t.spans, artifacts=t.artifacts)


def test_pairing_by_request_metadata() -> None:
    b = [_meta_trace("b0".ljust(32, "0"), "hello", {"prompt_id": "p0"}),
         _meta_trace("b1".ljust(32, "0"), "world", {"prompt_id": "p1"}),
         _meta_trace("b2".ljust(32, "0"), "again", {"prompt_id": "p1"}),       # ambiguous with b1
         _meta_trace("b3".ljust(32, "0"), "lonely", {"prompt_id": "p3"}),
         _meta_trace("b4".ljust(32, "0"), "no id", {"run": 1}),
         _meta_trace("b5".ljust(32, "0"), "no request", None, request=False),
         _meta_trace("b6".ljust(32, "0"), "six", {"prompt_id": 6})]
    c = [_meta_trace("c6".ljust(32, "0"), "six", {"prompt_id": 6}),
         _meta_trace("c0".ljust(32, "0"), "Q: hello", {"prompt_id": "p0"}),   # another template: pairs by id
         _meta_trace("c1".ljust(32, "0"), "world", {"prompt_id": "p1"}),
         _meta_trace("c9".ljust(32, "0"), "nine", {"prompt_id": "p9"}),
         _meta_trace("c0".ljust(32, "0"), "Q: hello", {"prompt_id": "p0"})]   # listed twice
    pairing = pair_traces(b, c, by="metadata.prompt_id")
    assert [(p.index, p.baseline.id[:2], p.candidate.id[:2], p.key) for p in pairing.pairs] == [
        (0, "b0", "c0", 'metadata:{"prompt_id":"p0"}'), (1, "b6", "c6", 'metadata:{"prompt_id":6}')]
    assert pairing.by == ("metadata.prompt_id",) and pairing.rule.startswith("pairs by request metadata metadata.prompt_id")
    assert [(u.side, u.trace_id[:2], u.reason) for u in pairing.unpaired] == [
        ("baseline", "b4", "its request metadata has no 'prompt_id'"),
        ("baseline", "b5", "no request recorded: its metadata is unknown"),
        ("candidate", "c0", "listed more than once on the candidate side"),
        ("baseline", "b1", "ambiguous: 2 baseline and 1 candidate trace(s) carry this metadata"),
        ("baseline", "b2", "ambiguous: 2 baseline and 1 candidate trace(s) carry this metadata"),
        ("baseline", "b3", "no candidate trace carries this metadata"),
        ("candidate", "c1", "ambiguous: 2 baseline and 1 candidate trace(s) carry this metadata"),
        ("candidate", "c9", "no baseline trace carries this metadata"),
    ]
    assert len(pairing.notes) == 1 and pairing.notes[0].startswith("pair 0: paired by metadata; the inputs differ")
    doc = pairing.to_dict()
    assert doc["by"] == ["metadata.prompt_id"] and len(doc["unpaired"]) == 8
    agg = aggregate_report(pairing)
    assert agg.notes == pairing.notes and agg.pairing.rule == pairing.rule
    # by input the same traces pair differently: "Q: hello" finds no partner
    assert [(p.baseline.id[:2], p.candidate.id[:2]) for p in pair_traces(b, c).pairs] == [("b1", "c1"), ("b6", "c6")]
    # a compound key separates repeats
    rep = [_meta_trace(f"a{i}".ljust(32, "0"), "x", {"prompt_id": "p", "repeat": i}) for i in range(2)]
    rc = [_meta_trace(f"e{i}".ljust(32, "0"), "x", {"prompt_id": "p", "repeat": i}) for i in (1, 0)]
    both = pair_traces(rep, rc, by=["metadata.prompt_id", "metadata.repeat"])
    assert [(p.baseline.id[:2], p.candidate.id[:2]) for p in both.pairs] == [("a0", "e0"), ("a1", "e1")]
    assert [u.reason for u in pair_traces(rep, rc, by="metadata.prompt_id").unpaired] == [
        "ambiguous: 2 baseline and 2 candidate trace(s) carry this metadata"] * 4
    for bad in ("prompt_id", "metadata.", ["metadata.a", "metadata.a"], []):
        with pytest.raises(ReportError, match="pair by"):
            pair_traces(rep, rc, by=bad)


def test_markdown_shows_the_tests() -> None:
    agg = aggregate_report(_set(), [_claim("activation[1]:l2_norm", "differs")])
    md = agg.render_markdown()
    assert "## Paired tests (candidate − baseline)" in md
    assert "Test: two-sided sign-flip permutation test of the mean paired difference; exact" in md
    assert "Family: the 5 measure(s) tested; adjusted p-values by Holm" in md
    assert "**differs** = Holm step-down (family-wise error rate)-adjusted p ≤ α = 0.05" in md
    norm = agg.test("activation[1]:l2_norm")
    e = norm.effect
    assert e is not None and (f"| `activation[1]@observe#0:l2_norm` | 8 | {e.mean:.4g} | [{e.ci_low:.4g}, "
                              f"{e.ci_high:.4g}] | {2 / 256:.4g} | {5 * 2 / 256:.4g} |") in md
    assert f"- {CONTENT_UNTESTED}" in md
    assert "(cites `activation[1]`; test: `activation[1]:l2_norm` differs)" in md
    small = aggregate_report(_set(4)).render_markdown()
    assert "| `activation[1]@observe#0:l2_norm` | 4 |" in small and "| – | – | – | not tested |" in small
    assert "- 4 pairs measured: the smallest attainable p is 2^(1-n) = 0.125 > alpha 0.05" in small
    assert not re.search(r"\b(nan|inf)\b", md, re.IGNORECASE)
