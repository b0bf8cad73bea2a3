"""Framework-free pieces shared by every executor (no torch, no mlx imports).

:class:`RunResult` is what ``run`` returns (the torch executor adds continuation scores).
``request_inputs(request)`` resolves what a :class:`TraceRequest` asks to run: its prompt texts
(``input_text``, or the JSON string / list of strings stored in the artifact store under
``input_ref``, verified by digest) or its ``prompt_ids``. Errors name the request field at fault.
"""

from __future__ import annotations

from dataclasses import dataclass

from vauban_trace._exceptions import ExecutorError
from vauban_trace.contract import TraceRequest


@dataclass(frozen=True)
class RunResult:
    """What one request produced (the evidence itself is in the trace). Executors may extend it."""

    trace_id: str | None
    texts: tuple[str, ...]
    token_ids: tuple[tuple[int, ...], ...]
    finish_reasons: tuple[str, ...]
    prompt_token_ids: tuple[tuple[int, ...], ...] = ()
    stop_reasons: tuple[str, ...] = ()


def request_inputs(request: TraceRequest) -> tuple[list[str] | None, list[list[int]] | None]:
    """(texts, None) or (None, [prompt ids]) for ``request``."""
    if request.prompt_ids is not None:
        if request.apply_chat_template:
            raise ExecutorError("apply_chat_template needs input text, not prompt_ids")
        return None, [list(request.prompt_ids)]
    if request.input_text is not None:
        return [request.input_text], None
    from vauban_trace.artifacts import decode_json
    from vauban_trace.instrument import current_session

    session = current_session()
    if session is None:
        raise ExecutorError(f"request input_ref {request.input_ref} needs a configured artifact store")
    try:
        value = decode_json(session.artifact_store.get(request.input_ref))
    except Exception as exc:
        raise ExecutorError(f"cannot read request input {request.input_ref}: {exc}") from exc
    texts = [value] if isinstance(value, str) else value
    if not isinstance(texts, list) or not texts or any(not isinstance(t, str) for t in texts):
        raise ExecutorError(f"request input {request.input_ref} is not a string or a list of strings")
    return texts, None
