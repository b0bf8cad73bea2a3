"""Deep torch counters: host/device copies and sync points counted per operation (opt-in).

What is counted, and what is not, is described in the manual of
:mod:`vauban_trace.executors.torch._counters`. Mechanics:

- A :class:`TorchDispatchMode` sees aten operations: cross-device ``_to_copy``/``copy_``/
  ``_copy_from``, scalar reads (``_local_scalar_dense``, ``is_nonzero``) and ops whose output
  shape depends on data (``nonzero``, boolean-mask ``index``/``index_put_``, ``masked_select``,
  ``unique``...).
- A :class:`TorchFunctionMode` sees the Python-level calls that never reach the dispatcher:
  ``Tensor.tolist()`` and tensors built from host data on a device (``torch.tensor`` /
  ``as_tensor`` / ``asarray`` with ``device=``). While such a call runs, the dispatch side stops
  counting so nothing is counted twice.
- Both modes are entered when the outermost stage of a thread opens and left when it closes;
  stages inside read differences of running totals, so probes nest.
- Inside ``instrumentation_work()`` copies are tallied as ``instrumentation_d2h_*`` and syncs are
  not counted.

Modes are per thread: a stage counts the operations of the thread that opened it.
"""

from __future__ import annotations

import threading
from typing import Any

import torch
from torch.overrides import TorchFunctionMode
from torch.utils._python_dispatch import TorchDispatchMode

from vauban_trace import semconv as sc
from vauban_trace.instrument._probes import Readings, in_instrumentation_work

__all__ = ["DeepCounterProbe", "DeepTotals"]

_aten = torch.ops.aten


def _overloads(*packets: Any) -> frozenset[Any]:
    found: set[Any] = set()
    for packet in packets:
        for name in packet.overloads():
            found.add(getattr(packet, name))
    return frozenset(found)


_COPY_OPS = _overloads(_aten._to_copy, _aten.copy_, _aten._copy_from, _aten._copy_from_and_resize)
_SCALAR_OPS = _overloads(_aten._local_scalar_dense, _aten.is_nonzero)
_SHAPE_SYNC_OPS = _overloads(
    _aten.nonzero, _aten.masked_select, _aten.unique_consecutive, _aten._unique2, _aten._unique,
    _aten.unique_dim, _aten.repeat_interleave,
)
_MASK_OPS = _overloads(_aten.index, _aten.index_put_, _aten.index_put, _aten._index_put_impl_)
_MASK_DTYPES = (torch.bool, torch.uint8)
_NONZERO = _overloads(_aten.nonzero)
_HOST = torch.device("cpu")
#: bytes of the element count that ``nonzero`` (and boolean masking, which uses it) reads back to
#: the host on CUDA; matched against torch.profiler's Memcpy DtoH events on torch 2.11 (H200)
_COUNT_BYTES = 4

_TO_COPY = _overloads(_aten._to_copy)
_CREATORS = frozenset({torch.tensor, torch.as_tensor, torch.asarray})
_TOLIST = torch.Tensor.tolist


def _nbytes(t: torch.Tensor) -> int:
    return int(t.numel()) * int(t.element_size())


def _is_host(device: torch.device) -> bool:
    return device.type == "cpu"


class DeepTotals:
    """Running totals of one thread's deep counting."""

    __slots__ = ("h2d", "h2d_bytes", "d2h", "d2h_bytes", "syncs", "instr_d2h", "instr_d2h_bytes", "suppress")

    def __init__(self) -> None:
        self.h2d = self.h2d_bytes = self.d2h = self.d2h_bytes = self.syncs = 0
        self.instr_d2h = self.instr_d2h_bytes = 0
        self.suppress = 0

    def snapshot(self) -> tuple[int, ...]:
        return (self.h2d, self.h2d_bytes, self.d2h, self.d2h_bytes, self.syncs, self.instr_d2h, self.instr_d2h_bytes)

    def copy(self, src: torch.device, dst: torch.device, nbytes: int, blocking: bool = False) -> None:
        src_host, dst_host = _is_host(src), _is_host(dst)
        if src_host == dst_host or nbytes == 0:  # an empty tensor moves nothing and waits for nothing
            return
        if blocking:  # a blocking copy waits for the device (memcpy and stream sync)
            self.sync()
        if src_host:
            self.h2d += 1
            self.h2d_bytes += nbytes
        elif in_instrumentation_work():
            self.instr_d2h += 1
            self.instr_d2h_bytes += nbytes
        else:
            self.d2h += 1
            self.d2h_bytes += nbytes

    def sync(self) -> None:
        if not in_instrumentation_work():
            self.syncs += 1


