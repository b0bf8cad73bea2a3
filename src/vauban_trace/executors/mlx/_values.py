"""Value adapter for ``mlx.core.array``: how the instrumentation describes and copies MLX arrays.

The core (:mod:`vauban_trace.instrument._values`) imports this module only when it meets a value
whose type lives in ``mlx``. It provides the two adapter functions:

- :func:`describe` — bytes (``array.nbytes``), device, shape and dtype, read from metadata: no
  evaluation, no copy. MLX arrays carry no device of their own (unified memory); the device is
  the default device the executor runs on (``cpu`` on Linux, ``gpu`` with Metal).
- :func:`to_host` — a numpy copy of the array. The conversion evaluates the array if it is still
  lazy (the MLX executor evaluates everything it records inside the stage first, so the
  conversion only copies). ``bfloat16`` (no numpy dtype) is widened to ``float32``. Whether the
  copy is a device-to-host copy (``instrumentation_d2h_*`` of the stage) follows
  :func:`._counters.copy_facts`, the rule of the workload's copy counters: on the CPU and on
  Metal's unified memory no host/device boundary exists, so it is a copy within host memory and
  counts as none (as the torch executor's CPU tensors do); on a GPU that is not Metal (managed
  memory) it is one device-to-host copy of the array's bytes.
"""

from __future__ import annotations

from typing import Any

import mlx.core as mx
import numpy as np

from vauban_trace.executors.mlx._counters import copy_facts
from vauban_trace.instrument._values import HostArray, ValueInfo

_WIDEN = frozenset({"bfloat16"})


def dtype_name(dtype: Any) -> str:
    """``mlx.core.float32`` -> ``float32``."""
    return str(dtype).removeprefix("mlx.core.")


def device_label() -> str:
    """``cpu`` or ``gpu``: the default device of this process."""
    return "gpu" if mx.default_device().type == mx.DeviceType.gpu else "cpu"


def describe(value: Any) -> ValueInfo | None:
    if not isinstance(value, mx.array):
        return None
    label = device_label()
    return ValueInfo(int(value.nbytes), label, label, tuple(int(d) for d in value.shape), dtype_name(value.dtype))


def to_host(value: Any) -> HostArray:
    array = value
    if dtype_name(array.dtype) in _WIDEN:
        array = array.astype(mx.float32)
    host = np.array(array, copy=True)
    if copy_facts(device_label()).boundary:
        return HostArray(host, 1, int(host.nbytes))
    return HostArray(host)


__all__ = ["describe", "device_label", "dtype_name", "to_host"]
