"""Helpers shared by the sweep tests: a stand-in for the arrival generator's child script."""

from __future__ import annotations

import textwrap
from pathlib import Path


def fake_child(tmp_path: Path, body: str) -> Path:
    """A child answering the hello and the three clock checks, then doing what ``body`` says."""
    script = tmp_path / "child.py"
    script.write_text(textwrap.dedent("""\
        import os, socket, struct, sys, time
        REC = struct.Struct("<qqq")
        sock = socket.socket(fileno=int(sys.argv[1]))
        sock.sendall(REC.pack(-1, os.getpid(), 0))
        for _ in range(3):
            cmd, token, _ = REC.unpack(sock.recv(24, socket.MSG_WAITALL))
            sock.sendall(REC.pack(-2, token, time.monotonic_ns()))
        """) + textwrap.dedent(body))
    return script