class _Dispatch(TorchDispatchMode):  # type: ignore[no-untyped-call]
    def __init__(self, totals: DeepTotals) -> None:
        super().__init__()  # type: ignore[no-untyped-call]
        self.totals = totals

    def __torch_dispatch__(self, func: Any, types: Any, args: Any = (), kwargs: Any = None) -> Any:
        kwargs = kwargs or {}
        totals = self.totals
        if not totals.suppress:
            try:
                self._account(func, args, kwargs)
            except Exception:  # counting never breaks the workload
                pass
        return func(*args, **kwargs)

    def _account(self, func: Any, args: Any, kwargs: Any) -> None:
        totals = self.totals
        if func in _COPY_OPS:
            if func in _TO_COPY:
                src = args[0]
                dst = kwargs.get("device") or src.device
                totals.copy(src.device, torch.device(dst), _nbytes(src), not kwargs.get("non_blocking", False))
            else:
                dst, src = args[0], args[1]
                non_blocking = args[2] if len(args) > 2 else kwargs.get("non_blocking", False)
                if isinstance(src, torch.Tensor) and isinstance(dst, torch.Tensor):
                    totals.copy(src.device, dst.device, _nbytes(src), not non_blocking)
        elif func in _SCALAR_OPS:
            src = args[0]
            if _is_host(src.device):
                totals.sync()
            else:
                totals.copy(src.device, torch.device("cpu"), int(src.element_size()), True)
        elif func in _SHAPE_SYNC_OPS:
            if func._overloadpacket is _aten.repeat_interleave and kwargs.get("output_size") is not None:
                return
            src = args[0]
            if func in _NONZERO and not _is_host(src.device):
                totals.copy(src.device, _HOST, _COUNT_BYTES, True)  # the element count comes to the host
            else:
                totals.sync()
        elif func in _MASK_OPS:
            indices = args[1] if len(args) > 1 else kwargs.get("indices", ())
            for index in indices or ():
                if isinstance(index, torch.Tensor) and index.dtype in _MASK_DTYPES:
                    if _is_host(index.device):
                        totals.sync()
                    else:  # the mask goes through nonzero: its element count comes to the host
                        totals.copy(index.device, _HOST, _COUNT_BYTES, True)
                    break


class _Function(TorchFunctionMode):
    def __init__(self, totals: DeepTotals) -> None:
        super().__init__()
        self.totals = totals

    def __torch_function__(self, func: Any, types: Any, args: Any = (), kwargs: Any = None) -> Any:
        kwargs = kwargs or {}
        if func is _TOLIST or func in _CREATORS:
            totals = self.totals
            if totals.suppress:
                return func(*args, **kwargs)
            totals.suppress += 1
            try:
                result = func(*args, **kwargs)
            finally:
                totals.suppress -= 1
            try:
                if func is _TOLIST:
                    src = args[0]
                    if _is_host(src.device):
                        totals.sync()  # the host reads every value: a device would be waited for here
                    else:
                        totals.copy(src.device, torch.device("cpu"), _nbytes(src), True)
                elif isinstance(result, torch.Tensor) and not _is_host(result.device):
                    data = args[0] if args else kwargs.get("data", kwargs.get("obj"))
                    if isinstance(data, torch.Tensor):
                        if data.device != result.device:
                            totals.copy(data.device, result.device, _nbytes(data), True)
                    else:
                        totals.copy(torch.device("cpu"), result.device, _nbytes(result), True)
            except Exception:
                pass
            return result
        return func(*args, **kwargs)


class _ThreadState:
    __slots__ = ("depth", "modes", "totals")

    def __init__(self) -> None:
        self.depth = 0
        self.totals = DeepTotals()
        self.modes: tuple[_Function, _Dispatch] | None = None


class DeepCounterProbe:
    """Counts host/device copies and sync points per operation while a stage is open.

    ``report_syncs=False`` leaves ``sync_points`` to another probe (on CUDA the sync debug mode
    counter is exact and is preferred).
    """

    name = "torch.deep"

    def __init__(self, *, report_syncs: bool = True) -> None:
        self._local = threading.local()
        self._report_syncs = report_syncs
        self.attributes = {sc.COUNTER_MODE: "deep"}

    def _state(self) -> _ThreadState:
        state: _ThreadState | None = getattr(self._local, "state", None)
        if state is None:
            state = _ThreadState()
            self._local.state = state
        return state

    @property
    def totals(self) -> DeepTotals:
        """This thread's running totals (for tests and benchmarks)."""
        return self._state().totals

    def start(self) -> object:
        try:
            state = self._state()
            if state.depth == 0:
                modes = (_Function(state.totals), _Dispatch(state.totals))
                modes[0].__enter__()  # type: ignore[no-untyped-call]
                try:
                    modes[1].__enter__()  # type: ignore[no-untyped-call]
                except Exception:
                    modes[0].__exit__(None, None, None)  # type: ignore[no-untyped-call]
                    raise
                state.modes = modes
            state.depth += 1
            return state.totals.snapshot()
        except Exception:
            return None

    def stop(self, token: object) -> Readings:
        state = self._state()
        try:
            after = state.totals.snapshot()
        except Exception:
            after = None
        try:
            if state.depth > 0:
                state.depth -= 1
                if state.depth == 0 and state.modes is not None:
                    modes, state.modes = state.modes, None
                    modes[1].__exit__(None, None, None)  # type: ignore[no-untyped-call]
                    modes[0].__exit__(None, None, None)  # type: ignore[no-untyped-call]
        except Exception:
            pass
        if not isinstance(token, tuple) or after is None:
            return {}
        h2d, h2d_b, d2h, d2h_b, syncs, i_d2h, i_d2h_b = (a - b for a, b in zip(after, token, strict=True))
        readings: dict[str, tuple[int | float | None, str]] = {
            "h2d_copies": (h2d, "measured"),
            "h2d_bytes": (h2d_b, "measured"),
            "d2h_copies": (d2h, "measured"),
            "d2h_bytes": (d2h_b, "measured"),
            "host_device_copies": (h2d + d2h, "measured"),
        }
        if i_d2h:  # otherwise the stage's own tally of record_artifact copies stands
            readings["instrumentation_d2h_copies"] = (i_d2h, "measured")
            readings["instrumentation_d2h_bytes"] = (i_d2h_b, "measured")
        if self._report_syncs:
            readings["sync_points"] = (syncs, "measured")
        return readings
