"""The collector service: receivers, assembler and metrics around one :class:`TraceStore`.

:class:`Collector` starts (in this order) the store, the metrics endpoint, the sweep profiler
(``_sweeps``, unless ``sweep_profile_interval_s`` is 0), the assembler, the HTTP receiver and the
gRPC receiver; :meth:`Collector.stop` undoes it gracefully:

1. stop accepting (listening sockets closed; requests on kept-alive connections get 503 +
   ``Connection: close``, gRPC calls UNAVAILABLE: clients retry elsewhere or later);
2. wait for the requests in flight to finish (their spans are durable once answered);
3. stop the assembly loop and run a final pass that rebuilds every pending trace;
4. stop the sweep profiler, close the metrics endpoint and the store.

Used from Python (tests, benchmarks) as a context manager, and by ``vauban-trace collector``.
"""

from __future__ import annotations

import logging
import threading
from pathlib import Path
from types import TracebackType
from typing import TYPE_CHECKING, Any

from vauban_trace._exceptions import ConfigurationError
from vauban_trace.collector._assembler import Assembler
from vauban_trace.collector._config import CollectorConfig
from vauban_trace.collector._ingest import Admission, Ingestor
from vauban_trace.collector._metrics import CollectorMetrics
from vauban_trace.collector._sweeps import SweepProfiler

if TYPE_CHECKING:
    from vauban_trace.store import TraceStore

log = logging.getLogger("vauban_trace.collector")


class Collector:
    """An OTLP trace collector writing durably to a :class:`TraceStore` and rebuilding traces."""

    def __init__(self, config: CollectorConfig, *, store: TraceStore | None = None) -> None:
        self.config = config
        self.metrics = CollectorMetrics()
        self._store = store
        self._owns_store = store is None
        self._http: Any = None
        self._http_thread: threading.Thread | None = None
        self._grpc: Any = None
        self.http_address: tuple[str, int] | None = None
        self.grpc_address: tuple[str, int] | None = None
        self.metrics_address: tuple[str, int] | None = None
        self.assembler: Assembler | None = None
        self.sweeps: SweepProfiler | None = None
        self._ingestor: Ingestor | None = None
        self.admission = Admission(config.max_inflight, config.max_inflight_bytes, self.metrics,
                                   max_backlog=config.max_pending_traces)
        self._started = False
        self._stopped = False

    @property
    def store(self) -> TraceStore:
        if self._store is None:
            raise RuntimeError("collector not started")
        return self._store

    def start(self) -> Collector:
        """Open the store and start every configured listener; raises OSError if a port is taken."""
        from vauban_trace.store import TraceStore

        cfg = self.config
        if self._store is None:
            self._store = TraceStore(Path(cfg.store_dir), trace_files=cfg.trace_files)
        if cfg.sweep_profile_interval_s > 0 and self.sweeps is None:
            self.sweeps = SweepProfiler(self._store, interval_s=cfg.sweep_profile_interval_s)
            self.metrics.registry.register(self.sweeps)
        self.assembler = Assembler(
            self._store,
            self.metrics,
            quiet_period_s=cfg.quiet_period_s,
            incomplete_after_s=cfg.incomplete_after_s,
            interval_s=cfg.assemble_interval_s,
            on_backlog=self._set_backlog,
            on_stored=self.sweeps.note if self.sweeps is not None else None,
        )
        ingestor = self._ingestor = Ingestor(
            self._store, self.metrics, on_stored=self.assembler.wake,
            # spans of new traces go to the assembler as they were stored (no read-back)
            on_snapshots=self.assembler.remember if isinstance(self._store, TraceStore) else None,
            handoff=self.assembler.handoff,
        )
        try:
            if cfg.metrics is not None:
                self.metrics_address = self.metrics.serve(*cfg.metrics)
            if self.sweeps is not None:
                self.sweeps.start()
            self.assembler.start()
            if cfg.http is not None:
                from vauban_trace.collector._http import OTLPHTTPServer

                self._http = OTLPHTTPServer(cfg, self.admission, ingestor, self.metrics)
                self.http_address = (cfg.http[0], self._http.port)
                self._http_thread = threading.Thread(
                    target=self._http.serve_forever, kwargs={"poll_interval": 0.05},
                    name="otlp-http", daemon=True,
                )
                self._http_thread.start()
            if cfg.grpc is not None:
                from vauban_trace.collector._grpc import start_grpc_server

                self._grpc, port = start_grpc_server(cfg, self.admission, ingestor, self.metrics)
                self.grpc_address = (cfg.grpc[0], port)
        except BaseException:
            self.stop(timeout=1.0)
            raise
        self._started = True
        return self

    def _set_backlog(self, pending: int) -> None:
        self.admission.backlog = pending

    def stop(self, timeout: float = 30.0) -> None:
        """Graceful shutdown (see the module docstring); safe to call twice."""
        if self._stopped:
            return
        self._stopped = True
        self.admission.draining = True
        if self._http is not None:
            self._http.shutdown()
            self._http.server_close()
        grpc_done = self._grpc.stop(grace=timeout) if self._grpc is not None else None
        if not self.admission.drain(timeout):
            log.warning("requests still in flight after %.1fs; closing anyway", timeout)
        if grpc_done is not None:
            grpc_done.wait(timeout)
        if self._ingestor is not None:
            self._ingestor.close()
        if self.assembler is not None:
            try:
                self.assembler.stop(final_pass=self._store is not None)
            except Exception:
                log.exception("final assembly pass failed")
        if self.sweeps is not None:
            self.sweeps.stop()
        self.metrics.close()
        if self._store is not None and self._owns_store:
            self._store.close()

    def __enter__(self) -> Collector:
        return self if self._started else self.start()

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.stop()

    def describe(self) -> list[str]:
        """One line per listener, e.g. ``http listening on 127.0.0.1:4318`` (ports resolved)."""
        lines = []
        scheme = "https" if self.config.tls else "http"
        if self.http_address:
            lines.append(f"otlp-http listening on {scheme}://{_fmt(self.http_address)}/v1/traces")
        if self.grpc_address:
            lines.append(f"otlp-grpc listening on {_fmt(self.grpc_address)}{' (tls)' if self.config.tls else ''}")
        if self.metrics_address:
            lines.append(f"metrics listening on http://{_fmt(self.metrics_address)}/metrics")
        return lines


def _fmt(addr: tuple[str, int]) -> str:
    host, port = addr
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


def check_listeners(config: CollectorConfig) -> None:
    """Refuse HTTP and gRPC on one port; warn when a non-loopback listener takes no token."""
    for name, addr in (("http", config.http), ("grpc", config.grpc)):
        if addr is not None and addr[0] not in ("127.0.0.1", "::1", "localhost") and config.token is None:
            log.warning("%s listener on %s accepts unauthenticated spans from the network "
                        "(set --token-file or VAUBAN_COLLECTOR_TOKEN)", name, addr[0])
    if config.http is not None and config.grpc is not None and config.http[1] == config.grpc[1] != 0 \
            and config.http[0] == config.grpc[0]:
        raise ConfigurationError("the HTTP and gRPC listeners cannot share a port")
