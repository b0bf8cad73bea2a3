"""Reports over many (baseline, candidate) trace pairs: an audit over a set of prompts.

::

    from vauban_trace.report import Claim, aggregate_report, pair_traces
    pairing = pair_traces(baseline_traces, candidate_traces)       # by input; unpaired kept
    # or pair_traces(..., by="metadata.prompt_id"): by request metadata; ambiguous keys listed
    agg = aggregate_report(pairing, claims=[
        Claim("steering moves the next-token distribution", "distributional_diff", ("logits",)),
    ], blobs=".vauban/blobs", seed=0, resamples=2000, ci_level=0.95)
    agg.evidence.access_level, agg.evidence.narrowing                # the weakest pair caps the set
    d = agg.measure("logits", "kl_max").distribution                 # n, mean, median, min, max, CI
    agg.measure("logits", "kl_max").not_computed                     # reasons, never imputed
    agg.counter("prefill", "duration_s").groups                      # one group per provenance pair
    agg.summary("activation", "l2_norm", layer=1).values             # (pair, baseline, candidate, delta)
    t = agg.test("activation[1]:l2_norm")                            # the paired test of one measure
    t.effect, t.test.p, t.p_holm, t.p_bh, t.differs                  # effect + CI, p, adjusted p, verdict
    [(c.claim.statement, c.accepted, c.problems) for c in agg.claims]
    agg.to_dict()                                                    # JSON-ready, no NaN
    agg.render_markdown()                                            # tables for a written report

``pairs`` is a :class:`Pairing` (its unpaired traces are carried into the report), a sequence of
:class:`TracePair`, or a sequence of ``(baseline, candidate)`` Trace tuples (paired as given; a
tuple whose two inputs differ by the pairing rule's key is kept, with a note).

For every pair the report computes :func:`evidence_of`, :func:`diff_traces` and, with ``blobs``,
:func:`content_diff`; then:

- ``evidence``: the :class:`SetEvidence` of the set (the weakest pair caps it; which pairs narrow it
  and why; the slot references every pair holds; see ``_setevidence``);
- ``slots`` and ``measures``: per artifact slot, digest/content equality counts and the
  distribution of each content measure over the pairs, with the pairs where it could not be
  computed and why (``_measures``);
- ``counters``: stage-profile deltas per stage and counter, one distribution per provenance pair;
- ``unpaired_artifacts`` / ``unpaired_stages``: artifacts and profiled stages one side recorded
  without a partner (e.g. a steer's ``intervention_result``), with the pairs where it happens;
- ``summaries``: per artifact slot and summary statistic (mean, std, min, max, l2_norm), each
  pair's baseline and candidate values and the distribution of the deltas (``_summaries``);
- ``tests``: the :class:`TestFamily`: a paired test of "no difference" per summary statistic and
  per like-for-like counter group (``test``: ``sign_flip`` or ``signed_rank``; exact up to 16
  pairs, ``permutations`` Monte Carlo sign flips above), Holm- and BH-adjusted p-values over the
  family (every measure tested, or those ``family`` names), ``differs`` at ``alpha`` by
  ``correction``; too few pairs, unlike provenances and the content measures are listed as not
  tested with the reason (``_family``, ``_signif``); with ``reference`` pairs (the baseline against
  a rerun) the content measures are tested against that noise floor (``_reference``);
- ``claims``: each claim checked against the set like a pair's claims against a pair: its strength
  within the set's cap, its cites slot references held by every pair, one of a kind that carries
  the strength; a claim with a :class:`ClaimTest` also against the adjusted test results.

Distributions carry a percentile-bootstrap interval of the mean with a fixed ``seed`` (``_stats``).
No pairs at all is a :class:`ReportError` (it names the unpaired traces).
"""

from __future__ import annotations

import os
from collections import defaultdict
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any

