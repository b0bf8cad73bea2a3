"""docs/semconv.md documents every attribute and event name of vauban_trace.semconv."""

from __future__ import annotations

import re
from pathlib import Path

from vauban_trace import semconv

DOC = Path(__file__).resolve().parents[2] / "docs" / "semconv.md"


def test_every_name_is_documented() -> None:
    text = DOC.read_text(encoding="utf-8")
    documented = set(re.findall(r"`([A-Za-z0-9_.]+)`", text))
    missing = [name for name in semconv.all_attribute_names() if name not in documented]
    assert not missing, f"docs/semconv.md lacks: {', '.join(missing)}"


def test_every_documented_vauban_name_exists() -> None:
    text = DOC.read_text(encoding="utf-8")
    known = set(semconv.all_attribute_names())
    table_names = set(re.findall(r"^\| `((?:vauban|gen_ai)\.[A-Za-z0-9_.]+)` \|", text, re.M))
    stale = sorted(table_names - known)
    assert not stale, f"docs/semconv.md documents names semconv does not define: {', '.join(stale)}"
