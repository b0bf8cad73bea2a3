"""One-line instrumentation of a user's own transformers model.

::

    import vauban_trace as vt
    from vauban_trace.executors.torch import instrument_model

    vt.configure()                                   # or any OpenTelemetry SDK setup
    handle = instrument_model(model, tokenizer)      # wraps model.generate and model.forward
    out = model.generate(**inputs, max_new_tokens=32)   # traced
    handle.remove()                                  # the original methods are back

Each ``generate`` call becomes one traced request (GenAI root span ``"text_completion <model>"``,
kind INTERNAL, ``gen_ai.provider.name = huggingface.transformers``) holding:

- ``prefill``: the first forward pass (the prompt), ``token_count`` = prompt positions and
  ``batch_size`` declared;
- ``observe``: with ``layers=...``, the residual stream after each listed layer for the prompt
  positions, one ``activation`` artifact per layer (hooks installed around the prefill only);
- ``decode``: every later forward pass and the sampling between them, with
  ``vauban.decode.steps`` and per-step timings (p50/p95/max/mean of the intervals between
  successive forward calls); ``token_count`` = steps x batch (derived);
- ``emit``: with ``capture_artifacts`` containing ``tokens`` / ``text``, the generated ids / text.

Counters: the probes of :func:`~vauban_trace.executors.torch.make_probes` for the model's device
are active in every stage (``deep_counters=True`` adds per-op copy/sync counting).

Root attributes: ``gen_ai.request.model`` (``config._name_or_path``; a local directory is reduced
to its last component), ``max_tokens`` (``max_new_tokens`` as given or configured),
``temperature`` / ``top_p`` / ``top_k`` / ``seed`` when passed to ``generate``,
``gen_ai.usage.input_tokens`` / ``output_tokens`` and ``gen_ai.response.finish_reasons``.
Reading token values from an accelerator would add a device synchronisation, so there the
instrumentation uses shapes only: input tokens = batch x prompt length, output tokens = batch x
new positions (exact for batch 1; counts padding after an early-finished sequence in a batch),
finish reasons ``stop`` when fewer than ``max_new_tokens`` positions were produced and left unset
otherwise. On CPU the values are read: finish reason ``stop`` when an end-of-sequence id was
produced, ``length`` when the limit was reached without one. With capture of ``tokens``/``text``
or content capture on, values are read on any device (that copy is the instrumentation's own).

Content: prompt and completion text go on the root span (``gen_ai.input.messages`` /
``gen_ai.output.messages``) only when ``OTEL_INSTRUMENTATION_GENAI_CAPTURE_MESSAGE_CONTENT`` is
``SPAN_ONLY`` or ``SPAN_AND_EVENT`` and a tokenizer was given.

A bare ``model(...)`` / ``model.forward(...)`` call outside ``generate`` becomes a request of
operation ``forward`` with one ``forward`` stage. Without an SDK both wrappers call straight
through. User exceptions are recorded on the spans and re-raised unchanged.

Wrapping is per instance (``wrapt.FunctionWrapper`` stored in the instance ``__dict__``), so
other instances of the class are untouched; ``remove()`` deletes the wrappers, after which
``model.generate`` is the class's own method again.
"""

from __future__ import annotations

import contextlib
import contextvars
import json
import statistics
import threading
import time
from collections.abc import Iterator, Sequence
from typing import Any

import torch
import wrapt
from opentelemetry.trace import TracerProvider

from vauban_trace import semconv as sc
from vauban_trace._exceptions import ContractError
from vauban_trace.contract import ArtifactKind, TraceRequest
from vauban_trace.executors.torch._counters import make_probes
from vauban_trace.executors.torch._genargs import (
    _eos_ids,
    _first_tensor,
    _gen_setting,
    _model_device,
    model_name,
)
from vauban_trace.instrument import _state, probes, record_artifact, record_missing, stage, traced_request
from vauban_trace.instrument._probes import CounterProbe, instrumentation_work

__all__ = ["InstrumentedModel", "instrument_model", "uninstrument_model", "GenerateTracer"]

PROVIDER = "huggingface.transformers"
_CAPTURABLE = ("tokens", "text", "logits", "activation")
_GEN: contextvars.ContextVar[_GenState | None] = contextvars.ContextVar("vauban_trace_generate", default=None)
_PATCH_LOCK = threading.Lock()
#: id(model) -> [what was in the instance's __dict__ before, number of calls using the wrapper]
_TEMP_REFS: dict[int, list[Any]] = {}


