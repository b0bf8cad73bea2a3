"""Compare two traces artifact by artifact and stage by stage, using only what both recorded.

:func:`diff_traces` pairs artifacts by ``(kind, layer, producer stage, position)``: the producer
stage is the producing span's ``stage`` (its name when it has none; ``(root)`` for the root span,
whose name carries the model), and the position counts artifacts with equal keys in trace order.
Per pair it reports:

- ``identical``: whether the digests are equal, i.e. the stored bytes are identical (``None`` when a
  digest is absent on either side or the two use different hash algorithms: nothing is assumed);
- ``summary_deltas``: candidate minus baseline for each of mean, std, min, max, l2_norm present and
  finite on both sides;
- ``topk_jaccard``: for logits and logprobs, |A & B| / |A | B| of the two ``topk_ids`` sets;
- shape and dtype, and whether they changed.

Artifacts without a partner are listed in ``unpaired``. Stages are paired the same way (stage
name, position); for each pair every StageProfile counter present on both sides gives a
:class:`CounterDelta` carrying both provenances. When the provenances differ (say, measured
against declared), ``like_for_like`` is false and the note says so; a counter recorded on one
side only is a note, never a delta. Nothing is estimated.
"""

from __future__ import annotations

import math
from collections import Counter
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from vauban_trace._exceptions import ReportError
from vauban_trace.contract import COUNTER_NAMES, StageProfile, Trace, TraceArtifact, TraceSpan

#: Numeric summary statistics compared across a pair.
SUMMARY_STATS: tuple[str, ...] = ("mean", "std", "min", "max", "l2_norm")
_TOPK_KINDS = frozenset({"logits", "logprobs"})


@dataclass(frozen=True)
class StatDelta:
    """One statistic on both sides; ``delta`` is candidate minus baseline."""

    name: str
    baseline: float
    candidate: float
    delta: float

    def to_dict(self) -> dict[str, Any]:
        return {"name": self.name, "baseline": self.baseline, "candidate": self.candidate, "delta": self.delta}


@dataclass(frozen=True)
class ArtifactDiff:
    """One paired artifact: baseline against candidate."""

    kind: str
    layer: int | None
    stage: str | None
    position: int
    baseline_id: str
    candidate_id: str
    baseline_digest: str | None
    candidate_digest: str | None
    identical: bool | None
    baseline_shape: tuple[int, ...]
    candidate_shape: tuple[int, ...]
    baseline_dtype: str | None
    candidate_dtype: str | None
    summary_deltas: tuple[StatDelta, ...] = ()
    topk_jaccard: float | None = None
    notes: tuple[str, ...] = ()

    @property
    def shape_changed(self) -> bool:
        return self.baseline_shape != self.candidate_shape

    @property
    def dtype_changed(self) -> bool:
        return self.baseline_dtype != self.candidate_dtype

    def delta(self, name: str) -> StatDelta:
        for d in self.summary_deltas:
            if d.name == name:
                return d
        raise KeyError(name)

    def to_dict(self) -> dict[str, Any]:
        return {
            "kind": self.kind,
            "layer": self.layer,
            "stage": self.stage,
            "position": self.position,
            "baseline_id": self.baseline_id,
            "candidate_id": self.candidate_id,
            "baseline_digest": self.baseline_digest,
            "candidate_digest": self.candidate_digest,
            "identical": self.identical,
            "baseline_shape": list(self.baseline_shape),
            "candidate_shape": list(self.candidate_shape),
            "shape_changed": self.shape_changed,
            "baseline_dtype": self.baseline_dtype,
            "candidate_dtype": self.candidate_dtype,
            "dtype_changed": self.dtype_changed,
            "summary_deltas": [d.to_dict() for d in self.summary_deltas],
            "topk_jaccard": self.topk_jaccard,
            "notes": list(self.notes),
        }


@dataclass(frozen=True)
class UnpairedArtifact:
    """An artifact with no partner on the other side."""

    side: str
    artifact_id: str
    kind: str
    layer: int | None
    stage: str | None

    def to_dict(self) -> dict[str, Any]:
        return {"side": self.side, "artifact_id": self.artifact_id, "kind": self.kind,
                "layer": self.layer, "stage": self.stage}


