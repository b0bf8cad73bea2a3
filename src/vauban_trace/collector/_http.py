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

What a request costs here is kept to a few system calls and little Python (per request, not
per span, but a 512-span batch still pays it once): the request line and keep-alive rules are the
stdlib's (:class:`~http.server.BaseHTTPRequestHandler`), but the header block is read by
``_httpwire.parse_fields`` (plain ``Name: value`` lines directly, anything unusual through the
email parser the stdlib uses, so every field reads the same); a Content-Length body goes into a
pooled buffer (at most 4 kept, 2 MiB each) with what the line reader holds plus direct
``recv_into`` calls, and the buffer goes back to the pool once the body is cut or decoded (the C
splitter and the decoders copy what they keep); plaintext sockets on Linux are blocking with
kernel timeouts, so no ``poll()`` precedes each ``recv`` and ``send`` (see :mod:`._httpwire`).
"""

from __future__ import annotations

import hmac
import io
import logging
import socket
import ssl
import threading
import time
from http import HTTPStatus
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest

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
from vauban_trace.collector._httpwire import (
    HEAD_ENDS,
    KERNEL_TIMEOUTS,
    MAX_HEADERS,
    MAX_LINE,
    POOL_MAX,
    BufferPool,
    SocketReader,
    SocketWriter,
    parse_fields,
    set_kernel_timeouts,
    version_number,
)
from vauban_trace.collector._ingest import Admission, Ingestor, StoreUnavailable, read_protobuf
from vauban_trace.collector._metrics import CollectorMetrics
from vauban_trace.store import CutRequest

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
_PHRASES = {int(s): s.phrase for s in HTTPStatus}
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
        self.buffers = BufferPool()
        self.raw_cap = config.max_body + config.max_body // 64 + 1024  # compressed bodies may grow slightly
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
            request.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            if KERNEL_TIMEOUTS and self.ssl_context is None:
                set_kernel_timeouts(request, self.config.socket_timeout_s)
            else:
                request.settimeout(self.config.socket_timeout_s)
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
    fields: dict[str, str]  # the request's header fields: lower-case name -> first value
    raw_requestline: bytes  # set by BaseHTTPRequestHandler.handle_one_request

    def setup(self) -> None:
        if self.server.ssl_context is not None or not KERNEL_TIMEOUTS:
            super().setup()  # Python socket timeouts (TLS needs them)
            return
        self.connection = self.request
        self.rfile = io.BufferedReader(SocketReader(self.connection))
        self.wfile = SocketWriter(self.connection)

    def log_message(self, format: str, *args: Any) -> None:  # noqa: A002 - stdlib signature
        log.debug("%s - " + format, self.address_string(), *args)

    # -- request head ---------------------------------------------------------------------
    def parse_request(self) -> bool:
        """The stdlib's request parsing (same checks, same errors, same keep-alive rules), with
        the header block read into :attr:`fields` directly instead of through the email parser."""
        self.command = ""
        self.request_version = version = self.default_request_version
        self.close_connection = True
        requestline = str(self.raw_requestline, "iso-8859-1").rstrip("\r\n")
        self.requestline = requestline
        words = requestline.split()
        if not words:
            return False
        if len(words) >= 3:
            version = words[-1]
            if version == "HTTP/1.1":
                number = (1, 1)
            else:
                parsed = version_number(version)
                if parsed is None:
                    self.send_error(HTTPStatus.BAD_REQUEST, f"Bad request version ({version!r})")
                    return False
                number = parsed
            if number >= (1, 1):
                self.close_connection = False  # protocol_version is HTTP/1.1
            if number >= (2, 0):
                self.send_error(HTTPStatus.HTTP_VERSION_NOT_SUPPORTED,
                                f"Invalid HTTP version ({version.split('/', 1)[1]})")
                return False
            self.request_version = version
        if not 2 <= len(words) <= 3:
            self.send_error(HTTPStatus.BAD_REQUEST, f"Bad request syntax ({requestline!r})")
            return False
        command, path = words[:2]
        if len(words) == 2:
            self.close_connection = True
            if command != "GET":
                self.send_error(HTTPStatus.BAD_REQUEST, f"Bad HTTP/0.9 request type ({command!r})")
                return False
        self.command, self.path = command, path
        if path.startswith("//"):
            self.path = "/" + path.lstrip("/")
        fields = self._read_fields()
        if fields is None:
            return False
        self.fields = fields
        conntype = fields.get("connection", "").lower()
        if conntype == "close":
            self.close_connection = True
        elif conntype == "keep-alive":
            self.close_connection = False
        if fields.get("expect", "").lower() == "100-continue" and self.request_version >= "HTTP/1.1":
            return self.handle_expect_100()
        return True

    def _read_fields(self) -> dict[str, str] | None:
        """The header block (limits of the stdlib parser: 431 past them), first value per name."""
        lines: list[bytes] = []
        readline = self.rfile.readline
        while True:
            line = readline(MAX_LINE + 1)
            if len(line) > MAX_LINE:
                self.send_error(HTTPStatus.REQUEST_HEADER_FIELDS_TOO_LARGE, "Line too long", "header line")
                return None
            lines.append(line)
            if len(lines) > MAX_HEADERS:
                self.send_error(HTTPStatus.REQUEST_HEADER_FIELDS_TOO_LARGE, "Too many headers",
                                f"got more than {MAX_HEADERS} headers")
                return None
            if line in HEAD_ENDS:
                break
        fields = parse_fields(lines)
        if "content-length" in fields and len(lines) > 2:
            lengths = {line.split(b":", 1)[1].strip() for line in lines[:-1]
                       if line[:15].lower() == b"content-length:"}
            if len(lengths) > 1:  # RFC 9112 6.3: differing lengths make the framing unknowable
                fields["content-length"] = ", ".join(sorted(v.decode("iso-8859-1") for v in lengths))
        return fields

    # -- replies --------------------------------------------------------------------------
    def _reply(self, status: int, media: str, body: bytes, *, close: bool = False,
               retry_after: int | None = None, extra: tuple[tuple[str, str], ...] = ()) -> None:
        phrase = _PHRASES.get(status) or HTTPStatus(status).phrase
        head = f"HTTP/1.1 {status} {phrase}\r\nContent-Type: {media}\r\nContent-Length: {len(body)}\r\n"
        if retry_after is not None:
            head += f"Retry-After: {retry_after}\r\n"
        for k, v in extra:
            head += f"{k}: {v}\r\n"
        if close or self.close_connection:
            head += "Connection: close\r\n"
            self.close_connection = True
        self.server.metrics.count(self.server.metrics.requests, ("http", str(status)))
        self.wfile.write(head.encode("latin-1") + b"\r\n" + body)

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
        fields = self.fields
        te = fields.get("transfer-encoding")
        if te:
            te = te.strip().lower()
            if te:
                if te != "chunked":
                    raise _Refusal(501, _UNIMPLEMENTED, f"unsupported Transfer-Encoding {te!r}", close=True)
                return None
        raw = fields.get("content-length")
        if raw is None:
            return 0
        digits = raw.strip()
        # 1*DIGIT only (RFC 9110 8.6): int() would also take "+10", "1_0" or non-ASCII digits
        length = int(digits) if digits.isascii() and digits.isdigit() else -1
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

    def _read_body(self, length: int | None, cap: int) -> tuple[bytes | bytearray | memoryview, bytearray | None]:
        """The request body, and the pooled buffer holding it (None when it is not pooled: hand
        it back with :meth:`BufferPool.give` once the body is decoded). A client slower
        than the body deadline gets 408 and is dropped (so a trickling sender cannot hold an
        in-flight slot for long)."""
        if length == 0:
            return b"", None
        allowed = self.server.config.socket_timeout_s + (length or cap) / _MIN_RATE
        deadline = time.monotonic() + allowed
        if length is not None:
            pooled = length <= POOL_MAX
            buf = self.server.buffers.take(length) if pooled else bytearray(length)
            try:
                view = memoryview(buf)[:length]
                # what the reader holds, plus one read from the socket straight into the buffer;
                # after that the reader's buffer is empty and the socket is read directly
                got = self.rfile.readinto1(view)
                recv_into = self.connection.recv_into
                while got < length:
                    if not got:
                        self.close_connection = True
                        raise BadRequest(f"body ended after {got} of {length} bytes")
                    if time.monotonic() > deadline:
                        raise _SlowBody(f"body not received within {allowed:.0f}s")
                    try:
                        n = recv_into(view[got:])
                    except BlockingIOError:  # kernel timeout (see KERNEL_TIMEOUTS)
                        raise TimeoutError("timed out") from None
                    if not n:
                        self.close_connection = True
                        raise BadRequest(f"body ended after {got} of {length} bytes")
                    got += n
            except BaseException:
                if pooled:
                    self.server.buffers.give(buf)
                raise
            return view, buf if pooled else None
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
                return b"".join(parts), None
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
        fields = self.fields
        path = self.path.split("?", 1)[0]
        media = PROTOBUF
        unsupported: str | None = None
        try:
            media = media_type(fields.get("content-type"))
        except UnsupportedMedia as exc:
            unsupported = str(exc)
        length: int | None = 0
        raw_cap = srv.raw_cap
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
                               f"body of {length} bytes is over the {srv.config.max_body}-byte limit", close=True)
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

    def _decode(self, media: str, length: int | None, raw_cap: int) -> ExportTraceServiceRequest | CutRequest:
        """Read, inflate and decode the body; a pooled body buffer is handed back before the
        (slow) durable write, the decoded request holding copies of what it needs."""
        srv = self.server
        raw, pooled = self._read_body(length, raw_cap)
        try:
            body = inflate(raw, self.fields.get("content-encoding"), srv.config.max_body)
            if media == PROTOBUF:
                return read_protobuf(body)
            return decode_request(bytes(body), media)
        finally:
            del raw
            if pooled is not None:
                srv.buffers.give(pooled)

    def _handle_export(self, media: str, length: int | None, raw_cap: int) -> None:
        srv = self.server
        try:
            outcome = srv.ingestor.ingest(self._decode(media, length, raw_cap), "http")
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
        value = self.fields.get("authorization") or ""
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
        # malformed request lines/headers: answer with a Status body, never a crash
        self.close_connection = True
        try:
            self._reply(code, PROTOBUF, status_body(PROTOBUF, _INVALID_ARGUMENT, message or HTTPStatus(code).phrase),
                        close=True)
        except OSError:
            pass
