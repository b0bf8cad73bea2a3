"""``stage()``: one inference stage as an OpenTelemetry span with scaling counters.

Usage::

    with stage("decode", token_count=n, batch_size=b) as st:
        ...
        st.set_counter("sync_points", k, provenance="measured")

    @stage("forward")                 # also on async functions and generators
    def forward(input_ids): ...

The span is named after the stage and carries ``vauban.stage``. Each counter of
:data:`~vauban_trace.contract.COUNTER_NAMES` appears as ``vauban.usl.<counter>`` with
``vauban.usl.<counter>.provenance``:

- ``duration_s`` is always measured (``time.perf_counter`` around the body);
- counters passed as keywords are ``declared`` (``set_counter`` takes any provenance);
- as a decorator with ``measure=True``, ``input_bytes``/``output_bytes`` are ``derived`` from the
  tensor-like arguments and results (numpy arrays here, torch/mlx through adapters, see
  ``_values``), and the device is taken from the first tensor seen;
- active counter probes (``with probes(...)``) are started and stopped around the body and their
  readings recorded with the provenance they report;
- every other counter gets only ``vauban.usl.<counter>.provenance = "unavailable"``.

Exceptions raised by the body are recorded on the span (``record_exception``, status ERROR,
``error.type``) and re-raised unchanged. Without an SDK, entering a stage reads one cached flag and
returns a shared no-op handle: no span, no attribute dictionary, no clock reads.

A ``Stage`` object used as a context manager is single-use per ``with`` (nesting the *same*
object is supported through a stack); as a decorator it opens a fresh span per call.
"""

from __future__ import annotations

import functools
import inspect
import logging
import time
from collections.abc import Callable, Iterable
from typing import Any, TypeVar, cast

from opentelemetry import context as _context
from opentelemetry import trace as _otel_trace
from opentelemetry import trace as _trace
from opentelemetry.trace import Status, StatusCode, TracerProvider
from opentelemetry.util.types import AttributeValue

from vauban_trace import semconv as sc
from vauban_trace._exceptions import ContractError
from vauban_trace.contract import COUNTER_NAMES
from vauban_trace.instrument import _spans, _state, _values
from vauban_trace.instrument._handles import (
    _ALL_UNAVAILABLE,
    _USL,
    _USL_PROV,
    NOOP_HANDLE,
    StageHandle,
    _check_counter,
    _device_attrs,
    _NoopHandle,
)
from vauban_trace.instrument._probes import Deferred, PendingSpan, active_probes, settle

_log = logging.getLogger("vauban_trace.instrument")
F = TypeVar("F", bound=Callable[..., Any])

_FAST = hasattr(_otel_trace, "_TRACER_PROVIDER")


