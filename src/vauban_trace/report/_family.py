"""The family of paired tests of one aggregate report, adjusted for multiple comparisons.

::

    fam = agg.tests                               # a TestFamily
    fam.test, fam.correction, fam.alpha, fam.m    # method, adjustment, level, number of tests
    t = fam.get("activation[1]:l2_norm")          # a MeasureTest, by a (possibly shortened) ref
    t.n, t.effect.mean, t.effect.ci_low, t.test.p, t.p_holm, t.p_bh, t.differs, t.reason

What is tested (one :class:`MeasureTest` each, named by its ``ref``):

- every artifact summary statistic of every slot (``_summaries``), on its per-pair deltas:
  ``activation[1]@observe#0:l2_norm``, ``logits@prefill#0:mean``;
- every stage counter per provenance group (``_measures``), on its per-pair deltas:
  ``stage:prefill#0:duration_s/measured``. A group whose two provenances differ (measured against
  declared) is not like for like: it is listed with that reason and not tested.

The content measures (KL, cosine, relative L2, top-1 agreement) are not tested on their own: each
is already a divergence between the two sides of a pair, 0 (cosine and agreement: 1) when they are
equal and otherwise one-signed, so they have no sign-flip null; whether the contents differ at all
is counted exactly per slot (``content_equal`` / ``content_differs``). :data:`CONTENT_UNTESTED`
says so in the report. With reference pairs (the baseline against a rerun, ``_reference``) they are
tested against that noise floor, with refs like ``logits@prefill#0:kl_max``.

A measure is tested when at least the pairs needed to reach ``alpha`` measured it
(:func:`~vauban_trace.report._signif.too_few_pairs`: n >= 6 at 0.05); otherwise ``test`` is None
and ``reason`` says why: no p-value is printed for it and it is not counted in the family. With
``family`` (a list of refs, possibly shortened), only the measures those refs match are tested
and counted; the others are listed as outside the family.

The ``m`` tests with a p-value form the family: each gets its Holm-adjusted (``p_holm``) and
Benjamini-Hochberg-adjusted (``p_bh``) p-value; ``differs`` is whether the adjusted p-value of the
report's ``correction`` is <= ``alpha``.

Refs and patterns: a summary ref is ``KIND[LAYER]@STAGE#POSITION:STAT`` and a counter ref
``stage:STAGE#POSITION:COUNTER/PROVENANCE``. A pattern may leave out ``[LAYER]``, ``@STAGE``,
``#POSITION`` or ``/PROVENANCE`` (any value matches): ``activation[1]:l2_norm``,
``stage:prefill:duration_s``. :meth:`TestFamily.get` needs exactly one match.

Test claims (:class:`~vauban_trace.report.ClaimTest` on a claim, ``"test"`` in a claims file):
``{"measure": REF, "outcome": "differs"}`` is accepted when the measure was tested and its
adjusted p-value is <= alpha; ``"does_not_differ"`` when it was tested and its adjusted p-value
is > alpha (no difference detected: absence of evidence, not equivalence), and, when a
``margin`` is given, the bootstrap CI of its mean delta also lies within [-margin, margin]
(an equivalence statement at the report's CI level). A pattern that matches no measure or
several, and a measure that was not tested, reject the claim with the reason.

``{"measure": REF, "outcome": "equivalent", "margin": X}`` (margin required) is the equivalence
test proper: a TOST (:func:`~vauban_trace.report._signif.tost`) of the measure's per-pair deltas
against ±X. The equivalence claims of one report form their own family: their TOST p-values are
Holm-adjusted together (``m_eq`` of them, whatever the report's ``correction``), and a claim is
accepted when its Holm-adjusted TOST p is <= alpha (:class:`EquivalenceTest`, in
``TestFamily.equivalence``). The TOST runs on any like-for-like measure of the report (also one
outside ``family`` or with too few pairs for the two-sided test); a measure whose pairs can never
reach alpha (``2^-n > alpha``), one not like for like, and a pattern naming no measure or several
reject the claim with the reason and take no part in the adjustment.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from typing import Any

import numpy as np

from vauban_trace._exceptions import ReportError
from vauban_trace.report._measures import CounterAggregate, NotComputed
from vauban_trace.report._signif import (
    CORRECTIONS,
    TESTS,
    PairedTest,
    TostTest,
    adjust,
    holm,
    paired_test,
    too_few_pairs,
    tost,
    tost_too_few_pairs,
)
from vauban_trace.report._stats import Distribution
from vauban_trace.report._summaries import SummaryAggregate

#: Why the content measures carry no test (printed in every report).
CONTENT_UNTESTED = ("content measures (kl_max, kl_mean, top1_agreement, cosine_mean, cosine_min, relative_l2) "
                    "are not tested: each is a divergence between the two sides of a pair, one-signed by "
                    "construction, so it has no sign-flip null; equality is counted exactly per slot")

#: One measure's test input: ref, source, per-pair deltas, effect, not computed, why not tested.
Row = tuple[str, str, tuple[float, ...], Distribution | None, tuple[NotComputed, ...], str | None]

_SUMMARY_RE = re.compile(r"^(?P<kind>[a-z_]+)(?:\[(?P<layer>\d+)\])?(?:@(?P<stage>[^#:/@]+?)(?:#(?P<pos>\d+))?)?"
                         r":(?P<q>[A-Za-z0-9_]+)$")
_COUNTER_RE = re.compile(r"^stage:(?P<stage>[^#:/]+?)(?:#(?P<pos>\d+))?:(?P<q>[A-Za-z0-9_]+)"
                         r"(?:/(?P<prov>[A-Za-z0-9_+]+))?$")


def _parts(ref: str) -> tuple[str, dict[str, str | None]] | None:
    if ref.startswith("stage:"):
        m = _COUNTER_RE.match(ref)
        return None if m is None else ("counter", m.groupdict())
    m = _SUMMARY_RE.match(ref)
    return None if m is None else ("summary", m.groupdict())


def ref_matches(pattern: str, ref: str) -> bool:
    """Whether ``pattern`` (a ref with parts left out) names ``ref``."""
    p, r = _parts(pattern), _parts(ref)
    if p is None or r is None or p[0] != r[0]:
        return False
    return all(v is None or r[1].get(k) == v for k, v in p[1].items())


@dataclass(frozen=True)
class MeasureTest:
    """One measure's paired deltas: effect size with its CI, the test, the adjusted p-values."""

    ref: str
    source: str
    n: int
    effect: Distribution | None
    test: PairedTest | None = None
    reason: str | None = None
    p_holm: float | None = None
    p_bh: float | None = None
    differs: bool | None = None
    not_computed: tuple[NotComputed, ...] = ()
    deltas: tuple[float, ...] = field(default=(), repr=False, compare=False)
    like_for_like: bool = True

    def to_dict(self) -> dict[str, Any]:
        return {"ref": self.ref, "source": self.source, "n": self.n,
                "effect": None if self.effect is None else self.effect.to_dict(),
                "test": None if self.test is None else self.test.to_dict(), "reason": self.reason,
                "p": None if self.test is None else self.test.p, "p_holm": self.p_holm, "p_bh": self.p_bh,
                "differs": self.differs, "not_computed": [g.to_dict() for g in self.not_computed]}


