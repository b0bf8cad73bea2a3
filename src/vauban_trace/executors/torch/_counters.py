"""Torch-side counter probes: memory, synchronisations, device time, host/device copies.

``make_probes(device, deep=False)`` returns the probes to activate around a traced workload
(``with vauban_trace.instrument.probes(*make_probes("cuda:0")): ...``). Every stage opened inside
then carries the counters below as ``vauban.usl.<counter>`` with a provenance word.

Cheap probes (the default; no per-operation cost)
-------------------------------------------------
``memory_bytes``
    CUDA: peak bytes allocated by the caching allocator during the stage
    (``reset_peak_memory_stats`` at entry, ``max_memory_allocated`` at exit; method
    ``cuda.max_memory_allocated``). MPS: the larger of ``driver_allocated_memory`` at entry and
    exit (method ``mps.driver_allocated_memory``; not a true peak). CPU: the process's peak
    resident set size during the stage (method ``cpu.rss_peak``): the kernel's high-water mark
    (``VmHWM`` in ``/proc/self/status``) is reset to the current RSS at stage entry (writing ``5``
    to ``/proc/self/clear_refs``) and read at exit. It counts the whole process (interpreter,
    libraries, every thread), not only tensors. Side effect: ``getrusage().ru_maxrss`` of the
    process follows the reset. Where the reset is refused, the method is ``cpu.rss_endpoints``:
    the larger RSS of entry and exit, which misses peaks in between.
    Nesting: resetting a peak inside an inner stage would lose the outer stage's peak, so every
    reset first folds the current peak into each open stage (a running maximum per stage).
``sync_points`` (CUDA)
    Exact count of synchronising CUDA calls, measured with ``torch.cuda.set_sync_debug_mode("warn")``
    while a stage is open: each synchronising call raises a warning, which is counted and
    swallowed (other warnings pass through untouched; if the application had set "warn" itself,
    its warnings are passed on too, and an application's "error" mode is left as it is). Syncs made
    by the instrumentation itself (inside ``instrumentation_work()``) are not counted.
``device_duration_s`` (CUDA)
    Elapsed time on the current stream between two CUDA events recorded at stage entry and exit
    (idle gaps included). Reading it needs the events to have completed, so the value is a
    :class:`~vauban_trace.instrument.Deferred` resolved at request end, with no host sync added.
Copies on CUDA/MPS are ``unavailable`` in cheap mode (nothing counts them without per-op cost).
On CPU the device is the host: there are no host/device copies, and the copy counters are ``0``
with provenance ``derived``; ``sync_points`` is ``unavailable`` (nothing waits on a device).

Deep probe (opt-in, ``deep=True``; costs per operation)
--------------------------------------------------------
A ``TorchDispatchMode`` and a ``TorchFunctionMode`` are entered while a stage is open and count:

- copies between host (``cpu``) and any other device: ``aten._to_copy`` / ``copy_`` /
  ``_copy_from`` whose source and destination devices differ (this covers ``.cpu()``,
  ``.to(device)``, ``.cuda()``, ``numpy(force=True)``); ``Tensor.tolist()`` of a device tensor;
  tensors built from host data on a device (``torch.tensor`` / ``as_tensor`` / ``asarray`` with a
  device, which never reach the dispatcher); a scalar read (``.item()``, ``bool(t)``, ``int(t)``)
  of a device tensor is one device-to-host copy of one element; ``nonzero`` and boolean-mask
  indexing on a device read the element count back (one 4-byte device-to-host copy, as the
  profiler shows on torch 2.11). Bytes are ``numel * element_size`` of what is moved; copies of
  empty tensors move nothing and are not counted.
- sync points: scalar reads (``aten._local_scalar_dense``, ``is_nonzero``), ``tolist()``,
  blocking (``non_blocking=False``) copies between host and device, data-dependent shapes
  (``nonzero``, boolean-mask indexing and assignment, ``masked_select``, ``unique``). On CPU the
  scalar reads, ``tolist()`` and data-dependent shapes are counted too: they are the places that
  would wait for a device, and the host waits for the values there as well. On CUDA the
  ``sync_points`` of a deep stage come from the (exact) sync debug mode counter instead.
- copies made inside ``instrumentation_work()`` go to ``instrumentation_d2h_copies/bytes`` and
  are left out of the workload's counts.

Not counted by the deep probe: copies inside opaque C++ code that bypasses the dispatcher (custom
kernels, ``pin_memory`` staging), device-to-device copies, and peer-to-peer traffic. The values
are ``measured``. GPU validation against ``torch.profiler`` memcpy events is in docs/benchmarks.md.
"""

