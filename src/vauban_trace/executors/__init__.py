"""Executors: traced inference over a framework (``executors.torch``, ``executors.mlx``).

This package itself imports neither torch nor mlx. What both executors share, framework-free:

- :func:`make_request` — a :class:`~vauban_trace.contract.TraceRequest` for one prompt or a batch
  (the builder behind ``TorchExecutor.make_request`` and ``MlxExecutor.make_request``);
- :func:`read_trace` — flush, then the rebuilt trace of a request from a session's store;
- :func:`parse_intervention` / :func:`format_intervention` — the ``ablate:`` / ``steer:`` /
  ``patch:`` spec syntax <-> contract ``Intervention`` records.
"""

from vauban_trace.executors._interventions import format_intervention, parse_intervention
from vauban_trace.executors._requests import make_request, read_trace

__all__ = ["format_intervention", "make_request", "parse_intervention", "read_trace"]
