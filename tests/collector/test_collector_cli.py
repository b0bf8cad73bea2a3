"""``vauban-trace collector`` flags, parsers and one-line errors."""

from __future__ import annotations

import socket

import pytest

from vauban_trace._exceptions import ConfigurationError
from vauban_trace.cli import build_parser, main
from vauban_trace.cli._collector import build_config
from vauban_trace.collector import parse_address, parse_duration, parse_size


def test_parsers():
    assert parse_size("20MiB") == 20 * 1024 * 1024
    assert parse_size("512 KiB") == 512 * 1024 and parse_size("1000") == 1000 and parse_size("1.5k") == 1500
    assert parse_duration("2s") == 2.0 and parse_duration("250ms") == 0.25 and parse_duration("1m") == 60
    assert parse_address("127.0.0.1:4318") == ("127.0.0.1", 4318)
    assert parse_address("[::1]:0") == ("::1", 0)
    for bad, fn in (("lots", parse_size), ("0", parse_size), ("2 parsecs", parse_duration),
                    ("localhost", parse_address), ("1.2.3.4:99999", parse_address)):
        with pytest.raises(ConfigurationError):
            fn(bad)


def test_defaults_and_flags(tmp_path, monkeypatch):
    monkeypatch.delenv("VAUBAN_COLLECTOR_TOKEN", raising=False)
    args = build_parser().parse_args(["collector", "--store", str(tmp_path)])
    cfg = build_config(args)
    assert cfg.http == ("127.0.0.1", 4318) and cfg.grpc == ("127.0.0.1", 4317)
    assert cfg.metrics == ("127.0.0.1", 9464) and cfg.max_body == 20 * 1024 * 1024
    assert cfg.quiet_period_s == 2.0 and cfg.incomplete_after_s == 30.0 and cfg.token is None
    assert cfg.max_inflight == 16 and cfg.max_pending_traces == 100_000
    args = build_parser().parse_args(["collector", "--grpc", "off", "--metrics", "off", "--quiet-period", "90s",
                                      "--max-body", "1MiB", "--max-pending-traces", "0"])
    cfg = build_config(args)
    assert cfg.max_pending_traces is None and cfg.max_body == 1024 * 1024
    assert cfg.grpc is None and cfg.metrics is None and cfg.incomplete_after_s == 90.0
    monkeypatch.setenv("VAUBAN_COLLECTOR_TOKEN", "tok")
    assert build_config(build_parser().parse_args(["collector"])).token == "tok"


def test_errors_are_one_line_exit_2(tmp_path, capsys):
    assert main(["collector", "--store", str(tmp_path), "--max-body", "lots"]) == 2
    assert "invalid size 'lots'" in capsys.readouterr().err
    assert main(["collector", "--http", "off", "--grpc", "off"]) == 2
    assert "at least one" in capsys.readouterr().err
    assert main(["collector", "--tls-cert", str(tmp_path / "nope.pem"), "--tls-key", str(tmp_path / "k")]) == 2
    assert "does not exist" in capsys.readouterr().err
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        code = main(["collector", "--store", str(tmp_path), "--http", f"127.0.0.1:{port}", "--grpc", "off",
                     "--metrics", "off"])
    err = capsys.readouterr().err
    assert code == 2 and "cannot start the collector" in err and len(err.strip().splitlines()) == 1


def test_the_service_run_in_process_leaves_no_frozen_objects_behind(tmp_path, capsys):
    """gc.freeze() is for the service's own process: ``main(["collector", ...])`` run inside another
    process (a test, an embedding) must not leave that process's objects frozen once it returns."""
    import gc
    import os
    import signal
    import threading

    if gc.get_freeze_count():
        pytest.skip("this process froze objects itself")
    timer = threading.Timer(1.0, os.kill, (os.getpid(), signal.SIGTERM))
    timer.start()
    try:
        code = main(["collector", "--store", str(tmp_path), "--http", "127.0.0.1:0", "--grpc", "off",
                     "--metrics", "off"])
    finally:
        timer.cancel()
    assert code == 0 and "stopped" in capsys.readouterr().out
    assert gc.get_freeze_count() == 0
