"""vauban-trace: OpenTelemetry-native, trace-first instrumentation for ML inference.

The public API is re-exported here and listed in ``__all__`` (a test asserts it).
"""

from vauban_trace._exceptions import *  # noqa: F403
from vauban_trace._exceptions import __all__ as _exc_all
from vauban_trace._version import __version__

__all__ = ["__version__", *_exc_all]
