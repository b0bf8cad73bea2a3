"""The store's optional C extension ``_cwire``, loaded once for the modules that use it.

:data:`cwire` is the extension module, or None when it was not built (no C compiler at install
time) or ``VAUBAN_TRACE_NO_NATIVE=1`` was set when this module was imported. Its users
(:mod:`._split`: ``split``; :mod:`._ingest`: ``snapshot``; :mod:`._batch`: ``encode_batch``,
``decode_batch``) fall back to their Python reference
code when it is None or declines an input (returns None), with identical results.
"""

from __future__ import annotations

import os
from types import ModuleType

cwire: ModuleType | None
try:
    from vauban_trace.store import _cwire as cwire  # type: ignore[attr-defined, no-redef, unused-ignore]
except ImportError:  # not built
    cwire = None

if os.environ.get("VAUBAN_TRACE_NO_NATIVE") == "1":
    cwire = None

__all__ = ["cwire"]