from vauban_trace._exceptions import ReportError
from vauban_trace.contract import Trace
from vauban_trace.report._claims import ClaimCheck
from vauban_trace.report._content import ContentDiff, _as_store, content_diff
from vauban_trace.report._diff import TraceDiff, diff_traces
from vauban_trace.report._evidence import Claim, ClaimTest, evidence_of
from vauban_trace.report._family import (
    CONTENT_UNTESTED,
    MeasureTest,
    Row,
    TestFamily,
    build_family,
    test_claim_problems,
    with_equivalence,
)
from vauban_trace.report._measures import (
    CounterAggregate,
    MeasureAggregate,
    NotComputed,
    SlotAggregate,
    aggregate_counters,
    aggregate_measures,
)
from vauban_trace.report._pairing import Pairing, TracePair, UnpairedTrace, input_key
from vauban_trace.report._reference import REFERENCE_TESTED, reference_rows
from vauban_trace.report._setevidence import SetEvidence, check_set_claims, set_evidence
from vauban_trace.report._signif import (
    DEFAULT_ALPHA,
    DEFAULT_CORRECTION,
    DEFAULT_PERMUTATIONS,
    DEFAULT_TEST,
    check_test_params,
)
from vauban_trace.report._stats import DEFAULT_CI_LEVEL, DEFAULT_RESAMPLES, DEFAULT_SEED, check_bootstrap
from vauban_trace.report._summaries import SummaryAggregate, aggregate_summaries

NO_CONTENT = "no blob store given: content not measured"


@dataclass(frozen=True)
class AggregateReport:
    """Evidence, measure distributions, counter deltas and claim verdicts over a set of pairs."""

    pairing: Pairing
    evidence: SetEvidence
    slots: tuple[SlotAggregate, ...]
    measures: tuple[MeasureAggregate, ...]
    counters: tuple[CounterAggregate, ...]
    claims: tuple[ClaimCheck, ...] = ()
    unpaired_artifacts: tuple[NotComputed, ...] = ()
    unpaired_stages: tuple[NotComputed, ...] = ()
    content_source: str = NO_CONTENT
    notes: tuple[str, ...] = ()
    seed: int = DEFAULT_SEED
    resamples: int = DEFAULT_RESAMPLES
    ci_level: float = DEFAULT_CI_LEVEL
    diffs: tuple[TraceDiff, ...] = ()
    contents: tuple[ContentDiff | None, ...] = ()
    summaries: tuple[SummaryAggregate, ...] = ()
    tests: TestFamily | None = None

    @property
    def pairs(self) -> tuple[TracePair, ...]:
        return self.pairing.pairs

    @property
    def unpaired(self) -> tuple[UnpairedTrace, ...]:
        return self.pairing.unpaired

    @property
    def accepted(self) -> tuple[ClaimCheck, ...]:
        return tuple(c for c in self.claims if c.accepted)

    @property
    def rejected(self) -> tuple[ClaimCheck, ...]:
        return tuple(c for c in self.claims if not c.accepted)

    def measure(self, kind: str, measure: str, layer: int | None = None, stage: str | None = None,
                position: int = 0) -> MeasureAggregate:
        """The aggregate of ``measure`` at the slot (kind, layer, stage, position); any stage when
        ``stage`` is None (the first in trace order)."""
        for m in self.measures:
            if (m.kind, m.layer, m.measure, m.position) == (kind, layer, measure, position) and \
                    (stage is None or m.stage == stage):
                return m
        raise KeyError((kind, layer, stage, position, measure))

    def slot(self, kind: str, layer: int | None = None, stage: str | None = None, position: int = 0) -> SlotAggregate:
        for s in self.slots:
            if (s.kind, s.layer, s.position) == (kind, layer, position) and (stage is None or s.stage == stage):
                return s
        raise KeyError((kind, layer, stage, position))

    def counter(self, stage: str, counter: str, position: int = 0) -> CounterAggregate:
        for c in self.counters:
            if (c.stage, c.counter, c.position) == (stage, counter, position):
                return c
        raise KeyError((stage, position, counter))

    def test(self, ref: str) -> MeasureTest:
        """The paired test of the one measure ``ref`` names (a ref or a shortened one, e.g.
        ``activation[1]:l2_norm``, ``stage:prefill:duration_s``); KeyError when none or several."""
        if self.tests is None:
            raise KeyError(ref)
        return self.tests.get(ref)

    def summary(self, kind: str, stat: str, layer: int | None = None, stage: str | None = None,
                position: int = 0) -> SummaryAggregate:
        for s in self.summaries:
            if (s.kind, s.layer, s.stat, s.position) == (kind, layer, stat, position) and \
                    (stage is None or s.stage == stage):
                return s
        raise KeyError((kind, layer, stage, position, stat))

    def render_markdown(self) -> str:
        """Pairs, evidence of the set, measure and counter tables, claims (``_aggregate_md``)."""
        from vauban_trace.report._aggregate_md import render_markdown

        return render_markdown(self)

    def to_dict(self) -> dict[str, Any]:
        return {
            "pairing": self.pairing.to_dict(),
            "evidence": self.evidence.to_dict(),
            "content_source": self.content_source,
            "bootstrap": {"seed": self.seed, "resamples": self.resamples, "ci_level": self.ci_level,
                          "method": "percentile bootstrap of the mean"},
            "slots": [s.to_dict() for s in self.slots],
            "measures": [m.to_dict() for m in self.measures],
            "counters": [c.to_dict() for c in self.counters],
            "summaries": [s.to_dict() for s in self.summaries],
            "tests": None if self.tests is None else self.tests.to_dict(),
            "unpaired_artifacts": [u.to_dict() for u in self.unpaired_artifacts],
            "unpaired_stages": [u.to_dict() for u in self.unpaired_stages],
            "claims": [c.to_dict() for c in self.claims],
            "notes": list(self.notes),
        }


