"""Fixtures for rebuild tests (helpers live in rebuild_helpers.py)."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any

import pytest
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest
from rebuild_helpers import SdkHarness, emit_vauban_request


@pytest.fixture
def sdk() -> Iterator[SdkHarness]:
    h = SdkHarness()
    yield h
    h.provider.shutdown()


@pytest.fixture
def vauban_request(sdk: SdkHarness) -> Callable[..., tuple[str, ExportTraceServiceRequest]]:
    def make(**kwargs: Any) -> tuple[str, ExportTraceServiceRequest]:
        tid = emit_vauban_request(sdk, **kwargs)
        return tid, sdk.request()

    return make
