"""The OTLP/HTTP receiver's request head and body handling: header fields read as the stdlib reads
them, keep-alive rules, ``Expect: 100-continue``, pooled body buffers, group commit."""

from __future__ import annotations

import io
import socket
import threading
import time
from http.client import _read_headers, parse_headers  # type: ignore[attr-defined]

import pytest
from collector_helpers import span_count, vauban_request
from hypothesis import given, settings
from hypothesis import strategies as st

from vauban_trace.collector._httpwire import parse_fields
from vauban_trace.collector._ingest import Ingestor
from vauban_trace.collector._metrics import CollectorMetrics

PB = "application/x-protobuf"


def _stdlib_fields(lines: list[bytes]) -> dict[str, str]:
    message = parse_headers(io.BytesIO(b"".join(lines)))
    return {name.lower(): str(message.get(name)) for name in message.keys()}


_line_text = st.lists(st.sampled_from(list("Ab-:; \t\r\x00\xe9/=") + ["From ", "Content-Type", "\r\n"]),
                      max_size=12).map("".join)


@settings(max_examples=400, deadline=None)
@given(st.lists(_line_text, max_size=8), st.sampled_from(["\r\n", "\n", ""]))
def test_header_fields_match_the_stdlib_parser(texts, end):
    block = ("".join(t + "\r\n" for t in texts) + end).encode("iso-8859-1")
    lines = _read_headers(io.BytesIO(block))  # the lines as the receiver reads them
    assert parse_fields(lines) == _stdlib_fields(lines)


def test_plain_and_unusual_header_blocks():
    assert parse_fields([b"Content-Type: application/json \r\n", b"content-type: x\r\n", b"\r\n"]) == {
        "content-type": "application/json "}
    folded = [b"Content-Type:\r\n", b" application/x-protobuf\r\n", b"\r\n"]
    assert parse_fields(folded) == _stdlib_fields(folded)
    stray = [b"Content-Length: 2\r\n", b"no colon here\r\n", b"Content-Type: application/json\r\n", b"\r\n"]
    assert parse_fields(stray) == {"content-length": "2"}  # the email parser ends the block there


def _exchange(address: tuple[str, int], raw: bytes, *, shut: bool = True) -> bytes:
    with socket.create_connection(address, timeout=10) as s:
        s.sendall(raw)
        if shut:
            s.shutdown(socket.SHUT_WR)
        reply = b""
        while chunk := s.recv(65536):
            reply += chunk
    return reply


def _head(data: bytes, path: str = "/v1/traces", version: str = "HTTP/1.1", extra: str = "",
          ctype: str = PB) -> bytes:
    return (f"POST {path} {version}\r\nHost: x\r\nContent-Type: {ctype}\r\nContent-Length: {len(data)}\r\n"
            f"{extra}\r\n").encode() + data


def test_request_line_and_keep_alive_rules(make_collector):
    c = make_collector(grpc=None)
    req, tids = vauban_request(1, salt=60)
    data = req.SerializeToString()
    # HTTP/1.0 without keep-alive: answered, then closed by the server
    reply = _exchange(c.http_address, _head(data, version="HTTP/1.0"), shut=False)
    assert reply.startswith(b"HTTP/1.1 200 ") and b"Connection: close\r\n" in reply
    # two requests on one HTTP/1.1 connection, header names in any case
    second, _ = vauban_request(1, salt=61)
    raw = _head(data).replace(b"Content-Type", b"content-TYPE") + _head(second.SerializeToString(),
                                                                           extra="Connection: close\r\n")
    replies = _exchange(c.http_address, raw, shut=False)
    assert replies.count(b"HTTP/1.1 200 OK\r\n") == 2
    assert _exchange(c.http_address, _head(data, version="HTTP/2.0")).startswith(b"HTTP/1.1 505 ")
    assert _exchange(c.http_address, _head(data, version="HTTP/1.x")).startswith(b"HTTP/1.1 400 ")
    assert _exchange(c.http_address, b"POST /v1/traces\r\n\r\n").startswith(b"HTTP/1.1 400 ")
    # digits str.isdigit() accepts but int() does not (superscripts, in the ISO-8859-1 reading)
    for version in (b"HTTP/1.\xb2", b"HTTP/\xb9.1"):
        assert _exchange(c.http_address, b"POST /v1/traces " + version + b"\r\n\r\n").startswith(b"HTTP/1.1 400 ")
    assert span_count(req) == sum(len(c.store.spans_for(t).resource_spans[0].scope_spans[0].spans) for t in tids)