def _as_pairing(pairs: Pairing | Sequence[TracePair] | Sequence[tuple[Trace, Trace]]) -> tuple[Pairing, list[str]]:
    if isinstance(pairs, Pairing):
        return pairs, []
    if isinstance(pairs, Trace) or not isinstance(pairs, Iterable):
        raise ReportError(f"pairs must be a Pairing or a list of trace pairs, got {type(pairs).__name__}")
    out: list[TracePair] = []
    notes: list[str] = []
    for n, item in enumerate(pairs):
        if isinstance(item, TracePair):
            out.append(TracePair(n, item.key, item.baseline, item.candidate))
            continue
        if not (isinstance(item, tuple) and len(item) == 2 and all(isinstance(t, Trace) for t in item)):
            raise ReportError(f"pairs[{n}] must be a TracePair or a (baseline Trace, candidate Trace) tuple, "
                              f"got {type(item).__name__}")
        kb, kc = input_key(item[0]), input_key(item[1])
        if kb != kc:
            notes.append(f"pair {n}: paired as given, but the inputs differ by the pairing rule's key ({kb} / {kc})")
        out.append(TracePair(n, kb or "(no request)", item[0], item[1]))
    return Pairing(tuple(out)), notes


def _source_name(value: Any) -> str:
    if isinstance(value, str | os.PathLike):
        return str(value)
    root = getattr(value, "root", None)
    return f"{type(value).__name__}({root})" if root is not None else type(value).__name__


