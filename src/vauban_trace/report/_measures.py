"""Per-measure distributions over trace pairs: content measures per artifact slot, and stage counters.

An artifact *slot* is the pairing key of :func:`vauban_trace.report.diff_traces`: (kind, layer,
producer stage, position). The slots of a set are every slot paired in at least one trace pair.

:func:`aggregate_measures` gives, for each slot and each content measure that applies to it
(``kl_max``, ``kl_mean``, ``top1_agreement`` for logits and logprobs; ``cosine_mean``,
``cosine_min``, ``relative_l2`` for activations, weight snapshots, logits and logprobs, and for any
other kind once one pair measured them), a :class:`MeasureAggregate`: the value of every pair that
measured it (with the pair's index), their :class:`~vauban_trace.report.Distribution`, and for
every other pair a :class:`NotComputed` reason. Reasons come from the records: the pair has no
content measured (no blob store), the slot is recorded on one side only or on neither, the blob
could not be read or compared (the :class:`ContentPair` reason), or the measure was left out (its
notes, e.g. logprobs of generated tokens are not a distribution). Nothing is imputed.
:class:`SlotAggregate` counts per slot how many pairs have identical bytes, changed bytes, equal or
different decoded contents.

:func:`aggregate_counters` does the same for the stage-profile counter deltas of
:func:`diff_traces`: per (stage, position, counter), the pairs are grouped by their
(baseline provenance, candidate provenance), so measured and declared values are never mixed in
one distribution; a group whose provenances differ is flagged ``like_for_like = False``. Pairs
where the stage or the counter is profiled on one side only, or on neither, are NotComputed.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from vauban_trace.contract import COUNTER_NAMES
from vauban_trace.report._content import ContentDiff, ContentPair
from vauban_trace.report._diff import TraceDiff
from vauban_trace.report._stats import Distribution, distribution_of

#: Content measures aggregated over pairs (fields of ContentPair).
MEASURES: tuple[str, ...] = ("kl_max", "kl_mean", "top1_agreement", "cosine_mean", "cosine_min", "relative_l2")
_DISTRIBUTION_MEASURES = ("kl_max", "kl_mean", "top1_agreement")
_TENSOR_MEASURES = ("cosine_mean", "cosine_min", "relative_l2")
_DISTRIBUTION_KINDS = frozenset({"logits", "logprobs"})
_TENSOR_KINDS = frozenset({"activation", "weight_snapshot", "logits", "logprobs"})

_NOTE_WORDS = {"kl_max": "KL", "kl_mean": "KL", "cosine_mean": "cosine", "cosine_min": "cosine",
               "relative_l2": "relative L2"}

Slot = tuple[str, int | None, str | None, int]


@dataclass(frozen=True)
class NotComputed:
    """Pairs where a measure could not be computed, with the reason (never imputed)."""

    reason: str
    pairs: tuple[int, ...]

    @property
    def count(self) -> int:
        return len(self.pairs)

    def to_dict(self) -> dict[str, Any]:
        return {"reason": self.reason, "count": self.count, "pairs": list(self.pairs)}


def _not_computed(gaps: dict[str, list[int]]) -> tuple[NotComputed, ...]:
    return tuple(NotComputed(reason, tuple(pairs)) for reason, pairs in gaps.items())


@dataclass(frozen=True)
class MeasureAggregate:
    """One content measure of one artifact slot over the pairs."""

    kind: str
    layer: int | None
    stage: str | None
    position: int
    measure: str
    values: tuple[tuple[int, float], ...]
    distribution: Distribution | None
    not_computed: tuple[NotComputed, ...] = ()

    @property
    def n(self) -> int:
        return len(self.values)

    def to_dict(self) -> dict[str, Any]:
        return {"kind": self.kind, "layer": self.layer, "stage": self.stage, "position": self.position,
                "measure": self.measure, "n": self.n,
                "distribution": None if self.distribution is None else self.distribution.to_dict(),
                "values": [{"pair": i, "value": v} for i, v in self.values],
                "not_computed": [g.to_dict() for g in self.not_computed]}


@dataclass(frozen=True)
class SlotAggregate:
    """How the pairs of one artifact slot compare, by digest and by decoded content."""

    kind: str
    layer: int | None
    stage: str | None
    position: int
    paired: int
    identical: int
    changed: int
    identity_unknown: int
    content_equal: int
    content_differs: int
    absent: tuple[NotComputed, ...] = ()

    def to_dict(self) -> dict[str, Any]:
        return {"kind": self.kind, "layer": self.layer, "stage": self.stage, "position": self.position,
                "paired": self.paired, "identical": self.identical, "changed": self.changed,
                "identity_unknown": self.identity_unknown, "content_equal": self.content_equal,
                "content_differs": self.content_differs, "absent": [g.to_dict() for g in self.absent]}


@dataclass(frozen=True)
class ProvenanceGroup:
    """Counter values of the pairs whose two provenances are these: never mixed with other groups."""

    baseline_provenance: str
    candidate_provenance: str
    pairs: tuple[int, ...]
    delta: Distribution
    baseline: Distribution
    candidate: Distribution
    deltas: tuple[float, ...] = ()

    @property
    def like_for_like(self) -> bool:
        return self.baseline_provenance == self.candidate_provenance

    def to_dict(self) -> dict[str, Any]:
        return {"baseline_provenance": self.baseline_provenance, "candidate_provenance": self.candidate_provenance,
                "like_for_like": self.like_for_like, "pairs": list(self.pairs), "deltas": list(self.deltas),
                "delta": self.delta.to_dict(),
                "baseline": self.baseline.to_dict(), "candidate": self.candidate.to_dict()}


@dataclass(frozen=True)
class CounterAggregate:
    """One stage-profile counter over the pairs, one group per provenance pair."""

    stage: str
    position: int
    counter: str
    groups: tuple[ProvenanceGroup, ...]
    not_computed: tuple[NotComputed, ...] = ()

    def to_dict(self) -> dict[str, Any]:
        return {"stage": self.stage, "position": self.position, "counter": self.counter,
                "groups": [g.to_dict() for g in self.groups],
                "not_computed": [g.to_dict() for g in self.not_computed]}


def _slot_of(p: Any) -> Slot:
    return (p.kind, p.layer, p.stage, p.position)


def _slot_absent(slot: Slot, diff: TraceDiff) -> str:
    sides = [u.side for u in diff.unpaired if (u.kind, u.layer, u.stage) == slot[:3]]
    if sides:
        return f"recorded only in the {sides[0]}" if len(set(sides)) == 1 else "not paired at this position"
    return "recorded in neither trace of the pair"


def _gap(slot: Slot, measure: str, diff: TraceDiff, cp: ContentPair | None, content_missing: str) -> str:
    """Why pair ``diff`` has no value of ``measure`` at ``slot``."""
    if not any(_slot_of(p) == slot for p in diff.pairs):
        return _slot_absent(slot, diff)
    if cp is None:
        return content_missing
    if cp.reason is not None:
        return cp.reason
    word = _NOTE_WORDS.get(measure, "")
    notes = [n for n in cp.notes if word and word in n] or list(cp.notes)
    if notes:
        return "; ".join(notes)
    return f"{measure} does not apply to this pair's contents"


def aggregate_measures(diffs: Sequence[TraceDiff], contents: Sequence[ContentDiff | None], content_missing: str,
                       **boot: Any) -> tuple[tuple[SlotAggregate, ...], tuple[MeasureAggregate, ...]]:
    """Slot summaries and measure distributions over the pairs (see the module docstring);
    ``content_missing`` is the reason given when a pair's content was not measured."""
    slots: dict[Slot, None] = {}
    for d in diffs:
        for p in d.pairs:
            slots.setdefault(_slot_of(p), None)
    by_pair = [{} if c is None else {_slot_of(p): p for p in c.pairs} for c in contents]
    slot_out: list[SlotAggregate] = []
    measure_out: list[MeasureAggregate] = []
    for slot in slots:
        paired = [(i, next(p for p in d.pairs if _slot_of(p) == slot)) for i, d in enumerate(diffs)
                  if any(_slot_of(p) == slot for p in d.pairs)]
        absent: dict[str, list[int]] = defaultdict(list)
        for i, d in enumerate(diffs):
            if all(j != i for j, _ in paired):
                absent[_slot_absent(slot, d)].append(i)
        cps = [by_pair[i].get(slot) for i, _ in paired]
        slot_out.append(SlotAggregate(
            *slot, paired=len(paired), identical=sum(1 for _, p in paired if p.identical is True),
            changed=sum(1 for _, p in paired if p.identical is False),
            identity_unknown=sum(1 for _, p in paired if p.identical is None),
            content_equal=sum(1 for c in cps if c is not None and c.equal is True),
            content_differs=sum(1 for c in cps if c is not None and c.equal is False),
            absent=_not_computed(absent)))
        for measure in MEASURES:
            values = [(i, float(v)) for i in range(len(diffs))
                      if (cp := by_pair[i].get(slot)) is not None and (v := getattr(cp, measure)) is not None]
            applies = (slot[0] in _DISTRIBUTION_KINDS if measure in _DISTRIBUTION_MEASURES
                       else slot[0] in _TENSOR_KINDS) or bool(values)
            if not applies:
                continue
            have = {i for i, _ in values}
            gaps: dict[str, list[int]] = defaultdict(list)
            for i, d in enumerate(diffs):
                if i not in have:
                    gaps[_gap(slot, measure, d, by_pair[i].get(slot), content_missing)].append(i)
            measure_out.append(MeasureAggregate(*slot, measure=measure, values=tuple(values),
                                                distribution=distribution_of([v for _, v in values], **boot),
                                                not_computed=_not_computed(gaps)))
    return tuple(slot_out), tuple(measure_out)


