"""Capabilities of the torch executor, declared from what it really emits for this model and device.

=============================  =========================================================================
capability                     level
=============================  =========================================================================
can_emit_text                  full with a language-model head (generation), else unsupported
can_emit_tokens                full (prompt token ids always; generated ids with a head)
can_emit_logits / _logprobs    full with a trusted head; unsupported for encoders and for checkpoints
                               whose head weights were missing (random)
can_emit_activations           full when the layer list and every site (residual, attn, mlp) are
                               found; partial when some sites are absent (BERT has no mlp module);
                               unsupported when no layer list is found
can_apply_interventions        full with layers and a head; partial for encoders (the logprob effect
                               cannot be measured, only the hidden-state change); else unsupported
can_inspect_weights            full (weight_snapshot: digest and statistics of named parameters)
can_mutate_weights             unsupported: interventions act through forward hooks, weights are
                               never changed
can_profile_device_memory      cuda full (allocator peak); mps and cpu partial (driver allocation at
                               stage edges / process peak RSS, not tensor memory)
can_profile_sync_points        cuda full (sync debug mode); cpu/mps partial (deep counters only: host
                               reads of tensor values, the places a device would be waited for)
=============================  =========================================================================
"""

from __future__ import annotations

import torch

from vauban_trace.contract import Capabilities
from vauban_trace.executors.torch._layers import SITES, LayerMap

EXECUTOR_NAME = "torch"


def build_capabilities(
    *,
    device: torch.device,
    causal_lm: bool,
    head_trusted: bool,
    head_note: str,
    layers: LayerMap | None,
    layers_note: str,
) -> Capabilities:
    levels: dict[str, str] = {}
    notes: dict[str, str] = {}
    levels["can_emit_text"] = "full" if causal_lm else "unsupported"
    if not causal_lm:
        notes["can_emit_text"] = head_note or "no language-model head: nothing is generated"
    levels["can_emit_tokens"] = "full"
    for cap in ("can_emit_logits", "can_emit_logprobs"):
        levels[cap] = "full" if head_trusted else "unsupported"
        if not head_trusted:
            notes[cap] = head_note
    if layers is None:
        levels["can_emit_activations"] = "unsupported"
        levels["can_apply_interventions"] = "unsupported"
        notes["can_emit_activations"] = notes["can_apply_interventions"] = layers_note
    else:
        present = layers.sites_available()
        absent = [s for s in SITES if s not in present]
        levels["can_emit_activations"] = "full" if not absent else "partial"
        if absent:
            notes["can_emit_activations"] = (
                f"sites {', '.join(absent)} not found in {type(layers.layers[0]).__name__}; "
                f"available: {', '.join(present)}"
            )
        if head_trusted:
            levels["can_apply_interventions"] = "full"
        else:
            levels["can_apply_interventions"] = "partial"
            notes["can_apply_interventions"] = (
                "interventions apply, but their effect on token logprobs cannot be measured without a "
                "language-model head (only the hidden-state change is recorded)"
            )
    levels["can_inspect_weights"] = "full"
    levels["can_mutate_weights"] = "unsupported"
    notes["can_mutate_weights"] = "interventions use forward hooks; weights are never modified"
    if device.type == "cuda":
        levels["can_profile_device_memory"] = "full"
        levels["can_profile_sync_points"] = "full"
    else:
        levels["can_profile_device_memory"] = "partial"
        notes["can_profile_device_memory"] = (
            "process peak RSS, not tensor memory" if device.type == "cpu"
            else "driver allocation at stage entry and exit, not a true peak"
        )
        levels["can_profile_sync_points"] = "partial"
        notes["can_profile_sync_points"] = (
            "only with deep counters: host reads of tensor values and data-dependent shapes are counted"
        )
    return Capabilities(executor=EXECUTOR_NAME, device_kinds=(device.type,), levels=levels, notes=notes)


__all__ = ["EXECUTOR_NAME", "build_capabilities"]
