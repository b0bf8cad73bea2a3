"""Access levels, claim strengths, and the policy that ties them together.

Vauban's reference orders both vocabularies from weakest to strongest:

- access levels: ``single_snapshot``; ``black_box`` and ``paired_outputs``; ``logprobs``;
  ``weights``; ``activations``; ``base_and_modified`` / ``base_and_transformed``. The members
  grouped together share a rank (:func:`access_rank`); enum order is the reference order.
- claim strengths: ``behavioral_profile``, ``black_box_behavioral_diff``, ``distributional_diff``,
  ``weight_diff``, ``activation_diagnostic``, ``model_change_audit`` (rank = position).

Each access level caps the strongest claim it supports (:data:`CLAIM_CAP`), following the
reference's mapping from evidence: text only -> behavioral profile; paired text -> black-box diff;
logits/logprobs -> distributional diff; weights -> weight diff; activations -> activation
diagnostic; base and modified/transformed weights -> model-change audit. Each level also has fixed
wording (:data:`CAN_CLAIM`, :data:`CANNOT_CLAIM`) that a report prints verbatim.

A claim of a given strength must also cite an artifact of a kind that can carry it
(:data:`SUPPORTING_KINDS`), and comparative strengths (:data:`COMPARATIVE`) need two traces.
"""

from __future__ import annotations

from enum import StrEnum


class AccessLevel(StrEnum):
    """How much of the models the evidence reaches, weakest first (reference order)."""

    SINGLE_SNAPSHOT = "single_snapshot"
    BLACK_BOX = "black_box"
    PAIRED_OUTPUTS = "paired_outputs"
    LOGPROBS = "logprobs"
    WEIGHTS = "weights"
    ACTIVATIONS = "activations"
    BASE_AND_MODIFIED = "base_and_modified"
    BASE_AND_TRANSFORMED = "base_and_transformed"


class ClaimStrength(StrEnum):
    """How strong a statement about a model (change) is, weakest first (reference order)."""

    BEHAVIORAL_PROFILE = "behavioral_profile"
    BLACK_BOX_BEHAVIORAL_DIFF = "black_box_behavioral_diff"
    DISTRIBUTIONAL_DIFF = "distributional_diff"
    WEIGHT_DIFF = "weight_diff"
    ACTIVATION_DIAGNOSTIC = "activation_diagnostic"
    MODEL_CHANGE_AUDIT = "model_change_audit"


_ACCESS_RANK: dict[AccessLevel, int] = {
    AccessLevel.SINGLE_SNAPSHOT: 0,
    AccessLevel.BLACK_BOX: 1,
    AccessLevel.PAIRED_OUTPUTS: 1,
    AccessLevel.LOGPROBS: 2,
    AccessLevel.WEIGHTS: 3,
    AccessLevel.ACTIVATIONS: 4,
    AccessLevel.BASE_AND_MODIFIED: 5,
    AccessLevel.BASE_AND_TRANSFORMED: 5,
}

_STRENGTH_RANK: dict[ClaimStrength, int] = {s: i for i, s in enumerate(ClaimStrength)}

#: The strongest claim each access level supports.
CLAIM_CAP: dict[AccessLevel, ClaimStrength] = {
    AccessLevel.SINGLE_SNAPSHOT: ClaimStrength.BEHAVIORAL_PROFILE,
    AccessLevel.BLACK_BOX: ClaimStrength.BLACK_BOX_BEHAVIORAL_DIFF,
    AccessLevel.PAIRED_OUTPUTS: ClaimStrength.BLACK_BOX_BEHAVIORAL_DIFF,
    AccessLevel.LOGPROBS: ClaimStrength.DISTRIBUTIONAL_DIFF,
    AccessLevel.WEIGHTS: ClaimStrength.WEIGHT_DIFF,
    AccessLevel.ACTIVATIONS: ClaimStrength.ACTIVATION_DIAGNOSTIC,
    AccessLevel.BASE_AND_MODIFIED: ClaimStrength.MODEL_CHANGE_AUDIT,
    AccessLevel.BASE_AND_TRANSFORMED: ClaimStrength.MODEL_CHANGE_AUDIT,
}

