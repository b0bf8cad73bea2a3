"""System tools the tests use as real peers (Debian packages), installed by the tests themselves.

``require_tool(name, package)`` returns the path of executable ``name``; when it is missing and the
tests run as root with apt-get available, Debian ``package`` is installed first. Otherwise the test
FAILS with the command to run: these tools are real protocol peers or validators, and a check that
silently skipped would prove nothing.
"""

from __future__ import annotations

import os
import shutil
import subprocess

import pytest


def require_tool(name: str, package: str) -> str:
    """Path of executable ``name``, installing Debian ``package`` when missing (root only)."""
    found = shutil.which(name)
    if found:
        return found
    hint = f"`{name}` is not installed; install it with: apt-get install -y {package}"
    if os.geteuid() != 0 or shutil.which("apt-get") is None:
        pytest.fail(f"{hint} (cannot install it here: not root or no apt-get)")
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    install = ["apt-get", "install", "-y", "--no-install-recommends", package]
    result = subprocess.run(install, capture_output=True, text=True, env=env, timeout=900)
    if result.returncode != 0:  # stale package lists: refresh once and retry
        subprocess.run(["apt-get", "update"], capture_output=True, text=True, env=env, timeout=900)
        result = subprocess.run(install, capture_output=True, text=True, env=env, timeout=900)
    found = shutil.which(name)
    if not found:
        tail = (result.stdout + result.stderr)[-1500:]
        pytest.fail(f"{hint}; `{' '.join(install)}` did not provide it (exit {result.returncode}):\n{tail}")
    return found
