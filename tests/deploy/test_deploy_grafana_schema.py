"""The dashboard JSON type-checked against Grafana's own schema for the pinned Grafana version.

Grafana publishes its dashboard and panel schemas as TypeScript types in the npm package
``@grafana/schema`` (one release per Grafana release). This test installs the release matching
the ``grafana/grafana`` tag in docker-compose.yml (into a cache folder outside the repository),
writes every dashboard, and every panel's ``options`` / ``fieldConfig.defaults.custom``, as typed
constants, and runs ``tsc``: an unknown key or a value outside an enum is a compile error.
Missing keys are allowed (Grafana fills defaults), so every type is made deeply optional.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
from pathlib import Path

import pytest
from deploy_support import REPO, require_tool

TYPESCRIPT = "5.9.3"
SCHEMA = "@grafana/schema/dist/types/raw"
PANEL_TYPES = {
    "timeseries": ("TS.Options", "TS.FieldConfig"),
    "stat": ("ST.Options", None),
    "xychart": ("XY.Options", "XY.FieldConfig"),
    "table": ("TB.Options", "TB.FieldConfig"),
}


def _grafana_version() -> str:
    m = re.search(
        r"image:\s*grafana/grafana:(\d+\.\d+\.\d+)\s*$", (REPO / "docker-compose.yml").read_text(), re.M
    )
    assert m, "docker-compose.yml does not pin grafana/grafana to x.y.z"
    return m.group(1)


@pytest.fixture(scope="module")
def schema_dir() -> Path:
    npm = require_tool("npm", "npm")
    version = _grafana_version()
    cache = Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache"))
    folder = cache / "vauban-trace-tests" / f"grafana-schema-{version}-ts-{TYPESCRIPT}"
    if (
        not (folder / "node_modules/.bin/tsc").exists()
        or not (folder / "node_modules/@grafana/schema").is_dir()
    ):
        folder.mkdir(parents=True, exist_ok=True)
        (folder / "package.json").write_text('{"private": true}\n', encoding="utf-8")
        cmd = [
            npm,
            "install",
            "--no-audit",
            "--no-fund",
            "--silent",
            f"@grafana/schema@{version}",
            f"typescript@{TYPESCRIPT}",
        ]
        result = subprocess.run(cmd, cwd=folder, capture_output=True, text=True, timeout=600)
        if result.returncode != 0:
            pytest.fail(f"`{' '.join(cmd)}` failed in {folder}:\n{(result.stdout + result.stderr)[-2000:]}")
    return folder


def _typed_constants() -> str:
    lines = [
        f"import type {{ Dashboard }} from '{SCHEMA}/dashboard/x/dashboard_types.gen.js';",
        f"import type * as TS from '{SCHEMA}/composable/timeseries/panelcfg/x/TimeSeriesPanelCfg_types.gen.js';",
        f"import type * as ST from '{SCHEMA}/composable/stat/panelcfg/x/StatPanelCfg_types.gen.js';",
        f"import type * as XY from '{SCHEMA}/composable/xychart/panelcfg/x/XYChartPanelCfg_types.gen.js';",
        f"import type * as TB from '{SCHEMA}/composable/table/panelcfg/x/TablePanelCfg_types.gen.js';",
        # enums accept their string values; every key optional; unknown keys still rejected
        "type Loose<T> = T extends string ? `${T}` : T extends Array<infer U> ? Array<Loose<U>>"
        " : T extends object ? { [K in keyof T]?: Loose<T[K]> } : T;",
    ]
    for path in sorted((REPO / "grafana/dashboards").glob("*.json")):
        dash = json.loads(path.read_text(encoding="utf-8"))
        tag = re.sub(r"\W", "_", path.stem)
        lines.append(f"// {path.name}")
        lines.append(f"export const {tag}: Loose<Dashboard> = {json.dumps(dash)};")
        for panel in dash["panels"]:
            assert panel["type"] in PANEL_TYPES, (
                f"{path.name}: no schema check for panel type {panel['type']}"
            )
            options, custom = PANEL_TYPES[panel["type"]]
            name = f"{tag}_panel_{panel['id']}"
            lines.append(f"export const {name}_options: Loose<{options}> = {json.dumps(panel['options'])};")
            if custom is not None:
                value = panel["fieldConfig"]["defaults"].get("custom", {})
                lines.append(f"export const {name}_custom: Loose<{custom}> = {json.dumps(value)};")
    return "\n".join(lines) + "\n"


def _tsc(schema_dir: Path, source: str) -> subprocess.CompletedProcess[str]:
    check = schema_dir / "dashboards-check.ts"
    check.write_text(source, encoding="utf-8")
    cmd = [str(schema_dir / "node_modules/.bin/tsc"), "--noEmit", "--strict", "--skipLibCheck"]
    cmd += ["--moduleResolution", "bundler", "--module", "esnext", "--target", "es2022", check.name]
    return subprocess.run(cmd, cwd=schema_dir, capture_output=True, text=True, timeout=300)


def test_dashboards_match_grafana_schema(schema_dir: Path) -> None:
    result = _tsc(schema_dir, _typed_constants())
    assert result.returncode == 0, f"dashboard JSON does not fit Grafana's schema:\n{result.stdout[-4000:]}"


def test_the_schema_check_rejects_bad_values_and_unknown_keys(schema_dir: Path) -> None:
    # Guard against a check that accepts anything (e.g. types resolving to `any`).
    source = _typed_constants().replace('"mapping": "manual"', '"mapping": "manually"')
    source = source.replace('"showPoints": "never"', '"showPointz": "never"')
    result = _tsc(schema_dir, source)
    assert result.returncode != 0, "tsc accepted a bad enum value and an unknown key"
    assert "manually" in result.stdout and "showPointz" in result.stdout, result.stdout[-2000:]
