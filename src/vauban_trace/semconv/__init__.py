"""The one registry of span and event attribute names used by vauban-trace.

Nothing else in the package spells an attribute name: emitters and the rebuild path both import
from here, and ``docs/semconv.md`` documents every name (a test asserts that each constant
defined here appears there). Names outside ``gen_ai.*`` live under the ``vauban.`` namespace: the
GenAI conventions have no names for inner inference stages, so none are invented there.

Layout of a traced request::

    root span   "{gen_ai.operation.name} {gen_ai.request.model}"   vauban.trace.root = true
      ├── stage span  "tokenize"     vauban.stage = "tokenize", vauban.usl.* counters
      │      event    vauban.artifact          (id, kind, digest, uri, shape, dtype, summary...)
      ├── stage span  "forward"      ...
      │      event    vauban.artifact.missing  (kind, reason, detail)
      └── spill span  "forward"      vauban.spill.of = <span id>   (events past the per-span limit)

Counters: ``vauban.usl.<counter>`` holds the value and ``vauban.usl.<counter>.provenance`` says
how it was obtained (``measured`` / ``derived`` / ``declared`` / ``unavailable``). An unavailable
counter has only the provenance attribute, never a placeholder value.
"""

from __future__ import annotations

from typing import Final

from vauban_trace.contract._kinds import COUNTER_NAMES

# --- OpenTelemetry GenAI conventions (root span) -------------------------------------------
GEN_AI_OPERATION_NAME: Final = "gen_ai.operation.name"
GEN_AI_PROVIDER_NAME: Final = "gen_ai.provider.name"
GEN_AI_REQUEST_MODEL: Final = "gen_ai.request.model"
GEN_AI_REQUEST_MAX_TOKENS: Final = "gen_ai.request.max_tokens"
GEN_AI_REQUEST_SEED: Final = "gen_ai.request.seed"
GEN_AI_REQUEST_TEMPERATURE: Final = "gen_ai.request.temperature"
GEN_AI_REQUEST_TOP_P: Final = "gen_ai.request.top_p"
GEN_AI_REQUEST_TOP_K: Final = "gen_ai.request.top_k"
GEN_AI_RESPONSE_FINISH_REASONS: Final = "gen_ai.response.finish_reasons"
GEN_AI_RESPONSE_MODEL: Final = "gen_ai.response.model"
GEN_AI_USAGE_INPUT_TOKENS: Final = "gen_ai.usage.input_tokens"
GEN_AI_USAGE_OUTPUT_TOKENS: Final = "gen_ai.usage.output_tokens"
GEN_AI_INPUT_MESSAGES: Final = "gen_ai.input.messages"
GEN_AI_OUTPUT_MESSAGES: Final = "gen_ai.output.messages"
ERROR_TYPE: Final = "error.type"

# --- General OpenTelemetry names read back by the rebuild path -----------------------------
SERVICE_NAME: Final = "service.name"  # resource attribute
EXCEPTION_EVENT: Final = "exception"  # span event name
EXCEPTION_TYPE: Final = "exception.type"
EXCEPTION_MESSAGE: Final = "exception.message"
# Tag keys of Jaeger's legacy UI model (OTLP -> Jaeger translation), mapped back to OTLP fields
JAEGER_SPAN_KIND: Final = "span.kind"
JAEGER_ERROR: Final = "error"
JAEGER_STATUS_CODE: Final = "otel.status_code"
JAEGER_STATUS_DESCRIPTION: Final = "otel.status_description"
JAEGER_SCOPE_NAME: Final = "otel.scope.name"
JAEGER_SCOPE_VERSION: Final = "otel.scope.version"
JAEGER_LOG_EVENT: Final = "event"  # log field holding the event name

# --- Trace-level (root span) ---------------------------------------------------------------
TRACE_ROOT: Final = "vauban.trace.root"
TRACE_SCHEMA_VERSION: Final = "vauban.trace.schema_version"
TRACE_METADATA: Final = "vauban.trace.metadata"  # JSON object

REQUEST_INPUT_TEXT: Final = "vauban.request.input_text"  # only with content capture on
REQUEST_INPUT_REF: Final = "vauban.request.input_ref"  # digest of the stored input text
REQUEST_PROMPT_IDS: Final = "vauban.request.prompt_ids"  # int array, only with content capture on
REQUEST_REQUESTED_ARTIFACTS: Final = "vauban.request.requested_artifacts"  # string array
REQUEST_LAYERS: Final = "vauban.request.layers"  # int array
REQUEST_INTERVENTIONS: Final = "vauban.request.interventions"  # JSON array
REQUEST_APPLY_CHAT_TEMPLATE: Final = "vauban.request.apply_chat_template"
REQUEST_RETURN_LOGITS: Final = "vauban.request.return_logits"
REQUEST_RETURN_LOGPROBS: Final = "vauban.request.return_logprobs"
REQUEST_METADATA: Final = "vauban.request.metadata"  # JSON object
REQUEST_SEED_TEXT: Final = "vauban.request.seed_text"  # a seed outside int64, in decimal

EXECUTOR_NAME: Final = "vauban.executor.name"
EXECUTOR_VERSION: Final = "vauban.executor.version"
CAPABILITY_PREFIX: Final = "vauban.capability."  # + capability name -> support level
CAPABILITY_DEVICE_KINDS: Final = "vauban.capability.device_kinds"  # string array
CAPABILITY_NOTES: Final = "vauban.capability.notes"  # JSON object

SWEEP_ID: Final = "vauban.sweep.id"
SWEEP_AXIS: Final = "vauban.sweep.axis"
SWEEP_AXIS_VALUE: Final = "vauban.sweep.axis_value"

