"""Capabilities of the MLX executor: FULL only for what it really emits.

=============================  =========================================================================
capability                     level
=============================  =========================================================================
can_emit_text                  full (greedy decoding with mlx-lm's KV cache; sampling is not built)
can_emit_tokens                full
can_emit_logits / _logprobs    full (last prompt position, or every position)
can_emit_activations           partial: residual stream after each decoder layer only (attn and mlp
                               sites are not built); unsupported when no layer list is found
can_apply_interventions        unsupported: not built yet (requested ones are recorded missing)
can_inspect_weights            full: weight_snapshot of named parameters (default: the input embedding)
can_mutate_weights             unsupported
can_profile_device_memory      full: the MLX allocator peak per stage (mx.get_peak_memory), measured
can_profile_sync_points        partial: the evaluations this executor makes (mx.eval, item()) are
                               counted; evaluations inside model code are not seen
=============================  =========================================================================
"""

from __future__ import annotations

from vauban_trace.contract import Capabilities

EXECUTOR_NAME = "mlx"
INTERVENTIONS_NOTE = "interventions are not built in the MLX executor yet; requested ones are not applied"
SITES_NOTE = "only the residual site (output of each decoder layer) is built; attn and mlp are not"


def build_capabilities(*, device_kind: str, layers_found: bool, layers_note: str) -> Capabilities:
    levels: dict[str, str] = {
        "can_emit_text": "full",
        "can_emit_tokens": "full",
        "can_emit_logits": "full",
        "can_emit_logprobs": "full",
        "can_emit_activations": "partial" if layers_found else "unsupported",
        "can_apply_interventions": "unsupported",
        "can_inspect_weights": "full",
        "can_mutate_weights": "unsupported",
        "can_profile_device_memory": "full",
        "can_profile_sync_points": "partial",
    }
    notes: dict[str, str] = {
        "can_emit_text": "greedy decoding only (sampling is not built)",
        "can_emit_activations": SITES_NOTE if layers_found else layers_note,
        "can_apply_interventions": INTERVENTIONS_NOTE,
        "can_mutate_weights": "the MLX executor never changes weights",
        "can_profile_device_memory": "MLX allocator peak per stage (mx.get_peak_memory): MLX buffers, not the process",
        "can_profile_sync_points": (
            "counts the evaluations the executor itself makes (mx.eval, item()); evaluations inside "
            "model code are not seen"
        ),
    }
    return Capabilities(executor=EXECUTOR_NAME, device_kinds=(device_kind,), levels=levels, notes=notes)


__all__ = ["EXECUTOR_NAME", "INTERVENTIONS_NOTE", "SITES_NOTE", "build_capabilities"]
