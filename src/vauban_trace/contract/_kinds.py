"""Closed vocabularies of the trace contract.

Every enumeration here is a ``StrEnum`` so that its members serialise as their plain string
values in JSON and in OpenTelemetry attributes. Adding a member is a minor schema change;
renaming or removing one is a major one (see :data:`SCHEMA_VERSION`).
"""

from __future__ import annotations

from enum import StrEnum

#: Version of the Trace document format. Readers MUST refuse a different major version.
SCHEMA_VERSION = "1.0"


class ArtifactKind(StrEnum):
    """What an artifact is evidence of. Ordered as in Vauban's reference vocabulary."""

    TEXT = "text"
    TOKENS = "tokens"
    LOGITS = "logits"
    LOGPROBS = "logprobs"
    ACTIVATION = "activation"
    INTERVENTION_RESULT = "intervention_result"
    WEIGHT_SNAPSHOT = "weight_snapshot"
    METRIC = "metric"
    REPORT_EVIDENCE = "report_evidence"
    PROFILE = "profile"
    OTHER = "other"


class SupportLevel(StrEnum):
    """How completely an executor can produce something."""

    UNSUPPORTED = "unsupported"
    PARTIAL = "partial"
    FULL = "full"


class Stage(StrEnum):
    """The inference stages a span may stand for (``vauban.stage``)."""

    LOAD = "load"
    TOKENIZE = "tokenize"
    BATCH = "batch"
    PREFILL = "prefill"
    FORWARD = "forward"
    OBSERVE = "observe"
    INTERVENE = "intervene"
    DECODE = "decode"
    SCORE = "score"
    EMIT = "emit"


class Provenance(StrEnum):
    """How a counter's value was obtained.

    ``measured``: read from the running system (a timer, an allocator, a dispatch counter).
    ``derived``: computed from measured facts or from tensor metadata (e.g. bytes = numel * itemsize).
    ``declared``: stated by the caller without measurement.
    ``unavailable``: could not be obtained; the value is absent, never guessed.
    """

    MEASURED = "measured"
    DERIVED = "derived"
    DECLARED = "declared"
    UNAVAILABLE = "unavailable"


class MissingReason(StrEnum):
    """Why a requested artifact is not in the trace."""

    UNSUPPORTED = "unsupported"
    NOT_REQUESTED = "not_requested"
    FAILED = "failed"


class SpanStatus(StrEnum):
    UNSET = "unset"
    OK = "ok"
    ERROR = "error"


#: Artifact-oriented capability names, in the seed's order.
CAPABILITY_NAMES: tuple[str, ...] = (
    "can_emit_text",
    "can_emit_tokens",
    "can_emit_logits",
    "can_emit_logprobs",
    "can_emit_activations",
    "can_apply_interventions",
    "can_inspect_weights",
    "can_mutate_weights",
    "can_profile_device_memory",
    "can_profile_sync_points",
)

#: Which capability governs each artifact kind (kinds absent here are always emittable).
CAPABILITY_FOR_KIND: dict[ArtifactKind, str] = {
    ArtifactKind.TEXT: "can_emit_text",
    ArtifactKind.TOKENS: "can_emit_tokens",
    ArtifactKind.LOGITS: "can_emit_logits",
    ArtifactKind.LOGPROBS: "can_emit_logprobs",
    ArtifactKind.ACTIVATION: "can_emit_activations",
    ArtifactKind.INTERVENTION_RESULT: "can_apply_interventions",
    ArtifactKind.WEIGHT_SNAPSHOT: "can_inspect_weights",
}

#: The scaling counters of a StageProfile, in display order. All are non-negative.
COUNTER_NAMES: tuple[str, ...] = (
    "duration_s",
    "device_duration_s",
    "memory_bytes",
    "batch_size",
    "token_count",
    "queue_depth",
    "input_bytes",
    "output_bytes",
    "h2d_copies",
    "h2d_bytes",
    "d2h_copies",
    "d2h_bytes",
    "host_device_copies",
    "sync_points",
    "instrumentation_d2h_copies",
    "instrumentation_d2h_bytes",
)
