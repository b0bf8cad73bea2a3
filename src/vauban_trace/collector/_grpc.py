"""The OTLP/gRPC receiver: unary ``opentelemetry.proto.collector.trace.v1.TraceService/Export``.

The method is registered with a raw-bytes request deserializer so that a body that is not an
``ExportTraceServiceRequest`` is answered INVALID_ARGUMENT by this code (grpcio's own
deserialization failure would surface as INTERNAL). Status codes:

- INVALID_ARGUMENT: undecodable request (the message says why);
- UNAUTHENTICATED: bearer token missing or wrong (``authorization: Bearer <token>`` metadata,
  compared with :func:`hmac.compare_digest`);
- RESOURCE_EXHAUSTED: message over ``max_body`` (enforced by grpcio's
  ``grpc.max_receive_message_length``, after decompression);
- UNAVAILABLE + ``google.rpc.retryinfo-bin`` trailer: over the in-flight bounds, shutting down,
  or the store failed (retryable; the Python OTLP exporter honours the RetryInfo delay);
- OK with ``partial_success`` when spans with malformed ids were dropped.

TLS uses ``grpc.ssl_server_credentials`` with the same certificate and key as HTTP.
"""

from __future__ import annotations

import hmac
import logging
from concurrent import futures
from typing import Any

import grpc
from google.protobuf.duration_pb2 import Duration
from google.rpc import error_details_pb2
from opentelemetry.proto.collector.trace.v1 import trace_service_pb2, trace_service_pb2_grpc
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceResponse

from vauban_trace.collector._codec import BadRequest
from vauban_trace.collector._config import CollectorConfig
from vauban_trace.collector._ingest import Admission, Ingestor, StoreUnavailable, read_protobuf
from vauban_trace.collector._metrics import CollectorMetrics

log = logging.getLogger("vauban_trace.collector")

SERVICE = trace_service_pb2.DESCRIPTOR.services_by_name["TraceService"].full_name


class _TraceService(trace_service_pb2_grpc.TraceServiceServicer):
    def __init__(self, config: CollectorConfig, admission: Admission, ingestor: Ingestor,
                 metrics: CollectorMetrics) -> None:
        self._config = config
        self._admission = admission
        self._ingestor = ingestor
        self._metrics = metrics
        self._token = config.token.encode() if config.token else None
        retry = error_details_pb2.RetryInfo(retry_delay=Duration(seconds=config.retry_after_s))
        self._retry_trailer = (("google.rpc.retryinfo-bin", retry.SerializeToString()),)

    def _abort(self, context: grpc.ServicerContext, code: grpc.StatusCode, message: str,
               retry: bool = False) -> None:
        self._metrics.requests.labels("grpc", code.name).inc()
        if retry:
            context.set_trailing_metadata(self._retry_trailer)
        context.abort(code, message)

    def _authorized(self, context: grpc.ServicerContext) -> bool:
        assert self._token is not None
        for key, value in context.invocation_metadata():
            if key == "authorization":
                text = value if isinstance(value, str) else value.decode("utf-8", "replace")
                scheme, _, given = text.strip().partition(" ")
                if scheme.lower() == "bearer":
                    return hmac.compare_digest(given.strip().encode("utf-8", "replace"), self._token)
        return False

    def Export(self, request: Any, context: grpc.ServicerContext) -> ExportTraceServiceResponse:  # noqa: N802
        raw: bytes = request
        if self._token is not None and not self._authorized(context):
            self._abort(context, grpc.StatusCode.UNAUTHENTICATED, "missing or wrong bearer token")
        if self._admission.draining:
            self._abort(context, grpc.StatusCode.UNAVAILABLE, "collector is shutting down", retry=True)
        size = len(raw)
        if not self._admission.try_enter(size):
            self._abort(context, grpc.StatusCode.UNAVAILABLE, "collector is busy: retry later", retry=True)
        try:
            try:
                message = read_protobuf(raw)
                del raw, request
                outcome = self._ingestor.ingest(message, "grpc")
            except BadRequest as exc:
                self._abort(context, grpc.StatusCode.INVALID_ARGUMENT, str(exc))
            except StoreUnavailable as exc:
                log.warning("%s", exc)
                self._abort(context, grpc.StatusCode.UNAVAILABLE, str(exc), retry=True)
        finally:
            self._admission.leave(size)
        response = ExportTraceServiceResponse()
        if outcome.rejected:
            response.partial_success.rejected_spans = outcome.rejected
            response.partial_success.error_message = outcome.message
        self._metrics.count(self._metrics.requests, ("grpc", "OK"))
        return response


def start_grpc_server(config: CollectorConfig, admission: Admission, ingestor: Ingestor,
                      metrics: CollectorMetrics) -> tuple[grpc.Server, int]:
    """Build, bind and start the gRPC server; returns it and the bound port."""
    assert config.grpc is not None
    host, port = config.grpc
    servicer = _TraceService(config, admission, ingestor, metrics)
    handler = grpc.method_handlers_generic_handler(
        SERVICE,
        {
            "Export": grpc.unary_unary_rpc_method_handler(
                servicer.Export,
                request_deserializer=None,  # raw bytes: decoding errors are ours to report
                response_serializer=ExportTraceServiceResponse.SerializeToString,
            )
        },
    )
    options = [
        ("grpc.max_receive_message_length", config.max_body),
        ("grpc.max_send_message_length", 4 * 1024 * 1024),
        ("grpc.so_reuseport", 0),
        ("grpc.max_concurrent_streams", 100),
    ]
    server = grpc.server(
        futures.ThreadPoolExecutor(max_workers=config.max_inflight + 4, thread_name_prefix="otlp-grpc"),
        handlers=[handler],
        options=options,
        maximum_concurrent_rpcs=config.max_connections,
    )
    address = f"[{host}]:{port}" if ":" in host else f"{host}:{port}"
    try:
        if config.tls:
            assert config.tls_cert is not None and config.tls_key is not None
            creds = grpc.ssl_server_credentials(
                [(config.tls_key.read_bytes(), config.tls_cert.read_bytes())]
            )
            bound = server.add_secure_port(address, creds)
        else:
            bound = server.add_insecure_port(address)
    except RuntimeError as exc:
        raise OSError(f"cannot listen for gRPC on {address}: {exc}") from exc
    if not bound:
        raise OSError(f"cannot listen for gRPC on {address} (address in use?)")
    server.start()
    return server, bound
