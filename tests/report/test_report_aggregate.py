"""vauban_trace.report over many pairs, on real traces: a tiny llama run through the torch executor on a
handful of prompts, baseline against a steered run (steer at layer 1) and against a second tiny llama
(another init, standing for a fine-tune) whose last prompt recorded logits only."""

from __future__ import annotations

import json
import re
import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest

import vauban_trace as vt
from vauban_trace._exceptions import ReportError
from vauban_trace.contract import Trace
from vauban_trace.executors.torch import TorchExecutor
from vauban_trace.executors.torch.tiny import cached_tiny_model
from vauban_trace.report import (
    MEASURES,
    NO_CONTENT,
    AccessLevel,
    AggregateReport,
    Claim,
    ClaimStrength,
    aggregate_report,
    content_diff,
    diff_traces,
    pair_traces,
)

PROMPTS = ("The quick brown fox jumps over", "hello world", "a cat sat on the mat", "lazy dogs sleep")
EXTRA = "nobody steered this one"
STEER = "steer:layer=1,vector=random:7,alpha=4"


@pytest.fixture(scope="module")
def run(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, Any]]:
    store_dir = tmp_path_factory.mktemp("aggregate-store")
    session: Any = vt.configure(store_dir=store_dir)
    try:
        ex = TorchExecutor.from_pretrained(cached_tiny_model("llama", hidden_size=64, num_layers=2))
        ex.load()
        ft = TorchExecutor.from_pretrained(cached_tiny_model("llama", hidden_size=64, num_layers=2, seed=1))
        ft.load()

        def full(e: TorchExecutor, prompt: str, **kw: Any) -> Trace:
            return e.trace(e.make_request(prompt, layers=(0, 1), logprobs=True, **kw), max_new_tokens=0)

        out: dict[str, Any] = {
            "base": [full(ex, p) for p in PROMPTS],
            "steer": [full(ex, p, interventions=[STEER]) for p in PROMPTS],
            "extra": full(ex, EXTRA),
            "repeat": full(ex, PROMPTS[0]),
            "ft": [full(ft, p) for p in PROMPTS[:3]]
                  + [ft.trace(ft.make_request(PROMPTS[3], logits=True), max_new_tokens=0)],
        }
    finally:
        session.shutdown()
    out["blobs"] = store_dir / "blobs"
    yield out


def test_pairing_by_input_reports_unpaired(run: dict[str, Any]) -> None:
    base, steer = run["base"], run["steer"]
    pairing = pair_traces([*base, run["extra"], run["repeat"]], steer[::-1])
    assert [(p.index, p.baseline.id, p.candidate.id) for p in pairing.pairs] == [
        (i, b.id, s.id) for i, (b, s) in enumerate(zip(base, steer, strict=True))]
    assert all(p.key == p.baseline.request.input_ref == p.candidate.request.input_ref for p in pairing.pairs)
    assert [(u.side, u.trace_id, u.reason) for u in pairing.unpaired] == [
        ("baseline", run["extra"].id, "no candidate trace has this input"),
        ("baseline", run["repeat"].id, "repeat 2 of this input; the candidates have only 1"),
    ]
    again = pair_traces(base[:2], [steer[0], steer[0], steer[2]])
    assert len(again.pairs) == 1 and {(u.side, u.trace_id, u.reason) for u in again.unpaired} == {
        ("candidate", steer[0].id, "listed more than once on the candidate side"),
        ("baseline", base[1].id, "no candidate trace has this input"),
        ("candidate", steer[2].id, "no baseline trace has this input"),
    }
    json.dumps(pairing.to_dict(), allow_nan=False)


def _per_pair(agg: AggregateReport, blobs: Path, kind: str, layer: int | None, measure: str) -> list[float | None]:
    return [getattr(content_diff(diff_traces(p.baseline, p.candidate), blobs).pair(kind, layer), measure)
            for p in agg.pairs]


