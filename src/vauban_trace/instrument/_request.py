"""``traced_request``: the root span of one traced inference request.

::

    with traced_request(request, model="tiny-llama", capabilities=caps) as req:
        ...                                   # stages, artifacts
        req.set_usage(input_tokens=12, output_tokens=8)
    req.trace_id                              # hex id, to read the rebuilt Trace back

The root span is named ``"{operation} {model}"`` (GenAI convention), kind INTERNAL (the model
runs in this process), and carries ``vauban.trace.root = true``, ``vauban.trace.schema_version``,
the GenAI request attributes, the :class:`~vauban_trace.contract.TraceRequest` fields
(``vauban.request.*``), the executor's capabilities (``vauban.capability.*``) and, inside a
:func:`~vauban_trace.instrument.sweep_point` block, the sweep coordinates (``vauban.sweep.*``).

Content: the input text and prompt ids go onto the span only when
``OTEL_INSTRUMENTATION_GENAI_CAPTURE_MESSAGE_CONTENT`` is ``SPAN_ONLY`` or ``SPAN_AND_EVENT`` (or
``capture_content=True``). Otherwise the input (the text, or the prompt ids when there is no
text) is stored in the blob store and only its digest goes into ``vauban.request.input_ref``; with
no store configured the digest is still computed, so the request stays identifiable without its
content leaving the process.

Completeness: when the block ends, every requested artifact kind that no span produced and no
span recorded missing is recorded missing on the root span (reason ``failed``, detail "requested
but not produced"): a trace never silently omits a requested artifact. Exceptions raised inside
the block are recorded on the root span (status ERROR, ``error.type``) and re-raised unchanged.
"""

from __future__ import annotations

import contextlib
import contextvars
import json
import logging
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any

from opentelemetry import context as _context
from opentelemetry import trace as _trace
from opentelemetry.trace import SpanKind, Status, StatusCode, TracerProvider
from opentelemetry.util.types import AttributeValue

from vauban_trace import semconv as sc
from vauban_trace.contract import CAPABILITY_NAMES, SCHEMA_VERSION, Capabilities, TraceRequest
from vauban_trace.instrument import _artifacts, _spans, _state
from vauban_trace.instrument._sweep import current_sweep_point

_log = logging.getLogger("vauban_trace.instrument")


@dataclass
class RequestState:
    """Which requested kinds were produced or declared missing inside one request."""

    requested: tuple[str, ...]
    produced: set[str] = field(default_factory=set)
    missing: set[str] = field(default_factory=set)


_CURRENT: contextvars.ContextVar[RequestState | None] = contextvars.ContextVar(
    "vauban_trace_request", default=None
)


def current_request_state() -> RequestState | None:
    return _CURRENT.get()


class RequestHandle:
    """What ``traced_request`` yields. Methods are no-ops when nothing is recording."""

    def __init__(self, span: _trace.Span, state: RequestState | None) -> None:
        self.span = span
        self._state = state
        ctx = span.get_span_context()
        self.trace_id: str | None = format(ctx.trace_id, "032x") if ctx.is_valid else None
        self.span_id: str | None = format(ctx.span_id, "016x") if ctx.is_valid else None

    @property
    def recording(self) -> bool:
        return self.span.is_recording()

    def set_usage(self, *, input_tokens: int | None = None, output_tokens: int | None = None) -> None:
        if input_tokens is not None:
            self.span.set_attribute(sc.GEN_AI_USAGE_INPUT_TOKENS, int(input_tokens))
        if output_tokens is not None:
            self.span.set_attribute(sc.GEN_AI_USAGE_OUTPUT_TOKENS, int(output_tokens))

    def set_finish_reasons(self, *reasons: str | Sequence[str]) -> None:
        flat: list[str] = []
        for r in reasons:
            flat.extend([r] if isinstance(r, str) else list(r))
        self.span.set_attribute(sc.GEN_AI_RESPONSE_FINISH_REASONS, flat)

    def set_attribute(self, key: str, value: AttributeValue) -> None:
        self.span.set_attribute(key, value)

    def set_device(self, device: str) -> None:
        self.span.set_attribute(sc.DEVICE_KIND, device.split(":", 1)[0])
        self.span.set_attribute(sc.DEVICE_LABEL, device)

    def set_capabilities(self, capabilities: Capabilities) -> None:
        """Declare (or re-declare) the executor's capabilities, e.g. once a lazy load has run."""
        if self.recording:
            self.span.set_attributes(_capability_attrs(capabilities))


def _request_attrs(request: TraceRequest, capture: bool, store: Any) -> dict[str, AttributeValue]:
    from vauban_trace.artifacts import encode_json

    attrs: dict[str, AttributeValue] = {
        sc.REQUEST_REQUESTED_ARTIFACTS: list(request.requested_artifacts),
        sc.REQUEST_LAYERS: list(request.collect_layers),
        sc.REQUEST_APPLY_CHAT_TEMPLATE: request.apply_chat_template,
        sc.REQUEST_RETURN_LOGITS: request.return_logits,
        sc.REQUEST_RETURN_LOGPROBS: request.return_logprobs,
    }
    if request.interventions:
        attrs[sc.REQUEST_INTERVENTIONS] = json.dumps([i.to_dict() for i in request.interventions], sort_keys=True)
    if request.metadata:
        attrs[sc.REQUEST_METADATA] = json.dumps(request.to_dict()["metadata"], sort_keys=True)
    if capture:
        if request.input_text is not None:
            attrs[sc.REQUEST_INPUT_TEXT] = request.input_text
        if request.prompt_ids is not None:
            attrs[sc.REQUEST_PROMPT_IDS] = list(request.prompt_ids)
        if request.input_ref is not None:
            attrs[sc.REQUEST_INPUT_REF] = request.input_ref
        return attrs
    if request.input_ref is not None:
        attrs[sc.REQUEST_INPUT_REF] = request.input_ref
        return attrs
    content: Any = request.input_text if request.input_text is not None else list(request.prompt_ids or ())
    blob = encode_json(content)
    media = _artifacts.MEDIA_JSON
    try:
        if store is not None:
            ref = store.submit(blob, media) if hasattr(store, "submit") else store.put(blob, media)
            attrs[sc.REQUEST_INPUT_REF] = ref.digest
            return attrs
    except Exception as exc:
        _log.warning("vauban-trace: could not store the request input: %s", exc)
    from vauban_trace.artifacts import compute_digest

    attrs[sc.REQUEST_INPUT_REF] = compute_digest(blob)
    return attrs


