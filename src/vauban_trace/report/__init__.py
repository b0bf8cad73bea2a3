"""Evidence, claims and diffs: what a trace (or a pair of traces) lets a report say.

This package reads :class:`vauban_trace.contract.Trace` records only (no torch, no OpenTelemetry)
and follows one rule: missing artifacts narrow the claim. Nothing is estimated; a kind or layer
that one side lacks is a stated limitation, never a silent gap.

Access and claims (``_access``)
    :class:`AccessLevel` and :class:`ClaimStrength` are ordered weakest to strongest as in Vauban's
    reference. :data:`CLAIM_CAP` maps each level to the strongest claim it supports;
    :data:`CAN_CLAIM` / :data:`CANNOT_CLAIM` give each level's fixed wording;
    :data:`SUPPORTING_KINDS` says which artifact kinds can carry each strength, and
    :data:`COMPARATIVE` which strengths need two traces.

Evidence and reports (``_evidence``)
    >>> ev = evidence_of(baseline, candidate)          # doctest: +SKIP
    >>> ev.access_level, ev.strongest_claim, ev.items, ev.limitations   # doctest: +SKIP
    >>> report = build_report(baseline, candidate, [
    ...     Claim("steering moved the last-token distribution", "distributional_diff",
    ...           cites=("art-...", "art-..."))])       # doctest: +SKIP
    >>> report.claims, report.problems, report.to_dict(), report.render_markdown()  # doctest: +SKIP

    Claims cite evidence items by ``ref``. :func:`check_claims` lists each claim's problems (a ref
    not in the evidence, a strength above the cap, a comparative strength on one trace, no cited
    kind that can carry the strength); :func:`build_report` never raises on a bad claim: it moves
    it to ``rejected`` with its problems.

Diffs (``_diff``)
    >>> diff = diff_traces(baseline, candidate)         # doctest: +SKIP
    >>> [(p.kind, p.layer, p.identical, p.topk_jaccard) for p in diff.pairs]   # doctest: +SKIP

    Artifacts pair by (kind, layer, producer stage, position); each pair has byte identity (by
    digest), summary deltas, top-k overlap for logits/logprobs, shape/dtype changes; stage
    profiles pair by stage with per-counter deltas carrying both provenances.

Content diffs (``_content``)
    >>> cd = content_diff(diff, store)                  # doctest: +SKIP
    >>> [(p.kind, p.layer, p.kl_max, p.top1_agreement, p.cosine_mean, p.relative_l2, p.reason)
    ...  for p in cd.pairs]                               # doctest: +SKIP

    Reads both blobs of every pair from an artifact store (verified against the digests) and
    measures the change: KL and top-1 agreement for logits/logprobs, cosine and relative L2 for
    tensors, equality for tokens/text. A pair it cannot read or compare gets a ``reason``, never
    a number.

Many pairs (``_pairing``, ``_aggregate``, ``_setevidence``, ``_measures``, ``_stats``)
    >>> pairing = pair_traces(baselines, candidates)   # doctest: +SKIP
    >>> agg = aggregate_report(pairing, claims, blobs=".vauban/blobs", seed=0)   # doctest: +SKIP
    >>> agg.evidence.access_level, agg.evidence.narrowing, agg.measure("logits", "kl_max").distribution
    ... # doctest: +SKIP

    Pairs traces by their request's input, or by request metadata
    (``pair_traces(b, c, by="metadata.prompt_id")``; unpaired and ambiguous traces are reported
    with reasons), caps the set's evidence at its weakest pair (naming the pairs that narrow it),
    gives per-measure distributions over the pairs (n, mean, median, min, max, seeded bootstrap CI
    of the mean) with the pairs where a measure could not be computed and why, stage counter deltas
    grouped by provenance, and checks claims over the set (cites are slot references such as
    ``logits`` or ``activation[1]`` that every pair holds).

Paired tests (``_signif``, ``_summaries``, ``_family``)
    >>> agg = aggregate_report(pairing, test="sign_flip", correction="holm", alpha=0.05)  # doctest: +SKIP
    >>> t = agg.test("activation[1]:l2_norm")          # doctest: +SKIP
    >>> t.n, t.effect.mean, t.effect.ci_low, t.test.p, t.p_holm, t.p_bh, t.differs   # doctest: +SKIP

    Every summary statistic and stage counter with a value on both sides of the pairs gets an
    exact sign-flip (or signed-rank) test of its per-pair deltas, Monte Carlo above 16 pairs; a
    measure measured in too few pairs to reach alpha gets no p-value but a reason. The tests of one
    report are one family, adjusted by Holm and by Benjamini-Hochberg; ``differs`` follows the
    chosen correction at ``alpha``. Content measures (divergences within a pair) are tested only
    against reference pairs (the baseline against a rerun: ``reference=``, ``_reference``);
    without them the report says why they are not. A claim's :class:`ClaimTest` (``differs`` / ``does_not_differ``) is
    checked against the adjusted results; ``equivalent`` (with a required ``margin``) runs a TOST
    (:func:`tost`) of the measure's deltas against ±margin, Holm-adjusted over the report's
    equivalence claims (:class:`EquivalenceTest` in ``agg.tests.equivalence``).

Claims files (``_claims``)
    >>> claims = load_claims("claims.json")            # doctest: +SKIP
    >>> [(c.index, c.accepted, c.problems) for c in check_claim_list(claims, evidence)]  # doctest: +SKIP

    JSON ``{"claims": [{"statement", "strength", "cites"[, "test"]}]}``; :class:`ClaimsFileError`
    names the entry and key at fault.

Every record is a frozen dataclass with a JSON-ready ``to_dict()``. Passing something that is not
a Trace raises :class:`vauban_trace._exceptions.ReportError`. See docs/report.md.
"""