class Stage:
    """A stage span, usable as ``with`` block or as decorator (usually built with :func:`stage`).

    ``token_count``, ``batch_size``, ``queue_depth`` and any other counter of
    :data:`~vauban_trace.contract.COUNTER_NAMES` passed as a keyword are recorded with provenance
    ``declared``. ``device`` is ``"cpu"``, ``"cuda:0"``...; ``inputs`` are artifact refs (or ids)
    the stage consumed. ``measure=False`` turns off deriving bytes and device from a decorated
    function's arguments and results. Unknown counter names raise :class:`ContractError`.

    The constructor only stores its arguments (the no-op path must stay under a microsecond);
    everything else happens when a span is actually opened.
    """

    __slots__ = ("name", "_opts", "_counters", "_provider", "_handles")

    def __init__(
        self,
        name: str,
        *,
        token_count: int | None = None,
        batch_size: int | None = None,
        queue_depth: int | None = None,
        device: str | None = None,
        inputs: Iterable[Any] | None = None,
        measure: bool = True,
        tracer_provider: TracerProvider | None = None,
        **counters: int | float,
    ) -> None:
        self.name = name
        # one tuple instead of six slots: the no-op path pays for every store
        self._opts = (token_count, batch_size, queue_depth, device, None if inputs is None else tuple(inputs), measure)
        self._counters = counters
        self._provider = tracer_provider
        self._handles: list[StageHandle] | None = None
        if counters:
            for key in counters:
                if key not in _USL:
                    raise ContractError(
                        f"stage {name!r}: unknown counter {key!r} (expected one of: {', '.join(COUNTER_NAMES)})"
                    )

    def _declared(self) -> list[tuple[str, Any]]:
        opts = self._opts
        out: list[tuple[str, Any]] = [("token_count", opts[0]), ("batch_size", opts[1]), ("queue_depth", opts[2])]
        out.extend(self._counters.items())
        return out

    @property
    def _device(self) -> str | None:
        device: str | None = self._opts[3]
        return device

    @property
    def _inputs(self) -> Iterable[Any] | None:
        inputs: Iterable[Any] | None = self._opts[4]
        return inputs

    @property
    def _measure(self) -> bool:
        return bool(self._opts[5])

    # -- span lifecycle -------------------------------------------------------------------
    def _begin(self, tracer: Any, extra: dict[str, AttributeValue] | None) -> StageHandle:
        attrs = dict(_ALL_UNAVAILABLE)
        attrs[sc.STAGE] = self.name
        for key, value in self._declared():
            if value is None:
                continue
            _check_counter(key, value)
            attrs[_USL[key]] = value
            attrs[_USL_PROV[key]] = "declared"
        if self._device is not None:
            attrs.update(_device_attrs(self._device))
        if self._inputs is not None:
            attrs[sc.SPAN_INPUT_ARTIFACT_IDS] = [str(getattr(i, "id", i)) for i in self._inputs]
        if extra:
            attrs.update(extra)
        span = tracer.start_span(self.name, attributes=attrs)
        token = _context.attach(_trace.set_span_in_context(span))
        owned = _spans.Owned(span, self.name, self.name, tracer)
        _spans.register(owned)
        handle = StageHandle(owned, token)
        probes = active_probes()
        if probes:
            for probe in probes:
                try:
                    handle._probes.append((probe, probe.start()))
                except Exception:  # a failing probe records nothing rather than a guess
                    _log.debug("probe %r failed to start", getattr(probe, "name", probe), exc_info=True)
        handle._t0 = time.perf_counter()
        return handle

    def _finish(self, handle: StageHandle, exc: BaseException | None) -> None:
        elapsed = time.perf_counter() - handle._t0
        end_ns = time.time_ns()
        deferred: dict[str, tuple[Deferred, str]] = {}
        try:
            end = handle._end
            for probe, token in reversed(handle._probes):
                try:
                    readings = probe.stop(token)
                    static = getattr(probe, "attributes", None)
                except Exception:
                    _log.debug("probe %r failed to stop", getattr(probe, "name", probe), exc_info=True)
                    continue
                if static:
                    for key, value in static.items():
                        end.setdefault(key, value)
                for counter, (value, provenance) in readings.items():
                    if counter not in _USL or _USL_PROV[counter] in end or counter in deferred:
                        continue  # the caller's own set_counter wins over a probe
                    if value is None or provenance == "unavailable":
                        continue
                    if isinstance(value, Deferred):
                        deferred[counter] = (value, provenance)
                        continue
                    end[_USL[counter]] = value
                    end[_USL_PROV[counter]] = provenance
            end.setdefault(_USL["duration_s"], elapsed)
            end.setdefault(_USL_PROV["duration_s"], "measured")
            owned = handle._owned
            if owned.artifacts and _USL_PROV["instrumentation_d2h_copies"] not in end:
                end[_USL["instrumentation_d2h_copies"]] = owned.instr_copies
                end[_USL_PROV["instrumentation_d2h_copies"]] = "measured"
                end[_USL["instrumentation_d2h_bytes"]] = owned.instr_bytes
                end[_USL_PROV["instrumentation_d2h_bytes"]] = "measured"
            span = handle.span
            if exc is not None:
                end[sc.ERROR_TYPE] = type(exc).__qualname__
                _spans.record_exception(span, exc)
                span.set_status(Status(StatusCode.ERROR, f"{type(exc).__name__}: {exc}"))
            span.set_attributes(end)
            _spans.unregister(owned)
        except Exception:  # telemetry never breaks inference
            _log.debug("stage %r: failed to finish span attributes", self.name, exc_info=True)
        finally:
            if deferred:
                names = {c: (_USL[c], _USL_PROV[c]) for c in deferred}
                settle(PendingSpan(handle.span, end_ns, deferred, names))
            else:
                handle.span.end(end_time=end_ns)
            try:
                _context.detach(cast(Any, handle._token))
            except Exception:
                pass

    # -- context manager ------------------------------------------------------------------
    def __enter__(self) -> StageHandle | _NoopHandle:
        # fast path: the global provider is the one seen last time (see _state); an OTel API
        # without the private global falls back to _enter_checked (installed below)
        if self._provider is None and _otel_trace._TRACER_PROVIDER is _state._seen_provider:
            tracer = _state._seen_tracer
        else:
            tracer = _state.current_tracer(self._provider)
        if tracer is None:
            return NOOP_HANDLE
        handle = self._begin(tracer, None)
        if self._handles is None:
            self._handles = [handle]
        else:
            self._handles.append(handle)
        return handle

    def _enter_checked(self) -> StageHandle | _NoopHandle:
        tracer = _state.current_tracer(self._provider)
        if tracer is None:
            return NOOP_HANDLE
        handle = self._begin(tracer, None)
        if self._handles is None:
            self._handles = [handle]
        else:
            self._handles.append(handle)
        return handle

    def __exit__(self, exc_type: object, exc: BaseException | None, tb: object) -> None:
        if self._handles:
            self._finish(self._handles.pop(), exc)

    async def __aenter__(self) -> StageHandle | _NoopHandle:
        return self.__enter__()

    async def __aexit__(self, exc_type: object, exc: BaseException | None, tb: object) -> None:
        self.__exit__(exc_type, exc, tb)

    # -- decorator ------------------------------------------------------------------------
    def _derive_in(self, args: tuple[Any, ...], kwargs: dict[str, Any]) -> dict[str, AttributeValue] | None:
        if not self._measure:
            return None
        try:
            nbytes, info, found = _values.total_bytes((*args, *kwargs.values()))
        except Exception:
            return None
        if not found:
            return None
        extra: dict[str, AttributeValue] = {_USL["input_bytes"]: nbytes, _USL_PROV["input_bytes"]: "derived"}
        if info is not None and self._device is None:
            extra[sc.DEVICE_KIND] = info.device_kind
            extra[sc.DEVICE_LABEL] = info.device_label
        return extra

    def _derive_out(self, handle: StageHandle, result: Any) -> None:
        if not self._measure:
            return
        try:
            nbytes, _info, found = _values.total_bytes((result,))
        except Exception:
            return
        if found and _USL_PROV["output_bytes"] not in handle._end:
            handle._end[_USL["output_bytes"]] = nbytes
            handle._end[_USL_PROV["output_bytes"]] = "derived"

    def __call__(self, fn: F) -> F:
        if inspect.iscoroutinefunction(fn):
            return cast(F, self._wrap_async(fn))
        if inspect.isasyncgenfunction(fn):
            return cast(F, self._wrap_asyncgen(fn))
        if inspect.isgeneratorfunction(fn):
            return cast(F, self._wrap_gen(fn))
        return cast(F, self._wrap_sync(fn))

    def _wrap_sync(self, fn: Callable[..., Any]) -> Callable[..., Any]:
        @functools.wraps(fn)
        def wrapper(*args: Any, **kwargs: Any) -> Any:
            tracer = _state.current_tracer(self._provider)
            if tracer is None:
                return fn(*args, **kwargs)
            handle = self._begin(tracer, self._derive_in(args, kwargs))
            try:
                result = fn(*args, **kwargs)
            except BaseException as exc:
                self._finish(handle, exc)
                raise
            self._derive_out(handle, result)
            self._finish(handle, None)
            return result

        return wrapper

    def _wrap_async(self, fn: Callable[..., Any]) -> Callable[..., Any]:
        @functools.wraps(fn)
        async def wrapper(*args: Any, **kwargs: Any) -> Any:
            tracer = _state.current_tracer(self._provider)
            if tracer is None:
                return await fn(*args, **kwargs)
            handle = self._begin(tracer, self._derive_in(args, kwargs))
            try:
                result = await fn(*args, **kwargs)
            except BaseException as exc:
                self._finish(handle, exc)
                raise
            self._derive_out(handle, result)
            self._finish(handle, None)
            return result

        return wrapper

    def _wrap_gen(self, fn: Callable[..., Any]) -> Callable[..., Any]:
        """A generator's span covers its whole iteration; output bytes sum the yielded items.

        The span is made current only while the generator body runs (between ``next`` calls
        the caller's context is restored), so spans opened by the consumer are not its children.
        """

        @functools.wraps(fn)
        def wrapper(*args: Any, **kwargs: Any) -> Any:
            tracer = _state.current_tracer(self._provider)
            if tracer is None:
                return (yield from fn(*args, **kwargs))
            handle = self._begin(tracer, self._derive_in(args, kwargs))
            ctx = _context.get_current()
            _context.detach(cast(Any, handle._token))
            gen = fn(*args, **kwargs)
            out_bytes, found = 0, False
            to_send: Any = None
            try:
                while True:
                    token = _context.attach(ctx)
                    try:
                        item = gen.send(to_send)
                    finally:
                        _context.detach(token)
                    if self._measure:
                        n, _i, f = _values.total_bytes((item,))
                        out_bytes += n
                        found = found or f
                    to_send = yield item
            except StopIteration as stop:
                if found and _USL_PROV["output_bytes"] not in handle._end:
                    handle._end[_USL["output_bytes"]] = out_bytes
                    handle._end[_USL_PROV["output_bytes"]] = "derived"
                handle._token = _context.attach(_context.get_current())
                self._finish(handle, None)
                return stop.value
            except BaseException as exc:
                handle._token = _context.attach(_context.get_current())
                self._finish(handle, exc)
                raise

        return wrapper

    def _wrap_asyncgen(self, fn: Callable[..., Any]) -> Callable[..., Any]:
        @functools.wraps(fn)
        async def wrapper(*args: Any, **kwargs: Any) -> Any:
            tracer = _state.current_tracer(self._provider)
            if tracer is None:
                async for item in fn(*args, **kwargs):
                    yield item
                return
            handle = self._begin(tracer, self._derive_in(args, kwargs))
            ctx = _context.get_current()
            _context.detach(cast(Any, handle._token))
            agen = fn(*args, **kwargs)
            try:
                while True:
                    token = _context.attach(ctx)
                    try:
                        item = await agen.__anext__()
                    except StopAsyncIteration:
                        break
                    finally:
                        _context.detach(token)
                    yield item
            except BaseException as exc:
                handle._token = _context.attach(_context.get_current())
                self._finish(handle, exc)
                raise
            handle._token = _context.attach(_context.get_current())
            self._finish(handle, None)

        return wrapper


