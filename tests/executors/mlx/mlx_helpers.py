"""Helpers shared by the MLX executor tests: the executors pair, reading traces and blobs back."""

from __future__ import annotations

from typing import Any

from vauban_trace.artifacts import decode_array, decode_json
from vauban_trace.contract import Trace
from vauban_trace.executors.mlx import MlxExecutor
from vauban_trace.executors.torch import TorchExecutor
from vauban_trace.executors.torch.tiny import cached_tiny_model
from vauban_trace.instrument._probes import flush_deferred


def executors(family: str) -> tuple[MlxExecutor, TorchExecutor]:
    """An MLX and a torch executor over the same tiny offline model directory of ``family``."""
    directory = cached_tiny_model(family, hidden_size=64, num_layers=2)
    return MlxExecutor.from_pretrained(directory, lazy=False), TorchExecutor.from_pretrained(directory, lazy=False)


def rebuilt(session: Any, trace_id: str | None) -> Trace:
    """The trace ``trace_id`` as the session's store rebuilt it (after flushing)."""
    assert trace_id is not None
    flush_deferred()
    session.force_flush()
    trace: Trace = session.store.get_trace(trace_id)
    return trace


def blob(session: Any, digest: str | None) -> Any:
    """An artifact blob decoded (JSON or safetensors array)."""
    assert digest is not None
    data = session.artifact_store.get(digest)
    return decode_json(data) if data[:1] in (b"[", b"{", b'"') else decode_array(data)


def child_stages(trace: Trace) -> list[str | None]:
    """The stages of the root's children, in trace order."""
    root = trace.root
    assert root is not None
    return [s.stage for s in trace.spans if s.parent_id == root.id]
