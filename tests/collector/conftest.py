"""Fixtures for the collector tests (helpers live in ``collector_helpers``)."""

from __future__ import annotations

import shutil
import subprocess
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from collector_helpers import CollectorProcess, cert_with_cryptography, free_port

from vauban_trace.collector import Collector, CollectorConfig


@pytest.fixture
def make_collector(tmp_path: Path) -> Iterator[Callable[..., Collector]]:
    """Factory: a started in-process collector on free loopback ports (stopped at teardown)."""
    started: list[Collector] = []

    def factory(**overrides: Any) -> Collector:
        settings: dict[str, Any] = dict(
            store_dir=tmp_path / "store", http=("127.0.0.1", 0), grpc=("127.0.0.1", 0), metrics=None,
            quiet_period_s=0.2, incomplete_after_s=1.0, assemble_interval_s=0.05,
        )
        settings.update(overrides)
        collector = Collector(CollectorConfig(**settings)).start()
        started.append(collector)
        return collector

    yield factory
    for c in started:
        c.stop(timeout=5)


@pytest.fixture
def collector_process(tmp_path: Path) -> Iterator[Callable[..., CollectorProcess]]:
    made: list[CollectorProcess] = []

    def factory(**kwargs: Any) -> CollectorProcess:
        kwargs.setdefault("http_port", free_port())
        kwargs.setdefault("grpc_port", free_port())
        proc = CollectorProcess(kwargs.pop("store", tmp_path / "store"), **kwargs)
        made.append(proc)
        return proc

    yield factory
    for p in made:
        p.stop_quietly()


@pytest.fixture(scope="session")
def tls_files(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """A self-signed certificate for localhost / 127.0.0.1 (cryptography if installed, else openssl)."""
    d = tmp_path_factory.mktemp("tls")
    cert, key = d / "cert.pem", d / "key.pem"
    try:
        cert_with_cryptography(cert, key)
    except ImportError:
        openssl = shutil.which("openssl")
        if openssl is None:
            pytest.fail("neither the 'cryptography' package nor the openssl CLI is available to make a test cert")
        subprocess.run(
            [openssl, "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-keyout", str(key), "-out", str(cert),
             "-days", "2", "-subj", "/CN=localhost", "-addext", "subjectAltName=DNS:localhost,IP:127.0.0.1"],
            check=True, capture_output=True,
        )
    return cert, key