def test_content_length_is_digits_and_one_length(make_collector):
    """RFC 9110 8.6 / RFC 9112 6.3: a Content-Length that is not 1*DIGIT, or several that differ,
    is a 400 and the connection closes (behind a proxy a lenient reading lets requests be smuggled);
    the same length repeated is one length."""
    c = make_collector(grpc=None)
    req, _ = vauban_request(1, salt=63)
    data = req.SerializeToString()
    n = len(data)
    for lengths in ([f"+{n}"], [f"{n // 10}_{n % 10}"], ["1\u00b2"], [str(n), str(n + 1)], [str(n), f" {n - 1}"]):
        head = f"POST /v1/traces HTTP/1.1\r\nHost: x\r\nContent-Type: {PB}\r\n" + "".join(
            f"Content-Length: {v}\r\n" for v in lengths) + "\r\n"
        reply = _exchange(c.http_address, head.encode("latin-1") + data)
        assert reply.startswith(b"HTTP/1.1 400 "), (lengths, reply[:80])
        assert b"Content-Length" in reply
    head = f"POST /v1/traces HTTP/1.1\r\nHost: x\r\nContent-Type: {PB}\r\nContent-Length: {n}\r\n" \
           f"Content-Length: {n}\r\nConnection: close\r\n\r\n"
    assert _exchange(c.http_address, head.encode() + data).startswith(b"HTTP/1.1 200 ")


def test_expect_100_continue_and_first_field_wins(make_collector):
    c = make_collector(grpc=None)
    req, _ = vauban_request(1, salt=62)
    data = req.SerializeToString()
    head = (f"POST /v1/traces HTTP/1.1\r\nHost: x\r\nContent-Type: {PB}\r\nContent-Type: text/plain\r\n"
            f"Content-Length: {len(data)}\r\nExpect: 100-continue\r\nConnection: close\r\n\r\n").encode()
    with socket.create_connection(c.http_address, timeout=10) as s:
        s.sendall(head)
        assert s.recv(64).startswith(b"HTTP/1.1 100 Continue\r\n")
        s.sendall(data)
        reply = b""
        while chunk := s.recv(65536):
            reply += chunk
    assert reply.startswith(b"HTTP/1.1 200 OK\r\n"), reply[:80]
    # a folded Content-Type is read as the stdlib reads it (the value continues on the next line)
    folded = _head(data, ctype="\r\n application/x-protobuf", extra="Connection: close\r\n")
    assert _exchange(c.http_address, folded).startswith(b"HTTP/1.1 200 ")


