"""sweep_point(): sweep coordinates on the root spans of the requests in the block, and back in the Trace."""

from __future__ import annotations

import asyncio

import pytest
from opentelemetry.exporter.otlp.proto.common.trace_encoder import encode_spans
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

import vauban_trace as vt
from vauban_trace import semconv as sc
from vauban_trace.instrument import current_sweep_point
from vauban_trace.rebuild import rebuild_traces


def test_roots_inside_the_block_carry_the_point_and_the_rebuild_keeps_it(spans: InMemorySpanExporter) -> None:
    with vt.sweep_point("batch_size", 8, sweep_id="bs-1"):
        with vt.traced_request(model="tiny-llama"):
            with vt.stage("prefill"):
                pass
        with vt.sweep_point("prompt_tokens", 64):  # nested: the innermost wins
            with vt.traced_request(model="tiny-llama"):
                pass
        assert current_sweep_point() == vt.instrument.SweepPoint("batch_size", 8, "bs-1")
    with vt.traced_request(model="tiny-llama"):  # outside: nothing stamped
        pass
    assert current_sweep_point() is None
    roots = [dict(s.attributes or {}) for s in spans.get_finished_spans() if (s.attributes or {}).get(sc.TRACE_ROOT)]
    got = [(r.get(sc.SWEEP_ID), r.get(sc.SWEEP_AXIS), r.get(sc.SWEEP_AXIS_VALUE)) for r in roots]
    assert got == [("bs-1", "batch_size", 8), (None, "prompt_tokens", 64), (None, None, None)]
    stage_span = next(s for s in spans.get_finished_spans() if s.name == "prefill")
    assert sc.SWEEP_AXIS not in (stage_span.attributes or {})  # only the root carries it
    traces = {t.spans[0].start_unix_nano: t for t in rebuild_traces(encode_spans(spans.get_finished_spans()))}
    sweeps = [t.metadata.get("sweep") for _, t in sorted(traces.items())]
    assert sweeps == [{"id": "bs-1", "axis": "batch_size", "axis_value": 8},
                      {"axis": "prompt_tokens", "axis_value": 64}, None]


def test_the_point_follows_the_context_into_tasks(spans: InMemorySpanExporter) -> None:
    async def one() -> object:
        await asyncio.sleep(0)
        return current_sweep_point()

    async def main() -> list[object]:
        with vt.sweep_point("concurrency", 4):
            return list(await asyncio.gather(one(), one()))

    assert [p.value for p in asyncio.run(main())] == [4, 4]  # type: ignore[attr-defined]


@pytest.mark.parametrize(("axis", "value", "sweep_id", "message"), [
    ("", 1, None, "axis must be a non-empty string"),
    ("n", True, None, "value must be an int, float or str"),
    ("n", float("nan"), None, "value must be finite"),
    ("n", [1], None, "value must be an int, float or str"),
    ("n", 1, "", "sweep_id must be a non-empty string"),
])
def test_bad_points_are_refused(axis: str, value: object, sweep_id: str | None, message: str) -> None:
    with pytest.raises(vt.ContractError, match=message):
        with vt.sweep_point(axis, value, sweep_id=sweep_id):  # type: ignore[arg-type]
            pass
