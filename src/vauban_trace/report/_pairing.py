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
    """The pairs found and every trace left over."""

    pairs: tuple[TracePair, ...] = ()
    unpaired: tuple[UnpairedTrace, ...] = ()
    rule: str = PAIRING_RULE

    def to_dict(self) -> dict[str, Any]:
        return {"rule": self.rule, "pairs": [p.to_dict() for p in self.pairs],
                "unpaired": [u.to_dict() for u in self.unpaired]}


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


def pair_traces(baselines: Iterable[Trace], candidates: Iterable[Trace]) -> Pairing:
    """Pair ``baselines`` with ``candidates`` by input (see the module docstring)."""
    base, cand = _traces(baselines, "baseline"), _traces(candidates, "candidate")
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


__all__ = ["PAIRING_RULE", "Pairing", "TracePair", "UnpairedTrace", "input_key", "pair_traces"]
