"""Building requests and reading traces back, shared by every executor (no torch, no mlx imports).

Both executors take the same :class:`~vauban_trace.contract.TraceRequest` and both hand back a
trace through the one rebuild path, so what builds a request and what reads its trace back
belongs to neither framework. Importing this module imports neither torch nor mlx: an MLX user
can build requests, parse intervention specs and read traces without torch installed.

:func:`make_request`
    A :class:`TraceRequest` for one prompt or a batch, as ``TorchExecutor.make_request`` and
    ``MlxExecutor.make_request`` build it (both call this function; ``causal_lm`` is the only
    thing the executor adds)::

        from vauban_trace.executors import make_request
        req = make_request(["Hello", "Paris is"], layers=(0, 1), logprobs=True,
                           interventions=["steer:layer=1,vector=random:7,alpha=4"])

    One prompt goes into ``input_text``. A batch is stored as a JSON list in the configured
    artifact store and named by ``input_ref`` (its content follows the same capture rules as a
    single prompt), with ``metadata["batch_size"]``; a batch without ``vauban_trace.configure()``
    raises :class:`ConfigurationError`. Intervention specs (strings) are parsed by
    :func:`~vauban_trace.executors._interventions.parse_intervention`; contract
    :class:`Intervention` records pass through. Requested kinds, in this order: ``tokens`` always,
    ``text`` when ``causal_lm``, ``logits`` when ``logits`` or ``logprobs``, ``logprobs``,
    ``activation`` with layers, ``intervention_result`` with interventions, then ``artifacts``
    (duplicates dropped). Bad prompts raise :class:`ExecutorError`
    (``prompts must be a string or a non-empty list of strings``); a request the contract refuses
    raises :class:`ExecutorError` (``invalid request: ...``).

:func:`read_trace`
    Flush, then read the rebuilt trace of ``trace_id`` from a session's embedded store
    (``Session.read_trace``: the only way a Trace comes back in-process).

:func:`trace_request`
    What the executors' ``trace(request, **kwargs)`` does: check that a session with an embedded
    store is configured (:class:`ConfigurationError` *before* anything runs), call
    ``run(request, **kwargs)``, then :func:`read_trace` its ``trace_id``.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

from vauban_trace._exceptions import ConfigurationError, ExecutorError
from vauban_trace.contract import Intervention, Trace, TraceRequest
from vauban_trace.executors._interventions import parse_intervention


def make_request(
    prompts: str | Sequence[str],
    *,
    causal_lm: bool = True,
    layers: Sequence[int] = (),
    interventions: Sequence[str | Intervention] = (),
    logits: bool = False,
    logprobs: bool = False,
    artifacts: Sequence[str] = (),
    chat: bool = False,
    metadata: dict[str, Any] | None = None,
) -> TraceRequest:
    """A :class:`TraceRequest` for one prompt or a batch (see the module manual)."""
    texts = [prompts] if isinstance(prompts, str) else list(prompts)
    if not texts or any(not isinstance(t, str) for t in texts):
        raise ExecutorError("prompts must be a string or a non-empty list of strings")
    parsed = tuple(parse_intervention(i) if isinstance(i, str) else i for i in interventions)
    kinds = ["tokens"]
    if causal_lm:
        kinds.append("text")
    if logits or logprobs:
        kinds.append("logits")
    if logprobs:
        kinds.append("logprobs")
    if layers:
        kinds.append("activation")
    if parsed:
        kinds.append("intervention_result")
    kinds.extend(artifacts)
    meta = dict(metadata or {})
    fields: dict[str, Any] = {}
    if len(texts) == 1:
        fields["input_text"] = texts[0]
    else:
        from vauban_trace.artifacts import encode_json
        from vauban_trace.instrument import current_session

        session = current_session()
        if session is None:
            raise ConfigurationError("a batch request needs vauban_trace.configure() (its prompts are stored as a blob)")
        fields["input_ref"] = session.artifact_store.put(encode_json(texts), "application/json").digest
        meta["batch_size"] = len(texts)
    try:
        return TraceRequest(
            requested_artifacts=tuple(dict.fromkeys(kinds)), collect_layers=tuple(layers),
            interventions=parsed, apply_chat_template=chat, return_logits=bool(logits or logprobs),
            return_logprobs=bool(logprobs), metadata=meta, **fields,
        )
    except ValueError as exc:
        raise ExecutorError(f"invalid request: {exc}") from exc


def read_trace(session: Any, trace_id: str | None) -> Trace:
    """Flush, then read the rebuilt trace from ``session``'s store (see ``Session.read_trace``)."""
    trace: Trace = session.read_trace(trace_id)
    return trace


def trace_request(run: Callable[..., Any], request: TraceRequest, **kwargs: Any) -> Trace:
    """``run(request, **kwargs)``, then the Trace rebuilt from the embedded store.

    Refuses (:class:`ConfigurationError`, nothing run) when no session with an embedded store is
    configured.
    """
    from vauban_trace.instrument import current_session

    session = current_session()
    if session is None or session.store is None:
        raise ConfigurationError(
            "trace() reads the rebuilt trace from the embedded store: call "
            "vauban_trace.configure(store_dir=...) first"
        )
    result = run(request, **kwargs)
    return read_trace(session, result.trace_id)


__all__ = ["make_request", "read_trace", "trace_request"]
