"""MLX counter probes: allocator peak memory and the executor's own synchronisation points.

``memory_bytes`` (:class:`MlxMemoryProbe`)
    The MLX allocator's peak during the stage: ``mx.reset_peak_memory()`` at stage entry,
    ``mx.get_peak_memory()`` at exit (method ``mlx.peak_memory``, provenance ``measured``). The
    reset sets MLX's peak to zero, so the buffers already resident at entry
    (``mx.get_active_memory()``) are folded in: the value is the most MLX memory in use at any
    point of the stage, as ``cuda.max_memory_allocated`` after a reset is for torch. It counts
    MLX buffers (weights, activations, caches), not the Python process. Works on the CPU
    build as on Metal (measured on Linux, mlx 0.32). Nesting: resetting the peak in an inner
    stage would lose the outer stage's peak, so each reset first folds the current peak into
    every open stage (a running maximum per stage).

``sync_points`` (:class:`EvalCounter`)
    MLX is lazy: work runs when an array is evaluated (``mx.eval``, ``item()``, ``tolist()``, a
    numpy conversion). The executor routes every evaluation it makes through
    :meth:`EvalCounter.eval` / :meth:`EvalCounter.item` / ``tolist`` / ``numpy`` (the sampler's read
    of the last logits), which count them; the probe reports the
    count per stage (``measured``). Evaluations made inside model code or by the caller are not
    seen, hence ``can_profile_sync_points = partial``. Conversions made by the instrumentation
    (artifacts) evaluate nothing new (the executor evaluates first) and are not counted.

Copies and device time are not counted (``unavailable``): nothing here observes MLX's buffer
traffic, and unified memory has no host/device transfer to time.
"""

from __future__ import annotations

import threading
from typing import Any

import mlx.core as mx
import numpy as np

from vauban_trace import semconv as sc
from vauban_trace.instrument._probes import Readings

MEMORY_METHOD = "mlx.peak_memory"


class _Frame:
    __slots__ = ("peak",)

    def __init__(self) -> None:
        self.peak = 0


class MlxMemoryProbe:
    """``memory_bytes``: the MLX allocator peak over each stage, correct under nesting."""

    name = "mlx.memory"

    def __init__(self) -> None:
        self.attributes: dict[str, str] = {sc.MEMORY_METHOD: MEMORY_METHOD}
        self._open: list[_Frame] = []
        self._lock = threading.Lock()

    def start(self) -> object:
        try:
            with self._lock:
                if self._open:
                    current = int(mx.get_peak_memory())
                    for frame in self._open:
                        frame.peak = max(frame.peak, current)
                mx.reset_peak_memory()
                frame = _Frame()
                frame.peak = int(mx.get_active_memory())  # resident buffers count towards the peak
                self._open.append(frame)
                return frame
        except Exception:
            return None

    def stop(self, token: object) -> Readings:
        if not isinstance(token, _Frame):
            return {"memory_bytes": (None, "unavailable")}
        try:
            with self._lock:
                peak = max(token.peak, int(mx.get_peak_memory()), int(mx.get_active_memory()))
                self._open = [f for f in self._open if f is not token]
                for other in self._open:
                    other.peak = max(other.peak, peak)
            return {"memory_bytes": (peak, "measured")}
        except Exception:
            return {"memory_bytes": (None, "unavailable")}


class EvalCounter:
    """Counts the evaluations the executor makes; also the ``sync_points`` probe of its stages."""

    name = "mlx.evals"

    def __init__(self) -> None:
        self.total = 0
        self.attributes: dict[str, str] = {}

    def eval(self, *arrays: Any) -> None:
        """``mx.eval(*arrays)``, counted as one synchronisation point."""
        self.total += 1
        mx.eval(*arrays)

    def item(self, array: mx.array) -> Any:
        """``array.item()`` (a host read that waits for the value), counted."""
        self.total += 1
        return array.item()

    def tolist(self, array: mx.array) -> Any:
        """``array.tolist()`` (one host read of every element), counted."""
        self.total += 1
        return array.tolist()

    def numpy(self, array: mx.array) -> Any:
        """``np.array(array)`` (one host read of every element), counted."""
        self.total += 1
        return np.array(array)

    def start(self) -> object:
        return self.total

    def stop(self, token: object) -> Readings:
        if not isinstance(token, int):
            return {"sync_points": (None, "unavailable")}
        return {"sync_points": (self.total - token, "measured")}


__all__ = ["MEMORY_METHOD", "EvalCounter", "MlxMemoryProbe"]
