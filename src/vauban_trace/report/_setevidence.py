"""The evidence of a SET of trace pairs: the weakest pair caps it.

:func:`set_evidence` takes the per-pair :class:`~vauban_trace.report.Evidence` of every pair
(``evidence_of(baseline, candidate)``) and says what a claim over the whole set may rest on:

- ``access_level``: the lowest-ranked level among the pairs (ties between levels of one rank,
  e.g. base_and_modified and base_and_transformed, go to the first in the reference order). A
  claim over the set can be no stronger than what every pair supports.
- ``allowed``: the strengths every pair allows (the intersection); ``strongest_claim`` its last.
- ``items``: the slot references (``logits``, ``activation[1]``; see ``_claims``) held by every
  pair: the only things a claim over the set can cite. ``uncitable`` lists each slot that some
  pairs hold and others do not, with the pairs that lack it.
- ``narrowing``: every pair that holds the set below what the other pairs reach (a lower level,
  a strength the others allow, or a slot the others hold), with its own level and the
  limitations that say why (its limitations on the kinds it lacks; ``not held on both sides``
  when the trace recorded no reason).
- ``limitations``: every distinct limitation statement with the pairs it applies to.

:func:`check_set_claims` checks claims over the set exactly as :func:`claim_problems` checks a
pair's claims, against the set's level, allowed strengths and citable slots; an unknown cite is
named with the pairs that lack it.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any

from vauban_trace.report._access import (
    CAN_CLAIM,
    CANNOT_CLAIM,
    AccessLevel,
    ClaimStrength,
    access_rank,
    claim_cap,
    strength_rank,
)
from vauban_trace.report._claims import ClaimCheck, parse_slot_ref, slot_ref
from vauban_trace.report._evidence import Claim, Evidence, EvidenceItem, claim_problems
from vauban_trace.report._pairing import TracePair

_LEVEL_ORDER = {level: i for i, level in enumerate(AccessLevel)}


@dataclass(frozen=True)
class PairLevel:
    """One pair's own evidence level, for the set's record."""

    index: int
    baseline_trace_id: str
    candidate_trace_id: str
    access_level: AccessLevel
    strongest_claim: ClaimStrength | None

    def to_dict(self) -> dict[str, Any]:
        return {"index": self.index, "baseline_trace_id": self.baseline_trace_id,
                "candidate_trace_id": self.candidate_trace_id, "access_level": str(self.access_level),
                "strongest_claim": None if self.strongest_claim is None else str(self.strongest_claim)}


@dataclass(frozen=True)
class Narrowing:
    """A pair that holds the set below what the other pairs reach, and why."""

    pair: PairLevel
    lacks_strengths: tuple[str, ...]
    lacks_refs: tuple[str, ...]
    reasons: tuple[str, ...]

    def to_dict(self) -> dict[str, Any]:
        return {**self.pair.to_dict(), "lacks_strengths": list(self.lacks_strengths),
                "lacks_refs": list(self.lacks_refs), "reasons": list(self.reasons)}


@dataclass(frozen=True)
class Uncitable:
    """A slot some pairs hold and others do not: no claim over the set can cite it."""

    ref: str
    missing_in: tuple[int, ...]

    def to_dict(self) -> dict[str, Any]:
        return {"ref": self.ref, "missing_in": list(self.missing_in)}


@dataclass(frozen=True)
class SetLimitation:
    """A limitation statement and the pairs it applies to."""

    statement: str
    kind: str | None
    side: str
    reason: str
    pairs: tuple[int, ...]

    def to_dict(self) -> dict[str, Any]:
        return {"statement": self.statement, "kind": self.kind, "side": self.side, "reason": self.reason,
                "pairs": list(self.pairs)}


@dataclass(frozen=True)
class SetEvidence:
    """What a claim over a set of pairs may rest on; see the module docstring."""

    pair_count: int
    access_level: AccessLevel
    allowed: tuple[ClaimStrength, ...]
    items: tuple[str, ...]
    per_pair: tuple[PairLevel, ...] = ()
    narrowing: tuple[Narrowing, ...] = ()
    uncitable: tuple[Uncitable, ...] = ()
    limitations: tuple[SetLimitation, ...] = ()

    @property
    def cap(self) -> ClaimStrength:
        return claim_cap(self.access_level)

    @property
    def strongest_claim(self) -> ClaimStrength | None:
        return self.allowed[-1] if self.allowed else None

    def as_evidence(self) -> Evidence:
        """An :class:`Evidence` whose items are the set's slot references (for claim checks)."""
        items = []
        for ref in self.items:
            slot = parse_slot_ref(ref)
            kind, layer = slot if slot is not None else (ref, None)
            items.append(EvidenceItem(ref, ref, "*", "set", kind, layer))
        return Evidence(f"set of {self.pair_count} pairs", "*", self.access_level, self.allowed, tuple(items))

    def to_dict(self) -> dict[str, Any]:
        strongest = self.strongest_claim
        return {
            "pairs": self.pair_count, "access_level": str(self.access_level), "cap": str(self.cap),
            "strongest_claim": None if strongest is None else str(strongest),
            "allowed": [str(s) for s in self.allowed],
            "can_claim": CAN_CLAIM[self.access_level], "cannot_claim": CANNOT_CLAIM[self.access_level],
            "items": list(self.items), "per_pair": [p.to_dict() for p in self.per_pair],
            "narrowing": [n.to_dict() for n in self.narrowing],
            "uncitable": [u.to_dict() for u in self.uncitable],
            "limitations": [lim.to_dict() for lim in self.limitations],
        }


