"""The OTLP/HTTP receiver: ``POST /v1/traces`` on a stdlib threading HTTP/1.1 server.

Per request, in order (each refusal carries a ``google.rpc.Status`` body in the request's media
type, protobuf when that type is unsupported):

1. path other than ``/v1/traces``: 404; method other than POST: 405;
2. bearer token (when configured) compared with :func:`hmac.compare_digest`: 401;
3. shutting down: 503 + ``Connection: close``;
4. Content-Type not ``application/x-protobuf`` / ``application/json``, or Content-Encoding not
   gzip / deflate / identity: 415 (the HTTP code for an unsupported media type; not retryable);
5. declared body length past the limit: 413 without reading the body;
6. no room under the in-flight bounds: 503 + ``Retry-After`` (retryable), decided before the body
   is read so an overloaded collector does not buffer it;
7. read (Content-Length or chunked), inflate with a cap (413 past ``max_body``), decode (400 on
   bad data), drop spans with bad ids (200 + ``partial_success``), store durably, answer 200.

Connections are kept alive; each runs in its own daemon thread, at most ``max_connections`` at
once (the next one gets a bare 503 and is closed). TLS, when configured, is negotiated in the
connection's thread, so a slow handshake never blocks the accept loop. ``TCP_NODELAY`` is set
and every reply goes out in one write.
"""

from __future__ import annotations

import hmac
import logging
import socket
import ssl
import threading
import time
from http import HTTPStatus
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

from vauban_trace.collector._codec import (
    PROTOBUF,
    BadRequest,
    TooLarge,
    UnsupportedMedia,
    decode_request,
    export_response,
    inflate,
    media_type,
    status_body,
)
from vauban_trace.collector._config import CollectorConfig
from vauban_trace.collector._ingest import Admission, Ingestor, StoreUnavailable, read_protobuf
from vauban_trace.collector._metrics import CollectorMetrics

log = logging.getLogger("vauban_trace.collector")

TRACES_PATH = "/v1/traces"
_CHUNK = 256 * 1024
_MIN_RATE = 256 * 1024  # bytes/s a body must at least arrive at (beyond the socket timeout)
# gRPC status code numbers for google.rpc.Status.code
_INVALID_ARGUMENT, _NOT_FOUND, _RESOURCE_EXHAUSTED, _UNAUTHENTICATED = 3, 5, 8, 16
_UNAVAILABLE, _INTERNAL, _UNIMPLEMENTED = 14, 13, 12
_BUSY = (
    b"HTTP/1.1 503 Service Unavailable\r\nRetry-After: 1\r\nContent-Length: 0\r\n"
    b"Connection: close\r\n\r\n"
)


class _Refusal(Exception):
    def __init__(self, status: int, grpc_code: int, message: str, *, field: str | None = None,
                 close: bool = False, retry_after: bool = False) -> None:
        super().__init__(message)
        self.status = status
        self.grpc_code = grpc_code
        self.field = field
        self.close = close
        self.retry_after = retry_after


class _SlowBody(Exception):
    """The client sent its body slower than the body deadline allows."""


