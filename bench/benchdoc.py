"""Shared by the benchmark scripts: the machine description and docs/benchmarks.md sections.

``replace_section(heading, text)`` replaces the section that starts with the ``heading`` line
(e.g. ``"## Rebuild"``) up to the next ``## `` heading, or appends it; ``text`` is the whole
section, heading included. ``cpu_model()`` reads /proc/cpuinfo.
"""

from __future__ import annotations

import re
from pathlib import Path

DOCS = Path(__file__).resolve().parent.parent / "docs" / "benchmarks.md"


def cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return "unknown CPU"


def replace_section(heading: str, text: str, doc: Path = DOCS) -> None:
    current = doc.read_text() if doc.exists() else "# Benchmarks\n"
    pattern = re.compile(rf"^{re.escape(heading)}\n.*?(?=^## |\Z)", re.S | re.M)
    block = text.rstrip("\n") + "\n\n"
    if pattern.search(current):
        current = pattern.sub(lambda _m: block, current, count=1)
    else:
        current = current.rstrip("\n") + "\n\n" + block
    doc.write_text(current.rstrip("\n") + "\n")
