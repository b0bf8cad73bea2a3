"""The collector's metrics as a REAL Prometheus sees them (Debian's ``prometheus`` package).

The test installs Prometheus with apt-get when it is missing and the test runs as root; if it
still cannot be found, the test FAILS (it is not skipped): the dashboard depends on these names.
Prometheus runs on 127.0.0.1 with its own temporary TSDB and a 1 s scrape interval; the test
queries ``/api/v1/query`` with PromQL. Only the pid started here is stopped.
"""

from __future__ import annotations

import json
import subprocess
import time
import urllib.parse
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from collector_helpers import add_vauban_trace, free_port, post, trace_id_of
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest

from system_tools import require_tool


def _prometheus_binary() -> str:
    return require_tool("prometheus", "prometheus")


@pytest.fixture
def prometheus(tmp_path: Path) -> Iterator[Any]:
    binary = _prometheus_binary()
    procs: list[subprocess.Popen[bytes]] = []

    def start(target_port: int) -> str:
        port = free_port()
        config = tmp_path / "prometheus.yml"
        config.write_text(
            "global:\n  scrape_interval: 1s\n  evaluation_interval: 1s\n"
            "scrape_configs:\n  - job_name: vauban-collector\n    static_configs:\n"
            f"      - targets: ['127.0.0.1:{target_port}']\n"
        )
        log = open(tmp_path / "prometheus.log", "wb")  # noqa: SIM115 - closed with the process
        proc = subprocess.Popen(
            [binary, f"--config.file={config}", f"--storage.tsdb.path={tmp_path / 'tsdb'}",
             f"--web.listen-address=127.0.0.1:{port}"],
            stdout=log, stderr=subprocess.STDOUT,
        )
        procs.append(proc)
        url = f"http://127.0.0.1:{port}"
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            if proc.poll() is not None:
                raise AssertionError("prometheus exited:\n" + (tmp_path / "prometheus.log").read_text()[-2000:])
            try:
                urllib.request.urlopen(url + "/-/ready", timeout=1)
                return url
            except OSError:
                time.sleep(0.2)
        raise AssertionError("prometheus did not become ready")

    yield start
    for proc in procs:  # only the process started here, by its pid
        proc.terminate()
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def _query(url: str, promql: str) -> list[dict[str, Any]]:
    q = urllib.parse.urlencode({"query": promql})
    with urllib.request.urlopen(f"{url}/api/v1/query?{q}", timeout=5) as resp:
        doc = json.load(resp)
    assert doc["status"] == "success", doc
    return list(doc["data"]["result"])


def _value(url: str, promql: str, expected: float, timeout: float = 30.0) -> float:
    """Poll until the (single) series of ``promql`` equals ``expected`` (scrapes are 1 s apart)."""
    deadline = time.monotonic() + timeout
    last: Any = None
    while time.monotonic() < deadline:
        result = _query(url, promql)
        if len(result) == 1:
            last = float(result[0]["value"][1])
            if last == expected:
                return last
        else:
            last = result
        time.sleep(0.5)
    raise AssertionError(f"{promql}: expected {expected}, last saw {last}")


def test_metrics_through_a_real_prometheus(make_collector, prometheus):
    c = make_collector(metrics=("127.0.0.1", 0), quiet_period_s=0.05)
    url = prometheus(c.metrics_address[1])
    req = ExportTraceServiceRequest()
    for n in range(3):  # measured sync points, sweep over token_count = 128
        add_vauban_trace(req, trace_id_of(n, 70), stages=5, model="m1", sweep=("token_count", 128))
    add_vauban_trace(req, trace_id_of(9, 70), stages=5, model="m2", sweep=None, sync_points=False)
    assert post(c.http_address, req.SerializeToString())[0] == 200
    assert post(c.http_address, req.SerializeToString())[0] == 200  # a duplicate delivery
    bad = ExportTraceServiceRequest()
    bad.resource_spans.add().scope_spans.add().spans.add(trace_id=b"\x01" * 4, span_id=b"\x02" * 8, name="bad")
    post(c.http_address, bad.SerializeToString())

    _value(url, 'vauban_collector_traces_rebuilt_total{state="complete"}', 4)
    _value(url, 'vauban_collector_spans_received_total{transport="http"}', 2 * 24 + 1)
    _value(url, "vauban_collector_spans_duplicated_total", 24)
    _value(url, 'vauban_collector_spans_rejected_total{reason="invalid_id"}', 1)
    _value(url, 'vauban_collector_requests_total{transport="http",code="200"}', 3)
    _value(url, "vauban_collector_pending_traces", 0)
    _value(url, "vauban_collector_queue_depth", 0)
    _value(url, "vauban_collector_store_write_seconds_count", 2)
    m1 = 'stage="prefill",model="m1",sweep_axis="token_count",sweep_value="128"'
    _value(url, f"vauban_stage_duration_seconds_count{{{m1}}}", 3)
    # each prefill span lasts 0.9 ms: the median falls in the (0.0005, 0.001] bucket
    q = _query(url, f"histogram_quantile(0.5, sum by (le) (vauban_stage_duration_seconds_bucket{{{m1}}}))")
    assert len(q) == 1 and 0.0005 < float(q[0]["value"][1]) <= 0.001
    _value(url, f'vauban_stage_bytes_sum{{{m1},direction="in"}}', 3 * 2 * 4096)
    _value(url, f'vauban_stage_bytes_sum{{{m1},direction="out"}}', 3 * 2 * 8192)
    _value(url, f"vauban_stage_sync_points_sum{{{m1}}}", 3 * 2)
    # the m2 trace has no sweep and its sync points are 'unavailable': durations yes, sync points never
    _value(url, 'vauban_stage_duration_seconds_count{stage="prefill",model="m2",sweep_axis="",sweep_value=""}', 1)
    assert _query(url, 'vauban_stage_sync_points_count{model="m2"}') == []
    assert {r["metric"]["stage"] for r in _query(url, 'vauban_stage_duration_seconds_count{model="m1"}')} == \
        {"tokenize", "prefill", "forward", "decode", "emit"}