def _refs(ev: Evidence) -> set[str]:
    out: set[str] = set()
    for it in ev.items:
        out.add(it.kind)
        out.add(slot_ref(it.kind, it.layer))
    return out


def set_evidence(pairs: Sequence[TracePair], evidences: Sequence[Evidence]) -> SetEvidence:
    """The evidence of the set (see the module docstring); ``evidences[i]`` is pair ``i``'s."""
    levels = tuple(PairLevel(p.index, p.baseline.id, p.candidate.id, ev.access_level, ev.strongest_claim)
                   for p, ev in zip(pairs, evidences, strict=True))
    weakest = min(levels, key=lambda x: (access_rank(x.access_level), _LEVEL_ORDER[x.access_level]))
    best_rank = max(access_rank(x.access_level) for x in levels)
    allowed_sets = [set(ev.allowed) for ev in evidences]
    common = set.intersection(*allowed_sets)
    union_allowed = set.union(*allowed_sets)
    refs = [_refs(ev) for ev in evidences]
    common_refs, union_refs = set.intersection(*refs), set.union(*refs)
    narrowing: list[Narrowing] = []
    for lvl, ev, mine, allowed in zip(levels, evidences, refs, allowed_sets, strict=True):
        lacks_s = tuple(str(s) for s in ClaimStrength if s in union_allowed - allowed)
        lacks_r = tuple(sorted(union_refs - mine))
        if access_rank(lvl.access_level) == best_rank and not lacks_s and not lacks_r:
            continue
        kinds = {(parse_slot_ref(r) or (r, None))[0] for r in lacks_r}
        reasons = [lim.statement for lim in ev.limitations if lim.kind in kinds and lim.reason != "intervention_bound"]
        reasons += [f"{k}: not held on both sides" for k in sorted(kinds)
                    if not any(lim.kind == k for lim in ev.limitations)]
        if access_rank(lvl.access_level) < best_rank:
            reasons.insert(0, f"its level {lvl.access_level} is below {max_level(levels)} reached by other pairs")
        narrowing.append(Narrowing(lvl, lacks_s, lacks_r, tuple(reasons)))
    uncitable = tuple(
        Uncitable(r, tuple(lvl.index for lvl, mine in zip(levels, refs, strict=True) if r not in mine))
        for r in sorted(union_refs - common_refs)
    )
    lim_pairs: dict[tuple[str, str | None, str, str], list[int]] = defaultdict(list)
    for lvl, ev in zip(levels, evidences, strict=True):
        for lim in ev.limitations:
            key = (lim.statement, lim.kind, lim.side, lim.reason)
            if lvl.index not in lim_pairs[key]:
                lim_pairs[key].append(lvl.index)
    return SetEvidence(
        pair_count=len(levels), access_level=weakest.access_level,
        allowed=tuple(s for s in ClaimStrength if s in common),
        items=tuple(sorted(common_refs)), per_pair=levels, narrowing=tuple(narrowing), uncitable=uncitable,
        limitations=tuple(SetLimitation(k[0], k[1], k[2], k[3], tuple(v)) for k, v in lim_pairs.items()),
    )


def max_level(levels: Iterable[PairLevel]) -> AccessLevel:
    """The highest-ranked level among ``levels``."""
    return max((x.access_level for x in levels), key=lambda a: (access_rank(a), -_LEVEL_ORDER[a]))


def check_set_claims(claims: Iterable[Claim], ev: SetEvidence) -> tuple[ClaimCheck, ...]:
    """A verdict per claim over the set (see the module docstring)."""
    proxy = ev.as_evidence()
    missing = {u.ref: u.missing_in for u in ev.uncitable}
    out: list[ClaimCheck] = []
    for n, claim in enumerate(claims):
        problems = []
        for p in claim_problems(claim, proxy, over_set=True):
            for ref in (claim.cites if isinstance(claim, Claim) else ()):
                if p == f"cites {ref!r}, which is not in the evidence":
                    if ref in missing:
                        p = (f"cites {ref!r}, which is not in the evidence of every pair: missing in pair(s) "
                             + ", ".join(str(i) for i in missing[ref]))
                    elif parse_slot_ref(str(ref)) is None:
                        p = (f"cites {ref!r}, which is not a slot reference (a kind or kind[layer]); a claim "
                             "over a set cites slots held by every pair")
                    else:
                        p = f"cites {ref!r}, which no pair holds on both sides"
            if p.startswith("strength ") and " exceeds the cap " in p and ev.narrowing:
                top = access_rank(max_level(ev.per_pair))
                weakest = [x.pair.index for x in ev.narrowing if access_rank(x.pair.access_level) < top
                           and strength_rank(claim_cap(x.pair.access_level)) < strength_rank(claim.strength)]
                if weakest:
                    p += " (the level of the set; held there by pair(s) " + ", ".join(map(str, weakest)) + ")"
            problems.append(p)
        if isinstance(claim, Claim):
            out.append(ClaimCheck(n, claim, tuple(problems)))
    return tuple(out)


__all__ = ["Narrowing", "PairLevel", "SetEvidence", "SetLimitation", "Uncitable", "check_set_claims",
           "set_evidence"]