def test_pooled_body_buffers_never_mix_requests(make_collector):
    """Bodies of different sizes on one connection and from parallel clients, each stored whole:
    a reused buffer holds the previous body's bytes past the new Content-Length."""
    c = make_collector(grpc=None)
    requests = [vauban_request(n, salt=70 + n) for n in (6, 1, 3, 1, 6)]
    raw = b"".join(_head(r.SerializeToString()) for r, _ in requests[:-1])
    raw += _head(requests[-1][0].SerializeToString(), extra="Connection: close\r\n")
    assert _exchange(c.http_address, raw, shut=False).count(b"HTTP/1.1 200 OK\r\n") == len(requests)

    errors: list[BaseException] = []

    def client(k: int) -> None:
        try:
            for j in range(4):
                r, _ = vauban_request(1 + (k + j) % 4, salt=100 + 10 * k + j)
                reply = _exchange(c.http_address, _head(r.SerializeToString(), extra="Connection: close\r\n"),
                                  shut=False)
                assert reply.startswith(b"HTTP/1.1 200 "), reply[:80]
        except BaseException as exc:  # noqa: BLE001 - reported below
            errors.append(exc)

    threads = [threading.Thread(target=client, args=(k,)) for k in range(6)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors
    requests += [vauban_request(1 + (k + j) % 4, salt=100 + 10 * k + j) for k in range(6) for j in range(4)]
    for r, tids in requests:
        for tid, rs in zip(tids, r.resource_spans, strict=True):
            got = c.store.spans_for(tid).resource_spans[0].scope_spans[0].spans
            assert sorted(sp.SerializeToString() for sp in got) == sorted(
                sp.SerializeToString() for sp in rs.scope_spans[0].spans)


class _SlowStore:
    """Records the parts of each write and takes a while per write, so jobs queue meanwhile."""

    def __init__(self) -> None:
        self.groups: list[int] = []

    def ingest_parts(self, parts: list[object], *, snapshots: bool = False) -> object:
        from vauban_trace.store import IngestResult

        self.groups.append(len(parts))
        time.sleep(0.05)
        return IngestResult(snapshots={}, accepted=0, duplicates=0, rejected=0, problems=(), trace_ids=())


def test_writes_queued_during_a_write_commit_together():
    store = _SlowStore()
    ingestor = Ingestor(store, CollectorMetrics())  # type: ignore[arg-type]
    try:
        threads = [threading.Thread(target=ingestor.ingest, args=(vauban_request(1, salt=200 + i)[0], "http"))
                   for i in range(8)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
    finally:
        ingestor.close()
    assert sum(store.groups) == 8
    assert len(store.groups) < 8  # at least one group commit of several requests
    ingestor = Ingestor(store, CollectorMetrics())  # type: ignore[arg-type]
    ingestor.close()  # closing an idle writer returns


def test_idle_and_stalled_connections_are_closed_after_the_socket_timeout(make_collector):
    """An idle keep-alive connection, and one stalled inside its request head, are closed after
    the socket timeout without a reply (plaintext sockets use kernel timeouts on Linux)."""
    c = make_collector(grpc=None, socket_timeout_s=0.3)
    for sent in (b"", b"POST /v1/traces HTTP/1.1\r\nContent-Le"):
        with socket.create_connection(c.http_address, timeout=10) as s:
            s.sendall(sent)
            t0 = time.monotonic()
            assert s.recv(65536) == b""
            assert 0.2 < time.monotonic() - t0 < 5
    req, _ = vauban_request(1, salt=300)
    assert _exchange(c.http_address, _head(req.SerializeToString(), extra="Connection: close\r\n"),
                     shut=False).startswith(b"HTTP/1.1 200 ")


def test_a_request_after_close_is_refused_and_signals_no_freed_descriptor(tmp_path):
    """A request still decoding when the collector stops (its drain timed out) reaches the writer
    after close(): it gets StoreUnavailable at once, instead of waiting forever for a writer that
    is gone, and writes nothing to the wake-up descriptor close() freed (which a file opened
    meanwhile may have been given)."""
    import pytest

    from vauban_trace.collector import StoreUnavailable

    ingestor = Ingestor(_SlowStore(), CollectorMetrics())  # type: ignore[arg-type]
    ingestor.ingest(vauban_request(1, salt=450)[0], "http")  # one descriptor in the wait pool too
    ingestor.close()
    victim = tmp_path / "opened-after-close"
    outcome: list[BaseException | object] = []

    def late() -> None:
        try:
            outcome.append(ingestor.ingest(vauban_request(1, salt=451)[0], "http"))
        except BaseException as exc:  # noqa: BLE001 - checked below
            outcome.append(exc)

    with open(victim, "wb") as f:  # the lowest free descriptors: those close() released
        f.write(b"kept")
        f.flush()
        t = threading.Thread(target=late, daemon=True)
        t.start()
        t.join(5)
        assert not t.is_alive(), "the request waits for a writer that is gone"
    assert victim.read_bytes() == b"kept"
    assert len(outcome) == 1 and isinstance(outcome[0], StoreUnavailable), outcome
    with pytest.raises(StoreUnavailable, match="shutting down"):
        ingestor.ingest(vauban_request(1, salt=452)[0], "grpc")
    ingestor.close()  # twice: returns


class _FlakyStore(_SlowStore):
    """Fails every other write."""

    calls = 0

    def ingest_parts(self, parts: list[object], *, snapshots: bool = False) -> object:
        self.calls += 1
        if self.calls % 2:
            raise OSError("disk on fire")
        return super().ingest_parts(parts, snapshots=snapshots)


def test_a_failed_write_is_reported_and_the_next_one_succeeds():
    import pytest

    from vauban_trace.collector import StoreUnavailable

    store = _FlakyStore()
    metrics = CollectorMetrics()
    ingestor = Ingestor(store, metrics)  # type: ignore[arg-type]
    try:
        for i in range(4):
            req, _ = vauban_request(1, salt=400 + i)
            if i % 2 == 0:
                with pytest.raises(StoreUnavailable, match="disk on fire"):
                    ingestor.ingest(req, "http")
            else:
                assert ingestor.ingest(req, "http").rejected == 0
    finally:
        ingestor.close()
    assert metrics.spans_rejected.labels("store_error")._value.get() == 2 * span_count(vauban_request(1)[0])


def test_out_of_descriptors_is_a_503_to_retry_not_a_hang_up(make_collector, monkeypatch):
    """With no descriptor left for the receiver's wait (EMFILE), the client gets a 503 with
    Retry-After (it retries later) instead of a closed connection; then the next request works."""
    import errno

    from vauban_trace.collector import _ingest

    if not _ingest._EVENTFD:
        pytest.skip("eventfd only (Linux)")
    c = make_collector(grpc=None)
    req, _ = vauban_request(1, salt=64)
    data = req.SerializeToString()

    def no_fd(*_args):
        raise OSError(errno.EMFILE, "Too many open files")

    monkeypatch.setattr(_ingest.os, "eventfd", no_fd)
    reply = _exchange(c.http_address, _head(data, extra="Connection: close\r\n"))
    assert reply.startswith(b"HTTP/1.1 503 "), reply[:80]
    assert b"Retry-After:" in reply
    monkeypatch.undo()
    assert _exchange(c.http_address, _head(data, extra="Connection: close\r\n")).startswith(b"HTTP/1.1 200 ")