@dataclass(frozen=True)
class EquivalenceTest:
    """One ``equivalent`` claim's TOST: the measure it resolved to, its TOST, the Holm-adjusted p
    over the report's equivalence claims, the verdict, or why no TOST ran (``reason``)."""

    claim_index: int
    measure: str
    margin: float
    ref: str | None = None
    tost: TostTest | None = None
    reason: str | None = None
    p_holm: float | None = None
    m: int = 0
    equivalent: bool | None = None

    def to_dict(self) -> dict[str, Any]:
        return {"claim_index": self.claim_index, "measure": self.measure, "margin": self.margin, "ref": self.ref,
                "tost": None if self.tost is None else self.tost.to_dict(), "reason": self.reason,
                "p": None if self.tost is None else self.tost.p, "p_holm": self.p_holm, "m": self.m,
                "equivalent": self.equivalent}


@dataclass(frozen=True)
class TestFamily:
    """Every paired test of a report and how the family is adjusted (see the module docstring)."""

    __test__ = False  # not a pytest class

    test: str
    correction: str
    alpha: float
    permutations: int
    seed: int
    measures: tuple[MeasureTest, ...] = ()
    family: tuple[str, ...] | None = None
    untested: tuple[str, ...] = (CONTENT_UNTESTED,)
    equivalence: tuple[EquivalenceTest, ...] = ()

    @property
    def tested(self) -> tuple[MeasureTest, ...]:
        return tuple(t for t in self.measures if t.test is not None)

    @property
    def m(self) -> int:
        return len(self.tested)

    @property
    def differing(self) -> tuple[MeasureTest, ...]:
        return tuple(t for t in self.measures if t.differs)

    def find(self, pattern: str) -> tuple[MeasureTest, ...]:
        return tuple(t for t in self.measures if t.ref == pattern or ref_matches(pattern, t.ref))

    def get(self, pattern: str) -> MeasureTest:
        """The one measure ``pattern`` names (KeyError when none or several)."""
        found = self.find(pattern)
        if len(found) != 1:
            raise KeyError(f"{pattern!r} names {len(found)} measures" +
                           (f": {', '.join(t.ref for t in found)}" if found else ""))
        return found[0]

    def to_dict(self) -> dict[str, Any]:
        return {"test": self.test, "method": TESTS[self.test], "correction": self.correction,
                "correction_method": CORRECTIONS[self.correction], "alpha": self.alpha, "m": self.m,
                "permutations": self.permutations, "seed": self.seed,
                "family": None if self.family is None else list(self.family), "untested": list(self.untested),
                "measures": [t.to_dict() for t in self.measures],
                "equivalence": {"correction": "holm", "m": sum(1 for e in self.equivalence if e.tost is not None),
                                "claims": [e.to_dict() for e in self.equivalence]}}


