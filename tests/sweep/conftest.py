"""The sweep tests time real threads: keep full garbage collections out of their windows.

By the time these tests run, the pytest process holds torch, transformers and every earlier
test's objects; one full (oldest-generation) collection then holds the interpreter lock for
100-200 ms (docs/benchmarks.md, "Exporter stalls"), which a 6 ms-service sweep window reads as a
collapse of throughput. Freezing what is alive when each test module starts leaves the collector
only that module's own objects, as `vauban-trace sweep` does after loading its model.

``store_dir`` and ``session`` (module scope): a configured embedded session of its own per test
module, for the modules that do not define theirs.
"""

from __future__ import annotations

import gc
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

import vauban_trace as vt


@pytest.fixture(autouse=True, scope="module")
def _frozen_gc() -> Iterator[None]:
    gc.collect()
    gc.freeze()
    try:
        yield
    finally:
        gc.unfreeze()


@pytest.fixture(scope="module")
def store_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("sweep-store")


@pytest.fixture(scope="module")
def session(store_dir: Path) -> Iterator[Any]:
    s = vt.configure(store_dir=store_dir)
    yield s
    s.shutdown()