def aggregate_counters(diffs: Sequence[TraceDiff], **boot: Any) -> tuple[CounterAggregate, ...]:
    """Stage counter deltas over the pairs, grouped by provenance (see the module docstring)."""
    keys: dict[tuple[str, int, str], None] = {}
    for d in diffs:
        for s in d.stages:
            for c in s.counters:
                keys.setdefault((s.stage, s.position, c.counter), None)
            for name in COUNTER_NAMES:
                if any(n.startswith(f"{name} recorded only in the ") for n in s.notes):
                    keys.setdefault((s.stage, s.position, name), None)
    out: list[CounterAggregate] = []
    for stage, position, counter in keys:
        groups: dict[tuple[str, str], list[tuple[int, float, float, float]]] = defaultdict(list)
        gaps: dict[str, list[int]] = defaultdict(list)
        for i, d in enumerate(diffs):
            sd = next((s for s in d.stages if (s.stage, s.position) == (stage, position)), None)
            if sd is None:
                lonely = [u for u in d.unpaired_stages if u.startswith(f"{stage}#{position} ")]
                gaps[f"stage {lonely[0]}" if lonely else f"stage {stage}#{position} profiled in neither trace"].append(i)
                continue
            cd = next((c for c in sd.counters if c.counter == counter), None)
            if cd is None:
                notes = [n for n in sd.notes if n.startswith(f"{counter} recorded only in the ")]
                gaps[notes[0] if notes else f"{counter} recorded in neither trace"].append(i)
                continue
            groups[(cd.baseline_provenance, cd.candidate_provenance)].append((i, cd.delta, cd.baseline, cd.candidate))
        made = []
        for (bp, cp), rows in groups.items():
            dists = [distribution_of([r[k] for r in rows], **boot) for k in (1, 2, 3)]
            assert dists[0] is not None and dists[1] is not None and dists[2] is not None
            made.append(ProvenanceGroup(bp, cp, tuple(r[0] for r in rows), dists[0], dists[1], dists[2],
                                        tuple(r[1] for r in rows)))
        out.append(CounterAggregate(stage, position, counter, tuple(made), _not_computed(gaps)))
    return tuple(out)


__all__ = ["MEASURES", "CounterAggregate", "MeasureAggregate", "NotComputed", "ProvenanceGroup", "SlotAggregate",
           "aggregate_counters", "aggregate_measures"]