def slot_ref(kind: str, layer: int | None, stage: str | None, position: int, quantity: str) -> str:
    """The ref of one quantity of an artifact slot: ``KIND[LAYER]@STAGE#POSITION:QUANTITY`` (a
    summary statistic, or a content measure against reference pairs); ``-`` for no stage."""
    return kind + ("" if layer is None else f"[{layer}]") + f"@{stage or '-'}#{position}:{quantity}"


def _summary_ref(s: SummaryAggregate) -> str:
    return slot_ref(s.kind, s.layer, s.stage, s.position, s.stat)


def build_family(summaries: Sequence[SummaryAggregate], counters: Sequence[CounterAggregate], *,
                 test: str, correction: str, alpha: float, permutations: int, seed: int,
                 family: Sequence[str] | None = None, content_rows: Sequence[Row] = (),
                 untested: tuple[str, ...] = (CONTENT_UNTESTED,)) -> TestFamily:
    """Test every measure (see the module docstring) and adjust the family; ``content_rows`` are the
    content measures' rows against reference pairs (``_reference``), tested with the others."""
    rows: list[Row] = list(content_rows)
    for s in summaries:
        rows.append((_summary_ref(s), "summary", s.deltas, s.delta, s.not_computed, None))
    for c in counters:
        for g in c.groups:
            prov = g.baseline_provenance if g.like_for_like else f"{g.baseline_provenance}+{g.candidate_provenance}"
            why = None if g.like_for_like else (f"provenances differ ({g.baseline_provenance} baseline, "
                                                f"{g.candidate_provenance} candidate): not like for like, not tested")
            rows.append((f"stage:{c.stage}#{c.position}:{c.counter}/{prov}", "counter", g.deltas, g.delta,
                         c.not_computed, why))
    patterns = None if family is None else tuple(str(f) for f in family)
    if patterns is not None:
        for pat in patterns:
            if _parts(pat) is None:
                raise ReportError(f"family: {pat!r} is not a measure ref (KIND[LAYER]@STAGE#POS:STAT or "
                                  "stage:STAGE#POS:COUNTER/PROVENANCE, parts optional)")
            if not any(ref_matches(pat, r[0]) or pat == r[0] for r in rows):
                raise ReportError(f"family: {pat!r} matches no measure of this report")
    pending: list[tuple[str, str, int, Distribution | None, PairedTest | None, str | None, tuple[NotComputed, ...]]] = []
    comparable = {r[0]: (tuple(float(v) for v in r[2]), r[5] is None) for r in rows}
    for ref, source, values, effect, gaps, why in rows:
        if why is None and patterns is not None and not any(pat == ref or ref_matches(pat, ref) for pat in patterns):
            why = "outside the family given: not tested"
        if why is None:
            why = too_few_pairs(len(values), alpha)
        result = None if why is not None else paired_test(values, test, permutations=permutations, seed=seed)
        pending.append((ref, source, len(values), effect, result, why, gaps))
    ps = np.asarray([r[4].p for r in pending if r[4] is not None], dtype=np.float64)
    p_holm, p_bh = adjust(ps, "holm"), adjust(ps, "bh")
    out: list[MeasureTest] = []
    k = 0
    for ref, source, n, effect, result, why, gaps in pending:
        values_of, like = comparable[ref]
        if result is None:
            out.append(MeasureTest(ref, source, n, effect, None, why, not_computed=gaps, deltas=values_of,
                                   like_for_like=like))
            continue
        ph, pb = float(p_holm[k]), float(p_bh[k])
        k += 1
        chosen = ph if correction == "holm" else pb
        out.append(MeasureTest(ref, source, n, effect, result, None, ph, pb, chosen <= alpha, gaps, values_of, like))
    return TestFamily(test=test, correction=correction, alpha=float(alpha), permutations=permutations, seed=seed,
                      measures=tuple(out), family=patterns, untested=untested)