from __future__ import annotations

import os
import re
import threading
import warnings
from collections.abc import Callable
from typing import Any

import torch

from vauban_trace import semconv as sc
from vauban_trace.executors.torch._deep import DeepCounterProbe
from vauban_trace.instrument._probes import CounterProbe, Deferred, Readings, in_instrumentation_work

__all__ = ["make_probes", "MemoryProbe", "CudaSyncProbe", "CudaTimeProbe", "HostDeviceProbe", "DeepCounterProbe"]

_COPY_COUNTERS = ("h2d_copies", "h2d_bytes", "d2h_copies", "d2h_bytes", "host_device_copies")


def _as_device(device: str | torch.device) -> torch.device:
    if isinstance(device, torch.device):
        return device
    if not isinstance(device, str) or not device:
        raise ValueError(f"device must be a torch.device or a string like 'cpu' or 'cuda:0', got {device!r}")
    return torch.device(device)


# --------------------------------------------------------------------------------------- memory
class _Frame:
    """The running peak of one open stage (compared by identity, never by value)."""

    __slots__ = ("peak",)

    def __init__(self) -> None:
        self.peak = 0


class _PeakFrames:
    """Per-stage peaks over a "peak since last reset" source, correct under nesting."""

    def __init__(self, read_peak: Callable[[], int], reset: Callable[[], bool]) -> None:
        self._read_peak = read_peak
        self._reset = reset
        self._open: list[_Frame] = []
        self._lock = threading.Lock()

    def start(self) -> _Frame | None:
        with self._lock:
            if self._open:
                current = self._read_peak()
                for frame in self._open:
                    if current > frame.peak:
                        frame.peak = current
            if not self._reset():
                return None
            frame = _Frame()
            self._open.append(frame)
            return frame

    def stop(self, frame: _Frame) -> int:
        with self._lock:
            peak = max(frame.peak, self._read_peak())
            self._open = [f for f in self._open if f is not frame]
            for other in self._open:  # the enclosing stages saw this peak too
                if peak > other.peak:
                    other.peak = peak
            return peak


class _ProcFiles:
    """``/proc/self/status`` and ``/proc/self/clear_refs`` kept open (an open costs ~10-100 us).

    ``/proc/self`` is resolved when a file is opened, so after a fork the child reopens its own.
    Reading with ``pread`` at offset 0 regenerates the file's content each time.
    """

    def __init__(self) -> None:
        self._pid = -1
        self._status = -1
        self._clear = -1
        self._lock = threading.Lock()

    def _ensure(self) -> None:
        pid = os.getpid()
        if pid == self._pid:
            return
        self._status = os.open("/proc/self/status", os.O_RDONLY | os.O_CLOEXEC)
        try:
            self._clear = os.open("/proc/self/clear_refs", os.O_WRONLY | os.O_CLOEXEC)
        except OSError:
            self._clear = -1
        self._pid = pid

    def status_kib(self, field: bytes) -> int:
        with self._lock:
            self._ensure()
            data = os.pread(self._status, 8192, 0)
        at = data.find(field)
        if at < 0:
            raise OSError(f"{field!r} not in /proc/self/status")
        end = data.find(b"\n", at)
        return int(data[at + len(field) : end].split()[0]) * 1024

    def reset_peak(self) -> bool:
        with self._lock:
            try:
                self._ensure()
                if self._clear < 0:
                    return False
                os.write(self._clear, b"5")
                return True
            except OSError:
                return False


