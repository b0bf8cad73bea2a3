"""``vauban-trace store verify|stats|compact|rebuild`` through the real dispatcher, on stores filled
through the real ingest path, and beside a running collector (a subprocess fed by the OTLP/HTTP
exporter)."""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
from opentelemetry.exporter.otlp.proto.common.trace_encoder import encode_spans
from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter
from opentelemetry.proto.trace.v1.trace_pb2 import TracesData
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import set_span_in_context

from vauban_trace import semconv as sc
from vauban_trace.cli import main
from vauban_trace.contract import Trace
from vauban_trace.rebuild import rebuild_traces
from vauban_trace.store import TraceStore


def _requests(n: int, *, late: bool = False) -> list[TracesData]:
    """``n`` traces as the SDK exports them: root + stage child (+ a child ending after the root)."""
    exporter = InMemorySpanExporter()
    provider = TracerProvider(resource=Resource.create({sc.SERVICE_NAME: "cli-store"}))
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    tracer = provider.get_tracer("cli-store-tests")
    for i in range(n):
        with tracer.start_as_current_span(f"request {i}") as root:
            root.set_attribute(sc.TRACE_ROOT, True)
            with tracer.start_as_current_span("tokenize") as st:
                st.set_attributes({sc.STAGE: "tokenize", sc.usl("token_count"): 4 + i})
            if late:
                tracer.start_span("late", context=set_span_in_context(root)).end()
    provider.shutdown()
    out = []
    for span in exporter.get_finished_spans():
        td = TracesData()
        td.resource_spans.extend(encode_spans([span]).resource_spans)
        out.append(td)
    return out


def _fill(directory: Path, n: int, *, late: bool = False) -> dict[str, Trace]:
    """Ingest ``n`` traces (real ingest path) and rebuild them as the collector's assembler does."""
    ts = TraceStore(directory, trace_files="on_read")
    for td in _requests(n, late=late):
        ts.add_spans(td)
    out = {}
    for p in ts.pending_traces():
        (trace,) = rebuild_traces(ts.spans_for(p.trace_id))
        ts.put_trace(trace, version=p.version)
        out[p.trace_id] = trace
    ts.close()
    return out


