"""The collector benchmark's payloads: OTLP/HTTP protobuf batches of realistic vauban spans.

:func:`make_batch` gives one serialized ``ExportTraceServiceRequest`` of
``TRACES_PER_BATCH * SPANS_PER_TRACE`` spans (32 traces of a root + 15 stage spans carrying
counters with provenance and an artifact event each), deterministic in ``index``. Used by
bench/bench_collector.py, bench/collector_steps.py, bench/bench_rebuild_native.py and tests.
"""

from __future__ import annotations

import hashlib

from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest
from opentelemetry.proto.common.v1.common_pb2 import AnyValue, KeyValue

from vauban_trace import semconv as sc

STAGES = ("tokenize", "prefill", "forward", "decode", "emit")
TRACES_PER_BATCH = 32
SPANS_PER_TRACE = 16  # root + 15 stages -> 512 spans per batch


def _kv(key: str, value: object) -> KeyValue:
    if isinstance(value, bool):
        return KeyValue(key=key, value=AnyValue(bool_value=value))
    if isinstance(value, int):
        return KeyValue(key=key, value=AnyValue(int_value=value))
    if isinstance(value, float):
        return KeyValue(key=key, value=AnyValue(double_value=value))
    return KeyValue(key=key, value=AnyValue(string_value=str(value)))


def make_batch(index: int) -> bytes:
    """512 spans: 32 vauban traces (root + 15 stage spans with counters and an artifact event)."""
    req = ExportTraceServiceRequest()
    rs = req.resource_spans.add()
    rs.resource.attributes.extend([_kv("service.name", "bench"), _kv("host.name", "bench-host")])
    ss = rs.scope_spans.add()
    ss.scope.name = "vauban_trace"
    ss.scope.version = "0.1.0"
    t0 = 1_700_000_000_000_000_000 + index * 10**9
    for t in range(TRACES_PER_BATCH):
        tid = hashlib.blake2b(f"bench:{index}:{t}".encode(), digest_size=16).digest()
        root_id = hashlib.blake2b(tid + b"root", digest_size=8).digest()
        root = ss.spans.add(trace_id=tid, span_id=root_id, name="text_completion tiny-llama", kind=1,
                            start_time_unix_nano=t0, end_time_unix_nano=t0 + 50_000_000)
        root.attributes.extend([
            _kv(sc.TRACE_ROOT, True), _kv(sc.GEN_AI_OPERATION_NAME, "text_completion"),
            _kv(sc.GEN_AI_REQUEST_MODEL, "tiny-llama"), _kv(sc.GEN_AI_PROVIDER_NAME, "huggingface.transformers"),
            _kv(sc.REQUEST_INPUT_TEXT, "The quick brown fox"), _kv(sc.SWEEP_AXIS, "token_count"),
            _kv(sc.SWEEP_AXIS_VALUE, 64 * (1 + t % 4)), _kv(sc.EXECUTOR_NAME, "torch"),
        ])
        for i in range(SPANS_PER_TRACE - 1):
            stage = STAGES[i % len(STAGES)]
            sid = hashlib.blake2b(tid + i.to_bytes(2, "big"), digest_size=8).digest()
            start = t0 + 1_000 + i * 3_000_000
            sp = ss.spans.add(trace_id=tid, span_id=sid, parent_span_id=root_id, name=stage, kind=1,
                              start_time_unix_nano=start, end_time_unix_nano=start + 2_500_000)
            sp.attributes.extend([
                _kv(sc.STAGE, stage), _kv(sc.DEVICE_KIND, "cpu"), _kv(sc.DEVICE_LABEL, "cpu"),
                _kv(sc.usl("token_count"), 64), _kv(sc.usl_provenance("token_count"), "derived"),
                _kv(sc.usl("batch_size"), 1), _kv(sc.usl_provenance("batch_size"), "declared"),
                _kv(sc.usl("input_bytes"), 65536), _kv(sc.usl_provenance("input_bytes"), "derived"),
                _kv(sc.usl("output_bytes"), 131072), _kv(sc.usl_provenance("output_bytes"), "derived"),
                _kv(sc.usl("memory_bytes"), 1 << 20), _kv(sc.usl_provenance("memory_bytes"), "measured"),
                _kv(sc.MEMORY_METHOD, "cpu.rss_peak_delta"),
                _kv(sc.usl_provenance("sync_points"), "unavailable"),
            ])
            ev = sp.events.add(time_unix_nano=start + 2_000_000, name=sc.EVENT_ARTIFACT)
            ev.attributes.extend([
                _kv(sc.ARTIFACT_ID, f"{stage}-{i}"), _kv(sc.ARTIFACT_KIND, "activation"),
                _kv(sc.ARTIFACT_DIGEST, "blake3:" + hashlib.sha256(sid).hexdigest()),
                _kv(sc.ARTIFACT_URI, "file:///blobs/x"), _kv(sc.ARTIFACT_MEDIA_TYPE, "application/vnd.safetensors"),
                _kv(sc.ARTIFACT_DTYPE, "float32"), _kv(sc.ARTIFACT_BYTE_SIZE, 131072),
                _kv(sc.ARTIFACT_STAT_MEAN, 0.01), _kv(sc.ARTIFACT_STAT_STD, 1.02),
            ])
    data: bytes = req.SerializeToString()
    return data
