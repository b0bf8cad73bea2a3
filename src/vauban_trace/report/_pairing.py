"""Pair baseline traces with candidate traces by the input their requests were given.

::

    from vauban_trace.report import pair_traces
    pairing = pair_traces(baseline_traces, candidate_traces)
    [(p.index, p.key, p.baseline.id, p.candidate.id) for p in pairing.pairs]
    [(u.side, u.trace_id, u.reason) for u in pairing.unpaired]
    pairing.to_dict()

The pairing rule (:data:`PAIRING_RULE`, printed in every aggregate report):

1. Each trace's *input key* comes from its recorded request (``trace.request``):
   ``input_ref`` when recorded (content capture off: the digest of the stored input), else
   the digest of the canonical JSON of ``input_text`` (content capture on) computed with the same
   algorithm as the ``input_ref`` digests in the two lists (blake3 when none or several are in
   use), which is exactly the ``input_ref`` the executors record for that text, so a trace that
   captured its input pairs with one that did not; else ``prompt_ids:`` and the sha256 of the JSON
   list of the prompt ids. ``+chat`` is appended when the request applied a chat template: a
   templated prompt is another input.
2. Traces pair when their keys are equal. When several traces on a side share a key (repeats of
   a prompt), they pair in the order given: the first baseline with the first candidate of that
   key, and so on.
3. Nothing is dropped silently: a trace with no request (no input key), a trace listed twice on
   the same side, and a trace whose key has no (more) partner on the other side is an
   :class:`UnpairedTrace` with its side, key and reason.

Pairs are numbered from 0 in the order of the baseline list.

Pairing by request metadata (``pair_traces(b, c, by="metadata.prompt_id")``, or a list of
``metadata.KEY`` for a compound key such as ``["metadata.prompt_id", "metadata.repeat"]``): a
harness that stamps each request with an id (``make_request(..., metadata={"prompt_id": "p7"})``)
pairs by that id, whatever the input text (a candidate run with another prompt template still
pairs with its baseline). The key is the canonical JSON of the values of those metadata keys.
Traces pair when their keys are equal and each side has exactly one trace with that key. Nothing
is dropped silently: a trace with no request, or whose request metadata lacks a key, is unpaired
with that reason; a key carried by several traces on one side is *ambiguous*: every trace with
that key, on both sides, is unpaired with a reason naming how many traces carry it (repeats need
a metadata key of their own to pair). A pair whose two inputs differ by the input key gets a
note in :attr:`Pairing.notes`.
"""

from __future__ import annotations

import hashlib
import json
from collections import defaultdict
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any

from vauban_trace._exceptions import ReportError
from vauban_trace.artifacts import DEFAULT_ALGORITHM, compute_digest, encode_json
from vauban_trace.contract import Trace

#: The rule :func:`pair_traces` applies, as reports state it.
PAIRING_RULE = (
    "pairs by the request's input: input_ref, else the digest of the JSON input_text (the same "
    "digest input_ref records), else the sha256 of the prompt_ids; +chat when a chat template "
    "was applied; repeats of an input pair in the order given"
)


@dataclass(frozen=True)
class TracePair:
    """One baseline trace and the candidate trace given the same input."""

    index: int
    key: str
    baseline: Trace
    candidate: Trace

    @property
    def label(self) -> str:
        return f"pair {self.index} ({self.baseline.id} / {self.candidate.id})"

    def to_dict(self) -> dict[str, Any]:
        return {"index": self.index, "key": self.key, "baseline_trace_id": self.baseline.id,
                "candidate_trace_id": self.candidate.id}


@dataclass(frozen=True)
class UnpairedTrace:
    """A trace that found no partner, and why."""

    side: str
    trace_id: str
    key: str | None
    reason: str

    def to_dict(self) -> dict[str, Any]:
        return {"side": self.side, "trace_id": self.trace_id, "key": self.key, "reason": self.reason}


