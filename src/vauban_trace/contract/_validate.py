"""Graph rules of a Trace (the rules that involve more than one record).

``validate_trace(trace)`` raises :class:`ContractError` naming the first offending id;
``trace_problems(trace)`` returns every violation as a list of messages instead.

Rules:

1. span ids are unique; artifact ids are unique;
2. every artifact's ``producer_span_id`` names a span of the trace;
3. every id in a span's ``input_artifact_ids`` / ``output_artifact_ids`` names an artifact;
4. a span's outputs are exactly the artifacts that name it as producer;
5. a span's ``parent_id``, when set, names a span of the trace unless the trace is marked
   incomplete (fragments rebuilt before their parent arrived);
6. a missing-artifact record's ``span_id``, when set, names a span;
7. counters are non-negative (checked on construction of each StageProfile).
"""

from __future__ import annotations

from collections import Counter

from vauban_trace.contract._errors import ContractError
from vauban_trace.contract._trace import Trace


def trace_problems(trace: Trace) -> list[str]:
    """Every graph-rule violation of ``trace``, as messages naming the offending ids."""
    problems: list[str] = []
    span_list = [s.id for s in trace.spans]
    span_ids = set(span_list)
    if len(span_ids) != len(span_list):
        for span_id, n in Counter(span_list).items():
            if n > 1:
                problems.append(f"span id {span_id!r} is used by {n} spans")
    art_list = [a.id for a in trace.artifacts]
    art_ids = set(art_list)
    if len(art_ids) != len(art_list):
        for art_id, n in Counter(art_list).items():
            if n > 1:
                problems.append(f"artifact id {art_id!r} is used by {n} artifacts")
    produced: dict[str, set[str]] = {}
    for art in trace.artifacts:
        if art.producer_span_id not in span_ids:
            problems.append(f"artifact {art.id!r}: producer span {art.producer_span_id!r} does not exist")
        produced.setdefault(art.producer_span_id, set()).add(art.id)
    nothing: set[str] = set()
    complete = trace.complete
    for span in trace.spans:
        for art_id in span.input_artifact_ids:
            if art_id not in art_ids:
                problems.append(f"span {span.id!r}: input artifact {art_id!r} does not exist")
        outputs = span.output_artifact_ids
        actual = produced.get(span.id, nothing)
        if (outputs or actual) and set(outputs) != actual:  # equal sets: every rule below holds
            for art_id in outputs:
                if art_id not in art_ids:
                    problems.append(f"span {span.id!r}: output artifact {art_id!r} does not exist")
            declared = set(outputs)
            for art_id in sorted(declared - actual - (declared - art_ids)):
                problems.append(f"span {span.id!r}: output {art_id!r} names another span as producer")
            for art_id in sorted(actual - declared):
                problems.append(
                    f"span {span.id!r}: artifact {art_id!r} names it as producer but is not among its outputs"
                )
        if span.parent_id is not None and span.parent_id not in span_ids and complete:
            problems.append(f"span {span.id!r}: parent {span.parent_id!r} does not exist")
    for miss in trace.missing:
        if miss.span_id is not None and miss.span_id not in span_ids:
            problems.append(f"missing {miss.kind!r}: span {miss.span_id!r} does not exist")
    return problems


def validate_trace(trace: Trace) -> Trace:
    """Return ``trace`` if it obeys the graph rules; raise :class:`ContractError` otherwise."""
    problems = trace_problems(trace)
    if problems:
        more = f" (and {len(problems) - 1} more)" if len(problems) > 1 else ""
        raise ContractError(f"trace {trace.id!r}: {problems[0]}{more}")
    return trace
