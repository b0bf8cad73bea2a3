"""collector/Dockerfile, checked without a Docker engine.

The instructions are parsed; the ENTRYPOINT flags are checked against the real
``vauban-trace collector`` parser; the build context (what .dockerignore lets through, restricted
to what the Dockerfile copies) is rebuilt in a temporary folder and the wheel that ``pip install``
would install is built from it. Running the ENTRYPOINT itself is covered by
test_deploy_live.py.
"""

from __future__ import annotations

import fnmatch
import json
import os
import re
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

from deploy_support import REPO

DOCKERFILE = REPO / "collector/Dockerfile"


def _instructions() -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) in order; continuation lines joined, comments dropped."""
    out: list[tuple[str, str]] = []
    pending = ""
    for raw in DOCKERFILE.read_text(encoding="utf-8").splitlines():
        line = raw.strip()
        if not pending and (not line or line.startswith("#")):
            continue
        if line.startswith("#"):
            continue
        if line.endswith("\\"):
            pending += line[:-1] + " "
            continue
        full = (pending + line).strip()
        pending = ""
        word, _, rest = full.partition(" ")
        out.append((word.upper(), rest.strip()))
    assert not pending, "dangling line continuation"
    return out


def _one(name: str) -> str:
    found = [args for word, args in _instructions() if word == name]
    assert len(found) == 1, f"expected one {name}, found {len(found)}"
    return found[0]


def _entrypoint() -> list[str]:
    argv = json.loads(_one("ENTRYPOINT"))
    assert isinstance(argv, list) and all(isinstance(a, str) for a in argv), "ENTRYPOINT must be exec form"
    return argv


def _flag(argv: list[str], name: str) -> str:
    assert name in argv, f"ENTRYPOINT lacks {name}"
    return argv[argv.index(name) + 1]


def test_base_image_user_ports_and_volume() -> None:
    base = _one("FROM")
    assert re.fullmatch(r"python:3\.11(\.\d+)?-slim(-\w+)?", base), base
    words = [w for w, _ in _instructions()]
    user = _one("USER").split(":")[0]
    assert user not in ("0", "root"), "the collector must not run as root"
    last_run = max(i for i, w in enumerate(words) if w == "RUN")
    assert words.index("USER") > last_run, "USER must come after the RUN steps that need root"
    exposed = {p.split("/")[0] for p in _one("EXPOSE").split()}
    assert exposed == {"4317", "4318", "9464"}
    assert json.loads(_one("VOLUME")) == ["/data"]


def test_entrypoint_flags_match_exposed_ports_and_volume() -> None:
    argv = _entrypoint()
    assert argv[:2] == ["vauban-trace", "collector"]
    assert _flag(argv, "--http") == "0.0.0.0:4318"
    assert _flag(argv, "--grpc") == "0.0.0.0:4317"
    assert _flag(argv, "--metrics") == "0.0.0.0:9464"
    assert _flag(argv, "--store") == json.loads(_one("VOLUME"))[0]


def test_entrypoint_is_accepted_by_the_collector_command() -> None:
    from vauban_trace.cli import build_parser

    argv = _entrypoint()
    args = build_parser().parse_args(argv[1:])
    assert args.command == "collector" and callable(args.func)
    from vauban_trace.cli._collector import build_config

    config = build_config(args)
    assert config.http == ("0.0.0.0", 4318)
    assert config.grpc == ("0.0.0.0", 4317)
    assert config.metrics == ("0.0.0.0", 9464)
    assert str(config.store_dir) == "/data"


def test_entrypoint_flags_appear_in_collector_help() -> None:
    exe = shutil.which("vauban-trace", path=str(Path(sys.executable).parent)) or shutil.which("vauban-trace")
    assert exe, "the vauban-trace console script is not installed"
    result = subprocess.run([exe, "collector", "--help"], capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr
    for flag in (a for a in _entrypoint()[2:] if a.startswith("--")):
        assert flag in result.stdout, f"{flag} is not an option of `vauban-trace collector`"


def _ignore_patterns() -> list[str]:
    lines = (REPO / ".dockerignore").read_text(encoding="utf-8").splitlines()
    return [ln.strip().lstrip("/") for ln in lines if ln.strip() and not ln.strip().startswith("#")]


def _ignored(relative: str, patterns: list[str]) -> bool:
    parts = relative.split("/")
    prefixes = ["/".join(parts[: i + 1]) for i in range(len(parts))]
    for pattern in patterns:
        core = pattern[3:] if pattern.startswith("**/") else pattern
        for prefix in prefixes:
            candidates = [prefix]
            if pattern.startswith("**/"):  # any depth: try every tail of the path
                segs = prefix.split("/")
                candidates = ["/".join(segs[i:]) for i in range(len(segs))]
            if any(fnmatch.fnmatchcase(c, core) for c in candidates):
                return True
    return False


def _copied_context(dest: Path) -> list[str]:
    """Recreate what the Dockerfile COPYs from the build context; returns the relative paths."""
    patterns = _ignore_patterns()
    copied: list[str] = []
    for word, args in _instructions():
        if word != "COPY":
            continue
        sources = [a for a in args.split() if not a.startswith("--")][:-1]
        for source in sources:
            path = REPO / source
            assert path.exists(), f"COPY source {source} does not exist in the build context"
            assert not _ignored(source, patterns), f"COPY source {source} is excluded by .dockerignore"
            files = [path] if path.is_file() else sorted(p for p in path.rglob("*") if p.is_file())
            for file in files:
                rel = file.relative_to(REPO).as_posix()
                if _ignored(rel, patterns):
                    continue
                target = dest / rel
                target.parent.mkdir(parents=True, exist_ok=True)
                shutil.copy2(file, target)
                copied.append(rel)
    return copied


def test_dockerignore_excludes_local_state() -> None:
    patterns = _ignore_patterns()
    for rel in (
        ".venv/bin/python",
        ".vauban/traces.sqlite",
        ".git/HEAD",
        "src/vauban_trace/__pycache__/x.pyc",
        ".pytest_cache/v",
        ".mypy_cache/x",
        "dist/x.whl",
        "src/vauban_trace/rebuild/_crebuild.cpython-311-x86_64-linux-gnu.so",
    ):
        assert _ignored(rel, patterns), f".dockerignore lets {rel} into the build context"
    for rel in ("pyproject.toml", "setup.py", "README.md", "src/vauban_trace/cli/__init__.py",
                "src/vauban_trace/rebuild/_crebuild_src/module.c"):
        assert not _ignored(rel, patterns), f".dockerignore drops {rel}, which the build needs"


def test_package_builds_from_the_copied_context(tmp_path: Path) -> None:
    context = tmp_path / "context"
    copied = _copied_context(context)
    assert "pyproject.toml" in copied and any(c.startswith("src/vauban_trace/") for c in copied)
    wheels = tmp_path / "wheels"
    cmd = [
        sys.executable,
        "-m",
        "pip",
        "wheel",
        "--no-deps",
        "--no-build-isolation",
        "-q",
        "-w",
        str(wheels),
        str(context),
    ]
    env = {**os.environ, "VAUBAN_TRACE_REQUIRE_NATIVE": "1"}  # as the Dockerfile builds it
    result = subprocess.run(cmd, capture_output=True, text=True, timeout=300, env=env)
    assert result.returncode == 0, result.stderr[-3000:]
    (wheel,) = wheels.glob("vauban_trace-*.whl")
    with zipfile.ZipFile(wheel) as zf:
        names = set(zf.namelist())
        assert "vauban_trace/cli/_collector.py" in names, "the collector command is not in the wheel"
        for ext in ("vauban_trace/rebuild/_crebuild", "vauban_trace/store/_cwire"):
            assert any(n.startswith(ext + ".") and n.endswith(".so") for n in names), f"{ext} was not compiled"
        (entry_points,) = [n for n in names if n.endswith(".dist-info/entry_points.txt")]
        assert re.search(r"^vauban-trace\s*=\s*vauban_trace\.cli:main", zf.read(entry_points).decode(), re.M)