@dataclass(frozen=True)
class CounterDelta:
    """One StageProfile counter on both sides, with how each value was obtained."""

    counter: str
    baseline: float
    candidate: float
    delta: float
    baseline_provenance: str
    candidate_provenance: str

    @property
    def like_for_like(self) -> bool:
        return self.baseline_provenance == self.candidate_provenance

    @property
    def note(self) -> str:
        if self.like_for_like:
            return ""
        return (f"{self.counter}: a {self.baseline_provenance} baseline value against a "
                f"{self.candidate_provenance} candidate value, not like for like")

    def to_dict(self) -> dict[str, Any]:
        return {"counter": self.counter, "baseline": self.baseline, "candidate": self.candidate,
                "delta": self.delta, "baseline_provenance": self.baseline_provenance,
                "candidate_provenance": self.candidate_provenance, "like_for_like": self.like_for_like,
                "note": self.note}


@dataclass(frozen=True)
class StageDiff:
    """One paired stage: counter deltas, and notes on counters held by one side only."""

    stage: str
    position: int
    baseline_span_id: str
    candidate_span_id: str
    counters: tuple[CounterDelta, ...] = ()
    notes: tuple[str, ...] = ()

    def counter(self, name: str) -> CounterDelta:
        for c in self.counters:
            if c.counter == name:
                return c
        raise KeyError(name)

    def to_dict(self) -> dict[str, Any]:
        return {"stage": self.stage, "position": self.position, "baseline_span_id": self.baseline_span_id,
                "candidate_span_id": self.candidate_span_id,
                "counters": [c.to_dict() for c in self.counters], "notes": list(self.notes)}


@dataclass(frozen=True)
class TraceDiff:
    """Everything :func:`diff_traces` compared, and what it could not pair."""

    baseline_trace_id: str
    candidate_trace_id: str
    pairs: tuple[ArtifactDiff, ...] = ()
    unpaired: tuple[UnpairedArtifact, ...] = ()
    stages: tuple[StageDiff, ...] = ()
    unpaired_stages: tuple[str, ...] = ()

    def pairs_of_kind(self, kind: str) -> tuple[ArtifactDiff, ...]:
        return tuple(p for p in self.pairs if p.kind == kind)

    def stage(self, name: str, position: int = 0) -> StageDiff:
        for s in self.stages:
            if s.stage == name and s.position == position:
                return s
        raise KeyError(name)

    def to_dict(self) -> dict[str, Any]:
        return {
            "baseline_trace_id": self.baseline_trace_id,
            "candidate_trace_id": self.candidate_trace_id,
            "pairs": [p.to_dict() for p in self.pairs],
            "unpaired": [u.to_dict() for u in self.unpaired],
            "stages": [s.to_dict() for s in self.stages],
            "unpaired_stages": list(self.unpaired_stages),
        }


# -- helpers ----------------------------------------------------------------------------------------
def _stage_of_span(span: TraceSpan) -> str:
    if span.parent_id is None:
        return "(root)"
    return span.stage or span.name


def _producer_stage(trace: Trace, art: TraceArtifact) -> str | None:
    try:
        return _stage_of_span(trace.span(art.producer_span_id))
    except KeyError:
        return None


def _keyed_artifacts(trace: Trace) -> dict[tuple[str, int | None, str | None, int], TraceArtifact]:
    seen: Counter[tuple[str, int | None, str | None]] = Counter()
    out = {}
    for art in trace.artifacts:
        base = (art.kind, art.layer, _producer_stage(trace, art))
        out[(*base, seen[base])] = art
        seen[base] += 1
    return out


def _number(value: object) -> float | None:
    if isinstance(value, bool) or not isinstance(value, int | float):
        return None
    return float(value)


def _summary_deltas(b: Mapping[str, Any], c: Mapping[str, Any], notes: list[str]) -> tuple[StatDelta, ...]:
    out = []
    for name in SUMMARY_STATS:
        if name not in b or name not in c:
            if (name in b) != (name in c):
                notes.append(f"summary {name} recorded on one side only")
            continue
        x, y = _number(b[name]), _number(c[name])
        if x is None or y is None or not (math.isfinite(x) and math.isfinite(y)):
            notes.append(f"summary {name} is not a finite number on both sides")
            continue
        out.append(StatDelta(name, x, y, y - x))
    return tuple(out)


def _topk_jaccard(b: Mapping[str, Any], c: Mapping[str, Any], notes: list[str]) -> float | None:
    ids_b, ids_c = b.get("topk_ids"), c.get("topk_ids")
    if not isinstance(ids_b, Sequence) or not isinstance(ids_c, Sequence) or not ids_b or not ids_c:
        notes.append("top-k ids not recorded on both sides")
        return None
    set_b, set_c = set(ids_b), set(ids_c)
    if len(ids_b) != len(ids_c):
        notes.append(f"top-k sizes differ ({len(ids_b)} against {len(ids_c)})")
    return len(set_b & set_c) / len(set_b | set_c)


