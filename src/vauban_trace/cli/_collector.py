"""``vauban-trace collector``: run the OTLP collector until SIGTERM / Ctrl-C.

::

    vauban-trace collector [--http 127.0.0.1:4318] [--grpc 127.0.0.1:4317] [--store DIR]
                           [--metrics 127.0.0.1:9464] [--quiet-period 2s] [--max-body 20MiB]
                           [--sweep-profile-interval 10s]
                           [--token-file F | env VAUBAN_COLLECTOR_TOKEN] [--tls-cert F --tls-key F]

Each listener takes ``HOST:PORT`` (port 0 picks a free one) or ``off``. On start it prints one
line per listener with the bound address, then serves until SIGTERM or SIGINT: it stops
accepting, finishes the requests in flight, runs a final assembly pass, closes the store and
exits 0. Bad flags or a taken port exit 2 with a one-line message.
"""

from __future__ import annotations

import argparse
import gc
import logging
import signal
import sys
import threading
from pathlib import Path
from typing import Any

from vauban_trace._exceptions import ConfigurationError


def _address(text: str) -> tuple[str, int] | None:
    from vauban_trace.collector import parse_address

    if text.strip().lower() in ("off", "none", "no", ""):
        return None
    return parse_address(text)


def register(subparsers: Any) -> None:
    p = subparsers.add_parser(
        "collector",
        help="run the OTLP/HTTP + OTLP/gRPC collector that stores spans and rebuilds traces",
        description="Receive OTLP traces, store them durably in a trace store, rebuild Traces.",
    )
    p.add_argument("--http", default="127.0.0.1:4318", metavar="HOST:PORT|off",
                   help="OTLP/HTTP listener (default 127.0.0.1:4318)")
    p.add_argument("--grpc", default="127.0.0.1:4317", metavar="HOST:PORT|off",
                   help="OTLP/gRPC listener (default 127.0.0.1:4317)")
    p.add_argument("--store", default=".vauban", metavar="DIR", help="trace store directory (default .vauban)")
    p.add_argument("--metrics", default="127.0.0.1:9464", metavar="HOST:PORT|off",
                   help="Prometheus /metrics listener (default 127.0.0.1:9464)")
    p.add_argument("--quiet-period", default="2s", metavar="DURATION",
                   help="rebuild a trace this long after its last span once its root arrived (default 2s)")
    p.add_argument("--incomplete-after", default=None, metavar="DURATION",
                   help="rebuild a trace with no root span this long after its last span, "
                        "marked incomplete (default 30s, and never less than the quiet period)")
    p.add_argument("--max-body", default="20MiB", metavar="SIZE",
                   help="largest request body after decompression (default 20MiB)")
    p.add_argument("--max-inflight", type=int, default=16, metavar="N",
                   help="export requests processed at once; more get 503/UNAVAILABLE (default 16)")
    p.add_argument("--max-inflight-bytes", default="64MiB", metavar="SIZE",
                   help="request bytes processed at once (default 64MiB)")
    p.add_argument("--max-pending-traces", type=int, default=100_000, metavar="N",
                   help="refuse new requests (503/UNAVAILABLE) while more traces wait for assembly "
                        "(default 100000; 0 disables)")
    p.add_argument("--token-file", default=None, metavar="FILE",
                   help="require 'Authorization: Bearer <token>' with the token in FILE "
                        "(default: env VAUBAN_COLLECTOR_TOKEN, else no token)")
    p.add_argument("--tls-cert", default=None, metavar="FILE", help="TLS certificate (PEM) for both listeners")
    p.add_argument("--tls-key", default=None, metavar="FILE", help="TLS private key (PEM)")
    p.add_argument("--trace-files", default="on-read", choices=["on-read", "eager"],
                   help="write traces/<id>.json when first read (default) or on every rebuild")
    p.add_argument("--sweep-profile-interval", default="10s", metavar="DURATION",
                   help="profile the sweeps that received traces at most this often and export their "
                        "USL fits as vauban_sweep_* gauges (default 10s; 0 turns it off)")
    p.add_argument("--log-level", default="warning", choices=["debug", "info", "warning", "error"])
    p.set_defaults(func=run)


