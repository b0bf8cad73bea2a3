"""``vauban-trace report``: what traces support, what changed, and whether claims hold.

::

    vauban-trace report BASELINE_ID [CANDIDATE_ID] [--claims FILE] [--source SRC] [--blobs DIR_or_URL] [--json]
    vauban-trace report --baseline-ids ID... --candidate-ids ID... [--claims FILE] [...]
    vauban-trace report --baseline-query SERVICE --candidate-query SERVICE [--since 2h] [--limit N] [...]
    many pairs: [--pair-by input|metadata.KEY[,...]] [--test sign_flip|signed_rank] [--correction holm|bh]
                [--alpha 0.05] [--permutations N] [--family REF...] [--markdown]

``--source`` is any :func:`vauban_trace.sources.open_source` spec (default ``store:.vauban``).

One trace or one pair (positional ids) prints, from :mod:`vauban_trace.report`:

- the evidence: access level, its claim cap, the strongest claim the traces support, the fixed
  can-claim / cannot-claim wording of the level, and every limitation;
- with a candidate, the diff of each artifact pair: ``identical`` (same digest) or the content
  change measured from the blobs (KL max/mean and top-1 agreement for logits/logprobs, cosine and
  relative L2 for tensors, equality for tokens/text), or the reason it was not measured; the
  artifacts without a partner; and the stage profile deltas (per counter, both values and both
  provenances, flagged when not like for like).

Many pairs (any of ``--baseline-ids``, ``--candidate-ids``, ``--baseline-query``,
``--candidate-query``): each side's traces are the ids given plus the traces of the queried
service (``traces --source SRC --service NAME``: the newest ``--limit`` (default 100) traces,
started within ``--since`` when given, oldest first; a side that fills its limit says that older
traces may be left out). The two sides are paired by input (:func:`pair_traces`; unpaired
traces are listed) and :func:`aggregate_report` prints the evidence of the set (the weakest pair
caps it, and the pairs that narrow it are named with why), per artifact slot the distribution of
every content measure over the pairs (n, mean, median, min, max, bootstrap CI of the mean with
``--seed``, ``--resamples``, ``--ci-level``) and the pairs where it could not be computed, the
stage counter deltas grouped by provenance, and the paired tests (:attr:`AggregateReport.tests`):
per summary statistic and counter group the mean delta with its CI, the test's p (``--test``,
exact up to 16 pairs, ``--permutations`` Monte Carlo flips above), the Holm- and BH-adjusted p
over the family (every measure, or the refs of ``--family``) and whether it differs at
``--alpha`` by ``--correction``; the measures not tested are listed with the reason.
``--pair-by metadata.KEY`` (comma-separated for several keys) pairs by request metadata instead of
input; ambiguous keys (several traces on one side) leave their traces unpaired, listed.
``--reference-ids``/``--reference-query`` give reruns of the baseline (paired with the baseline side
by the same rule): the content measures are then tested against that noise floor
(``measure(baseline, candidate) - measure(baseline, rerun)`` per pair); without them they are
listed as not tested. ``--markdown`` prints :meth:`AggregateReport.render_markdown` instead of text.

``--claims FILE`` checks a JSON claims file (schema in docs/report.md) against the evidence (one
trace, one pair, or the set) and prints each claim as accepted or rejected with its problems;
the exit status is 1 when a claim is rejected, 0 otherwise. Over a set, claims cite slot
references (``logits``, ``activation[1]``) that every pair holds; for one trace or one pair they
may also cite evidence refs.

Blobs are read from ``--blobs`` (a directory or an fsspec URL). Without it, a ``store:DIR`` source
reads ``DIR/blobs``; any other source measures no content and says so. ``--json`` prints one JSON
document: for one trace or pair ``{"evidence", "diff", "content", "blobs"}`` (``diff`` and
``content`` are null for one trace; ``content`` is null when there is no blob store), plus
``"claims"`` with ``--claims``; for many pairs the :meth:`AggregateReport.to_dict` document plus
``"blobs"`` and ``"selection"``. Unknown trace, unreachable source, missing ``--blobs``
directory, a bad claims file, bad flags: one line on stderr, exit 2.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

from vauban_trace._exceptions import ConfigurationError
from vauban_trace.cli._args import nonnegative_int, positive_int

DEFAULT_SOURCE = "store:.vauban"
DEFAULT_LIMIT = 100


def _level(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number") from None
    if not 0 < value < 1:
        raise argparse.ArgumentTypeError(f"must be strictly between 0 and 1, got {value}")
    return value


def register(subparsers: Any) -> None:
    p = subparsers.add_parser(
        "report",
        help="evidence, diffs and claim checks for one trace, a pair, or many pairs",
        description="Print what traces support (access level, claims, limitations) and what changed: for a "
                    "pair, artifact content measured from the blobs and stage profile deltas; for many "
                    "pairs, the evidence of the set and per-measure distributions over the pairs.",
    )
    p.add_argument("baseline_id", nargs="?", default=None, metavar="BASELINE_ID",
                   help="baseline trace id (32 hex digits)")
    p.add_argument("candidate_id", nargs="?", default=None, metavar="CANDIDATE_ID",
                   help="candidate trace id (omit for a one-trace report)")
    p.add_argument("--baseline-ids", nargs="+", default=None, metavar="ID", help="baseline traces of a set")
    p.add_argument("--candidate-ids", nargs="+", default=None, metavar="ID", help="candidate traces of a set")
    p.add_argument("--baseline-query", default=None, metavar="SERVICE",
                   help="add the traces of this service to the baseline side")
    p.add_argument("--candidate-query", default=None, metavar="SERVICE",
                   help="add the traces of this service to the candidate side")
    p.add_argument("--since", default=None, metavar="DURATION", help="queries: only traces started within, e.g. 2h")
    p.add_argument("--limit", type=positive_int, default=DEFAULT_LIMIT, metavar="N",
                   help=f"queries: at most N traces per side (default {DEFAULT_LIMIT})")
    p.add_argument("--claims", default=None, metavar="FILE", help="JSON claims file to check (docs/report.md)")
    p.add_argument("--seed", type=nonnegative_int, default=0, metavar="N", help="bootstrap seed (default 0)")
    p.add_argument("--resamples", type=positive_int, default=2000, metavar="N", help="bootstrap resamples (default 2000)")
    p.add_argument("--ci-level", type=_level, default=0.95, metavar="X", help="interval level (default 0.95)")
    p.add_argument("--pair-by", default="input", metavar="input|metadata.KEY[,metadata.KEY...]",
                   help="many pairs: pair by input (default) or by request metadata key(s), e.g. metadata.prompt_id")
    p.add_argument("--test", default="sign_flip", choices=("sign_flip", "signed_rank"),
                   help="paired test of each measure (default sign_flip: exact sign-flip test of the mean delta)")
    p.add_argument("--correction", default="holm", choices=("holm", "bh"),
                   help="multiple-comparison adjustment that decides 'differs' (default holm; both are printed)")
    p.add_argument("--alpha", type=_level, default=0.05, metavar="X", help="test level (default 0.05)")
    p.add_argument("--permutations", type=positive_int, default=10000, metavar="N",
                   help="Monte Carlo sign flips above 16 pairs (default 10000)")
    p.add_argument("--family", nargs="+", default=None, metavar="REF",
                   help="test only these measures (refs, parts optional: activation[1]:l2_norm, "
                        "stage:prefill:duration_s); default: every measure")
    p.add_argument("--reference-ids", nargs="+", default=None, metavar="ID",
                   help="reruns of the baseline (paired with the baseline side like the candidates): the noise "
                        "floor the content measures are tested against")
    p.add_argument("--reference-query", default=None, metavar="SERVICE",
                   help="add the traces of this service to the reference (rerun) side")
    p.add_argument("--markdown", action="store_true", help="many pairs: print the report as markdown")
    p.add_argument("--source", default=DEFAULT_SOURCE, metavar="SRC",
                   help="store:DIR | otlp-json:FILE | jaeger:URL | tempo:URL (default store:.vauban)")
    p.add_argument("--blobs", default=None, metavar="DIR_or_URL",
                   help="artifact blob store (default: DIR/blobs for a store:DIR source)")
    p.add_argument("--json", action="store_true", help="print the whole report as one JSON document")
    p.set_defaults(func=run)


def _blob_store(args: argparse.Namespace) -> tuple[Any, str]:
    """The store to read blobs from (or None) and a line saying which, or why there is none."""
    from vauban_trace.artifacts import open_store

    if args.blobs is not None:
        where = str(args.blobs)
        if "://" not in where and not Path(where).is_dir():
            raise ConfigurationError(f"--blobs: {where!r} is not a directory")
        return open_store(where), f"blobs from {where}"
    if args.source.startswith("store:"):
        path = Path(args.source[len("store:"):]) / "blobs"
        if path.is_dir():
            return open_store(path), f"blobs from {path}"
        return None, f"no blob store at {path}: content not measured"
    return None, "no blob store (give --blobs): content not measured"


def _is_set(args: argparse.Namespace) -> bool:
    return any(v is not None for v in (args.baseline_ids, args.candidate_ids, args.baseline_query,
                                       args.candidate_query))


def run(args: argparse.Namespace) -> int:
    from vauban_trace.report import load_claims

    if _is_set(args):
        if args.baseline_id is not None:
            raise ConfigurationError("give the traces either as BASELINE_ID [CANDIDATE_ID] or with "
                                     "--baseline-ids/--candidate-ids/--baseline-query/--candidate-query, not both")
    elif args.baseline_id is None:
        raise ConfigurationError("give BASELINE_ID [CANDIDATE_ID], or --baseline-ids/--baseline-query with "
                                 "--candidate-ids/--candidate-query")
    if not _is_set(args):
        moved = [flag for flag, on in (("--pair-by", args.pair_by != "input"), ("--family", args.family is not None),
                                       ("--markdown", args.markdown), ("--reference-ids", args.reference_ids is not None),
                                       ("--reference-query", args.reference_query is not None)) if on]
        if moved:
            raise ConfigurationError(f"{moved[0]} applies to many pairs (--baseline-ids/--candidate-ids/"
                                     "--baseline-query/--candidate-query) only")
    if args.json and args.markdown:
        raise ConfigurationError("give --json or --markdown, not both")
    if args.since is not None and args.baseline_query is None and args.candidate_query is None \
            and args.reference_query is None:
        raise ConfigurationError("--since applies to --baseline-query/--candidate-query only")
    claims = None if args.claims is None else load_claims(args.claims)
    store, blobs_line = _blob_store(args)
    if _is_set(args):
        return _run_set(args, claims, store, blobs_line)
    return _run_single(args, claims, store, blobs_line)


def _run_single(args: argparse.Namespace, claims: Any, store: Any, blobs_line: str) -> int:
    from vauban_trace.report import check_claim_list, content_diff, diff_traces, evidence_of
    from vauban_trace.sources import open_source

    with open_source(args.source) as src:
        baseline = src.get_trace(args.baseline_id)
        candidate = None if args.candidate_id is None else src.get_trace(args.candidate_id)
    evidence = evidence_of(baseline, candidate)
    diff = None if candidate is None else diff_traces(baseline, candidate)
    content = None if diff is None or store is None else content_diff(diff, store)
    checks = None if claims is None else check_claim_list(claims, evidence)
    if args.json:
        doc: dict[str, Any] = {
            "evidence": evidence.to_dict(),
            "diff": None if diff is None else diff.to_dict(),
            "content": None if content is None else content.to_dict(),
            "blobs": blobs_line,
        }
        if checks is not None:
            doc["claims"] = [c.to_dict() for c in checks]
        print(json.dumps(doc, indent=2, allow_nan=False))
    else:
        text = render(evidence, diff, content, blobs_line)
        if checks is not None:
            text += "\n\n" + "\n".join(render_claims(checks))
        print(text)
    return 1 if checks is not None and any(not c.accepted for c in checks) else 0


def _side(src: Any, args: argparse.Namespace, side: str, notes: list[str]) -> list[Any]:
    from vauban_trace.cli._traces import parse_duration

    ids = list(getattr(args, f"{side}_ids") or ())
    service = getattr(args, f"{side}_query")
    if service is not None:
        since = None if args.since is None else parse_duration(args.since)
        found = src.list_traces(service=service, since=since, limit=args.limit)
        if not found:
            raise ConfigurationError(f"--{side}-query: no traces of service {service!r} in {args.source}"
                                     + ("" if args.since is None else f" started within {args.since}"))
        ids += [s.trace_id for s in reversed(found)]
        notes.append(f"{side}: {len(found)} trace(s) of service {service!r}"
                     + (f" (the --limit {args.limit}: older traces may be left out)" if len(found) >= args.limit else ""))
    if not ids:
        raise ConfigurationError(f"the {side} side has no traces: give --{side}-ids or --{side}-query")
    return [src.get_trace(tid) for tid in ids]


def _run_set(args: argparse.Namespace, claims: Any, store: Any, blobs_line: str) -> int:
    from vauban_trace.report import aggregate_report, pair_traces
    from vauban_trace.sources import open_source

    notes: list[str] = []
    with open_source(args.source) as src:
        baselines = _side(src, args, "baseline", notes)
        candidates = _side(src, args, "candidate", notes)
        reruns = None if args.reference_ids is None and args.reference_query is None else _side(
            src, args, "reference", notes)
    by = [b.strip() for b in str(args.pair_by).split(",") if b.strip()]
    agg = aggregate_report(pair_traces(baselines, candidates, by=by), claims or (), store, seed=args.seed,
                           resamples=args.resamples, ci_level=args.ci_level, test=args.test,
                           correction=args.correction, alpha=args.alpha, permutations=args.permutations,
                           family=args.family, reference=None if reruns is None else pair_traces(baselines, reruns, by=by))
    if args.json:
        print(json.dumps({**agg.to_dict(), "blobs": blobs_line, "selection": notes}, indent=2, allow_nan=False))
    elif args.markdown:
        print(agg.render_markdown() + "".join(f"\n- selection: {n}" for n in notes))
    else:
        print(render_aggregate(agg, blobs_line, notes))
    return 1 if claims and agg.rejected else 0


def _num(value: float | None, fmt: str = ".4g") -> str:
    return "-" if value is None else format(value, fmt)


def _pair_line(pair: Any, measured: Any) -> list[str]:
    where = pair.kind + ("" if pair.layer is None else f"[{pair.layer}]")
    head = f"  {where:<22} {pair.stage or '-':<10}"
    ident = {True: "identical", False: "changed", None: "identity unknown"}[pair.identical]
    if measured is None:
        return [f"{head} {ident}"]
    if not measured.measured:
        return [f"{head} {ident}; content not measured: {measured.reason}"]
    parts = [ident]
    if measured.equal is not None:
        parts.append("content equal" if measured.equal else "content differs")
    if measured.kl_max is not None:
        parts.append(f"KL max {_num(measured.kl_max)} mean {_num(measured.kl_mean)}")
    if measured.top1_agreement is not None:
        parts.append(f"top-1 agreement {_num(measured.top1_agreement, '.0%')}")
    if measured.cosine_mean is not None:
        parts.append(f"cosine mean {_num(measured.cosine_mean)} min {_num(measured.cosine_min)}")
    if measured.relative_l2 is not None:
        parts.append(f"relative L2 {_num(measured.relative_l2)}")
    if measured.positions is not None:
        parts.append(f"{measured.positions} position(s)")
    return [f"{head} " + "; ".join(parts)] + [f"      note: {n}" for n in measured.notes]


def render(evidence: Any, diff: Any, content: Any, blobs_line: str) -> str:
    """The readable report (see the module docstring)."""
    from vauban_trace.report import CAN_CLAIM, CANNOT_CLAIM

    ev = evidence
    lines = [f"baseline  {ev.baseline_trace_id}"]
    if ev.candidate_trace_id is not None:
        lines.append(f"candidate {ev.candidate_trace_id}")
    strongest = ev.strongest_claim
    lines += ["", "evidence",
              f"  access level     {ev.access_level} (cap {ev.cap})",
              f"  strongest claim  {strongest if strongest is not None else 'none'}",
              f"  can claim        {CAN_CLAIM[ev.access_level]}",
              f"  cannot claim     {CANNOT_CLAIM[ev.access_level]}",
              f"  limitations ({len(ev.limitations)})"]
    lines += [f"    - {lim.statement}" for lim in ev.limitations] or ["    - none recorded"]
    if diff is None:
        return "\n".join(lines)
    by_key = {} if content is None else {(p.kind, p.layer, p.stage, p.position): p for p in content.pairs}
    lines += ["", f"artifacts ({len(diff.pairs)} pairs; {blobs_line})"]
    for pair in diff.pairs:
        lines += _pair_line(pair, by_key.get((pair.kind, pair.layer, pair.stage, pair.position)))
    for u in diff.unpaired:
        layer = "" if u.layer is None else f"[{u.layer}]"
        lines.append(f"  {u.kind + layer:<22} {u.stage or '-':<10} only in the {u.side}")
    lines += ["", f"stages ({len(diff.stages)} paired)"]
    for s in diff.stages:
        lines.append(f"  {s.stage}#{s.position}")
        for c in s.counters:
            flag = "" if c.like_for_like else "  (not like for like)"
            lines.append(f"    {c.counter:<22} {_num(c.baseline)} -> {_num(c.candidate)}  "
                         f"delta {_num(c.delta, '+.4g')}  [{c.baseline_provenance}/{c.candidate_provenance}]{flag}")
        lines += [f"    note: {n}" for n in s.notes if "not like for like" not in n]
    lines += [f"  {line}" for line in diff.unpaired_stages]
    return "\n".join(lines)


def render_claims(checks: Any) -> list[str]:
    """Claim verdicts: accepted, or rejected with each problem."""
    accepted = sum(1 for c in checks if c.accepted)
    lines = [f"claims ({accepted} accepted, {len(checks) - accepted} rejected)"]
    for c in checks:
        cites = ", ".join(c.claim.cites) or "nothing"
        test = getattr(c.claim, "test", None)
        said = "" if test is None else f"; test: {test.measure} {test.outcome}" + (
            "" if test.margin is None else f" within +-{test.margin:g}")
        lines.append(f"  {'accepted' if c.accepted else 'REJECTED'}  [{c.claim.strength}] {c.claim.statement} "
                     f"(cites {cites}{said})")
        lines += [f"      - {p}" for p in c.problems]
    return lines


def _indices(pairs: Any) -> str:
    return ", ".join(str(i) for i in pairs)


def _dist(d: Any) -> str:
    if d is None:
        return "n=0"
    ci = (f"CI [{_num(d.ci_low)}, {_num(d.ci_high)}]" if d.ci_low is not None else f"no CI ({d.note})")
    return (f"n={d.n}  mean {_num(d.mean)}  median {_num(d.median)}  min {_num(d.min)}  "
            f"max {_num(d.max)}  {ci}")


def _gaps(gaps: Any, indent: str) -> list[str]:
    return [f"{indent}not computed in {g.count} pair(s) [{_indices(g.pairs)}]: {g.reason}" for g in gaps]


def render_tests(fam: Any) -> list[str]:
    """The paired tests: method, family, alpha; per measure n, mean delta and CI, p, adjusted p."""
    from vauban_trace.report import CORRECTIONS, TESTS

    scope = "" if fam.family is None else f" among {' '.join(fam.family)}"
    lines = ["", f"paired tests (delta = candidate - baseline): {TESTS[fam.test]}",
             f"  family: {fam.m} measure(s) tested{scope}; differs = {CORRECTIONS[fam.correction]}-adjusted "
             f"p <= alpha {fam.alpha:g}; Holm and BH adjusted p both shown"]
    for t in fam.measures:
        if t.test is None:
            continue
        how = "exact" if t.test.exact else f"Monte Carlo {t.test.permutations} flips, se {_num(t.test.mc_se)}"
        lines.append(f"  {'DIFFERS' if t.differs else 'no diff':<8} {t.ref}  {_dist(t.effect)}")
        lines.append(f"           p {_num(t.test.p)} ({how})  p_holm {_num(t.p_holm)}  p_bh {_num(t.p_bh)}")
    skipped: dict[str, list[str]] = {}
    for t in fam.measures:
        if t.test is None:
            skipped.setdefault(str(t.reason), []).append(t.ref)
    lines += [f"  not tested ({why}): {', '.join(refs)}" for why, refs in skipped.items()]
    lines += [f"  not tested  {u}" for u in fam.untested]
    equiv = getattr(fam, "equivalence", ())
    if equiv:
        lines.append(f"  equivalence claims (TOST against +-margin, Holm over the "
                     f"{sum(1 for e in equiv if e.tost is not None)} that ran, alpha {fam.alpha:g})")
    for e in equiv:
        if e.tost is None:
            lines.append(f"    claim {e.claim_index}  {e.measure} +-{e.margin:g}: not tested: {e.reason}")
            continue
        lines.append(f"    claim {e.claim_index}  {e.ref} +-{e.margin:g}: n={e.tost.n} mean {_num(e.tost.mean)} "
                     f"p_upper {_num(e.tost.p_upper)} p_lower {_num(e.tost.p_lower)} p {_num(e.tost.p)} "
                     f"p_holm {_num(e.p_holm)}  {'EQUIVALENT' if e.equivalent else 'not shown equivalent'}")
    return lines


def render_aggregate(agg: Any, blobs_line: str, notes: Any = ()) -> str:
    """The readable report over many pairs (see the module docstring)."""
    from vauban_trace.report import CAN_CLAIM, CANNOT_CLAIM, NO_CONTENT

    ev = agg.evidence
    lines = [f"aggregate over {len(agg.pairs)} pair(s), {len(agg.unpaired)} unpaired trace(s)",
             f"  pairing: {agg.pairing.rule}"]
    lines += [f"  selection: {n}" for n in notes]
    level = {p.index: p.access_level for p in ev.per_pair}
    lines += [f"  pair {p.index}  {p.baseline.id} / {p.candidate.id}  {level[p.index]}" for p in agg.pairs]
    lines += [f"  unpaired {u.side} {u.trace_id}: {u.reason}" for u in agg.unpaired]
    lines += [f"  note: {n}" for n in agg.notes]
    strongest = ev.strongest_claim
    lines += ["", "evidence of the set (the weakest pair caps it)",
              f"  access level     {ev.access_level} (cap {ev.cap})",
              f"  strongest claim  {strongest if strongest is not None else 'none'}",
              f"  can claim        {CAN_CLAIM[ev.access_level]}",
              f"  cannot claim     {CANNOT_CLAIM[ev.access_level]}",
              f"  citable          {', '.join(ev.items) or 'nothing'}"]
    for n in ev.narrowing:
        lacks = [*n.lacks_strengths, *n.lacks_refs]
        lines.append(f"  narrowed by pair {n.pair.index} ({n.pair.access_level}); lacks {', '.join(lacks) or '-'}")
        lines += [f"      why: {r}" for r in n.reasons]
    lines.append(f"  limitations ({len(ev.limitations)})")
    lines += [f"    - [pairs {_indices(lim.pairs)}] {lim.statement}" for lim in ev.limitations] or ["    - none recorded"]
    source = blobs_line if agg.content_source == NO_CONTENT else agg.content_source
    lines += ["", f"content ({source}; {agg.ci_level:.0%} CI: percentile bootstrap "
                  f"of the mean, {agg.resamples} resamples, seed {agg.seed})"]
    for s in agg.slots:
        where = s.kind + ("" if s.layer is None else f"[{s.layer}]")
        lines.append(f"  {where} ({s.stage or '-'}#{s.position}): paired in {s.paired}; identical {s.identical}, "
                     f"changed {s.changed}, content equal {s.content_equal}, differs {s.content_differs}")
        lines += _gaps(s.absent, "      ")
        for m in agg.measures:
            if (m.kind, m.layer, m.stage, m.position) == (s.kind, s.layer, s.stage, s.position):
                lines.append(f"    {m.measure:<15} {_dist(m.distribution)}")
                lines += _gaps([g for g in m.not_computed if g not in s.absent], "      ")
    lines += [f"  {u.reason} [pairs {_indices(u.pairs)}]" for u in agg.unpaired_artifacts]
    lines += ["", "stages (delta = candidate - baseline; [baseline/candidate provenance])"]
    for c in agg.counters:
        for g in c.groups:
            flag = "" if g.like_for_like else "  (not like for like)"
            lines.append(f"  {c.stage}#{c.position} {c.counter:<26} [{g.baseline_provenance}/{g.candidate_provenance}]"
                         f"{flag} delta {_dist(g.delta)}")
        lines += _gaps(c.not_computed, "      ")
    lines += [f"  {u.reason} [pairs {_indices(u.pairs)}]" for u in agg.unpaired_stages]
    if agg.tests is not None:
        lines += render_tests(agg.tests)
    if agg.claims:
        lines += ["", *render_claims(agg.claims)]
    return "\n".join(lines)
