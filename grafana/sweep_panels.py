"""The sweep panels of the generated stage dashboard: stage duration against ``sweep_value``,
the table of the collector's USL fits of the chosen sweep, and measured vs USL-predicted
throughput (see ``build_dashboards.py``'s docstring for what each shows). Instant queries, table
frames merged and organised by transformations, XY charts.
"""

from __future__ import annotations

from panels import DATASOURCE, Json, merged_table, target


def _xy_options(first: str, second: str) -> Json:
    """XY chart options: two series of the one merged frame, ``sweep_value`` on x."""
    return {
        "mapping": "manual",
        "series": [
            {
                "name": {"fixed": name},
                "frame": {"matcher": {"id": "byIndex", "options": 0}},
                "x": {"matcher": {"id": "byName", "options": "sweep_value"}},
                "y": {"matcher": {"id": "byName", "options": name}},
            }
            for name in (first, second)
        ],
        "legend": {"displayMode": "list", "placement": "bottom", "showLegend": True, "calcs": []},
        "tooltip": {"mode": "multi", "sort": "none"},
    }


def _xy_transformations(first: str, second: str) -> list[Json]:
    """Two instant table frames (sweep_value, Value #A) and (sweep_value, Value #B) merged into one
    frame keyed by sweep_value, the values renamed ``first`` / ``second``; the label is text, so it
    is converted to a number to become the x axis, and sorted."""
    return [
        {"id": "merge", "options": {}},
        {
            "id": "organize",
            "options": {
                "excludeByName": {"Time": True},
                "indexByName": {"sweep_value": 0, "Value #A": 1, "Value #B": 2},
                "renameByName": {"Value #A": first, "Value #B": second},
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
    ]


def sweep_panel() -> Json:
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
        "options": _xy_options("p50", "p95"),
        "targets": [
            target("A", quantile("0.5"), instant=True),
            target("B", quantile("0.95"), instant=True),
        ],
        "transformations": _xy_transformations("p50", "p95"),
    }


def _fit_sel(stage: str = '=~"$sweep_stage"') -> str:
    return '{sweep_id="$sweep_id", stage' + stage


def fits_table() -> Json:
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
    targets = [target("A", status, instant=True)]
    rename = {}
    for i, (expr, column) in enumerate(columns, start=1):
        ref = chr(ord("A") + i)
        targets.append(target(ref, expr, instant=True))
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
        "transformations": merged_table(order, rename),
    }


def fit_xy_panel() -> Json:
    """Measured and USL-predicted throughput of one stage against ``sweep_value``."""
    sel = _fit_sel('="$sweep_stage"')
    observed = f'avg by (sweep_value) (vauban_sweep_observed{sel}, quantity="throughput"}})'
    predicted = f"avg by (sweep_value) (vauban_sweep_usl_predicted{sel}}})"
    return {
        "type": "xychart",
        "title": "$sweep_stage throughput: measured vs USL fit ($sweep_id)",
        "description": "Measured throughput (sweep value / median stage duration, points) and the "
        "throughput the stage's USL fit predicts at the same values (line). On the concurrency axis "
        "only the request stage has both: the request throughput the USL was fitted to (completions "
        "in the clients' common window or Little's law, median over runs); on the arrival_rate axis "
        "the request stage's points are the achieved throughput and there is no fit. No line when the "
        "fit was refused: see the fits table for the reason.",
        "datasource": dict(DATASOURCE),
        "repeat": "sweep_stage",
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
        "options": _xy_options("measured", "USL fit"),
        "targets": [target("A", observed, instant=True), target("B", predicted, instant=True)],
        "transformations": _xy_transformations("measured", "USL fit"),
    }