def build_config(args: argparse.Namespace) -> Any:
    from vauban_trace.collector import CollectorConfig, parse_duration, parse_size, read_token

    max_body = parse_size(args.max_body)
    quiet = parse_duration(args.quiet_period)
    incomplete = max(30.0, quiet) if args.incomplete_after is None else parse_duration(args.incomplete_after)
    return CollectorConfig(
        store_dir=Path(args.store),
        http=_address(args.http),
        grpc=_address(args.grpc),
        metrics=_address(args.metrics),
        quiet_period_s=quiet,
        incomplete_after_s=incomplete,
        max_body=max_body,
        max_inflight=args.max_inflight,
        max_inflight_bytes=max(parse_size(args.max_inflight_bytes), max_body),
        max_pending_traces=args.max_pending_traces or None,
        token=read_token(args.token_file),
        tls_cert=Path(args.tls_cert) if args.tls_cert else None,
        tls_key=Path(args.tls_key) if args.tls_key else None,
        trace_files="eager" if args.trace_files == "eager" else "on_read",
        sweep_profile_interval_s=parse_duration(args.sweep_profile_interval),
    )


def _tune_malloc() -> None:
    """glibc only: hand large buffers (request bodies) back to the OS when freed.

    By default glibc raises its mmap threshold after the first large free, so multi-MiB bodies
    then come from per-thread arenas and stay resident after the request is done; with one
    thread per connection, resident memory would track the number of arenas rather than the
    in-flight limit. A fixed 1 MiB threshold and a few arenas keep the service's memory close
    to what the in-flight bounds allow. A 2 MiB trim threshold keeps that much free memory at the
    top of each arena instead of returning it after every request: with the default 128 KiB,
    each body under 1 MiB was handed back and then page-faulted in again by the next one (about
    250 minor faults per 512-span request, bench/bench_collector.py).
    """
    import ctypes
    import ctypes.util

    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        libc.mallopt(-3, 1024 * 1024)  # M_MMAP_THRESHOLD
        libc.mallopt(-8, 4)  # M_ARENA_MAX
        libc.mallopt(-1, 2 * 1024 * 1024)  # M_TRIM_THRESHOLD
    except (OSError, AttributeError):  # not glibc: nothing to tune
        pass


def run(args: argparse.Namespace) -> int:
    from vauban_trace.collector import Collector, check_listeners

    _tune_malloc()

    logging.basicConfig(level=args.log_level.upper(), format="vauban-trace collector: %(levelname)s %(message)s")
    config = build_config(args)
    check_listeners(config)
    stop = threading.Event()

    def _on_signal(signum: int, frame: Any) -> None:
        stop.set()

    previous = {sig: signal.signal(sig, _on_signal) for sig in (signal.SIGTERM, signal.SIGINT)}
    collector = Collector(config)
    frozen_before = gc.get_freeze_count()
    try:
        try:
            collector.start()
        except OSError as exc:
            raise ConfigurationError(f"cannot start the collector: {exc}") from exc
        # what is alive once the service runs (modules, the store, the threads) stays alive: out
        # of the garbage collector's full passes, which otherwise walk it all (~40,000 objects,
        # 13-16 ms a pass under load, bench/bench_collector.py); undone on the way out unless the
        # process had frozen objects of its own (gc cannot tell them apart)
        gc.freeze()
        for line in collector.describe():
            print(f"vauban-trace collector: {line}", flush=True)
        print(f"vauban-trace collector: store {Path(config.store_dir).resolve()}", flush=True)
        while not stop.wait(0.5):
            pass
        print("vauban-trace collector: stopping (finishing requests in flight, final assembly)", flush=True)
    finally:
        collector.stop()
        for sig, handler in previous.items():
            signal.signal(sig, handler)
        if not frozen_before:  # run inside another process (a test, an embedding): leave it as it was
            gc.unfreeze()
    print("vauban-trace collector: stopped", file=sys.stdout, flush=True)
    return 0
