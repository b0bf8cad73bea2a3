"""The public API of ``vauban_trace``: ``__all__`` is exact, resolvable, and the import stays light."""

from __future__ import annotations

import subprocess
import sys

import vauban_trace
import vauban_trace.instrument
from vauban_trace import _exceptions

EXPECTED = {
    "__version__",
    # instrumentation
    "configure", "Session", "current_session", "traced_request", "RequestHandle", "stage", "Stage",
    "StageHandle", "record_artifact", "record_missing", "ArtifactRef", "probes", "CounterProbe",
    "sweep_point",
    # vocabulary
    "ArtifactKind", "Capabilities", "MissingArtifact", "StageProfile", "Trace", "TraceArtifact",
    "TraceRequest", "TraceSpan",
    # errors
    *_exceptions.__all__,
}


def test_all_is_exactly_the_public_api() -> None:
    assert set(vauban_trace.__all__) == EXPECTED
    assert len(vauban_trace.__all__) == len(set(vauban_trace.__all__))


def test_every_exported_name_resolves() -> None:
    for name in vauban_trace.__all__:
        assert getattr(vauban_trace, name) is not None, name
    for name in vauban_trace.instrument.__all__:
        assert getattr(vauban_trace.instrument, name) is not None, name


def test_reexports_are_the_same_objects() -> None:
    from vauban_trace.contract import Trace, TraceRequest
    from vauban_trace.instrument._setup import configure

    assert vauban_trace.Trace is Trace and vauban_trace.TraceRequest is TraceRequest
    assert vauban_trace.configure is configure
    assert vauban_trace.stage is vauban_trace.instrument.stage


def test_import_is_light() -> None:
    code = (
        "import sys, vauban_trace\n"
        "heavy = [m for m in ('torch', 'transformers', 'mlx', 'opentelemetry.sdk') if m in sys.modules]\n"
        "print(','.join(heavy))\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == ""
