"""vauban_trace.report over many pairs, on hand-built Trace records: the pairing rule's keys, counter
deltas kept apart by provenance, the bootstrap distribution, and claims files validated entry by entry."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from vauban_trace._exceptions import ClaimsFileError, ReportError
from vauban_trace.artifacts import compute_digest, encode_json
from vauban_trace.contract import StageProfile, Trace, TraceRequest, TraceSpan
from vauban_trace.report import (
    Claim,
    aggregate_report,
    check_claim_list,
    claims_from_json,
    claims_to_json,
    distribution_of,
    evidence_of,
    expand_cites,
    input_key,
    load_claims,
    pair_traces,
    parse_slot_ref,
)


def _trace(tid: str, request: TraceRequest | None, profile: StageProfile | None = None) -> Trace:
    spans = (TraceSpan(id="root", name="text_completion m"),
             TraceSpan(id="s1", name="prefill", stage="prefill", parent_id="root", profile=profile))
    return Trace(id=tid, request=request, spans=spans)


def _req(**kw: object) -> TraceRequest:
    return TraceRequest(**kw)  # type: ignore[arg-type]


def test_input_keys_link_captured_text_to_its_ref() -> None:
    ref = compute_digest(encode_json("hi"), "blake3")
    text, by_ref = _trace("a" * 32, _req(input_text="hi")), _trace("b" * 32, _req(input_ref=ref))
    assert input_key(text) == input_key(by_ref) == ref
    sha_ref = compute_digest(encode_json("hi"), "sha256")
    pairing = pair_traces([_trace("c" * 32, _req(input_text="hi"))], [_trace("d" * 32, _req(input_ref=sha_ref))])
    assert len(pairing.pairs) == 1 and pairing.pairs[0].key == sha_ref  # the refs' algorithm is followed
    ids = _trace("e" * 32, _req(prompt_ids=(1, 2, 3)))
    chat = _trace("f" * 32, _req(input_text="hi", apply_chat_template=True))
    assert str(input_key(ids)).startswith("prompt_ids:") and input_key(chat) == ref + "+chat"
    pairing = pair_traces([text, ids, chat, _trace("1" * 32, None)],
                          [by_ref, _trace("2" * 32, _req(prompt_ids=(1, 2, 4)))])
    assert [(p.baseline.id, p.candidate.id) for p in pairing.pairs] == [("a" * 32, "b" * 32)]
    assert [(u.side, u.trace_id, u.reason) for u in pairing.unpaired] == [
        ("baseline", "e" * 32, "no candidate trace has this input"),
        ("baseline", "f" * 32, "no candidate trace has this input"),
        ("baseline", "1" * 32, "no request recorded: its input is unknown"),
        ("candidate", "2" * 32, "no baseline trace has this input"),
    ]
    with pytest.raises(ReportError, match=r"baseline traces\[1\]"):
        pair_traces([text, "x"], [])  # type: ignore[list-item]


def _prof(duration: float, provenance: str) -> StageProfile:
    return StageProfile(name="prefill", duration_s=duration, provenance={"duration_s": provenance})


def test_counter_deltas_never_mix_provenances() -> None:
    rows = [(1.0, "measured", 1.5, "measured"), (2.0, "measured", 2.25, "measured"),
            (1.0, "declared", 3.0, "measured"), (1.0, "measured", None, None)]
    pairs = []
    for n, (b, bp, c, cp) in enumerate(rows):
        req = _req(input_text=f"prompt {n}")
        cand = _trace(f"{n + 5:032x}", req, None if c is None else _prof(c, str(cp)))
        pairs.append((_trace(f"{n + 1:032x}", req, _prof(b, bp)), cand))
    agg = aggregate_report(pairs)
    counter = agg.counter("prefill", "duration_s")
    like, unlike = counter.groups
    assert (like.baseline_provenance, like.candidate_provenance, like.like_for_like) == ("measured", "measured", True)
    assert like.pairs == (0, 1) and like.delta.mean == 0.375 and like.delta.min == 0.25 and like.delta.max == 0.5
    assert like.baseline.mean == 1.5 and like.candidate.mean == 1.875
    assert (unlike.baseline_provenance, unlike.like_for_like, unlike.pairs) == ("declared", False, (2,))
    assert unlike.delta.n == 1 and unlike.delta.ci_low is None and unlike.delta.note == "one value: no interval"
    assert [(g.reason, g.pairs) for g in counter.not_computed] == [("stage prefill#0 profiled only in the baseline", (3,))]
    json.dumps(agg.to_dict(), allow_nan=False)


def test_distribution_is_seeded_and_honest() -> None:
    values = [0.1, 0.4, 0.2, 0.9, 0.3]
    d = distribution_of(values, seed=7, resamples=1000, ci_level=0.9)
    assert d is not None and d.n == 5 and d.mean == float(np.mean(values)) and d.median == 0.3
    assert (d.min, d.max) == (0.1, 0.9) and d.ci_low is not None and d.ci_high is not None
    assert d.min <= d.ci_low < d.mean < d.ci_high <= d.max
    rng = np.random.default_rng(7)
    means = np.asarray(values)[rng.integers(0, 5, size=(1000, 5))].mean(axis=1)
    assert d.ci_low == pytest.approx(float(np.quantile(means, 0.05)))
    assert d.ci_high == pytest.approx(float(np.quantile(means, 0.95)))
    assert distribution_of(values, seed=7, resamples=1000, ci_level=0.9) == d
    assert distribution_of([]) is None
    for bad in ({"seed": -1}, {"resamples": 0}, {"ci_level": 1.0}):
        with pytest.raises(ReportError):
            distribution_of(values, **bad)  # type: ignore[arg-type]
    with pytest.raises(ReportError, match="finite"):
        distribution_of([1.0, float("nan")])


GOOD = {"claims": [
    {"statement": "steering moves the distribution", "strength": "distributional_diff", "cites": ["logits"]},
    {"statement": "no cites", "strength": "behavioral_profile", "cites": []},
]}


@pytest.mark.parametrize("doc, words", [
    ("not json {", "not JSON"),
    ({"claims": [], "extra": 1}, "unknown top-level key 'extra'"),
    ({"claim": []}, "unknown top-level key 'claim'"),
    ({"claims": {}}, "key 'claims' must be a list"),
    (3, "expected an object"),
    ({"claims": [GOOD["claims"][0], "text"]}, "claims[1]: must be an object"),
    ({"claims": [{"statement": "s", "strength": "behavioral_profile"}]}, "claims[0] ('s'): missing key 'cites'"),
    ({"claims": [{"statement": "s", "strength": "behavioral_profile", "cites": [], "why": 1}]},
     "claims[0] ('s'): unknown key 'why'"),
    ({"claims": [GOOD["claims"][0], {"statement": "t", "strength": "distributional", "cites": []}]},
     "claims[1] ('t'): key 'strength': 'distributional' is not a claim strength"),
    ({"claims": [{"statement": " ", "strength": "weight_diff", "cites": []}]}, "claims[0]: key 'statement'"),
    ({"claims": [{"statement": "s", "strength": "weight_diff", "cites": "logits"}]}, "key 'cites' must be a list"),
    ([{"statement": "s", "strength": "weight_diff", "cites": ["a", ""]}], "claims[0] ('s'): key 'cites'[1]"),
])
def test_claims_file_errors_name_the_entry_and_key(tmp_path: Path, doc: object, words: str) -> None:
    path = tmp_path / "claims.json"
    path.write_text(doc if isinstance(doc, str) else json.dumps(doc))
    with pytest.raises(ClaimsFileError) as info:
        load_claims(path)
    assert str(info.value).startswith(str(path)) and words in str(info.value)


def test_claims_file_round_trip_and_slot_refs(tmp_path: Path) -> None:
    path = tmp_path / "claims.json"
    path.write_text(json.dumps(GOOD))
    claims = load_claims(path)
    assert claims == (Claim(**GOOD["claims"][0]), Claim(**GOOD["claims"][1]))  # type: ignore[arg-type]
    assert claims_from_json(claims_to_json(claims)) == claims
    assert claims_from_json(GOOD["claims"]) == claims  # a bare list is accepted
    with pytest.raises(ClaimsFileError, match="cannot read"):
        load_claims(tmp_path / "missing.json")
    assert parse_slot_ref("activation[12]") == ("activation", 12) and parse_slot_ref("logits") == ("logits", None)
    assert parse_slot_ref("art-1") is None and parse_slot_ref("logits[x]") is None
    from vauban_trace.contract import TraceArtifact

    def tr(tid: str) -> Trace:
        arts = (TraceArtifact(id=f"{tid[:1]}-logits", kind="logits", producer_span_id="s1",
                              digest="sha256:" + tid[:1] * 64),)
        return Trace(id=tid, request=_req(input_text="x", requested_artifacts=("logits",)),
                     spans=(TraceSpan(id="root", name="r"), TraceSpan(id="s1", name="prefill", parent_id="root")),
                     artifacts=arts)

    ev = evidence_of(tr("a" * 32), tr("b" * 32))
    assert expand_cites(claims[0], ev).cites == ("a-logits", "b-logits")
    (ok, empty) = check_claim_list(claims, ev)
    assert ok.accepted and not empty.accepted and empty.problems == ("cites no evidence",)