@dataclass(frozen=True)
class Pairing:
    """The pairs found, every trace left over, and what the pairs were keyed by (``by``)."""

    pairs: tuple[TracePair, ...] = ()
    unpaired: tuple[UnpairedTrace, ...] = ()
    rule: str = PAIRING_RULE
    by: tuple[str, ...] = ("input",)
    notes: tuple[str, ...] = ()

    def to_dict(self) -> dict[str, Any]:
        return {"rule": self.rule, "by": list(self.by), "pairs": [p.to_dict() for p in self.pairs],
                "unpaired": [u.to_dict() for u in self.unpaired], "notes": list(self.notes)}


def metadata_rule(keys: Sequence[str]) -> str:
    """The rule of pairing by request metadata ``keys``, as reports state it."""
    return (f"pairs by request metadata {', '.join(keys)}: equal values (canonical JSON) pair when each side "
            "has exactly one trace with them; a trace without them, and every trace of a key several traces "
            "on one side carry (ambiguous), is unpaired")


def parse_pair_by(by: str | Sequence[str]) -> tuple[str, ...]:
    """The metadata keys of ``by`` (``"metadata.KEY"`` or a list of them), or ``()`` for
    ``"input"``; ReportError naming anything else."""
    items = [by] if isinstance(by, str) else list(by)
    if items == ["input"]:
        return ()
    if not items:
        raise ReportError("pair by: give 'input' or one or more 'metadata.KEY'")
    keys: list[str] = []
    for item in items:
        if not isinstance(item, str) or not item.startswith("metadata.") or not item[len("metadata."):].strip():
            raise ReportError(f"pair by: {item!r} is not 'input' or 'metadata.KEY' (a request metadata key)")
        key = item[len("metadata."):]
        if key in keys:
            raise ReportError(f"pair by: metadata key {key!r} given twice")
        keys.append(key)
    return tuple(keys)


def metadata_key(trace: Trace, keys: Sequence[str]) -> tuple[str | None, str | None]:
    """(the metadata pairing key of ``trace``, None) or (None, why it has none)."""
    req = trace.request
    if req is None:
        return None, "no request recorded: its metadata is unknown"
    missing = [k for k in keys if k not in req.metadata]
    if missing:
        return None, f"its request metadata has no {missing[0]!r}"
    return "metadata:" + json.dumps({k: req.metadata[k] for k in keys}, sort_keys=True,
                                    separators=(",", ":"), ensure_ascii=False, default=str), None


def _pair_by_metadata(base: list[Trace], cand: list[Trace], keys: tuple[str, ...]) -> Pairing:
    unpaired: list[UnpairedTrace] = []
    groups: dict[str, dict[str, list[Trace]]] = {"baseline": defaultdict(list), "candidate": defaultdict(list)}
    order: list[tuple[str, Trace, str]] = []
    for side, traces in (("baseline", base), ("candidate", cand)):
        seen: set[str] = set()
        for t in traces:
            key, why = metadata_key(t, keys)
            if t.id in seen:
                unpaired.append(UnpairedTrace(side, t.id, key, f"listed more than once on the {side} side"))
            elif key is None:
                unpaired.append(UnpairedTrace(side, t.id, None, str(why)))
            else:
                groups[side][key].append(t)
                order.append((side, t, key))
            seen.add(t.id)
    pairs: list[TracePair] = []
    notes: list[str] = []
    alg = _ref_algorithm(base + cand)
    for side, t, key in order:
        mine, other_side = groups[side][key], "candidate" if side == "baseline" else "baseline"
        theirs = groups[other_side][key]
        if len(mine) > 1 or len(theirs) > 1:
            counts = f"{len(groups['baseline'][key])} baseline and {len(groups['candidate'][key])} candidate trace(s)"
            unpaired.append(UnpairedTrace(side, t.id, key, f"ambiguous: {counts} carry this metadata"))
        elif not theirs:
            unpaired.append(UnpairedTrace(side, t.id, key, f"no {other_side} trace carries this metadata"))
        elif side == "baseline":
            c = theirs[0]
            pairs.append(TracePair(len(pairs), key, t, c))
            kb, kc = input_key(t, alg), input_key(c, alg)
            if kb != kc:
                notes.append(f"pair {len(pairs) - 1}: paired by metadata; the inputs differ ({kb} / {kc})")
    return Pairing(tuple(pairs), tuple(unpaired), metadata_rule([f"metadata.{k}" for k in keys]),
                   tuple(f"metadata.{k}" for k in keys), tuple(notes))


