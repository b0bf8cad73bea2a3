"""Small JSON-over-HTTP client for the Jaeger and Tempo sources (stdlib ``urllib`` only).

Every failure becomes ONE line of :class:`SourceError` that starts with the source spec:
``jaeger:http://127.0.0.1:1: connection refused``, ``... timed out after 10s``,
``... HTTP 500 from http://.../api/v3/traces/..: <first 200 characters>``,
``... answered text/html instead of JSON (http://...)``. A 404 is returned to the caller, which
knows whether it means "no such trace", "no results" or "endpoint absent, try the older API".
"""

from __future__ import annotations

import json
import socket
import urllib.error
import urllib.parse
import urllib.request
from dataclasses import dataclass
from typing import Any

from vauban_trace import __version__
from vauban_trace._exceptions import ConfigurationError, SourceError

MAX_BODY_BYTES = 256 * 1024 * 1024


@dataclass(frozen=True)
class Reply:
    status: int
    body: bytes
    content_type: str
    url: str


def check_base_url(url: str, spec: str) -> str:
    """``url`` without a trailing slash; ConfigurationError unless http(s)://host[:port][/path]."""
    parts = urllib.parse.urlsplit(url)
    if parts.scheme not in ("http", "https") or not parts.netloc:
        raise ConfigurationError(f"{spec}: expected an http:// or https:// URL, got {url!r}")
    try:
        parts.port  # noqa: B018 - raises ValueError on a bad port
    except ValueError as exc:
        raise ConfigurationError(f"{spec}: bad URL {url!r}: {exc}") from None
    return url.rstrip("/")


class HttpJson:
    def __init__(self, base_url: str, spec: str, timeout_s: float = 10.0) -> None:
        self.base = check_base_url(base_url, spec)
        self.spec = spec
        self.timeout_s = timeout_s

    def get(self, path: str, params: dict[str, str] | None = None) -> Reply:
        url = self.base + path
        if params:
            url += "?" + urllib.parse.urlencode(params)
        req = urllib.request.Request(
            url, headers={"Accept": "application/json", "User-Agent": f"vauban-trace/{__version__}"}
        )
        try:
            with urllib.request.urlopen(req, timeout=self.timeout_s) as resp:
                body = resp.read(MAX_BODY_BYTES + 1)
                status, ctype = resp.status, resp.headers.get("Content-Type", "")
        except urllib.error.HTTPError as exc:
            try:
                body = exc.read(64 * 1024)
            except OSError:
                body = b""
            status, ctype = exc.code, exc.headers.get("Content-Type", "") if exc.headers else ""
        except urllib.error.URLError as exc:
            raise SourceError(f"{self.spec}: {_reason(exc.reason, self.timeout_s)}") from None
        except TimeoutError:
            raise SourceError(f"{self.spec}: timed out after {self.timeout_s:g}s ({url})") from None
        except (OSError, ValueError) as exc:  # connection reset mid-read, bad status line...
            raise SourceError(f"{self.spec}: {_reason(exc, self.timeout_s)} ({url})") from None
        if len(body) > MAX_BODY_BYTES:
            raise SourceError(f"{self.spec}: answer larger than {MAX_BODY_BYTES} bytes ({url})")
        reply = Reply(status, body, ctype, url)
        if status != 404 and not 200 <= status < 300:
            raise SourceError(f"{self.spec}: HTTP {status} from {url}: {snippet(body)}")
        return reply

    def json(self, reply: Reply) -> Any:
        """Decode a reply's JSON; several concatenated documents (a streamed answer) -> a list."""
        try:
            text = reply.body.decode("utf-8")
        except UnicodeDecodeError:
            text = None
        docs = None if text is None else _documents(text)
        if docs is None:
            ctype = reply.content_type.split(";")[0].strip() or "a non-JSON body"
            raise SourceError(f"{self.spec}: answered {ctype} instead of JSON ({reply.url}): {snippet(reply.body)}")
        return docs[0] if len(docs) == 1 else docs


def _documents(text: str) -> list[Any] | None:
    decoder = json.JSONDecoder()
    docs: list[Any] = []
    i, n = 0, len(text)
    while True:
        while i < n and text[i].isspace():
            i += 1
        if i >= n:
            return docs or None
        try:
            doc, i = decoder.raw_decode(text, i)
        except ValueError:
            return None
        docs.append(doc)


def _reason(reason: object, timeout_s: float) -> str:
    if isinstance(reason, TimeoutError):
        return f"timed out after {timeout_s:g}s"
    if isinstance(reason, ConnectionRefusedError):
        return "connection refused"
    if isinstance(reason, socket.gaierror):
        return f"cannot resolve host ({reason.strerror or reason})"
    if isinstance(reason, OSError) and reason.strerror:
        return reason.strerror.lower()
    return str(reason) or type(reason).__name__


def snippet(body: bytes, n: int = 200) -> str:
    text = body.decode("utf-8", "replace")
    return " ".join(text.split())[:n] or "(empty body)"


def error_message(doc: Any) -> str | None:
    """The message of a Jaeger/grpc-gateway error body ``{"error": {"message": ...}}``."""
    if isinstance(doc, dict):
        err = doc.get("error")
        if isinstance(err, dict) and isinstance(err.get("message"), str):
            return str(err["message"])
        if isinstance(doc.get("message"), str):
            return str(doc["message"])
    return None
