"""Without an SDK everything is a silent no-op (run in a fresh interpreter: clean OTel globals)."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap

SCRIPT = textwrap.dedent(
    """
    import sys
    import numpy as np
    import vauban_trace as vt

    assert "opentelemetry.sdk" not in sys.modules, "import vauban_trace must not load the SDK"

    with vt.traced_request(vt.TraceRequest(input_text="x", requested_artifacts=("logits",)), model="m") as req:
        assert req.trace_id is None and not req.recording
        req.set_usage(input_tokens=1, output_tokens=1)
        with vt.stage("forward", token_count=3) as st:
            assert st.recording is False
            st.set_counter("sync_points", 1)
            assert vt.record_artifact("logits", np.zeros(3)) is None
            vt.record_missing("activation", "unsupported")

    @vt.stage("decode")
    def decode(x):
        return x * 2

    @vt.stage("decode")
    async def adecode(x):
        return x + 1

    import asyncio
    assert decode(np.ones(2)).tolist() == [2.0, 2.0]
    assert asyncio.run(adecode(1)) == 2
    original = ValueError("kept")
    try:
        with vt.stage("forward"):
            raise original
    except ValueError as exc:
        assert exc is original
    # the kind is validated even without an SDK
    try:
        vt.record_artifact("no_such_kind", 1)
    except vt.ContractError as exc:
        assert "no_such_kind" in str(exc)
    else:
        raise AssertionError("unknown kind accepted")
    assert "opentelemetry.sdk" not in sys.modules, "no-op path loaded the SDK"
    print("NOOP-OK")
    """
)


def test_no_sdk_path_emits_nothing_and_fails_nothing() -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith("OTEL_")}
    proc = subprocess.run([sys.executable, "-c", SCRIPT], capture_output=True, text=True, env=env, timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert "NOOP-OK" in proc.stdout
    assert proc.stderr.strip() == "", proc.stderr
