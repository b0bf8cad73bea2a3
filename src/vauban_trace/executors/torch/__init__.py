"""PyTorch / transformers executor: fully traced inference, counter probes, one-line instrumentation.

Public API (see docs/torch-executor.md):

- :class:`TorchExecutor` — ``TorchExecutor.from_pretrained(dir, device="cpu", dtype=None)``;
  ``executor.capabilities``; ``executor.make_request(prompts, layers=..., interventions=...)``;
  ``executor.run(request, max_new_tokens=..., ...) -> RunResult``; ``executor.trace(...) -> Trace``.
- :func:`parse_intervention` / :func:`format_intervention` — the ``ablate:`` / ``steer:`` /
  ``patch:`` spec syntax.
- :func:`find_layers` — generic layer discovery (``LayerMap`` of residual/attn/mlp sites).
- :func:`make_probes` — counter probes for a device; :func:`instrument_model` /
  :func:`uninstrument_model` — trace ``generate``/``forward`` of a model you drive yourself.

Importing this package imports torch; the core package never does.
"""

from vauban_trace.executors.torch._counters import make_probes
from vauban_trace.executors.torch._executor import RunOptions, RunResult, TorchExecutor, make_options
from vauban_trace.executors.torch._intervene import format_intervention, parse_intervention
from vauban_trace.executors.torch._layers import SITES, LayerMap, SiteRef, find_layers
from vauban_trace.executors.torch._patch import instrument_model, uninstrument_model
from vauban_trace.executors.torch._score import ContinuationScore

__all__ = [
    "SITES",
    "ContinuationScore",
    "LayerMap",
    "RunOptions",
    "RunResult",
    "SiteRef",
    "TorchExecutor",
    "find_layers",
    "format_intervention",
    "instrument_model",
    "make_options",
    "make_probes",
    "parse_intervention",
    "uninstrument_model",
]