from vauban_trace.report._access import (
    CAN_CLAIM,
    CANNOT_CLAIM,
    CLAIM_CAP,
    COMPARATIVE,
    SUPPORTING_KINDS,
    AccessLevel,
    ClaimStrength,
    access_rank,
    claim_cap,
    strength_rank,
)
from vauban_trace.report._aggregate import NO_CONTENT, AggregateReport, aggregate_report
from vauban_trace.report._claims import (
    ClaimCheck,
    check_claim_list,
    claims_from_json,
    claims_to_json,
    expand_cites,
    load_claims,
    parse_slot_ref,
    slot_ref,
)
from vauban_trace.report._content import ContentDiff, ContentPair, content_diff
from vauban_trace.report._diff import (
    SUMMARY_STATS,
    ArtifactDiff,
    CounterDelta,
    StageDiff,
    StatDelta,
    TraceDiff,
    UnpairedArtifact,
    diff_traces,
)
from vauban_trace.report._evidence import (
    TEST_OUTCOMES,
    Claim,
    ClaimTest,
    Evidence,
    EvidenceItem,
    Limitation,
    Report,
    build_report,
    check_claims,
    claim_problems,
    evidence_of,
)
from vauban_trace.report._family import (
    CONTENT_UNTESTED,
    EquivalenceTest,
    MeasureTest,
    TestFamily,
    ref_matches,
)
from vauban_trace.report._measures import (
    MEASURES,
    CounterAggregate,
    MeasureAggregate,
    NotComputed,
    ProvenanceGroup,
    SlotAggregate,
)
from vauban_trace.report._pairing import (
    PAIRING_RULE,
    Pairing,
    TracePair,
    UnpairedTrace,
    input_key,
    metadata_key,
    pair_traces,
)
from vauban_trace.report._reference import REFERENCE_TESTED
from vauban_trace.report._setevidence import Narrowing, PairLevel, SetEvidence, SetLimitation, Uncitable
from vauban_trace.report._signif import (
    CORRECTIONS,
    EXACT_MAX_N,
    TESTS,
    PairedTest,
    TostTest,
    benjamini_hochberg,
    holm,
    paired_test,
    signflip_pvalues,
    tost,
    tost_pvalues,
)
from vauban_trace.report._stats import Distribution, distribution_of
from vauban_trace.report._summaries import SummaryAggregate

__all__ = [
    "CONTENT_UNTESTED",
    "CORRECTIONS",
    "EXACT_MAX_N",
    "REFERENCE_TESTED",
    "TESTS",
    "TEST_OUTCOMES",
    "ClaimTest",
    "EquivalenceTest",
    "MeasureTest",
    "PairedTest",
    "SummaryAggregate",
    "TestFamily",
    "benjamini_hochberg",
    "holm",
    "metadata_key",
    "paired_test",
    "ref_matches",
    "signflip_pvalues",
    "tost",
    "tost_pvalues",
    "TostTest",
    "CANNOT_CLAIM",
    "CAN_CLAIM",
    "CLAIM_CAP",
    "COMPARATIVE",
    "MEASURES",
    "NO_CONTENT",
    "PAIRING_RULE",
    "SUMMARY_STATS",
    "SUPPORTING_KINDS",
    "AccessLevel",
    "AggregateReport",
    "ArtifactDiff",
    "Claim",
    "ClaimCheck",
    "ClaimStrength",
    "ContentDiff",
    "ContentPair",
    "CounterAggregate",
    "CounterDelta",
    "Distribution",
    "Evidence",
    "EvidenceItem",
    "Limitation",
    "MeasureAggregate",
    "Narrowing",
    "NotComputed",
    "PairLevel",
    "Pairing",
    "ProvenanceGroup",
    "Report",
    "SetEvidence",
    "SetLimitation",
    "SlotAggregate",
    "StageDiff",
    "StatDelta",
    "TraceDiff",
    "TracePair",
    "Uncitable",
    "UnpairedArtifact",
    "UnpairedTrace",
    "access_rank",
    "aggregate_report",
    "build_report",
    "check_claim_list",
    "check_claims",
    "claim_cap",
    "claim_problems",
    "claims_from_json",
    "claims_to_json",
    "content_diff",
    "diff_traces",
    "distribution_of",
    "evidence_of",
    "expand_cites",
    "input_key",
    "load_claims",
    "pair_traces",
    "parse_slot_ref",
    "slot_ref",
    "strength_rank",
]
