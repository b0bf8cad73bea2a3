"""Capabilities of the MLX executor: FULL only for what it really emits.

=============================  =========================================================================
capability                     level
=============================  =========================================================================
can_emit_text                  full: greedy or sampled decoding (temperature, top-k, top-p, seed) with
                               mlx-lm's KV cache, stop strings; sampled tokens are those of the torch
                               executor on the CPU for the same seed (its draw is reproduced)
can_emit_tokens                full
can_emit_logits / _logprobs    full (last prompt position, or every position)
can_emit_activations           full when the layer list and every site (residual, attn, mlp) are
                               found in every layer; partial when a site is absent; unsupported when
                               no layer list is found
can_apply_interventions        full with a layer list (ablate, steer, patch at any site found, with
                               the logprob effect measured: mlx-lm models always have a head);
                               unsupported without one
can_inspect_weights            full: weight_snapshot of named parameters (default: the input embedding)
can_mutate_weights             unsupported
can_profile_device_memory      full: the MLX allocator peak per stage (mx.get_peak_memory), measured;
                               its note also says what is true of host/device copies on this device
                               (none on the CPU or Metal's unified memory: 0, derived; otherwise
                               unavailable), see :func:`._counters.copy_facts`
can_profile_sync_points        partial: the evaluations this executor makes (mx.eval, item()) are
                               counted; evaluations inside model code are not seen
=============================  =========================================================================
"""

from __future__ import annotations

from vauban_trace.contract import Capabilities
from vauban_trace.executors.mlx._counters import copy_facts
from vauban_trace.executors.mlx._layers import SITES, MlxLayers

EXECUTOR_NAME = "mlx"


def build_capabilities(*, device_kind: str, layers: MlxLayers | None, layers_note: str) -> Capabilities:
    levels: dict[str, str] = {
        "can_emit_text": "full",
        "can_emit_tokens": "full",
        "can_emit_logits": "full",
        "can_emit_logprobs": "full",
        "can_inspect_weights": "full",
        "can_mutate_weights": "unsupported",
        "can_profile_device_memory": "full",
        "can_profile_sync_points": "partial",
    }
    notes: dict[str, str] = {
        "can_emit_text": (
            "greedy or sampled decoding (temperature, top_k, top_p, seed) and stop strings; a seeded draw "
            "reproduces the torch executor's CPU generator (same seed, same logits: same token)"
        ),
        "can_mutate_weights": "interventions wrap module calls during forward passes; weights are never modified",
        "can_profile_device_memory": (
            "MLX allocator peak per stage (mx.get_peak_memory): MLX buffers, not the process; "
            + copy_facts(device_kind).note
        ),
        "can_profile_sync_points": (
            "counts the evaluations the executor itself makes (mx.eval, item()); evaluations inside "
            "model code are not seen"
        ),
    }
    if layers is None:
        levels["can_emit_activations"] = levels["can_apply_interventions"] = "unsupported"
        notes["can_emit_activations"] = notes["can_apply_interventions"] = layers_note
    else:
        present = layers.sites_available()
        absent = [s for s in SITES if s not in present]
        levels["can_emit_activations"] = "partial" if absent else "full"
        if absent:
            notes["can_emit_activations"] = (
                f"sites {', '.join(absent)} not found in {type(layers.module(0)).__name__}; "
                f"available: {', '.join(present)}"
            )
        levels["can_apply_interventions"] = "full"
    return Capabilities(executor=EXECUTOR_NAME, device_kinds=(device_kind,), levels=levels, notes=notes)


__all__ = ["EXECUTOR_NAME", "build_capabilities"]
