"""``TransformersInstrumentor``: trace unmodified transformers scripts with ``opentelemetry-instrument``.

::

    pip install vauban-trace[torch]
    opentelemetry-instrument --traces_exporter otlp python my_script.py

``opentelemetry-instrument`` loads every ``opentelemetry_instrumentor`` entry point; vauban-trace
declares ``vauban_transformers`` (skip it with
``OTEL_PYTHON_DISABLED_INSTRUMENTATIONS=vauban_transformers``). Or in code::

    from vauban_trace.executors.torch.instrumentor import TransformersInstrumentor
    TransformersInstrumentor().instrument(tracer_provider=provider, capture_artifacts=("tokens",))

``_instrument`` wraps ``transformers.GenerationMixin.generate`` (``wrapt``), so every model's
``generate`` becomes a traced request exactly as with
:func:`~vauban_trace.executors.torch.instrument_model` (root GenAI span, ``prefill`` / ``decode``
stages, counters): for the duration of one call, the model instance's ``forward`` is wrapped to
see the prefill and decode passes, and unwrapped afterwards. Keyword arguments of
``instrument()``: ``tracer_provider``, ``capture_artifacts``, ``layers``, ``deep_counters``
(also ``VAUBAN_TRACE_DEEP_COUNTERS=1``), ``artifact_store``. Content capture follows
``OTEL_INSTRUMENTATION_GENAI_CAPTURE_MESSAGE_CONTENT``; the tokenizer is not known to a
``generate`` call, so completion text appears only through ``capture_artifacts=("tokens",)``.

``_uninstrument`` restores the original ``generate`` (``opentelemetry.instrumentation.utils.unwrap``).
"""

from __future__ import annotations

import os
from collections.abc import Collection
from typing import Any

import wrapt
from opentelemetry.instrumentation.instrumentor import BaseInstrumentor  # type: ignore[attr-defined]
from opentelemetry.instrumentation.utils import unwrap

from vauban_trace.executors.torch._patch import GenerateTracer

__all__ = ["TransformersInstrumentor"]

_TARGET_MODULE = "transformers.generation.utils"
_TARGET = "GenerationMixin.generate"


class TransformersInstrumentor(BaseInstrumentor):  # type: ignore[misc]
    """OpenTelemetry instrumentor for ``transformers`` generation (see the module manual)."""

    def instrumentation_dependencies(self) -> Collection[str]:
        return ("transformers >= 4.46",)

    def _instrument(self, **kwargs: Any) -> None:
        deep = kwargs.get("deep_counters")
        if deep is None:
            deep = os.environ.get("VAUBAN_TRACE_DEEP_COUNTERS", "").strip().lower() in ("1", "true", "yes")
        tracer = GenerateTracer(
            None,
            capture_artifacts=tuple(kwargs.get("capture_artifacts", ())),
            layers=tuple(kwargs.get("layers", ())),
            deep_counters=bool(deep),
            tracer_provider=kwargs.get("tracer_provider"),
            artifact_store=kwargs.get("artifact_store"),
        )
        self._tracer = tracer
        wrapt.wrap_function_wrapper(_TARGET_MODULE, _TARGET, tracer.generate)

    def _uninstrument(self, **kwargs: Any) -> None:
        from transformers.generation.utils import GenerationMixin

        unwrap(GenerationMixin, "generate")