class _GenState:
    __slots__ = (
        "tracer", "device", "batch", "calls", "decode_stage", "decode_handle", "starts", "capture", "kinds",
        "prompt_rows",
    )

    def __init__(self, tracer: GenerateTracer, device: torch.device, batch: int, kinds: frozenset[str]) -> None:
        self.tracer = tracer
        self.device = device
        self.batch = batch
        self.calls = 0
        self.decode_stage: Any = None
        self.decode_handle: Any = None
        self.prompt_rows: list[list[int]] | None = None
        self.starts: list[float] = []
        self.capture: Any = None
        self.kinds = kinds


class GenerateTracer:
    """The wrappers shared by :func:`instrument_model` and the OpenTelemetry instrumentor."""

    def __init__(
        self,
        tokenizer: Any = None,
        *,
        capture_artifacts: Sequence[str] = (),
        layers: Sequence[int] = (),
        deep_counters: bool = False,
        tracer_provider: TracerProvider | None = None,
        artifact_store: Any = None,
    ) -> None:
        kinds = tuple(capture_artifacts)
        for kind in kinds:
            if kind not in _CAPTURABLE:
                raise ContractError(f"capture_artifacts: {kind!r} is not one of {', '.join(_CAPTURABLE)}")
        for layer in layers:
            if isinstance(layer, bool) or not isinstance(layer, int) or layer < 0:
                raise ContractError(f"layers: {layer!r} is not a layer index >= 0")
        if layers and "activation" not in kinds:
            kinds += ("activation",)
        self.tokenizer = tokenizer
        self.kinds = frozenset(kinds)
        self.layers = tuple(layers)
        self.deep = deep_counters
        self.provider = tracer_provider
        self.store = artifact_store
        self._probes: dict[str, list[CounterProbe]] = {}

    def probes_for(self, device: torch.device) -> list[CounterProbe]:
        key = str(device)
        found = self._probes.get(key)
        if found is None:
            found = make_probes(device, deep=self.deep)
            self._probes[key] = found
        return found

    # -- generate -------------------------------------------------------------------------
    def generate(self, wrapped: Any, instance: Any, args: tuple[Any, ...], kwargs: dict[str, Any]) -> Any:
        if _state.current_tracer(self.provider) is None or _GEN.get() is not None:
            return wrapped(*args, **kwargs)
        ids = _first_tensor(args, kwargs, "input_ids", "inputs")
        device = _model_device(instance, ids)
        batch, in_len = (int(ids.shape[0]), int(ids.shape[-1])) if ids is not None and ids.dim() == 2 else (1, 0)
        request = self._request(ids, device)
        max_new = _gen_setting(instance, kwargs, "max_new_tokens")
        state = _GenState(self, device, batch, self.kinds)
        gen_token = _GEN.set(state)
        try:
            with traced_request(
                request,
                model=model_name(instance),
                provider=PROVIDER,
                operation="text_completion",
                device=str(device),
                executor="vauban_trace.instrument_model",
                max_tokens=int(max_new) if isinstance(max_new, int) else None,
                temperature=_gen_setting(instance, kwargs, "temperature") if "temperature" in kwargs else None,
                top_p=kwargs.get("top_p"),
                top_k=kwargs.get("top_k"),
                seed=kwargs.get("seed") if isinstance(kwargs.get("seed"), int) else None,
                tracer_provider=self.provider,
            ) as req, probes(*self.probes_for(device)):
                with self._forward_patched(instance):
                    try:
                        out = wrapped(*args, **kwargs)
                    except BaseException as exc:
                        self._close_decode(state, exc)
                        raise
                    self._close_decode(state, None)
                self._finish(req, instance, state, out, ids, in_len, max_new, kwargs)
                return out
        finally:
            _GEN.reset(gen_token)

    def _request(self, ids: torch.Tensor | None, device: torch.device) -> TraceRequest | None:
        requested = tuple(k for k in _CAPTURABLE if k in self.kinds)
        if ids is None or ids.device.type != "cpu" or ids.dim() != 2 or ids.shape[0] != 1:
            return None  # reading ids off a device would add a sync; batches have no single prompt
        try:
            return TraceRequest(
                prompt_ids=tuple(int(i) for i in ids[0].tolist()),
                requested_artifacts=requested,
                collect_layers=self.layers,
            )
        except Exception:
            return None

    @contextlib.contextmanager
    def _forward_patched(self, model: Any) -> Iterator[None]:
        """Make sure ``model.forward`` goes through :meth:`forward` for the duration of a call.

        Concurrent calls on one instance share one temporary wrapper (reference-counted), removed
        when the last of them returns; a permanent wrapper (``instrument_model``) is left alone.
        """
        with _PATCH_LOCK:
            current = model.__dict__.get("forward")
            if isinstance(current, wrapt.FunctionWrapper) and getattr(current, "_self_vauban", False):
                refs = _TEMP_REFS.get(id(model))
                if refs is None:  # permanent: instrument_model's own wrapper
                    owned = False
                else:
                    refs[1] += 1
                    owned = True
            else:
                wrapper = _wrap(model.forward, self.forward)
                model.__dict__["forward"] = wrapper
                _TEMP_REFS[id(model)] = [current, 1]
                owned = True
        try:
            yield
        finally:
            if owned:
                with _PATCH_LOCK:
                    refs = _TEMP_REFS.get(id(model))
                    if refs is not None:
                        refs[1] -= 1
                        if refs[1] <= 0:
                            del _TEMP_REFS[id(model)]
                            if refs[0] is None:
                                model.__dict__.pop("forward", None)
                            else:
                                model.__dict__["forward"] = refs[0]

    def _close_decode(self, state: _GenState, exc: BaseException | None) -> None:
        st = state.decode_stage
        if st is None:
            return
        state.decode_stage = None
        try:
            end = time.perf_counter()
            starts = state.starts
            steps = [b - a for a, b in zip(starts, starts[1:] + [end], strict=True)]
            handle = state.decode_handle
            if handle is not None and steps:
                handle.set_attribute(sc.DECODE_STEPS, len(steps))
                ordered = sorted(steps)
                handle.set_attribute(sc.DECODE_STEP_P50_S, statistics.median(ordered))
                handle.set_attribute(sc.DECODE_STEP_P95_S, ordered[min(len(ordered) - 1, int(0.95 * len(ordered)))])
                handle.set_attribute(sc.DECODE_STEP_MAX_S, ordered[-1])
                handle.set_attribute(sc.DECODE_STEP_MEAN_S, sum(steps) / len(steps))
                handle.set_counter("token_count", len(steps) * state.batch, provenance="derived")
        except Exception:
            pass
        if exc is None:
            st.__exit__(None, None, None)
        else:
            st.__exit__(type(exc), exc, exc.__traceback__)

    def _finish(
        self, req: Any, model: Any, state: _GenState, out: Any, ids: torch.Tensor | None,
        in_len: int, max_new: Any, kwargs: dict[str, Any],
    ) -> None:
        try:
            seqs = out if isinstance(out, torch.Tensor) else getattr(out, "sequences", None)
            if not isinstance(seqs, torch.Tensor) or seqs.dim() != 2:
                return
            encdec = bool(getattr(getattr(model, "config", None), "is_encoder_decoder", False))
            start = 1 if encdec else in_len
            new = seqs[:, start:]
            batch, new_len = int(new.shape[0]), int(new.shape[1])
            mask = kwargs.get("attention_mask")
            read = seqs.device.type == "cpu" or bool(self.kinds & {"tokens", "text"}) or _state.capture_content_enabled()
            if ids is not None and isinstance(mask, torch.Tensor) and mask.device.type == "cpu":
                req.set_usage(input_tokens=int(mask.sum()))
            elif ids is not None:
                req.set_usage(input_tokens=batch * in_len)
            if not read:
                req.set_usage(output_tokens=batch * new_len)
                if isinstance(max_new, int) and new_len < max_new:
                    req.set_finish_reasons(["stop"] * batch)
                self._emit(req, state, None)
                return
            with instrumentation_work():  # the instrumentation's own read, counted apart
                rows = new.detach().to("cpu").tolist()
                if ids is not None and _state.capture_content_enabled():
                    state.prompt_rows = ids.detach().to("cpu").tolist()
            eos = _eos_ids(model, kwargs)
            produced, reasons = 0, []
            for row in rows:
                cut = next((i for i, tok in enumerate(row) if tok in eos), None)
                if cut is not None:
                    produced += cut + 1
                    reasons.append("stop")
                else:
                    produced += len(row)
                    reasons.append("length" if isinstance(max_new, int) and len(row) >= max_new else "stop")
            req.set_usage(output_tokens=produced)
            req.set_finish_reasons(reasons)
            self._emit(req, state, rows)
        except Exception:
            pass

    def _emit(self, req: Any, state: _GenState, rows: list[list[int]] | None) -> None:
        want = self.kinds & {"tokens", "text"}
        content = _state.capture_content_enabled() and self.tokenizer is not None
        if not want and not content:
            return
        with stage("emit", batch_size=state.batch, device=str(state.device), tracer_provider=self.provider):
            if rows is None:
                return
            if "tokens" in want:
                record_artifact(ArtifactKind.TOKENS, rows[0] if len(rows) == 1 else rows, store=self.store)
            texts: list[str] | None = None
            if self.tokenizer is not None and ("text" in want or content):
                texts = [str(self.tokenizer.decode(r, skip_special_tokens=True)) for r in rows]
            if "text" in want:
                if texts is None:
                    record_missing(ArtifactKind.TEXT, "unsupported", "no tokenizer given to instrument_model")
                else:
                    record_artifact(ArtifactKind.TEXT, texts[0] if len(texts) == 1 else texts, store=self.store)
            if content and texts is not None:
                msgs = [{"role": "assistant", "parts": [{"type": "text", "content": t}]} for t in texts]
                req.set_attribute(sc.GEN_AI_OUTPUT_MESSAGES, json.dumps(msgs))
                if state.prompt_rows is not None:
                    prompts = [str(self.tokenizer.decode(r, skip_special_tokens=True)) for r in state.prompt_rows]
                    inputs = [{"role": "user", "parts": [{"type": "text", "content": t}]} for t in prompts]
                    req.set_attribute(sc.GEN_AI_INPUT_MESSAGES, json.dumps(inputs))

    # -- forward --------------------------------------------------------------------------
    def forward(self, wrapped: Any, instance: Any, args: tuple[Any, ...], kwargs: dict[str, Any]) -> Any:
        state = _GEN.get()
        if state is None:
            if _state.current_tracer(self.provider) is None:
                return wrapped(*args, **kwargs)
            return self._bare_forward(wrapped, instance, args, kwargs)
        state.calls += 1
        if state.calls == 1:
            return self._prefill(state, wrapped, instance, args, kwargs)
        if state.decode_stage is None:
            st = stage("decode", batch_size=state.batch, device=str(state.device), tracer_provider=self.provider)
            state.decode_handle = st.__enter__()
            state.decode_stage = st
        state.starts.append(time.perf_counter())
        return wrapped(*args, **kwargs)

    def _prefill(self, state: _GenState, wrapped: Any, model: Any, args: Any, kwargs: Any) -> Any:
        ids = _first_tensor(args, kwargs, "input_ids")
        positions = int(ids.shape[-1]) if ids is not None else None
        capture = None
        if "activation" in self.kinds:
            capture = self._capture(model)
        with stage(
            "prefill", token_count=positions, batch_size=state.batch, device=str(state.device),
            tracer_provider=self.provider,
        ):
            with capture.installed() if capture is not None else contextlib.nullcontext():
                out = wrapped(*args, **kwargs)
            if "logits" in self.kinds:
                logits = getattr(out, "logits", None)
                if isinstance(logits, torch.Tensor):
                    record_artifact(ArtifactKind.LOGITS, logits[:, -1, :], topk=5, store=self.store)
                else:
                    record_missing(ArtifactKind.LOGITS, "unsupported", "the model output has no logits")
        if capture is not None:
            with stage("observe", batch_size=state.batch, device=str(state.device), tracer_provider=self.provider):
                for ref, tensor in capture.items():
                    if tensor is None:
                        record_missing(ArtifactKind.ACTIVATION, "failed", f"{ref.path} did not run", ref.layer)
                    else:
                        record_artifact(ArtifactKind.ACTIVATION, tensor, layer=ref.layer, metadata=ref.describe(), store=self.store)
                for layer, _site in capture.absent:
                    record_missing(ArtifactKind.ACTIVATION, "unsupported", f"layer {layer} does not exist", layer)
        return out

    def _capture(self, model: Any) -> Any:
        from vauban_trace.executors.torch._layers import find_layers
        from vauban_trace.executors.torch._observe import ActivationCapture

        layer_map, reason = find_layers(model)
        if layer_map is None:
            record_missing(ArtifactKind.ACTIVATION, "unsupported", reason)
            return None
        wanted = self.layers or tuple(range(layer_map.count))
        capture = ActivationCapture(layer_map, [(i, "residual") for i in wanted if i < layer_map.count])
        capture.absent.extend((i, "residual") for i in wanted if i >= layer_map.count)
        return capture

    def _bare_forward(self, wrapped: Any, instance: Any, args: Any, kwargs: Any) -> Any:
        ids = _first_tensor(args, kwargs, "input_ids")
        device = _model_device(instance, ids)
        batch = int(ids.shape[0]) if ids is not None and ids.dim() == 2 else None
        positions = int(ids.shape[-1]) if ids is not None else None
        with traced_request(
            None, model=model_name(instance), provider=PROVIDER, operation="forward", device=str(device),
            executor="vauban_trace.instrument_model", tracer_provider=self.provider,
        ) as req, probes(*self.probes_for(device)):
            if ids is not None and batch is not None and positions is not None:
                req.set_usage(input_tokens=batch * positions)
            with stage("forward", token_count=positions, batch_size=batch, device=str(device), tracer_provider=self.provider):
                return wrapped(*args, **kwargs)


