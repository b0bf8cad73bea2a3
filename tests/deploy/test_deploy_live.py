"""End to end without Docker: the Dockerfile ENTRYPOINT, a real Prometheus, the dashboard queries.

1. ``vauban-trace collector`` is started with the Dockerfile's ENTRYPOINT argv (listeners moved to
   127.0.0.1 port 0, the store to a temporary folder, a short quiet period).
2. A Prometheus server (Debian's ``prometheus`` package) scrapes its ``--metrics`` listener
   every second, as the compose stack's Prometheus does.
3. Traces of a token-count sweep are sent by the real OTLP exporters (HTTP and gRPC) in two
   waves, so counters *increase* between scrapes; one bad span is posted to produce a
   rejection and one request is re-sent to produce duplicates.
4. A batch-size sweep with a sweep id (durations on a known USL curve) is sent too, so the
   collector's sweep profiler (``--sweep-profile-interval 0.5s``) exports its fits.
5. An open-loop (arrival-rate) sweep and a closed-loop (concurrency) sweep, simulated exactly
   (one FIFO server, 10 ms per request), give the load dashboard its data.
6. Every PromQL expression of the dashboards (Grafana macros substituted) is evaluated by
   Prometheus and must return data; the sweep XY query must return one p50 per sweep value,
   growing with the value; the load dashboard's numbers are those of the simulated service.
"""

from __future__ import annotations

import json
import math
import re
import shutil
import socket
import subprocess
import sys
import time
import urllib.parse
import urllib.request
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from deploy_support import FIXED_METRICS, HISTOGRAMS, METRIC_LABELS, REPO

SWEEP = (128, 256, 512)
STAGE_SECONDS_PER_TOKEN = 1e-4  # prefill takes 0.0128 s, 0.0256 s, 0.0512 s
MODEL = "tiny-deploy-test"
USL_SWEEP_ID = "deploy-usl"
USL_VALUES = (1, 2, 4, 8, 16, 32)
# lambda 1000/s, sigma 0.05, kappa 0.01: N* = 9.7; three repeats per value (the lack-of-fit test
# needs repeats), each with its own small, fixed multiplicative noise
USL_NOISE = (
    (1.01, 0.997, 1.004), (0.99, 1.006, 0.998), (1.005, 0.993, 1.002),
    (0.995, 1.003, 1.009), (1.0, 0.992, 1.006), (1.008, 0.996, 1.001),
)
OPEN_SWEEP_ID, CLOSED_SWEEP_ID = "deploy-open", "deploy-closed"
OPEN_RATES = (20, 200)  # against one server at 10 ms per request: sustained, then saturated at 100/s
CLOSED_VALUES = (1, 2, 4, 8, 16, 32)
SERVICE_NS = 10_000_000


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _wait(what: str, check: Callable[[], bool], timeout: float = 20.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if check():
            return
        time.sleep(0.2)
    pytest.fail(f"timed out waiting for {what}")


def _get(url: str) -> str:
    with urllib.request.urlopen(url, timeout=5) as resp:
        return str(resp.read().decode("utf-8"))


@dataclass
class Collector:
    http: str
    grpc: str
    metrics: str


def _entrypoint() -> list[str]:
    text = (REPO / "collector/Dockerfile").read_text(encoding="utf-8")
    m = re.search(r"^ENTRYPOINT\s+(\[.*\])\s*$", text, re.M)
    assert m, "no exec-form ENTRYPOINT in collector/Dockerfile"
    argv = json.loads(m.group(1))
    assert isinstance(argv, list)
    return [str(a) for a in argv]


@pytest.fixture(scope="module")
def collector(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Collector]:
    exe = shutil.which("vauban-trace", path=str(Path(sys.executable).parent)) or shutil.which("vauban-trace")
    assert exe, "the vauban-trace console script is not installed"
    store = tmp_path_factory.mktemp("collector-store")
    argv = _entrypoint()
    argv[0] = exe
    for i, arg in enumerate(argv):
        if re.fullmatch(r"0\.0\.0\.0:\d+", arg):
            argv[i] = "127.0.0.1:0"
    argv[argv.index("--store") + 1] = str(store)
    argv += ["--quiet-period", "0.2s", "--sweep-profile-interval", "0.5s"]
    proc = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    found: dict[str, str] = {}
    lines: list[str] = []
    assert proc.stdout is not None
    try:
        while len(found) < 3:
            line = proc.stdout.readline()
            if not line:
                pytest.fail("collector exited early:\n" + "".join(lines))
            lines.append(line)
            m = re.search(r"(otlp-http|otlp-grpc|metrics) listening on (?:http://)?([\d.]+:\d+)", line)
            if m:
                found[m.group(1)] = m.group(2)
        yield Collector(http=found["otlp-http"], grpc=found["otlp-grpc"], metrics=found["metrics"])
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=15)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout=5)