_PROC = _ProcFiles()


def _read_status_kib(field: bytes) -> int:
    return _PROC.status_kib(field)


def _reset_rss_peak() -> bool:
    return _PROC.reset_peak()


class MemoryProbe:
    """``memory_bytes`` per stage (see the module manual for each device's method)."""

    name = "torch.memory"

    def __init__(self, device: str | torch.device) -> None:
        dev = _as_device(device)
        self._dev = dev
        self._frames: _PeakFrames | None = None
        self.attributes: dict[str, str] = {}
        if dev.type == "cuda":
            index = dev.index if dev.index is not None else None

            def read() -> int:
                return int(torch.cuda.max_memory_allocated(index))

            def reset() -> bool:
                torch.cuda.reset_peak_memory_stats(index)
                return True

            self._frames = _PeakFrames(read, reset)
            self.attributes[sc.MEMORY_METHOD] = "cuda.max_memory_allocated"
        elif dev.type == "cpu":
            ok = os.path.exists("/proc/self/status") and _reset_rss_peak()
            if ok:
                self._frames = _PeakFrames(lambda: _read_status_kib(b"VmHWM:"), _reset_rss_peak)
                self.attributes[sc.MEMORY_METHOD] = "cpu.rss_peak"
            elif os.path.exists("/proc/self/status"):
                self.attributes[sc.MEMORY_METHOD] = "cpu.rss_endpoints"
            else:
                self.attributes[sc.MEMORY_METHOD] = "unavailable"
        elif dev.type == "mps":
            self.attributes[sc.MEMORY_METHOD] = "mps.driver_allocated_memory"
        else:
            self.attributes[sc.MEMORY_METHOD] = "unavailable"

    def _point(self) -> int | None:
        try:
            if self._dev.type == "mps":
                return int(torch.mps.driver_allocated_memory())
            if self._dev.type == "cpu":
                return _read_status_kib(b"VmRSS:")
        except Exception:
            return None
        return None

    def start(self) -> object:
        try:
            if self._frames is not None:
                return ("frame", self._frames.start())
            return ("point", self._point())
        except Exception:
            return None

    def stop(self, token: object) -> Readings:
        try:
            if isinstance(token, tuple):
                kind, value = token
                if kind == "frame" and value is not None and self._frames is not None:
                    return {"memory_bytes": (self._frames.stop(value), "measured")}
                if kind == "point" and value is not None:
                    end = self._point()
                    if end is not None:
                        return {"memory_bytes": (max(int(value), end), "measured")}
        except Exception:
            pass
        return {"memory_bytes": (None, "unavailable")}


# ----------------------------------------------------------------------------------- cuda syncs
_SYNC_MESSAGE = re.compile(r".*called a synchronizing CUDA operation")


class _SyncWarnCounter:
    """Process-wide: sync debug mode "warn" plus a warning hook, on while any stage is open."""

    def __init__(self) -> None:
        self.total = 0
        self._depth = 0
        self._lock = threading.Lock()
        self._saved_mode: int = 0
        self._saved_show: Any = None
        self._filter: tuple[Any, ...] | None = None

    def _show(self, message: Any, category: Any, filename: str, lineno: int, file: Any = None, line: Any = None) -> None:
        if _SYNC_MESSAGE.match(str(message)):
            if not in_instrumentation_work():
                self.total += 1
            if self._saved_mode == 0:  # the mode is ours: swallow; the user's own "warn": pass it on
                return
        self._saved_show(message, category, filename, lineno, file, line)

    def acquire(self) -> None:
        with self._lock:
            self._depth += 1
            if self._depth > 1:
                return
            self._saved_show = warnings.showwarning
            warnings.showwarning = self._show
            warnings.filterwarnings("always", message=_SYNC_MESSAGE.pattern, category=UserWarning)
            self._filter = warnings.filters[0]
            self._saved_mode = torch.cuda.get_sync_debug_mode()
            if self._saved_mode != 2:  # never downgrade the user's "error" mode
                torch.cuda.set_sync_debug_mode("warn")

    def release(self) -> None:
        with self._lock:
            self._depth -= 1
            if self._depth > 0:
                return
            self._depth = 0
            torch.cuda.set_sync_debug_mode(self._saved_mode)
            if warnings.showwarning == self._show:
                warnings.showwarning = self._saved_show
            try:
                warnings.filters.remove(self._filter)  # type: ignore[attr-defined]
                warnings._filters_mutated()  # type: ignore[attr-defined]
            except (ValueError, AttributeError):
                pass


