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

Host/device copies (:class:`MlxCopyProbe`, :func:`copy_facts`)
    ``h2d_copies``, ``h2d_bytes``, ``d2h_copies``, ``d2h_bytes`` and ``host_device_copies`` state
    what MLX's memory model makes true, as the torch executor does on the CPU; never a guess:

    - the default device is the CPU (the ``mlx[cpu]`` build on Linux; or a CPU stream on a Mac):
      arrays live in host memory, the device *is* the host, so no copy crosses a host/device
      boundary: every copy counter is ``0`` with provenance ``derived`` (the torch executor
      records exactly this on the CPU);
    - the default device is a Metal GPU: MLX's Metal allocator creates every buffer with
      ``MTL::ResourceStorageModeShared`` (unified memory: one buffer the CPU and the GPU both
      address; no private GPU copy exists, nothing is blitted between them), so again ``0``,
      ``derived``;
    - any other GPU (MLX's CUDA backend, whose buffers are CUDA managed memory migrated between
      host and device by the driver, page by page, unseen by this executor): ``unavailable``
      (no value).

    Each stage carries these readings (a static probe, as torch's cheap mode). The reason is in
    the capabilities, as the note of ``can_profile_device_memory``. The instrumentation's own
    conversions to numpy follow the same rule (:mod:`._values`): where no host/device boundary
    exists they are not device-to-host copies, so ``instrumentation_d2h_*`` is ``0`` (measured)
    as for the torch executor's CPU tensors.

``device_duration_s`` and ``queue_depth`` are not counted (``unavailable``): nothing here times
MLX's command queue.
"""

from __future__ import annotations

import threading
from dataclasses import dataclass
from functools import lru_cache
from typing import Any

import mlx.core as mx
import numpy as np

from vauban_trace import semconv as sc
from vauban_trace.instrument._probes import Readings

MEMORY_METHOD = "mlx.peak_memory"
#: the host/device copy counters (torch's names)
COPY_COUNTERS: tuple[str, ...] = ("h2d_copies", "h2d_bytes", "d2h_copies", "d2h_bytes", "host_device_copies")


@dataclass(frozen=True)
class CopyFacts:
    """What MLX's memory model says about host/device copies on one device (see the module manual).

    ``memory`` is ``host`` (the device is the CPU), ``unified`` (Metal shared storage) or
    ``managed`` (a GPU that is not Metal: copies happen but are not observed); ``value`` is ``0``
    with provenance ``derived`` for the first two, ``None`` with ``unavailable`` for the last.
    """

    memory: str
    value: int | None
    provenance: str
    note: str

    @property
    def boundary(self) -> bool:
        """Whether a host/device boundary exists for copies to cross."""
        return self.memory == "managed"


@lru_cache(maxsize=4)
def copy_facts(device_kind: str) -> CopyFacts:
    """The copy facts for an MLX device kind (``cpu`` or ``gpu``: ``_values.device_label()``)."""
    if device_kind == "cpu":
        return CopyFacts("host", 0, "derived", (
            "host/device copies: none exist (the MLX device is the CPU: arrays live in host memory); "
            "copy counters 0, derived"))
    if device_kind == "gpu" and mx.metal.is_available():
        return CopyFacts("unified", 0, "derived", (
            "host/device copies: none exist (Metal on unified memory: MLX allocates every buffer in "
            "shared storage, addressed by the CPU and the GPU alike); copy counters 0, derived"))
    return CopyFacts("managed", None, "unavailable", (
        f"host/device copies: not observed on this MLX {device_kind} device (not Metal: MLX's CUDA "
        "backend uses managed memory, migrated by the driver); copy counters unavailable"))


class MlxCopyProbe:
    """The host/device copy counters of every stage, from :func:`copy_facts` (static readings)."""

    name = "mlx.copies"

    def __init__(self, device_kind: str) -> None:
        self.facts = copy_facts(device_kind)
        self.attributes: dict[str, str] = {}
        self._readings: dict[str, tuple[int | None, str]] = {
            c: (self.facts.value, self.facts.provenance) for c in COPY_COUNTERS}

    def start(self) -> object:
        return None

    def stop(self, token: object) -> Readings:
        return self._readings


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


__all__ = ["COPY_COUNTERS", "MEMORY_METHOD", "CopyFacts", "EvalCounter", "MlxCopyProbe", "MlxMemoryProbe", "copy_facts"]
