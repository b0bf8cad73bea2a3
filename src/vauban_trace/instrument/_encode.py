"""OTLP bytes of SDK spans, for the embedded exporter: the C encoder, or the official one.

:func:`encode_request` returns the serialized ``ExportTraceServiceRequest`` of a sequence of
``ReadableSpan`` objects, byte for byte what
``opentelemetry.exporter.otlp.proto.common.trace_encoder.encode_spans(spans).SerializeToString()``
gives (the official encoder is the reference; ``tests/instrument/test_instrument_encode.py``
checks equality on hypothesis-made spans and on real executor spans).

The C extension ``vauban_trace.instrument._cencode`` walks the span objects and writes the wire
format directly (no protobuf message objects, no per-span ``Resource`` hash): about 30x less CPU
per span than the official encoder (see docs/benchmarks.md, "Embedded exporter cost"). It
declines, and the official encoder takes the whole batch, for anything it does not reproduce
exactly: an attribute value of a type other than None/bool/str/int/float/bytes (subclasses
included: read at the C level as protobuf reads them) or exactly list/tuple/dict (nested deeper
than 32 or than protobuf's parser allows, or a dict key that is not exactly a str), an int
outside int64, a string that is not valid UTF-8, an id that is not exactly an int or out of
range, a kind that is not a ``SpanKind``, a timestamp or count out of range, a request over
protobuf's 2 GiB limit. Every decline is counted
(:data:`ENCODE_STATS`) and logged at debug level; it never fails the export. A KeyboardInterrupt
or SystemExit raised by code run while the spans are read (a span subclass's property) propagates.

Safety (it runs in the serving process): the C runs no user code on attribute values (no
``__str__``, ``__eq__``, ``__hash__``, ``__index__``, ``__iter__``), so a container walk is atomic
under the GIL; it owns every object it walks (a private copy of the batch, snapshots of events
and links, each list item and dict entry held while written) where code does run (span
properties, ``Resource.__eq__`` / ``__hash__`` when grouping, a generic mapping's ``items()``);
it never releases the GIL, and it reads a ``BoundedAttributes`` mapping without taking its lock,
which is sound only while a GIL exists: the extension does not declare free-threading support, so a
free-threaded CPython re-enables the GIL when it is imported.
``tests/instrument/test_instrument_encode_safety.py`` covers these
(the crash cases in a child process).

The extension is optional: when it is not built, or ``VAUBAN_TRACE_NO_NATIVE=1`` was set when
this module was imported, :data:`native` is None and every batch takes the official encoder
(the pure-Python fallback; same bytes, slower).

Checked under ASan+UBSan (2026-11-26, clean: both encode test files, and 3,000 hypothesis examples
of each property): copy ``src/vauban_trace`` to a scratch directory, build the two sources of
``_cencode_src`` into it with ``gcc -shared -fPIC -O1 -g -fsanitize=address,undefined
-fno-sanitize-recover=undefined`` (never over the tree's .so, which running processes map), and
run the tests with ``PYTHONPATH`` set to that directory, ``LD_PRELOAD`` of libasan and libubsan
and ``ASAN_OPTIONS=detect_leaks=0`` (the child processes of the crash tests inherit them).

Grouping is the official encoder's: by resource, then instrumentation scope, in order of first
appearance; a span joins a group whose resource (scope) is the same object, or has the same hash
and compares equal.
"""

from __future__ import annotations

import logging
import os
import threading
from collections.abc import Sequence
from dataclasses import dataclass
from types import ModuleType

from opentelemetry.exporter.otlp.proto.common.trace_encoder import encode_spans
from opentelemetry.sdk.trace import ReadableSpan

_log = logging.getLogger("vauban_trace.instrument")

native: ModuleType | None
try:
    from vauban_trace.instrument import _cencode as native  # type: ignore[attr-defined, no-redef, unused-ignore]
except ImportError:  # not built
    native = None

if os.environ.get("VAUBAN_TRACE_NO_NATIVE") == "1":
    native = None


@dataclass
class EncodeStats:
    """Batches encoded by the C encoder, declined by it, and taken by the official encoder
    (declined ones plus all batches when the extension is not built)."""

    native: int = 0
    declined: int = 0
    official: int = 0


ENCODE_STATS = EncodeStats()
_stats_lock = threading.Lock()


def encode_request(spans: Sequence[ReadableSpan]) -> bytes:
    """The serialized ``ExportTraceServiceRequest`` of ``spans`` (see the module docstring)."""
    if native is not None:
        data: bytes | None = native.encode_spans(spans)
        if data is not None:
            with _stats_lock:
                ENCODE_STATS.native += 1
            return data
        with _stats_lock:
            ENCODE_STATS.declined += 1
        _log.debug("vauban-trace: the C span encoder declined a batch of %d spans; using the official encoder",
                   len(spans))
    with _stats_lock:
        ENCODE_STATS.official += 1
    return bytes(encode_spans(spans).SerializeToString())


def encode_request_official(spans: Sequence[ReadableSpan]) -> bytes:
    """The reference: the official encoder's bytes."""
    return bytes(encode_spans(spans).SerializeToString())


__all__ = ["ENCODE_STATS", "EncodeStats", "encode_request", "encode_request_official", "native"]
