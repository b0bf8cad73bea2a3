"""The vauban-trace collector: an OTLP receiver that stores spans durably and rebuilds traces.

Run it with ``vauban-trace collector`` (see ``docs/collector.md``) or from Python::

    from vauban_trace.collector import Collector, CollectorConfig
    with Collector(CollectorConfig(store_dir=".vauban", http=("127.0.0.1", 0))) as c:
        print(c.http_address)          # the port actually bound

What it does, module by module:

- ``_http`` OTLP/HTTP ``POST /v1/traces`` (protobuf and JSON, gzip/deflate), ``_grpc`` OTLP/gRPC
  ``TraceService/Export``; both answer in OTLP's terms (400/INVALID_ARGUMENT for bad data,
  413/RESOURCE_EXHAUSTED past the size limit checked after decompression, 200 +
  ``partial_success`` when spans with malformed ids were dropped, 503/UNAVAILABLE with a retry
  hint under backpressure, 401/UNAUTHENTICATED without the bearer token);
- ``_ingest`` bounded admission (in-flight requests and bytes; refusal is immediate) and the
  durable write: a 200 is sent only after :meth:`TraceStore.add_spans` returned, so ``kill -9``
  loses nothing acknowledged; duplicates from client retries are idempotent;
- ``_assembler`` rebuilds a trace once its root span arrived and a quiet period passed (or, with
  no root, after a longer timeout: stored incomplete); a late span reopens its trace; pending work
  is read from the store, so it survives restarts;
- ``_metrics`` Prometheus metrics (``vauban_collector_*`` and per-stage ``vauban_stage_*``
  histograms) in a private registry;
- ``_sweeps`` the sweep profiler: re-profiles the sweeps whose traces were rebuilt, from the store,
  and exports their USL fits (or refusals) as ``vauban_sweep_*`` gauges;
- ``_codec`` body inflation with a hard cap (a gzip bomb never inflates past the limit), decoding
  (JSON goes through :func:`vauban_trace.rebuild.traces_data_from_json`), id validation, replies.
"""

from vauban_trace.collector._assembler import Assembler
from vauban_trace.collector._codec import BadRequest, TooLarge, UnsupportedMedia, decode_request, inflate
from vauban_trace.collector._config import (
    TOKEN_ENV,
    CollectorConfig,
    parse_address,
    parse_duration,
    parse_size,
    read_token,
)
from vauban_trace.collector._ingest import Admission, Ingestor, Outcome, StoreUnavailable
from vauban_trace.collector._metrics import CollectorMetrics
from vauban_trace.collector._service import Collector, check_listeners

__all__ = [
    "TOKEN_ENV",
    "Admission",
    "Assembler",
    "BadRequest",
    "Collector",
    "CollectorConfig",
    "CollectorMetrics",
    "Ingestor",
    "Outcome",
    "StoreUnavailable",
    "TooLarge",
    "UnsupportedMedia",
    "check_listeners",
    "decode_request",
    "inflate",
    "parse_address",
    "parse_duration",
    "parse_size",
    "read_token",
]
