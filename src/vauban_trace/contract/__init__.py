"""The trace vocabulary: what a Vauban Trace is.

This subpackage imports nothing heavy (no OpenTelemetry, no torch): consumers such as report
generators can depend on it alone.

Records (frozen dataclasses, exact JSON round trip through ``to_dict``/``from_dict``):

- :class:`TraceRequest` what was asked (input, requested artifact kinds, layers, interventions);
- :class:`Trace` the record of one request: spans, artifacts, missing artifacts, capabilities;
- :class:`TraceSpan` one stage, with a :class:`StageProfile` of scaling counters;
- :class:`TraceArtifact` typed evidence: a digest pointer into the blob store plus summary;
- :class:`MissingArtifact` a requested artifact that is absent, with the reason;
- :class:`Capabilities` what an executor can honestly emit, per capability, with support levels.

Vocabularies: :class:`ArtifactKind`, :class:`SupportLevel`, :class:`Stage`, :class:`Provenance`,
:class:`MissingReason`, :data:`CAPABILITY_NAMES`, :data:`COUNTER_NAMES`.

Validation: each record validates its own fields on construction; :func:`validate_trace` checks
the graph rules (unique ids, producers exist, span outputs agree with producers). Every error is a
:class:`ContractError` whose message names the offending id or key. :func:`trace_json_schema`
returns the JSON Schema generated from these classes (checked in as ``trace.schema.json``).
"""

from vauban_trace.contract._digest import DIGEST_ALGORITHMS, check_digest, parse_digest
from vauban_trace.contract._errors import ContractError
from vauban_trace.contract._kinds import (
    CAPABILITY_FOR_KIND,
    CAPABILITY_NAMES,
    COUNTER_NAMES,
    SCHEMA_VERSION,
    ArtifactKind,
    MissingReason,
    Provenance,
    SpanStatus,
    Stage,
    SupportLevel,
)
from vauban_trace.contract._model import (
    Capabilities,
    Device,
    Intervention,
    MissingArtifact,
    StageProfile,
    TraceArtifact,
    TraceRequest,
    TraceSpan,
)
from vauban_trace.contract._schema import trace_json_schema
from vauban_trace.contract._trace import Trace
from vauban_trace.contract._validate import trace_problems, validate_trace

__all__ = [
    "CAPABILITY_FOR_KIND",
    "CAPABILITY_NAMES",
    "COUNTER_NAMES",
    "DIGEST_ALGORITHMS",
    "SCHEMA_VERSION",
    "ArtifactKind",
    "Capabilities",
    "ContractError",
    "Device",
    "Intervention",
    "MissingArtifact",
    "MissingReason",
    "Provenance",
    "SpanStatus",
    "Stage",
    "StageProfile",
    "SupportLevel",
    "Trace",
    "TraceArtifact",
    "TraceRequest",
    "TraceSpan",
    "check_digest",
    "parse_digest",
    "trace_json_schema",
    "trace_problems",
    "validate_trace",
]