def aggregate_report(
    pairs: Pairing | Sequence[TracePair] | Sequence[tuple[Trace, Trace]],
    claims: Iterable[Claim] = (),
    blobs: Any = None,
    candidate_blobs: Any = None,
    *,
    seed: int = DEFAULT_SEED,
    resamples: int = DEFAULT_RESAMPLES,
    ci_level: float = DEFAULT_CI_LEVEL,
    test: str = DEFAULT_TEST,
    correction: str = DEFAULT_CORRECTION,
    alpha: float = DEFAULT_ALPHA,
    permutations: int = DEFAULT_PERMUTATIONS,
    family: Sequence[str] | None = None,
    reference: Pairing | Sequence[TracePair] | Sequence[tuple[Trace, Trace]] | None = None,
) -> AggregateReport:
    """The report over every pair (see the module docstring). ``blobs`` (a store, path or URL) is
    where both sides' blobs are read, ``candidate_blobs`` the candidate's when elsewhere; without
    ``blobs`` no content is measured and every measure says so. ``test``, ``correction``,
    ``alpha``, ``permutations`` and ``family`` set the paired tests (``_family``); ``reference``
    (pairs of the baseline against a rerun) tests the content measures against that noise floor
    (``_reference``)."""
    check_bootstrap(seed, resamples, ci_level)
    check_test_params(test, correction, alpha, permutations)
    if isinstance(family, str):
        family = [family]
    pairing, notes = _as_pairing(pairs)
    claim_list = list(claims)
    for n, c in enumerate(claim_list):
        if not isinstance(c, Claim):
            raise ReportError(f"claims[{n}] must be a Claim, got {type(c).__name__}")
    if not pairing.pairs:
        left = "; ".join(f"{u.side} {u.trace_id}: {u.reason}" for u in pairing.unpaired) or "no traces given"
        raise ReportError(f"no trace pairs to aggregate ({left})")
    store = None if blobs is None else _as_store(blobs, "blobs")
    cand_store = None if candidate_blobs is None else _as_store(candidate_blobs, "candidate_blobs")
    if store is None and cand_store is not None:
        raise ReportError("candidate_blobs needs blobs (the baseline's store) too")
    evidences = [evidence_of(p.baseline, p.candidate) for p in pairing.pairs]
    diffs = tuple(diff_traces(p.baseline, p.candidate) for p in pairing.pairs)
    contents = tuple(None if store is None else content_diff(d, store, cand_store) for d in diffs)
    source = NO_CONTENT if store is None else "blobs from " + _source_name(blobs) + (
        "" if candidate_blobs is None else f" (candidate: {_source_name(candidate_blobs)})")
    boot: dict[str, Any] = {"seed": seed, "resamples": resamples, "ci_level": ci_level}
    slots, measures = aggregate_measures(diffs, contents, NO_CONTENT, **boot)
    counters = aggregate_counters(diffs, **boot)
    summaries = aggregate_summaries(diffs, **boot)
    content_rows: list[Row] = []
    untested: tuple[str, ...] = (CONTENT_UNTESTED,)
    if reference is not None:
        ref_pairing, ref_notes = _as_pairing(reference)
        notes += [f"reference {n}" for n in ref_notes]
        notes += [f"reference: unpaired {u.side} {u.trace_id}: {u.reason}" for u in ref_pairing.unpaired]
        content_rows = reference_rows(measures, pairing.pairs, ref_pairing, store, NO_CONTENT, **boot)
        untested = (REFERENCE_TESTED,)
    tests = build_family(summaries, counters, test=test, correction=correction, alpha=alpha,
                         permutations=permutations, seed=seed, family=family, content_rows=content_rows,
                         untested=untested)
    ev = set_evidence(pairing.pairs, evidences)
    set_checks = check_set_claims(claim_list, ev)
    testable = [chk for chk in set_checks if chk.claim.test is not None and isinstance(chk.claim.test, ClaimTest)
                and not any(p.startswith("test ") for p in chk.problems)]
    tests = with_equivalence(tests, [(chk.index, chk.claim.test) for chk in testable])
    checks = tuple(
        ClaimCheck(chk.index, chk.claim, chk.problems + tuple(test_claim_problems(chk.claim.test, tests, chk.index)))
        if any(chk is t for t in testable) else chk
        for chk in set_checks)
    lonely_arts: dict[str, list[int]] = defaultdict(list)
    lonely_stages: dict[str, list[int]] = defaultdict(list)
    for i, d in enumerate(diffs):
        for u in d.unpaired:
            where = u.kind + ("" if u.layer is None else f"[{u.layer}]") + f" ({u.stage or '-'})"
            lonely_arts[f"{where} only in the {u.side}"].append(i)
        for line in d.unpaired_stages:
            lonely_stages[line].append(i)
    return AggregateReport(
        pairing=pairing, evidence=ev, slots=slots, measures=measures, counters=counters,
        claims=checks, summaries=summaries, tests=tests,
        unpaired_artifacts=tuple(NotComputed(k, tuple(dict.fromkeys(v))) for k, v in lonely_arts.items()),
        unpaired_stages=tuple(NotComputed(k, tuple(v)) for k, v in lonely_stages.items()),
        content_source=source, notes=(*pairing.notes, *notes),
        seed=seed, resamples=resamples, ci_level=float(ci_level), diffs=diffs, contents=contents,
    )


__all__ = ["NO_CONTENT", "AggregateReport", "aggregate_report"]
