"""Tests of the content measures against a noise floor: reference pairs (the baseline against a rerun).

A content measure (KL, top-1 agreement, cosine, relative L2) compares the two sides of one pair;
it is one-signed, so "no difference" has no sign-flip null on its own. What it can be compared
with is the same measure between the baseline and a *rerun* of the baseline on the same input:
the run-to-run noise floor (0 on a deterministic CPU run, small on nondeterministic GPU kernels).

::

    reference = pair_traces(baseline_traces, rerun_traces)          # or by="metadata.prompt_id"
    agg = aggregate_report(pair_traces(baseline_traces, candidate_traces), blobs=".vauban/blobs",
                           reference=reference)
    agg.test("logits:kl_max")      # delta = KL(baseline, candidate) - KL(baseline, rerun), per pair

Each pair of the report is matched with the reference pair of the same baseline trace (else the
one reference pair with the same pairing key); both are diffed and measured from the same blob
store (``blobs``: the rerun's blobs are read there). Per pair and content measure the delta is
``measure(baseline, candidate) - measure(baseline, rerun)``; the null is that the candidate is
exchangeable with a rerun (no further from the baseline than a rerun is), under which the delta
is symmetric about 0, and the sign-flip test of ``_signif`` applies. A pair without a reference
pair, or whose reference value could not be computed, is not computed with that reason (prefixed
``reference:``), never imputed. Without ``reference`` the content measures are listed as not
tested (:data:`~vauban_trace.report.CONTENT_UNTESTED`).
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Sequence
from typing import Any

from vauban_trace.report._content import ContentDiff, content_diff
from vauban_trace.report._diff import TraceDiff, diff_traces
from vauban_trace.report._family import Row, slot_ref
from vauban_trace.report._measures import MeasureAggregate, NotComputed, _gap, _slot_of
from vauban_trace.report._pairing import Pairing, TracePair
from vauban_trace.report._stats import distribution_of

#: What a report says about its content measures when reference pairs were given.
REFERENCE_TESTED = ("content measures are tested against the reference pairs: per pair, delta = "
                    "measure(baseline, candidate) - measure(baseline, rerun); the null is that the candidate "
                    "is no further from the baseline than a rerun")


def match_reference(pairs: Sequence[TracePair], reference: Pairing) -> list[tuple[TracePair | None, str | None]]:
    """Per pair, its reference pair (same baseline trace, else the one with the same key), or why none."""
    by_base = {r.baseline.id: r for r in reference.pairs}
    by_key: dict[str, list[TracePair]] = defaultdict(list)
    for r in reference.pairs:
        by_key[r.key].append(r)
    out: list[tuple[TracePair | None, str | None]] = []
    for p in pairs:
        if p.baseline.id in by_base:
            out.append((by_base[p.baseline.id], None))
        elif len(by_key.get(p.key, ())) == 1:
            out.append((by_key[p.key][0], None))
        elif by_key.get(p.key):
            out.append((None, f"reference: {len(by_key[p.key])} reference pairs share this pair's key, "
                              "none its baseline trace"))
        else:
            out.append((None, "reference: no reference pair for this pair's baseline trace or key"))
    return out


def reference_rows(measures: Sequence[MeasureAggregate], pairs: Sequence[TracePair], reference: Pairing,
                   store: Any, content_missing: str,
                   **boot: Any) -> list[Row]:
    """Test rows (ref, "content", deltas, effect, not computed, None) of every content measure."""
    matched = match_reference(pairs, reference)
    diffs: dict[str, TraceDiff] = {}
    contents: dict[str, ContentDiff | None] = {}
    for r, _ in matched:
        if r is not None and r.baseline.id + r.candidate.id not in diffs:
            d = diff_traces(r.baseline, r.candidate)
            diffs[r.baseline.id + r.candidate.id] = d
            contents[r.baseline.id + r.candidate.id] = None if store is None else content_diff(d, store)
    rows: list[Row] = []
    for m in measures:
        slot = (m.kind, m.layer, m.stage, m.position)
        have = dict(m.values)
        gaps: dict[str, list[int]] = defaultdict(list)
        for g in m.not_computed:
            gaps[g.reason].extend(g.pairs)
        deltas: list[float] = []
        for i, (r, why) in enumerate(matched):
            if i not in have:
                continue
            if r is None:
                gaps[str(why)].append(i)
                continue
            d, cd = diffs[r.baseline.id + r.candidate.id], contents[r.baseline.id + r.candidate.id]
            cp = None if cd is None else next((p for p in cd.pairs if _slot_of(p) == slot), None)
            value = None if cp is None else getattr(cp, m.measure)
            if value is None:
                gaps["reference: " + _gap(slot, m.measure, d, cp, content_missing)].append(i)
                continue
            deltas.append(have[i] - float(value))
        ref = slot_ref(m.kind, m.layer, m.stage, m.position, m.measure)
        effect = distribution_of(deltas, **boot)
        rows.append((ref, "content", tuple(deltas), effect,
                     tuple(NotComputed(reason, tuple(sorted(p))) for reason, p in gaps.items()), None))
    return rows


__all__ = ["REFERENCE_TESTED", "match_reference", "reference_rows"]
