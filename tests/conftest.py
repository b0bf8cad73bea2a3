"""Suite-wide test configuration. Its directory (tests/) is on sys.path, so test modules can
import the shared helpers in tests/system_tools.py."""
