"""Building blocks of the generated Grafana dashboards: targets, panels, variables, layout.

Plain dicts of Grafana 12's classic dashboard JSON model (the data source is Prometheus, fixed uid
``prometheus``) and small PromQL helpers. Used by ``build_dashboards.py`` and ``sweep_panels.py``;
nothing here writes files.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

Json = dict[str, Any]

SCHEMA_VERSION = 41  # classic dashboard JSON model of Grafana 12.x
DATASOURCE: Json = {"type": "prometheus", "uid": "prometheus"}
RATE = "$__rate_interval"

# --------------------------------------------------------------------------------------------
# Building blocks


def target(ref: str, expr: str, legend: str = "", *, instant: bool = False) -> Json:
    target: Json = {
        "refId": ref,
        "datasource": dict(DATASOURCE),
        "editorMode": "code",
        "expr": expr,
        "legendFormat": legend or "__auto",
        "range": not instant,
        "instant": instant,
    }
    if instant:
        target["format"] = "table"
    return target


def timeseries(
    title: str, description: str, unit: str, *queries: tuple[str, str], stack: bool = False
) -> Json:
    """A time series panel; ``queries`` are (PromQL, legend) pairs, refIds A, B, ..."""
    targets = [target(chr(ord("A") + i), expr, legend) for i, (expr, legend) in enumerate(queries)]
    custom: Json = {"drawStyle": "line", "lineWidth": 1, "fillOpacity": 10, "showPoints": "never"}
    custom |= {"spanNulls": False, "stacking": {"mode": "normal" if stack else "none", "group": "A"}}
    legend: Json = {
        "displayMode": "table",
        "placement": "bottom",
        "showLegend": True,
        "calcs": ["mean", "max"],
    }
    return {
        "type": "timeseries",
        "title": title,
        "description": description,
        "datasource": dict(DATASOURCE),
        "fieldConfig": {"defaults": {"unit": unit, "min": 0, "custom": custom}, "overrides": []},
        "options": {"legend": legend, "tooltip": {"mode": "multi", "sort": "desc"}},
        "targets": targets,
    }


def stat(
    title: str, description: str, unit: str, target: Json, *, thresholds: list[tuple[float | None, str]]
) -> Json:
    return {
        "type": "stat",
        "title": title,
        "description": description,
        "datasource": dict(DATASOURCE),
        "fieldConfig": {
            "defaults": {
                "unit": unit,
                "thresholds": {
                    "mode": "absolute",
                    "steps": [{"color": color, "value": value} for value, color in thresholds],
                },
            },
            "overrides": [],
        },
        "options": {
            "reduceOptions": {"calcs": ["lastNotNull"], "fields": "", "values": False},
            "colorMode": "value",
            "graphMode": "area",
            "justifyMode": "auto",
            "orientation": "auto",
            "textMode": "auto",
        },
        "targets": [target],
    }


def merged_table(order: Sequence[str], rename: dict[str, str]) -> list[Json]:
    """Transformations of a table built from instant frames: merged into one row per label set,
    the time and the first frame's value (``Value #A``, a status series always 1) dropped, columns
    put in ``order`` and renamed."""
    return [
        {"id": "merge", "options": {}},
        {
            "id": "organize",
            "options": {
                "excludeByName": {"Time": True, "Value #A": True},
                "indexByName": {name: i for i, name in enumerate(order)},
                "renameByName": {k: v for k, v in rename.items() if k != "Value #A"},
            },
        },
    ]


def query_variable(name: str, label: str, query: str, *, multi: bool, include_all: bool) -> Json:
    variable: Json = {
        "type": "query",
        "name": name,
        "label": label,
        "datasource": dict(DATASOURCE),
        "query": {"query": query, "refId": f"{name}-variable"},
        "refresh": 2,
        "sort": 1,
        "multi": multi,
        "includeAll": include_all,
        "current": {},
        "options": [],
        "hide": 0,
    }
    if include_all:
        variable["allValue"] = ".*"
    return variable


def layout(panels: list[Json], widths: Sequence[int]) -> list[Json]:
    """Assign ids and grid positions: panels fill rows of 24 columns, 8 units high."""
    x = y = 0
    out: list[Json] = []
    for index, (panel, width) in enumerate(zip(panels, widths, strict=True), start=1):
        if x + width > 24:
            x, y = 0, y + 8
        placed = {"id": index, **panel, "gridPos": {"h": 8, "w": width, "x": x, "y": y}}
        out.append(placed)
        x += width
    return out


def dashboard(uid: str, title: str, description: str, variables: list[Json], panels: list[Json]) -> Json:
    return {
        "uid": uid,
        "title": title,
        "description": description,
        "tags": ["vauban-trace"],
        "timezone": "browser",
        "editable": False,
        "graphTooltip": 1,
        "schemaVersion": SCHEMA_VERSION,
        "version": 1,
        "refresh": "30s",
        "time": {"from": "now-1h", "to": "now"},
        "annotations": {"list": []},
        "links": [],
        "templating": {"list": variables},
        "panels": panels,
    }