class OTLPHTTPServer(ThreadingHTTPServer):
    """A ThreadingHTTPServer wired to the collector's admission, ingestor and metrics."""

    daemon_threads = True
    allow_reuse_address = True
    request_queue_size = 128

    def __init__(self, config: CollectorConfig, admission: Admission, ingestor: Ingestor,
                 metrics: CollectorMetrics) -> None:
        assert config.http is not None
        host, port = config.http
        self.address_family = socket.AF_INET6 if ":" in host else socket.AF_INET
        self.config = config
        self.admission = admission
        self.ingestor = ingestor
        self.metrics = metrics
        self.token = config.token.encode() if config.token else None
        self.ssl_context: ssl.SSLContext | None = None
        if config.tls:
            ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
            ctx.minimum_version = ssl.TLSVersion.TLSv1_2
            ctx.load_cert_chain(str(config.tls_cert), str(config.tls_key))
            self.ssl_context = ctx
        self._connections = 0
        self._conn_lock = threading.Lock()
        super().__init__((host, port), _Handler)

    @property
    def port(self) -> int:
        return int(self.server_address[1])

    def process_request(self, request: Any, client_address: Any) -> None:
        with self._conn_lock:
            full = self._connections >= self.config.max_connections
            if not full:
                self._connections += 1
        if full:
            self.metrics.requests.labels("http", "503").inc()
            try:
                if self.ssl_context is None:
                    request.sendall(_BUSY)
            except OSError:
                pass
            self.shutdown_request(request)
            return
        thread = threading.Thread(target=self._serve_connection, args=(request, client_address), daemon=True)
        thread.start()

    def _serve_connection(self, request: socket.socket, client_address: Any) -> None:
        try:
            request.settimeout(self.config.socket_timeout_s)
            request.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            if self.ssl_context is not None:
                try:
                    request = self.ssl_context.wrap_socket(request, server_side=True)
                except (ssl.SSLError, OSError) as exc:
                    log.debug("TLS handshake with %s failed: %s", client_address, exc)
                    return
            self.finish_request(request, client_address)
        except Exception:  # a broken connection must never take the server down
            log.debug("connection from %s ended with an error", client_address, exc_info=True)
        finally:
            with self._conn_lock:
                self._connections -= 1
            self.shutdown_request(request)


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server_version = "vauban-trace-collector"
    sys_version = ""
    server: OTLPHTTPServer

    def log_message(self, format: str, *args: Any) -> None:  # noqa: A002 - stdlib signature
        log.debug("%s - " + format, self.address_string(), *args)

    # -- replies --------------------------------------------------------------------------
    def _reply(self, status: int, media: str, body: bytes, *, close: bool = False,
               retry_after: int | None = None, extra: tuple[tuple[str, str], ...] = ()) -> None:
        phrase = HTTPStatus(status).phrase
        head = [f"HTTP/1.1 {status} {phrase}", f"Content-Type: {media}", f"Content-Length: {len(body)}"]
        if retry_after is not None:
            head.append(f"Retry-After: {retry_after}")
        head.extend(f"{k}: {v}" for k, v in extra)
        if close or self.close_connection:
            head.append("Connection: close")
            self.close_connection = True
        self.server.metrics.count(self.server.metrics.requests, ("http", str(status)))
        self.wfile.write(("\r\n".join(head) + "\r\n\r\n").encode("latin-1") + body)

    def _refuse(self, media: str, refusal: _Refusal) -> None:
        body = status_body(media, refusal.grpc_code, str(refusal), refusal.field)
        extra: tuple[tuple[str, str], ...] = ()
        if refusal.status == 401:
            extra = (("WWW-Authenticate", 'Bearer realm="vauban-trace collector"'),)
        if refusal.status == 405:
            extra = (("Allow", "POST"),)
        retry = self.server.config.retry_after_s if refusal.retry_after else None
        self._reply(refusal.status, media, body, close=refusal.close, retry_after=retry, extra=extra)

    # -- body -----------------------------------------------------------------------------
    def _declared_length(self) -> int | None:
        """Content-Length, None for chunked; raises _Refusal on nonsense."""
        te = (self.headers.get("Transfer-Encoding") or "").strip().lower()
        if te:
            if te != "chunked":
                raise _Refusal(501, _UNIMPLEMENTED, f"unsupported Transfer-Encoding {te!r}", close=True)
            return None
        raw = self.headers.get("Content-Length")
        if raw is None:
            return 0
        try:
            length = int(raw.strip())
        except ValueError:
            length = -1
        if length < 0:
            raise _Refusal(400, _INVALID_ARGUMENT, f"invalid Content-Length {raw!r}", field="Content-Length",
                           close=True)
        return length

    def _discard(self, length: int | None, cap: int) -> None:
        """Read and drop a refused body so the connection can be reused; close if it is too big."""
        if length is None or length > cap:
            self.close_connection = True
            return
        left = length
        while left > 0:
            chunk = self.rfile.read(min(_CHUNK, left))
            if not chunk:
                self.close_connection = True
                return
            left -= len(chunk)

    def _read_body(self, length: int | None, cap: int) -> bytes | bytearray:
        """The request body; a client slower than the body deadline gets 408 and is dropped
        (so a trickling sender cannot hold an in-flight slot for long)."""
        allowed = self.server.config.socket_timeout_s + (length or cap) / _MIN_RATE
        deadline = time.monotonic() + allowed
        if length is not None:
            buf = bytearray(length)
            view = memoryview(buf)
            got = 0
            while got < length:
                if time.monotonic() > deadline:
                    raise _SlowBody(f"body not received within {allowed:.0f}s")
                n = self.rfile.readinto1(view[got:])
                if not n:
                    self.close_connection = True
                    raise BadRequest(f"body ended after {got} of {length} bytes")
                got += n
            return buf
        parts: list[bytes] = []
        total = 0
        while True:
            line = self.rfile.readline(1024)
            try:
                size = int(line.split(b";", 1)[0].strip(), 16)
            except ValueError:
                self.close_connection = True
                raise BadRequest("malformed chunked body") from None
            if size == 0:
                while self.rfile.readline(1024) not in (b"\r\n", b"\n", b""):
                    pass  # trailers
                return b"".join(parts)
            total += size
            if total > cap:
                self.close_connection = True
                raise TooLarge(f"chunked body is over the {cap}-byte limit")
            if time.monotonic() > deadline:
                raise _SlowBody("chunked body not received in time")
            data = self.rfile.read(size)
            if len(data) != size or self.rfile.readline(8) not in (b"\r\n", b"\n"):
                self.close_connection = True
                raise BadRequest("truncated chunked body")
            parts.append(data)

    # -- methods --------------------------------------------------------------------------
    def do_POST(self) -> None:
        srv = self.server
        cfg = srv.config
        path = self.path.split("?", 1)[0]
        media = PROTOBUF
        unsupported: str | None = None
        try:
            media = media_type(self.headers.get("Content-Type"))
        except UnsupportedMedia as exc:
            unsupported = str(exc)
        length: int | None = 0
        raw_cap = cfg.max_body + cfg.max_body // 64 + 1024  # compressed bodies may grow slightly
        try:
            length = self._declared_length()
            if path != TRACES_PATH:
                raise _Refusal(404, _NOT_FOUND, f"no such endpoint {path!r}: POST OTLP traces to {TRACES_PATH}")
            if srv.token is not None and not self._authorized(srv.token):
                raise _Refusal(401, _UNAUTHENTICATED, "missing or wrong bearer token")
            if srv.admission.draining:
                raise _Refusal(503, _UNAVAILABLE, "collector is shutting down", close=True, retry_after=True)
            if unsupported is not None:
                raise _Refusal(415, _INVALID_ARGUMENT, unsupported, field="Content-Type")
            if length is not None and length > raw_cap:
                raise _Refusal(413, _RESOURCE_EXHAUSTED,
                               f"body of {length} bytes is over the {cfg.max_body}-byte limit", close=True)
        except _Refusal as refusal:
            self._discard(length, raw_cap)
            self._refuse(media, refusal)
            return
        reserve = raw_cap if length is None else length
        if not srv.admission.try_enter(reserve):
            self._discard(length, raw_cap)
            self._refuse(media, _Refusal(503, _UNAVAILABLE, "collector is busy: retry later", retry_after=True))
            return
        try:
            self._handle_export(media, length, raw_cap)
        finally:
            srv.admission.leave(reserve)

    def _handle_export(self, media: str, length: int | None, raw_cap: int) -> None:
        srv = self.server
        try:
            raw = self._read_body(length, raw_cap)
            body = inflate(raw, self.headers.get("Content-Encoding"), srv.config.max_body)
            del raw
            request = read_protobuf(body) if media == PROTOBUF else decode_request(body, media)
            del body
            outcome = srv.ingestor.ingest(request, "http")
        except BadRequest as exc:
            self._refuse(media, _Refusal(400, _INVALID_ARGUMENT, str(exc), field=exc.field))
        except TooLarge as exc:
            self._refuse(media, _Refusal(413, _RESOURCE_EXHAUSTED, str(exc), close=True))
        except UnsupportedMedia as exc:
            self._refuse(media, _Refusal(415, _INVALID_ARGUMENT, str(exc), field="Content-Encoding"))
        except StoreUnavailable as exc:
            log.warning("%s", exc)
            self._refuse(media, _Refusal(503, _UNAVAILABLE, str(exc), retry_after=True))
        except _SlowBody as exc:
            self._refuse(media, _Refusal(408, _UNAVAILABLE, str(exc), close=True))
        except (OSError, TimeoutError):
            self.close_connection = True  # client went away mid-body; nothing acknowledged
        except Exception:
            log.exception("unexpected error while handling an export request")
            self._refuse(media, _Refusal(500, _INTERNAL, "internal error in the collector", close=True))
        else:
            self._reply(200, media, export_response(media, outcome.rejected, outcome.message))

    def _authorized(self, token: bytes) -> bool:
        value = self.headers.get("Authorization") or ""
        scheme, _, given = value.strip().partition(" ")
        if scheme.lower() != "bearer":
            return False
        return hmac.compare_digest(given.strip().encode("utf-8", "replace"), token)

    def _not_allowed(self) -> None:
        path = self.path.split("?", 1)[0]
        try:
            length = self._declared_length()
        except _Refusal:
            length = None
        self._discard(length, self.server.config.max_body)
        if path == TRACES_PATH:
            self._refuse(PROTOBUF, _Refusal(405, _UNIMPLEMENTED, f"{self.command} is not allowed: use POST"))
        else:
            self._refuse(PROTOBUF, _Refusal(404, _NOT_FOUND, f"no such endpoint {path!r}"))

    do_GET = do_PUT = do_DELETE = do_PATCH = do_OPTIONS = _not_allowed

    def do_HEAD(self) -> None:
        self.close_connection = True
        self.wfile.write(b"HTTP/1.1 405 Method Not Allowed\r\nAllow: POST\r\nContent-Length: 0\r\n"
                         b"Connection: close\r\n\r\n")

    def send_error(self, code: int, message: str | None = None, explain: str | None = None) -> None:
        # malformed request lines/headers (stdlib parser): answer with a Status body, never a crash
        self.close_connection = True
        try:
            self._reply(code, PROTOBUF, status_body(PROTOBUF, _INVALID_ARGUMENT, message or HTTPStatus(code).phrase),
                        close=True)
        except OSError:
            pass