def _wrap(bound: Any, wrapper: Any) -> Any:
    fw: Any = wrapt.FunctionWrapper(bound, wrapper)
    fw._self_vauban = True  # wrapt keeps ``_self_*`` attributes on the wrapper itself
    return fw


class InstrumentedModel:
    """Handle returned by :func:`instrument_model`; ``remove()`` restores the original methods."""

    def __init__(self, model: Any, tracer: GenerateTracer) -> None:
        self.model = model
        self.tracer = tracer
        self._saved: dict[str, Any] = {}
        for name, hook in (("generate", tracer.generate), ("forward", tracer.forward)):
            if not callable(getattr(model, name, None)):
                continue
            self._saved[name] = model.__dict__.get(name, _ABSENT)
            model.__dict__[name] = _wrap(getattr(model, name), hook)
        model.__dict__["_vauban_instrumented"] = self

    @property
    def active(self) -> bool:
        return self.model.__dict__.get("_vauban_instrumented") is self

    def remove(self) -> None:
        """Put back exactly what was there before (idempotent)."""
        if not self.active:
            return
        for name, saved in self._saved.items():
            if saved is _ABSENT:
                self.model.__dict__.pop(name, None)
            else:
                self.model.__dict__[name] = saved
        self.model.__dict__.pop("_vauban_instrumented", None)

    def __enter__(self) -> InstrumentedModel:
        return self

    def __exit__(self, *exc: object) -> None:
        self.remove()