def _run(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str, str]:
    try:
        code = main(["store", *argv])
    except SystemExit as exc:  # argparse's own errors (one line, exit 2 via the CLI's parser)
        code = int(exc.code or 0)
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def test_verify_stats_and_repair(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    store = str(tmp_path / "s")
    traces = _fill(tmp_path / "s", 3)
    code, out, _err = _run(capsys, "verify", "--store", store)
    assert code == 0 and "texts: 3 checked, 0 broken" in out and "span batches: 6 checked (6 spans)" in out
    assert out.rstrip().endswith("verify: OK")
    code, out, _err = _run(capsys, "stats", "--store", store)
    assert code == 0 and "(schema 5)" in out and "traces: 3 (3 rebuilt: 3 complete, 0 incomplete; 0 pending)" in out
    assert "raw spans: 6 in 6 span batch(es)" in out and re.search(r"seg-000001\.jsonl .* live +(99\.\d|100\.0)%", out)
    code, out, _err = _run(capsys, "stats", "--store", store, "--json")
    stats = json.loads(out)
    assert code == 0 and stats["raw_spans"] == 6 and stats["segments"][0]["file_bytes"] == stats["segment_bytes"]

    ts = TraceStore(store)  # tear one text inside the file's length
    victim = sorted(traces)[0]
    seg, off, length = ts._conn().execute(
        "SELECT doc_segment, doc_offset, doc_length FROM traces WHERE trace_id = ?", (victim,)).fetchone()
    ts.close()
    path = tmp_path / "s" / "documents" / f"seg-{seg:06d}.jsonl"
    data = bytearray(path.read_bytes())
    data[off + length // 2] ^= 0x01
    path.write_bytes(bytes(data))
    code, out, _err = _run(capsys, "verify", "--store", store)
    assert code == 1 and f"text  trace {victim}: the text of {length} bytes" in out and "fails its digest" in out
    assert "verify: FAILED (1 problem(s), 0 repaired); --repair sends broken traces back to pending" in out
    code, out, _err = _run(capsys, "verify", "--store", store, "--repair", "--json")
    report = json.loads(out)
    assert code == 1 and report["repaired"] == 1 and report["problems"][0]["repaired"] and not report["ok"]
    code, out, _err = _run(capsys, "stats", "--store", store)
    assert "(2 rebuilt: 2 complete, 0 incomplete; 1 pending)" in out
    assert _run(capsys, "verify", "--store", store)[0] == 0
    code, out, _err = _run(capsys, "rebuild", "--store", store, victim)  # the collector would do it too
    assert code == 0 and "rebuilt 1 trace(s): 1 changed, 0 unchanged" in out
    ts = TraceStore(store)
    assert ts.get_trace(victim) == traces[victim] and ts.pending_traces() == []
    ts.close()


def test_span_segments_in_stats_verify_and_compact(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    store = tmp_path / "s"
    traces = _fill(store, 2)
    code, out, _err = _run(capsys, "stats", "--store", str(store))
    assert code == 0 and re.search(r"span segments: 1, .* live .*\(100%\)", out)
    assert re.search(r"spans/seg-000001\.spans .* live +100\.0%", out)
    code, out, _err = _run(capsys, "compact", "--store", str(store), "--json")
    result = json.loads(out)
    assert code == 0 and result["span_segments_before"] == result["span_segments_after"] == 1
    assert result["span_segments_removed"] == 0  # fully live
    victim = sorted(traces)[0]
    with TraceStore(store) as ts:
        seg, off, length = ts._conn().execute(
            "SELECT seg, off, len FROM span_batches WHERE trace_id = ? ORDER BY id LIMIT 1", (victim,)).fetchone()
    path = store / "spans" / f"seg-{seg:06d}.spans"
    data = bytearray(path.read_bytes())
    data[off + length - 1] ^= 0x01
    path.write_bytes(bytes(data))
    code, out, _err = _run(capsys, "verify", "--store", str(store), "--repair")
    assert code == 1 and "span_batch  span batch" in out and f"(trace {victim})" in out
    assert f"spans/seg-{seg:06d}.spans" in out and "fails its digest" in out and "[not repaired]" in out
    assert "span batches: " in out and "1 damaged or undecodable" in out


def test_compact_reports_bytes_and_segments_removed(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    store = tmp_path / "s"
    first = _fill(store, 4)
    ts = TraceStore(store)  # a second writer rebuilds every trace: segment 1 holds only dead texts
    for tid in first:
        ts.put_trace(first[tid])
    ts.close()
    code, out, _err = _run(capsys, "compact", "--store", str(store), "--json")
    result = json.loads(out)
    assert code == 0 and result["segments_removed"] == 1 and result["segments_before"] == 2
    assert result["segments_after"] == 1 and result["bytes_after"] < result["bytes_before"]
    assert not (store / "documents" / "seg-000001.jsonl").exists()
    code, out, _err = _run(capsys, "compact", "--store", str(store), "--threshold", "0.5")
    assert code == 0 and "segments: 1 -> 1 (0 removed)" in out and "segment bytes: " in out
    assert _run(capsys, "verify", "--store", str(store))[0] == 0
    ts = TraceStore(store)
    assert all(ts.get_trace(t) == tr for t, tr in first.items())
    ts.close()


def test_rebuild_all_rewrites_what_changed(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    store = tmp_path / "s"
    traces = _fill(store, 3)
    stale_id = sorted(traces)[1]
    ts = TraceStore(store)  # what an older vauban-trace's rebuild stored
    ts.put_trace(Trace.from_dict({**traces[stale_id].to_dict(), "problems": ["older rebuild"]}))
    ts.close()
    code, out, _err = _run(capsys, "rebuild", "--store", str(store), "--all")
    assert code == 0 and out.splitlines() == ["rebuilt 3 trace(s): 1 changed, 2 unchanged"]
    code, out, _err = _run(capsys, "rebuild", "--store", str(store), "--all", "--pending", "--json")
    assert code == 0 and json.loads(out)["changed"] == 0
    ts = TraceStore(store)
    assert ts.get_trace(stale_id) == traces[stale_id]
    ts.close()


@pytest.mark.parametrize(("argv", "message"), [
    ([], "store: give a subcommand: verify, stats, compact, rebuild"),
    (["verify", "--store", "{missing}"], "no trace store in"),
    (["rebuild", "--store", "{store}"], "give TRACE_IDs or --all (not both)"),
    (["rebuild", "--store", "{store}", "--all", "0" * 31 + "1"], "give TRACE_IDs or --all (not both)"),
    (["rebuild", "--store", "{store}", "--pending", "0" * 31 + "1"], "--pending goes with --all"),
    (["rebuild", "--store", "{store}", "f" * 32], "no trace " + "f" * 32),
    (["rebuild", "--store", "{store}", "xyz"], "xyz"),
    (["compact", "--store", "{store}", "--threshold", "1.5"], "must be in (0, 1], got 1.5"),
    (["verify", "--store", "{store}", "--max-problems", "0"], "must be at least 1"),
    (["frobnicate"], "invalid choice"),
])
def test_usage_errors_are_one_line_exit_2(tmp_path: Path, capsys: pytest.CaptureFixture[str], argv: list[str],
                                          message: str) -> None:
    _fill(tmp_path / "s", 1)
    argv = [a.format(store=tmp_path / "s", missing=tmp_path / "nope") for a in argv]
    code, out, err = _run(capsys, *argv)
    assert code == 2 and out == "" and message in err and len(err.strip().splitlines()) == 1, err
    assert not (tmp_path / "nope").exists()  # never creates a store


def _collector(store: Path) -> tuple[subprocess.Popen[str], str]:
    proc = subprocess.Popen(
        [sys.executable, "-c", "from vauban_trace.cli import main; raise SystemExit(main())", "collector",
         "--store", str(store), "--http", "127.0.0.1:0", "--grpc", "off", "--metrics", "off",
         "--quiet-period", "100ms", "--incomplete-after", "300ms"],
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    assert proc.stdout is not None
    url = ""
    for line in proc.stdout:
        m = re.search(r"(http://\S+/v1/traces)", line)
        url = m.group(1) if m else url
        if " store " in line:
            return proc, url
    raise AssertionError(f"collector did not start (exit {proc.wait()})")


def test_every_command_is_safe_beside_a_running_collector(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    store = tmp_path / "s"
    _fill(store, 2)  # a sealed segment: `compact --threshold 1.0` moves it (live share < 1: the newlines)
    ts = TraceStore(store)
    for td in _requests(2):  # pending traces the collector finds at its start
        ts.add_spans(td)
    ts.close()
    proc, url = _collector(store)
    stop = threading.Event()
    sent: list[int] = []

    def produce() -> None:  # traces whose last span ends after the root: each is rebuilt twice
        provider = TracerProvider(resource=Resource.create({sc.SERVICE_NAME: "beside"}))
        provider.add_span_processor(SimpleSpanProcessor(OTLPSpanExporter(endpoint=url, timeout=10)))
        tracer = provider.get_tracer("beside")
        while not stop.is_set():
            root = tracer.start_span("request")
            root.set_attribute(sc.TRACE_ROOT, True)
            child = tracer.start_span("decode", context=set_span_in_context(root))
            child.set_attribute(sc.STAGE, "decode")
            root.end()
            time.sleep(0.12)
            child.end()
            sent.append(1)
        provider.shutdown()

    producer = threading.Thread(target=produce)
    producer.start()
    try:
        deadline = time.monotonic() + 4.0
        rounds = 0
        while time.monotonic() < deadline or rounds < 2:
            for argv in (["verify"], ["stats"], ["compact", "--threshold", "1.0"], ["rebuild", "--all"]):
                code, out, err = _run(capsys, *argv, "--store", str(store))
                assert code == 0, (argv, out, err)
            rounds += 1
    finally:
        stop.set()
        producer.join(30)
        proc.send_signal(signal.SIGTERM)
        rest = proc.communicate(timeout=30)[0]
    assert proc.returncode == 0, rest
    assert len(sent) >= 5 and rounds >= 2  # about 30 traces and 100 rounds on the 2-core dev box
    code, out, _err = _run(capsys, "verify", "--store", str(store), "--json")
    report = json.loads(out)
    assert code == 0 and report["ok"] and report["texts_checked"] >= len(sent)
    stats = json.loads(_run(capsys, "stats", "--store", str(store), "--json")[1])
    assert stats["pending"] == 0 and stats["rebuilt"] == stats["traces"] == len(sent) + 4
    assert os.listdir(store / "documents")