def _traces(values: Iterable[Trace], side: str) -> list[Trace]:
    if isinstance(values, Trace) or not isinstance(values, Iterable):
        raise ReportError(f"{side} traces must be a list of Trace records, got {type(values).__name__}")
    out = list(values)
    for n, t in enumerate(out):
        if not isinstance(t, Trace):
            raise ReportError(f"{side} traces[{n}] must be a vauban_trace.contract.Trace, got {type(t).__name__}")
    return out


def _ref_algorithm(traces: Sequence[Trace]) -> str:
    algs = {t.request.input_ref.split(":", 1)[0] for t in traces
            if t.request is not None and t.request.input_ref is not None}
    return algs.pop() if len(algs) == 1 else DEFAULT_ALGORITHM


def input_key(trace: Trace, algorithm: str = DEFAULT_ALGORITHM) -> str | None:
    """The input key of ``trace`` (see the module docstring), or None without a request."""
    req = trace.request
    if req is None:
        return None
    if req.input_ref is not None:
        key = req.input_ref
    elif req.input_text is not None:
        key = compute_digest(encode_json(req.input_text), algorithm)
    elif req.prompt_ids is not None:
        key = "prompt_ids:" + hashlib.sha256(json.dumps(list(req.prompt_ids)).encode()).hexdigest()
    else:  # pragma: no cover - the contract requires one of the three
        return None
    return key + ("+chat" if req.apply_chat_template else "")


def pair_traces(baselines: Iterable[Trace], candidates: Iterable[Trace], *,
                by: str | Sequence[str] = "input") -> Pairing:
    """Pair ``baselines`` with ``candidates`` by input, or by request metadata with
    ``by="metadata.KEY"`` (or a list of them); see the module docstring."""
    keys = parse_pair_by(by)
    base, cand = _traces(baselines, "baseline"), _traces(candidates, "candidate")
    if keys:
        return _pair_by_metadata(base, cand, keys)
    alg = _ref_algorithm(base + cand)
    unpaired: list[UnpairedTrace] = []
    queues: dict[str, list[Trace]] = defaultdict(list)
    seen: set[str] = set()
    for t in cand:
        key = input_key(t, alg)
        if t.id in seen:
            unpaired.append(UnpairedTrace("candidate", t.id, key, "listed more than once on the candidate side"))
        elif key is None:
            unpaired.append(UnpairedTrace("candidate", t.id, None, "no request recorded: its input is unknown"))
        else:
            queues[key].append(t)
        seen.add(t.id)
    pairs: list[TracePair] = []
    seen = set()
    for t in base:
        key = input_key(t, alg)
        if t.id in seen:
            unpaired.append(UnpairedTrace("baseline", t.id, key, "listed more than once on the baseline side"))
        elif key is None:
            unpaired.append(UnpairedTrace("baseline", t.id, None, "no request recorded: its input is unknown"))
        elif queues.get(key):
            pairs.append(TracePair(len(pairs), key, t, queues[key].pop(0)))
        else:
            matched = sum(1 for p in pairs if p.key == key)
            why = ("no candidate trace has this input" if not matched else
                   f"repeat {matched + 1} of this input; the candidates have only {matched}")
            unpaired.append(UnpairedTrace("baseline", t.id, key, why))
        seen.add(t.id)
    for key, rest in queues.items():
        matched = sum(1 for p in pairs if p.key == key)
        for t in rest:
            why = ("no baseline trace has this input" if not matched else
                   f"a repeat of this input beyond the {matched} baseline trace(s) that have it")
            unpaired.append(UnpairedTrace("candidate", t.id, key, why))
    return Pairing(tuple(pairs), tuple(unpaired))


__all__ = ["PAIRING_RULE", "Pairing", "TracePair", "UnpairedTrace", "input_key", "metadata_key", "metadata_rule",
           "pair_traces", "parse_pair_by"]