#: Artifact kinds that can carry a claim of each strength: a claim must cite at least one.
SUPPORTING_KINDS: dict[ClaimStrength, frozenset[str]] = {
    ClaimStrength.BEHAVIORAL_PROFILE: frozenset({"text", "tokens"}),
    ClaimStrength.BLACK_BOX_BEHAVIORAL_DIFF: frozenset({"text", "tokens"}),
    ClaimStrength.DISTRIBUTIONAL_DIFF: frozenset({"logits", "logprobs"}),
    ClaimStrength.WEIGHT_DIFF: frozenset({"weight_snapshot"}),
    ClaimStrength.ACTIVATION_DIAGNOSTIC: frozenset({"activation", "intervention_result"}),
    ClaimStrength.MODEL_CHANGE_AUDIT: frozenset({"weight_snapshot"}),
}

#: Strengths that compare two models: they need a baseline and a candidate trace.
COMPARATIVE: frozenset[ClaimStrength] = frozenset(
    {
        ClaimStrength.BLACK_BOX_BEHAVIORAL_DIFF,
        ClaimStrength.DISTRIBUTIONAL_DIFF,
        ClaimStrength.WEIGHT_DIFF,
        ClaimStrength.MODEL_CHANGE_AUDIT,
    }
)

#: What a report at each access level may say (fixed wording).
CAN_CLAIM: dict[AccessLevel, str] = {
    AccessLevel.SINGLE_SNAPSHOT: (
        "What this one recorded run produced for these inputs: its text and token outputs."
    ),
    AccessLevel.BLACK_BOX: (
        "How the outputs of the queried models differ on the inputs that were sent to both."
    ),
    AccessLevel.PAIRED_OUTPUTS: (
        "How the recorded outputs of the two runs differ on the same inputs."
    ),
    AccessLevel.LOGPROBS: (
        "How the next-token distributions differ on the recorded positions: shifts in probability"
        " mass and in the top-ranked tokens."
    ),
    AccessLevel.WEIGHTS: (
        "Which recorded parameter tensors differ and by how much, tensor by tensor."
    ),
    AccessLevel.ACTIVATIONS: (
        "Where in the recorded layers the internal representations diverge, and by how much;"
        " with interventions, what the intervention that was run did to them."
    ),
    AccessLevel.BASE_AND_MODIFIED: (
        "An audit of the change from the base to the modified model, tying recorded weight"
        " differences to the output, distribution and activation differences that were recorded."
    ),
    AccessLevel.BASE_AND_TRANSFORMED: (
        "An audit of the transformation (e.g. quantisation) from base to transformed model,"
        " tying recorded representation changes to the recorded output differences."
    ),
}

#: What a report at each access level must not say (fixed wording).
CANNOT_CLAIM: dict[AccessLevel, str] = {
    AccessLevel.SINGLE_SNAPSHOT: (
        "Anything about change: there is nothing to compare against, and nothing about the"
        " model's internals or its behaviour on other inputs."
    ),
    AccessLevel.BLACK_BOX: (
        "Why the outputs differ: no probabilities, activations or weights were observed."
    ),
    AccessLevel.PAIRED_OUTPUTS: (
        "Why the outputs differ, or how likely other outputs were: only sampled outputs were"
        " recorded."
    ),
    AccessLevel.LOGPROBS: (
        "Which internal mechanism moved the distribution: no activations or weights were compared."
    ),
    AccessLevel.WEIGHTS: (
        "How a weight difference shows up in behaviour or in internal representations on any"
        " input: no activations were compared."
    ),
    AccessLevel.ACTIVATIONS: (
        "What changed in the weights, or effects of interventions that were not run; layers that"
        " were not recorded on both sides say nothing."
    ),
    AccessLevel.BASE_AND_MODIFIED: (
        "Anything about tensors, layers or inputs that were not recorded on both sides."
    ),
    AccessLevel.BASE_AND_TRANSFORMED: (
        "Anything about tensors, layers or inputs that were not recorded on both sides, or"
        " parity of the transformed model beyond what was compared."
    ),
}


def access_rank(level: AccessLevel | str) -> int:
    """Rank of an access level (0 = weakest); grouped levels share a rank."""
    return _ACCESS_RANK[AccessLevel(level)]


def strength_rank(strength: ClaimStrength | str) -> int:
    """Rank of a claim strength (0 = weakest)."""
    return _STRENGTH_RANK[ClaimStrength(strength)]


def claim_cap(level: AccessLevel | str) -> ClaimStrength:
    """The strongest claim ``level`` supports."""
    return CLAIM_CAP[AccessLevel(level)]


__all__ = [
    "CAN_CLAIM",
    "CANNOT_CLAIM",
    "CLAIM_CAP",
    "COMPARATIVE",
    "SUPPORTING_KINDS",
    "AccessLevel",
    "ClaimStrength",
    "access_rank",
    "claim_cap",
    "strength_rank",
]