def test_aggregate_equals_the_per_pair_content_diffs(run: dict[str, Any]) -> None:
    blobs = run["blobs"]
    agg = aggregate_report(pair_traces(run["base"], run["steer"]), blobs=blobs, seed=3, resamples=500)
    assert agg.content_source == f"blobs from {blobs}" and len(agg.pairs) == 4
    for kind, layer in (("logits", None), ("logprobs", None), ("activation", 0), ("activation", 1)):
        for measure in MEASURES:
            if kind == "activation" and measure in ("kl_max", "kl_mean", "top1_agreement"):
                with pytest.raises(KeyError):
                    agg.measure(kind, measure, layer)
                continue
            got = agg.measure(kind, measure, layer)
            expected = _per_pair(agg, blobs, kind, layer, measure)
            assert all(v is not None for v in expected) and got.not_computed == ()
            assert got.values == tuple(enumerate(expected))
            d = got.distribution
            assert d is not None and d.n == 4 and d.seed == 3 and d.resamples == 500
            assert d.mean == float(np.mean(expected)) and d.median == float(np.median(expected))
            assert d.min == min(expected) and d.max == max(expected)
            assert d.ci_low is not None and d.ci_high is not None
            assert d.min <= d.ci_low <= d.ci_high <= d.max
            assert d.ci_low <= d.mean + 1e-12 and d.mean - 1e-12 <= d.ci_high
    kl = agg.measure("logits", "kl_max").distribution
    assert kl is not None and kl.min > 0 and kl.ci_low < kl.ci_high
    # the same seed gives the same interval, another seed another one
    same = aggregate_report(pair_traces(run["base"], run["steer"]), blobs=blobs, seed=3, resamples=500)
    other = aggregate_report(pair_traces(run["base"], run["steer"]), blobs=blobs, seed=4, resamples=500)
    assert same.measure("logits", "kl_max").distribution == kl
    assert other.measure("logits", "kl_max").distribution != kl
    assert agg.slot("activation", 0).identical == 4 and agg.slot("activation", 1).changed == 4
    assert agg.slot("tokens").content_equal == 4
    # stage counters: per pair deltas, measured against measured, kept with their provenance
    prefill = agg.counter("prefill", "duration_s")
    (group,) = prefill.groups
    assert (group.baseline_provenance, group.candidate_provenance, group.like_for_like) == ("measured", "measured", True)
    deltas = [d.stage("prefill").counter("duration_s").delta for d in agg.diffs]
    assert group.pairs == (0, 1, 2, 3) and group.delta.mean == float(np.mean(deltas))
    assert group.delta.min == min(deltas) and group.baseline.n == 4
    assert [(u.reason, u.pairs) for u in agg.unpaired_stages] == [
        ("intervene#0 profiled only in the candidate", (0, 1, 2, 3))]
    assert [(u.reason, u.pairs) for u in agg.unpaired_artifacts] == [
        ("intervention_result[1] (intervene) only in the candidate", (0, 1, 2, 3))]
    assert agg.evidence.access_level == AccessLevel.ACTIVATIONS and agg.evidence.narrowing == ()
    assert {"logits", "logprobs", "activation[0]", "activation[1]", "intervention_result[1]"} <= set(agg.evidence.items)
    doc = json.loads(json.dumps(agg.to_dict(), allow_nan=False))
    (m,) = [m for m in doc["measures"] if (m["kind"], m["measure"]) == ("logits", "kl_max")]
    assert m["distribution"]["mean"] == kl.mean and m["n"] == 4


def test_weakest_pair_caps_the_set(run: dict[str, Any]) -> None:
    pairing = pair_traces(run["base"], run["ft"])
    agg = aggregate_report(pairing, [
        Claim("the fine-tune moves the next-token distribution", "distributional_diff", ("logits",)),
        Claim("the fine-tune moves layer 1", "activation_diagnostic", ("activation[1]",)),
        Claim("cites one pair's artifact", "distributional_diff", (run["base"][0].artifacts_of_kind("logits")[0].id,)),
    ], blobs=run["blobs"])
    ev = agg.evidence
    assert [p.access_level for p in ev.per_pair] == ["activations"] * 3 + ["logprobs"]
    assert ev.access_level == AccessLevel.LOGPROBS and ev.cap == ClaimStrength.DISTRIBUTIONAL_DIFF
    assert ev.strongest_claim == ClaimStrength.DISTRIBUTIONAL_DIFF
    (narrow,) = ev.narrowing
    assert narrow.pair.index == 3 and narrow.lacks_strengths == ("activation_diagnostic",)
    assert {"activation[0]", "activation[1]", "logprobs"} <= set(narrow.lacks_refs)
    assert narrow.reasons[0] == "its level logprobs is below activations reached by other pairs"
    assert any(r.startswith("activation (candidate): not requested") for r in narrow.reasons)
    assert {(u.ref, u.missing_in) for u in ev.uncitable} >= {("activation[1]", (3,)), ("logprobs", (3,))}
    ok, act, concrete = agg.claims
    assert ok.accepted and not act.accepted and not concrete.accepted
    assert act.problems[0] == ("strength activation_diagnostic exceeds the cap distributional_diff of access level "
                               "logprobs (the level of the set; held there by pair(s) 3)")
    assert "cites 'activation[1]', which is not in the evidence of every pair: missing in pair(s) 3" in act.problems
    assert "which is not a slot reference" in concrete.problems[0]
    # pair 3's candidate recorded no activations: the measure says so, it is not imputed
    cos = agg.measure("activation", "cosine_mean", 1)
    assert cos.n == 3 and [(g.reason, g.pairs) for g in cos.not_computed] == [("recorded only in the baseline", (3,))]
    assert agg.measure("logits", "kl_max").n == 4
    json.dumps(agg.to_dict(), allow_nan=False)