_SYNC_COUNTER = _SyncWarnCounter()


class CudaSyncProbe:
    """``sync_points`` on CUDA, exact and cheap (sync debug mode warnings, counted)."""

    name = "torch.cuda.sync"

    def start(self) -> object:
        try:
            _SYNC_COUNTER.acquire()
            return _SYNC_COUNTER.total
        except Exception:
            return None

    def stop(self, token: object) -> Readings:
        if not isinstance(token, int):
            return {"sync_points": (None, "unavailable")}
        try:
            value = _SYNC_COUNTER.total - token
            _SYNC_COUNTER.release()
            return {"sync_points": (value, "measured")}
        except Exception:
            return {"sync_points": (None, "unavailable")}


class CudaTimeProbe:
    """``device_duration_s`` from two CUDA events per stage, read later (deferred)."""

    name = "torch.cuda.events"

    def start(self) -> object:
        try:
            event = torch.cuda.Event(enable_timing=True)  # type: ignore[no-untyped-call]
            event.record()
            return event
        except Exception:
            return None

    def stop(self, token: object) -> Readings:
        if token is None:
            return {"device_duration_s": (None, "unavailable")}
        try:
            begin = token
            end = torch.cuda.Event(enable_timing=True)  # type: ignore[no-untyped-call]
            end.record()
        except Exception:
            return {"device_duration_s": (None, "unavailable")}

        def read(wait: bool) -> float | None:
            if not end.query():  # type: ignore[no-untyped-call]
                if not wait:
                    return None
                end.synchronize()
            return float(begin.elapsed_time(end)) / 1000.0  # type: ignore[attr-defined]

        return {"device_duration_s": (Deferred(read), "measured")}


class HostDeviceProbe:
    """Static facts of the cheap mode: what it does not count, or what cannot exist on CPU."""

    name = "torch.host"

    def __init__(self, device: str | torch.device) -> None:
        dev = _as_device(device)
        self.attributes = {sc.COUNTER_MODE: "cheap"}
        readings: dict[str, tuple[int | float | Deferred | None, str]] = {}
        if dev.type == "cpu":
            for counter in _COPY_COUNTERS:
                readings[counter] = (0, "derived")  # the device is the host
        else:
            for counter in _COPY_COUNTERS:
                readings[counter] = (None, "unavailable")
        if dev.type != "cuda":
            readings["sync_points"] = (None, "unavailable")
            readings["device_duration_s"] = (None, "unavailable")
        self._readings = readings

    def start(self) -> object:
        return None

    def stop(self, token: object) -> Readings:
        return self._readings


def make_probes(device: str | torch.device, *, deep: bool = False) -> list[CounterProbe]:
    """The probes for a workload on ``device`` ("cpu", "cuda:0", "mps"...); see the module manual."""
    dev = _as_device(device)
    result: list[CounterProbe] = [MemoryProbe(dev)]
    if dev.type == "cuda":
        result += [CudaSyncProbe(), CudaTimeProbe()]
    if deep:
        result.append(DeepCounterProbe(report_syncs=dev.type != "cuda"))
    else:
        result.append(HostDeviceProbe(dev))
    return result

