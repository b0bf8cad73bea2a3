"""Markdown for an :class:`~vauban_trace.report.AggregateReport` (``agg.render_markdown()``).

Sections, in order: the pairs and the pairing rule, unpaired traces; the evidence of the set (level,
cap, strongest claim, the fixed can/cannot-claim wording, citable slot references, the pairs that
narrow it and why, limitations with their pairs); a measure table (slot, measure, n, mean, median,
min, max, interval; a row per measure, and the pairs not computed with their reasons below it);
stage counters per provenance group; claims, accepted and rejected with their problems. Numbers are
printed with 4 significant digits; nothing that is None is printed as a number.
"""

from __future__ import annotations

from typing import Any

from vauban_trace.report._access import CAN_CLAIM, CANNOT_CLAIM


def _n(value: float | None) -> str:
    return "–" if value is None else format(value, ".4g")


def _pairs(pairs: Any) -> str:
    return ", ".join(str(i) for i in pairs)


def _slot(x: Any) -> str:
    return str(x.kind) + ("" if x.layer is None else f"[{x.layer}]") + f" ({x.stage or '-'}#{x.position})"


def render_markdown(agg: Any) -> str:
    """The markdown of ``agg`` (see the module docstring)."""
    ev = agg.evidence
    out = ["# Aggregate evidence report", "", f"{len(agg.pairs)} pair(s); {agg.pairing.rule}.", ""]
    out += ["| pair | baseline | candidate | level |", "|---|---|---|---|"]
    level = {p.index: p.access_level for p in ev.per_pair}
    out += [f"| {p.index} | `{p.baseline.id}` | `{p.candidate.id}` | {level[p.index]} |" for p in agg.pairs]
    if agg.unpaired:
        out += ["", "Unpaired traces:", ""]
        out += [f"- {u.side} `{u.trace_id}`: {u.reason}" for u in agg.unpaired]
    out += [f"- note: {n}" for n in agg.notes]
    strongest = ev.strongest_claim
    out += ["", "## Evidence of the set", "",
            f"- access level: **{ev.access_level}** (cap: {ev.cap}); the weakest pair caps the set",
            f"- strongest claim supported: {strongest if strongest is not None else 'none'}",
            f"- citable over the set: {', '.join(f'`{r}`' for r in ev.items) or 'nothing'}",
            "", f"**Can claim:** {CAN_CLAIM[ev.access_level]}", "",
            f"**Cannot claim:** {CANNOT_CLAIM[ev.access_level]}", ""]
    for n in ev.narrowing:
        lacks = ", ".join([*n.lacks_strengths, *(f"`{r}`" for r in n.lacks_refs)]) or "-"
        out.append(f"- narrowed by pair {n.pair.index} ({n.pair.access_level}); lacks {lacks}")
        out += [f"  - {r}" for r in n.reasons]
    out += ["", "### Limitations", ""]
    out += [f"- pairs {_pairs(lim.pairs)}: {lim.statement}" for lim in ev.limitations] or ["- none recorded"]
    out += ["", "## Measures", "",
            f"Content: {agg.content_source}. Interval: {agg.ci_level:.0%} percentile bootstrap of the mean, "
            f"{agg.resamples} resamples, seed {agg.seed}.", "",
            "| slot | measure | n | mean | median | min | max | interval |", "|---|---|---|---|---|---|---|---|"]
    gaps: list[str] = []
    for m in agg.measures:
        d = m.distribution
        if d is None:
            out.append(f"| {_slot(m)} | {m.measure} | 0 | – | – | – | – | – |")
        else:
            ci = f"[{_n(d.ci_low)}, {_n(d.ci_high)}]" if d.ci_low is not None else d.note
            out.append(f"| {_slot(m)} | {m.measure} | {d.n} | {_n(d.mean)} | {_n(d.median)} | {_n(d.min)} | "
                       f"{_n(d.max)} | {ci} |")
        gaps += [f"- {_slot(m)} {m.measure}: not computed in pair(s) {_pairs(g.pairs)}: {g.reason}"
                 for g in m.not_computed]
    if gaps:
        out += ["", "Not computed (never imputed):", "", *gaps]
    if agg.unpaired_artifacts:
        out += ["", *[f"- {u.reason} (pairs {_pairs(u.pairs)})" for u in agg.unpaired_artifacts]]
    out += ["", "## Stage counters (candidate − baseline)", "",
            "| stage | counter | provenance (baseline/candidate) | n | delta mean | min | max | interval |",
            "|---|---|---|---|---|---|---|---|"]
    for c in agg.counters:
        for g in c.groups:
            d = g.delta
            ci = f"[{_n(d.ci_low)}, {_n(d.ci_high)}]" if d.ci_low is not None else d.note
            flag = "" if g.like_for_like else " (not like for like)"
            out.append(f"| {c.stage}#{c.position} | {c.counter} | {g.baseline_provenance}/{g.candidate_provenance}"
                       f"{flag} | {d.n} | {_n(d.mean)} | {_n(d.min)} | {_n(d.max)} | {ci} |")
    out += [f"- {u.reason} (pairs {_pairs(u.pairs)})" for u in agg.unpaired_stages]
    out += ["", "## Claims", ""]
    for chk in agg.claims:
        cites = ", ".join(f"`{r}`" for r in chk.claim.cites) or "nothing"
        verdict = "accepted" if chk.accepted else "**rejected**"
        out.append(f"- {verdict} [{chk.claim.strength}] {chk.claim.statement} (cites {cites})")
        out += [f"  - {p}" for p in chk.problems]
    if not agg.claims:
        out.append("- no claim checked")
    return "\n".join(out) + "\n"


__all__ = ["render_markdown"]
