"""Per-slot summary statistics on both sides of every pair: paired values a test can compare.

The content measures of ``_measures`` (KL, cosine, relative L2, top-1 agreement) are divergences
*between* the two sides of a pair: they are 0 (or 1) when the sides are equal and otherwise never
negative, so no sign-flip null exists for them. The artifact summaries the executors record
(``mean``, ``std``, ``min``, ``max``, ``l2_norm`` of each artifact) are values of *each* side:
:func:`aggregate_summaries` gives, per artifact slot and statistic, a :class:`SummaryAggregate`
with every pair's (baseline, candidate, delta) from :func:`diff_traces`'s ``summary_deltas`` and
the distribution of the deltas (the effect size and its bootstrap CI). A pair without a value
says why (:class:`NotComputed`): the slot is recorded on one side only or on neither, or the
statistic is absent or not finite on a side. Nothing is imputed.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from vauban_trace.report._diff import SUMMARY_STATS, TraceDiff
from vauban_trace.report._measures import NotComputed, Slot, _slot_absent, _slot_of
from vauban_trace.report._stats import Distribution, distribution_of


@dataclass(frozen=True)
class SummaryAggregate:
    """One summary statistic of one artifact slot on both sides, over the pairs."""

    kind: str
    layer: int | None
    stage: str | None
    position: int
    stat: str
    values: tuple[tuple[int, float, float, float], ...]
    delta: Distribution | None
    not_computed: tuple[NotComputed, ...] = ()

    @property
    def n(self) -> int:
        return len(self.values)

    @property
    def deltas(self) -> tuple[float, ...]:
        return tuple(v[3] for v in self.values)

    def to_dict(self) -> dict[str, Any]:
        return {"kind": self.kind, "layer": self.layer, "stage": self.stage, "position": self.position,
                "stat": self.stat, "n": self.n, "delta": None if self.delta is None else self.delta.to_dict(),
                "values": [{"pair": i, "baseline": b, "candidate": c, "delta": d} for i, b, c, d in self.values],
                "not_computed": [g.to_dict() for g in self.not_computed]}


def aggregate_summaries(diffs: Sequence[TraceDiff], **boot: Any) -> tuple[SummaryAggregate, ...]:
    """Summary statistics per slot over the pairs (see the module docstring); a statistic is listed
    for a slot when at least one pair has it on both sides."""
    slots: dict[Slot, None] = {}
    for d in diffs:
        for p in d.pairs:
            slots.setdefault(_slot_of(p), None)
    out: list[SummaryAggregate] = []
    for slot in slots:
        for stat in SUMMARY_STATS:
            values: list[tuple[int, float, float, float]] = []
            gaps: dict[str, list[int]] = defaultdict(list)
            for i, d in enumerate(diffs):
                pair = next((p for p in d.pairs if _slot_of(p) == slot), None)
                if pair is None:
                    gaps[_slot_absent(slot, d)].append(i)
                    continue
                got = next((s for s in pair.summary_deltas if s.name == stat), None)
                if got is None:
                    notes = [n for n in pair.notes if n.startswith(f"summary {stat} ")]
                    gaps["; ".join(notes) or f"summary {stat} recorded in neither trace"].append(i)
                    continue
                values.append((i, got.baseline, got.candidate, got.delta))
            if not values:
                continue
            out.append(SummaryAggregate(*slot, stat=stat, values=tuple(values),
                                        delta=distribution_of([v[3] for v in values], **boot),
                                        not_computed=tuple(NotComputed(r, tuple(p)) for r, p in gaps.items())))
    return tuple(out)


__all__ = ["SummaryAggregate", "aggregate_summaries"]