def _capability_attrs(caps: Capabilities) -> dict[str, AttributeValue]:
    attrs: dict[str, AttributeValue] = {sc.EXECUTOR_NAME: caps.executor}
    for name in CAPABILITY_NAMES:
        attrs[sc.capability(name)] = str(caps.level(name))
    if caps.device_kinds:
        attrs[sc.CAPABILITY_DEVICE_KINDS] = list(caps.device_kinds)
    if caps.notes:
        attrs[sc.CAPABILITY_NOTES] = json.dumps(dict(caps.notes), sort_keys=True)
    return attrs


@contextlib.contextmanager
def traced_request(
    request: TraceRequest | None = None,
    *,
    model: str,
    provider: str = "huggingface.transformers",
    operation: str = "text_completion",
    capabilities: Capabilities | None = None,
    executor: str | None = None,
    executor_version: str | None = None,
    device: str | None = None,
    capture_content: bool | None = None,
    max_tokens: int | None = None,
    seed: int | None = None,
    temperature: float | None = None,
    top_p: float | None = None,
    top_k: int | None = None,
    metadata: dict[str, Any] | None = None,
    tracer_provider: TracerProvider | None = None,
) -> Iterator[RequestHandle]:
    """Open the root span of a traced request (see the module docstring)."""
    if not model:
        from vauban_trace._exceptions import ContractError

        raise ContractError("traced_request: model must be a non-empty string")
    tracer = _state.current_tracer(tracer_provider)
    if tracer is None:
        yield RequestHandle(_trace.INVALID_SPAN, None)
        return
    capture = _state.capture_content_enabled() if capture_content is None else bool(capture_content)
    attrs: dict[str, AttributeValue] = {
        sc.TRACE_ROOT: True,
        sc.TRACE_SCHEMA_VERSION: SCHEMA_VERSION,
        sc.GEN_AI_OPERATION_NAME: operation,
        sc.GEN_AI_PROVIDER_NAME: provider,
        sc.GEN_AI_REQUEST_MODEL: model,
    }
    if seed is not None and not -(2**63) <= seed < 2**63:  # OTLP ints are signed 64-bit: keep it exact as text
        attrs[sc.REQUEST_SEED_TEXT] = str(seed)
        seed = None
    for key, value in (
        (sc.GEN_AI_REQUEST_MAX_TOKENS, max_tokens),
        (sc.GEN_AI_REQUEST_SEED, seed),
        (sc.GEN_AI_REQUEST_TEMPERATURE, temperature),
        (sc.GEN_AI_REQUEST_TOP_P, top_p),
        (sc.GEN_AI_REQUEST_TOP_K, top_k),
    ):
        if value is not None:
            attrs[key] = value
    if request is not None:
        session = _state.get_session()
        attrs.update(_request_attrs(request, capture, session.blob_writer if session is not None else None))
    if capabilities is not None:
        attrs.update(_capability_attrs(capabilities))
    if executor is not None:
        attrs[sc.EXECUTOR_NAME] = executor
    if executor_version is not None:
        attrs[sc.EXECUTOR_VERSION] = executor_version
    if device is not None:
        attrs[sc.DEVICE_KIND] = device.split(":", 1)[0]
        attrs[sc.DEVICE_LABEL] = device
    if metadata:
        attrs[sc.TRACE_METADATA] = json.dumps(metadata, sort_keys=True, default=str)
    point = current_sweep_point()
    if point is not None:
        attrs[sc.SWEEP_AXIS] = point.axis
        attrs[sc.SWEEP_AXIS_VALUE] = point.value
        if point.sweep_id is not None:
            attrs[sc.SWEEP_ID] = point.sweep_id
    name = f"{operation} {model}"
    span = tracer.start_span(name, kind=SpanKind.INTERNAL, attributes=attrs)
    owned = _spans.Owned(span, name, None, tracer)
    _spans.register(owned)
    state = RequestState(tuple(request.requested_artifacts) if request is not None else ())
    token = _context.attach(_trace.set_span_in_context(span))
    req_token = _CURRENT.set(state)
    handle = RequestHandle(span, state)
    if point is not None and handle.trace_id is not None:
        point.trace_ids.append(handle.trace_id)
    try:
        yield handle
    except BaseException as exc:
        try:
            span.set_attribute(sc.ERROR_TYPE, type(exc).__qualname__)
            _spans.record_exception(span, exc)
            span.set_status(Status(StatusCode.ERROR, f"{type(exc).__name__}: {exc}"))
        except Exception:
            _log.debug("could not record the exception on the root span", exc_info=True)
        raise
    finally:
        try:
            for kind in state.requested:
                if kind not in state.produced and kind not in state.missing:
                    _artifacts._add_missing(span, kind, "failed", "requested but not produced", None)
        except Exception:
            _log.debug("could not record missing artifacts", exc_info=True)
        _CURRENT.reset(req_token)
        _spans.unregister(owned)
        span.end()
        _context.detach(token)