@pytest.fixture(scope="module")
def prometheus(
    prometheus_server: str, collector: Collector, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[str]:
    work = tmp_path_factory.mktemp("prometheus")
    config = work / "prometheus.yml"
    config.write_text(
        "global: {scrape_interval: 1s, evaluation_interval: 1s}\n"
        "scrape_configs:\n"
        "  - job_name: vauban-collector\n"
        "    metrics_path: /metrics\n"
        f"    static_configs: [{{targets: ['{collector.metrics}']}}]\n",
        encoding="utf-8",
    )
    port = _free_port()
    proc = subprocess.Popen(
        [
            prometheus_server,
            f"--config.file={config}",
            f"--storage.tsdb.path={work / 'data'}",
            f"--web.listen-address=127.0.0.1:{port}",
        ],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
    )
    base = f"http://127.0.0.1:{port}"
    try:

        def ready() -> bool:
            if proc.poll() is not None:
                pytest.fail(f"prometheus exited: {proc.stderr.read() if proc.stderr else ''}")
            try:
                return _query(base, 'up{job="vauban-collector"}') == [1.0]
            except OSError:
                return False

        _wait("prometheus to scrape the collector", ready)
        yield base
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=15)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout=5)


def _query_raw(base: str, expr: str) -> list[dict[str, Any]]:
    url = f"{base}/api/v1/query?" + urllib.parse.urlencode({"query": expr})
    body = json.loads(_get(url))
    assert body["status"] == "success", body
    result = body["data"]["result"]
    assert isinstance(result, list)
    return result


def _query(base: str, expr: str) -> list[float]:
    return [float(r["value"][1]) for r in _query_raw(base, expr)]


def _send_wave(collector: Collector, wave: int) -> None:
    from opentelemetry.exporter.otlp.proto.grpc.trace_exporter import OTLPSpanExporter as GrpcExporter
    from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter as HttpExporter
    from opentelemetry.sdk.resources import Resource
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.sdk.trace.export import SimpleSpanProcessor
    from opentelemetry.trace import set_span_in_context

    from vauban_trace import semconv

    for index, tokens in enumerate(SWEEP):
        exporter: Any
        if (index + wave) % 2:
            exporter = GrpcExporter(endpoint=collector.grpc, insecure=True)
        else:
            exporter = HttpExporter(endpoint=f"http://{collector.http}/v1/traces")
        provider = TracerProvider(resource=Resource.create({semconv.SERVICE_NAME: "deploy-test"}))
        provider.add_span_processor(SimpleSpanProcessor(exporter))
        tracer = provider.get_tracer("tests.deploy")
        t0 = time.time_ns()
        prefill_ns = int(tokens * STAGE_SECONDS_PER_TOKEN * 1e9)
        root = tracer.start_span(
            f"text_completion {MODEL}",
            start_time=t0,
            attributes={
                semconv.TRACE_ROOT: True,
                semconv.GEN_AI_OPERATION_NAME: "text_completion",
                semconv.GEN_AI_REQUEST_MODEL: MODEL,
                semconv.SWEEP_AXIS: "token_count",
                semconv.SWEEP_AXIS_VALUE: tokens,
            },
        )
        ctx = set_span_in_context(root)
        stage = tracer.start_span(
            "prefill",
            context=ctx,
            start_time=t0 + 1000,
            attributes={
                semconv.STAGE: "prefill",
                semconv.usl("token_count"): tokens,
                semconv.usl_provenance("token_count"): "measured",
                semconv.usl("input_bytes"): tokens * 4,
                semconv.usl_provenance("input_bytes"): "derived",
                semconv.usl("output_bytes"): tokens * 2048,
                semconv.usl_provenance("output_bytes"): "derived",
                semconv.usl("sync_points"): 2,
                semconv.usl_provenance("sync_points"): "measured",
            },
        )
        stage.end(end_time=t0 + 1000 + prefill_ns)
        root.end(end_time=t0 + 2000 + prefill_ns)
        provider.shutdown()


