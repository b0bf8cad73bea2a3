"""A second real client: the Node.js OpenTelemetry SDK exporting OTLP/HTTP JSON to the collector.

The test ``npm install``s pinned, mutually compatible versions of the SDK packages into
``$VAUBAN_NODE_CACHE`` (default ``~/.cache/vauban-trace/node``; reused across runs), runs a small
script that emits a vauban-shaped trace (root + stage spans with counters and artifact events),
and checks the trace the collector rebuilt. Attribute names are handed to the script from
``vauban_trace.semconv`` so they are spelled in one place only. Missing ``node``/``npm`` fails
the test with a clear message (CI has both).
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
from pathlib import Path

import pytest
from collector_helpers import wait_for

from vauban_trace import semconv as sc

PACKAGES = {
    "@opentelemetry/api": "1.9.0",
    "@opentelemetry/sdk-trace-base": "2.12.1",
    "@opentelemetry/resources": "2.12.1",
    "@opentelemetry/exporter-trace-otlp-http": "0.223.1",  # sends JSON by default
}

SCRIPT = r"""
const api = require('@opentelemetry/api');
const { BasicTracerProvider, SimpleSpanProcessor } = require('@opentelemetry/sdk-trace-base');
const { resourceFromAttributes } = require('@opentelemetry/resources');
const { OTLPTraceExporter } = require('@opentelemetry/exporter-trace-otlp-http');

async function main() {
  const cfg = JSON.parse(process.argv[2]);
  const n = cfg.names;
  const exporter = new OTLPTraceExporter({ url: cfg.url });
  const provider = new BasicTracerProvider({
    resource: resourceFromAttributes({ 'service.name': 'node-client' }),
    spanProcessors: [new SimpleSpanProcessor(exporter)],
  });
  const tracer = provider.getTracer('vauban-node-test');
  const root = tracer.startSpan('text_completion tiny-node', { attributes: {
    [n.root]: true, [n.model]: 'tiny-node', [n.operation]: 'text_completion',
    [n.input_text]: 'hello from node', [n.sweep_axis]: 'batch_size', [n.sweep_value]: 4,
  } });
  const ctx = api.trace.setSpan(api.context.active(), root);
  cfg.stages.forEach((stage, i) => {
    const span = tracer.startSpan(stage, { attributes: {
      [n.stage]: stage,
      [n.token_count]: 16, [n.token_count + '.provenance']: 'derived',
      [n.sync_points + '.provenance']: 'unavailable',
    } }, ctx);
    span.addEvent(n.artifact_event, {
      [n.artifact_id]: stage + '-out', [n.artifact_kind]: 'activation',
      [n.artifact_digest]: 'sha256:' + String(i).repeat(64).slice(0, 64),
      [n.artifact_shape]: [1, 16, 32], [n.artifact_dtype]: 'float32',
    });
    span.end();
  });
  root.end();
  await provider.forceFlush();
  await provider.shutdown();
  process.stdout.write(JSON.stringify({ traceId: root.spanContext().traceId }) + '\n');
}
main().catch((e) => { console.error(e); process.exit(1); });
"""


def _node_modules() -> Path:
    node, npm = shutil.which("node"), shutil.which("npm")
    if node is None or npm is None:
        pytest.fail("this test needs node and npm on PATH (Node.js OpenTelemetry SDK client)")
    cache = Path(os.environ.get("VAUBAN_NODE_CACHE", Path.home() / ".cache" / "vauban-trace" / "node"))
    cache.mkdir(parents=True, exist_ok=True)
    stamp = cache / "installed.json"
    if not stamp.exists() or json.loads(stamp.read_text()) != PACKAGES:
        result = subprocess.run(
            [npm, "install", "--prefix", str(cache), "--no-audit", "--no-fund", "--no-save", "--loglevel=error",
             *(f"{name}@{version}" for name, version in PACKAGES.items())],
            capture_output=True, text=True, timeout=300,
        )
        if result.returncode != 0:
            pytest.fail(f"npm install of the OpenTelemetry JS SDK failed:\n{result.stderr[-2000:]}")
        stamp.write_text(json.dumps(PACKAGES))
    return cache / "node_modules"


def test_node_sdk_json_exporter(make_collector, tmp_path):
    modules = _node_modules()
    c = make_collector(quiet_period_s=0.3)
    stages = ["tokenize", "prefill", "decode"]
    names = {
        "root": sc.TRACE_ROOT, "model": sc.GEN_AI_REQUEST_MODEL, "operation": sc.GEN_AI_OPERATION_NAME,
        "input_text": sc.REQUEST_INPUT_TEXT, "sweep_axis": sc.SWEEP_AXIS, "sweep_value": sc.SWEEP_AXIS_VALUE,
        "stage": sc.STAGE, "token_count": sc.usl("token_count"), "sync_points": sc.usl("sync_points"),
        "artifact_event": sc.EVENT_ARTIFACT, "artifact_id": sc.ARTIFACT_ID, "artifact_kind": sc.ARTIFACT_KIND,
        "artifact_digest": sc.ARTIFACT_DIGEST, "artifact_shape": sc.ARTIFACT_SHAPE,
        "artifact_dtype": sc.ARTIFACT_DTYPE,
    }
    assert names["sync_points"] + ".provenance" == sc.usl_provenance("sync_points")
    script = tmp_path / "emit.js"
    script.write_text(SCRIPT)
    cfg = {"url": f"http://127.0.0.1:{c.http_address[1]}/v1/traces", "names": names, "stages": stages}
    result = subprocess.run(["node", str(script), json.dumps(cfg)], capture_output=True, text=True, timeout=60,
                            env={**os.environ, "NODE_PATH": str(modules)})
    assert result.returncode == 0, result.stderr
    trace_id = json.loads(result.stdout.strip().splitlines()[-1])["traceId"]

    # the JS SimpleSpanProcessor exports span by span without waiting, so the root may land
    # before the last stage: the trace is then rebuilt again when that late span arrives
    trace = wait_for(lambda: c.store.trace_count() and not c.store.pending_traces()
                     and len(c.store.get_trace(trace_id).spans) == 4 and c.store.get_trace(trace_id))
    assert trace.complete and not trace.problems
    # JS start times of spans opened back to back can tie: compare the stages, not their order
    assert sorted(s.stage for s in trace.spans if s.stage) == sorted(stages)
    assert trace.request is not None and trace.request.input_text == "hello from node"
    assert trace.resource.get("service.name") == "node-client"
    assert {a.id for a in trace.artifacts} == {f"{s}-out" for s in stages}
    assert all(a.shape == (1, 16, 32) for a in trace.artifacts)
    for span in trace.spans:
        if span.stage:
            assert span.profile is not None and span.profile.token_count == 16
            assert span.profile.sync_points is None
            assert span.profile.provenance_of("sync_points").value == "unavailable"
    # it arrived as JSON and was answered in JSON
    assert c.metrics.requests.labels("http", "200")._value.get() >= 1
    reg = c.metrics.registry
    labels = {"stage": "prefill", "model": "tiny-node", "sweep_axis": "batch_size", "sweep_value": "4"}
    assert reg.get_sample_value("vauban_stage_duration_seconds_count", labels) == 1
    assert reg.get_sample_value("vauban_stage_sync_points_count", labels) is None
