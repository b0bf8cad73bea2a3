"""Evidence from traces, claims that cite it, and reports that check the claims.

:func:`evidence_of` reads one trace (a snapshot) or a baseline/candidate pair and says what they
support, from what they contain and nothing else:

- evidence items are the artifacts a claim may cite. For a pair, an artifact is an item only when
  both traces recorded its kind (and, for layered kinds, its layer); ``intervention_result``
  artifacts are items from either side, since an intervention runs on one side of a comparison.
  A claim cites an item by its ``ref``: the artifact id, or ``<trace id>/<artifact id>`` when the
  same artifact id occurs in both traces.
- a kind (or layer) recorded on one side only, or requested and missing, is a :class:`Limitation`
  that cites the trace's ``MissingArtifact`` reason and detail, or says it was not requested.
- the access level follows the kinds both sides hold: weight snapshots on both -> base_and_modified
  (base_and_transformed when paired snapshots differ in dtype or shape, as after quantisation);
  activations or intervention results -> activations; logits/logprobs -> logprobs; anything else
  -> paired_outputs. One trace: activations, weights, logprobs or single_snapshot. Evidence never
  yields ``black_box``: a trace cannot show that the models were queried live.
- ``allowed`` lists the strengths at or below the level's cap whose supporting kinds are present
  (comparative strengths only for a pair); ``strongest_claim`` is the last of them.

:class:`Claim` is a statement with a strength and the refs it cites. :func:`check_claims` lists
what is wrong with claims (a ref not in the evidence, a strength above the cap, a comparative
strength on one trace, no cited kind that can carry the strength). :func:`build_report` never
raises on a bad claim: it moves it to ``rejected`` and its problems to ``problems``.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

from vauban_trace._exceptions import ReportError
from vauban_trace.contract import ArtifactKind, Trace, TraceArtifact
from vauban_trace.report._access import (
    CAN_CLAIM,
    CANNOT_CLAIM,
    COMPARATIVE,
    SUPPORTING_KINDS,
    AccessLevel,
    ClaimStrength,
    claim_cap,
    strength_rank,
)

_LAYERED = frozenset({"activation", "weight_snapshot"})


@dataclass(frozen=True)
class EvidenceItem:
    """One artifact a claim may cite, by ``ref``."""

    ref: str
    artifact_id: str
    trace_id: str
    side: str
    kind: str
    layer: int | None = None
    digest: str | None = None

    def to_dict(self) -> dict[str, Any]:
        return {
            "ref": self.ref,
            "artifact_id": self.artifact_id,
            "trace_id": self.trace_id,
            "side": self.side,
            "kind": self.kind,
            "layer": self.layer,
            "digest": self.digest,
        }


@dataclass(frozen=True)
class Limitation:
    """Evidence that is absent or bounded, and why (``reason`` is a MissingReason word,
    ``absent``, ``one_side``, ``incomplete`` or ``intervention_bound``)."""

    kind: str | None
    side: str
    reason: str
    detail: str

    @property
    def statement(self) -> str:
        what = self.kind if self.kind is not None else "trace"
        return f"{what} ({self.side}): {self.reason.replace('_', ' ')}: {self.detail}"

    def to_dict(self) -> dict[str, Any]:
        return {"kind": self.kind, "side": self.side, "reason": self.reason, "detail": self.detail,
                "statement": self.statement}


@dataclass(frozen=True)
class Evidence:
    """What one trace or a trace pair supports; see the module docstring."""

    baseline_trace_id: str
    candidate_trace_id: str | None
    access_level: AccessLevel
    allowed: tuple[ClaimStrength, ...]
    items: tuple[EvidenceItem, ...] = ()
    limitations: tuple[Limitation, ...] = ()

    @property
    def paired(self) -> bool:
        return self.candidate_trace_id is not None

    @property
    def cap(self) -> ClaimStrength:
        return claim_cap(self.access_level)

    @property
    def strongest_claim(self) -> ClaimStrength | None:
        return self.allowed[-1] if self.allowed else None

    def item(self, ref: str) -> EvidenceItem:
        for it in self.items:
            if it.ref == ref:
                return it
        raise KeyError(ref)

    def to_dict(self) -> dict[str, Any]:
        strongest = self.strongest_claim
        return {
            "baseline_trace_id": self.baseline_trace_id,
            "candidate_trace_id": self.candidate_trace_id,
            "access_level": str(self.access_level),
            "cap": str(self.cap),
            "strongest_claim": None if strongest is None else str(strongest),
            "allowed": [str(s) for s in self.allowed],
            "can_claim": CAN_CLAIM[self.access_level],
            "cannot_claim": CANNOT_CLAIM[self.access_level],
            "items": [i.to_dict() for i in self.items],
            "limitations": [lim.to_dict() for lim in self.limitations],
        }


#: What a test claim can say about a measure over a set of pairs.
TEST_OUTCOMES: tuple[str, ...] = ("differs", "does_not_differ", "equivalent")


@dataclass(frozen=True)
class ClaimTest:
    """A claim's statement about a paired test over a set of pairs: the measure (a ref or a
    shortened ref, e.g. ``activation[1]:l2_norm``) ``differs`` or ``does_not_differ`` at the
    report's alpha after its multiple-comparison adjustment; ``margin`` (> 0, optional) also asks
    that the CI of the mean delta lie within [-margin, margin]. ``equivalent`` (``margin`` required)
    is a TOST of the mean delta against ±margin, Holm-adjusted over the report's equivalence
    claims. Checked by ``aggregate_report``."""

    measure: str
    outcome: str
    margin: float | None = None

    def to_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {"measure": self.measure, "outcome": self.outcome}
        if self.margin is not None:
            out["margin"] = self.margin
        return out


@dataclass(frozen=True)
class Claim:
    """A statement of a given strength citing evidence refs, and optionally what a paired test
    over a set of pairs shows (``test``). Never validated on construction: :func:`check_claims`
    says what is wrong with it."""

    statement: str
    strength: str
    cites: tuple[str, ...] = ()
    test: ClaimTest | None = None

    def __post_init__(self) -> None:
        cites: Any = self.cites
        object.__setattr__(self, "cites", (cites,) if isinstance(cites, str) else tuple(cites))
        object.__setattr__(self, "strength", str(self.strength))

    def to_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {"statement": self.statement, "strength": self.strength,
                               "cites": [str(c) for c in self.cites]}
        if self.test is not None:
            out["test"] = self.test.to_dict()
        return out


@dataclass(frozen=True)
class Report:
    """Evidence, the claims it supports, the claims it does not (``rejected``) and why."""

    evidence: Evidence
    claims: tuple[Claim, ...] = ()
    problems: tuple[str, ...] = ()
    rejected: tuple[Claim, ...] = field(default=())

    def to_dict(self) -> dict[str, Any]:
        return {
            "evidence": self.evidence.to_dict(),
            "claims": [c.to_dict() for c in self.claims],
            "rejected": [c.to_dict() for c in self.rejected],
            "problems": list(self.problems),
        }

    def render_markdown(self) -> str:
        ev = self.evidence
        lines = ["# Evidence report", ""]
        lines.append(f"- baseline trace: `{ev.baseline_trace_id}`")
        lines.append(f"- candidate trace: `{ev.candidate_trace_id}`" if ev.paired else "- candidate trace: none")
        lines.append(f"- access level: **{ev.access_level}** (cap: {ev.cap})")
        strongest = ev.strongest_claim
        lines.append(f"- strongest claim supported: {strongest if strongest is not None else 'none'}")
        lines += ["", f"**Can claim:** {CAN_CLAIM[ev.access_level]}", "",
                  f"**Cannot claim:** {CANNOT_CLAIM[ev.access_level]}", "", "## Evidence", ""]
        if ev.items:
            lines += ["| ref | side | kind | layer | digest |", "|---|---|---|---|---|"]
            for it in ev.items:
                layer = "" if it.layer is None else str(it.layer)
                lines.append(f"| `{it.ref}` | {it.side} | {it.kind} | {layer} | `{it.digest or ''}` |")
        else:
            lines.append("No artifact is citable.")
        lines += ["", "## Limitations", ""]
        lines += [f"- {lim.statement}" for lim in ev.limitations] or ["- none recorded"]
        lines += ["", "## Claims", ""]
        for c in self.claims:
            cites = ", ".join(f"`{r}`" for r in c.cites)
            lines.append(f"- [{c.strength}] {c.statement} (cites {cites})")
        if not self.claims:
            lines.append("- no supported claim")
        if self.problems:
            lines += ["", "## Rejected claims", ""]
            lines += [f"- {p}" for p in self.problems]
        return "\n".join(lines) + "\n"


# -- evidence ---------------------------------------------------------------------------------------
def _check_trace(value: object, name: str) -> Trace:
    if not isinstance(value, Trace):
        raise ReportError(f"{name} must be a vauban_trace.contract.Trace, got {type(value).__name__}")
    return value


def _why_absent(trace: Trace, kind: str, layer: int | None = None) -> tuple[str, str]:
    """The reason and detail a trace gives for not holding ``kind`` (at ``layer``)."""
    records = [m for m in trace.missing if m.kind == kind and (layer is None or m.layer in (None, layer))]
    if records:
        m = records[0]
        return m.reason, m.detail or f"recorded as missing ({m.reason})"
    request = trace.request
    if request is None or kind not in request.requested_artifacts:
        return "not_requested", "not requested"
    if layer is not None and layer not in request.collect_layers:
        return "not_requested", f"layer {layer} not requested"
    return "absent", "requested, but neither produced nor recorded as missing"


def _level(kinds: set[str], paired: bool, weights_transformed: bool) -> AccessLevel:
    if paired and "weight_snapshot" in kinds:
        return AccessLevel.BASE_AND_TRANSFORMED if weights_transformed else AccessLevel.BASE_AND_MODIFIED
    if "activation" in kinds or "intervention_result" in kinds:
        return AccessLevel.ACTIVATIONS
    if "weight_snapshot" in kinds:
        return AccessLevel.WEIGHTS
    if "logits" in kinds or "logprobs" in kinds:
        return AccessLevel.LOGPROBS
    return AccessLevel.PAIRED_OUTPUTS if paired else AccessLevel.SINGLE_SNAPSHOT


def _allowed(level: AccessLevel, kinds: set[str], paired: bool) -> tuple[ClaimStrength, ...]:
    cap = strength_rank(claim_cap(level))
    return tuple(
        s for s in ClaimStrength
        if strength_rank(s) <= cap and SUPPORTING_KINDS[s] & kinds and (paired or s not in COMPARATIVE)
    )


def _intervention_limits(sides: Sequence[tuple[str, Trace]]) -> list[Limitation]:
    out = []
    for side, t in sides:
        for iv in t.request.interventions if t.request is not None else ():
            params = ", ".join(f"{k}={v}" for k, v in sorted(iv.params.items()))
            out.append(Limitation("intervention_result", side, "intervention_bound",
                                  f"causal statements are bounded by the intervention run: {iv.name} at "
                                  f"layer {iv.layer_index}" + (f" ({params})" if params else "")))
    return out


def evidence_of(baseline: Trace, candidate: Trace | None = None) -> Evidence:
    """The evidence ``baseline`` (and ``candidate``) support; see the module docstring."""
    _check_trace(baseline, "baseline")
    sides: list[tuple[str, Trace]] = [("baseline", baseline)]
    if candidate is not None:
        sides.append(("candidate", _check_trace(candidate, "candidate")))
    counts = Counter(a.id for _, t in sides for a in t.artifacts)
    limits: list[Limitation] = []
    for side, t in sides:
        if not t.complete:
            limits.append(Limitation(None, side, "incomplete", "; ".join(t.problems) or "rebuilt from partial telemetry"))

    def item(side: str, t: Trace, a: TraceArtifact) -> EvidenceItem:
        ref = a.id if counts[a.id] == 1 else f"{t.id}/{a.id}"
        return EvidenceItem(ref, a.id, t.id, side, a.kind, a.layer, a.digest)

    items: list[EvidenceItem] = []
    kinds: set[str] = set()
    transformed = False
    if candidate is None:
        items = [item("baseline", baseline, a) for a in baseline.artifacts]
        kinds = {a.kind for a in baseline.artifacts}
        limits += [Limitation(m.kind, "baseline", m.reason, m.detail or m.reason) for m in baseline.missing]
    else:
        for kind in (str(k) for k in ArtifactKind):
            per_side = {side: t.artifacts_of_kind(kind) for side, t in sides}
            held = [side for side, arts in per_side.items() if arts]
            if len(held) == 2 or (kind == "intervention_result" and held):
                keep = _common_layers(kind, sides, per_side, limits)
                for side, t in sides:
                    items += [item(side, t, a) for a in per_side[side] if a.layer in keep or kind == "intervention_result"]
                kinds.add(kind)
                if kind == "weight_snapshot":
                    transformed = _weights_transformed(per_side["baseline"], per_side["candidate"])
                continue
            for side, t in sides:
                if side in held:
                    continue
                if held or any(m.kind == kind for m in t.missing):
                    reason, detail = _why_absent(t, kind)
                    if held:
                        detail = f"{detail}; recorded only in the {held[0]}, so it is not compared"
                    limits.append(Limitation(kind, side, reason, detail))
    limits += _intervention_limits(sides)
    level = _level(kinds, candidate is not None, transformed)
    return Evidence(
        baseline_trace_id=baseline.id,
        candidate_trace_id=None if candidate is None else candidate.id,
        access_level=level,
        allowed=_allowed(level, kinds, candidate is not None),
        items=tuple(items),
        limitations=tuple(limits),
    )


def _common_layers(
    kind: str, sides: Sequence[tuple[str, Trace]], per_side: dict[str, tuple[TraceArtifact, ...]],
    limits: list[Limitation],
) -> set[int | None]:
    """Layers of ``kind`` held on both sides; a layer on one side only becomes a limitation."""
    layers = {side: {a.layer for a in per_side[side]} for side, _ in sides}
    common = set.intersection(*layers.values())
    if kind in _LAYERED:
        for side, t in sides:
            for other, _ in sides:
                for layer in sorted(x for x in layers[other] - layers[side] if x is not None):
                    reason, detail = _why_absent(t, kind, layer)
                    limits.append(Limitation(kind, side, reason,
                                             f"layer {layer}: {detail}; recorded only in the {other}"))
    return common


def _weights_transformed(base: Sequence[TraceArtifact], cand: Sequence[TraceArtifact]) -> bool:
    """Paired weight snapshots (same layer and parameter name) whose dtype or shape differ."""
    def key(a: TraceArtifact) -> tuple[int | None, str]:
        return a.layer, str(a.metadata.get("name", a.metadata.get("parameter", "")))

    by_key = {key(a): a for a in base}
    return any(
        (b := by_key.get(key(c))) is not None and (b.dtype != c.dtype or b.shape != c.shape) for c in cand
    )


# -- claims -----------------------------------------------------------------------------------------
def _test_problems(test: Any, over_set: bool) -> list[str]:
    if not isinstance(test, ClaimTest):
        return [f"test must be a ClaimTest, got {type(test).__name__}"]
    out = []
    if test.outcome not in TEST_OUTCOMES:
        out.append(f"test outcome {test.outcome!r} is not one of {', '.join(TEST_OUTCOMES)}")
    margin = test.margin
    if margin is not None and (isinstance(margin, bool) or not isinstance(margin, int | float)
                               or not 0 < margin < float("inf")):
        out.append(f"test margin must be a finite number > 0, got {margin!r}")
    if margin is not None and test.outcome == "differs":
        out.append("test margin applies to the outcomes does_not_differ and equivalent only")
    if margin is None and test.outcome == "equivalent":
        out.append("test outcome equivalent needs a margin > 0 (equivalent within ±margin)")
    if not over_set:
        out.append("a test claim (differs / does_not_differ / equivalent) is checked over a set of pairs "
                   "(an aggregate report), not over one trace or one pair")
    return out


def claim_problems(claim: Claim, evidence: Evidence, *, over_set: bool = False) -> list[str]:
    """What is wrong with ``claim`` against ``evidence`` (empty when it is supported). A claim's
    ``test`` is checked for form here; its outcome only over a set (``over_set``, by
    ``aggregate_report`` against its tests)."""
    if not isinstance(claim, Claim):
        return [f"not a Claim: {type(claim).__name__}"]
    out: list[str] = [] if claim.test is None else _test_problems(claim.test, over_set)
    if not isinstance(claim.statement, str):
        out.append(f"the statement is not text: {type(claim.statement).__name__}")
    elif not claim.statement.strip():
        out.append("the statement is empty")
    try:
        strength = ClaimStrength(claim.strength)
    except ValueError:
        words = ", ".join(str(s) for s in ClaimStrength)
        return [*out, f"strength {claim.strength!r} is not a claim strength ({words})"]
    cap = evidence.cap
    if strength_rank(strength) > strength_rank(cap):
        out.append(f"strength {strength} exceeds the cap {cap} of access level {evidence.access_level}")
    if strength in COMPARATIVE and not evidence.paired:
        out.append(f"strength {strength} compares two models, but the evidence has one trace")
    if not claim.cites:
        out.append("cites no evidence")
        return out
    known = {it.ref: it for it in evidence.items}
    unknown = [r for r in claim.cites if r not in known]
    out += [f"cites {r!r}, which is not in the evidence" for r in unknown]
    cited_kinds = sorted({known[r].kind for r in claim.cites if r in known})
    needed = SUPPORTING_KINDS[strength]
    if cited_kinds and not needed & set(cited_kinds):
        out.append(f"strength {strength} needs evidence of kind {' or '.join(sorted(needed))}; "
                   f"it cites only {', '.join(cited_kinds)}")
    return out


def check_claims(claims: Iterable[Claim], evidence: Evidence) -> list[str]:
    """Every problem of every claim, each prefixed with the claim's position and statement."""
    out: list[str] = []
    for n, claim in enumerate(claims):
        label = f"claim {n}"
        if isinstance(claim, Claim):
            label += f" ({str(claim.statement)[:60]!r})"
        out += [f"{label}: {p}" for p in claim_problems(claim, evidence)]
    return out


def build_report(baseline: Trace, candidate: Trace | None = None, claims: Iterable[Claim] = ()) -> Report:
    """Evidence of the traces plus ``claims`` split into supported and rejected (never raises on a
    bad claim; a non-trace argument is a :class:`ReportError`)."""
    evidence = evidence_of(baseline, candidate)
    kept: list[Claim] = []
    rejected: list[Claim] = []
    problems: list[str] = []
    for n, claim in enumerate(claims):
        found = claim_problems(claim, evidence)
        if not found:
            kept.append(claim)
            continue
        label = f"claim {n}"
        if isinstance(claim, Claim):
            rejected.append(claim)
            label += f" ({str(claim.statement)[:60]!r})"
        problems += [f"{label}: {p}" for p in found]
    return Report(evidence, tuple(kept), tuple(problems), tuple(rejected))


__all__ = [
    "TEST_OUTCOMES",
    "ClaimTest",
    "Claim",
    "Evidence",
    "EvidenceItem",
    "Limitation",
    "Report",
    "build_report",
    "check_claims",
    "claim_problems",
    "evidence_of",
]
