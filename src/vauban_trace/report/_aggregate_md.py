"""Markdown for an :class:`~vauban_trace.report.AggregateReport` (``agg.render_markdown()``).

Sections, in order: the pairs and the pairing rule, unpaired traces; the evidence of the set (level,
cap, strongest claim, the fixed can/cannot-claim wording, citable slot references, the pairs that
narrow it and why, limitations with their pairs); a measure table (slot, measure, n, mean, median,
min, max, interval; a row per measure, and the pairs not computed with their reasons below it);
stage counters per provenance group; the paired tests (method, family, alpha, and per measure n,
mean delta with its interval, p, Holm- and BH-adjusted p, whether it differs; the measures not
tested and why); claims, accepted and rejected with their problems. Numbers are
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


def render_tests(fam: Any) -> list[str]:
    """The paired-tests section: method, adjustment, alpha, m, and one row per measure."""
    from vauban_trace.report._signif import CORRECTIONS, EXACT_MAX_N, TESTS

    mc = [t.test for t in fam.tested if not t.test.exact]
    how = (f"Test: {TESTS[fam.test]}; exact (all 2^n sign flips) up to {EXACT_MAX_N} pairs"
           + (f", Monte Carlo above ({fam.permutations} sign flips, seed {fam.seed}; p = (1 + hits) / "
              f"(1 + draws), its Monte Carlo standard error in the row)" if mc else "") + ". "
           f"Family: the {fam.m} measure(s) tested"
           + ("" if fam.family is None else f" among {', '.join(f'`{f}`' for f in fam.family)}") + "; "
           f"adjusted p-values by Holm (family-wise error rate) and Benjamini-Hochberg (false discovery rate); "
           f"**differs** = {CORRECTIONS[fam.correction]}-adjusted p ≤ α = {fam.alpha:g}. "
           "Effect: mean delta (candidate − baseline) with its bootstrap interval.")
    out = ["", "## Paired tests (candidate − baseline)", "", how, "",
           "| measure | n | mean delta | interval | p | p Holm | p BH | differs |", "|---|---|---|---|---|---|---|---|"]
    untested: dict[str, list[str]] = {}
    for t in fam.measures:
        e = t.effect
        ci = "–" if e is None else (f"[{_n(e.ci_low)}, {_n(e.ci_high)}]" if e.ci_low is not None else e.note)
        mean = "–" if e is None else _n(e.mean)
        if t.test is None:
            untested.setdefault(str(t.reason), []).append(f"`{t.ref}`")
            out.append(f"| `{t.ref}` | {t.n} | {mean} | {ci} | – | – | – | not tested |")
            continue
        p = _n(t.test.p) + ("" if t.test.mc_se is None else f" ± {_n(t.test.mc_se)}")
        out.append(f"| `{t.ref}` | {t.n} | {mean} | {ci} | {p} | {_n(t.p_holm)} | {_n(t.p_bh)} | "
                   f"{'**yes**' if t.differs else 'no'} |")
    if not fam.measures:
        out.append("| – | – | – | – | – | – | – | no measure with paired values |")
    out += ["", "Not tested:", "", *[f"- {why}: {', '.join(refs)}" for why, refs in untested.items()],
            *[f"- {u}" for u in fam.untested]]
    equiv = getattr(fam, "equivalence", ())
    if equiv:
        out += ["", f"Equivalence claims: TOST (two one-sided sign-flip tests of the mean delta against ±margin, "
                    f"p = max), Holm-adjusted over the {sum(1 for e in equiv if e.tost is not None)} that ran; "
                    f"**equivalent** = Holm-adjusted p ≤ α = {fam.alpha:g}.", "",
                "| claim | measure | margin | n | mean delta | p upper | p lower | p | p Holm | equivalent |",
                "|---|---|---|---|---|---|---|---|---|---|"]
        for e in equiv:
            if e.tost is None:
                out.append(f"| {e.claim_index} | `{e.measure}` | ±{e.margin:g} | – | – | – | – | – | – | "
                           f"not tested: {e.reason} |")
                continue
            out.append(f"| {e.claim_index} | `{e.ref}` | ±{e.margin:g} | {e.tost.n} | {_n(e.tost.mean)} | "
                       f"{_n(e.tost.p_upper)} | {_n(e.tost.p_lower)} | {_n(e.tost.p)} | {_n(e.p_holm)} | "
                       f"{'**yes**' if e.equivalent else 'no'} |")
    return out


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
    if agg.tests is not None:
        out += render_tests(agg.tests)
    out += ["", "## Claims", ""]
    for chk in agg.claims:
        cites = ", ".join(f"`{r}`" for r in chk.claim.cites) or "nothing"
        verdict = "accepted" if chk.accepted else "**rejected**"
        test = chk.claim.test
        said = "" if test is None else f"; test: `{test.measure}` {test.outcome}" + (
            "" if test.margin is None else f" within ±{test.margin:g}")
        out.append(f"- {verdict} [{chk.claim.strength}] {chk.claim.statement} (cites {cites}{said})")
        out += [f"  - {p}" for p in chk.problems]
    if not agg.claims:
        out.append("- no claim checked")
    return "\n".join(out) + "\n"


__all__ = ["render_markdown", "render_tests"]