_ABSENT = object()


def instrument_model(
    model: Any,
    tokenizer: Any = None,
    *,
    capture_artifacts: Sequence[str] = (),
    layers: Sequence[int] = (),
    deep_counters: bool = False,
    tracer_provider: TracerProvider | None = None,
    artifact_store: Any = None,
) -> InstrumentedModel:
    """Trace ``model.generate()`` and ``model(...)`` of this instance (see the module manual).

    ``capture_artifacts``: any of ``tokens``, ``text`` (needs ``tokenizer``), ``logits`` (last
    prompt position, with top-5), ``activation`` (with ``layers``: residual stream after those
    layers; all layers when ``layers`` is empty). ``deep_counters`` turns on per-operation copy
    and sync counting. ``artifact_store`` (a store from ``vauban_trace.artifacts.open_store``) is
    where artifacts go; default: the store of ``vauban_trace.configure()``. Instrumenting an already instrumented model raises ``ContractError``.
    """
    if not isinstance(model, torch.nn.Module):
        raise ContractError(f"instrument_model: expected a torch.nn.Module, got {type(model).__name__}")
    if "_vauban_instrumented" in model.__dict__:
        raise ContractError("instrument_model: this model is already instrumented (call handle.remove() first)")
    tracer = GenerateTracer(
        tokenizer, capture_artifacts=capture_artifacts, layers=layers, deep_counters=deep_counters,
        tracer_provider=tracer_provider, artifact_store=artifact_store,
    )
    return InstrumentedModel(model, tracer)


def uninstrument_model(model: Any) -> bool:
    """Remove :func:`instrument_model`'s wrappers from ``model``; False when it was not instrumented."""
    handle = getattr(model, "__dict__", {}).get("_vauban_instrumented")
    if handle is None:
        return False
    handle.remove()
    return True