# Keys inside the ``open_loop`` object of ``vauban.trace.metadata`` (the open-loop driver's labels,
# ``Trace.metadata["open_loop"]``; not attribute names of their own: the rebuild keeps that object
# whole from every source). Written with the out-of-process arrival generator only.
OPEN_LOOP_SENT_UNIX_NANO: Final = "sent_unix_nano"  # int: the generator process sent the arrival
OPEN_LOOP_RECEIVED_UNIX_NANO: Final = "received_unix_nano"  # int: the serving process received it

# --- Stage spans ---------------------------------------------------------------------------
STAGE: Final = "vauban.stage"
DEVICE_KIND: Final = "vauban.device.kind"
DEVICE_LABEL: Final = "vauban.device.label"
MEMORY_METHOD: Final = "vauban.usl.memory_bytes.method"
SPAN_INPUT_ARTIFACT_IDS: Final = "vauban.span.input_artifact_ids"  # string array
SPAN_METADATA: Final = "vauban.span.metadata"  # JSON object
SPILL_OF: Final = "vauban.spill.of"  # span id (hex) whose events overflowed into this span
COUNTER_MODE: Final = "vauban.usl.mode"  # "cheap" | "deep"

USL_PREFIX: Final = "vauban.usl."
PROVENANCE_SUFFIX: Final = ".provenance"

# Decode aggregation (per-step facts folded onto the decode span)
DECODE_STEPS: Final = "vauban.decode.steps"
DECODE_STEP_P50_S: Final = "vauban.decode.step_p50_s"
DECODE_STEP_P95_S: Final = "vauban.decode.step_p95_s"
DECODE_STEP_MAX_S: Final = "vauban.decode.step_max_s"
DECODE_STEP_MEAN_S: Final = "vauban.decode.step_mean_s"
DECODE_STOP_REASON: Final = "vauban.decode.stop_reason"


def usl(counter: str) -> str:
    """Attribute name of a scaling counter, e.g. ``usl("token_count") -> "vauban.usl.token_count"``."""
    if counter not in COUNTER_NAMES:
        raise KeyError(f"unknown counter {counter!r}")
    return USL_PREFIX + counter


def usl_provenance(counter: str) -> str:
    """Attribute name of a counter's provenance word."""
    return usl(counter) + PROVENANCE_SUFFIX


def capability(name: str) -> str:
    """Attribute name of a capability's support level, e.g. ``vauban.capability.can_emit_logits``."""
    return CAPABILITY_PREFIX + name


# --- Artifact events -----------------------------------------------------------------------
EVENT_ARTIFACT: Final = "vauban.artifact"
EVENT_ARTIFACT_MISSING: Final = "vauban.artifact.missing"

ARTIFACT_ID: Final = "vauban.artifact.id"
ARTIFACT_KIND: Final = "vauban.artifact.kind"
ARTIFACT_DIGEST: Final = "vauban.artifact.digest"
ARTIFACT_URI: Final = "vauban.artifact.uri"
ARTIFACT_MEDIA_TYPE: Final = "vauban.artifact.media_type"
ARTIFACT_SHAPE: Final = "vauban.artifact.shape"  # int array
ARTIFACT_DTYPE: Final = "vauban.artifact.dtype"
ARTIFACT_BYTE_SIZE: Final = "vauban.artifact.byte_size"
ARTIFACT_LAYER: Final = "vauban.artifact.layer"
ARTIFACT_METADATA: Final = "vauban.artifact.metadata"  # JSON object
ARTIFACT_STAT_PREFIX: Final = "vauban.artifact.stat."
ARTIFACT_STAT_MEAN: Final = "vauban.artifact.stat.mean"
ARTIFACT_STAT_STD: Final = "vauban.artifact.stat.std"
ARTIFACT_STAT_MIN: Final = "vauban.artifact.stat.min"
ARTIFACT_STAT_MAX: Final = "vauban.artifact.stat.max"
ARTIFACT_STAT_L2_NORM: Final = "vauban.artifact.stat.l2_norm"
ARTIFACT_TOPK_IDS: Final = "vauban.artifact.topk.ids"  # int array
ARTIFACT_TOPK_VALUES: Final = "vauban.artifact.topk.values"  # double array

MISSING_REASON: Final = "vauban.artifact.missing.reason"
MISSING_DETAIL: Final = "vauban.artifact.missing.detail"

#: Summary statistic attribute -> key in ``TraceArtifact.summary``.
SUMMARY_KEYS: Final[dict[str, str]] = {
    ARTIFACT_STAT_MEAN: "mean",
    ARTIFACT_STAT_STD: "std",
    ARTIFACT_STAT_MIN: "min",
    ARTIFACT_STAT_MAX: "max",
    ARTIFACT_STAT_L2_NORM: "l2_norm",
    ARTIFACT_TOPK_IDS: "topk_ids",
    ARTIFACT_TOPK_VALUES: "topk_values",
}


def all_attribute_names() -> list[str]:
    """Every concrete attribute name and event name defined here (for docs and tests)."""
    names = [
        v
        for k, v in globals().items()
        if k.isupper() and isinstance(v, str) and (v.startswith(("vauban.", "gen_ai.", "error.")))
        and not k.endswith(("_PREFIX", "_SUFFIX"))
    ]
    names += [usl(c) for c in COUNTER_NAMES] + [usl_provenance(c) for c in COUNTER_NAMES]
    from vauban_trace.contract._kinds import CAPABILITY_NAMES

    names += [capability(c) for c in CAPABILITY_NAMES]
    return sorted(set(names))
