"""Readable, plain-text summaries of a rebuilt :class:`~vauban_trace.contract.Trace`.

:func:`render_trace_summary` is shared by ``vauban-trace demo`` and ``vauban-trace show``::

    trace 4bf92f3577b34da6a3ce929d0e0e4736  complete  schema 1.0
      model tiny-llama  operation text_completion  provider huggingface.transformers
      service vauban-trace  executor vauban-demo  device cpu
      requested: tokens, logits, logprobs, activation, weight_snapshot  layers: 1

    spans                                  duration  counters
      text_completion tiny-llama           71.2 ms
        load [load]                        52.0 ms   ...
        forward [forward]                   6.1 ms   token_count=12ᵈ input_bytes=192ᵈ ...

    artifacts (4)
      tokens      (12,) int64          blake3:1f0c3a...  from tokenize
      logits      (1, 12, 576) float32 blake3:9a7e44...  from forward  top-3 ids 17, 5, 300
    missing (1)
      weight_snapshot  unsupported  the demo does not capture weights
    trace JSON: .vauban/traces/4bf9....json

Counter values carry a provenance mark: ``ᵐ`` measured, ``ᵈ`` derived, ``ᶜ`` declared (stated by
the caller). Counters whose provenance is ``unavailable`` are not listed; their number is given
per span, so an absent value never reads as zero. Plain ASCII marks are used when the output
encoding cannot print them.
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

from vauban_trace.contract import COUNTER_NAMES, Trace, TraceArtifact, TraceSpan

_MARKS_UNICODE = {"measured": "ᵐ", "derived": "ᵈ", "declared": "ᶜ"}
_MARKS_ASCII = {"measured": "(m)", "derived": "(d)", "declared": "(c)"}
_BYTES = ("input_bytes", "output_bytes", "h2d_bytes", "d2h_bytes", "memory_bytes", "instrumentation_d2h_bytes")


def _marks() -> dict[str, str]:
    encoding = getattr(sys.stdout, "encoding", None) or "ascii"
    try:
        "".join(_MARKS_UNICODE.values()).encode(encoding)
    except (UnicodeEncodeError, LookupError):
        return _MARKS_ASCII
    return _MARKS_UNICODE


def _fmt_duration(seconds: float | None) -> str:
    if seconds is None:
        return "-"
    if seconds >= 1:
        return f"{seconds:.2f} s"
    if seconds >= 1e-3:
        return f"{seconds * 1e3:.1f} ms"
    return f"{seconds * 1e6:.0f} µs"


def _fmt_value(name: str, value: int | float) -> str:
    if name in _BYTES and isinstance(value, int) and value >= 10_000:
        for unit, size in (("GiB", 1 << 30), ("MiB", 1 << 20), ("KiB", 1 << 10)):
            if value >= size:
                return f"{value / size:.1f}{unit}"
    if isinstance(value, float):
        return f"{value:.4g}"
    return str(value)


def _counters(span: TraceSpan, marks: dict[str, str]) -> tuple[str, int]:
    prof = span.profile
    if prof is None:
        return "", 0
    parts: list[str] = []
    unavailable = 0
    for name in COUNTER_NAMES:
        if name == "duration_s":
            continue
        value = getattr(prof, name)
        if value is None:
            unavailable += 1
            continue
        mark = marks.get(str(prof.provenance_of(name)), "")
        parts.append(f"{name}={_fmt_value(name, value)}{mark}")
    return " ".join(parts), unavailable


def _depths(trace: Trace) -> dict[str, int]:
    ids = {s.id for s in trace.spans}
    depth: dict[str, int] = {}
    for span in trace.spans:  # parents precede children in a rebuilt trace; fall back to 0
        parent = span.parent_id
        depth[span.id] = depth.get(parent, -1) + 1 if parent in ids and parent is not None else 0
    return depth


def _ordered(trace: Trace) -> list[TraceSpan]:
    children: dict[str | None, list[TraceSpan]] = {}
    ids = {s.id for s in trace.spans}
    for span in trace.spans:
        key = span.parent_id if span.parent_id in ids else None
        children.setdefault(key, []).append(span)
    out: list[TraceSpan] = []

    def walk(parent: str | None) -> None:
        for span in sorted(children.get(parent, []), key=lambda s: (s.start_unix_nano, s.id)):
            out.append(span)
            walk(span.id)

    walk(None)
    return out


def _short_digest(digest: str | None) -> str:
    if not digest:
        return "-"
    alg, _, hexpart = digest.partition(":")
    return f"{alg}:{hexpart[:16]}…" if hexpart else digest


def _artifact_line(art: TraceArtifact, producers: dict[str, str]) -> str:
    shape = "(" + ", ".join(str(d) for d in art.shape) + ("," if len(art.shape) == 1 else "") + ")"
    desc = f"{shape} {art.dtype or ''}".strip()
    layer = f" layer {art.layer}" if art.layer is not None else ""
    extra = ""
    ids = art.summary.get("topk_ids") if art.summary else None
    if ids:
        extra = f"  top-{len(ids)} ids {', '.join(str(i) for i in ids)}"
    elif art.summary and art.summary.get("mean") is not None:
        extra = f"  mean {float(art.summary['mean']):.4g}  l2 {float(art.summary.get('l2_norm') or 0):.4g}"
    producer = producers.get(art.producer_span_id, art.producer_span_id)
    return f"  {art.kind:<19}{layer:<9}{desc:<24} {_short_digest(art.digest)}  from {producer}{extra}"


def render_trace_summary(trace: Trace, *, trace_json_path: Path | str | None = None) -> str:
    """A multi-line summary of ``trace`` (see the module docstring); ends without a newline."""
    marks = _marks()
    meta: dict[str, Any] = dict(trace.metadata)
    gen_ai: dict[str, Any] = dict(meta.get("gen_ai") or {})
    lines = [f"trace {trace.id}  {'complete' if trace.complete else 'INCOMPLETE'}  schema {trace.schema_version}"]
    head = []
    for label, key in (("model", "request.model"), ("operation", "operation.name"), ("provider", "provider.name")):
        if gen_ai.get(key):
            head.append(f"{label} {gen_ai[key]}")
    if head:
        lines.append("  " + "  ".join(head))
    info = []
    if meta.get("service_name"):
        info.append(f"service {meta['service_name']}")
    if trace.capabilities is not None:
        info.append(f"executor {trace.capabilities.executor}")
    if trace.device is not None:
        info.append(f"device {trace.device.label or trace.device.kind}")
    if info:
        lines.append("  " + "  ".join(info))
    usage = [f"{gen_ai[k]} {label}" for k, label in (("usage.input_tokens", "input tokens"),
                                                      ("usage.output_tokens", "output tokens")) if k in gen_ai]
    if usage:
        lines.append("  usage: " + ", ".join(usage))
    if trace.request is not None:
        req = trace.request
        layers = ", ".join(str(x) for x in req.collect_layers) or "-"
        lines.append(f"  requested: {', '.join(req.requested_artifacts) or '-'}  layers: {layers}")
        if req.input_text is not None:
            lines.append(f"  input text: {req.input_text!r}")
        elif req.input_ref is not None:
            lines.append(f"  input: stored by digest {_short_digest(req.input_ref)} (content capture off)")

    ordered = _ordered(trace)
    depth = _depths(trace)
    names = {s.id: s.name for s in trace.spans}
    labels = [f"{'  ' * depth.get(s.id, 0)}{s.name}{f' [{s.stage}]' if s.stage and s.stage != s.name else ''}" for s in ordered]
    width = max([len(x) for x in labels] + [5]) + 2
    lines += ["", f"spans{'':<{width - 3}}duration  counters"]
    total_unavailable = 0
    for span, label in zip(ordered, labels, strict=True):
        dur = span.profile.duration_s if span.profile is not None and span.profile.duration_s is not None else span.duration_s
        text, unavailable = _counters(span, marks)
        total_unavailable += unavailable
        status = f"  ERROR {span.error or ''}".rstrip() if span.status == "error" else ""
        lines.append(f"  {label:<{width}}{_fmt_duration(dur):>8}  {text}{status}".rstrip())
    lines.append(
        f"  marks: {marks['measured']} measured, {marks['derived']} derived, {marks['declared']} declared; "
        f"{total_unavailable} unavailable counter value(s) not shown"
    )

    lines += ["", f"artifacts ({len(trace.artifacts)})"]
    lines += [_artifact_line(a, names) for a in trace.artifacts] or ["  (none)"]
    if trace.missing:
        lines += ["", f"missing ({len(trace.missing)})"]
        for miss in trace.missing:
            layer = f" layer {miss.layer}" if miss.layer is not None else ""
            where = f"  on {names.get(miss.span_id, miss.span_id)}" if miss.span_id else ""
            detail = f"  {miss.detail}" if miss.detail else ""
            lines.append(f"  {miss.kind}{layer}  {miss.reason}{detail}{where}")
    if trace.problems:
        lines += ["", f"problems ({len(trace.problems)})"] + [f"  {p}" for p in trace.problems]
    if trace_json_path is not None:
        lines += ["", f"trace JSON: {trace_json_path}"]
    return "\n".join(lines)


__all__ = ["render_trace_summary"]
