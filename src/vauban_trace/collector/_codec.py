"""Wire handling shared by both receivers: bodies in, OTLP messages out.

- :func:`inflate` decompresses ``gzip`` / ``deflate`` bodies as a stream with a hard output cap,
  so a compression bomb stops at ``limit + 1`` bytes instead of filling memory.
- :func:`decode_request` turns a body into an ``ExportTraceServiceRequest``: binary protobuf
  directly, OTLP JSON through :func:`vauban_trace.rebuild.traces_data_from_json` (the one JSON
  reader of the project: hex ids, int64 as strings or numbers, unknown fields ignored).
- :func:`drop_invalid_spans` removes spans whose ids are malformed (trace id not 16 bytes or all
  zero, span id not 8 bytes or all zero, parent id neither empty nor 8 bytes) or whose start/end
  time is past 2^63 ns (valid fixed64 on the wire, but no 64-bit signed column holds it), and
  says how many and why, for ``partial_success``.
- :func:`export_response` / :func:`status_body` encode replies in the request's media type.

Every failure caused by the client's bytes is a :class:`BadRequest` (HTTP 400 /
INVALID_ARGUMENT), or :class:`TooLarge` (413 / RESOURCE_EXHAUSTED), never a server error.
"""

from __future__ import annotations

import zlib
from dataclasses import dataclass

from google.protobuf import json_format
from google.protobuf.message import DecodeError
from google.rpc import error_details_pb2, status_pb2
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import (
    ExportTraceServiceRequest,
    ExportTraceServiceResponse,
)

PROTOBUF = "application/x-protobuf"
JSON = "application/json"
MEDIA_TYPES = (PROTOBUF, JSON)

_ZERO_TRACE = bytes(16)
_ZERO_SPAN = bytes(8)
_MAX_TIME = 2**63  # fixed64 on the wire; nanoseconds past 2262 do not fit a signed 64-bit column


class BadRequest(Exception):
    """The request's bytes cannot be decoded (permanent: HTTP 400, gRPC INVALID_ARGUMENT)."""

    def __init__(self, message: str, field: str = "body") -> None:
        super().__init__(message)
        self.field = field


class TooLarge(Exception):
    """The body is over the size limit, after decompression (HTTP 413, gRPC RESOURCE_EXHAUSTED)."""


class UnsupportedMedia(Exception):
    """Content-Type or Content-Encoding the receiver does not speak (HTTP 415)."""


def media_type(content_type: str | None) -> str:
    """The bare media type of a Content-Type header (``application/json; charset=utf-8`` -> json).

    Raises :class:`UnsupportedMedia` for anything but protobuf and JSON.
    """
    bare = (content_type or "").split(";", 1)[0].strip().lower()
    if bare in MEDIA_TYPES:
        return bare
    raise UnsupportedMedia(
        f"unsupported Content-Type {content_type!r}: send application/x-protobuf or application/json"
    )


def inflate(body: bytes | bytearray | memoryview, encoding: str | None, limit: int) -> bytes | bytearray | memoryview:
    """Decode ``Content-Encoding`` (none, identity, gzip, deflate) with an output cap of ``limit``.

    Raises :class:`TooLarge` as soon as the output would pass ``limit`` (never inflating more
    than ``limit + 1`` bytes), :class:`BadRequest` for a corrupt or truncated stream and
    :class:`UnsupportedMedia` for an unknown encoding.
    """
    enc = (encoding or "identity").strip().lower()
    if enc in ("", "identity"):
        if len(body) > limit:
            raise TooLarge(f"request body of {len(body)} bytes is over the {limit}-byte limit")
        return body
    if enc == "gzip":
        wbits = 16 + zlib.MAX_WBITS
    elif enc == "deflate":
        wbits = 32 + zlib.MAX_WBITS  # zlib or gzip header, auto-detected
    else:
        raise UnsupportedMedia(f"unsupported Content-Encoding {encoding!r}: send gzip, deflate or none")
    out: list[bytes] = []
    size = 0
    data = body
    try:
        while True:
            d = zlib.decompressobj(wbits)
            pending = data
            while True:
                chunk = d.decompress(pending, limit + 1 - size)
                size += len(chunk)
                if size > limit:
                    raise TooLarge(f"request body inflates past the {limit}-byte limit")
                out.append(chunk)
                pending = d.unconsumed_tail
                if d.eof or (not pending and not chunk):
                    break
            if not d.eof:
                raise BadRequest(f"truncated {enc} stream: the body ends before the compressed data does")
            data = d.unused_data
            if not data:
                break
            if enc == "deflate":  # gzip may hold several members; deflate holds one
                raise BadRequest("trailing bytes after the end of the deflate stream")
    except zlib.error as exc:
        raise BadRequest(f"corrupt {enc} body: {exc}") from None
    return b"".join(out)


