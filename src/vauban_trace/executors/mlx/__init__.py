"""MLX / mlx-lm executor: traced inference with the torch executor's trace shape (see docs/mlx-executor.md).

Public API:

- :class:`MlxExecutor` — ``MlxExecutor.from_pretrained(dir)``; ``executor.capabilities``;
  ``executor.make_request(prompts, layers=..., interventions=...)`` (the torch executor's builder,
  framework-free: :func:`vauban_trace.executors.make_request`); ``executor.trace(...) -> Trace``;
  ``executor.run(request, max_new_tokens=..., do_sample=..., seed=..., temperature=...,
  top_k=..., top_p=..., stop=..., sites=..., logits_positions=..., topk=...,
  score_continuation=..., prompts=...) -> RunResult`` (one prompt or a left-padded batch; greedy
  or sampled with torch's CPU draw for the same seed, stop strings; :class:`ContinuationScore`
  per sequence in ``RunResult.scores``).
- :func:`find_layers` / :class:`ActivationCapture` — decoder layers, their sites (residual, attn,
  mlp) and activation capture (:class:`ResidualCapture`: the residual site only).
- :class:`InterventionSet` / :func:`resolve_intervention` — ablate, steer and patch with the torch
  executor's semantics (requests carry contract ``Intervention`` records);
  :func:`parse_intervention` / :func:`format_intervention` — the spec syntax (shared, torch-free).
- :class:`MlxMemoryProbe` / :class:`EvalCounter` / :class:`MlxCopyProbe` — the counter probes of
  its stages; :func:`copy_facts` — what this process's MLX device says about host/device copies.

Importing this package imports mlx (and mlx-lm when a model is loaded), never torch; the core
package imports neither. The ``_values`` module is the adapter the instrumentation uses to describe and copy
``mlx.core.array`` values.
"""

from vauban_trace.executors._interventions import parse_intervention
from vauban_trace.executors.mlx._capabilities import build_capabilities
from vauban_trace.executors.mlx._counters import (
    CopyFacts,
    EvalCounter,
    MlxCopyProbe,
    MlxMemoryProbe,
    copy_facts,
)
from vauban_trace.executors.mlx._executor import MlxExecutor, MlxRunOptions, RunResult, make_mlx_options
from vauban_trace.executors.mlx._intervene import InterventionSet, format_intervention
from vauban_trace.executors.mlx._intervene import resolve as resolve_intervention
from vauban_trace.executors.mlx._layers import ActivationCapture, MlxLayers, ResidualCapture, find_layers
from vauban_trace.executors.mlx._score import ContinuationScore
from vauban_trace.executors.mlx._torchrand import torch_cpu_randn

__all__ = [
    "ActivationCapture",
    "ContinuationScore",
    "CopyFacts",
    "EvalCounter",
    "InterventionSet",
    "MlxExecutor",
    "MlxCopyProbe",
    "MlxLayers",
    "MlxMemoryProbe",
    "MlxRunOptions",
    "ResidualCapture",
    "RunResult",
    "build_capabilities",
    "copy_facts",
    "find_layers",
    "format_intervention",
    "make_mlx_options",
    "parse_intervention",
    "resolve_intervention",
    "torch_cpu_randn",
]
