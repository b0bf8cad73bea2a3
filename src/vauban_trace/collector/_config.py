"""Collector settings and the small parsers behind the CLI flags.

:class:`CollectorConfig` holds every knob of the service; the ``parse_*`` helpers turn flag text
(``127.0.0.1:4318``, ``20MiB``, ``2s``) into values and raise
:class:`~vauban_trace._exceptions.ConfigurationError` naming the bad text.
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from vauban_trace._exceptions import ConfigurationError

#: Environment variable holding the bearer token when ``--token-file`` is not given.
TOKEN_ENV = "VAUBAN_COLLECTOR_TOKEN"

_SIZE_UNITS = {
    "": 1,
    "b": 1,
    "k": 1000,
    "kb": 1000,
    "kib": 1024,
    "m": 1000**2,
    "mb": 1000**2,
    "mib": 1024**2,
    "g": 1000**3,
    "gb": 1000**3,
    "gib": 1024**3,
}
_DURATION_UNITS = {"": 1.0, "s": 1.0, "ms": 1e-3, "m": 60.0, "min": 60.0, "h": 3600.0}


def parse_size(text: str) -> int:
    """``"20MiB" -> 20971520``; units b, k/kb (1000), kib (1024), m/mb, mib, g/gb, gib."""
    m = re.fullmatch(r"\s*(\d+(?:\.\d+)?)\s*([a-zA-Z]*)\s*", str(text))
    if m is None or m.group(2).lower() not in _SIZE_UNITS:
        raise ConfigurationError(f"invalid size {text!r} (expected e.g. 20MiB, 512KiB, 1048576)")
    value = int(float(m.group(1)) * _SIZE_UNITS[m.group(2).lower()])
    if value <= 0:
        raise ConfigurationError(f"size {text!r} must be > 0")
    return value


def parse_duration(text: str) -> float:
    """``"2s" -> 2.0``, ``"500ms" -> 0.5``, ``"1m" -> 60.0``; a bare number is seconds."""
    m = re.fullmatch(r"\s*(\d+(?:\.\d+)?)\s*([a-zA-Z]*)\s*", str(text))
    if m is None or m.group(2).lower() not in _DURATION_UNITS:
        raise ConfigurationError(f"invalid duration {text!r} (expected e.g. 2s, 500ms, 1m)")
    return float(m.group(1)) * _DURATION_UNITS[m.group(2).lower()]


def parse_address(text: str) -> tuple[str, int]:
    """``"127.0.0.1:4318" -> ("127.0.0.1", 4318)``; ``"[::1]:4318"`` for IPv6; port 0 picks one."""
    m = re.fullmatch(r"\s*(?:\[([0-9a-fA-F:.]+)\]|([^\s:\[\]]*)):(\d{1,5})\s*", str(text))
    if m is None:
        raise ConfigurationError(f"invalid address {text!r} (expected HOST:PORT, e.g. 127.0.0.1:4318)")
    host = m.group(1) or m.group(2) or "127.0.0.1"
    port = int(m.group(3))
    if port > 65535:
        raise ConfigurationError(f"invalid port in {text!r}")
    return host, port


def read_token(token_file: str | os.PathLike[str] | None) -> str | None:
    """The bearer token from ``token_file`` (first line, stripped) or :data:`TOKEN_ENV`; None if unset."""
    if token_file is not None:
        try:
            token = Path(token_file).read_text(encoding="utf-8").strip()
        except OSError as exc:
            raise ConfigurationError(f"cannot read token file {str(token_file)!r}: {exc.strerror}") from exc
        if not token:
            raise ConfigurationError(f"token file {str(token_file)!r} is empty")
        return token
    token = os.environ.get(TOKEN_ENV, "").strip()
    return token or None


@dataclass(frozen=True)
class CollectorConfig:
    """Everything the collector service needs to run.

    ``http`` / ``grpc`` / ``metrics`` are ``(host, port)`` or None to disable that listener.
    ``max_inflight`` bounds concurrent export requests being processed (both transports share
    it) and ``max_inflight_bytes`` bounds their summed wire size; past either, a request is
    answered 503 (HTTP) or UNAVAILABLE (gRPC) at once with a retry hint of ``retry_after_s``.
    ``max_body`` caps a request body after decompression (413 / RESOURCE_EXHAUSTED past it).
    A trace is rebuilt ``quiet_period_s`` after its last span once its root span has arrived,
    or ``incomplete_after_s`` after its last span when no root ever came (stored incomplete).
    While more than ``max_pending_traces`` traces wait for assembly, new requests are refused
    the same way (the assembly backlog stays bounded); None disables that bound.
    ``trace_files`` is the store's policy for ``traces/<id>.json`` mirrors: ``"on_read"`` (default:
    written from the database when first asked for, e.g. by ``vauban-trace show``) or ``"eager"``
    (written on every rebuild, one new file per trace).
    ``sweep_profile_interval_s``: how often (at most) the sweeps that received rebuilt traces are
    profiled again and their USL fits exported as gauges (``_sweeps``); 0 turns it off.
    """

    store_dir: Path = Path(".vauban")
    http: tuple[str, int] | None = ("127.0.0.1", 4318)
    grpc: tuple[str, int] | None = ("127.0.0.1", 4317)
    metrics: tuple[str, int] | None = ("127.0.0.1", 9464)
    quiet_period_s: float = 2.0
    incomplete_after_s: float = 30.0
    assemble_interval_s: float = 0.25
    max_body: int = 20 * 1024 * 1024
    max_inflight: int = 16
    max_inflight_bytes: int = 64 * 1024 * 1024
    max_connections: int = 256
    max_pending_traces: int | None = 100_000
    retry_after_s: int = 1
    token: str | None = None
    tls_cert: Path | None = None
    tls_key: Path | None = None
    socket_timeout_s: float = 30.0
    trace_files: Literal["eager", "on_read"] = "on_read"
    sweep_profile_interval_s: float = 10.0

    def __post_init__(self) -> None:
        if (self.tls_cert is None) != (self.tls_key is None):
            raise ConfigurationError("--tls-cert and --tls-key must be given together")
        for path in (self.tls_cert, self.tls_key):
            if path is not None and not Path(path).is_file():
                raise ConfigurationError(f"TLS file {str(path)!r} does not exist")
        if self.http is None and self.grpc is None:
            raise ConfigurationError("at least one of the HTTP and gRPC listeners must be enabled")
        if self.max_inflight < 1 or self.max_connections < 1:
            raise ConfigurationError("max_inflight and max_connections must be >= 1")
        if self.max_inflight_bytes < self.max_body:
            raise ConfigurationError("max_inflight_bytes must be >= max_body (one request must fit)")
        if self.quiet_period_s < 0 or self.incomplete_after_s < self.quiet_period_s:
            raise ConfigurationError("need 0 <= quiet period <= incomplete timeout")
        if not self.sweep_profile_interval_s >= 0:
            raise ConfigurationError(
                f"sweep profile interval must be >= 0 (0: off), got {self.sweep_profile_interval_s!r}")
        if self.trace_files not in ("eager", "on_read"):
            raise ConfigurationError(f"trace files must be 'eager' or 'on_read', got {self.trace_files!r}")
        if self.token is not None and (not self.token or any(c.isspace() for c in self.token)):
            raise ConfigurationError("the bearer token must be non-empty and contain no whitespace")

    @property
    def tls(self) -> bool:
        return self.tls_cert is not None