def _identical(b: TraceArtifact, c: TraceArtifact, notes: list[str]) -> bool | None:
    if b.digest is None or c.digest is None:
        notes.append("no digest on " + ("either side" if b.digest is None and c.digest is None
                                        else "the baseline" if b.digest is None else "the candidate"))
        return None
    if b.digest.split(":", 1)[0] != c.digest.split(":", 1)[0]:
        notes.append("digests use different hash algorithms: byte identity unknown")
        return None
    return b.digest == c.digest


def _artifact_diff(key: tuple[str, int | None, str | None, int], b: TraceArtifact, c: TraceArtifact) -> ArtifactDiff:
    notes: list[str] = []
    identical = _identical(b, c, notes)
    deltas = _summary_deltas(b.summary, c.summary, notes)
    jaccard = _topk_jaccard(b.summary, c.summary, notes) if b.kind in _TOPK_KINDS else None
    return ArtifactDiff(
        kind=b.kind, layer=b.layer, stage=key[2], position=key[3],
        baseline_id=b.id, candidate_id=c.id, baseline_digest=b.digest, candidate_digest=c.digest,
        identical=identical, baseline_shape=tuple(b.shape), candidate_shape=tuple(c.shape),
        baseline_dtype=b.dtype, candidate_dtype=c.dtype, summary_deltas=deltas, topk_jaccard=jaccard,
        notes=tuple(notes),
    )


def _keyed_profiles(trace: Trace) -> dict[tuple[str, int], tuple[TraceSpan, StageProfile]]:
    seen: Counter[str] = Counter()
    out = {}
    for span in trace.spans:
        if span.profile is None:
            continue
        name = _stage_of_span(span)
        out[(name, seen[name])] = (span, span.profile)
        seen[name] += 1
    return out


def _stage_diff(key: tuple[str, int], b: tuple[TraceSpan, StageProfile],
                c: tuple[TraceSpan, StageProfile]) -> StageDiff:
    counters: list[CounterDelta] = []
    notes: list[str] = []
    for name in COUNTER_NAMES:
        x, y = getattr(b[1], name), getattr(c[1], name)
        if x is None and y is None:
            continue
        if x is None or y is None:
            side = "baseline" if y is None else "candidate"
            notes.append(f"{name} recorded only in the {side}")
            continue
        delta = CounterDelta(name, x, y, y - x, str(b[1].provenance_of(name)), str(c[1].provenance_of(name)))
        counters.append(delta)
        if not delta.like_for_like:
            notes.append(delta.note)
    return StageDiff(key[0], key[1], b[0].id, c[0].id, tuple(counters), tuple(notes))


def diff_traces(baseline: Trace, candidate: Trace) -> TraceDiff:
    """Compare ``candidate`` against ``baseline``; see the module docstring."""
    for name, value in (("baseline", baseline), ("candidate", candidate)):
        if not isinstance(value, Trace):
            raise ReportError(f"{name} must be a vauban_trace.contract.Trace, got {type(value).__name__}")
    arts_b, arts_c = _keyed_artifacts(baseline), _keyed_artifacts(candidate)
    pairs = tuple(_artifact_diff(k, a, arts_c[k]) for k, a in arts_b.items() if k in arts_c)
    unpaired = tuple(
        UnpairedArtifact(side, a.id, a.kind, a.layer, k[2])
        for side, mine, other in (("baseline", arts_b, arts_c), ("candidate", arts_c, arts_b))
        for k, a in mine.items() if k not in other
    )
    prof_b, prof_c = _keyed_profiles(baseline), _keyed_profiles(candidate)
    stages = tuple(_stage_diff(k, v, prof_c[k]) for k, v in prof_b.items() if k in prof_c)
    lonely = tuple(
        f"{k[0]}#{k[1]} profiled only in the {side}"
        for side, mine, other in (("baseline", prof_b, prof_c), ("candidate", prof_c, prof_b))
        for k in mine if k not in other
    )
    return TraceDiff(baseline.id, candidate.id, pairs, unpaired, stages, lonely)


__all__ = [
    "SUMMARY_STATS",
    "ArtifactDiff",
    "CounterDelta",
    "StageDiff",
    "StatDelta",
    "TraceDiff",
    "UnpairedArtifact",
    "diff_traces",
]