def with_equivalence(fam: TestFamily, claims: Sequence[tuple[int, Any]]) -> TestFamily:
    """``fam`` with the TOST of each ``(claim index, ClaimTest)`` whose outcome is ``equivalent``,
    Holm-adjusted over those that ran (see the module docstring)."""
    pending: list[EquivalenceTest] = []
    for index, ct in claims:
        if ct.outcome != "equivalent" or ct.margin is None:
            continue
        margin = float(ct.margin)
        found = fam.find(ct.measure)
        why: str | None
        if len(found) != 1:
            why = (f"{ct.measure!r} names no measure of this report" if not found else
                   f"{ct.measure!r} is ambiguous: it names {', '.join(t.ref for t in found)}")
            pending.append(EquivalenceTest(index, ct.measure, margin, reason=why))
            continue
        t = found[0]
        why = (t.reason if not t.like_for_like else
               tost_too_few_pairs(len(t.deltas), fam.alpha) or
               (None if all(np.isfinite(t.deltas)) else "non-finite deltas: not tested"))
        result = None if why is not None else tost(t.deltas, margin, permutations=fam.permutations, seed=fam.seed)
        pending.append(EquivalenceTest(index, ct.measure, margin, t.ref, result, why))
    ran = [e for e in pending if e.tost is not None]
    adj = holm(np.asarray([e.tost.p for e in ran if e.tost is not None], dtype=np.float64))
    by_id = {id(e): (float(a), len(ran)) for e, a in zip(ran, adj, strict=True)}
    out = tuple(replace(e, p_holm=by_id[id(e)][0], m=by_id[id(e)][1], equivalent=by_id[id(e)][0] <= fam.alpha)
                if id(e) in by_id else e for e in pending)
    return replace(fam, equivalence=out)


def _equivalence_problems(index: int | None, fam: TestFamily) -> list[str]:
    found = [e for e in fam.equivalence if e.claim_index == index]
    if not found:
        return ["test: no equivalence test was run for this claim"]
    e = found[0]
    if e.tost is None or e.p_holm is None:
        return [f"test: equivalence within ±{e.margin:g} not tested: {e.reason}"]
    said = (f"Holm-adjusted TOST p {e.p_holm:.4g} (raw p {e.tost.p:.4g} = max(upper {e.tost.p_upper:.4g}, "
            f"lower {e.tost.p_lower:.4g}), m_eq={e.m}, n={e.tost.n}, mean delta {e.tost.mean:.4g})")
    return [] if e.equivalent else [f"test: {e.ref} not shown equivalent within ±{e.margin:g} at alpha "
                                    f"{fam.alpha:g}: {said} > alpha"]


def test_claim_problems(claim_test: Any, fam: TestFamily, index: int | None = None) -> list[str]:
    """Why a claim's test outcome does not hold in ``fam`` (empty when it holds); an ``equivalent``
    claim is looked up by its ``index`` in ``fam.equivalence`` (:func:`with_equivalence`)."""
    pattern, outcome = claim_test.measure, claim_test.outcome
    if outcome == "equivalent":
        return _equivalence_problems(index, fam)
    found = fam.find(pattern)
    if not found:
        return [f"test: {pattern!r} names no measure of this report (refs look like "
                "activation[1]@observe#0:l2_norm or stage:prefill#0:duration_s/measured)"]
    if len(found) > 1:
        return [f"test: {pattern!r} is ambiguous: it names {', '.join(t.ref for t in found)}"]
    t = found[0]
    if t.test is None:
        return [f"test: {t.ref} was not tested: {t.reason}"]
    adjusted = t.p_holm if fam.correction == "holm" else t.p_bh
    said = f"{fam.correction}-adjusted p {adjusted:.4g} (raw p {t.test.p:.4g}, m={fam.m})"
    if outcome == "differs":
        return [] if t.differs else [f"test: {t.ref} does not differ at alpha {fam.alpha:g}: {said} > alpha"]
    out = [] if not t.differs else [f"test: {t.ref} differs at alpha {fam.alpha:g}: {said} <= alpha"]
    margin = claim_test.margin
    if margin is not None:
        e = t.effect
        if e is None or e.ci_low is None or e.ci_high is None:
            out.append(f"test: {t.ref} has no interval of its mean delta to compare with the margin {margin:g}")
        elif not (-margin <= e.ci_low and e.ci_high <= margin):
            out.append(f"test: {t.ref}: the {e.ci_level:.0%} CI of the mean delta [{e.ci_low:.4g}, {e.ci_high:.4g}] "
                       f"is not within the margin ±{margin:g}")
    return out


__all__ = ["CONTENT_UNTESTED", "EquivalenceTest", "MeasureTest", "Row", "TestFamily", "build_family", "ref_matches", "slot_ref",
           "test_claim_problems", "with_equivalence"]
