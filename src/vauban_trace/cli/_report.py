"""``vauban-trace report``: what one trace, or a baseline/candidate pair, supports, and what changed.

::

    vauban-trace report BASELINE_ID [CANDIDATE_ID] [--source SRC] [--blobs DIR_or_URL] [--json]

``--source`` is any :func:`vauban_trace.sources.open_source` spec (default ``store:.vauban``).
The report prints, from :mod:`vauban_trace.report`:

- the evidence: access level, its claim cap, the strongest claim the traces support, the fixed
  can-claim / cannot-claim wording of the level, and every limitation;
- with a candidate, the diff of each artifact pair: ``identical`` (same digest) or the content
  change measured from the blobs (KL max/mean and top-1 agreement for logits/logprobs, cosine and
  relative L2 for tensors, equality for tokens/text), or the reason it was not measured; the
  artifacts without a partner; and the stage profile deltas (per counter, both values and both
  provenances, flagged when not like for like).

Blobs are read from ``--blobs`` (a directory or an fsspec URL). Without it, a ``store:DIR`` source
reads ``DIR/blobs``; any other source measures no content and says so. ``--json`` prints one JSON
document: ``{"evidence": ..., "diff": ..., "content": ..., "blobs": ...}`` (``diff`` and ``content``
are null for one trace; ``content`` is null when there is no blob store). Unknown trace,
unreachable source, missing ``--blobs`` directory: one line on stderr, exit 2.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

from vauban_trace._exceptions import ConfigurationError

DEFAULT_SOURCE = "store:.vauban"


def register(subparsers: Any) -> None:
    p = subparsers.add_parser(
        "report",
        help="evidence of one trace, or evidence and diff of a baseline/candidate pair",
        description="Print what traces support (access level, claims, limitations) and, for a pair, "
                    "what changed: artifact content measured from the blobs, and stage profile deltas.",
    )
    p.add_argument("baseline_id", metavar="BASELINE_ID", help="baseline trace id (32 hex digits)")
    p.add_argument("candidate_id", nargs="?", default=None, metavar="CANDIDATE_ID",
                   help="candidate trace id (omit for a one-trace report)")
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


def run(args: argparse.Namespace) -> int:
    from vauban_trace.report import content_diff, diff_traces, evidence_of
    from vauban_trace.sources import open_source

    store, blobs_line = _blob_store(args)
    with open_source(args.source) as src:
        baseline = src.get_trace(args.baseline_id)
        candidate = None if args.candidate_id is None else src.get_trace(args.candidate_id)
    evidence = evidence_of(baseline, candidate)
    diff = None if candidate is None else diff_traces(baseline, candidate)
    content = None if diff is None or store is None else content_diff(diff, store)
    if args.json:
        print(json.dumps({
            "evidence": evidence.to_dict(),
            "diff": None if diff is None else diff.to_dict(),
            "content": None if content is None else content.to_dict(),
            "blobs": blobs_line,
        }, indent=2, allow_nan=False))
        return 0
    print(render(evidence, diff, content, blobs_line))
    return 0


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