def decode_request(body: bytes | bytearray, media: str) -> ExportTraceServiceRequest:
    """Parse an export request in ``media`` (see :data:`MEDIA_TYPES`); :class:`BadRequest` if invalid."""
    if media == PROTOBUF:
        try:
            parsed: ExportTraceServiceRequest = ExportTraceServiceRequest.FromString(body)
            return parsed
        except (DecodeError, RecursionError, ValueError) as exc:
            raise BadRequest(f"body is not a valid protobuf ExportTraceServiceRequest: {exc}") from None
    from vauban_trace.rebuild import traces_data_from_json

    if not body.strip():
        raise BadRequest("empty JSON body: send an OTLP JSON object such as {\"resourceSpans\": []}")
    try:
        data = traces_data_from_json(bytes(body))
    except RecursionError:
        raise BadRequest("JSON body is nested too deeply") from None
    except Exception as exc:  # any failure here is caused by the client's bytes
        raise BadRequest(f"body is not valid OTLP JSON: {exc}") from None
    request = ExportTraceServiceRequest()
    request.resource_spans.extend(data.resource_spans)
    return request


@dataclass
class Validation:
    """Outcome of :func:`drop_invalid_spans`: counts and a readable reason for partial success."""

    valid: int = 0
    rejected: int = 0
    reasons: dict[str, int] | None = None
    bad_time: int = 0  # of ``rejected``: spans refused for their timestamps (the rest: their ids)

    def message(self) -> str:
        if not self.rejected or not self.reasons:
            return ""
        parts = [f"{n} span(s) with {why}" for why, n in sorted(self.reasons.items())]
        return "rejected " + "; ".join(parts) + " (ids must be 16-byte trace / 8-byte span ids, not all zero)"


def _problem(trace_id: bytes, span_id: bytes, parent: bytes, start: int, end: int) -> str | None:
    if len(trace_id) != 16:
        return "a trace id that is not 16 bytes"
    if trace_id == _ZERO_TRACE:
        return "an all-zero trace id"
    if len(span_id) != 8:
        return "a span id that is not 8 bytes"
    if span_id == _ZERO_SPAN:
        return "an all-zero span id"
    if parent and len(parent) != 8:
        return "a parent span id that is not 8 bytes"
    if start >= _MAX_TIME or end >= _MAX_TIME:
        return "a timestamp past the year 2262 (over 2^63 ns)"
    return None


def drop_invalid_spans(request: ExportTraceServiceRequest) -> Validation:
    """Remove spans with malformed ids from ``request`` in place; count valid and rejected ones."""
    result = Validation()
    for rs in request.resource_spans:
        for ss in rs.scope_spans:
            spans = ss.spans
            bad: list[int] = []
            for i, sp in enumerate(spans):
                tid = sp.trace_id
                sid = sp.span_id
                if len(tid) == 16 and len(sid) == 8 and tid != _ZERO_TRACE and sid != _ZERO_SPAN:
                    parent = sp.parent_span_id
                    if (not parent or len(parent) == 8) and sp.start_time_unix_nano < _MAX_TIME \
                            and sp.end_time_unix_nano < _MAX_TIME:
                        continue
                why = _problem(tid, sid, sp.parent_span_id, sp.start_time_unix_nano, sp.end_time_unix_nano) \
                    or "an invalid id"
                if why.startswith("a timestamp"):
                    result.bad_time += 1
                if result.reasons is None:
                    result.reasons = {}
                result.reasons[why] = result.reasons.get(why, 0) + 1
                bad.append(i)
            for i in reversed(bad):
                del spans[i]
            result.valid += len(spans)
            result.rejected += len(bad)
    return result


_FULL_SUCCESS: dict[str, bytes] = {}  # media -> the body of a response with nothing rejected


def export_response(media: str, rejected: int = 0, message: str = "") -> bytes:
    """An ``ExportTraceServiceResponse`` body; ``partial_success`` set only when something was rejected."""
    if not rejected and not message:
        body = _FULL_SUCCESS.get(media)
        if body is None:
            body = _FULL_SUCCESS[media] = _export_response(media, 0, "")
        return body
    return _export_response(media, rejected, message)


def _export_response(media: str, rejected: int, message: str) -> bytes:
    response = ExportTraceServiceResponse()
    if rejected or message:
        response.partial_success.rejected_spans = rejected
        response.partial_success.error_message = message
    if media == JSON:
        return str(json_format.MessageToJson(response, indent=None)).encode()
    return bytes(response.SerializeToString())


def status_message(code: int, message: str, field: str | None = None) -> status_pb2.Status:
    """A ``google.rpc.Status`` (``code`` is a gRPC code number) with a BadRequest detail for ``field``."""
    status = status_pb2.Status(code=code, message=message)
    if field is not None:
        detail = error_details_pb2.BadRequest()
        violation = detail.field_violations.add()
        violation.field = field
        violation.description = message
        status.details.add().Pack(detail)
    return status


def status_body(media: str, code: int, message: str, field: str | None = None) -> bytes:
    """A ``google.rpc.Status`` body in ``media`` (protobuf unless the request was JSON)."""
    status = status_message(code, message, field)
    if media == JSON:
        return str(json_format.MessageToJson(status, indent=None)).encode()
    return bytes(status.SerializeToString())