if not _FAST:  # pragma: no cover - depends on the OpenTelemetry API's internals
    Stage.__enter__ = Stage._enter_checked  # type: ignore[method-assign]

_new = object.__new__


def stage(
    name: str,
    *,
    token_count: int | None = None,
    batch_size: int | None = None,
    queue_depth: int | None = None,
    device: str | None = None,
    inputs: Iterable[Any] | None = None,
    measure: bool = True,
    tracer_provider: TracerProvider | None = None,
    **counters: int | float,
) -> Stage:
    """A stage span: ``with stage("decode", token_count=n) as st:`` or ``@stage("forward")``.

    Same arguments as :class:`Stage`. Built with ``object.__new__`` and direct slot stores rather
    than a class call: on the no-op path this is most of the cost of a stage (see
    docs/benchmarks.md, "Stage span overhead").
    """
    st = _new(Stage)
    st.name = name
    st._opts = (token_count, batch_size, queue_depth, device, None if inputs is None else tuple(inputs), measure)
    st._counters = counters
    st._provider = tracer_provider
    st._handles = None
    if counters:
        for key in counters:
            if key not in _USL:
                raise ContractError(
                    f"stage {name!r}: unknown counter {key!r} (expected one of: {', '.join(COUNTER_NAMES)})"
                )
    return st