def _send_usl_sweep(collector: Collector) -> None:
    from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter
    from opentelemetry.sdk.resources import Resource
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.sdk.trace.export import SimpleSpanProcessor
    from opentelemetry.trace import set_span_in_context

    from vauban_trace import semconv

    provider = TracerProvider(resource=Resource.create({semconv.SERVICE_NAME: "deploy-test"}))
    provider.add_span_processor(SimpleSpanProcessor(OTLPSpanExporter(endpoint=f"http://{collector.http}/v1/traces")))
    tracer = provider.get_tracer("tests.deploy")
    for n, noise in ((n, x) for n, xs in zip(USL_VALUES, USL_NOISE, strict=True) for x in xs):
        t0 = time.time_ns()
        prefill_ns = int((1 + 0.05 * (n - 1) + 0.01 * n * (n - 1)) / 1000.0 * noise * 1e9)
        root = tracer.start_span(
            f"text_completion {MODEL}",
            start_time=t0,
            attributes={
                semconv.TRACE_ROOT: True,
                semconv.GEN_AI_OPERATION_NAME: "text_completion",
                semconv.GEN_AI_REQUEST_MODEL: MODEL,
                semconv.SWEEP_ID: USL_SWEEP_ID,
                semconv.SWEEP_AXIS: "batch_size",
                semconv.SWEEP_AXIS_VALUE: n,
            },
        )
        stage = tracer.start_span(
            "prefill", context=set_span_in_context(root), start_time=t0 + 1000, attributes={semconv.STAGE: "prefill"}
        )
        stage.end(end_time=t0 + 1000 + prefill_ns)
        root.end(end_time=t0 + 2000 + prefill_ns)
    provider.shutdown()


