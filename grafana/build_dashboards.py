"""Generate the Grafana dashboards of the vauban-trace reference deployment.

The two dashboards under ``grafana/dashboards/`` are written by this script, never by hand::

    python grafana/build_dashboards.py            # (re)write grafana/dashboards/*.json
    python grafana/build_dashboards.py --check    # exit 1 if a checked-in file differs

``tests/deploy`` asserts that the checked-in JSON equals this script's output, and that every
PromQL expression in it uses only the metric names the vauban collector exposes (defined in
``vauban_trace.collector._metrics``; ``tests/deploy/test_deploy_live.py`` checks a live collector
serves every one of them). The output is deterministic: plain dicts, fixed ids and layout, two-space
indented JSON with a trailing newline.

Dashboards:

``vauban-collector.json`` (uid ``vauban-collector``)
    Ingest health of ``vauban-trace collector``: spans received / rejected / duplicated per
    second, requests by transport and status code, traces rebuilt complete vs incomplete,
    queue depth, pending (not yet rebuilt) traces, store write latency p50/p95.

``vauban-stages.json`` (uid ``vauban-stages``)
    Per-stage behaviour seen through the collector's stage histograms: duration p50/p95 by
    stage and model, executions per second, bytes in/out, sync points per execution, and, for
    sweep profiles, one XY chart per selected stage plotting stage duration (p50, p95) against
    ``sweep_value`` for the chosen ``sweep_axis``. The XY chart uses instant queries over the
    dashboard's time range (``increase(...[$__range])``): the x axis is the swept quantity
    (token count, batch size...), not time. Below it, for the chosen ``sweep_id`` (sweeps on the
    chosen axis that the collector profiled, ``vauban_sweep_*`` gauges), a table with one row per
    stage: the USL fit's status, lambda / sigma / kappa with their bootstrap intervals, peak N,
    R², the values and repeats behind it, and the refusal reason or the fit's notes (a refused
    fit has empty parameter cells: the collector exports no number for it); and one XY chart
    per selected stage of the measured throughput (N / median duration) and the USL-predicted
    throughput against ``sweep_value``. All instant queries of the latest profile.

Every panel queries the Prometheus data source by its fixed uid ``prometheus``
(``grafana/provisioning/datasources/datasources.yaml``). No grafana-foundation-sdk: the JSON
model used here is the classic dashboard model that Grafana 12 (the pinned image) loads from
file providers.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

Json = dict[str, Any]

DASHBOARD_DIR = Path(__file__).resolve().parent / "dashboards"
SCHEMA_VERSION = 41  # classic dashboard JSON model of Grafana 12.x
DATASOURCE: Json = {"type": "prometheus", "uid": "prometheus"}
RATE = "$__rate_interval"

# --------------------------------------------------------------------------------------------
# Building blocks


def _target(ref: str, expr: str, legend: str = "", *, instant: bool = False) -> Json:
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


def _timeseries(
    title: str, description: str, unit: str, *queries: tuple[str, str], stack: bool = False
) -> Json:
    """A time series panel; ``queries`` are (PromQL, legend) pairs, refIds A, B, ..."""
    targets = [_target(chr(ord("A") + i), expr, legend) for i, (expr, legend) in enumerate(queries)]
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


def _stat(
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


def _query_variable(name: str, label: str, query: str, *, multi: bool, include_all: bool) -> Json:
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


def _layout(panels: list[Json], widths: Sequence[int]) -> list[Json]:
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


def _dashboard(uid: str, title: str, description: str, variables: list[Json], panels: list[Json]) -> Json:
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


# --------------------------------------------------------------------------------------------
# Dashboards


def _rate(metric: str, sel: str, by: str = "") -> str:
    head = f"sum by ({by}) " if by else "sum"
    return f"{head}(rate({metric}{sel}[{RATE}]))"


def _quantile(q: str, bucket: str, sel: str, by: str = "") -> str:
    return f"histogram_quantile({q}, sum by (le{', ' + by if by else ''}) (rate({bucket}{sel}[{RATE}])))"


def _range_sum(metric: str, sel: str) -> str:
    """Increase over the dashboard range, 0 (not "no data") when the series does not exist yet."""
    return f"(sum(increase({metric}{sel}[$__range])) or vector(0))"


def build_collector_dashboard() -> Json:
    """Ingest health of the vauban collector."""
    sel = '{instance=~"$instance"}'
    incomplete = '{instance=~"$instance", state="incomplete"}'
    received, rejected = "vauban_collector_spans_received_total", "vauban_collector_spans_rejected_total"
    rebuilt, write = "vauban_collector_traces_rebuilt_total", "vauban_collector_store_write_seconds_bucket"
    panels = [
        _timeseries(
            "Spans received",
            "Spans accepted per second, by transport (http / grpc).",
            "ops",
            (_rate(received, sel, "transport"), "{{transport}}"),
            stack=True,
        ),
        _timeseries(
            "Spans rejected",
            "Spans refused per second, by reason (partial_success or whole request).",
            "ops",
            (_rate(rejected, sel, "reason"), "{{reason}}"),
            stack=True,
        ),
        _timeseries(
            "Spans duplicated",
            "Spans received again (client retries); stored once, counted here.",
            "ops",
            (_rate("vauban_collector_spans_duplicated_total", sel), "duplicates"),
        ),
        _timeseries(
            "Export requests",
            "Export requests per second by transport and status code (HTTP status or gRPC code).",
            "reqps",
            (_rate("vauban_collector_requests_total", sel, "transport, code"), "{{transport}} {{code}}"),
            stack=True,
        ),
        _timeseries(
            "Traces rebuilt",
            "Traces rebuilt per second: complete (root span ended + quiet period) or incomplete "
            "(no root span before the incomplete timeout).",
            "ops",
            (_rate(rebuilt, sel, "state"), "{{state}}"),
            stack=True,
        ),
        _stat(
            "Incomplete traces (range)",
            "Share of traces rebuilt incomplete over the dashboard's time range (0 when none was).",
            "percentunit",
            _target(
                "A",
                f"{_range_sum(rebuilt, incomplete)} / clamp_min({_range_sum(rebuilt, sel)}, 1)",
                "incomplete",
            ),
            thresholds=[(None, "green"), (0.01, "orange"), (0.1, "red")],
        ),
        _stat(
            "Rejected spans (range)",
            "Rejected spans as a share of received + rejected over the dashboard's time range.",
            "percentunit",
            _target(
                "A",
                f"{_range_sum(rejected, sel)} / clamp_min({_range_sum(received, sel)} + {_range_sum(rejected, sel)}, 1)",
                "rejected",
            ),
            thresholds=[(None, "green"), (0.001, "orange"), (0.01, "red")],
        ),
        _timeseries(
            "Queue depth",
            "Export requests accepted but not yet durably stored.",
            "short",
            (f"sum by (instance) (vauban_collector_queue_depth{sel})", "{{instance}}"),
        ),
        _timeseries(
            "Pending traces",
            "Traces with stored spans that are not rebuilt yet (waiting for the root span or the quiet period).",
            "short",
            (f"sum by (instance) (vauban_collector_pending_traces{sel})", "{{instance}}"),
        ),
        _timeseries(
            "Store write latency",
            "Time to make one export request durable in the store (SQLite commit), p50 and p95.",
            "s",
            (_quantile("0.5", write, sel), "p50"),
            (_quantile("0.95", write, sel), "p95"),
        ),
    ]
    widths = [12, 12, 12, 12, 12, 6, 6, 12, 12, 24]
    instances = "label_values(vauban_collector_requests_total, instance)"
    variables = [_query_variable("instance", "Instance", instances, multi=True, include_all=True)]
    return _dashboard(
        "vauban-collector",
        "vauban-trace: collector ingest",
        "Ingest health of vauban-trace collector instances (OTLP receive, store, trace rebuild).",
        variables,
        _layout(panels, widths),
    )


def _stage_sel(extra: str = "") -> str:
    return '{stage=~"$stage", model=~"$model"' + extra + "}"


def _mean(metric: str, by: str) -> str:
    sel = _stage_sel()
    return (
        f"sum by ({by}) (rate({metric}_sum{sel}[{RATE}])) / sum by ({by}) (rate({metric}_count{sel}[{RATE}]))"
    )


def _sweep_panel() -> Json:
    """Stage duration against ``sweep_value``: instant queries, table frames, XY chart."""
    sel = '{stage="$stage", model=~"$model", sweep_axis="$sweep_axis", sweep_value!=""}'

    def quantile(q: str) -> str:
        return (
            f"histogram_quantile({q}, sum by (le, sweep_value) "
            f"(increase(vauban_stage_duration_seconds_bucket{sel}[$__range])))"
        )

    return {
        "type": "xychart",
        "title": "$stage duration vs $sweep_axis",
        "description": "Duration of the stage (p50, p95 over the time range) at each value of the swept "
        "quantity. Needs runs recorded as a sweep (vauban.sweep.axis / vauban.sweep.axis_value).",
        "datasource": dict(DATASOURCE),
        "repeat": "stage",
        "repeatDirection": "h",
        "maxPerRow": 2,
        "fieldConfig": {
            "defaults": {
                "unit": "s",
                "custom": {"show": "points+lines", "pointSize": {"fixed": 6}, "lineWidth": 1},
            },
            "overrides": [
                {
                    "matcher": {"id": "byName", "options": "sweep_value"},
                    "properties": [{"id": "unit", "value": "short"}],
                }
            ],
        },
        "options": {
            "mapping": "manual",
            "series": [
                {
                    "name": {"fixed": name},
                    "frame": {"matcher": {"id": "byIndex", "options": 0}},
                    "x": {"matcher": {"id": "byName", "options": "sweep_value"}},
                    "y": {"matcher": {"id": "byName", "options": name}},
                }
                for name in ("p50", "p95")
            ],
            "legend": {"displayMode": "list", "placement": "bottom", "showLegend": True, "calcs": []},
            "tooltip": {"mode": "multi", "sort": "none"},
        },
        "targets": [
            _target("A", quantile("0.5"), instant=True),
            _target("B", quantile("0.95"), instant=True),
        ],
        # Two instant table frames (sweep_value, Value #A) and (sweep_value, Value #B) are merged
        # into one frame keyed by sweep_value; the label is text, so it is converted to a number
        # to become the x axis.
        "transformations": [
            {"id": "merge", "options": {}},
            {
                "id": "organize",
                "options": {
                    "excludeByName": {"Time": True},
                    "indexByName": {"sweep_value": 0, "Value #A": 1, "Value #B": 2},
                    "renameByName": {"Value #A": "p50", "Value #B": "p95"},
                },
            },
            {
                "id": "convertFieldType",
                "options": {
                    "conversions": [{"targetField": "sweep_value", "destinationType": "number"}],
                    "fields": {},
                },
            },
            {"id": "sortBy", "options": {"fields": {}, "sort": [{"field": "sweep_value", "desc": False}]}},
        ],
    }


def _fit_sel(stage: str = '=~"$stage"') -> str:
    return '{sweep_id="$sweep_id", stage' + stage


def _fits_table() -> Json:
    """One row per stage of the selected sweep: USL status, parameters with intervals, notes."""
    sel = _fit_sel() + "}"
    columns: list[tuple[str, str]] = []  # (PromQL, column name)
    for name in ("lambda", "sigma", "kappa"):
        for bound, suffix in (("estimate", ""), ("low", " low"), ("high", " high")):
            labels = sel[:-1] + f', parameter="{name}", bound="{bound}"}}'
            columns.append((f"max by (stage) (vauban_sweep_usl_parameter{labels})", name + suffix))
    columns.append((f"max by (stage) (vauban_sweep_usl_peak{sel})", "peak N"))
    for bound in ("low", "high"):
        labels = sel[:-1] + f', bound="{bound}"}}'
        columns.append((f"max by (stage) (vauban_sweep_usl_peak_interval{labels})", f"peak N {bound}"))
    columns.append((f"max by (stage) (vauban_sweep_usl_r_squared{sel})", "R²"))
    columns.append((f'max by (stage) (vauban_sweep_usl_lack_of_fit{sel[:-1]}, quantity="p_value"}})',
                    "lack-of-fit p"))
    for quantity in ("values", "traces", "min_repeats"):
        labels = sel[:-1] + f', quantity="{quantity}"}}'
        columns.append((f"max by (stage) (vauban_sweep_points{labels})", quantity.replace("_", " ")))
    # the status frame carries the text columns; the weighting mode joins it as a label
    status = (f"max by (stage, status, reason, caveat, weighting) (vauban_sweep_fit_status{sel} "
              f"* on (sweep_id, axis, stage, model) group_left (weighting) vauban_sweep_usl_weighting{sel}"
              f" or max by (stage, status, reason, caveat) (vauban_sweep_fit_status{sel}))")
    targets = [_target("A", status, instant=True)]
    rename = {}
    for i, (expr, column) in enumerate(columns, start=1):
        ref = chr(ord("A") + i)
        targets.append(_target(ref, expr, instant=True))
        rename[f"Value #{ref}"] = column
    order = ["stage", "status", "weighting", *rename, "reason", "caveat"]
    return {
        "type": "table",
        "title": "USL fits of sweep $sweep_id",
        "description": "The collector's latest profile of the sweep (vauban_sweep_* gauges, refreshed at "
        "most every --sweep-profile-interval): per stage, the Universal Scalability Law fit of its "
        "throughput N / duration, X(N) = lambda N / (1 + sigma (N - 1) + kappa N (N - 1)), with "
        "95% bootstrap intervals, the peak N* when kappa > 0 (with its bootstrap interval when few refits "
        "lacked a peak), R², the weighting (inverse-variance when the repeats' noise grows with N) and "
        "the lack-of-fit p-value from the repeats; or 'refused' with the reason (too few distinct values, "
        "too narrow a span, structured residuals, lack of fit...), and no numbers.",
        "datasource": dict(DATASOURCE),
        "fieldConfig": {
            "defaults": {"custom": {"align": "auto", "cellOptions": {"type": "auto"}, "inspect": True}},
            "overrides": [],
        },
        "options": {"showHeader": True, "cellHeight": "sm", "frameIndex": 0},
        "targets": targets,
        # instant table frames (stage[, status, reason, caveat], Value #X) merged into one row per
        # stage; the status frame's value (always 1) is dropped
        "transformations": [
            {"id": "merge", "options": {}},
            {
                "id": "organize",
                "options": {
                    "excludeByName": {"Time": True, "Value #A": True},
                    "indexByName": {name: i for i, name in enumerate(order)},
                    "renameByName": rename,
                },
            },
        ],
    }


def _fit_xy_panel() -> Json:
    """Measured and USL-predicted throughput of one stage against ``sweep_value``."""
    sel = _fit_sel('="$stage"')
    observed = f'avg by (sweep_value) (vauban_sweep_observed{sel}, quantity="throughput"}})'
    predicted = f"avg by (sweep_value) (vauban_sweep_usl_predicted{sel}}})"
    return {
        "type": "xychart",
        "title": "$stage throughput: measured vs USL fit ($sweep_id)",
        "description": "Measured throughput (sweep value / median stage duration, points) and the "
        "throughput the stage's USL fit predicts at the same values (line). No line when the fit "
        "was refused: see the fits table for the reason.",
        "datasource": dict(DATASOURCE),
        "repeat": "stage",
        "repeatDirection": "h",
        "maxPerRow": 2,
        "fieldConfig": {
            "defaults": {
                "unit": "short",
                "custom": {"show": "points+lines", "pointSize": {"fixed": 6}, "lineWidth": 1},
            },
            "overrides": [
                {
                    "matcher": {"id": "byName", "options": "measured"},
                    "properties": [{"id": "custom.show", "value": "points"}],
                },
                {
                    "matcher": {"id": "byName", "options": "USL fit"},
                    "properties": [{"id": "custom.show", "value": "lines"}],
                },
            ],
        },
        "options": {
            "mapping": "manual",
            "series": [
                {
                    "name": {"fixed": name},
                    "frame": {"matcher": {"id": "byIndex", "options": 0}},
                    "x": {"matcher": {"id": "byName", "options": "sweep_value"}},
                    "y": {"matcher": {"id": "byName", "options": name}},
                }
                for name in ("measured", "USL fit")
            ],
            "legend": {"displayMode": "list", "placement": "bottom", "showLegend": True, "calcs": []},
            "tooltip": {"mode": "multi", "sort": "none"},
        },
        "targets": [_target("A", observed, instant=True), _target("B", predicted, instant=True)],
        "transformations": [
            {"id": "merge", "options": {}},
            {
                "id": "organize",
                "options": {
                    "excludeByName": {"Time": True},
                    "indexByName": {"sweep_value": 0, "Value #A": 1, "Value #B": 2},
                    "renameByName": {"Value #A": "measured", "Value #B": "USL fit"},
                },
            },
            {
                "id": "convertFieldType",
                "options": {
                    "conversions": [{"targetField": "sweep_value", "destinationType": "number"}],
                    "fields": {},
                },
            },
            {"id": "sortBy", "options": {"fields": {}, "sort": [{"field": "sweep_value", "desc": False}]}},
        ],
    }


def build_stages_dashboard() -> Json:
    """Per-stage duration, bytes and sync points, and duration against a sweep axis."""
    sel = _stage_sel()
    duration, sync = "vauban_stage_duration_seconds", "vauban_stage_sync_points"
    panels = [
        _timeseries(
            "Stage duration p50",
            "Median stage duration by stage and model.",
            "s",
            (_quantile("0.5", f"{duration}_bucket", sel, "stage, model"), "{{stage}} {{model}}"),
        ),
        _timeseries(
            "Stage duration p95",
            "95th percentile stage duration by stage and model.",
            "s",
            (_quantile("0.95", f"{duration}_bucket", sel, "stage, model"), "{{stage}} {{model}}"),
        ),
        _timeseries(
            "Stage executions",
            "Stage spans per second, by stage and model.",
            "ops",
            (_rate(f"{duration}_count", sel, "stage, model"), "{{stage}} {{model}}"),
            stack=True,
        ),
        _timeseries(
            "Stage time share",
            "Seconds spent in each stage per second of wall time (summed over concurrent requests).",
            "s",
            (_rate(f"{duration}_sum", sel, "stage"), "{{stage}}"),
            stack=True,
        ),
        _timeseries(
            "Bytes in / out per second",
            "Bytes entering and leaving each stage per second (direction in / out).",
            "Bps",
            (_rate("vauban_stage_bytes_sum", sel, "stage, direction"), "{{stage}} {{direction}}"),
        ),
        _timeseries(
            "Bytes per stage execution",
            "Mean bytes in / out of one stage execution.",
            "bytes",
            (_mean("vauban_stage_bytes", "stage, direction"), "{{stage}} {{direction}}"),
        ),
        _timeseries(
            "Sync points per execution (mean)",
            "Mean host/device synchronisation points in one stage execution.",
            "short",
            (_mean(sync, "stage, model"), "{{stage}} {{model}}"),
        ),
        _timeseries(
            "Sync points per execution (p95)",
            "95th percentile of synchronisation points in one stage execution.",
            "short",
            (_quantile("0.95", f"{sync}_bucket", sel, "stage, model"), "{{stage}} {{model}}"),
        ),
        _sweep_panel(),
        _fits_table(),
        _fit_xy_panel(),
    ]
    widths = [12] * (len(panels) - 2) + [24, 12]
    count = f"{duration}_count"
    variables = [
        _query_variable("model", "Model", f"label_values({count}, model)", multi=True, include_all=True),
        _query_variable(
            "stage", "Stage", f'label_values({count}{{model=~"$model"}}, stage)', multi=True, include_all=True
        ),
        _query_variable(
            "sweep_axis",
            "Sweep axis",
            f'label_values({count}{{model=~"$model", sweep_axis!=""}}, sweep_axis)',
            multi=False,
            include_all=False,
        ),
        _query_variable(
            "sweep_id",
            "Sweep",
            'label_values(vauban_sweep_fit_status{axis="$sweep_axis"}, sweep_id)',
            multi=False,
            include_all=False,
        ),
    ]
    return _dashboard(
        "vauban-stages",
        "vauban-trace: inference stages",
        "Per-stage duration, bytes and sync points from vauban stage spans, stage duration "
        "against a sweep axis (token count, batch size...), and the USL fits of profiled sweeps.",
        variables,
        _layout(panels, widths),
    )


# --------------------------------------------------------------------------------------------
# Output

DASHBOARDS = {
    "vauban-collector.json": build_collector_dashboard,
    "vauban-stages.json": build_stages_dashboard,
}


def render(dashboard: Json) -> str:
    """The exact text written to disk for ``dashboard``."""
    return json.dumps(dashboard, indent=2, ensure_ascii=False) + "\n"


def rendered() -> dict[str, str]:
    """File name -> file text for every dashboard."""
    return {name: render(build()) for name, build in DASHBOARDS.items()}


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--check", action="store_true", help="exit 1 if a checked-in dashboard differs")
    parser.add_argument(
        "--out", type=Path, default=DASHBOARD_DIR, help="output folder (default: %(default)s)"
    )
    args = parser.parse_args(argv)
    stale: list[str] = []
    for name, text in rendered().items():
        path: Path = args.out / name
        if args.check:
            if not path.is_file() or path.read_text(encoding="utf-8") != text:
                stale.append(str(path))
            continue
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text, encoding="utf-8")
        print(f"wrote {path}")
    if stale:
        print("out of date (run python grafana/build_dashboards.py): " + ", ".join(stale), file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