def test_without_blobs_nothing_is_measured_or_imputed(run: dict[str, Any]) -> None:
    agg = aggregate_report(pair_traces(run["base"], run["steer"]))
    assert agg.content_source == NO_CONTENT and agg.measures
    for m in agg.measures:
        assert m.n == 0 and m.distribution is None
        assert [(g.reason, g.pairs) for g in m.not_computed] == [(NO_CONTENT, (0, 1, 2, 3))]
    assert agg.slot("activation", 0).identical == 4  # digests need no blobs


def test_an_unreadable_blob_leaves_that_pair_out_with_its_reason(run: dict[str, Any], tmp_path: Path) -> None:
    blobs = tmp_path / "blobs"
    shutil.copytree(run["blobs"], blobs)
    cand = run["steer"][1].artifacts_of_kind("logits")[0].digest
    hexpart = cand.split(":", 1)[1]
    (victim,) = [p for p in blobs.rglob("*") if p.is_file() and hexpart in p.name]
    victim.unlink()
    agg = aggregate_report(pair_traces(run["base"], run["steer"]), blobs=blobs)
    kl = agg.measure("logits", "kl_max")
    assert kl.n == 3 and [i for i, _ in kl.values] == [0, 2, 3]
    (gap,) = kl.not_computed
    assert gap.pairs == (1,) and gap.reason.startswith("candidate blob unreadable")
    assert kl.distribution is not None and kl.distribution.n == 3
    assert agg.measure("logprobs", "kl_max").n == 4


def test_pairs_given_as_tuples_and_bad_arguments(run: dict[str, Any]) -> None:
    base, steer = run["base"], run["steer"]
    agg = aggregate_report([(base[0], steer[0]), (base[1], steer[2])], seed=1)
    assert len(agg.pairs) == 2 and len(agg.notes) == 1 and agg.notes[0].startswith("pair 1: paired as given")
    with pytest.raises(ReportError, match="no trace pairs to aggregate"):
        aggregate_report([])
    with pytest.raises(ReportError, match=f"baseline {run['extra'].id}: no candidate trace has this input"):
        aggregate_report(pair_traces([run["extra"]], steer))
    with pytest.raises(ReportError, match=r"claims\[0\] must be a Claim"):
        aggregate_report([(base[0], steer[0])], ["not a claim"])
    with pytest.raises(ReportError, match="seed"):
        aggregate_report([(base[0], steer[0])], seed=-1)
    with pytest.raises(ReportError, match=r"pairs\[0\]"):
        aggregate_report([base[0]])


def test_markdown_of_a_capped_set(run: dict[str, Any]) -> None:
    agg = aggregate_report(pair_traces([*run["base"], run["extra"]], run["ft"]), [
        Claim("the fine-tune moves layer 1", "activation_diagnostic", ("activation[1]",))], blobs=run["blobs"])
    md = agg.render_markdown()
    assert md.startswith("# Aggregate evidence report\n") and "- access level: **logprobs**" in md
    assert f"- baseline `{run['extra'].id}`: no candidate trace has this input" in md
    assert "- narrowed by pair 3 (logprobs); lacks activation_diagnostic" in md
    kl = agg.measure("logits", "kl_max").distribution
    assert kl is not None and f"| logits (prefill#0) | kl_max | 4 | {kl.mean:.4g} | {kl.median:.4g} |" in md
    assert "- activation[1] (observe#0) cosine_mean: not computed in pair(s) 3: recorded only in the baseline" in md
    assert "- **rejected** [activation_diagnostic] the fine-tune moves layer 1" in md
    assert not re.search(r"\b(nan|inf)\b", md, re.IGNORECASE)