def _open_loop_requests(t0: int) -> Iterator[tuple[int, dict[str, Any], int, int, int]]:
    """(rate, metadata, start, queue end, end) of constant arrivals over a 1 s window, one FIFO server."""
    for rate in OPEN_RATES:
        w0 = t0 + 10**10 * rate
        free = w0
        for seq in range(rate):
            scheduled = w0 + seq * (10**9 // rate)
            sent = scheduled + 50_000
            begin = max(sent, free)
            free = begin + SERVICE_NS
            labels = {"run": 0, "seq": seq, "scheduled_unix_nano": scheduled, "window_start_unix_nano": w0,
                      "window_end_unix_nano": w0 + 10**9, "dropped": 0}
            yield rate, {"open_loop": labels}, sent, begin + 1000, free


def _x_closed(n: int) -> float:
    return 100.0 * n / (1 + 0.08 * (n - 1) + 0.004 * n * (n - 1))


def _closed_loop_requests(t0: int) -> Iterator[tuple[int, dict[str, Any], int, int, int]]:
    """(N, metadata, start, queue end, end): N clients back to back, response N / X(N)."""
    for n in CLOSED_VALUES:
        r_ns = int(n / _x_closed(n) * 1e9)
        for c in range(n):
            for i in range(3):
                start = t0 + 10**11 + 10**10 * n + c * 1000 + i * r_ns
                yield n, {"closed_loop": {"run": 0, "client": c, "seq": i}}, start, start + r_ns // 2, start + r_ns


def _send_load_sweeps(collector: Collector) -> int:
    from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter
    from opentelemetry.sdk.resources import Resource
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.sdk.trace.export import BatchSpanProcessor
    from opentelemetry.trace import set_span_in_context

    from vauban_trace import semconv

    provider = TracerProvider(resource=Resource.create({semconv.SERVICE_NAME: "deploy-test"}))
    provider.add_span_processor(BatchSpanProcessor(OTLPSpanExporter(endpoint=f"http://{collector.http}/v1/traces")))
    tracer = provider.get_tracer("tests.deploy")
    t0 = time.time_ns() - 10**12
    sent = 0
    for sweep_id, axis, requests in ((OPEN_SWEEP_ID, "arrival_rate", _open_loop_requests(t0)),
                                     (CLOSED_SWEEP_ID, "concurrency", _closed_loop_requests(t0))):
        for value, metadata, start, queued, end in requests:
            root = tracer.start_span(f"text_completion {MODEL}", start_time=start, attributes={
                semconv.TRACE_ROOT: True, semconv.GEN_AI_OPERATION_NAME: "text_completion",
                semconv.GEN_AI_REQUEST_MODEL: MODEL, semconv.SWEEP_ID: sweep_id, semconv.SWEEP_AXIS: axis,
                semconv.SWEEP_AXIS_VALUE: value, semconv.TRACE_METADATA: json.dumps(metadata)})
            queue = tracer.start_span("queue", context=set_span_in_context(root), start_time=start,
                                      attributes={semconv.STAGE: "queue"})
            queue.end(end_time=queued)
            root.end(end_time=end)
            sent += 1
    provider.shutdown()  # flushes the batch processor
    return sent


def _post_bad_span(collector: Collector) -> None:
    body = {
        "resourceSpans": [
            {
                "resource": {"attributes": []},
                "scopeSpans": [
                    {
                        "spans": [
                            {
                                "traceId": "0" * 32,
                                "spanId": "00000000000000a1",
                                "name": "bad",
                                "startTimeUnixNano": "1",
                                "endTimeUnixNano": "2",
                            }
                        ]
                    }
                ],
            }
        ]
    }
    request = urllib.request.Request(
        f"http://{collector.http}/v1/traces",
        data=json.dumps(body).encode(),
        headers={"Content-Type": "application/json"},
        method="POST",
    )
    try:
        with urllib.request.urlopen(request, timeout=5) as resp:
            resp.read()
    except urllib.error.HTTPError as exc:  # 400 for a wholly invalid request is fine too
        exc.read()


def _resend_duplicate(collector: Collector) -> None:
    """Export one span twice with the same ids (what a client retry does)."""
    from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter
    from opentelemetry.sdk.trace import TracerProvider

    provider = TracerProvider()
    span = provider.get_tracer("tests.deploy").start_span("retried")
    span.end()
    exporter = OTLPSpanExporter(endpoint=f"http://{collector.http}/v1/traces")
    exporter.export([span])  # type: ignore[list-item]
    exporter.export([span])  # type: ignore[list-item]
    exporter.shutdown()  # type: ignore[no-untyped-call]


def _stage_count(collector: Collector) -> float:
    text = _get(f"http://{collector.metrics}/metrics")
    total = 0.0
    for line in text.splitlines():
        if line.startswith("vauban_stage_duration_seconds_count{"):
            total += float(line.rsplit(" ", 1)[1])
    return total


def _scraped_count(base: str) -> float:
    values = _query(base, "sum(vauban_stage_duration_seconds_count)")
    return values[0] if values else 0.0


@pytest.fixture(scope="module")
def loaded(collector: Collector, prometheus: str) -> str:
    for wave in (0, 1):
        _send_wave(collector, wave)
        expected = float(len(SWEEP) * (wave + 1))

        def rebuilt(n: float = expected) -> bool:
            return _stage_count(collector) >= n

        def scraped(n: float = expected) -> bool:
            return _scraped_count(prometheus) >= n

        _wait(f"wave {wave} rebuilt by the collector", rebuilt)
        _wait(f"wave {wave} scraped", scraped)
    _send_usl_sweep(collector)
    _wait(
        "the USL sweep's fit scraped",
        lambda: bool(_query(prometheus, f'vauban_sweep_usl_peak{{sweep_id="{USL_SWEEP_ID}", stage="prefill"}}')),
    )
    _send_load_sweeps(collector)
    _wait(
        "the load sweeps' profiles scraped",
        lambda: bool(_query(prometheus, f'vauban_sweep_load_limit{{sweep_id="{OPEN_SWEEP_ID}"}}'))
        and bool(_query(prometheus, f'vauban_sweep_usl_predicted{{sweep_id="{CLOSED_SWEEP_ID}", stage="request"}}')),
        timeout=40.0,
    )
    _post_bad_span(collector)
    _resend_duplicate(collector)
    _wait(
        "rejections and duplicates scraped",
        lambda: (
            bool(_query(prometheus, "sum(vauban_collector_spans_rejected_total) > 0"))
            and bool(_query(prometheus, "sum(vauban_collector_spans_duplicated_total) > 0"))
        ),
    )
    time.sleep(2.5)  # two more scrapes so rate() windows see the final values
    return prometheus


def test_collector_exposes_every_fixed_metric_with_its_labels(collector: Collector, loaded: str) -> None:
    from prometheus_client.parser import text_string_to_metric_families

    samples: dict[str, set[frozenset[str]]] = {}
    for family in text_string_to_metric_families(_get(f"http://{collector.metrics}/metrics")):
        for sample in family.samples:
            samples.setdefault(sample.name, set()).add(frozenset(sample.labels))
    for metric in sorted(FIXED_METRICS):
        name = metric + "_bucket" if metric in HISTOGRAMS else metric
        assert name in samples, f"the collector does not expose {name}"
        expected = METRIC_LABELS[metric] | ({"le"} if metric in HISTOGRAMS else set())
        assert samples[name] == {frozenset(expected)}, f"{name} labels {samples[name]} != {sorted(expected)}"


def _dashboard_queries() -> Iterator[tuple[str, str, str]]:
    for name in ("vauban-collector.json", "vauban-load.json", "vauban-stages.json"):
        dash = json.loads((REPO / "grafana/dashboards" / name).read_text(encoding="utf-8"))
        for panel in dash["panels"]:
            for target in panel["targets"]:
                yield f"{name}: {panel['title']} [{target['refId']}]", panel["type"], target["expr"]


def _concrete(expr: str) -> str:
    expr = expr.replace("$__rate_interval", "10s").replace("$__range", "5m")
    expr = expr.replace('sweep_id="$sweep_id"', f'sweep_id="{USL_SWEEP_ID}"')
    expr = expr.replace('sweep_id="$open_sweep"', f'sweep_id="{OPEN_SWEEP_ID}"')
    expr = expr.replace('sweep_id="$closed_sweep"', f'sweep_id="{CLOSED_SWEEP_ID}"')
    expr = expr.replace('stage="$sweep_stage"', 'stage="prefill"')
    expr = expr.replace('stage="$stage"', 'stage="prefill"').replace(
        'sweep_axis="$sweep_axis"', 'sweep_axis="token_count"'
    )
    return re.sub(r'"\$[a-z_]+"', '".*"', expr)


def test_every_dashboard_query_returns_data(loaded: str) -> None:
    empty: list[str] = []
    for where, _, expr in _dashboard_queries():
        values = _query(loaded, _concrete(expr))
        if not values or all(math.isnan(v) for v in values):
            empty.append(f"{where}: {_concrete(expr)}")
    assert not empty, "queries without data:\n" + "\n".join(empty)


def test_sweep_xy_query_orders_durations_by_sweep_value(loaded: str) -> None:
    (expr,) = [e for _, kind, e in _dashboard_queries() if kind == "xychart" and "0.5," in e]
    rows = _query_raw(loaded, _concrete(expr))
    by_value = {int(r["metric"]["sweep_value"]): float(r["value"][1]) for r in rows}
    assert sorted(by_value) == list(SWEEP)
    medians = [by_value[v] for v in SWEEP]
    assert medians == sorted(medians) and len(set(medians)) == len(medians), by_value
    for tokens, median in by_value.items():
        true = tokens * STAGE_SECONDS_PER_TOKEN
        # histogram_quantile interpolates inside the bucket holding the observations
        assert true / 2.5 <= median <= true * 2.5, (tokens, median)


def _by_value(base: str, expr: str) -> dict[float, float]:
    return {float(r["metric"]["sweep_value"]): float(r["value"][1]) for r in _query_raw(base, _concrete(expr))}


def test_load_dashboard_shows_the_simulated_service(loaded: str) -> None:
    queries = {where.split(": ", 1)[1]: expr for where, _, expr in _dashboard_queries() if "vauban-load" in where}
    offered = _by_value(loaded, queries["Achieved vs offered throughput ($open_sweep) [A]"])
    achieved = _by_value(loaded, queries["Achieved vs offered throughput ($open_sweep) [B]"])
    assert sorted(offered) == [float(r) for r in OPEN_RATES]
    assert offered[20.0] == pytest.approx(20.0) and offered[200.0] == pytest.approx(200.0)
    assert achieved[20.0] == pytest.approx(20.0, rel=0.01)
    assert achieved[200.0] == pytest.approx(1e9 / SERVICE_NS, rel=0.01)  # the server's capacity
    verdicts = _query_raw(loaded, _concrete(queries["Verdicts per offered rate ($open_sweep) [A]"]))
    by_rate = {float(r["metric"]["sweep_value"]): r["metric"] for r in verdicts}
    assert by_rate[20.0]["verdict"] == "sustained" and by_rate[200.0]["verdict"] == "saturated"
    assert "achieved 100/s" in by_rate[200.0]["reason"]
    highest = _query(loaded, _concrete(queries["Highest offered rate sustained ($open_sweep) [A]"]))
    assert highest == [20.0]
    p99 = _by_value(loaded, queries["Response time vs offered rate ($open_sweep) [C]"])
    assert p99[20.0] == pytest.approx(SERVICE_NS / 1e9, rel=0.01) and p99[200.0] > 0.4  # the backlog
    measured = _by_value(loaded, queries["Request throughput X(N): measured vs USL ($closed_sweep) [A]"])
    fitted = _by_value(loaded, queries["Request throughput X(N): measured vs USL ($closed_sweep) [B]"])
    assert sorted(measured) == sorted(fitted) == [float(n) for n in CLOSED_VALUES]
    for n in CLOSED_VALUES:
        assert measured[float(n)] == pytest.approx(_x_closed(n), rel=0.05)
        assert fitted[float(n)] == pytest.approx(_x_closed(n), rel=0.05)


def test_stages_dashboard_fit_chart_shows_the_closed_loop_request_stage(loaded: str) -> None:
    """The USL panels follow the sweep's own stages: on the concurrency axis the fitted one is request."""
    title = "vauban-stages.json: $sweep_stage throughput: measured vs USL fit ($sweep_id)"
    panel_exprs = [e for where, _, e in _dashboard_queries() if where.startswith(title)]
    assert len(panel_exprs) == 2
    for expr in panel_exprs:
        concrete = _concrete(expr.replace('sweep_id="$sweep_id"', f'sweep_id="{CLOSED_SWEEP_ID}"')
                             .replace('stage="$sweep_stage"', 'stage="request"'))
        rows = {float(r["metric"]["sweep_value"]): float(r["value"][1]) for r in _query_raw(loaded, concrete)}
        assert sorted(rows) == [float(n) for n in CLOSED_VALUES], concrete
        for n in CLOSED_VALUES:
            assert rows[float(n)] == pytest.approx(_x_closed(n), rel=0.05)
    stages = _query_raw(loaded, f'vauban_sweep_fit_status{{sweep_id="{CLOSED_SWEEP_ID}"}}')
    by_stage = {r["metric"]["stage"]: r["metric"]["status"] for r in stages}
    assert by_stage == {"request": "fitted", "queue": "refused"}  # what the Sweep stage variable lists
